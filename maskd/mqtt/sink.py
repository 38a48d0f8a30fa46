"""MqttSink: violation events, availability and state to the building's MQTT broker.

Delivery is at-least-once and ordered: every event goes into the durable outbox first
(maskd.outbox; in its memory queue while the disk fails) and leaves it only on the broker's
PUBACK. One publisher thread owns the order: after every (re)connect it drops what paho
still held from the old connection and replays the outbox from its oldest row, so a
consumer that de-duplicates on (event_id, seq) sees each message once, in order. MQTT 5
where the broker speaks it, so a PUBACK can say "refused" (an ACL); refused events stay in
the outbox and are reported. Start-up never waits for the broker. docs/reliability.md lists
what is guaranteed and its limits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from maskd import __version__
from maskd.clock import Uptime, local_iso
from maskd.config import BrokerUrl, Config, ConfigError, MqttConfig, is_wildcard, parse_listen
from maskd.files import failed_write, write_atomically
from maskd.lograte import RateLimitedLog, Throttle
from maskd.mqtt.credentials import (
    CredentialFiles,
    broker_certificate_hint,
    client_certificate_hint,
)
from maskd.mqtt.homeassistant import UNSEEN_RESTARTS, Topics, discovery_config, parse_switch
from maskd.mqtt.schema import ViolationPayload, on_wire
from maskd.outbox import Outbox, Row
from maskd.types import (
    STOPS,
    EventSink,
    FaceCounts,
    LoopStats,
    RunControl,
    ViolationEvent,
    restart_end_time,
)

log = logging.getLogger(__name__)
_paho_log = logging.getLogger("maskd.mqtt.paho")

SESSION_FILE = "mqtt-session.json"
WINDOW = 50  # events handed to paho but not yet acknowledged
INFLIGHT = 20  # QoS 1 messages paho sends unacknowledged, unless the broker takes fewer
MAX_SNAPSHOTS = 32  # snapshots kept in memory waiting for their event to be published
REFUSED_RETRY_S = 60.0  # events the broker refused are offered again this often
SWITCH_LOG_EVERY_S = 1.0  # a detect/set change is logged at most this often per camera
# detect/state follows the switch at most this often per camera (a client flooding detect/set
# must not queue a retained pair per command ahead of the events)
DETECT_STATE_EVERY_S = 0.25
# Discovery goes again at most this often when Home Assistant's status says `online` (a
# client flooding that topic must not make maskd flood the broker with discovery configs).
REDISCOVER_EVERY_S = 1.0
# How often the publisher looks that the running marker (SESSION_FILE) is on disk: written again
# when its write failed (a full disk) or its file went (the state dir removed while running).
SESSION_CHECK_S = 10.0
# The broker away this long is a fault in the status line; a quick reconnect (a broker
# restart, a Wi-Fi roam) does not flap it.
DOWN_GRACE_S = 30.0
# Events the memory queue lost are a problem while the outbox's fault lasts and this long after
# the last loss: long enough for an automation that waits minutes to hear of it, not for good
# (it stayed for the rest of the run, months, after the disk and broker were long fine).
LOST_SHOWN_S = 3600.0
# the fault line of a broker away: the loop's last report before a reconnect may hold it
NOT_CONNECTED = "MQTT: broker not connected since "
UNSUPPORTED_PROTOCOL = 132  # CONNACK reason: what a 3.1.1-only broker answers to MQTT 5
# a CONNACK this long after the CONNECT comes from a broker that was stuck (an old one that left
# MQTT 5 unanswered answers 3.1.1 at once: RabbitMQ 3, amqtt in milliseconds)
LATE_CONNACK_S = 2.0
# ... but an old broker on a loaded host answers every 3.1.1 CONNECT late: after this many late
# answers in a row, MQTT 5 unanswered between them, the next one is kept (its answer)
LATE_311_DROPS = 2
UNSPECIFIED = 128  # DISCONNECT reason paho gives a connection that just ended
SESSION_TAKEN_OVER = 142  # DISCONNECT reason: another client connected with this client id
KEEPALIVE_TIMEOUT = 141  # paho's reason for a connection that heard nothing for keepalive_s
QOS_NOT_SUPPORTED = 155  # CONNACK reason: the listener takes no QoS 1 (mosquitto's max_qos 0)
QUOTA_EXCEEDED = "Quota exceeded"  # paho's name of PUBACK reason 0x97 (a broker's rate limit)

def _encode_jpeg(image: Any) -> bytes | None:
    import cv2  # the run loop already has it; imported here so this module stays light

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else None


def _root(topics: Topics) -> str:
    """A camera's topic root, ``<prefix>/<device_id>/<camera>``: what the session file keeps."""
    return topics.violation.removesuffix("/violation")


def _detect_said(ctl: RunControl) -> tuple[bool, bool]:
    """What detect/state and its attributes say: the switch and the schedule (the attributes
    name both, so a schedule that turns with the switch OFF is news too)."""
    return ctl.switch, ctl.scheduled


def _trigger(event_type: str, event_id: str, score: object, camera: object,
             end_reason: str | None) -> str:
    """The event entity's message (`violation/event`) for a start or an end."""
    score = round(float(score), 4) if isinstance(score, (int, float)) else None
    return _dumps({"event_type": event_type, "event_id": event_id, "score": score,
                   "camera": camera, "end_reason": end_reason})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def publish_size(topic: str, payload: str | bytes) -> int:
    """Bytes of the QoS 1 MQTT 5 PUBLISH maskd sends (no properties): what a broker's Maximum
    Packet Size counts, fixed header included."""
    body = payload.encode("utf-8") if isinstance(payload, str) else payload
    remaining = 2 + len(topic.encode("utf-8")) + 2 + 1 + len(body)  # topic, id, properties
    length_bytes = next(n for n in range(1, 5) if remaining < 128 ** n)
    return 1 + length_bytes + remaining


@dataclass
class _Camera:
    """What the sink keeps per camera: its topics, its detection switch, its retained state."""

    name: str
    topics: Topics
    control: RunControl
    open_events: dict[str, dict] = field(default_factory=dict)  # event id -> its attributes
    last_state: dict | None = None  # None: publish the next state whatever it is
    last_state_t: float = float("-inf")
    held: FaceCounts | None = None  # the newest counts the state interval held back
    violations: int | None = None  # people in violation, last published
    faces: int | None = None  # faces in view, last published
    # what detect/state and its attributes said last (``_detect_said``) and when
    detect: tuple[bool, bool] | None = None
    detect_t: float = float("-inf")
    loop_stats: LoopStats | None = None  # the loop's last report
    loop_mine: frozenset[str] = frozenset()  # this sink's lines in it (faults() as it was made)
    stats_t: float = float("-inf")  # when its stats were last published
    backlog: int = 0  # the outbox_depth its last stats told
    running: bool = True  # its loop has not ended
    counts: FaceCounts | None = None  # the loop's last counts, published or not


@dataclass
class _Sending:
    """The publisher thread's view of the current connection."""

    inflight: dict[int, tuple[int, str]] = field(default_factory=dict)  # mid -> (row id, topic)
    cursor: int = 0  # highest row id handed to paho on this connection
    gen: int = 0  # the connection (MqttSink._gen) this is about
    replay_upto: int = 0  # ids up to here existed before this connection: "buffered"
    next_stats: float = 0.0
    next_refused_retry: float = 0.0
    # the refused rows a retry offered and not yet answered; all taken, the next window goes
    # at once (a retry offered one window an interval: hours for a long refusal's backlog)
    retrying: set[int] = field(default_factory=set)
    retry_refused: bool = False  # one of them was refused again: wait the interval
    retried: bool = False  # a retry is under way (its windows follow one another)


def use_mqtt311(c: mqtt.Client) -> None:
    """Speak MQTT 3.1.1 from the next connect on (the broker refused MQTT 5). paho has no public
    switch; it flips the same field itself when it falls back from 3.1.1 to 3.1."""
    c._protocol = mqtt.MQTTv311
    c._clean_session = True


def use_mqtt5(c: mqtt.Client) -> None:
    """Speak MQTT 5 again from the next connect on (see ``use_mqtt311``)."""
    c._protocol = mqtt.MQTTv5


class _Client(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (for the log) and
    whether the broker answered its CONNECT."""

    last_error: OSError | None = None
    connack = False  # set by the sink's on_connect
    connect_sent = 0.0  # monotonic time of the last CONNECT
    socket_error = ""  # paho's last "failed to receive on socket" reason (it only logs it)
    malformed = ""  # why paho could not read a packet from the broker (it only logs it)

    def reconnect(self) -> mqtt.MQTTErrorCode:
        self.connack, self.socket_error, self.malformed = False, "", ""
        try:
            rc = super().reconnect()
        except OSError as err:
            self.last_error = err
            raise
        self.last_error = None
        self.connect_sent = time.monotonic()
        return rc

    def apply_receive_maximum(self, properties: Any) -> None:
        """At most as many unacknowledged QoS 1 messages as the broker's CONNACK allows (MQTT 5
        Receive Maximum; none said: INFLIGHT): a broker may cut a client that sends more
        (DISCONNECT 0x93), and paho 2 does not apply it itself. Called at the CONNACK, before
        anything is sent on the connection; the rest wait in paho's queue."""
        limit = getattr(properties, "ReceiveMaximum", INFLIGHT)
        self._max_inflight_messages = max(1, min(INFLIGHT, limit))


