"""The centre's event ledger: store every unit's events once, acknowledge what is stored.

A broker's PUBACK only says the broker took a message (docs/mqtt-api.md, "End-to-end
acknowledgement"), so a unit keeps every event until the ledger says it is
*stored*. The ledger is one process per site, or several sharing it (below):

- It holds a persistent MQTT session (MQTT 5 ``clean_start`` false with a
  session expiry, or 3.1.1 ``clean_session`` false) subscribed at QoS 1 to
  ``xunfang/v1/{site}/+/events/+``, ``…/+/status``, ``…/+/ack`` and
  ``…/+/health``, with paho's ``manual_ack``: the PUBACK for an event goes
  back only after the transaction holding it has committed (SQLite: WAL,
  ``synchronous=FULL``; PostgreSQL: flushed to its WAL), so committed means
  on disk. Until then the broker still owns the message and redelivers it
  after a reconnect.
- It stores each event once, keyed by its id ``{unit}:{journal}:{seq}``. A
  second copy (a ``resent`` one, or a broker redelivery) is counted as a
  duplicate; a copy whose content differs from the stored one is counted and
  logged as a conflict, and the first copy stays.
- It checks the whole envelope (``docs/schemas/envelope.json``) and its
  identity against the topic: ``v`` is 1, ``unit`` and ``site`` are the
  topic's, ``kind`` is the topic's last level, ``seq`` a positive integer,
  ``journal`` 16 hex digits, ``id`` their join, ``ts`` an RFC 3339 UTC time,
  ``boot_id``, ``mono``, ``clock_synced`` of their types, ``data`` an object,
  ``resent`` (if present) a boolean. A message that fails is logged, counted
  (``malformed`` when it cannot be read or breaks the envelope, ``rejected``
  when it claims another unit, site or kind than its topic) and PUBACKed so
  the broker does not redeliver poison forever, but never stored and never
  acknowledged. Units only ever send whole envelopes, so a broken one is a
  fault or a forgery; storing it would make the real event with that id a
  "conflict" and keep it out.
- With an inventory (``--inventory``: the file the broker's ACL is rendered
  from, :mod:`center.inventory`) it takes events, statuses and acks only of
  the units the inventory lists for its site. Anything from another unit is
  counted (``unknown_unit``), logged at most once a minute per unit, kept in
  the quarantine and PUBACKed, but never stored or acknowledged; that unit
  keeps its events and sends them again once it is listed. The ledger reads
  the file again when it changes.

**Contiguous prefix.** Per (unit, journal) the ledger tracks ``prefix``: every
sequence number up to it is held, or lies at or below the journal's ``base``.
For a journal never seen before the base is 0 (events start at 1). When the
unit's retained status names the journal with ``acked_seq`` N above the
prefix, events up to N were acknowledged before (by this ledger before its
database was lost or restored, or by another one) and the unit may have pruned
them: the base becomes N and the sequence numbers up to N that the ledger does
not hold are reported as *acknowledged before this ledger*, never as missing.
The ledger's own retained ack, read back at subscribe time and verified with
its own key, counts the same way. Held sequence numbers above the prefix mean
a gap: it is logged when it appears and when it closes, and ``xunfang ledger
gaps`` lists it.

**Acks.** For each unit the ledger publishes, retained at QoS 1 on
``xunfang/v1/{site}/{unit}/ack``, a signed envelope ``name`` = ``ack``,
``args`` = ``{"journal": J, "seq": prefix}`` for the unit's *active* journal
only: the one its latest status names, or, for a unit whose status names
none, the newest journal its events came from (one ack topic per unit, so an
ack for a stale journal would hide the live one's). Publications are
coalesced: at most one per unit every ``ack_interval_s`` (0.15 s), and always
one within that time after the batch that advanced the prefix is committed.
An ack is never lower than one already published for that journal. On every
(re)connect, once the retained messages have had ``settle_s`` to arrive, the
current acks are published again, which heals a broker that lost its
retained store.

Acks carry an ``expires_at`` ten years out. That is safe because an ack only
states a fact that stays true (the ledger never deletes events) and units
apply acks monotonically: a replayed old ack is ignored as lower than the
current one, and a unit that comes back after months offline must still
accept the retained ack it finds. A short expiry would only make such units
resend everything.

**Database** (:mod:`center.store`: a SQLite file, 0600, or a PostgreSQL
database): ``events`` (one row per stored event, with the payload as
received), ``journals`` (base, prefix, highest, count and the last published
ack per unit and journal), ``units`` (active journal and last status),
``unit_health``, ``command_results``, ``counters`` and ``rejects`` (a bounded
quarantine of the last rejected or malformed messages: topic, reason, first
bytes; never events), ``desired_documents`` and ``desired_outcomes`` (what
``send --db`` published and each unit's answer, :mod:`center.desired_book`).

**Several ledgers** (``share``, ``--share GROUP``): events come through the
shared subscription ``$share/{group}/xunfang/v1/{site}/+/events/+``, one
ledger of the group each; statuses, health and acks stay plain subscriptions
(a broker sends no retained messages on a shared one). Each batch holds its
units in the database (:meth:`LedgerStore.lock_units`) and takes up what the
others committed (a journal row's revision moved), so the prefix is the
database's; an ack is published from the database's prefix. The session ends
with the connection, so the broker gives the group's events to the ledgers
still there; what a dead one held uncommitted, units send again. A lower ack
of another ledger arriving live after ours is answered by stating ours again.

Example::

    key = load_signing_key("/etc/xunfang/ledger-2026.key")
    with Ledger("/var/lib/xunfang/ledger.db", site="zhuantang", key=key,
                host="broker.centre", port=8883, tls=TlsFiles(ca, cert, keyfile)) as ledger:
        ledger.wait_connected(10)
        ...

CLI::

    xunfang ledger --broker broker.centre:8883 --site zhuantang \\
        --db /var/lib/xunfang/ledger.db --key /etc/xunfang/ledger-2026.key \\
        --inventory /etc/xunfang/units.txt \\
        --tls-ca ca.pem --tls-cert ledger.pem --tls-key ledger.key
    xunfang ledger gaps --db /var/lib/xunfang/ledger.db [--unit zt-pp-03] [--json]
    xunfang ledger stats --db /var/lib/xunfang/ledger.db
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from center.inventory import InventoryError, load_inventory, units_of_site
from center.session import broker_address, site_name
from center.store import (
    COUNTERS,
    EventRow,
    JournalGaps,
    JournalInfo,
    JournalState,
    LedgerDatabaseError,
    LedgerError,
    LedgerStore,
    complement,
    format_ranges,
    ranges,
)
from center.store.postgres import redact
from center.terminal import clean
from firmware_py import topics
from firmware_py.clock import Clock, SystemClock, parse_rfc3339
from firmware_py.exc import SignatureError
from firmware_py.signing import SigningKey, load_signing_key, verify_envelope

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "ACK_INTERVAL_S",
    "ACK_TTL_S",
    "COUNTERS",
    "EventRecord",
    "JournalGaps",
    "JournalInfo",
    "JournalState",
    "Ledger",
    "LedgerDB",
    "LedgerDatabaseError",
    "LedgerError",
    "LedgerStore",
    "Rejected",
    "TlsFiles",
    "add_parser",
    "complement",
    "default_client_id",
    "format_ranges",
    "parse_event",
    "ranges",
]

log = logging.getLogger("xunfang.ledger")

#: Least time between two ack publications for one unit.
ACK_INTERVAL_S = 0.15
#: Acks are valid for ten years: see the module docstring for why that is safe.
ACK_TTL_S = 10 * 365 * 24 * 3600
#: Same limit a unit puts on what it accepts; no genuine event comes close.
MAX_PAYLOAD_BYTES = 256 * 1024
#: How long the broker keeps the ledger's session (and queues its events) while it is away.
SESSION_EXPIRY_S = 7 * 24 * 3600
#: MQTT 5 Receive Maximum: unacknowledged events the broker may have in flight to us,
#: which is also the largest batch one fsync covers.
RECEIVE_MAXIMUM = 200
#: Time after a SUBACK for the retained statuses and acks to arrive before acks go out again.
SETTLE_S = 0.5
MAX_BATCH = 1000
#: Highest seq accepted: acks are signed, and signed messages hold only integers a
#: double holds exactly (RFC 8785).
MAX_SEQ = 2**53 - 1
#: How often the inventory file is checked for changes.
INVENTORY_CHECK_S = 2.0
#: Least time between two log lines about one unit that is not in the inventory.
UNKNOWN_UNIT_LOG_S = 60.0

_JOURNAL_RE = re.compile(r"[0-9a-f]{16}")
#: envelope.json's form of ``ts``: what units write (rfc3339_ms), always UTC.
_TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")
#: envelope.json's required fields.
_REQUIRED = ("v", "id", "unit", "site", "journal", "seq", "kind", "ts", "boot_id", "mono",
             "clock_synced", "data")

#: The store of either backend (a SQLite path or a ``postgresql://`` URL opens the right one).
LedgerDB = LedgerStore
#: An event envelope that passed the identity checks, ready to store.
EventRecord = EventRow


class Rejected(ValueError):
    """A message that will not be stored. ``counter`` is ``malformed`` or ``rejected``."""

    def __init__(self, reason: str, counter: str = "malformed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.counter = counter


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS connection to the broker (client certificate optional)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


# -- pure parts: envelope checks and prefix tracking ----------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected(f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Rejected(f"payload is not UTF-8: {err}") from err
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise Rejected(f"payload is not JSON: {str(err)[:120]}") from err


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _digest(doc: dict[str, Any]) -> str:
    # "resent" is the one field a faithful resend may add; anything else that
    # differs means two different events claim one id.
    body = {k: v for k, v in doc.items() if k != "resent"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _ill_typed(name: str, value: object, want: str) -> Rejected:
    shown = repr(value) if not isinstance(value, (dict, list)) else f"a JSON {_json_type(value)}"
    return Rejected(f"{name} is {shown[:80]}, not {want}")


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def _check_ts(ts: object) -> None:
    if not isinstance(ts, str) or not _TS_RE.fullmatch(ts):
        raise _ill_typed("ts", ts, "an RFC 3339 UTC time (2026-11-28T15:04:05.123Z)")
    try:
        parse_rfc3339(ts)
    except ValueError as err:
        raise Rejected(f"ts {ts!r} is not a real time: {err}") from err


def parse_event(topic: topics.Topic, payload: bytes) -> EventRecord:
    """Check an ``events/{kind}`` payload against its topic and envelope.json.

    Raise :class:`Rejected` if unfit: an event is stored only whole and
    well-formed, so a broken copy can never hold an id that its real event
    then finds taken.
    """
    doc = _loads(payload)
    if not isinstance(doc, dict):
        raise Rejected(f"payload is a JSON {_json_type(doc)}, not an object")
    missing = [name for name in _REQUIRED if name not in doc]
    if missing:
        raise Rejected(f"envelope lacks {', '.join(missing)}")
    if doc["v"] != 1 or not _is_int(doc["v"]):
        raise Rejected(f"envelope version {doc['v']!r} is not 1")
    unit, site, journal = doc["unit"], doc["site"], doc["journal"]
    seq, kind, ident = doc["seq"], doc["kind"], doc["id"]
    if not isinstance(unit, str) or not topics.NAME_RE.match(unit):
        raise Rejected(f"unit {unit!r} is not a unit id")
    if unit != topic.unit:
        # Brokers key ACLs on the topic's unit level: a payload naming another
        # unit is a misconfigured or hostile sender, never that unit's event.
        raise Rejected(f"event claims unit {unit!r} on unit {topic.unit!r}'s topic", "rejected")
    if not isinstance(site, str) or not topics.NAME_RE.match(site):
        raise Rejected(f"site {site!r} is not a site name")
    if site != topic.site:
        raise Rejected(f"event claims site {site!r} on site {topic.site!r}'s topic", "rejected")
    if not isinstance(kind, str) or kind != topic.name:
        raise Rejected(f"event kind {kind!r} is not the topic's {topic.name!r}", "rejected")
    if not isinstance(journal, str) or not _JOURNAL_RE.fullmatch(journal):
        raise Rejected(f"journal {journal!r} is not 16 lower-case hex digits")
    if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
        raise Rejected(f"seq {seq!r} is not an integer from 1 to 2**53-1")
    if ident != f"{unit}:{journal}:{seq}":
        raise Rejected(f"id {ident!r} is not {unit}:{journal}:{seq}")
    _check_ts(doc["ts"])
    boot_id, mono = doc["boot_id"], doc["mono"]
    if not isinstance(boot_id, str) or not boot_id:
        raise _ill_typed("boot_id", boot_id, "a non-empty string")
    if isinstance(mono, bool) or not isinstance(mono, (int, float)) or not 0 <= mono < math.inf:
        raise _ill_typed("mono", mono, "a number of seconds, 0 or more")
    if not isinstance(doc["clock_synced"], bool):
        raise _ill_typed("clock_synced", doc["clock_synced"], "true or false")
    if not isinstance(doc["data"], dict):
        raise _ill_typed("data", doc["data"], "a JSON object")
    resent = doc.get("resent", False)
    if not isinstance(resent, bool):
        raise _ill_typed("resent", resent, "true or false")
    return EventRecord(
        id=ident,
        unit=unit,
        journal=journal,
        seq=seq,
        kind=kind,
        ts=doc["ts"],
        resent=resent,
        digest=_digest(doc),
        envelope=payload.decode("utf-8"),
    )


# -- the running ledger -------------------------------------------------------------------


@dataclass(frozen=True)
class _Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    gen: int


@dataclass(frozen=True)
class _Subscribed:
    gen: int


class _UnitState:
    __slots__ = ("active", "status_journal")

    def __init__(self, active: str | None = None, status_journal: str | None = None) -> None:
        self.active = active
        self.status_journal = status_journal


class _Throttle:
    """Let ``burst`` warnings through per ``window_s``, then count the rest: a unit
    spraying garbage must not drown the log or the disk."""

    def __init__(self, burst: int = 20, window_s: float = 10.0) -> None:
        self.burst, self.window_s = burst, window_s
        self._start, self._n, self._dropped = 0.0, 0, 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._start > self.window_s:
            if self._dropped:
                log.warning("%d more bad messages were not logged", self._dropped)
            self._start, self._n, self._dropped = now, 0, 0
        self._n += 1
        if self._n <= self.burst:
            return True
        self._dropped += 1
        return False


class _PerUnitLog:
    """At most one log line per unit every ``interval_s``, with the count held back."""

    def __init__(self, interval_s: float = UNKNOWN_UNIT_LOG_S, units_kept: int = 1000) -> None:
        self.interval_s, self.units_kept = interval_s, units_kept
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def due(self, unit: str) -> int | None:
        """None: stay quiet; else log now, saying how many were held back since the last line."""
        now = time.monotonic()
        last = self._last.get(unit)
        if last is not None and now - last < self.interval_s:
            self._held[unit] = self._held.get(unit, 0) + 1
            return None
        if len(self._last) >= self.units_kept and unit not in self._last:
            # Thousands of names at once is an attack or a broken ACL: forget
            # the oldest rather than grow.
            oldest = min(self._last, key=self._last.__getitem__)
            self._last.pop(oldest)
            self._held.pop(oldest, None)
        self._last[unit] = now
        return self._held.pop(unit, 0)


class Ledger:
    """The ledger of one site: subscribe, store, acknowledge. See the module docstring.

    ``start()`` opens the database and runs the MQTT loop (paho's thread) and a
    writer thread; ``stop()`` acknowledges what is stored, publishes the last
    acks and disconnects (the session stays, so the broker queues events while
    the ledger is away). Query helpers read the database through their own
    connection and may be called from any thread.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        site: str,
        key: SigningKey,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        protocol: str = "5",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        keepalive: int = 30,
        ack_interval_s: float = ACK_INTERVAL_S,
        settle_s: float = SETTLE_S,
        session_expiry_s: int = SESSION_EXPIRY_S,
        receive_maximum: int = RECEIVE_MAXIMUM,
        clock: Clock | None = None,
        inventory: str | os.PathLike[str] | None = None,
        share: str | None = None,
    ) -> None:
        if not topics.NAME_RE.match(site):
            raise ValueError(f"site {site!r} must match {topics.NAME_RE.pattern}")
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"MQTT protocol {protocol!r}: use '5' or '3.1.1'")
        #: A SQLite file path, or a ``postgresql://`` URL.
        self.db_path: str | Path = db_path if isinstance(db_path, str) and "://" in db_path \
            else Path(db_path)
        if share is not None and not topics.NAME_RE.match(share):
            raise ValueError(f"share group {share!r} must match {topics.NAME_RE.pattern}")
        #: The shared-subscription group (``$share/{group}/…``) of the site's ledgers, or None.
        self.share = share
        self.site = site
        self.key = key
        self.host, self.port = host, port
        self.protocol = protocol
        self.client_id = client_id or default_client_id(site, share)
        self.ack_interval_s = ack_interval_s
        self.settle_s = settle_s
        self.clock: Clock = clock or SystemClock()
        self._username, self._password, self._tls = username, password, tls
        self._keepalive = keepalive
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._own_keys = {key.name: key.public_key()}
        #: The inventory file, and the units it lists for this site (None: every unit).
        self.inventory_path = Path(inventory) if inventory is not None else None
        self._inventory: frozenset[str] | None = None
        self._inventory_stamp: tuple[int, int, int] | None = None
        self._inventory_checked = 0.0
        self._unknown_log = _PerUnitLog()

        self._queue: queue.SimpleQueue[_Inbound | _Subscribed | None] = queue.SimpleQueue()
        self._gen = 0  # connection generation: a PUBACK belongs to the connection it came on
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._writer: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._db: LedgerStore | None = None
        self._reader: LedgerStore | None = None
        self._started = False
        self._closed = False

        # Writer-thread state.
        self._journals: dict[tuple[str, str], JournalState] = {}
        self._units: dict[str, _UnitState] = {}
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._due: dict[str, tuple[float, bool]] = {}  # unit -> (when, force)
        self._last_pub: dict[str, float] = {}
        self._settle_until: float | None = None
        self._last_flush = 0.0
        self._state_stale = False  # memory may be ahead of the database: reload first
        self._acks_unsaved = 0  # acks published since the counter was last written
        self._db_errors_unsaved = 0  # failed commits, written with the next good one
        self._throttle = _Throttle()
        self._published: dict[str, tuple[str, int]] = {}  # unit -> (journal, seq), last sent
        self._pub_lock = threading.Lock()
        self._pub_done = threading.Condition(self._pub_lock)
        self._unconfirmed: set[int] = set()  # mids of ack publishes without PUBACK

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Ledger:
        """Open the database, load its state and connect (retrying in the background)."""
        if self._started:
            raise LedgerError(f"ledger of site {self.site} already started")
        self._started = True
        if self.inventory_path is not None:
            try:
                self._inventory, self._inventory_stamp = self._read_inventory()
            except InventoryError as err:
                raise LedgerError(str(err)) from err
            log.info("inventory %s: %d unit(s) of site %s", self.inventory_path,
                     len(self._inventory), self.site)
        self._db = LedgerStore(self.db_path, site=self.site, writer=self.client_id)
        try:
            self._reader = LedgerStore(self.db_path, readonly=True, writer=self.client_id)
        except LedgerError:
            self._db.close()
            raise
        self._load_state()
        try:
            self._client = self._make_client()
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            self.stop()
            raise LedgerError(f"cannot set up the MQTT client for {self.host}:{self.port}: "
                              f"{err}") from err
        self._writer = threading.Thread(target=self._run_writer, name=f"ledger-{self.site}",
                                        daemon=True)
        self._writer.start()
        self._connect()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the batch in hand, publish the last acks, disconnect. Safe twice."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        self._stopping.set()
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                log.error("ledger writer did not stop within %.1f s", timeout)
        client = self._client
        if client is not None:
            self._wait_unconfirmed(min(timeout, 2.0))
            client.disconnect()
            client.loop_stop()
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        log.info("ledger of site %s stopped", self.site)

    def __enter__(self) -> Ledger:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = ("stopped" if self._closed else
                 "connected" if self._connected.is_set() else
                 "connecting" if self._started else "new")
        return f"<Ledger site={self.site} {self.host}:{self.port} {state}>"

    # -- queries (any thread) ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected to the broker and subscribed (SUBACK received)."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until :attr:`connected`; False at the deadline."""
        return self._connected.wait(timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after each commit and ack.

        False at the deadline.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.1))

    @property
    def _db_errors(self) -> tuple[type[BaseException], ...]:
        """What the database raises when it fails (retried, never a reason to drop)."""
        return self._db.errors if self._db is not None else ()

    @property
    def db_name(self) -> str:
        """The database as logs name it (a URL without its password)."""
        return redact(str(self.db_path))

    @property
    def db(self) -> LedgerStore:
        """A read handle on the database (queries only)."""
        if self._reader is None:
            raise LedgerError("ledger not started")
        return self._reader

    def count(self, unit: str | None = None, journal: str | None = None) -> int:
        """Events stored (of ``unit``, of its ``journal``)."""
        return self.db.count(unit, journal)

    def event(self, event_id: str) -> dict[str, Any] | None:
        """The stored envelope of ``{unit}:{journal}:{seq}``, as first received; or None."""
        return self.db.event(event_id)

    def prefix(self, unit: str, journal: str) -> int:
        """The contiguous prefix committed for one journal (what its ack says, or will)."""
        info = self.db.journal(unit, journal)
        return info.prefix if info else 0

    def gaps(self, unit: str | None = None) -> list[JournalGaps]:
        """Every journal with its missing and acknowledged-before runs."""
        return self.db.gaps(unit)

    def counters(self) -> dict[str, int]:
        """The :data:`COUNTERS` as committed (``acks_published`` lags by up to a second)."""
        return self.db.counters()

    def stats(self) -> dict[str, Any]:
        """What ``xunfang ledger stats`` prints."""
        return self.db.stats()

    def last_ack(self, unit: str) -> tuple[str, int] | None:
        """The (journal, seq) of the last ack this process published for ``unit``."""
        with self._pub_lock:
            return self._published.get(unit)

    # -- MQTT (paho's thread) ---------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        if self.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 clean_session=self.share is not None,
                                 protocol=mqtt.MQTTv311, manual_ack=True)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls is not None:
            client.tls_set(ca_certs=self._tls.ca, certfile=self._tls.cert,
                           keyfile=self._tls.key)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Acks queue in memory while the broker is away; one per unit suffices,
        # but a burst of reconnects must not grow without bound either.
        client.max_queued_messages_set(10_000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect(self) -> None:
        assert self._client is not None
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            if self.share is None:
                props.SessionExpiryInterval = self._session_expiry_s
            props.ReceiveMaximum = self._receive_maximum
            # In a share group the session ends with the connection: the broker
            # then gives the group's events to the ledgers still there, instead of
            # queueing half of them for one that is gone (see docs/centre.md).
            self._client.connect_async(self.host, self.port, self._keepalive,
                                       clean_start=self.share is not None, properties=props)
        else:
            self._client.connect_async(self.host, self.port, self._keepalive)
        # loop_start runs loop_forever(retry_first_connection=True): a broker
        # that is down at start-up is retried with the same backoff as later.
        self._client.loop_start()

    def _filters(self) -> list[str]:
        root = f"{topics.PREFIX}/{self.site}/+"
        events = f"{root}/events/+"
        if self.share is not None:
            # Events go to one ledger of the group each. Statuses, health and acks
            # stay per process: each ledger needs the retained ones at subscribe
            # (a broker sends no retained messages on a shared subscription).
            events = f"$share/{self.share}/{events}"
        return [events, f"{root}/status", f"{root}/ack", f"{root}/health"]

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any,
                    reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("broker %s:%s refused the ledger (%s): retrying", self.host, self.port,
                      reason)
            return
        self._gen += 1
        log.info("connected to %s:%s as %s (MQTT %s, session %s)", self.host, self.port,
                 self.client_id, self.protocol,
                 "resumed" if flags.session_present else "new")
        if self.protocol == "5":
            # In a share group a live ack on the ack topics is another ledger's
            # (noLocal keeps our own echoes away; retained copies still come).
            subs: list[Any] = [(f, SubscribeOptions(
                qos=1, noLocal=self.share is not None and f.endswith("/ack")))
                for f in self._filters()]
        else:
            subs = [(f, 1) for f in self._filters()]
        # Every time, even with a session present: the broker then sends the
        # retained statuses and acks again, which is how base and ack floor are learnt.
        client.subscribe(subs)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reasons: list[Any], _props: Any) -> None:
        bad = [r for r in reasons if r.is_failure]
        if bad:
            log.error("broker refused subscriptions %s (%s): check the broker ACL for %s",
                      self._filters(), ", ".join(str(r) for r in bad), self.client_id)
        self._queue.put(_Subscribed(self._gen))
        # "Connected" means subscribed: only from here on does the broker keep
        # (or, in a resumed session, go on keeping) the site's events for us.
        self._connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("lost the broker %s:%s (%s): reconnecting", self.host, self.port, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    msg: mqtt.MQTTMessage) -> None:
        # Only hand over: storing happens in the writer thread, so paho's
        # thread keeps reading (and answering pings) during an fsync.
        self._queue.put(_Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos,
                                 bool(msg.retain), self._gen))

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int,
                    _reason: Any, _props: Any) -> None:
        with self._pub_done:
            self._unconfirmed.discard(mid)
            self._pub_done.notify_all()

    def _wait_unconfirmed(self, timeout: float) -> None:
        """Give the last acks time to reach the broker before disconnecting."""
        if not self._connected.is_set():
            return  # lost with this process; the next start publishes every ack again
        with self._pub_done:
            self._pub_done.wait_for(lambda: not self._unconfirmed, timeout)

    # -- inventory --------------------------------------------------------------------------

    @property
    def inventory(self) -> frozenset[str] | None:
        """The units this ledger takes events from (None: no inventory, every unit)."""
        return self._inventory

    def _read_inventory(self) -> tuple[frozenset[str], tuple[int, int, int]]:
        assert self.inventory_path is not None
        try:
            st = self.inventory_path.stat()
        except OSError as err:
            raise InventoryError(f"cannot read inventory {self.inventory_path}: "
                                 f"{err.strerror or err}") from err
        units = units_of_site(load_inventory(self.inventory_path), self.site)
        return units, (st.st_ino, st.st_size, st.st_mtime_ns)

    def _check_inventory(self) -> None:
        """Read the inventory again when the file changed (writer thread)."""
        if self.inventory_path is None:
            return
        now = time.monotonic()
        if now - self._inventory_checked < INVENTORY_CHECK_S:
            return
        self._inventory_checked = now
        try:
            st = self.inventory_path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp == self._inventory_stamp:
            return
        try:
            units, stamp = self._read_inventory()
        except InventoryError as err:
            # Keep the units known so far: a half-edited file must not open the door
            # (nor shut out every unit).
            log.error("%s; keeping the %d unit(s) read before", err,
                      len(self._inventory or ()))
            self._inventory_stamp = stamp
            return
        old = self._inventory or frozenset()
        self._inventory, self._inventory_stamp = units, stamp
        added, removed = sorted(units - old), sorted(old - units)
        log.info("inventory %s read again: %d unit(s) of site %s%s%s", self.inventory_path,
                 len(units), self.site,
                 f"; added {', '.join(added[:20])}" if added else "",
                 f"; removed {', '.join(removed[:20])}" if removed else "")

    def _listed(self, unit: str) -> bool:
        return self._inventory is None or unit in self._inventory

    def _refuse_unknown(self, msg: _Inbound, unit: str) -> str:
        reason = (f"unit {unit} is not in the inventory {self.inventory_path} "
                  f"for site {self.site}")
        held = self._unknown_log.due(unit)
        if held is not None:
            more = f" ({held} more since the last line)" if held else ""
            log.warning("refused %s from unit %s: not in the inventory %s for site %s; "
                        "nothing of it is stored or acknowledged%s", clean(msg.topic, 120),
                        unit, self.inventory_path, self.site, more)
        return reason

    # -- writer thread --------------------------------------------------------------------

    def _reload_state(self) -> None:
        """After a failed transaction: memory may be ahead of the database. Reload now, or
        (the database away) before the next batch."""
        self._state_stale = True
        with contextlib.suppress(*self._db_errors):
            self._load_state()

    def _load_state(self) -> None:
        assert self._db is not None
        self._state_stale = False
        self._journals = self._db.load_journals()
        self._units = {u: _UnitState(a, s) for u, (a, s) in self._db.load_units().items()}
        self._counters = self._db.counters()

    def _run_writer(self) -> None:
        while True:
            try:
                if self._writer_step():
                    return
            except Exception:  # never let one bad turn end the ledger
                log.exception("ledger writer: unexpected error; going on")
                if self._stopping.wait(0.5):
                    return

    def _writer_step(self) -> bool:
        """Take what is queued (up to MAX_BATCH), store it, publish due acks. True: stopped."""
        first = self._next_item()
        items = [] if first is None else [first]
        while len(items) < MAX_BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        batch: list[_Inbound] = []
        for item in items:
            if isinstance(item, _Subscribed):
                if item.gen == self._gen:
                    self._settle_until = time.monotonic() + self.settle_s
            elif isinstance(item, _Inbound):
                batch.append(item)
        self._check_inventory()
        if batch:
            self._store_batch(batch)
        # Leave once stopping and nothing that arrived before is left; what
        # comes later is not PUBACKed, so the broker redelivers it next time.
        stopping = self._stopping.is_set() and self._queue.empty()
        self._after_settle()
        self._publish_due(force_all=stopping)
        self._flush_dirty(force=stopping)
        return stopping

    def _next_item(self) -> _Inbound | _Subscribed | None:
        wake = [when for when, _ in self._due.values()]
        if self._settle_until is not None:
            wake.append(self._settle_until)
        timeout = min(wake) - time.monotonic() if wake else 1.0
        try:
            return self._queue.get(timeout=min(max(timeout, 0.0), 1.0))
        except queue.Empty:
            return None

    def _store_batch(self, batch: list[_Inbound]) -> None:
        """Store a batch in one transaction, then PUBACK it. Retries until the disk takes it."""
        delay = 0.1
        while True:
            try:
                touched = self._apply(batch)
                break
            except self._db_errors as err:
                # Memory may be ahead of the rolled-back disk: reload, then retry.
                # The batch stays un-PUBACKed, so the broker holds it meanwhile.
                self._db_errors_unsaved += 1
                log.error("ledger database %s: cannot store %d message(s): %s; retrying in "
                          "%.1f s", self.db_name, len(batch), " ".join(str(err).split()),
                          delay)
                self._reload_state()
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, 5.0)
            except Exception:
                # A bug met by some input: find the message by storing one at a
                # time, and drop only that one (acked, counted, logged).
                self._reload_state()
                if len(batch) > 1:
                    for msg in batch:
                        self._store_batch([msg])
                    return
                log.exception("ledger: cannot handle message on %s; dropped",
                              clean(batch[0].topic, 120))
                self._counters["malformed"] += 1
                touched = set()
                break
        client = self._client
        assert client is not None
        for msg in batch:
            # A message from an earlier connection is not acked on this one:
            # the broker redelivers it, and the dedupe makes that harmless.
            if msg.qos > 0 and msg.gen == self._gen:
                client.ack(msg.mid, msg.qos)
        for unit in touched:
            self._want_ack(unit)
        with self._changed:
            self._changed.notify_all()

    def _apply(self, batch: list[_Inbound]) -> set[str]:
        """Everything one batch changes, in one transaction; returns units whose ack may move."""
        assert self._db is not None
        if self._state_stale:
            self._load_state()
        now_ms = self.clock.wall_ms()
        deltas = dict.fromkeys(COUNTERS, 0)
        deltas["db_errors"] = self._db_errors_unsaved
        events: list[tuple[_Inbound, EventRecord]] = []
        others: list[tuple[_Inbound, topics.Topic]] = []
        bad: list[tuple[_Inbound, str]] = []
        unlisted: list[tuple[_Inbound, str]] = []  # logged by _refuse_unknown, not below
        for msg in batch:
            parsed = topics.parse(msg.topic)
            if parsed is None or parsed.site != self.site or parsed.unit == topics.ALL_UNITS:
                bad.append((msg, f"not a unit's topic of site {self.site}"))
                deltas["malformed"] += 1
                continue
            if not self._listed(parsed.unit):
                if parsed.channel == "events":
                    deltas["received"] += 1
                if parsed.channel in ("events", "status") and msg.payload:
                    deltas["unknown_unit"] += 1
                    unlisted.append((msg, self._refuse_unknown(msg, parsed.unit)))
                # An ack of ours on its topic (from before it left the inventory) is
                # no evidence either: nothing of that unit is taken.
                continue
            if parsed.channel != "events":
                others.append((msg, parsed))
                continue
            deltas["received"] += 1
            try:
                events.append((msg, parse_event(parsed, msg.payload)))
            except Rejected as err:
                deltas[err.counter] += 1
                bad.append((msg, err.reason))
            except Exception as err:  # bad input never stops the ledger
                deltas["malformed"] += 1
                bad.append((msg, f"unreadable: {err!r}"))
                log.exception("ledger: unexpected error reading %s", msg.topic)
        # Statuses and acks first (they set bases), then events in seq order, so
        # events reordered within one batch do not log a gap that closes at once.
        events.sort(key=lambda pair: (pair[1].unit, pair[1].journal, pair[1].seq))
        units = sorted({rec.unit for _, rec in events} | {parsed.unit for _, parsed in others})
        touched: set[str] = set()
        new_journals: set[tuple[str, str]] = set()
        with self._db.transaction() as cur:
            # Another ledger may write the same units: hold them, then take up
            # what it committed since (a journal whose revision moved is re-read).
            self._db.lock_units(cur, units)
            self._refresh(cur, units)
            before = {k: (st.prefix, st.max_seq, st.missing)
                      for k, st in self._journals.items()}
            for msg, parsed in others:
                try:
                    if parsed.channel == "status":
                        deltas["statuses"] += 1
                        self._apply_status(cur, parsed, msg, now_ms, touched, new_journals)
                    elif parsed.channel == "ack":
                        self._apply_own_ack(cur, parsed, msg, now_ms, touched, new_journals)
                    elif parsed.channel == "health":
                        self._apply_health(cur, parsed, msg, now_ms)
                except Rejected as err:
                    deltas[err.counter] += 1
                    bad.append((msg, err.reason))
                except self._db_errors:
                    raise
                except Exception as err:  # bad input never stops the ledger
                    deltas["malformed"] += 1
                    bad.append((msg, f"unreadable: {err!r}"))
            # One copy of each id goes to the database; later copies in the batch
            # are duplicates of the first, like copies arriving in a later batch.
            first: dict[str, EventRecord] = {}
            for _, rec in events:
                first.setdefault(rec.id, rec)
            new, held = self._db.insert_events(cur, list(first.values()), now_ms)
            for msg, rec in events:
                key = (rec.unit, rec.journal)
                st = self._journals.get(key)
                if st is None:
                    st = self._new_journal(rec.unit, rec.journal, now_ms, new_journals)
                st.last_seen_ms = now_ms
                st.dirty = True
                if rec.id in new and first[rec.id] is rec:
                    deltas["stored"] += 1
                    st.add(rec.seq)
                else:
                    deltas["duplicates"] += 1
                    stored = held.get(rec.id) or first[rec.id].digest
                    if stored != rec.digest:
                        deltas["conflicts"] += 1
                        bad.append((msg, f"event {rec.id} differs from the stored copy "
                                         "(kept the first)"))
                self._note_event_journal(cur, rec.unit, rec.journal, key in new_journals)
                touched.add(rec.unit)
            for msg, reason in bad + unlisted:
                self._db.add_reject(cur, now_ms, msg.topic, reason, msg.payload)
            # Rows in one order in every writer (here and in _flush_dirty): two
            # ledgers' transactions then never wait on each other in a circle.
            saved = sorted((st for st in self._journals.values() if st.dirty),
                           key=lambda st: (st.unit, st.journal))
            for st in saved:
                self._db.save_journal(cur, st)
            self._db.add_counters(cur, deltas)
        # Committed: now it is safe to say so, in the log and with PUBACKs.
        self._db_errors_unsaved = 0
        for name, delta in deltas.items():
            self._counters[name] += delta
        for st in saved:
            st.dirty = st.ack_dirty = False
        for msg, reason in bad:
            if self._throttle.allow():
                log.warning("dropped message on %s: %s", clean(msg.topic, 120),
                            clean(reason, 300))
        self._log_gaps(before, {(rec.unit, rec.journal) for _, rec in events})
        return touched

    def _refresh(self, cur: Any, units: list[str]) -> None:
        """Take up what other ledgers committed for ``units`` (their locks held)."""
        assert self._db is not None
        if not units:
            return
        for key, rev in self._db.journal_revs(cur, units).items():
            st = self._journals.get(key)
            if st is not None and st.rev == rev:
                continue
            fresh = self._db.reload_journal(cur, *key)
            if fresh is None:
                continue
            if st is not None:
                fresh.ack_published = max(fresh.ack_published, st.ack_published)
                fresh.ack_dirty = st.ack_dirty
            self._journals[key] = fresh
        for unit, (active, status_journal) in self._db.units_of(cur, units).items():
            state = self._unit(unit)
            state.active, state.status_journal = active, status_journal

    def _new_journal(self, unit: str, journal: str, now_ms: int,
                     new_journals: set[tuple[str, str]]) -> JournalState:
        st = JournalState(unit, journal, first_seen_ms=now_ms, last_seen_ms=now_ms, dirty=True)
        self._journals[(unit, journal)] = st
        new_journals.add((unit, journal))
        log.info("unit %s: new journal %s", unit, journal)
        return st

    def _unit(self, unit: str) -> _UnitState:
        state = self._units.get(unit)
        if state is None:
            state = self._units[unit] = _UnitState()
        return state

    def _save_unit(self, cur: Any, unit: str, status: str | None = None,
                   status_ms: int | None = None) -> None:
        assert self._db is not None
        state = self._unit(unit)
        self._db.save_unit(cur, unit, state.active, state.status_journal, status, status_ms)

    def _apply_health(self, cur: Any, parsed: topics.Topic, msg: _Inbound,
                      now_ms: int) -> None:
        if not msg.payload:
            return  # a cleared retained report
        doc = _loads(msg.payload)
        if not isinstance(doc, dict):
            raise Rejected(f"health is a JSON {type(doc).__name__}, not an object")
        if doc.get("unit", parsed.unit) != parsed.unit:
            raise Rejected(f"health claims unit {doc.get('unit')!r} on {msg.topic}", "rejected")
        assert self._db is not None
        self._db.save_health(cur, parsed.unit, msg.payload.decode("utf-8"), now_ms)

    def _note_event_journal(self, cur: Any, unit: str, journal: str,
                            is_new: bool) -> None:
        # A unit whose status names its journal is told apart by the status
        # alone: a straggler from an old journal, or one the ledger never saw
        # (its database lost), must not take the ack topic from the live one.
        # Without such a status, a journal first seen now is a rebuilt one.
        state = self._unit(unit)
        if state.status_journal is not None or state.active == journal:
            return
        if state.active is None or is_new:
            if state.active is not None:
                log.info("unit %s: acks now for journal %s (was %s)", unit, journal,
                         state.active)
            state.active = journal
            self._save_unit(cur, unit)

    def _apply_status(self, cur: Any, parsed: topics.Topic, msg: _Inbound,
                      now_ms: int, touched: set[str],
                      new_journals: set[tuple[str, str]]) -> None:
        if not msg.payload:
            return  # a cleared retained status
        doc = _loads(msg.payload)
        if not isinstance(doc, dict):
            raise Rejected(f"status is a JSON {type(doc).__name__}, not an object")
        unit = parsed.unit
        if doc.get("unit", unit) != unit or doc.get("site", parsed.site) != parsed.site:
            raise Rejected(f"status claims unit {doc.get('unit')!r} of site "
                           f"{doc.get('site')!r} on {msg.topic}", "rejected")
        journal, acked = doc.get("journal"), doc.get("acked_seq")
        state = self._unit(unit)
        problem = None
        if journal is not None:
            if not isinstance(journal, str) or not _JOURNAL_RE.fullmatch(journal):
                problem = f"status journal {journal!r} is not 16 lower-case hex digits"
            else:
                if state.active != journal:
                    log.info("unit %s: status names journal %s (acks were for %s)", unit,
                             journal, state.active)
                state.status_journal = state.active = journal
                key = (unit, journal)
                st = self._journals.get(key) or self._new_journal(unit, journal, now_ms,
                                                                  new_journals)
                st.last_seen_ms = now_ms
                st.dirty = True
                if acked is not None:
                    if not _is_int(acked) or not 0 <= acked <= MAX_SEQ:
                        problem = f"status acked_seq {acked!r} is not a whole number"
                    else:
                        self._raise_base(st, acked, "the unit's status")
                touched.add(unit)
        self._save_unit(cur, unit, msg.payload.decode("utf-8"), now_ms)
        if problem:
            # The rest of the status was used; count and log the bad part.
            raise Rejected(problem)

    def _apply_own_ack(self, cur: Any, parsed: topics.Topic, msg: _Inbound,
                       now_ms: int, touched: set[str],
                       new_journals: set[tuple[str, str]]) -> None:
        # The retained copy is what an earlier life of this ledger (or another
        # ledger of its share group) published. A live copy is our own echo, or in
        # a share group another ledger's ack (noLocal keeps our echoes away).
        if not msg.payload or (not msg.retain and self.share is None):
            return
        try:
            doc = _loads(msg.payload)
            verify_envelope(doc, self._own_keys)
        except (Rejected, SignatureError) as err:
            # Another key (rotated, or another ledger): not evidence for us.
            log.debug("retained ack on %s is not this ledger's: %s", msg.topic,
                      clean(str(err), 300))
            return
        args, target = doc.get("args"), doc.get("target")
        if (doc.get("name") != "ack" or not isinstance(args, dict)
                or not isinstance(target, dict) or target.get("site") != self.site
                or target.get("units") != [parsed.unit]):
            log.info("retained ack on %s does not address %s", msg.topic, parsed.unit)
            return
        journal, seq = args.get("journal"), args.get("seq")
        if (not isinstance(journal, str) or not _JOURNAL_RE.fullmatch(journal)
                or not _is_int(seq) or seq < 0):
            return
        unit = parsed.unit
        st = self._journals.get((unit, journal)) or self._new_journal(unit, journal, now_ms,
                                                                      new_journals)
        if seq > st.ack_published:
            st.ack_published = seq
            st.ack_dirty = True
        self._raise_base(st, seq, "this ledger's own retained ack" if msg.retain
                         else "an ack of another ledger of the share group")
        if not msg.retain and self.protocol == "5":
            # (MQTT 3.1.1 has no noLocal: a live ack may be our own echo there.)
            with self._pub_lock:
                ours = self._published.get(unit)
            if ours is not None and ours[0] == journal and ours[1] > seq:
                # A lower ack raced ours to the broker and is now the retained one:
                # state ours again, so a unit connecting later is not sent back.
                self._want_ack(unit, force=True)
        state = self._unit(unit)
        if state.active is None:
            # A database that knows nothing of this unit: its last ack is the best guess.
            state.active = journal
            self._save_unit(cur, unit)
        touched.add(unit)

    def _raise_base(self, st: JournalState, n: int, source: str) -> None:
        had_missing = st.missing
        own_prefix = st.prefix if st.prefix > st.base else 0
        newly = st.raise_base(n)
        if not newly:
            return
        if own_prefix:
            # This ledger had stored (and acked) a run of the journal itself, yet
            # more was acked: worth a look.
            log.warning("unit %s journal %s: seq %s acknowledged before this ledger (per %s), "
                        "beyond the %d it had stored in a row: was this database restored, "
                        "or does another ledger ack this site?", st.unit, st.journal,
                        format_ranges(newly, 10), source, own_prefix)
        else:
            log.info("unit %s journal %s: seq %s acknowledged before this ledger (per %s); "
                     "recorded as such, not as missing", st.unit, st.journal,
                     format_ranges(newly, 10), source)
        if had_missing and not st.missing:
            log.info("unit %s journal %s: gap closed, every event up to %d held or acked "
                     "before", st.unit, st.journal, st.prefix)

    def _log_gaps(self, before: dict[tuple[str, str], tuple[int, int, int]],
                  keys: set[tuple[str, str]]) -> None:
        for key in keys:
            st = self._journals[key]
            prefix0, max0, missing0 = before.get(key, (0, 0, 0))
            if st.missing and st.max_seq > max0:
                # Only the stretch above the old highest can hold new holes; sorting
                # just that part keeps a long-lived gap cheap.
                start = max(st.prefix, max0) + 1
                fresh = complement(sorted(s for s in st.above if s >= start), start,
                                   st.max_seq)
                if fresh:
                    log.warning("unit %s journal %s: gap, seq %s missing (holding the ack "
                                "at %d)", st.unit, st.journal, format_ranges(fresh, 10),
                                st.prefix)
            if missing0 and not st.missing:
                log.info("unit %s journal %s: gap closed, every event up to %d held",
                         st.unit, st.journal, st.prefix)
            elif missing0 and st.prefix > prefix0:
                log.info("unit %s journal %s: gap narrowed, still missing %s", st.unit,
                         st.journal, format_ranges(st.missing_runs(), 10))

    # -- acks -----------------------------------------------------------------------------

    def _want_ack(self, unit: str, force: bool = False) -> None:
        earliest = self._last_pub.get(unit, -math.inf) + self.ack_interval_s
        when = max(time.monotonic(), earliest)
        prev = self._due.get(unit)
        if prev is not None:
            when, force = min(when, prev[0]), force or prev[1]
        self._due[unit] = (when, force)

    def _after_settle(self) -> None:
        if self._settle_until is None or time.monotonic() < self._settle_until:
            return
        self._settle_until = None
        # The retained statuses and acks have had time to arrive: state the
        # current ack of every unit again (the broker may have lost them).
        for unit, state in self._units.items():
            if state.active is not None:
                self._want_ack(unit, force=True)

    def _publish_due(self, force_all: bool = False) -> None:
        now = time.monotonic()
        for unit, (when, force) in list(self._due.items()):
            if when <= now or force_all:
                del self._due[unit]
                self._publish_ack(unit, force)

    def _publish_ack(self, unit: str, force: bool) -> None:
        state = self._units.get(unit)
        if state is None or state.active is None or self._client is None:
            return
        st = self._journals.get((unit, state.active))
        if st is None:
            return
        seq = st.prefix
        if self.share is not None and self._reader is not None:
            # Other ledgers of the group store this unit's events too: the ack is
            # the prefix the database holds now, whoever committed it.
            try:
                info = self._reader.journal(unit, st.journal)
            except self._db_errors as err:
                log.error("ledger database %s: cannot read the prefix of %s: %s",
                          self.db_name, unit, str(err).strip())
                info = None
            if info is not None:
                seq = max(seq, info.prefix)
        if seq <= 0:
            return
        # Never lower than published before for this journal; the same ack again
        # only when asked to re-state it (after a (re)connect).
        if seq < st.ack_published:
            return
        with self._pub_lock:
            if not force and self._published.get(unit) == (st.journal, seq):
                return
        envelope = self.key.sign_envelope(
            "ack", {"journal": st.journal, "seq": seq}, site=self.site, units=[unit],
            ttl_s=ACK_TTL_S, clock=self.clock)
        payload = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
        info = self._client.publish(topics.ack(self.site, unit), payload, qos=1, retain=True)
        with self._pub_lock:
            self._unconfirmed.add(info.mid)
            self._published[unit] = (st.journal, seq)
        self._last_pub[unit] = time.monotonic()
        if seq > st.ack_published:
            st.ack_published = seq
            st.ack_dirty = True
        self._counters["acks_published"] += 1
        self._acks_unsaved += 1
        log.debug("ack %s journal %s seq %d", unit, st.journal, seq)
        with self._changed:
            self._changed.notify_all()

    def _flush_dirty(self, force: bool = False) -> None:
        """Write published-ack marks and counters not yet in the database.

        They need no fsync before the ack goes out (the prefix the ack states
        is already on disk, and on restart every ack is re-published from it),
        so they ride along at most once a second.
        """
        unsaved = self._acks_unsaved
        dirty = sorted((st for st in self._journals.values() if st.ack_dirty),
                       key=lambda st: (st.unit, st.journal))
        if not dirty and not unsaved:
            return
        now = time.monotonic()
        if not force and now - self._last_flush < 1.0:
            return
        self._last_flush = now
        assert self._db is not None
        try:
            with self._db.transaction() as cur:
                for st in dirty:
                    self._db.save_ack_published(cur, st)
                self._db.add_counters(cur, {"acks_published": unsaved})
        except self._db_errors as err:
            log.error("ledger database %s: cannot save ack marks: %s", self.db_name,
                      str(err).strip())
            return
        self._acks_unsaved = 0
        for st in dirty:
            st.ack_dirty = False


