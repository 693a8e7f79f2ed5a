"""What decides each light's mode: schedule, level, override, alarm, self-test.

The pure :func:`decide` is tested over every combination of its inputs; the
station part over a real journal, gpiozero's mock pins and a ManualClock,
with levels and overrides applied the way the uplink applies them (signed
documents through the CommandProcessor). Every event written is validated
against ``docs/schemas`` at the end of each test.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from astral import Observer
from astral.sun import sunrise, sunset
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from drivers.lights import modes_for
from firmware_py import topics
from firmware_py.clock import ManualClock, rfc3339_ms
from firmware_py.commands import CommandProcessor
from firmware_py.config import LightConfig, UnitConfig
from firmware_py.journal import Journal
from firmware_py.lights_control import (
    LOCK_NAME,
    TEST_KEY,
    LightsLock,
    LightsPart,
    SelfTest,
    SunCalendar,
    SunTimes,
    decide,
    device_key,
    in_windows,
    run_lights_check,
    schedule_on,
    self_test_plan,
    sun_times,
)
from firmware_py.runtime import UnitContext
from firmware_py.signing import SigningKey
from firmware_py.station import StationComponent, build_parts
from tests.support import schemas
from tests.support.brokers import Mosquitto
from tests.support.daemon import Daemon
from tests.support.gpio import changes, global_mock_factory, wait_until
from tests.support.units import make_config, write_unit_config
from tests.support.uplink import Watcher

SITE, UNIT = "zhuantang", "zt-pp-03"
TZ = ZoneInfo("Asia/Shanghai")
LAT, LON = 30.16, 120.08            # Zhuantang, Hangzhou
HOUR = 3600


def local_ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=TZ).timestamp() * 1000)


def at(h: int, mi: int = 0, day: date = date(2026, 6, 21)) -> datetime:
    return datetime(day.year, day.month, day.day, h, mi, tzinfo=TZ)


def light(pins: list[int], **kw: Any) -> LightConfig:
    return LightConfig.model_validate({"pins": pins, **kw})


LIGHTS = {
    "warning": {"pins": [5, 6], "schedule": "sunset-sunrise"},
    "lightbox": {"pins": [13], "active_high": False, "schedule": ["18:30-23:30", "04:30-06:30"]},
}


# -- the pure decision -----------------------------------------------------------------------


SCHEDULES: list[tuple[str, Any, bool]] = [
    # (label, schedule, on at 23:00 on the summer date)
    ("always", "always", True),
    ("never", "never", False),
    ("window in", ["22:00-02:00"], True),
    ("window out", ["08:30-11:20"], False),
    ("sun", "sunset-sunrise", True),
]
OVERRIDES = [None, *modes_for(2)]
TESTS = [None, *modes_for(2)]


@pytest.mark.parametrize("pins", [[13], [5, 6]], ids=["one pin", "two pins"])
@pytest.mark.parametrize("level_modes", [None, {1: "on"}], ids=["default levels", "level 1 only"])
def test_decide_applies_the_layers_in_rising_priority(pins: list[int],
                                                      level_modes: dict[int, str] | None) -> None:
    day = date(2026, 6, 21)
    sun = sun_times(LAT, LON, TZ, day)
    now = at(23, day=day)
    seen: set[str] = set()
    for (_, schedule, on), level, override, alarm, test in itertools.product(
            SCHEDULES, (1, 2, 3), OVERRIDES, (False, True), TESTS):
        if len(pins) == 1 and "alternate" in (override, test):
            continue
        cfg = light(pins, schedule=schedule, level_modes=level_modes)
        mode, reason = decide(cfg, now, sun, level, override, alarm, test)
        seen.add(reason)
        if test is not None:
            assert (mode, reason) == (test, "test")
        elif alarm:
            assert (mode, reason) == ("strobe", "alarm")
        elif override is not None:
            assert (mode, reason) == (override, "override")
        elif level in cfg.effective_level_modes:
            assert (mode, reason) == (cfg.effective_level_modes[level], "level")
        elif on:
            assert (mode, reason) == (cfg.effective_schedule_mode, "schedule")
        else:
            assert (mode, reason) == ("off", "schedule")
        assert mode in modes_for(len(pins))
    assert seen == {"schedule", "level", "override", "alarm", "test"}


def test_decide_defaults_from_the_config_contract() -> None:
    now, sun = at(12), sun_times(LAT, LON, TZ, date(2026, 6, 21))
    two, one = light([5, 6], schedule="always"), light([13], schedule="always")
    assert decide(two, now, sun, 3, None, False, None) == ("alternate", "schedule")
    assert decide(one, now, sun, 3, None, False, None) == ("on", "schedule")
    assert decide(two, now, sun, 2, None, False, None) == ("alternate", "level")
    assert decide(one, now, sun, 2, None, False, None) == ("blink", "level")
    assert decide(one, now, sun, 1, None, False, None) == ("strobe", "level")
    # Level 3 follows the schedule; an override "off" darkens even level 1.
    assert decide(light([13]), now, sun, 3, None, False, None) == ("off", "schedule")
    assert decide(one, now, sun, 1, "off", False, None) == ("off", "override")
    # A level the light has no mode for follows the schedule too.
    partial = light([13], schedule="never", level_modes={1: "strobe"})
    assert decide(partial, now, sun, 2, None, False, None) == ("off", "schedule")
    steady = light([13], schedule="never", schedule_mode="blink", level_modes={3: "on"})
    assert decide(steady, now, sun, 3, None, False, None) == ("on", "level")


def test_windows_include_their_start_exclude_their_end_and_may_cross_midnight() -> None:
    night = ["23:00-05:00"]
    for hh, mm, expected in [(22, 59, False), (23, 0, True), (0, 0, True), (2, 30, True),
                             (4, 59, True), (5, 0, False), (12, 0, False)]:
        assert in_windows(night, at(hh, mm)) is expected, (hh, mm)
    day = ["08:30-11:20", "13:00-17:30"]
    assert [in_windows(day, at(h, m)) for h, m in [(8, 29), (8, 30), (11, 19), (11, 20),
                                                   (12, 0), (13, 0), (17, 29), (17, 30)]] == \
        [False, True, True, False, False, True, True, False]


@pytest.mark.parametrize(("day", "rise_bounds", "set_bounds"), [
    (date(2026, 6, 21), ((4, 50), (5, 5)), ((19, 0), (19, 10))),     # summer solstice
    (date(2026, 12, 21), ((6, 45), (6, 59)), ((17, 0), (17, 10))),   # winter solstice
], ids=["summer", "winter"])
def test_sunset_and_sunrise_at_zhuantang(day: date, rise_bounds: tuple[tuple[int, int], ...],
                                         set_bounds: tuple[tuple[int, int], ...]) -> None:
    sun = sun_times(LAT, LON, TZ, day)
    assert sun.sunrise is not None and sun.sunset is not None and sun.polar is None
    observer = Observer(LAT, LON)
    assert sun.sunrise == sunrise(observer, day, tzinfo=TZ)
    assert sun.sunset == sunset(observer, day, tzinfo=TZ)
    assert sun.sunrise.date() == day == sun.sunset.date()
    assert at(*rise_bounds[0], day=day) <= sun.sunrise <= at(*rise_bounds[1], day=day)
    assert at(*set_bounds[0], day=day) <= sun.sunset <= at(*set_bounds[1], day=day)
    cfg = light([5, 6], schedule="sunset-sunrise")
    assert schedule_on(cfg, at(23, day=day), sun)
    assert schedule_on(cfg, at(3, day=day), sun)
    assert not schedule_on(cfg, at(12, day=day), sun)
    assert not schedule_on(cfg, sun.sunset - timedelta(minutes=1), sun)
    assert schedule_on(cfg, sun.sunset + timedelta(seconds=1), sun)
    assert schedule_on(cfg, sun.sunrise - timedelta(seconds=1), sun)
    assert not schedule_on(cfg, sun.sunrise, sun)


def test_polar_day_and_night_need_no_sunset() -> None:
    tz = ZoneInfo("Arctic/Longyearbyen")
    summer = sun_times(78.2, 15.6, tz, date(2026, 6, 21))
    winter = sun_times(78.2, 15.6, tz, date(2026, 12, 21))
    assert (summer.polar, winter.polar) == ("day", "night")
    cfg = light([13], schedule="sunset-sunrise")
    noon = datetime(2026, 6, 21, 12, tzinfo=tz)
    assert not schedule_on(cfg, noon, summer)
    assert schedule_on(cfg, noon.replace(month=12), winter)


def test_sun_times_are_computed_once_per_day() -> None:
    cal = SunCalendar(LAT, LON, TZ)
    for _ in range(50):
        cal.on(date(2026, 6, 21))
    cal.on(date(2026, 6, 22))
    assert cal.computed == 2


def test_an_unknown_local_time_keeps_scheduled_lights_lit() -> None:
    sun = SunTimes(None, None)
    assert schedule_on(light([13], schedule=["18:00-19:00"]), None, sun)
    assert schedule_on(light([13], schedule="sunset-sunrise"), None, None)
    assert not schedule_on(light([13], schedule="never"), None, None)


def test_the_self_test_plan_shows_every_mode_of_each_light_in_turn(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, unit={"latitude": LAT, "longitude": LON}, lights=LIGHTS)
    plan = self_test_plan(cfg, ["warning", "lightbox"])
    assert plan == [("warning", "on"), ("warning", "blink"), ("warning", "strobe"),
                    ("warning", "alternate"), ("warning", "off"),
                    ("lightbox", "on"), ("lightbox", "blink"), ("lightbox", "strobe"),
                    ("lightbox", "off")]
    test = SelfTest("t", ["warning", "lightbox"], plan, 2.0, started=100.0)
    assert test.mode_for("warning", 100.0) == "on"
    assert test.mode_for("lightbox", 100.0) == "off"
    assert test.mode_for("warning", 107.9) == "alternate"
    assert test.mode_for("lightbox", 110.0) == "on"
    assert test.mode_for("other", 100.0) is None
    assert test.duration_s == 18.0 and not test.finished(117.9) and test.finished(118.0)
    assert test.mode_for("lightbox", 118.0) is None


# -- the station part ------------------------------------------------------------------------


@dataclass
class Rig:
    """A unit's lights side: config, journal, ManualClock, mock pins, the centre's key."""

    tmp: Path
    config: UnitConfig
    clock: ManualClock
    factory: MockFactory
    key: SigningKey
    journal: Journal
    proc: CommandProcessor
    part: LightsPart | None = None
    journals: list[Journal] = field(default_factory=list)

    def ctx(self) -> UnitContext:
        return UnitContext(self.config, self.journal, self.clock, threading.Event())

    def start(self, **kw: Any) -> LightsPart:
        kw.setdefault("pin_factory", self.factory)
        self.part = LightsPart(self.ctx(), **kw)
        self.part.open()
        return self.part

    def tick(self, now: float | None = None) -> None:
        assert self.part is not None
        self.part.tick(self.clock.monotonic() if now is None else now)

    def restart(self, advance_s: float = 0.0) -> LightsPart:
        """Stop, let time pass (the power is off), and start from the journal file."""
        assert self.part is not None
        self.part.close()
        self.journal.close()
        self.clock.advance(advance_s)
        self.journal = Journal(self.tmp / "journal.db", unit=UNIT, site=SITE, clock=self.clock)
        self.journals.append(self.journal)
        self.proc = CommandProcessor(self.config, self.journal, self.clock)
        return self.start()

    def send(self, name: str, args: dict[str, Any]) -> None:
        self.clock.advance(1)             # documents are ordered by issued_at
        now = self.clock.wall_ms()
        env = self.key.sign_envelope(name, args, site=SITE, units=["*"],
                                     issued_at=rfc3339_ms(now),
                                     expires_at=rfc3339_ms(now + 30 * 86400 * 1000))
        out = self.proc.handle(topics.desired(SITE, UNIT, name), json.dumps(env).encode())
        assert out.result == "applied", out

    def level(self, level: int, ttl_s: int) -> None:
        self.send("level", {"level": level,
                            "expires_at": rfc3339_ms(self.clock.wall_ms() + 1000 + ttl_s * 1000)})

    def override(self, lights: dict[str, str], ttl_s: int) -> None:
        self.send("lights", {"lights": lights,
                             "expires_at": rfc3339_ms(self.clock.wall_ms() + 1000 + ttl_s * 1000)})

    def events(self, kind: str = "lights", after: int = 0) -> list[dict[str, Any]]:
        return [e.data for e in self.journal.events_after(after, limit=10_000, kinds=[kind])]

    def shown(self, name: str) -> tuple[str, str]:
        state = self.journal.state_get(device_key(name))
        return state["mode"], state["reason"]


def make_rig(tmp_path: Path, clock: ManualClock | None = None, **sections: Any) -> Rig:
    key = SigningKey.generate("centre-test")
    doc: dict[str, Any] = {
        "unit": {"latitude": LAT, "longitude": LON},
        "security": {"command_keys": {"centre-test": key.public_b64()}},
        "lights": LIGHTS,
        "cameras": [{"name": "gate", "source": "gate.mp4"}],
    }
    doc.update(sections)
    config = make_config(tmp_path, **doc)
    clock = clock or ManualClock(wall_ms=local_ms(2026, 6, 21, 12), synced=True)
    journal = Journal(tmp_path / "journal.db", unit=UNIT, site=SITE, clock=clock)
    return Rig(tmp_path, config, clock, MockFactory(), key, journal,
               CommandProcessor(config, journal, clock), journals=[journal])


def validate_events(journal: Journal) -> None:
    for event in journal.events_after(0, limit=100_000):
        schemas.validate(topics.event(SITE, UNIT, event.kind), event.envelope())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    if r.part is not None:
        r.part.close()
    validate_events(r.journal)
    for j in r.journals:
        j.close()
    r.factory.reset()


def test_the_schedule_lights_the_warning_light_at_night_not_at_noon(rig: Rig) -> None:
    rig.start()
    rig.tick()
    assert rig.events() == [
        {"light": "warning", "mode": "off", "reason": "schedule", "previous": None,
         "start": True},
        {"light": "lightbox", "mode": "off", "reason": "schedule", "previous": None,
         "start": True},
    ]
    assert rig.factory.pin(5).state is False and rig.factory.pin(13).state is True  # active-low
    rig.clock.advance(11 * HOUR)                                  # 23:00
    rig.tick()
    assert rig.shown("warning") == ("alternate", "schedule")
    assert rig.shown("lightbox") == ("on", "schedule")
    assert rig.factory.pin(13).state is False                     # relay pulled in
    health = rig.journal.state_get(device_key("warning"))
    assert health == {"state": "alternate", "mode": "alternate", "reason": "schedule",
                      "pins": [5, 6], "active_high": True}
    assert rig.part is not None and rig.part.lights["warning"] is not None
    assert rig.part.lights["warning"].mode == "alternate"
    rig.clock.advance(1 * HOUR)                                   # 00:00: box window over
    rig.tick()
    assert rig.shown("lightbox") == ("off", "schedule")
    rig.clock.advance(6 * HOUR)                                   # 06:00: the sun is up
    rig.tick()
    assert rig.shown("warning") == ("off", "schedule")
    assert rig.shown("lightbox") == ("on", "schedule")            # morning window
    assert len(rig.events()) == 7                                 # one per change


def test_winter_evenings_light_up_earlier(rig: Rig) -> None:
    rig.clock.set_wall(local_ms(2026, 12, 21, 17, 30))
    rig.start()
    rig.tick()
    assert rig.shown("warning") == ("alternate", "schedule")
    rig.clock.set_wall(local_ms(2026, 12, 22, 12, 0))
    rig.tick()
    assert rig.shown("warning") == ("off", "schedule")


def test_an_unsynchronised_clock_keeps_scheduled_lights_lit(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, clock=ManualClock(wall_ms=local_ms(2026, 6, 21, 12), synced=False))
    try:
        rig.start()
        rig.tick()
        assert rig.shown("warning") == ("alternate", "schedule")
        assert rig.shown("lightbox") == ("on", "schedule")
        rig.clock.set_synced(True)                                # NTP: it is noon
        rig.tick()
        assert rig.shown("warning") == ("off", "schedule")
    finally:
        assert rig.part is not None
        rig.part.close()
        validate_events(rig.journal)
        rig.journal.close()


def test_the_level_beats_the_schedule_and_falls_back_when_it_expires(rig: Rig) -> None:
    rig.start()
    rig.tick()
    rig.level(1, ttl_s=HOUR)
    rig.tick()
    assert rig.shown("warning") == ("strobe", "level")
    assert rig.shown("lightbox") == ("strobe", "level")
    rig.level(2, ttl_s=HOUR)
    rig.tick()
    assert rig.shown("warning") == ("alternate", "level")
    assert rig.shown("lightbox") == ("blink", "level")
    rig.clock.advance(HOUR + 1)
    rig.tick()
    assert rig.shown("warning") == ("off", "schedule")


def test_level_expiry_across_a_restart_falls_back_with_an_event(rig: Rig) -> None:
    rig.start()
    rig.level(1, ttl_s=HOUR)
    rig.tick()
    assert rig.shown("warning") == ("strobe", "level")
    before = rig.journal.last_seq()
    rig.restart(advance_s=2 * HOUR)                               # 14:00, level ended
    rig.tick()
    assert rig.events(after=before) == [
        {"light": "warning", "mode": "off", "reason": "schedule", "previous": "strobe",
         "start": True},
        {"light": "lightbox", "mode": "off", "reason": "schedule", "previous": "strobe",
         "start": True},
    ]


def test_a_restart_journals_what_each_light_shows_even_when_unchanged(rig: Rig) -> None:
    rig.start()
    rig.level(1, ttl_s=6 * HOUR)
    rig.tick()
    before = rig.journal.last_seq()
    rig.restart(advance_s=60)
    rig.tick()
    rig.tick()
    # The centre learns the light is still strobing (and why) from the restarted unit.
    assert rig.shown("warning") == ("strobe", "level")
    assert rig.events(after=before) == [
        {"light": "warning", "mode": "strobe", "reason": "level", "previous": "strobe",
         "start": True},
        {"light": "lightbox", "mode": "strobe", "reason": "level", "previous": "strobe",
         "start": True},
    ]
    assert rig.part is not None and rig.part.lights["warning"] is not None
    assert rig.part.lights["warning"].mode == "strobe"            # the pins show it again
    after_start = rig.journal.last_seq()
    rig.clock.advance(60)
    rig.tick()
    assert rig.events(after=after_start) == []                    # once per start, not per turn


def test_an_override_beats_the_level_for_the_lights_it_names_until_it_expires(rig: Rig) -> None:
    rig.start()
    rig.level(1, ttl_s=6 * HOUR)
    rig.override({"warning": "on"}, ttl_s=HOUR)
    rig.tick()
    assert rig.shown("warning") == ("on", "override")
    assert rig.shown("lightbox") == ("strobe", "level")           # not named: level rules
    rig.override({"warning": "off", "lightbox": "off"}, ttl_s=HOUR)
    rig.tick()
    assert rig.shown("warning") == ("off", "override")
    assert rig.shown("lightbox") == ("off", "override")
    before = rig.journal.last_seq()
    rig.restart(advance_s=HOUR + 60)                              # override over, level not
    rig.tick()
    assert rig.events(after=before) == [
        {"light": "warning", "mode": "strobe", "reason": "level", "previous": "off",
         "start": True},
        {"light": "lightbox", "mode": "strobe", "reason": "level", "previous": "off",
         "start": True},
    ]


def test_an_active_panic_alarm_strobes_the_alarm_lights_and_clearing_restores(rig: Rig) -> None:
    rig.clock.advance(11 * HOUR)                                  # 23:00: both lit
    rig.start()
    rig.override({"lightbox": "blink"}, ttl_s=6 * HOUR)
    rig.tick()
    assert rig.shown("warning") == ("alternate", "schedule")
    rig.journal.append("alarm", {"source": "panic", "state": "active"},
                       state={"alarm/panic": {"state": "active"}})
    rig.tick()
    assert rig.shown("warning") == ("strobe", "alarm")
    assert rig.shown("lightbox") == ("blink", "override")         # not an alarm light
    rig.journal.append("alarm", {"source": "tamper", "state": "active"},
                       state={"alarm/tamper": {"state": "active"}})
    rig.journal.append("alarm", {"source": "panic", "state": "cleared"},
                       state={"alarm/panic": {"state": "cleared"}})
    rig.tick()
    assert rig.shown("warning") == ("alternate", "schedule")      # tamper lights nothing
    assert rig.events()[-1] == {"light": "warning", "mode": "alternate", "reason": "schedule",
                                "previous": "strobe"}


def test_alarm_lights_are_configurable(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, inputs={"panic": 19, "alarm_lights": ["warning", "lightbox"]})
    try:
        rig.start()
        rig.journal.state_set("alarm/panic", {"state": "active"})
        rig.tick()
        assert rig.shown("warning") == ("strobe", "alarm")
        assert rig.shown("lightbox") == ("strobe", "alarm")
    finally:
        assert rig.part is not None
        rig.part.close()
        rig.journal.close()


def test_the_self_test_cycles_every_light_and_then_gives_them_back(rig: Rig) -> None:
    rig.start(test_step_s=1.0)
    rig.level(2, ttl_s=6 * HOUR)
    rig.tick(1000.0)
    rig.journal.inbox_put("cmd-test-1", "lights.test", {})
    rig.tick(1000.0)
    record = rig.journal.state_get(TEST_KEY)
    assert record["id"] == "cmd-test-1" and record["state"] == "running"
    assert record["lights"] == ["warning", "lightbox"] and len(record["steps"]) == 9
    rig.journal.state_set("alarm/panic", {"state": "active"})    # the test outranks it
    seen: list[tuple[str, str]] = []
    for i in range(9):
        rig.tick(1000.0 + i + 0.5)
        seen.append((rig.shown("warning")[0], rig.shown("lightbox")[0]))
        assert rig.shown("warning")[1] == rig.shown("lightbox")[1] == "test"
        if rig.part and (pins := rig.part.lights["warning"]):
            assert pins.mode == seen[-1][0]
    assert seen == [("on", "off"), ("blink", "off"), ("strobe", "off"), ("alternate", "off"),
                    ("off", "off"), ("off", "on"), ("off", "blink"), ("off", "strobe"),
                    ("off", "off")]
    rig.tick(1009.0)
    assert rig.journal.state_get(TEST_KEY)["state"] == "done"
    assert rig.shown("warning") == ("strobe", "alarm")
    rig.journal.state_set("alarm/panic", None)
    rig.tick(1009.1)
    assert rig.shown("lightbox") == ("blink", "level")
    tests = [e for e in rig.events() if e["reason"] == "test"]
    assert {e["test"] for e in tests} == {"cmd-test-1"}
    assert [e["mode"] for e in tests if e["light"] == "warning"] == \
        ["on", "blink", "strobe", "alternate", "off"]


def test_a_self_test_of_named_lights_with_its_own_step_time(rig: Rig) -> None:
    rig.start()
    rig.tick(1000.0)
    rig.journal.inbox_put("cmd-test-2", "lights.test",
                          {"lights": ["lightbox", "siren"], "seconds": 5})
    rig.tick(1000.0)
    record = rig.journal.state_get(TEST_KEY)
    assert record["lights"] == ["lightbox"] and record["seconds"] == 5
    assert rig.shown("lightbox") == ("on", "test")
    assert rig.shown("warning") == ("off", "schedule")            # not under test
    rig.tick(1004.9)
    assert rig.shown("lightbox") == ("on", "test")
    rig.tick(1005.0)
    assert rig.shown("lightbox") == ("blink", "test")
    rig.tick(1020.0)
    assert rig.journal.state_get(TEST_KEY)["state"] == "done"
    assert rig.shown("lightbox") == ("off", "schedule")
    # Done once: a restart does not run it again.
    rig.restart()
    rig.tick(2000.0)
    assert rig.part is not None and rig.part.test is None


def test_pins_that_fail_to_open_are_reported_and_tried_again(rig: Rig,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    squatter = DigitalOutputDevice(13, pin_factory=rig.factory)
    part = rig.start(retry_s=10.0)
    rig.tick(1000.0)
    # A light that cannot show anything is not reported as showing a mode: not in its
    # event, not in the state health and the birth status read.
    state = rig.journal.state_get(device_key("lightbox"))
    assert state["state"] == "error" and state["mode"] == "error" and "GPIO13" in state["detail"]
    assert (state["reason"], state["wanted"], state["wanted_reason"]) == \
        ("error", "off", "schedule")
    (event,) = [e for e in rig.events() if e["light"] == "lightbox"]
    assert event == {"light": "lightbox", "mode": "error", "reason": "error",
                     "detail": state["detail"], "wanted": "off", "wanted_reason": "schedule",
                     "previous": None, "start": True}
    assert rig.shown("warning") == ("off", "schedule")
    assert "light lightbox: cannot open GPIO13" in caplog.text
    assert "light lightbox: off (schedule)" not in caplog.text
    health = part.health()["lightbox"]
    assert (health["state"], health["mode"], health["reason"]) == ("error", "error", "error")
    rig.clock.advance(11 * HOUR)                                  # 23:00: the box is wanted on
    rig.tick(1002.0)
    state = rig.journal.state_get(device_key("lightbox"))
    assert (state["mode"], state["wanted"]) == ("error", "on")
    assert [e["mode"] for e in rig.events() if e["light"] == "lightbox"] == ["error"]
    squatter.close()
    rig.tick(1005.0)                                              # not yet
    assert part.lights["lightbox"] is None
    rig.tick(1010.0)
    assert part.lights["lightbox"] is not None
    assert rig.journal.state_get(device_key("lightbox"))["state"] == "on"
    assert part.health()["lightbox"] == {"state": "on", "mode": "on", "reason": "schedule"}
    assert [e for e in rig.events() if e["light"] == "lightbox"][-1] == \
        {"light": "lightbox", "mode": "on", "reason": "schedule", "previous": "error"}


def test_the_part_holds_the_lights_lock_and_waits_while_a_check_holds_it(rig: Rig) -> None:
    lock_path = rig.config.unit.runtime_dir / LOCK_NAME
    check = LightsLock(lock_path)
    assert check.acquire()
    part = rig.start()
    rig.tick(1000.0)
    assert part.busy is not None and part.lights["warning"] is None
    assert rig.events() == []                                     # the check's to record
    assert part.health()["warning"]["state"] == "busy"
    check.release()
    rig.tick(1001.0)
    assert part.busy is None and part.lights["warning"] is not None
    assert rig.shown("warning") == ("off", "schedule")
    other = LightsLock(lock_path)
    assert not other.acquire()
    assert other.holder().startswith("pid ")
    part.close()
    assert other.acquire()
    other.release()


def test_build_parts_adds_lights_and_alarms_when_configured(rig: Rig) -> None:
    # Other features add their own parts: look only at these two.
    def ours() -> list[str]:
        return [p.name for p in build_parts(rig.ctx()) if p.name in ("alarms", "lights")]

    assert ours() == ["lights"]
    rig.config = make_config(rig.tmp, unit={"latitude": LAT, "longitude": LON},
                             lights=LIGHTS, inputs={"panic": 19})
    assert ours() == ["alarms", "lights"]         # an alarm is recorded before lights decide
    rig.config = make_config(rig.tmp)
    assert ours() == []


# -- the running station ---------------------------------------------------------------------


@pytest.fixture
def station(rig: Rig) -> Iterator[StationComponent]:
    with global_mock_factory() as factory:
        rig.factory = factory
        component = StationComponent(rig.ctx())
        component.start()
        assert component.started.wait(5)
        yield component
        component.request_stop()
        assert component.join(5)


def test_a_level_change_reaches_the_running_station_within_a_second(rig: Rig,
                                                                    station: StationComponent
                                                                    ) -> None:
    wait_until(lambda: rig.journal.state_get(device_key("warning")), timeout=2)
    assert rig.shown("warning") == ("off", "schedule")
    sent = time.monotonic()
    rig.level(1, ttl_s=HOUR)
    wait_until(lambda: rig.shown("warning") == ("strobe", "level"), timeout=1.0)
    assert time.monotonic() - sent < 1.0
    # And the pins show it: the double flash has begun on GPIO5.
    wait_until(lambda: len(changes(rig.factory.pin(5), sent)) >= 2, timeout=1.0)


def test_check_lights_asks_a_running_station_through_the_journal(rig: Rig,
                                                                  station: StationComponent
                                                                  ) -> None:
    wait_until(lambda: rig.journal.state_get(device_key("warning")), timeout=2)
    out = io.StringIO()
    code = run_lights_check(rig.config, names=["warning"], seconds=0.4, out=out, clock=rig.clock)
    text = out.getvalue()
    assert code == 0, text
    assert "a station (pid" in text and "asked it to run test check-" in text
    for mode in ("on", "blink", "strobe", "alternate", "off"):
        assert f"  warning: {mode} (test)" in text
    assert "  warning: off (schedule)" in text                    # given back
    assert text.rstrip().endswith("done")
    tests = [e for e in rig.events() if e["reason"] == "test"]
    assert [e["mode"] for e in tests] == ["on", "blink", "strobe", "alternate", "off"]
    assert tests[0]["test"].startswith("check-")


def test_check_lights_drives_the_pins_itself_when_no_station_runs(rig: Rig) -> None:
    out = io.StringIO()
    start = time.monotonic()
    code = run_lights_check(rig.config, seconds=0.25, pin_factory=rig.factory, out=out,
                            clock=rig.clock)
    text = out.getvalue()
    assert code == 0, text
    assert "no station holds the lights; driving them here (MockFactory)" in text
    assert "  warning: alternate for 0.25 s (GPIO5, GPIO6)" in text
    assert "  lightbox: strobe for 0.25 s (GPIO13)" in text
    # Each pin went through its patterns, and all are off (relay released) at the end.
    assert len(changes(rig.factory.pin(6), start)) >= 4
    assert len(changes(rig.factory.pin(13), start)) >= 4
    assert rig.factory.pin(13).state is True
    tests = rig.events()
    assert {e["reason"] for e in tests} == {"test"}
    assert [e["mode"] for e in tests if e["light"] == "lightbox"] == \
        ["off", "on", "blink", "strobe", "off"]
    # The station that starts next reports what it shows, from what the check left.
    rig.start()
    rig.tick()
    assert rig.events()[-1]["previous"] == "off"


def test_check_lights_without_a_journal_creates_none(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, lights={"beacon": {"pins": [5]}})
    factory = MockFactory()
    out = io.StringIO()
    assert run_lights_check(cfg, seconds=0.05, pin_factory=factory, out=out) == 0
    assert not cfg.journal_path.exists()
    assert run_lights_check(cfg, names=["siren"], out=out) == 1
    assert "no light siren here (has: beacon)" in out.getvalue()


def test_check_lights_fails_clearly_when_the_holder_does_not_answer(rig: Rig) -> None:
    holder = LightsLock(rig.config.unit.runtime_dir / LOCK_NAME)
    assert holder.acquire()
    try:
        out = io.StringIO()
        code = run_lights_check(rig.config, seconds=1, out=out, clock=rig.clock, pickup_s=0.3)
        assert code == 1
        assert "did not start the test within 0.3 s" in out.getvalue()
        # The request stays in the inbox for the station to run when it gets to it.
        assert [e.name for e in rig.journal.inbox_after(0)] == ["lights.test"]
    finally:
        holder.release()


def test_xunfang_check_lights_on_mock_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gpiozero import Device

    from firmware_py.cli import main

    path = write_unit_config(tmp_path / "unit.toml", tmp_path / "data",
                             lights={"beacon": {"pins": [5]}})
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    before = Device.pin_factory
    Device.pin_factory = None                     # let gpiozero pick it from the environment
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level   # main() points logging at capsys
    try:
        assert main(["check", "lights", "-c", str(path), "--seconds", "0.05"]) == 0
        assert "driving them here (MockFactory)" in capsys.readouterr().out
        assert main(["check", "lights", "-c", str(path), "--seconds", "0"]) == 2
    finally:
        root.handlers[:], root.level = handlers, level
        if Device.pin_factory is not None:
            Device.pin_factory.close()
        Device.pin_factory = before


# -- as a new user runs it: no GPIO, no mock pins ---------------------------------------------


def _lights_events(journal_path: Path) -> list[dict[str, Any]]:
    if not journal_path.exists():
        return []
    with Journal(journal_path, unit=UNIT, site=SITE) as journal:
        return [e.data for e in journal.events_after(0, kinds=["lights"])]


def test_lights_that_cannot_open_their_pins_say_error_in_events_health_and_birth(
        tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real daemon with gpiozero's default pin factory on a machine without GPIO
    (``GPIOZERO_PIN_FACTORY`` unset), stopped and started again."""
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    data = tmp_path / "data"
    config = write_unit_config(tmp_path / "unit.toml", data,
                               mqtt={"port": mosquitto.port, "health_interval_s": 5},
                               lights={"warning": {"pins": [5, 6], "schedule": "always"}})
    station = Daemon(config, tmp_path / "station.log", ("station",))
    station.start()
    try:
        wait_until(lambda: _lights_events(data / "journal.db"), timeout=20, step=0.2)
    finally:
        station.stop()
        print(f"--- station log ---\n{station.text()[-5000:]}")
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    unit = Daemon(config, tmp_path / "unit.log", ("station", "uplink"))
    unit.start()
    try:
        birth = watcher.wait_status(True, timeout=20)
        assert birth.doc["lights"] == {"warning": "error"}
        events = watcher.wait_events(
            lambda evs: len([e for e in evs if e["kind"] == "lights"]) >= 2, 20,
            "a lights event from each start")
        health = wait_until(lambda: [s.doc for s in watcher.on("health")
                                     if s.doc["lights"]["warning"]["state"] != "unknown"],
                            timeout=20)[-1]
    finally:
        unit.stop()
        print(f"--- unit log ---\n{unit.text()[-5000:]}")
    lights = [e["data"] for e in events if e["kind"] == "lights"]
    for event in lights:
        # Never "alternate" as if it were showing: what it would show is only "wanted".
        assert (event["mode"], event["reason"]) == ("error", "error"), event
        assert event["wanted"] == "alternate" and event["wanted_reason"] == "schedule"
        assert "cannot open GPIO5/6" in event["detail"] and event["start"] is True
    warning = health["lights"]["warning"]
    assert (warning["state"], warning["mode"], warning["reason"]) == ("error", "error", "error")
    assert "cannot open GPIO5/6" in warning["detail"]
    assert "light warning: alternate" not in station.text() + unit.text()
    assert "no GPIO on this machine? GPIOZERO_PIN_FACTORY=mock runs the unit without it" in \
        station.text()
