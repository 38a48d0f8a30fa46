"""Read any image file the way training and the runtime both expect: RGB uint8, upright.

One reader for every stage so that a palette PNG, an RGBA screenshot, a WEBP or a PNG that
was saved with a ``.jpg`` name all look the same to the classifier in training and on the
device. PIL decides the format from the file's bytes, never from its name.

Memory is bounded: an image over MAX_PIXELS is never decoded at full size (a 12000x12000 JPEG
would take ~1.5 GB on a 1 GB Pi). A JPEG is decoded at 1/2, 1/4 or 1/8 scale inside the
decoder (PIL's draft mode, what cv2.IMREAD_REDUCED_* does), an MPO (a JPEG with extra pictures
after it, as Ultra HDR phone photos are) too; other formats that big are refused.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from maskd.files import NotRegularFile, dangling_link, open_regular

# Transparent pixels are composited onto white: cut-out faces in the training set were
# made to be seen on a white page, and their RGB under alpha=0 is arbitrary (often black).
_BACKGROUND = (255, 255, 255)

# Suffixes worth opening when a folder is searched; ``.jpg_1088wx1632h`` style names (a
# web download with the size glued on) count too, by prefix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".avif", ".bmp", ".gif", ".tif",
                  ".tiff", ".heic", ".heif")
# Phones' own format: Pillow reads it only with a plugin maskd does not install, so a folder's
# HEIC photos are named as unreadable, in words, rather than passed over without one.
HEIF_SUFFIXES = (".heic", ".heif")

# The ISO base media brands of a HEIF still (ftyp box at the start): a phone's photo copied
# under a .jpg name is one too, and was said to be 'unknown or corrupt'.
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")

# Largest image decoded at full size: a 16 MP image peaks near 220 MB while decoding. A face
# needs far fewer pixels; a 12 MP phone photo still decodes untouched.
MAX_PIXELS = 16_000_000


class ImageError(Exception):
    """An image that cannot be read; the message names the file and the reason."""


class FolderError(ImageError):
    """A folder under a searched one that is not searched (unreadable, or a link to a folder
    searched already): reported where its images would have been, never skipped silently."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {9: "\\t", 10: "\\n", 13: "\\r",
                                                            92: "\\\\"}


def one_field(text: str) -> str:
    """Text for one field of a tab-separated output line: control characters (a tab or a
    newline in a file name) escaped, so a line stays one record; a backslash too, so a name
    holding ``\\n`` itself never prints as another's newline; ``--json`` keeps names exact."""
    return text.translate(_CONTROL)


def load_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to an (H, W, 3) uint8 RGB array with its EXIF orientation applied."""
    p = Path(path)
    try:
        # A named pipe called b.jpg would block open() until a writer came, forever.
        with open_regular(p) as f:
            # PIL's bomb warning (we bound the size ourselves) and its UserWarnings about a
            # corrupt EXIF block: lines on stderr that name no file, for an image that decodes.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                warnings.simplefilter("ignore", UserWarning)
                with Image.open(f) as im:
                    _decode_reduced(im, p)
                    im.load()  # decode now so a truncated file fails here, not later
                    rgb = _to_rgb(_upright(im))
    except NotRegularFile as err:
        raise ImageError(f"{p}: {err.strerror}") from None
    except FileNotFoundError:  # a link whose target is gone is there to see in `ls`
        raise ImageError(dangling_link(p) or f"{p}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{p}: is a directory, not an image") from None
    except UnidentifiedImageError:
        with contextlib.suppress(OSError):
            if p.stat().st_size == 0:  # a copy cut off at its start, a camera's failed save
                raise ImageError(f"{p}: an empty file (0 bytes), not an image") from None
        if p.suffix.lower() in HEIF_SUFFIXES or _is_heif(p):
            raise ImageError(f"{p}: a HEIC/HEIF photo, which maskd cannot read: save it as JPEG "
                             "(or set the phone's camera to 'Most Compatible')") from None
        raise ImageError(f"{p}: not an image PIL can read (unknown or corrupt format)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{p}: refused, too many pixels ({err})") from None
    except OSError as err:
        if err.errno is not None:  # the file could not be read: Permission denied, a link loop
            raise ImageError(f"{p}: {err.strerror or err}") from None
        raise ImageError(f"{p}: cannot decode image: {err}") from None
    except ImageError:  # our own refusal (too many pixels to decode): as it is
        raise
    except Exception as err:  # noqa: BLE001 - any decoder's own failure is this image's
        # (SyntaxError, ValueError; a damaged AVIF's RuntimeError ended scan, classify's batch
        # and run's loop, the images after it never read)
        raise ImageError(f"{p}: cannot decode image: {err}") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{p}: decoded to an unusable shape {arr.shape}")
    return arr


def _is_heif(p: Path) -> bool:
    """True when the file's first bytes are a HEIF's ``ftyp`` box, whatever its name."""
    try:
        with open_regular(p) as f:
            head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


# EXIF orientation -> the turn that shows the picture upright (ImageOps.exif_transpose's table)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its orientation (EXIF, or XMP: Pillow's getexif reads both) says. Not
    ImageOps.exif_transpose: it writes the EXIF block back out without the tag, which failed on
    a phone photo with one mistyped tag (struct.error), the photo refused as undecodable."""
    orientation = im.getexif().get(0x0112)
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return im if method is None else im.transpose(method)


