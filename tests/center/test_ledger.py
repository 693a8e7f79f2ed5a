"""The centre's ledger (center/ledger.py) against a real Mosquitto.

A plain paho client plays a unit: it publishes event envelopes (built with
``firmware_py.journal.Event``) and its retained status; a second client
watches the ack topics. Every well-formed message either of them sees or
sends on the wire is checked against the JSON Schemas of ``docs/schemas``
(``tests/support/schemas.py``); the deliberately malformed or hostile payloads
are the exception, since being invalid is their point. Every ack is also
verified with ``signing.verify_envelope`` against the ledger's public key.

Waits have deadlines and wake on conditions (the ledger's ``wait_for``, the
watcher's condition variable); nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from center import ledger as ledger_module
from center.ledger import JournalState, Ledger, Rejected, TlsFiles, parse_event
from firmware_py import cli, topics
from firmware_py.clock import parse_rfc3339
from firmware_py.journal import Event
from firmware_py.signing import SigningKey, save_signing_key, verify_envelope
from tests.support.brokers import Mosquitto, render_acl
from tests.support.pki import Credentials
from tests.support.postgres import LedgerDatabases, Postgres
from tests.support.schemas import validate

pytestmark = pytest.mark.timeout(60)

SITE = "zhuantang"
UNIT = "zt-pp-03"
OTHER = "zt-pp-04"
OTHER_SITE = "xihu"
STRANGER = "xh-pp-01"  # a unit of the other site
J1 = "5f1c9a0e7d2b4c11"
J2 = "0a1b2c3d4e5f6071"
WAIT_S = 10.0
NOT_AUTHORIZED = 0x87  # MQTT 5 PUBACK reason: the broker's ACL refused the publish
REPO = Path(__file__).resolve().parents[2]

CHECKIN = {"card": "14008EC793", "reader": "front", "decision": "accepted",
           "badge": "P-1042", "role": "police", "visit": "v-17"}


def envelope(seq: int, journal: str = J1, unit: str = UNIT, kind: str = "checkin",
             resent: bool = False, site: str = SITE) -> dict[str, Any]:
    event = Event(seq=seq, kind=kind, unit=unit, site=site, journal=journal,
                  ts_ms=1_795_000_000_000 + seq * 1000,
                  boot_id="00000000-0000-4000-8000-000000000001", mono=100.0 + seq,
                  clock_synced=True, data=dict(CHECKIN))
    return event.envelope(resent=resent)


def birth(journal: str, acked_seq: int, unit: str = UNIT) -> dict[str, Any]:
    return {"online": True, "unit": unit, "site": SITE, "kind": "patrol_point",
            "version": "0.1.0", "boot_id": "00000000-0000-4000-8000-000000000001",
            "level": 3, "cards_version": None, "journal": journal, "acked_seq": acked_seq}


# -- MQTT helpers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Auth:
    """How a test client logs in: a client certificate, or a username and password."""

    tls: Credentials | None = None
    username: str | None = None
    password: str | None = None



class _Client:
    """A paho client on its own loop thread, connected before the constructor returns."""

    def __init__(self, broker: Mosquitto, client_id: str, auth: Auth | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        if auth is not None and auth.tls is not None:
            self.client.tls_set(ca_certs=str(auth.tls.ca), certfile=str(auth.tls.cert),
                                keyfile=str(auth.tls.key))
        if auth is not None and auth.username is not None:
            self.client.username_pw_set(auth.username, auth.password)
        self.cond = threading.Condition()
        self.connected = False
        self.pubacked: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.wait(lambda: self.connected, "connect")

    def _on_connect(self, *args: Any) -> None:
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def _on_disconnect(self, *args: Any) -> None:
        with self.cond:
            self.connected = False

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self.cond:
            self.pubacked.add(mid)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self.wait(lambda: info.mid in self.pubacked, f"PUBACK of {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FakeUnit(_Client):
    """Plays a unit: events on its own topics, a retained birth status."""

    def __init__(self, broker: Mosquitto, unit: str = UNIT, auth: Auth | None = None) -> None:
        super().__init__(broker, topics.client_id(unit), auth)
        self.unit = unit

    def event(self, env: dict[str, Any], topic_unit: str | None = None) -> None:
        topic = topics.event(SITE, topic_unit or self.unit, env["kind"])
        if topic_unit is None:
            validate(topic, env)
        self.publish(topic, json.dumps(env))

    def events(self, envs: list[dict[str, Any]]) -> None:
        """Publish many at once (not waiting for each PUBACK), then wait for all."""
        infos = []
        for env in envs:
            topic = topics.event(SITE, self.unit, env["kind"])
            validate(topic, env)
            infos.append(self.client.publish(topic, json.dumps(env), qos=1))
        self.wait(lambda: all(i.mid in self.pubacked for i in infos), "PUBACKs")

    def raw(self, kind: str, payload: bytes) -> None:
        self.publish(topics.event(SITE, self.unit, kind), payload)

    def status(self, doc: dict[str, Any]) -> None:
        topic = topics.status(SITE, self.unit)
        validate(topic, doc)
        self.publish(topic, json.dumps(doc), retain=True)


@dataclass(frozen=True)
class SeenAck:
    unit: str
    journal: str
    seq: int
    retained: bool
    envelope: dict[str, Any]


class AckWatcher(_Client):
    """Subscribes to every unit's ack topic; validates and verifies each ack it sees."""

    def __init__(self, broker: Mosquitto, key: SigningKey, name: str = "watch",
                 auth: Auth | None = None) -> None:
        self.key = key
        self.acks: list[SeenAck] = []
        self.errors: list[str] = []
        super().__init__(broker, f"test-{name}", auth)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = False
        self.client.subscribe(f"xunfang/v1/{SITE}/+/ack", qos=1)
        self.wait(lambda: self.subscribed, "SUBACK")

    def _on_subscribe(self, *args: Any) -> None:
        with self.cond:
            self.subscribed = True
            self.cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # a retained ack cleared by a test
        try:
            doc = validate(msg.topic, msg.payload)
            verify_envelope(doc, {self.key.name: self.key.public_b64()})
            parsed = topics.parse(msg.topic)
            assert parsed is not None and parsed.channel == "ack"
            assert doc["name"] == "ack"
            assert doc["target"] == {"site": SITE, "units": [parsed.unit]}
            seen = SeenAck(parsed.unit, doc["args"]["journal"], doc["args"]["seq"],
                           bool(msg.retain), doc)
        except Exception as err:  # reported by the test thread, not lost in paho's
            with self.cond:
                self.errors.append(f"{msg.topic}: {err!r}")
                self.cond.notify_all()
            return
        with self.cond:
            self.acks.append(seen)
            self.cond.notify_all()

    def of(self, unit: str = UNIT) -> list[SeenAck]:
        with self.cond:
            assert not self.errors, self.errors
            return [a for a in self.acks if a.unit == unit]

    def wait_ack(self, seq: int, journal: str = J1, unit: str = UNIT) -> SeenAck:
        def found() -> bool:
            return bool(self.errors) or any(
                a.unit == unit and a.journal == journal and a.seq == seq for a in self.acks)

        self.wait(found, f"ack {unit} {journal} {seq} (seen: {self.acks[-5:]})")
        assert not self.errors, self.errors
        return next(a for a in self.of(unit) if a.journal == journal and a.seq == seq)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("ledger-test")


