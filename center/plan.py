"""The patrol plan of a site: ``plan.toml``, validated before anything uses it.

The contract is ``docs/report.md`` (the plan's keys) after the centre's design:
windows, rounds per alert level, zones and their groups, the points (units)
with the windows they are patrolled in, the groups' routes, and the chain of
supervision. Errors read like the unit config's, one line per problem with
its key path::

    points[2].zone: zone "Z9" is not one of the plan's zones (Z1, Z2, Z3)

Unknown keys are errors. CLI::

    xunfang plan check /etc/xunfang-centre/zhuantang/plan.toml
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tomllib
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from firmware_py.config import (
    NAME_PATTERN,
    check_windows,
    describe_error,
    int_keys,
    key_path,
    parse_window,
)
from firmware_py.exc import ConfigInvalid, ConfigUnreadable

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "ROLES",
    "Plan",
    "PlanInvalid",
    "PlanUnreadable",
    "WindowOccurrence",
    "add_parser",
    "load_plan",
    "parse_plan",
]

EXIT_OK, EXIT_PLAN = 0, 2

#: The register's roles: police (民警), auxiliary police (协警), full-time patrol
#: guards (专职巡防队员), village guards (护村队员).
ROLES = ("police", "auxiliary", "patrol", "village")
Role = Literal["police", "auxiliary", "patrol", "village"]
Level = Literal[1, 2, 3]
WINDOW_NAME_PATTERN = r"^[a-z0-9_-]{1,32}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


class PlanInvalid(ConfigInvalid):
    """The plan was read but breaks one or more rules; ``problems`` name key paths."""


class PlanUnreadable(ConfigUnreadable):
    """The plan file cannot be read or is not TOML."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Zone(Section):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=64)
    groups: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(default_factory=list)


class Point(Section):
    unit: str = Field(pattern=NAME_PATTERN)
    name: str = Field(min_length=1, max_length=64)
    zone: str
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    # None: every window of the plan; [] : no rounds (a kiosk listed for its name and place).
    windows: list[str] | None = None
    # Which visits count here: taps on the point's own reader ("card") and a patrol
    # vehicle's stay inside the point's geofence ("gnss"; desired/points id = this unit).
    visits: list[Literal["card", "gnss"]] = Field(default_factory=lambda: ["card", "gnss"],
                                                  min_length=1, max_length=2)

    @field_validator("latitude", "longitude", mode="before")
    @classmethod
    def _int_is_float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Route(Section):
    group: str = Field(pattern=ID_PATTERN)
    window: str
    points: list[str] = Field(min_length=1)


class Supervision(Section):
    police_led: list[Role] = Field(default_factory=lambda: ["patrol", "village"])
    patrol: list[Role] = Field(default_factory=lambda: ["village"])
    leader_levels: list[Level] = Field(default_factory=lambda: [1, 2])
    leader_unit: str | None = Field(default=None, pattern=NAME_PATTERN)


class WindowOccurrence(BaseModel):
    """One window on one date: ``[start, end)`` in UTC; ``date`` is the local start date."""

    model_config = ConfigDict(frozen=True)
    window: str
    date: date
    start: datetime
    end: datetime


