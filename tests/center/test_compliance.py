"""Compliance verdicts as pure functions: a table per verdict, and invariants (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from center.compliance import CELL_VERDICTS, ROUTE_VERDICTS, Person, coverage, evaluate
from center.plan import Plan, parse_plan

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 23)

PLAN = parse_plan({
    "site": "zhuantang", "timezone": "Asia/Shanghai",
    "windows": {"evening": "20:00-22:30", "night": "23:00-05:00"},
    "rounds": {"3": 1, "2": 2, "1": 3},
    "zones": [{"id": "Z1", "name": "转塘一区", "groups": ["G1", "G2"]}],
    "points": [
        {"unit": "pp-a", "name": "转塘小学", "zone": "Z1", "latitude": 30.16,
         "longitude": 120.08},
        {"unit": "pp-b", "name": "象山", "zone": "Z1", "latitude": 30.26, "longitude": 120.18},
        {"unit": "pp-c", "name": "茶村", "zone": "Z1", "windows": ["night"]},
        {"unit": "station", "name": "派出所", "zone": "Z1", "windows": []}],
    "routes": [{"group": "G1", "window": "night", "points": ["pp-a", "pp-b", "pp-c"]}],
    "supervision": {"leader_unit": "station"},
})
REGISTER = {
    "PO-1": Person("PO-1", "王建国", "police", "G1", "Z1", leader=True),
    "PO-2": Person("PO-2", "李明", "police", "G2", "Z1"),
    "PA-1": Person("PA-1", "张伟", "patrol", "G1", "Z1"),
    "PA-2": Person("PA-2", "陈静", "patrol", "G2", "Z1"),
    "VI-1": Person("VI-1", "刘洋", "village", "G1", "Z1"),
    "AU-1": Person("AU-1", "赵磊", "auxiliary", "G2", "Z1"),
}
ROLE = {b: p.role for b, p in REGISTER.items()}


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=TZ).astimezone(UTC)


def z(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Log:
    """Events of several units, with per-unit sequence numbers, as the ledger stores them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.seq: dict[str, Iterator[int]] = {}

    def add(self, unit: str, kind: str, t: datetime, synced: bool = True,
            **data: Any) -> dict[str, Any]:
        seq = next(self.seq.setdefault(unit, itertools.count(1)))
        event = {"v": 1, "id": f"{unit}:00000000000000aa:{seq}", "unit": unit,
                 "site": "zhuantang", "journal": "00000000000000aa", "seq": seq, "kind": kind,
                 "ts": z(t), "clock_synced": synced, "data": data}
        self.events.append(event)
        return event

    def visit(self, unit: str, t: datetime, *badges: str, cards: list[str] | None = None) -> None:
        roles: dict[str, int] = {}
        for b in badges:
            roles[ROLE[b]] = roles.get(ROLE[b], 0) + 1
        self.add(unit, "visit", t + timedelta(seconds=30), visit=f"{unit}:v", started=z(t),
                 ended=z(t + timedelta(seconds=20)), badges=list(badges),
                 cards=cards or [f"C-{b}" for b in badges], roles=roles, people=len(badges),
                 two_person=len(badges) >= 2, police_led=False, window=None, level=3)

    def alive(self, unit: str, t0: datetime, t1: datetime) -> None:
        """The unit recording from t0 to t1: a start and an event after."""
        self.add(unit, "unit", t0, state="started", component="all")
        self.add(unit, "reader", t1, reader="main", state="online", detail="")


def cell(result: Any, unit: str, window: str, day: date = DAY) -> Any:
    return next(c for c in result.cells if c.unit == unit and c.window == window and
                c.date == day)


def run(log: Log, first: date = DAY, last: date = DAY, plan: Plan = PLAN,
        register: dict[str, Person] | None = REGISTER) -> Any:
    return evaluate(plan, log.events, first, last, register)


# -- cells ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("badges_per_visit", "level", "verdict"), [
    ([["PO-1", "PA-1"]], 3, "done"),
    ([["PA-1", "VI-1"], ["PO-2", "AU-1"]], 2, "done"),
    ([["PA-1"]], 3, "alone"),
    ([["PA-1", "VI-1"], ["PA-2"]], 2, "alone"),
    ([["PA-1", "VI-1"]], 2, "short"),
    ([["PA-1"], ["PA-2", "VI-1"]], 1, "short"),
    ([], 3, "missed"),
])
def test_cell_verdicts(badges_per_visit: list[list[str]], level: int, verdict: str) -> None:
    log = Log()
    log.alive("pp-a", at(DAY, 19), at(DAY + timedelta(days=1), 6))
    if level != 3:
        log.add("pp-a", "level", at(DAY, 19, 30), level=level, previous=3, expires_at=None,
                by="doc")
    for i, badges in enumerate(badges_per_visit):
        log.visit("pp-a", at(DAY, 20, 10 + 20 * i), *badges)
    c = cell(run(log), "pp-a", "evening")
    assert (c.verdict, c.level, c.required) == (verdict, level, PLAN.rounds[level])
    assert c.visits == len(badges_per_visit)


