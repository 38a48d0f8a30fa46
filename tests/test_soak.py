"""tools/soak.py: the growth arithmetic on hand-made samples, and two short real runs (a real
`maskd run` process and a real mosquitto, with the status page): two cameras of the looped demo
source with the broker stopped once and snapshots and the annotated clip on, and a network camera that stalls
and then goes away while two people watch the status page."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools import soak
from tools.mosquitto import MOSQUITTO


def samples(rss_mib_per_h: float, fds_at_end: int = 20) -> list[soak.Sample]:
    """Ten minutes sampled every 10 s: RSS 300 MiB growing linearly at ``rss_mib_per_h``."""
    out = []
    for i in range(61):
        t = 10.0 * i
        rss = int((300 + rss_mib_per_h * t / 3600) * 1024)
        out.append(soak.Sample(t, rss, 20 if i < 60 else fds_at_end, 12, 40 * i, 64))
    return out


def test_growth_is_measured_over_the_second_half():
    r = soak.summarize(samples(12.0), [9, 129, 249], ends=3, rc=0, wall_s=600.0)
    assert r["rss_mib"]["growth_mib_per_h"] == pytest.approx(12.0, abs=0.05)
    # 40 frames every 10 s = 14,400 frames an hour: 12 MiB/h is 83.3 MiB per 100k frames
    assert r["rss_mib"]["growth_mib_per_100k_frames"] == pytest.approx(12 / 0.144, abs=0.1)
    assert r["frames"] == 2400 and r["per_pass"] == {"passes": 3, "one": 3, "none": 0, "more": 0, "excluded": 0}
    assert r["rss_mib"]["after_warmup"] == pytest.approx(300 + 12 * 120 / 3600, abs=0.01)
    assert soak.problems(r, max_growth=20.0, max_fd_growth=8) == []
    assert soak.problems(r, max_growth=5.0, max_fd_growth=8) == [
        "memory grew 12.00 MiB/h over the second half (limit 5)"]


def test_leaked_files_a_bad_exit_and_miscounted_people_are_named():
    r = soak.summarize(samples(0.0, fds_at_end=40), [9, 12, 369], ends=2, rc=1, wall_s=600.0)
    bad = soak.problems(r, max_growth=None, max_fd_growth=8)
    # starts at frames 9 and 12 are one pass counted twice; frame 369 is two passes later
    assert r["per_pass"] == {"passes": 4, "one": 1, "none": 2, "more": 1, "excluded": 0}
    assert bad == ["maskd run ended with exit 1 (0 or 75 expected after SIGTERM)",
                   "open files went from 20 to 40", "3 violations started and 2 ended",
                   "2 passes of the person got no violation and 1 more than one"]


def test_passes_the_camera_was_away_for_are_not_judged():
    """A pass cut by a camera outage may rightly get no start or two; the others still count."""
    n = soak.pass_frames()
    starts = [9, n + 9, 3 * n + 9, 3 * n + 50, 5 * n + 9]  # pass 2 none, pass 3 two, pass 4 none
    assert soak.per_pass(starts, n) == {"passes": 6, "one": 3, "none": 2, "more": 1, "excluded": 0}
    assert soak.per_pass(starts, n, frozenset({2, 3, 4})) == {
        "passes": 3, "one": 3, "none": 0, "more": 0, "excluded": 3}


def test_local_files_over_their_caps_are_a_problem():
    ok = samples(0.0)
    assert "local files" not in soak.render(soak.summarize(ok, [9], 1, 0, 600.0))
    for s in ok:
        s.files_kib = soak.FILES_CAP_KIB - 1
    r = soak.summarize(ok, [9], ends=1, rc=0, wall_s=600.0)
    assert soak.problems(r, None, 8) == [] and "local files" in soak.render(r)
    ok[-1].files_kib = soak.FILES_CAP_KIB + 1
    r = soak.summarize(ok, [9], ends=1, rc=0, wall_s=600.0)
    assert soak.problems(r, None, 8) == [
        f"snapshots and the annotated clip grew to {soak.FILES_CAP_KIB + 1} KiB "
        f"(their caps allow {soak.FILES_CAP_KIB})"]


def test_viewers_the_status_page_failed_are_a_problem():
    r = soak.summarize(samples(0.0), [9], ends=1, rc=0, wall_s=600.0)
    r["viewers"] = {"viewers": 2, "visits": 40, "jpegs": 900, "pages": 200, "abrupt": 12,
                    "blank": 0, "errors": 0, "first_errors": []}
    assert soak.problems(r, None, 8) == [] and "web viewers   2 watching" in soak.render(r)
    r["viewers"].update(blank=1, errors=1, first_errors=["TimeoutError: timed out"])
    assert soak.problems(r, None, 8) == [
        "the status page failed its viewers: 40 visits, 1 without a picture, 1 errors "
        "['TimeoutError: timed out']"]


def test_each_cameras_passes_are_counted_by_themselves():
    """Several cameras: each demo person passes by itself, so passes are counted per camera."""
    n = soak.pass_frames()
    r = soak.summarize(samples(0.0), {"door": [9, n + 9], "door2": [20, 2 * n + 20]}, ends=4,
                       rc=0, wall_s=600.0)
    assert r["starts"] == 4
    assert r["per_pass"] == {"passes": 5, "one": 4, "none": 1, "more": 0, "excluded": 0}


def test_a_demo_run_without_any_violation_is_a_problem():
    r = soak.summarize(samples(0.0), [], ends=0, rc=0, wall_s=600.0)
    assert soak.problems(r, None, 8) == [
        "no violation reached the broker: the demo person without a mask got none"]
    assert soak.problems(soak.summarize(samples(0.0), [], 0, 0, 600.0, demo=False), None, 8) == []


def test_slope_needs_three_points():
    assert soak.slope_per_hour(np.array([0.0, 1.0]), np.array([1.0, 2.0])) is None
    assert soak.slope_per_hour(np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(3600.0)


def test_maskd_gets_the_units_malloc_arena_cap_unless_told_otherwise(tmp_path):
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nEnvironment=A=1\nEnvironment=MALLOC_ARENA_MAX=3\n# Environment=B=2\n")
    assert soak.unit_environment(unit) == {"MALLOC_ARENA_MAX": "3"}
    assert soak.unit_environment(unit, ("A", "B")) == {"A": "1"}
    shipped = soak.unit_environment()["MALLOC_ARENA_MAX"]  # the real unit sets one
    assert int(shipped) >= 1
    base = {"PATH": "/bin", "MALLOC_ARENA_MAX": "64"}
    assert soak.child_environment(None, base) == {"PATH": "/bin", "MALLOC_ARENA_MAX": shipped}
    assert soak.child_environment(0, base) == {"PATH": "/bin"}  # glibc's own default
    assert soak.child_environment(5, base)["MALLOC_ARENA_MAX"] == "5"
    assert "8 per core" in soak._arenas(None) and "at most 2" in soak._arenas("2")


@pytest.mark.slow
def test_a_short_real_soak_run(tmp_path, capsys):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    out = tmp_path / "soak.json"
    rc = soak.main(["--minutes", "0.5", "--sample-s", "2", "--outage-every-min", "0.25",
                    "--outage-s", "6", "--local-files", "--cameras", "2", "--json", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    got = json.loads(out.read_text())
    r = got["summary"]
    # two cameras in the one process (the cameras: layout), each with violations of its own
    assert r["cameras"] == 2 and {e["camera"] for e in got["events"]} == {"door", "door2"}
    assert r["malloc_arena_max"] == soak.unit_environment()["MALLOC_ARENA_MAX"]  # as the service
    assert r["exit_code"] == 0 and r["samples"] >= 8
    assert r["frames"] > 0 and r["rss_mib"]["end"] > 50 and r["threads"]["end"] > 1
    # each finished pass of the demo is one person without a mask: one start, then its end
    assert r["per_pass"]["passes"] >= 2 and r["per_pass"]["one"] == r["per_pass"]["passes"]
    assert r["ends"] == r["starts"]
    # the broker was away once, 15-21 s in: what happened meanwhile came from the outbox
    assert r["outages"] == 1 and r["buffered_events"] >= 1
    # snapshots and the annotated clip were written, and kept under their caps
    assert 0 < r["files_kib"]["end"] and r["files_kib"]["max"] <= soak.FILES_CAP_KIB
    assert "violations" in printed.out and "MiB" in printed.out


@pytest.mark.slow
def test_a_short_real_soak_run_with_a_network_camera_that_goes_away(tmp_path, capsys):
    """The person from a real MJPEG-over-HTTP camera; at 12 s it stalls for 10.5 s (longer than
    maskd's 10 s read time-out: maskd must reopen it), at 24 s it is gone (refused): maskd reads it
    again after each, every violation ends, nothing leaks a connection, the run stops cleanly."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    out = tmp_path / "soak.json"
    rc = soak.main(["--minutes", "0.5", "--sample-s", "2", "--camera", "stream",
                    "--camera-outage-every-min", "0.2", "--camera-outage-s", "10.5",
                    "--watch", "2", "--json", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    r = json.loads(out.read_text())["summary"]
    assert r["exit_code"] == 0 and r["frames"] > 0 and r["ends"] == r["starts"] >= 1
    cam = r["camera"]
    assert cam["kinds"] == {"stalled": 1, "gone": 1}
    assert all(s is not None and s < soak.CAMERA_BACK_WAIT_S for s in cam["read_again_after_s"])
    # the stall outlasted the read time-out and the camera was gone: two reconnects at least
    assert cam["connections"] >= 3
    assert r["fds"]["end"] <= r["fds"]["after_warmup"] + 2
    assert "camera away   2 times" in printed.out
    # two people watched the status page throughout, the camera's outages included: every
    # visit got pictures (the newest one again while the camera was away), no request failed
    w = r["viewers"]
    assert w["visits"] >= 2 and w["jpegs"] > w["visits"] and w["pages"] >= 5
    assert w["errors"] == 0 and w["blank"] == 0, w


def test_camera_outages_need_the_stream_camera(capsys):
    with pytest.raises(SystemExit):
        soak.parse_args(["--camera-outage-every-min", "1"])
    assert "--camera-outage-every-min needs --camera stream" in capsys.readouterr().err


def test_a_missing_video_is_named_before_anything_starts(tmp_path, capsys):
    missing = tmp_path / "door.avi"
    assert soak.main(["--minutes", "1", "--video", str(missing)]) == 2
    assert f"--video {missing}: no such file" in capsys.readouterr().err


def test_a_video_has_no_per_person_count():
    r = soak.summarize(samples(0.0), [9, 12], ends=2, rc=0, wall_s=600.0, demo=False)
    assert r["per_pass"] is None and soak.problems(r, None, 8) == []
    assert "passes" not in soak.render(r)


@pytest.mark.slow
def test_a_report_that_does_not_fit_neither_hides_the_checks_nor_is_left_half(tmp_path):
    """The --json write came before the checks: on a full disk it stopped soak with the checks'
    FAIL lines never printed, and left half a JSON file."""
    import subprocess
    import sys

    from mqtt_broker import fill_disk, small_disk

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk)
        r = subprocess.run([sys.executable, soak.__file__, "--minutes", "0.15", "--sample-s", "2",
                            "--max-fd-growth", "-1", "--json", str(disk / "soak.json")],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode != 0
        assert "soak: FAIL open files went from" in r.stderr, r.stderr
        assert f"{disk / 'soak.json'}: cannot write it (No space left on device)" in r.stderr
        assert "Traceback" not in r.stderr
        assert [p.name for p in disk.iterdir()] == ["filler"]