@pytest.fixture
def ledgers(ledger_dbs: LedgerDatabases, key: SigningKey) -> Iterator[Callable[..., Ledger]]:
    """``make(broker, db=..., **options)``: a started, connected Ledger; all stopped at teardown.

    ``db`` names the database (``ledger`` unless given): a SQLite file or a PostgreSQL
    database, as ``ledger_dbs`` runs the test on each backend.
    """
    made: list[Ledger] = []

    def make(broker: Mosquitto, db: str = "ledger", site: str = SITE,
             **options: Any) -> Ledger:
        options.setdefault("settle_s", 0.2)
        ledger = Ledger(ledger_dbs.target(db), site, key, broker.host, broker.port,
                        **options)
        made.append(ledger)
        ledger.start()
        assert ledger.wait_connected(WAIT_S), "ledger did not connect"
        return ledger

    yield make
    for ledger in made:
        ledger.stop()


@pytest.fixture
def clients() -> Iterator[list[_Client]]:
    made: list[_Client] = []
    yield made
    for client in made:
        client.close()


def _unit(broker: Mosquitto, clients: list[_Client], unit: str = UNIT,
          auth: Auth | None = None) -> FakeUnit:
    fake = FakeUnit(broker, unit, auth)
    clients.append(fake)
    return fake


def _watcher(broker: Mosquitto, clients: list[_Client], key: SigningKey,
             name: str = "watch", auth: Auth | None = None) -> AckWatcher:
    watcher = AckWatcher(broker, key, name, auth)
    clients.append(watcher)
    return watcher


def _wait(ledger: Ledger, predicate: Callable[[], bool], what: str) -> None:
    assert ledger.wait_for(predicate, WAIT_S), f"timed out waiting for {what}"


def _cli(*argv: str) -> int:
    # The real `xunfang` parser, without main()'s logging set-up (which would
    # replace pytest's log capture for the rest of the test).
    args = cli.build_parser().parse_args(list(argv))
    return int(args.func(args))


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = _cli(*argv)
    return code, capsys.readouterr().out


