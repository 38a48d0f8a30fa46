"""maskd.files on real files, pipes and small file systems: reads bounded and never hung on a pipe
or a device, lines whole, files written together or not at all, and the words said of a
failed write (a dangling link, a read-only mount, the card's recorded errors)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from maskd import files
from maskd.files import NotRegularFile, append_line, read_limited


def test_read_limited_reads_at_most_its_limit(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_bytes(b"x" * 100_000)
    assert read_limited(p, 10) == b"x" * 10
    assert read_limited(p, 100_001) == b"x" * 100_000


def test_read_limited_waits_for_a_pipes_writer_that_has_not_written_yet(tmp_path):
    """`<(sleep 1; cat config)`: the writer is there, its first bytes come later."""
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # waits for the reader's open
        time.sleep(0.3)
        os.write(fd, b"device_id: door\n")
        os.close(fd)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.1)  # the writer waits in its open: the reader's open lets it through
    got = read_limited(fifo, 1000)
    t.join(5)
    assert got == b"device_id: door\n"


def test_read_limited_refuses_a_device_and_a_pipe_nobody_writes(tmp_path):
    """/dev/zero never ends and a FIFO without a writer has nothing: refused, not read."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile, match="a named pipe with nothing to read"):
        read_limited(fifo, 10)
    with pytest.raises(NotRegularFile, match="a device, not a regular file"):
        read_limited(files.Path("/dev/zero"), 10)


def test_a_line_cut_by_a_full_disk_where_room_cannot_be_reserved_is_cut_back(tmp_path,
                                                                              monkeypatch):
    """A file system without fallocate (NFS v3, an old FUSE one): the write that fails part-way
    is cut back, so the file never holds half a line."""
    from mqtt_broker import fill_disk, small_disk

    monkeypatch.setattr(files, "reserve", lambda fd, offset, length: None)
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "lines"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            append_line(fd, b"first\n")
            fill_disk(disk)
            with pytest.raises(OSError):
                for _ in range(100):  # the file's last page fills, then a line is cut
                    append_line(fd, b"y" * 1000 + b"\n")
        finally:
            os.close(fd)
        text = path.read_bytes()
    assert text.startswith(b"first\n") and text.endswith(b"\n")
    assert all(line in (b"first", b"y" * 1000) for line in text.splitlines())


def test_write_together_writes_each_file_its_own_data_and_a_full_disk_changes_none(tmp_path):
    """A model and its sidecar: each gets its own bytes; where the second does not fit, the
    first is not replaced either, and no temporary file is left taking the room."""
    from mqtt_broker import small_disk

    from maskd.files import write_together

    with small_disk(tmp_path / "disk") as disk:
        model, sidecar = disk / "m.tflite", disk / "m.json"
        write_together({model: b"model 1", sidecar: b"sidecar 1"})
        assert model.read_bytes() == b"model 1" and sidecar.read_bytes() == b"sidecar 1"
        with pytest.raises(OSError):
            write_together({model: b"model 2", sidecar: b"x" * 400_000})  # over the 256 KiB
        assert model.read_bytes() == b"model 1" and sidecar.read_bytes() == b"sidecar 1"
        assert sorted(p.name for p in disk.iterdir()) == ["m.json", "m.tflite"]


@pytest.mark.parametrize("call, error, written", [
    ("fsync", "EINVAL", True), ("fsync", "EOPNOTSUPP", True), ("openat", "EACCES", True),
    ("fsync", "EIO", False)])
