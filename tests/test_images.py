"""maskd.images: every odd file of the training set, EXIF, broken input, folder search."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from maskd.images import (
    MAX_PIXELS,
    FolderError,
    ImageError,
    entry_path,
    find_images,
    load_image_rgb,
    search_images,
)


@lru_cache(maxsize=2)
def _odd_files(root: Path) -> dict[str, list[Path]]:
    """Odd files found by content (PIL reads the header only), never by name."""
    odd: dict[str, list[Path]] = {"rgba": [], "palette": [], "webp": [], "png_named_jpg": []}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        with Image.open(p) as im:
            if im.mode in ("RGBA", "LA"):
                odd["rgba"].append(p)
            if im.mode == "P":
                odd["palette"].append(p)
            if im.format == "WEBP":
                odd["webp"].append(p)
            if im.format == "PNG" and p.suffix.lower() in (".jpg", ".jpeg"):
                odd["png_named_jpg"].append(p)
    return odd


@pytest.mark.shared
def test_every_odd_file_of_the_training_set_loads_as_rgb(facemask_dir: Path) -> None:
    odd = _odd_files(facemask_dir)
    # The set's documented quirks are all present, so this test really covers them.
    assert odd["rgba"] and odd["palette"] and odd["png_named_jpg"]
    assert len(odd["webp"]) == 3
    for kind, paths in odd.items():
        for p in paths:
            a = load_image_rgb(p)
            with Image.open(p) as im:
                w, h = im.size
            assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, (kind, p)
            assert a.shape[:2] == (h, w), (kind, p)  # no EXIF rotation in these files


@pytest.mark.shared
def test_transparent_pixels_become_white(facemask_dir: Path) -> None:
    checked = 0
    odd = _odd_files(facemask_dir)
    for p in odd["palette"] + odd["rgba"]:
        with Image.open(p) as im:
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if (alpha == 0).any():
            a = load_image_rgb(p)
            assert (a[alpha == 0] == 255).all(), p
            checked += 1
    assert checked >= 2


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 deg clockwise to display
    p = tmp_path / "rotated.jpg"
    Image.fromarray(img).save(p, exif=exif, quality=95)
    a = load_image_rgb(p)
    assert a.shape == (40, 20, 3)
    assert a[5, 10, 0] > 200 and a[35, 10, 0] < 60  # red on top after rotation


def test_greyscale_and_16bit(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 9), 100, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((8, 9), 1000, np.uint16)).save(tmp_path / "g16.png")
    assert (load_image_rgb(tmp_path / "g.png") == 100).all()
    assert load_image_rgb(tmp_path / "g16.png").shape == (8, 9, 3)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("truncated.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "cannot decode"),
        ("text.png", b"this is not an image", "not an image"),
        ("empty.jpg", b"", ": an empty file (0 bytes), not an image"),
    ],
)
def test_broken_files_raise_image_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageError) as err:
        load_image_rgb(p)
    assert str(p) in str(err.value) and reason in str(err.value)


def test_a_damaged_avif_is_an_image_error(tmp_path: Path) -> None:
    """Pillow's AVIF decoder raises RuntimeError for damaged colour planes: it went past every
    handler, ending `maskd scan` at that file, `classify` with its batch unsaid, and `run`'s
    images source with exit 70."""
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    good = io.BytesIO()
    Image.fromarray(noise).save(good, "AVIF")
    data = good.getvalue()
    for at in range(min(len(data), 600)):  # the first byte whose flip breaks the decoder so
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        try:
            Image.open(io.BytesIO(bytes(damaged))).load()
        except RuntimeError:
            break
        except Exception:  # noqa: BLE001 - other damage, handled before
            continue
    else:
        pytest.skip("no single flipped byte makes this encoder's AVIF raise RuntimeError")
    p = tmp_path / "door.jpg"  # Pillow tells the format by its bytes, whatever the name
    p.write_bytes(bytes(damaged))
    with pytest.raises(ImageError, match=f"^{p}: cannot decode image: "):
        load_image_rgb(p)


def test_a_phones_folder_is_searched_for_its_formats_too(tmp_path: Path) -> None:
    """A phone's or browser's .jfif, .avif and .heic photos were passed over without a word:
    `maskd scan phone/` said "nothing was scanned" of a folder of readable photos."""
    picture = np.random.default_rng(1).integers(0, 256, (24, 32, 3), np.uint8)
    Image.fromarray(picture).save(tmp_path / "IMG_1.jfif", "JPEG")
    (tmp_path / "IMG_3.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    from PIL import features

    names = ["IMG_1.jfif", "IMG_3.HEIC"]
    if features.check("avif"):
        Image.fromarray(picture).save(tmp_path / "IMG_2.avif", "AVIF")
        names.insert(1, "IMG_2.avif")
    assert [p.name for p in find_images(tmp_path)] == names
    assert load_image_rgb(tmp_path / "IMG_1.jfif").shape == (24, 32, 3)
    if "IMG_2.avif" in names:
        assert load_image_rgb(tmp_path / "IMG_2.avif").shape == (24, 32, 3)
    with pytest.raises(ImageError, match="IMG_3.HEIC: a HEIC/HEIF photo, which maskd cannot "
                                         "read: save it as JPEG"):
        load_image_rgb(tmp_path / "IMG_3.HEIC")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image_rgb(tmp_path)


def test_find_images_recurses_and_keeps_odd_suffixes(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("x.jpg", "a/y.PNG", "a/b/z.jpg_1088wx1632h", "a/notes.txt", "a/b/box.xml", ".hidden.jpg"):
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/b/z.jpg_1088wx1632h", "a/y.PNG", "x.jpg"]  # sorted by path


# Run in a fresh process: ru_maxrss is a high-water mark, so the test's own big array must not
# count. Prints decoded height, width, RSS growth in MB and the pixel at the red block's centre.
PEAK_RSS = """
import resource, sys
from maskd.images import load_image_rgb
load_image_rgb(sys.argv[2])  # warm up: imports and PIL plugins are not the image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = load_image_rgb(sys.argv[1])
grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
h, w = img.shape[:2]
print(h, w, grew_mb, *img[h * 3 // 16, w * 5 // 8])
"""


def test_huge_jpeg_is_decoded_reduced_in_bounded_memory(tmp_path: Path) -> None:
    """12000x12000 (144 MP, 432 MB as RGB): decoded at 1/4 scale inside the JPEG decoder."""
    big = np.full((12000, 12000, 3), 90, np.uint8)  # flat: the JPEG is small
    big[1500:3000, 6000:9000] = (0, 0, 255)  # BGR red block, centre at 3/16 down, 5/8 across
    assert cv2.imwrite(str(tmp_path / "big.jpg"), big)
    del big
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "small.jpg")
    r = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / "big.jpg"),
                        str(tmp_path / "small.jpg")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr  # no DecompressionBombWarning noise: we bound it ourselves
    h, w, grew_mb, red, green, blue = (int(v) for v in r.stdout.split())
    assert (h, w) == (3000, 3000) and h * w <= MAX_PIXELS
    assert grew_mb < 220, f"decoding took {grew_mb} MB"  # full size: about 1.4 GB
    assert red > 200 and green < 60 and blue < 60  # RGB, and the picture is the same picture


def test_huge_image_that_cannot_be_decoded_reduced_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    assert cv2.imwrite(str(p), np.full((4000, 5000, 3), 90, np.uint8))  # 20 MP
    with pytest.raises(ImageError, match=rf"^{re.escape(str(p))}: too large to decode within "
                                         r"memory bounds \(5000x4000"):  # not 'cannot decode'
        load_image_rgb(p)


def test_links_to_folders_are_followed_and_loops_named(tmp_path: Path) -> None:
    """Links to folders were skipped silently; followed now, a loop is named, not walked again."""
    root, away = tmp_path / "root", tmp_path / "away"
    (root / "sub").mkdir(parents=True)
    away.mkdir()
    for p in (root / "a.jpg", root / "sub" / "b.jpg", away / "c.jpg"):
        p.write_bytes(b"")
    (root / "sub" / "back").symlink_to(root)  # a loop
    (root / "sd").symlink_to(away)  # a photo folder on another disk
    (root / "sd2").symlink_to(away)  # the same folder twice
    found = search_images(root)
    names = [entry_path(e).relative_to(root).as_posix() for e in found]
    assert names == ["a.jpg", "sd/c.jpg", "sd2", "sub/b.jpg", "sub/back"]
    errors = [str(e) for e in found if isinstance(e, FolderError)]
    assert errors == [f"{root / n}: a link to a folder searched already, not searched again"
                      for n in ("sd2", "sub/back")]
    assert find_images(root) == [root / "a.jpg", root / "sd" / "c.jpg", root / "sub" / "b.jpg"]


def test_a_folder_is_searched_under_its_own_name_not_a_links(tmp_path: Path) -> None:
    """A link named before its folder (`album` -> `trips/2024`), or nearer the top, was
    searched in its stead: the photos got the link's paths, and the real folder was named 'a
    link to a folder searched already', which it is not (the dataset's unreadable list too)."""
    root = tmp_path / "root"
    (root / "trips" / "2024").mkdir(parents=True)
    (root / "trips" / "2024" / "a.jpg").write_bytes(b"")
    (root / "album").symlink_to(root / "trips" / "2024")
    found = search_images(root)
    assert [entry_path(e).relative_to(root).as_posix() for e in found] == [
        "album", "trips/2024/a.jpg"]
    assert str(found[0]) == f"{root / 'album'}: a link to a folder searched already, not searched again"
    (root / ".hidden" / "x").mkdir(parents=True)  # not searched: a link to it is
    (root / ".hidden" / "x" / "b.jpg").write_bytes(b"")
    (root / "shown").symlink_to(root / ".hidden" / "x")
    assert root / "shown" / "b.jpg" in search_images(root)


def test_a_named_pipe_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO named like an image blocked open() until a writer came: for ever."""
    fifo = tmp_path / "b.jpg"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-c", "import sys\nfrom maskd.images import "
                        "load_image_rgb\ntry:\n load_image_rgb(sys.argv[1])\nexcept Exception "
                        "as e:\n print(e)", str(fifo)], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == f"{fifo}: a named pipe, not a regular file", r.stderr