def _decode_reduced(im: Image.Image, p: Path) -> None:
    """Before decoding: shrink a JPEG over MAX_PIXELS in the decoder; refuse other big images."""
    w, h = im.size
    if w * h <= MAX_PIXELS:
        return
    if isinstance(im, JpegImageFile):  # MPO too (multi-picture: Ultra HDR phone photos)
        for scale in (2, 4, 8):  # the decoder's scales; it rounds the size up
            if -(-w // scale) * -(-h // scale) <= MAX_PIXELS:
                im.draft(im.mode, (max(1, w // scale), max(1, h // scale)))
                break
    if im.size[0] * im.size[1] > MAX_PIXELS:
        raise ImageError(f"{p}: too large to decode within memory bounds ({w}x{h} pixels; "
                         f"limit {MAX_PIXELS // 1_000_000} MP, or 8x that for a JPEG)")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency (RGBA, LA, palette or grey with tRNS) goes onto white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _wide_grey_to_rgb(im)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def _wide_grey_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit greyscale scaled to 8 bit (PIL's convert clips it to white; a float one, 0..1,
    to black), then its tRNS grey value made white: the value is in 16-bit units, so it is
    matched before scaling."""
    a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    clear = im.info.get("transparency")
    opaque = a != clear if isinstance(clear, int) else np.ones(a.shape, bool)
    hi = a[opaque].max() if opaque.any() and a[opaque].max() > 0 else 1.0
    grey = np.where(opaque, np.clip(a * (255.0 / hi), 0, 255), _BACKGROUND[0]).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def no_images(folder: Path | str) -> str:
    """The one wording of a folder that holds no image names: an images source's (`run`,
    check-config) and a folder given to `scan` or `classify` (was: 'nothing was scanned')."""
    return f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})"


def is_image_name(path: Path) -> bool:
    """True when the name looks like an image (used when searching folders)."""
    suffix = path.suffix.lower()
    return any(suffix.startswith(s) for s in IMAGE_SUFFIXES)


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursive, sorted by path; hidden files and folders skipped.

    The one folder lister: ``maskd classify``/``scan`` and the images source read the same
    files in the same order (``search_images`` also names the folders it could not search).
    """
    return [p for p in search_images(root) if isinstance(p, Path)]


def search_images(root: Path, every_file: bool = False, hidden: list[Path] | None = None,
                  ) -> list[Path | FolderError]:
    """``find_images`` with a FolderError, in its sorted place, for each folder not searched.

    Links to folders are followed (a photo folder on another disk); one that leads to a folder
    searched already (a loop, or a second link to it) is reported instead of searched again,
    the names taken in sorted order, so the same folders give the same list on every disk.
    ``every_file``: every non-hidden name, not only image names (tools/dataset.py).
    ``hidden``: given, it gets the hidden folders and images passed over (``hidden_note``).
    """
    found: list[Path | FolderError] = []

    def refused(err: OSError) -> None:
        found.append(FolderError(Path(err.filename), f"cannot search this folder: "
                                                      f"{err.strerror or err}"))

    seen: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        pass  # os.walk reports it
    # the folders under root reached without a link: each is searched under its own name, a
    # link to one is not (a link named before it, or nearer the top, took its place)
    own: set[tuple[int, int]] = set()
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # not searched either
        for d in dirnames:
            try:
                st = os.stat(Path(dirpath) / d, follow_symlinks=False)
            except OSError:
                continue  # the search below reports it
            own.add((st.st_dev, st.st_ino))
    for dirpath, dirnames, filenames in os.walk(root, onerror=refused, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                if hidden is not None:
                    hidden.append(Path(dirpath) / d)
                continue
            sub = Path(dirpath) / d
            try:
                st = os.stat(sub)
            except OSError as err:
                refused(err)
                continue
            if (st.st_dev, st.st_ino) in seen or ((st.st_dev, st.st_ino) in own
                                                    and sub.is_symlink()):
                found.append(FolderError(sub, "a link to a folder searched already, not "
                                              "searched again"))
                continue
            seen.add((st.st_dev, st.st_ino))
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if not name.startswith("."):
                if every_file or is_image_name(Path(name)):
                    found.append(Path(dirpath) / name)
            elif hidden is not None and is_image_name(Path(name)):
                hidden.append(Path(dirpath) / name)
    if hidden is not None:
        hidden.sort()
    return sorted(found, key=entry_path)


def hidden_note(folder: Path, hidden: list[Path]) -> str | None:
    """The line `scan` and `classify` say for the hidden folders and images they passed over
    (a ``.thumbnails`` folder, a Mac's ``._IMG_1.jpg``), so a folder of them is not said to
    hold 'no images' without a word why (``search_images``' ``hidden``)."""
    if not hidden:
        return None
    return (f"{folder}: {len(hidden)} hidden folder(s) or image(s) not searched, e.g. "
            f"{hidden[0]} (a name starting with '.')")


def entry_path(entry: Path | FolderError) -> Path:
    """The path of an image or of a folder not searched (``search_images``'s entries)."""
    return entry.path if isinstance(entry, FolderError) else entry
