"""Home Assistant's own MQTT discovery schemas, in a venv of their own, to check what maskd
publishes (tests/test_homeassistant.py; by hand: docs/mqtt.md, "Checked against Home Assistant").

Home Assistant needs a newer Python than maskd's venv (``homeassistant`` 2025.x requires 3.13),
so it gets its own venv, built once with pyenv's Python 3.13 and cached outside the checkout:
``$XDG_CACHE_HOME/maskd/ha-venv-<version>`` (``~/.cache`` by default). tools/ha_validate.py
runs inside it.

- ``HA_VERSION`` is pinned: 2025.4.4, the newest release the package index offered when this was
  written and the release line (2025.4) that maskd's discovery was first tried with by hand
  against a real Home Assistant (issue 11). Bump it on purpose, then rerun the test.
- Installed: ``homeassistant`` with its core requirements (what ``import homeassistant`` needs)
  and the MQTT integration's one requirement (``paho-mqtt``, from its manifest.json); none of
  the other integrations' requirements. With ``uv`` (which Home Assistant itself pins) the
  first build takes about a minute; plain pip, the fallback, about three.
- The venv is built next to its final place and renamed into it when it imports, so a build
  that fails or is killed never leaves a half venv to be reused; a lock file keeps two test
  runs from building at once.

Environment (read here and by the test only):
  MASKD_HA_VENV    the venv to use or build (default: the cache path above)
  MASKD_HA_PYTHON  the Python 3.13+ to build it with (default: pyenv's newest 3.13, then
                   python3.13 on PATH)

    .venv/bin/python -m tools.ha_venv                      # build (or find) it; print its python
    .venv/bin/python -m tools.ha_venv --broker mqtt://host:1883
        # validate every retained discovery config the broker holds
    .venv/bin/python -m tools.ha_venv < messages.json      # validate a JSON list of
        # {"topic", "payload"}
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HA_VERSION = "2025.4.4"
REQUIREMENTS = [f"homeassistant=={HA_VERSION}", "paho-mqtt==2.1.0"]
UV = "uv==0.6.10"  # the uv that homeassistant==2025.4.4 itself requires: nothing extra
MIN_PYTHON = (3, 13)
VALIDATOR = Path(__file__).with_name("ha_validate.py")
STAMP = "maskd-ha-ready.json"


class Unavailable(RuntimeError):
    """The Home Assistant venv cannot be had here; the message says why."""


def venv_dir() -> Path:
    if os.environ.get("MASKD_HA_VENV"):
        return Path(os.environ["MASKD_HA_VENV"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "maskd" / f"ha-venv-{HA_VERSION}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    major, minor = out.stdout.split() if out.returncode == 0 else ("0", "0")
    return int(major), int(minor)


def find_python() -> str:
    """A Python >= 3.13 to build the venv with: MASKD_HA_PYTHON, else pyenv's newest 3.13.x,
    else python3.13 on PATH."""
    if os.environ.get("MASKD_HA_PYTHON"):
        python = os.environ["MASKD_HA_PYTHON"]
        found = _version(python)
        if found is None or found < MIN_PYTHON:
            raise Unavailable(f"MASKD_HA_PYTHON={python} is not a Python >= 3.13 "
                              f"(found {found and '.'.join(map(str, found))})")
        return python
    candidates: list[str] = []
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                           timeout=30).stdout.strip())
    for root in filter(None, roots):
        versions = Path(root) / "versions"
        found = [p for p in versions.glob("3.13*") if re.fullmatch(r"3\.13\.\d+", p.name)]
        found.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
        candidates += [str(p / "bin" / "python3") for p in found]
    candidates += filter(None, [shutil.which("python3.13")])
    for python in candidates:
        if Path(python).exists() and (_version(python) or (0, 0)) >= MIN_PYTHON:
            return python
    raise Unavailable("no Python 3.13 found for Home Assistant: not in pyenv (~/.pyenv/versions/"
                      "3.13.*; `pyenv install 3.13`), not python3.13 on PATH, and "
                      "MASKD_HA_PYTHON is not set")


def ready(venv: Path | None = None) -> Path | None:
    """The venv's python if it was built completely for these requirements, else None."""
    venv = venv or venv_dir()
    try:
        stamp = json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None
    python = venv_python(venv)
    return python if stamp.get("requirements") == REQUIREMENTS and python.exists() else None


@contextlib.contextmanager
def _lock(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"another build holds {path} for over {timeout:.0f} s"
                                      ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str], deadline: float, what: str, stdin: str = ""
         ) -> subprocess.CompletedProcess:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Unavailable(f"{what}: no time left of the build timeout")
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=left,
                              env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what}: still running when the build timeout ran out") from None