def receive_error(buf: str) -> str | None:
    """Why the connection broke, from paho's log line about it (paho only logs it; a broker's
    TLS alert is there), else None."""
    return buf.removeprefix(_RECEIVE_FAILED) if buf.startswith(_RECEIVE_FAILED) else None


_RECEIVE_FAILED = "failed to receive on socket: "


def plain_listener_hint(url: BrokerUrl, err: BaseException | None) -> str:
    """What to try when mqtts:// could not connect: a plain listener takes the TLS hello for a
    broken CONNECT and hangs up. One place for the sink's log and `maskd doctor`."""
    if url.tls and (isinstance(err, ConnectionResetError) or
                    isinstance(err, ssl.SSLError) and "WRONG_VERSION" in str(err)):
        return "; is that port a plain (non-TLS) listener? Then use mqtt://"
    return ""


class MqttSink(EventSink):
    """EventSink publishing to MQTT through the durable outbox; see the module docstring.

    One connection per process. Built for one camera (``camera``, ``control``) it is that
    camera's sink; with ``cameras`` (name -> its detection switch; the ``cameras:`` layout)
    each camera's loop gets its own view from ``for_camera``, and the connection's last will
    is the device-level status.
    """

    label = "MQTT"

    def __init__(
        self,
        mq: MqttConfig,
        device_id: str,
        camera: str,
        state_dir: Path,
        control: RunControl | None = None,
        model_name: str | None = None,
        cameras: dict[str, RunControl] | None = None,
        configuration_url: str | None = None,
    ) -> None:
        if not mq.url:
            raise ConfigError("mqtt.url is not set")
        self._mq = mq
        self._url = BrokerUrl.parse(mq.url)
        self._device_id = device_id
        self._model = model_name
        self._configuration_url = configuration_url
        device_status = cameras is not None
        if cameras is None:
            cameras = {camera: control if control is not None else RunControl()}
        self._cams = {name: _Camera(name, Topics.build(mq, device_id, name, device_status), ctl)
                      for name, ctl in cameras.items()}
        self._first = next(iter(self._cams.values()))
        self.topics = self._first.topics  # the single-camera layout's topics
        self._cam_by_set = {c.topics.detect_set: c for c in self._cams.values()}

        self._outbox = Outbox(state_dir, mq.outbox_max_events, mq.outbox_max_age_s,
                              memory_max=mq.memory_queue_max,
                              reserve_bytes=mq.outbox_reserve_kb * 1024)
        self._session_path = Path(state_dir) / SESSION_FILE
        self._previous_stop, previous_cams = self._read_previous_session()
        # How this run ends (on_stop): the worst any camera's loop told, and its words
        self._stop_kind, self._stop_why = "clean", ""
        self._uptime = Uptime()  # not the wall clock's: NTP's first sync on a Pi steps that
        self._session_lock = threading.Lock()
        self._session_ok = False  # the last write of the marker landed
        self._session_final = False  # the stop's marker is written: no running one after it
        self._next_session_check = 0.0  # monotonic (publisher thread)
        self._write_session(running=True)
        self._restarted: set[str] = set()  # ended `restart` from the outbox at start
        self._left_open: list[ViolationEvent] = []  # ... as events, for the other sinks
        # Home Assistant's event entity hears each start and end live; the `restart` ends come
        # before the first connect, so theirs wait for it (else that entity never sees them end).
        self._triggers: list[tuple[str, str]] = []
        left_open = self._end_left_open()
        # Cameras a killed run (or one whose stop the broker never heard) had and this config
        # has not: their retained availability and violation state would say online / ON for
        # ever (no last will covers a camera's own status in the cameras: layout, none its
        # violation, nor a broker that crashed). Marked once, on the first connect.
        self._dropped = sorted((previous_cams | left_open) - {_root(c.topics)
                                                             for c in self._cams.values()})

        self._q: queue.SimpleQueue = queue.SimpleQueue()  # ("ack", mid, reason) / ("wake", ...)
        self._conn_lock = threading.Lock()  # orders reconnects against event publishes
        self._connected = False
        # (wall, monotonic) time the link went down, or never came up; None while connected
        self._down: tuple[float, float] | None = (time.time(), time.monotonic())
        self._gen = 0  # bumped on every successful connect
        # the outbox's last id at that connect: what is stored after it is sent live
        self._replay_upto = 0
        self._closing = False
        self._close_lock = threading.Lock()  # close() runs once, whoever calls it
        self._closed = False
        self._open_cams = len(self._cams)  # cameras whose loop has not closed its view
        self._stop = threading.Event()
        self._acked = threading.Condition()  # notified when acknowledged rows leave the outbox
        self._active_lock = threading.RLock()
        # a camera's counts are sent by its loop and by the publisher thread's heartbeat: one at
        # a time, the heartbeat's read under it (``_counts_again``), never an older copy last
        self._state_lock = threading.RLock()
        self._snapshots: OrderedDict[int, tuple[str, bytes]] = OrderedDict()  # row -> topic, jpeg
        self._snap_lock = threading.Lock()
        self.reconnects = 0
        self._connected_at = 0.0
        self._short_sessions = 0  # consecutive connections that lasted < 5 s without a reason
        self._quick_drops = 0  # consecutive connections that lasted < 5 s, whatever the reason
        # MQTT 5 CONNECTs in a row that got no CONNACK (``_unanswered``), until one is answered;
        # and whether 3.1.1 is spoken on that guess, not on the broker's word (0x01)
        self._unanswered_v5 = 0
        self._guessed_311 = False
        self._said_guess = False  # said once until a connection is made (a TLS listener: for ever)
        # a 3.1.1 connection made on that guess was dropped to ask in MQTT 5 once more, until an
        # MQTT 5 one is made: a stuck mosquitto answers then, an old broker again does not
        self._asked_v5_again = False
        self._late_311 = 0  # late 3.1.1 answers dropped since MQTT 5 was last answered
        self.published = 0
        self._refused: dict[int, str] = {}  # outbox id -> the broker's reason (publisher thread)
        # Retained state, discovery, snapshots: not events, so not retried, but a refusal is
        # reported. mid -> topic while unacknowledged; topic -> reason while refused.
        self._side_lock = threading.Lock()
        self._side_topics: dict[int, str] = {}
        self._side_refused: dict[str, str] = {}
        # What maskd subscribes to (detect/set, Home Assistant's status): mid -> topic until the
        # SUBACK; topic -> reason while the broker refuses it (an ACL: then the switch is dead).
        self._sub_topics: dict[int, str] = {}
        self._sub_refused: dict[str, str] = {}
        # password and TLS files, read again before a connection once changed on disk; the
        # status line warns as the certificates' ends come near, months into a run
        self._credentials = CredentialFiles(mq)
        self._offline_infos: list[mqtt.MQTTMessageInfo] = []
        self._cancel: threading.Event | None = None  # the stop's hurry (flush's ``cancel``)
        self._said_faults: frozenset[str] = frozenset()  # faults()'s last lines (bounded: one
        # call's; a set of every call's grew without end while a long outage varied them)
        self._gave_up = False  # the stop's flush ended with events unacknowledged
        self._told: tuple[str, int] | None = None  # what a flush last said was left (once)
        self._fail_log = Throttle()  # per connection problem; reset by a connect
        self._log_once_a_minute = Throttle()  # refusals, publisher errors
        self._refusals_said: set[str] = set()  # "topic reason" named once (bounded: the topics)
        self._rate_log = RateLimitedLog(log)  # bad commands, dropped snapshots
        # good commands: a person toggling from Home Assistant is logged each time, a client
        # flipping the switch in a loop is a line a second (detect/state shows where it ended)
        self._switch_log = RateLimitedLog(log, every_s=SWITCH_LOG_EVERY_S)
        self.snapshots_dropped = 0  # beyond MAX_SNAPSHOTS while the broker was away, or too large
        self._max_packet: int | None = None  # the broker's Maximum Packet Size (MQTT 5 CONNACK)
        self._rediscover = False  # Home Assistant said `online`: announce discovery again
        # monotonic time since which events in flight got no PUBACK (None: none in flight or
        # one just came); what the status line and the stall check read
        self._unacked_since: float | None = None
        self._stall_drop = float("-inf")  # when a connection was last dropped for that
        self._next_rediscover = 0.0  # monotonic time before which it waits (publisher thread)

        client_id = self.client_id = (f"maskd-{device_id}" if device_status
                                      else f"maskd-{device_id}-{camera}")
        c = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.on_log = self._on_log
        c.will_set(self.topics.status, "offline", qos=1, retain=True)
        if mq.username is not None:
            c.username_pw_set(mq.username, self._credentials.password())
        if self._url.tls:
            c.tls_set_context(self._credentials.tls_context())
        c.on_pre_connect = self._on_pre_connect
        c.reconnect_delay_set(mq.reconnect_min_s, mq.reconnect_max_s)  # type: ignore[arg-type]
        c.max_inflight_messages_set(INFLIGHT)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self._client = c

        self._worker = threading.Thread(target=self._run, name="maskd-mqtt-outbox", daemon=True)
        self._worker.start()
        # A clean session on every connect (MQTT 5's default resumes it after the first): the
        # outbox replays what was in flight, in order; a resumed session would let paho resend
        # its own in-flight copies ahead of that replay and reorder the stream.
        clean = {"clean_start": True} if c.protocol == mqtt.MQTTv5 else {}
        c.connect_async(self._url.host, self._url.port, keepalive=mq.keepalive_s, **clean)
        c.loop_start()
        log.info(
            "MQTT: broker %s, client id %s, outbox %s (%d pending)",
            self._url, client_id, self._outbox.path, self._outbox.depth(),
        )

    @classmethod
    def from_config(
        cls, cfg: Config, control: RunControl | None = None, model_name: str | None = None
    ) -> MqttSink:
        """The run loop's constructor; ``model_name``: the classifier file's name, which events
        carry as ``model`` (the service knows it: maskd.classifier.model_path)."""
        return cls(cfg.mqtt, cfg.device_id, cfg.camera, cfg.state_dir, control, model_name,
                   configuration_url=configuration_url(cfg))

    @classmethod
    def for_cameras(cls, cfg: Config, controls: dict[str, RunControl],
                    model_name: str | None = None) -> MqttSink:
        """One connection for a ``cameras:`` map; give each loop ``for_camera(name)``."""
        return cls(cfg.mqtt, cfg.device_id, next(iter(controls)), cfg.state_dir,
                   model_name=model_name, cameras=controls,
                   configuration_url=configuration_url(cfg))

    def for_camera(self, name: str) -> CameraSink:
        """The EventSink of one camera; the connection closes when every camera's is closed."""
        return CameraSink(self, self._cams[name])

    # ---- clean/unclean stop marker: status/detail tells consumers how the last run ended ----

    def _read_previous_session(self) -> tuple[str, set[str]]:
        """How the last run ended, and its cameras' topic roots when it ended uncleanly or its
        stop never reached the broker (away then: a clean stop left them offline and their
        violations ended only where it did; else their `online` and `ON` stayed retained)."""
        try:
            data = json.loads(self._session_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "none", set()
        except (OSError, ValueError):
            return "unknown", set()
        if not isinstance(data, dict):  # damaged, or a layout this version does not know
            return "unknown", set()
        cams = data.get("cameras")
        roots = {c for c in cams if isinstance(c, str)} if isinstance(cams, list) else set()
        if not data.get("running"):  # stopped by maskd itself: asked for, or after a failure
            stop = data.get("stop")
            return stop if stop in STOPS else "clean", roots if data.get("announced") is False else set()
        return "unclean", roots

    def _write_session(self, running: bool, announced: bool = True) -> None:
        """The marker the next start reads: running (at start, and again by ``_keep_session``)
        or how this run stopped (at close, the last word; ``announced``: the broker took its
        offline state, else the next start marks a camera it no longer has as it does a killed
        run's)."""
        cams = [_root(c.topics) for c in self._cams.values()]
        with self._session_lock:
            if self._session_final:
                return
            self._session_final = not running
            was_ok = self._session_ok
            try:
                write_atomically(self._session_path, _dumps(
                    {"running": running, "pid": os.getpid(), "time": time.time(), "cameras": cams,
                     **({} if running else {"stop": self._stop_kind, "why": self._stop_why,
                                            "announced": announced})}
                ).encode("utf-8"))
            except OSError as err:  # the next start then reads what the last write left
                self._session_ok = False
                if not running:
                    log.warning("cannot write %s: %s; the next start will report %s",
                                self._session_path, failed_write(err, self._session_path.parent),
                                "this stop as unclean (previous_stop)" if was_ok else
                                "how an earlier run stopped (previous_stop), not this one")
                elif was_ok or self._next_session_check == 0.0:  # once, not every retry
                    log.warning("cannot write %s: %s; should this run end abruptly, the next "
                                "start will not know it (tried again every %g s)",
                                self._session_path, failed_write(err, self._session_path.parent),
                                SESSION_CHECK_S)
                return
            self._session_ok = True
            if running and not was_ok and self._next_session_check:
                log.info("wrote %s again: an abrupt end from now on is known at the next start",
                         self._session_path)

    def _keep_session(self, now: float) -> None:
        """The running marker written again where it is missing (its write failed on a full
        disk, or the state dir was removed while running), every SESSION_CHECK_S: a run killed
        after that is `unclean` at the next start, not what an earlier run left there."""
        if now < self._next_session_check:
            return
        first = self._next_session_check == 0.0
        self._next_session_check = now + SESSION_CHECK_S
        if first or (self._session_ok and self._session_path.is_file()):
            return
        self._write_session(running=True)

    # ---- EventSink ----

    def emit(self, event: ViolationEvent) -> None:
        """Store the event durably, then let the publisher thread send it (never blocks on the broker)."""
        self.emit_all([event])

    def emit_all(self, events: list[ViolationEvent]) -> None:
        """``emit`` for a frame's events: stored in one commit (a durable commit each held the
        loop for every one of a group starting at once: 0.3 s for 5 on a slow SD card)."""
        if self._closing:
            for event in events:
                log.error("MQTT sink closed; event %s seq %d not accepted", event.event_id,
                          event.seq)
            return
        todo = []  # (event, its camera, its payload, its snapshot)
        for ev in events:
            if ev.end_reason == "restart" and ev.event_id in self._restarted:
                continue  # the run loop's `restart` end (maskd.ledger) of one the outbox ended
            cam = self._cams.get(ev.camera) or self._removed(ev)
            snapshot = self._mq.snapshots and ev.best_crop is not None
            payload = ViolationPayload.build(ev, device_id=self._device_id, model=self._model,
                                             snapshot=snapshot).stored()
            todo.append((ev, cam, payload, _encode_jpeg(ev.best_crop) if snapshot else None))
        # Held across put + remember, so the publisher finds the snapshot with its row.
        with self._snap_lock:
            # Never raises: on a storage fault the outbox keeps the events in memory.
            row_ids = self._outbox.put_all([
                (cam.topics.violation, payload, (ev.event_id, ev.event_type != "end"))
                for ev, cam, payload, _ in todo])
            for row_id, (_, cam, _, jpeg) in zip(row_ids, todo, strict=True):
                if jpeg is not None:
                    self._snapshots[row_id] = (cam.topics.snapshot, jpeg)
            trimmed = max(0, len(self._snapshots) - MAX_SNAPSHOTS)
            for _ in range(trimmed):
                self._snapshots.popitem(last=False)
            self.snapshots_dropped += trimmed
        if trimmed:
            self._rate_log(logging.WARNING, "snapshots", "MQTT: more than %d snapshots wait for "
                           "the broker; the oldest was dropped, its event goes out with "
                           '"snapshot": false (%d dropped since start)', MAX_SNAPSHOTS,
                           self.snapshots_dropped)
        with self._active_lock:  # so a reconnect's re-publish cannot overtake this change
            for ev, cam, _, _ in todo:
                self._opened_or_ended(ev, cam)
        self._q.put(("wake", None, None))

    def _opened_or_ended(self, event: ViolationEvent, cam: _Camera) -> None:
        """The camera's open violations and Home Assistant's trigger after ``event`` (under
        ``_active_lock``)."""
        if event.event_type == "end":
            cam.open_events.pop(event.event_id, None)
        else:
            cam.open_events[event.event_id] = {
                "event_id": event.event_id, "score": round(float(event.score), 4),
                "since": event.start_time, "camera": cam.name}
        trigger = _trigger(event.event_type, event.event_id, event.score, cam.name,
                           event.end_reason)
        if self._connected:
            self._publish_active(cam)
            if event.event_type != "update":  # Home Assistant's event entity: live triggers
                self._side(cam.topics.event, trigger, retain=False)
        elif event.end_reason == "restart":
            self._triggers.append((cam.topics.event, trigger))

    def _removed(self, event: ViolationEvent) -> _Camera:
        """The camera of an event this sink does not serve: a camera removed from the config
        since a killed run, whose `restart` end (maskd.ledger) goes on its own topics, never
        on another camera's (its retained state is cleared as a dropped camera's)."""
        if event.end_reason != "restart":
            return self._first
        return _Camera(event.camera, Topics.build(self._mq, self._device_id, event.camera),
                       RunControl())

    def _end_left_open(self) -> set[str]:
        """End the violations a killed run left open (reason "restart"), after that run's pending
        messages, so no consumer waits for their `end` forever. Returns their cameras' topic
        roots. The outbox's own record, in the same transaction as each message: the run loop's
        `restart` end of the same violation (maskd.ledger, for every sink) is not stored again."""
        roots = set()
        for last in self._outbox.open_events():
            roots.add(last.topic.removesuffix("/violation"))
            p = last.payload
            try:  # a damaged record (no seq, text for a number) must not stop every start
                end = {**p, "event_type": "end", "seq": int(p["seq"]) + 1,
                       "end_reason": "restart", "frame_seq": None, "snapshot": False,
                       "end_time": restart_end_time(last.created, p.get("start_time"),
                                                    p.get("duration_s")),
                       "sw_version": __version__}
                event_id = str(p["event_id"])
            except (KeyError, TypeError, ValueError) as err:
                log.warning("outbox: a record of an open violation on %s that is no violation "
                            "skipped (%r)", last.topic, err)
                continue
            self._outbox.put(last.topic, end, track=(event_id, False))
            self._restarted.add(event_id)
            self._triggers.append((f"{last.topic}/event", _trigger(
                "end", event_id, p.get("score"), p.get("camera"), "restart")))
            try:
                self._left_open.append(ViolationEvent(
                    event_type="end", event_id=event_id, seq=end["seq"], camera=str(p["camera"]),
                    track_id=int(p["track_id"]), start_time=float(p["start_time"]),
                    score=float(p["score"]), top_score=float(p["top_score"]),
                    box=tuple(float(v) for v in p["box"]), end_time=float(end["end_time"]),
                    end_reason="restart"))
            except (KeyError, TypeError, ValueError):
                pass  # ended in MQTT all the same; too damaged to end in the other sinks
            log.warning("violation %s was still open when maskd last stopped uncleanly; ending it "
                        "with reason restart", event_id)
        return roots

    def left_open(self) -> list[ViolationEvent]:
        """The violations ended `restart` from the outbox at start: a version before
        maskd.ledger kept them nowhere else, and JSON lines never got their end."""
        return list(self._left_open)

    def on_stop(self, stop: str, why: str) -> None:
        """How a camera's loop ends; the worst of the cameras' (STOPS) is what the offline
        status/detail and the next start's previous_stop say."""
        with self._close_lock:
            if STOPS.index(stop) > STOPS.index(self._stop_kind) or not self._stop_why:
                self._stop_kind, self._stop_why = stop, why

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        """Wait until the broker acknowledged every event; False if some remain, at once when
        all that remain were refused by the broker or ``cancel`` is set."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._cancel = cancel  # close's wait for the offline status heeds it too
        self._q.put(("wake", None, None))
        with self._acked:
            while (depth := self._outbox.depth()) > 0:
                if len(self._refused) >= depth:
                    reasons = sorted(set(self._refused.copy().values()))
                    if self._tell("refused", depth):
                        log.error("MQTT: %d event(s) refused by the broker (%s); kept in %s",
                                  depth, ", ".join(reasons), self._outbox.path)
                    return False
                left = deadline - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()):
                    if self._tell("unacknowledged", depth):
                        self._say_unacknowledged(depth)
                    self._gave_up = True
                    return False
                self._acked.wait(min(left, 0.5))
        return True

    def _tell(self, what: str, depth: int) -> bool:
        """True the first time a flush finds this left: each camera of a shared sink flushes it
        at a stop, and each said the same pending count again."""
        told, self._told = self._told, (what, depth)
        return told != self._told

    def _say_unacknowledged(self, depth: int) -> None:
        """What the next start will find: events held only in memory (a full disk) are not
        "kept for the next start"; the outbox stores them at close if there is room by then,
        and says so, or says they are lost."""
        memory = self._outbox.in_memory()
        if not memory:
            log.warning("MQTT: %d event(s) not yet acknowledged; kept in %s for the next start",
                        depth, self._outbox.path)
            return
        log.warning("MQTT: %d event(s) not yet acknowledged: %d kept in %s for the next start, "
                    "%d held in memory only (the disk had no room for them)", depth,
                    depth - memory, self._outbox.path, memory)

    def close(self) -> None:
        """Clean stop: retained offline + detail, then disconnect (no last will). Outbox kept.
        Runs once: a second call (two cameras' loops ending together) returns at once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._connected:
            for cam in self._cams.values():
                self._publish_held(cam)
        with self._conn_lock:  # a connect in progress announces online first, or sees this
            self._closing = True
            connected = self._connected
        if connected:
            self._announce_offline()
            # A reconnect meanwhile (a broker restart during the stop) announces it again and
            # replaces the list: wait for whichever is newest. A publish that failed (the
            # link dropped just now) is not waited for: the last will says offline then. Nor
            # is one after the flush gave up on a broker that acknowledged nothing, or once a
            # second stop signal came: the stop waits at most --flush-timeout (docs), not twice.
            deadline = time.monotonic() + (0.0 if self._gave_up else 5.0)
            while (left := deadline - time.monotonic()) > 0 and not (
                    self._cancel is not None and self._cancel.is_set()):
                pending = [i for i in self._offline_infos
                           if i.rc == mqtt.MQTT_ERR_SUCCESS and not i.is_published()]
                if not pending:
                    break
                try:
                    pending[0].wait_for_publish(timeout=min(left, 0.5))
                except (RuntimeError, ValueError):
                    break
        announced = connected and _all_published(self._offline_infos)
        self._client.disconnect()
        self._client.loop_stop()
        self._stop.set()
        self._q.put(("wake", None, None))
        self._worker.join(timeout=5.0)
        self._outbox.close()
        self._write_session(running=False, announced=announced)

    # ---- run loop hooks ----

    def on_state(self, counts: FaceCounts) -> None:
        """The single-camera layout's state (see ``camera_state``)."""
        self.camera_state(self._first, counts)

    def on_stats(self, stats: LoopStats) -> None:
        """The single-camera layout's stats (see ``camera_stats``)."""
        self.camera_stats(self._first, stats)

    def camera_state(self, cam: _Camera, counts: FaceCounts) -> None:
        """Counts (faces, masked, unmasked, ...), retained: at most every state_interval_s, and
        only on change (or once per stats interval as a heartbeat). The people-in-violation count
        goes out as soon as it changes (it follows the events); the face count, which flickers
        with the detector, with the state."""
        with self._state_lock:
            cam.counts = counts
            if not self._connected:
                return
            self._follow_switch(cam, time.monotonic())  # the schedule turned
            if counts.active != cam.violations:
                cam.violations = counts.active
                self._side(cam.topics.violations, str(counts.active))
            state = counts.to_dict()
            now = time.monotonic()
            since = now - cam.last_state_t
            if since < self._mq.state_interval_s and cam.last_state is not None:
                cam.held = counts  # sent when its loop ends, if nothing newer goes first
                return
            key = {k: v for k, v in state.items() if k not in ("time", "timestamp")}
            if key == cam.last_state and since < self._mq.stats_interval_s:
                return
            cam.last_state, cam.last_state_t, cam.held = key, now, None
            if counts.faces != cam.faces:
                cam.faces = counts.faces
                self._side(cam.topics.faces, str(counts.faces))
            self._side(cam.topics.state, _dumps({**state, "time": time.time()}))

    def camera_stats(self, cam: _Camera, stats: LoopStats) -> None:
        """Loop health (fps per stage, skipped frames) with the connection's own numbers,
        published at once (the loop sends it every stats_interval_s), retained."""
        cam.loop_stats = stats
        cam.loop_mine = self._said_faults  # the loop asked faults() for this report just now
        if self._connected:
            self._publish_stats(cam)
            # the counts go with the stats too, under the same intervals: a (re)connection
            # cleared them for the next frame, the state interval may hold the last frame's
            # back, and no frame comes while the camera is away or its file has ended: they
            # must not wait for one (a restart's stale ones; the heartbeat)
            self._counts_again(cam)

    def _counts_again(self, cam: _Camera) -> None:
        """The camera's newest counts sent again (with stats, as a heartbeat), read under the
        lock that sends them (was: read before, written back after the loop's newer ones)."""
        with self._state_lock:
            if cam.counts is not None:
                self.camera_state(cam, cam.counts)

    def _publish_held(self, cam: _Camera) -> None:
        """The counts the state interval held back, at the end: what stays retained is the
        loop's last state, not an older one that contradicts the violation topics."""
        with self._state_lock:
            if cam.held is not None:
                cam.last_state = None
                self.camera_state(cam, cam.held)

    def camera_closed(self, cam: _Camera) -> None:
        """A camera's loop ended: its entities go unavailable; the last one to be done with
        that closes the sink (counted under the lock: two loops ending together close it once,
        and never while the other still publishes)."""
        with self._close_lock:
            if not cam.running:  # its view closed twice: counted once
                return
            cam.running = False
        self._publish_held(cam)
        if self._connected and cam.topics.availability != cam.topics.status:
            self._side(cam.topics.availability, "offline")
        with self._close_lock:
            self._open_cams -= 1
            last = self._open_cams == 0
        if last:
            self.close()

    def health(self) -> dict:
        """The MQTT part of the stats message."""
        ob = self._outbox
        oldest = ob.oldest_age()
        since = ob.fault_since
        return {
            "connected": self._connected,
            "mqtt_version": "5" if self._client.protocol == mqtt.MQTTv5 else "3.1.1",
            "outbox_depth": ob.depth(),
            "outbox_oldest_age_s": None if oldest is None else round(oldest, 1),
            "outbox_dropped": ob.dropped,
            "outbox_error": ob.fault,
            "outbox_error_since": None if since is None else round(since, 1),
            "memory_queue": ob.in_memory(),
            "memory_dropped": ob.memory_dropped,
            "refused": len(self._refused),
            "refused_topics": len(self._side_refused),
            "reconnects": self.reconnects,
            "published": self.published,
            "snapshots_dropped": self.snapshots_dropped,
            "uptime_s": round(self._uptime(), 3),
        }

    def faults(self) -> list[str]:
        """Short lines for the status text (systemd STATUS, via Service) while delivery is
        impaired; empty when all is well. A broker away past DOWN_GRACE_S is one: otherwise
        the status looks healthy while the outbox fills."""
        ob = self._outbox
        out = []
        down = self._down
        if down is not None and not self._closing and time.monotonic() - down[1] >= DOWN_GRACE_S:
            since = local_iso(down[0])
            out.append(f"{NOT_CONNECTED}{since}, {ob.depth()} event(s) waiting")
        stalled = self._unacked_since
        if (stalled is not None and self._connected
                and (waited := time.monotonic() - stalled) >= DOWN_GRACE_S):
            out.append(f"MQTT: broker acknowledged nothing for {waited:.0f} s, {ob.depth()} "
                       f"event(s) waiting")
        if (fault := ob.fault) is not None:
            held = ob.in_memory()
            out.append(f"MQTT outbox: {fault}" + (f", {held} event(s) in memory" if held else ""))
        if ob.memory_dropped and (ob.fault is not None or ob.memory_dropped_at is None
                                  or time.monotonic() - ob.memory_dropped_at < LOST_SHOWN_S):
            out.append(f"MQTT: {ob.memory_dropped} event(s) lost, memory queue full")
        if self._refused:
            out.append(f"MQTT: {len(self._refused)} event(s) refused by the broker")
        with self._side_lock:
            refused = sorted(self._side_refused)
            subs = sorted(self._sub_refused)
        if refused:
            out.append(f"MQTT: broker refuses {len(refused)} topic(s), e.g. {refused[0]}")
        out += [f"MQTT: broker refuses the subscription to {t}" for t in subs]
        out += self._credentials.faults()
        self._said_faults = frozenset(out)  # what the loop's report made now carries
        return out

    @property
    def connected(self) -> bool:
        return self._connected

    # ---- paho callbacks (paho's network thread) ----

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        """Before each connection attempt: a password or TLS file changed on disk since is
        used from this one on (a renewal needs no restart)."""
        self._credentials.before_connect(client)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        client.connack = True
        if client.protocol == mqtt.MQTTv5 and reason_code.value != UNSUPPORTED_PROTOCOL:
            # it speaks MQTT 5, yes or no
            self._unanswered_v5, self._asked_v5_again, self._late_311 = 0, False, 0
        if reason_code.is_failure:
            if reason_code.value == UNSUPPORTED_PROTOCOL and client.protocol == mqtt.MQTTv5:
                use_mqtt311(client)
                self._warn_mqtt311()
                return
            hint = ""
            if reason_code.value in (4, 5, 134, 135):  # bad user/password, not authorised
                src = (f"file {self._mq.password_file}" if self._mq.password_file
                       else f"${self._mq.password_env}" if self._mq.password_env else "none set")
                hint = (f"; check mqtt.username ({self._mq.username!r}) and the password "
                        f"({src})")
            elif reason_code.value == QOS_NOT_SUPPORTED:
                hint = ("; that listener takes only QoS 0 (mosquitto: max_qos 0), and maskd "
                        "sends its last will and every message at QoS 1 (acknowledged, so none "
                        "is lost): allow QoS 1 there")
            self._log_fail(f"MQTT broker {self._url} refused the connection: {reason_code}{hint}")
            return
        late = (time.monotonic() - client.connect_sent >= LATE_CONNACK_S
                and self._late_311 < LATE_311_DROPS)
        if self._guessed_311 and (late or not self._asked_v5_again) and not self._closing:
            # answered now, where MQTT 5 was not: a stuck MQTT 5 broker (mosquitto stopped a
            # while) answers this too, and kept on 3.1.1 its refusals looked delivered (events
            # lost); MQTT 5 is asked once more before anything is sent, and again after an
            # answer that came late: that broker was stuck (again) while MQTT 5 was asked
            self._late_311 += late
            self._asked_v5_again = True
            self._guessed_311 = False
            use_mqtt5(client)
            log.info("MQTT: %s answered MQTT 3.1.1; asking in MQTT 5 once more (a broker that "
                     "was stuck answers it now)", self._url)
            if (sock := client.socket()) is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # paho's loop sees the link lost, reconnects
            return
        if self._unanswered_v5 and client.protocol == mqtt.MQTTv311:  # 3.1.1 is what it speaks
            self._warn_mqtt311()
        self._unanswered_v5 = 0
        self._said_guess = False
        with self._conn_lock:
            client.apply_receive_maximum(properties)
            # Whatever paho still holds from the last connection is replayed from the
            # outbox instead, so it is sent once and in order.
            client.drop_out_messages()
            with self._side_lock:
                self._side_topics.clear()
                self._sub_topics.clear()
            if self._closing:  # a reconnect while stopping: the stop is what the broker keeps
                log.info("MQTT: reconnected to %s while stopping; announcing offline again",
                         self._url)
                self._announce_offline()
                return
            self._gen += 1
            # taken here, not when the publisher notices the connection (its next step): an
            # event emitted in between was called buffered, and a live consumer skipped it
            self._replay_upto = self._outbox.max_id()
            self._max_packet = getattr(properties, "MaximumPacketSize", None)
            self._connected_at = time.monotonic()
            self._connected = True
            self._down = None
            # announced under the lock: a clean stop that begins now announces offline after
            self._fail_log.reset()
            log.info("MQTT: connected to %s (%d event(s) to replay)", self._url, self._outbox.depth())
            self._credentials.connected(client)
            # the start on the clock of now: NTP may have stepped it since (a Pi boots without one)
            detail = {"state": "online", "since": time.time() - self._uptime(), "pid": os.getpid(),
                      "previous_stop": self._previous_stop, "sw_version": __version__,
                      "model": self._model}
            status = self._first.topics.status
            self._side(f"{status}/detail", _dumps(detail))
            self._side(status, "online")
            for cam in self._cams.values():
                if cam.topics.availability != status:
                    self._side(cam.topics.availability, "online" if cam.running else "offline")
                    # an earlier single-camera run's process detail: not this layout's, and
                    # `maskd mqtt-clear` would take it for that layout's
                    self._side(f"{cam.topics.availability}/detail", b"", report=False)
                self._publish_active(cam)
                self._publish_detect_state(cam)
                # published again with the next frame: a broker that lost its retained
                # messages (restarted without persistence) must get them back
                cam.violations = cam.faces = cam.last_state = None
                # retain as published (MQTT 5): a retained command sent while maskd runs
                # keeps its flag and is ignored as it is at a start, not obeyed until then
                self._subscribe(client, cam.topics.detect_set, retain_as_published=True)
            if self._mq.discovery:
                self._publish_discovery()
                self._subscribe(client, self._first.topics.ha_status)
            self._withdraw_switched_off()
            self._mark_dropped_offline()
            with self._active_lock:  # an emit sees _connected, or its trigger is here
                triggers, self._triggers = self._triggers, []
            for topic, trigger in triggers:
                self._side(topic, trigger, retain=False)
        self._q.put(("wake", None, None))

    def _warn_mqtt311(self) -> None:
        log.warning("MQTT: broker %s does not speak MQTT 5; using 3.1.1, where a publish "
                    "the broker refuses (ACL) looks delivered: `maskd doctor` checks "
                    "publish rights", self._url)

    def _subscribe(self, client: mqtt.Client, topic: str, retain_as_published: bool = False
                   ) -> None:
        """Subscribe (QoS 1), remembering the topic until the broker's SUBACK says yes or no."""
        if retain_as_published and client.protocol == mqtt.MQTTv5:
            rc, mid = client.subscribe(topic, options=SubscribeOptions(
                qos=1, retainAsPublished=True))
        else:
            rc, mid = client.subscribe(topic, qos=1)
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            with self._side_lock:
                self._sub_topics[mid] = topic

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        """A SUBACK. A broker whose ACL refuses a subscription says so here (MQTT 5: 0x87 Not
        authorized; 3.1.1: 0x80), and from then on a command sent there never reaches maskd:
        logged once a minute per topic and listed in faults() until a connection gets it.
        (mosquitto's acl_file grants such a SUBSCRIBE and then delivers nothing; `maskd doctor`
        finds that by a round trip.)"""
        with self._side_lock:
            topic = self._sub_topics.pop(mid, None)
            if topic is None:
                return
            refused = [rc for rc in reason_codes if rc.is_failure]
            if not refused:
                self._sub_refused.pop(topic, None)
                return
            self._sub_refused[topic] = why = str(refused[0])
        if topic == self._first.topics.ha_status:
            lost = UNSEEN_RESTARTS
        else:
            lost = "the detection switch (Home Assistant, detect/set) does nothing"
        if self._log_once_a_minute.due(f"subscribe {topic} {why}"):
            who = f"user {self._mq.username!r}" if self._mq.username else "this client"
            log.error("MQTT: broker %s refused the subscription to %s: %s; %s (does the "
                      "broker's ACL let %s subscribe there?)", self._url, topic, why, lost, who)

    def _on_connect_fail(self, client, userdata) -> None:  # noqa: ANN001
        err = getattr(client, "last_error", None)
        hint = (plain_listener_hint(self._url, err) or client_certificate_hint(self._mq, str(err))
                or broker_certificate_hint(self._mq, str(err)))
        self._log_fail(f"MQTT: cannot connect to {self._url}: {err or 'connection failed'}{hint}")

    def _on_log(self, client, userdata, level, buf: str) -> None:  # noqa: ANN001
        # paho reports every idle loop while disconnected as an error; the meaningful
        # connection events are logged here, so its own chatter goes to DEBUG.
        _paho_log.debug("%s", buf)
        if (why := receive_error(buf)) is not None:
            client.socket_error = why
        elif buf.startswith("Received malformed packet"):
            client.malformed = buf

    def _log_fail(self, msg: str) -> None:
        """Connection problems are retried with backoff; log each distinct one, and again every minute."""
        if self._fail_log.due(msg):
            log.error("%s; retrying (backoff %g-%g s), events are kept in the outbox",
                      msg, self._mq.reconnect_min_s, self._mq.reconnect_max_s)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        was = self._connected
        self._connected = False
        if was:
            self._down = (time.time(), time.monotonic())
        if not was and not self._closing and not client.connack:
            # No CONNACK: typically mqtt:// pointed at a TLS listener, which drops the
            # plain-text CONNECT without a word (or, elsewhere, never answers: keepalive_s).
            why = client.socket_error or str(reason_code)
            if reason_code == KEEPALIVE_TIMEOUT:  # silent, not hung up on: no TLS mix-up
                hint = (f"; it took the connection but sent no CONNACK within "
                        f"{client.keepalive} s (mqtt.keepalive_s): check that an MQTT broker "
                        f"listens there and is not stuck")
            elif not self._url.tls:
                hint = ("; is that port a TLS listener? Then use mqtts:// (TLS usually listens "
                        "on 8883)")
            else:
                hint = client_certificate_hint(self._mq, why, handshook=True)
            msg = f"MQTT: {self._url} did not answer CONNECT ({why}){hint}"
            if client.protocol == mqtt.MQTTv5:
                # not yet an error: an old broker (RabbitMQ 3, amqtt) answers only the 3.1.1
                # CONNECT tried next; an ERROR at every start and reconnect of a broker that
                # works was noise. One unanswered in 3.1.1 too is the error (a TLS listener).
                log.debug("%s (in MQTT 5; MQTT 3.1.1 is tried too)", msg)
            else:
                self._log_fail(msg)
            self._unanswered(client)
        if was and self._guessed_311:
            # guessed from silence, which a stuck or cut-off MQTT 5 broker shows too: each
            # connection asks in MQTT 5 first, so one such spell does not keep a mosquitto on
            # 3.1.1 (refusals unseen) until the next start
            use_mqtt5(client)
            self._guessed_311 = False
        if was and not self._closing:
            self.reconnects += 1
            # A broker drops the older of two clients with the same id, so two devices
            # sharing device_id + camera knock each other off in a loop: connections that keep
            # dropping at once with no reason given (or MQTT 5's "Session taken over"). A drop
            # that names its cause (e.g. a protocol error) is not that.
            short = time.monotonic() - self._connected_at < 5.0
            self._pace_reconnects(client, short)
            no_reason = reason_code == UNSPECIFIED
            self._short_sessions = self._short_sessions + 1 if short and no_reason else 0
            hint = ""
            if self._short_sessions == 3 or reason_code == SESSION_TAKEN_OVER:
                hint = (f"; connections keep dropping right away: is another client using the "
                        f"client id {self.client_id!r}? (device_id must be unique; device "
                        f"'a' with camera 'b' and device 'a-b' with a cameras: map share one)")
            elif client.malformed:
                # mosquitto 2.0 answers a message over its message_size_limit with a PUBACK
                # code MQTT 5 does not allow there, and paho drops the connection on it
                hint = (f"; the broker sent a packet paho cannot read ({client.malformed}): "
                        f"mosquitto 2.0 does so for a message over its message_size_limit; "
                        f"set max_packet_size instead, which maskd keeps to")
            log.warning("MQTT: lost connection to %s (%s); reconnecting, events kept in the "
                        "outbox%s", self._url, reason_code, hint)

    def _unanswered(self, client: mqtt.Client) -> None:
        """A CONNECT without a CONNACK. A broker older than MQTT 5 should refuse an MQTT 5
        CONNECT (0x01), but some cannot parse it: RabbitMQ 3 hangs up, amqtt 0.12 waits for the
        rest (reading the last will's properties as 3.1.1). Two such MQTT 5 attempts in a row
        (one may be a broker going down) make the next one speak 3.1.1; one unanswered too
        goes back to MQTT 5 (a TLS listener, a stuck broker: not an old one), and so does the
        loss of a connection made on that guess (``_on_disconnect``). A 3.1.1 connection made on
        the guess is dropped at once to ask in MQTT 5 again (``_on_connect``); one more
        unanswered then is the broker's answer, unless its 3.1.1 answer comes late (up to
        LATE_311_DROPS times in a row: an old broker on a loaded host answers late each time)."""
        if client.protocol != mqtt.MQTTv5:
            if self._unanswered_v5:
                use_mqtt5(client)
                self._unanswered_v5 = 0
                self._guessed_311 = False
            return
        self._unanswered_v5 += 1
        if self._unanswered_v5 >= (1 if self._asked_v5_again else 2):
            use_mqtt311(client)
            self._guessed_311 = True
            if not self._said_guess:  # the error line, once a minute, says what is wrong
                self._said_guess = True
                log.info("MQTT: %s answered no MQTT 5 CONNECT; trying MQTT 3.1.1 (a broker "
                         "older than MQTT 5 may hang up on one or wait)", self._url)

    def _pace_reconnects(self, client: mqtt.Client, short: bool) -> None:
        """paho starts its backoff again at every CONNACK, so a broker that closes every
        connection at once (a message it cannot take) was reconnected to every reconnect_min_s
        for good: such connections in a row double the first wait, up to reconnect_max_s; one
        that lasted starts it again at reconnect_min_s."""
        self._quick_drops = self._quick_drops + 1 if short else 0
        first = min(self._mq.reconnect_max_s,
                    self._mq.reconnect_min_s * 2 ** min(self._quick_drops, 20))
        client.reconnect_delay_set(first, self._mq.reconnect_max_s)  # type: ignore[arg-type]

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        # MQTT 5: reason_code says whether the broker took it (3.1.1 always says Success).
        self._q.put(("ack", mid, reason_code))  # no locks here: paho holds its own while calling us

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        if msg.topic == self._first.topics.ha_status:
            # A retained `online` (Home Assistant set to retain its birth, or a tool) comes with
            # every connection, right after the connection's own announcement: no restart.
            if msg.payload.strip() == b"online" and not msg.retain:  # at the publisher's pace
                self._rediscover = True
                self._q.put(("wake", None, None))
            return
        cam = self._cam_by_set.get(msg.topic)
        if cam is not None:
            if msg.retain:
                # Delivered because it is retained, not because someone just sent it.
                self._rate_log(logging.WARNING, f"retained {msg.topic}",
                               "MQTT: ignoring retained %s (send it without the retain flag)",
                               msg.topic)
                return
            if not msg.payload:  # how a retained message is deleted (mqtt-clear's): no command
                return
            value = parse_switch(msg.payload)
            if value is None:
                self._rate_log(logging.WARNING, f"value {msg.topic}",
                               "MQTT: %s: expected ON or OFF, got %r; ignored", msg.topic,
                               msg.payload[:40])
                return
            was, cam.control.switch = cam.control.switch, value
            if value != was:  # "ON" to a switch that is on changes nothing worth a line
                self._switch_log(logging.INFO, cam.name, "MQTT: %s: detection switched %s "
                                 "remotely%s", cam.name, "on" if value else "off",
                                 " (the schedule keeps it off for now)"
                                 if cam.control.in_force == "schedule" else "")
            self._follow_switch(cam, time.monotonic())

    # ---- retained state ----

    def _side(self, topic: str, payload: str | bytes, retain: bool = True, report: bool = True
              ) -> mqtt.MQTTMessageInfo:
        """Publish a message that is not an event (QoS 1, retained unless said otherwise); the
        publisher thread reports it when the broker refuses it (MQTT 5) and ``report``. One
        larger than the broker takes is not sent (it would cut the connection) and is reported
        as refused."""
        if (too_large := self._too_large(topic, payload)) is not None:
            info = mqtt.MQTTMessageInfo(0)
            info.rc = mqtt.MQTT_ERR_PAYLOAD_SIZE
            if report:
                with self._side_lock:
                    self._side_refused[topic] = too_large
                if self._refusal_to_log(topic, too_large):
                    log.error("MQTT: a message of %d bytes on %s was not sent: broker %s takes "
                              "packets of at most %d bytes (its maximum packet size; raise it, "
                              "e.g. mosquitto's max_packet_size)%s",
                              publish_size(topic, payload), topic, self._url, self._max_packet,
                              "; Home Assistant's discovery cannot find maskd meanwhile"
                              if topic.endswith("/config") else "")
            return info
        with self._side_lock:  # recorded before the publisher thread can look its ack up
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            if info.rc == mqtt.MQTT_ERR_SUCCESS and report:
                self._side_topics[info.mid] = topic
        return info

    def _side_acked(self, mid: int, reason: Any) -> None:
        """A non-event message was acknowledged: a refusal is logged (``_refusal_to_log``: each
        topic at its first, then once a minute per reason) and listed in faults() until that
        topic is accepted again."""
        with self._side_lock:
            topic = self._side_topics.pop(mid, None)
            if topic is None:
                return
            if reason is None or not reason.is_failure:
                self._side_refused.pop(topic, None)
                return
            self._side_refused[topic] = str(reason)
        if check := self._refusal_to_log(topic, str(reason)):
            log.error("MQTT: broker %s refused %s: %s (%s%s)", self._url, topic, reason, check,
                      " Home Assistant finds maskd by its discovery_prefix topics"
                      if topic.endswith("/config") else "")

    def _announce_offline(self) -> None:
        """The stop's retained messages: offline, and why (no last will follows); ``clean``
        only for a stop asked for, not one after a failed loop or a lost Coral."""
        detail = {"state": "offline", "clean": self._stop_kind == "clean",
                  "stop": self._stop_kind, "why": self._stop_why, "time": time.time(),
                  "pending": self._outbox.depth(), "sw_version": __version__}
        status = self._first.topics.status
        self._offline_infos = [
            self._side(f"{status}/detail", _dumps(detail)),
            *(self._side(t, "offline")
              for t in dict.fromkeys([*(c.topics.availability for c in self._cams.values()),
                                      status])),
        ]

    def _publish_active(self, cam: _Camera) -> None:
        """ON/OFF and, for Home Assistant's attributes, the newest open violation (or nulls)."""
        with self._active_lock:
            newest = list(cam.open_events.values())[-1:] or [
                {"event_id": None, "score": None, "since": None, "camera": cam.name}]
            self._side(cam.topics.attributes, _dumps(newest[0]))
            self._side(cam.topics.active, "ON" if cam.open_events else "OFF")

    def _publish_detect_state(self, cam: _Camera) -> None:
        """Whether detection runs, and what decides it: the switch or the schedule."""
        ctl = cam.control
        cam.detect, cam.detect_t = _detect_said(ctl), time.monotonic()
        attrs = {"switch": "ON" if ctl.switch else "OFF", "schedule": ctl.scheduled,
                 "in_force": ctl.in_force}
        self._side(cam.topics.detect_attributes, _dumps(attrs))
        self._side(cam.topics.detect_state, "ON" if ctl.detect_enabled else "OFF")

    def _follow_switch(self, cam: _Camera, now: float) -> None:
        """detect/state and its attributes again once what they say has changed (a command, the
        schedule), at most DETECT_STATE_EVERY_S apart: a command that changes nothing sends
        nothing, and a flood of them is not answered with a retained pair each (10,000 a second
        held the events up for 10 s). The publisher thread's next step sends the last word."""
        if (_detect_said(cam.control) != cam.detect
                and now - cam.detect_t >= DETECT_STATE_EVERY_S):
            self._publish_detect_state(cam)

    def _publish_discovery(self) -> None:
        for cam in self._cams.values():
            self._side(cam.topics.discovery, _discovery_payload(
                self._mq, cam.topics, self._device_id, cam.name, self._configuration_url))

    def _withdraw_switched_off(self) -> None:
        """What an earlier run left retained and this config no longer wants goes (idempotent,
        on every connect): the last face crop once ``snapshots`` is off, since no image may stay
        on the broker; the discovery config once ``discovery`` is off, so Home Assistant
        removes the device. (With discovery on, the config itself withdraws the snapshot camera:
        discovery_config.)"""
        # Not reported when refused: an ACL that never granted the topic (nothing to remove
        # then) must not become a standing fault of a config that does not use it.
        for cam in self._cams.values():
            if not self._mq.snapshots:
                self._side(cam.topics.snapshot, b"", report=False)
            if not self._mq.discovery:
                self._side(cam.topics.discovery, b"", report=False)

    def _mark_dropped_offline(self) -> None:
        """A camera a killed run had and this config has not: offline, no violation open
        (its open violations' `end` goes out from the outbox). Once: the camera may run in
        another process later."""
        for root in self._dropped:
            if root.count("/") < 2:  # not <prefix>/<device_id>/<camera>: a damaged session file
                continue
            log.info("MQTT: %s is no longer configured; marking it offline", root)
            prefix, device_id, camera = root.rsplit("/", 2)  # a prefix may hold slashes
            t = Topics.build(self._mq.model_copy(update={"prefix": prefix}), device_id, camera)
            self._side(t.attributes, _dumps(
                {"event_id": None, "score": None, "since": None, "camera": camera}))
            self._side(t.active, "OFF")
            self._side(t.violations, "0")
            self._side(t.availability, "offline")
        self._dropped = []

    def _publish_stats(self, cam: _Camera) -> None:
        cam.stats_t = time.monotonic()
        loop = cam.loop_stats
        if loop is not None:
            # Sent only while connected: a loop report made while the broker was away (the one
            # a reconnect sends at once) said so, which Home Assistant's problem entity would
            # show until the next report, a minute later. So with this sink's other lines (a
            # client certificate renewed since, whose 'the broker refuses the connection' was
            # beside `connected: true`): its lines of then give way to its lines of now.
            now = [f for f in self.faults() if not f.startswith(NOT_CONNECTED)]
            loop = replace(loop, faults=tuple(dict.fromkeys(
                [f for f in loop.faults if f not in cam.loop_mine
                 and not f.startswith(NOT_CONNECTED)] + now)))
        # no loop report yet (or a sink without a loop): this sink's own faults, so that
        # Home Assistant's problem entity reads something true
        mine = self.faults() if loop is None else []
        msg = {**(loop.to_dict() if loop else {"faults": mine, "problems": mine}),
               **self.health(), "camera": cam.name, "time": time.time()}
        cam.backlog = msg["outbox_depth"]
        self._side(cam.topics.stats, _dumps(msg))

    # ---- the publisher thread: the only place events are published ----

    def _run(self) -> None:
        """The publisher thread. Nothing else sends events, so no fault may end it: an
        unexpected error is logged (once a minute) and the loop goes on."""
        st = _Sending(next_stats=time.monotonic())
        while not self._stop.is_set():
            try:
                self._step(st)
            except Exception:  # noqa: BLE001 - see the docstring
                if self._log_once_a_minute.due("crash"):
                    log.exception("MQTT publisher: unexpected error; carrying on")
                self._stop.wait(1.0)

    def _step(self, st: _Sending) -> None:
        """Take acknowledgements, repair storage, hand pending events to paho, send stats."""
        try:
            items = [self._q.get(timeout=0.5)]
        except queue.Empty:
            items = []
        while True:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        acks = [(st.inflight.pop(mid), reason) for kind, mid, reason in items
                if kind == "ack" and mid in st.inflight]
        for kind, mid, reason in items:
            if kind == "ack":
                self._side_acked(mid, reason)
        for (row_id, topic), reason in acks:
            if reason is not None and reason.is_failure:
                self._refuse(row_id, topic, str(reason))
                st.retry_refused |= row_id in st.retrying
            else:
                self._refused.pop(row_id, None)
                self._outbox.remove(row_id)
            st.retrying.discard(row_id)
        if acks:
            with self._acked:
                self._acked.notify_all()
        if self._stop.is_set():
            return
        if acks and self._connected:
            self._tell_drained()
        self._outbox.maintain()
        now = time.monotonic()
        self._keep_session(now)
        self._check_stall(st, now, progress=bool(acks))
        with self._conn_lock:
            if self._connected and not self._closing:
                if self._gen != st.gen:
                    st.gen, st.cursor = self._gen, 0
                    st.inflight.clear()
                    st.replay_upto = self._replay_upto
                    st.next_stats = now
                    for cam in self._cams.values():  # retained stats again on a new connection
                        cam.stats_t = float("-inf")
                    st.next_refused_retry = now + REFUSED_RETRY_S  # the replay offers them
                    st.retrying.clear()
                    st.retried = False
                room = WINDOW - len(st.inflight)
                # the last window of a retry all taken: the next follows at once
                taken = st.retried and not st.retrying and not st.retry_refused
                if room > 0 and self._refused and (now >= st.next_refused_retry or taken):
                    st.next_refused_retry = now + REFUSED_RETRY_S
                    sent = self._send(st, self._refused_to_retry(st)[:room])
                    st.retrying, st.retry_refused = set(sent), False
                    st.retried = bool(sent)
                    room -= len(sent)
                if room > 0:
                    sent = self._send(st, self._outbox.pending(after_id=st.cursor, limit=room))
                    st.cursor = sent[-1] if sent else st.cursor
        if self._rediscover and self._connected and now >= self._next_rediscover:
            self._rediscover = False  # cleared first: an `online` from now on is answered again
            self._next_rediscover = now + REDISCOVER_EVERY_S
            self._rate_log(logging.INFO, "rediscover",
                           "MQTT: Home Assistant restarted; announcing discovery again")
            self._publish_discovery()
        if self._connected:
            for cam in self._cams.values():
                self._follow_switch(cam, now)
        if now >= st.next_stats and self._connected:
            # A heartbeat for cameras whose loop sent no stats for two intervals (a sink without
            # a loop, a stalled loop, a clip that ended before the broker answered); a running
            # loop sends them itself, every interval. The counts go with it, as with the loop's:
            # a connect cleared them for a next frame that may never come
            for cam in self._cams.values():
                if now - cam.stats_t >= 2 * self._mq.stats_interval_s:
                    self._publish_stats(cam)
                    self._counts_again(cam)
            st.next_stats = now + self._mq.stats_interval_s

    def _tell_drained(self) -> None:
        """Stats again at once when the backlog the last ones told of is gone: those a
        reconnect sends go before its replay, and their `outbox_depth` (Home Assistant's outbox
        sensor) would otherwise stay retained for a whole `stats_interval_s` after it drained."""
        cams = [c for c in self._cams.values() if c.backlog]
        if cams and self._outbox.depth() == 0:
            for cam in cams:
                self._publish_stats(cam)

    def _check_stall(self, st: _Sending, now: float, progress: bool) -> None:
        """A broker that keeps the connection (answers PINGs) but acknowledges nothing holds the
        events in flight for good: MQTT sends a message again only on a new connection. Timed
        from the last acknowledgement (or the first send after none was in flight), across the
        reconnects it makes itself; after twice DOWN_GRACE_S on one connection it is dropped, as
        a dead link would be, so the reconnect sends them again (faults() names the stall after
        DOWN_GRACE_S). The broker away is no stall (faults() says 'not connected'): the next
        connection, which sends what was in flight again, is timed from its start."""
        if not st.inflight or progress:
            self._unacked_since = now if st.inflight else None
            return
        if not self._connected:
            if self._unacked_since is not None and self._stall_drop < self._unacked_since:
                self._unacked_since = None  # lost by itself, not dropped for this stall
            return
        if self._unacked_since is None:
            self._unacked_since = now
        since = max(self._unacked_since, self._stall_drop, self._connected_at)
        if now - since < 2 * DOWN_GRACE_S:
            return
        self._stall_drop = now
        if self._log_once_a_minute.due("stall"):
            log.warning("MQTT: broker %s has acknowledged none of the %d event(s) sent in the last "
                        "%.0f s, while it keeps the connection; reconnecting to send them again "
                        "(kept in the outbox)", self._url, len(st.inflight), now - self._unacked_since)
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # paho's loop sees the link lost and reconnects

    def _send(self, st: _Sending, rows: list[Row]) -> list[int]:
        """Hand rows to paho in order; the ids it took (it stops taking when the link drops)."""
        sent = []
        for row in rows:
            mid = self._publish_row(row, buffered=row.id <= st.replay_upto)
            if mid is None:
                break
            if isinstance(mid, str):  # too large for the broker: kept, the next ones go on
                self._refuse(row.id, row.topic, mid, "raise the broker's maximum packet size, "
                             "e.g. mosquitto's max_packet_size")
            else:
                st.inflight[mid] = (row.id, row.topic)
            sent.append(row.id)
        return sent

    def _refused_to_retry(self, st: _Sending) -> list[Row]:
        """Refused rows already passed on this connection and not in flight (the ones that
        still exist: the outbox bounds may have dropped some)."""
        flying = {row_id for row_id, _ in st.inflight.values()}
        ids = [i for i in self._refused if i <= st.cursor and i not in flying]
        rows = self._outbox.rows(ids)
        for gone in set(ids) - {r.id for r in rows}:
            self._refused.pop(gone, None)
        return rows

    def _refusal_to_log(self, topic: str, reason: str, kind: str = "side") -> str | None:
        """What to check (for the message) when this refusal is to be logged, else None: a
        refusal repeats with every message. Each topic is named at its first refusal; after
        that the refusals of one reason and ``kind`` (events, the other topics) are one line a
        minute, whichever topic: an ACL that grants maskd nothing was a line per topic every
        minute (8 a camera), where the fault is one."""
        said = f"{topic} {reason}"
        first = said not in self._refusals_said
        self._refusals_said.add(said)
        # taken also by a first naming: a repeat within its minute is no line more
        due = self._log_once_a_minute.due(f"{kind} again {reason}")
        if not (first or due):
            return None
        if reason == QUOTA_EXCEEDED:  # a cloud broker's rate limit: passes, unlike an ACL
            return "the broker's quota or rate limit for this client; it takes them once that allows"
        who = f"user {self._mq.username!r}" if self._mq.username else "this client"
        return f"does the broker's ACL let {who} publish there?"

    def _refuse(self, row_id: int, topic: str, reason: str, hint: str | None = None) -> None:
        """The broker said no (MQTT 5 PUBACK), or would have (too large): keep the event, say so
        once a minute per cause; ``hint`` says what to check (default: the ACL)."""
        self._refused[row_id] = reason
        if check := self._refusal_to_log(topic, reason, "event"):
            log.error("MQTT: broker %s refused an event on %s: %s; %d event(s) refused so far, "
                      "kept in the outbox and offered again every %.0f s (%s)", self._url, topic,
                      reason, len(self._refused), REFUSED_RETRY_S, hint or check)

    def _too_large(self, topic: str, payload: str | bytes) -> str | None:
        """Why the PUBLISH must not be sent, or None: over the broker's maximum packet size, the
        broker would not refuse that one message but drop the connection (and send the last
        will), and the same message sent again after the reconnect would drop the next one."""
        limit = self._max_packet
        if limit is None or publish_size(topic, payload) <= limit:
            return None
        return f"larger than the broker's maximum packet size, at most {limit} bytes"

    def _publish_row(self, row: Row, buffered: bool) -> int | str | None:
        """Hand one event to paho, then its snapshot (if one is still held): the paho message id,
        why the event is too large for the broker (not sent), or None when the connection is
        gone (the next connect replays from the outbox)."""
        with self._snap_lock:  # held over the publish: emit cannot drop the snapshot it promises
            snap = self._snapshots.get(row.id)
            if snap is not None and self._too_large(*snap) is not None:
                self._snapshots.pop(row.id)
                self.snapshots_dropped += 1
                self._rate_log(logging.WARNING, "snapshot size", "MQTT: a snapshot of %d bytes is "
                               "larger than broker %s accepts (maximum packet size %d bytes); "
                               'dropped, its event goes out with "snapshot": false (%d dropped '
                               "since start)", len(snap[1]), self._url, self._max_packet,
                               self.snapshots_dropped)
                snap = None
            wire = _dumps(on_wire(row.payload, buffered, snapshot_follows=snap is not None))
            if (too_large := self._too_large(row.topic, wire)) is not None:
                return too_large  # its snapshot waits with it: offered again, it may still go
            info = self._client.publish(row.topic, wire, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return None
            self._snapshots.pop(row.id, None)
        self.published += 1
        if snap is not None:
            self._side(snap[0], snap[1])
        return info.mid


class CameraSink(EventSink):
    """One camera's view of a shared MqttSink (the ``cameras:`` layout)."""

    label = "MQTT"

    def __init__(self, link: MqttSink, cam: _Camera) -> None:
        self._link = link
        self._cam = cam

    def emit(self, event: ViolationEvent) -> None:
        self._link.emit(event)

    def emit_all(self, events: list[ViolationEvent]) -> None:
        self._link.emit_all(events)

    def on_state(self, state: FaceCounts) -> None:
        self._link.camera_state(self._cam, state)

    def on_stats(self, stats: LoopStats) -> None:
        self._link.camera_stats(self._cam, stats)

    def faults(self) -> list[str]:
        return self._link.faults()

    def left_open(self) -> list[ViolationEvent]:
        return self._link.left_open()

    def on_stop(self, stop: str, why: str) -> None:
        self._link.on_stop(stop, why)

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        return self._link.flush(timeout, cancel)

    def close(self) -> None:
        self._link.camera_closed(self._cam)


def _all_published(infos: list[mqtt.MQTTMessageInfo]) -> bool:
    """Whether the broker acknowledged every one of ``infos`` (the stop's offline state)."""
    try:
        return all(i.rc == mqtt.MQTT_ERR_SUCCESS and i.is_published() for i in infos)
    except (RuntimeError, ValueError):
        return False


def _discovery_payload(mq: MqttConfig, topics: Topics, device_id: str, camera: str,
                       url: str | None) -> str:
    """A camera's discovery config as published: one place for the sink and doctor's size check."""
    return _dumps(discovery_config(topics, device_id, camera, mq.snapshots, url))


def discovery_messages(cfg: Config) -> dict[str, str]:
    """Each camera's discovery topic and config as `run` publishes them for ``cfg``: what
    `maskd doctor` holds against the broker's maximum packet size."""
    url = configuration_url(cfg)
    out = {}
    for c in cfg.cameras_resolved():
        topics = Topics.build(cfg.mqtt, cfg.device_id, c.camera, device_status=bool(cfg.cameras))
        out[topics.discovery] = _discovery_payload(cfg.mqtt, topics, cfg.device_id, c.camera, url)
    return out


def configuration_url(cfg: Config) -> str | None:
    """Home Assistant's link to the status page: the first camera's that serves one."""
    urls = (status_page_url(c.preview.http) for c in cfg.cameras_resolved())
    return next((u for u in urls if u), None)


def status_page_url(listen: str | None) -> str | None:
    """Home Assistant's link to the status page, when one is served and reachable by name."""
    if not listen:
        return None
    host, port = parse_listen(listen)
    if is_wildcard(host):
        host = socket.gethostname()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"
