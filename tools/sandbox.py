"""maskd inside an emulation of systemd/maskd.service's sandbox, without systemd (a chroot, a
container, CI): what the unit's hardening does to a real `maskd run`, shown where no systemd runs.

Run as root: ``python tools/sandbox.py --state DIR --config DIR [--rw PATH]... -- ARGS...``
(``--rw=-PATH`` as doctor's ``ReadWritePaths=-PATH``).
It starts ``python -m maskd ARGS`` (this checkout's) with what the unit sets up:

- a mount namespace (``unshare -m``) with every mount read-only (ProtectSystem=strict,
  ProtectKernelTunables, ProtectControlGroups) but DIR of ``--state`` at /var/lib/maskd
  (StateDirectory=, also HOME and the working directory), each ``--rw`` PATH (a drop-in's
  ReadWritePaths=, its links followed as systemd does) and /dev; ``--config`` read-only at
  /var/lib/maskd-config (ConfigurationDirectory=; /etc/maskd on a Pi); an empty /tmp and
  /var/tmp (PrivateTmp=); /home, /root, /run/user empty and unreadable (ProtectHome=yes);
- the user nobody, the unit's SupplementaryGroups= that this machine has (video, plugdev),
  no capabilities, no_new_privs (User=, SupplementaryGroups=, CapabilityBoundingSet=,
  NoNewPrivileges=), UMask=0027, the unit's Environment=;
- a seccomp filter loaded last, before exec, as systemd does: the system calls of this
  machine's ``systemd-analyze syscall-filter @system-service`` less ``@privileged``, the rest
  EPERM (SystemCallFilter=, SystemCallErrorNumber=), and socket() of other families than
  AF_UNIX, AF_INET, AF_INET6, AF_NETLINK refused with EAFNOSUPPORT (RestrictAddressFamilies=).

Not emulated: ProtectProc=invisible, RestrictNamespaces=, LockPersonality=, RestrictRealtime=,
SystemCallArchitectures=, MemoryDenyWriteExecute (not set), the journal (docs/install-pi.md).
``missing()`` says why this machine cannot run it (not root, no unshare/setpriv/
systemd-analyze/libseccomp).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "maskd.service"
STATE = "/var/lib/maskd"
CONFIG = "/var/lib/maskd-config"
NOBODY = 65534
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}
HIDDEN = ("/home", "/root", "/run/user")


def missing() -> str | None:
    """Why this machine cannot run the emulation, or None."""
    if os.geteuid() != 0:
        return "the systemd sandbox emulation needs root (mount namespace, setuid)"
    for tool in ("unshare", "setpriv", "mount", "systemd-analyze"):
        if not shutil.which(tool):
            return f"the systemd sandbox emulation needs {tool} (util-linux, systemd)"
    if not ctypes.util.find_library("seccomp"):
        return "the systemd sandbox emulation needs libseccomp (apt install libseccomp2)"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs",
                        "tmpfs", "/var/lib"], capture_output=True, text=True)
    if r.returncode:
        return f"no mount namespace with mounts of its own here: {r.stderr.strip()}"
    return None


def group(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd syscall group, its nested groups expanded."""
    seen = set() if seen is None else seen
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            if word.startswith("# ") and "Unlisted" in word:  # systemd's trailer of unknown calls
                break
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                calls |= group(word, seen)
        else:
            calls.add(word)
    return calls


def allowed() -> list[str]:
    """SystemCallFilter=@system-service then ~@privileged: the calls the unit leaves."""
    return sorted(group("@system-service") - group("@privileged"))


def unit_groups() -> list[int]:
    """The group ids of the unit's SupplementaryGroups= that exist here: a camera, a
    framebuffer or a Coral the service opens through them is not refused in the emulation."""
    import grp

    names = " ".join(re.findall(r"^SupplementaryGroups=(.*)$", UNIT.read_text(), re.M)).split()
    out = []
    for name in names:
        try:
            out.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            continue
    return out


