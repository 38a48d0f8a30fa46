"""`maskd models fetch`: download the YuNet face detector, checked against its pinned sha256.

Exit status: 0 the checked file is in place (downloaded, or there already); 65 (EX_DATAERR)
the download's sha256 is not the expected one (nothing saved); 69 (EX_UNAVAILABLE) the URL
could not be reached, or its server answered with an HTTP error (404, 503); 73 (EX_CANTCREAT) the folder cannot be written, or a folder or an
unreadable file is in the way of the target; 74 the file is in place but the line saying so
could not be written (a full disk); 2 bad arguments (checked at parse time).
Imports only the standard library, so `python3 -m maskd models fetch` works without the venv
(deploy/install.sh).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from maskd.commands import names_as_bytes_on_stdout, print_line
from maskd.journal import error_line
from maskd.modelfiles import (
    SYSTEM_MODELS,
    YUNET_URL,
    Fetched,
    FetchError,
    default_dest,
    fetch_yunet,
)

EXIT = {"checksum": 65, "network": 69, "server": 69, "write": 73, "usage": 2}


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # through the fetch's finally: its .part and lock go


def _fetch(dest: Path, args: argparse.Namespace) -> Fetched:
    """fetch_yunet, ended by SIGTERM (kill, systemd) or SIGHUP (install.sh's ssh session
    dropped) as by Ctrl-C: they killed it outright, its .part left until a later fetch. A
    signal ignored on purpose (nohup) stays ignored; the handlers are put back after."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    ours = threading.current_thread() is threading.main_thread()  # signal.signal's rule
    for sig, handler in before.items():
        if ours and handler is signal.SIG_DFL:
            signal.signal(sig, _exit_on_signal)
    try:
        return fetch_yunet(dest, args.yunet_url, args.yunet_sha256, timeout=args.timeout)
    finally:
        for sig, handler in before.items():
            if ours and handler is signal.SIG_DFL:
                signal.signal(sig, handler)


def main(args: argparse.Namespace) -> int:
    dest = args.dest or default_dest()
    try:
        got = _fetch(dest, args)
    except FetchError as err:
        error_line(f"maskd models fetch: {err}")
        if err.kind in ("network", "server"):
            error_line("maskd models fetch: without YuNet, detector kind auto uses BlazeFace, "
                       "which often loses faces once a mask covers nose and mouth")
        if err.kind == "network" and args.yunet_url == YUNET_URL:
            error_line("maskd models fetch: or download that URL on a machine that can, copy "
                       "it here and run: maskd models fetch --yunet-url file:///path/to/it "
                       "(checked the same way)")
        if err.kind == "server":  # no machine gets the file from there (the default URL is a guess)
            error_line("maskd models fetch: the server answered without the file: try again "
                       "later, or pass --yunet-url URL --yunet-sha256 HEX of a copy you trust "
                       "(docs/install-pi.md)")
        # sudo helps only with the system folder, to a user who is not root (was said of a
        # checkout's models/ too, and of a folder in the way, which sudo does not move)
        if (err.kind == "write" and args.dest is None and dest == SYSTEM_MODELS
                and os.geteuid() != 0):
            error_line(f"maskd models fetch: {dest} is the system folder the service reads; run "
                       "this as root (sudo), or pass --dest DIR and set detector.model to the "
                       "file it saves")
        return EXIT[err.kind]
    state = "installed" if got.changed else "unchanged"
    names_as_bytes_on_stdout()  # a --dest not in UTF-8 was a traceback after the install
    print_line(f"{state} {got.path} (sha256 ok)")
    return 0
