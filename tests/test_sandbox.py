"""A real maskd inside an emulation of systemd/maskd.service's sandbox (tools/sandbox.py): read-only
file system but the state folder, empty /tmp, hidden /home and /root, the user nobody with no
capabilities, and the unit's seccomp filter from this machine's systemd-analyze. Where no systemd
runs (a chroot, CI) this is what shows a write outside /var/lib/maskd (a cache in ~/.cache or
/opt/maskd, a temporary file) or a system call outside @system-service before a Pi does.
Skips with the reason where the emulation cannot run (not root, no unshare or libseccomp)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mqtt_broker import Broker, Subscriber, free_port

from tools import sandbox

REPO = Path(__file__).resolve().parents[1]
# what a sandbox refusal looks like in maskd's output
REFUSALS = ("Read-only file system", "Permission denied", "Operation not permitted",
            "Address family not supported", "Traceback")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """A state folder owned by nobody (StateDirectory=) and a config folder it may only read."""
    why = sandbox.missing()
    if why:
        pytest.skip(why)
    state, config = tmp_path / "state", tmp_path / "config"
    state.mkdir(mode=0o750)
    config.mkdir(mode=0o750)
    os.chown(state, sandbox.NOBODY, sandbox.NOBODY)
    os.chown(config, 0, sandbox.NOBODY)
    return state, config


def in_sandbox(state: Path, config: Path, *args: str, env: dict[str, str] | None = None,
               **kw: object) -> subprocess.Popen:
    """``args``: maskd's, after ``--rw PATH ... --`` (a drop-in's ReadWritePaths=) if any."""
    sep = ["--"] if "--" not in args else []
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, str(REPO / "tools" / "sandbox.py"), "--state", str(state), "--config",
         str(config), *sep, *args], env={**os.environ, "MASKD_MODEL_DIR": str(REPO / "models"),
                                         **(env or {})}, **kw)


def chown_fix() -> str:
    """The fix the lines about a root run's leftovers end with: the state folder back."""
    import grp

    try:
        group = grp.getgrgid(sandbox.NOBODY).gr_name
    except KeyError:
        group = str(sandbox.NOBODY)
    return f"give the folder back: sudo chown -R nobody:{group} {sandbox.STATE}"


def ran(state: Path, config: Path, *args: str) -> tuple[int, str]:
    """``maskd args`` run to its end in the sandbox: its exit code and what it said."""
    r = in_sandbox(state, config, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   text=True)
    out = r.communicate(timeout=240)[0]
    return r.returncode, out


def mnt_folder(request: pytest.FixtureRequest) -> Path:
    """A folder as a stick's mount point (root's, 0755): outside /tmp (the service's own) and
    /dev, removed after the test."""
    import tempfile

    try:
        folder = Path(tempfile.mkdtemp(dir="/mnt"))
    except OSError as err:
        pytest.skip(f"no folder in /mnt here: {err}")
    request.addfinalizer(lambda: shutil.rmtree(folder))
    os.chmod(folder, 0o755)
    return folder


def demo_config(config: Path, yunet_model: Path, snapshots: dict) -> None:
    """The service's config.yaml (readable by it) for a demo run with YuNet and ``snapshots``."""
    shutil.copyfile(yunet_model, config / yunet_model.name)
    (config / "config.yaml").write_text(json.dumps({
        "camera": "door", "state_dir": sandbox.STATE, "source": {"kind": "demo"},
        "detector": {"kind": "yunet", "model": f"{sandbox.CONFIG}/{yunet_model.name}"},
        "snapshots": snapshots}))
    os.chmod(config / "config.yaml", 0o644)