def test_a_patrol_vehicles_gnss_visit_counts_at_the_point_it_names() -> None:
    log = Log()
    log.alive("pp-a", at(DAY, 19), at(DAY + timedelta(days=1), 6))
    t = at(DAY, 20, 30)
    # The vehicle's visit, as the vehicle unit records it (docs/vehicle.md): the point
    # is the desired/points id, which the centre gives as the patrol point's unit id.
    log.add("car-01", "visit", t + timedelta(minutes=3), visit="car-01:v", started=z(t),
            ended=z(t + timedelta(minutes=2)), badges=["PO-1", "PA-1"], cards=["C1", "C2"],
            roles={"police": 1, "patrol": 1}, people=2, two_person=True, police_led=True,
            window=None, level=3, source="gnss", point="pp-a")
    # A GNSS visit naming no point of the plan counts nowhere.
    log.add("car-01", "visit", t + timedelta(minutes=9), visit="car-01:w", started=z(t),
            ended=z(t + timedelta(minutes=8)), badges=["PO-1", "PA-1"], cards=["C1", "C2"],
            roles={"police": 1, "patrol": 1}, people=2, two_person=True, police_led=True,
            window=None, level=3, source="gnss", point="elsewhere")
    c = cell(run(log), "pp-a", "evening")
    assert (c.verdict, c.visits, c.good_visits, c.police_led_visits) == ("done", 1, 1, 1)
    assert all(c.visits == 0 for c in run(log).cells if c.unit != "pp-a")
    # A point whose plan takes only taps on its own reader does not count the vehicle.
    card_only = parse_plan({**PLAN.model_dump(mode="json", exclude_unset=True),
                            "points": [{"unit": "pp-a", "name": "转塘小学", "zone": "Z1",
                                        "visits": ["card"]}],
                            "routes": [], "supervision": {"leader_levels": []}})
    assert cell(run(log, plan=card_only), "pp-a", "evening").verdict == "missed"


def test_no_visits_and_no_proof_the_unit_was_up_is_no_data() -> None:
    log = Log()
    # Up before the window, nothing after its end: the ledger cannot show it was up.
    log.alive("pp-a", at(DAY, 18), at(DAY, 21))
    assert cell(run(log), "pp-a", "evening").verdict == "no_data"
    # A clean stop before the window and a start after it: offline through it.
    log = Log()
    log.add("pp-a", "unit", at(DAY, 18), state="started", component="all")
    log.add("pp-a", "unit", at(DAY, 19), state="stopping", component="all")
    log.add("pp-a", "unit", at(DAY, 23), state="started", component="all")
    assert cell(run(log), "pp-a", "evening").verdict == "no_data"


def test_a_sequence_gap_over_the_window_is_no_data() -> None:
    log = Log()
    log.add("pp-a", "unit", at(DAY, 18), state="started", component="all")
    lost = log.add("pp-a", "checkin", at(DAY, 20, 30), card="C-PA-1", decision="unknown")
    log.add("pp-a", "reader", at(DAY, 23), reader="main", state="online", detail="")
    assert cell(run(log), "pp-a", "evening").verdict == "missed"
    log.events.remove(lost)     # seq 2 never reached the ledger: a gap over the window
    assert cell(run(log), "pp-a", "evening").verdict == "no_data"


def test_a_short_restart_does_not_make_a_miss_no_data_but_a_long_one_does() -> None:
    for minutes, verdict in ((3, "missed"), (40, "no_data")):
        log = Log()
        log.add("pp-a", "unit", at(DAY, 18), state="started", component="all")
        log.add("pp-a", "unit", at(DAY, 21), state="stopping", component="all")
        log.add("pp-a", "unit", at(DAY, 21, minutes), state="started", component="all")
        log.add("pp-a", "reader", at(DAY, 23), reader="main", state="online", detail="")
        assert cell(run(log), "pp-a", "evening").verdict == verdict, minutes


