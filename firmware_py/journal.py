"""The journal: one SQLite file that every daemon of a unit writes and reads.

Everything the unit records is an *event*, appended here before anything else
happens to it: the green light of a card tap, the uplink's publish, the
centre's acknowledgement all come after the commit. The file lives in the
unit's data directory and holds:

``events``
    The event log. ``seq`` is an AUTOINCREMENT key, so SQLite never hands out
    a number twice, not after deletes, pruning or a crash; appends run in
    ``BEGIN IMMEDIATE`` transactions, so concurrent writers in several
    processes get distinct, gap-free numbers.
``cursors``
    How far each consumer (the uplink, the camera's check-in watcher, …) has
    read, and the centre's acknowledgement (``ack``), which pruning honours.
``inbox``
    Verified commands from the centre, for the station and the camera.
``state``
    A small key → JSON store for what must survive a restart (alert level,
    card list, applied documents).

Durability: WAL mode with ``synchronous=FULL`` makes every commit fsync the
write-ahead log before ``append()`` returns, so an event that was handed back
survives a crash or a power cut. The file is created owner-only (0600);
SQLite gives its ``-wal`` and ``-shm`` files the same mode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .clock import Clock, SystemClock, rfc3339_ms
from .exc import JournalCorrupt, JournalError, JournalTooNew, JournalWriteFailed

log = logging.getLogger("xunfang.journal")

# The journal's format, kept in PRAGMA user_version. The rule (docs/operations.md,
# "Updates and rollback"): changes are additive (a new table, a new column with
# a default, new state keys), made at open so that they are idempotent, and
# leave this number alone, so the version before still starts on a journal the
# next one has opened. Only a change an older version could not use raises it;
# an older version then refuses the journal (JournalTooNew, the file left as it
# is), and xunfang-update refuses to install a version with a different number
# (it could not roll back).
SCHEMA_VERSION = 1
ACK_CURSOR = "ack"
KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_EVENT_DATA_BYTES = 64 * 1024
# Poll interval for changes made by other processes (PRAGMA data_version).
_POLL_S = 0.05

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL,
    unit         TEXT    NOT NULL,
    site         TEXT    NOT NULL,
    ts_ms        INTEGER NOT NULL,
    boot_id      TEXT    NOT NULL,
    mono         REAL    NOT NULL,
    clock_synced INTEGER NOT NULL,
    data         TEXT    NOT NULL,
    recorded_at  REAL    NOT NULL
);
CREATE TABLE cursors (
    name       TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_at REAL    NOT NULL
) WITHOUT ROWID;
CREATE TABLE inbox (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id  TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    args        TEXT    NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""


def check_schema_version(path: Path, version: int) -> None:
    """Refuse a journal whose format (``PRAGMA user_version``) this version cannot use."""
    if version > SCHEMA_VERSION:
        raise JournalTooNew(
            f"journal {path} has schema version {version}, written by a newer xunfang; this "
            f"version reads {SCHEMA_VERSION}: install that version again (the journal is left "
            "as it is)")
    if version != SCHEMA_VERSION:
        raise JournalCorrupt(
            f"journal {path} has schema version {version}, this build knows {SCHEMA_VERSION}")


@dataclass(frozen=True)
class Event:
    """One recorded event, as it is stored and as the uplink sends it."""

    seq: int
    kind: str
    unit: str
    site: str
    journal: str
    ts_ms: int
    boot_id: str
    mono: float
    clock_synced: bool
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Unique across units and journal rebuilds: ``{unit}:{journal}:{seq}``."""
        return f"{self.unit}:{self.journal}:{self.seq}"

    @property
    def ts(self) -> str:
        return rfc3339_ms(self.ts_ms)

    def envelope(self, resent: bool = False) -> dict[str, Any]:
        """The MQTT payload of ``events/{kind}`` (``docs/mqtt-api.md``)."""
        env: dict[str, Any] = {
            "v": 1,
            "id": self.id,
            "unit": self.unit,
            "site": self.site,
            "journal": self.journal,
            "seq": self.seq,
            "kind": self.kind,
            "ts": self.ts,
            "boot_id": self.boot_id,
            "mono": round(self.mono, 3),
            "clock_synced": self.clock_synced,
            "data": self.data,
        }
        if resent:
            env["resent"] = True
        return env


class EventRow(NamedTuple):
    """One event as stored, its data still the JSON text the journal wrote.

    For a reader that passes events on without looking into their data (the
    uplink splices the text into the envelope it publishes). Parsing the data
    and building an :class:`Event` are most of what :meth:`Journal.events_after`
    costs per event; this skips both. ``data_json`` is the text
    :meth:`Journal.append` stored: compact JSON with sorted keys (``_json``).
    """

    seq: int
    kind: str
    unit: str
    site: str
    ts_ms: int
    boot_id: str
    mono: float
    clock_synced: int  # as stored: 0 or 1
    data_json: str

    def to_event(self, journal_id: str) -> Event:
        """The :class:`Event` that :meth:`Journal.events_after` returns for this row."""
        return Event(self.seq, self.kind, self.unit, self.site, journal_id, self.ts_ms,
                     self.boot_id, self.mono, bool(self.clock_synced),
                     json.loads(self.data_json))


