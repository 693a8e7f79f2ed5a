"""The ledger on PostgreSQL (psycopg 3): a district's database, shared by several ledgers.

A commit returns once PostgreSQL has flushed it to its write-ahead log (the
server's ``synchronous_commit``, on by default), so a PUBACK after a commit is
never ahead of the disk, as with SQLite's ``synchronous=FULL``. Writers hold
the units of their batch with transaction-scoped advisory locks (taken in
sorted order, so two ledgers never deadlock), and count into rows of their
own (``counters.writer``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

from center.store.base import (
    COUNTERS,
    Cursor,
    LedgerDatabaseError,
    LedgerStore,
)

#: Advisory lock key for migrations (any fixed 64-bit number; "xunfang" in ASCII).
_MIGRATION_LOCK = 0x78756E66616E67


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query,
                       parts.fragment))


def _one_line(err: BaseException) -> str:
    """libpq's messages span lines (a hint on the next): one line for a log or a terminal."""
    return " ".join(str(err).split())


class PostgresStore(LedgerStore):
    """A ledger database on a PostgreSQL server, by ``postgresql://user@host:port/db`` URL
    (libpq's: ``?sslmode=verify-full``, a password from ``~/.pgpass`` or ``PGPASSWORD``)."""

    backend: ClassVar[str] = "postgres"
    errors: ClassVar[tuple[type[BaseException], ...]] = (psycopg.Error,)
    _placeholder: ClassVar[str] = "%s"

    def __init__(self, target: str, site: str | None = None, readonly: bool = False,
                 writer: str = "ledger", connect_timeout_s: float = 10.0) -> None:
        self.url = str(target)
        self.readonly = readonly
        self.writer = writer
        self.site = ""
        self._lock = threading.RLock()
        self._connect_timeout_s = connect_timeout_s
        try:
            self._db = self._connect()
        except psycopg.Error as err:
            raise LedgerDatabaseError(
                f"cannot open ledger database {self.name}: {_one_line(err)}") from err
        try:
            if readonly:
                with self._lock, self._db.cursor() as cur:
                    self._check_readable(cur)
            else:
                self._migrate(site)
        except psycopg.Error as err:
            self._db.close()
            raise LedgerDatabaseError(
                f"{self.name} is not a usable ledger database: {_one_line(err)}") from err
        except BaseException:
            self._db.close()
            raise

    @property
    def name(self) -> str:
        return redact(self.url)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True,
                               connect_timeout=max(1, int(self._connect_timeout_s)),
                               application_name=f"xunfang {self.writer}"[:63])

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, opened again if the server dropped it (a restart, a failover):
        the caller's statement then fails or succeeds on the new one, and the ledger's
        retry takes care of the batch either way."""
        if self._db.broken or self._db.closed:
            with contextlib.suppress(psycopg.Error):
                self._db.close()
            self._db = self._connect()
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            db = self._live()
            with db.transaction(), db.cursor() as cur:
                yield cur

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._read(sql, params)
            except psycopg.OperationalError:
                # An idle connection learns that the server restarted only when it is
                # used; a read is safe to ask again, once, on a new connection.
                if not self._db.broken:
                    raise
                return self._read(sql, params)

    def _read(self, sql: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
        with self._live().cursor() as cur:
            cur.execute(self._sql(sql), tuple(params))
            return cur.fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def size_bytes(self) -> int:
        return int(self._query("SELECT pg_database_size(current_database())")[0][0])

    def _table_names(self, cur: Cursor) -> set[str]:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {r[0] for r in cur.fetchall()}

    def _migration_lock(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))

    def lock_units(self, cur: Cursor, units: Iterable[str]) -> None:
        for unit in units:
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        (f"xunfang-unit:{unit}",))

    def add_counters(self, cur: Cursor, deltas: dict[str, int]) -> None:
        for name, delta in deltas.items():
            if delta:
                cur.execute(
                    "INSERT INTO counters (name, writer, value) VALUES (%s, %s, %s)"
                    " ON CONFLICT (name, writer) DO UPDATE"
                    " SET value = counters.value + excluded.value",
                    (name, self.writer, delta))

    def counters(self) -> dict[str, int]:
        values = dict.fromkeys(COUNTERS, 0)
        values.update({name: int(total) for name, total in self._query(
            "SELECT name, sum(value) FROM counters GROUP BY name")})
        return values