def test_a_camera_restart_is_not_an_outage_and_unsynced_events_prove_nothing() -> None:
    log = Log()
    log.add("pp-a", "unit", at(DAY, 18), state="started", component="station")
    log.add("pp-a", "unit", at(DAY, 21), state="started", component="camera")
    log.add("pp-a", "reader", at(DAY, 23), reader="main", state="online", detail="")
    assert cell(run(log), "pp-a", "evening").verdict == "missed"
    log = Log()
    log.add("pp-a", "unit", at(DAY, 18), state="started", component="all")
    log.add("pp-a", "reader", at(DAY, 21), synced=False, reader="main", state="online",
            detail="")
    log.add("pp-a", "reader", at(DAY, 23), reader="main", state="online", detail="")
    assert cell(run(log), "pp-a", "evening").verdict == "no_data"


def test_the_level_at_the_window_start_decides_the_rounds() -> None:
    log = Log()
    log.alive("pp-a", at(DAY, 18), at(DAY + timedelta(days=1), 6))
    log.add("pp-a", "level", at(DAY, 21), level=1, previous=3, expires_at=None, by="doc")
    log.visit("pp-a", at(DAY, 20, 10), "PA-1", "VI-1")
    result = run(log)
    assert (cell(result, "pp-a", "evening").level, cell(result, "pp-a", "evening").verdict) \
        == (3, "done")
    night = cell(result, "pp-a", "night")
    assert (night.level, night.required, night.verdict) == (1, 3, "missed")


def test_cells_count_police_led_and_countersigned_visits_and_missed_rounds() -> None:
    log = Log()
    log.alive("pp-a", at(DAY, 18), at(DAY + timedelta(days=1), 6))
    log.visit("pp-a", at(DAY, 20, 5), "PO-1", "PA-1", "VI-1")       # countersigned
    log.visit("pp-a", at(DAY, 20, 40), "PO-2", "AU-1")              # police-led, not
    log.visit("pp-a", at(DAY, 21, 10), "PA-2", "VI-1")              # patrol, countersigned
    log.add("pp-a", "round_missed", at(DAY, 22, 30), window="evening",
            expected_by=z(at(DAY, 22, 30)), last_visit=None, level=3,
            window_start=z(at(DAY, 20)), window_end=z(at(DAY, 22, 30)))
    c = cell(run(log), "pp-a", "evening")
    assert (c.visits, c.good_visits, c.police_led_visits, c.countersigned_visits,
            c.round_missed) == (3, 3, 2, 1, 1)
    sup = run(log).supervision[0]
    assert (sup.police_led_visits, sup.countersigned, sup.patrol_visits,
            sup.patrol_countersigned) == (2, 1, 1, 1)
    assert [(n["unit"], n["started"]) for n in sup.not_countersigned] == \
        [("pp-a", "2026-11-23T12:40:00Z")]


def test_a_patrol_guards_visit_without_a_village_guard_is_not_countersigned() -> None:
    log = Log()
    log.visit("pp-a", at(DAY, 20, 5), "PA-1", "PA-2")
    sup = run(log).supervision[0]
    assert (sup.patrol_visits, sup.patrol_countersigned) == (1, 0)
    assert sup.patrol_not_countersigned[0]["roles"] == {"patrol": 2}


def test_the_night_window_counts_once_on_its_start_date() -> None:
    log = Log()
    log.alive("pp-c", at(DAY, 22), at(DAY + timedelta(days=2), 6))
    log.visit("pp-c", at(DAY + timedelta(days=1), 2, 30), "PA-1", "VI-1")   # 02:30 on the 24th
    result = run(log, DAY, DAY + timedelta(days=1))
    assert cell(result, "pp-c", "night", DAY).verdict == "done"
    assert cell(result, "pp-c", "night", DAY + timedelta(days=1)).verdict == "missed"
    assert sum(c.visits for c in result.cells) == 1


# -- routes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "verdict", "missing"), [
    (["pp-a", "pp-b", "pp-c"], "complete", []),
    (["pp-a", "pp-c", "pp-b", "pp-c"], "complete", []),
    (["pp-b", "pp-a", "pp-c"], "out_of_order", []),
    (["pp-a", "pp-c"], "shortened", ["pp-b"]),
    ([], "missed", ["pp-a", "pp-b", "pp-c"]),
])
def test_route_verdicts(order: list[str], verdict: str, missing: list[str]) -> None:
    log = Log()
    for i, unit in enumerate(order):
        log.visit(unit, at(DAY, 23, 10 + 15 * i), "PA-1", "VI-1")
    # Another group's visits and a lone member's do not count for G1.
    log.visit("pp-b", at(DAY + timedelta(days=1), 1), "PA-2", "AU-1")
    log.visit("pp-b", at(DAY + timedelta(days=1), 2), "PA-1")
    (route,) = run(log).routes
    assert (route.verdict, route.missing, route.visited) == (verdict, missing, order)


