"""Compliance: the ledger's events measured against the patrol plan. Pure, no I/O.

:func:`evaluate` takes the plan, the site's events as the ledger stores them
(envelopes: ``unit``, ``journal``, ``seq``, ``kind``, ``ts``, ``clock_synced``,
``data``), the dates to report and, optionally, the register (who is in which
group, who is a leader), and returns every verdict of ``docs/report.md``:
cells, routes, supervision, leader on duty, anomalies.

**Online.** A cell without visits is ``missed`` only when the ledger shows that
the unit was recording for the whole window, else ``no_data``. The ledger holds
no health history, so the proof is the unit's own events: the window lies
inside a run of events of one journal with every sequence number held (no gap
in the ledger), with synchronised clocks, and with no restart of the station in
between (a ``unit`` event ``started`` of component ``all`` or ``station``; a
clean stop writes ``stopping`` first, a crash or power cut shows only as the
next ``started``). A restart shorter than :data:`RESTART_GRACE_S` does not
break the run. So a unit that is stopped, unplugged, has its events still on
the way, or whose last event is older than the window's end, gives ``no_data``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from center.plan import Plan, Point, WindowOccurrence

__all__ = [
    "CELL_VERDICTS",
    "RESTART_GRACE_S",
    "ROUTE_VERDICTS",
    "Compliance",
    "Person",
    "coverage",
    "evaluate",
    "parse_ts",
]

CELL_VERDICTS = ("done", "alone", "short", "missed", "no_data")
ROUTE_VERDICTS = ("complete", "out_of_order", "shortened", "missed")
#: A restart of the station shorter than this does not count as the unit being offline.
RESTART_GRACE_S = 600.0
#: More visits than this by one card at one point in one window is an anomaly.
REPEAT_VISITS = 3
#: Where a unit stands is known to about this much: closer taps are never "impossible".
PLACEMENT_ERROR_M = 200.0
DEFAULT_LEVEL = 3


@dataclass(frozen=True)
class Person:
    """One person of the register (the station's spreadsheet, kept at the centre)."""

    badge: str
    name: str = ""
    role: str = ""
    group: str = ""
    zone: str = ""
    leader: bool = False


def parse_ts(text: Any) -> datetime | None:
    """An RFC 3339 time as an aware UTC datetime, or None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return dt.astimezone(UTC) if dt.tzinfo is not None else None


def iso(dt: datetime) -> str:
    """``2026-11-23T15:04:05Z``."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- what the report holds ----------------------------------------------------------------


@dataclass
class Visit:
    """A ``visit`` event, read once."""

    unit: str
    started: datetime
    people: int
    badges: list[str]
    cards: list[str]
    roles: dict[str, int]
    good: bool
    police_led: bool
    patrol_led: bool
    countersigned: bool
    occurrence: WindowOccurrence | None = None

    def as_dict(self, plan: Plan) -> dict[str, Any]:
        point = plan.point_by_unit.get(self.unit)
        return {"unit": self.unit, "point": point.name if point else self.unit,
                "window": self.occurrence.window if self.occurrence else None,
                "started": iso(self.started), "people": self.people,
                "roles": dict(sorted(self.roles.items()))}


@dataclass
class Cell:
    unit: str
    point: str
    zone: str
    date: date
    window: str
    level: int
    required: int
    visits: int
    good_visits: int
    police_led_visits: int
    countersigned_visits: int
    round_missed: int
    verdict: str
    start: datetime
    end: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "point": self.point, "zone": self.zone,
                "date": self.date.isoformat(), "window": self.window, "level": self.level,
                "required": self.required, "visits": self.visits,
                "good_visits": self.good_visits, "police_led_visits": self.police_led_visits,
                "countersigned_visits": self.countersigned_visits,
                "round_missed": self.round_missed, "verdict": self.verdict}


