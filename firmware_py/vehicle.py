"""Patrol vehicles (车巡) and time from satellites: the station part behind ``[gnss]``.

A vehicle unit is the same software in a patrol car or e-bike: its crew taps
on and off duty on the vehicle's reader as at a kiosk (:class:`~firmware_py.
patrol.DutyPost`), its roof light is a ``[lights.*]`` light with
``schedule = "on-duty"``, and this part adds the receiver:

- **tracks**: usable fixes (valid, HDOP at most ``[gnss] max_hdop``) become
  ``track`` events, thinned by :class:`TrackThinner` (``[vehicle]
  track_every_s``, ``track_min_move_m``, ``track_idle_s``);
- **visits by geofence** (:class:`Geofence`): the centre's ``desired/points``
  gives patrol points with radii; a stay inside a point's radius of at least
  ``dwell_s`` with a crew on duty is a ``visit`` event with ``source:
  "gnss"``, shaped like a card visit. A stay closes when the vehicle leaves
  (radius plus ``exit_margin_m``), the crew goes off duty, or no usable fix
  has come for ``lost_fix_s``;
- **time**: a valid fix with date sets the :class:`~firmware_py.clock.
  SatelliteClock` while the system clock is not synchronised (any unit kind;
  a fixed unit may carry a receiver only for this).

Receiver changes are ``gnss`` events (``online``/``offline``, ``fix``/
``no_fix``, ``time``) with the health object ``device/gnss/{name}``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from drivers.gnss import Fix, GnssReceiver, haversine_m

from .clock import SatelliteClock, rfc3339_ms
from .config import PatrolSection, VehicleSection
from .desired import current_level, current_points
from .exc import JournalError
from .parts import StationPart
from .patrol import DUTY_KEY, Instant, Windows, wall_of
from .runtime import UnitContext

log = logging.getLogger("xunfang.vehicle")

RECEIVER = "gnss"
VISITS_KEY = "vehicle/visits"   # how many GNSS visits were made (numbers their ids)


def gnss_key(name: str) -> str:
    """The state key of receiver ``name``'s health object."""
    return f"device/gnss/{name}"


# -- tracks ------------------------------------------------------------------------------


@dataclass
class TrackThinner:
    """Which fixes become track points, so a night of driving stays small.

    A point when: it is the first; or ``track_every_s`` has passed and the
    vehicle moved ``track_min_move_m`` since the last point; or
    ``track_idle_s`` has passed whatever it did. Times are boot-relative.
    """

    cfg: VehicleSection
    last: tuple[float, float, float] | None = None    # lat, lon, mono of the last point

    def offer(self, lat: float, lon: float, mono: float) -> float | None:
        """Metres moved since the last point when this fix is a track point, else None."""
        if self.last is None or mono < self.last[2]:
            self.last = (lat, lon, mono)
            return 0.0
        moved = haversine_m(self.last[0], self.last[1], lat, lon)
        elapsed = mono - self.last[2]
        if (elapsed >= self.cfg.track_every_s and moved >= self.cfg.track_min_move_m) \
                or elapsed >= self.cfg.track_idle_s:
            self.last = (lat, lon, mono)
            return moved
        return None


def fix_quality(fix: Fix) -> dict[str, Any]:
    return {"mode": fix.mode, "quality": fix.quality, "satellites": fix.satellites,
            "hdop": fix.hdop}


# -- geofence visits -------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A patrol point of ``desired/points``: centre and radius in metres."""

    id: str
    lat: float
    lon: float
    radius_m: int
    dwell_s: int | None = None
    name: str | None = None

    @classmethod
    def from_args(cls, doc: dict[str, Any]) -> Point:
        return cls(doc["id"], doc["lat_e7"] / 1e7, doc["lon_e7"] / 1e7, int(doc["radius_m"]),
                   doc.get("dwell_s"), doc.get("name"))


@dataclass
class Stay:
    """The vehicle inside one point's radius with a crew on duty."""

    point: Point
    entered: Instant
    last_inside: Instant
    crew: dict[str, dict[str, Any]] = field(default_factory=dict)   # badge -> {card, role}
    nearest_m: float = float("inf")


