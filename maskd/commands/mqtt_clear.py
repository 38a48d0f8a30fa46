"""`maskd mqtt-clear`: remove a camera's retained topics from the broker (docs/mqtt.md).

Retained messages stay on the broker until someone replaces them: a renamed or removed camera
would otherwise stay in Home Assistant forever (its discovery config) with its last state. This
sends an empty retained message (QoS 1, waiting for each PUBACK) to every retained topic of the
camera: those maskd's topic layout names (``Topics.retained()``) and whatever a short
subscription to ``<prefix>/<device_id>/<camera>/#`` and the camera's discovery topics finds
(older layouts' leftovers). Then it subscribes again to check that nothing came back. What
the subscription finds counts only once a message published under it has come back: a user
the broker lets subscribe but not read would see nothing and clear a running camera.

A running maskd publishes its topics again at once, so a camera whose availability says
``online`` is refused (exit 75) unless ``--force``. Exit 0 done, 1 the broker could not be
reached, refused the connection or a topic, 75 a camera is online, 78 the config is invalid,
74 the output could not be written (a full disk, a closed stdout: before anything is cleared
when the first line cannot be). A reader that goes away after the first line (``| head -1``)
does not change the exit code: the check afterwards still decides it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from maskd.commands import OutputError, print_line
from maskd.config import EX_CONFIG, Config, ConfigError, Id, given_or_installed, load_config
from maskd.journal import error_line, warning_line
from maskd.mqtt.homeassistant import Topics

EX_BROKER = 1
EX_ONLINE = 75  # EX_TEMPFAIL: stop maskd, then try again
ANSWER_TIMEOUT_S = 8.0  # SUBACK / PUBACK
SETTLE_S = 0.3  # retained messages come right after the SUBACK: this long without one ends a scan
PROBE = "mqtt-clear-probe"  # under each camera's topics: does what is published there come back?
PROBE_WAIT_S = 3.0  # a broker delivers it in milliseconds; not back by then, nothing is cleared


@dataclass
class Plan:
    """What one run looks at and what it removes."""

    cameras: list[str]
    known: list[str]  # the layout's retained topics: cleared even when the scan saw nothing
    patterns: list[str]  # subscribed to find what is really retained
    device_status: str  # <prefix>/<device_id>/status: the process's, in the cameras: layout
    clear_device: bool  # without --camera: the process status topics go too
    owns_device: bool  # a cameras: map: the device status is this config's process's
    topics: dict[str, Topics] = field(default_factory=dict)
    by_name: list[str] = field(default_factory=list)  # known topics in patterns for RabbitMQ 3 only

    def probes(self) -> tuple[str, ...]:
        """One topic under each camera's subscribed tree, for the read-back check."""
        return tuple(f"{t.availability.rsplit('/', 1)[0]}/{PROBE}" for t in self.topics.values())

    def said_denied(self, denied: list[str]) -> list[str]:
        """The ``denied`` patterns worth a warning: a topic looked at by name only for RabbitMQ
        3 is said through the wildcard of the plan that holds it, not once more on its own."""
        from paho.mqtt.client import topic_matches_sub

        trees = [t for t in self.patterns if t not in self.by_name]
        return [d for d in denied if d not in self.by_name
                or not any(topic_matches_sub(tree, d) for tree in trees)]

    def ours(self, topic: str, found: dict[str, bytes]) -> bool:
        """A found topic belongs to what is cleared (the device status only without --camera).

        A single-camera config's process never publishes the device status: there it is an
        earlier ``cameras:`` map's leftover, or, while it says ``online``, the status of
        another maskd running a ``cameras:`` map on this device, which is left alone.
        """
        if topic in (self.device_status, f"{self.device_status}/detail"):
            return self.clear_device and not self.other_process(found)
        return True

    def other_process(self, found: dict[str, bytes]) -> bool:
        """The device status says ``online`` but belongs to no process of this config."""
        return not self.owns_device and found.get(self.device_status) == b"online"