def unit_environment() -> dict[str, str]:
    """The unit's Environment= lines."""
    return dict(m.groups() for m in re.finditer(r"^Environment=([^=\s]+)=(.*)$", UNIT.read_text(),
                                                re.M))


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def load_seccomp(calls: list[str]) -> None:
    """Load the unit's filter into this process (inherited by exec)."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    allow, eperm = 0x7FFF0000, 0x00050000 | errno.EPERM
    ctx = lib.seccomp_init(eperm)
    for name in calls:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0 or name == "socket":
            continue
        if lib.seccomp_rule_add_array(ctx, allow, nr, 0, None):
            raise OSError(f"seccomp rule for {name}")
    sock = lib.seccomp_syscall_resolve_name(b"socket")
    for family in FAMILIES.values():  # SCMP_CMP_EQ = 4
        cmp = (_ArgCmp * 1)(_ArgCmp(0, 4, family, 0))
        lib.seccomp_rule_add_array(ctx, allow, sock, 1, cmp)
    others = (_ArgCmp * len(FAMILIES))(*(_ArgCmp(0, 1, f, 0) for f in FAMILIES.values()))
    lib.seccomp_rule_add_array(ctx, 0x00050000 | errno.EAFNOSUPPORT, sock, len(FAMILIES), others)
    if lib.seccomp_load(ctx):
        raise OSError("seccomp_load failed")


def _mount(*args: str, check: bool = True) -> None:
    subprocess.run(["mount", *args], check=check, capture_output=not check)


def _targets() -> list[str]:
    """Mount points of this namespace, decoded (mountinfo escapes spaces as \\040)."""
    from maskd.files import unescaped

    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [unescaped(line.split()[4]) for line in lines]


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def setup_mounts(state: str, config: str, rw: tuple[str, ...] = ()) -> list[str]:
    """The unit's file system view in this (new) mount namespace; notes on what it left out."""
    notes = []
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/var/lib")
    for src, dst in ((state, STATE), (config, CONFIG)):
        os.mkdir(dst)
        _mount("--bind", src, dst)
    rw = tuple(os.path.realpath(p) for p in rw)
    for path in rw:  # a mount point of its own, left writable below
        _mount("--bind", path, path)
    keep = [str(REPO), sys.prefix, sys.base_prefix]  # /opt/maskd, /usr on a Pi
    for top in HIDDEN:
        if not os.path.isdir(top):
            continue
        back = {k: os.open(k, os.O_PATH | os.O_DIRECTORY) for k in keep if _inside(k, top)}
        _mount("-t", "tmpfs", "-o", "mode=0711" if back else "mode=0000", "tmpfs", top)
        for k, fd in back.items():  # this checkout or its python: shown again, the rest hidden
            os.makedirs(k, mode=0o711, exist_ok=True)
            _mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{fd}", k)
            os.close(fd)
            notes.append(f"{k} shown in the hidden {top}")
    for top in ("/tmp", "/var/tmp"):
        _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", top)
    _mount("--bind", "/proc/sys", "/proc/sys")
    for target in _targets():
        if _inside(target, "/dev") or target in (STATE, "/tmp", "/var/tmp", *rw) or (
                _inside(target, "/proc") and not _inside(target, "/proc/sys")):
            continue
        _mount("-o", "remount,bind,ro", target, check=False)
    return notes


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO))  # maskd's own readings (the --inner setup's too)
    if argv[:1] == ["--seccomp"]:  # last step, as nobody: filter, then exec
        calls, cmd = argv[1].split(","), argv[3:]
        load_seccomp(calls)
        os.execv(cmd[0], cmd)
    if argv[:1] == ["--inner"]:  # root in the new mount namespace
        state, config, rw, calls, cmd = argv[1], argv[2], argv[3], argv[4], argv[6:]
        for note in setup_mounts(state, config, tuple(json.loads(rw))):
            print(f"sandbox: {note}", file=sys.stderr)
        os.chdir(STATE)
        os.umask(0o027)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": STATE, "USER": "nobody", "LOGNAME": "nobody", "SHELL": "/usr/sbin/nologin",
               **unit_environment(), "PYTHONPATH": str(REPO)}
        ids = unit_groups()
        groups = [f"--groups={','.join(map(str, ids))}"] if ids else ["--clear-groups"]
        passed = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "MASKD_MODEL_DIR", "LANG",
                  "TZ")
        env.update({k: v for k, v in os.environ.items() if k in passed})
        os.execve(shutil.which("setpriv") or "setpriv",
                  ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *groups,
                   "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--",
                   sys.executable, __file__, "--seccomp", calls, "--",
                   sys.executable, "-m", "maskd", *cmd], env)
    parser = argparse.ArgumentParser(
        prog="tools/sandbox.py", description="Run maskd inside an emulation of the unit's "
        "sandbox (as root; see this file's docstring).")
    parser.add_argument("--state", required=True, help="folder shown at /var/lib/maskd")
    parser.add_argument("--config", required=True, help="folder shown read-only at " + CONFIG)
    parser.add_argument("--rw", action="append", default=[], metavar="PATH",
                        help="a drop-in's ReadWritePaths= (may repeat; --rw=-PATH: left "
                        "out where missing, as systemd does)")
    parser.add_argument("args", nargs="+", metavar="ARGS", help="maskd's arguments, after --")
    a = parser.parse_args(argv)
    if why := missing():
        parser.error(why)
    from maskd.commands.doctor import Unjudged, read_write_word

    rw = []
    for word in a.rw:  # a ReadWritePaths= word: with a leading -, a missing folder is left out
        try:
            passed_over, path = read_write_word(word)
        except Unjudged as err:
            parser.error(f"--rw={word}: {err} is not filled in here; give the folder")
        if path is None:  # +-PATH too: systemd ignores it ('path is not absolute, ignoring')
            print(f"sandbox: ReadWritePaths={word}: not an absolute path without .., which "
                  "systemd ignores (the - goes before the +: -+PATH)", file=sys.stderr)
            continue
        if os.path.exists(path):
            rw.append(os.path.abspath(path))
        elif not passed_over:  # systemd fails the unit's start so
            print(f"sandbox: ReadWritePaths={word}: no such folder, so the service does not "
                  "start (226/NAMESPACE); -PATH starts without it", file=sys.stderr)
            return 226
    os.execvp("unshare", ["unshare", "-m", "--propagation", "private", "--", sys.executable,
                          __file__, "--inner", os.path.abspath(a.state), os.path.abspath(a.config),
                          json.dumps(rw), ",".join(allowed()), "--", *a.args])
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
