"""The vehicle unit: track thinning, geofence visits, the points document, satellite time,
and a whole station (sim reader on a real pty, the GNSS receiver on another pty, the roof
light on gpiozero's mock pins) driving a route past a patrol point."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.gnss import Fix, encode_epoch, haversine_m
from firmware_py import sim
from firmware_py.clock import ManualClock, SatelliteClock, SystemClock
from firmware_py.config import PatrolSection, VehicleSection
from firmware_py.desired import ArgsInvalid, current_points, validate_args
from firmware_py.exc import ConfigInvalid
from firmware_py.journal import Event, Journal
from firmware_py.lights_control import decide
from firmware_py.patrol import Instant
from firmware_py.runtime import UnitContext
from firmware_py.station import StationComponent
from firmware_py.vehicle import Geofence, Point, TrackThinner, VehiclePart
from tests.drivers.reader_helpers import PtyPair
from tests.firmware.test_commands import make_rig, site_topic, unit_topic
from tests.support.gpio import global_mock_factory, wait_until
from tests.support.schemas import validator
from tests.support.units import make_config

pytestmark = pytest.mark.timeout(90)

PO1, PA1 = "14008EC793", "0000000457"
CARDS = [{"card": PO1, "badge": "PO-1", "role": "police"},
         {"card": PA1, "badge": "PA-1", "role": "patrol"}]
# A patrol point in front of a school, and a point 111 m north of it per 0.001°.
SCHOOL = (31.2479, 121.5874)
CREW = {"PO-1": {"card": PO1, "role": "police"}, "PA-1": {"card": PA1, "role": "patrol"}}
ROOF = [23, 24]


def at(mono: float, wall_ms: int = 1_796_400_000_000, synced: bool = True) -> Instant:
    return Instant(wall_ms + round(mono * 1000), mono, "boot-1", synced)


def north(lat: float, metres: float) -> float:
    return lat + metres / 111_195.0


# -- tracks ------------------------------------------------------------------------------


def test_track_thinning_by_time_and_distance_and_idle() -> None:
    t = TrackThinner(VehicleSection(track_every_s=10, track_min_move_m=50, track_idle_s=120))
    lat, lon = SCHOOL
    assert t.offer(lat, lon, 0.0) == 0.0                         # the first point
    assert t.offer(north(lat, 200), lon, 5.0) is None            # far, but too soon
    moved = t.offer(north(lat, 200), lon, 10.0)
    assert moved is not None and abs(moved - 200) < 1            # far enough, late enough
    assert t.offer(north(lat, 230), lon, 30.0) is None           # late, but only 30 m
    assert t.offer(north(lat, 230), lon, 130.0) is not None      # standing: idle point


def test_a_night_of_driving_stays_small() -> None:
    """Eight hours at one fix a second, 30 km/h round a loop: at most one point per 15 s."""
    t = TrackThinner(VehicleSection())
    points = 0
    for s in range(8 * 3600):
        angle = s / 600 * 2 * math.pi
        lat = SCHOOL[0] + 0.01 * math.sin(angle)
        lon = SCHOOL[1] + 0.01 * math.cos(angle)
        points += t.offer(lat, lon, float(s)) is not None
    assert points <= 8 * 3600 / 15 + 1
    assert points > 1000   # but the route is all there


# -- geofence ------------------------------------------------------------------------------


def fence(dwell_s: int = 60, **kw: Any) -> Geofence:
    f = Geofence(VehicleSection(dwell_s=dwell_s, **kw), PatrolSection(),
                 ZoneInfo("Asia/Shanghai"), "car-01:j:g")
    f.set_points([Point("school", *SCHOOL, 50, name="实验小学")], at(0), 3)
    return f


def drive(f: Geofence, track: list[tuple[float, float]], crew: dict[str, Any],
          start: float = 0.0) -> list[dict[str, Any]]:
    """One fix a second along ``track`` (lat offsets in metres north of the school)."""
    out: list[dict[str, Any]] = []
    for i, (metres, _) in enumerate(track):
        out += f.update(north(SCHOOL[0], metres), SCHOOL[1], at(start + i), crew, 3)
    return out


def test_dwelling_with_a_crew_is_a_gnss_visit_shaped_like_a_card_visit() -> None:
    f = fence(dwell_s=60)
    track = [(300 - 10 * i, 0) for i in range(30)] + [(0, 0)] * 90 + \
        [(10 * i, 0) for i in range(1, 30)]
    (visit,) = drive(f, track, CREW)
    assert visit["source"] == "gnss" and visit["point"] == "school"
    assert visit["badges"] == ["PO-1", "PA-1"] and visit["cards"] == [PO1, PA1]
    assert visit["roles"] == {"police": 1, "patrol": 1}
    assert visit["two_person"] is True and visit["police_led"] is True
    assert visit["duration_s"] >= 90 and visit["visit"] == "car-01:j:g1"
    validator("events/visit").validate(visit)


def test_driving_through_without_stopping_is_no_visit() -> None:
    f = fence(dwell_s=60)
    assert drive(f, [(300 - 10 * i, 0) for i in range(60)], CREW) == []
    assert not f.stays


def test_no_crew_on_duty_means_no_visit() -> None:
    f = fence(dwell_s=10)
    assert drive(f, [(0, 0)] * 60 + [(500, 0)], {}) == []


def test_crew_going_off_duty_closes_the_stay() -> None:
    f = fence(dwell_s=10)
    assert drive(f, [(0, 0)] * 20, CREW) == []
    (visit,) = f.update(*SCHOOL, at(21), {}, 3)
    assert visit["people"] == 2


def test_jitter_at_the_edge_is_not_an_exit() -> None:
    f = fence(dwell_s=30, exit_margin_m=20)
    # In and out of the 50 m radius by 10 m for a minute: one stay, one visit on leaving.
    track = [(45 if i % 2 else 60, 0) for i in range(60)] + [(200, 0)]
    (visit,) = drive(f, track, CREW)
    assert visit["duration_s"] >= 50


def test_lost_fix_closes_the_stay_at_the_last_position_inside() -> None:
    f = fence(dwell_s=10)
    drive(f, [(0, 0)] * 30, CREW)
    (visit,) = f.lost(at(200), 3)
    assert visit["duration_s"] == pytest.approx(29, abs=0.01)


def test_a_point_removed_by_a_new_document_closes_its_stay() -> None:
    f = fence(dwell_s=10)
    drive(f, [(0, 0)] * 30, CREW)
    (visit,) = f.set_points([], at(31), 3)
    assert visit["point"] == "school"


# -- the points document, config, lights ---------------------------------------------------------


GOOD_POINTS = {"version": 3, "points": [
    {"id": "school", "name": "实验小学", "lat_e7": 312479000, "lon_e7": 1215874000,
     "radius_m": 50, "dwell_s": 60}]}


def test_points_document_is_valid_and_validated_against_its_schema() -> None:
    assert validate_args("points", GOOD_POINTS) is GOOD_POINTS
    validator("desired/points").validate(GOOD_POINTS)


@pytest.mark.parametrize(("change", "message"), [
    ({"lat_e7": 31.2479}, "points[0].lat_e7 must be a whole number"),
    ({"lat_e7": 950000000}, "points[0].lat_e7 must be a whole number"),
    ({"radius_m": 2}, "points[0].radius_m must be a whole number from 5"),
    ({"dwell_s": 0}, "points[0].dwell_s must be a whole number from 1"),
    ({"id": "School!"}, "points[0].id must match"),
    ({"colour": "red"}, "colour"),
])
def test_bad_points_are_refused_with_the_key_path(change: dict[str, Any], message: str) -> None:
    doc = {"version": 1, "points": [{**GOOD_POINTS["points"][0], **change}]}
    with pytest.raises(ArgsInvalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_args("points", doc)


def test_duplicate_point_ids_are_refused() -> None:
    doc = {"version": 1, "points": [GOOD_POINTS["points"][0]] * 2}
    with pytest.raises(ArgsInvalid, match=r"points\[1\].id school is already points\[0\]"):
        validate_args("points", doc)


def test_signed_points_document_is_applied_by_the_command_processor(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    out = rig.send(site_topic("points"), rig.sign("points", GOOD_POINTS), retained=True)
    assert out.result == "applied", out
    points = current_points(rig.journal)
    assert points is not None and points["version"] == 3
    assert points["points"][0]["radius_m"] == 50 and points["scope"] == "site"
    (event,) = rig.events("command")
    assert (event["name"], event["result"]) == ("points", "applied")


def test_bad_and_older_points_documents_are_rejected_and_change_nothing(
        tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    newer = rig.sign("points", GOOD_POINTS)
    assert rig.send(unit_topic("points"), newer, retained=True).result == "applied"
    before = current_points(rig.journal)
    bad = {"version": 4, "points": [{**GOOD_POINTS["points"][0], "radius_m": 2}]}
    out = rig.proc.handle(unit_topic("points"), json.dumps(rig.sign("points", bad)).encode())
    assert (out.result, out.reason) == ("rejected", "bad_args")
    assert "points[0].radius_m" in out.detail
    older = rig.sign("points", {**GOOD_POINTS, "version": 2},
                     issued_ms=rig.clock.wall_ms() - 60_000)
    out = rig.send(unit_topic("points"), older, retained=True)
    assert (out.result, out.reason) == ("rejected", "older_document")
    assert current_points(rig.journal) == before


def test_vehicle_config_needs_a_receiver_and_names_the_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as err:
        make_config(tmp_path, unit={"kind": "vehicle"})
    assert 'gnss: a unit of kind "vehicle" needs a [gnss] receiver' in str(err.value)
    with pytest.raises(ConfigInvalid) as err:
        make_config(tmp_path, unit={"kind": "vehicle"},
                    gnss={"source": "gpsd:localhost", "baud": 4801},
                    vehicle={"track_every_s": 0, "dwel_s": 5})
    text = str(err.value)
    for line in ("gnss.source: gpsd source must look like gpsd://127.0.0.1:2947",
                 "gnss.baud: must be one of 4800, 9600",
                 "vehicle.track_every_s: must be at least 1",
                 "vehicle.dwel_s: unknown key"):
        assert line in text


def test_the_example_vehicle_config_checks_ok(tmp_path: Path) -> None:
    # The example as installed: its certificate files in place.
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("ca.pem", "unit.pem", "unit.key"):
        (tls / name).write_text("-----BEGIN …\n")
    vehicle = tmp_path / "vehicle.toml"
    vehicle.write_text((Path(__file__).resolve().parents[2] / "config" / "vehicle.toml")
                       .read_text().replace("/etc/xunfang/tls/", f"{tls}/"))
    out = subprocess.run([sys.executable, "-m", "firmware_py.cli", "config", "check", "-c",
                          str(vehicle)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok: unit zt-car-01 (vehicle)" in out.stdout


def test_on_duty_schedule_lights_the_roof_light_only_with_a_crew(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, unit={"kind": "vehicle"}, gnss={"source": "/dev/serial0"},
                      lights={"roof": {"pins": ROOF, "schedule": "on-duty",
                                       "schedule_mode": "strobe"}})
    roof = cfg.lights["roof"]
    assert decide(roof, None, None, 3, None, False, None, on_duty=False) == ("off", "schedule")
    assert decide(roof, None, None, 3, None, False, None, on_duty=True) == ("strobe",
                                                                             "schedule")
    assert decide(roof, None, None, 2, None, False, None, on_duty=False) == ("alternate",
                                                                              "level")


def test_a_fix_flickering_at_the_edge_of_coverage_is_not_an_event_each_second(
        tmp_path: Path) -> None:
    cfg = make_config(tmp_path, unit={"kind": "vehicle"}, gnss={"source": "loop://"})
    journal = Journal(cfg.journal_path, unit="zt-pp-03", site="zhuantang")
    part = VehiclePart(UnitContext(cfg, journal, ManualClock(), threading.Event()))

    def fix(valid: bool, mono: float) -> Fix:
        return Fix(valid, *(SCHOOL if valid else (None, None)), "3d" if valid else "none",
                   "gps" if valid else "none", 7, 1.1, 20.0, 90.0, 10.0, None, "GN", mono)

    for second in range(60):                       # valid, then alternating every second
        part._note_fix(fix(second < 10 or second % 2 == 0, float(second)))
    for second in range(60, 70):                   # then lost for good
        part._note_fix(fix(False, float(second)))
    states = [e.data["state"] for e in journal.events_after(0) if e.kind == "gnss"]
    assert states == ["fix", "no_fix"]
    journal.close()


# -- time from satellites -------------------------------------------------------------------------


def test_satellite_time_makes_an_unsynchronised_clock_synchronised() -> None:
    base = ManualClock(wall_ms=1_000_000_000_000, monotonic=50.0, synced=False)
    clock = SatelliteClock(base, max_age_s=600)
    assert not clock.synced() and clock.source == "none"
    gnss_ms = 1_796_400_000_000                                 # 2026-12-04
    assert clock.set_from_gnss(gnss_ms, 49.5)                   # read half a second ago
    assert clock.synced() and clock.source == "gnss"
    assert clock.wall_ms() == gnss_ms + 500
    base.advance(10)
    assert clock.wall_ms() == gnss_ms + 10_500
    base.advance(600)                                           # too old to trust
    assert not clock.synced() and clock.wall_ms() == base.wall_ms()


def test_a_synchronised_system_clock_wins_and_implausible_gnss_time_is_ignored() -> None:
    base = ManualClock(wall_ms=1_796_400_000_000, synced=True)
    clock = SatelliteClock(base)
    clock.set_from_gnss(1_796_400_000_000 + 5000, base.monotonic())
    assert clock.wall_ms() == base.wall_ms() and clock.source == "system"
    base.set_synced(False)
    # A 2015 capture, or a receiver past a week rollover: not believed.
    assert not clock.set_from_gnss(1_424_850_115_799, base.monotonic())
    assert clock.rejected == 1 and clock.source == "gnss"     # the earlier fix still holds


def test_satellite_time_from_another_boot_is_not_used() -> None:
    base = ManualClock(synced=False)
    clock = SatelliteClock(base)
    clock.set_from_gnss(1_796_400_000_000, base.monotonic())
    base.reboot("another-boot")
    assert not clock.synced()


# -- the whole station on ptys and mock pins -----------------------------------------------------


class Vehicle:
    """A vehicle unit's station in this process: sim reader, receiver on a pty, mock pins."""

    def __init__(self, tmp_path: Path, clock: Any, **extra: Any) -> None:
        self.gnss = PtyPair()
        self.config = make_config(
            tmp_path, unit={"id": "zt-car-01", "kind": "vehicle"},
            readers=[{"name": "main", "driver": "sim", "port": "sim"}],
            gnss={"source": self.gnss.path},
            vehicle={"track_every_s": 1, "track_min_move_m": 10, "dwell_s": 2,
                     "exit_margin_m": 10},
            lights={"roof": {"pins": ROOF, "schedule": "on-duty", "schedule_mode": "strobe"}},
            **extra)
        self.clock = clock
        self.journal = Journal(self.config.journal_path, unit="zt-car-01", site="zhuantang",
                               clock=clock)
        self.journal.state_set("desired/cards/unit", {
            "id": "cards-1", "name": "cards", "scope": "unit", "key": "centre-test",
            "args": {"version": 1, "cards": CARDS}, "issued_at": "2026-11-28T00:00:00.000Z",
            "issued_ms": 1_795_910_400_000, "expires_ms": None})
        self.journal.state_set("desired/points/unit", {
            "id": "points-1", "name": "points", "scope": "unit", "key": "centre-test",
            "args": {"version": 1, "points": [
                {"id": "school", "lat_e7": round(SCHOOL[0] * 1e7),
                 "lon_e7": round(SCHOOL[1] * 1e7), "radius_m": 40}]},
            "issued_at": "2026-11-28T00:00:00.000Z", "issued_ms": 1_795_910_400_000,
            "expires_ms": None})
        self.component = StationComponent(UnitContext(self.config, self.journal, clock,
                                                      threading.Event()))

    def start(self) -> Vehicle:
        self.component.start()
        assert self.component.started.wait(10)
        return self

    @property
    def part(self) -> VehiclePart:
        return next(p for p in self.component.parts if isinstance(p, VehiclePart))

    def events(self, kind: str) -> list[Event]:
        return [e for e in self.journal.events_after(0, limit=100_000) if e.kind == kind]

    def drive(self, offsets_m: list[float], start: datetime, step_s: float = 0.1) -> None:
        """Send one epoch per offset (metres north of the school), paced like a receiver."""
        wait_until(lambda: self.part.receiver is not None and self.part.receiver.opens >= 1,
                   10)
        for i, metres in enumerate(offsets_m):
            self.gnss.write(encode_epoch(north(SCHOOL[0], metres), SCHOOL[1],
                                         start + timedelta(seconds=i), speed_kmh=20,
                                         heading=180, talker="BD"))
            time.sleep(step_s)   # pacing the receiver's output, not waiting for a result

    def stop(self) -> None:
        self.component.request_stop()
        assert self.component.join(15), "station did not stop"
        self.gnss.close()


