"""What a site sets up around the alarm, on real frames through the real loop, detector and
classifier: ignore/include zones, pictures of faces (posters), weekly schedules.

The frames are the demo's bare-faced astronaut (maskd.demo, no data set needed) on a grey wall,
either pasted still (a poster) or walking slowly across (a person); timestamps are scripted,
so a schedule can be crossed at a chosen wall-clock time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from loop_parts import RecordingSink

from maskd import schedule, zones
from maskd.clock import ZoneWatch
from maskd.config import Config, ConfigError, ScheduleWindow, parse_config
from maskd.demo import astronaut_bgr
from maskd.pipeline import Pipeline
from maskd.service import CameraLoop, build_classifier, build_detector
from maskd.sources import rotated
from maskd.types import Frame, RunControl

W, H, FPS = 640, 480, 10.0
FACE = 200  # pasted photo side in pixels


class Clip:
    """A scripted source: the photo at x(i), frame i at start + i / FPS."""

    name, is_live = "clip", False

    def __init__(self, n: int, x, start: float | None = None) -> None:  # noqa: ANN001
        photo = cv2.resize(astronaut_bgr(), (FACE, FACE), interpolation=cv2.INTER_AREA)
        self.frames = []
        for i in range(n):
            img = np.full((H, W, 3), (118, 124, 128), np.uint8)
            x0 = int(x(i))
            img[140:140 + FACE, x0:x0 + FACE] = photo
            self.frames.append(img)
        self.start = time.time() if start is None else start
        self.stats: dict = {}
        self._i = 0

    def read(self) -> Frame | None:
        if self._i >= len(self.frames):
            return None
        i, self._i = self._i, self._i + 1
        return Frame(self.frames[i], i, self.start + i / FPS, self.name)

    def close(self) -> None:
        pass


def still(i: int) -> float:
    return 220


def walking(i: int) -> float:
    return 60 + 6 * i  # 60 px/s: a slow walk past the door


def run(clip: Clip, default_model, **cfg) -> tuple[RecordingSink, CameraLoop]:  # noqa: ANN001
    c = parse_config({"detector": {"kind": "blazeface"}, "classifier": {"model": str(default_model)},
                      **cfg})
    sink = RecordingSink()
    loop = CameraLoop(c, clip, Pipeline(c, build_detector(c), build_classifier(c)), [sink], [],
                      RunControl(), exit_at_end=True)
    assert loop.run(flush_timeout=1.0) == 0
    return sink, loop


def starts(sink: RecordingSink) -> int:
    return sum(e.event_type == "start" for e in sink.events)


def test_zone_geometry_and_config():
    square = [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]
    assert zones.inside(0.75, 0.5, square) and not zones.inside(0.25, 0.5, square)
    tri = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    assert zones.inside(0.2, 0.2, tri) and not zones.inside(0.8, 0.8, tri)
    box = (400.0, 100.0, 500.0, 200.0)  # centre (450, 150) of 640x480 -> (0.70, 0.31)
    assert not zones.counts(box, W, H, None, [square])
    assert zones.counts(box, W, H, [square], [])
    assert not zones.counts(box, W, H, [tri], [])
    cfg = parse_config({"cameras": {"a": {"source": {"kind": "demo"}, "zones": {"ignore": [tri]}},
                                    "b": {"source": {"kind": "demo"}}},
                        "zones": {"include": [square]}})
    a, b = cfg.cameras_resolved()
    assert a.zones.include is None and len(a.zones.ignore) == 1
    assert b.zones.include == [square] and b.zones.ignore == []
    with pytest.raises(Exception, match="a zone needs at least 3"):
        parse_config({"zones": {"ignore": [[[0, 0], [1, 1]]]}})


def test_zone_rules_at_their_edges():
    """Zones listed either way round, concave, or several; points exactly level with a corner."""
    clockwise = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]
    assert zones.area(clockwise) == pytest.approx(1.0)  # not -1: a clockwise zone has an area
    parse_config({"zones": {"include": [[list(p) for p in clockwise]]}})
    # a concave L: one edge's line cuts another edge without the edges meeting
    ell = [(0, 0), (1, 0), (1, 0.5), (0.5, 0.5), (0.5, 1), (0, 1)]
    assert zones.crossing(ell) is None
    parse_config({"zones": {"ignore": [[list(p) for p in ell]]}})
    # points on one line whose products round to 1e-17, not 0: "no area", not "crosses itself"
    line = [[0.3, 0.21], [0.4, 0.28], [0.6, 0.42], [0.7, 0.49]]
    assert zones.crossing(line) is None
    with pytest.raises(ConfigError, match="polygon 0 has no area"):
        parse_config({"zones": {"include": [line]}})
    # a diamond's centre is level with two corners: the ray through them counts once
    diamond = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    assert zones.inside(0.5, 0.5, diamond) and not zones.inside(0.9, 0.1, diamond)
    top, left = [(0, 0), (1, 0), (1, 0.5), (0, 0.5)], [(0, 0), (0.5, 0), (0.5, 1), (0, 1)]
    high = (100.0, 160.0, 140.0, 240.0)  # centre (120, 200) of 640x480: in both, y 0.42
    low = (500.0, 400.0, 540.0, 440.0)  # centre (520, 420): in neither
    assert zones.counts(high, W, H, [top], []) and not zones.counts(low, W, H, [top], [])
    assert zones.counts((500.0, 40.0, 540.0, 80.0), W, H, [left, top], [])  # one of several
    assert not zones.counts((500.0, 40.0, 540.0, 80.0), W, H, None, [left, top])
    assert zones.counts(low, W, H, None, [left, top])


def test_a_schedule_window_runs_from_its_first_instant_on_its_days_only():
    """07:30 exactly is inside a 07:30-18:00 window (and next_change names 07:30, not 07:31);
    a Monday window is off on Tuesday; an overnight window starts at its start exactly."""
    mon = datetime(2026, 12, 7)  # a Monday
    assert mon.weekday() == 0
    day = [ScheduleWindow(days=["mon"], start="07:30", end="18:00").window()]
    assert schedule.allows(day, mon.replace(hour=7, minute=30).timestamp())
    assert not schedule.allows(day, mon.replace(hour=7, minute=29, second=59).timestamp())
    assert schedule.next_change(day, mon.replace(hour=7).timestamp()) == \
        mon.replace(hour=7, minute=30).timestamp()
    assert schedule.next_change(day, mon.replace(hour=7, second=30).timestamp()) == \
        mon.replace(hour=7, minute=30).timestamp()  # on the minute, from any second
    assert not schedule.allows(day, (mon + timedelta(days=1)).replace(hour=12).timestamp())
    tue = [ScheduleWindow(days=["tue"], start="07:30", end="18:00").window()]
    assert schedule.allows(day + tue, (mon + timedelta(days=1)).replace(hour=12).timestamp())
    # a week ahead: from Tuesday the next Monday's start; a window of all hours never changes
    assert schedule.next_change(day, (mon + timedelta(days=1)).replace(hour=12).timestamp()) == \
        (mon + timedelta(days=7)).replace(hour=7, minute=30).timestamp()
    assert schedule.next_change([ScheduleWindow().window()], mon.timestamp()) is None
    night = [ScheduleWindow(days=["mon"], start="22:00", end="06:00").window()]
    assert schedule.allows(night, mon.replace(hour=22).timestamp())
    assert not schedule.allows(night, mon.replace(hour=21, minute=59).timestamp())
    assert not schedule.allows(night, (mon - timedelta(days=1)).replace(hour=22).timestamp())

def test_a_walking_bare_face_is_one_event_and_an_ignore_zone_drops_it(default_model):
    sink, _ = run(Clip(60, walking), default_model)
    assert starts(sink) == 1
    # the whole path of the face (centre x 160..520 of 640) lies in the ignore zone
    zone = [[0.1, 0.2], [0.95, 0.2], [0.95, 0.8], [0.1, 0.8]]
    sink, loop = run(Clip(60, walking), default_model, zones={"ignore": [zone]})
    assert sink.events == []
    # found on the frames the detector ran, each dropped; its motion, all in the ignore zone,
    # does not hold the detector on (the gate watches where faces count), so most are skipped
    c = loop.pipeline.counts
    assert c.faces == 0 and c.zoned_faces >= 3 and c.zoned_faces + c.motion_skipped >= 55, c
    assert sink.stats[-1]["zoned_faces"] == loop.pipeline.counts.zoned_faces
    # an include zone elsewhere drops it too; one around it keeps it
    sink, _ = run(Clip(60, walking), default_model, zones={"include": [[[0, 0], [0.1, 0], [0.1, 0.1]]]})
    assert sink.events == []
    sink, _ = run(Clip(60, walking), default_model, zones={"include": [zone]})
    assert starts(sink) == 1


def test_a_poster_raises_no_event_but_a_person_still_does(default_model, caplog):
    tracking = {"static_after_s": 2.0}
    caplog.set_level("INFO", logger="maskd.pipeline")
    sink, loop = run(Clip(80, still), default_model, tracking=tracking)
    assert loop.pipeline.counts.faces >= 70  # seen all along ...
    assert sink.events == [] and loop.pipeline.counts.static_faces == 1  # ... and never reported
    assert "treated as a picture" in caplog.text
    # the same face walking past is a person: one event, as without the option
    sink, loop = run(Clip(60, walking), default_model, tracking=tracking)
    assert starts(sink) == 1 and loop.pipeline.counts.static_faces == 0
    # without the option the poster is an alarm that never ends by itself (the reason for it)
    sink, _ = run(Clip(80, still), default_model)
    assert [e.event_type for e in sink.events][:1] == ["start"]


def test_a_schedule_window_turns_detection_off_at_its_end(default_model):
    end = datetime(2026, 11, 30, 18, 0)  # a Monday, local time
    start = end.timestamp() - 3.0  # the clip runs 17:59:57 .. 18:00:02.9
    window = {"days": ["mon"], "start": "08:00", "end": "18:00"}
    sink, loop = run(Clip(60, walking, start), default_model, schedule=[window])
    seen = [(s["timestamp"] - start, s["faces"], s["detect_enabled"]) for s in sink.states]
    assert all(on for t, _, on in seen if t < 3.0) and not any(on for t, _, on in seen if t >= 3.0)
    assert all(n == 0 for t, n, _ in seen if t >= 3.0) and any(n for t, n, _ in seen if t < 3.0)
    kinds = [(e.event_type, e.end_reason) for e in sink.events]
    assert kinds[0] == ("start", None) and kinds[-1] == ("end", "gone")  # no face after 18:00
    assert sink.stats[-1]["detect_in_force"] == "schedule"
    assert loop.control.switch and not loop.control.scheduled
    # the window's arithmetic, past midnight and on the hour
    night = [ScheduleWindow(days=["fri"], start="22:00", end="06:00").window()]
    fri_late = datetime(2026, 12, 4, 23, 0).timestamp()
    assert schedule.allows(night, fri_late)
    assert schedule.allows(night, datetime(2026, 12, 5, 5, 59).timestamp())
    assert not schedule.allows(night, datetime(2026, 12, 5, 6, 0).timestamp())
    assert schedule.next_change(night, fri_late) == datetime(2026, 12, 5, 6, 0).timestamp()
    assert schedule.allows([], fri_late) and Config().schedule == []


def test_the_logged_until_tells_the_repeated_hour_from_next_week(default_model, monkeypatch,
                                                                  caplog):
    """In the autumn's repeated hour a window ending at 02:30 turned detection off "until Sun
    02:00", said at Sunday 02:30: read as a week away, it was 30 minutes (02:00 again, in CET).
    The line names the zone and how long it is."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        start = datetime(2026, 10, 25, 2, 29, 58).timestamp()  # CEST, the first 02:29:58
        window = {"days": ["sat"], "start": "22:00", "end": "02:30"}
        with caplog.at_level("INFO", logger="maskd.service"):
            run(Clip(30, still, start), default_model, schedule=[window])
        said = [r.getMessage() for r in caplog.records if "schedule turns" in r.getMessage()]
        assert said == ["camera: schedule turns detection off until Sun 02:00 CET, in 30 min"]
        tue = datetime(2026, 12, 1, 18, 0).timestamp()  # a Tuesday, after a weekday window
        week = [ScheduleWindow(days=["mon", "tue"], start="08:00", end="18:00").window()]
        assert schedule.when(schedule.next_change(week, tue), tue) == \
            "Mon 08:00 CET, in 5 d 14 h"
        at = schedule.next_change(week, tue)  # and a change 15 s away was "in 0 min"
        assert schedule.when(at, at - 15).endswith(", in 15 s")
        assert schedule.when(at, at - 45).endswith(", in 1 min")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_previews_and_the_status_page_outline_the_zones():
    """The live views draw the zones where they are on the picture, letterboxed or not."""
    from maskd.annotate import IGNORE_COLOR, INCLUDE_COLOR
    from maskd.config import ZonesConfig
    from maskd.preview import render
    from maskd.types import LoopStats

    frame = Frame(np.full((H, W, 3), 128, np.uint8), 0, 0.0)
    z = ZonesConfig(include=[[(0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)]],
                    ignore=[[(0.5, 0.0), (1.0, 0.0), (1.0, 0.5), (0.5, 0.5)]])
    out = render(frame, [], LoopStats(), zones=z)
    assert (out[H // 4, W - 1] == IGNORE_COLOR).all()  # right edge of the top-right zone
    assert (out[3 * H // 4, 0] == INCLUDE_COLOR).all()  # left edge of the bottom-left one
    assert (out[H // 4, W // 4] == 128).all()  # inside nothing, untouched
    wide = render(frame, [], LoopStats(), size=(1280, 480), zones=z)  # frame at x 320..960
    cols = np.where((wide == IGNORE_COLOR).all(axis=2).any(axis=0))[0]
    assert 600 <= cols.min() and cols.max() <= 961
    plain = render(frame, [], LoopStats(), zones=ZonesConfig())
    assert not (plain == IGNORE_COLOR).all(axis=2).any()


@pytest.mark.parametrize(("window", "expected"), [
    ({"start": "00:00", "end": "00:00"}, "start and end are both 00:00: the window is empty"),
    ({"days": [], "start": "07:00"}, "'schedule.0.days': List should have at least 1 item"),
    ({"start": "24:00", "end": "01:00"}, "start 24:00 is the end of the day"),
    ({"start": "9:00", "end": "09:00"}, "start and end are both 9:00"),
])
def test_a_schedule_window_that_never_runs_is_refused(window, expected):
    """They passed check-config and switched detection off for good, without a word."""
    from maskd.config import ConfigError

    with pytest.raises(ConfigError, match=expected):
        parse_config({"schedule": [window]})


@pytest.mark.parametrize(("cfg", "expected"), [
    # read as the whole frame, though the docs' "only faces inside one of these" says no face
    ({"zones": {"include": []}}, "'zones.include': include: \\[\\] lists no polygon"),
    ({"cameras": {"door": {"source": {"kind": "demo"}, "zones": {"include": []}}}},
     "include: \\[\\] lists no polygon"),
    # the top-level schedule had the 64-window cap, a camera's own did not
    ({"cameras": {"door": {"source": {"kind": "demo"},
                           "schedule": [{"start": "07:00", "end": "08:00"}] * 65}}},
     "'cameras.door.schedule': List should have at most 64 items"),
    # a grey difference is at most 255 and must be more than the threshold: motion never seen
    ({"motion": {"threshold": 255}}, "'motion.threshold': Input should be less than or equal to 254"),
])
def test_zone_schedule_and_motion_settings_that_could_not_mean_what_they_say(cfg, expected):
    from maskd.config import ConfigError

    with pytest.raises(ConfigError, match=expected):
        parse_config(cfg)


def test_the_highest_motion_threshold_still_sees_black_turn_white():
    from maskd.motion import moving_share

    black, white = np.zeros((4, 4), np.float32), np.full((4, 4), 255, np.float32)
    assert moving_share(white, black, parse_config({"motion": {"threshold": 254}}
                                                   ).motion.threshold) == 1.0


def test_unquoted_yaml_times_mean_what_was_written(tmp_path):
    """YAML 1.1 reads 18:00 as 1080 (base 60); the error said 'got 1080'. A plain number is
    still no time (it is not taken as minutes)."""
    from datetime import time as clock_time

    from maskd.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("schedule:\n  - {days: [mon], start: 8:00, end: 18:00}\n")
    (w,) = load_config(path).schedule
    assert (w.window().start, w.window().end) == (clock_time(8, 0), clock_time(18, 0))
    path.write_text("schedule:\n  - {days: [mon], start: 8, end: 17}\n")
    with pytest.raises(ConfigError, match="'schedule.0.start': expected a time HH:MM"):
        load_config(path)


def test_zones_without_area_are_refused():
    """A polygon on one line dropped every face as include, and did nothing as ignore."""
    from maskd.config import ConfigError

    for poly in ([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]], [[0.3, 0.3]] * 3):
        for key in ("include", "ignore"):
            with pytest.raises(ConfigError, match="polygon 0 has no area"):
                parse_config({"zones": {key: [poly]}})
    assert zones.area([(0, 0), (1, 0), (1, 1), (0, 1)]) == pytest.approx(1.0)


def _refused_alike(tmp_path, key: str, zone: list, wrap: bool = True,
                   start: str = "polygon 0") -> str:
    """A camera's zone ``key: [zone]`` (``key: zone`` unless ``wrap``) through check-config and
    run: both exit 78 with one line about the zones, the same text from ``start`` on; that
    line."""
    import subprocess
    import sys
    from pathlib import Path

    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"device_id: pi\ncameras:\n  door:\n    source: {{kind: demo}}\n"
                   f"    zones: {{{key}: {[zone] if wrap else zone}}}\n")
    said = []
    for cmd in (["check-config", str(cfg)], ["run", "--config", str(cfg), "--exit-at-end"]):
        r = subprocess.run([sys.executable, "-m", "maskd", *cmd], capture_output=True, text=True,
                           timeout=120, cwd=Path(__file__).resolve().parents[1])
        assert r.returncode == 78, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if "zones" in ln]
        assert len(lines) == 1, r.stderr
        said.append(lines[0][lines[0].index(start):])
    assert said[0] == said[1]
    return said[0]


def test_a_zone_that_crosses_itself_is_named_so_by_check_config_and_run(tmp_path):
    """A bowtie (points not in order around the zone) counts by the even-odd rule, so its
    overlap falls outside it. Was: refused as "no area (its points lie on one line)", which
    they do not. check-config and run share the validation and must say the same."""
    bowtie = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]
    said = _refused_alike(tmp_path, "ignore", bowtie)
    assert said.startswith("polygon 0 crosses itself (edges 0 and 2;") and "no area" not in said
    assert zones.crossing(bowtie) == (0, 2)
    assert zones.crossing([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]) is None
    assert zones.crossing([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]) is None  # "no area" names it


@pytest.mark.parametrize("zone, expected", [
    ([[100, 50], [600, 50], [600, 470], [100, 470]],
     "polygon 0 has a point at 600: points are shares 0..1 of the frame, not pixels"),
    ([0.1, 0.1, 0.9, 0.9], "polygon 0 is a list of numbers, not of [x, y] points: a box"),
])
def test_a_zone_in_pixels_or_as_a_box_is_named_so_in_one_line(tmp_path, zone, expected):
    """Was: one line per coordinate ('less than or equal to 1 (got 600)', eight for a
    rectangle; 'a valid tuple'), none saying what was wrong. check-config and run alike."""
    assert _refused_alike(tmp_path, "include", zone).startswith(expected)
    # a zone reaching just past the edge keeps the per-coordinate message: not pixels
    with pytest.raises(ConfigError, match=r"zones.ignore.0.1.0.*less than or equal to 1") as err:
        parse_config({"zones": {"ignore": [[[0.5, 0], [1.2, 0], [1, 0.5]]]}})
    assert "pixels" not in str(err.value)
    # 2 is already pixels (a zone's points are at most 1); 1.5 just past the edge is not
    with pytest.raises(ConfigError, match="polygon 0 has a point at 2: points are shares"):
        parse_config({"zones": {"ignore": [[[0, 0], [2, 0], [2, 2]]]}})


@pytest.mark.parametrize("zone, expected", [
    ([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]],
     "is one polygon's [x, y] points, not a list of polygons: put it in a list of its own"),
    ([0.1, 0.1, 0.9, 0.9], "is a list of numbers, not of polygons: a zone is a list of polygons"),
])
def test_one_polygon_or_box_without_the_list_around_it_is_named_so(tmp_path, zone, expected):
    """A zone written as one polygon (the outer list forgotten) was told "polygon 0 is a list of
    numbers ...: a box is [[x0, y0], ...]", the very points it had; a box's four numbers alone
    got four lines of 'Input should be a valid list'. One line each, check-config and run."""
    said = _refused_alike(tmp_path, "include", zone, wrap=False, start="is ")
    assert said.startswith(expected) and "polygon 0" not in said


ZONE_CHANGE = """
import shutil, subprocess, sys, time
from maskd import schedule
from maskd.clock import ZoneWatch
from maskd.config import ScheduleWindow
watch = ZoneWatch(every_s=0.0)
day = [ScheduleWindow(start="08:00", end="18:00").window()]
at = 1796370300.0  # 2026-12-04 07:45 UTC, 08:45 CET
def look() -> None:
    said = watch.poll()  # as the loop does: before the frame is judged
    print(schedule.allows(day, at), said)
look()
subprocess.run(["mount", "--bind", "/usr/share/zoneinfo/Europe/Berlin", sys.argv[1]], check=True)
look()
look()
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) to change the machine's zone privately")
def test_a_time_zone_changed_while_maskd_runs_is_followed():
    """The C library reads the zone once per process: after `timedatectl set-timezone` the
    schedule kept judging in the old zone (08:45 in Berlin read as 07:45 UTC, outside a
    08:00-18:00 window) until a restart. The zone file is changed in a private mount
    namespace, so the machine's own zone is not touched."""
    localtime = Path("/etc/localtime").resolve()
    if not localtime.is_file() or not Path("/usr/share/zoneinfo/Europe/Berlin").is_file():
        pytest.skip("needs /etc/localtime and /usr/share/zoneinfo/Europe/Berlin")
    env = {k: v for k, v in os.environ.items() if k != "TZ"}
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                        ZONE_CHANGE, str(localtime)], env=env, capture_output=True, text=True,
                       timeout=60)
    if r.returncode and "unshare failed" in r.stderr:
        pytest.skip(f"no private mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    before, after, again = r.stdout.splitlines()
    if before.startswith("True"):
        pytest.skip("the machine's zone already puts 07:45 UTC inside 08:00-18:00")
    assert before == "False None"
    assert after == "True CET"  # followed, and said once
    assert again == "True None"


def test_a_zone_file_change_is_not_said_where_tz_sets_the_zone(tmp_path, monkeypatch):
    """With TZ in the environment the C library never reads /etc/localtime, yet a relinked
    file was logged as "time zone now ..." (naming TZ's zone, unchanged)."""
    zone = tmp_path / "localtime"
    zone.write_text("a")
    try:
        for tz, said in (("Europe/Berlin", False), (f":{zone}", True), (None, True)):
            if tz is None:
                monkeypatch.delenv("TZ", raising=False)
            else:
                monkeypatch.setenv("TZ", tz)
            watch = ZoneWatch(path=zone, every_s=0.0)
            zone.write_text(zone.read_text() + "b")  # a new size: changed
            assert (watch.poll() is not None) is said, tz
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_zone_file_that_tz_names_is_followed_when_relinked(tmp_path, monkeypatch):
    """With `TZ=:/etc/localtime` in the unit (the file the machine's zone is), the C library
    read the file again only if TZ's text changed: after `timedatectl set-timezone` the log
    said "time zone changed (now UTC)", naming the old zone, and the schedule stayed in it."""
    zones = Path("/usr/share/zoneinfo")
    if not all((zones / z).is_file() for z in ("UTC", "Europe/Berlin", "Asia/Kathmandu")):
        pytest.skip("needs the zone files UTC, Europe/Berlin and Asia/Kathmandu")
    link = tmp_path / "localtime"
    link.symlink_to(zones / "UTC")
    monkeypatch.setenv("TZ", f":{link}")
    time.tzset()
    try:
        watch = ZoneWatch(path=link, every_s=0.0)
        day = [ScheduleWindow(start="08:00", end="18:00").window()]
        at = 1796370300.0  # 2026-12-04 07:45 UTC, 08:45 CET, 13:30 in Kathmandu
        assert not schedule.allows(day, at)
        for zone, said, inside in (("Europe/Berlin", "CET", True), ("UTC", "UTC", False),
                                   ("Asia/Kathmandu", "+0545", True)):  # twice: each spelling
            link.unlink()
            link.symlink_to(zones / zone)
            assert watch.poll() == said, zone
            assert schedule.allows(day, at) is inside, zone
            assert watch.poll() is None  # said once
    finally:
        monkeypatch.undo()
        time.tzset()


def test_schedule_across_the_autumn_dst_change_and_the_days_last_instant(monkeypatch):
    """next_change walked local minutes, which repeat in the autumn: it missed the flip in the
    repeated hour and named a time an hour in the past. And the last microsecond of a day was
    outside `end: "24:00"` (detection flapped off and on at midnight)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        night = [ScheduleWindow(days=["sat"], start="22:00", end="02:30").window()]
        # 2026-10-25 03:00 CEST -> 02:00 CET: 02:00-03:00 comes twice
        off = datetime(2026, 10, 25, 2, 45).timestamp()  # 02:45 CEST, first pass: off
        nxt = schedule.next_change(night, off)
        assert nxt > off and schedule.allows(night, nxt) and not schedule.allows(night, nxt - 60)
        assert nxt - off <= 3600  # in the repeated hour (wall clock rule), not next Saturday
        day = [ScheduleWindow(start="00:00", end="24:00").window()]
        last = datetime(2026, 12, 1, 23, 59, 59, 999999)
        assert all(w.covers(last) for w in day)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_camera_mounted_upside_down_is_turned_before_detection(default_model):
    """A camera hung upside down over a door found no face at all (no detector finds one upside
    down) and nothing in the config could turn it: `source.rotate: 180` turns every frame
    before the detector, the previews and the clip see it."""

    class UpsideDown(Clip):
        def read(self) -> Frame | None:
            frame = super().read()
            return None if frame is None else Frame(np.ascontiguousarray(frame.image[::-1, ::-1]),
                                                    frame.seq, frame.timestamp, frame.source)

    _, plain = run(UpsideDown(20, still), default_model)
    _, turned = run(UpsideDown(20, still), default_model, source={"kind": "demo", "rotate": 180})
    assert plain.stats().faces == 0 < turned.stats().faces
    with pytest.raises(ConfigError, match="source.rotate"):
        parse_config({"source": {"rotate": 45}})
    side = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert (rotated(side, 90) == np.rot90(side, -1)).all() and rotated(side, 0) is side
    assert (rotated(side, 270) == np.rot90(side, 1)).all()
    assert rotated(side, 180).flags.c_contiguous
