"""Tap to journal to broker, end to end: ``xunfang run`` (all three components in one
process, as the demo runs it) against a real Mosquitto, the card list sent as a signed
retained ``desired/cards``, and cards tapped with ``xunfang sim tap``, which writes real
RDM6300 frames into the unit's sim reader (a pty).

Every message on the wire is validated against ``docs/schemas`` (the Watcher). The unit
runs on gpiozero's mock pins; what its patrol members were shown is read from the
station's status file, including while the broker is away: offline must not change it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_py import topics
from firmware_py.checkin import read_status
from firmware_py.config import load_config
from firmware_py.journal import Journal
from firmware_py.signing import SigningKey
from firmware_py.sim import tap
from tests.support.brokers import Mosquitto
from tests.support.daemon import Daemon
from tests.support.units import write_unit_config
from tests.support.uplink import SITE, UNIT, Watcher, wait_until

XUNFANG = Path(sys.executable).parent / "xunfang"
PO1, PA1, VI1 = "14008EC793", "0000000457", "0000000458"


def Unit(config: Path, log: Path) -> Daemon:
    """``xunfang run -c FILE`` (all components) on mock pins."""
    return Daemon(config, log, env={"GPIOZERO_PIN_FACTORY": "mock"})


@pytest.fixture
def unit(tmp_path: Path) -> Iterator[tuple[Unit, Path, SigningKey]]:
    key = SigningKey.generate("centre-test")
    ack = SigningKey.generate("ledger-test")
    config = write_unit_config(
        tmp_path / "unit.toml", tmp_path / "data",
        security={"command_keys": {"centre-test": key.public_b64()},
                  "ack_keys": {"ledger-test": ack.public_b64()}},
        readers=[{"name": "main", "driver": "sim", "port": "sim"}],
        feedback={"ok_led": 17, "error_led": 27, "buzzer": 22},
        patrol={"visit_gap_s": 1})
    u = Unit(config, tmp_path / "unit.log")
    try:
        yield u, config, key
    finally:
        with contextlib.suppress(Exception):
            u.stop()
        print(f"--- unit log ---\n{u.text()[-20000:]}")


def _set_port(config: Path, port: int) -> None:
    text = config.read_text()
    config.write_text(text.replace("port = 1883", f"port = {port}"))


def events_of(watcher: Watcher, kind: str) -> list[dict[str, Any]]:
    return [e for e in watcher.events() if e["kind"] == kind]


def test_taps_through_a_pty_reach_the_journal_and_the_broker(
        mosquitto: Mosquitto, unit: tuple[Unit, Path, SigningKey]) -> None:
    u, config, key = unit
    _set_port(config, mosquitto.port)
    cfg = load_config(config)
    cards = {"version": 7, "cards": [
        {"card": PO1, "badge": "PO-1", "role": "police"},
        {"card": "dec:0000001111", "badge": "PA-1", "role": "patrol"},
        {"card": "w26:0,1112", "badge": "VI-1", "role": "village"}]}
    env = key.sign_envelope("cards", cards, site=SITE, units=["*"], ttl_s=3600)
    centre = mosquitto.probe(None, client_id="centre")
    assert not centre.publish(topics.desired(SITE, "_all", "cards"), json.dumps(env),
                              retain=True).is_failure
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    u.start()
    watcher.wait_events(lambda evs: any(e["kind"] == "command" and e["data"]["name"] == "cards"
                                        and e["data"]["result"] == "applied" for e in evs),
                        20, "the card list applied")
    watcher.wait_events(lambda evs: any(e["kind"] == "reader" and e["data"]["state"] == "online"
                                        for e in evs), 20, "the reader online")

    # One tap with the command line, one from Python (the demo's way).
    out = subprocess.run([str(XUNFANG), "sim", "tap", PO1, "--reader", "main", "-c",
                          str(config)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "decision=accepted" in out.stdout and "badge=PO-1" in out.stdout
    second = tap(config, "dec:0000001111", reader="main", wait_s=10)
    assert second.card == PA1 and second.event is not None
    assert second.event.data["decision"] == "accepted"

    watcher.wait_events(lambda evs: any(e["kind"] == "visit" for e in evs), 20, "the visit")
    checkins = events_of(watcher, "checkin")
    assert [(c["data"]["card"], c["data"]["badge"]) for c in checkins] == \
        [(PO1, "PO-1"), (PA1, "PA-1")]
    (visit,) = events_of(watcher, "visit")
    assert visit["data"]["two_person"] and visit["data"]["police_led"]
    assert visit["data"]["cards"] == [PO1, PA1] and visit["data"]["visit"] == \
        checkins[0]["data"]["visit"]
    status = read_status(cfg.unit.runtime_dir)
    assert status is not None and status["signals"] == {"alone": 1, "recorded": 1}

    # The broker goes away: a tap gets the same signal, and reaches the centre later.
    mosquitto.stop()
    third = tap(config, VI1, wait_s=10)
    assert third.event is not None and third.event.data["decision"] == "accepted"
    wait_until(lambda: (s := read_status(cfg.unit.runtime_dir)) and s["signals"].get("alone")
               == 2, 10, "the alone signal while offline")
    mosquitto.start()
    watcher = Watcher(mosquitto.probe(None, client_id="watch2"))
    watcher.wait_events(lambda evs: any(e["kind"] == "checkin" and e["data"]["card"] == VI1
                                        for e in evs), 30, "the offline tap on the wire")

    # The journal holds the same story, in order.
    with Journal(cfg.journal_path, unit=UNIT, site=SITE) as journal:
        kinds = [e.kind for e in journal.events_after(0, limit=1000)
                 if e.kind in ("checkin", "visit")]
    assert kinds[:4] == ["checkin", "checkin", "visit", "checkin"]
    assert u.stop() == 0
    assert "Traceback" not in u.text()
