"""Grey (infrared) pictures are noticed and told: maskd.night on real pictures, and a real run."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskd.demo import SIZE, DemoSource
from maskd.night import (
    AGREE,
    GREY_SPREAD,
    LOOK_EVERY_S,
    SAY_EVERY_S,
    GreyWatch,
    channel_spread,
    looks_grey,
)

REPO = Path(__file__).resolve().parents[1]


def grey(image: np.ndarray) -> np.ndarray:
    """As an infrared camera sends a picture: three equal channels."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def jpeg(image: np.ndarray, quality: int = 75) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def demo_frame() -> np.ndarray:
    frame = DemoSource().read()
    assert frame is not None
    return frame.image


def test_colour_and_grey_pictures_are_told_apart_after_the_codec():
    colour = demo_frame()
    assert channel_spread(colour) > 3 * GREY_SPREAD and not looks_grey(colour)
    assert not looks_grey(jpeg(colour, 30))
    for picture in (grey(colour), jpeg(grey(colour)), jpeg(grey(colour), 20)):
        assert looks_grey(picture), channel_spread(picture)
    assert channel_spread(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)) == 0.0  # one channel
    # a grey picture with a faint tint (a camera's white balance) is still grey ...
    tinted = np.clip(grey(colour).astype(np.int16) + np.array([0, 2, 4]), 0, 255).astype(np.uint8)
    assert looks_grey(tinted)
    # ... a dim colour one is not
    assert not looks_grey((colour * 0.3).astype(np.uint8))


@pytest.mark.shared
def test_the_dev_photos_are_colour_and_made_grey_are_grey(shared):
    """The rule's own data: scene photos of streets and rooms, as they are and made grey."""
    photos = sorted((shared / "data/scenes-dev/images").glob("*.jpg"))[:60]
    assert photos
    for p in photos:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert not looks_grey(image), (p.name, channel_spread(image))
        assert looks_grey(jpeg(grey(image))), p.name


def test_the_state_changes_after_looks_that_agree_and_each_change_is_said_once(caplog):
    colour, night = demo_frame(), jpeg(grey(demo_frame()))
    watch = GreyWatch("door")
    t = 0.0

    def show(picture: np.ndarray, seconds: float) -> None:
        nonlocal t
        end = t + seconds
        while t < end:
            watch.look(picture, t)
            t += 1 / 15

    with caplog.at_level(logging.INFO, logger="maskd.night"):
        show(colour, 20)
        assert watch.since is None and caplog.text == ""
        show(night, LOOK_EVERY_S * (AGREE - 1))  # fewer grey looks than AGREE: a dark moment
        show(colour, 10)
        assert watch.since is None and caplog.text == ""
        began = t
        show(night, 60)
        assert watch.since is not None and began <= watch.since < began + LOOK_EVERY_S
        assert caplog.text.count("door: the camera sends grey pictures (infrared night mode?)") == 1
        show(colour, 2 * LOOK_EVERY_S * AGREE)
        assert watch.since is None
        assert caplog.text.count("door: colour pictures again, after 1 min of grey ones") == 1
        assert caplog.text.count("grey pictures (infrared") == 1


def test_a_camera_whose_infrared_mode_flaps_is_one_line_a_minute_at_most(caplog):
    """At dusk a camera's infrared filter may switch back and forth (light near its switching
    point, its own lamp lit on a wall): each change was a line, about 360 an hour. One line a
    minute at most now, counting the changes between, and the state it ends in is said."""
    colour, night = demo_frame(), jpeg(grey(demo_frame()))
    watch = GreyWatch("door")
    t = 0.0
    with caplog.at_level(logging.INFO, logger="maskd.night"):
        for i in range(60):  # 10 min: 10 s of each (AGREE looks), 60 changes
            for _ in range(AGREE):
                watch.look(night if i % 2 == 0 else colour, t)
                t += LOOK_EVERY_S
            assert watch.grey == (i % 2 == 0)  # the state itself follows at once
        for _ in range(int(2 * SAY_EVERY_S / LOOK_EVERY_S)):  # then colour for 2 min
            watch.look(colour, t)
            t += LOOK_EVERY_S
    lines = [r for r in caplog.records if r.name == "maskd.night"]
    assert 10 <= len(lines) <= t / SAY_EVERY_S + 1, [r.getMessage() for r in lines]
    assert lines[0].getMessage().startswith("door: the camera sends grey pictures")
    assert "changes between colour and grey since the last line" in lines[1].getMessage()
    assert lines[-1].getMessage().startswith("door: colour pictures again"), lines[-1].getMessage()
    assert not watch.grey


def test_the_minutes_of_grey_end_when_colour_came_back_not_at_the_line(caplog):
    """A colour line held back (a minute since the grey one) said the minutes up to itself: 20 s
    of grey in a real run were 'after 1 min of grey ones' (was 0 before the line was held). They
    end where colour came back, as when each change was said at once."""
    colour, night = demo_frame(), jpeg(grey(demo_frame()))
    watch = GreyWatch("door")
    t = 0.0
    with caplog.at_level(logging.INFO, logger="maskd.night"):
        for picture, seconds in ((colour, 10), (night, 20), (colour, 2 * SAY_EVERY_S)):
            for _ in range(int(seconds / LOOK_EVERY_S)):
                watch.look(picture, t)
                t += LOOK_EVERY_S
    said = [r.getMessage() for r in caplog.records if r.name == "maskd.night"]
    assert len(said) == 2 and said[1] == "door: colour pictures again, after 0 min of grey ones", said


def test_a_clock_step_back_does_not_stop_the_looks():
    watch = GreyWatch("door")
    night = grey(demo_frame())
    watch.look(night, 1_000_000.0)
    watch.look(night, 10.0)  # the wall clock set back: still a look, not one in a million s
    assert watch.since is not None


def test_a_run_on_an_infrared_clip_says_so_and_counts_it(tmp_path):
    """The real loop on the demo's frames made grey (as a door camera sends them at night):
    one WARNING naming the camera, and the stats line says it while it lasts."""
    demo, clip = DemoSource(), tmp_path / "night.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), demo.fps, SIZE)
    while (frame := demo.read()) is not None:
        writer.write(grey(frame.image))
    writer.release()
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", str(clip),
                        "--exit-at-end", "--detector", "blazeface", "--camera", "door"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("door: the camera sends grey pictures (infrared night mode?)") == 1
    assert any(ln.endswith("| active 0 | grey pictures (infrared?)")
               for ln in r.stderr.splitlines()), r.stderr
