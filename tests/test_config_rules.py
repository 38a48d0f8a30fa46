"""One truth per config rule: `maskd check-config` and `maskd run` refuse the same configs.

The cross-field MQTT rules (credentials, TLS files) live in maskd.config.MqttConfig; each bad
config below goes through both commands as a subprocess and must be refused by both with exit 78
and a line naming the key. A good config with the same parts is accepted by both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mqtt_broker import free_port, make_ca

from maskd.config import EX_CONFIG

REPO = Path(__file__).resolve().parents[1]
PW_VAR = "MASKD_RULES_TEST_PW"  # set for every subprocess below
UNSET_VAR = "MASKD_RULES_TEST_UNSET"  # never set
EMPTY_VAR = "MASKD_RULES_TEST_EMPTY"  # set, to nothing


def maskd(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != UNSET_VAR}
    return subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**env, PW_VAR: "s3cret", EMPTY_VAR: " "})


def maskd_each(calls: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess]:
    """maskd(*call) for each call, a few processes at a time, answers in the calls' order. Each
    is still its own process; most of one's time is Python's start and imports, which overlap."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: maskd(*call), calls))


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


def bad_configs(tmp: Path, tls) -> list[tuple[str, dict, str]]:  # noqa: ANN001
    """(name, mqtt section, the key the answer must name)."""
    plain, secure = "mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883"
    junk = tmp / "junk.pem"
    junk.write_text("not a certificate\n")
    pw = tmp / "pw"
    pw.write_text("s3cret\n")
    latin1 = tmp / "pw-latin1"
    latin1.write_bytes(b"s3cr\xe9t\n")
    empty = tmp / "pw-empty"
    empty.write_text("\n")
    fifo = tmp / "pw-fifo"  # nobody writes to it: reading it would hang the start
    if not fifo.exists():
        os.mkfifo(fifo)
    return [
        ("password_file a named pipe", {"url": plain, "username": "u", "password_file": str(fifo)},
         "mqtt.password_file"),
        ("ca_file a device that never ends", {"url": secure, "ca_file": "/dev/zero"},
         "mqtt.ca_file"),
        ("ca_file with mqtt://", {"url": plain, "ca_file": str(tls.ca)}, "mqtt.ca_file"),
        ("cert_file with mqtt://", {"url": plain, "cert_file": str(tls.client_cert),
                                    "key_file": str(tls.client_key)}, "mqtt.cert_file"),
        ("key_file with mqtt://", {"url": plain, "key_file": str(tls.client_key)}, "mqtt.key_file"),
        ("key_file without cert_file", {"url": secure, "key_file": str(tls.client_key)},
         "mqtt.key_file"),
        ("ca_file missing", {"url": secure, "ca_file": str(tmp / "nope.crt")}, "mqtt.ca_file"),
        ("ca_file not a certificate", {"url": secure, "ca_file": str(junk)}, "mqtt.ca_file"),
        ("password_env not set", {"url": plain, "username": "u", "password_env": UNSET_VAR},
         "mqtt.password_env"),
        ("password_env without username", {"url": plain, "password_env": PW_VAR},
         "mqtt.password_env"),
        ("password_file missing", {"url": plain, "username": "u",
                                   "password_file": str(tmp / "nope")}, "mqtt.password_file"),
        ("password_file without username", {"url": plain, "password_file": str(pw)},
         "mqtt.password_file"),
        ("password_file not UTF-8", {"url": plain, "username": "u",
                                     "password_file": str(latin1)}, "mqtt.password_file"),
        # empty: the broker would only say 'not authorised', nothing pointing at the config
        ("password_file empty", {"url": plain, "username": "u", "password_file": str(empty)},
         "mqtt.password_file"),
        ("password_env empty", {"url": plain, "username": "u", "password_env": EMPTY_VAR},
         "mqtt.password_env"),
    ]


