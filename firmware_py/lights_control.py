"""What each light shows, and why: schedule, alert level, override, alarm, self-test.

The station's :class:`LightsPart` owns the unit's :class:`~drivers.lights.WarningLight`
s. Every turn (at least every 0.25 s, and at once when the journal changes)
it gathers what decides a light's mode and asks the pure function
:func:`decide`, which applies these layers in rising priority:

1. ``schedule``: the light's base schedule (``always``, ``never``, fixed
   windows in local time that may cross midnight, or sunset to sunrise at the
   unit's latitude and longitude, computed with ``astral`` once per day). On:
   ``schedule_mode``; otherwise ``off``.
2. ``level``: the alert level in force (:func:`firmware_py.desired.current_level`,
   kept in the journal, so it survives a restart and falls back when it
   expires). A level with a mode in ``level_modes`` shows it; a level without
   one (by default level 3) follows the schedule.
3. ``override``: the centre's ``desired/lights`` document, for the lights it
   names, until it expires (:func:`firmware_py.desired.current_lights_override`).
4. ``alarm``: an active panic alarm (``alarm/panic`` in the journal's state,
   written by :mod:`firmware_py.alarms`) strobes the lights in
   ``[inputs] alarm_lights`` (default: the light named ``warning``).
5. ``test``: the self-test (``lights.test`` from the inbox, or ``xunfang
   check lights``) cycles each light through every mode it has.

A light's ``reason`` is the layer that decided its mode, ``off`` included
(``off`` for the schedule says "nothing asks for light now"). Every change of
mode or reason is a ``lights`` event ``{light, mode, reason, previous}`` and
updates the health object ``device/lights/{name}`` in the same transaction;
the first one after the station starts is written even when nothing changed
(``start: true``), so the centre knows what a restarted unit shows.

A light that cannot show anything (its pins would not open) is never
reported as showing a mode: its mode and reason are ``error`` in the event,
the health object and so in the birth status, with ``detail`` (why) and
``wanted``/``wanted_reason`` (what it would show).

Time: the schedule needs the local time, and a Pi without RTC may not know
it. While the clock is not synchronised, a light with a window or
sunset-sunrise schedule counts as *scheduled on* (fail-lit: a deterrent light
dark at night defeats its purpose; lit by day until NTP runs costs nothing).
Levels and overrides follow :mod:`firmware_py.desired`'s time rules.

Who holds the pins: the part holds ``{runtime_dir}/lights.lock`` (an
``flock``) while it drives the lights. ``xunfang check lights`` tries that
lock: if a station holds it, the check asks the station through the journal
(an inbox ``lights.test`` entry with a local id) and prints the events;
otherwise it drives the pins itself (:func:`run_lights_check`).

The alert level also sets the patrol check-in's expected round interval
(``[patrol] round_every_min``) and the camera's mode; those features read the
same :func:`~firmware_py.desired.current_level` (see ``docs/lights.md``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import IO, Any, ClassVar
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import elevation, sunrise, sunset
from gpiozero.exc import BadPinFactory

from drivers.lights import LightError, WarningLight, modes_for

from .clock import Clock, SystemClock, rfc3339_ms
from .config import LightConfig, UnitConfig, parse_window
from .desired import InboxReader, current_level, current_lights_override
from .exc import JournalError
from .journal import InboxEntry, Journal
from .parts import StationPart
from .patrol import DUTY_KEY
from .runtime import UnitContext

log = logging.getLogger("xunfang.lights")

__all__ = [
    "REASONS",
    "TEST_KEY",
    "LightsLock",
    "LightsPart",
    "SelfTest",
    "SunCalendar",
    "SunTimes",
    "decide",
    "device_key",
    "in_windows",
    "run_lights_check",
    "schedule_on",
    "self_test_plan",
    "sun_times",
]

REASONS = ("schedule", "level", "override", "alarm", "test")
#: Mode and reason reported for a light that cannot show anything.
FAULT = "error"
#: Said when gpiozero finds no GPIO at all (a PC, a container): what to do about it.
NO_GPIO_HINT = "; no GPIO on this machine? GPIOZERO_PIN_FACTORY=mock runs the unit without it"
#: The mode an active alarm gives its lights.
ALARM_MODE = "strobe"
#: The alarm source that drives lights (a tamper alarm does not: see docs/lights.md).
LIGHT_ALARM_SOURCE = "panic"
#: The self-test in progress or last run: {id, state: running|done, lights, seconds, steps,
#: started, ended}.
TEST_KEY = "lights/test"
LOCK_NAME = "lights.lock"
#: Seconds each mode is shown in the self-test unless the command says otherwise.
TEST_STEP_S = 3.0
MAX_TEST_STEP_S = 600.0


def device_key(name: str) -> str:
    """The state key of light ``name``'s health object (the uplink reports it)."""
    return f"device/lights/{name}"


