"""The ledger in one SQLite file (0600, WAL, ``synchronous=FULL``): the embedded default."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from center.store.base import (
    COUNTERS,
    Cursor,
    LedgerDatabaseError,
    LedgerStore,
)


def _create_owner_only(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class SqliteStore(LedgerStore):
    """A ledger database in a SQLite file. WAL lets a read-only handle read while the
    ledger writes; a write transaction takes the file's write lock (``BEGIN
    IMMEDIATE``), so several writers on one file take turns."""

    backend: ClassVar[str] = "sqlite"
    errors: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.Error,)

    def __init__(self, target: str | os.PathLike[str], site: str | None = None,
                 readonly: bool = False, writer: str = "ledger",
                 busy_timeout_s: float = 30.0) -> None:
        self.path = Path(target)
        self.readonly = readonly
        self.writer = writer
        self.site = ""
        self._lock_init()
        try:
            if readonly:
                if not self.path.exists():
                    raise LedgerDatabaseError(f"no ledger database at {self.path}")
                self._db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout_s,
                    isolation_level=None, check_same_thread=False,
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Events are evidence: the file is the centre's alone, like a unit's journal.
                _create_owner_only(self.path)
                self._db = sqlite3.connect(
                    self.path, timeout=busy_timeout_s, isolation_level=None,
                    check_same_thread=False,
                )
        except sqlite3.Error as err:
            raise LedgerDatabaseError(f"cannot open ledger database {self.path}: {err}") from err
        try:
            self._setup(site)
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise LedgerDatabaseError(
                f"{self.path} is not a usable ledger database: {err}") from err
        except BaseException:
            self._db.close()
            raise

    def _setup(self, site: str | None) -> None:
        if self.readonly:
            with self._lock:
                self._check_readable(self._db.cursor())
            return
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerDatabaseError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        # FULL: the WAL is fsynced at every commit, so a PUBACK sent after a
        # commit is never ahead of the disk, even across a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate(site)

    @property
    def name(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            try:
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def size_bytes(self) -> int:
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(pages * size)

    def _table_names(self, cur: Cursor) -> set[str]:
        return {r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type='table'")
                .fetchall() if not r[0].startswith("sqlite_")}

    def _legacy_version(self, cur: Cursor) -> int:
        # The first release marked its schema with PRAGMA user_version only.
        return int(cur.execute("PRAGMA user_version").fetchone()[0])

    def _after_migration(self, cur: Cursor, version: int) -> None:
        cur.execute(f"PRAGMA user_version={int(version)}")

    def add_counters(self, cur: Cursor, deltas: dict[str, int]) -> None:
        for name, delta in deltas.items():
            if delta:
                cur.execute(
                    "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE"
                    " SET value = value + excluded.value", (name, delta))

    def counters(self) -> dict[str, int]:
        values = dict.fromkeys(COUNTERS, 0)
        values.update(dict(self._query("SELECT name, value FROM counters")))
        return values
