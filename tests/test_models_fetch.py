"""`maskd models fetch`: YuNet from a local HTTP server on 127.0.0.1, never the internet.

The server serves a copy of ../shared/models/face_detection_yunet_2026may.onnx (the file whose
sha256 is pinned) and a different file standing for another YuNet version. Cases: the pinned
sha256 (saved under the pinned name; a second run leaves it alone), a wrong sha256 (refused,
nothing saved), another version's URL (refused against the pin; with its own sha256 saved under
a name from its content, not the pinned one), and no network (connection refused).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SHARED, shared_path
from mqtt_broker import wait_until

from maskd import modelfiles
from maskd.cli import main
from maskd.detectors import find_yunet_model
from maskd.modelfiles import YUNET_NAME, YUNET_SHA256

REPO = Path(__file__).resolve().parents[1]
SHARED_YUNET = SHARED / "models" / YUNET_NAME


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, folder) of an HTTP server on 127.0.0.1 serving the YuNet copy and another file."""
    shared_path(f"models/{YUNET_NAME}")  # or skip, as the yunet_model fixture does
    root = tmp_path_factory.mktemp("www")
    shutil.copy(SHARED_YUNET, root / YUNET_NAME)
    (root / "face_detection_yunet_2023mar.onnx").write_bytes(b"another YuNet version's bytes")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def fetch(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["models", "fetch", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused_url() -> str:
    """A 127.0.0.1 URL on a port nobody listens on (connection refused: no network)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{YUNET_NAME}"


@pytest.mark.shared
def test_pinned_sha256_is_the_shared_files(yunet_model):
    assert hashlib.sha256(yunet_model.read_bytes()).hexdigest() == YUNET_SHA256


@pytest.mark.shared
def test_good_sha256_saves_under_the_pinned_name_once(served, tmp_path, capsys, monkeypatch):
    url, _ = served
    dest = tmp_path / "models"
    code, out, err = fetch(capsys, "--dest", str(dest), "--yunet-url", f"{url}/{YUNET_NAME}")
    assert code == 0, err
    assert out == f"installed {dest / YUNET_NAME} (sha256 ok)\n"
    assert (dest / YUNET_NAME).read_bytes() == SHARED_YUNET.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == [YUNET_NAME]  # no temporary left
    code, out, _ = fetch(capsys, "--dest", str(dest), "--yunet-url", f"{url}/{YUNET_NAME}")
    assert code == 0 and out.startswith("unchanged ")
    # the detector finds what fetch saved, and the file loads
    monkeypatch.delenv("MASKD_YUNET", raising=False)
    monkeypatch.setattr("maskd.detectors.yunet.REPO_MODELS", dest)
    assert find_yunet_model() == dest / YUNET_NAME


@pytest.mark.shared
def test_bad_sha256_saves_nothing(served, tmp_path, capsys):
    url, _ = served
    dest = tmp_path / "models"
    code, out, err = fetch(capsys, "--dest", str(dest), "--yunet-url", f"{url}/{YUNET_NAME}",
                           "--yunet-sha256", "0" * 64)
    assert code == 65 and out == ""
    assert f"YuNet sha256 mismatch: got {YUNET_SHA256} ({SHARED_YUNET.stat().st_size} bytes" in err
    assert "nothing installed" in err
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.shared
def test_another_version_is_never_saved_under_the_pinned_name(served, tmp_path, capsys):
    url, root = served
    dest = tmp_path / "models"
    other = root / "face_detection_yunet_2023mar.onnx"
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    # its URL against the pin: refused
    code, _, err = fetch(capsys, "--dest", str(dest), "--yunet-url", f"{url}/{other.name}")
    assert code == 65 and "mismatch" in err and not (dest / YUNET_NAME).exists()
    # with its own sha256: kept, named after the content (neither the pin nor the URL's name)
    code, out, err = fetch(capsys, "--dest", str(dest), "--yunet-url", f"{url}/{other.name}",
                           "--yunet-sha256", other_sha)
    assert code == 0, err
    name = f"face_detection_yunet_sha256-{other_sha[:16]}.onnx"
    assert out == f"installed {dest / name} (sha256 ok)\n"
    assert sorted(p.name for p in dest.iterdir()) == [name]
    # the pinned file's content under a misleading URL name is saved under the pinned name
    (root / "face_detection_yunet_2099jan.onnx").write_bytes(SHARED_YUNET.read_bytes())
    code, out, _ = fetch(capsys, "--dest", str(dest), "--yunet-url",
                         f"{url}/face_detection_yunet_2099jan.onnx")
    assert code == 0 and out == f"installed {dest / YUNET_NAME} (sha256 ok)\n"
    assert modelfiles.find_yunet((dest,)) == dest / YUNET_NAME  # the pinned version wins


def test_no_network_says_what_it_means(tmp_path, capsys):
    dest = tmp_path / "models"
    code, out, err = fetch(capsys, "--dest", str(dest), "--yunet-url", refused_url(),
                           "--timeout", "5")
    assert code == 69 and out == ""
    assert "cannot download http://127.0.0.1:" in err and "Connection refused" in err
    assert "BlazeFace" in err  # what running without YuNet means
    assert not dest.exists() or list(dest.iterdir()) == []


def test_bad_sha256_argument_and_unwritable_folder(tmp_path, capsys):
    code, _, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-sha256", "abc")
    assert code == 2 and "must be 64 hex digits" in err
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    code, _, err = fetch(capsys, "--dest", str(blocker / "models"), "--yunet-url", refused_url())
    assert code == 73 and "cannot write in" in err


def test_runs_with_the_system_python_without_the_venv(tmp_path):
    """deploy/install.sh runs it this way: the checkout on PYTHONPATH, no maskd dependencies."""
    r = subprocess.run([sys.executable, "-S", "-m", "maskd", "models", "fetch", "--dest",
                        str(tmp_path), "--yunet-url", refused_url(), "--timeout", "5"],
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert r.returncode == 69, r.stderr  # -S: no site-packages, so only the standard library
    assert "Connection refused" in r.stderr


def test_unwritable_default_folder_says_how_else(tmp_path, capsys, monkeypatch):
    """Outside a checkout the default is the system folder (root only): the error says what to
    do instead; with --dest given that hint would be wrong, so it is not printed."""
    import maskd.commands.models as cmd

    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    monkeypatch.setattr(cmd, "default_dest", lambda: blocker / "models")
    monkeypatch.setattr(cmd, "SYSTEM_MODELS", blocker / "models")  # standing for /usr/share/...
    monkeypatch.setattr(cmd.os, "geteuid", lambda: 1000)  # a user who is not root
    code, _, err = fetch(capsys, "--yunet-url", refused_url())
    assert code == 73 and "cannot write in" in err and "--dest DIR" in err and "sudo" in err
    code, _, err = fetch(capsys, "--dest", str(blocker / "models"), "--yunet-url", refused_url())
    assert code == 73 and "sudo" not in err
    # root, or a checkout's models/ (the default there): sudo would not help, so not said
    monkeypatch.setattr(cmd.os, "geteuid", lambda: 0)
    code, _, err = fetch(capsys, "--yunet-url", refused_url())
    assert code == 73 and "sudo" not in err
    monkeypatch.setattr(cmd.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(cmd, "SYSTEM_MODELS", tmp_path / "elsewhere")
    code, _, err = fetch(capsys, "--yunet-url", refused_url())
    assert code == 73 and "sudo" not in err and "system folder" not in err


BODY = bytes(range(256)) * 128  # 32 KiB standing for a model file
ANSWERS = {  # what a broken server or network sends, then it closes the connection
    "short": b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:1000],
    "one-short": b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:-1],
    "chunked-cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + BODY[:1024]
                   + b"\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.0\r\n",
    "good": b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
}


def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A raw TCP server on 127.0.0.1 whose every connection goes to ``answer`` (in a thread);
    yields its URL."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


@pytest.fixture(scope="module")
def broken_server():
    """A raw TCP server on 127.0.0.1 that sends ANSWERS[path] and closes."""

    def answer(conn: socket.socket) -> None:
        with conn:
            path = conn.recv(4096).split(b" ")[1].decode().strip("/")
            conn.sendall(ANSWERS[path])

    yield from raw_server(answer)


@pytest.mark.parametrize("what", ["short", "one-short", "chunked-cut", "not-http"])
def test_a_download_cut_short_or_not_http_is_a_network_error(broken_server, tmp_path, capsys,
                                                             what):
    """Exit 69 with one line, never a traceback (was: IncompleteRead/BadStatusLine tracebacks,
    exit 1) or a 'sha256 mismatch' (exit 65) for a body cut short."""
    sha = hashlib.sha256(BODY).hexdigest()
    code, out, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-url",
                           f"{broken_server}/{what}", "--yunet-sha256", sha, "--timeout", "5")
    assert code == 69 and out == "", err
    first = err.splitlines()[0]
    assert first.startswith(f"maskd models fetch: cannot download {broken_server}/{what}: "), err
    assert "Traceback" not in err and "mismatch" not in err
    assert list(tmp_path.iterdir()) == []  # no .part left


def test_a_full_disk_is_the_folder_not_the_network(broken_server, tmp_path, capsys):
    from mqtt_broker import small_disk

    sha = hashlib.sha256(BODY).hexdigest()
    with small_disk(tmp_path / "tiny", "16k") as tiny:
        code, _, err = fetch(capsys, "--dest", str(tiny), "--yunet-url", f"{broken_server}/good",
                             "--yunet-sha256", sha)
        assert code == 73 and f"cannot write in {tiny}: No space left on device" in err, err
        assert list(tiny.iterdir()) == []
    code, _, err = fetch(capsys, "--dest", str(tmp_path / "ok"), "--yunet-url",
                         f"{broken_server}/good", "--yunet-sha256", sha)
    assert code == 0, err  # the same server's whole answer is fine


@pytest.fixture(scope="module")
def endless_server():
    """A raw TCP server on 127.0.0.1 that answers 200 with no length, then sends zeros for ever:
    /flood as fast as it can, /drip 1 byte every 0.02 s: a tenth of the test's --timeout 0.2,
    so that a loaded machine never turns a late byte into a read time-out (every 0.1 s it did:
    'timed out' instead of the whole download's limit)."""

    def answer(conn: socket.socket) -> None:
        with conn:
            path = conn.recv(4096).split(b" ")[1].decode().strip("/")
            try:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                while True:
                    conn.sendall(bytes(1 << 16) if path == "flood" else b"\0")
                    if path == "drip":
                        time.sleep(0.02)
            except OSError:  # the client gave up
                return

    yield from raw_server(answer)


def test_an_endless_or_dripping_download_ends(endless_server, tmp_path, capsys, monkeypatch):
    """A server streaming zeros grew the .part without end (3 GB seen); one sending a byte at a
    time never ended, since --timeout bounds each wait only. A .part a killed fetch left goes."""
    monkeypatch.setattr(modelfiles, "MAX_BYTES", 1 << 20)  # the same rule, sooner
    left = tmp_path / ".fetch-killed.part"
    left.write_bytes(b"half a download")
    code, _, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-url", f"{endless_server}/flood",
                         "--timeout", "5")
    assert code == 69 and err.splitlines()[0] == (f"maskd models fetch: cannot download "
                                                  f"{endless_server}/flood: more than 1 MiB, not a "
                                                  "YuNet model"), err
    assert list(tmp_path.iterdir()) == []
    began = time.monotonic()
    code, _, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-url", f"{endless_server}/drip",
                         "--timeout", "0.2")
    assert code == 69 and err.startswith(f"maskd models fetch: cannot download "
                                         f"{endless_server}/drip: not done after 2 s "
                                         "(10 x --timeout); "), err
    assert time.monotonic() - began < 5 and list(tmp_path.iterdir()) == []


def test_two_fetches_into_one_folder_both_succeed(tmp_path):
    """Each fetch removed every .part in the folder at start, the other's running download's
    too, which then failed (its file gone before the rename). Only a killed fetch's go now."""

    def answer(conn: socket.socket) -> None:  # the good answer in 8 pieces over 1.6 s
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
            for i in range(0, len(BODY), len(BODY) // 8):
                time.sleep(0.2)
                conn.sendall(BODY[i:i + len(BODY) // 8])

    url = next(server := raw_server(answer))
    cmd = [sys.executable, "-m", "maskd", "models", "fetch", "--dest", str(tmp_path),
           "--yunet-url", f"{url}/slow", "--yunet-sha256", hashlib.sha256(BODY).hexdigest()]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert wait_until(lambda: any(tmp_path.glob(".fetch-*.part")), 30)  # downloading
    second = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)
    assert first.stderr is not None
    first_err = first.stderr.read()
    assert first.wait(timeout=60) == 0 and second.returncode == 0, first_err + second.stderr
    assert [f.name for f in tmp_path.iterdir()] == [modelfiles.yunet_name(
        hashlib.sha256(BODY).hexdigest())]
    next(server, None)  # closes it


@pytest.mark.shared
def test_what_is_in_the_way_is_one_line_and_exit_73(served, tmp_path, capsys):
    """A folder with the model's name (os.replace's IsADirectoryError) and a file there already
    that this user cannot read (file_sha256's PermissionError) were tracebacks."""
    from test_scan_cli import without_root_override

    url, _ = served
    (tmp_path / "a" / YUNET_NAME).mkdir(parents=True)
    code, out, err = fetch(capsys, "--dest", str(tmp_path / "a"), "--yunet-url",
                           f"{url}/{YUNET_NAME}")
    assert code == 73 and out == ""
    assert err == f"maskd models fetch: cannot write {tmp_path / 'a' / YUNET_NAME}: a folder is " \
                  "in the way\n"
    locked = tmp_path / "b" / YUNET_NAME
    locked.parent.mkdir()
    locked.write_bytes(b"a cut download")
    locked.chmod(0)
    r = subprocess.run([*without_root_override(), sys.executable, "-m", "maskd", "models",
                        "fetch", "--dest", str(locked.parent), "--yunet-url",
                        f"{url}/{YUNET_NAME}"], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 73, r.stderr
    assert r.stderr == (f"maskd models fetch: cannot check {locked}, which is there already: "
                        "Permission denied (remove it, or run as its owner)\n")


def test_an_upper_case_sha256_is_the_same_sha256(tmp_path, capsys):
    """docs/reliability.md: only a sha256 that is not exactly 64 hex digits is refused; one in
    upper case (PowerShell's Get-FileHash, some release pages) was exit 2, "lower-case"."""
    model = tmp_path / "y.onnx"
    model.write_bytes(b"a model")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    dest = tmp_path / "models"
    code, out, err = fetch(capsys, "--dest", str(dest), "--yunet-url", f"file://{model}",
                           "--yunet-sha256", digest.upper())
    assert code == 0, err
    got = dest / f"face_detection_yunet_sha256-{digest[:16]}.onnx"  # named as the lower case
    assert got.read_bytes() == b"a model" and f"installed {got} (sha256 ok)" in out


def test_bad_sha256_or_url_is_a_usage_error(tmp_path, capsys):
    """A sha256 with a trailing newline passed the check ("$" matches before it) and then
    failed as a mismatch; a URL that is not one was exit 69, "no network"."""
    code, _, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-sha256", YUNET_SHA256 + "\n")
    assert code == 2 and "must be 64 hex digits" in err
    for bad in ("notaurl", "ftp://host/y.onnx", "http:///y.onnx"):
        with pytest.raises(SystemExit) as exit_:
            main(["models", "fetch", "--dest", str(tmp_path), "--yunet-url", bad])
        assert exit_.value.code == 2
        assert f"argument --yunet-url: {bad!r} is not an http://, https:// or file:// URL" in \
            capsys.readouterr().err
    # --timeout 0 ("no time-out" elsewhere) made the sockets non-blocking: exit 69 at once,
    # "Operation now in progress", as if there were no network
    with pytest.raises(SystemExit) as exit_:
        main(["models", "fetch", "--dest", str(tmp_path), "--yunet-url", refused_url(),
              "--timeout", "0"])
    assert exit_.value.code == 2 and "argument --timeout: 0 is no time-out here" in \
        capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_fetchs_part_goes_when_the_file_is_there_already(tmp_path, capsys):
    """A fetch killed mid-download left its .part (megabytes on a small card) until a later
    fetch downloaded again; install.sh's fetch at every update finds the file in place, so it
    stayed for good. It goes now, unless a fetch holds the folder (its own running .part)."""
    import fcntl

    model = tmp_path / "y.onnx"
    model.write_bytes(BODY)
    digest = hashlib.sha256(BODY).hexdigest()
    dest = tmp_path / "models"
    args = ("--dest", str(dest), "--yunet-url", f"file://{model}", "--yunet-sha256", digest)
    assert fetch(capsys, *args)[0] == 0
    left = dest / ".fetch-killed.part"
    left.write_bytes(BODY[:1000])
    held = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)  # another fetch, downloading
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, out, _ = fetch(capsys, *args)
        assert code == 0 and out.startswith("unchanged ") and left.exists()
    finally:
        os.close(held)
    code, out, _ = fetch(capsys, *args)
    assert code == 0 and out.startswith("unchanged ") and not left.exists()


def test_a_full_stdout_is_exit_74_with_the_file_in_place(yunet_model, tmp_path):
    """The line saying what was installed, to a full disk: a traceback (exit 1) after the file
    was in place. Now exit 74 and one line on stderr; the file stays."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "maskd", "models", "fetch", "--dest",
                            str(tmp_path), "--yunet-url", f"file://{yunet_model}"],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 74, r.stderr
    assert r.stderr.strip() == ("maskd models: cannot write to standard output (/dev/full): "
                                "No space left on device")
    assert modelfiles.file_sha256(tmp_path / YUNET_NAME) == YUNET_SHA256


def test_a_dest_whose_name_is_not_utf8_is_said_in_its_own_bytes(yunet_model, tmp_path):
    """Under a UTF-8 locale (the Pi's en_GB.UTF-8; here PYTHONIOENCODING) stdout is strict:
    a --dest in Latin-1 was a UnicodeEncodeError traceback, exit 1, after the file was in
    place."""
    dest = Path(os.fsdecode(bytes(tmp_path) + b"/mod\xe9"))
    r = subprocess.run([sys.executable, "-m", "maskd", "models", "fetch", "--dest", dest,
                        "--yunet-url", f"file://{yunet_model}"], capture_output=True,
                       timeout=60, cwd=REPO,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"installed " + bytes(dest) + b"/" + YUNET_NAME.encode() + b" (sha256 ok)\n"
    assert modelfiles.file_sha256(dest / YUNET_NAME) == YUNET_SHA256


def test_a_file_url_of_a_named_pipe_is_refused_not_waited_on(tmp_path, capsys):
    """file:// of a FIFO nobody writes to hung in the open, beyond --timeout's bound (10 x),
    and left its .part behind when killed."""
    fifo = tmp_path / "yunet.onnx"
    os.mkfifo(fifo)
    dest = tmp_path / "models"
    done = threading.Event()

    def writer_after_a_while() -> None:
        """The fetch runs in this process: once it hangs in the open, a writer that comes
        and goes lets it go on, so the test fails on its time instead of hanging CI."""
        if not done.wait(20):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # nobody has it open: nothing hangs in it
                pass

    threading.Thread(target=writer_after_a_while, daemon=True).start()
    t0 = time.monotonic()
    try:
        rc = main(["models", "fetch", "--dest", str(dest), "--yunet-url", f"file://{fifo}",
                   "--timeout", "1"])
    finally:
        done.set()
    assert rc == 69 and time.monotonic() - t0 < 10
    assert f"cannot download file://{fifo}: not a regular file" in capsys.readouterr().err
    assert not dest.exists() or not list(dest.iterdir())


def test_a_dest_that_is_a_file_is_named_so(tmp_path, capsys):
    """mkdir said only 'File exists' (the file was --dest itself) or 'Not a directory'."""
    (tmp_path / "afile").write_text("")
    for dest in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["models", "fetch", "--dest", str(dest), "--yunet-url",
                     f"file://{tmp_path / 'none.onnx'}"]) == 73
        assert (f"cannot write in {dest}: {tmp_path / 'afile'} is a file, not a folder"
                in capsys.readouterr().err)


def test_a_dangling_link_or_folder_by_a_yunet_name_is_passed_over(tmp_path):
    """A link left dangling named face_detection_yunet_2026may.onnx (a removed target) sorted
    last and was taken beside a good 2025 file: `run` stopped with 'model file not found'."""
    good = tmp_path / "face_detection_yunet_2025.onnx"
    good.write_bytes(b"onnx")
    (tmp_path / "face_detection_yunet_2026may.onnx").symlink_to(tmp_path / "gone.onnx")
    (tmp_path / "face_detection_yunet_2027.onnx").mkdir()
    assert modelfiles.find_yunet((tmp_path,)) == good
    good.unlink()
    assert modelfiles.find_yunet((tmp_path,)) is None  # auto falls back to BlazeFace


def test_a_fetch_that_waited_for_another_takes_its_file(tmp_path):
    """A second fetch into the folder waits for the first's lock; the first saved the checked
    file meanwhile: the second took it (was: it downloaded it all again, or failed on a
    network the file no longer needed, exit 69)."""
    body = b"a YuNet's bytes"
    sha = hashlib.sha256(body).hexdigest()
    dest = tmp_path / "models"
    dest.mkdir()
    lock = modelfiles._lock_folder(dest)  # the first fetch, downloading
    got: list = []
    waiting = threading.Thread(target=lambda: got.append(modelfiles.fetch_yunet(
        dest, "http://127.0.0.1:1/none.onnx", sha, timeout=2.0)))
    waiting.start()
    time.sleep(0.3)
    saved = dest / modelfiles.yunet_name(sha)
    saved.write_bytes(body)  # what the first saved, or a copy put there by hand meanwhile
    saved.chmod(0o600)  # under `umask 077`: the service's user could not read it
    os.close(lock)
    waiting.join(10)
    assert got and got[0].changed is False and got[0].path == saved
    assert saved.stat().st_mode & 0o777 == 0o644  # as a file found before the wait


def test_the_file_and_folders_a_fetch_leaves_are_readable_by_the_service(tmp_path):
    """The service runs as its own user: a file already there but readable by its owner only
    was 'unchanged (sha256 ok)' and left so, and folders the fetch made under `umask 077` kept
    everyone else out (run then stopped: Permission denied)."""
    body = b"a YuNet's bytes"
    sha = hashlib.sha256(body).hexdigest()
    there = tmp_path / "there"
    there.mkdir()
    target = there / modelfiles.yunet_name(sha)
    target.write_bytes(body)
    target.chmod(0o600)
    assert modelfiles.fetch_yunet(there, "http://127.0.0.1:1/x.onnx", sha).changed is False
    assert target.stat().st_mode & 0o777 == 0o644

    src = tmp_path / "www" / "x.onnx"
    src.parent.mkdir()
    src.write_bytes(body)
    old = os.umask(0o077)
    try:
        made = modelfiles.fetch_yunet(tmp_path / "a" / "b", src.as_uri(), sha)
    finally:
        os.umask(old)
    assert made.changed and made.path.stat().st_mode & 0o777 == 0o644
    assert all(d.stat().st_mode & 0o777 == 0o755 for d in (tmp_path / "a", tmp_path / "a" / "b"))


@pytest.mark.parametrize("url", ["http://admin:S3cret@127.0.0.1:1/x.onnx",
                                 "https://bob:S3cret@example.invalid/x.onnx",
                                 # a user name alone: urllib took it for the host's, and said
                                 # "Name or service not known" (exit 69, as if offline)
                                 "http://bob@127.0.0.1:1/x.onnx"])
def test_a_password_in_the_url_is_refused_without_repeating_it(tmp_path, capsys, url):
    """urllib sends no user:password@: it took them for the host and port, failed, and the line
    named the URL whole, or its error repeated the password ('nonnumeric port: S3cret@...').
    Such a URL is a usage error that does not repeat it."""
    with pytest.raises(modelfiles.FetchError) as err:
        modelfiles.fetch_yunet(tmp_path, url, "1" * 64, timeout=2.0)
    assert err.value.kind == "usage" and "S3cret" not in str(err.value)
    with pytest.raises(SystemExit) as stop:  # argparse's usage error
        main(["models", "fetch", "--dest", str(tmp_path), "--yunet-url", url])
    said = capsys.readouterr()
    assert stop.value.code == 2 and "user name or password" in said.err
    assert "S3cret" not in said.out + said.err


def test_a_dest_named_like_the_file_is_refused_before_any_folder_is_made(tmp_path, capsys):
    """--dest /x/yunet.onnx made a folder called yunet.onnx with the file inside it."""
    dest = tmp_path / "yunet.onnx"
    with pytest.raises(SystemExit) as exit_:
        main(["models", "fetch", "--dest", str(dest), "--yunet-url", refused_url()])
    assert exit_.value.code == 2
    assert "--dest takes the folder to save into (the file is named " in capsys.readouterr().err
    assert not dest.exists()
    dest.mkdir()  # a folder that is there by that name is still a folder
    assert main(["models", "fetch", "--dest", str(dest), "--yunet-url", refused_url(),
                 "--timeout", "1"]) == 69


def test_without_the_pinned_file_the_last_yunet_by_name_is_taken(tmp_path):
    """find_yunet's rule: the pinned version when it is there, else the last by name (the
    newest dated version), never the first."""
    for name in ("face_detection_yunet_2022mar.onnx", "face_detection_yunet_2023mar.onnx"):
        (tmp_path / name).write_bytes(b"onnx")
    assert modelfiles.find_yunet((tmp_path,)) == tmp_path / "face_detection_yunet_2023mar.onnx"
    (tmp_path / YUNET_NAME).write_bytes(b"onnx")
    assert modelfiles.find_yunet((tmp_path / "none", tmp_path)) == tmp_path / YUNET_NAME


def test_the_hints_after_a_failure_fit_that_failure(tmp_path, capsys, monkeypatch):
    """No network: what BlazeFace means, and, for the default URL only, how to bring the file
    by hand (a URL of one's own was the operator's choice). A sha256 mismatch is one line: the
    server was reached, so neither hint applies."""
    import maskd.commands.models as cmd

    url = refused_url()
    code, _, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-url", url, "--timeout", "5")
    assert code == 69 and "BlazeFace" in err and "file:///path/to/it" not in err, err
    monkeypatch.setattr(cmd, "YUNET_URL", url)  # standing for the default, unreachable here
    code, _, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-url", url, "--timeout", "5")
    assert code == 69 and "BlazeFace" in err and "file:///path/to/it" in err, err
    src = tmp_path / "www" / "x.onnx"
    src.parent.mkdir()
    src.write_bytes(b"not the pinned YuNet")
    code, _, err = fetch(capsys, "--dest", str(tmp_path / "m"), "--yunet-url", src.as_uri())
    assert code == 65 and len(err.splitlines()) == 1 and "mismatch" in err, err


def test_a_server_without_the_file_says_its_status_not_no_network(tmp_path, capsys, monkeypatch):
    """The default URL is an assumption (docs/install-pi.md): a 404 from it said only 'Not
    Found', then 'download that URL on a machine that can', which no machine can; a redirect
    loop was three lines. Now the status is named, the hint is a copy you trust, exit 69."""
    import maskd.commands.models as cmd

    def answer(conn: socket.socket) -> None:
        with conn:
            path = conn.recv(4096).split(b" ")[1]
            if path == b"/loop":
                conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    url = next(server := raw_server(answer))
    monkeypatch.setattr(cmd, "YUNET_URL", f"{url}/{YUNET_NAME}")  # standing for the default
    code, out, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-url", f"{url}/{YUNET_NAME}")
    assert code == 69 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"maskd models fetch: cannot download {url}/{YUNET_NAME}: HTTP 404 Not Found"
    assert "BlazeFace" in err and "machine that can" not in err
    assert "--yunet-url URL --yunet-sha256 HEX" in err, err
    code, _, err = fetch(capsys, "--dest", str(tmp_path), "--yunet-url", f"{url}/loop")
    assert code == 69 and err.splitlines()[0].startswith(
        f"maskd models fetch: cannot download {url}/loop: HTTP 302 The HTTP server returned a "
        "redirect error that would lead to an infinite loop."), err
    assert "BlazeFace" in err.splitlines()[1]
    assert list(tmp_path.iterdir()) == []
    next(server, None)  # closes it


def test_a_damaged_file_goes_even_when_the_download_fails(tmp_path, capsys):
    """A damaged YuNet by the pinned name (a cut copy, a bad SD card) stayed when the fetch
    meant to mend it found no network: the fetch said 'detector kind auto uses BlazeFace', but
    `run` found the damaged file and stopped (exit 78, 'is damaged'). It is removed now, so the
    fallback the line promises is what runs."""
    dest = tmp_path / "models"
    dest.mkdir()
    damaged = dest / YUNET_NAME
    damaged.write_bytes(b"the first 1000 bytes of a YuNet, cut")
    code, _, err = fetch(capsys, "--dest", str(dest), "--yunet-url", refused_url(),
                         "--timeout", "5")
    assert code == 69 and "BlazeFace" in err, err
    assert modelfiles.find_yunet((dest,)) is None and list(dest.iterdir()) == []


def dripped_fetch_ends_at_the_deadline(tmp_path: Path, head: bytes, drip: bytes, came: int):
    """`models fetch` (--timeout 0.5) from a server that sends ``head``, then ``drip`` a byte
    every 50 ms for good, ends at its 10 x --timeout deadline with ``came`` body bytes."""

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(4096)
            try:
                conn.sendall(head)
                while True:
                    for byte in drip:
                        time.sleep(0.05)
                        conn.sendall(bytes([byte]))
            except OSError:  # the client gave up
                return

    url = next(server := raw_server(answer))
    began = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "maskd", "models", "fetch", "--dest", str(tmp_path),
                        "--yunet-url", f"{url}/{YUNET_NAME}", "--timeout", "0.5"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 69, r.stderr
    assert r.stderr.startswith(f"maskd models fetch: cannot download {url}/{YUNET_NAME}: not "
                               f"done after 5 s (10 x --timeout); {came} bytes came"), r.stderr
    assert time.monotonic() - began < 15 and list(tmp_path.iterdir()) == []
    next(server, None)  # closes it


def test_a_server_sending_its_headers_a_byte_at_a_time_ends_at_the_deadline(tmp_path):
    """--timeout bounds each wait, and the 10 x --timeout deadline was checked only between
    blocks of the body: a server (a tarpit, a broken proxy) sending a header a byte at a time
    held the fetch for hours (65 536 bytes a line, 100 lines). It ends at the deadline now."""
    dripped_fetch_ends_at_the_deadline(tmp_path, b"HTTP/1.1 200 OK\r\nX-Pad: ", b"a", 0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_fetch_stopped_by_sigterm_or_a_closed_terminal_leaves_no_part(tmp_path, sig):
    """A SIGTERM (systemd, kill) or a SIGHUP (the ssh session of `sudo deploy/install.sh
    --yunet` dropped) killed the fetch outright and left its .part until some later fetch;
    like Ctrl-C it now removes it on the way out (exit 128 + the signal's number)."""

    def answer(conn: socket.socket) -> None:  # a start, then nothing more for a minute
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:1000])
            time.sleep(60)

    url = next(server := raw_server(answer))
    p = subprocess.Popen([sys.executable, "-m", "maskd", "models", "fetch", "--dest", str(tmp_path),
                          "--yunet-url", f"{url}/slow", "--yunet-sha256",
                          hashlib.sha256(BODY).hexdigest()], stderr=subprocess.PIPE, cwd=REPO)
    assert wait_until(lambda: any(tmp_path.glob(".fetch-*.part")), 30)  # downloading
    p.send_signal(sig)
    assert p.wait(timeout=30) == 128 + sig
    assert list(tmp_path.iterdir()) == []
    next(server, None)  # closes it


@pytest.mark.parametrize("drip", [b"0", b"X-Pad: a\r\n"], ids=["chunk-size", "trailer"])
def test_a_chunked_body_dripping_inside_one_line_ends_at_the_deadline(tmp_path, drip):
    """Once the headers came urllib lets go of the connection, and the body's loop checks the
    deadline only between the blocks read1 hands out; a chunked body reads a whole chunk-size
    line, and every trailer line, inside one read1: a server dripping a chunk size (a line
    of up to 64 KiB) or trailer lines (no limit) a byte at a time held the fetch for hours.
    The watchdog shuts that connection at the deadline too."""
    head = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n"
            + (b"0\r\n" if drip != b"0" else b""))
    dripped_fetch_ends_at_the_deadline(tmp_path, head, drip, 1)
