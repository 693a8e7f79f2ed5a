"""The uplink: ships the journal to the command centre over MQTT and keeps it until acknowledged.

``xunfang run uplink`` is the only process of a unit that speaks to the
network (docs/architecture.md, invariant 4). It

- connects with a persistent session (MQTT 5 ``clean_start=False`` with a
  7-day session expiry, or 3.1.1 ``clean_session=False``), a retained Last
  Will ``{"online": false}`` on ``…/status``, and publishes a retained birth
  on every connect;
- publishes every journal event to ``…/events/{kind}`` in sequence order at
  QoS 1, at most one in-flight window (``[mqtt] inflight``, further capped by
  an MQTT 5 broker's Receive Maximum) unanswered at a time;
- keeps every event until the centre's ledger acknowledges it with a signed,
  retained ``…/ack`` (docs/mqtt-api.md, End-to-end acknowledgement): a PUBACK only
  says the broker took the message. With ``[mqtt] centre_ack = false`` the
  contiguous prefix of PUBACKed events counts as acknowledged instead;
- re-sends: after every reconnect from the first unacknowledged event, and
  when PUBACKs run ahead of the acknowledgement for ``resend_after_s``
  (the broker took events but the ledger never stored them: Mosquitto drops
  queued messages past ``max_queued_messages`` and loses its queue on a
  crash), one in-flight window at a time, doubling the wait while the
  acknowledgement does not move (a second track: new events keep going out
  in order meanwhile);
- notices a silently dead link within ``[mqtt] keepalive_s`` (:class:`_LinkWatch`),
  where paho alone takes about twice that;
- publishes a retained ``…/health`` every ``health_interval_s`` and prunes
  acknowledged events every ``[journal] prune_every_s``;
- hands signed commands and desired documents (``cmd``, ``desired/+``) to
  :mod:`firmware_py.commands` through the same channel → handler table as acks.

The contract is ``docs/mqtt-api.md`` ("Delivery guarantee: the unit's side").

Threads: the component's own thread owns the paho client and runs its network
I/O (paho's external-loop API: ``loop_read``/``loop_write``/``loop_misc`` on
its own ``select``) between journal reads, so every paho callback runs on that
thread and no uplink state is shared. Only the blocking part of a
connection attempt (TCP connect and TLS handshake, up to ``CONNECT_TIMEOUT_S``)
runs in a short-lived helper thread, so that :meth:`UplinkComponent.step`
always returns within about half a second. Each attempt uses a fresh
``paho.mqtt.client.Client``: paho would otherwise re-send its own in-flight
copies after a reconnect, besides ours from the journal, under message ids
that no longer mean anything to us.

What survives a restart, in the journal: the ack cursor ``ack`` (the
acknowledged prefix), the cursor ``uplink_sent`` (highest sequence number
that may have been published, written *before* publishing, so an event of a
killed process is marked ``resent`` when published again), and the state key
``uplink/acks_rejected`` (so a restart does not hide rejected acks from the
centre).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import random
import select
import shutil
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, cast

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import __version__, topics
from .certhealth import certificate_health
from .clock import rfc3339_ms
from .commands import CommandProcessor
from .exc import JournalError, SignatureError
from .journal import Event, EventRow
from .runtime import Component, UnitContext
from .signing import public_key_from_b64, verify_envelope
from .statusfile import read_status

__all__ = ["BrokerState", "EnvelopeEncoder", "MessageHandler", "UplinkComponent"]

#: MQTT 5 session expiry: a unit offline for a week still finds its
#: subscriptions (ack now, desired/cmd later) and queued messages.
SESSION_EXPIRY_S = 7 * 86400
#: One step() runs the network loop this long, then hands back to the runtime.
STEP_S = 0.5
#: Longest wait in the network loop; also how often the journal is polled for
#: events that other processes (station, camera) appended.
POLL_S = 0.05
#: TCP connect and TLS handshake, each (paho's ``connect_timeout``).
CONNECT_TIMEOUT_S = 10.0
#: A helper thread still connecting after this long is given up on.
ATTEMPT_DEADLINE_S = 2 * CONNECT_TIMEOUT_S + 5.0
#: From a socket that is open to a CONNACK.
CONNACK_TIMEOUT_S = 20.0
#: A connection that lasted this long resets the reconnect backoff; one that
#: dropped sooner (flapping, session takeover) keeps backing off.
STABLE_AFTER_S = 30.0
#: The in-memory acknowledgement reaches the journal at most this often: each
#: write is an fsync, and the ledger may acknowledge every event separately.
ACK_FLUSH_S = 0.25
#: ``uplink_sent`` is written ahead by this many events, one fsync per chunk.
RESERVE_AHEAD = 1000
#: Events read from the journal per query.
BATCH = 512
#: Events encoded ahead while the window is full (at least two windows).
PREPARE_AHEAD = 64
#: Largest message from the centre we look at (docs/mqtt-api.md: 256 KiB).
MAX_INBOUND_BYTES = 256 * 1024
#: The resend wait doubles up to this many times ``resend_after_s`` …
RESEND_WAIT_CAP_FACTOR = 16
#: … and never beyond this.
RESEND_WAIT_CAP_S = 3600.0
#: While re-sending, the span allowed beyond the ack doubles each time the ack
#: covers all of it, up to this many windows (like TCP's slow start).
RESEND_SPAN_CAP_WINDOWS = 64
#: On a clean stop, how long to wait for the death message's PUBACK.
GOODBYE_TIMEOUT_S = 2.0
#: The first pruning after start (then every ``[journal] prune_every_s``).
FIRST_PRUNE_S = 5.0
#: Counters are written to the journal at most this often.
PERSIST_EVERY_S = 5.0
#: Repeated warnings of one kind are logged at most this often.
LOG_EVERY_S = 30.0
#: How often the retained status's state fields are compared with what was published.
STATUS_CHECK_S = 1.0

SENT_CURSOR = "uplink_sent"
ACKS_REJECTED_KEY = "uplink/acks_rejected"
# The broker's side of the last health report, for `xunfang status` with the uplink stopped.
LAST_HEALTH_KEY = "uplink/last_health"
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")

#: ``handler(topic, message)`` for one channel of incoming messages (``ack``
#: now; ``desired`` and ``cmd`` plug in the same way). Exceptions are caught,
#: logged and counted by the dispatcher.
MessageHandler = Callable[[topics.Topic, mqtt.MQTTMessage], None]


class BrokerState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


class AckRejected(Exception):
    """An ack that must change nothing; ``reason`` is a short code for logs and health."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _ConnectAttempt:
    """The blocking half of one connection attempt, in a helper thread.

    ``Client.reconnect()`` resolves the host, connects TCP, does the TLS
    handshake and sends CONNECT. The component thread does not touch the
    client until ``done`` is set; then it takes the client over and reads the
    CONNACK in its own loop. An attempt given up on closes its own socket
    when it finally returns, so a late connection cannot take over the
    session of the next one.
    """

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._abandoned = False
        self.thread = threading.Thread(target=self._run, name="xunfang-uplink-connect",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.rc = self.client.reconnect()
        except BaseException as err:  # reported to the component thread
            self.error = err
        finally:
            with self._lock:
                self.done.set()
                if self._abandoned:
                    _close_socket(self.client)

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self.done.is_set():
                _close_socket(self.client)


class _LinkWatch:
    """Notices a silent dead link (a partition, a blackholed route) within a keepalive.

    paho sends PINGREQ only after a keepalive without traffic and then waits another
    keepalive for PINGRESP: about twice the keepalive before a dead link is noticed,
    later than the broker's 1.5x for the Last Will. The uplink asks the broker for an
    answer after half a keepalive without a byte from it, and calls the link dead
    after a whole keepalive without one.
    """

    PROBE: ClassVar[str] = "probe"
    DEAD: ClassVar[str] = "dead"

    def __init__(self, keepalive_s: float) -> None:
        self.probe_after = keepalive_s / 2
        self.dead_after = float(keepalive_s)
        self.heard()

    def heard(self) -> None:
        """Bytes came from the broker."""
        self.last_heard = time.monotonic()
        self.probed = False

    def check(self, now: float) -> str | None:
        """PROBE once when the link has been quiet for a while, DEAD when it stays quiet."""
        quiet = now - self.last_heard
        if quiet >= self.dead_after:
            return self.DEAD
        if quiet >= self.probe_after and not self.probed:
            self.probed = True
            return self.PROBE
        return None


def _close_socket(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux


def _set_cork(sock: Any, on: bool) -> None:
    """Hold the socket's small writes back (on), then send them as full segments (off).

    paho writes each PUBLISH with its own send(), and the kernel mostly sends
    each as a segment of its own, through its whole transmit path (on loopback
    also the broker's receive path and a wake-up) per event. Corked over a
    burst of publishes (:meth:`UplinkComponent._pump`), the kernel sends the
    burst in a few segments when the cork comes off, at the end of the burst or
    before an fsync in it. In ``bench/uplink.py`` this took the uplink's system
    time per event from about 28 to 16 µs, and uncorking in the middle of a
    burst was slower. Bytes and their order are unchanged. Where there is no
    TCP_CORK (or the socket is not TCP) this does nothing.
    """
    if _TCP_CORK is not None and sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1 if on else 0)


# One encoder for every payload: json.dumps() with arguments builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# What that encoder does to a str with ensure_ascii=False (the C version where built).
_encode_str: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]
_RESENT_END = ',"resent":true}'
# The milliseconds and the end of an RFC 3339 time in a JSON string, by ts_ms % 1000.
_MS_Z = [f'{ms:03d}Z"' for ms in range(1000)]