def write(path: Path, mqtt: dict, state_dir: Path) -> Path:
    # device_id set: a machine whose host name is a stock one (localhost) would add a warning
    lines = [f"state_dir: {state_dir}", "device_id: door-1", "mqtt:"] + [
        f"  {k}: '{v}'" for k, v in mqtt.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_args(path: Path) -> tuple[str, ...]:
    return ("run", "--config", str(path), "--source", "demo", "--max-frames", "1",
            "--flush-timeout", "0")


def run(path: Path) -> subprocess.CompletedProcess:
    return maskd(*run_args(path))


def test_check_config_and_run_refuse_the_same_cross_field_mistakes(tmp_path, tls):
    cases = bad_configs(tmp_path, tls)
    paths = [write(tmp_path / f"bad{i}.yaml", mqtt, tmp_path / f"state{i}")
             for i, (_, mqtt, _) in enumerate(cases)]
    answers = maskd_each([call for path in paths
                          for call in (("check-config", str(path)), run_args(path))])
    for i, (name, _, key) in enumerate(cases):
        for cmd, r in zip(("check-config", "run"), answers[2 * i:2 * i + 2], strict=True):
            assert r.returncode == EX_CONFIG, (name, cmd, r.returncode, r.stderr[-2000:])
            assert f"'{key}'" in r.stderr or f"{key}/" in r.stderr, (name, cmd, r.stderr)
            assert "Traceback" not in r.stderr, (name, cmd, r.stderr)


def test_an_unreadable_cert_file_is_not_also_called_missing_by_key_file(tmp_path, tls):
    """A cert_file its own check refuses (the file is not there) was also reported unset by
    key_file's check ('needs mqtt.cert_file'), a second line pointing at the wrong fix."""
    path = write(tmp_path / "c.yaml", {"url": "mqtts://127.0.0.1:8883",
                                       "cert_file": str(tmp_path / "client.crt"),
                                       "key_file": str(tls.client_key)}, tmp_path / "state")
    r = maskd("check-config", str(path))
    assert r.returncode == EX_CONFIG, r.stderr
    said = [ln for ln in r.stderr.splitlines() if "mqtt." in ln]
    assert len(said) == 1 and "'mqtt.cert_file': cannot read" in said[0], r.stderr
    assert "needs mqtt.cert_file" not in r.stderr


def test_tls_files_that_do_not_load_are_named_one_by_one_by_both(tmp_path, tls):
    """Which TLS file is wrong: the line said `mqtt.ca_file/cert_file/key_file do not load:
    [SSL] PEM lib` whichever it was (a certificate without its key, a key for a certificate,
    a key file in ca_file), so all three were suspects. Now it names the key and its file."""
    other = make_ca(tmp_path / "other", name="other CA")
    locked = tmp_path / "locked.key"
    subprocess.run(["openssl", "rsa", "-in", str(tls.client_key), "-aes256", "-passout",
                    "pass:x", "-out", str(locked)], check=True, capture_output=True)
    ec_key = tmp_path / "ec.key"  # another certificate's key of another type (OpenSSL: "no
    # certificate assigned", not "key values mismatch")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(ec_key)], check=True, capture_output=True)
    secure = "mqtts://127.0.0.1:8883"
    pair = {"url": secure, "ca_file": str(tls.ca), "cert_file": str(tls.client_cert)}
    cases = [
        ({"url": secure, "ca_file": str(tls.client_key)}, f"mqtt.ca_file {tls.client_key}: "),
        (pair, f"mqtt.cert_file {tls.client_cert}: no private key in it; set mqtt.key_file"),
        ({**pair, "key_file": str(other.client_key)},
         f"mqtt.key_file {other.client_key} is not the private key of mqtt.cert_file"),
        ({**pair, "key_file": str(ec_key)},
         f"mqtt.key_file {ec_key} is not the private key of mqtt.cert_file"),
        ({**pair, "key_file": str(tls.client_cert)},
         f"mqtt.key_file {tls.client_cert}: no PEM private key in it"),
        ({**pair, "cert_file": str(tls.client_key), "key_file": str(tls.client_key)},
         f"mqtt.cert_file {tls.client_key}: no PEM certificate in it"),
        ({**pair, "key_file": str(locked)}, f"mqtt.key_file {locked}: the key is encrypted"),
    ]
    paths = [write(tmp_path / f"tls{i}.yaml", mqtt, tmp_path / f"state{i}")
             for i, (mqtt, _) in enumerate(cases)]
    answers = maskd_each([call for path in paths
                          for call in (("check-config", str(path)), run_args(path))])
    for i, (_, said) in enumerate(cases):
        for r in answers[2 * i:2 * i + 2]:
            assert r.returncode == EX_CONFIG and said in r.stderr, (said, r.stderr[-2000:])


def test_a_good_config_is_accepted_by_both(tmp_path, tls):
    state = tmp_path / "state"
    state.mkdir()
    good = {"url": f"mqtts://127.0.0.1:{free_port()}", "username": "u", "password_env": PW_VAR,
            "ca_file": str(tls.ca), "cert_file": str(tls.client_cert),
            "key_file": str(tls.client_key), "reconnect_min_s": 0.1}
    path = write(tmp_path / "good.yaml", good, state)
    r = maskd("check-config", str(path))
    assert r.returncode == 0 and r.stdout == f"OK: {path}\n" and r.stderr == "", r.stderr
    r = run(path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_both_refuse_rules_between_keys_of_one_section(tmp_path):
    """Rules the config alone decides are check-config's too, not found by `run` only."""
    token = tmp_path / "token"
    token.write_text("open sesame\n")  # a space: the cookie would end at it
    state = tmp_path / "state"
    cases = [
        ("images without a folder", "source: {kind: images}", "'source'"),
        ("ssd without a model", "detector: {kind: ssd}", "'detector'"),
        ("a release above the start", "tracking: {start_threshold: 0.5, release_threshold: 0.9}",
         "'tracking.release_threshold': 0.9 is above start_threshold 0.5"),
        ("token a URL cannot carry",
         f"preview: {{http: '0.0.0.0:{free_port()}', http_token_file: '{token}'}}",
         "'preview.http_token_file'"),
    ]
    paths = [tmp_path / f"bad{i}.yaml" for i in range(len(cases))]
    for path, (_, yaml, _) in zip(paths, cases, strict=True):
        path.write_text(f"state_dir: {state}\n{yaml}\n")
    answers = maskd_each([call for path in paths
                          for call in (("check-config", str(path)), run_args(path))])
    for i, (name, _, key) in enumerate(cases):
        for cmd, r in zip(("check-config", "run"), answers[2 * i:2 * i + 2], strict=True):
            assert r.returncode == EX_CONFIG, (name, cmd, r.returncode, r.stderr[-2000:])
            assert key in r.stderr and "Traceback" not in r.stderr, (name, cmd, r.stderr)


def test_both_refuse_two_status_pages_on_one_port(tmp_path):
    """localhost:P and 127.0.0.1:P (or 0.0.0.0:P and anything on P) are one socket: the second
    page could never listen, so check-config must say so, not only `run` at start."""
    port = free_port()
    path = tmp_path / "pages.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\ncameras:\n"
                    f"  a: {{source: {{kind: demo}}, preview: {{http: 'localhost:{port}'}}}}\n"
                    f"  b: {{source: {{kind: demo}}, preview: {{http: '127.0.0.1:{port}'}}}}\n")
    run_it = maskd("run", "--config", str(path), "--max-frames", "1", "--flush-timeout", "0")
    for cmd, r in (("check-config", maskd("check-config", str(path))), ("run", run_it)):
        assert r.returncode == EX_CONFIG, (cmd, r.returncode, r.stderr[-2000:])
        assert f"localhost:{port} and 127.0.0.1:{port} are the same port" in r.stderr, r.stderr


def test_both_refuse_cameras_that_would_fight_over_a_window_a_device_or_a_port(tmp_path):
    """Mistakes of a `cameras:` map that `run` met only at start or never (two threads drawing
    in the one OpenCV window; two cameras opening one device; the wildcard spelled `0`): both
    commands refuse them, naming what clashes."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port()
    demo = "{kind: demo}"
    relative = os.path.relpath(tmp_path / "clip.avi", REPO)  # maskd runs in REPO
    cases = [
        ("two windows", f"a: {{source: {demo}, preview: {{window: true}}}}\n"
                        f"  b: {{source: {demo}, preview: {{window: true}}}}",
         "cameras a and b both set preview.window"),
        ("one screen twice", f"a: {{source: {demo}, preview: {{framebuffer: /dev/fb0}}}}\n"
                             f"  b: {{source: {demo}, preview: {{framebuffer: /dev//fb0}}}}",
         "cameras a and b both draw on preview.framebuffer /dev/fb0"),
        ("one screen through ..", f"a: {{source: {demo}, preview: {{framebuffer: /dev/fb0}}}}\n"
                                  f"  b: {{source: {demo}, preview: {{framebuffer: /dev/../dev/fb0}}}}",
         "cameras a and b both draw on preview.framebuffer /dev/../dev/fb0"),
        ("the default camera", f"a: {{source: {{}}}}\n  b: {{source: {demo}}}",
         "'cameras.a.source': a camera of a cameras: map must name its source"),
        ("one device twice", "a: {source: {uri: '0'}}\n  b: {source: {uri: /dev/video0}}",
         "cameras a and b both read '/dev/video0'"),
        ("one stream twice", "a: {source: {uri: 'rtsp://u:hunter2@cam/s'}}\n"
                             "  b: {source: {uri: 'rtsp://cam/s'}}",
         "cameras a and b both read 'rtsp://cam:554/s'"),
        ("one file by a symlink", f"a: {{source: {{uri: '{tmp_path}/clip.avi'}}}}\n"
                                  f"  b: {{source: {{uri: '{tmp_path}/link.avi'}}}}",
         ("cameras a and b both read '", "clip.avi'")),
        ("one file through ..", f"a: {{source: {{uri: '{tmp_path}/clip.avi'}}}}\n"
                                f"  b: {{source: {{uri: '{tmp_path}/../{tmp_path.name}/clip.avi'}}}}",
         ("cameras a and b both read '", "clip.avi'")),
        ("one file relative and absolute", f"a: {{source: {{uri: '{relative}'}}}}\n"
                                           f"  b: {{source: {{uri: '{tmp_path}/clip.avi'}}}}",
         ("cameras a and b both read '", "clip.avi'")),
        ("this machine by two names", "a: {source: {uri: 'http://127.0.0.1:8554/x'}}\n"
                                      "  b: {source: {uri: 'http://localhost:8554/x'}}",
         "cameras a and b both read 'http://localhost:8554/x'"),
        ("the default port written", "a: {source: {uri: 'rtsp://cam.local/x'}}\n"
                                     "  b: {source: {uri: 'rtsp://cam.local:554/x'}}",
         "cameras a and b both read 'rtsp://cam.local:554/x'"),
        ("scheme and host in capitals", "a: {source: {uri: 'RTSP://CAM.local/x'}}\n"
                                        "  b: {source: {uri: 'rtsp://cam.local/x'}}",
         "cameras a and b both read 'rtsp://cam.local:554/x'"),
        ("names apart only in case", f"door: {{source: {demo}}}\n  Door: {{source: {demo}}}",
         "cameras door and Door differ only in case"),  # one clip file on a FAT/exFAT stick
        ("the wildcard spelled 0", f"a: {{source: {demo}, preview: {{http: '0:{port}', "
                                   f"http_token_file: '{token}'}}}}\n"
                                   f"  b: {{source: {demo}, preview: {{http: '127.0.0.1:{port}'}}}}",
         f"0:{port} and 127.0.0.1:{port} are the same port"),
    ]
    (tmp_path / "clip.avi").write_bytes(b"not read: refused before")
    (tmp_path / "link.avi").symlink_to(tmp_path / "clip.avi")
    paths = [tmp_path / f"bad{i}.yaml" for i in range(len(cases))]
    for path, (_, cameras, _) in zip(paths, cases, strict=True):
        path.write_text(f"state_dir: {tmp_path / 'state'}\ncameras:\n  {cameras}\n")
    answers = maskd_each([call for path in paths for call in (
        ("check-config", str(path)), ("run", "--config", str(path), "--max-frames", "1"))])
    for i, (name, _, says) in enumerate(cases):
        for cmd, r in zip(("check-config", "run"), answers[2 * i:2 * i + 2], strict=True):
            assert r.returncode == EX_CONFIG, (name, cmd, r.returncode, r.stderr[-2000:])
            assert all(part in r.stderr for part in (says if isinstance(says, tuple) else (says,))), \
                (name, cmd, r.stderr)
            assert "Traceback" not in r.stderr, (name, cmd, r.stderr)
            assert "hunter2" not in r.stderr, r.stderr  # a stream's password stays out of errors


def test_camera_names_home_assistant_takes_for_one_are_refused_with_discovery(tmp_path):
    """Home Assistant makes entity ids of names with `-` and runs of `_` as one `_`: in a real
    Home Assistant 2025.4 cameras front-door and front_door of one map became
    `event.maskd_entrance_2_front_door_violation` and `..._violation_2`, which one first only as
    discovery happened to come, so an automation written for one fired for the other. Without
    discovery (no Home Assistant) the names are fine."""
    demo = "{kind: demo}"
    cameras = f"cameras:\n  front-door: {{source: {demo}}}\n  front__door: {{source: {demo}}}\n"
    url = f"mqtt:\n  url: mqtt://127.0.0.1:{free_port()}\n"
    # Home Assistant also lowercases, and a `_` at a name's end joins the one after it
    cased = f"cameras:\n  Front-Door: {{source: {demo}}}\n  front_door_: {{source: {demo}}}\n"
    paths = {name: tmp_path / f"{name}.yaml" for name in ("on", "cased", "off", "none")}
    paths["on"].write_text(f"state_dir: {tmp_path / 'state'}\n{cameras}{url}")
    paths["cased"].write_text(f"state_dir: {tmp_path / 'state'}\n{cased}{url}")
    paths["off"].write_text(f"state_dir: {tmp_path / 'state'}\n{cameras}{url}  discovery: false\n")
    paths["none"].write_text(f"state_dir: {tmp_path / 'state'}\n{cameras}")
    on, cased_, off, none = maskd_each([("check-config", str(p)) for p in paths.values()])
    assert on.returncode == EX_CONFIG, on.stderr
    assert ("cameras front-door and front__door are one name to Home Assistant's entity ids "
            "(front_door)") in on.stderr, on.stderr
    assert cased_.returncode == EX_CONFIG, cased_.stderr
    assert ("cameras Front-Door and front_door_ are one name to Home Assistant's entity ids "
            "(front_door)") in cased_.stderr, cased_.stderr
    assert off.returncode == 0 and none.returncode == 0, (off.stderr, none.stderr)


def test_run_prefixes_every_error_line(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("source: {fsp: 3}\nmqtt: {url: 'http://x'}\n")
    r = run(path)
    lines = [ln for ln in r.stderr.splitlines() if str(path) in ln]
    assert r.returncode == EX_CONFIG and len(lines) == 2, r.stderr
    assert all(ln.startswith(f"maskd run: {path}: ") for ln in lines), lines


def test_run_source_with_a_cameras_config_says_which_wins(tmp_path):
    path = tmp_path / "cams.yaml"
    path.write_text("cameras:\n  a: {source: {kind: demo}}\n  b: {source: {kind: demo}}\n")
    r = run(path)  # --source demo
    assert r.returncode == EX_CONFIG
    assert r.stderr.strip().endswith("maskd run: --source demo: the config has cameras:, each "
                                     "with its own source; give them there, or use a config "
                                     "without cameras:"), r.stderr


def test_both_refuse_a_bad_page_secret_without_preview_http(tmp_path):
    """The page's password and token files are read whenever set: `maskd run --http` serves the
    page with them, so check-config passing the file without preview.http let run exit 78."""
    token, empty = tmp_path / "token", tmp_path / "pw-empty"
    token.write_text("abc:def\n")  # a ':' cannot travel in the URL
    empty.write_text("\n")
    port = free_port()
    for key, path in (("preview.http_token_file", token), ("preview.http_password_file", empty)):
        cfg = tmp_path / "page.yaml"
        cfg.write_text(f"state_dir: {tmp_path / 'state'}\npreview: {{{key.split('.')[1]}: '{path}'}}\n")
        with_http = maskd("run", "--config", str(cfg), "--source", "demo", "--max-frames", "1",
                          "--flush-timeout", "0", "--http", f"0.0.0.0:{port}")
        for cmd, r in (("check-config", maskd("check-config", str(cfg))), ("run", run(cfg)),
                       ("run --http", with_http)):
            assert r.returncode == EX_CONFIG, (key, cmd, r.returncode, r.stderr[-2000:])
            assert f"{cfg}: '{key}'" in r.stderr and "command line" not in r.stderr, (cmd, r.stderr)


def test_run_blames_the_file_for_its_keys_and_the_command_line_for_its_own(tmp_path):
    """An option can make a key of the file count (``--mqtt`` turns on mqtt.password_file):
    the error names the file, where the key is, not the command line (was: 'command line:
    'mqtt.password_file'', a key no option sets)."""
    cfg = tmp_path / "mqtt.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nmqtt: {{password_file: '{tmp_path / 'nope'}'}}\n")
    assert maskd("check-config", str(cfg)).returncode == 0  # MQTT is off: the file is unused
    r = maskd("run", "--config", str(cfg), "--source", "demo", "--max-frames", "1",
              "--mqtt", f"mqtt://127.0.0.1:{free_port()}")
    assert r.returncode == EX_CONFIG, r.stderr[-2000:]
    assert r.stderr.startswith(f"maskd run: {cfg}: 'mqtt.password_file': cannot read "), r.stderr
    # a rule about what the option set still names the command line
    r = maskd("run", "--config", str(cfg), "--source", "demo", "--max-frames", "1",
              "--http", f"0.0.0.0:{free_port()}")
    assert r.returncode == EX_CONFIG, r.stderr[-2000:]
    assert r.stderr.startswith("maskd run: command line: 'preview': preview.http 0.0.0.0:"), r.stderr


def test_both_refuse_preview_devices_this_machine_lacks(tmp_path):
    """A framebuffer that is missing or is no framebuffer, or a window with an OpenCV without GUI
    support, stops `run` on this machine whoever starts it: check-config says so with the same
    line (was: OK, then exit 78 from run), naming the camera's key under a `cameras:` map."""
    from maskd.preview import opencv_gui_backend

    missing = tmp_path / "fb9"
    demo = "{kind: demo}"
    cases = [
        (f"source: {demo}\npreview: {{framebuffer: '{missing}'}}",
         f"preview.framebuffer: {missing} does not exist"),
        (f"source: {demo}\npreview: {{framebuffer: '{tmp_path}'}}",  # exists, not a framebuffer
         f"preview.framebuffer: {tmp_path} is not a framebuffer device"),
        (f"cameras:\n  a: {{source: {demo}}}\n  b: {{source: {{kind: images, uri: '{tmp_path}'}}, "
         f"preview: {{framebuffer: '{missing}'}}}}",
         f"cameras.b.preview.framebuffer: {missing} does not exist"),
        (f"preview: {{framebuffer: '{missing}'}}\ncameras:\n  a: {{source: {demo}}}",  # a's preview
         f"preview.framebuffer: {missing} does not exist"),
    ]
    if opencv_gui_backend() is None:  # opencv-python-headless, as in the test environment
        cases.append((f"source: {demo}\npreview: {{window: true}}",
                      "preview.window: the installed OpenCV has no GUI support"))
    paths = [tmp_path / f"bad{i}.yaml" for i in range(len(cases))]
    for path, (yaml, _) in zip(paths, cases, strict=True):
        path.write_text(f"state_dir: {tmp_path / 'state'}\n{yaml}\n")
    answers = maskd_each([call for path in paths for call in (
        ("check-config", str(path)),
        ("run", "--config", str(path), "--max-frames", "1", "--flush-timeout", "0"))])
    for i, (path, (yaml, says)) in enumerate(zip(paths, cases, strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        assert checked.returncode == ran.returncode == EX_CONFIG, (yaml, checked.stderr, ran.stderr)
        line = checked.stderr.removeprefix(f"{path}: ")
        assert line.startswith(says) and line.count("\n") == 1, (yaml, checked.stderr)
        assert ran.stderr.endswith(f"maskd run: {line}"), (yaml, line, ran.stderr)


@pytest.mark.skipif(Path("/dev/fb7").exists(), reason="this machine has a /dev/fb7")
def test_a_framebuffer_missing_at_boot_is_a_warning_and_detection_runs(tmp_path):
    """A Pi that boots without its HDMI monitor has no /dev/fb0 (vc4 KMS): `run` exited 78,
    which the unit does not restart, so nothing was detected until someone noticed. Both now
    warn with one line and `run` detects (the preview opens once the device comes); a regular
    file where a framebuffer belongs is still refused by both, with one line."""
    afile = tmp_path / "fb0"
    afile.write_text("")
    base = f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
    path = tmp_path / "fb.yaml"
    path.write_text(base + "preview: {framebuffer: /dev/fb7}\n")
    checked = maskd("check-config", str(path))
    ran = maskd("run", "--config", str(path), "--max-frames", "3", "--flush-timeout", "0")
    says = ("preview.framebuffer: /dev/fb7 does not exist now (no HDMI monitor since boot?); "
            "detection runs without this preview, which is tried again every 10 s")
    assert checked.returncode == ran.returncode == 0, (checked.stderr, ran.stderr)
    assert checked.stderr == f"{path}: warning: {says}\n"
    assert f"WARNING maskd.preview: {says}\n" in ran.stderr
    assert "stopping: --max-frames 3 reached" in ran.stderr
    path.write_text(base + f"preview: {{framebuffer: '{afile}'}}\n")
    checked = maskd("check-config", str(path))
    ran = maskd("run", "--config", str(path), "--max-frames", "1", "--flush-timeout", "0")
    says = (f"preview.framebuffer: {afile} is not a framebuffer device (a regular file; "
            "/dev/fbN is a character device)\n")
    assert checked.returncode == ran.returncode == EX_CONFIG
    assert checked.stderr == f"{path}: {says}" and ran.stderr == f"maskd run: {says}"


def test_check_config_warns_of_what_only_the_session_lacks(tmp_path, monkeypatch, capsys):
    """A desktop session is the environment's, not the machine's: check-config, often run from
    an SSH shell, warns (the service may have $DISPLAY) where `run` stops with the same words."""
    import argparse

    from maskd import preview
    from maskd.commands import check_config
    from maskd.config import load_config

    monkeypatch.setattr(preview, "opencv_gui_backend", lambda build_info=None: "GTK3")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    path = tmp_path / "window.yaml"
    path.write_text("preview: {window: true}\n")
    assert check_config.main(argparse.Namespace(config=path)) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: {path}\n"
    warning = f"{path}: warning: preview.window: no desktop session ($DISPLAY / $WAYLAND_DISPLAY"
    assert err.startswith(warning) and err.count("\n") == 1, err
    with pytest.raises(preview.PreviewUnavailable) as stopped:  # what `run` calls at start
        preview.check_previews(load_config(path))
    assert f"{path}: warning: {stopped.value}\n" == err


def test_the_ok_line_is_written_as_every_commands_records(tmp_path):
    """check-config's `OK` to a full disk was an OSError traceback (exit 1), to a closed stdout
    lost with exit 0, and for a config named in Latin-1 under a UTF-8 locale a
    UnicodeEncodeError after the config was checked. Now 74 with one line, or its bytes."""
    path = tmp_path / "ok.yaml"
    path.write_text("device_id: door-1\n")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(path)],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 74 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == ("maskd check-config: cannot write to standard output "
                                "(/dev/full): No space left on device")
    r = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "maskd",
                        "check-config", str(path)], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert (r.returncode, r.stderr.strip()) == (74, "maskd check-config: standard output is closed")
    latin = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.yaml"))
    latin.write_text("device_id: door-1\n")
    r = subprocess.run([sys.executable, "-m", "maskd", "check-config", latin],
                       capture_output=True, timeout=60, cwd=REPO,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert (r.returncode, r.stdout) == (0, b"OK: " + bytes(latin) + b"\n"), r.stderr


def test_a_folder_only_another_user_may_write_is_a_warning_and_stdout_needs_no_folder(tmp_path):
    """docs: what depends on the user asking (a permission) is a warning of check-config's,
    as the service may run as another user, and `run` as this user stops on it (78). Events
    to standard output (`jsonl.path: -`, `--jsonl -`) write no file: a working directory
    nobody may write in (`cd / && maskd run --jsonl -` as a user) is no reason to refuse."""
    import pwd

    from test_scan_cli import without_root_override

    locked = tmp_path / "locked"
    locked.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"device_id: door-1\nsnapshots: {{dir: '{locked}/snaps'}}\njsonl: {{path: '-'}}\n")
    locked.chmod(0o555)
    try:
        def maskd_in_locked(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*without_root_override(), sys.executable, "-m", "maskd",
                                   *args], capture_output=True, text=True, timeout=120,
                                  cwd=locked, env={**os.environ, "PYTHONPATH": str(REPO)})

        checked = maskd_in_locked("check-config", str(cfg))
        ran = maskd_in_locked("run", "--config", str(cfg), "--source", "demo", "--max-frames",
                              "1")
        cfg.write_text("device_id: door-1\njsonl: {path: '-'}\n")
        to_stdout = maskd_in_locked("run", "--config", str(cfg), "--source", "demo",
                                    "--max-frames", "1", "--jsonl", "-")
        checked_stdout = maskd_in_locked("check-config", str(cfg))
    finally:
        locked.chmod(0o755)
    said = f"snapshots.dir {locked}/snaps: cannot save snapshots there: Permission denied"
    assert checked.returncode == 0 and checked.stdout == f"OK: {cfg}\n", checked.stderr
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert (f"{cfg}: warning: {said} (as user {user}; the service may run as another)\n"
            in checked.stderr), checked.stderr
    assert ran.returncode == EX_CONFIG and ran.stderr == f"maskd run: {said}\n", ran.stderr
    assert checked_stdout.returncode == 0 and "jsonl" not in checked_stdout.stderr, \
        checked_stdout.stderr
    assert to_stdout.returncode == 0, to_stdout.stderr


