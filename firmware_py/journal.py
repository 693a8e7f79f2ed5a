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

Damage and a full disk (``docs/operations.md``): a journal that fails
``PRAGMA quick_check`` at start, or whose statements fail with SQLite's
"malformed"/"not a database" errors while running, is moved aside and rebuilt
with everything still readable (:meth:`Journal.rebuild`); every process using
it follows to the new file. A journal that cannot be opened for writing (a
full disk) is read as last stored, and writes fail until it can be reopened.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

from . import __version__
from .clock import Clock, SystemClock, rfc3339_ms
from .exc import JournalCorrupt, JournalError, JournalTooNew, JournalUnavailable, JournalWriteFailed

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
#: State key of the last rebuild of this journal (health reports it).
REBUILT_KEY = "journal/rebuilt"
# How often a reader looks whether another process replaced the file (a rebuild).
_IDENT_CHECK_S = 1.0
# How often a journal that could only be read tries to open for writing again.
_REOPEN_EVERY_S = 1.0
# Rows read at once while salvaging; a range that fails is split down to single rows.
_SALVAGE_CHUNK = 512
# Lost sequence numbers listed (as ranges) in the rebuild's event.
_MAX_LOST_RANGES = 50

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


def _file_ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """The journal's lock file: one process at a time moves a journal aside or follows."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_corruption(err: BaseException | None) -> bool:
    """True when ``err`` (or what caused it) says the file is damaged: SQLite's
    SQLITE_CORRUPT ("database disk image is malformed") or SQLITE_NOTADB, or
    :class:`JournalCorrupt`. A full disk or an I/O error is not damage."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, JournalCorrupt):
            return True
        if isinstance(err, sqlite3.DatabaseError):
            code = getattr(err, "sqlite_errorcode", None)
            if isinstance(code, int):
                return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
            text = str(err)
            return "malformed" in text or "not a database" in text
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _move_aside(path: Path) -> Path:
    """Rename the journal and its -wal/-shm to ``{name}.corrupt-{time}``; kept, never deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # The -wal first: the main file without its log must never meet a new log.
    for suffix in ("-wal", "-shm", ""):
        src = path.with_name(path.name + suffix)
        if src.exists():
            os.replace(src, aside.with_name(aside.name + suffix))
    _fsync_dir(path.parent)
    return aside


def _ranges(numbers: list[int]) -> list[list[int]]:
    """[3, 4, 5, 9] -> [[3, 5], [9, 9]]."""
    out: list[list[int]] = []
    for n in sorted(numbers):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


@dataclass
class Salvage:
    """What a rebuild could read from the damaged file."""

    previous_journal: str | None = None
    acked_seq: int | None = None
    last_seq: int | None = None
    events: int = 0
    lost_seqs: list[int] = field(default_factory=list)
    lost_unknown: bool = False   # the end of the events could not be found
    inbox: int = 0
    inbox_lost: bool = False
    state: int = 0
    state_lost: bool = False
    cursors: int = 0
    seen: set[int] = field(default_factory=set, repr=False)   # event numbers copied

    @property
    def lost(self) -> int | None:
        return None if self.lost_unknown else len(self.lost_seqs)


class _Reader:
    """Reads what it can from a damaged journal, one range of keys at a time."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any] | None:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError:
            return None

    def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows and isinstance(rows[0][0], int | str) else None

    def by_rowid(self, columns: str, table: str, key: str, lo: int, hi: int,
                 bad: list[int]) -> Iterator[tuple[Any, ...]]:
        """Rows with ``lo <= key <= hi``, in order; keys that cannot be read go to ``bad``."""
        def read(a: int, b: int) -> list[tuple[Any, ...]]:
            if a == b:  # a point lookup: a range scan also steps onto the next page
                got = self.rows(f"SELECT {columns} FROM {table} WHERE {key} = ?", (a,))
                if got is None:
                    bad.append(a)
                return got or []
            got = self.rows(f"SELECT {columns} FROM {table} WHERE {key} BETWEEN ? AND ?"
                            f" ORDER BY {key}", (a, b))
            if got is not None:
                return got
            mid = (a + b) // 2
            return read(a, mid) + read(mid + 1, b)

        for start in range(lo, hi + 1, _SALVAGE_CHUNK):
            yield from read(start, min(hi, start + _SALVAGE_CHUNK - 1))

    def keyed(self, columns: str, table: str, key: str) -> tuple[list[tuple[Any, ...]], bool]:
        """All readable rows of a small table keyed by text (``key``, the first column);
        True when some could not be read: forward until the first error, then backward
        to it."""
        every = self.rows(f"SELECT {columns} FROM {table} ORDER BY {key}")
        if every is not None:
            return every, False
        found: dict[str, tuple[Any, ...]] = {}
        for order, op in (("ASC", ">"), ("DESC", "<")):
            last: str | None = None
            while True:
                where = f"WHERE {key} {op} ?" if last is not None else ""
                got = self.rows(f"SELECT {columns} FROM {table} {where} ORDER BY {key} {order}"
                                " LIMIT 1", (last,) if last is not None else ())
                if not got or got[0][0] in found:
                    break
                found[got[0][0]] = got[0]
                last = got[0][0]
        return [found[k] for k in sorted(found)], True