def test_without_a_register_no_group_is_known() -> None:
    log = Log()
    log.visit("pp-a", at(DAY, 23, 10), "PA-1", "VI-1")
    assert run(log, register=None).routes[0].verdict == "missed"


# -- leader on duty ---------------------------------------------------------------------------


def test_leader_gaps_are_the_raised_times_without_a_leader_on_duty() -> None:
    log = Log()
    log.alive("pp-a", at(DAY, 6), at(DAY + timedelta(days=1), 8))
    log.add("pp-a", "level", at(DAY, 20), level=2, previous=3, expires_at=None, by="doc")
    log.add("station", "duty", at(DAY, 21), card="C-PO-1", badge="PO-1", state="on",
            on_duty=["PO-1"], handover_from=None)
    log.add("station", "duty", at(DAY, 22), card="C-PA-1", badge="PA-1", state="on",
            on_duty=["PO-1", "PA-1"], handover_from=None)
    log.add("station", "duty", at(DAY, 23), card="C-PO-1", badge="PO-1", state="off",
            on_duty=["PA-1"], handover_from=None)
    log.add("pp-a", "level", at(DAY + timedelta(days=1), 1), level=3, previous=2,
            expires_at=None, by=None)
    result = run(log)
    assert [(row["badge"], row["state"], row["leader"]) for row in result.duty] == [
        ("PO-1", "on", True), ("PA-1", "on", False), ("PO-1", "off", True)]
    gaps = result.leader
    assert [(g.start, g.end, g.level, g.length_s) for g in gaps] == [
        (at(DAY, 20), at(DAY, 21), 2, 3600),
        (at(DAY, 23), at(DAY + timedelta(days=1), 1), 2, 7200)]
    # A police officer who is not a leader does not fill the gap; without a register he does.
    log.add("station", "duty", at(DAY, 23, 30), card="C-PO-2", badge="PO-2", state="on",
            on_duty=["PA-1", "PO-2"], handover_from=None)
    assert len(run(log).leader) == 2
    log.add("pp-a", "checkin", at(DAY, 23, 20), card="C-PO-2", badge="PO-2", role="police",
            decision="accepted")
    assert [g.end for g in run(log, register=None).leader][-1] == at(DAY, 23, 30)


def test_no_raised_level_no_leader_gap() -> None:
    log = Log()
    log.alive("pp-a", at(DAY, 6), at(DAY + timedelta(days=1), 8))
    assert run(log).leader == []


# -- anomalies --------------------------------------------------------------------------------


def test_more_than_three_visits_by_one_card_in_one_window_is_an_anomaly() -> None:
    log = Log()
    for i in range(4):
        log.visit("pp-a", at(DAY, 20, 5 + 10 * i), "PA-1", "VI-1" if i == 0 else "PA-1")
    kinds = [(a["kind"], a["card"], a["visits"]) for a in run(log).anomalies]
    assert kinds == [("repeat_visits", "C-PA-1", 4)]
    log = Log()
    for i in range(3):
        log.visit("pp-a", at(DAY, 20, 5 + 10 * i), "PA-1", "VI-1")
    assert run(log).anomalies == []


def test_a_card_at_two_distant_points_too_soon_is_impossible_travel() -> None:
    log = Log()   # pp-a and pp-b are about 14.6 km apart
    log.add("pp-a", "checkin", at(DAY, 20, 0), card="C-PA-1", badge="PA-1", role="patrol",
            decision="accepted")
    log.add("pp-b", "checkin", at(DAY, 20, 5), card="C-PA-1", badge="PA-1", role="patrol",
            decision="accepted")
    log.add("pp-b", "checkin", at(DAY, 21, 0), card="C-PA-2", badge="PA-2", role="patrol",
            decision="accepted")
    log.add("pp-a", "checkin", at(DAY, 22, 0), card="C-PA-2", badge="PA-2", role="patrol",
            decision="accepted")
    (anomaly,) = run(log).anomalies
    assert anomaly["kind"] == "impossible_travel" and anomaly["card"] == "C-PA-1"
    assert anomaly["from_unit"] == "pp-a" and anomaly["unit"] == "pp-b"
    assert 14000 < anomaly["distance_m"] < 15000 and anomaly["speed_kmh"] > 150