def default_client_id(site: str, share: str | None) -> str:
    """``xunfang_ledger_{site}``; in a share group one per process, so that two ledgers
    on one host do not take each other's connection."""
    if share is None:
        return f"xunfang_ledger_{site}"
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"xunfang_ledger_{site}_{host}_{os.getpid()}"


# -- CLI ------------------------------------------------------------------------------------


def _fail(message: str, code: int = 1) -> int:
    print(f"xunfang ledger: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    """``xunfang ledger --broker … --site … --db … --key …``: run until SIGTERM/SIGINT."""
    missing = [f"--{n}" for n in ("broker", "site", "db", "key") if not getattr(args, n)]
    if missing:
        return _fail(f"missing {', '.join(missing)} (or give a command: gaps, stats)", 2)
    host, port = args.broker
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if bool(args.tls_cert) != bool(args.tls_key):
            return _fail("give --tls-cert and --tls-key together", 2)
        tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    password = None
    if args.password_file:
        if not args.username:
            return _fail("--password-file needs --username", 2)
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            return _fail(f"cannot read {args.password_file}: {err.strerror or err}", 2)
    try:
        key = load_signing_key(args.key)
    except SignatureError as err:
        return _fail(str(err), 2)
    except OSError as err:
        return _fail(f"cannot read key {args.key}: {err.strerror or err}", 2)
    if args.inventory:
        try:
            listed = units_of_site(load_inventory(args.inventory), args.site)
        except InventoryError as err:
            return _fail(str(err), 2)
        if not listed:
            log.warning("inventory %s lists no unit of site %s: every event will be refused",
                        args.inventory, args.site)
    else:
        log.warning("no --inventory: storing events of any unit that the broker lets publish "
                    "under site %s", args.site)
    ledger = Ledger(
        args.db, args.site, key, host, port if port is not None else (8883 if tls else 1883),
        protocol=args.protocol, client_id=args.client_id, username=args.username,
        password=password, tls=tls, inventory=args.inventory, share=args.share)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        ledger.start()
    except LedgerError as err:
        return _fail(str(err))
    log.info("ledger of site %s: database %s, broker %s:%s, signing as %s%s", args.site,
             ledger.db_name, ledger.host, ledger.port, key.name,
             f", in share group {args.share} as {ledger.client_id}" if args.share else "")
    try:
        while not done.wait(1.0):
            pass
    finally:
        ledger.stop()
    return 0


def _open_readonly(target: str) -> LedgerStore | int:
    try:
        return LedgerStore(target, readonly=True)
    except LedgerError as err:
        return _fail(str(err))


def cmd_gaps(args: argparse.Namespace) -> int:
    """``ledger gaps``: per unit and journal, the missing runs and those acked before."""
    db = _open_readonly(args.db)
    if isinstance(db, int):
        return db
    try:
        gaps = db.gaps(args.unit)
    finally:
        db.close()
    if args.json:
        print(json.dumps([g.as_dict() for g in gaps], indent=2))
        return 0
    if not gaps:
        print(f"no journals{' of unit ' + args.unit if args.unit else ''} in {db.name}")
        return 0
    rows = [("UNIT", "JOURNAL", "ACTIVE", "ACKED", "HIGHEST", "HELD", "MISSING",
             "ACKED BEFORE LEDGER")]
    for g in gaps:
        i = g.info
        # Names came from topics and envelopes: escaped, like everything a unit sends.
        rows.append((clean(i.unit, 40), clean(i.journal, 40), "yes" if i.active else "no",
                     str(i.prefix), str(i.max_seq), str(i.held),
                     format_ranges(g.missing, 20) or "-",
                     format_ranges(g.acked_before, 5) or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    with_gaps = [g for g in gaps if g.missing]
    print(f"{len(gaps)} journal(s), {len(with_gaps)} with gaps, "
          f"{sum(g.missing_count for g in gaps)} event(s) missing")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """``ledger stats``: counts, counters and per-journal state as JSON."""
    db = _open_readonly(args.db)
    if isinstance(db, int):
        return db
    try:
        stats = db.stats()
    finally:
        db.close()
    print(json.dumps(stats, indent=2))
    return 0


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``ledger`` (run) with ``gaps`` and ``stats`` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "ledger",
        help="store units' events and acknowledge them (command centre)",
        description=("Run the site's event ledger: store every event once in a SQLite "
                     "file or a PostgreSQL database and publish signed acks of the contiguous "
                     "prefix held. 'gaps' and 'stats' read the database."),
    )
    p.add_argument("--broker", type=broker_address, metavar="HOST:PORT",
                   help="MQTT broker (port 1883, or 8883 with TLS, if left out)")
    p.add_argument("--site", type=site_name, help="the site whose units this ledger serves")
    p.add_argument("--db", metavar="FILE|URL",
                   help="ledger database: a SQLite file (created if missing) or a "
                        "postgresql://user@host/dbname URL (schema created or migrated)")
    p.add_argument("--share", metavar="GROUP", type=site_name,
                   help="serve the site together with the other ledgers started with this "
                        "group (MQTT shared subscription; every one on the same PostgreSQL "
                        "database)")
    p.add_argument("--key", metavar="FILE",
                   help="private key the acks are signed with (xunfang keys new)")
    p.add_argument("--inventory", metavar="FILE",
                   help="the units and their sites, '<unit id> <site>' per line (the file the "
                        "broker's ACL is rendered from): only this site's units are stored")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5",
                   help="MQTT version (5; 3.1.1 for brokers such as NATS)")
    p.add_argument("--username", help="broker username")
    p.add_argument("--password-file", metavar="F", help="file holding the broker password")
    p.add_argument("--tls-ca", metavar="CA", help="CA certificate (PEM) to trust the broker by")
    p.add_argument("--tls-cert", metavar="C", help="client certificate (PEM)")
    p.add_argument("--tls-key", metavar="K", help="client certificate's key (PEM)")
    p.add_argument("--client-id", metavar="ID",
                   help="MQTT client id (default xunfang_ledger_{site}; with --share, "
                        "xunfang_ledger_{site}_{host}_{pid})")
    p.set_defaults(func=cmd_run)
    sub = p.add_subparsers(dest="ledger_command", metavar="{gaps,stats}")

    g = sub.add_parser("gaps", help="list missing sequence numbers per unit and journal",
                       description="Per unit and journal: the acked prefix, the missing runs "
                                   "above it and the runs acknowledged before this ledger.")
    g.add_argument("--db", metavar="FILE|URL", required=True, help="ledger database")
    g.add_argument("--unit", type=site_name, help="only this unit")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=cmd_gaps)

    s = sub.add_parser("stats", help="counts and counters of the ledger database (JSON)")
    s.add_argument("--db", metavar="FILE|URL", required=True, help="ledger database")
    s.set_defaults(func=cmd_stats)
    return p