def _tail(p: subprocess.CompletedProcess, n: int = 6) -> str:
    lines = [x for x in (p.stderr + p.stdout).splitlines()
             if x.strip() and "is ignored: it is neither a file nor a directory" not in x]
    errors = [x for x in lines if x.lower().startswith("error")]  # pip's and uv's verdicts
    return " | ".join((errors or lines)[-n:])


def ensure(timeout: float = 900.0, log: Callable[[str], None] | None = None) -> Path:
    """The python of a ready Home Assistant venv: the cached one (a file check), or one built
    now within ``timeout`` seconds. Raises Unavailable with the reason."""
    venv = venv_dir()
    if python := ready(venv):
        return python
    with _lock(venv.parent / f"{venv.name}.lock", timeout):
        if python := ready(venv):  # built by whoever held the lock
            return python
        base = find_python()
        t0 = time.monotonic()
        deadline = t0 + timeout
        tmp = venv.parent / f"{venv.name}.building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            log and log(f"building {venv} with {base}: {' '.join(REQUIREMENTS)}")
            p = _run([base, "-m", "venv", str(tmp)], deadline, "python -m venv")
            if p.returncode:
                raise Unavailable(f"{base} -m venv failed: {_tail(p)}")
            py = str(venv_python(tmp))
            pip = [py, "-m", "pip", "install", "-q", "--timeout", "30", "--retries", "2"]
            # uv installs Home Assistant's few hundred files in a third of pip's time.
            p = _run(pip + [UV], deadline, f"pip install {UV}")
            if p.returncode == 0:
                p = _run([py, "-m", "uv", "pip", "install", "-q", "--python", py,
                          *REQUIREMENTS], deadline, "uv pip install homeassistant")
            if p.returncode:
                log and log(f"uv failed ({_tail(p, 2)}); trying pip")
                p = _run(pip + REQUIREMENTS, deadline, "pip install homeassistant")
            if p.returncode:
                raise Unavailable(f"installing {' '.join(REQUIREMENTS)} with {base} failed: "
                                  f"{_tail(p)}")
            p = _run([py, str(VALIDATOR), "--json"], deadline, "import check", "[]")
            if p.returncode:  # no messages: imports every MQTT platform's schema, checks none
                raise Unavailable(f"homeassistant {HA_VERSION} installed but the MQTT "
                                  f"schemas do not import: {_tail(p)}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / STAMP).write_text(json.dumps({
            "requirements": REQUIREMENTS, "python": base,
            "built_s": round(time.monotonic() - t0, 1), "built": time.strftime("%F %T"),
        }) + "\n")
        shutil.rmtree(venv, ignore_errors=True)  # an older, incomplete one
        tmp.rename(venv)
        log and log(f"built {venv} in {time.monotonic() - t0:.0f} s")
        return venv_python(venv)


