"""`maskd run` under systemd: its stderr is the journal's stream, and each line carries its
syslog priority (``<N>``, sd-daemon(3)), so ``journalctl -u maskd -p warning`` (or ``-p err``,
what log shippers read) shows maskd's warnings and errors, a traceback whole. Tested by the
documented protocol, without journald: stderr a socket whose device and inode the test puts in
``$JOURNAL_STREAM`` (systemd.exec(5)), as systemd does."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the real `maskd run`, with a bug that the demo's first violation hits (exit 70, its traceback)
BUGGY_RUN = """
import sys
import maskd.events as events
from maskd.cli import main

def buggy_update(self, *args, **kwargs):
    raise ZeroDivisionError("a bug in the frames")

events.Violations.update = buggy_update
sys.exit(main(sys.argv[1:]))
"""

# a bug that nothing catches, in a thread and then at the start (exit 1); before them a thread
# that ends by sys.exit(), which Python's own hook passes over in silence
CRASHING_RUN = """
import sys, threading
import maskd.service as service
from maskd.cli import main

def build(*args, **kwargs):
    quitter = threading.Thread(target=sys.exit, name="quitter")
    quitter.start()
    quitter.join()
    def worker():
        raise ValueError("a bug in a thread")
    t = threading.Thread(target=worker, name="worker")
    t.start()
    t.join()
    raise RuntimeError("a bug at the start")

service.build = build
sys.exit(main(sys.argv[1:]))
"""


def run_on_a_stream(tmp_path: Path, config: str, *, journal: str | None, bug: str = "",
                    options: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """`maskd run` (the demo, 30 frames) with stderr a socket, as systemd gives a unit, and
    ``$JOURNAL_STREAM`` that socket's DEV:INODE (``journal="same"``), another socket's
    (``"other"``: a pipe that inherited it) or unset (None), with ``bug`` (``"loop"``:
    BUGGY_RUN, ``"crash"``: CRASHING_RUN) and ``options`` after its own: its exit status and
    stderr lines."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config)
    ours, theirs = socket.socketpair()
    other, other_end = socket.socketpair()
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    if journal is not None:
        st = os.fstat((theirs if journal == "same" else other).fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    code = ["-c", {"loop": BUGGY_RUN, "crash": CRASHING_RUN}[bug]] if bug else ["-m", "maskd"]
    with ours, theirs, other, other_end:
        proc = subprocess.Popen([sys.executable, *code, "run", "--config", str(cfg),
                                 "--max-frames", "30", *options], stderr=theirs, cwd=REPO, env=env)
        theirs.close()
        ours.settimeout(120)  # a run that hangs fails the test, not the suite
        data = b""
        while chunk := ours.recv(65536):
            data += chunk
        return proc.wait(timeout=120), data.decode().splitlines()


def demo(tmp_path: Path) -> str:
    return (f"camera: door\nsource: {{kind: demo}}\njsonl: {{path: {tmp_path / 'e.jsonl'}}}\n")


def test_under_the_journal_each_line_has_its_priority_a_traceback_the_errors(tmp_path):
    """Was: every line info (journald's default for the unit), so `journalctl -u maskd -p err`
    showed nothing of a loop that failed; now the WARNING line is <4>, the ERROR line and each
    line of its traceback <3>, the INFO lines <6>."""
    # a top-level tracking that the one camera's own replaces: a WARNING at the start
    config = ("cameras: {door: {source: {kind: demo}, tracking: {cooldown_s: 1}}}\n"
              f"tracking: {{cooldown_s: 2}}\njsonl: {{path: {tmp_path / 'e.jsonl'}}}\n")
    code, lines = run_on_a_stream(tmp_path, config, journal="same", bug="loop")
    assert code == 70, lines
    assert [ln for ln in lines if "WARNING maskd" in ln] == [
        "<4>WARNING maskd: 'tracking.cooldown_s': every camera of cameras: has its own tracking, "
        "so the top-level tracking is not used; set it under cameras.<name>.tracking"], lines
    failed = next(i for i, ln in enumerate(lines) if "door: the loop failed: ZeroDivisionError" in ln)
    assert lines[failed].startswith("<3>"), lines
    tb = lines[failed + 1:next(i for i, ln in enumerate(lines) if ln.endswith(
        "ZeroDivisionError: a bug in the frames")) + 1]
    assert tb[0] == "<3>Traceback (most recent call last):", lines
    assert len(tb) > 3 and all(ln.startswith("<3>") for ln in tb), tb
    info = [ln for ln in lines if "INFO maskd." in ln]
    assert info and all(ln.startswith("<6>") for ln in info), lines


def test_a_start_that_fails_is_an_error_in_the_journal(tmp_path):
    """A bad config (exit 78): its line is <3>, so `journalctl -p err` says why maskd did not
    start."""
    code, lines = run_on_a_stream(tmp_path, "camera: door\nsource: {kind: demo}\nbogus: 1\n",
                                  journal="same")
    assert code == 78, lines
    said = [ln for ln in lines if "maskd run: " in ln]
    assert said and all(ln.startswith("<3>maskd run: ") for ln in said), lines


def test_a_mistyped_option_is_an_error_in_the_journal(tmp_path):
    """An option `maskd run` does not know in ExecStart= (exit 2, which the unit does not
    restart): argparse's usage and error lines are <3> (was: info, so `journalctl -p err`
    showed nothing of why maskd did not start); elsewhere they are as argparse writes them."""
    code, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal="same", options=("--confg",))
    assert code == 2, lines
    assert lines and all(ln.startswith("<3>") for ln in lines), lines
    assert lines[-1] == "<3>maskd: error: unrecognized arguments: --confg", lines
    code, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal="other", options=("--confg",))
    assert code == 2 and lines[0].startswith("usage: maskd "), lines
    assert lines[-1] == "maskd: error: unrecognized arguments: --confg", lines