def test_the_syscall_sets_are_systemds() -> None:
    """The filter is built from systemd's own groups: what maskd needs is in, setuid is not."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("needs systemd-analyze (systemd)")
    calls = set(sandbox.allowed())
    assert {"socket", "clone3", "futex", "mmap", "sched_getaffinity", "epoll_wait"} <= calls
    assert not {"setresuid", "chown", "mount", "reboot"} & calls


def test_real_maskd_run_inside_the_units_sandbox(dirs: tuple[Path, Path], yunet_model: Path,
                                                  tmp_path: Path) -> None:
    """`maskd check-config`, `doctor` and `run` (demo source, YuNet, the TFLite classifier with
    XNNPACK, MQTT, the status page, snapshots, the annotated clip, JSON lines, sd_notify, a
    SIGTERM stop) as the unit runs them: every output lands in the state folder and nothing is
    refused."""
    import socket

    state, config = dirs
    port = free_port()
    cfg = config / "config.yaml"
    notify = config / "notify.sock"
    with Broker(tmp_path / "broker") as broker:
        detector = config / yunet_model.name  # ../shared may be under the hidden /home
        shutil.copyfile(yunet_model, detector)
        cfg.write_text(json.dumps({
            "camera": "door", "state_dir": sandbox.STATE, "source": {"kind": "demo"},
            "detector": {"kind": "yunet", "model": f"{sandbox.CONFIG}/{detector.name}"},
            "classifier": {"threads": 2},
            "jsonl": {"path": f"{sandbox.STATE}/events.jsonl"},
            "mqtt": {"url": broker.url, "snapshots": True},
            "preview": {"http": f"127.0.0.1:{port}", "annotate_dir": f"{sandbox.STATE}/clips"},
            "snapshots": {"dir": f"{sandbox.STATE}/snapshots"}}))
        os.chmod(cfg, 0o640)
        os.chown(cfg, 0, sandbox.NOBODY)
        inside = f"{sandbox.CONFIG}/config.yaml"
        for cmd in (["check-config", inside], ["doctor", "--config", inside]):
            rc, out = ran(state, config, *cmd)
            assert rc == 0 and not any(x in out for x in REFUSALS), out
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        os.chmod(notify, 0o777)
        sock.settimeout(0.2)
        sub = Subscriber(broker, ["maskd/+/door/snapshot"])
        log = tmp_path / "stderr.log"
        with log.open("w") as err:
            proc = in_sandbox(state, config, "run", "--config", inside,
                              env={"NOTIFY_SOCKET": f"{sandbox.CONFIG}/notify.sock",
                                   "WATCHDOG_USEC": "30000000"},
                              stdout=subprocess.DEVNULL, stderr=err)
        try:
            said: list[str] = []
            deadline = time.monotonic() + 180
            while not ("READY=1" in "".join(said) and (state / "events.jsonl").exists()
                       and (state / "events.jsonl").stat().st_size and sub.messages):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                try:
                    said.append(sock.recv(4096).decode())
                except TimeoutError:
                    pass
            status = Path(f"/proc/{proc.pid}/status").read_text()
            for line in ("Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000",
                         f"Uid:\t{sandbox.NOBODY}"):
                assert line in status, status  # the emulation is in force
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/frame.jpg", timeout=10) as page:
                assert page.read(2) == b"\xff\xd8"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            sub.close()
            sock.close()
    text = log.read_text()
    assert not any(x in text for x in REFUSALS), text
    assert json.loads((state / "events.jsonl").read_text().splitlines()[0])["camera"] == "door"
    assert list((state / "snapshots").glob("*.jpg")) and list((state / "clips").iterdir())
    assert (state / "outbox.sqlite3").exists()


def test_an_outbox_left_by_a_root_run_is_named_with_its_owner(dirs: tuple[Path, Path]) -> None:
    """`sudo maskd run` (not `sudo -u maskd`) leaves the outbox root's. The service, as its own
    user, ran with the database open read-only (root's umask: 0644): every event failed to be
    stored ('attempt to write a readonly database'), was held in memory and lost at the stop
    ('the disk had no room for them'), and `doctor` said OK; a lock left by root stopped it with
    'state_dir /var/lib/maskd: cannot create the MQTT outbox there: Permission denied' of a
    folder it may write. Both now stop at the start (exit 78) naming the file, its owner and
    the chown that gives it back, `doctor` fails and `check-config` warns in the same words."""
    from maskd.outbox import Outbox

    state, config = dirs
    cfg = config / "config.yaml"
    cfg.write_text(json.dumps({"state_dir": sandbox.STATE, "source": {"kind": "demo"},
                               "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"}}))
    os.chmod(cfg, 0o644)
    inside = f"{sandbox.CONFIG}/config.yaml"
    for name in ("outbox.sqlite3", "outbox.lock"):
        for f in state.iterdir():
            f.unlink()
        Outbox(state).close()  # as root, as `sudo maskd run` makes it
        for f in state.iterdir():
            if f.name != name:
                os.chown(f, sandbox.NOBODY, sandbox.NOBODY)
        why = (f"outbox {sandbox.STATE}/{name} belongs to root:root (mode "
               f"{(state / name).stat().st_mode & 0o7777:04o}) and nobody, this maskd's user, "
               "cannot read and write it")
        fix = chown_fix()
        for cmd, code in ((["run", "--config", inside], 78), (["doctor", "--config", inside], 1),
                          (["check-config", inside], 0)):  # a warning: the user it is run as
            rc, out = ran(state, config, *cmd)
            assert rc == code and why in out and fix in out, out
    # what a stop could not store, left root's (0644): only read, and replaced by a rename the
    # folder allows, so no chown is asked (was: exit 78 of that file alone)
    for f in state.iterdir():
        f.unlink()
    Outbox(state).close()
    for f in state.iterdir():
        os.chown(f, sandbox.NOBODY, sandbox.NOBODY)
    (state / "outbox-records.json").write_text("[]")
    os.chmod(state / "outbox-records.json", 0o644)
    for cmd in (["run", "--config", inside, "--max-frames", "5"], ["doctor", "--config", inside],
                ["check-config", inside]):
        rc, out = ran(state, config, *cmd)
        assert "belongs to root" not in out and "chown" not in out, out
        assert rc == (1 if cmd[0] == "doctor" else 0), out  # doctor: no broker there
    assert not (state / "outbox-records.json").exists()  # taken into the outbox, as the service's


def test_open_violations_left_by_a_root_run_are_named_with_their_owner(
        dirs: tuple[Path, Path]) -> None:
    """`sudo maskd run` without MQTT leaves the open violations' lock root's (0644). The
    service, as its own user, then kept no open violation (a kill's violations never ended in
    JSON lines, and a second run on the camera went unnoticed) with one warning, 'cannot keep
    the open violations in .../open_violations.json (Permission denied)', of a file it may
    replace, and check-config said nothing. The warning now names the file it cannot open, its
    owner and the chown; check-config and doctor warn in the same words."""
    state, config = dirs
    (state / ".open_violations.json.lock").touch(mode=0o644)  # as `sudo maskd run` leaves them
    (state / "open_violations.json").write_text("{}")
    cfg = config / "config.yaml"
    cfg.write_text(json.dumps({"state_dir": sandbox.STATE, "source": {"kind": "demo"},
                               "jsonl": {"path": f"{sandbox.STATE}/events.jsonl"}}))
    os.chmod(cfg, 0o644)
    why = (f"{sandbox.STATE}/.open_violations.json.lock belongs to root:root (mode 0644) and "
           "nobody, this maskd's user, cannot read and write it")
    fix = chown_fix()
    inside = f"{sandbox.CONFIG}/config.yaml"
    for cmd, said in ((["run", "--config", inside, "--max-frames", "5"],
                       f"cannot keep the open violations in {sandbox.STATE}/open_violations.json "
                       f"({why}"), (["check-config", inside], f"open violations {why}"),
                      (["doctor", "--config", inside], f"open violations {why}")):
        rc, out = ran(state, config, *cmd)
        assert rc == 0 and said in out and fix in out, out


def test_files_and_folders_left_by_a_root_run_are_named_with_their_owner(
        dirs: tuple[Path, Path]) -> None:
    """`sudo maskd run` leaves jsonl.path root's (0644), and snapshots.dir and
    preview.annotate_dir root's folders (0755). The service then stopped at the start (exit 78)
    with a bare 'Permission denied' of each, in a folder it owns, and check-config and doctor
    said the same; all three now name the owner, the mode and the chown, as the outbox's do."""
    state, config = dirs
    (state / "events.jsonl").touch(mode=0o644)  # as `sudo maskd run` leaves them
    (state / "snaps").mkdir(mode=0o755)
    (state / "clips").mkdir(mode=0o755)
    cfg = config / "config.yaml"
    cfg.write_text(json.dumps({"state_dir": sandbox.STATE, "source": {"kind": "demo"},
                               "jsonl": {"path": f"{sandbox.STATE}/events.jsonl"},
                               "snapshots": {"dir": f"{sandbox.STATE}/snaps"},
                               "preview": {"annotate_dir": f"{sandbox.STATE}/clips"}}))
    os.chmod(cfg, 0o644)
    fix = chown_fix()
    said = [f"{key} {sandbox.STATE}/{name}: {what}: {sandbox.STATE}/{name} belongs to root:root "
            f"(mode {mode}) and nobody, this maskd's user, cannot read and write it"
            for key, name, what, mode in (
                ("jsonl.path", "events.jsonl", "cannot write there", "0644"),
                ("snapshots.dir", "snaps", "cannot save snapshots there", "0755"),
                ("preview.annotate_dir", "clips", "cannot record clips there", "0755"))]
    inside = f"{sandbox.CONFIG}/config.yaml"
    for cmd, code in ((["run", "--config", inside], 78), (["doctor", "--config", inside], 0),
                      (["check-config", inside], 0)):  # a warning: the user it is run as
        rc, out = ran(state, config, *cmd)
        assert rc == code and all(f"{line}: made by" in out for line in said), out
        assert out.count(fix) >= 3, out
    # root's file in a folder of root's own (a /var/log): its chown -R is no advice to give
    (state / "logs").mkdir(mode=0o755)
    (state / "logs" / "events.jsonl").touch(mode=0o644)
    cfg.write_text(json.dumps({"state_dir": sandbox.STATE, "source": {"kind": "demo"},
                               "jsonl": {"path": f"{sandbox.STATE}/logs/events.jsonl"}}))
    for cmd, code in ((["run", "--config", inside], 78), (["check-config", inside], 0)):
        rc, out = ran(state, config, *cmd)
        assert rc == code and f"jsonl.path {sandbox.STATE}/logs/events.jsonl: cannot write " \
            "there: Permission denied" in out and "chown" not in out, out


def exfat_stick(request: pytest.FixtureRequest, tmp_path: Path, options: str,
                mkfs: tuple[str, ...] = ("mkfs.exfat",), mount: str = "mount.exfat-fuse") -> Path:
    """An exFAT stick (a loop device of an image, through exfat-fuse, which gives owners and
    modes from its mount options as the Pi's kernel exfat does) mounted at a folder in /mnt
    with ``options``; unmounted and detached after the test. ``mkfs`` and ``mount`` make it
    another FUSE one (``ntfs_stick``)."""
    for tool in (mkfs[0], "losetup", mount, "fusermount"):
        if not shutil.which(tool):
            pytest.skip(f"a stick needs {tool} (exfat-fuse, exfatprogs, ntfs-3g, util-linux)")
    image = tmp_path / f"stick-{len(list(tmp_path.glob('stick-*.img')))}.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    r = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no loop device here: {r.stderr.strip()}")
    loop = r.stdout.strip()
    request.addfinalizer(lambda: subprocess.run(["losetup", "-d", loop]))
    mnt = mnt_folder(request)
    r = subprocess.run([mount, "-o", options, loop, str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no FUSE mount here: {r.stderr.strip()}")
    request.addfinalizer(lambda: subprocess.run(["fusermount", "-u", str(mnt)]))
    return mnt


def test_a_stick_mounted_for_root_is_said_to_need_the_mount_options_not_a_chown(
        dirs: tuple[Path, Path], request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """An exFAT (FAT, NTFS) stick keeps no owners: an fstab line without uid= gives every file
    to root (0755), and the service may write nothing there. check-config advised 'give the
    folder back: sudo chown -R nobody:nogroup /mnt/.../state' for the outbox a first run left,
    a chown the stick refuses (Operation not permitted), and `run` stopped on a bare
    'Permission denied'; both now say to mount it with uid=nobody,gid=... (doctor's rows
    share check-config's words). A stick mounted so takes the service's records."""
    import grp

    state, config = dirs
    stick = exfat_stick(request, tmp_path, "umask=022")
    from maskd.outbox import Outbox

    Outbox(stick / "state").close()  # a first run's, as root (the stick gives root every file)
    group = grp.getgrgid(sandbox.NOBODY).gr_name
    cfg = config / "config.yaml"
    cfg.write_text(json.dumps({"state_dir": f"{stick}/state", "source": {"kind": "demo"},
                               "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
                               "jsonl": {"path": f"{stick}/events.jsonl"}}))
    os.chmod(cfg, 0o644)
    mount = (f"its file system (fuseblk) keeps no owners: the mount gives every file one owner "
             f"and mode, which chown cannot change; mount it with uid=nobody,gid={group} in its "
             "options")
    inside = f"{sandbox.CONFIG}/config.yaml"
    for cmd, code in ((["run", "--config", inside], 78), (["check-config", inside], 0)):
        rc, out = ran(state, config, f"--rw={stick}", "--", *cmd)
        assert rc == code and f"state_dir {stick}/state: cannot create the MQTT outbox there: " \
            f"Permission denied: {mount}" in out, out
        assert f"jsonl.path {stick}/events.jsonl: cannot write there: Permission denied: " \
            f"{mount}" in out and "chown -R" not in out, out
    stick = exfat_stick(request, tmp_path, f"uid={sandbox.NOBODY},gid={sandbox.NOBODY},umask=027")
    cfg.write_text(json.dumps({"state_dir": f"{stick}/state", "source": {"kind": "demo"},
                               "jsonl": {"path": f"{stick}/events.jsonl"}}))  # no broker here
    rc, out = ran(state, config, f"--rw={stick}", "--", "run", "--config", inside)
    assert rc == 0 and "violation end" in out, out
    assert '"event_type": "start"' in (stick / "events.jsonl").read_text()


def test_pictures_on_a_stick_every_user_may_read_are_a_warning(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Snapshots and clips are made 0640 in a 0750 folder, but a stick (FAT, exFAT, NTFS) keeps
    no modes: the mount's umask= gives them, and an fstab line without it gives 0755, so every
    user of the Pi could look at the faces while check-config and run said nothing. Both warn
    now, naming umask=027; mounted with it, they say nothing."""
    for options, mode in (("umask=022", "0755"), ("umask=027", None)):
        stick = exfat_stick(request, tmp_path, options)
        cfg = tmp_path / "config.yaml"
        cfg.write_text(json.dumps({"state_dir": str(tmp_path / "state"), "source": {"kind": "demo"},
                                   "snapshots": {"dir": f"{stick}/snaps"},
                                   "preview": {"annotate_dir": f"{stick}/clips"}}))
        lines = [f"{key} {stick}/{name}: every user of this machine may read the pictures there: "
                 f"its file system (fuseblk) keeps no modes of its own, its mount gives mode "
                 f"{mode}; mount it with umask=027" for key, name in (
                     ("snapshots.dir", "snaps"), ("preview.annotate_dir", "clips"))]
        for cmd in (["check-config", str(cfg)], ["run", "--config", str(cfg), "--max-frames", "3"]):
            r = subprocess.run([sys.executable, "-m", "maskd", *cmd], capture_output=True,
                               text=True, timeout=240, cwd=REPO,
                               env={**os.environ, "MASKD_MODEL_DIR": str(REPO / "models")})
            assert r.returncode == 0, r.stderr
            if mode is None:
                assert "may read the pictures" not in r.stderr, r.stderr
            else:
                assert all(line in r.stderr for line in lines), r.stderr


def ntfs_stick(request: pytest.FixtureRequest, tmp_path: Path, options: str) -> Path:
    """An NTFS stick through ntfs-3g, as the Pi mounts one, with ``options``."""
    return exfat_stick(request, tmp_path, options, ("mkntfs", "-F", "-q", "-f"), "ntfs-3g")


def test_an_ntfs_stick_mounted_with_permissions_keeps_owners_and_is_not_said_to_keep_none(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ntfs-3g with the fstab option `permissions` keeps owners and modes: chown and chmod work
    there as on ext4. check-config said of a folder root made there 'Permission denied: its
    file system (fuseblk) keeps no owners: ... mount it with uid=nobody,...' and 'keeps no
    modes of its own, its mount gives mode 0755; mount it with umask=027', advice that changes
    nothing there. It now says what it says on ext4. Its mount says default_permissions, as one
    with umask= (which keeps none) does: the fstab line tells them apart; a stick mounted
    without one is taken as keeping none, as before: so is one whose fstab line with it is
    commented out, one where no fstab is, and one mounted by hand without the fstab's options
    (ntfs-3g alone: no default_permissions, chown ignored)."""
    from maskd import files
    from maskd.commands.check_config import pictures_open_to_all
    from maskd.config import load_config
    from maskd.outbox import mounted_for_another

    fstab = tmp_path / "fstab"
    monkeypatch.setattr(files, "FSTAB", fstab, raising=False)
    for options, in_fstab, mode in (("permissions", "permissions", None),
                                    ("umask=022", "umask=022", "0755"),
                                    ("permissions", "", "0755"), ("permissions", None, "0755"),
                                    ("rw", "permissions", "0777")):
        stick = ntfs_stick(request, tmp_path, options)
        fstab.unlink(missing_ok=True)
        if in_fstab is not None:  # a line for this stick, or another's only
            fstab.write_text(f"# a stick\n#UUID=0123 {stick} ntfs-3g permissions 0 0\nUUID=0123 "
                             f"{stick if in_fstab else '/media/other'} ntfs-3g "
                             f"{in_fstab or 'permissions'},nofail 0 0\n")
        (stick / "usb").mkdir(mode=0o755)
        os.chown(stick / "usb", sandbox.NOBODY, sandbox.NOBODY)  # kept, or not
        assert (os.stat(stick / "usb").st_uid == sandbox.NOBODY) is (options == "permissions")
        (tmp_path / "c.yaml").write_text(json.dumps({"source": {"kind": "demo"},
                                                     "snapshots": {"dir": f"{stick}/usb/snaps"}}))
        said = (mounted_for_another(stick / "usb"), pictures_open_to_all(load_config(tmp_path / "c.yaml")))
        if mode:
            assert said[0].startswith("its file system (fuseblk) keeps no owners"), said
            assert f"keeps no modes of its own, its mount gives mode {mode}" in said[1][0], said
        else:
            assert said == (None, []), said


@pytest.mark.parametrize("named", ["with a slash", "through a link", "through a link with a space"])
def test_an_ntfs_stick_whose_fstab_line_names_its_mount_point_otherwise_keeps_owners(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        named: str) -> None:
    """An fstab line may write the mount point with a slash at its end (/media/usb/, as a
    shell completes a folder) or through a link (/mnt/usb -> /media/usb): mount and systemd
    mount it at /media/usb alike, and mountinfo says that. Its `permissions` was not found:
    check-config said 'keeps no owners: ... mount it with uid=...' and 'keeps no modes of its
    own ... mount it with umask=027' of a stick that keeps them. The fstab point is taken where
    mount takes it: a space in it written \\040, as fstab writes one (a link /mnt/USB\\040link,
    whose escape was looked for as written, not followed)."""
    from maskd import files
    from maskd.outbox import mounted_for_another

    fstab = tmp_path / "fstab"
    monkeypatch.setattr(files, "FSTAB", fstab)
    stick = ntfs_stick(request, tmp_path, "permissions")
    point = f"{stick}/"
    if named == "through a link":
        (tmp_path / "link").symlink_to(stick)
        point = str(tmp_path / "link")
    if named == "through a link with a space":
        (tmp_path / "USB link").symlink_to(stick)
        point = f"{tmp_path}/USB\\040link"
    fstab.write_text(f"UUID=0123\t{point} ntfs-3g permissions,nofail 0 0\n")
    (stick / "usb").mkdir(mode=0o755)
    os.chown(stick / "usb", sandbox.NOBODY, sandbox.NOBODY)
    assert os.stat(stick / "usb").st_uid == sandbox.NOBODY  # kept
    assert files.ownerless_fs(stick / "usb") is None
    assert mounted_for_another(stick / "usb") is None


def test_a_stick_whose_file_system_does_not_answer_holds_up_no_other_sticks_check(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether an NTFS stick keeps owners is read from its fstab line, whose mount point is
    followed where it is a link (/mnt/usb -> /media/usb). That was os.path.realpath of every
    line with permissions, whose lstat asks the file system mounted there: another stick's
    ntfs-3g that did not answer (its disk gone quiet; here stopped) held check-config, doctor
    and run at their start for as long. Links are found by readlink alone now."""
    import threading

    from maskd import files

    fstab = tmp_path / "fstab"
    monkeypatch.setattr(files, "FSTAB", fstab)
    quiet = ntfs_stick(request, tmp_path, "permissions")
    stick = ntfs_stick(request, tmp_path, "permissions")
    (tmp_path / "link").symlink_to(stick)
    fstab.write_text(f"UUID=1 {quiet} ntfs-3g permissions 0 0\n"
                     f"UUID=2 {tmp_path / 'link'} ntfs-3g permissions 0 0\n")
    pid = next(int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and str(quiet)
               in (d / "cmdline").read_bytes().decode(errors="replace").split("\0"))
    said: list[str | None] = []
    check = threading.Thread(target=lambda: said.append(files.ownerless_fs(stick)), daemon=True)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(3)  # past FUSE's attribute time-out: a stat of it now asks ntfs-3g
        check.start()
        check.join(10)
        held = check.is_alive()
    finally:
        os.kill(pid, signal.SIGCONT)
    check.join(10)
    assert not held and said == [None], said


def test_pictures_on_a_stick_whose_mount_closes_its_files_are_no_warning(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A stick mounted dmask=022,fmask=077 shows its folders 0755 but gives every file 0700:
    no other user may read a picture, yet check-config and run warned that every user may. The
    files' mode is what is judged now (a FUSE mount says none of its options: a file already
    on the stick tells); with fmask=022 they warn as before. Folders others may list but not
    go in (dmask=023: 0754) open no picture to them, whatever the files' mode: no warning (was:
    'every user of this machine may read the pictures there', where they got Permission
    denied)."""
    for options, warned in (("dmask=022,fmask=077", False), ("dmask=022,fmask=022", True),
                            ("dmask=023,fmask=022", False)):
        stick = exfat_stick(request, tmp_path, options)
        for name in ("snaps/door-1.jpg", "clips/door-1.mkv"):  # pictures a run left
            (stick / name).parent.mkdir()
            (stick / name).write_bytes(b"")
        cfg = tmp_path / "config.yaml"
        cfg.write_text(json.dumps({"state_dir": str(tmp_path / "state"), "source": {"kind": "demo"},
                                   "snapshots": {"dir": f"{stick}/snaps"},
                                   "preview": {"annotate_dir": f"{stick}/clips"}}))
        for cmd in (["check-config", str(cfg)], ["run", "--config", str(cfg), "--max-frames", "3"]):
            r = subprocess.run([sys.executable, "-m", "maskd", *cmd], capture_output=True,
                               text=True, timeout=240, cwd=REPO,
                               env={**os.environ, "MASKD_MODEL_DIR": str(REPO / "models")})
            assert r.returncode == 0, r.stderr
            assert (r.stderr.count("may read the pictures") == 2) == warned, r.stderr


def test_a_camera_lock_left_by_a_root_run_is_named_with_its_owner(
        dirs: tuple[Path, Path]) -> None:
    """`sudo maskd run` leaves the camera's lock root's (0600). The service, as its own user,
    could not open it and gave up the claim in silence: a second `maskd run` on the camera and
    folder (without MQTT) was let in. `run` now warns, naming the file, its owner and the
    chown; check-config and doctor warn in the same words."""
    state, config = dirs
    (state / ".camera-door.lock").touch(mode=0o600)  # as `sudo maskd run` leaves it
    cfg = config / "config.yaml"
    cfg.write_text(json.dumps({"state_dir": sandbox.STATE, "camera": "door",
                               "source": {"kind": "demo"},
                               "jsonl": {"path": f"{sandbox.STATE}/events.jsonl"}}))
    os.chmod(cfg, 0o644)
    said = (f"camera door: a second maskd run on it with this state_dir is not refused: "
            f"{sandbox.STATE}/.camera-door.lock belongs to root:root (mode 0600) and nobody, "
            "this maskd's user, cannot read and write it")
    fix = chown_fix()
    inside = f"{sandbox.CONFIG}/config.yaml"
    for cmd in (["run", "--config", inside, "--max-frames", "5"], ["check-config", inside],
                ["doctor", "--config", inside]):
        rc, out = ran(state, config, *cmd)
        assert rc == 0 and said in out and fix in out, out
    assert "MiB free (open violations)" not in out, out  # doctor: that row, not an OK one too


def test_a_stick_linked_from_the_state_folder_needs_its_read_write_paths(
        dirs: tuple[Path, Path], yunet_model: Path, request: pytest.FixtureRequest) -> None:
    """`snapshots.dir: /var/lib/maskd/snaps`, a link to a folder on a stick: the unit's
    mounts follow the link, so the service stops at start ('Read-only file system', exit 78)
    until a drop-in's ReadWritePaths= names the stick (`--rw`); doctor's sandbox row says so
    (test_doctor.py::test_a_place_linked_out_of_the_state_folder_is_named_where_it_leads)."""

    state, config = dirs
    stick = mnt_folder(request)
    (stick / "snaps").mkdir()
    os.chown(stick / "snaps", sandbox.NOBODY, sandbox.NOBODY)
    (state / "snaps").symlink_to(stick / "snaps")
    demo_config(config, yunet_model, {"dir": f"{sandbox.STATE}/snaps"})
    run = ["run", "--config", f"{sandbox.CONFIG}/config.yaml"]
    r = in_sandbox(state, config, *run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = r.communicate(timeout=240)[0]
    assert r.returncode == 78 and "snaps: cannot save snapshots there: Read-only file system" in out, out
    r = in_sandbox(state, config, "--rw", str(stick), "--", *run, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, text=True)
    out = r.communicate(timeout=240)[0]
    assert r.returncode == 0 and list((stick / "snaps").glob("*.jpg")), out


def test_a_folder_in_dev_shm_is_writable_to_the_service_and_doctor_says_nothing(
        dirs: tuple[Path, Path], yunet_model: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`snapshots.dir: /dev/shm/snaps` (a RAM disk that spares the card): ProtectSystem=strict
    leaves /dev out (systemd.exec(5): the API file systems; the unit has no PrivateDevices=),
    and the service writes there, while doctor's sandbox row said it was read-only to the
    service and failed at start, advising a ReadWritePaths= it does not need."""
    import tempfile

    from maskd.commands import doctor as doc
    from maskd.config import load_config

    state, config = dirs
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    request.addfinalizer(lambda: shutil.rmtree(shm))
    os.chown(shm, sandbox.NOBODY, sandbox.NOBODY)
    shutil.copyfile(yunet_model, config / yunet_model.name)
    (config / "config.yaml").write_text(json.dumps({
        "camera": "door", "state_dir": sandbox.STATE, "source": {"kind": "demo"},
        "detector": {"kind": "yunet", "model": f"{sandbox.CONFIG}/{yunet_model.name}"},
        "snapshots": {"dir": f"{shm}/snaps"}}))
    os.chmod(config / "config.yaml", 0o644)
    unit = config.parent / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    d = doc.Doctor(load_config(config / "config.yaml"), 1)
    d.sandbox()
    assert [c.detail for c in d.checks] == []
    rc, out = ran(state, config, "--", "run", "--config", f"{sandbox.CONFIG}/config.yaml")
    assert rc == 0 and "Read-only file system" not in out and list((shm / "snaps").glob("*.jpg")), out


def test_the_read_write_paths_doctor_advises_are_taken_as_systemd_takes_them(
        dirs: tuple[Path, Path], request: pytest.FixtureRequest) -> None:
    """doctor's sandbox row advises `ReadWritePaths=-FOLDER` (a stick may be out at boot).
    Given so (`--rw=-FOLDER`) the emulation took the - for part of a relative path and ended in
    a mount traceback; a missing folder, the case the - is for, did too. Now, as systemd: with
    the - a missing folder is left out and maskd runs, a folder there is writable; without it a
    missing folder stops the start (226/NAMESPACE), said in one line."""

    state, config = dirs
    stick = mnt_folder(request)
    os.chown(stick, sandbox.NOBODY, sandbox.NOBODY)
    out_of = stick / "gone"  # the stick not mounted
    rc, out = ran(state, config, f"--rw=-{out_of}", "--", "--version")
    assert rc == 0 and "maskd " in out and "Traceback" not in out, out
    rc, out = ran(state, config, f"--rw=-+{out_of}", "--", "--version")  # both, - first
    assert rc == 0 and "maskd " in out and "Traceback" not in out, out
    for word in (f"+-{stick}", f"-/mnt/..{stick}"):  # systemd ignores them
        rc, out = ran(state, config, f"--rw={word}", "--", "--version")
        assert rc == 0 and f"ReadWritePaths={word}: not an absolute path without .., which " \
            "systemd ignores" in out, out
    rc, out = ran(state, config, "--rw", str(out_of), "--", "--version")
    assert rc == 226 and "226/NAMESPACE" in out and str(out_of) in out, out
    assert "Traceback" not in out, out
    rc, out = ran(state, config, f"--rw=-{stick}", "--", "--version")  # the stick in
    assert rc == 0 and "maskd " in out, out


@pytest.mark.parametrize("owner, mode", [(sandbox.NOBODY, 0o755), (0, 0o775)],
                         ids=["the service's", "root's, its group writes"])
def test_doctors_read_write_paths_for_a_folder_not_made_yet_lets_the_service_make_it(
        dirs: tuple[Path, Path], yunet_model: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch, owner: int, mode: int) -> None:
    """`snapshots.dir: /media/usb/snaps` before any run made `snaps`: doctor's sandbox row
    advised `ReadWritePaths=-/media/usb/snaps`. Put into a drop-in as given, doctor said
    nothing more, while systemd leaves a missing - folder out, so the service still stopped at
    start ('Read-only file system', exit 78) making it. The advice names the folder there now
    (`-/media/usb`), under which the service makes `snaps`; so too where root owns it and the
    service's group writes it (root:maskd 0775: not a folder only root writes, as /media)."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    state, config = dirs
    stick = mnt_folder(request)
    os.chmod(stick, mode)
    os.chown(stick, owner, sandbox.NOBODY)
    demo_config(config, yunet_model, {"dir": f"{stick}/snaps"})
    unit = config.parent / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    d = doc.Doctor(load_config(config / "config.yaml"), 1)
    d.sandbox()
    [check] = d.checks
    word = check.detail.split("[Service] ReadWritePaths=")[1].split(" (")[0]
    assert word == f"-{stick}", check.detail
    (config.parent / "maskd.service.d").mkdir()
    (config.parent / "maskd.service.d/override.conf").write_text(
        f"[Service]\nReadWritePaths={word}\n")
    d = doc.Doctor(load_config(config / "config.yaml"), 1)
    d.sandbox()
    assert d.checks == []
    rc, out = ran(state, config, f"--rw={word}", "--", "run", "--config",
                  f"{sandbox.CONFIG}/config.yaml", "--max-frames", "3")
    assert rc == 0 and "Read-only file system" not in out, out


def test_a_read_write_paths_folder_missing_is_no_writable_place_to_doctor(
        dirs: tuple[Path, Path], yunet_model: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop-in that names a folder maskd is still to make (`ReadWritePaths=-/media/usb/snaps`,
    doctor's advice before it named the folder there) is left out by systemd while missing,
    and the service stopped at start making it (exit 78) while doctor's sandbox row said
    nothing: it now judges the path as if that drop-in line were not there."""

    from maskd.commands import doctor as doc
    from maskd.config import load_config

    state, config = dirs
    stick = mnt_folder(request)
    os.chown(stick, sandbox.NOBODY, sandbox.NOBODY)
    demo_config(config, yunet_model, {"dir": f"{stick}/snaps"})
    rc, out = ran(state, config, f"--rw=-{stick}/snaps", "--", "run", "--config",
                  f"{sandbox.CONFIG}/config.yaml", "--max-frames", "3")
    assert rc == 78 and "Read-only file system" in out, out
    unit = config.parent / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    (config.parent / "maskd.service.d").mkdir()
    (config.parent / "maskd.service.d/override.conf").write_text(
        f"[Service]\nReadWritePaths=-{stick}/snaps\n")
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    d = doc.Doctor(load_config(config / "config.yaml"), 1)
    d.sandbox()
    [check] = d.checks
    assert "is read-only to the service" in check.detail and f"ReadWritePaths=-{stick} (" \
        in check.detail, check.detail


def test_doctors_read_write_paths_for_a_stick_not_mounted_names_its_mount_point(
        dirs: tuple[Path, Path], yunet_model: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`snapshots.dir: /media/usb/snaps`, doctor run while the stick is out (no /media/usb):
    the sandbox row advised `ReadWritePaths=-/media`, every stick opened to the service, which
    still stopped at start (Permission denied: only root makes a folder in /media), and doctor,
    the advice followed, said nothing. It names the stick's mount point (`-/media/usb`), says
    while it is missing that the service fails at start, and with the stick in says nothing
    more: the service writes there."""

    from maskd.commands import doctor as doc
    from maskd.config import load_config

    state, config = dirs
    media = mnt_folder(request)  # as /media: only root writes it
    usb = media / "usb"
    demo_config(config, yunet_model, {"dir": f"{usb}/snaps", "what": "frame"})
    unit = config.parent / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)

    def sandbox_row() -> list[str]:
        d = doc.Doctor(load_config(config / "config.yaml"), 1)
        d.sandbox()
        return [c.detail for c in d.checks]

    [detail] = sandbox_row()
    word = detail.split("[Service] ReadWritePaths=")[1].split(" (")[0]
    assert word == f"-{usb}", detail
    (config.parent / "maskd.service.d").mkdir()
    (config.parent / "maskd.service.d/override.conf").write_text(
        f"[Service]\nReadWritePaths={word}\n")
    assert sandbox_row() == [f"snapshots.dir: {usb}/snaps is read-only to the service while its "
                             f"ReadWritePaths={usb} is missing (a stick not mounted?), which then "
                             "fails at start; mount or create it"]
    args = ("--", "run", "--config", f"{sandbox.CONFIG}/config.yaml", "--max-frames", "40")
    rc, out = ran(state, config, f"--rw={word}", *args)
    assert rc == 78 and not usb.exists(), out  # nothing written under the mount point
    usb.mkdir()  # the stick in
    os.chown(usb, sandbox.NOBODY, sandbox.NOBODY)
    assert sandbox_row() == []
    rc, out = ran(state, config, f"--rw={word}", *args)
    assert rc == 0 and list((usb / "snaps").glob("*.jpg")), out


@pytest.mark.parametrize("file, key", [("client.key", "mqtt.key_file"),
                                       ("client.crt", "mqtt.cert_file"), ("ca.crt", "mqtt.ca_file")])
def test_a_renewed_key_the_service_cannot_read_is_named_alone(
        dirs: tuple[Path, Path], tmp_path: Path, file: str, key: str) -> None:
    """A renewal (certbot's privkey, `install -m 0600`) leaves mqtt.key_file root's 0600 under
    a running service: it went on with the files it had, as docs/mqtt.md says, but its warning
    and fault line blamed both files with a bare errno (`mqtt.cert_file C, mqtt.key_file K:
    [Errno 13] Permission denied`), the certificate beside it readable. They now name the key
    alone in the words check-config and a restart use (`cannot read 'K': Permission denied`);
    a renewed certificate or CA file left so is named alone alike."""
    from mqtt_broker import make_ca

    state, config = dirs
    tls = make_ca(tmp_path / "ca")
    with Broker(tmp_path / "broker", users={"maskd": "s3cret"}, tls=tls,
                require_client_cert=True) as broker:
        for name, src in (("ca.crt", tls.ca), ("client.crt", tls.client_cert),
                          ("client.key", tls.client_key)):
            shutil.copyfile(src, config / name)
            os.chmod(config / name, 0o640)  # root:maskd 0640, as docs/mqtt.md asks
            os.chown(config / name, 0, sandbox.NOBODY)
        (config / "mqtt-password").write_text("s3cret\n")
        os.chmod(config / "mqtt-password", 0o640)
        os.chown(config / "mqtt-password", 0, sandbox.NOBODY)
        c = sandbox.CONFIG
        cfg = config / "config.yaml"
        cfg.write_text(json.dumps({
            "camera": "door", "state_dir": sandbox.STATE,
            "source": {"kind": "demo", "loop": True}, "mqtt": {
                "url": broker.url, "username": "maskd", "password_file": f"{c}/mqtt-password",
                "ca_file": f"{c}/ca.crt", "cert_file": f"{c}/client.crt",
                "key_file": f"{c}/client.key"}}))
        os.chmod(cfg, 0o644)
        log = tmp_path / "stderr.log"
        with log.open("w") as err:
            proc = in_sandbox(state, config, "run", "--config", f"{c}/config.yaml",
                              stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert wait_for(lambda: "MQTT: connected to" in log.read_text(), proc), \
                log.read_text()
            renewed = config / file
            renewed.chmod(0o600)  # the renewal's: root's alone
            os.chown(renewed, 0, 0)
            os.utime(renewed, (time.time() - 10, time.time() - 10))  # settled
            assert wait_for(lambda: "do not load" in log.read_text(), proc), log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    line = next(x for x in log.read_text().splitlines() if "do not load" in x)
    assert f"{key}: cannot read '{c}/{file}': Permission denied" in line, line
    said = line.split("do not load:")[1]
    assert [k for k in ("ca_file", "cert_file", "key_file") if k in said] == [
        key.removeprefix("mqtt.")] and "Errno" not in line, line


def wait_for(done: object, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """``done()`` came true while ``proc`` ran, within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def low_port_config(config: Path, yunet_model: Path, port: int | None = None) -> tuple[int, str]:
    """A demo config whose status page listens on a port below
    net.ipv4.ip_unprivileged_port_start (``port``, or the highest such), and what maskd says of
    it: (the port, why the service cannot listen there)."""
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start < 2:
        pytest.skip(f"every port is open to every user here (ip_unprivileged_port_start {start})")
    port = start - 1 if port is None else port
    demo_config(config, yunet_model, {})
    cfg = json.loads((config / "config.yaml").read_text())
    cfg["preview"] = {"http": f"127.0.0.1:{port}"}
    (config / "config.yaml").write_text(json.dumps(cfg))
    return port, (f"a port below {start} needs a privilege the service does not have (no "
                  f"capabilities); use one from {start} up, e.g. 127.0.0.1:8080")


def test_a_status_page_port_below_1024_is_refused_with_why_and_what_to_use(
        dirs: tuple[Path, Path], yunet_model: Path) -> None:
    """`preview.http: 0.0.0.0:80` under the unit (no capabilities): the service stopped with
    exit 78 and a bare 'Permission denied', and `doctor` (as the service user) failed its row
    with '[Errno 13] Permission denied', not run's line. Both now say run's line with why (a
    port below net.ipv4.ip_unprivileged_port_start needs a privilege the unit drops) and the
    port to use."""
    import socket

    state, config = dirs
    highest, why = low_port_config(config, yunet_model)
    for port in range(highest, 0, -1):  # one this root may take, so only the privilege lacks
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
    port, why = low_port_config(config, yunet_model, port)
    said = f"preview.http: cannot listen on 127.0.0.1:{port}: Permission denied: {why}"
    inside = f"{sandbox.CONFIG}/config.yaml"
    for cmd, code in ((["run", "--config", inside, "--max-frames", "5"], 78),
                      (["doctor", "--config", inside], 1)):
        rc, out = ran(state, config, *cmd)
        assert rc == code and said in out and "Errno" not in out, out


def test_the_units_supplementary_groups_are_the_services(dirs: tuple[Path, Path],
                                                          yunet_model: Path) -> None:
    """The unit runs maskd with SupplementaryGroups=video plugdev (/dev/video*, /dev/fb0, the
    Coral); the emulation cleared every group, so what the service may open as video (here a
    clip root:video 0640, as /dev/video0 is root:video 0660) was refused in it, a false
    'Permission denied' that no Pi gives. It now has the unit's groups that this machine has."""
    import grp

    state, config = dirs
    try:
        video = grp.getgrnam("video").gr_gid
    except KeyError:
        pytest.skip("no video group here")
    demo_config(config, yunet_model, {})
    clip = config / "clip.mp4"
    require_ffmpeg = shutil.which("ffmpeg") or pytest.skip("needs ffmpeg")
    subprocess.run([require_ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=10", "-t", "1", str(clip)], check=True)
    os.chown(clip, 0, video)
    os.chmod(clip, 0o640)
    cfg = json.loads((config / "config.yaml").read_text())
    cfg["source"] = {"kind": "opencv", "uri": f"{sandbox.CONFIG}/clip.mp4"}
    (config / "config.yaml").write_text(json.dumps(cfg))
    rc, out = ran(state, config, "run", "--config", f"{sandbox.CONFIG}/config.yaml",
                  "--max-frames", "5")
    assert rc == 0 and "Permission denied" not in out, out


def test_check_config_and_a_root_doctor_warn_of_a_status_page_port_below_1024(
        dirs: tuple[Path, Path], yunet_model: Path) -> None:
    """`preview.http: 127.0.0.1:80` is a port the service (no capabilities) can never listen
    on, and `run` stops on it (exit 78); check-config said OK to it, as the service user too,
    and `sudo maskd doctor` (root, who may) said `can listen`. Both now warn in run's words."""
    from maskd.commands.doctor import _check_http

    state, config = dirs
    port, said = low_port_config(config, yunet_model)
    rc, out = ran(state, config, "check-config", f"{sandbox.CONFIG}/config.yaml")
    assert rc == 0 and f"warning: preview.http: 127.0.0.1:{port}: {said}" in out, out
    r = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(config / "config.yaml")],
                       capture_output=True, text=True, cwd=REPO)  # as root
    assert r.returncode == 0 and said in r.stderr, r.stderr
    with socket_free(port):
        assert _check_http(f"127.0.0.1:{port}") == ("WARN", f"127.0.0.1:{port}: {said}")


@contextlib.contextmanager
def socket_free(port: int) -> Iterator[None]:
    """Skips unless ``port`` on 127.0.0.1 is free to root here."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            pytest.skip(f"127.0.0.1:{port} is not free here: {err}")
    yield


def test_port_0_is_no_privileged_port() -> None:
    """`preview.http: 127.0.0.1:0` lets the system pick a free port (tests, a second page):
    not one below 1024."""
    from maskd.preview import privileged_port

    assert privileged_port("127.0.0.1:0") is None and privileged_port("8080") is None
    assert privileged_port("[::]:443") is not None and "[::]:8080" in privileged_port("[::]:443")


def test_the_first_unprivileged_port_is_open_and_another_refusal_gets_no_why() -> None:
    """net.ipv4.ip_unprivileged_port_start itself is open to every user (preview.http:
    0.0.0.0:1024 is not warned of), the port below it is not; and a low port refused for
    another reason (an address not on this machine: EADDRNOTAVAIL) is not said to need a
    privilege, as run's line then misled."""
    import errno

    from maskd.preview import listen_refused, privileged_port

    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start < 2:
        pytest.skip(f"every port is open to every user here (ip_unprivileged_port_start {start})")
    assert privileged_port(f"0.0.0.0:{start}") is None
    assert privileged_port(f"0.0.0.0:{start - 1}") is not None
    err = OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    assert listen_refused(f"192.0.2.1:{start - 1}", err) == (
        f"preview.http: cannot listen on 192.0.2.1:{start - 1}: {err.strerror}")
    err = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    assert listen_refused(f"0.0.0.0:{start - 1}", err).endswith(privileged_port(
        f"0.0.0.0:{start - 1}") or "?")


def test_a_video_file_the_service_cannot_read_is_a_warning_in_check_config(
        dirs: tuple[Path, Path], yunet_model: Path) -> None:
    """`source.uri` a clip left root's 0600 (copied with sudo): check-config, as the service
    user, said OK, and the service stopped at start (exit 78, 'source: P: Permission
    denied'). check-config now warns in run's words, naming the user it ran as."""
    state, config = dirs
    demo_config(config, yunet_model, {})
    clip = config / "clip.mp4"
    ffmpeg = shutil.which("ffmpeg") or pytest.skip("needs ffmpeg")
    subprocess.run([ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=10", "-t", "1", str(clip)], check=True)
    clip.chmod(0o600)
    cfg = json.loads((config / "config.yaml").read_text())
    cfg["source"] = {"kind": "opencv", "uri": f"{sandbox.CONFIG}/clip.mp4"}
    (config / "config.yaml").write_text(json.dumps(cfg))
    said = f"source: {sandbox.CONFIG}/clip.mp4: Permission denied"
    rc, out = ran(state, config, "run", "--config", f"{sandbox.CONFIG}/config.yaml")
    assert rc == 78 and said in out, out
    rc, out = ran(state, config, "check-config", f"{sandbox.CONFIG}/config.yaml")
    assert rc == 0 and f"warning: {said} (as user nobody; the service may run as another)" \
        in out, out


def test_a_folder_of_images_the_service_cannot_read_is_a_warning_in_check_config(
        dirs: tuple[Path, Path], yunet_model: Path) -> None:
    """`source.kind: images` a readable folder of images left root's 0600 (copied with sudo):
    check-config, as the service user, said OK, doctor failed the camera and the service idled
    with 0 frames ('none of its images can be read; idle, trying it again until it plays').
    check-config now warns in run's words, naming the user; one image that reads is enough."""
    state, config = dirs
    demo_config(config, yunet_model, {})
    images = config / "images"
    images.mkdir(mode=0o755)
    for name in ("a.jpg", "b.jpg"):
        cv2 = pytest.importorskip("cv2")
        cv2.imwrite(str(images / name), np.full((48, 64, 3), 128, np.uint8))
        (images / name).chmod(0o600)
    cfg = json.loads((config / "config.yaml").read_text())
    cfg["source"] = {"kind": "images", "uri": f"{sandbox.CONFIG}/images", "loop": True}
    (config / "config.yaml").write_text(json.dumps(cfg))
    rc, out = ran(state, config, "check-config", f"{sandbox.CONFIG}/config.yaml")
    said = (f"warning: source: {sandbox.CONFIG}/images: none of its images can be read "
            f"({sandbox.CONFIG}/images/a.jpg: Permission denied) (as user nobody; the service "
            "may run as another)")
    assert rc == 0 and said in out, out
    (images / "b.jpg").chmod(0o644)
    rc, out = ran(state, config, "check-config", f"{sandbox.CONFIG}/config.yaml")
    assert rc == 0 and "warning" not in out, out


def test_a_folder_of_images_the_service_cannot_search_is_said_so_in_check_config(
        dirs: tuple[Path, Path], yunet_model: Path) -> None:
    """`source.kind: images` a folder of images left root's 0700 (made with sudo): check-config,
    as the service user, said 'no images', of a folder full of them, while run said why (`cannot
    search this folder: Permission denied`). check-config now says that too, naming the user;
    a subfolder alone shut counts as well."""
    state, config = dirs
    demo_config(config, yunet_model, {})
    cv2 = pytest.importorskip("cv2")
    cfg = json.loads((config / "config.yaml").read_text())
    cfg["source"] = {"kind": "images", "uri": f"{sandbox.CONFIG}/images", "loop": True}
    (config / "config.yaml").write_text(json.dumps(cfg))
    for shut in ("images", "images/day1"):
        (images := config / "images").mkdir(mode=0o755)
        (images / "day1").mkdir(mode=0o755)
        cv2.imwrite(str(images / "day1" / "a.jpg"), np.full((48, 64, 3), 128, np.uint8))
        (config / shut).chmod(0o700)
        rc, out = ran(state, config, "check-config", f"{sandbox.CONFIG}/config.yaml")
        said = (f"({sandbox.CONFIG}/{shut}: cannot search this folder: Permission denied) (as "
                "user nobody; the service may run as another)")
        assert rc == 0 and said in out, out
        shutil.rmtree(images)
    # images this user reads beside a folder it may not search (a stick's lost+found, root's
    # 0700): the images play, nothing to warn of
    (images := config / "images").mkdir(mode=0o755)
    cv2.imwrite(str(images / "a.jpg"), np.full((48, 64, 3), 128, np.uint8))
    (images / "lost+found").mkdir(mode=0o700)
    rc, out = ran(state, config, "check-config", f"{sandbox.CONFIG}/config.yaml")
    assert rc == 0 and "warning" not in out, out


def test_a_root_doctor_names_the_privilege_of_a_low_port_another_program_holds(
        dirs: tuple[Path, Path], yunet_model: Path, tmp_path: Path) -> None:
    """`preview.http: 127.0.0.1:81` while another program (a web server) listens there: the
    service (no capabilities) is refused the port before it is found in use and stops at start
    (exit 78), but `sudo maskd doctor` said 'Address already in use (by another program?);
    detection runs without the status page, which tries again every 30 s'. It now says the
    port is one the service can never listen on, as check-config and run do."""
    import socket

    state, config = dirs
    port, why = low_port_config(config, yunet_model)
    with socket_free(port), socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", port))
        held.listen()
        rc, out = ran(state, config, "run", "--config", f"{sandbox.CONFIG}/config.yaml",
                      "--max-frames", "5")
        assert rc == 78 and f"127.0.0.1:{port}: Permission denied: {why}" in out, out
        cfg = json.loads((config / "config.yaml").read_text())
        cfg["detector"]["model"] = str(yunet_model)
        cfg["state_dir"] = str(tmp_path / "root-state")
        (tmp_path / "root.yaml").write_text(json.dumps(cfg))
        r = subprocess.run([sys.executable, "-m", "maskd", "doctor", "--config",
                            str(tmp_path / "root.yaml"), "--frames", "1"],
                           capture_output=True, text=True, cwd=REPO, timeout=240)  # as root
    row = next(line for line in r.stdout.splitlines() if line.startswith("preview http"))
    assert "WARN" in row and f"127.0.0.1:{port}: {why}" in row and "again" not in row, r.stdout
