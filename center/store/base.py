"""What every ledger store holds and answers, in SQL both backends speak.

:class:`LedgerStore` is the interface and most of its implementation: the
statements are written once, with ``?`` placeholders, in the SQL that SQLite
and PostgreSQL share (``INSERT … ON CONFLICT``, ``RETURNING``, ``CASE``). A
backend (``sqlite.py``, ``postgres.py``) opens the connection, runs
transactions, translates placeholders and overrides the few statements that
differ (counters, locks, the size on disk). A new table is a migration file
per backend (``migrations/{backend}/NNNN_name.sql``) and, usually, methods
here that both inherit.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, Protocol

from firmware_py.clock import rfc3339_ms
from firmware_py.exc import XunfangError

log = logging.getLogger("xunfang.ledger")

#: Rejected or malformed messages kept for a look (the oldest go first).
REJECTS_KEPT = 1000
_EXCERPT_BYTES = 512
COUNTERS = (
    "received",  # messages on events topics
    "stored",  # events stored (first copy)
    "duplicates",  # further copies of a stored event (resent or redelivered)
    "conflicts",  # further copies whose content differs from the stored one
    "malformed",  # unreadable (not JSON, too large) or breaks envelope.json
    "rejected",  # readable, but claims another unit, site or kind than its topic
    "unknown_unit",  # events and statuses of units not in the site's inventory
    "statuses",  # status messages read
    "acks_published",
    "db_errors",  # failed commits (retried; the batch is not acknowledged meanwhile)
)
#: Rows per multi-row INSERT: well under either backend's limit on parameters.
INSERT_CHUNK = 100


class LedgerError(XunfangError):
    """The ledger cannot open its database or run as asked."""


class LedgerDatabaseError(LedgerError, OSError):
    """The ledger database cannot be opened, is not a ledger database, is another site's,
    or is newer than this build."""


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use (sqlite3's and psycopg's both fit)."""

    rowcount: int

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


# -- what a journal is, in memory and in the database -----------------------------------------


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted integers as inclusive runs: ``[1, 2, 3, 7]`` → ``[(1, 3), (7, 7)]``."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        elif not out or s > out[-1][1]:
            out.append((s, s))
    return out


def complement(held: Iterable[int], first: int, last: int) -> list[tuple[int, int]]:
    """The runs of ``first..last`` not in the sorted ``held``."""
    out: list[tuple[int, int]] = []
    cur = first
    for s in held:
        if s < cur:
            continue
        if s > last:
            break
        if s > cur:
            out.append((cur, s - 1))
        cur = s + 1
    if cur <= last:
        out.append((cur, last))
    return out


def format_ranges(runs: Iterable[tuple[int, int]], limit: int | None = None) -> str:
    """``[(4, 4), (6, 9)]`` → ``"4, 6-9"``; with ``limit``, the rest as ``(+N more)``."""
    runs = list(runs)
    shown = runs if limit is None else runs[:limit]
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in shown)
    if len(runs) > len(shown):
        text += f" (+{len(runs) - len(shown)} more)"
    return text