@dataclass
class RouteResult:
    group: str
    date: date
    window: str
    planned: list[str]
    visited: list[str]
    missing: list[str]
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "date": self.date.isoformat(), "window": self.window,
                "planned": self.planned, "visited": self.visited, "missing": self.missing,
                "verdict": self.verdict}


@dataclass
class SupervisionDay:
    date: date
    police_led_visits: int = 0
    countersigned: int = 0
    not_countersigned: list[dict[str, Any]] = field(default_factory=list)
    patrol_visits: int = 0
    patrol_countersigned: int = 0
    patrol_not_countersigned: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "police_led_visits": self.police_led_visits,
                "countersigned": self.countersigned,
                "not_countersigned": self.not_countersigned,
                "patrol_visits": self.patrol_visits,
                "patrol_countersigned": self.patrol_countersigned,
                "patrol_not_countersigned": self.patrol_not_countersigned}


@dataclass
class LeaderGap:
    start: datetime
    end: datetime
    level: int

    @property
    def length_s(self) -> int:
        return int((self.end - self.start).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {"start": iso(self.start), "end": iso(self.end), "length_s": self.length_s,
                "level": self.level}


@dataclass
class Compliance:
    """Everything the report shows; ``as_dict`` is the JSON of ``docs/report.md``."""

    plan: Plan
    first: date
    last: date
    cells: list[Cell]
    routes: list[RouteResult]
    supervision: list[SupervisionDay]
    leader: list[LeaderGap]
    anomalies: list[dict[str, Any]]
    visits: list[Visit]
    duty: list[dict[str, Any]]
    missed_rounds: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.plan.site, "from": self.first.isoformat(), "to": self.last.isoformat(),
            "plan_version": self.plan.plan_version,
            "cells": [c.as_dict() for c in self.cells],
            "routes": [r.as_dict() for r in self.routes],
            "supervision": [s.as_dict() for s in self.supervision],
            "leader": [g.as_dict() for g in self.leader],
            "anomalies": self.anomalies,
        }


# -- helpers ----------------------------------------------------------------------------------