def test_events_and_state_behind_a_link_to_nowhere_are_refused_by_both(tmp_path):
    """Only pictures (snapshots.dir, preview.annotate_dir) wait for a stick that is not
    mounted yet; the events file and the state dir behind such a link stop both commands
    (78), in the same words, rather than an OK and a service that starts without them."""
    (tmp_path / "stick").symlink_to(tmp_path / "not-mounted")
    cases = [(f"jsonl: {{path: '{tmp_path}/stick/ev.jsonl'}}\n",
              f"jsonl.path {tmp_path}/stick/ev.jsonl: cannot write there: "),
             (f"state_dir: '{tmp_path}/stick/state'\n",
              f"state_dir {tmp_path}/stick/state: cannot keep the open violations there: ")]
    paths = []
    for i, (yaml, _) in enumerate(cases):
        paths.append(tmp_path / f"c{i}.yaml")
        paths[-1].write_text(f"device_id: door-1\n{yaml}")
    answers = maskd_each([call for path in paths for call in (("check-config", str(path)),
                                                              run_args(path))])
    why = f"{tmp_path}/stick is a link to {tmp_path}/not-mounted, which is not there\n"
    for i, (path, (_, says)) in enumerate(zip(paths, cases, strict=True)):
        checked, ran = answers[2 * i], answers[2 * i + 1]
        assert checked.returncode == EX_CONFIG and checked.stderr == f"{path}: {says}{why}", \
            checked.stderr
        assert ran.returncode == EX_CONFIG and ran.stderr == f"maskd run: {says}{why}", ran.stderr