def plan(cfg: Config, camera: str | None) -> Plan:
    mq = cfg.mqtt
    names = [camera] if camera else [c.camera for c in cfg.cameras_resolved()]
    base = f"{mq.prefix}/{cfg.device_id}"
    device_status = f"{base}/status"
    p = Plan(names, [], [device_status, f"{device_status}/detail"], device_status,
             clear_device=camera is None, owns_device=cfg.multi_camera)
    for name in names:
        # The single-camera layout's topics: the camera's status/detail (its process status
        # there) is a leftover worth removing in either layout.
        t = p.topics[name] = Topics.build(mq, cfg.device_id, name, device_status=False)
        p.known += t.retained()
        p.patterns += [f"{base}/{name}/#",
                       # device-based discovery and any per-component one under the same id
                       f"{mq.discovery_prefix}/+/{mq.prefix}_{cfg.device_id}_{name}/#"]
    if p.clear_device and p.owns_device:
        p.known += [device_status, f"{device_status}/detail"]
    p.known = list(dict.fromkeys(p.known))
    # each known topic on its own too: RabbitMQ 3 hands a retained message only to a
    # subscription naming its topic, never to a wildcard (a running camera went unseen)
    p.by_name = [t for t in p.known if t not in p.patterns]
    p.patterns += p.by_name
    return p


def online_cameras(p: Plan, found: dict[str, bytes]) -> list[str]:
    """Which of the plan's cameras (and the process) look alive from their retained status.

    A camera's availability (``<camera>/status``) is the last will in the single-camera layout
    (its ``status/detail`` sits next to it, saying ``online``), so ``online`` there means
    running. In the ``cameras:`` layout the last will is the device status: a killed process
    leaves its cameras ``online`` but the device ``offline``. A detail that says ``offline`` is
    an earlier single-camera run's leftover, no proof of that layout: the device status decides.
    """
    device = found.get(p.device_status)
    out = []
    for name, t in p.topics.items():
        if found.get(t.availability) != b"online":
            continue
        if _says_online(found.get(t.status_detail)) or device != b"offline":
            out.append(f"camera {name} ({t.availability} = online)")
    if p.clear_device and p.owns_device and device == b"online":
        out.append(f"the maskd process ({p.device_status} = online)")
    return out


def _says_online(detail: bytes | None) -> bool:
    """A status/detail that does not say ``"state": "offline"`` (unreadable ones count as
    online: refusing is the safe side)."""
    if detail is None:
        return False
    try:
        return json.loads(detail).get("state") != "offline"
    except (ValueError, AttributeError):
        return True


