"""End to end: unit journal → uplink → real broker → real ledger → signed ack, under faults.

Invariant 2 (docs/architecture.md): every event reaches the centre's ledger,
in order, exactly once in effect, through broker outages and crashes, uplink
crashes, a broker queue that overflows, TLS and ACL brokers and NATS's MQTT
gateway. Every test ends the same way: the ledger holds every sequence
number of the unit's journal once (its contiguous prefix is the journal's
last event, no gaps), the unit's journal has the matching ack, and every
stored envelope and every message seen on the wire matches ``docs/schemas``.

Runs longer than a few seconds each are marked ``long`` (XUNFANG_LONG=1).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from center.ledger import Ledger, TlsFiles
from firmware_py.signing import SigningKey
from tests.support import schemas
from tests.support.brokers import Mosquitto, NatsServer, render_acl
from tests.support.daemon import Daemon
from tests.support.uplink import SITE, UNIT, UnitRig, Watcher, alarm, wait_until

Factory = Callable[..., Mosquitto]
REPO = Path(__file__).resolve().parents[2]
XUNFANG = Path(sys.executable).parent / "xunfang"
NEIGHBOUR = "zt-pp-04"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Callable[..., UnitRig]]:
    made: list[UnitRig] = []

    def make(port: int, key: SigningKey | None = None, **sections: object) -> UnitRig:
        extra = {"ack_key": key} if key is not None else {}
        rig = UnitRig(tmp_path / f"unit{len(made)}", port, dict(sections), **extra)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def ledgers(tmp_path: Path) -> Iterator[Callable[..., Ledger]]:
    """``make(broker, key, **options)`` → a started Ledger; stopped at teardown."""
    made: list[Ledger] = []

    def make(broker: Mosquitto | NatsServer, key: SigningKey, db: Path | None = None,
             **options: object) -> Ledger:
        ledger = Ledger(db or tmp_path / "ledger.db", SITE, key, broker.host, broker.port,
                        **options)  # type: ignore[arg-type]
        made.append(ledger)
        ledger.start()
        return ledger

    yield make
    for ledger in made:
        ledger.stop()


def all_stored(ledger: Ledger, rig: UnitRig, timeout: float) -> None:
    """Wait until the ledger holds every event of the unit's journal and the unit knows it;
    then check once per id, no gaps, and every stored envelope against the schemas.

    The journal may still grow meanwhile (a restarted daemon records ``unit started``),
    so its last sequence number is read afresh each time.
    """
    jid, unit = rig.journal_id, rig.config.unit.id

    def done() -> bool:
        return ledger.prefix(unit, jid) >= rig.journal.last_seq()

    if not ledger.wait_for(done, timeout):
        raise AssertionError(
            f"ledger prefix {ledger.prefix(unit, jid)} of {rig.journal.last_seq()} after "
            f"{timeout} s; gaps {[(g.info.journal, g.missing[:5]) for g in ledger.gaps(unit)]}")
    try:
        wait_until(lambda: rig.journal.acked_seq() == rig.journal.last_seq(), 10,
                   "the ack back at the unit")
    except AssertionError as err:
        raise AssertionError(f"{err}: unit acked {rig.journal.acked_seq()}, last "
                             f"{rig.journal.last_seq()}, ledger published "
                             f"{ledger.last_ack(unit)}, uplink "
                             f"{rig.uplink.health() if rig.uplink else '(daemon)'}") from None
    last = rig.journal.acked_seq()
    # Rows are unique by id: as many as the prefix means each seq exactly once.
    assert ledger.count(unit, jid) == ledger.prefix(unit, jid) >= last
    assert all(not g.missing for g in ledger.gaps(unit))
    for seq in range(1, last + 1):
        doc = ledger.event(f"{unit}:{jid}:{seq}")
        assert doc is not None, seq
        schemas.validate(f"xunfang/v1/{SITE}/{unit}/events/{doc['kind']}", doc)


def first_seen_in_order(*watchers: Watcher) -> list[int]:
    """Sequence numbers in the order they first appeared on the wire."""
    seen: dict[int, None] = {}
    for w in watchers:
        for e in w.events():
            seen.setdefault(e["seq"], None)
    return list(seen)


class Appender:
    """Appends events to a journal from another thread, as the station does."""

    def __init__(self, rig: UnitRig, count: int, every: int = 20, pause_s: float = 0.005,
                 journal_path: Path | None = None) -> None:
        self.rig, self.count, self.every, self.pause_s = rig, count, every, pause_s
        self.done = threading.Event()
        self.appended = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="appender")

    def start(self) -> Appender:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for i in range(self.count):
                self.rig.journal.append("alarm", alarm(i))
                self.appended += 1
                if i % self.every == 0:
                    self.done.wait(self.pause_s)  # a steady stream, not one burst
        except BaseException as err:
            self.error = err
        finally:
            self.done.set()

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "appender did not finish"
        assert self.error is None, self.error


def persistent_watcher(broker: Mosquitto | NatsServer, protocol: str = "5") -> Watcher:
    return Watcher(broker.probe(None, client_id="watch", protocol=protocol, clean_start=False,
                                session_expiry_s=600))


# -- (a, e) a broker outage, MQTT 5 and 3.1.1 -----------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_outage_loses_nothing_and_keeps_order(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig],
        ledgers: Callable[..., Ledger], protocol: str) -> None:
    broker = mosquitto_factory(persistence=True)
    rig = rigs(broker.port, mqtt={"protocol": protocol, "resend_after_s": 5})
    ledger = ledgers(broker, rig.ack_key, protocol=protocol)
    w1 = persistent_watcher(broker, protocol)
    up = rig.start()
    rig.append(50)
    all_stored(ledger, rig, 20)
    broker.stop()
    wait_until(lambda: up.state.value != "connected", 5, "the uplink to notice")
    rig.append(100, start=50)  # recorded while the broker is away
    wait_until(lambda: up._failures >= 2, 10, "reconnect attempts against the dead broker")
    broker.start()
    w2 = persistent_watcher(broker, protocol)
    all_stored(ledger, rig, 30)
    order = first_seen_in_order(w1, w2)
    assert order == sorted(order) and set(order) == set(range(1, rig.journal.last_seq() + 1))
    assert up.connects >= 2


# -- (b) the uplink daemon SIGKILLed ------------------------------------------------------------


def test_uplink_daemon_killed_mid_stream_loses_nothing(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig], ledgers: Callable[..., Ledger],
        tmp_path: Path) -> None:
    rig = rigs(mosquitto.port, mqtt={"resend_after_s": 5})
    ledger = ledgers(mosquitto, rig.ack_key)
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    daemon = Daemon(rig.write_config(tmp_path / "unit.toml"), tmp_path / "uplink.log",
                    ("uplink",))
    daemon.start()
    try:
        appender = Appender(rig, 1500).start()
        assert ledger.wait_for(lambda: ledger.count(UNIT) >= 300, 20), daemon.text()
        daemon.kill()
        # The broker saw the connection drop: the Last Will says the unit is gone.
        watcher.wait_status(online=False)
        killed_at = rig.journal.acked_seq()
        daemon.start()
        appender.join()
        all_stored(ledger, rig, 30)
        assert killed_at < rig.journal.last_seq()
        # The restarted process re-sent what the killed one had sent; the ledger kept one.
        assert ledger.counters()["duplicates"] > 0
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.text()
        assert watcher.on("status")[-1].doc["online"] is False  # clean stop: death
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        print(f"--- uplink daemon log ---\n{daemon.text()[-20000:]}")


# -- (c) the broker SIGKILLed --------------------------------------------------------------------


@pytest.mark.parametrize("persistence", [True, False], ids=["persistence-on", "persistence-off"])
def test_broker_killed_mid_stream_loses_nothing(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig],
        ledgers: Callable[..., Ledger], persistence: bool) -> None:
    # autosave every second: the restarted broker comes back with a stale picture
    # (old sessions, queues, retained acks) rather than an empty one.
    broker = mosquitto_factory(persistence=persistence,
                               autosave_interval=1 if persistence else None)
    rig = rigs(broker.port, mqtt={"resend_after_s": 5})
    ledger = ledgers(broker, rig.ack_key)
    before = Watcher(broker.probe(None, client_id="watch-before"))
    up = rig.start()
    appender = Appender(rig, 1500).start()
    assert ledger.wait_for(lambda: ledger.count(UNIT) >= 300, 20)
    broker.kill()
    wait_until(lambda: up.state.value != "connected", 5, "the uplink to notice")
    broker.start()
    after = Watcher(broker.probe(None, client_id="watch-after"))
    appender.join()
    all_stored(ledger, rig, 45)
    # Everything both saw on the wire matched the schemas, acks included.
    assert before.on("events") and after.on("ack") and after.on("status")


# -- (d) the ledger away, the broker's queue overflows ------------------------------------------


def test_ledger_away_with_a_small_broker_queue_loses_nothing(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig],
        ledgers: Callable[..., Ledger], tmp_path: Path) -> None:
    broker = mosquitto_factory(max_queued_messages=100)
    watcher = Watcher(broker.probe(None, client_id="watch"))
    rig = rigs(broker.port, mqtt={"resend_after_s": 5})
    db = tmp_path / "ledger.db"
    first = ledgers(broker, rig.ack_key, db=db)
    assert first.wait_connected(10)
    up = rig.start()
    rig.append(10)
    all_stored(first, rig, 10)  # the ledger's session and subscriptions are in place
    first.stop()  # its session stays: the broker queues (at most 100) for it
    rig.append(5000, start=10)
    wait_until(lambda: up._puback_high >= rig.journal.last_seq(), 30,
               "the broker to take all 5,000")
    assert broker.wait_for_log("Outgoing messages are being dropped", 5), broker.log_tail()
    started = time.monotonic()
    second = ledgers(broker, rig.ack_key, db=db)
    all_stored(second, rig, 120)
    assert len(watcher.events()) >= 5010 and watcher.on("ack")
    print(f"recovered 5,000 events in {time.monotonic() - started:.1f} s "
          f"with {up.resends} resend(s), {up.resent} event(s) re-sent")


# -- (f) TLS ------------------------------------------------------------------------------------


def test_tls_with_the_right_certificate_and_a_refused_wrong_one(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig],
        ledgers: Callable[..., Ledger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    broker = mosquitto_factory(tls=True)
    assert broker.pki is not None
    pki = broker.pki
    right, wrong = pki.client(UNIT), pki.wrong_client(UNIT)
    cert, key = tmp_path / "unit.pem", tmp_path / "unit.key"
    shutil.copyfile(wrong.cert, cert)
    shutil.copyfile(wrong.key, key)
    os.chmod(key, 0o600)
    rig = rigs(broker.port, mqtt={"tls": {"ca": str(pki.ca_cert), "cert": str(cert),
                                          "key": str(key)}})
    ledger_creds = pki.client("ledger")
    ledger = ledgers(broker, rig.ack_key,
                     tls=TlsFiles(str(pki.ca_cert), str(ledger_creds.cert),
                                  str(ledger_creds.key)))
    rig.append(20)
    up = rig.start()
    wait_until(lambda: up._failures >= 3, 15, "three refused TLS attempts")
    assert up.state.value != "connected" and up.connects == 0
    assert up.last_error and any(word in up.last_error.lower()
                                 for word in ("certificate", "ssl", "tls", "closed"))
    assert any("cannot connect" in r.getMessage() for r in caplog.records)
    assert ledger.count(UNIT) == 0
    rig.append(10, start=20)  # still recording meanwhile
    watcher = Watcher(broker.probe("watcher"))
    # Put the right certificate in place: the next attempt reads it.
    shutil.copyfile(right.cert, cert)
    shutil.copyfile(right.key, key)
    rig.wait_connected(15)
    all_stored(ledger, rig, 20)
    assert [e["seq"] for e in watcher.events()][:30] == list(range(1, 31))
    assert watcher.wait_status(online=True).doc["journal"] == rig.journal_id


# -- (g) ACL: a unit cannot publish as another -----------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_acl_stops_a_unit_publishing_as_another(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig],
        ledgers: Callable[..., Ledger], tmp_path: Path, protocol: str,
        caplog: pytest.LogCaptureFixture) -> None:
    broker = mosquitto_factory(tls=True, acl_text=render_acl({UNIT: SITE, NEIGHBOUR: SITE}))
    assert broker.pki is not None
    pki = broker.pki
    ledger_creds = pki.client("ledger")
    key = SigningKey.generate("ledger-test")
    ledger = ledgers(broker, key, protocol=protocol,
                     tls=TlsFiles(str(pki.ca_cert), str(ledger_creds.cert),
                                  str(ledger_creds.key)))
    assert ledger.wait_connected(10)

    def tls_for(name: str) -> dict[str, str]:
        creds = pki.client(name)
        return {"ca": str(pki.ca_cert), "cert": str(creds.cert), "key": str(creds.key)}

    centre = Watcher(broker.probe("centre", client_id="watch-centre", protocol=protocol))
    # Configured as zt-pp-03, holding zt-pp-04's certificate (its CN is the username).
    rogue = rigs(broker.port, key=key, mqtt={"protocol": protocol, "tls": tls_for(NEIGHBOUR)})
    rogue.append(10)
    up = rogue.start()
    rogue.wait_connected()
    # Every publish answered: refused with 0x87 over MQTT 5, "accepted" over 3.1.1.
    wait_until(lambda: up.publishes_refused + up.pubacks >= 10, 10, "answers to every publish")
    if protocol == "5":
        assert up.publishes_refused >= 10 and up.pubacks == 0
        wait_until(lambda: any("Not authorized" in r.getMessage() for r in caplog.records), 5,
                   "the refusal (0x87) in the log")
    else:
        assert up.publishes_refused == 0 and up.pubacks >= 10
    # Now the real zt-pp-04: once its events are stored, the rogue's would have been too.
    honest = rigs(broker.port, key=key, unit={"id": NEIGHBOUR},
                  mqtt={"protocol": protocol, "tls": tls_for(NEIGHBOUR)})
    honest.append(5)
    honest.start()
    all_stored(ledger, honest, 20)
    assert ledger.count(UNIT) == 0
    assert rogue.journal.acked_seq() == 0 and up.acks_accepted == 0
    # The centre saw the honest unit's events and none of the rogue's.
    assert {e["unit"] for e in centre.events()} == {NEIGHBOUR}
    assert up.health_report()["pending"] == rogue.journal.last_seq()


# -- (h) NATS's MQTT gateway ----------------------------------------------------------------------


def test_nats_mqtt_gateway_outage_loses_nothing(
        nats_mqtt: NatsServer, rigs: Callable[..., UnitRig],
        ledgers: Callable[..., Ledger]) -> None:
    rig = rigs(nats_mqtt.port, mqtt={"protocol": "3.1.1", "resend_after_s": 5})
    ledger = ledgers(nats_mqtt, rig.ack_key, protocol="3.1.1")
    w1 = persistent_watcher(nats_mqtt, "3.1.1")
    up = rig.start()
    rig.append(100)
    all_stored(ledger, rig, 30)
    nats_mqtt.stop()
    wait_until(lambda: up.state.value != "connected", 10, "the uplink to notice")
    rig.append(100, start=100)
    nats_mqtt.start()
    w2 = persistent_watcher(nats_mqtt, "3.1.1")
    all_stored(ledger, rig, 60)
    order = first_seen_in_order(w1, w2)
    assert order == sorted(order) and set(order) == set(range(1, rig.journal.last_seq() + 1))
    assert w1.wait_status(online=True).doc["journal"] == rig.journal_id
    assert w2.on("ack") and w2.on("health")


# -- soak (XUNFANG_LONG=1) ------------------------------------------------------------------------


@pytest.mark.long
def test_soak_repeated_broker_and_uplink_faults(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig],
        ledgers: Callable[..., Ledger]) -> None:
    broker = mosquitto_factory(persistence=True, autosave_interval=1, max_queued_messages=500)
    rig = rigs(broker.port, mqtt={"resend_after_s": 5})
    ledger = ledgers(broker, rig.ack_key)
    rig.start()
    appender = Appender(rig, 20_000, every=50, pause_s=0.01).start()
    for round_no in range(6):
        target = ledger.count(UNIT) + 1000
        ledger.wait_for(lambda t=target: ledger.count(UNIT) >= t, 60)
        if round_no % 2:
            broker.kill()
            broker.start()
        else:
            rig.stop()
            rig.start()
    appender.join(300)
    all_stored(ledger, rig, 180)