def test_both_refuse_a_read_only_file_system_in_the_same_words(tmp_path):
    """check-config called a read-only mount a permission warning ('Permission denied (as user
    root; the service may run as another)', OK, exit 0: access() says EACCES there) where
    `run` stopped with exit 78 and 'Read-only file system'."""
    from mqtt_broker import read_only_disk

    mqtt = "mqtt: {url: 'mqtt://127.0.0.1:1'}\n"
    with read_only_disk(tmp_path / "ro") as ro:
        cases = [(f"state_dir: '{ro}'\n{mqtt}",
                  f"state_dir {ro}: cannot create the MQTT outbox there: Read-only file system\n"),
                 (f"state_dir: '{ro}/state'\n{mqtt}",
                  f"state_dir {ro}/state: cannot create the MQTT outbox there: Read-only file "
                  "system\n"),
                 (f"jsonl: {{path: '{ro}/e.jsonl'}}\n",
                  f"jsonl.path {ro}/e.jsonl: cannot write there: Read-only file system\n"),
                 # these three: check-config OK, run 0 with 'a failing SD card?' at the first
                 # write, where docs/service.md promised exit 78 for a folder outside the
                 # sandbox's ReadWritePaths=
                 (f"state_dir: '{ro}/state'\n",
                  f"state_dir {ro}/state: cannot keep the open violations there: Read-only file "
                  "system\n"),
                 (f"snapshots: {{dir: '{ro}/snaps'}}\n",
                  f"snapshots.dir {ro}/snaps: cannot save snapshots there: Read-only file system\n"),
                 (f"preview: {{annotate_dir: '{ro}/clips'}}\n",
                  f"preview.annotate_dir {ro}/clips: cannot record clips there: Read-only file "
                  "system\n")]
        paths = [tmp_path / f"ro{i}.yaml" for i in range(len(cases))]
        for path, (yaml, _) in zip(paths, cases, strict=True):
            state = "" if "state_dir" in yaml else f"state_dir: '{tmp_path / 'state'}'\n"
            path.write_text(f"device_id: door-1\n{state}{yaml}")
        answers = maskd_each([call for path in paths
                              for call in (("check-config", str(path)), run_args(path))])
        from maskd.commands.check_config import unwritable
        from maskd.config import parse_config

        mapped = parse_config({"cameras": {"front": {"source": {"kind": "demo"}, "preview": {
            "annotate_dir": str(ro / "c")}}}})
        assert [line for line, _, _ in unwritable(mapped)] == [
            f"cameras.front.preview.annotate_dir {ro}/c: cannot record clips there: Read-only "
            "file system"]
    for i, (path, (yaml, says)) in enumerate(zip(paths, cases, strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        assert checked.returncode == ran.returncode == EX_CONFIG, (yaml, checked.stderr, ran.stderr)
        assert checked.stderr == f"{path}: {says}", checked.stderr
        assert f"maskd run: {says}" in ran.stderr, ran.stderr


def test_both_refuse_a_state_dir_or_jsonl_path_nothing_can_be_made_in(tmp_path):
    """check-config said OK where `run` stopped at once (exit 78): it now looks at them as
    `run` makes them, with `run`'s words, and creates nothing itself."""
    afile, adir = tmp_path / "afile", tmp_path / "adir"
    afile.write_text("")
    adir.mkdir()
    mqtt = "mqtt: {url: 'mqtt://127.0.0.1:1'}\n"
    cases = [
        (f"state_dir: '{afile}'\n{mqtt}", f"state_dir {afile}: cannot create the MQTT outbox "
         "there: File exists"),
        (f"state_dir: '{afile}/sub'\n{mqtt}", f"state_dir {afile}/sub: cannot create the MQTT "
         "outbox there: Not a directory"),
        ("state_dir: /proc/maskd-state\n" + mqtt,  # run said 'No such file or directory'
         "state_dir /proc/maskd-state: cannot create the MQTT outbox there: a virtual file "
         "system: nothing can be created there\n"),
        (f"jsonl: {{path: '{adir}'}}\n", f"jsonl.path {adir}: cannot write there: Is a directory"),
        (f"jsonl: {{path: '{afile}/e.jsonl'}}\n",  # run said 'File exists' (mkdir of its folder)
         f"jsonl.path {afile}/e.jsonl: cannot write there: Not a directory"),
        ("jsonl: {path: /proc/nodir/e.jsonl}\n",
         "jsonl.path /proc/nodir/e.jsonl: cannot write there: a virtual file system: nothing "
         "can be created there\n"),
    ]
    paths = [tmp_path / f"bad{i}.yaml" for i in range(len(cases))]
    for path, (yaml, _) in zip(paths, cases, strict=True):
        path.write_text(yaml)
    answers = maskd_each([call for path in paths
                          for call in (("check-config", str(path)), run_args(path))])
    for i, (path, (yaml, says)) in enumerate(zip(paths, cases, strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        assert checked.returncode == ran.returncode == EX_CONFIG, (yaml, checked.stderr, ran.stderr)
        assert checked.stderr.startswith(f"{path}: {says}"), (yaml, checked.stderr)
        assert checked.stderr.count("\n") == 1, checked.stderr
        assert f"maskd run: {says}" in ran.stderr, (yaml, ran.stderr)
    fresh = tmp_path / "new" / "deeper"
    path.write_text(f"state_dir: '{fresh}/state'\njsonl: {{path: '{fresh}/e.jsonl'}}\n{mqtt}"
                    "device_id: door-1\n")  # not the host name, which may be a stock one
    checked = maskd("check-config", str(path))
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    assert not (tmp_path / "new").exists()  # run creates them; check-config does not


def test_both_name_the_first_cameras_clip_folder_by_the_key_the_file_has(tmp_path):
    """A top-level preview.annotate_dir is the first camera's (docs/config.md, Several
    cameras): one nothing can be made in was told as 'cameras.front.preview.annotate_dir',
    a key the file does not have, by check-config and run alike."""
    path = tmp_path / "two.yaml"
    path.write_text("device_id: door-1\npreview: {annotate_dir: /proc/clips}\ncameras:\n"
                    "  front: {source: {kind: demo}}\n"
                    "  back: {source: {kind: demo, fps: 10}, preview: {annotate_dir: /proc/c2}}\n")
    checked, ran = maskd_each([("check-config", str(path)),
                               ("run", "--config", str(path), "--max-frames", "1")])
    why = "cannot record clips there: a virtual file system: nothing can be created there"
    says = [f"preview.annotate_dir /proc/clips: {why}",
            f"cameras.back.preview.annotate_dir /proc/c2: {why}"]
    assert checked.returncode == EX_CONFIG and checked.stderr == "".join(
        f"{path}: {line}\n" for line in says), checked.stderr
    assert ran.returncode == EX_CONFIG and ran.stderr == "".join(
        f"maskd run: {line}\n" for line in says), ran.stderr


def test_both_name_a_source_file_run_cannot_read(tmp_path):
    """A file source `run` stops on at once (exit 78): check-config said OK to all of them, and
    `run` said 'x.mp4: no such file' without the camera's key, a name too long for the file
    system as a bare '[Errno 36] File name too long: <the whole name>', and retried a camera
    index "²" (isdigit(), but no int()) for ever. A single image or a name no file system takes
    is refused by both; a missing file, or a folder without images, is a warning in
    check-config, as a missing model file is (it may be there on the device, or in the
    service's working directory)."""
    (tmp_path / "photo.jpg").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "linked.mp4").symlink_to(tmp_path / "nas" / "0800.mp4")  # a disk not mounted
    (tmp_path / "album").symlink_to(tmp_path / "nas" / "album")
    long = "x" * 300
    cases = [  # (cameras: map or source, what both say, refused by check-config)
        (f"source: {{uri: '{tmp_path}/photo.jpg'}}",
         f"source: {tmp_path}/photo.jpg: a single image is not a source", True),
        (f"source: {{uri: '{tmp_path}/{long}.mp4'}}", "source: '", True),
        ("cameras:\n  a: {source: {kind: demo}}\n"
         f"  b: {{source: {{kind: images, uri: '{tmp_path}/photo.jpg'}}}}",
         f"cameras.b.source: {tmp_path}/photo.jpg: not a folder", True),
        (f"source: {{uri: '{tmp_path}/gone.mp4'}}",
         f"source: {tmp_path}/gone.mp4: no such file, folder or device", False),
        ("cameras:\n  a: {source: {kind: demo}}\n"
         f"  b: {{source: {{uri: '{tmp_path}/gone'}}}}",
         f"cameras.b.source: {tmp_path}/gone: no such file, folder or device", False),
        ("source: {uri: '\u00b2'}", "source: \u00b2: no such file, folder or device", False),
        (f"source: {{uri: '{tmp_path}/linked.mp4'}}",  # was 'no such file', of a name ls shows
         f"source: {tmp_path}/linked.mp4 is a link to {tmp_path}/nas/0800.mp4, which is not "
         "there", False),
        (f"source: {{kind: images, uri: '{tmp_path}/empty'}}",  # images may come on the device
         f"source: {tmp_path}/empty: no images (", False),
        (f"source: {{kind: images, uri: '{tmp_path}/gone'}}",  # was 'not a folder'
         f"source: {tmp_path}/gone: no such folder", False),
        (f"source: {{kind: images, uri: '{tmp_path}/album'}}",  # was 'no such folder'
         f"source: {tmp_path}/album is a link to {tmp_path}/nas/album, which is not there",
         False),
    ]
    paths = [tmp_path / f"bad{i}.yaml" for i in range(len(cases))]
    for path, (yaml, _, _) in zip(paths, cases, strict=True):
        path.write_text(f"state_dir: {tmp_path / 'state'}\n{yaml}\n", encoding="utf-8")
    answers = maskd_each([call for path in paths for call in (
        ("check-config", str(path)), ("run", "--config", str(path), "--max-frames", "1"))])
    for i, (path, (yaml, says, refused)) in enumerate(zip(paths, cases, strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        assert ran.returncode == EX_CONFIG, (yaml, ran.returncode, ran.stderr[-2000:])
        assert f"maskd run: {says}" in ran.stderr and "Errno" not in ran.stderr, (yaml, ran.stderr)
        said = f"{path}: {says}" if refused else f"{path}: warning: {says}"
        assert checked.returncode == (EX_CONFIG if refused else 0), (yaml, checked.stderr)
        assert said in checked.stderr, (yaml, checked.stderr)
        for r in (checked, ran):
            # the long name is never said whole; tmp_path, said up to three times in a line
            # (the config, a link and where it leads), counts as one character
            assert all(len(line.replace(str(tmp_path), "T")) < 300
                       for line in r.stderr.splitlines()), r.stderr
            assert "Traceback" not in r.stderr, r.stderr


def test_a_model_name_too_long_to_look_up_is_said_with_its_key(tmp_path):
    """check-config warns of a model file it cannot check ('auto falls back to BlazeFace' for
    detector.model); `run` said '[Errno 36] File name too long: <the whole name>' without the
    key, and with detector kind auto stopped instead of falling back as check-config said."""
    long = f"{tmp_path}/{'m' * 300}"
    cases = [  # (config, what run says, or None: run starts)
        (f"classifier: {{model: '{long}.tflite'}}", "maskd run: classifier.model: '"),
        (f"detector: {{kind: ssd, model: '{long}.tflite'}}", "maskd run: detector.model: '"),
        (f"detector: {{model: '{long}.onnx'}}", None),  # auto: BlazeFace, as check-config said
    ]
    paths = [tmp_path / f"long{i}.yaml" for i in range(len(cases))]
    for path, (yaml, _) in zip(paths, cases, strict=True):
        path.write_text(f"state_dir: {tmp_path / 'state'}\n{yaml}\n")
    answers = maskd_each([call for path in paths
                          for call in (("check-config", str(path)), run_args(path))])
    for i, (path, (yaml, says)) in enumerate(zip(paths, cases, strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        key = "classifier.model" if "classifier" in yaml else "detector.model"
        assert checked.returncode == 0 and f"{path}: warning: {key}: " in checked.stderr, (
            yaml, checked.stderr)
        if says is None:
            assert ran.returncode == 0 and "face detector: blazeface" in ran.stderr, ran.stderr
            continue
        assert ran.returncode == EX_CONFIG and says in ran.stderr, (yaml, ran.stderr)
        said = ran.stderr.splitlines()[-1].removeprefix("maskd run: ")
        assert checked.stderr == f"{path}: warning: {said}\n", (checked.stderr, said)
        assert "Errno" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
        assert all(len(line) < 300 for line in ran.stderr.splitlines()), ran.stderr


def test_a_missing_model_of_scans_mean_is_said_by_check_config_as_scan_says_it(tmp_path):
    """classifier.still_extra_models (scan's second draw) got no word from check-config; scan
    then stopped on it (exit 2). Now check-config warns with scan's line (run does not use it)."""
    gone = tmp_path / "gone.tflite"
    path = tmp_path / "c.yaml"
    path.write_text(f"device_id: door-1\nclassifier: {{still_extra_models: ['{gone}']}}\n")
    says = (f"classifier.still_extra_models: {gone}: model file not found ([] scans with "
            "classifier.model alone)")
    checked, scanned = maskd_each([("check-config", str(path)),
                                   ("scan", "--config", str(path), "--detector", "blazeface",
                                    str(tmp_path / "x.jpg"))])
    assert checked.returncode == 0 and checked.stderr == f"{path}: warning: {says}\n", checked.stderr
    assert scanned.returncode == 2 and f"maskd scan: {says}" in scanned.stderr, scanned.stderr


def test_a_model_file_that_cannot_be_opened_is_one_line_naming_its_key(tmp_path):
    """`run` (scan, classify, doctor alike) said '/x.tflite: model file not found' without the
    key (an SSD's 'SSD model file not found', a BlazeFace file's 'cannot load TFLite model:
    Could not open ...'), where check-config warned "'classifier.model': /x.tflite does not
    exist here": two wordings of one fact, only one naming what to change. Now one line from
    one rule: check-config's warning (the file may be there on the device) is run's line, and
    where the command line gave the file, scan, classify and run name the option instead."""
    gone, onnx, folder = tmp_path / "gone.tflite", tmp_path / "gone.onnx", tmp_path / "models"
    folder.mkdir()
    cases = [  # (config, what both say)
        (f"classifier: {{model: '{gone}'}}", f"classifier.model: {gone}: model file not found"),
        (f"classifier: {{model: '{folder}'}}",
         f"classifier.model: {folder}: a folder, not a model file"),
        (f"detector: {{kind: ssd, model: '{gone}'}}", f"detector.model: {gone}: model file not found"),
        (f"detector: {{kind: yunet, model: '{onnx}'}}", f"detector.model: {onnx}: model file not found"),
        (f"detector: {{kind: centerface, model: '{onnx}'}}",
         f"detector.model: {onnx}: model file not found"),
        (f"detector: {{kind: blazeface, model: '{gone}'}}",
         f"detector.model: {gone}: model file not found"),
    ]
    paths = [tmp_path / f"model{i}.yaml" for i in range(len(cases))]
    for path, (yaml, _) in zip(paths, cases, strict=True):
        path.write_text(f"state_dir: {tmp_path / 'state'}\n{yaml}\n")
    image = str(tmp_path / "x.jpg")  # never reached: the models open first
    options = [  # (command line, what it says: the option, or the key its file set)
        (("classify", "--model", str(gone), image), f"maskd classify: --model: {gone}: model file not found"),
        (("scan", "--model", str(gone), "--detector", "blazeface", image),
         f"maskd scan: --model: {gone}: model file not found"),
        (("scan", "--detector", "ssd", "--detector-model", str(gone), image),
         f"maskd scan: --detector-model: {gone}: model file not found"),
        (("scan", "--config", str(paths[0]), image),
         f"maskd scan: classifier.model: {gone}: model file not found"),
        (("run", "--config", str(paths[3]), "--model", str(gone), "--max-frames", "1"),
         f"maskd run: --model: {gone}: model file not found"),
    ]
    answers = maskd_each([call for path in paths for call in (("check-config", str(path)),
                                                               run_args(path))]
                         + [call for call, _ in options])
    for i, (path, (yaml, says)) in enumerate(zip(paths, cases, strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        assert checked.returncode == 0 and checked.stderr == f"{path}: warning: {says}\n", (
            yaml, checked.stderr)
        assert ran.returncode == EX_CONFIG, (yaml, ran.returncode, ran.stderr[-2000:])
        assert ran.stderr.splitlines()[-1] == f"maskd run: {says}", (yaml, ran.stderr[-2000:])
    for (call, says), r in zip(options, answers[2 * len(cases):], strict=True):
        assert r.returncode == (EX_CONFIG if call[0] == "run" else 2), (call, r.stderr[-2000:])
        assert r.stderr.splitlines()[-1] == says, (call, r.stderr[-2000:])


def test_the_shipped_model_missing_is_warned_of_as_run_stops_on_it(tmp_path):
    """No classifier.model and no shipped model where $MASKD_MODEL_DIR points: check-config said
    OK, run stopped (exit 78)."""
    path = tmp_path / "plain.yaml"
    path.write_text("source: {kind: demo}\n")
    says = (f"{tmp_path / 'none' / 'maskd_mobilenetv2_int8.tflite'}: model file not found (set "
            "MASKD_MODEL_DIR to the folder holding it)")
    env = {**os.environ, "MASKD_MODEL_DIR": str(tmp_path / "none")}
    checked, ran = (subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True,
                                   text=True, timeout=120, env=env)
                    for args in (("check-config", str(path)), run_args(path)))
    assert checked.returncode == 0 and checked.stderr == f"{path}: warning: {says}\n", checked.stderr
    assert ran.returncode == EX_CONFIG and ran.stderr.splitlines()[-1] == f"maskd run: {says}"


def test_both_refuse_an_outbox_of_a_newer_layout_and_leave_it_as_it_was(tmp_path):
    """A downgrade: check-config (which install.sh runs before the restart) said OK, then `run`
    failed to store every new event; both now refuse it in one line, and the file and the WAL a
    killed newer maskd left are as they were."""
    from test_outbox import write_newer_outbox

    from maskd.outbox import OUTBOX_FILE, OUTBOX_LAYOUT

    state = tmp_path / "state"
    state.mkdir()
    before = write_newer_outbox(state, tmp_path / "newer")
    path = tmp_path / "newer.yaml"
    path.write_text(f"state_dir: '{state}'\nmqtt: {{url: 'mqtt://127.0.0.1:1'}}\n")
    says = f"outbox {state / OUTBOX_FILE} was written by a newer maskd (layout {OUTBOX_LAYOUT + 1}"
    checked = maskd("check-config", str(path))
    assert checked.returncode == EX_CONFIG and checked.stderr.startswith(f"{path}: {says}")
    assert checked.stderr.count("\n") == 1, checked.stderr
    ran = run(path)
    assert ran.returncode == EX_CONFIG and f"maskd run: {says}" in ran.stderr, ran.stderr
    for name, data in before.items():
        assert (state / name).read_bytes() == data, name


def test_auto_with_a_missing_yunet_file_falls_back_and_names_it(tmp_path):
    """`auto` handed YuNet's missing .onnx to BlazeFace ('cannot load TFLite model', exit 78)
    where docs/detectors.md promises the fallback and the name of the file it missed."""
    missing = tmp_path / "yunet.onnx"
    path = tmp_path / "auto.yaml"
    path.write_text(f"detector: {{model: '{missing}'}}\nsource: {{kind: demo}}\n")
    checked = maskd("check-config", str(path))
    assert checked.returncode == 0, checked.stderr
    assert f"detector.model: {missing}: model file not found (auto falls back to BlazeFace)" \
        in checked.stderr
    ran = run(path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "maskd run: face detector: blazeface" in ran.stderr
    assert f"YuNet's model file was not found (detector.model {missing};" in ran.stderr


def test_check_config_warns_of_a_yunet_found_nowhere_in_runs_words(tmp_path):
    """`detector.kind: yunet` without a file anywhere: OK and silence, then exit 78 from run."""
    path, checked, said = _check_and_run_with_yunet("yunet", tmp_path, tmp_path / "none.onnx")
    assert said.startswith("YuNet model not found ($MASKD_YUNET="), said
    assert checked == f"{path}: warning: 'detector.kind': yunet: {said}\n"


def _check_and_run_with_yunet(kind: str, tmp_path: Path, yunet: Path) -> tuple[Path, str, str]:
    """check-config and `run --max-frames 1` of a demo config with ``detector.kind`` and
    $MASKD_YUNET: (the config, check-config's stderr (exit 0), run's last line (exit 78))."""
    path = tmp_path / f"{kind}.yaml"
    path.write_text(f"detector: {{kind: {kind}}}\nsource: {{kind: demo}}\n")
    env = {**os.environ, "MASKD_YUNET": str(yunet), PW_VAR: "s3cret"}
    checked = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(path)],
                             capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    ran = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(path),
                          "--max-frames", "1"], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env=env)
    assert checked.returncode == 0 and ran.returncode == EX_CONFIG, (checked.stderr, ran.stderr)
    return path, checked.stderr, ran.stderr.strip().splitlines()[-1].removeprefix("maskd run: ")


@pytest.mark.parametrize("kind", ["yunet", "auto"])
def test_both_refuse_a_damaged_yunet_file_in_runs_words(tmp_path, kind):
    """A YuNet file cut short (a copy that stopped half-way) under its version's name: run
    stops on its checksum (exit 78, never restarted), and check-config, the step install.sh
    runs before the restart, said OK; under `auto` too (the file is there, so auto takes it).
    Then it warned (exit 0, the restart went ahead) while the same file under another name is
    exit 78 (opened as `run` opens it): it is here, so it is exit 78 too."""
    from maskd.modelfiles import KNOWN_YUNET

    name = next(iter(KNOWN_YUNET.values()))
    damaged = tmp_path / name
    damaged.write_bytes(b"\x08" * 100_000)
    path = tmp_path / f"{kind}.yaml"
    path.write_text(f"detector: {{kind: {kind}}}\nsource: {{kind: demo}}\n")
    env = {**os.environ, "MASKD_YUNET": str(damaged), PW_VAR: "s3cret"}
    checked, ran = (subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True,
                                   text=True, timeout=120, cwd=REPO, env=env)
                    for args in (("check-config", str(path)), run_args(path)))
    said = ran.stderr.strip().splitlines()[-1].removeprefix("maskd run: ")
    assert ran.returncode == EX_CONFIG and "is damaged (sha256" in said, ran.stderr
    assert (checked.returncode, checked.stderr) == (EX_CONFIG, f"{path}: {said}\n")


def test_a_damaged_older_yunet_is_mended_as_both_say(tmp_path, yunet_model):
    """$MASKD_YUNET at a damaged YuNet under an older version's name: run and check-config said
    `run maskd models fetch --dest D again`, but a fetch saves the current version under its
    own name, so the file maskd was pointed at stayed damaged and the advice came again. They
    name the file a fetch saves and to point maskd at it; done so (the fetch from a local
    copy, as --yunet-url allows), check-config passes."""
    from maskd.modelfiles import KNOWN_YUNET, YUNET_NAME

    old = tmp_path / next(n for n in KNOWN_YUNET.values() if n != YUNET_NAME)
    old.write_bytes(yunet_model.read_bytes()[:100_000])  # cut short
    path = tmp_path / "c.yaml"
    path.write_text("detector: {kind: yunet}\nsource: {kind: demo}\n")

    def both(model: Path) -> tuple[subprocess.CompletedProcess, ...]:
        env = {**os.environ, "MASKD_YUNET": str(model), PW_VAR: "s3cret"}
        return tuple(subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True,
                                    text=True, timeout=120, cwd=REPO, env=env)
                     for args in (("check-config", str(path)), run_args(path)))

    checked, ran = both(old)
    said = ran.stderr.strip().splitlines()[-1].removeprefix("maskd run: ")
    assert (checked.returncode, checked.stderr) == (EX_CONFIG, f"{path}: {said}\n"), ran.stderr
    new = tmp_path / YUNET_NAME
    assert said.endswith(f"`maskd models fetch --dest {tmp_path}` saves the current version as "
                         f"{new}: run it and set detector.model (or $MASKD_YUNET) to that file"), said
    fetch = subprocess.run([sys.executable, "-m", "maskd", "models", "fetch", "--dest", str(tmp_path),
                            "--yunet-url", yunet_model.as_uri()], capture_output=True, text=True,
                           timeout=120, cwd=REPO)
    assert fetch.returncode == 0 and new.is_file(), fetch.stderr
    checked, _ = both(new)
    assert checked.returncode == 0, checked.stderr


def test_check_config_names_relative_paths_and_where_the_service_reads_them(tmp_path):
    """A relative path is read from the working directory: `password_file: pw` beside the
    config passed check-config run from there, then the service (in /var/lib/maskd) failed."""
    from maskd.config import SERVICE_DIR

    unit = (REPO / "systemd" / "maskd.service").read_text()
    assert f"WorkingDirectory={SERVICE_DIR}\n" in unit
    (tmp_path / "pw").write_text("s3cret\n")
    path = tmp_path / "rel.yaml"
    path.write_text("device_id: door-1\nsnapshots: {dir: snaps}\n"  # device_id: not the host's
                    "mqtt: {url: 'mqtt://127.0.0.1:1', username: u, password_file: pw}\n")
    r = subprocess.run([sys.executable, "-m", "maskd", "check-config", path.name],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == (f"{path.name}: warning: relative paths (mqtt.password_file, snapshots.dir) "
                        f"are read from the working directory, here {tmp_path}; the service "
                        f"reads them from {SERVICE_DIR}\n")


def test_relative_paths_are_not_warned_of_in_the_services_own_folder(tmp_path, monkeypatch):
    """`cd /var/lib/maskd && maskd check-config ...` (the unit's WorkingDirectory=) reads the
    relative paths where the service does: nothing to warn of there, only elsewhere."""
    from maskd.commands import check_config
    from maskd.config import parse_config

    cfg = parse_config({"device_id": "door-1", "snapshots": {"dir": "snaps"}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(check_config, "SERVICE_DIR", tmp_path)
    assert check_config.relative_warning(cfg) == []
    monkeypatch.setattr(check_config, "SERVICE_DIR", tmp_path / "srv")
    assert check_config.relative_warning(cfg) == [
        f"warning: relative paths (snapshots.dir) are read from the working directory, here "
        f"{tmp_path}; the service reads them from {tmp_path / 'srv'}"]


def test_a_coral_missing_is_a_warning_and_a_missing_libedgetpu_is_refused(tmp_path):
    """A Coral not on the USB bus now is the hardware's state: `run` waits for it (then exits 75
    for a restart), so check-config warns in `run`'s words. libedgetpu.so.1 missing is a setup
    mistake: both refuse it with one line, exit 78 (check-config said OK, then `run` exited 78).
    A model edgetpu_compiler did not make runs on the CPU: a warning, as `run` gives."""
    import ctypes

    from coral import FakeCoral

    from maskd.classifier import default_model_path
    from maskd.tflite import EDGETPU_LIB, coral_devices

    if coral_devices():
        pytest.skip("a Coral is plugged in here")
    path = tmp_path / "coral.yaml"
    path.write_text("source: {kind: demo}\ndetector: {kind: blazeface}\nclassifier: {edgetpu: true}\n")
    try:
        ctypes.CDLL(EDGETPU_LIB)
    except OSError:
        checked = maskd("check-config", str(path))
        ran = maskd("run", "--config", str(path), "--max-frames", "1")
        says = ("classifier.edgetpu: EdgeTPU requested but libedgetpu.so.1 is not installed: "
                "install the Coral runtime (apt-get install libedgetpu1-std from "
                "https://packages.cloud.google.com/apt coral-edgetpu-stable), or set "
                "classifier.edgetpu: false to run on the CPU\n")
        assert checked.returncode == ran.returncode == EX_CONFIG, (checked.stderr, ran.stderr)
        assert checked.stderr == f"{path}: {says}" and ran.stderr == f"maskd run: {says}"
    fake = FakeCoral(tmp_path / "lib")
    compiled = tmp_path / "m_edgetpu.tflite"  # what edgetpu_compiler writes: its op by name
    compiled.write_bytes(b"TFL3 ... edgetpu-custom-op ...")
    no_coral = (f"{path}: warning: classifier.edgetpu: EdgeTPU requested but no Coral answers (no "
                "Coral USB (1a6e:089a / 18d1:9302) or PCIe (/dev/apex_0) found): plug in the USB "
                "Accelerator (or check the PCIe/M.2 driver and permissions); `maskd run` waits up "
                "to 90 s for it, asking every 5 s, then exit 75, systemd starts maskd again (is "
                "the Coral plugged in?)\n")
    for model, more in ((compiled, ""), (default_model_path(), (
            f"{path}: warning: classifier.edgetpu: {default_model_path()} is not compiled for the "
            "EdgeTPU (no edgetpu-custom-op in it), so it runs on the CPU although the Coral is "
            "asked for: compile it with edgetpu_compiler and name the *_edgetpu.tflite "
            "(docs/classifier.md), or set edgetpu: false\n"))):
        path.write_text("source: {kind: demo}\ndetector: {kind: blazeface}\n"
                        f"classifier: {{edgetpu: true, model: '{model}'}}\n")
        checked = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(path)],
                                 capture_output=True, text=True, timeout=120, cwd=REPO,
                                 env=fake.env())
        assert checked.returncode == 0 and checked.stdout == f"OK: {path}\n", checked.stderr
        assert checked.stderr == no_coral + more


def test_the_coral_messages_name_what_asked_for_it_and_what_each_command_does(tmp_path):
    """A missing libedgetpu: the way to the CPU is the switch that asked for the Coral, the
    config key the service reads (was: "run without --edgetpu" for a config without that option)
    or the option given to scan, classify or run. No Coral answering: scan and classify stop at
    once, so they do not say that `maskd run` waits 90 s for it (was: said by every command)."""
    import ctypes

    from coral import FakeCoral

    from maskd.tflite import EDGETPU_LIB, coral_devices

    if coral_devices():
        pytest.skip("a Coral is plugged in here")
    photo = tmp_path / "face.png"  # never read: the Coral is asked for first
    photo.write_bytes(b"")
    lib = ("EdgeTPU requested but libedgetpu.so.1 is not installed: install the Coral runtime "
           "(apt-get install libedgetpu1-std from https://packages.cloud.google.com/apt "
           "coral-edgetpu-stable), or ")
    both = tmp_path / "both.yaml"
    both.write_text("detector: {kind: ssd, model: face_edgetpu.tflite, edgetpu: true}\n"
                    "classifier: {edgetpu: true}\n")
    try:
        ctypes.CDLL(EDGETPU_LIB)
    except OSError:
        for args, says in (
                (("run", "--source", "demo", "--edgetpu"), "maskd run: classifier.edgetpu: "
                 f"{lib}leave out --edgetpu to run on the CPU\n"),
                (("classify", "--edgetpu", str(photo)), "maskd classify: classifier.edgetpu: "
                 f"{lib}leave out --edgetpu to run on the CPU\n"),
                (("scan", "--config", str(both), str(photo)), "maskd scan: classifier.edgetpu, "
                 f"detector.edgetpu: {lib}set classifier.edgetpu: false and set "
                 "detector.edgetpu: false to run on the CPU\n"),
                (("scan", "--config", str(both), "--edgetpu", str(photo)), "maskd scan: "
                 f"classifier.edgetpu, detector.edgetpu: {lib}leave out --edgetpu and set "
                 "detector.edgetpu: false to run on the CPU\n"),
                (("check-config", str(both)), f"{both}: classifier.edgetpu, detector.edgetpu: "
                 f"{lib}set classifier.edgetpu: false and set detector.edgetpu: false to run on "
                 "the CPU\n")):
            r = maskd(*args)
            assert r.returncode != 0 and r.stderr == says, (args, r.stderr)
    fake = FakeCoral(tmp_path / "lib")
    for command in ("classify", "scan"):
        r = subprocess.run([sys.executable, "-m", "maskd", command, "--edgetpu", str(photo)],
                           capture_output=True, text=True, timeout=120, cwd=REPO, env=fake.env())
        assert r.returncode == 2 and r.stderr == (
            f"maskd {command}: EdgeTPU requested but no Coral answers (Failed to load delegate "
            "from libedgetpu.so.1): plug in the USB Accelerator (or check the PCIe/M.2 driver and "
            "permissions)\n"), r.stderr


def assert_both_stop_in_runs_words(paths, answers, starts):
    """Each config's (check-config, run) answers, in `maskd_each`'s order: both exit 78, and
    check-config's one line is `run`'s last, beginning with `starts`."""
    for i, (path, start) in enumerate(zip(paths, starts, strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        assert checked.returncode == EX_CONFIG, (path, checked.stdout, checked.stderr)
        said = checked.stderr.splitlines()
        assert said[0].startswith(f"{path}: {start}") and len(said) == 1, checked.stderr
        assert ran.returncode == EX_CONFIG, (path, ran.stderr[-2000:])
        assert said[0] == f"{path}: " + ran.stderr.splitlines()[-1].removeprefix("maskd run: ")


def test_both_refuse_a_detector_model_that_is_here_but_no_model_run_can_use(tmp_path, yunet_model):
    """check-config said OK of a detector.model `run` stops on at once (exit 78): the
    classifier's .tflite put in the detector slot (kind blazeface, kind ssd), a truncated .onnx
    as YuNet; it looked only whether the file was there. A good YuNet is OK without a word (it
    printed OpenCV's '[ WARN:...] setPreferableTarget' line, which `run` keeps quiet)."""
    shipped = REPO / "models" / "maskd_mobilenetv2_int8.tflite"
    cut = tmp_path / "cut yunet.onnx"  # a copy that stopped half-way
    cut.write_bytes(yunet_model.read_bytes()[:100_000])
    cases = [("blazeface", shipped, f"{shipped}: not a BlazeFace full-range model"),
             ("ssd", shipped, f"{shipped}: an SSD post-process model has 4 outputs, this one has 2"),
             ("yunet", cut, f"{cut}: OpenCV cannot load this YuNet model: ")]
    paths = []
    for kind, model, _ in cases:
        path = tmp_path / f"{kind}.yaml"
        path.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
                        f"detector: {{kind: {kind}, model: '{model}'}}\n")
        paths.append(path)
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
                  f"detector: {{kind: yunet, model: '{yunet_model}'}}\n")
    *answers, good = maskd_each([call for path in paths
                                 for call in (("check-config", str(path)), run_args(path))]
                                + [("check-config", str(ok))])
    assert_both_stop_in_runs_words(paths, answers, [starts for _, _, starts in cases])
    assert (good.returncode, good.stdout, good.stderr) == (0, f"OK: {ok}\n", ""), good.stderr


def test_both_say_a_model_file_that_is_empty(tmp_path):
    """A model file of 0 bytes (a copy that failed, a full card) stopped `run` with the
    runtime's words: 'cannot load TFLite model: mmap of size 0 requested.The model allocation
    is null/empty', OpenCV's 'model_proto.has_graph()' for an .onnx; check-config said OK of
    the detector's. Both now say it is empty, naming the key, and `classify` the option."""
    tflite, onnx = tmp_path / "model.tflite", tmp_path / "yunet.onnx"
    for empty in (tflite, onnx):
        empty.write_bytes(b"")
    shutil.copy(REPO / "models" / "maskd_mobilenetv2_int8.json", tflite.with_suffix(".json"))
    paths = [tmp_path / "classifier.yaml", tmp_path / "detector.yaml"]
    paths[0].write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
                        f"classifier: {{model: '{tflite}'}}\n")
    paths[1].write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
                        f"detector: {{kind: yunet, model: '{onnx}'}}\n")
    *answers, classified = maskd_each(
        [call for path in paths for call in (("check-config", str(path)), run_args(path))]
        + [("classify", "--model", str(tflite), str(tmp_path))])
    for i, (path, line) in enumerate(zip(paths, (
            f"classifier.model: {tflite}: an empty file (0 bytes), not a model: copy it again",
            f"detector.model: {onnx}: an empty file (0 bytes), not a model: copy it again"),
            strict=True)):
        checked, ran = answers[2 * i:2 * i + 2]
        assert (checked.returncode, checked.stderr) == (EX_CONFIG, f"{path}: {line}\n"), checked
        assert ran.returncode == EX_CONFIG and ran.stderr.splitlines()[-1] == f"maskd run: {line}", ran
    assert classified.returncode == 2, classified
    assert classified.stderr.splitlines()[-1] == (f"maskd classify: --model: {tflite}: an empty "
                                                  "file (0 bytes), not a model: copy it again")


def test_both_say_a_found_model_file_that_is_empty(tmp_path):
    """The same of the files no key names, which an install or `maskd models fetch` onto a
    full card leaves empty: the shipped classifier in $MASKD_MODEL_DIR and the YuNet `auto`
    finds ($MASKD_YUNET, models/) were still said in the runtimes' words ('mmap of size 0
    requested', 'model_proto.has_graph()')."""
    shipped = tmp_path / "models" / "maskd_mobilenetv2_int8.tflite"
    shipped.parent.mkdir()
    shipped.write_bytes(b"")
    shutil.copy(REPO / "models" / "maskd_mobilenetv2_int8.json", shipped.with_suffix(".json"))
    yunet = tmp_path / "my yunet.onnx"  # a pinned name is checked by its hash first
    yunet.write_bytes(b"")
    path = tmp_path / "maskd.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MASKD_MODEL_DIR", "MASKD_YUNET")}
    for extra, empty in (({"MASKD_MODEL_DIR": str(shipped.parent)}, shipped),
                         ({"MASKD_YUNET": str(yunet)}, yunet)):
        line = f"{empty}: an empty file (0 bytes), not a model: copy it again"
        for args, said in ((("check-config", str(path)), f"{path}: {line}"),
                           (run_args(path), f"maskd run: {line}")):
            r = subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True,
                               text=True, timeout=120, cwd=REPO, env={**env, **extra})
            assert r.returncode == EX_CONFIG and r.stderr.splitlines()[-1] == said, r.stderr


