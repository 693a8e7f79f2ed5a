"""No single ledger: two ``xunfang ledger`` processes serve one site on one PostgreSQL
database (MQTT 5 shared subscription, ``--share``), and one is SIGKILLed while events flow.

Real parts: Mosquitto, a PostgreSQL server, the two ledgers as child processes, and units
that run the real uplink (``UnitRig``) over real journals that the test keeps appending
to. The ledger that dies takes with it events it had been given and not yet committed;
the broker gives them to nobody else, so the units, whose acks stall at the gap, send
them again, and the survivor stores them. Short: 5 units × 1,000 events; long
(XUNFANG_LONG=1): 10 units × 5,000, and the survivor's peer killed three times.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from center.store import LedgerStore
from firmware_py.signing import SigningKey, save_signing_key
from tests.support.brokers import Mosquitto
from tests.support.faults import XUNFANG, Proc, Scale
from tests.support.postgres import Postgres
from tests.support.uplink import ACK_KEY_NAME, SITE, UnitRig, wait_until

GROUP = "ledgers"


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[list[UnitRig]]:
    made: list[UnitRig] = []
    yield made
    for rig in made:
        with contextlib.suppress(Exception):
            rig.close()


def _ledger(tmp_path: Path, broker: Mosquitto, url: str, name: str) -> Proc:
    return Proc([str(XUNFANG), "ledger", "--broker", f"{broker.host}:{broker.port}",
                 "--site", SITE, "--db", url, "--key", str(tmp_path / "ledger.key"),
                 "--share", GROUP, "--client-id", name], tmp_path / f"{name}.log")


def _subscribed(broker: Mosquitto, name: str) -> None:
    # The health filter is the last of the ledger's one SUBSCRIBE.
    assert broker.wait_for_log(f"{name} 1 xunfang/v1/{SITE}/+/health", timeout=30), \
        broker.log_tail()


def test_a_ledger_of_two_sigkilled_while_events_flow_loses_nothing_and_stores_nothing_twice(
        mosquitto: Mosquitto, postgres: Postgres, rigs: list[UnitRig], tmp_path: Path,
        scale: Scale) -> None:
    units, per_unit = scale.pick(5, 10), scale.pick(1000, 5000)
    kills = scale.pick(1, 3)
    url = postgres.new_database()
    key = SigningKey.generate(ACK_KEY_NAME)
    save_signing_key(key, tmp_path / "ledger.key")
    ledgers = {name: _ledger(tmp_path, mosquitto, url, name) for name in ("ledger-a", "ledger-b")}
    halt = threading.Event()
    feeder: threading.Thread | None = None
    reader: LedgerStore | None = None
    try:
        for name, proc in ledgers.items():
            proc.start()
            _subscribed(mosquitto, name)
        reader = wait_until(lambda: _open(url), 20, "the ledger database")
        assert reader is not None
        for i in range(units):
            rig = UnitRig(tmp_path / f"unit{i}", mosquitto.port,
                          {"unit": {"id": f"zt-pp-{i + 10:02d}"},
                           "mqtt": {"resend_after_s": 5}}, ack_key=key)
            rigs.append(rig)
            rig.append(per_unit // 5)
        for rig in rigs:
            rig.start()

        def feed() -> None:
            # The rest of each journal, a slice at a time, while the ledgers work.
            left = per_unit - per_unit // 5
            while left > 0 and not halt.is_set():
                step = min(left, 50)
                for rig in rigs:
                    rig.append(step)
                left -= step
                halt.wait(0.05)

        feeder = threading.Thread(target=feed, name="feeder", daemon=True)
        feeder.start()
        total = units * per_unit
        victim, survivor = ledgers["ledger-a"], ledgers["ledger-b"]
        for n in range(kills):
            target = total * (n + 1) // (kills + 2)
            wait_until(lambda t=target: reader.count() >= t, 120,
                       f"{target} events stored before kill {n + 1}")
            victim.kill()
            if n + 1 < kills:
                victim.start()
                _subscribed(mosquitto, "ledger-a")
                victim, survivor = survivor, victim
        feeder.join(120)
        assert not feeder.is_alive(), "the units' journals did not fill"
        assert survivor.running, survivor.text()[-3000:]

        def all_acked() -> bool:
            return all(r.journal.acked_seq() == r.journal.last_seq() == per_unit for r in rigs)

        wait_until(all_acked, scale.pick(90, 600),
                   "every unit's journal acknowledged to its last event")
        # Every event once: one row per id, every journal whole, nothing stored twice.
        assert reader.count() == total
        for rig in rigs:
            info = reader.journal(rig.config.unit.id, rig.journal_id)
            assert info is not None
            assert (info.prefix, info.held, info.max_seq) == (per_unit, per_unit, per_unit)
        assert reader.counters()["stored"] == total
        assert not [g for g in reader.gaps() if g.missing]
        for proc in ledgers.values():
            # Each ledger takes up what the other committed: none may mistake the
            # other's events for ones acknowledged before it, nor fail.
            assert "Traceback" not in proc.text(), proc.text()[-3000:]
            assert "acknowledged before this ledger" not in proc.text(), proc.text()[-3000:]
        print(f"{units} units x {per_unit} events through two ledgers, {kills} SIGKILL(s); "
              f"duplicates {reader.counters()['duplicates']}")
    except BaseException:
        for name, proc in ledgers.items():
            print(f"--- {name} log ---\n{proc.text()[-4000:]}")
        raise
    finally:
        halt.set()
        if feeder is not None:
            feeder.join(10)
        for rig in rigs:
            with contextlib.suppress(Exception):
                rig.stop()
        for proc in ledgers.values():
            with contextlib.suppress(Exception):
                proc.stop(10)
        if reader is not None:
            reader.close()


def _open(url: str) -> LedgerStore | None:
    try:
        return LedgerStore(url, readonly=True)
    except Exception:
        return None
