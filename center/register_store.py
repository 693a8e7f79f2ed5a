"""The centre's register (人员卡登记): every published card list, with the people behind it.

Units hold only what they need (card, badge, role, leader, validity). The
centre keeps the rest, names, groups and zones, here: one row per card and
version, so the history of versions stays and the report can say who a badge
was on any date. The tables live in a SQLite file of their own or beside the
ledger's tables in the ledger's database (``register_*``; the ledger ignores
them), for one site.

Example::

    store = RegisterStore("zhuantang.db", "zhuantang", create=True)
    store.record(8, envelope_id, "2026-12-01T08:00:00.000Z", "register.csv", sha256,
                 "UTF-8", [{"card": "14008EC793", "badge": "P-017", "name": "张伟", ...}])
    store.current().entries        # the people and cards of version 8
    store.people()                 # badge → {"name", "role", "leader", "group", "zone"}
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RegisterStore", "RegisterStoreError", "StoredVersion", "VersionInfo"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS register_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS register_versions (
    site          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    envelope_id   TEXT NOT NULL,        -- the signed desired/cards that carried it
    issued_at     TEXT NOT NULL,
    recorded_ms   INTEGER NOT NULL,
    source        TEXT NOT NULL,        -- the file's name
    source_sha256 TEXT NOT NULL,
    encoding      TEXT NOT NULL,
    cards         INTEGER NOT NULL,
    PRIMARY KEY (site, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS register_cards (
    site       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    card       TEXT NOT NULL,
    badge      TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    leader     INTEGER NOT NULL,
    grp        TEXT,
    zone       TEXT,
    valid_from TEXT,
    valid_to   TEXT,
    line       INTEGER,
    PRIMARY KEY (site, version, card)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS register_cards_badge ON register_cards (site, badge);
"""


class RegisterStoreError(Exception):
    """The register file cannot be used (unreadable, another site's, a newer schema)."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    envelope_id: str
    issued_at: str
    recorded_ms: int
    source: str
    source_sha256: str
    encoding: str
    cards: int


@dataclass(frozen=True)
class StoredVersion:
    info: VersionInfo
    entries: list[dict[str, Any]]      # card, badge, name, role, leader, group, zone, ...

    @property
    def version(self) -> int:
        return self.info.version


class RegisterStore:
    """The register of one site in a SQLite file.

    With ``create=False`` a missing file is an empty register and nothing is
    written (a station checking its sheet changes nothing); with
    ``create=True`` the file and tables are made when missing.
    """

    def __init__(self, path: str | Path, site: str, create: bool = False) -> None:
        self.path = Path(path)
        self.site = site
        self._db: sqlite3.Connection | None = None
        if not self.path.exists() and not create:
            return
        try:
            if not self.path.exists():
                # Names of people: the file is the centre's alone, like the ledger's.
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            self._setup(create)
        except (sqlite3.Error, OSError) as err:
            self.close()
            raise RegisterStoreError(f"{self.path} is not a usable register: {err}") from err
        except BaseException:
            self.close()
            raise

    @property
    def exists(self) -> bool:
        return self._db is not None

    def _tables(self) -> set[str]:
        assert self._db is not None
        return {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}

    def _setup(self, create: bool) -> None:
        assert self._db is not None
        tables = self._tables()
        if "meta" in tables and "events" in tables:
            # The ledger's database: one site per database.
            row = self._db.execute("SELECT value FROM meta WHERE key='site'").fetchone()
            if row is not None and row[0] != self.site:
                raise RegisterStoreError(f"{self.path} is the ledger of site {row[0]!r}, "
                                         f"not {self.site!r}")
        if "register_meta" not in tables:
            if not create:
                return
            with self.transaction() as cur:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute("INSERT OR IGNORE INTO register_meta VALUES ('schema', ?)",
                            (str(SCHEMA_VERSION),))
            return
        row = self._db.execute("SELECT value FROM register_meta WHERE key='schema'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise RegisterStoreError(f"{self.path} has register schema "
                                     f"{row[0] if row else 'none'}, this build knows "
                                     f"{SCHEMA_VERSION}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        assert self._db is not None
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _has_tables(self) -> bool:
        return self._db is not None and "register_versions" in self._tables()

    # -- reading --

    def history(self) -> list[VersionInfo]:
        """Every recorded version of the site, oldest first."""
        if not self._has_tables():
            return []
        assert self._db is not None
        rows = self._db.execute(
            "SELECT version, envelope_id, issued_at, recorded_ms, source, source_sha256, "
            "encoding, cards FROM register_versions WHERE site=? ORDER BY version",
            (self.site,)).fetchall()
        return [VersionInfo(*r) for r in rows]

    def version(self, version: int) -> StoredVersion | None:
        if not self._has_tables():
            return None
        assert self._db is not None
        info = self._db.execute(
            "SELECT version, envelope_id, issued_at, recorded_ms, source, source_sha256, "
            "encoding, cards FROM register_versions WHERE site=? AND version=?",
            (self.site, version)).fetchone()
        if info is None:
            return None
        rows = self._db.execute(
            "SELECT card, badge, name, role, leader, grp, zone, valid_from, valid_to, line "
            "FROM register_cards WHERE site=? AND version=? ORDER BY line, card",
            (self.site, version)).fetchall()
        entries = [{"card": r[0], "badge": r[1], "name": r[2], "role": r[3],
                    "leader": bool(r[4]), "group": r[5], "zone": r[6], "valid_from": r[7],
                    "valid_to": r[8], "line": r[9]} for r in rows]
        return StoredVersion(VersionInfo(*info), entries)

    def current(self) -> StoredVersion | None:
        """The newest recorded version (None: nothing recorded yet)."""
        history = self.history()
        return self.version(history[-1].version) if history else None

    def people(self, version: int | None = None) -> dict[str, dict[str, Any]]:
        """Badge → the person (name, role, leader, group, zone) of a version (the newest)."""
        stored = self.current() if version is None else self.version(version)
        if stored is None:
            return {}
        return {e["badge"]: {k: e[k] for k in ("name", "role", "leader", "group", "zone")}
                for e in stored.entries}

    # -- writing --

    def record(self, version: int, envelope_id: str, issued_at: str, source: str,
               source_sha256: str, encoding: str, entries: Sequence[dict[str, Any]]) -> None:
        """Record a published version and its people, in one transaction."""
        if self._db is None:
            raise RegisterStoreError(f"{self.path} was opened read-only")
        try:
            self._record(version, envelope_id, issued_at, source, source_sha256, encoding,
                         entries)
        except sqlite3.Error as err:
            raise RegisterStoreError(f"{self.path}: cannot record version {version}: "
                                     f"{err}") from err

    def _record(self, version: int, envelope_id: str, issued_at: str, source: str,
                source_sha256: str, encoding: str, entries: Sequence[dict[str, Any]]) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT INTO register_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (self.site, version, envelope_id, issued_at, int(time.time() * 1000),
                         source, source_sha256, encoding, len(entries)))
            cur.executemany(
                "INSERT INTO register_cards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.site, version, e["card"], e["badge"], e["name"], e["role"],
                  int(bool(e.get("leader"))), e.get("group"), e.get("zone"),
                  e.get("valid_from"), e.get("valid_to"), e.get("line")) for e in entries])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
