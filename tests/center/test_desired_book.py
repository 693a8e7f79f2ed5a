"""The centre's book of desired documents on both backends, and the migration that adds it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from center.desired_book import DesiredBook, Outcome
from center.send import open_book
from center.store import migrations
from center.store.base import statements
from firmware_py.clock import rfc3339_ms
from tests.support.postgres import LedgerDatabases

SITE = "zhuantang"


def envelope(ident: str, issued_ms: int, name: str = "level", level: int = 1
             ) -> dict[str, Any]:
    return {"id": ident, "name": name, "args": {"level": level},
            "issued_at": rfc3339_ms(issued_ms), "expires_at": rfc3339_ms(issued_ms + 86_400_000)}


@pytest.fixture
def book(ledger_dbs: LedgerDatabases) -> Iterator[DesiredBook]:
    """The book on a fresh centre database, SQLite and PostgreSQL (``send --db``'s way in)."""
    b = open_book(ledger_dbs.target("centre"), SITE)
    yield b
    b.close()


def test_a_first_release_ledger_file_gets_the_book_at_start_and_keeps_its_rows(
        tmp_path: Path) -> None:
    # The first release wrote the schema of migration 1 and PRAGMA user_version 1.
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in statements(migrations("sqlite")[0].sql):
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('site', ?)", (SITE,))
    db.execute("INSERT INTO units VALUES ('zt-pp-03', NULL, NULL, '{\"online\": true}', 1)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    book = open_book(str(path), SITE)
    try:
        assert book.unit_statuses() == {"zt-pp-03": {"online": True}}
        assert book.documents(SITE) == []
    finally:
        book.close()
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"desired_documents", "desired_outcomes", "events", "units"} <= tables
    finally:
        db.close()
    open_book(str(path), SITE).close()      # opening again changes nothing


def test_in_force_is_the_newest_not_rejected_and_a_restored_one_counts_from_its_return(
        book: DesiredBook) -> None:
    t = 1_800_000_000_000
    topic = "xunfang/v1/zhuantang/_all/desired/level"
    for n, ident in enumerate(("first", "second", "bad")):
        env = envelope(ident, t + n * 1000)
        book.record_sent(SITE, "_all", topic, env, "{}", retained=True, sent_ms=t + n * 1000)
    in_force = book.in_force(SITE, "level", "_all")
    assert in_force is not None and in_force.id == "bad"
    book.record_outcomes("bad", [Outcome("zt-pp-03", "applied"),
                                 Outcome("zt-pp-04", "rejected", "unknown_key", "…")])
    in_force = book.in_force(SITE, "level", "_all")
    assert in_force is not None and in_force.id == "second"
    # "first" put back after "second" went out: it is the one in force from then on.
    older = next(d for d in book.documents(SITE) if d.id == "first")
    book.record_restored("bad", "_all", older, at_ms=t + 10_000)
    in_force = book.in_force(SITE, "level", "_all")
    assert in_force is not None and in_force.id == "first"
    assert next(d for d in book.documents(SITE) if d.id == "bad").replaced_by == "first"
    # The same answer twice is one row; a unit's document is its own destination.
    book.record_outcomes("second", [Outcome("zt-pp-03", "applied")])
    book.record_outcomes("second", [Outcome("zt-pp-03", "applied")])
    assert book.outcomes("second") == [Outcome("zt-pp-03", "applied", None, None)]
    assert book.in_force(SITE, "level", "zt-pp-03") is None
    assert book.targets(SITE) == [("level", "_all")]


def test_one_shot_commands_are_recorded_but_never_in_force(book: DesiredBook) -> None:
    env = envelope("snap", 1_800_000_000_000, name="snapshot")
    book.record_sent(SITE, "_all", "xunfang/v1/zhuantang/_all/cmd", env, "{}", retained=False)
    assert [d.id for d in book.documents(SITE)] == ["snap"]
    assert book.in_force(SITE, "snapshot", "_all") is None and book.targets(SITE) == []


def test_other_drivers_get_their_placeholders() -> None:
    class Connection:    # a DB-API connection of a driver with the format paramstyle
        pass

    book = DesiredBook(Connection())
    assert book._sql("SELECT a FROM t WHERE b = ? AND c = ?") == \
        "SELECT a FROM t WHERE b = %s AND c = %s"