# -- the sun ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SunTimes:
    """Sunrise and sunset of one local day; ``polar`` is "day" or "night" when there are none."""

    sunrise: datetime | None
    sunset: datetime | None
    polar: str | None = None


def sun_times(latitude: float, longitude: float, tz: ZoneInfo, day: date) -> SunTimes:
    """Sunrise and sunset on local ``day`` at a place (astral, sea-level horizon)."""
    observer = Observer(latitude, longitude)
    try:
        return SunTimes(sunrise(observer, day, tzinfo=tz), sunset(observer, day, tzinfo=tz))
    except ValueError:
        # astral raises when the sun stays up or down all day (polar day or night).
        noon = datetime.combine(day, dtime(12), tzinfo=tz)
        return SunTimes(None, None, "day" if elevation(observer, noon) > 0 else "night")


class SunCalendar:
    """:func:`sun_times` for one place, computed once per local day."""

    def __init__(self, latitude: float, longitude: float, tz: ZoneInfo) -> None:
        self.latitude, self.longitude, self.tz = latitude, longitude, tz
        self._cache: dict[date, SunTimes] = {}
        self.computed = 0

    def on(self, day: date) -> SunTimes:
        times = self._cache.get(day)
        if times is None:
            times = sun_times(self.latitude, self.longitude, self.tz, day)
            self.computed += 1
            if len(self._cache) >= 4:
                self._cache.clear()
            self._cache[day] = times
        return times


# -- the decision ----------------------------------------------------------------------------


def in_windows(windows: Iterable[str], now_local: datetime) -> bool:
    """True when ``now_local`` falls in one of the ``HH:MM-HH:MM`` windows.

    A window includes its start minute and excludes its end minute; one whose
    end is before its start crosses midnight (``23:00-05:00``).
    """
    minute = now_local.hour * 60 + now_local.minute
    for window in windows:
        start, end = parse_window(window)
        if start < end:
            if start <= minute < end:
                return True
        elif minute >= start or minute < end:
            return True
    return False


def schedule_on(light: LightConfig, now_local: datetime | None, sun: SunTimes | None,
                on_duty: bool = False) -> bool:
    """Whether the light's base schedule asks for light at ``now_local``.

    ``now_local`` None means the local time is not known (clock not
    synchronised): time-dependent schedules then count as on (fail-lit).
    ``sun`` is that day's :class:`SunTimes`, needed for ``sunset-sunrise``;
    ``on_duty`` whether anyone is on duty, for ``on-duty`` (a vehicle's roof
    light is lit while its crew is on patrol).
    """
    schedule = light.schedule
    if schedule == "always":
        return True
    if schedule == "on-duty":
        return on_duty
    if schedule == "never":
        return False
    if now_local is None:
        return True
    if isinstance(schedule, list):
        return in_windows(schedule, now_local)
    # "sunset-sunrise"
    if sun is None:
        return True
    if sun.polar is not None:
        return sun.polar == "night"
    assert sun.sunrise is not None and sun.sunset is not None
    if sun.sunrise < sun.sunset:
        return not sun.sunrise <= now_local < sun.sunset
    return sun.sunset <= now_local < sun.sunrise