class _Clearer:
    """Scans and clears over a connected doctor probe's client (maskd.commands.doctor)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cond = threading.Condition()
        self.retained: dict[str, bytes] = {}
        # published while the scan ran (delivered with retain 0): a maskd that came online
        # meanwhile says so only here, and its retained topics are the ones it just set
        self.live: dict[str, bytes] = {}
        self.last_msg = 0.0
        self.scanning = False
        self.answers: dict[int, Any] = {}  # mid -> reason code(s) of its SUBACK / PUBACK
        self.nonce = f"{time.time_ns()}".encode()
        self.came_back: set[str] = set()  # probe topics whose message was delivered to us
        client.on_message = self._on_message
        client.on_subscribe = self._on_answer
        client.on_publish = self._on_answer

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        with self.cond:
            if msg.topic.endswith(f"/{PROBE}") and msg.payload == self.nonce:
                self.came_back.add(msg.topic)
                self.cond.notify_all()
            elif self.scanning and msg.retain and msg.payload:
                self.retained[msg.topic] = msg.payload
                self.last_msg = time.monotonic()
            elif self.scanning:
                self.live[msg.topic] = msg.payload

    def _on_answer(self, client, userdata, mid, reason, properties) -> None:  # noqa: ANN001
        with self.cond:
            self.answers[mid] = reason
            self.cond.notify_all()

    def _wait_answers(self, mids: list[int]) -> bool:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        with self.cond:
            return self.cond.wait_for(lambda: all(m in self.answers for m in mids),
                                      max(0.0, deadline - time.monotonic()))

    def scan(self, patterns: list[str], wait: float, probes: tuple[str, ...] = ()
             ) -> tuple[dict[str, bytes], list[str], list[str]]:
        """Retained messages under ``patterns``: (topic -> payload, patterns we may not read,
        the ``probes`` a message published there never came back on).

        Never shorter than the settle time, whatever ``wait`` says: a scan that ends before
        the retained messages arrive sees no online camera and no leftover, and the check
        afterwards none left (``--wait 0`` cleared a running camera and said none were there).
        A SUBACK grants nothing to read: mosquitto's acl_file grants a subscription to a user
        without read rights and then delivers nothing, which looked like a broker with nothing
        retained (a running camera's topics cleared, 'none were there', exit 0); so a probe
        topic under ``patterns`` gets a message (QoS 1, not retained) that must come back.
        """
        wait = max(wait, 2 * SETTLE_S)
        with self.cond:
            self.retained, self.live, self.scanning = {}, {}, True
        rc, mid = self.client.subscribe([(p, 1) for p in patterns])
        if rc != 0 or not self._wait_answers([mid]):
            raise ConnectionError("no SUBACK from the broker")
        reasons = self.answers[mid]
        denied = [p for p, r in zip(patterns, reasons, strict=False) if r.is_failure]
        for topic in probes:
            self.client.publish(topic, self.nonce, qos=1, retain=False)
        t0 = self.last_msg = time.monotonic()
        while True:
            now = time.monotonic()
            with self.cond:
                quiet = now - self.last_msg
                back = self.came_back.issuperset(probes)
            settled = quiet >= SETTLE_S and now - t0 >= 2 * SETTLE_S
            # at most max(wait, PROBE_WAIT_S), however the retained messages keep coming
            if (back or now - t0 >= PROBE_WAIT_S) and (settled or now - t0 >= wait):
                break
            time.sleep(0.05)
        self.client.unsubscribe(patterns)
        with self.cond:
            self.scanning = False
            return dict(self.retained), denied, [t for t in probes if t not in self.came_back]

    def clear(self, topics: list[str]) -> dict[str, str]:
        """Empty retained message on each topic, QoS 1; topic -> why it failed (none: all done).

        A publish that fails (the connection lost) ends the sending, not the answers already
        come: each topic sent is still judged by its own PUBACK, the rest is "connection lost"."""
        mids: dict[int, str] = {}
        unsent: list[str] = []
        for i, topic in enumerate(topics):
            info = self.client.publish(topic, b"", qos=1, retain=True)
            if info.rc != 0:
                unsent = topics[i:]
                break
            mids[info.mid] = topic
        if not unsent:  # a lost connection answers no more: nothing to wait for
            self._wait_answers(list(mids))
        failed = dict.fromkeys(unsent, "connection lost")
        for mid, topic in mids.items():
            reason = self.answers.get(mid)
            if reason is None:
                failed[topic] = ("connection lost before its PUBACK" if unsent else
                                 f"no PUBACK within {ANSWER_TIMEOUT_S:.0f} s")
            elif getattr(reason, "is_failure", False):
                failed[topic] = str(reason)
        return failed


class _Report:
    """The lines on stdout. A reader gone after the first line (``| head -1``) ends the report,
    not the run: the check afterwards still decides the exit code and what was not cleared is
    still named on stderr (its BrokenPipeError, a ConnectionError, read as the broker's: exit 1
    whatever was cleared). Gone before the first line, nothing is cleared: 74."""

    def __init__(self) -> None:
        self.started = self.gone = False

    def line(self, text: str) -> None:
        if self.gone:
            return
        try:
            print_line(text)
        except BrokenPipeError:
            if not self.started:
                raise OutputError("standard output is closed (broken pipe)") from None
            self.gone = True
        self.started = True


def order(topics: list[str], discovery_prefix: str) -> list[str]:
    """Discovery configs first (Home Assistant removes the entities before their state topics
    go empty), availability and process status last."""
    def key(t: str) -> int:
        if t.startswith(f"{discovery_prefix}/"):
            return 0
        return 2 if t.endswith(("/status", "/status/detail")) else 1
    return sorted(topics, key=key)


def main(args: argparse.Namespace) -> int:
    from maskd.commands.doctor import connect_probe

    path = given_or_installed(args.config)
    try:
        cfg = load_config(path)
        if args.camera is not None:
            from pydantic import TypeAdapter, ValidationError

            try:
                TypeAdapter(Id).validate_python(args.camera)
            except ValidationError:
                raise ConfigError(f"--camera {args.camera!r}: a camera name is 1-64 of "
                                  "A-Z a-z 0-9 _ -") from None
        if not cfg.mqtt.url:
            where = path or "the built-in defaults"
            if args.if_configured:
                # deploy/uninstall.sh: a maskd that never used a broker left nothing on one.
                _Report().line(f"mqtt-clear: mqtt.url is not set in {where}: no broker, "
                               "nothing to clear")
                return 0
            raise ConfigError(f"mqtt.url is not set in {where}: no broker to clear")
    except ConfigError as err:
        for line in str(err).splitlines():
            error_line(f"mqtt-clear: {line}")
        return EX_CONFIG

    p = plan(cfg, args.camera)
    url = cfg.mqtt.broker
    probe, failed = connect_probe(cfg, "mqtt-clear")
    if probe is None:
        error_line(f"mqtt-clear: {failed}")
        return EX_BROKER
    try:
        import paho.mqtt.client as mqtt

        cl, out = _Clearer(probe.client), _Report()
        version = "5" if probe.version == mqtt.MQTTv5 else "3.1.1"
        out.line(f"mqtt-clear: {url}, MQTT {version}, device {cfg.device_id}, "
                 f"camera(s) {', '.join(p.cameras)}")
        found, denied, unread = cl.scan(p.patterns, args.wait, p.probes())
        if probe.dropped:  # what it saw may be short: clear nothing on it
            raise ConnectionError("the connection was lost during the scan; nothing was cleared")
        for pattern in p.said_denied(denied):
            warning_line(f"mqtt-clear: WARNING: may not subscribe to {pattern}: clearing the known "
                        "topics without seeing what is there")
        blind = [t.rsplit("/", 1)[0] + "/#" for t in unread]
        if blind and not args.force:
            error_line(f"mqtt-clear: a message published under {', '.join(blind)} did not come "
                       "back: this user may subscribe there but not read (the broker's ACL?), so "
                       "whether a camera runs and what is retained cannot be seen; nothing was "
                       "cleared. Use a user that may read these topics, or --force to clear the "
                       "topics maskd's layout names without seeing them")
            return EX_BROKER
        alive = online_cameras(p, found | cl.live)  # a camera that came online during the scan
        if alive and not args.force:  # a dry run lists them all the same: it harms no camera
            then = (", so clearing them is refused (exit 75) until it is stopped, or with --force"
                    if args.dry_run else ". Stop it first (sudo systemctl stop maskd), or use "
                    "--force")
            error_line(f"mqtt-clear: {'; '.join(alive)}: a running maskd would publish its topics "
                       f"again{then} if it is not running (e.g. it was killed)")
            if not args.dry_run:
                return EX_ONLINE
        if p.clear_device and p.other_process(found):
            warning_line(f"mqtt-clear: leaving {p.device_status} (online): another maskd's, one "
                        "that runs a cameras: map on this device")
        present = [t for t in found if p.ours(t, found)]
        todo = order(list(dict.fromkeys([*present, *p.known])), cfg.mqtt.discovery_prefix)
        if args.dry_run:
            for t in order(present, cfg.mqtt.discovery_prefix):
                out.line(f"would clear {t}")
            out.line(f"mqtt-clear: dry run: {len(present)} retained topic(s) found, "
                     "nothing cleared")
            return 0
        failures = cl.clear(todo)
        try:
            left, _, _ = cl.scan(p.patterns, args.wait)
            lost = ""
        except ConnectionError as err:  # what the broker acknowledged is still worth naming
            left, lost = {}, str(err)
        # MQTT 3.1.1 acknowledges a publish its ACL denies like any other
        hint = "a running maskd publishes it again?" if version == "5" else (
            "the broker's ACL may not let this user publish there, which MQTT 3.1.1 does not "
            "report; or a running maskd publishes it again")
        for t in left:
            if p.ours(t, left) and t not in failures:
                failures[t] = f"still retained afterwards ({hint})"
        for t in order(present, cfg.mqtt.discovery_prefix):  # after the check: really gone
            if t not in failures:
                out.line(f"cleared {t}" + (" (acknowledged, not checked afterwards)" if lost
                                           else ""))
        for t, why in failures.items():
            error_line(f"mqtt-clear: NOT cleared {t}: {why}")
        if lost:
            error_line(f"mqtt-clear: {url}: cannot check afterwards: {lost}")
        if failures or lost:
            _say_dropped(probe)
            return EX_BROKER
        if blind:  # --force: sent, but neither what was there nor what is left could be seen
            out.line(f"mqtt-clear: {len(todo)} topic(s) of maskd's layout cleared without "
                     f"seeing them (this user may not read under {', '.join(blind)})")
            return 0
        out.line(f"mqtt-clear: {len(present)} retained topic(s) cleared"
                 + ("" if present else " (none were there)"))
        return 0
    except ConnectionError as err:
        error_line(f"mqtt-clear: {url}: {err}")
        _say_dropped(probe)
        return EX_BROKER
    finally:
        probe.close()


def _say_dropped(probe: Any) -> None:
    """Why the broker may have closed the connection: two mqtt-clears at once share the client
    id, and the broker drops the older ('no SUBACK from the broker', 'connection lost' alone
    blamed the broker)."""
    if probe.dropped:
        error_line(f"mqtt-clear: the broker closed the connection ({probe.dropped}): is another "
                   "`maskd mqtt-clear` running at the same time? Both connect as "
                   f"{probe.client_id}, and the broker drops the older of two clients with one "
                   "id; run one at a time")