def validate(messages: list[dict], python: Path | None = None, timeout: float = 120.0) -> dict:
    """Run tools/ha_validate.py in the venv on ``messages`` (JSON-able {"topic", "payload"}):
    {"homeassistant": version, "results": [{topic, component, object_id, ok, error, ...}]}."""
    python = python or ensure()
    p = subprocess.run([str(python), str(VALIDATOR), "--json"], input=json.dumps(messages),
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode not in (0, 1) or not p.stdout.strip():
        raise RuntimeError(f"{VALIDATOR.name} exited {p.returncode}: {p.stderr[-3000:]}")
    return json.loads(p.stdout)


def broker_address(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``mqtt://host[:port]`` / ``mqtts://host[:port]``, or
    SystemExit naming the URL (a port that is not a number was a ValueError traceback)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        port = u.port
    except ValueError as err:
        raise SystemExit(f"error: --broker {url!r}: {err} (expected mqtt://host[:port] or "
                         "mqtts://host[:port])") from None
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise SystemExit(f"error: --broker {url!r}: expected mqtt://host[:port] or "
                         "mqtts://host[:port]")
    return u.scheme, u.hostname, port or (8883 if u.scheme == "mqtts" else 1883)


def read_messages(text: str) -> list[dict]:
    """The messages to check from stdin: a JSON list of {"topic": str, "payload": ...}, or
    SystemExit saying what is wrong (text that is not JSON was a JSONDecodeError traceback, an
    object a TypeError inside ha_validate)."""
    try:
        messages = json.loads(text)
    except ValueError as err:
        raise SystemExit(f"error: stdin is not JSON ({err}); expected a JSON list of "
                         '{"topic", "payload"} objects') from None
    if not isinstance(messages, list):
        raise SystemExit(f"error: stdin holds a JSON {type(messages).__name__}, not a list of "
                         '{"topic", "payload"} objects')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("topic"), str):
            raise SystemExit(f"error: stdin message {i}: {json.dumps(m)[:80]} is not an object "
                             'with a "topic" string (and a "payload")')
    return messages


def retained_configs(url: str, prefix: str = "homeassistant", quiet_s: float = 1.0,
                     timeout: float = 15.0, username: str | None = None,
                     password: str | None = None, ca_file: str | None = None) -> list[dict]:
    """Every retained ``<prefix>/.../config`` message the broker at ``url`` holds, as
    {"topic", "payload"} (payload: the text). Read-only: subscribes, collects what the broker
    sends until ``quiet_s`` pass without a message, disconnects."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    scheme, host, port = broker_address(url)
    got: dict[str, str] = {}
    last = [time.monotonic()]
    subscribed = threading.Event()
    refused: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if username:
        c.username_pw_set(username, password)
    if scheme == "mqtts":
        try:
            c.tls_set(ca_certs=ca_file)
        except (OSError, ValueError) as err:  # a --ca-file not there or not a certificate
            raise RuntimeError(f"--ca-file {ca_file}: {getattr(err, 'strerror', None) or err}"
                               ) from None

    def on_connect(client, userdata, flags, rc, props):  # noqa: ANN001
        if rc.is_failure:  # a refused login: said now, not as 'could not subscribe' 15 s later
            refused.append(str(rc))
            subscribed.set()
        else:
            client.subscribe(f"{prefix}/#", qos=1)

    def on_subscribe(*args):  # noqa: ANN002
        last[0] = time.monotonic()
        subscribed.set()

    def on_message(client, userdata, msg):  # noqa: ANN001
        last[0] = time.monotonic()
        if msg.retain and msg.topic.endswith("/config"):
            got[msg.topic] = msg.payload.decode("utf-8", "replace")

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    try:
        c.connect(host, port, keepalive=30)
    except (OSError, ValueError) as err:  # refused, no such host, unreachable, TLS
        raise RuntimeError(f"cannot connect to the broker at {url}: "
                           f"{getattr(err, 'strerror', None) or err}") from None
    c.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise RuntimeError(f"could not subscribe to {prefix}/# on {url} within {timeout} s")
        if refused:
            raise RuntimeError(f"the broker at {url} refused the login: {refused[0]}"
                               + ("" if username else " (no --username given)"))
        deadline = time.monotonic() + timeout
        while time.monotonic() - last[0] < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    return [{"topic": t, "payload": p} for t, p in sorted(got.items())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build (once) the Home Assistant venv and check "
                                 "discovery payloads with Home Assistant's own schemas.")
    ap.add_argument("--broker", help="validate the retained discovery configs on this broker "
                    "(mqtt://host:port or mqtts://host:port)")
    ap.add_argument("--discovery-prefix", default="homeassistant")
    ap.add_argument("--username")
    ap.add_argument("--password-env", help="environment variable that holds the password")
    ap.add_argument("--ca-file", help="mqtts: the CA certificate (default: the system's)")
    ap.add_argument("--timeout", type=float, default=900.0, help="build timeout, seconds")
    args = ap.parse_args(argv)
    # What was asked is checked and read before the venv is built or found (minutes at first).
    messages = None
    if args.broker:
        broker_address(args.broker)
        password = None
        if args.password_env:  # unset: it meant no password, and a refused login 15 s later
            password = os.environ.get(args.password_env)
            if password is None:
                print(f"error: --password-env {args.password_env}: no such environment variable "
                      "(set it to the broker password)", file=sys.stderr)
                return 2
        try:
            messages = retained_configs(args.broker, args.discovery_prefix,
                                        username=args.username, password=password,
                                        ca_file=args.ca_file)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{len(messages)} retained discovery config(s) on {args.broker}", file=sys.stderr)
    else:
        text = "" if sys.stdin.isatty() else sys.stdin.read()
        if text.strip():
            messages = read_messages(text)
    try:
        python = ensure(args.timeout, log=lambda m: print(m, file=sys.stderr))
    except Unavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if messages is None:
        print(python)
        return 0
    p = subprocess.run([str(python), str(VALIDATOR), "--discovery-prefix",
                        args.discovery_prefix], input=json.dumps(messages), text=True)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