def test_a_huge_mpo_is_decoded_reduced_like_a_jpeg(tmp_path: Path) -> None:
    """A 20 MP MPO (a JPEG with a second picture after it: Android's Ultra HDR photos) was
    refused as too large, while the same JPEG was decoded at 1/2 scale."""
    big = np.full((4000, 5000, 3), 90, np.uint8)
    big[:2000] = (200, 10, 10)  # the top half red: the first picture is the one decoded
    p = tmp_path / "ultrahdr.jpg"
    Image.fromarray(big).save(p, format="MPO", save_all=True,
                              append_images=[Image.fromarray(np.zeros((400, 500, 3), np.uint8))])
    del big
    with Image.open(p) as im:
        assert im.format == "MPO"
    rgb = load_image_rgb(p)
    assert rgb.shape == (2000, 2500, 3)
    assert rgb[500, 1000, 0] > 180 and rgb[1500, 1000, 0] < 120


def test_16bit_grey_with_a_transparent_value_is_not_white(tmp_path: Path) -> None:
    """A 16-bit grey PNG with tRNS went through the alpha path before its 16-bit scaling and
    came out almost all white; now it is scaled first and only its transparent pixels are."""
    a = np.full((8, 9), 30000, np.uint16)
    a[:, :3] = 0  # the transparent value
    a[0, 8] = 60000
    p = tmp_path / "g16t.png"
    Image.fromarray(a).save(p, transparency=0)
    with Image.open(p) as im:
        assert im.info.get("transparency") == 0 and im.mode.startswith("I")
    rgb = load_image_rgb(p)
    assert (rgb[:, :3] == 255).all()  # transparent onto white
    assert (rgb[1:, 3:] == 127).all() and (rgb[0, 8] == 255).all()


