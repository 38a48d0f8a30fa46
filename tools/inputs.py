"""Checks of what a user hands the offline tools (train, convert, evaluate, explain ...).

Project rule for bad input: one line naming the option or file and what is wrong, a non-zero
exit, no traceback, and nothing already produced lost. So the argparse types here reject a bad
number while the command line is parsed (before TensorFlow is imported or a file is written),
and ``out_dir`` / ``load_keras`` turn the OSError or Keras failure behind a bad path into that
one line. One copy here, so the tools cannot drift apart.
"""

from __future__ import annotations

import argparse
import atexit
import math
import stat
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _number(cast: Callable[[str], Any], ok: Callable[[Any], bool], want: str
            ) -> Callable[[str], Any]:
    """An argparse ``type=``: ``cast`` the text, then require ``ok`` (NaN never passes)."""
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {want}")
        return value
    parse.__name__ = want  # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
probability = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
open_unit = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def comma_list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse ``type=`` for 'a,b,c': each part checked by ``item`` (one of the above)."""
    def parse(text: str) -> list[Any]:
        parts = [t.strip() for t in text.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(f"{text!r} names no value")
        return [item(t) for t in parts]
    parse.__name__ = f"comma list of {item.__name__}"
    return parse


def _remove_if_empty(made: list[Path]) -> None:
    """The folders ``out_dir`` made, innermost first, while each is empty."""
    for path in made:
        try:
            path.rmdir()
        except OSError:  # not empty (or gone): it stays as it is, and the ones above it
            return


def out_dir(path: Path) -> Path:
    """Create the output folder ``path`` now, right after parsing, and try a file in it, so a
    path inside a file or an unwritable place (a read-only disk) stops the tool before its
    work, not after it. One it created that is still empty when the tool ends (it stopped
    before writing: its data missing) is removed again, not left behind as a run's folder, and
    so are the folders above it that it created for it (was: runs/ of runs/new left, empty)."""
    made, above = [], path
    while not above.exists() and above != above.parent:
        made.append(above)
        above = above.parent
    if made:
        atexit.register(_remove_if_empty, made)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SystemExit(f"{path}: cannot create the output folder (a file of that name is "
                         "there)") from None
    except OSError as err:
        raise SystemExit(f"{path}: cannot create the output folder ({err.strerror or err})"
                         ) from None
    try:  # a folder that is there but cannot take a file (a read-only disk) passed mkdir
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise SystemExit(f"{path}: cannot write in the output folder ({err.strerror or err})"
                         ) from None
    return path


def out_file(path: Path) -> Path:
    """An output file's folder created now (``out_dir``); a folder in the file's place is an error."""
    if path.is_dir():
        raise SystemExit(f"{path}: is a folder; give a file name for the output")
    out_dir(path.parent)
    return path


def image_out(path: Path) -> Path:
    """An image file to write later (a contact sheet): OpenCV must know its type by the suffix
    and its folder is created now (``out_file``), so neither fails after the work is done."""
    import cv2

    if not cv2.haveImageWriter(str(path)):
        raise SystemExit(f"{path}: cannot write an image of type {path.suffix or '(no suffix)'}; "
                         "give a .png or .jpg name")
    return out_file(path)


def figure_out(path: Path) -> Path:
    """A Matplotlib figure to save later (a sheet, a plot): its type by the suffix and its
    folder checked now, as ``image_out`` does for OpenCV (a .txt was a traceback at the end)."""
    from matplotlib.figure import Figure

    kinds = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in kinds:
        raise SystemExit(f"{path}: cannot save a figure of type {path.suffix or '(no suffix)'}; "
                         "give a .png, .pdf or .svg name")
    return out_file(path)


def write_image(path: Path, bgr: Any) -> None:
    """``cv2.imwrite`` that fails loudly: it returns False (a folder gone, a full disk) and
    said nothing, and the tool printed 'wrote' all the same. Encoded in memory and written as
    ``write_bytes`` does, so a full disk leaves no half image either."""
    import cv2

    try:
        ok, data = cv2.imencode(path.suffix or ".png", bgr)
    except cv2.error as err:
        raise SystemExit(f"{path}: cannot write the image ({reason(err)})") from None
    if not ok:
        raise SystemExit(f"{path}: cannot write the image")
    write_bytes(path, data.tobytes(), "the image")


def save_figure(fig: Any, path: Path, **savefig: Any) -> None:
    """A Matplotlib figure saved as ``write_bytes`` writes: ``fig.savefig`` on a full or
    read-only disk was an OSError traceback after the work (eval_video --plot), and left half
    a PNG. Its type is the suffix (``figure_out`` checks it before the work)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", **savefig)
    write_bytes(path, buf.getvalue(), "the figure")