def _valid_event(row: tuple[Any, ...]) -> dict[str, Any] | None:
    """The data of a salvaged event row, or None when the row is not a sound event."""
    seq, kind, unit, site, ts_ms, boot, mono, synced, data, recorded_at = row
    if not (isinstance(seq, int) and isinstance(kind, str) and KIND_RE.match(kind)
            and isinstance(unit, str) and isinstance(site, str) and isinstance(ts_ms, int)
            and isinstance(boot, str) and isinstance(mono, int | float) and synced in (0, 1)
            and isinstance(data, str) and isinstance(recorded_at, int | float)):
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _salvage_into(old: sqlite3.Connection, cur: sqlite3.Cursor) -> Salvage:
    """Copy what can be read from the damaged journal ``old`` into the new one (``cur``, in
    its write transaction): events the centre has not acknowledged, with their sequence
    numbers; the inbox, with its numbers; cursors and state keys. Each salvaged event's
    data gets ``salvaged_from``, its id in the old journal."""
    r = _Reader(old)
    out = Salvage()
    prev = r.value("SELECT value FROM meta WHERE key='journal_id'")
    out.previous_journal = prev if isinstance(prev, str) and re.fullmatch(r"[0-9a-f]{16}",
                                                                          prev) else None
    cursors, _ = r.keyed("name, seq, updated_at", "cursors", "name")
    for name, seq, updated_at in cursors:
        if isinstance(name, str) and isinstance(seq, int) and seq >= 0:
            cur.execute("INSERT INTO cursors VALUES (?,?,?)", (name, seq, updated_at or 0.0))
            out.cursors += 1
            if name == ACK_CURSOR:
                out.acked_seq = seq
    states, out.state_lost = r.keyed("key, value, updated_ms", "state", "key")
    for key, value, updated_ms in states:
        try:
            ok = isinstance(key, str) and isinstance(value, str) and json.loads(value) is not None
        except ValueError:
            ok = False
        if ok:
            cur.execute("INSERT INTO state VALUES (?,?,?)", (key, value, updated_ms or 0))
            out.state += 1
        else:
            out.state_lost = True

    inbox_high = max((v for v in (r.value("SELECT seq FROM sqlite_sequence WHERE name='inbox'"),
                                  r.value("SELECT max(n) FROM inbox")) if isinstance(v, int)),
                     default=None)
    if inbox_high is None:
        out.inbox_lost = r.rows("SELECT 1 FROM inbox LIMIT 1") is None
    else:
        bad: list[int] = []
        for n, command_id, name, args, received_ms in r.by_rowid(
                "n, command_id, name, args, received_ms", "inbox", "n", 1, inbox_high, bad):
            if isinstance(command_id, str) and isinstance(name, str) and isinstance(args, str):
                cur.execute("INSERT OR IGNORE INTO inbox VALUES (?,?,?,?,?)",
                            (n, command_id, name, args, received_ms))
                out.inbox += cur.rowcount
            else:
                out.inbox_lost = True
        out.inbox_lost = out.inbox_lost or bool(bad)
        cur.execute("DELETE FROM sqlite_sequence WHERE name='inbox'")
        cur.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('inbox', ?)", (inbox_high,))

    high = max((v for v in (r.value("SELECT seq FROM sqlite_sequence WHERE name='events'"),
                            r.value("SELECT max(seq) FROM events")) if isinstance(v, int)),
               default=None)
    start = out.acked_seq + 1 if out.acked_seq is not None else None
    if start is None:  # no ack: everything still stored may be undelivered
        low = r.value("SELECT min(seq) FROM events")
        start = low if isinstance(low, int) else 1
    lost: list[int] = []
    if high is None:
        # The end is unreadable: go up while a chunk still gives rows (numbers past
        # the end may fail too, when the way to them is damaged).
        out.lost_unknown = True
        top = start - 1
        while True:
            chunk_bad: list[int] = []
            rows = list(r.by_rowid(Journal.SALVAGE_COLUMNS, "events", "seq", top + 1,
                                   top + _SALVAGE_CHUNK, chunk_bad))
            if not rows:
                break
            lost += chunk_bad
            _copy_events(cur, rows, out, lost)
            top += _SALVAGE_CHUNK
        out.lost_seqs = sorted(set(lost))
        high = max([start - 1, *out.seen, *out.lost_seqs])
    else:
        _copy_events(cur, r.by_rowid(Journal.SALVAGE_COLUMNS, "events", "seq", start, high,
                                     lost), out, lost)
        # Above the ack the numbers are dense: one that did not come back is lost.
        out.lost_seqs = [n for n in range(start, high + 1) if n not in out.seen]
    out.last_seq = max(high, out.acked_seq or 0)
    if out.acked_seq is None:
        out.acked_seq = start - 1
        cur.execute("INSERT INTO cursors VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET"
                    " seq=excluded.seq", (ACK_CURSOR, out.acked_seq, time.time()))
    cur.execute("DELETE FROM sqlite_sequence WHERE name='events'")
    cur.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (out.last_seq,))
    return out