def test_unknown_cards_are_reported_per_card_unit_and_date() -> None:
    log = Log()
    for minute in (1, 2, 3):
        log.add("pp-a", "checkin", at(DAY, 20, minute), card="0A0B0C0D0E", decision="unknown")
    (anomaly,) = run(log).anomalies
    assert (anomaly["kind"], anomaly["taps"], anomaly["point"]) == ("unknown_card", 3, "转塘小学")


def test_every_verdict_has_a_name_the_report_knows() -> None:
    assert set(CELL_VERDICTS) == {"done", "alone", "short", "missed", "no_data"}
    assert set(ROUTE_VERDICTS) == {"complete", "out_of_order", "shortened", "missed"}


# -- invariants -------------------------------------------------------------------------------

CELL_RANK = {"no_data": 0, "missed": 0, "short": 1, "alone": 2, "done": 3}
ROUTE_RANK = {"missed": 0, "shortened": 1, "out_of_order": 2, "complete": 3}
PEOPLE = st.lists(st.sampled_from(sorted(REGISTER)), min_size=1, max_size=4, unique=True)
UNITS = st.sampled_from(["pp-a", "pp-b", "pp-c"])
MINUTES = st.integers(min_value=0, max_value=2 * 24 * 60 - 1)


def _log(visits: list[tuple[str, int, list[str]]], levels: list[tuple[int, int]],
         online: bool) -> Log:
    log = Log()
    start = at(DAY, 0)
    if online:
        for unit in ("pp-a", "pp-b", "pp-c"):
            log.alive(unit, start - timedelta(hours=1), start + timedelta(days=3))
    for minute, level in levels:
        log.add("pp-a", "level", start + timedelta(minutes=minute), level=level, previous=3,
                expires_at=None, by="doc")
    for unit, minute, badges in visits:
        log.visit(unit, start + timedelta(minutes=minute), *badges)
    return log


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(visits=st.lists(st.tuples(UNITS, MINUTES, PEOPLE), max_size=12),
       levels=st.lists(st.tuples(MINUTES, st.sampled_from([1, 2, 3])), max_size=3),
       online=st.booleans(), extra=st.tuples(UNITS, MINUTES, st.sampled_from(
           [["PO-1", "PA-1"], ["PA-1", "VI-1"], ["PA-2", "AU-1", "VI-1"]])))
def test_adding_a_good_visit_never_makes_a_verdict_worse(
        visits: list[tuple[str, int, list[str]]], levels: list[tuple[int, int]], online: bool,
        extra: tuple[str, int, list[str]]) -> None:
    last = DAY + timedelta(days=1)
    before = evaluate(PLAN, _log(visits, levels, online).events, DAY, last, REGISTER)
    after = evaluate(PLAN, _log([*visits, extra], levels, online).events, DAY, last, REGISTER)
    assert len(before.cells) == len(after.cells)
    for b, a in zip(before.cells, after.cells, strict=True):
        assert CELL_RANK[a.verdict] >= CELL_RANK[b.verdict], (b, a)
        assert a.good_visits >= b.good_visits
    for b, a in zip(before.routes, after.routes, strict=True):
        assert ROUTE_RANK[a.verdict] >= ROUTE_RANK[b.verdict], (b, a)


@settings(max_examples=150, deadline=None)
@given(minute=st.integers(min_value=0, max_value=6 * 60 - 1), days=st.integers(1, 4))
def test_a_window_crossing_midnight_counts_once_on_its_start_date(minute: int,
                                                                  days: int) -> None:
    log = Log()
    visit_at = at(DAY, 23) + timedelta(minutes=minute)
    log.visit("pp-c", visit_at, "PA-1", "VI-1")
    result = evaluate(PLAN, log.events, DAY - timedelta(days=1),
                      DAY + timedelta(days=days), REGISTER)
    hits = [c for c in result.cells if c.visits]
    assert [(c.unit, c.window, c.date) for c in hits] == [("pp-c", "night", DAY)]
    # The date is the local date the window started, also when the visit is after midnight.
    assert hits[0].date == (visit_at - timedelta(minutes=minute)).astimezone(TZ).date()


def test_coverage_joins_contiguous_events_only() -> None:
    log = Log()
    log.alive("pp-a", at(DAY, 18), at(DAY, 23))
    assert coverage(log.events) == [(at(DAY, 18), at(DAY, 23))]
    assert all(v in CELL_RANK for v in CELL_VERDICTS)