@dataclass
class JournalState:
    """The ledger's view of one unit's journal: base, contiguous prefix, held seqs above it.

    Invariant: every seq in ``1..prefix`` is held or at most ``base``; ``above``
    holds exactly the held seqs greater than ``prefix``. ``rev`` is the journal
    row's revision as last read or written: another value in the database means
    another ledger process moved the journal since.
    """

    unit: str
    journal: str
    base: int = 0
    prefix: int = 0
    max_seq: int = 0
    held: int = 0
    ack_published: int = 0
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    above: set[int] = field(default_factory=set)
    dirty: bool = False
    rev: int = 0
    #: ``ack_published`` rose and is not yet written (it needs no fsync before the ack).
    ack_dirty: bool = False

    @property
    def missing(self) -> int:
        """How many seqs between the prefix and the highest held are not held."""
        return max(0, self.max_seq - self.prefix - len(self.above))

    def missing_runs(self) -> list[tuple[int, int]]:
        return complement(sorted(self.above), self.prefix + 1, self.max_seq)

    def add(self, seq: int) -> None:
        """Record a newly stored seq (the caller has made sure it was not held)."""
        self.held += 1
        self.max_seq = max(self.max_seq, seq)
        if seq > self.prefix:
            self.above.add(seq)
            self._advance()
        self.dirty = True

    def raise_base(self, n: int) -> list[tuple[int, int]]:
        """Treat ``1..n`` as acknowledged before; return the runs no longer missing."""
        if n <= self.prefix:
            return []
        newly = complement(sorted(s for s in self.above if s <= n), self.prefix + 1, n)
        self.base = n
        self.prefix = n
        self.above = {s for s in self.above if s > n}
        self._advance()
        self.dirty = True
        return newly

    def _advance(self) -> None:
        while self.prefix + 1 in self.above:
            self.prefix += 1
            self.above.discard(self.prefix)


@dataclass(frozen=True)
class JournalInfo:
    """One (unit, journal) as the database holds it."""

    unit: str
    journal: str
    active: bool
    base: int
    prefix: int
    max_seq: int
    held: int
    ack_published: int
    first_seen_ms: int
    last_seen_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "journal": self.journal,
            "active": self.active,
            "base": self.base,
            "prefix": self.prefix,
            "max_seq": self.max_seq,
            "held": self.held,
            "ack_published": self.ack_published,
            "first_seen": rfc3339_ms(self.first_seen_ms),
            "last_seen": rfc3339_ms(self.last_seen_ms),
        }


@dataclass(frozen=True)
class JournalGaps:
    """What a journal lacks: ``missing`` runs above the prefix, ``acked_before`` up to the base."""

    info: JournalInfo
    missing: list[tuple[int, int]]
    acked_before: list[tuple[int, int]]

    @property
    def missing_count(self) -> int:
        return sum(b - a + 1 for a, b in self.missing)

    @property
    def acked_before_count(self) -> int:
        return sum(b - a + 1 for a, b in self.acked_before)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.info.as_dict(),
            "missing": [list(r) for r in self.missing],
            "missing_count": self.missing_count,
            "acked_before": [list(r) for r in self.acked_before],
            "acked_before_count": self.acked_before_count,
        }


@dataclass(frozen=True)
class EventRow:
    """An event as stored: what :meth:`LedgerStore.insert_events` takes."""

    id: str
    unit: str
    journal: str
    seq: int
    kind: str
    ts: str | None
    resent: bool
    digest: str
    envelope: str


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


_MIGRATION_RE = re.compile(r"([0-9]{4})_([a-z0-9_]+)\.sql")


def migrations(backend: str) -> list[Migration]:
    """The schema steps of one backend, in order (``migrations/{backend}/NNNN_name.sql``)."""
    out = []
    folder = resources.files("center.store").joinpath("migrations", backend)
    for entry in folder.iterdir():
        m = _MIGRATION_RE.fullmatch(entry.name)
        if m:
            out.append(Migration(int(m[1]), m[2], entry.read_text(encoding="utf-8")))
    out.sort(key=lambda mig: mig.version)
    if [mig.version for mig in out] != list(range(1, len(out) + 1)):
        raise LedgerDatabaseError(f"{backend} migrations are not numbered 1..{len(out)}")
    return out


