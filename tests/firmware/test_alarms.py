"""Panic button and tamper switch at the station: alarm events, snapshot requests, strobe.

Inputs run on gpiozero's mock pins (``ContactPin``, so a closed contact
outlasts a restart as it does on a real Pi); the journal is real; every event
is validated against ``docs/schemas``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gpiozero import DigitalInputDevice
from gpiozero.pins.mock import MockFactory

from firmware_py import topics
from firmware_py.alarms import AlarmsPart, alarm_key, snapshot_request_id
from firmware_py.clock import ManualClock
from firmware_py.config import UnitConfig
from firmware_py.journal import Journal
from firmware_py.lights_control import LightsPart, device_key
from firmware_py.runtime import UnitContext
from firmware_py.station import StationComponent
from tests.support import schemas
from tests.support.gpio import ContactPin, changes, global_mock_factory, wait_until
from tests.support.units import make_config

SITE, UNIT = "zhuantang", "zt-pp-03"
T_NIGHT = 1_797_865_200_000          # 2026-12-21T23:00+08:00: the warning light is lit
LIGHTS = {"warning": {"pins": [5, 6], "schedule": "sunset-sunrise"},
          "lightbox": {"pins": [13], "active_high": False, "schedule": "always"}}


@dataclass
class Rig:
    tmp: Path
    config: UnitConfig
    clock: ManualClock
    factory: MockFactory
    journal: Journal
    alarms: AlarmsPart | None = None
    lights: LightsPart | None = None
    journals: list[Journal] = field(default_factory=list)

    def ctx(self) -> UnitContext:
        return UnitContext(self.config, self.journal, self.clock, threading.Event())

    def start(self) -> AlarmsPart:
        self.alarms = AlarmsPart(self.ctx(), pin_factory=self.factory, retry_s=0.2)
        self.alarms.open()
        if self.config.lights:
            self.lights = LightsPart(self.ctx(), pin_factory=self.factory)
            self.lights.open()
        return self.alarms

    def stop(self) -> None:
        for part in (self.lights, self.alarms):
            if part is not None:
                part.close()
        self.alarms = self.lights = None

    def restart(self) -> AlarmsPart:
        self.stop()
        self.journal.close()
        self.journal = Journal(self.tmp / "journal.db", unit=UNIT, site=SITE, clock=self.clock)
        self.journals.append(self.journal)
        return self.start()

    def tick(self) -> None:
        now = time.monotonic()
        for part in (self.alarms, self.lights):
            if part is not None:
                part.tick(now)

    def pin(self, n: int) -> ContactPin:
        pin = self.factory.pin(n)
        assert isinstance(pin, ContactPin)
        return pin

    def alarm_events(self) -> list[dict[str, Any]]:
        return [e.data for e in self.journal.events_after(0, kinds=["alarm"])]

    def alarm_state(self, source: str) -> str | None:
        state = self.journal.state_get(alarm_key(source))
        return state["state"] if state else None

    def shown(self, name: str) -> tuple[str, str]:
        state = self.journal.state_get(device_key(name))
        return state["mode"], state["reason"]


def make_rig(tmp_path: Path, **sections: Any) -> Rig:
    doc: dict[str, Any] = {
        "unit": {"latitude": 30.16, "longitude": 120.08},
        "inputs": {"panic": 19, "debounce_ms": 20},
        "lights": LIGHTS,
        "cameras": [{"name": "gate", "source": "gate.mp4"}],
    }
    doc.update(sections)
    config = make_config(tmp_path, **doc)
    clock = ManualClock(wall_ms=T_NIGHT, synced=True)
    journal = Journal(tmp_path / "journal.db", unit=UNIT, site=SITE, clock=clock)
    return Rig(tmp_path, config, clock, MockFactory(pin_class=ContactPin), journal,
               journals=[journal])


def close_rig(rig: Rig) -> None:
    rig.stop()
    for event in rig.journal.events_after(0, limit=100_000):
        schemas.validate(topics.event(SITE, UNIT, event.kind), event.envelope())
    for j in rig.journals:
        j.close()
    rig.factory.reset()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    close_rig(r)


def test_a_panic_press_is_an_alarm_a_snapshot_request_and_a_strobe(rig: Rig) -> None:
    rig.start()
    rig.tick()
    assert rig.shown("warning") == ("alternate", "schedule")
    assert rig.alarm_events() == []
    rig.pin(19).close_contact()
    wait_until(lambda: rig.alarm_state("panic") == "active", timeout=2)
    event = rig.journal.events_after(0, kinds=["alarm"])[0]
    assert event.data == {"source": "panic", "state": "active", "pin": 19}
    # The camera's request (written just after the event): local id, trigger alarm,
    # and the alarm event it documents.
    [request] = wait_until(lambda: rig.journal.inbox_after(0, names=["snapshot"]), timeout=2)
    assert request.command_id == snapshot_request_id(rig.journal.journal_id, event.seq)
    assert request.command_id == f"alarm-{rig.journal.journal_id}-{event.seq}"
    assert request.args == {"trigger": "alarm", "ref": event.id}
    rig.tick()
    assert rig.shown("warning") == ("strobe", "alarm")
    assert rig.shown("lightbox") == ("on", "schedule")            # not an alarm light
    rig.pin(19).open_contact()
    wait_until(lambda: rig.alarm_state("panic") == "cleared", timeout=2)
    rig.tick()
    assert rig.shown("warning") == ("alternate", "schedule")      # back to what it was
    assert [e["state"] for e in rig.alarm_events()] == ["active", "cleared"]
    assert len(rig.journal.inbox_after(0)) == 1                   # no snapshot for a clear


def test_a_bouncing_panic_button_makes_one_alarm(rig: Rig) -> None:
    rig.start()
    pin = rig.pin(19)
    for _ in range(6):
        pin.drive_low()
        time.sleep(0.002)
        pin.drive_high()
        time.sleep(0.002)
    pin.close_contact()
    wait_until(lambda: len(rig.journal.inbox_after(0)) == 1, timeout=2)
    time.sleep(0.2)                       # ten debounce times: any second event has come
    rig.tick()
    assert rig.alarm_events() == [{"source": "panic", "state": "active", "pin": 19}]
    assert len(rig.journal.inbox_after(0, names=["snapshot"])) == 1


def test_the_tamper_switch_alarms_when_the_lid_opens_and_lights_nothing(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, inputs={"tamper": 26, "debounce_ms": 20})
    try:
        rig.pin(26).close_contact()                               # lid shut at start
        rig.start()
        rig.tick()
        assert rig.alarm_events() == []
        rig.pin(26).open_contact()                                # lid opened
        wait_until(lambda: rig.alarm_state("tamper") == "active", timeout=2)
        rig.tick()
        assert rig.shown("warning") == ("alternate", "schedule")
        [request] = wait_until(lambda: rig.journal.inbox_after(0), timeout=2)
        assert request.args["trigger"] == "alarm"
        rig.pin(26).close_contact()
        wait_until(lambda: rig.alarm_state("tamper") == "cleared", timeout=2)
        assert rig.alarm_events() == [{"source": "tamper", "state": "active", "pin": 26},
                                      {"source": "tamper", "state": "cleared", "pin": 26}]
    finally:
        close_rig(rig)


def test_an_unwired_tamper_loop_is_an_alarm_at_start(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, inputs={"tamper": 26, "tamper_normally_closed": True})
    try:
        rig.start()
        assert rig.alarm_events() == [{"source": "tamper", "state": "active", "pin": 26}]
    finally:
        close_rig(rig)


def test_a_latched_alarm_is_reported_once_across_restarts(rig: Rig) -> None:
    rig.start()
    rig.pin(19).close_contact()
    wait_until(lambda: rig.alarm_state("panic") == "active", timeout=2)
    rig.restart()                         # the button is still latched
    rig.tick()
    assert [e["state"] for e in rig.alarm_events()] == ["active"]
    assert rig.shown("warning") == ("strobe", "alarm")
    rig.stop()
    rig.pin(19).open_contact()            # reset while the station was down
    rig.restart()
    assert [e["state"] for e in rig.alarm_events()] == ["active", "cleared"]
    rig.tick()
    assert rig.shown("warning") == ("alternate", "schedule")


def test_a_momentary_press_holds_the_alarm_for_panic_hold_s(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, inputs={"panic": 19, "debounce_ms": 10, "panic_hold_s": 1})
    try:
        rig.start()
        rig.pin(19).close_contact()
        wait_until(lambda: rig.alarm_state("panic") == "active", timeout=2)
        pressed = time.monotonic()
        rig.pin(19).open_contact()
        time.sleep(0.1)                   # released for ten debounce times
        rig.tick()
        assert rig.alarm_state("panic") == "active"

        def cleared() -> bool:
            rig.tick()
            return rig.alarm_state("panic") == "cleared"

        wait_until(cleared, timeout=3)
        assert time.monotonic() - pressed >= 0.9
    finally:
        close_rig(rig)


def test_no_camera_no_snapshot_request(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, cameras=[])
    try:
        rig.start()
        rig.pin(19).close_contact()
        wait_until(lambda: rig.alarm_state("panic") == "active", timeout=2)
        assert rig.journal.inbox_after(0) == []
    finally:
        close_rig(rig)


def test_an_input_whose_pin_fails_is_reported_and_tried_again(rig: Rig,
                                                              caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    squatter = DigitalInputDevice(19, pin_factory=rig.factory)
    part = rig.start()
    assert part.health()["panic"]["state"] == "error"
    assert "input panic: cannot open GPIO19" in caplog.text
    squatter.close()
    wait_until(lambda: (rig.tick(), part.inputs["panic"] is not None)[1], timeout=2)
    assert part.health()["panic"] == {"state": "normal", "pin": 19}


def test_a_panic_strobes_the_light_of_a_running_station_within_a_second(rig: Rig) -> None:
    with global_mock_factory() as factory:
        station = StationComponent(rig.ctx())
        station.start()
        try:
            assert station.started.wait(5)
            names = [p.name for p in station.parts]
            assert names.index("alarms") < names.index("lights")
            wait_until(lambda: rig.journal.state_get(device_key("warning")), timeout=2)
            pressed = time.monotonic()
            factory.pin(19).drive_low()
            wait_until(lambda: rig.journal.state_get(device_key("warning"))["mode"] == "strobe",
                       timeout=1.0)
            # The double flash on GPIO5: flash, gap, flash.
            wait_until(lambda: len(changes(factory.pin(5), pressed)) >= 3, timeout=1.0)
            factory.pin(19).drive_high()
            wait_until(lambda: rig.shown("warning") == ("alternate", "schedule"), timeout=1.0)
        finally:
            station.request_stop()
            assert station.join(5)