def test_a_corrupt_exif_block_prints_no_warning(tmp_path: Path) -> None:
    """PIL's UserWarnings about a corrupt EXIF block reached stderr without naming the file;
    the image itself decodes, its orientation still applied where Pillow reads it: Pillow 13
    skips the tag whose data lies past the end, before 13 (10.0 to 12.3 seen, within
    pyproject's floor) the whole block is dropped and the photo stays as stored."""
    import struct
    import warnings

    import PIL

    ifd = (struct.pack("<H", 2) + struct.pack("<HHII", 0x010E, 2, 100, 1000)  # past the end
           + struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<I", 0))  # rotate 90
    p = tmp_path / "bad_exif.jpg"
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(
        p, exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rgb = load_image_rgb(p)
    turned = int(PIL.__version__.split(".")[0]) >= 13
    assert rgb.shape == ((30, 40, 3) if turned else (40, 30, 3))
    assert [str(w.message) for w in seen] == []


def test_a_phone_photo_with_a_mistyped_exif_tag_is_read_upright(tmp_path: Path) -> None:
    """A tag stored with the wrong type (text under a number's tag, as in a GPS reference some
    phones write) made Pillow's exif_transpose fail writing the block back out (struct.error):
    the photo, whose pixels and orientation read fine, was refused as 'cannot decode image'."""
    import struct

    ifd = (struct.pack("<H", 2) + struct.pack("<HHI4s", 0x0108, 2, 4, b"abc\0")  # text, a LONG's
           + struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<I", 0))  # rotate 90
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # left half red: on top once turned
    p = tmp_path / "phone.jpg"
    Image.fromarray(img).save(p, exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd, quality=95)
    a = load_image_rgb(p)
    assert a.shape == (40, 20, 3)
    assert a[5, 10, 0] > 200 and a[35, 10, 0] < 60


def test_a_float_grey_tiff_in_0_to_1_is_a_picture_not_black(tmp_path: Path) -> None:
    """A 32-bit float grey TIFF holds 0..1 (what cv2.imwrite writes for a float image, and what
    image tools export): PIL's convert clipped it to 0 and 1, a black picture, so scan found no
    face and classify judged the black, without a word. It is scaled as 16-bit grey is."""
    a = np.full((8, 9), 0.5, np.float32)
    a[0, 8] = 1.0
    p = tmp_path / "gf.tif"
    assert cv2.imwrite(str(p), a)
    with Image.open(p) as im:
        assert im.mode == "F"
    rgb = load_image_rgb(p)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 9, 3)
    assert (rgb[1:] == 127).all() and (rgb[0, 8] == 255).all()