def test_both_refuse_a_classifier_model_that_is_here_but_no_model_run_can_use(tmp_path):
    """check-config said OK of a classifier.model `run` stops on at once (exit 78): a file
    that is no TFLite model, one without its sidecar, one whose sidecar names another input
    size; `check-config && systemctl restart maskd` started a service that stopped."""
    shipped = REPO / "models" / "maskd_mobilenetv2_int8.tflite"
    sidecar = json.loads(shipped.with_suffix(".json").read_text())
    garbage, bare, resized = (tmp_path / f"{n}.tflite" for n in ("garbage", "bare", "resized"))
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))  # an .h5 renamed
    garbage.with_suffix(".json").write_text(json.dumps(sidecar))
    shutil.copy(shipped, bare)
    shutil.copy(shipped, resized)
    resized.with_suffix(".json").write_text(json.dumps({**sidecar, "input_size": 160}))
    paths = []
    for model in (garbage, bare, resized):
        path = tmp_path / f"{model.stem}.yaml"
        path.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
                        f"classifier: {{model: '{model}'}}\n")
        paths.append(path)
    answers = maskd_each([call for path in paths
                          for call in (("check-config", str(path)), run_args(path))])
    assert_both_stop_in_runs_words(paths, answers, (
        f"{garbage}: cannot load TFLite model: ",
        f"{bare}: its sidecar bare.json (labels, input size, normalisation) is missing",
        f"{resized}: model input (1, 128, 128, 3) does not match the sidecar's input_size 160"))
    closed = subprocess.run(f"{sys.executable} -m maskd check-config {paths[0]} 2>&-", shell=True,
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert closed.returncode == EX_CONFIG, closed  # no stderr (2>&-): the same answer
    ok = tmp_path / "ok.yaml"  # the shipped model: OK, without TFLite's XNNPACK line
    ok.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
                  f"classifier: {{model: '{shipped}'}}\n")
    r = maskd("check-config", str(ok))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"OK: {ok}\n", ""), r.stderr
    r = subprocess.run(f"{sys.executable} -m maskd check-config {ok} 2>&-", shell=True,
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert (r.returncode, r.stdout) == (0, f"OK: {ok}\n"), r  # was a traceback, exit 1


def test_a_sidecar_this_user_cannot_read_is_a_warning_as_the_model_file_is(tmp_path):
    """check-config run as a user who cannot read the classifier's model file warns and says
    OK (the service's user may read it); one who could read the model but not its sidecar got
    exit 78 and `[Errno 13] Permission denied: '...'`. Both are the one warning now, and `run`
    (which cannot start without it) stops in the same words."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] \
        if os.geteuid() == 0 else []
    shipped = REPO / "models" / "maskd_mobilenetv2_int8.tflite"
    model = tmp_path / "mine.tflite"
    shutil.copy(shipped, model)
    shutil.copy(shipped.with_suffix(".json"), model.with_suffix(".json"))
    model.with_suffix(".json").chmod(0)
    tmp_path.chmod(0o755)
    path = tmp_path / "maskd.yaml"
    path.write_text(f"source: {{kind: demo}}\nclassifier: {{model: '{model}'}}\n")
    said = f"{model.with_suffix('.json')}: model sidecar not readable by this user"
    r = subprocess.run([*drop, sys.executable, "-m", "maskd", "check-config", str(path)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"{path}: warning: classifier.model: {said}\n", r.stderr
    r = subprocess.run([*drop, sys.executable, "-m", "maskd", *run_args(path)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == EX_CONFIG and r.stderr.splitlines()[-1] == (
        f"maskd run: classifier.model: {said}"), r.stderr