def _dates(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _is_restart(event: Mapping[str, Any]) -> bool:
    data = event.get("data") or {}
    return (event.get("kind") == "unit" and data.get("state") == "started"
            and data.get("component", "all") in ("all", "station"))


def _is_stop(event: Mapping[str, Any]) -> bool:
    data = event.get("data") or {}
    return (event.get("kind") == "unit" and data.get("state") == "stopping"
            and data.get("component", "all") in ("all", "station"))


def _merge(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(base: list[tuple[datetime, datetime]],
              minus: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for a, b in base:
        cur = a
        for c, d in minus:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
            if cur >= b:
                break
        if cur < b:
            out.append((cur, b))
    return out


def coverage(events: Iterable[Mapping[str, Any]]) -> list[tuple[datetime, datetime]]:
    """The times one unit's events prove it was recording (see the module doc), merged."""
    by_journal: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        if isinstance(event.get("seq"), int):
            by_journal[str(event.get("journal"))].append(event)
    spans: list[tuple[datetime, datetime]] = []
    for journal_events in by_journal.values():
        journal_events.sort(key=lambda e: e["seq"])
        for a, b in itertools.pairwise(journal_events):
            if b["seq"] != a["seq"] + 1:
                continue  # a gap in the ledger: what happened there is unknown
            if a.get("clock_synced") is False or b.get("clock_synced") is False:
                continue
            ta, tb = parse_ts(a.get("ts")), parse_ts(b.get("ts"))
            if ta is None or tb is None or tb < ta:
                continue
            if (_is_restart(b) or _is_stop(a)) and \
                    (tb - ta).total_seconds() > RESTART_GRACE_S:
                continue
            spans.append((ta, tb))
    return _merge(spans)


def _covers(spans: Sequence[tuple[datetime, datetime]], start: datetime, end: datetime) -> bool:
    return any(a <= start and end <= b for a, b in spans)


def _distance_m(p: Point, q: Point) -> float | None:
    if None in (p.latitude, p.longitude, q.latitude, q.longitude):
        return None
    lat1, lon1 = math.radians(p.latitude), math.radians(p.longitude)  # type: ignore[arg-type]
    lat2, lon2 = math.radians(q.latitude), math.radians(q.longitude)  # type: ignore[arg-type]
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


def _roles(value: Any) -> dict[str, int]:
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items()
                if isinstance(v, int) and not isinstance(v, bool) and v > 0}
    if isinstance(value, list):  # a list of roles, one per person
        counts: dict[str, int] = defaultdict(int)
        for role in value:
            counts[str(role)] += 1
        return dict(counts)
    return {}


# -- the evaluation ---------------------------------------------------------------------------


@dataclass
class _Site:
    """The events of a site, read once, and what every verdict needs from them."""

    plan: Plan
    register: Mapping[str, Person] | None
    days: list[date]
    period_start: datetime
    period_end: datetime
    by_unit: dict[str, list[Mapping[str, Any]]]
    latest: datetime | None
    badge_role: dict[str, str]
    card_badge: dict[str, str]
    levels: dict[str, list[tuple[datetime, int]]]
    visits: list[Visit] = field(default_factory=list)

    def in_period(self, t: datetime) -> bool:
        return self.period_start <= t < self.period_end

    def events(self, unit: str, kind: str) -> Iterator[tuple[datetime, Mapping[str, Any],
                                                             Mapping[str, Any]]]:
        """``(ts, data, event)`` of one unit's events of ``kind`` with a readable time."""
        for e in self.by_unit.get(unit, []):
            if e.get("kind") == kind and (ts := parse_ts(e.get("ts"))) is not None:
                yield ts, e.get("data") or {}, e

    def level_at(self, unit: str, t: datetime) -> int:
        level = DEFAULT_LEVEL
        for since, value in self.levels.get(unit, []):
            if since > t:
                break
            level = value
        return level


def evaluate(plan: Plan, events: Iterable[Mapping[str, Any]], first: date, last: date,
             register: Mapping[str, Person] | None = None) -> Compliance:
    """Every verdict for the window occurrences starting on ``first`` … ``last`` (local dates).

    ``events`` are the site's ledger events, including some before and after the
    period (the level and duty in force at its start; the events that prove a
    unit was online). ``register`` maps badges to people; without it groups are
    unknown (routes see no group's visits) and every police officer on duty at
    the leader unit counts as a leader.
    """
    if last < first:
        raise ValueError(f"the period ends ({last}) before it starts ({first})")
    site = _read_site(plan, events, first, last, register)
    # Where a timeline shows missed rounds: at the deadline that passed (the unit may say
    # so later, when it checks).
    missed_rounds = [
        {"unit": u, "ts": iso(t), "window": data.get("window")}
        for u in plan.point_by_unit for ts, data, _e in site.events(u, "round_missed")
        if (t := parse_ts(data.get("expected_by")) or ts) and site.in_period(t)]
    gaps, duty = _leader(site)
    return Compliance(plan=plan, first=first, last=last, cells=_cells(site),
                      routes=_routes(site), supervision=_supervision(site), leader=gaps,
                      anomalies=_anomalies(site),
                      visits=[v for v in site.visits if site.in_period(v.started)],
                      duty=duty, missed_rounds=missed_rounds)


def _read_site(plan: Plan, events: Iterable[Mapping[str, Any]], first: date, last: date,
               register: Mapping[str, Person] | None) -> _Site:
    by_unit: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    latest: datetime | None = None
    for event in events:
        unit = event.get("unit")
        if isinstance(unit, str):
            by_unit[unit].append(event)
        ts = parse_ts(event.get("ts"))
        if ts is not None and event.get("clock_synced") is not False and \
                (latest is None or ts > latest):
            latest = ts
    for unit_events in by_unit.values():
        unit_events.sort(key=lambda e: (str(e.get("ts") or ""), e.get("seq") or 0))
    period_start = datetime.combine(first, datetime.min.time(), plan.tz).astimezone(UTC)
    period_end = datetime.combine(last + timedelta(days=1), datetime.min.time(),
                                  plan.tz).astimezone(UTC)
    for name in plan.windows:
        period_end = max(period_end, plan.occurrence(name, last).end)
    site = _Site(plan=plan, register=register, days=_dates(first, last),
                 period_start=period_start, period_end=period_end, by_unit=by_unit,
                 latest=latest, badge_role={}, card_badge={}, levels=defaultdict(list))

    # Who is who: what the units' own events say, and the register above that.
    for unit in by_unit:
        for _ts, data, _e in site.events(unit, "checkin"):
            if isinstance(data.get("badge"), str):
                site.card_badge.setdefault(str(data.get("card")), data["badge"])
                if isinstance(data.get("role"), str):
                    site.badge_role.setdefault(data["badge"], data["role"])
        for ts, data, _e in site.events(unit, "level"):
            if data.get("level") in (1, 2, 3):
                site.levels[unit].append((ts, int(data["level"])))
    if register:
        site.badge_role.update({b: p.role for b, p in register.items() if p.role})
    site.visits = sorted(_visits(site), key=lambda v: v.started)
    return site


def _visit_events(site: _Site) -> Iterator[tuple[str, datetime, Mapping[str, Any]]]:
    """(point unit, ts, data) of every visit that counts at a point of the plan: card
    visits on the point's own unit, and a vehicle's GNSS visits to the point whose
    ``desired/points`` id is that unit, where the plan lets each kind count."""
    plan = site.plan
    for unit in site.by_unit:
        for ts, data, _e in site.events(unit, "visit"):
            if data.get("source") == "gnss":
                where = data.get("point")
                kind = "gnss"
            else:
                where, kind = unit, "card"
            point = plan.point_by_unit.get(where) if isinstance(where, str) else None
            if point is not None and kind in point.visits:
                yield point.unit, ts, data


def _visits(site: _Site) -> Iterator[Visit]:
    plan, register, sup = site.plan, site.register, site.plan.supervision
    for unit, ts, data in _visit_events(site):
        started = parse_ts(data.get("started")) or ts
        badges = [b for b in data.get("badges") or [] if isinstance(b, str)]
        roles = _roles(data.get("roles"))
        if register and badges and all(b in register for b in badges):
            # The register is the authority on roles (a unit may know fewer of them).
            roles = dict(Counter(register[b].role for b in badges if register[b].role))
        people = data.get("people")
        if not isinstance(people, int) or isinstance(people, bool):
            people = len(badges)
        police = roles.get("police", 0) > 0
        patrol_led = not police and roles.get("patrol", 0) > 0
        chain = sup.police_led if police else sup.patrol if patrol_led else []
        yield Visit(
            unit=unit, started=started, people=people, badges=badges,
            cards=[c for c in data.get("cards") or [] if isinstance(c, str)], roles=roles,
            good=people >= plan.min_people, police_led=police, patrol_led=patrol_led,
            countersigned=(police or patrol_led) and all(roles.get(r, 0) > 0 for r in chain),
            occurrence=plan.occurrence_at(started))


def _cells(site: _Site) -> list[Cell]:
    plan = site.plan
    cells: list[Cell] = []
    for point in plan.points:
        spans = coverage(site.by_unit.get(point.unit, []))
        visits = [v for v in site.visits if v.unit == point.unit]
        missed = [e for _ts, _data, e in site.events(point.unit, "round_missed")]
        for day in site.days:
            for window in plan.point_windows(point):
                occ = plan.occurrence(window, day)
                here = [v for v in visits if occ.start <= v.started < occ.end]
                level = site.level_at(point.unit, occ.start)
                required = plan.rounds[level]  # type: ignore[index]
                good = sum(v.good for v in here)
                if good >= required:
                    verdict = "done"
                elif len(here) >= required:
                    verdict = "alone"
                elif here:
                    verdict = "short"
                elif _covers(spans, occ.start, occ.end):
                    verdict = "missed"
                else:
                    verdict = "no_data"
                cells.append(Cell(
                    unit=point.unit, point=point.name, zone=point.zone, date=day, window=window,
                    level=level, required=required, visits=len(here), good_visits=good,
                    police_led_visits=sum(v.police_led for v in here),
                    countersigned_visits=sum(v.police_led and v.countersigned for v in here),
                    round_missed=sum(_missed_in(e, occ) for e in missed),
                    verdict=verdict, start=occ.start, end=occ.end))
    return cells


def _routes(site: _Site) -> list[RouteResult]:
    groups: dict[str, set[str]] = defaultdict(set)
    for badge, person in (site.register or {}).items():
        if person.group:
            groups[person.group].add(badge)
    routes: list[RouteResult] = []
    for route in site.plan.routes:
        members = groups.get(route.group, set())
        for day in site.days:
            occ = site.plan.occurrence(route.window, day)
            seq = [v.unit for v in site.visits
                   if v.good and v.unit in route.points and occ.start <= v.started < occ.end
                   and members.intersection(v.badges)]
            missing = [u for u in route.points if u not in seq]
            if not seq:
                verdict = "missed"
            elif missing:
                verdict = "shortened"
            elif _is_subsequence(route.points, seq):
                verdict = "complete"
            else:
                verdict = "out_of_order"
            routes.append(RouteResult(group=route.group, date=day, window=route.window,
                                      planned=list(route.points), visited=seq, missing=missing,
                                      verdict=verdict))
    return routes


def _supervision(site: _Site) -> list[SupervisionDay]:
    """Per date: the date a visit's window started, else the visit's local date."""
    plan = site.plan
    days = {d: SupervisionDay(d) for d in site.days}
    for v in site.visits:
        entry = days.get(v.occurrence.date if v.occurrence else
                         v.started.astimezone(plan.tz).date())
        if entry is None:
            continue
        if v.police_led:
            entry.police_led_visits += 1
            if v.countersigned:
                entry.countersigned += 1
            else:
                entry.not_countersigned.append(v.as_dict(plan))
        elif v.patrol_led:
            entry.patrol_visits += 1
            if v.countersigned:
                entry.patrol_countersigned += 1
            else:
                entry.patrol_not_countersigned.append(v.as_dict(plan))
    return list(days.values())


def _leader(site: _Site) -> tuple[list[LeaderGap], list[dict[str, Any]]]:
    """Leader gaps, and every duty change of the period (for the timeline)."""
    plan, register, sup = site.plan, site.register, site.plan.supervision
    leaders = {b for b, p in (register or {}).items() if p.leader}

    def is_leader(badge: str, data: Mapping[str, Any]) -> bool:
        if register:
            return badge in leaders
        return data.get("leader") is True or site.badge_role.get(badge) == "police"

    duty: list[dict[str, Any]] = []
    for unit in plan.point_by_unit:
        for ts, data, _e in site.events(unit, "duty"):
            if site.in_period(ts):
                duty.append({"unit": unit, "ts": iso(ts), "badge": data.get("badge"),
                             "state": data.get("state"),
                             "leader": unit == sup.leader_unit
                             and is_leader(str(data.get("badge")), data)})
    horizon = min(site.period_end, site.latest) if site.latest else site.period_start
    if not sup.leader_levels or sup.leader_unit is None or horizon <= site.period_start:
        return [], duty
    raised: list[tuple[datetime, datetime, int]] = []
    for unit in plan.point_by_unit:
        bounds = [*site.levels.get(unit, []), (horizon, DEFAULT_LEVEL)]
        for (since, level), (until, _) in itertools.pairwise(bounds):
            a, b = max(since, site.period_start), min(until, horizon)
            if level in sup.leader_levels and a < b:
                raised.append((a, b, level))
    present: list[tuple[datetime, datetime]] = []
    on_since: datetime | None = None
    for ts, data, _e in site.events(sup.leader_unit, "duty"):
        on = [b for b in data.get("on_duty") or [] if isinstance(b, str)]
        here = any(is_leader(b, data) for b in on)
        if here and on_since is None:
            on_since = ts
        elif not here and on_since is not None:
            present.append((on_since, ts))
            on_since = None
    if on_since is not None:
        present.append((on_since, horizon))
    gaps = []
    for a, b in _subtract(_merge((a, b) for a, b, _ in raised), _merge(present)):
        level = min((lv for c, d, lv in raised if c < b and d > a), default=DEFAULT_LEVEL)
        gaps.append(LeaderGap(a, b, level))
    return gaps, duty


def _anomalies(site: _Site) -> list[dict[str, Any]]:
    plan = site.plan
    anomalies: list[dict[str, Any]] = []
    per_card: dict[tuple[str, str, date, str], list[Visit]] = defaultdict(list)
    for v in site.visits:
        if v.occurrence is None or v.occurrence.date not in site.days:
            continue
        for card in set(v.cards):
            per_card[(card, v.unit, v.occurrence.date, v.occurrence.window)].append(v)
    for (card, unit, day, window), vs in sorted(per_card.items()):
        if len(vs) > REPEAT_VISITS:
            anomalies.append({
                "kind": "repeat_visits", "ts": iso(vs[0].started), "unit": unit,
                "point": plan.point_by_unit[unit].name, "card": card,
                "badge": site.card_badge.get(card), "date": day.isoformat(), "window": window,
                "visits": len(vs)})
    taps: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    unknown: dict[tuple[str, str, date], list[datetime]] = defaultdict(list)
    for unit in site.by_unit:
        for ts, data, e in site.events(unit, "checkin"):
            if not site.in_period(ts):
                continue
            card = str(data.get("card"))
            if data.get("decision") in ("accepted", "repeat") and \
                    e.get("clock_synced") is not False:
                taps[card].append((ts, unit))
            elif data.get("decision") == "unknown":
                unknown[(card, unit, ts.astimezone(plan.tz).date())].append(ts)
    for card, seen in sorted(taps.items()):
        seen.sort()
        for (t1, u1), (t2, u2) in itertools.pairwise(seen):
            p1, p2 = plan.point_by_unit.get(u1), plan.point_by_unit.get(u2)
            if u1 == u2 or p1 is None or p2 is None:
                continue
            metres = _distance_m(p1, p2)
            if metres is None or metres <= PLACEMENT_ERROR_M:
                continue
            hours = max((t2 - t1).total_seconds(), 1.0) / 3600
            speed = (metres - PLACEMENT_ERROR_M) / 1000 / hours
            if speed > plan.max_speed_kmh:
                anomalies.append({
                    "kind": "impossible_travel", "ts": iso(t2), "unit": u2, "point": p2.name,
                    "card": card, "badge": site.card_badge.get(card), "from_unit": u1,
                    "from_point": p1.name, "from_ts": iso(t1), "distance_m": round(metres),
                    "speed_kmh": round(speed, 1)})
    for (card, unit, day), times in sorted(unknown.items()):
        point = plan.point_by_unit.get(unit)
        anomalies.append({
            "kind": "unknown_card", "ts": iso(min(times)), "unit": unit,
            "point": point.name if point else unit, "card": card, "badge": None,
            "date": day.isoformat(), "taps": len(times)})
    anomalies.sort(key=lambda a: (a["ts"], a["kind"], a["unit"]))
    return anomalies


def _missed_in(event: Mapping[str, Any], occ: WindowOccurrence) -> bool:
    data = event.get("data") or {}
    start = parse_ts(data.get("window_start"))
    if start is not None:
        return start == occ.start
    due = parse_ts(data.get("expected_by")) or parse_ts(event.get("ts"))
    return due is not None and occ.start < due <= occ.end


def _is_subsequence(planned: Sequence[str], seen: Sequence[str]) -> bool:
    it = iter(seen)
    return all(any(s == p for s in it) for p in planned)
