"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `tests.support` must import the same way however pytest was started (the
# venv's pytest script does not put the repo root on sys.path).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.brokers import Mosquitto, NatsServer  # noqa: E402
from tests.support.postgres import LedgerDatabases, Postgres  # noqa: E402

# --- Real brokers (tests/support/brokers.py) -------------------------------


def _close_and_report(broker: Mosquitto | NatsServer) -> None:
    # Printed during teardown: pytest shows it only when the test failed.
    try:
        broker.close()
    finally:
        print(f"--- {broker!r} log ({broker.log_path}) ---\n{broker.log_tail(60)}")


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A plain, anonymous Mosquitto on a free 127.0.0.1 port, running."""
    broker = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start()
        yield broker
    finally:
        _close_and_report(broker)


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Mosquitto]]:
    """`make(start=True, **options)` -> Mosquitto (options as `Mosquitto()`).

    Every broker it made is closed at teardown, pass or fail.
    """
    made: list[Mosquitto] = []

    def make(*, start: bool = True, **options: Any) -> Mosquitto:
        options.setdefault("workdir", tmp_path_factory.mktemp("mosquitto"))
        broker = Mosquitto(**options)
        made.append(broker)
        if start:
            broker.start()
        return broker

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for broker in made:
            try:
                _close_and_report(broker)
            except Exception as err:  # close the rest before reporting
                errors.append(err)
        if errors:
            raise errors[0]


@pytest.fixture
def nats_mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """nats-server with JetStream and its MQTT 3.1.1 gateway; `port` is the MQTT port."""
    broker = NatsServer(workdir=tmp_path_factory.mktemp("nats"))
    try:
        broker.start()
        yield broker
    finally:
        _close_and_report(broker)


# --- The ledger's database: SQLite and PostgreSQL ----------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the session (tests/support/postgres.py); each test that
    needs a database takes a new one (``new_database()``), so nothing leaks between tests."""
    # Not under pytest's temp tree: another pytest run resets that to 0700, and
    # postgres must keep traversing to its data directory.
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        print(f"--- {server!r} log ---\n{server.log_tail(60)}")
        server.close()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDatabases:
    """Runs the test once on each ledger backend (center/store)."""
    server = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return LedgerDatabases(request.param, tmp_path, server)


# --- Long soak and fault runs --------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``long`` run only with XUNFANG_LONG=1 (see README, Tests)."""
    import os

    if os.environ.get("XUNFANG_LONG") == "1":
        return
    skip_long = pytest.mark.skip(reason="soak/fault run: set XUNFANG_LONG=1 to run it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip_long)