def test_a_folder_that_cannot_be_synced_keeps_the_write_and_a_card_error_is_said(
        tmp_path, call, error, written):
    """The folder is synced after the rename (a power cut kept the version before); a file
    system that cannot sync a folder (EINVAL, ENOTSUP: some FUSE and network ones) or a folder
    this user may write but not read (EACCES) has nothing more to do, the rename is made and no
    error says it was not; the card failing that sync (EIO) is said. strace injects each into
    the folder's own call in a real process."""
    import errno
    import subprocess
    import sys

    from conftest import REPO
    from test_faults_mqtt import strace_injecting

    strace = strace_injecting()
    folder = tmp_path / "state"
    folder.mkdir()
    write = ("import sys; from pathlib import Path; from maskd.files import write_atomically; "
             "write_atomically(Path(sys.argv[1]) / 'f.json', b'{}')")
    r = subprocess.run([strace, "-f", "-qq", "-o", str(tmp_path / "strace.txt"), "-P", str(folder),
                        "-e", f"trace={call}", "-e", f"inject={call}:error={error}",
                        sys.executable, "-c", write, str(folder)], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "INJECTED" in (tmp_path / "strace.txt").read_text(), "the fault met no call"
    assert (r.returncode == 0) is written, r.stderr
    assert written or f"OSError: [Errno {getattr(errno, error)}]" in r.stderr, r.stderr
    assert (folder / "f.json").read_bytes() == b"{}"  # renamed either way
    assert [p.name for p in folder.iterdir()] == ["f.json"]


@pytest.mark.parametrize("sync", [True, False])
def test_an_atomic_write_is_on_the_card_before_its_rename_and_the_rename_after(tmp_path, sync):
    """A power cut after the rename left open_violations.json empty (its data never written
    before the rename) or the version before (the rename never written): the file is synced
    before its rename and the folder after, in a real process as strace sees it; with sync
    False (scan's annotated copies, made again by running it again) neither, for speed."""
    import subprocess
    import sys

    from conftest import REPO
    from test_faults_mqtt import strace_injecting

    strace = strace_injecting()
    folder = tmp_path / "state"
    folder.mkdir()
    write = ("import sys; from pathlib import Path; from maskd.files import write_atomically; "
             "write_atomically(Path(sys.argv[1]) / 'f.json', b'{}', sync=sys.argv[2] == 'y')")
    trace = tmp_path / "strace.txt"
    r = subprocess.run([strace, "-f", "-qq", "-y", "-o", str(trace), "-e",
                        "trace=fsync,fdatasync,rename,renameat,renameat2", sys.executable, "-c",
                        write, str(folder), "y" if sync else "n"], capture_output=True,
                       text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    calls = [line for line in trace.read_text().splitlines() if str(folder) in line]
    kinds = ["rename" if "rename" in c else "file" if f"{folder}/." in c else "folder"
             for c in calls]
    assert kinds == (["file", "rename", "folder"] if sync else ["rename"]), calls
    assert (folder / "f.json").read_bytes() == b"{}"


def test_write_atomically_gives_the_mode_open_would_give(tmp_path):
    """The umask decides (mkstemp's 0600 locked others out of a model or an annotation)."""
    import stat

    from maskd.files import write_atomically

    old = os.umask(0o022)
    try:
        write_atomically(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_a_write_under_a_dangling_link_names_the_link(tmp_path):
    """mkdir under a link whose target is gone (a stick not mounted) fails with 'No such file
    or directory' or 'File exists': the words name the link and where it leads."""
    from maskd.files import failed_write

    link = tmp_path / "stick"
    link.symlink_to(tmp_path / "not-mounted")
    err = FileNotFoundError(2, "No such file or directory")
    assert failed_write(err, link / "snaps") == (
        f"{link} is a link to {tmp_path / 'not-mounted'}, which is not there")


def fake_sys(tmp_path, folder, count: int, first: int, last: int):
    """A /sys of an ext4 file system holding ``folder`` that has recorded ``count`` errors."""
    st = os.stat(folder)
    sys_dir = tmp_path / "sys"
    block = sys_dir / "dev" / "block"
    block.mkdir(parents=True)
    (block / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}").symlink_to(sys_dir / "devices" / "mmcblk0p2")
    fs = sys_dir / "fs" / "ext4" / "mmcblk0p2"
    fs.mkdir(parents=True)
    for name, value in (("errors_count", count), ("first_error_time", first),
                        ("last_error_time", last), ("last_error_func", "ext4_lookup")):
        (fs / name).write_text(f"{value}\n")
    return sys_dir, fs


def test_errors_recorded_at_one_moment_are_said_at_that_moment(tmp_path, monkeypatch):
    from maskd.files import recorded_errors

    state = tmp_path / "state"
    state.mkdir()
    _, fs = fake_sys(tmp_path, state, 2, 1_790_000_000, 1_790_000_000)
    said = recorded_errors(fs)
    assert said is not None and "has recorded 2 error(s) at " in said and " from " not in said


def test_card_watch_says_a_line_once_and_looks_once_a_minute(tmp_path, monkeypatch, caplog):
    """The same errors a minute later are no new WARNING (the journal is not filled with one a
    minute for as long as the card runs), and between looks /sys is not read again."""
    import logging

    from maskd.files import CardWatch

    state = tmp_path / "state"
    state.mkdir()
    sys_dir, fs = fake_sys(tmp_path, state, 1, 1_790_000_000, 1_790_000_000)
    monkeypatch.setattr(files, "SYS", sys_dir)
    watch = CardWatch([("state_dir", state, True)], every_s=60.0)
    with caplog.at_level(logging.WARNING, logger="maskd.files"):
        first = watch.faults()
        (fs / "errors_count").write_text("0\n")  # fsck'd meanwhile: seen at the next look only
        assert watch.faults() == first and len(first) == 1
        watch._due = files.Throttle(0.0)
        (fs / "errors_count").write_text("1\n")
        assert watch.faults() == first
    assert len(caplog.records) == 1 and first[0].startswith(f"state_dir {state}: its file system")


def test_cannot_create_under_a_good_link_or_a_file_says_what_is_there(tmp_path):
    """A state_dir under a symlinked folder whose target is there can be made (it was said to
    be a link to nowhere); one under a file is 'Not a directory'."""
    import errno

    from maskd.files import cannot_create

    (tmp_path / "stick").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "stick")
    assert cannot_create(tmp_path / "link" / "state" / "sub", True) is None
    (tmp_path / "file").write_text("x")
    err = cannot_create(tmp_path / "file" / "state", True)
    assert err is not None and err.errno == errno.ENOTDIR


def test_run_says_why_a_file_cannot_be_made_in_check_configs_words(tmp_path):
    """'No such file or directory' from an open under /proc: the same line as check-config."""
    from pathlib import Path

    from maskd.files import create_failure

    err = FileNotFoundError(2, "No such file or directory")
    assert create_failure(Path("/proc/maskd/events.jsonl"), False, err) == (
        "a virtual file system: nothing can be created there")


def test_a_read_only_mount_point_itself_is_said_read_only(tmp_path):
    """state_dir the very folder a card is mounted at, the card gone read-only: the probe is
    made in that folder, not in the one above it (on the root file system, writable)."""
    from mqtt_broker import read_only_disk

    from maskd.files import READ_ONLY_NOW, failed_write

    with read_only_disk(tmp_path / "card") as card:
        assert failed_write(OSError(30, "Read-only file system"), card) == READ_ONLY_NOW


def test_eperm_as_eacces_depends_on_the_user():
    import errno

    from maskd.files import depends_on_user

    assert depends_on_user(PermissionError(errno.EPERM, "Operation not permitted"))
    assert depends_on_user(PermissionError(errno.EACCES, "Permission denied"))
    assert not depends_on_user(OSError(errno.ENOSPC, "No space left on device"))


def test_files_mode_is_the_mounts_fmask_where_the_kernel_says_it_else_a_files_there(
        tmp_path, monkeypatch):
    """A kernel FAT, exFAT or NTFS3 mount says its fmask= (/proc/self/mountinfo): the mode every
    file there gets, whatever it is made with. A FUSE mount says none: a file already there
    tells; with neither, nothing is told."""
    from maskd import files

    dev = os.stat(tmp_path).st_dev
    mountinfo = tmp_path / "mountinfo"
    monkeypatch.setattr(files, "MOUNTINFO", mountinfo)
    line = f"36 25 {os.major(dev)}:{os.minor(dev)} / / rw,noatime - %s /dev/sda1 rw,%s\n"
    (folder := tmp_path / "stick" / "snaps").mkdir(parents=True)
    mountinfo.write_text(line % ("vfat", "uid=0,fmask=0077,dmask=0022"))
    assert files.files_mode(folder / "not-yet") == 0o700
    mountinfo.write_text(line % ("fuseblk", "user_id=0,group_id=0,allow_other"))
    assert files.files_mode(folder) is None
    (folder / "2026-12").mkdir(mode=0o755)  # a folder's mode is its dmask's, not a file's
    (tmp_path / "elsewhere.jpg").touch(mode=0o600)
    (folder / "link.jpg").symlink_to(tmp_path / "elsewhere.jpg")  # another file system's mode
    assert files.files_mode(folder) is None
    (folder / "a.jpg").touch()
    os.chmod(folder / "a.jpg", 0o640)
    assert files.files_mode(folder) == 0o640
    assert files.files_mode(folder / "not-yet") == 0o640  # the folder it will be made in
    (empty := tmp_path / "empty").mkdir()
    (empty / "clips").mkdir(mode=0o755)
    assert files.files_mode(empty) is None  # a folder's mode is not a file's (dmask=, not fmask=)


def test_an_ntfs_mount_keeps_owners_only_where_its_own_fstab_line_says_permissions(
        tmp_path, monkeypatch):
    """ntfs-3g says default_permissions alike with -o permissions (owners kept) and umask=
    (none kept): the fstab line of that mount point tells, not a commented-out one, not
    another stick's, and not default_permissions written in the line."""
    from maskd import files

    fstab = tmp_path / "fstab"
    monkeypatch.setattr(files, "FSTAB", fstab)
    kept = ["rw", "user_id=0", "group_id=0", "default_permissions", "allow_other"]
    for text, expected in (
            ("UUID=1 /media/usb ntfs-3g permissions,nofail 0 0\n", True),
            ("#UUID=1 /media/usb ntfs-3g permissions,nofail 0 0\n"
             "UUID=1 /media/usb ntfs-3g umask=027,nofail 0 0\n", False),
            ("UUID=2 /media/other ntfs-3g permissions 0 0\n"
             "UUID=1 /media/usb ntfs-3g umask=027 0 0\n", False),
            ("UUID=1 /media/usb ntfs-3g default_permissions,umask=027 0 0\n", False),
            ("UUID=3 /media/other ntfs-3g\n"  # its options left out: the defaults
             "UUID=1 /media/usb ntfs-3g permissions 0 0\n", True)):
        fstab.write_text(text)
        assert files.owners_kept(kept, "/media/usb") is expected, text
    fstab.write_text("UUID=1 /media/usb ntfs-3g permissions 0 0\n")
    assert not files.owners_kept(["rw", "user_id=0", "allow_other"], "/media/usb")  # not ntfs-3g's


def test_an_ntfs_mount_point_named_through_links_is_followed_where_mount_follows_them(
        tmp_path, monkeypatch):
    """An fstab line may name the stick's mount point through links, followed by readlink alone
    (not realpath, which asks the file system mounted there): a relative one up a folder (`ln
    -sr`: ../media/usb), a link to that link, a . or .. in the way; each leads to the mount
    point, so the stick keeps owners. A loop of links names no mount point (and ends)."""
    from maskd import files

    fstab = tmp_path / "fstab"
    monkeypatch.setattr(files, "FSTAB", fstab)
    kept = ["rw", "user_id=0", "group_id=0", "default_permissions", "allow_other"]
    (usb := tmp_path / "media" / "usb").mkdir(parents=True)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "usb").symlink_to("../media/usb")
    (tmp_path / "stick").symlink_to(tmp_path / "mnt" / "usb")
    (tmp_path / "here").symlink_to("mnt/./usb")
    (tmp_path / "loop").symlink_to("loop")
    point = os.path.realpath(usb)
    for named, expected in (("mnt/usb", True), ("stick", True), ("here/", True),
                            ("mnt/../stick", True), ("media/usb/..", False), ("loop/usb", False)):
        fstab.write_text(f"UUID=1 {os.path.realpath(tmp_path)}/{named} ntfs-3g permissions 0 0\n")
        assert files.owners_kept(kept, point) is expected, named