def _copy_events(cur: sqlite3.Cursor, rows: Iterable[tuple[Any, ...]], out: Salvage,
                 lost: list[int]) -> None:
    for row in rows:
        data = _valid_event(row)
        seq = row[0]
        if data is None:
            if isinstance(seq, int):
                lost.append(seq)
            continue
        if out.previous_journal is not None:
            data.setdefault("salvaged_from", f"{row[2]}:{out.previous_journal}:{seq}")
        cur.execute(
            "INSERT OR IGNORE INTO events (seq, kind, unit, site, ts_ms, boot_id, mono,"
            " clock_synced, data, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (*row[:8], _json(data), row[9]))
        if cur.rowcount:
            out.events += 1
            out.seen.add(seq)


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """Run a journal call on the file that is the journal now: follow a rebuild done by
    another process, and when the call finds the file damaged, rebuild it and run the
    call once more on the new journal."""
    @functools.wraps(method)
    def call(self: Journal, *args: Any, **kwargs: Any) -> Any:
        self._maintain()
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.DatabaseError, JournalError) as err:
            if self._closed or not is_corruption(err):
                raise
            self.rebuild(err)
        return method(self, *args, **kwargs)
    return call  # type: ignore[return-value]


class Journal:
    """A unit's journal file. Safe to share between threads of one process.

    Example::

        with Journal.open("/var/lib/xunfang/journal.db", unit="zt-pp-03", site="zhuantang") as j:
            event = j.append("checkin", {"card": "14008EC793", "decision": "accepted"})
            print(event.id)   # on disk by now

    ``read_only_fallback``: when the file cannot be opened for writing (a full
    disk cannot even hold SQLite's shared-memory file), read it as it was last
    stored rather than fail; every write then fails with
    :class:`JournalWriteFailed` and tries to open it properly again
    (``read_only_error`` says why until one does).
    """

    SALVAGE_COLUMNS = "seq, kind, unit, site, ts_ms, boot_id, mono, clock_synced, data, recorded_at"

    def __init__(self, path: str | os.PathLike[str], unit: str, site: str,
                 clock: Clock | None = None, busy_timeout_s: float = 30.0,
                 read_only_fallback: bool = False) -> None:
        self.path = Path(path)
        self.unit = unit
        self.site = site
        self.clock: Clock = clock or SystemClock()
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        #: Set while the journal could only be opened for reading: why.
        self.read_only_error: str | None = None
        #: The last rebuild of this journal (the state key ``journal/rebuilt``), if any.
        self.rebuilt: dict[str, Any] | None = None
        #: Fields of the ``unit`` event a rebuild records (the runtime sets version,
        #: config_sha256 and component).
        self.event_context: dict[str, Any] = {"version": __version__, "config_sha256": ""}
        self._next_reopen = 0.0
        self._ident_checked = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db, self._ident, self.journal_id = self._connect()
        except JournalUnavailable as err:
            if not read_only_fallback:
                raise
            self._open_read_only(err)
        self._data_version = self._read_data_version()
        self.rebuilt = self._stored_rebuild()

    @classmethod
    def open(cls, path: str | os.PathLike[str], unit: str, site: str,
             clock: Clock | None = None) -> Journal:
        return cls(path, unit=unit, site=site, clock=clock)

    @classmethod
    def open_or_recover(cls, path: str | os.PathLike[str], unit: str, site: str,
                        clock: Clock | None = None,
                        context: dict[str, Any] | None = None) -> tuple[Journal, Path | None]:
        """Open the journal as a daemon does: check it, and rebuild it when it is damaged.

        A unit must keep recording even when its SD card mangled the journal. A
        file that cannot be opened, or fails ``PRAGMA quick_check``, is moved
        aside to ``journal.db.corrupt-{time}`` (with its -wal/-shm; kept for the
        centre to fetch, never deleted) and a new journal with a new id takes its
        place, holding what could still be read (:meth:`rebuild`). A file that
        cannot be opened for writing (a full disk) is opened for reading
        (``read_only_fallback``). Several daemons may try at once; the lock file
        lets one of them do it. Returns the journal and where a damaged file went.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            journal = cls(path, unit=unit, site=site, clock=clock, read_only_fallback=True)
        except JournalCorrupt as err:
            return cls._replace_unopenable(path, unit, site, clock, context, err)
        if context:
            journal.event_context.update(context)
        before = journal.journal_id
        if journal.read_only_error is None:
            try:
                damage = journal.quick_check()
            except JournalError as err:  # an I/O error: not damage, and no reason to stop
                log.error("%s", err)
                damage = None
            if damage is not None:
                journal.rebuild(JournalCorrupt(f"journal {path} failed its check: {damage}"))
        if journal.journal_id != before and journal.rebuilt:
            return journal, path.with_name(str(journal.rebuilt.get("moved_to")))
        return journal, None

    @classmethod
    def _replace_unopenable(cls, path: Path, unit: str, site: str, clock: Clock | None,
                            context: dict[str, Any] | None,
                            first_error: JournalCorrupt) -> tuple[Journal, Path | None]:
        with _exclusive(path.with_name(path.name + ".lock")):
            try:  # another daemon may have replaced it while we waited for the lock
                journal = cls(path, unit=unit, site=site, clock=clock, read_only_fallback=True)
            except JournalCorrupt:
                pass
            else:
                if context:
                    journal.event_context.update(context)
                return journal, None
            aside = _move_aside(path)
            log.critical("journal %s cannot be opened (%s): moved it to %s and started a new "
                         "journal; nothing could be read from it", path, first_error, aside)
            journal = cls(path, unit=unit, site=site, clock=clock)
            if context:
                journal.event_context.update(context)
            journal._record_rebuild(None, aside, str(first_error))
            return journal, aside

    # -- opening ------------------------------------------------------------------------

    def _connect(self) -> tuple[sqlite3.Connection, tuple[int, int], str]:
        """Open (creating if need be) the file at ``path``: connection, file identity, id."""
        try:
            created = _create_owner_only(self.path)
            if created:
                _fsync_dir(self.path.parent)
        except OSError as err:
            raise JournalUnavailable(f"cannot create journal {self.path}: {err}") from err
        ident = _file_ident(self.path)
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as err:
            raise JournalError(f"cannot open journal {self.path}: {err}") from err
        try:
            journal_id = self._setup(db, created)
        except sqlite3.DatabaseError as err:
            db.close()
            if is_corruption(err):
                raise JournalCorrupt(f"journal {self.path} is unreadable: {err}") from err
            raise JournalUnavailable(f"journal {self.path} cannot be opened for writing: "
                                     f"{err}") from err
        except BaseException:
            db.close()
            raise
        assert ident is not None
        return db, ident, journal_id

    def _open_read_only(self, err: JournalUnavailable) -> None:
        """The file as last stored, without the shared-memory file a full disk cannot hold."""
        uri = f"file:{quote(str(self.path))}?mode=ro&immutable=1"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            row = db.execute("SELECT value FROM meta WHERE key='journal_id'").fetchone()
        except sqlite3.Error:
            raise err from None
        if row is None or not re.fullmatch(r"[0-9a-f]{16}", str(row[0])):
            db.close()
            raise err
        ident = _file_ident(self.path)
        assert ident is not None
        self._db, self._ident, self.journal_id = db, ident, str(row[0])
        self.read_only_error = str(err.__cause__ or err)
        self._next_reopen = time.monotonic() + _REOPEN_EVERY_S
        log.critical("journal %s cannot be opened for writing (%s): reading it as last stored; "
                     "nothing can be recorded until it can", self.path, self.read_only_error)

    def _try_reopen(self) -> None:
        """While read-only: try to open the file for writing (space may be back)."""
        now = time.monotonic()
        if self.read_only_error is None or now < self._next_reopen:
            return
        self._next_reopen = now + _REOPEN_EVERY_S
        try:
            db, ident, journal_id = self._connect()
        except JournalUnavailable as err:
            self.read_only_error = str(err.__cause__ or err)
            return
        old, self._db = self._db, db
        self._ident, self.journal_id = ident, journal_id
        self.read_only_error = None
        with suppress(sqlite3.Error):
            old.close()
        self._data_version = self._read_data_version()
        log.warning("journal %s can be written again", self.path)
        self._changed.notify_all()

    def _setup(self, db: sqlite3.Connection, created: bool) -> str:
        if created or (self._user_version(db) == 0 and not self._has_tables(db)):
            # auto_vacuum must be chosen before the first table exists.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(f"journal {self.path}: cannot switch to WAL mode (got {mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if self._has_tables(db):
                    raise JournalCorrupt(f"{self.path} holds tables but is not a xunfang journal")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                journal_id = secrets.token_hex(8)
                db.execute("INSERT INTO meta VALUES ('journal_id', ?)", (journal_id,))
                db.execute("INSERT INTO meta VALUES ('created_ms', ?)",
                           (str(self.clock.wall_ms()),))
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                log.info("created journal %s with id %s", self.path, journal_id)
            else:
                check_schema_version(self.path, version)
            db.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        row = db.execute("SELECT value FROM meta WHERE key='journal_id'").fetchone()
        if row is None or not re.fullmatch(r"[0-9a-f]{16}", row[0]):
            raise JournalCorrupt(f"journal {self.path} has no valid journal id")
        return str(row[0])

    @staticmethod
    def _user_version(db: sqlite3.Connection) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    @staticmethod
    def _has_tables(db: sqlite3.Connection) -> bool:
        return db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table'"
        ).fetchone()[0] > 0

    def _read_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _stored_rebuild(self) -> dict[str, Any] | None:
        try:
            row = self._db.execute("SELECT value FROM state WHERE key=?",
                                   (REBUILT_KEY,)).fetchone()
            value = json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError):
            return None
        return value if isinstance(value, dict) else None

    # -- damage and rebuilds ---------------------------------------------------------------

    def quick_check(self) -> str | None:
        """``PRAGMA quick_check``: None when the file is sound, else what is wrong.
        It reads every page, so it takes as long as reading the file (0.09 s for a
        25 MB journal from the page cache; on an SD card its read speed decides)."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute("PRAGMA quick_check").fetchall()
            except sqlite3.DatabaseError as err:
                if is_corruption(err):
                    return str(err)
                raise JournalError(f"journal {self.path}: cannot check it: {err}") from err
        problems = [str(r[0]) for r in rows]
        return None if problems == ["ok"] else "; ".join(problems[:3])

    def _replaced(self) -> bool:
        """True when the path is no longer the file this connection has open."""
        return _file_ident(self.path) != self._ident

    def _maintain(self) -> None:
        """Before a call: reopen a read-only journal for writing when due, and notice
        (about once a second) that another process has rebuilt the journal."""
        if self._closed:
            return
        if self.read_only_error is not None:
            with self._lock:
                self._try_reopen()
            return
        now = time.monotonic()
        if now - self._ident_checked >= _IDENT_CHECK_S:
            self._ident_checked = now
            if self._replaced():
                with self._lock, _exclusive(self._lock_path):
                    if self._replaced():
                        self._follow()

    def _follow(self) -> None:
        """Switch to the file now at ``path`` (another process rebuilt the journal).
        The caller holds the lock file, so the rebuild is complete."""
        self._check_open()
        old_id = self.journal_id
        db, ident, journal_id = self._connect()
        old, self._db = self._db, db
        self._ident, self.journal_id = ident, journal_id
        # Safe: SQLite neither checkpoints nor deletes the -wal of a moved file on close.
        with suppress(sqlite3.Error):
            old.close()
        self._data_version = self._read_data_version()
        self.rebuilt = self._stored_rebuild()
        if journal_id != old_id:
            log.warning("journal %s was rebuilt by another process: now journal %s (was %s)",
                        self.path, journal_id, old_id)
        self._changed.notify_all()

    def rebuild(self, reason: BaseException | str) -> Salvage | None:
        """Move the damaged journal aside and start a new one holding what can be read.

        Under the lock file, holding the old file's write lock so that no other
        process writes to it meanwhile: the file and its -wal/-shm are renamed to
        ``journal.db.corrupt-{time}``, a new journal (new id) is created at the
        path, and in one transaction it gets the events the centre had not
        acknowledged (their sequence numbers kept, ``salvaged_from`` added to
        their data), the inbox, cursors and state keys that can still be read,
        the state key ``journal/rebuilt`` and a ``unit`` event ``journal_rebuilt``
        saying what was salvaged and lost. Other processes follow on their next
        call. Returns what was salvaged (None when another process had rebuilt
        it already).
        """
        with self._lock, _exclusive(self._lock_path):
            self._check_open()
            if self._replaced():
                self._follow()
                return None
            old = self._db
            with suppress(sqlite3.Error):
                old.execute("BEGIN IMMEDIATE")   # other writers wait, then see the new file
            try:
                aside = _move_aside(self.path)
                try:
                    db, ident, journal_id = self._connect()
                except JournalError:
                    # Cannot start a new journal (a full disk?): put the old one back.
                    for suffix in ("-wal", "-shm", ""):
                        src = aside.with_name(aside.name + suffix)
                        if src.exists() and not self.path.with_name(self.path.name +
                                                                    suffix).exists():
                            os.replace(src, self.path.with_name(self.path.name + suffix))
                    raise
                old_id = self.journal_id
                self._db, self._ident, self.journal_id = db, ident, journal_id
                self._data_version = self._read_data_version()
                salvage = self._record_rebuild(old, aside, str(reason), old_id)
            finally:
                with suppress(sqlite3.Error):
                    old.execute("ROLLBACK")
                if self._db is not old:
                    with suppress(sqlite3.Error):
                        old.close()
            log.critical(
                "journal %s was damaged (%s): moved it to %s; new journal %s holds %d salvaged "
                "event(s), %s lost, %d state key(s), %d inbox entr(ies)", self.path, reason,
                aside.name, self.journal_id, salvage.events,
                "?" if salvage.lost is None else salvage.lost, salvage.state, salvage.inbox)
            return salvage

    def _record_rebuild(self, old: sqlite3.Connection | None, aside: Path, reason: str,
                        old_id: str | None = None) -> Salvage:
        """In one transaction of the new journal: the salvage, its state key and event."""
        with self._write() as cur:
            salvage = _salvage_into(old, cur) if old is not None else Salvage()
            if salvage.previous_journal is None:
                salvage.previous_journal = old_id
            now_ms = self.clock.wall_ms()
            summary = {
                "at": rfc3339_ms(now_ms), "previous_journal": salvage.previous_journal,
                "moved_to": aside.name, "reason": reason[:300],
                "salvaged": salvage.events, "lost": salvage.lost,
            }
            self._set_state(cur, {REBUILT_KEY: summary}, now_ms)
            self._insert_event(cur, "unit", _json({
                **self.event_context, "state": "journal_rebuilt", **summary,
                "lost_seqs": _ranges(salvage.lost_seqs)[:_MAX_LOST_RANGES],
                "acked_seq": salvage.acked_seq, "last_seq": salvage.last_seq,
                "salvaged_state": salvage.state, "state_lost": salvage.state_lost,
                "salvaged_inbox": salvage.inbox, "inbox_lost": salvage.inbox_lost,
            }))
        self.rebuilt = summary
        return salvage

    # -- transactions -------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction; the commit is on disk when the block ends."""
        with self._lock:
            self._check_open()
            if self.read_only_error is not None:
                self._try_reopen()
                if self.read_only_error is not None:
                    raise JournalUnavailable(f"journal {self.path} cannot be written: "
                                             f"{self.read_only_error}")
            for _ in range(3):
                cur = self._db.cursor()
                try:
                    cur.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as err:
                    raise JournalWriteFailed(
                        f"journal {self.path}: cannot begin write: {err}") from err
                if not self._replaced():
                    break
                # Another process moved this file aside (a rebuild): write to the new one.
                with suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                with _exclusive(self._lock_path):
                    self._follow()
            else:
                raise JournalWriteFailed(f"journal {self.path} keeps being replaced")
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

    @_guarded
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

    @_guarded
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

    @_guarded
    def event_rows_after(self, seq: int, limit: int = 500) -> list[EventRow]:
        """:meth:`events_after` as stored rows (:class:`EventRow`), data left unparsed."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return list(map(EventRow._make, rows))

    @_guarded
    def event(self, seq: int) -> Event | None:
        with self._lock:
            self._check_open()
            row = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq = ?", (seq,)
            ).fetchone()
        return self._row_to_event(row) if row else None

    @_guarded
    def last_seq(self) -> int:
        """The highest sequence number ever handed out (0 for a new journal)."""
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name='events'"
            ).fetchone()
        return int(row[0]) if row else 0

    @_guarded
    def first_seq(self) -> int | None:
        """The lowest sequence number still stored, or None when empty."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT min(seq) FROM events").fetchone()
        return row[0]

    @_guarded
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
        self._maintain()
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

    @_guarded
    def cursor(self, name: str) -> int:
        """Where consumer ``name`` stands: the last sequence number it finished (0 at first)."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT seq FROM cursors WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @_guarded
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

    @_guarded
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

    @_guarded
    def oldest_pending(self) -> Event | None:
        with self._lock:
            self._check_open()
            row = self._db.execute(
                f"SELECT {self._EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                (self.acked_seq(),),
            ).fetchone()
        return self._row_to_event(row) if row else None

    # -- inbox --------------------------------------------------------------------

    @_guarded
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

    @_guarded
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

    @_guarded
    def inbox_seen(self, command_id: str) -> bool:
        with self._lock:
            self._check_open()
            return self._db.execute(
                "SELECT 1 FROM inbox WHERE command_id=?", (command_id,)
            ).fetchone() is not None

    # -- state store ------------------------------------------------------------------

    @_guarded
    def state_get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @_guarded
    def state_set(self, key: str, value: Any) -> None:
        """Set (or with None, delete) one key, durably."""
        with self._write() as cur:
            self._set_state(cur, {key: value}, self.clock.wall_ms())

    @_guarded
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

    @_guarded
    def size_bytes(self) -> int:
        """Bytes the journal's pages hold (free pages not counted)."""
        with self._lock:
            self._check_open()
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    @_guarded
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

    @_guarded
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
