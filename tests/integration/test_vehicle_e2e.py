"""A patrol vehicle end to end: ``xunfang run`` of a vehicle unit (sim reader and the GNSS
receiver on real ptys, the roof light on mock pins) against a real Mosquitto and the
centre's ledger. The centre sends the card list and the patrol points as signed retained
documents, the crew taps in, the vehicle drives past the point (NMEA written to the
receiver's pty, then a real receiver capture), and the visit, the track and the receiver's
events reach the ledger, every message validated against ``docs/schemas``."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from center.ledger import Ledger
from drivers.gnss import encode_epoch
from firmware_py import topics
from firmware_py.clock import kernel_clock_synced
from firmware_py.signing import SigningKey
from firmware_py.sim import tap
from tests.drivers.reader_helpers import PtyPair
from tests.support.brokers import Mosquitto
from tests.support.daemon import Daemon
from tests.support.units import write_unit_config
from tests.support.uplink import SITE, Watcher, wait_until

pytestmark = pytest.mark.timeout(120)

UNIT = "zt-car-01"
PO1, PA1 = "14008EC793", "0000000457"
SCHOOL = (31.2479, 121.5874)
CAPTURES = Path(__file__).resolve().parents[1] / "data" / "gnss"


def north(metres: float) -> float:
    return SCHOOL[0] + metres / 111_195.0


@pytest.fixture
def gnss() -> Iterator[PtyPair]:
    pair = PtyPair()
    yield pair
    pair.close()


def test_vehicle_visit_and_track_reach_the_ledger(mosquitto: Mosquitto, tmp_path: Path,
                                                  gnss: PtyPair) -> None:
    key = SigningKey.generate("centre-test")
    ack = SigningKey.generate("ledger-test")
    config = write_unit_config(
        tmp_path / "unit.toml", tmp_path / "data",
        unit={"id": UNIT, "kind": "vehicle"},
        mqtt={"port": mosquitto.port, "health_interval_s": 5},
        security={"command_keys": {"centre-test": key.public_b64()},
                  "ack_keys": {"ledger-test": ack.public_b64()}},
        readers=[{"name": "main", "driver": "sim", "port": "sim"}],
        gnss={"source": gnss.path, "baud": 9600},
        vehicle={"track_every_s": 1, "track_min_move_m": 10, "dwell_s": 2},
        lights={"roof": {"pins": [23, 24], "schedule": "on-duty", "schedule_mode": "strobe"}})
    centre = mosquitto.probe(None, client_id="centre")
    for name, args in (
            ("cards", {"version": 1, "cards": [{"card": PO1, "badge": "PO-1", "role": "police"},
                                               {"card": PA1, "badge": "PA-1",
                                                "role": "patrol"}]}),
            ("points", {"version": 1, "points": [
                {"id": "school", "name": "实验小学", "lat_e7": round(SCHOOL[0] * 1e7),
                 "lon_e7": round(SCHOOL[1] * 1e7), "radius_m": 40}]})):
        env = key.sign_envelope(name, args, site=SITE, units=["*"], ttl_s=3600)
        assert not centre.publish(topics.desired(SITE, "_all", name), json.dumps(env),
                                  retain=True).is_failure
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    ledger = Ledger(tmp_path / "ledger.db", SITE, ack, mosquitto.host, mosquitto.port,
                    settle_s=0.2)
    ledger.start()
    unit = Daemon(config, tmp_path / "unit.log", env={"GPIOZERO_PIN_FACTORY": "mock"})
    try:
        assert ledger.wait_connected(10)
        unit.start()
        watcher.wait_events(lambda evs: sum(e["kind"] == "command" and e["data"]["result"]
                                            == "applied" for e in evs) == 2, 30,
                            "cards and points applied")
        watcher.wait_events(lambda evs: any(e["kind"] == "gnss" or e["kind"] == "reader"
                                            for e in evs), 20, "the station up")
        for card in (PO1, PA1):
            assert tap(config, card, wait_s=10).event is not None
        watcher.wait_events(lambda evs: any(e["kind"] == "lights" and e["data"]["light"] ==
                                            "roof" and e["data"]["mode"] == "strobe"
                                            for e in evs), 20, "the roof light strobing")
        start = datetime.now(UTC)
        route = [150 - 15 * i for i in range(10)] + [0.0] * 30 + [-15 * i for i in range(1, 12)]
        for i, metres in enumerate(route):
            gnss.write(encode_epoch(north(metres), SCHOOL[1], start + timedelta(seconds=i),
                                    speed_kmh=25, heading=180, talker="BD"))
            time.sleep(0.1)   # a receiver's pace, not a wait for a result
        # A real receiver's capture on the same line, a second and a half later (its
        # fixes happen to be 9 m from the point, too briefly for a visit).
        time.sleep(1.5)
        gnss.write(b"".join(line + b"\r\n" for line in
                            (CAPTURES / "beidou-gb.log").read_bytes().splitlines()
                            if line.startswith(b"$")))
        watcher.wait_events(lambda evs: any(e["kind"] == "visit" for e in evs), 30,
                            "the GNSS visit")
        (visit,) = [e for e in watcher.events() if e["kind"] == "visit"]
        assert visit["data"]["source"] == "gnss" and visit["data"]["point"] == "school"
        assert sorted(visit["data"]["badges"]) == ["PA-1", "PO-1"]
        assert visit["data"]["two_person"] and visit["data"]["police_led"]
        watcher.wait_events(lambda evs: any(e["kind"] == "track" and str(
            e["data"]["gnss_time"]).startswith("2015-03-02") for e in evs), 20,
                            "the capture's position in the track")
        tracks = [e for e in watcher.events() if e["kind"] == "track"]
        assert len(tracks) >= 3
        assert ledger.wait_for(lambda: ledger.event(visit["id"]) is not None, 20), \
            "the ledger stores the visit"
        assert ledger.wait_for(lambda: all(ledger.event(t["id"]) is not None for t in tracks),
                               20), "the ledger stores every track point"
        stored = ledger.event(tracks[-1]["id"])
        assert stored is not None and stored["kind"] == "track"
        assert stored["data"]["lat"] == tracks[-1]["data"]["lat"]
        assert all(g.missing_count == 0 for g in ledger.gaps(UNIT))
        # The receiver's story: online, a fix, and (on a Pi whose clock is not
        # synchronised) the clock set from the satellites.
        gnss_states = [e["data"]["state"] for e in watcher.events() if e["kind"] == "gnss"]
        assert gnss_states[0] == "online" and "fix" in gnss_states
        assert ("time" in gnss_states) == (not kernel_clock_synced())
        # Health reports the receiver with its counters.
        health = wait_until(lambda: next((m.doc for m in reversed(watcher.on("health"))
                                          if m.doc.get("gnss", {}).get("gnss", {}).get("fixes")),
                                         None), 20, "health with the receiver's fixes")
        assert health["gnss"]["gnss"]["state"] == "online"
        assert unit.stop() == 0
        assert "Traceback" not in unit.text()
    finally:
        with contextlib.suppress(Exception):
            unit.stop()
        ledger.stop()
        print(f"--- unit log ---\n{unit.text()[-20000:]}")
