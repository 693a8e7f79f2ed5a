"""The ledger's storage (center/store): migrations, and refusing what it does not know."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from center.store import LedgerDatabaseError, LedgerStore, migrations, open_store
from center.store.base import statements
from firmware_py import cli
from tests.support.postgres import LedgerDatabases

SITE = "zhuantang"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    args = cli.build_parser().parse_args(list(argv))
    code = int(args.func(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_ledger_file_of_the_first_release_is_migrated_in_place(tmp_path: Path) -> None:
    # The first release wrote the schema of migration 1 and PRAGMA user_version 1.
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in statements(migrations("sqlite")[0].sql):
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('site', ?)", (SITE,))
    answer = {"command": "c-1", "name": "cards", "result": "applied", "reason": None}
    db.execute("INSERT INTO events VALUES ('u1:00000000000000aa:1', 'u1', '00000000000000aa', 1,"
               " 'command', '2026-11-01T00:00:00.000Z', 0, 0, '', ?)",
               (json.dumps({"id": "u1:00000000000000aa:1", "data": answer}),))
    db.execute("INSERT INTO journals VALUES ('u1', '00000000000000aa', 0, 1, 1, 1, 1, 0, 0)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with pytest.raises(LedgerDatabaseError, match="start the ledger on it once to migrate"):
        LedgerStore(path, readonly=True)

    store = LedgerStore(path, site=SITE)
    try:
        assert store.schema_version() == len(migrations("sqlite"))
        assert store.count() == 1 and store.journal("u1", "00000000000000aa").prefix == 1
        # Command results already held are taken up by the migration.
        assert [r["command"] for r in store.command_results()] == ["c-1"]
    finally:
        store.close()
    versions = sqlite3.connect(path).execute(
        "SELECT version, name FROM schema_version ORDER BY version").fetchall()
    assert versions[0] == (1, "before schema_version")
    assert [v for v, _ in versions] == list(range(1, len(migrations("sqlite")) + 1))


def test_a_database_newer_than_the_build_is_refused_with_a_clear_message(
        ledger_dbs: LedgerDatabases, capsys: pytest.CaptureFixture[str]) -> None:
    target = ledger_dbs.target()
    store = open_store(target, site=SITE)
    with store.transaction() as cur:
        store._exec(cur, "INSERT INTO schema_version VALUES (?, ?, ?)", (99, "future", 0))
    store.close()
    for readonly in (False, True):
        with pytest.raises(LedgerDatabaseError, match="has ledger schema version 99, newer "
                                                      "than this build knows"):
            open_store(target, site=None if readonly else SITE, readonly=readonly)
    code, _, err = _cli(capsys, "ledger", "stats", "--db", target)
    assert code == 1 and "schema version 99, newer than this build" in err


def test_a_database_is_one_sites_and_a_new_one_needs_its_site(
        ledger_dbs: LedgerDatabases) -> None:
    target = ledger_dbs.target()
    with pytest.raises(LedgerDatabaseError, match="is a new ledger: give its site"):
        open_store(target)
    open_store(target, site=SITE).close()
    with pytest.raises(LedgerDatabaseError, match="is the ledger of site 'zhuantang', not 'xihu'"):
        open_store(target, site="xihu")
    again = open_store(target, site=SITE)  # a second start migrates nothing
    assert again.schema_version() == len(migrations(again.backend))
    again.close()


def test_a_postgres_url_that_cannot_be_reached_is_one_line_without_the_password(
        capsys: pytest.CaptureFixture[str], postgres: object) -> None:
    url = "postgresql://ledger:s3cret@127.0.0.1:1/nosuch?connect_timeout=2"
    code, _, err = _cli(capsys, "ledger", "gaps", "--db", url)
    assert code == 1 and "cannot open ledger database postgresql://ledger:***@127.0.0.1:1/nosuch" \
        in err
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1