def _run_cli_err(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = _cli(*argv)
    return code, capsys.readouterr().err


# -- storing and acknowledging --------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_events_are_stored_once_and_acked_with_a_signed_retained_ack(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, protocol: str) -> None:
    ledger = ledgers(mosquitto, protocol=protocol)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    for seq in range(1, 6):
        unit.event(envelope(seq))
    # A reconnecting unit resends what it has not seen acked.
    unit.event(envelope(3, resent=True))
    unit.event(envelope(5, resent=True))

    # Same id, other content: a conflict, counted and logged; the first copy stays.
    unit.event({**envelope(4), "data": {**CHECKIN, "decision": "unknown"}})

    ack = watcher.wait_ack(5)
    _wait(ledger, lambda: ledger.counters()["duplicates"] == 3, "three duplicates counted")
    assert ledger.counters()["conflicts"] == 1
    assert ledger.event(f"{UNIT}:{J1}:4") == envelope(4)
    assert ledger.count() == 5
    assert ledger.counters()["stored"] == 5
    assert ledger.event(f"{UNIT}:{J1}:3") == envelope(3)  # the first copy, as sent
    assert [a.seq for a in watcher.of()] == sorted(a.seq for a in watcher.of())

    # Signed by the ledger's key, addressed to this unit only, valid for years.
    verify_envelope(ack.envelope, {key.name: key.public_b64()})
    assert ack.envelope["args"] == {"journal": J1, "seq": 5}
    assert ack.envelope["target"] == {"site": SITE, "units": [UNIT]}
    lifetime = (parse_rfc3339(ack.envelope["expires_at"])
                - parse_rfc3339(ack.envelope["issued_at"]))
    assert lifetime.days >= 9 * 365
    # Retained: a unit connecting later finds it.
    late = _watcher(mosquitto, clients, key, "late")
    assert late.wait_ack(5).retained


def test_out_of_order_arrival_still_acks_only_the_contiguous_prefix(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey) -> None:
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    for seq in (4, 2, 6, 1, 3, 5):
        unit.event(envelope(seq))
    watcher.wait_ack(6)
    seen = [a.seq for a in watcher.of()]
    # Whatever the batching, only prefixes that were contiguous at the time go out.
    assert set(seen) <= {2, 4, 6}, seen
    assert seen == sorted(seen)
    assert ledger.prefix(UNIT, J1) == 6
    assert ledger.gaps()[0].missing == []


def test_a_gap_holds_the_ack_and_is_reported_until_the_event_arrives(
        ledger_dbs: LedgerDatabases,
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xunfang.ledger")
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    for seq in (1, 2, 4, 5, 8):
        unit.event(envelope(seq))
    _wait(ledger, lambda: ledger.count() == 5, "five events stored")
    watcher.wait_ack(2)
    # The prefix is what acks are made of, so nothing above 2 can go out.
    assert ledger.prefix(UNIT, J1) == 2
    assert max(a.seq for a in watcher.of()) == 2
    assert ledger.last_ack(UNIT) == (J1, 2)
    [gaps] = ledger.gaps()
    assert gaps.missing == [(3, 3), (6, 7)]
    assert gaps.missing_count == 3 and gaps.acked_before == []
    # One line per batch that opened gaps: "gap, seq 3, 6-7 missing" or two lines.
    gap_lines = [r.getMessage() for r in caplog.records if ": gap, seq" in r.getMessage()]
    assert any("gap, seq 3" in m for m in gap_lines), gap_lines
    assert any("6-7 missing (holding the ack at 2)" in m for m in gap_lines), gap_lines

    code, out = _run_cli(capsys, "ledger", "gaps", "--db", ledger_dbs.target())
    assert code == 0
    header, row, summary = out.strip().splitlines()
    assert header.split()[:6] == ["UNIT", "JOURNAL", "ACTIVE", "ACKED", "HIGHEST", "HELD"]
    assert row.split()[:6] == [UNIT, J1, "yes", "2", "8", "5"]
    assert "3, 6-7" in row
    assert summary == "1 journal(s), 1 with gaps, 3 event(s) missing"

    unit.event(envelope(3))
    watcher.wait_ack(5)
    assert ledger.gaps()[0].missing == [(6, 7)]
    assert any("gap narrowed, still missing 6-7" in r.getMessage() for r in caplog.records)
    unit.event(envelope(7, resent=True))
    unit.event(envelope(6, resent=True))
    watcher.wait_ack(8)
    assert ledger.gaps()[0].missing == []
    assert any("gap closed, every event up to 8 held" in r.getMessage()
               for r in caplog.records)
    code, out = _run_cli(capsys, "ledger", "gaps", "--db", ledger_dbs.target(),
                         "--json")
    [doc] = json.loads(out)
    assert doc["missing"] == [] and doc["prefix"] == 8 and doc["held"] == 8


def test_an_event_claiming_another_unit_is_rejected_and_never_stored(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xunfang.ledger")
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    forged = envelope(1, unit=OTHER)
    validate("envelope", forged)  # a well-formed event, only on the wrong unit's topic
    unit.event(forged, topic_unit=UNIT)
    unit.event(envelope(1))
    watcher.wait_ack(1)
    _wait(ledger, lambda: ledger.counters()["rejected"] == 1, "one rejection")
    assert ledger.count() == 1
    assert ledger.count(unit=OTHER) == 0
    assert ledger.event(f"{OTHER}:{J1}:1") is None
    assert [g.info.unit for g in ledger.gaps()] == [UNIT]
    assert watcher.of(OTHER) == []
    [reject] = ledger.db.rejects()
    assert reject["topic"] == topics.event(SITE, UNIT, "checkin")
    assert f"claims unit '{OTHER}'" in reject["reason"]
    assert any(f"claims unit '{OTHER}'" in r.getMessage() for r in caplog.records)


MALFORMED: list[tuple[str, bytes]] = [
    ("not json", b"not json at all"),
    ("not utf-8", b"\xff\xfe{}"),
    ("array", b"[1, 2, 3]"),
    ("NaN", json.dumps({**envelope(1), "mono": "X"}).replace('"X"', "NaN").encode()),
    ("deep", b"[" * 100_000),
    ("oversize", json.dumps({**envelope(1), "data": {"x": "a" * 300_000}}).encode()),
    ("v2", json.dumps({**envelope(1), "v": 2}).encode()),
    ("no seq", json.dumps({k: v for k, v in envelope(1).items() if k != "seq"}).encode()),
    ("seq 0", json.dumps({**envelope(1), "seq": 0, "id": f"{UNIT}:{J1}:0"}).encode()),
    ("seq text", json.dumps({**envelope(1), "seq": "1"}).encode()),
    ("seq float", json.dumps({**envelope(1), "seq": 1.0}).encode()),
    ("seq bool", json.dumps({**envelope(1), "seq": True, "id": f"{UNIT}:{J1}:True"}).encode()),
    ("journal", json.dumps({**envelope(1), "journal": "XYZ", "id": f"{UNIT}:XYZ:1"}).encode()),
    ("id", json.dumps({**envelope(1), "id": f"{UNIT}:{J1}:2"}).encode()),
]


def test_malformed_payloads_are_counted_acked_at_mqtt_level_and_never_stored(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, tmp_path: Path) -> None:
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    for _name, payload in MALFORMED:
        unit.raw("checkin", payload)
    unit.raw("alarm", json.dumps(envelope(1)).encode())  # kind is not the topic's
    unit.event(envelope(1))
    watcher.wait_ack(1)
    _wait(ledger, lambda: ledger.counters()["malformed"] == len(MALFORMED),
          f"{len(MALFORMED)} malformed counted ({ledger.counters()})")
    counters = ledger.counters()
    assert counters["rejected"] == 1
    assert counters["stored"] == 1 and ledger.count() == 1
    assert len(ledger.db.rejects()) == len(MALFORMED) + 1
    assert ledger.event(f"{UNIT}:{J1}:1") == envelope(1)

    # They were PUBACKed: a restarted ledger on the same session gets none of them again.
    ledger.stop()
    again = ledgers(mosquitto)
    unit.event(envelope(2))
    watcher.wait_ack(2)
    assert again.counters()["malformed"] == len(MALFORMED)
    assert again.counters()["rejected"] == 1
    assert again.counters()["duplicates"] == 0


# -- envelopes that break envelope.json --------------------------------------------------------


def _broken(env: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """The envelope with fields replaced; a value of ``...`` removes the field."""
    out = {**env, **change}
    return {k: v for k, v in out.items() if v is not ...}


# Each keeps the identity (id, unit, journal, seq) of a real event and breaks
# one other promise of envelope.json.
ENVELOPE_BREAKS: dict[str, dict[str, Any]] = {
    "data list": {"data": [1, 2]},
    "data string": {"data": "accepted"},
    "data null": {"data": None},
    "no data": {"data": ...},
    "ts number": {"ts": 1_795_000_001},
    "ts words": {"ts": "yesterday"},
    "ts impossible": {"ts": "2026-13-45T25:61:00Z"},
    "no ts": {"ts": ...},
    "resent string": {"resent": "yes"},
    "resent number": {"resent": 1},
    "no site": {"site": ...},
    "site number": {"site": 7},
    "boot_id number": {"boot_id": 12},
    "boot_id empty": {"boot_id": ""},
    "mono string": {"mono": "100.0"},
    "mono bool": {"mono": True},
    "clock_synced string": {"clock_synced": "true"},
    "no clock_synced": {"clock_synced": ...},
}


@pytest.mark.parametrize("change", list(ENVELOPE_BREAKS.values()), ids=list(ENVELOPE_BREAKS))
def test_an_event_that_breaks_the_envelope_is_not_stored_and_the_real_one_then_is(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, change: dict[str, Any]) -> None:
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    real = envelope(1)
    broken = _broken(real, change)
    assert broken["id"] == real["id"]
    unit.raw("checkin", json.dumps(broken).encode())
    _wait(ledger, lambda: ledger.counters()["malformed"] == 1, "the broken copy refused")
    assert ledger.count() == 0 and ledger.event(real["id"]) is None
    assert ledger.last_ack(UNIT) is None  # nothing stored, nothing acknowledged
    # The real event with that id is stored as itself, not refused as a "conflict".
    unit.event(real)
    watcher.wait_ack(1)
    assert ledger.event(real["id"]) == real
    counters = ledger.counters()
    assert (counters["stored"], counters["conflicts"], counters["duplicates"]) == (1, 0, 0)
    [reject] = ledger.db.rejects()
    field = next(iter(change))
    assert field in reject["reason"], reject



def test_the_ledgers_log_escapes_what_a_sender_puts_in_a_topic(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    # The unit level of the ledger's subscription is a wildcard: whatever a
    # publisher puts there reaches the log an operator reads in a terminal.
    # Mosquitto refuses C0 and C1 controls in topics (other brokers need not),
    # but passes Unicode format characters: a right-to-left override shows
    # the rest of a log line reversed, a line separator starts a new one.
    caplog.set_level(logging.INFO, logger="xunfang.ledger")
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    hostile = f"xunfang/v1/{SITE}/zt\u202ekcab\u2028fake\U000e0001/events/checkin"
    unit.publish(hostile, json.dumps(envelope(1)))
    unit.event(envelope(1))
    watcher.wait_ack(1)
    _wait(ledger, lambda: ledger.counters()["malformed"] == 1, "the odd topic refused")
    said = [r.getMessage() for r in caplog.records if "dropped message on" in r.getMessage()]
    assert said and "zt\\u202ekcab\\u2028fake\\U000e0001" in said[0], said
    assert all(ch.isprintable() for r in caplog.records for ch in r.getMessage())

# -- one site's record: the broker's ACL and the ledger's inventory ----------------------------


def _inventory(path: Path, units: dict[str, str]) -> Path:
    path.write_text("# unit   site\n" + "".join(f"{u}  {s}\n" for u, s in units.items()))
    return path


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_unit_cannot_write_into_another_sites_record_through_the_shipped_acl(
        mosquitto_factory: Callable[..., Mosquitto], ledgers: Callable[..., Ledger],
        protocol: str) -> None:
    # The shipped config, with the ACL rendered from the inventory, and real
    # certificates. The other site's ledger runs without an inventory: the
    # broker alone must keep the unit out of that site's record.
    broker = mosquitto_factory(shipped_config=True,
                               acl_text=render_acl({UNIT: SITE, STRANGER: OTHER_SITE}))
    assert broker.pki is not None
    creds = broker.pki.client("ledger")
    other = ledgers(broker, site=OTHER_SITE, client_id="xunfang_ledger_xihu",
                    tls=TlsFiles(str(creds.ca), str(creds.cert), str(creds.key)))
    intruder = broker.probe(UNIT, protocol=protocol)
    forged = [envelope(seq, site=OTHER_SITE) for seq in (1, 2)]
    for env in forged:
        validate("envelope", env)  # well-formed: only the site is not its own
        rc = intruder.publish(topics.event(OTHER_SITE, UNIT, "checkin"), json.dumps(env))
        # MQTT 5 says no; MQTT 3.1.1 cannot, and the broker drops it silently.
        assert rc.value == (NOT_AUTHORIZED if protocol == "5" else 0)
    rc = intruder.publish(topics.status(OTHER_SITE, UNIT),
                          json.dumps({**birth(J1, 2), "site": OTHER_SITE}), retain=True)
    assert rc.value == (NOT_AUTHORIZED if protocol == "5" else 0)
    # A real unit of that site after the refused messages: once its event is
    # stored, the forged ones would have been handled too.
    local = broker.probe(STRANGER, protocol=protocol)
    real = envelope(1, unit=STRANGER, site=OTHER_SITE)
    assert local.publish(topics.event(OTHER_SITE, STRANGER, "checkin"), json.dumps(real)).value \
        in (0, 0x10)
    _wait(other, lambda: other.count(STRANGER) == 1, "the local unit's event stored")
    _wait(other, lambda: other.last_ack(STRANGER) == (J1, 1), "the local unit's event acked")
    assert other.count(UNIT) == 0
    assert other.counters()["received"] == 1
    assert other.last_ack(UNIT) is None
    assert [g.info.unit for g in other.gaps()] == [STRANGER]


def test_a_ledger_with_an_inventory_refuses_units_not_in_it_and_never_acks_them(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A broker that lets anyone publish anywhere (misconfigured, or another
    # vendor's): the ledger still keeps its record to its own units.
    caplog.set_level(logging.INFO, logger="xunfang.ledger")
    inventory = _inventory(tmp_path / "units.txt", {UNIT: SITE, STRANGER: OTHER_SITE})
    ledger = ledgers(mosquitto, inventory=inventory)
    assert ledger.inventory == frozenset({UNIT})
    watcher = _watcher(mosquitto, clients, key)
    unknown = _unit(mosquitto, clients, OTHER)
    unknown.status(birth(J2, acked_seq=3, unit=OTHER))
    for seq in range(1, 6):
        unknown.event(envelope(seq, J2, unit=OTHER))
    # A unit of another site writing under this site's name.
    stranger = _unit(mosquitto, clients, STRANGER)
    stranger.event(envelope(1, unit=STRANGER), topic_unit=STRANGER)
    listed = _unit(mosquitto, clients)
    listed.event(envelope(1))
    watcher.wait_ack(1)
    _wait(ledger, lambda: ledger.counters()["unknown_unit"] == 7, "seven messages refused")
    assert ledger.count() == 1 and ledger.count(OTHER) == 0 and ledger.count(STRANGER) == 0
    assert ledger.last_ack(OTHER) is None and watcher.of(OTHER) == []
    assert ledger.last_ack(STRANGER) is None
    assert [g.info.unit for g in ledger.gaps()] == [UNIT]
    assert ledger.counters()["stored"] == 1
    assert any("not in the inventory" in r["reason"] and r["topic"].endswith("/status")
               for r in ledger.db.rejects())
    # Said in the log, once per unit however many messages it sends.
    said = [r.getMessage() for r in caplog.records if "not in the inventory" in r.getMessage()]
    assert len([m for m in said if f"from unit {OTHER}:" in m]) == 1, said
    assert len([m for m in said if f"from unit {STRANGER}:" in m]) == 1, said

    # Once listed, its events are taken without a restart: the unit still
    # holds them (never acked) and sends them again.
    _inventory(inventory, {UNIT: SITE, OTHER: SITE, STRANGER: OTHER_SITE})
    _wait(ledger, lambda: ledger.inventory == frozenset({UNIT, OTHER}),
          "the changed inventory read")
    for seq in range(1, 6):
        unknown.event(envelope(seq, J2, unit=OTHER, resent=True))
    watcher.wait_ack(5, J2, OTHER)
    assert ledger.count(OTHER) == 5
    assert any("added zt-pp-04" in r.getMessage() for r in caplog.records)

    # A broken edit keeps the units read before.
    inventory.write_text(f"{OTHER} {SITE} extra\n")
    _wait(ledger, lambda: any("want '<unit id> <site>'" in r.getMessage()
                              for r in caplog.records), "the broken inventory reported")
    assert ledger.inventory == frozenset({UNIT, OTHER})


def test_the_ledger_cli_refuses_an_unusable_inventory_with_exit_2(
        key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "ledger.key"
    save_signing_key(key, key_file)
    base = ["ledger", "--broker", "127.0.0.1:1", "--site", SITE, "--db",
            str(tmp_path / "l.db"), "--key", str(key_file)]
    bad = tmp_path / "units.txt"
    bad.write_text(f"{UNIT} {SITE}\n{UNIT} {OTHER_SITE}\n")
    for inventory, error in ((tmp_path / "absent.txt", "cannot read inventory"),
                             (bad, "units.txt:2: unit 'zt-pp-03' listed for sites")):
        code, err = _run_cli_err(capsys, *base, "--inventory", str(inventory))
        assert code == 2 and error in err, err
        assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "l.db").exists()


# -- restarts, bases and journals -----------------------------------------------------------


def test_a_restarted_ledger_keeps_its_database_and_publishes_its_ack_again(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey) -> None:
    first = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    for seq in (1, 2, 3):
        unit.event(envelope(seq))
    watcher.wait_ack(3)
    first.stop()
    # The broker forgets the retained ack (as after a crash without persistence).
    watcher.publish(topics.ack(SITE, UNIT), b"", retain=True)
    n_before = len(watcher.of())

    second = ledgers(mosquitto)
    watcher.wait(lambda: len(watcher.acks) > n_before, "the ack published again")
    assert watcher.of()[-1].seq == 3 and not watcher.of()[-1].retained
    assert second.count() == 3

    # Events sent while the ledger is away wait in its persistent session.
    second.stop()
    unit.event(envelope(4))
    unit.event(envelope(5))
    third = ledgers(mosquitto)
    watcher.wait_ack(5)
    assert third.count() == 5
    assert third.counters()["stored"] == 5


def test_the_base_comes_from_the_units_status_acked_seq(
        ledger_dbs: LedgerDatabases,
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unit = _unit(mosquitto, clients)
    # Acknowledged earlier, by a ledger whose database is gone.
    unit.status(birth(J1, acked_seq=1041))
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    watcher.wait_ack(1041)  # re-stated at once: the unit already holds this ack
    for seq in (1042, 1043, 1044):
        unit.event(envelope(seq))
    watcher.wait_ack(1044)
    [gaps] = ledger.gaps()
    assert gaps.missing == []
    assert gaps.acked_before == [(1, 1041)]
    assert gaps.info.base == 1041 and gaps.info.held == 3
    code, out = _run_cli(capsys, "ledger", "gaps", "--db", ledger_dbs.target())
    assert code == 0
    row = out.strip().splitlines()[1]
    assert row.split()[:6] == [UNIT, J1, "yes", "1044", "1044", "3"]
    assert row.rstrip().endswith("1-1041")
    assert out.strip().endswith("0 with gaps, 0 event(s) missing")


def test_a_status_arriving_after_events_turns_their_gap_into_acked_before(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xunfang.ledger")
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    unit.event(envelope(11))
    unit.event(envelope(12))
    _wait(ledger, lambda: ledger.count() == 2, "two events stored")
    assert ledger.gaps()[0].missing == [(1, 10)]
    unit.status(birth(J1, acked_seq=10))
    watcher.wait_ack(12)
    [gaps] = ledger.gaps()
    assert gaps.missing == [] and gaps.acked_before == [(1, 10)]
    messages = [r.getMessage() for r in caplog.records]
    assert any("seq 1-10 acknowledged before this ledger (per the unit's status)" in m
               for m in messages), messages
    assert any("gap closed, every event up to 12 held or acked before" in m
               for m in messages), messages


def test_acks_follow_the_units_active_journal(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey) -> None:
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    unit.event(envelope(1, J1))
    unit.event(envelope(2, J1))
    watcher.wait_ack(2, J1)
    # The unit rebuilt its journal: its birth names the new one.
    unit.status(birth(J2, acked_seq=0))
    for seq in (1, 2, 3):
        unit.event(envelope(seq, J2))
    watcher.wait_ack(3, J2)
    switched = len(watcher.of())
    # A straggler of the old journal is stored, but the ack topic stays with J2.
    unit.event(envelope(3, J1, resent=True))
    unit.event(envelope(4, J2))
    watcher.wait_ack(4, J2)
    assert ledger.count(UNIT, J1) == 3
    assert {a.journal for a in watcher.of()[switched:]} == {J2}
    assert {(g.info.journal, g.info.active) for g in ledger.gaps()} == {(J1, False), (J2, True)}


def test_a_ledger_that_lost_its_database_never_acks_below_its_retained_ack(
        ledger_dbs: LedgerDatabases,
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey, tmp_path: Path) -> None:
    first = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    for seq in range(1, 6):
        unit.event(envelope(seq))
    watcher.wait_ack(5)
    first.stop()
    if ledger_dbs.backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger_dbs.target()}{suffix}").unlink(missing_ok=True)
    seen_before = len(watcher.of())

    # A fresh database; the only evidence of 1..5 is the ledger's own retained ack.
    second = ledgers(mosquitto, db="new")
    unit.event(envelope(6))
    watcher.wait_ack(6)
    assert min(a.seq for a in watcher.of()[seen_before:]) >= 5
    [gaps] = second.gaps()
    assert gaps.acked_before == [(1, 5)] and gaps.missing == []


def test_the_ledger_reconnects_after_the_broker_restarts(
        mosquitto_factory: Callable[..., Mosquitto], ledgers: Callable[..., Ledger],
        clients: list[_Client], key: SigningKey) -> None:
    broker = mosquitto_factory(persistence=True)
    ledger = ledgers(broker)
    watcher = _watcher(broker, clients, key)
    unit = _unit(broker, clients)
    unit.event(envelope(1))
    watcher.wait_ack(1)
    broker.stop()
    _wait(ledger, lambda: not ledger.connected, "the ledger to notice")
    broker.start()
    _wait(ledger, lambda: ledger.connected, "the ledger to reconnect")
    unit.wait(lambda: unit.connected, "the unit to reconnect")
    unit.event(envelope(2))
    _wait(ledger, lambda: ledger.prefix(UNIT, J1) == 2, "event 2 stored")
    # The watcher's session ended with the broker; a new subscriber sees the retained ack.
    late = _watcher(broker, clients, key, "late")
    late.wait_ack(2)


def test_acks_are_coalesced_under_load_and_sent_promptly_when_traffic_stops(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey) -> None:
    ledger = ledgers(mosquitto)
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    n = 600
    started = time.monotonic()
    unit.events([envelope(seq) for seq in range(1, n + 1)])
    watcher.wait_ack(n)
    elapsed = time.monotonic() - started
    seqs = [a.seq for a in watcher.of()]
    assert seqs == sorted(seqs)
    # At most one per ack interval (plus the first, the last and the one the
    # ledger re-states once after subscribing).
    assert len(seqs) <= elapsed / ledger.ack_interval_s + 3, (len(seqs), elapsed)
    assert ledger.count() == n


def test_the_ledger_logs_in_with_a_username_and_password(
        mosquitto_factory: Callable[..., Mosquitto], ledgers: Callable[..., Ledger],
        clients: list[_Client], key: SigningKey) -> None:
    broker = mosquitto_factory(passwords={"ledger": "s3cret", UNIT: "unit-pw", "centre": "c"})
    ledger = ledgers(broker, username="ledger", password="s3cret")
    watcher = _watcher(broker, clients, key, auth=Auth(username="centre", password="c"))
    unit = _unit(broker, clients, auth=Auth(username=UNIT, password="unit-pw"))
    unit.event(envelope(1))
    watcher.wait_ack(1)
    assert ledger.count() == 1


def test_a_ledger_with_a_wrong_password_keeps_retrying_and_never_stops(
        ledger_dbs: LedgerDatabases,
        mosquitto_factory: Callable[..., Mosquitto], key: SigningKey, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xunfang.ledger")
    broker = mosquitto_factory(passwords={"ledger": "s3cret"})
    ledger = Ledger(ledger_dbs.target("l"), SITE, key, broker.host, broker.port,
                    username="ledger", password="wrong")
    ledger.start()
    try:
        assert not ledger.wait_connected(0.5)
        assert ledger.wait_for(lambda: any("refused the ledger" in r.getMessage()
                                           for r in caplog.records), WAIT_S)
    finally:
        ledger.stop()


# -- CLI ------------------------------------------------------------------------------------


def test_the_cli_runs_the_ledger_then_gaps_and_stats_read_its_database(
        ledger_dbs: LedgerDatabases,
        mosquitto_factory: Callable[..., Mosquitto], clients: list[_Client], key: SigningKey,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As in production: TLS with client certificates (CN = username) and the
    # shipped ACL, which lets the `ledger` user read events and statuses and
    # read and write acks, and nothing else.
    broker = mosquitto_factory(tls=True, acl_text=render_acl({UNIT: SITE}))
    assert broker.pki is not None
    key_file = tmp_path / "ledger.key"
    save_signing_key(key, key_file)
    db = ledger_dbs.target("cli")
    watcher = _watcher(broker, clients, key, auth=Auth(tls=broker.pki.client("centre")))
    unit = _unit(broker, clients, auth=Auth(tls=broker.pki.client(UNIT)))
    unit.status(birth(J1, acked_seq=0))
    creds = broker.pki.client("ledger")
    inventory = _inventory(tmp_path / "units.txt", {UNIT: SITE, STRANGER: OTHER_SITE})
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_py.cli", "ledger",
         "--broker", f"{broker.host}:{broker.port}", "--site", SITE, "--db", str(db),
         "--key", str(key_file), "--protocol", "3.1.1", "--client-id", "ledger-cli",
         "--inventory", str(inventory),
         "--tls-ca", str(creds.ca), "--tls-cert", str(creds.cert), "--tls-key", str(creds.key)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        # Subscribed once the broker logs it; events before that would not be queued.
        assert broker.wait_for_log("ledger-cli 1 xunfang/v1/zhuantang/+/ack", timeout=WAIT_S), \
            "the CLI ledger never subscribed"
        for seq in (1, 2, 4):
            unit.event(envelope(seq))
        unit.raw("checkin", b"{broken")
        watcher.wait_ack(2)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, output
    assert "gap, seq 3 missing" in output
    assert f"inventory {inventory}: 1 unit(s) of site {SITE}" in output
    assert "Denied" not in broker.log_text(), broker.log_tail()

    code, out = _run_cli(capsys, "ledger", "gaps", "--db", str(db))
    assert code == 0
    assert out.strip().splitlines()[1].split()[:7] == [UNIT, J1, "yes", "2", "4", "3", "3"]
    assert out.strip().endswith("1 with gaps, 1 event(s) missing")
    code, out = _run_cli(capsys, "ledger", "gaps", "--db", str(db), "--unit", OTHER)
    assert (code, out.strip()) == (0, f"no journals of unit {OTHER} in {db}")

    code, out = _run_cli(capsys, "ledger", "stats", "--db", str(db))
    assert code == 0
    stats = json.loads(out)
    assert stats["site"] == SITE and stats["events"] == 3
    assert stats["units"] == 1 and stats["journals"] == 1
    assert stats["journals_with_gaps"] == 1 and stats["missing"] == 1
    assert stats["counters"]["malformed"] == 1 and stats["counters"]["stored"] == 3
    assert stats["counters"]["statuses"] == 1
    assert stats["per_journal"][0]["ack_published"] == 2

    code, err = _run_cli_err(capsys, "ledger", "stats", "--db", str(tmp_path / "absent.db"))
    assert code == 1 and "no ledger database" in err
    code, err = _run_cli_err(capsys, "ledger", "--site", SITE)
    assert code == 2 and "missing --broker, --db, --key" in err


# -- pure parts -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=80))
def test_the_prefix_is_the_longest_run_held_or_acked_before(
        steps: list[tuple[bool, int]]) -> None:
    # A model: events (True) and bases from statuses (False) in any order.
    state = JournalState(UNIT, J1)
    held: set[int] = set()
    base = 0

    def model_prefix() -> int:
        p = 0
        while p + 1 in held or p + 1 <= base:
            p += 1
        return p

    for is_event, n in steps:
        if is_event:
            if n == 0 or n in held:
                continue
            held.add(n)
            state.add(n)
        else:
            if n > model_prefix():
                base = n
            state.raise_base(n)
        prefix = model_prefix()
        assert state.prefix == prefix
        assert state.base == base
        assert state.above == {s for s in held if s > prefix}
        assert state.held == len(held)
        missing = {s for s in range(prefix + 1, max(held, default=0) + 1) if s not in held}
        assert state.missing == len(missing)
        assert sum(b - a + 1 for a, b in state.missing_runs()) == len(missing)


@pytest.mark.parametrize(("payload", "counter"), [
    (json.dumps(envelope(1)).encode(), None),
    (json.dumps(envelope(1, resent=True)).encode(), None),
    (json.dumps(envelope(1, unit=OTHER)).encode(), "rejected"),
    (json.dumps({**envelope(1), "site": "elsewhere"}).encode(), "rejected"),
    (json.dumps({**envelope(1), "kind": "alarm"}).encode(), "rejected"),
    *[(payload, "malformed") for _name, payload in MALFORMED],
    *[(json.dumps(_broken(envelope(1), change)).encode(), "malformed")
      for change in ENVELOPE_BREAKS.values()],
    (json.dumps({**envelope(1), "ts": "2026-11-28T23:04:05.123+08:00"}).encode(), "malformed"),
    (json.dumps({**envelope(1), "mono": -1}).encode(), "malformed"),
    (json.dumps({**envelope(1), "resent": False}).encode(), None),
])
def test_parse_event_checks_identity_against_the_topic(payload: bytes,
                                                       counter: str | None) -> None:
    topic = topics.parse(topics.event(SITE, UNIT, "checkin"))
    assert topic is not None
    if counter is None:
        record = parse_event(topic, payload)
        assert (record.id, record.seq, record.journal) == (f"{UNIT}:{J1}:1", 1, J1)
        # A resend has the same digest as the original: it is the same event.
        assert record.digest == parse_event(topic, json.dumps(envelope(1)).encode()).digest
    else:
        with pytest.raises(Rejected) as info:
            parse_event(topic, payload)
        assert info.value.counter == counter


def test_a_failed_commit_is_retried_and_pubacked_only_once_it_succeeds(
        ledger_dbs: LedgerDatabases,
        tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    # White-box: the writer's batch step with a stand-in paho client, and the
    # disk failing twice. The PUBACK (client.ack) must wait for the commit.

    ledger = Ledger(ledger_dbs.target("l"), SITE, key)
    ledger._db = ledger_module.LedgerDB(ledger.db_path, site=SITE)
    ledger._reader = ledger_module.LedgerDB(ledger.db_path, readonly=True)
    ledger._load_state()
    pubacks: list[tuple[int, int, int]] = []

    class Client:
        def ack(self, mid: int, qos: int) -> None:
            pubacks.append((mid, qos, ledger._reader.count() if ledger._reader else -1))

    ledger._client = Client()  # type: ignore[assignment]
    real_apply = ledger._apply
    failures = [ledger._db.errors[0]("disk I/O error")] * 2

    def flaky_apply(batch: list[Any]) -> set[str]:
        assert not pubacks, "PUBACK sent before the batch was stored"
        if failures:
            raise failures.pop()
        return real_apply(batch)

    monkeypatch.setattr(ledger, "_apply", flaky_apply)
    msg = ledger_module._Inbound(topics.event(SITE, UNIT, "checkin"),
                                 json.dumps(envelope(1)).encode(), mid=7, qos=1,
                                 retain=False, gen=0)
    ledger._store_batch([msg])
    assert pubacks == [(7, 1, 1)]  # once, and the event was already readable
    assert ledger.counters()["db_errors"] == 2
    assert ledger.count() == 1
    ledger._db.close()
    ledger._reader.close()


def test_health_and_command_results_are_stored_beside_the_events(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client]) -> None:
    ledger = ledgers(mosquitto)
    unit = _unit(mosquitto, clients)
    unit.status(birth(J1, acked_seq=0))
    health = {"unit": UNIT, "site": SITE, "uptime_s": 12}
    unit.publish(topics.health(SITE, UNIT), json.dumps(health), retain=True)
    answer = {"command": "c-7f3a", "name": "level", "result": "rejected",
              "reason": "bad_signature", "scope": "site", "detail": "unknown key"}
    command = Event(seq=1, kind="command", unit=UNIT, site=SITE, journal=J1,
                    ts_ms=1_795_000_000_000, boot_id="00000000-0000-4000-8000-000000000001",
                    mono=101.0, clock_synced=True, data=answer).envelope()
    unit.event(command)
    unit.event(envelope(2))
    _wait(ledger, lambda: ledger.prefix(UNIT, J1) == 2 and ledger.db.health(UNIT) is not None,
          "both events and the health report stored")
    assert ledger.db.health(UNIT) == health
    assert ledger.db.status(UNIT) == birth(J1, acked_seq=0)
    assert ledger.db.command_results(command="c-7f3a") == [{
        "event": f"{UNIT}:{J1}:1", "unit": UNIT, "command": "c-7f3a", "name": "level",
        "result": "rejected", "reason": "bad_signature", "ts": command["ts"]}]
    # A copy sent again is one result still.
    unit.event({**command, "resent": True})
    _wait(ledger, lambda: ledger.counters()["duplicates"] == 1, "the copy counted")
    assert len(ledger.db.command_results()) == 1


# -- two ledgers for one site (--share) ----------------------------------------------------------


def test_two_ledgers_in_a_share_group_split_the_events_and_ack_the_whole_prefix(
        mosquitto_factory: Callable[..., Mosquitto], ledgers: Callable[..., Ledger],
        clients: list[_Client], key: SigningKey) -> None:
    # The shipped ACL, with logins: the ledger user's rules must cover $share/… too.
    broker = mosquitto_factory(acl_text=render_acl({UNIT: SITE}),
                               passwords={"ledger": "l", UNIT: "u", "centre": "c"})
    first = ledgers(broker, share="site", client_id="ledger-1", username="ledger", password="l")
    second = ledgers(broker, share="site", client_id="ledger-2", username="ledger",
                     password="l")
    watcher = _watcher(broker, clients, key, auth=Auth(username="centre", password="c"))
    unit = _unit(broker, clients, auth=Auth(username=UNIT, password="u"))
    unit.events([envelope(seq) for seq in range(1, 201)])
    watcher.wait_ack(200)
    assert first.count() == 200 and first.counters()["stored"] == 200
    assert first.gaps()[0].missing == []
    # Each took a share of the events (counters are per process on PostgreSQL,
    # summed; so the split shows in who published acks).
    assert first.last_ack(UNIT) is not None and second.last_ack(UNIT) is not None
    assert "Denied" not in broker.log_text(), broker.log_tail()


def test_a_lower_ack_that_raced_ours_is_answered_with_ours_again(
        mosquitto: Mosquitto, ledgers: Callable[..., Ledger], clients: list[_Client],
        key: SigningKey) -> None:
    ledger = ledgers(mosquitto, share="site", client_id="ledger-1")
    watcher = _watcher(mosquitto, clients, key)
    unit = _unit(mosquitto, clients)
    for seq in range(1, 6):
        unit.event(envelope(seq))
    watcher.wait_ack(5)
    # Another ledger of the group publishes an older prefix last: now the retained one.
    peer = _Client(mosquitto, "ledger-2")
    clients.append(peer)
    lower = key.sign_envelope("ack", {"journal": J1, "seq": 3}, site=SITE, units=[UNIT],
                              ttl_s=3600)
    seen = len(watcher.of())
    peer.publish(topics.ack(SITE, UNIT), json.dumps(lower), retain=True)
    watcher.wait(lambda: any(a.seq == 5 for a in watcher.acks[seen + 1:]),
                 "the ledger to state ack 5 again")
    late = _watcher(mosquitto, clients, key, "late")
    assert late.wait_ack(5).retained
    assert ledger.prefix(UNIT, J1) == 5


@pytest.mark.timeout(180)  # a PostgreSQL server of its own, started twice
def test_a_postgresql_crash_under_the_ledger_holds_the_acks_and_loses_nothing(
        mosquitto: Mosquitto, clients: list[_Client], key: SigningKey,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xunfang.ledger")
    with Postgres() as server:
        ledger = Ledger(server.new_database(), SITE, key, mosquitto.host, mosquitto.port,
                        settle_s=0.2)
        ledger.start()
        try:
            assert ledger.wait_connected(WAIT_S)
            watcher = _watcher(mosquitto, clients, key)
            unit = _unit(mosquitto, clients)
            for seq in range(1, 4):
                unit.event(envelope(seq))
            watcher.wait_ack(3)
            server.kill()  # as a crash: no checkpoint, connections cut
            unit.event(envelope(4))
            unit.event(envelope(5))
            _wait(ledger, lambda: any("cannot store" in r.getMessage() for r in caplog.records),
                  "the ledger to find the database gone")
            assert max(a.seq for a in watcher.of()) == 3  # nothing acked that is not stored
            server.start()
            # The ledger retries with a backoff of up to 5 s; recovery takes its time.
            assert ledger.wait_for(lambda: ledger.prefix(UNIT, J1) == 5, 60), \
                server.log_tail()
            watcher.wait_ack(5)
            assert ledger.count() == 5 and ledger.counters()["stored"] == 5
            assert ledger.counters()["db_errors"] >= 1
            assert ledger.gaps()[0].missing == []
        finally:
            ledger.stop()