def write_bytes(path: Path, data: bytes, what: str = "it") -> None:
    """An output file written after the work: a write that fails (a full disk, a file that
    refuses writes) stops the tool with one line naming it and ``what``, not a traceback.

    Written to a temporary file beside it and renamed over it: a write in place left half a
    file (invalid JSON) on a full disk, presented as the report. A failed write leaves the old
    file, or none. A device or pipe (``/dev/stdout``) is written as it is: it cannot be renamed.
    """
    from maskd.files import write_atomically  # the product's one way (a model and its sidecar)

    try:
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            path.write_bytes(data)
        else:
            write_atomically(path, data)
    except OSError as err:
        raise SystemExit(f"{path}: cannot write {what} ({err.strerror or err})") from None


def write_out(path: Path, text: str) -> None:
    """A text output written after the work (a JSON report), as ``write_bytes`` writes it. A
    file name that is not UTF-8 (Python holds its bytes as surrogates) is written back as those
    bytes: strict UTF-8 was a UnicodeEncodeError after the work, the report never written."""
    write_bytes(path, text.encode("utf-8", "surrogateescape"))


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity as None (JSON null) and NumPy numbers as Python's:
    json.dumps writes NaN, which is not JSON, so a metric of nothing (precision with no
    positives, a zero Grad-CAM map) made the whole file unreadable to strict readers."""
    if type(value).__module__ == "numpy":
        value = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as indented JSON that strict readers accept (``json_safe``), newline-ended."""
    import json

    return json.dumps(json_safe(value), indent=1, allow_nan=False, default=str) + "\n"


def write_json(path: Path, value: Any) -> None:
    """A tool's JSON report or record: valid JSON (``json_text``), written as ``write_out`` does."""
    write_out(path, json_text(value))


def number(value: float, fmt: str = ".4f") -> str:
    """A metric for a printed line: 'n/a' where it is undefined (NaN), as JSON gets null."""
    return format(value, fmt) if math.isfinite(value) else "n/a"


def read_json(path: Path) -> Any:
    """A JSON file a tool reads (a run's record.json), or one line naming it and what is wrong
    (a broken one was a JSONDecodeError traceback)."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SystemExit(f"{path}: cannot read it as JSON ({reason(err)})") from None


def reason(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line for a message (Keras and h5py write several)."""
    return " ".join(str(err).split())[:limit] or type(err).__name__


def keras_file(path: Path) -> Path:
    """``path`` if it can be a .keras model (a file, a zip archive), else SystemExit naming it:
    checked before any work (a timing run, a conversion) and again by ``load_keras``."""
    if not path.is_file():
        raise SystemExit(f"{path}: model not found (tools/train.py writes runs/<run>/model.keras)")
    if not zipfile.is_zipfile(path):  # what Keras would call 'File not found'
        raise SystemExit(f"{path}: not a readable .keras model (not a zip archive)")
    return path


def load_keras(path: Path) -> Any:
    """``path`` as a Keras model, or SystemExit naming the file: Keras reports a broken or
    foreign file as 'File not found' or a zip/HDF5 error that hides which file and why."""
    keras_file(path)
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - keras raises ValueError, OSError, zip errors ...
        raise SystemExit(f"{path}: not a readable .keras model ({reason(err)})") from None


def save_keras(model: Any, path: Path) -> None:
    """``model.save(path)`` whole or not at all: Keras writes the zip in place, so a full disk
    or a Ctrl-C left a cut model.keras (and a traceback). Saved under a hidden ``.keras`` name
    in the same folder, then renamed over ``path``; on a failure the temporary is removed and
    the tool stops with one line naming ``path``, any earlier file left as it was."""
    import secrets

    tmp = path.with_name(f".maskd-{secrets.token_hex(6)}.keras")  # Keras wants the suffix
    try:
        model.save(tmp)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"{path}: cannot write the model ({err.strerror or reason(err)}); "
                         "nothing was written there") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_keras_classifier(path: Path, labels: list[str]) -> tuple[Any, int]:
    """(model, input size) of a .keras classifier maskd can use: one square RGB input of a fixed
    size and one output of a score per label, or SystemExit naming the file. A non-square or
    open-sized input was a Keras traceback at conversion; a 3-class or one-sigmoid model was
    converted with a sidecar of two labels (which maskd then refused) and scored by evaluate
    with its second column read as P(no_mask)."""
    model = load_keras(path)
    shape = tuple(model.input_shape) if len(model.inputs) == 1 else None
    if (shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2]
            or shape[3] != 3):
        raise SystemExit(f"{path}: input {model.input_shape}: a classifier here takes one square "
                         "RGB image of a fixed size, (None, S, S, 3)")
    out = tuple(model.output_shape) if len(model.outputs) == 1 else None
    if out is None or len(out) != 2 or out[1] != len(labels):
        raise SystemExit(f"{path}: output {model.output_shape}: a classifier here gives one "
                         f"score per label, {len(labels)} ({', '.join(labels)}), (None, "
                         f"{len(labels)})")
    return model, int(shape[1])