def test_a_terminal_file_or_other_stream_gets_the_plain_lines(tmp_path):
    """No $JOURNAL_STREAM, or one that names another stream (a child's stderr redirected from a
    unit): no <N> anywhere, the lines as they were."""
    for journal in (None, "other"):
        code, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal=journal, bug="loop")
        assert code == 70, lines
        assert not [ln for ln in lines if ln.startswith("<")], lines
        assert any(" ERROR maskd.service: door: the loop failed" in ln for ln in lines), lines


def test_under_the_journal_a_line_has_no_second_time_stamp(tmp_path):
    """journalctl shows each line with the journal's own time; maskd's asctime beside it
    (`Dec 07 10:14:06 pi maskd[812]: 2026-12-07 10:14:06,497 INFO ...`) took 24 characters of
    every line for nothing. Under the journal the line starts with the level; on a terminal or
    in a file the time stays first."""
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    _, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal="same")
    logged = [ln for ln in lines if " maskd." in ln and ln.startswith("<")]
    assert logged and not [ln for ln in logged if stamp.search(ln)], lines
    assert all(re.match(r"<[0-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) maskd", ln)
               for ln in logged), lines
    _, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal=None)
    logged = [ln for ln in lines if " INFO maskd." in ln]
    assert logged and all(stamp.match(ln) for ln in logged), lines


def test_under_the_journal_a_traceback_nothing_caught_is_an_error(tmp_path):
    """A bug nothing catches (at the start, in a thread): Python's own traceback, each line <3>
    (was: info, so `-p err` showed nothing of the crash but systemd's exit status)."""
    code, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal="same", bug="crash")
    assert code == 1, lines
    for first, last in (("<3>Exception in thread worker:", "ValueError: a bug in a thread"),
                        ("<3>Traceback (most recent call last):",
                         "RuntimeError: a bug at the start")):
        start = lines.index(first)
        end = next(i for i in range(start, len(lines)) if lines[i].endswith(last))
        assert all(ln.startswith("<3>") for ln in lines[start:end + 1]), lines
    assert "<3>" not in lines, lines  # no empty error line after a traceback
    assert not [ln for ln in lines if "quitter" in ln or "SystemExit" in ln], lines
    code, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal="other", bug="crash")
    assert code == 1 and "Traceback (most recent call last):" in lines, lines
    assert "Exception in thread worker:" in lines, lines


def test_under_the_journal_debug_lines_are_debug(tmp_path):
    """With --log-level debug each DEBUG line is <7>, so `journalctl -u maskd -p info` (and a
    shipper's -p warning) leaves them out as it does for any other service's debug output."""
    code, lines = run_on_a_stream(tmp_path, demo(tmp_path), journal="same",
                                  options=("--log-level", "debug"))
    assert code == 0, lines
    debug = [ln for ln in lines if re.match(r"<\d>DEBUG ", ln)]
    assert debug and all(ln.startswith("<7>DEBUG ") for ln in debug), lines