def decide(light: LightConfig, now_local: datetime | None, sun: SunTimes | None, level: int,
           override: str | None, alarm_active: bool,
           test_mode: str | None, on_duty: bool = False) -> tuple[str, str]:
    """``(mode, reason)`` of one light. Pure: everything it needs is an argument.

    In rising priority: schedule, level, override, alarm, test (module doc).
    ``override`` is the override's mode for this light (None: not named);
    ``alarm_active`` whether an active alarm drives this light; ``test_mode``
    the self-test's mode for it (None: not under test); ``on_duty`` whether
    anyone is on duty (for the ``on-duty`` schedule).
    """
    if test_mode is not None:
        return test_mode, "test"
    if alarm_active:
        return ALARM_MODE, "alarm"
    if override is not None:
        return override, "override"
    level_mode = light.effective_level_modes.get(level)
    if level_mode is not None:
        return level_mode, "level"
    if schedule_on(light, now_local, sun, on_duty):
        return light.effective_schedule_mode, "schedule"
    return "off", "schedule"


# -- the self-test ---------------------------------------------------------------------------


def self_test_plan(config: UnitConfig, names: Iterable[str]) -> list[tuple[str, str]]:
    """The self-test's steps: each light in turn through on, blink, strobe, (alternate), off."""
    steps: list[tuple[str, str]] = []
    for name in names:
        modes = modes_for(len(config.lights[name].pins))
        steps += [(name, m) for m in modes if m != "off"] + [(name, "off")]
    return steps