def _number(value: float) -> str:
    # The encoder writes a finite float as float.__repr__; anything else its own way.
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _ENCODER.encode(value)


def _compact(doc: dict[str, Any]) -> bytes:
    return _ENCODER.encode(doc).encode("utf-8")


class EnvelopeEncoder:
    """The compact UTF-8 JSON of ``event.envelope(resent)``, byte for byte, faster.

    Draining a backlog, building the envelope dict, encoding it generically and
    formatting its time with ``strftime`` took as long as paho's own work per
    event. This writes the fixed layout directly and formats the time once per
    second. :meth:`encode_row` goes further for a journal row: the fields that
    are the same for every event of a journal are encoded once, and the data
    goes in as the JSON text the journal stored, neither parsed nor encoded
    again. That text is ``json.dumps(data, ensure_ascii=False, separators=(",",
    ":"), sort_keys=True)``, which is what encoding ``json.loads`` of it gives
    back, byte for byte: parsing keeps the key order of the text, and strings,
    numbers and constants come back as the same text.

    Every ``check_every``-th event is also encoded the reference way; on any
    difference (``Event.envelope()`` or the journal's storage changed and this
    did not) it logs an error and uses the reference from then on.
    """

    def __init__(self, check_every: int = 1000) -> None:
        self.check_every = check_every
        self.fallback = False
        self._count = 0
        self._sec: int | None = None
        self._ts_head = ""
        self._ts_head_json = '"'
        # encode_row(): the head of the envelope for the last (unit, site, journal),
        # which a journal's rows all share.
        self._head_key: tuple[str, str, str] | None = None
        self._head = ("", "")

    def _ts(self, ts_ms: int) -> str:
        sec = ts_ms // 1000
        if sec != self._sec:
            self._sec, self._ts_head = sec, rfc3339_ms(ts_ms)[:-4]  # up to the "."
            self._ts_head_json = _encode_str(self._ts_head)[:-1]  # … without the closing quote
        return f"{self._ts_head}{ts_ms % 1000:03d}Z"

    def encode(self, event: Event, resent: bool) -> bytes:
        if self.fallback or event.ts_ms < 0:
            return _compact(event.envelope(resent=resent))
        s = _encode_str
        text = (f'{{"v":1,"id":{s(event.id)},"unit":{s(event.unit)},"site":{s(event.site)},'
                f'"journal":{s(event.journal)},"seq":{int(event.seq)},"kind":{s(event.kind)},'
                f'"ts":{s(self._ts(event.ts_ms))},"boot_id":{s(event.boot_id)},'
                f'"mono":{_number(round(event.mono, 3))},'
                f'"clock_synced":{"true" if event.clock_synced else "false"},'
                f'"data":{_ENCODER.encode(event.data)}{_RESENT_END if resent else "}"}')
        payload = text.encode("utf-8")
        self._count += 1
        if self._count % self.check_every == 1:
            return self._checked(payload, event, resent)
        return payload

    def encode_row(self, row: EventRow, journal: str, resent: bool) -> bytes:
        """``encode(row.to_event(journal), resent)``, without parsing the row's data."""
        seq, kind, unit, site, ts_ms, boot_id, mono, clock_synced, data_json = row
        if self.fallback or ts_ms < 0:
            return _compact(row.to_event(journal).envelope(resent=resent))
        key = (unit, site, journal)
        if key != self._head_key:
            self._head_key, self._head = key, self._encode_head(*key)
        head, after_id = self._head
        if ts_ms // 1000 != self._sec:
            self._ts(ts_ms)  # a new second: _ts_head_json follows
        s = _encode_str
        seq = int(seq)
        text = (f'{head}{seq}{after_id}{seq},"kind":{s(kind)},'
                f'"ts":{self._ts_head_json}{_MS_Z[ts_ms % 1000]},"boot_id":{s(boot_id)},'
                f'"mono":{_number(round(mono, 3))},'
                f'"clock_synced":{"true" if clock_synced else "false"},'
                f'"data":{data_json}{_RESENT_END if resent else "}"}')
        payload = text.encode("utf-8")
        self._count += 1
        if self._count % self.check_every == 1:
            return self._checked(payload, row.to_event(journal), resent)
        return payload

    @staticmethod
    def _encode_head(unit: str, site: str, journal: str) -> tuple[str, str]:
        """The envelope's text before and after the seq in ``id`` (the same for every
        event of a journal). The id is ``{unit}:{journal}:{seq}``: a JSON string is
        escaped character by character, so it is the encoded prefix without its
        closing quote, then the digits."""
        s = _encode_str
        return (f'{{"v":1,"id":{s(f"{unit}:{journal}:")[:-1]}',
                f'","unit":{s(unit)},"site":{s(site)},"journal":{s(journal)},"seq":')

    def _checked(self, payload: bytes, event: Event, resent: bool) -> bytes:
        reference = _compact(event.envelope(resent=resent))
        if payload != reference:
            self.fallback = True
            logging.getLogger("xunfang.uplink").error(
                "fast envelope encoding differs from Event.envelope() for seq %d; using "
                "the reference encoding from now on", event.seq)
            return reference
        return payload


def _describe_error(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}" if type(err).__name__ not in text else text


class _Throttle:
    """Logs a repeated condition once per ``every`` seconds, with the count it held back."""

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, key: str) -> int | None:
        """None: stay quiet; else the number of messages held back since the last one."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class _PahoLog:
    """paho's log for one connection, cheap enough to sit on every packet.

    paho reports socket errors ("failed to receive on socket: …", the only word
    of a TLS alert) at ERROR, on every retry: they are kept for the uplink's own
    warning instead. Its packet lines go to ``xunfang.uplink.paho`` only when that
    logs DEBUG (checked once per connection, since paho logs twice per event).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self.last_error: str | None = None

    def log(self, level: int, msg: object, *args: object) -> None:
        if level >= logging.ERROR:
            try:
                self.last_error = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                self.last_error = str(msg)
            level = logging.DEBUG
        if self.debug or level >= logging.WARNING:
            self.logger.log(level, msg, *args)