def test_under_the_journal_the_detector_fallback_is_a_warning(tmp_path):
    """`detector: auto` without YuNet's file runs BlazeFace, which `maskd doctor` marks a
    warning (masked faces are often missed). Was: `maskd run`'s lines about it had no <N>, so
    the journal kept them at info and `journalctl -u maskd -p warning` never said the service
    ran the weaker detector; now they are <4>, and the line naming the detector <6>."""
    config = demo(tmp_path) + f"detector: {{kind: auto, model: {tmp_path / 'none.onnx'}}}\n"
    code, lines = run_on_a_stream(tmp_path, config, journal="same")
    assert code == 0, lines
    said = [ln for ln in lines if "maskd run: " in ln]
    assert said[0] == "<6>maskd run: face detector: blazeface", lines
    assert len(said) > 1 and all(ln.startswith("<4>maskd run: ") for ln in said[1:]), lines
    assert any("so this is BlazeFace" in ln for ln in said[1:]), lines


def test_a_stderr_that_cannot_be_written_changes_no_exit_status_nor_stdout(tmp_path):
    """Was: a stderr that refused the lines (a full disk; a closed pipe; the journal's stream
    gone) turned a mistyped option's exit 2 (argparse's own swallows the error) and a bad
    config's 78, which the unit does not restart, into 1 and a traceback, which it restarts;
    and with no stderr at all (2>&-) the config's line went to stdout, into `--jsonl -`'s
    events. Now the status is the same, and stdout holds no such line."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("camera: door\nsource: {kind: demo}\nbogus: 1\n")
    for argv, status in ((["check-config", "--bogus"], 2), (["run", "--confg"], 2),
                         (["run", "--config", str(cfg), "--jsonl", "-"], 78)):
        for redirect in ("2>/dev/full", "2>&-"):
            proc = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", sys.executable,
                                   "-m", "maskd", *argv], capture_output=True, cwd=REPO,
                                  timeout=120)
            assert (proc.returncode, proc.stdout) == (status, b""), (argv, redirect, proc)


# Each command's stderr line for a failure, the status that goes with it (their --help), and
# the words of that line, which must not reach stdout (the records, the table).
OTHER_COMMANDS = [
    (["check-config", "{bad}"], 78, "{bad}: unknown key"),
    (["doctor", "--config", "{bad}"], 78, "maskd doctor: "),
    # auto without YuNet's file: the line saying so, then the image scanned (0)
    (["scan", "--detector-model", "{missing}", "{image}"], 0, "maskd scan: "),
    (["classify", "{image}", "{empty}"], 0, "maskd classify: "),  # a folder without images
    (["scan", "{missing}"], 1, "maskd scan: nothing was scanned"),
    (["models", "fetch", "--dest", "{tmp}", "--yunet-url", "file://{missing}"], 69,
     "maskd models fetch: "),
    (["mqtt-clear", "--config", "{bad}"], 78, "mqtt-clear: "),
]


@pytest.mark.parametrize("redirect", ["2>/dev/full", "2>&-"])
@pytest.mark.parametrize(("argv", "status", "said"), OTHER_COMMANDS,
                         ids=[f"{c[0][0]}-{c[1]}" for c in OTHER_COMMANDS])
def test_other_commands_keep_their_status_when_stderr_cannot_be_written(
        tmp_path, argv, status, said, redirect):
    """As for `run` above, every other command: was a stderr on a full disk (or its reader
    gone) a traceback nobody saw and exit 1 (check-config's 78 for a bad config, scan's 0 after
    a note, models fetch's 69 all alike), and a closed one (2>&-) its line on stdout,
    among scan's records or under doctor's table. Now the command's own status, stdout
    without the line."""
    bad = tmp_path / "c.yaml"
    bad.write_text("camera: door\nsource: {kind: demo}\nbogus: 1\n")
    (tmp_path / "empty").mkdir()
    names = {"bad": str(bad), "missing": str(tmp_path / "none.onnx"), "tmp": str(tmp_path),
             "empty": str(tmp_path / "empty"), "image": str(REPO / "docs/img/status-page.png")}
    proc = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", sys.executable, "-m",
                           "maskd", *(a.format(**names) for a in argv)],
                          capture_output=True, cwd=REPO, timeout=120)
    assert proc.returncode == status, proc
    assert said.format(**names).encode() not in proc.stdout, proc
    assert b"Traceback" not in proc.stdout + proc.stderr, proc


def test_a_reader_gone_with_no_stderr_is_the_quiet_end_of_a_broken_pipe(tmp_path):
    """`maskd check-config c.yaml 2>&- | head -c0`: was exit 1, cli.main closing a stderr that
    was None (AttributeError) where a reader gone ends the command quietly, exit 0."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("camera: door\nsource: {kind: demo}\n")
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "maskd",
                               "check-config", str(cfg)], stdout=write, cwd=REPO, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0