@dataclass
class SelfTest:
    """A self-test in progress: one step every ``step_s``; lights not in their turn are off."""

    id: str
    lights: list[str]
    steps: list[tuple[str, str]]
    step_s: float
    started: float

    @property
    def duration_s(self) -> float:
        return len(self.steps) * self.step_s

    def step_at(self, now: float) -> int:
        return int(max(0.0, now - self.started) // self.step_s)

    def mode_for(self, light: str, now: float) -> str | None:
        if light not in self.lights:
            return None
        i = self.step_at(now)
        if i >= len(self.steps):
            return None
        name, mode = self.steps[i]
        return mode if name == light else "off"

    def finished(self, now: float) -> bool:
        return now - self.started >= self.duration_s


def _step_seconds(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and \
            0 < value <= MAX_TEST_STEP_S:
        return float(value)
    return default


# -- who holds the pins ----------------------------------------------------------------------


class LightsLock:
    """An ``flock`` on ``{runtime_dir}/lights.lock``: held by whoever drives the lights.

    The kernel drops the lock when its holder exits, crash or not, so a stale
    file never blocks anyone. The holder writes its pid into the file (when it
    may) for the messages of others.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if free; False when another holds it. OSError when it cannot be made."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            writable = True
        except PermissionError:
            # Made by another user (root's `check`): a read-only descriptor locks as well.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        if writable:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder(self) -> str:
        """Who holds the lock, as far as the file says (``pid 1234``), for messages."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return "another process"
        return f"pid {text}" if text.isdigit() else "another process"

    def __repr__(self) -> str:
        return f"<LightsLock {self.path} {'held' if self.held else 'free'}>"


# -- the station part ------------------------------------------------------------------------


class LightsPart(StationPart):
    """Drives every ``[lights.*]`` light from schedule, level, override, alarm and self-test.

    ``pin_factory`` is gpiozero's (None: its default, ``GPIOZERO_PIN_FACTORY``);
    ``test_step_s`` how long the self-test shows each mode unless the command
    says; ``retry_s`` how often pins that failed to open are tried again.
    """

    name: ClassVar[str] = "lights"

    @classmethod
    def for_config(cls, ctx: UnitContext) -> list[StationPart]:
        """This part when the unit has lights, else nothing (for ``build_parts``)."""
        return [cls(ctx)] if ctx.config.lights else []

    def __init__(self, ctx: UnitContext, *, pin_factory: Any = None,
                 test_step_s: float = TEST_STEP_S, retry_s: float = 30.0,
                 lock_path: Path | None = None) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.journal: Journal = ctx.journal
        self.clock: Clock = ctx.clock
        self.pin_factory = pin_factory
        self.test_step_s = test_step_s
        self.retry_s = retry_s
        self.tz = ZoneInfo(cfg.unit.timezone)
        self.sun: SunCalendar | None = None
        if cfg.unit.latitude is not None and cfg.unit.longitude is not None:
            self.sun = SunCalendar(cfg.unit.latitude, cfg.unit.longitude, self.tz)
        self.alarm_lights = frozenset(cfg.inputs.alarm_light_names(cfg.lights))
        self.lights: dict[str, WarningLight | None] = dict.fromkeys(cfg.lights)
        self.errors: dict[str, str] = {}
        self.modes: dict[str, tuple[str, str]] = {}     # what the layers decided
        self._reported: dict[str, tuple[Any, Any]] = {}
        self._announced: set[str] = set()    # lights with an event since this start
        self._written: dict[str, Any] = {}
        self.inbox = InboxReader(self.journal, "station", ["lights.test"])
        self.test: SelfTest | None = None
        self.lock = LightsLock(lock_path or cfg.unit.runtime_dir / LOCK_NAME)
        self.busy: str | None = None          # who holds the lights when we cannot
        # When to try the pins (or the lock) again; None: at the next turn.
        self._next_claim: float | None = None
        self._journal_failing = False

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        self._announced.clear()
        self._load_reported()
        self._claim(None)

    def _load_reported(self) -> None:
        """What the journal last said of each light: a change from that is an event."""
        for name in self.lights:
            stored = self.journal.state_get(device_key(name))
            if isinstance(stored, dict):
                self._reported[name] = (stored.get("mode"), stored.get("reason"))
                self._written[name] = stored

    def close(self) -> None:
        for name, light in self.lights.items():
            if light is not None:
                try:
                    light.close()
                except Exception:
                    log.exception("closing light %s failed", name)
            self.lights[name] = None
        self.lock.release()

    def _claim(self, now: float | None) -> None:
        """Take the lock, then open the pins of every light not yet open."""
        if not self.lock.held:
            try:
                got = self.lock.acquire()
            except OSError as err:
                # Lights matter more than the lock: drive them anyway, and say so.
                log.error("cannot use the lights lock %s (%s): driving the lights without it; "
                          "`xunfang check lights` cannot see this station", self.lock.path, err)
                got = True
            if not got:
                holder = self.lock.holder()
                if self.busy != holder:
                    log.warning("the lights are held by %s (xunfang check lights?): "
                                "waiting for them", holder)
                self.busy = holder
                self._next_claim = None if now is None else now + 1.0
                return
            if self.busy is not None:
                log.info("the lights are free again: taking them")
                self._load_reported()  # the check recorded what it showed
            self.busy = None
        cfg = self.ctx.config
        for name, light in self.lights.items():
            if light is not None:
                continue
            lc = cfg.lights[name]
            try:
                self.lights[name] = WarningLight(*lc.pins, active_high=lc.active_high, name=name,
                                                 pin_factory=self.pin_factory)
                if name in self.errors:
                    log.info("light %s: pins open now", name)
                self.errors.pop(name, None)
            except Exception as err:
                text = f"cannot open GPIO{'/'.join(map(str, lc.pins))}: {err}"
                if self.errors.get(name) != text:
                    log.error("light %s: %s (retrying every %.0f s)%s", name, text, self.retry_s,
                              NO_GPIO_HINT if isinstance(err, BadPinFactory) else "")
                self.errors[name] = text
        self._next_claim = None if now is None else now + self.retry_s

    # -- every turn ------------------------------------------------------------------------------

    def tick(self, now_mono: float) -> None:
        if (self.busy is not None or self.errors) and (
                self._next_claim is None or now_mono >= self._next_claim):
            self._claim(now_mono)
        if self.busy is not None:
            return  # `xunfang check lights` drives them: record nothing over its events
        if self.test is not None and self.test.finished(now_mono):
            self._end_test()
        if self.test is None:
            self._start_test(now_mono)
        level = current_level(self.journal, self.clock).level
        override = current_lights_override(self.journal, self.clock).lights
        alarm = self.journal.state_get(f"alarm/{LIGHT_ALARM_SOURCE}")
        alarm_active = isinstance(alarm, dict) and alarm.get("state") == "active"
        now_local: datetime | None = None
        sun: SunTimes | None = None
        if self.clock.synced():
            now_local = datetime.fromtimestamp(self.clock.wall_ms() / 1000, self.tz)
            if self.sun is not None:
                sun = self.sun.on(now_local.date())
        on_duty = False
        if any(lc.schedule == "on-duty" for lc in self.ctx.config.lights.values()):
            on_duty = bool(self.journal.state_get(DUTY_KEY))
        for name, lc in self.ctx.config.lights.items():
            test_mode = self.test.mode_for(name, now_mono) if self.test is not None else None
            mode, reason = decide(lc, now_local, sun, level, override.get(name),
                                  alarm_active and name in self.alarm_lights, test_mode,
                                  on_duty)
            if mode not in modes_for(len(lc.pins)):
                # Only an override the centre validated against another config can get
                # here (alternate for a one-pin light): show the nearest thing.
                mode = "blink"
            self._apply(name, lc, mode, reason)

    def _apply(self, name: str, lc: LightConfig, mode: str, reason: str) -> None:
        light = self.lights[name]
        if light is not None:
            try:
                light.show(mode)
                self.errors.pop(name, None)
            except LightError as err:
                if self.errors.get(name) != str(err):
                    log.error("light %s: %s", name, err)
                self.errors[name] = str(err)
        self.modes[name] = (mode, reason)
        error = self.errors.get(name)
        # What the light shows: nothing it was asked for when its pins do not work.
        shown, why = (FAULT, FAULT) if error is not None else (mode, reason)
        state: dict[str, Any] = {"state": shown, "mode": shown, "reason": why,
                                 "pins": list(lc.pins), "active_high": lc.active_high}
        extra: dict[str, Any] = {}
        if error is not None:
            extra = {"detail": error, "wanted": mode, "wanted_reason": reason}
            state.update(extra)
        if why == "test" and self.test is not None:
            state["test"] = self.test.id
        before = self._reported.get(name)
        starting = name not in self._announced
        try:
            if before != (shown, why) or starting:
                data: dict[str, Any] = {"light": name, "mode": shown, "reason": why, **extra,
                                        "previous": before[0] if before else None}
                if why == "test" and self.test is not None:
                    data["test"] = self.test.id
                if starting:
                    data["start"] = True
                self.journal.append("lights", data, state={device_key(name): state})
                if error is not None:
                    log.info("light %s: error, would show %s (%s)", name, mode, reason)
                else:
                    log.info("light %s: %s (%s)", name, mode, reason)
                self._reported[name] = (shown, why)
                self._written[name] = state
                self._announced.add(name)
            elif self._written.get(name) != state:
                self.journal.state_set(device_key(name), state)
                self._written[name] = state
            self._journal_failing = False
        except JournalError as err:
            # The light shows its mode regardless; the event is tried again next turn.
            if not self._journal_failing:
                log.error("light %s: cannot record %s (%s): %s", name, shown, why, err)
            self._journal_failing = True

    # -- the self-test -------------------------------------------------------------------------

    def _start_test(self, now: float) -> None:
        entries = self.inbox.pending(limit=1)
        if not entries:
            return
        entry = entries[0]
        # Done as it starts: a test cut short by a restart is not worth repeating
        # hours later (the installer runs it again).
        self.inbox.done(entry)
        self.test = self._plan(entry, now)
        if self.test is None:
            return
        self.journal.state_set(TEST_KEY, {
            "id": self.test.id, "state": "running", "lights": self.test.lights,
            "seconds": self.test.step_s, "steps": [list(s) for s in self.test.steps],
            "started": rfc3339_ms(self.clock.wall_ms()), "ended": None,
        })
        log.info("lights self-test %s: %s, %.1f s per mode (%d steps)", entry.command_id,
                 ", ".join(self.test.lights), self.test.step_s, len(self.test.steps))

    def _plan(self, entry: InboxEntry, now: float) -> SelfTest | None:
        args = entry.args if isinstance(entry.args, dict) else {}
        known = list(self.ctx.config.lights)
        asked = args.get("lights")
        if isinstance(asked, list) and asked:
            names = [n for n in known if n in asked]
            unknown = [n for n in asked if n not in known]
            if unknown:
                log.warning("lights self-test %s: no light(s) %s here", entry.command_id,
                            ", ".join(map(str, unknown)))
        else:
            names = known
        if not names:
            self.journal.state_set(TEST_KEY, {
                "id": entry.command_id, "state": "done", "lights": [], "seconds": 0,
                "steps": [], "started": rfc3339_ms(self.clock.wall_ms()),
                "ended": rfc3339_ms(self.clock.wall_ms()), "detail": "no such lights"})
            return None
        step_s = _step_seconds(args.get("seconds"), self.test_step_s)
        plan = self_test_plan(self.ctx.config, names)
        return SelfTest(entry.command_id, names, plan, step_s, now)

    def _end_test(self) -> None:
        test, self.test = self.test, None
        assert test is not None
        stored = self.journal.state_get(TEST_KEY)
        record = dict(stored) if isinstance(stored, dict) and stored.get("id") == test.id else {
            "id": test.id, "lights": test.lights, "seconds": test.step_s}
        record.update(state="done", ended=rfc3339_ms(self.clock.wall_ms()))
        self.journal.state_set(TEST_KEY, record)
        log.info("lights self-test %s done", test.id)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.lights:
            mode, reason = self.modes.get(name, (None, None))
            if self.busy:
                out[name] = {"state": "busy", "mode": mode, "reason": reason}
            elif name in self.errors:
                out[name] = {"state": FAULT, "mode": FAULT, "reason": FAULT,
                             "detail": self.errors[name], "wanted": mode,
                             "wanted_reason": reason}
            else:
                out[name] = {"state": mode or "unknown", "mode": mode, "reason": reason}
        return out


# -- xunfang check lights --------------------------------------------------------------------


def run_lights_check(config: UnitConfig, *, names: list[str] | None = None,
                     seconds: float = TEST_STEP_S, pin_factory: Any = None,
                     clock: Clock | None = None, out: IO[str] | None = None,
                     pickup_s: float = 10.0, stop: threading.Event | None = None) -> int:
    """``xunfang check lights``: cycle every light through every mode; 0 ok, 1 failed.

    If a station holds the lights (their lock is taken), ask it through the
    journal and print the ``lights`` events it records; otherwise open the
    pins here and drive them, recording the same events when the unit has a
    journal.
    """
    out = out or sys.stdout
    known = list(config.lights)
    if not known:
        print("check lights: this unit has no [lights.*]", file=out)
        return 1
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            print(f"check lights: no light {', '.join(unknown)} here "
                  f"(has: {', '.join(known)})", file=out)
            return 1
        names = [n for n in known if n in names]
    else:
        names = known
    lock = LightsLock(config.unit.runtime_dir / LOCK_NAME)
    try:
        got = lock.acquire()
    except OSError as err:
        print(f"check lights: cannot use the lock {lock.path}: {err} (run as root or as the "
              "unit's user)", file=out)
        return 1
    if not got:
        return _ask_station(config, names, seconds, lock.holder(), clock, out, pickup_s)
    try:
        return _drive_here(config, names, seconds, pin_factory, clock, out, stop)
    finally:
        lock.release()


def _open_journal(config: UnitConfig, clock: Clock | None) -> Journal | None:
    """The unit's journal if it exists; never a new one (it would be root's if we made it)."""
    if not config.journal_path.exists():
        return None
    return Journal(config.journal_path, unit=config.unit.id, site=config.unit.site,
                   clock=clock or SystemClock())


def _line(data: Mapping[str, Any]) -> str:
    return f"  {data.get('light')}: {data.get('mode')} ({data.get('reason')})"


def _ask_station(config: UnitConfig, names: list[str], seconds: float, holder: str,
                 clock: Clock | None, out: IO[str], pickup_s: float) -> int:
    journal = _open_journal(config, clock)
    if journal is None:
        print(f"check lights: the lights are held by {holder}, but there is no journal at "
              f"{config.journal_path} to ask it through", file=out)
        return 1
    with journal:
        test_id = f"check-{secrets.token_hex(8)}"
        steps = self_test_plan(config, names)
        after = journal.last_seq()
        args: dict[str, Any] = {"lights": names, "seconds": seconds}
        journal.inbox_put(test_id, "lights.test", args)
        print(f"check lights: a station ({holder}) holds the lights; asked it to run test "
              f"{test_id}: {len(steps)} steps of {seconds:g} s", file=out, flush=True)
        start = time.monotonic()
        started: float | None = None
        done = False
        while not done:
            for event in journal.events_after(after, kinds=["lights"]):
                after = event.seq
                print(_line(event.data), file=out, flush=True)
            record = journal.state_get(TEST_KEY)
            if isinstance(record, dict) and record.get("id") == test_id:
                started = started or time.monotonic()
                done = record.get("state") == "done"
                if done:
                    break
            now = time.monotonic()
            if started is None and now - start > pickup_s:
                print(f"check lights: the station did not start the test within {pickup_s:g} s "
                      "(it will when it gets to it)", file=out)
                return 1
            if started is not None and now - started > len(steps) * seconds + pickup_s:
                print("check lights: the test did not finish in time", file=out)
                return 1
            journal.wait_for_change(0.2)
        # The lights go back to what schedule, level, override or alarm say.
        back: set[str] = set()
        deadline = time.monotonic() + 2.0
        while back != set(names) and time.monotonic() < deadline:
            for event in journal.events_after(after, kinds=["lights"]):
                after = event.seq
                print(_line(event.data), file=out, flush=True)
                if event.data.get("reason") != "test":
                    back.add(str(event.data.get("light")))
            journal.wait_for_change(0.1)
        print(f"check lights: test {test_id} done", file=out, flush=True)
    return 0


def _drive_here(config: UnitConfig, names: list[str], seconds: float, pin_factory: Any,
                clock: Clock | None, out: IO[str], stop: threading.Event | None) -> int:
    stop = stop or threading.Event()
    lights: dict[str, WarningLight] = {}
    try:
        for name in names:
            lc = config.lights[name]
            try:
                lights[name] = WarningLight(*lc.pins, active_high=lc.active_high, name=name,
                                            pin_factory=pin_factory)
            except Exception as err:
                print(f"check lights: {name}: cannot open GPIO{'/'.join(map(str, lc.pins))}: "
                      f"{err}{NO_GPIO_HINT if isinstance(err, BadPinFactory) else ''}", file=out)
                return 1
        factory = type(next(iter(lights.values())).pins[0].factory).__name__
        print(f"check lights: no station holds the lights; driving them here ({factory})",
              file=out, flush=True)
        journal = _open_journal(config, clock)
        test_id = f"check-{secrets.token_hex(8)}"
        shown: dict[str, str] = {}
        try:
            steps = self_test_plan(config, names)
            for current, mode in steps:
                for name, light in lights.items():
                    want = mode if name == current else "off"
                    light.show(want)
                    if shown.get(name) != want:
                        _record(journal, name, want, shown.get(name), test_id, config)
                        shown[name] = want
                pins = ", ".join(f"GPIO{p}" for p in config.lights[current].pins)
                print(f"  {current}: {mode} for {seconds:g} s ({pins})", file=out, flush=True)
                if stop.wait(seconds):
                    print("check lights: stopped", file=out)
                    return 1
        finally:
            if journal is not None:
                journal.close()
        print(f"check lights: {len(steps)} steps done; the lights are off until the station "
              "runs", file=out, flush=True)
        return 0
    finally:
        for light in lights.values():
            light.close()


def _record(journal: Journal | None, name: str, mode: str, previous: str | None,
            test_id: str, config: UnitConfig) -> None:
    if journal is None:
        return
    lc = config.lights[name]
    state = {"state": mode, "mode": mode, "reason": "test", "pins": list(lc.pins),
             "active_high": lc.active_high, "test": test_id}
    try:
        journal.append("lights", {"light": name, "mode": mode, "reason": "test",
                                  "previous": previous, "test": test_id},
                       state={device_key(name): state})
    except JournalError as err:
        log.warning("cannot record light %s %s in the journal: %s", name, mode, err)