class _Ready(NamedTuple):
    """An event encoded for the wire, waiting for room in the window."""

    seq: int
    topic: str
    payload: bytes
    resent: bool


class UplinkComponent(Component):
    """Ships the journal to MQTT in order and keeps it until the centre acknowledges it.

    Example (what ``xunfang run uplink`` does)::

        ctx = UnitContext(config, journal, SystemClock(), threading.Event())
        uplink = UplinkComponent(ctx)
        uplink.start()          # connects, publishes birth, health and events
        ...
        uplink.request_stop()   # death status, DISCONNECT
        uplink.join(10)
    """

    name: ClassVar[str] = "uplink"

    def __init__(self, ctx: UnitContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.mqtt_cfg = cfg.mqtt
        self.unit = cfg.unit.id
        self.site = cfg.unit.site
        self.journal = ctx.journal
        self.clock = ctx.clock
        self.journal_id = self.journal.journal_id
        # Journals this one replaced (rebuilt after damage): their acks are stale, not forged.
        self._retired_journals: set[str] = set()
        self.status_topic = topics.status(self.site, self.unit)
        self.health_topic = topics.health(self.site, self.unit)
        self.ack_topic = topics.ack(self.site, self.unit)
        self._event_topics: dict[str, str] = {}
        self._encoder = EnvelopeEncoder()
        # Acks are checked against ack_keys only: the ledger's key must not be
        # able to command, and a command key must not be able to acknowledge.
        self.ack_keys: dict[str, Ed25519PublicKey] = {}
        for name, key in cfg.security.ack_keys.items():
            try:
                self.ack_keys[name] = public_key_from_b64(key)
            except SignatureError as err:
                # Config checks the length; this also wants canonical base64. A key
                # that fails only rejects the acks signed with it.
                self.log.error("[security] ack_keys %s is unusable, acks signed with it "
                               "will be rejected: %s", name, err)
        # Channel → handler; desired/cmd register here when they come.
        self.handlers: dict[str, MessageHandler] = {"ack": self._handle_ack}
        # (topic filter, QoS) subscribed on every connect.
        self.subscriptions: list[tuple[str, int]] = [(self.ack_topic, 1)]
        # Signed commands and desired state (firmware_py/commands.py): verified and
        # applied on this thread, inside the MQTT callback.
        self.commands = CommandProcessor(cfg, self.journal, self.clock)
        for topic_filter, qos in self.commands.subscriptions():
            channel = "cmd" if topic_filter.endswith("/cmd") else "desired"
            self.register_handler(channel, self._handle_command, [(topic_filter, qos)])
        self._paho_logger = logging.getLogger("xunfang.uplink.paho")
        self._paho_log = _PahoLog(self._paho_logger)
        self._rng = random.Random()
        self._throttle = _Throttle()
        self._started_mono = time.monotonic()

        # Connection (touched by the component thread only).
        self.state = BrokerState.DISCONNECTED
        self.state_since_ms = self.clock.wall_ms()
        self._client: mqtt.Client | None = None
        self._attempt: _ConnectAttempt | None = None
        self._next_attempt = 0.0
        self._failures = 0
        self._connected_at = 0.0
        self._connack_deadline = 0.0
        self._lost_reason: str | None = None
        self._closing = False
        self.last_error: str | None = None
        self.window = self.mqtt_cfg.inflight
        self._link = _LinkWatch(self.mqtt_cfg.keepalive_s)
        self._corked: Any = None  # the socket corked for the current burst (_pump)

        # Counters for health (process lifetime; acks_rejected also persisted).
        self.connects = 0
        self.published = 0
        self.resent = 0
        self.resends = 0
        self.pubacks = 0
        self.publishes_refused = 0
        self.acks_accepted = 0
        self.acks_stale = 0
        self.acks_rejected = 0
        self.last_ack_rejection: str | None = None
        self.messages_bad = 0
        self._acks_rejected_saved = 0
        self._last_persist = 0.0
        # The state fields of the status last published (None: none yet on this link).
        self._status_published: tuple[Any, ...] | None = None
        self._next_status_check = 0.0

        self._reset_progress()

    # -- set-up and tear-down ----------------------------------------------------------

    def _reset_progress(self) -> None:
        """Where publishing stands; reloaded from the journal by setup()."""
        self._acked = 0            # acknowledged prefix, in memory (ahead of the journal)
        self._acked_saved = 0      # … as last written to the journal
        self._last_ack_flush = 0.0
        self._sent_before = 0      # uplink_sent of earlier processes
        self._sent_high = 0        # highest seq published by this process
        self._reserved = 0         # uplink_sent as written (>= _sent_high)
        self._next_seq = 1
        self._events: deque[EventRow] = deque()  # read from the journal, not yet encoded
        self._ready: deque[_Ready] = deque()    # encoded, next to publish
        self._inflight: dict[int, int] = {}   # mid → seq of events awaiting PUBACK
        self._control: dict[int, str] = {}    # mid → what, for status/health awaiting PUBACK
        # status/health waiting for room in the window
        self._control_queue: deque[tuple[str, Callable[[], bytes], str]] = deque()
        self._subscribe_mids: dict[int, list[str]] = {}
        self._pubacked: set[int] = set()      # centre_ack=false: PUBACKed seqs above the ack
        self._puback_high = 0      # highest seq the broker answered on this connection
        self._waiting_since: float | None = None  # PUBACKed events waiting for the ack since
        self._resend_wait = float(self.mqtt_cfg.resend_after_s)
        # The resend track: old events again, paced by the ack, beside new ones.
        self._resend_next: int | None = None      # None: not re-sending
        self._resend_end = 0                      # re-send nothing beyond this yet
        self._resend_items: deque[_Ready] = deque()
        self._resend_span = self.window
        self._resend_ceiling: int | None = None
        self._next_health = 0.0
        self._next_prune = 0.0

    def _load_progress(self) -> None:
        j = self.journal
        self.journal_id = j.journal_id
        self._acked = self._acked_saved = j.acked_seq()
        self._sent_before = self._reserved = j.cursor(SENT_CURSOR)
        self._next_seq = self._acked + 1
        saved = j.state_get(ACKS_REJECTED_KEY, 0)
        if isinstance(saved, int) and not isinstance(saved, bool) and saved > self.acks_rejected:
            self.acks_rejected = self._acks_rejected_saved = saved

    def _adopt_rebuilt_journal(self) -> None:
        """The journal was found damaged and rebuilt (by any process): publish the new one.

        Its events keep their sequence numbers under the new journal id, so the birth
        (the new id and its acknowledged prefix) goes out first and publishing starts
        again from the first unacknowledged event; the connection stays up.
        """
        old = self.journal_id
        self._retired_journals.add(old)
        self._reset_progress()
        self._load_progress()
        self.log.warning("journal %s was rebuilt as %s: publishing from event %d",
                         old, self.journal_id, self._acked + 1)
        if self.state is BrokerState.CONNECTED:
            self._publish_control(self.status_topic, self._birth_payload, "birth")
            self._restart_from_ack()

    def setup(self) -> None:
        self._reset_progress()
        j = self.journal
        self._load_progress()
        now = time.monotonic()
        self._next_attempt = now          # a first attempt at once
        self._next_prune = now + min(FIRST_PRUNE_S, self.ctx.config.journal.prune_every_s)
        self._closing = False
        self.log.info("uplink for %s/%s: journal %s, last seq %d, acknowledged %d; broker %s:%d "
                      "MQTT %s%s, centre_ack %s", self.site, self.unit, self.journal_id,
                      j.last_seq(), self._acked, self.mqtt_cfg.host, self.mqtt_cfg.port,
                      self.mqtt_cfg.protocol, " TLS" if self.mqtt_cfg.tls else "",
                      self.mqtt_cfg.centre_ack)

    def teardown(self) -> None:
        self._closing = True
        try:
            self._goodbye()
        finally:
            if self._attempt is not None:
                self._attempt.abandon()
                self._attempt = None
            if self._client is not None:
                _close_socket(self._client)
                self._client = None
            self._set_state(BrokerState.DISCONNECTED)
            try:
                self._flush_ack(force=True)
                self._persist_counters(force=True)
            except JournalError as err:
                self.log.error("could not save the uplink's state: %s", err)

    def _goodbye(self) -> None:
        """Clean stop: retained death status, wait for its PUBACK, DISCONNECT.

        A normal DISCONNECT makes the broker discard the Last Will, so the
        death message is published here instead.
        """
        client = self._client
        if client is None or self.state is not BrokerState.CONNECTED:
            return
        info = client.publish(self.status_topic, self._death_payload(), qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._control[info.mid] = "death"
            deadline = time.monotonic() + GOODBYE_TIMEOUT_S
            while info.mid in self._control and time.monotonic() < deadline:
                if self._network(client, POLL_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if info.mid in self._control:
                self.log.warning("no PUBACK for the death status within %.0f s",
                                 GOODBYE_TIMEOUT_S)
        client.disconnect()
        self.log.info("disconnected from %s:%d (clean stop)", self.mqtt_cfg.host,
                      self.mqtt_cfg.port)

    # -- the loop ------------------------------------------------------------------------

    def step(self) -> None:
        end = time.monotonic() + STEP_S
        while not self.stopping:
            if self.journal.journal_id != self.journal_id:
                self._adopt_rebuilt_journal()
            self._drive_connection()
            client = self._client
            if client is not None:
                self._pump(client)
                # The window is as full as it gets: the moment for the ack's fsync (at
                # most every ACK_FLUSH_S), rather than in _timers() after the PUBACKs
                # emptied it, where the broker would sit idle through the fsync.
                self._flush_ack()
                rc = self._network(client, POLL_S)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._lost_reason is None:
                    self._lost_reason = mqtt.error_string(rc)
                if self._lost_reason is None and self.state is BrokerState.CONNECTED:
                    self._watch_link(client)
                if self._lost_reason is not None:
                    self._drop_connection(self._lost_reason)
            elif self._attempt is not None:
                self._attempt.done.wait(POLL_S)
            else:
                self.sleep(POLL_S)
            self._timers()
            self.beat()
            if time.monotonic() >= end:
                return

    def _network(self, client: mqtt.Client, timeout: float) -> MQTTErrorCode:
        """One round of paho's network I/O: wait up to ``timeout`` for the socket.

        paho's "external event loop" API rather than ``Client.loop()``: loop()
        makes a socket pair to be woken from other threads, after which every
        publish() also writes a byte into it. Here the only thread that
        publishes is the one waiting, so that is one syscall per event for
        nothing; publish() writes to the socket directly instead.
        """
        sock = client.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        # TLS may hold decrypted bytes that select() cannot see.
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        try:
            readable, writable, _ = select.select(
                [sock], [sock] if client.want_write() else [], [], 0.0 if pending else timeout)
        except (OSError, ValueError):
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if readable or pending:
            self._link.heard()
            rc = client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        if writable and client.socket() is not None:
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return client.loop_misc()

    def _watch_link(self, client: mqtt.Client) -> None:
        """Probe a quiet link; give up on one that stays silent (see _LinkWatch)."""
        verdict = self._link.check(time.monotonic())
        if verdict == _LinkWatch.PROBE:
            # paho has no public PINGREQ. An UNSUBSCRIBE from a topic the unit never
            # subscribes to (its own status) is as small, changes nothing, and is
            # answered (UNSUBACK) whether the ACL allows it or not: tested against
            # Mosquitto with the shipped ACL and NATS's MQTT gateway.
            client.unsubscribe(self.status_topic)
        elif verdict == _LinkWatch.DEAD:
            self._lost_reason = (f"nothing from the broker for {self._link.dead_after:.0f} s "
                                 "([mqtt] keepalive_s), the link is dead")

    def _timers(self) -> None:
        now = time.monotonic()
        self._flush_ack()
        self.commands.tick()  # expiry of desired state; throttles itself to ~1 s
        if self.state is BrokerState.CONNECTED:
            self._check_resend(now)
            if now >= self._next_status_check:
                self._republish_changed_status(now)
            if now >= self._next_health:
                self._publish_health()
        if now >= self._next_prune:
            self._prune()
        self._persist_counters()

    # -- connection ------------------------------------------------------------------------

    def _set_state(self, state: BrokerState) -> None:
        if state is not self.state:
            self.state = state
            self.state_since_ms = self.clock.wall_ms()

    def _drive_connection(self) -> None:
        now = time.monotonic()
        attempt = self._attempt
        if attempt is not None:
            if attempt.done.is_set():
                self._attempt = None
                self._finish_attempt(attempt)
            elif now - attempt.started > ATTEMPT_DEADLINE_S:
                self._attempt = None
                attempt.abandon()
                self._attempt_failed(f"still connecting after {ATTEMPT_DEADLINE_S:.0f} s")
            return
        if self._client is None:
            if now >= self._next_attempt:
                self._start_attempt()
        elif self.state is BrokerState.CONNECTING and now > self._connack_deadline:
            self._drop_connection(f"no CONNACK within {CONNACK_TIMEOUT_S:.0f} s")

    def _start_attempt(self) -> None:
        self._set_state(BrokerState.CONNECTING)
        try:
            client = self._make_client()
        except (OSError, ValueError) as err:
            # A missing password file or certificate: retried, as it may be put right.
            self._attempt_failed(f"cannot set up the connection: {_describe_error(err)}")
            return
        self._attempt = _ConnectAttempt(client)
        self._attempt.start()

    def _make_client(self) -> mqtt.Client:
        cfg = self.mqtt_cfg
        v5 = cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=topics.client_id(self.unit),
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            # Reconnects are ours; this also stops paho's silent fallback to MQTT 3.1.
            reconnect_on_failure=False,
        )
        self._paho_log = _PahoLog(self._paho_logger)
        # paho only ever calls .log(level, msg, *args) on it.
        client.enable_logger(cast(logging.Logger, self._paho_log))
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(self.mqtt_cfg.inflight)
        client.will_set(self.status_topic, self._death_payload(), qos=1, retain=True)
        if cfg.username is not None:
            password = None
            if cfg.password_file is not None:
                password = Path(cfg.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca),
                certfile=str(cfg.tls.cert) if cfg.tls.cert else None,
                keyfile=str(cfg.tls.key) if cfg.tls.key else None,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                                 clean_start=False, properties=props)
        else:
            client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        return client

    def _finish_attempt(self, attempt: _ConnectAttempt) -> None:
        if attempt.error is not None or attempt.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            _close_socket(attempt.client)
            why = (_describe_error(attempt.error) if attempt.error is not None
                   else mqtt.error_string(attempt.rc))
            self._attempt_failed(self._explain(why))
            return
        # CONNECT is sent; the CONNACK arrives through our loop.
        self._client = attempt.client
        self._lost_reason = None
        self._link.heard()
        self._connack_deadline = time.monotonic() + CONNACK_TIMEOUT_S
        self._inflight.clear()
        self._control.clear()
        self._control_queue.clear()
        self._subscribe_mids.clear()

    def _backoff(self) -> float:
        """Capped exponential backoff with full jitter in [reconnect_min_s, cap]."""
        lo, hi = self.mqtt_cfg.reconnect_min_s, self.mqtt_cfg.reconnect_max_s
        cap = min(hi, lo * 2 ** min(self._failures, 30))
        return self._rng.uniform(lo, cap) if cap > lo else lo

    def _explain(self, why: str) -> str:
        """Add what paho saw on the socket, and what a close before CONNACK means."""
        detail = self._paho_log.last_error
        self._paho_log.last_error = None
        if detail and detail not in why:
            why = f"{why} ({detail})"
        if self.state is not BrokerState.CONNECTED and self.mqtt_cfg.tls is not None and \
                self._client is not None and "CONNACK" not in why and "refused" not in why:
            why += ("; closed before CONNACK, which is how a broker refuses a client "
                    "certificate: check [mqtt] tls cert and key against the broker's CA")
        return why

    def _attempt_failed(self, why: str) -> None:
        self._client = None
        self._failures += 1
        delay = self._backoff()
        self._next_attempt = time.monotonic() + delay
        self._set_state(BrokerState.DISCONNECTED)
        cfg = self.mqtt_cfg
        # The first failure, and any new kind of failure, at WARNING; repeats quieter.
        level = logging.WARNING if why != self.last_error else logging.INFO
        self.last_error = why
        self.log.log(level, "cannot connect to %s:%d (attempt %d): %s; retrying in %.1f s, "
                     "%d event(s) pending", cfg.host, cfg.port, self._failures, why, delay,
                     self._pending())

    def _drop_connection(self, why: str) -> None:
        """The connection is gone (or given up): forget its client, schedule a reconnect."""
        why = self._explain(why)
        client, self._client = self._client, None
        self._lost_reason = None
        if client is not None:
            _close_socket(client)
        was_connected = self.state is BrokerState.CONNECTED
        self._inflight.clear()
        self._control.clear()
        self._control_queue.clear()
        self._clear_outbox()
        self._flush_ack(force=True)
        if not was_connected:
            self._attempt_failed(why)
            return
        lasted = time.monotonic() - self._connected_at
        if lasted >= STABLE_AFTER_S:
            self._failures = 0
        self._failures += 1
        delay = self._backoff()
        self._next_attempt = time.monotonic() + delay
        self._set_state(BrokerState.DISCONNECTED)
        self.last_error = why
        self.log.warning("lost the connection to %s:%d after %.0f s: %s; reconnecting in %.1f s, "
                         "%d event(s) pending", self.mqtt_cfg.host, self.mqtt_cfg.port, lasted,
                         why, delay, self._pending())

    # -- paho callbacks (all on the component thread, inside loop_read) -----------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            # Bad credentials, not authorised, unsupported protocol (NATS and MQTT 5), …
            self._lost_reason = f"broker refused the connection: {reason}"
            return
        self._set_state(BrokerState.CONNECTED)
        now = time.monotonic()
        self._connected_at = now
        self.connects += 1
        self.last_error = None
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        # An MQTT 5 broker's Receive Maximum bounds everything in flight, events and
        # status/health alike (paho cannot change its own limit once connected, so the
        # window is ours; paho's stays at [mqtt] inflight as a backstop).
        self.window = max(1, min(self.mqtt_cfg.inflight, receive_max or self.mqtt_cfg.inflight))
        self.log.info("connected to %s:%d (MQTT %s, session %s, window %d)%s",
                      self.mqtt_cfg.host, self.mqtt_cfg.port, self.mqtt_cfg.protocol,
                      "resumed" if flags.session_present else "new", self.window,
                      f", reconnect {self.connects - 1}" if self.connects > 1 else "")
        # Subscribing again on a resumed session is harmless and makes the broker
        # send the retained ack, which tells us where the centre stands.
        result, mid = client.subscribe([(t, q) for t, q in self.subscriptions])
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._subscribe_mids[mid] = [t for t, _ in self.subscriptions]
        self._status_published = None
        self._publish_control(self.status_topic, self._birth_payload, "birth")
        self._publish_health()
        self._restart_from_ack()

    def _on_disconnect(self, client: mqtt.Client, _userdata: Any,
                       flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       _properties: Properties | None) -> None:
        if client is not self._client or self._closing:
            return
        if self._lost_reason is None:
            self._lost_reason = (f"the broker sent DISCONNECT: {reason}"
                                 if flags.is_disconnect_packet_from_server
                                 else "the connection closed")

    def _on_subscribe(self, client: mqtt.Client, _userdata: Any, mid: int,
                      reasons: list[ReasonCode], _properties: Properties | None) -> None:
        filters = self._subscribe_mids.pop(mid, [])
        for i, reason in enumerate(reasons):
            if reason.is_failure:
                what = filters[i] if i < len(filters) else "?"
                self.log.error("broker refused the subscription to %s: %s (check the ACL)",
                               what, reason)

    def _on_publish(self, client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        if client is not self._client:
            return
        seq = self._inflight.pop(mid, None)
        if seq is None:
            what = self._control.pop(mid, None)
            if what is not None and reason.is_failure:
                self.log.error("broker refused the %s message: %s", what, reason)
            return
        if reason.is_failure:
            # MQTT 5 says why (0x87 not authorised, 0x97 quota exceeded, …); the event
            # is not delivered, so it counts as waiting for a re-send.
            self.publishes_refused += 1
            held = self._throttle("refused")
            if held is not None:
                self.log.error("broker refused event %d: %s%s", seq, reason,
                               f" ({held} more refused since the last report)" if held else "")
        else:
            self.pubacks += 1
            if not self.mqtt_cfg.centre_ack:
                self._pubacked.add(seq)
                self._advance_puback_prefix()
        if seq > self._puback_high:
            self._puback_high = seq
        if self._puback_high > self._acked and self._waiting_since is None:
            self._waiting_since = time.monotonic()

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Dispatch by channel; nothing a message holds may stop the loop."""
        try:
            topic = topics.parse(msg.topic)
            if topic is None or topic.site != self.site or \
                    topic.unit not in (self.unit, topics.ALL_UNITS):
                raise ValueError("not a topic of this unit")
            handler = self.handlers.get(topic.channel)
            if handler is None:
                raise ValueError(f"no handler for channel {topic.channel!r}")
            handler(topic, msg)
        except Exception as err:  # invariant 7: bad input never stops the unit
            self.messages_bad += 1
            held = self._throttle(f"message:{msg.topic}")
            if held is not None:
                self.log.warning("ignored a message on %s (%d bytes): %s", msg.topic,
                                 len(msg.payload), _describe_error(err))

    # -- commands and desired state ---------------------------------------------------------

    def _handle_command(self, topic: topics.Topic, msg: mqtt.MQTTMessage) -> None:
        self.commands.handle(msg.topic, msg.payload, retained=bool(msg.retain))
        if self.commands.take_rebirth() and self.state is BrokerState.CONNECTED:
            self._publish_control(self.status_topic, self._birth_payload, "birth")

    # -- acknowledgements -----------------------------------------------------------------

    def _handle_ack(self, topic: topics.Topic, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # a cleared retained ack
        try:
            seq = self.check_ack(topic, msg.payload)
        except AckRejected as rej:
            self.acks_rejected += 1
            self.last_ack_rejection = rej.reason
            held = self._throttle(f"ack:{rej.reason}")
            if held is not None:
                self.log.warning("rejected an ack on %s (%s): %s%s", msg.topic, rej.reason, rej,
                                 f" ({held} more since the last report)" if held else "")
            return
        if seq <= self._acked:
            # The retained ack again after a reconnect, or an older one from the
            # session's queue: normal, and it changes nothing.
            self.acks_stale += 1
            return
        self.acks_accepted += 1
        self._advance_ack(seq)

    def check_ack(self, topic: topics.Topic, payload: bytes) -> int:
        """The sequence number a signed ack acknowledges, or :class:`AckRejected`."""
        if topic.unit != self.unit:
            raise AckRejected("wrong_topic", f"an ack must come on {self.ack_topic}")
        if len(payload) > MAX_INBOUND_BYTES:
            raise AckRejected("oversized", f"{len(payload)} bytes, limit {MAX_INBOUND_BYTES}")
        try:
            env = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise AckRejected("malformed", f"not UTF-8 JSON: {_describe_error(err)}") from err
        if not isinstance(env, dict):
            raise AckRejected("malformed", f"a JSON {type(env).__name__}, not an object")
        try:
            verify_envelope(env, self.ack_keys)
        except SignatureError as err:
            raise AckRejected(err.reason, str(err)) from err
        except (ValueError, RecursionError) as err:
            raise AckRejected("malformed", _describe_error(err)) from err
        if env.get("name") != "ack":
            raise AckRejected("not_ack", f"signed message is named {env.get('name')!r}")
        target = env.get("target")
        units = target.get("units") if isinstance(target, dict) else None
        if not isinstance(target, dict) or target.get("site") != self.site or \
                not isinstance(units, list) or not (self.unit in units or "*" in units):
            raise AckRejected("wrong_target", f"addressed to {target!r}, not {self.site}/"
                                              f"{self.unit}")
        args = env.get("args")
        if not isinstance(args, dict):
            raise AckRejected("malformed", "args is not an object")
        if args.get("journal") in self._retired_journals:
            return 0  # for the journal a rebuild replaced: stale, like an old ack
        if args.get("journal") != self.journal_id:
            raise AckRejected("other_journal", f"for journal {str(args.get('journal'))[:40]!r}, "
                                               f"ours is {self.journal_id}")
        seq = args.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise AckRejected("malformed", f"seq {seq!r} is not a whole number")
        last = self.journal.last_seq()
        if seq > last:
            raise AckRejected("beyond_last_seq", f"acknowledges {seq}, but the last event of "
                                                 f"journal {self.journal_id} is {last}")
        return seq

    def _advance_ack(self, seq: int) -> None:
        """The centre (or, with centre_ack=false, the broker) has everything up to ``seq``."""
        if seq <= self._acked:
            return
        self._acked = seq
        now = time.monotonic()
        self._resend_wait = float(self.mqtt_cfg.resend_after_s)
        self._waiting_since = now if self._puback_high > seq else None
        if self._resend_next is not None:
            # The path delivers again: slide the resend span, and widen it when the
            # ack covered all of it (one window at a time past half of a span that
            # stalled before), until everything published before is re-sent.
            if seq >= self._resend_end:
                grown = self._resend_span * 2
                if self._resend_ceiling is not None and grown > self._resend_ceiling:
                    grown = self._resend_span + self.window
                self._resend_span = min(grown, self.window * RESEND_SPAN_CAP_WINDOWS)
            self._resend_end = min(seq + self._resend_span, self._next_seq - 1)
            if seq >= self._resend_next:
                self._resend_next = seq + 1
                self._resend_items.clear()
            if self._resend_next > self._resend_end:
                self._stop_resending()
        if self._next_seq <= seq:
            # Skip what the centre already holds (e.g. the retained ack after a reconnect).
            self._next_seq = seq + 1
            self._clear_outbox()
        if self._pubacked:
            self._pubacked = {s for s in self._pubacked if s > seq}

    def _advance_puback_prefix(self) -> None:
        top = self._acked
        while top + 1 in self._pubacked:
            top += 1
        if top > self._acked:
            self._advance_ack(top)

    def _flush_ack(self, force: bool = False) -> None:
        if self._acked <= self._acked_saved:
            return
        now = time.monotonic()
        if not force and now - self._last_ack_flush < ACK_FLUSH_S:
            return
        self._last_ack_flush = now
        try:
            self.journal.mark_acked(self._acked)
        except ValueError as err:
            # Cannot happen for acks checked against last_seq; kept from poisoning the loop.
            self.log.error("journal refused the ack: %s", err)
        except JournalError as err:
            # A full disk: kept in memory and written when the journal takes writes again.
            held = self._throttle("journal-ack")
            if held is not None:
                self.log.error("cannot write the acknowledgement %d: %s", self._acked, err)
            return
        self._acked_saved = self._acked

    # -- publishing ------------------------------------------------------------------------

    def _restart_from_ack(self) -> None:
        """After a (re)connect: from the first unacknowledged event, whole window open."""
        self._next_seq = self._acked + 1
        self._clear_outbox()
        self._pubacked.clear()
        self._puback_high = self._acked
        self._waiting_since = None
        self._stop_resending()
        self._resend_span = self.window
        self._resend_ceiling = None
        self._resend_wait = float(self.mqtt_cfg.resend_after_s)

    def _stop_resending(self) -> None:
        self._resend_next = None
        self._resend_items.clear()

    def _check_resend(self, now: float) -> None:
        """PUBACKs ahead of the ack for too long: re-send from the first unacknowledged
        event, one window, and wait longer before the next try.

        This is a second track: new events keep going out in order meanwhile, so
        the centre's live view does not depend on the ledger being there.
        """
        if self._waiting_since is None or self._puback_high <= self._acked:
            return
        if now - self._waiting_since < self._resend_wait:
            return
        first = self._acked + 1
        if self._resend_next is not None:
            # Stalled while re-sending: the span outran what the path holds (a small
            # broker queue) or the ledger left. Start again from one window and grow
            # carefully past half of what stalled.
            self._resend_ceiling = max(self.window, self._resend_span // 2)
        self._resend_span = self.window
        self._resend_next = first
        self._resend_end = min(self._acked + self._resend_span, self._next_seq - 1)
        self._resend_items.clear()
        self.resends += 1
        waited = now - self._waiting_since
        self._waiting_since = now
        cap = min(RESEND_WAIT_CAP_S, self.mqtt_cfg.resend_after_s * RESEND_WAIT_CAP_FACTOR)
        self._resend_wait = min(self._resend_wait * 2, max(cap, self.mqtt_cfg.resend_after_s))
        self.log.warning(
            "%s at %d for %.0f s while the broker took events up to %d: re-sending %d..%d, "
            "next re-send in %.0f s unless it moves",
            "acknowledgement stuck" if self.mqtt_cfg.centre_ack else "PUBACK prefix stuck",
            self._acked, waited, self._puback_high, first, self._resend_end, self._resend_wait)

    def _clear_outbox(self) -> None:
        self._events.clear()
        self._ready.clear()

    def _prepare(self, want: int) -> int:
        """Encode events, in order, until ``want`` are ready; return how many are."""
        ready = self._ready
        while len(ready) < want:
            if not self._events:
                after = ready[-1].seq if ready else self._next_seq - 1
                if self.journal.last_seq() <= after:
                    break
                rows = self.journal.event_rows_after(after, limit=BATCH)
                if self.journal.journal_id != self.journal_id:
                    break  # rebuilt meanwhile: these are the new journal's (step adopts it)
                self._events.extend(rows)
                if not self._events:
                    break
            event = self._events.popleft()
            # Decided now for good: an event encoded ahead is published before anything
            # later, so whether it went out before cannot change in between.
            resent = event.seq <= self._sent_high or event.seq <= self._sent_before
            topic = self._event_topics.get(event.kind)
            if topic is None:
                topic = self._event_topics[event.kind] = topics.event(self.site, self.unit,
                                                                      event.kind)
            ready.append(_Ready(event.seq, topic,
                                self._encoder.encode_row(event, self.journal_id, resent), resent))
        return len(ready)

    def _prepare_resend(self, want: int) -> int:
        """Read and encode the next events of the resend track (all were sent before)."""
        items = self._resend_items
        assert self._resend_next is not None
        after = items[-1].seq if items else self._resend_next - 1
        if len(items) < want and after < self._resend_end:
            rows = self.journal.event_rows_after(after, limit=min(BATCH, want - len(items)))
            if self.journal.journal_id != self.journal_id:
                return len(items)  # rebuilt meanwhile: step adopts the new journal
            for event in rows:
                if event.seq > self._resend_end:
                    break
                topic = self._event_topics.get(event.kind) or topics.event(
                    self.site, self.unit, event.kind)
                items.append(_Ready(event.seq, topic,
                                    self._encoder.encode_row(event, self.journal_id, True), True))
        return len(items)

    def _pump(self, client: mqtt.Client) -> None:
        """Publish while the in-flight window has room: status and health first, then
        the resend track, then new events in sequence order."""
        if self.state is not BrokerState.CONNECTED:
            return
        try:
            full = self._fill_window(client)
        except JournalError as err:
            # A full disk: the sent mark cannot be written, so no event goes out for now
            # (health still does). Tried again on the next round.
            held = self._throttle("journal")
            if held is not None:
                self.log.error("journal write failed, events held back: %s", err)
            return
        finally:
            self._uncork()  # the burst goes out now
        if full:
            # The window is full: encode what comes next while the PUBACKs are on their
            # way, rather than after they arrive.
            self._prepare(max(PREPARE_AHEAD, 2 * self.window))

    def _fill_window(self, client: mqtt.Client) -> bool:
        """The publishing half of :meth:`_pump`; True when it filled the window."""
        while self._control_queue and self._room() > 0:
            topic, payload, what = self._control_queue.popleft()
            self._send_control(topic, payload(), what)
        room = self._room()
        while room > 0 and self._resend_next is not None:
            if not self._resend_items and not self._prepare_resend(room):
                break  # the span is used up: the ack must move first
            item = self._resend_items[0]
            if not self._publish_event(client, item):
                return False
            self._resend_items.popleft()
            self._resend_next = item.seq + 1
            room -= 1
            if self._resend_next > self._next_seq - 1:
                self._stop_resending()  # caught up with what the main track sent
        while room > 0:
            if not self._ready and not self._prepare(room):
                return False
            item = self._ready[0]
            if not self._publish_event(client, item):
                return False
            self._ready.popleft()
            self._next_seq = item.seq + 1
            room -= 1
        return True

    def _publish_event(self, client: mqtt.Client, item: _Ready) -> bool:
        seq = item.seq
        if seq > self._reserved:
            # Written before the publish: a process killed after it has its events
            # marked resent by the next one (at worst a few never-sent ones too).
            # What this burst wrote so far goes out first, rather than wait out the fsync.
            self._uncork()
            target = max(seq, min(self.journal.last_seq(), seq + RESERVE_AHEAD))
            self.journal.set_cursor(SENT_CURSOR, target)
            self._reserved = target
        if self._corked is None and self._room() > 1 and \
                len(self._ready) + len(self._resend_items) > 1:
            # More than this one goes out in this burst: _pump uncorks after it.
            self._corked = client.socket()
            _set_cork(self._corked, True)
        info = client.publish(item.topic, item.payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            if self._lost_reason is None:
                self._lost_reason = f"publish failed: {mqtt.error_string(info.rc)}"
            return False
        self._inflight[info.mid] = seq
        if seq > self._sent_high:
            self._sent_high = seq
        self.published += 1
        if item.resent:
            self.resent += 1
        return True

    def _uncork(self) -> None:
        if self._corked is not None:
            _set_cork(self._corked, False)
            self._corked = None

    def _room(self) -> int:
        return self.window - len(self._inflight) - len(self._control)

    def _publish_control(self, topic: str, payload: Callable[[], bytes], what: str) -> None:
        """A retained status or health message: first in line, but within the window."""
        if self._room() <= 0:
            # Waits for the next PUBACK, a few milliseconds at most.
            self._control_queue.append((topic, payload, what))
            return
        self._send_control(topic, payload(), what)

    def _send_control(self, topic: str, payload: bytes, what: str) -> None:
        client = self._client
        if client is None:
            return
        info = client.publish(topic, payload, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._control[info.mid] = what
        elif self._lost_reason is None:
            self._lost_reason = f"publish of {what} failed: {mqtt.error_string(info.rc)}"

    # -- status and health -------------------------------------------------------------------

    def _death_payload(self) -> bytes:
        # What the unit trusts and which lights it has hold while it is away: the centre
        # checks a document against them before it is retained for the unit's return.
        cfg = self.ctx.config
        return _compact({"online": False, "unit": self.unit, "site": self.site,
                         "trusted_keys": sorted(cfg.security.command_keys),
                         "lights": {name: "unknown" for name in cfg.lights}})

    def _level(self) -> int:
        stored = self.journal.state_get("level")
        value = stored.get("level") if isinstance(stored, dict) else stored
        return value if value in (1, 2, 3) and not isinstance(value, bool) else 3

    def _cards_version(self) -> int | None:
        stored = self.journal.state_get("cards")
        value = stored.get("version") if isinstance(stored, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def birth(self) -> dict[str, Any]:
        """The retained birth status (docs/mqtt-api.md, Status)."""
        self._flush_ack(force=True)
        return {
            "online": True,
            "unit": self.unit,
            "site": self.site,
            "kind": self.ctx.config.unit.kind,
            "version": __version__,
            "boot_id": self.clock.boot_id(),
            "level": self._level(),
            "cards_version": self._cards_version(),
            "lights": {name: dev["state"] for name, dev in
                       self._devices("lights", list(self.ctx.config.lights)).items()},
            # Names of the keys it takes commands from: the centre checks its own first.
            "trusted_keys": sorted(self.ctx.config.security.command_keys),
            # The ledger starts a journal it has never seen after acked_seq.
            "journal": self.journal_id,
            "acked_seq": self._acked,
            "last_seq": self.journal.last_seq(),
            "ts": rfc3339_ms(self.clock.wall_ms()),
            "clock_synced": self.clock.synced(),
            "protocol": self.mqtt_cfg.protocol,
            "centre_ack": self.mqtt_cfg.centre_ack,
        }

    def _birth_payload(self) -> bytes:
        doc = self.birth()
        self._status_published = self._status_state(doc)
        return _compact(doc)

    @staticmethod
    def _status_state(doc: dict[str, Any]) -> tuple[Any, ...]:
        """The fields of a status that change with the unit's state, not with time."""
        return (doc["level"], doc["cards_version"], tuple(sorted(doc["lights"].items())),
                doc["clock_synced"])

    def _republish_changed_status(self, now: float) -> None:
        """Publish the retained status again when its level, cards_version, lights or
        clock_synced changed, so a late subscriber never reads a stale one."""
        self._next_status_check = now + STATUS_CHECK_S
        if self._status_published is None:
            return     # the birth is still queued: it will carry the current state
        try:
            lights = self._devices("lights", list(self.ctx.config.lights))
            current = (self._level(), self._cards_version(),
                       tuple(sorted((n, d["state"]) for n, d in lights.items())),
                       self.clock.synced())
        except JournalError:
            return     # health reports the journal; the status waits for it
        if current != self._status_published:
            self._status_published = current   # queued at most once per change
            self._publish_control(self.status_topic, self._birth_payload, "status")

    def _publish_health(self) -> None:
        self._next_health = time.monotonic() + self.mqtt_cfg.health_interval_s
        try:
            report = self.health_report()
        except JournalError as err:
            # The journal is what failed: say so through health, which needs no journal.
            self.log.error("cannot read the journal for the health report: %s", err)
            report = self.health_without_journal(str(err))
        self._publish_control(self.health_topic, lambda: _compact(report), "health")
        with contextlib.suppress(JournalError):
            self.journal.state_set(LAST_HEALTH_KEY, {
                "ts": report["ts"], "version": __version__, "broker": report.get("broker"),
                "pending": report.get("pending")})

    def station_status(self) -> dict[str, Any] | None:
        """The station's own word on its journal writes (``statusfile``), or None."""
        doc = read_status(self.ctx.config.unit.runtime_dir)
        if doc is None:
            return None
        journal = doc.get("journal") if isinstance(doc.get("journal"), dict) else {}
        unrecorded = doc.get("unrecorded")
        return {
            "journal": {k: journal.get(k) for k in ("state", "last_error", "since", "failures")},
            "unrecorded_taps": len(unrecorded) if isinstance(unrecorded, list) else 0,
            "ts": doc.get("ts"),
            "stopped": bool(doc.get("stopped")),
        }

    def health_without_journal(self, error: str) -> dict[str, Any]:
        """Health when the journal cannot be read: what is known without it."""
        cfg = self.ctx.config
        try:
            disk_free_mb: float | None = round(
                shutil.disk_usage(cfg.unit.data_dir).free / 2**20, 1)
        except OSError:
            disk_free_mb = None
        unknown = {"state": "unknown"}
        return {
            "ts": rfc3339_ms(self.clock.wall_ms()),
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            "level": 3,
            "clock_synced": self.clock.synced(),
            "pending": max(0, self._sent_high - self._acked),
            "oldest_pending_s": None,
            "disk_free_mb": disk_free_mb,
            "acks_rejected": self.acks_rejected,
            **self._certificate(),
            "centre_ack": self.mqtt_cfg.centre_ack,
            "journal": {"id": self.journal_id, "error": error},
            "station": self.station_status(),
            "readers": {r.name: unknown for r in cfg.readers},
            "lights": {name: unknown for name in cfg.lights},
            "cameras": {c.name: unknown for c in cfg.cameras},
        }

    def _certificate(self) -> dict[str, Any]:
        """The client certificate's days to expiry and renewal state (``certhealth``)."""
        tls = self.mqtt_cfg.tls
        return certificate_health(tls.cert if tls else None, self.clock.wall_ms())

    def _pending(self) -> int:
        try:
            return max(0, self.journal.last_seq() - self._acked)
        except JournalError:
            return -1

    def _oldest_pending_s(self) -> float | None:
        oldest = self.journal.oldest_pending()  # the journal's ack is flushed by now
        if oldest is None:
            return None
        # Within one boot the boot-relative clock is right even when the wall clock is not.
        if oldest.boot_id == self.clock.boot_id():
            age = self.clock.monotonic() - oldest.mono
        else:
            age = (self.clock.wall_ms() - oldest.ts_ms) / 1000
        return round(max(0.0, age), 3)

    def _devices(self, kind: str, names: list[str]) -> dict[str, dict[str, Any]]:
        stored = self.journal.state_items(f"device/{kind}/")
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            value = stored.get(f"device/{kind}/{name}")
            if isinstance(value, dict) and isinstance(value.get("state"), str):
                out[name] = value
            elif isinstance(value, str):
                out[name] = {"state": value}
            else:
                out[name] = {"state": "unknown"}
        return out

    def health_report(self) -> dict[str, Any]:
        """The retained health message (docs/mqtt-api.md, Health; ``docs/schemas/health.json``)."""
        self._flush_ack(force=True)
        j = self.journal
        cfg = self.ctx.config
        last = j.last_seq()
        try:
            disk_free_mb: float | None = round(
                shutil.disk_usage(cfg.unit.data_dir).free / 2**20, 1)
        except OSError:
            disk_free_mb = None
        return {
            "ts": rfc3339_ms(self.clock.wall_ms()),
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            "level": self._level(),
            "clock_synced": self.clock.synced(),
            "pending": max(0, last - self._acked),
            "oldest_pending_s": self._oldest_pending_s(),
            "disk_free_mb": disk_free_mb,
            "acks_rejected": self.acks_rejected,
            **self._certificate(),
            "broker": {
                "state": self.state.value,
                "since": rfc3339_ms(self.state_since_ms),
                "reconnects": max(0, self.connects - 1),
                "last_error": self.last_error,
            },
            "cpu_temp_c": cpu_temp_c(),
            "centre_ack": self.mqtt_cfg.centre_ack,
            "journal": {"id": self.journal_id, "last_seq": last, "acked_seq": self._acked,
                        "bytes": j.size_bytes(), "rebuilt": j.rebuilt,
                        "error": j.read_only_error},
            "uplink": self._counters(),
            "commands": dict(self.commands.counters),
            "station": self.station_status(),
            "readers": self._devices("readers", [r.name for r in cfg.readers]),
            "lights": self._devices("lights", list(cfg.lights)),
            "cameras": self._devices("cameras", [c.name for c in cfg.cameras]),
            "gnss": self._devices("gnss", ["gnss"] if cfg.gnss is not None else []),
        }

    def _counters(self) -> dict[str, Any]:
        return {
            "sent_seq": max(self._sent_high, self._sent_before),
            "inflight": len(self._inflight),
            "window": self.window,
            "published": self.published,
            "resent": self.resent,
            "resends": self.resends,
            "resending": self._resend_next is not None,
            "pubacks": self.pubacks,
            "publishes_refused": self.publishes_refused,
            "acks_accepted": self.acks_accepted,
            "acks_stale": self.acks_stale,
            "last_ack_rejection": self.last_ack_rejection,
            "messages_bad": self.messages_bad,
        }

    def status(self) -> str:
        cfg = self.mqtt_cfg
        where = f"{cfg.host}:{cfg.port}"
        if self.state is BrokerState.CONNECTED:
            return f"connected to {where}, {self._pending()} pending"
        if self.state is BrokerState.CONNECTING:
            return f"connecting to {where}, {self._pending()} pending"
        return f"disconnected from {where} ({self.last_error or 'not yet connected'}), " \
               f"{self._pending()} pending"

    def health(self) -> dict[str, Any]:
        return {
            "state": "running" if self.is_alive() else "stopped",
            "failures": self.failures,
            "broker": self.state.value,
            "pending": self._pending(),
            "acks_rejected": self.acks_rejected,
            **self._counters(),
        }

    # -- housekeeping ---------------------------------------------------------------------

    def _prune(self) -> None:
        jcfg = self.ctx.config.journal
        self._next_prune = time.monotonic() + jcfg.prune_every_s
        try:
            self._flush_ack(force=True)
            self.beat()
            removed = self.journal.prune(max_age_s=jcfg.retention_days * 86400,
                                         max_bytes=jcfg.max_mb * 2**20)
        except JournalError as err:
            self.log.error("pruning the journal failed: %s", err)
            return
        finally:
            self.beat()
        if removed:
            self.log.info("pruned %d acknowledged event(s)", removed)

    def _persist_counters(self, force: bool = False) -> None:
        if self.acks_rejected == self._acks_rejected_saved:
            return
        now = time.monotonic()
        if not force and now - self._last_persist < PERSIST_EVERY_S:
            return
        self._last_persist = now
        self.journal.state_set(ACKS_REJECTED_KEY, self.acks_rejected)
        self._acks_rejected_saved = self.acks_rejected

    # -- extension -----------------------------------------------------------------------

    def register_handler(self, channel: str, handler: MessageHandler,
                         subscribe: list[tuple[str, int]] | None = None) -> None:
        """Plug in a channel (``desired``, ``cmd``): its handler and the filters to
        subscribe to on every connect (from the next connect on)."""
        self.handlers[channel] = handler
        for item in subscribe or []:
            if item not in self.subscriptions:
                self.subscriptions.append(item)


def cpu_temp_c(path: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in °C from the kernel's thermal zone; None where there is none."""
    try:
        return round(int(path.read_text().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None