class Geofence:
    """Turns positions and the crew on duty into ``visit`` events. Pure: no I/O.

        fence = Geofence(cfg.vehicle, cfg.patrol, tz, "car-01:5f1c…:g")
        fence.set_points([Point("pp-03", 31.2479, 121.5874, 50)])
        visits = fence.update(31.2479, 121.5874, now, crew, level)
    """

    def __init__(self, cfg: VehicleSection, patrol: PatrolSection, tz: ZoneInfo,
                 visit_prefix: str, visits: int = 0) -> None:
        self.cfg = cfg
        self.patrol = patrol
        self.windows = Windows(patrol.windows, tz)
        self.visit_prefix = visit_prefix
        self.visits = visits
        self.points: dict[str, Point] = {}
        self.stays: dict[str, Stay] = {}

    def set_points(self, points: list[Point], now: Instant, level: int) -> list[dict[str, Any]]:
        """Replace the points; stays at points that are gone (or moved) close now."""
        self.points = {p.id: p for p in points}
        out: list[dict[str, Any]] = []
        for pid in list(self.stays):
            if self.points.get(pid) != self.stays[pid].point:
                out += self._close(pid, now, level)
        return out

    def dwell_s(self, point: Point) -> int:
        return point.dwell_s or self.cfg.dwell_s

    def update(self, lat: float, lon: float, now: Instant, crew: dict[str, dict[str, Any]],
               level: int) -> list[dict[str, Any]]:
        """A usable fix at ``now`` with ``crew`` (badge → {card, role}) on duty."""
        out: list[dict[str, Any]] = []
        for point in self.points.values():
            d = haversine_m(point.lat, point.lon, lat, lon)
            stay = self.stays.get(point.id)
            if stay is not None:
                if not crew or d > point.radius_m + self.cfg.exit_margin_m:
                    out += self._close(point.id, now, level)
                    stay = None
                else:
                    if d <= point.radius_m:
                        stay.last_inside = now
                    stay.nearest_m = min(stay.nearest_m, d)
                    for badge, who in crew.items():
                        stay.crew.setdefault(badge, who)
                    continue
            if stay is None and crew and d <= point.radius_m:
                self.stays[point.id] = Stay(point, now, now, dict(crew.items()), d)
        return out

    def lost(self, now: Instant, level: int) -> list[dict[str, Any]]:
        """No usable fix for ``lost_fix_s``: every stay closes at its last position inside."""
        out: list[dict[str, Any]] = []
        for pid in list(self.stays):
            out += self._close(pid, now, level)
        return out

    def _close(self, pid: str, now: Instant, level: int) -> list[dict[str, Any]]:
        stay = self.stays.pop(pid)
        took = stay.last_inside.mono - stay.entered.mono \
            if stay.last_inside.boot == stay.entered.boot else 0.0
        if took < self.dwell_s(stay.point) or not stay.crew:
            return []
        started_ms, ok1 = wall_of(stay.entered, now)
        ended_ms, ok2 = wall_of(stay.last_inside, now)
        synced = ok1 and ok2
        roles = dict(Counter(str(w.get("role")) for w in stay.crew.values()))
        people = len(stay.crew)
        self.visits += 1
        return [{
            "visit": f"{self.visit_prefix}{self.visits}",
            "source": "gnss",
            "point": stay.point.id,
            "point_name": stay.point.name,
            "started": rfc3339_ms(started_ms),
            "ended": rfc3339_ms(ended_ms),
            "cards": [str(w.get("card")) for w in stay.crew.values() if w.get("card")],
            "badges": list(stay.crew),
            "roles": roles,
            "people": people,
            "two_person": people >= self.patrol.min_people,
            "police_led": roles.get("police", 0) > 0
            and (roles.get("patrol", 0) + roles.get("village", 0)) > 0,
            "window": self.windows.at(started_ms) if synced else None,
            "level": level,
            "duration_s": round(took, 3),
            "nearest_m": round(stay.nearest_m, 1),
            "radius_m": stay.point.radius_m,
            "clock_synced": synced,
        }]


# -- the station part ------------------------------------------------------------------------


