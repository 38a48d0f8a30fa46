"""maskd.images: every odd file of the training set, EXIF, broken input, folder search."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskd.images import ImageError, find_images, load_image_rgb


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
        ("empty.jpg", b"", "not an image"),
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