@pytest.fixture
def mock_pins() -> Iterator[Any]:
    with global_mock_factory() as factory:
        yield factory


def test_vehicle_drives_past_the_school_with_its_crew(tmp_path: Path, mock_pins: Any) -> None:
    v = Vehicle(tmp_path, SystemClock()).start()
    try:
        roof = mock_pins.pin(ROOF[0])
        for card in (PO1, PA1):
            assert sim.tap(v.config, card, wait_s=10).event is not None
        duty = wait_until(lambda: len(v.events("duty")) == 2 and v.events("duty"), 10)
        assert [e.data["state"] for e in duty] == ["on", "on"]
        wait_until(lambda: any(e.data["light"] == "roof" and e.data["mode"] == "strobe"
                               for e in v.events("lights")), 10)
        states = {roof.state for _ in range(200) if not time.sleep(0.005)}
        assert states == {0, 1}, "the roof light strobes"
        # Approach from 200 m north, stop 4 s at the school, drive away south.
        route = [200 - 20 * i for i in range(10)] + [0.0] * 40 + \
            [-20 * i for i in range(1, 12)]
        v.drive(route, datetime.now(UTC))
        visit = wait_until(lambda: v.events("visit"), 15)[0]
        data = validator("events/visit").validate(visit.data) or visit.data
        assert data["source"] == "gnss" and data["point"] == "school"
        assert sorted(data["badges"]) == ["PA-1", "PO-1"] and data["police_led"] is True
        tracks = v.events("track")
        # 61 fixes in about 6 s, thinned to one a second at most, only when moving 10 m.
        assert 3 <= len(tracks) <= 12
        for e in tracks:
            validator("events/track").validate(e.data)
        lats = [e.data["lat"] for e in tracks]
        assert lats == sorted(lats, reverse=True), "the track runs north to south"
        assert sorted(tracks[-1].data["crew"]) == ["PA-1", "PO-1"]
        assert tracks[0].data["fix"] == {"mode": "3d", "quality": "gps", "satellites": 9,
                                         "hdop": 0.9}
        gnss = v.events("gnss")
        assert [e.data["state"] for e in gnss][:2] == ["online", "fix"]
        for e in gnss:
            validator("events/gnss").validate(e.data)
        assert haversine_m(tracks[0].data["lat"], tracks[0].data["lon"], *SCHOOL) > 100
    finally:
        v.stop()


def test_unsynchronised_vehicle_takes_its_time_from_the_satellites(
        tmp_path: Path, mock_pins: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Pi without RTC that booted a year in the past, and no NTP.
    monkeypatch.setenv("XUNFANG_CLOCK_SYNCED", "0")
    monkeypatch.setenv("XUNFANG_CLOCK_OFFSET_S", str(-365 * 86400))
    clock = SatelliteClock(SystemClock())
    v = Vehicle(tmp_path, clock).start()
    try:
        before = v.journal.append("unit", {"state": "started", "version": "t",
                                           "config_sha256": ""})
        assert before.clock_synced is False
        truth = datetime.now(UTC)
        v.drive([300.0, 290.0, 280.0], truth)
        event = wait_until(lambda: next((e for e in v.events("gnss")
                                         if e.data["state"] == "time"), None), 10)
        assert event.clock_synced is True
        assert "clock set from satellites" in event.data["detail"]
        ts = datetime.fromisoformat(event.ts.replace("Z", "+00:00"))
        assert abs((ts - truth).total_seconds()) < 30, "the event carries satellite time"
        assert clock.source == "gnss"
    finally:
        v.stop()