class Plan(Section):
    site: str = Field(pattern=NAME_PATTERN)
    timezone: str = "Asia/Shanghai"
    version: int | None = Field(default=None, ge=1)
    windows: dict[Annotated[str, Field(pattern=WINDOW_NAME_PATTERN)], str] = Field(min_length=1)
    rounds: dict[Level, Annotated[int, Field(ge=1, le=48)]]
    min_people: int = Field(default=2, ge=1, le=20)
    # Faster than this between two units' taps of one card is an anomaly (a car on
    # village roads; straight-line distance, less the units' placement error).
    max_speed_kmh: float = Field(default=60.0, gt=0, le=1000, strict=False)
    zones: list[Zone] = Field(min_length=1)
    points: list[Point] = Field(min_length=1)
    routes: list[Route] = Field(default_factory=list)
    supervision: Supervision = Field(default_factory=Supervision)
    # Set by the loader: what ``plan_version`` reports when ``version`` is absent.
    _sha256: str = PrivateAttr(default="")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"must be an IANA time zone such as Asia/Shanghai, got {value!r}") \
                from err
        return value

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: dict[str, str]) -> dict[str, str]:
        return check_windows(value)

    @field_validator("rounds", mode="before")
    @classmethod
    def _level_keys(cls, value: Any) -> Any:
        return int_keys(value)

    # -- derived ----------------------------------------------------------------------

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def plan_version(self) -> str:
        """The plan's ``version``, else the first 12 hex digits of its file's sha256."""
        if self.version is not None:
            return str(self.version)
        return f"sha256:{self._sha256[:12]}" if self._sha256 else "unversioned"

    @cached_property
    def point_by_unit(self) -> dict[str, Point]:
        return {p.unit: p for p in self.points}

    @cached_property
    def zone_by_id(self) -> dict[str, Zone]:
        return {z.id: z for z in self.zones}

    def point_windows(self, point: Point) -> list[str]:
        return list(self.windows) if point.windows is None else list(point.windows)

    def occurrence(self, window: str, day: date) -> WindowOccurrence:
        """The window ``window`` that starts on local date ``day``, in UTC."""
        start_min, end_min = parse_window(self.windows[window])
        start_local = datetime.combine(day, time(start_min // 60, start_min % 60), self.tz)
        end_day = day + timedelta(days=1) if end_min <= start_min else day
        end_local = datetime.combine(end_day, time(end_min // 60, end_min % 60), self.tz)
        return WindowOccurrence(window=window, date=day, start=_utc(start_local),
                                end=_utc(end_local))

    def occurrence_at(self, when: datetime) -> WindowOccurrence | None:
        """The window occurrence that ``when`` (aware) lies in, if any (earliest start wins)."""
        local_day = when.astimezone(self.tz).date()
        found: list[WindowOccurrence] = []
        for day in (local_day - timedelta(days=1), local_day):
            for name in self.windows:
                occ = self.occurrence(name, day)
                if occ.start <= when < occ.end:
                    found.append(occ)
        return min(found, key=lambda o: o.start) if found else None

    def cross_problems(self) -> list[str]:
        """Rules between sections: names that must exist, levels that must be covered."""
        problems: list[str] = []
        for level in (1, 2, 3):
            if level not in self.rounds:
                problems.append(f"rounds: no rounds for level {level} (give levels 1, 2 and 3)")
        zone_ids = [z.id for z in self.zones]
        groups: dict[str, str] = {}
        for i, zone in enumerate(self.zones):
            if zone_ids.index(zone.id) != i:
                problems.append(f"zones[{i}].id: zone {zone.id!r} is already "
                                f"zones[{zone_ids.index(zone.id)}]")
            for group in zone.groups:
                if group in groups:
                    problems.append(f"zones[{i}].groups: group {group!r} is already in zone "
                                    f"{groups[group]!r}")
                groups.setdefault(group, zone.id)
        units = [p.unit for p in self.points]
        for i, point in enumerate(self.points):
            if units.index(point.unit) != i:
                problems.append(f"points[{i}].unit: unit {point.unit!r} is already "
                                f"points[{units.index(point.unit)}]")
            if point.zone not in zone_ids:
                problems.append(f"points[{i}].zone: zone {point.zone!r} is not one of the "
                                f"plan's zones ({', '.join(zone_ids)})")
            if (point.latitude is None) != (point.longitude is None):
                problems.append(f"points[{i}]: latitude and longitude go together: set both "
                                "or neither")
            for j, window in enumerate(point.windows or []):
                if window not in self.windows:
                    problems.append(f"points[{i}].windows[{j}]: window {window!r} is not one "
                                    f"of the plan's windows ({', '.join(self.windows)})")
        seen_routes: dict[tuple[str, str], int] = {}
        for i, route in enumerate(self.routes):
            if route.group not in groups:
                problems.append(f"routes[{i}].group: group {route.group!r} is not in any zone's "
                                "groups")
            if route.window not in self.windows:
                problems.append(f"routes[{i}].window: window {route.window!r} is not one of "
                                f"the plan's windows ({', '.join(self.windows)})")
            key = (route.group, route.window)
            if key in seen_routes:
                problems.append(f"routes[{i}]: group {route.group!r} already has a route in "
                                f"window {route.window!r} (routes[{seen_routes[key]}])")
            seen_routes.setdefault(key, i)
            for j, unit in enumerate(route.points):
                point = self.point_by_unit.get(unit)
                if point is None:
                    problems.append(f"routes[{i}].points[{j}]: unit {unit!r} is not one of the "
                                    "plan's points")
                elif route.window in self.windows and \
                        route.window not in self.point_windows(point):
                    problems.append(f"routes[{i}].points[{j}]: point {unit!r} is not patrolled "
                                    f"in window {route.window!r} (its windows: "
                                    f"{', '.join(self.point_windows(point)) or 'none'})")
                if route.points.index(unit) != j:
                    problems.append(f"routes[{i}].points[{j}]: unit {unit!r} is already "
                                    f"points[{route.points.index(unit)}] of this route")
        sup = self.supervision
        if sup.leader_unit is not None and sup.leader_unit not in self.point_by_unit:
            problems.append(f"supervision.leader_unit: unit {sup.leader_unit!r} is not one of "
                            "the plan's points")
        if sup.leader_levels and sup.leader_unit is None:
            problems.append("supervision.leader_unit: required while leader_levels is not empty "
                            "(or set leader_levels = [])")
        if "police" in sup.police_led:
            problems.append("supervision.police_led: police cannot countersign a police-led "
                            "visit")
        return problems


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


# -- loading ----------------------------------------------------------------------------------


def _problems_of(error: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in error.errors(include_url=False):
        if err["type"] == "extra_forbidden":
            text = "unknown key (misspelt? see docs/report.md)"
        else:
            text = describe_error(err)
        line = f"{key_path(tuple(err['loc']))}: {text}"
        if line not in lines:
            lines.append(line)
    return lines


def parse_plan(data: dict[str, Any], source: str = "<plan>", sha256: str = "") -> Plan:
    """Validate an already-parsed TOML document; raise :class:`PlanInvalid`."""
    rounds = data.get("rounds")
    if isinstance(rounds, dict) and "min_people" in rounds and "min_people" not in data:
        # Written after the [rounds] table (as the design's example has it), TOML puts
        # min_people inside it: the one key that cannot be a level is taken as meant.
        data = {**data, "rounds": {k: v for k, v in rounds.items() if k != "min_people"},
                "min_people": rounds["min_people"]}
    try:
        plan = Plan.model_validate(data)
    except ValidationError as err:
        raise PlanInvalid(source, _problems_of(err)) from None
    plan._sha256 = sha256
    cross = plan.cross_problems()
    if cross:
        raise PlanInvalid(source, cross)
    return plan


def load_plan(path: str | Path) -> Plan:
    """Read, parse and validate a ``plan.toml``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PlanUnreadable(f"{path}: cannot read plan: {err.strerror or err}") from err
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise PlanUnreadable(f"{path}: not UTF-8 text: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise PlanUnreadable(f"{path}: not valid TOML: {err}") from err
    return parse_plan(data, str(path), hashlib.sha256(raw).hexdigest())


def load_plan_or_exit(path: str) -> Plan:
    """Load the plan; print every problem (one line each) and exit 2 when it is bad."""
    try:
        return load_plan(path)
    except PlanInvalid as err:
        print(f"{err.path}: plan has {len(err.problems)} problem(s):", file=sys.stderr)
        for line in err.problems:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(EXIT_PLAN) from None
    except PlanUnreadable as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(EXIT_PLAN) from None


# -- CLI --------------------------------------------------------------------------------------


def cmd_plan_check(args: argparse.Namespace) -> int:
    plan = load_plan_or_exit(args.file)
    cells = sum(len(plan.point_windows(p)) for p in plan.points)
    print(f"{args.file}: ok: site {plan.site} ({plan.timezone}), plan version "
          f"{plan.plan_version}; {len(plan.zones)} zone(s), {len(plan.points)} point(s), "
          f"{len(plan.windows)} window(s), {len(plan.routes)} route(s); {cells} point-window(s) "
          "a day")
    return EXIT_OK


def add_parser(sub: SubParsers) -> None:
    p_plan = sub.add_parser("plan", help="the centre's patrol plan (plan.toml)")
    plan_sub = p_plan.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = plan_sub.add_parser("check", help="validate a plan; list every problem and exit 2 if any")
    p.add_argument("file", metavar="FILE", help="the site's plan.toml")
    p.set_defaults(func=cmd_plan_check)