@dataclass(frozen=True)
class InboxEntry:
    """A verified command waiting for the station or the camera."""

    n: int
    command_id: str
    name: str
    args: dict[str, Any]
    received_ms: int


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _create_owner_only(path: Path) -> bool:
    """Create ``path`` as an empty 0600 file; False when it already existed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """A unit's journal file. Safe to share between threads of one process.

    Example::

        with Journal.open("/var/lib/xunfang/journal.db", unit="zt-pp-03", site="zhuantang") as j:
            event = j.append("checkin", {"card": "14008EC793", "decision": "accepted"})
            print(event.id)   # on disk by now
    """

    def __init__(self, path: str | os.PathLike[str], unit: str, site: str,
                 clock: Clock | None = None, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.unit = unit
        self.site = site
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = _create_owner_only(self.path)
        if created:
            _fsync_dir(self.path.parent)
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise JournalError(f"cannot open journal {self.path}: {err}") from err
        try:
            self._setup(created)
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise JournalCorrupt(f"journal {self.path} is unreadable: {err}") from err
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], unit: str, site: str,
             clock: Clock | None = None) -> Journal:
        return cls(path, unit=unit, site=site, clock=clock)

    @classmethod
    def open_or_recover(cls, path: str | os.PathLike[str], unit: str, site: str,
                        clock: Clock | None = None) -> tuple[Journal, Path | None]:
        """Open the journal; if the file is corrupt, move it aside and start a new one.

        A unit must keep recording even when its SD card mangled the journal:
        the damaged file (and its -wal/-shm) is renamed to
        ``journal.db.corrupt-{time}`` for forensics, never deleted, and a new
        journal with a new id takes its place, so no event id can repeat.
        Several daemons may try at once; a lock file lets one of them do it.
        Returns the journal and where the corrupt file went (None if none).
        """
        import fcntl

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return cls(path, unit=unit, site=site, clock=clock), None
        except JournalCorrupt as err:
            first_error = err
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # another daemon may have replaced it while we waited for the lock
                return cls(path, unit=unit, site=site, clock=clock), None
            except JournalCorrupt:
                pass
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = path.with_name(path.name + suffix)
                if src.exists():
                    os.replace(src, aside.with_name(aside.name + suffix))
            _fsync_dir(path.parent)
            log.critical("journal %s is corrupt (%s): moved it to %s and started a new journal",
                         path, first_error, aside)
            return cls(path, unit=unit, site=site, clock=clock), aside
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- set-up -----------------------------------------------------------------

    def _setup(self, created: bool) -> None:
        db = self._db
        if created or (self._user_version() == 0 and not self._has_tables()):
            # auto_vacuum must be chosen before the first table exists.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(f"journal {self.path}: cannot switch to WAL mode (got {mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        with self._write() as cur:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if self._has_tables():
                    raise JournalCorrupt(f"{self.path} holds tables but is not a xunfang journal")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                journal_id = secrets.token_hex(8)
                cur.execute("INSERT INTO meta VALUES ('journal_id', ?)", (journal_id,))
                cur.execute("INSERT INTO meta VALUES ('created_ms', ?)",
                            (str(self.clock.wall_ms()),))
                cur.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                log.info("created journal %s with id %s", self.path, journal_id)
            else:
                check_schema_version(self.path, version)
        row = db.execute("SELECT value FROM meta WHERE key='journal_id'").fetchone()
        if row is None or not re.fullmatch(r"[0-9a-f]{16}", row[0]):
            raise JournalCorrupt(f"journal {self.path} has no valid journal id")
        self.journal_id: str = row[0]
        self._data_version = self._read_data_version()

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _has_tables(self) -> bool:
        return self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table'"
        ).fetchone()[0] > 0

    def _read_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    # -- transactions -------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction; the commit is on disk when the block ends."""
        with self._lock:
            self._check_open()
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise JournalWriteFailed(f"journal {self.path}: cannot begin write: {err}") from err
            try:
                yield cur
            except BaseException:
                with suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            try:
                cur.execute("COMMIT")
            except sqlite3.Error as err:
                with suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise JournalWriteFailed(f"journal {self.path}: commit failed: {err}") from err
            self._changed.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")

    # -- events -------------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any] | None = None,
               state: dict[str, Any] | None = None) -> Event:
        """Record one event; return it once the commit is on disk.

        ``state`` sets keys of the state store in the same transaction, so a
        change and the event that reports it are stored together or not at all
        (a value of ``None`` deletes the key).
        Raises :class:`JournalWriteFailed` when the event could not be stored.
        """
        if not KIND_RE.match(kind):
            raise ValueError(f"event kind {kind!r} must match {KIND_RE.pattern}")
        payload = _json(data or {})
        if len(payload.encode()) > MAX_EVENT_DATA_BYTES:
            raise ValueError(
                f"event {kind}: data is {len(payload.encode())} bytes, limit {MAX_EVENT_DATA_BYTES}"
            )
        try:
            with self._write() as cur:
                event = self._insert_event(cur, kind, payload)
                if state:
                    self._set_state(cur, state, event.ts_ms)
        except sqlite3.Error as err:
            raise JournalWriteFailed(f"journal {self.path}: cannot append {kind}: {err}") from err
        return event

    def _insert_event(self, cur: sqlite3.Cursor, kind: str, payload: str) -> Event:
        clock = self.clock
        ts_ms, mono, synced, boot = (clock.wall_ms(), clock.monotonic(), clock.synced(),
                                     clock.boot_id())
        cur.execute(
            "INSERT INTO events (kind, unit, site, ts_ms, boot_id, mono, clock_synced,"
            " data, recorded_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (kind, self.unit, self.site, ts_ms, boot, mono, int(synced), payload, time.time()),
        )
        assert cur.lastrowid is not None
        return Event(cur.lastrowid, kind, self.unit, self.site, self.journal_id, ts_ms, boot,
                     mono, synced, json.loads(payload))

    def _row_to_event(self, row: tuple[Any, ...]) -> Event:
        seq, kind, unit, site, ts_ms, boot, mono, synced, data = row
        return Event(seq, kind, unit, site, self.journal_id, ts_ms, boot, mono, bool(synced),
                     json.loads(data))

    _EVENT_COLUMNS = "seq, kind, unit, site, ts_ms, boot_id, mono, clock_synced, data"

    def events_after(self, seq: int, limit: int = 500,
                     kinds: Iterable[str] | None = None) -> list[Event]:
        """Events with a sequence number above ``seq``, oldest first."""
        sql = f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq > ?"
        params: list[Any] = [seq]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        with self._lock:
            self._check_open()
            rows = self._db.execute(sql, params).fetchall()
        return [self._row_to_event(r) for r in rows]

    def event_rows_after(self, seq: int, limit: int = 500) -> list[EventRow]:
        """:meth:`events_after` as stored rows (:class:`EventRow`), data left unparsed."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return list(map(EventRow._make, rows))

    def event(self, seq: int) -> Event | None:
        with self._lock:
            self._check_open()
            row = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq = ?", (seq,)
            ).fetchone()
        return self._row_to_event(row) if row else None

    def last_seq(self) -> int:
        """The highest sequence number ever handed out (0 for a new journal)."""
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name='events'"
            ).fetchone()
        return int(row[0]) if row else 0

    def first_seq(self) -> int | None:
        """The lowest sequence number still stored, or None when empty."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT min(seq) FROM events").fetchone()
        return row[0]

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def wait(self, after_seq: int, timeout: float) -> bool:
        """Block until an event above ``after_seq`` exists (any process); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.last_seq() > after_seq:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.wait_for_change(min(remaining, _POLL_S * 4))

    def wait_for_change(self, timeout: float) -> bool:
        """Wait until anything in the file changes (this or another process)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            start = self._data_version
            while True:
                self._check_open()
                version = self._read_data_version()
                if version != start:
                    self._data_version = version
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Woken at once by a commit in this process; polls for the others.
                if self._changed.wait(min(remaining, _POLL_S)):
                    return True

    # -- cursors and acknowledgement ---------------------------------------------------

    def cursor(self, name: str) -> int:
        """Where consumer ``name`` stands: the last sequence number it finished (0 at first)."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT seq FROM cursors WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_cursor(self, name: str, seq: int) -> None:
        """Move consumer ``name`` to ``seq``; a cursor never moves backwards."""
        if seq < 0:
            raise ValueError(f"cursor {name}: sequence number {seq} is negative")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO cursors VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET"
                " seq=max(seq, excluded.seq), updated_at=excluded.updated_at",
                (name, seq, time.time()),
            )

    def acked_seq(self) -> int:
        """Every event up to this sequence number is acknowledged by the centre."""
        return self.cursor(ACK_CURSOR)

    def mark_acked(self, seq: int) -> bool:
        """Record the centre's acknowledgement up to ``seq``.

        Returns True when the acknowledgement advanced. An ack below the current
        one changes nothing; one beyond the last event ever appended is refused,
        since no ledger can hold events this unit never wrote.
        """
        last = self.last_seq()
        if seq > last:
            raise ValueError(f"ack {seq} is beyond the last event {last} of journal "
                             f"{self.journal_id}")
        before = self.acked_seq()
        if seq <= before:
            return False
        self.set_cursor(ACK_CURSOR, seq)
        return True

    def pending_count(self) -> int:
        """Events not yet acknowledged by the centre."""
        return max(0, self.last_seq() - self.acked_seq())

    def oldest_pending(self) -> Event | None:
        with self._lock:
            self._check_open()
            row = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                (self.acked_seq(),),
            ).fetchone()
        return self._row_to_event(row) if row else None

    # -- inbox --------------------------------------------------------------------

    def inbox_put(self, command_id: str, name: str, args: dict[str, Any],
                  event_kind: str | None = None,
                  event_data: dict[str, Any] | None = None) -> InboxEntry | None:
        """Queue a verified command; None when this command id was queued before.

        With ``event_kind``, the event that reports the command is appended in
        the same transaction.
        """
        now = self.clock.wall_ms()
        with self._write() as cur:
            try:
                cur.execute(
                    "INSERT INTO inbox (command_id, name, args, received_ms) VALUES (?,?,?,?)",
                    (command_id, name, _json(args), now),
                )
            except sqlite3.IntegrityError:
                return None
            n = cur.lastrowid
            if event_kind:
                self._insert_event(cur, event_kind, _json(event_data or {}))
        assert n is not None
        return InboxEntry(n, command_id, name, args, now)

    def inbox_after(self, n: int, names: Iterable[str] | None = None,
                    limit: int = 100) -> list[InboxEntry]:
        sql = "SELECT n, command_id, name, args, received_ms FROM inbox WHERE n > ?"
        params: list[Any] = [n]
        if names is not None:
            names = list(names)
            sql += f" AND name IN ({','.join('?' * len(names))})"
            params += names
        sql += " ORDER BY n LIMIT ?"
        params.append(limit)
        with self._lock:
            self._check_open()
            rows = self._db.execute(sql, params).fetchall()
        return [InboxEntry(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def inbox_seen(self, command_id: str) -> bool:
        with self._lock:
            self._check_open()
            return self._db.execute(
                "SELECT 1 FROM inbox WHERE command_id=?", (command_id,)
            ).fetchone() is not None

    # -- state store ------------------------------------------------------------------

    def state_get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def state_set(self, key: str, value: Any) -> None:
        """Set (or with None, delete) one key, durably."""
        with self._write() as cur:
            self._set_state(cur, {key: value}, self.clock.wall_ms())

    def state_items(self, prefix: str = "") -> dict[str, Any]:
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT key, value FROM state WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
        return {k: json.loads(v) for k, v in rows}

    @staticmethod
    def _set_state(cur: sqlite3.Cursor, values: dict[str, Any], now_ms: int) -> None:
        for key, value in values.items():
            if value is None:
                cur.execute("DELETE FROM state WHERE key=?", (key,))
            else:
                cur.execute(
                    "INSERT INTO state VALUES (?,?,?) ON CONFLICT(key) DO UPDATE SET"
                    " value=excluded.value, updated_ms=excluded.updated_ms",
                    (key, _json(value), now_ms),
                )

    # -- pruning -----------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes the journal's pages hold (free pages not counted)."""
        with self._lock:
            self._check_open()
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def prune(self, max_age_s: float | None = None, max_bytes: int | None = None,
              batch: int = 2000) -> int:
        """Delete acknowledged events older than ``max_age_s``, then the oldest
        acknowledged ones while the file holds more than ``max_bytes``.

        Never touches an event the centre has not acknowledged: a journal full
        of unacknowledged events stays full, and health says so. Returns how
        many events were deleted.
        """
        acked = self.acked_seq()
        deleted = 0
        if max_age_s is not None:
            cutoff = time.time() - max_age_s
            with self._write() as cur:
                cur.execute("DELETE FROM events WHERE seq <= ? AND recorded_at < ?",
                            (acked, cutoff))
                deleted += cur.rowcount
        if max_bytes is not None:
            while self.size_bytes() > max_bytes:
                with self._write() as cur:
                    cur.execute(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ?"
                        " ORDER BY seq LIMIT ?)", (acked, batch),
                    )
                    n = cur.rowcount
                deleted += n
                if n == 0:
                    break
        if deleted:
            with self._lock:
                self._db.execute("PRAGMA incremental_vacuum")
            log.debug("pruned %d acknowledged events from %s", deleted, self.path)
        return deleted

    # -- life cycle ----------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the main file (done on a clean stop)."""
        with self._lock:
            self._check_open()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the file; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with suppress(sqlite3.Error):
                self._db.execute("PRAGMA optimize")
            self._db.close()
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"id={getattr(self, 'journal_id', '?')}"
        return f"<Journal {self.path} {state}>"