class VehiclePart(StationPart):
    """The receiver, tracks, geofence visits and satellite time; see the module doc.

    ``receiver_options`` go to :class:`~drivers.gnss.GnssReceiver` (tests
    shorten its timers).
    """

    name: ClassVar[str] = "vehicle"
    #: How often the receiver's health object is compared with what the journal holds.
    health_every_s: float = 5.0
    #: How often the points in force are looked up.
    points_every_s: float = 2.0
    #: A change between fix and no fix is reported once it has held this long.
    fix_debounce_s: float = 3.0
    receiver_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def for_config(cls, ctx: UnitContext) -> list[StationPart]:
        """This part when the unit has a ``[gnss]`` receiver (for ``build_parts``)."""
        return [cls(ctx)] if ctx.config.gnss is not None else []

    def __init__(self, ctx: UnitContext, *,
                 receiver_options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        assert cfg.gnss is not None
        self.gnss_cfg = cfg.gnss
        self.journal = ctx.journal
        self.clock = ctx.clock
        self.is_vehicle = cfg.unit.kind == "vehicle"
        self.receiver_options = {**self.receiver_defaults, **(receiver_options or {})}
        self.receiver: GnssReceiver | None = None
        self.thinner = TrackThinner(cfg.vehicle)
        self.fence: Geofence | None = None
        self.points_by: str | None = None
        self.tracks = 0
        self.unusable = 0
        self.time_source: str | None = None
        self._fixes: deque[Fix] = deque(maxlen=256)
        self._lock = threading.Lock()
        self._had_fix: bool | None = None
        self._fix_change_at: float | None = None
        self._last_usable: float | None = None
        self._next_health = 0.0
        self._next_points = 0.0
        self._written_health: dict[str, Any] | None = None

    def open(self) -> None:
        cfg = self.ctx.config
        if self.is_vehicle:
            visits = self.journal.state_get(VISITS_KEY, 0)
            self.fence = Geofence(cfg.vehicle, cfg.patrol, ZoneInfo(cfg.unit.timezone),
                                  f"{cfg.unit.id}:{self.journal.journal_id}:g",
                                  visits if isinstance(visits, int) else 0)
        try:
            self.receiver = GnssReceiver(RECEIVER, self.gnss_cfg.source,
                                         baudrate=self.gnss_cfg.baud, on_fix=self._on_fix,
                                         on_state=self._on_state, clock=self.clock.monotonic,
                                         **self.receiver_options)
        except ValueError as err:
            log.error("gnss.source: %s; running without the receiver", err)
            return
        self.receiver.start()

    def close(self) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.stop()
            self._store_health(receiver.health())

    # -- the receiver's thread ------------------------------------------------------------

    def _on_fix(self, fix: Fix) -> None:
        with self._lock:
            self._fixes.append(fix)
        # Time first, on the receiver's thread: the fix's time is freshest now.
        if self.gnss_cfg.time and fix.valid and fix.has_date and \
                isinstance(self.clock, SatelliteClock):
            utc_ms = fix.utc_ms()
            assert utc_ms is not None
            self.clock.set_from_gnss(utc_ms, fix.at_mono)

    def _on_state(self, name: str, state: str, detail: str) -> None:
        self._event(state, detail)

    def _event(self, state: str, detail: str, **extra: Any) -> None:
        health = self.receiver.health() if self.receiver is not None else {}
        health.update(state=health.get("state", state), detail=health.get("detail", detail))
        try:
            self.journal.append("gnss", {"receiver": RECEIVER, "state": state, "detail": detail,
                                         **extra},
                                state={gnss_key(RECEIVER): health})
            self._written_health = health
        except JournalError as err:
            log.error("gnss: cannot record %s (%s): %s", state, detail, err)

    # -- the station's turn -----------------------------------------------------------------

    def tick(self, now_mono: float) -> None:
        with self._lock:
            fixes = list(self._fixes)
            self._fixes.clear()
        now = Instant.now(self.clock)
        self._watch_time()
        level: int | None = None
        if self.fence is not None and now_mono >= self._next_points:
            self._next_points = now_mono + self.points_every_s
            level = current_level(self.journal, self.clock).level
            self._load_points(now, level)
        for fix in fixes:
            self._note_fix(fix)
            if not self.is_vehicle:
                continue
            if not self._usable(fix):
                self.unusable += 1
                continue
            assert fix.lat is not None and fix.lon is not None
            at = self._instant_of(fix, now)
            self._last_usable = fix.at_mono
            crew = self._crew()
            moved = self.thinner.offer(fix.lat, fix.lon, fix.at_mono)
            if moved is not None:
                self._track(fix, at, moved, crew)
            if self.fence is not None:
                if level is None:
                    level = current_level(self.journal, self.clock).level
                for data in self.fence.update(fix.lat, fix.lon, at, crew, level):
                    self._visit(data)
        if self.fence is not None and self.fence.stays and (
                self._last_usable is None
                or now.mono - self._last_usable >= self.ctx.config.vehicle.lost_fix_s):
            if level is None:
                level = current_level(self.journal, self.clock).level
            for data in self.fence.lost(now, level):
                self._visit(data)
        if now_mono >= self._next_health and self.receiver is not None:
            self._next_health = now_mono + self.health_every_s
            self._store_health(self.receiver.health())

    def _note_fix(self, fix: Fix) -> None:
        """A ``fix``/``no_fix`` event when the fix state changes and holds for
        :attr:`fix_debounce_s` (a receiver at the edge of coverage must not flood the
        journal); the first state is reported at once."""
        if fix.valid == self._had_fix:
            self._fix_change_at = None
            return
        if self._had_fix is not None:
            if self._fix_change_at is None:
                self._fix_change_at = fix.at_mono
            if fix.at_mono - self._fix_change_at < self.fix_debounce_s:
                return
        self._had_fix = fix.valid
        self._fix_change_at = None
        self._event("fix" if fix.valid else "no_fix",
                    f"{fix.mode} fix, {fix.satellites} satellites, HDOP {fix.hdop}"
                    if fix.valid else "receiver has no fix", fix=fix_quality(fix))

    def _usable(self, fix: Fix) -> bool:
        return fix.valid and fix.lat is not None and fix.lon is not None and (
            fix.hdop is None or fix.hdop <= self.gnss_cfg.max_hdop)

    def _instant_of(self, fix: Fix, now: Instant) -> Instant:
        """When the fix was read, on the unit's clocks (it may have waited for this turn)."""
        back = max(0.0, now.mono - fix.at_mono)
        return Instant(now.wall_ms - round(back * 1000), fix.at_mono, now.boot, now.synced)

    def _crew(self) -> dict[str, dict[str, Any]]:
        on = self.journal.state_get(DUTY_KEY)
        if not isinstance(on, dict):
            return {}
        return {str(b): {"card": v.get("card"), "role": v.get("role")}
                for b, v in on.items() if isinstance(v, dict)}

    def _load_points(self, now: Instant, level: int) -> None:
        assert self.fence is not None
        doc = current_points(self.journal)
        by = doc["by"] if doc else None
        if by == self.points_by:
            return
        points = [Point.from_args(p) for p in doc["points"]] if doc else []
        self.points_by = by
        log.info("patrol points: %d (document %s)", len(points), by)
        for data in self.fence.set_points(points, now, level):
            self._visit(data)

    def _track(self, fix: Fix, at: Instant, moved: float,
               crew: dict[str, dict[str, Any]]) -> None:
        assert fix.lat is not None and fix.lon is not None
        data = {
            "lat": round(fix.lat, 7), "lon": round(fix.lon, 7),
            "speed_kmh": fix.speed_kmh, "heading": fix.heading,
            "altitude_m": fix.altitude_m, "fix": fix_quality(fix),
            "at": rfc3339_ms(at.wall_ms), "gnss_time": fix.utc.isoformat().replace(
                "+00:00", "Z") if fix.utc else None,
            "moved_m": round(moved, 1), "crew": list(crew),
        }
        try:
            self.journal.append("track", data)
            self.tracks += 1
        except JournalError as err:
            log.error("track point not recorded: %s", err)

    def _visit(self, data: dict[str, Any]) -> None:
        assert self.fence is not None
        try:
            self.journal.append("visit", data, state={VISITS_KEY: self.fence.visits})
            log.info("visit by GNSS at %s: %s, %s", data["point"], ", ".join(data["badges"]),
                     f"{data['duration_s']:.0f} s")
        except JournalError as err:
            log.error("visit at %s not recorded: %s", data.get("point"), err)

    def _watch_time(self) -> None:
        if not isinstance(self.clock, SatelliteClock):
            return
        source = self.clock.source
        if source == self.time_source:
            return
        previous, self.time_source = self.time_source, source
        if source == "gnss":
            self._event("time", f"clock set from satellites: {rfc3339_ms(self.clock.wall_ms())}"
                        f" (system clock not synchronised)", clock_synced=True)
        elif previous == "gnss":
            self._event("time", f"satellite time no longer used (clock source: {source})",
                        clock_synced=self.clock.synced())

    def _store_health(self, health: dict[str, Any]) -> None:
        sig = {k: v for k, v in health.items() if k not in ("since_s", "fix")}
        if self._written_health is not None and {
                k: v for k, v in self._written_health.items()
                if k not in ("since_s", "fix")} == sig:
            return
        try:
            self.journal.state_set(gnss_key(RECEIVER), health)
            self._written_health = health
        except JournalError as err:
            log.error("gnss: cannot store health: %s", err)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"receiver": self.receiver.health() if self.receiver else None,
                               "tracks": self.tracks, "unusable_fixes": self.unusable,
                               "time_source": self.time_source}
        if self.fence is not None:
            out["points"] = len(self.fence.points)
            out["stays"] = sorted(self.fence.stays)
        return out