def statements(sql: str) -> list[str]:
    """The statements of a migration file: ``--`` comments dropped, split at ``;``."""
    lines = [re.sub(r"--.*$", "", line) for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


_URL_SCHEMES = ("postgresql://", "postgres://")
_OTHER_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(target: str | os.PathLike[str]) -> bool:
    """True when ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(_URL_SCHEMES)


def backend_class(target: Any) -> type[LedgerStore]:
    """The store class for a path (SQLite) or a ``postgresql://`` URL."""
    if is_url(target):
        return _backend("postgres", "PostgresStore")
    if isinstance(target, str) and (m := _OTHER_URL.match(target)):
        raise LedgerDatabaseError(f"ledger database {m[0]}…: give a file path (SQLite) or a "
                                  "postgresql:// URL")
    return _backend("sqlite", "SqliteStore")


def _backend(module: str, name: str) -> type[LedgerStore]:
    # Loaded by name when first used: psycopg is imported only for a PostgreSQL database,
    # and the backends (which derive from this module) form no import cycle with it.
    cls: type[LedgerStore] = getattr(importlib.import_module(f"center.store.{module}"), name)
    return cls


# -- the store ----------------------------------------------------------------------------------


class LedgerStore:
    """A ledger database: SQLite file or PostgreSQL database. Methods are thread-safe.

    ``LedgerStore(target, site=..., readonly=...)`` opens the backend the
    target names: a ``postgresql://`` (or ``postgres://``) URL, else a SQLite
    file path. A store opened for writing creates or migrates the schema in
    one transaction; ``site`` is required for a new database and must match an
    existing one's. ``readonly`` opens an existing database for queries (the
    CLI's ``gaps`` and ``stats``, or a second handle next to a running ledger).
    ``writer`` names the process in per-writer rows (PostgreSQL's counters).
    """

    backend: ClassVar[str] = ""
    #: Exceptions that mean the database failed (not a bug): retried by the ledger.
    errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Placeholder the driver wants; statements here are written with ``?``.
    _placeholder: ClassVar[str] = "?"

    site: str
    readonly: bool

    def __new__(cls, target: Any = None, *args: Any, **kwargs: Any) -> LedgerStore:
        if cls is LedgerStore:
            cls = backend_class(target)
        return super().__new__(cls)

    def __init__(self, target: Any, site: str | None = None, readonly: bool = False,
                 writer: str = "ledger") -> None:
        raise NotImplementedError

    # -- what a backend provides ------------------------------------------------------------

    @property
    def name(self) -> str:
        """How logs and errors name the database (no password)."""
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[Cursor]:
        """One write transaction; durable when the block ends, rolled back if it raises."""
        raise NotImplementedError

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def size_bytes(self) -> int:
        raise NotImplementedError

    def lock_units(self, cur: Cursor, units: Iterable[str]) -> None:
        """Hold ``units`` (sorted, by the caller) against other writers until the commit."""

    def add_counters(self, cur: Cursor, deltas: dict[str, int]) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        raise NotImplementedError

    def _table_names(self, cur: Cursor) -> set[str]:
        raise NotImplementedError

    def _legacy_version(self, cur: Cursor) -> int:
        """The schema version of a database from before ``schema_version`` (0: none)."""
        return 0

    def _after_migration(self, cur: Cursor, version: int) -> None:
        """Backend bookkeeping once the schema is at ``version``."""

    # -- shared plumbing --------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _exec(self, cur: Cursor, sql: str, params: Sequence[Any] = ()) -> Any:
        return cur.execute(self._sql(sql), tuple(params))

    def _lock_init(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} site={getattr(self, 'site', '?')}>"

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def schema_version(self) -> int:
        rows = self._query("SELECT max(version) FROM schema_version")
        return int(rows[0][0] or 0)

    def _version(self, cur: Cursor) -> tuple[int, set[str]]:
        """The schema version the database is at (0: empty) and its tables."""
        tables = self._table_names(cur)
        if "schema_version" in tables:
            row = self._exec(cur, "SELECT max(version) FROM schema_version").fetchone()
            return int(row[0] or 0), tables
        if "events" in tables and "meta" in tables:
            version = self._legacy_version(cur)
            if version == 0:
                raise LedgerDatabaseError(f"{self.name} holds ledger tables of no known "
                                          "schema version")
            return version, tables
        if {t for t in tables if not t.startswith("register_")}:
            raise LedgerDatabaseError(f"{self.name} holds tables but is not a ledger")
        return 0, tables

    def _too_new(self, version: int, latest: int) -> LedgerDatabaseError:
        return LedgerDatabaseError(
            f"{self.name} has ledger schema version {version}, newer than this build "
            f"knows ({latest}): run a newer xunfang, or restore a backup from before the "
            "upgrade")

    def _check_readable(self, cur: Cursor) -> None:
        """A read-only handle: the schema must be the one this build writes."""
        latest = migrations(self.backend)[-1].version
        version, _ = self._version(cur)
        if version > latest:
            raise self._too_new(version, latest)
        if version == 0:
            raise LedgerDatabaseError(f"{self.name} is not a ledger database (no schema)")
        if version < latest:
            raise LedgerDatabaseError(
                f"{self.name} has ledger schema version {version}, this build reads "
                f"{latest}: start the ledger on it once to migrate it")
        row = self._exec(cur, "SELECT value FROM meta WHERE key='site'").fetchone()
        self.site = row[0] if row else ""

    def _migrate(self, site: str | None) -> None:
        """Create or bring the schema up to date in one transaction; check the site."""
        steps = migrations(self.backend)
        latest = steps[-1].version
        with self.transaction() as cur:
            self._migration_lock(cur)
            version, tables = self._version(cur)
            if version > latest:
                raise self._too_new(version, latest)
            if version == 0 and site is None:
                raise LedgerDatabaseError(f"{self.name} is a new ledger: give its site")
            pending = [m for m in steps if m.version > version]
            if pending and "schema_version" not in tables:
                self._exec(cur, "CREATE TABLE schema_version (version INTEGER PRIMARY KEY,"
                                " name TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
                if version:
                    self._exec(cur, "INSERT INTO schema_version VALUES (?, ?, ?)",
                               (version, "before schema_version", _now_ms()))
            for step in pending:
                for statement in statements(step.sql):
                    cur.execute(statement)
                self._exec(cur, "INSERT INTO schema_version VALUES (?, ?, ?)",
                           (step.version, step.name, _now_ms()))
            if version == 0:
                assert site is not None
                self._exec(cur, "INSERT INTO meta VALUES ('site', ?)", (site,))
                self._exec(cur, "INSERT INTO meta VALUES ('created_ms', ?)", (str(_now_ms()),))
                log.info("created ledger database %s for site %s", self.name, site)
            elif pending:
                log.info("ledger database %s: schema migrated from version %d to %d",
                         self.name, version, latest)
            if pending:
                self._after_migration(cur, latest)
            row = self._exec(cur, "SELECT value FROM meta WHERE key='site'").fetchone()
        stored = row[0] if row else ""
        if site is not None and stored != site:
            raise LedgerDatabaseError(
                f"{self.name} is the ledger of site {stored!r}, not {site!r}: "
                "one database per site")
        self.site = stored

    def _migration_lock(self, cur: Cursor) -> None:
        """Keep two processes from migrating at once (SQLite's write lock already does)."""

    # -- the writer's state: load and store ------------------------------------------------

    def _journal_rows(self, sql_where: str, params: Sequence[Any],
                      cur: Cursor | None = None) -> list[tuple[Any, ...]]:
        sql = ("SELECT unit, journal, base, prefix, max_seq, held, ack_published,"
               " first_seen_ms, last_seen_ms, rev FROM journals" + sql_where)
        if cur is None:
            return self._query(sql, params)
        return list(self._exec(cur, sql, params).fetchall())

    def _state(self, row: tuple[Any, ...], cur: Cursor | None = None) -> JournalState:
        st = JournalState(*row[:9], rev=int(row[9]))
        sql = "SELECT seq FROM events WHERE unit=? AND journal=? AND seq>?"
        params = (st.unit, st.journal, st.prefix)
        rows = self._query(sql, params) if cur is None else self._exec(cur, sql, params).fetchall()
        st.above = {int(s) for (s,) in rows}
        return st

    def load_journals(self) -> dict[tuple[str, str], JournalState]:
        """Every journal with its held seqs above the prefix (a writer's start)."""
        return {(st.unit, st.journal): st
                for st in (self._state(r) for r in self._journal_rows("", ()))}

    def load_units(self) -> dict[str, tuple[str | None, str | None]]:
        """{unit: (active journal, journal named by the latest status)}."""
        return {u: (a, s) for u, a, s in self._query(
            "SELECT unit, active_journal, status_journal FROM units")}

    def journal_revs(self, cur: Cursor, units: Sequence[str]) -> dict[tuple[str, str], int]:
        """The revision of every journal of ``units`` (inside the writer's transaction)."""
        out: dict[tuple[str, str], int] = {}
        for chunk in _chunks(units, INSERT_CHUNK):
            marks = ",".join("?" * len(chunk))
            for unit, journal, rev in self._exec(
                    cur, f"SELECT unit, journal, rev FROM journals WHERE unit IN ({marks})",
                    chunk).fetchall():
                out[(unit, journal)] = int(rev)
        return out

    def reload_journal(self, cur: Cursor, unit: str, journal: str) -> JournalState | None:
        """One journal as committed (another writer moved it), with its held seqs above."""
        rows = self._journal_rows(" WHERE unit=? AND journal=?", (unit, journal), cur)
        return self._state(rows[0], cur) if rows else None

    def units_of(self, cur: Cursor, units: Sequence[str]
                 ) -> dict[str, tuple[str | None, str | None]]:
        out: dict[str, tuple[str | None, str | None]] = {}
        for chunk in _chunks(units, INSERT_CHUNK):
            marks = ",".join("?" * len(chunk))
            for unit, active, status_journal in self._exec(
                    cur, "SELECT unit, active_journal, status_journal FROM units"
                         f" WHERE unit IN ({marks})", chunk).fetchall():
                out[unit] = (active, status_journal)
        return out

    def save_journal(self, cur: Cursor, st: JournalState) -> None:
        """Write a journal the writer holds (its units locked); bumps its revision."""
        st.rev += 1
        self._exec(
            cur,
            "INSERT INTO journals (unit, journal, base, prefix, max_seq, held, ack_published,"
            " first_seen_ms, last_seen_ms, rev) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (unit, journal) DO UPDATE"
            " SET base=excluded.base, prefix=excluded.prefix, max_seq=excluded.max_seq,"
            " held=excluded.held, ack_published=CASE WHEN excluded.ack_published >"
            " journals.ack_published THEN excluded.ack_published ELSE journals.ack_published END,"
            " last_seen_ms=excluded.last_seen_ms, rev=excluded.rev",
            (st.unit, st.journal, st.base, st.prefix, st.max_seq, st.held, st.ack_published,
             st.first_seen_ms, st.last_seen_ms, st.rev))

    def save_ack_published(self, cur: Cursor, st: JournalState) -> None:
        """Raise a journal's published-ack mark only (no lock needed: it only grows)."""
        self._exec(cur, "UPDATE journals SET ack_published=? WHERE unit=? AND journal=?"
                        " AND ack_published<?",
                   (st.ack_published, st.unit, st.journal, st.ack_published))

    def save_unit(self, cur: Cursor, unit: str, active: str | None,
                  status_journal: str | None, status: str | None = None,
                  status_ms: int | None = None) -> None:
        self._exec(
            cur,
            "INSERT INTO units (unit, active_journal, status_journal, status, status_ms)"
            " VALUES (?,?,?,?,?) ON CONFLICT (unit) DO UPDATE SET"
            " active_journal=excluded.active_journal, status_journal=excluded.status_journal,"
            " status=coalesce(excluded.status, units.status),"
            " status_ms=coalesce(excluded.status_ms, units.status_ms)",
            (unit, active, status_journal, status, status_ms))

    def save_health(self, cur: Cursor, unit: str, health: str, now_ms: int) -> None:
        self._exec(cur, "INSERT INTO unit_health (unit, health, received_ms) VALUES (?,?,?)"
                        " ON CONFLICT (unit) DO UPDATE SET health=excluded.health,"
                        " received_ms=excluded.received_ms",
                   (unit, health, now_ms))

    def insert_events(self, cur: Cursor, rows: Sequence[EventRow], now_ms: int
                      ) -> tuple[set[str], dict[str, str]]:
        """Store events whose id is not held yet, in multi-row statements.

        Returns the ids newly stored and, for the others, the digest of the copy
        already held. ``rows`` must not repeat an id.
        """
        new: set[str] = set()
        for chunk in _chunks(rows, INSERT_CHUNK):
            marks = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
            params: list[Any] = []
            for r in chunk:
                params += (r.id, r.unit, r.journal, r.seq, r.kind, r.ts, now_ms, int(r.resent),
                           r.digest, r.envelope)
            self._exec(cur, "INSERT INTO events (id, unit, journal, seq, kind, ts, received_ms,"
                            f" resent, digest, envelope) VALUES {marks}"
                            " ON CONFLICT (id) DO NOTHING RETURNING id", params)
            new.update(i for (i,) in cur.fetchall())
        held: dict[str, str] = {}
        others = [r.id for r in rows if r.id not in new]
        for chunk in _chunks(others, INSERT_CHUNK):
            marks = ",".join("?" * len(chunk))
            held.update(self._exec(cur, f"SELECT id, digest FROM events WHERE id IN ({marks})",
                                   chunk).fetchall())
        results = [r for r in rows if r.id in new and r.kind == "command"]
        if results:
            self.add_command_results(cur, results)
        return new, held

    def add_command_results(self, cur: Cursor, rows: Sequence[EventRow]) -> None:
        """What units said of the commands and documents they got (``command`` events)."""
        for r in rows:
            data = json.loads(r.envelope).get("data") or {}
            result = data.get("result")
            if not isinstance(result, str):
                continue
            self._exec(cur, "INSERT INTO command_results (event_id, unit, command, name, result,"
                            " reason, ts) VALUES (?,?,?,?,?,?,?) ON CONFLICT (event_id)"
                            " DO NOTHING",
                       (r.id, r.unit, _text(data.get("command")), _text(data.get("name")),
                        result, _text(data.get("reason")), r.ts))

    def add_reject(self, cur: Cursor, now_ms: int, topic: str, reason: str,
                   payload: bytes) -> None:
        excerpt = payload[:_EXCERPT_BYTES].decode("utf-8", "replace").replace("\x00", "\\0")
        self._exec(cur, "INSERT INTO rejects (received_ms, topic, reason, bytes, excerpt)"
                        " VALUES (?,?,?,?,?)",
                   (now_ms, topic.replace("\x00", "\\0"), reason[:500].replace("\x00", "\\0"),
                    len(payload), excerpt))
        self._exec(cur, "DELETE FROM rejects WHERE n <= (SELECT max(n) FROM rejects) - ?",
                   (REJECTS_KEPT,))

    # -- queries ----------------------------------------------------------------------------

    def journals(self, unit: str | None = None) -> list[JournalInfo]:
        sql = ("SELECT j.unit, j.journal, CASE WHEN u.active_journal = j.journal THEN 1 ELSE 0"
               " END, j.base, j.prefix, j.max_seq, j.held, j.ack_published, j.first_seen_ms,"
               " j.last_seen_ms FROM journals j LEFT JOIN units u ON u.unit = j.unit")
        params: list[Any] = []
        if unit is not None:
            sql += " WHERE j.unit = ?"
            params.append(unit)
        sql += " ORDER BY j.unit, j.first_seen_ms, j.journal"
        return [JournalInfo(r[0], r[1], bool(r[2]), *(int(v) for v in r[3:]))
                for r in self._query(sql, params)]

    def journal(self, unit: str, journal: str) -> JournalInfo | None:
        for info in self.journals(unit):
            if info.journal == journal:
                return info
        return None

    def seqs(self, unit: str, journal: str, above: int = 0,
             up_to: int | None = None) -> list[int]:
        """Held seqs of one journal, ascending, optionally bounded."""
        sql = "SELECT seq FROM events WHERE unit=? AND journal=? AND seq>?"
        params: list[Any] = [unit, journal, above]
        if up_to is not None:
            sql += " AND seq<=?"
            params.append(up_to)
        return [int(s) for (s,) in self._query(sql + " ORDER BY seq", params)]

    def gaps(self, unit: str | None = None) -> list[JournalGaps]:
        """Every journal (of ``unit``) with its missing and acknowledged-before runs."""
        out = []
        for info in self.journals(unit):
            missing = complement(self.seqs(info.unit, info.journal, above=info.prefix),
                                 info.prefix + 1, info.max_seq)
            before = (complement(self.seqs(info.unit, info.journal, up_to=info.base), 1, info.base)
                      if info.base else [])
            out.append(JournalGaps(info, missing, before))
        return out

    def event(self, event_id: str) -> dict[str, Any] | None:
        """The stored envelope of one event, or None."""
        rows = self._query("SELECT envelope FROM events WHERE id=?", (event_id,))
        return json.loads(rows[0][0]) if rows else None

    def count(self, unit: str | None = None, journal: str | None = None) -> int:
        sql, params = "SELECT count(*) FROM events", []
        if unit is not None:
            sql += " WHERE unit=?"
            params.append(unit)
            if journal is not None:
                sql += " AND journal=?"
                params.append(journal)
        return int(self._query(sql, params)[0][0])

    def rejects(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._query("SELECT received_ms, topic, reason, bytes, excerpt FROM rejects"
                           " ORDER BY n DESC LIMIT ?", (limit,))
        return [{"received": rfc3339_ms(r[0]), "topic": r[1], "reason": r[2], "bytes": r[3],
                 "excerpt": r[4]} for r in rows]

    def status(self, unit: str) -> dict[str, Any] | None:
        """The unit's latest status as received, or None."""
        rows = self._query("SELECT status FROM units WHERE unit=? AND status IS NOT NULL",
                           (unit,))
        return json.loads(rows[0][0]) if rows else None

    def health(self, unit: str) -> dict[str, Any] | None:
        """The unit's latest health report as received, or None."""
        rows = self._query("SELECT health FROM unit_health WHERE unit=?", (unit,))
        return json.loads(rows[0][0]) if rows else None

    def command_results(self, command: str | None = None,
                        unit: str | None = None) -> list[dict[str, Any]]:
        """Units' answers to commands and documents (of one envelope id, of one unit)."""
        sql = "SELECT event_id, unit, command, name, result, reason, ts FROM command_results"
        where, params = [], []
        if command is not None:
            where.append("command=?")
            params.append(command)
        if unit is not None:
            where.append("unit=?")
            params.append(unit)
        if where:
            sql += " WHERE " + " AND ".join(where)
        keys = ("event", "unit", "command", "name", "result", "reason", "ts")
        return [dict(zip(keys, r, strict=True))
                for r in self._query(sql + " ORDER BY ts, event_id", params)]

    def stats(self) -> dict[str, Any]:
        gaps = self.gaps()
        return {
            "path": self.name,
            "backend": self.backend,
            "schema_version": self.schema_version(),
            "site": self.site,
            "events": self.count(),
            "units": len({g.info.unit for g in gaps}),
            "journals": len(gaps),
            "journals_with_gaps": sum(1 for g in gaps if g.missing),
            "missing": sum(g.missing_count for g in gaps),
            "acked_before": sum(g.acked_before_count for g in gaps),
            "counters": self.counters(),
            "bytes": self.size_bytes(),
            "per_journal": [
                {k: v for k, v in g.as_dict().items() if k not in ("missing", "acked_before")}
                for g in gaps
            ],
        }


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _now_ms() -> int:
    return int(time.time() * 1000)
