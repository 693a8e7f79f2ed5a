"""The patrol rules as pure logic: card decisions, visits, duty, windows, missed rounds.

Time is a :class:`ManualClock` (wall clock, boot-relative clock and sync state
set by hand), so windows across midnight, an NTP step and a stricter level
are played exactly. :class:`Store` plays the journal: it applies each step's
state keys to a dict and collects the events, and a "restart" builds the
logic again from that dict.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_py.clock import ManualClock, parse_rfc3339, rfc3339_ms
from firmware_py.config import DutySection, PatrolSection
from firmware_py.desired import TimeView
from firmware_py.patrol import (
    ACCEPTED,
    NOT_VALID_NOW,
    REPEAT,
    SIGNALS,
    UNKNOWN,
    CardCheck,
    DutyPost,
    DutyState,
    Instant,
    PatrolPoint,
    PatrolState,
    Step,
    Windows,
    check_card,
    wall_of,
)
from tests.support.schemas import validator

TZ = ZoneInfo("Asia/Shanghai")
BOOT1 = "00000000-0000-4000-8000-000000000001"
BOOT2 = "00000000-0000-4000-8000-000000000002"

CARDS = {"version": 3, "cards": [
    {"card": "14008EC793", "badge": "PO-1", "role": "police"},
    {"card": "dec:0000001111", "badge": "PA-1", "role": "patrol"},
    {"card": "w26:1,2222", "badge": "VI-1", "role": "village"},
    {"card": "0000000001", "badge": "PA-2", "role": "patrol"},
    {"card": "0000000002", "badge": "PA-2", "role": "patrol"},   # a second card, same person
    {"card": "0000000003", "badge": "PO-2", "role": "police"},
    {"card": "0000000004", "badge": "OLD", "role": "patrol", "valid_to": "2026-01-01T00:00:00Z"},
    {"card": "0000000005", "badge": "NEW", "role": "patrol",
     "valid_from": "2027-06-01T00:00:00Z"},
]}
#: The list with an auxiliary (协警) and a station leader (所领导), as the register sends it.
WITH_AUXILIARY = {"version": 4, "cards": [
    *CARDS["cards"],
    {"card": "0000000006", "badge": "AU-1", "role": "auxiliary"},
    {"card": "0000000007", "badge": "LD-1", "role": "police", "leader": True},
]}
AU1, LD1 = "0000000006", "0000000007"
PO1, PA1, VI1 = "14008EC793", f"{1111:010X}", f"{(1 << 16) | 2222:010X}"
PA2, PA2B, PO2, OLD, NEW, STRANGER = ("0000000001", "0000000002", "0000000003", "0000000004",
                                      "0000000005", "AABBCCDDEE")


def local_ms(text: str) -> int:
    """``"2026-11-28 20:00"`` in the unit's zone → epoch ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp() * 1000)


def local(ms_or_text: int | str) -> str:
    ms = ms_or_text if isinstance(ms_or_text, int) else int(
        parse_rfc3339(ms_or_text).timestamp() * 1000)
    return datetime.fromtimestamp(ms / 1000, tz=TZ).strftime("%Y-%m-%d %H:%M")


def clock_at(text: str, synced: bool = True) -> ManualClock:
    return ManualClock(wall_ms=local_ms(text), monotonic=1000.0, synced=synced, boot_id=BOOT1)


def view(clock: ManualClock, lower_ms: int | None = None) -> TimeView:
    return TimeView(clock.synced(), clock.wall_ms(), lower_ms)


def patrol_cfg(**kw: Any) -> PatrolSection:
    base: dict[str, Any] = {"visit_gap_s": 60, "min_people": 2,
                            "windows": {"day": "08:30-11:20", "evening": "20:00-22:30",
                                        "night": "23:00-05:00"},
                            "round_every_min": {3: 60, 2: 45, 1: 30}}
    base.update(kw)
    return PatrolSection.model_validate(base)


class Store:
    """Plays the journal: state keys in a dict, events in a list (each validated)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []

    def apply(self, logic: PatrolPoint | DutyPost, steps: list[Step]) -> list[dict[str, Any]]:
        out = []
        for step in steps:
            for key, value in step.state.items():
                if value is None:
                    self.state.pop(key, None)
                else:
                    self.state[key] = json.loads(json.dumps(value))  # as the journal stores it
            if step.kind is not None:
                assert step.data is not None
                validator(f"events/{step.kind}").validate(step.data)
                self.events.append((step.kind, step.data))
                out.append({"kind": step.kind, **step.data})
            logic.commit(step)
        return out

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


class Point:
    """A patrol point with its store and clock: tap, tick, restart."""

    def __init__(self, clock: ManualClock, cfg: PatrolSection | None = None,
                 cards: dict[str, Any] | None = None, level: int = 3) -> None:
        self.clock, self.cfg, self.level = clock, cfg or patrol_cfg(), level
        self.cards = CARDS if cards is None else cards
        self.store = Store()
        self.logic = PatrolPoint(self.cfg, TZ, "u:j:v")
        self.store.apply(self.logic, self.logic.start(self.now()))

    def now(self) -> Instant:
        return Instant.now(self.clock)

    def tap(self, card: str) -> tuple[str, str, dict[str, Any]]:
        check = check_card(self.cards, card, view(self.clock))
        out = self.logic.tap(card, "main", check, self.now(), self.level)
        events = self.store.apply(self.logic, out.steps)
        return out.decision, out.signal, events[-1]

    def tick(self) -> list[dict[str, Any]]:
        now = self.now()
        events = self.store.apply(self.logic, self.logic.due(now))
        return events + self.store.apply(self.logic, self.logic.rounds(now, self.level))

    def run(self, seconds: float, step_s: float = 10.0) -> list[dict[str, Any]]:
        """Advance time, ticking every ``step_s``; the events the ticks made."""
        out: list[dict[str, Any]] = []
        left = seconds
        while left > 0:
            dt = min(step_s, left)
            self.clock.advance(dt)
            left -= dt
            out += self.tick()
        return out

    def restart(self) -> None:
        state = PatrolState.from_state(json.loads(json.dumps(self.store.state)))
        self.logic = PatrolPoint(self.cfg, TZ, "u:j:v", state)
        self.store.apply(self.logic, self.logic.start(self.now()))


# -- card decisions -------------------------------------------------------------------------


def test_card_decisions_follow_the_card_list_and_its_validity() -> None:
    v = view(clock_at("2026-11-28 20:00"))
    assert check_card(CARDS, PO1, v) == CardCheck(ACCEPTED, CARDS["cards"][0])
    assert check_card(CARDS, PA1, v).badge == "PA-1"      # dec: the number printed on it
    assert check_card(CARDS, VI1, v).role == "village"    # w26: facility,card
    unknown = check_card(CARDS, STRANGER, v)
    assert unknown.decision == UNKNOWN and unknown.badge is None
    expired = check_card(CARDS, OLD, v)
    assert expired.decision == NOT_VALID_NOW and "expired" in (expired.reason or "")
    early = check_card(CARDS, NEW, v)
    assert early.decision == NOT_VALID_NOW and "valid from" in (early.reason or "")
    assert early.badge == "NEW"   # a known card is named even when refused
    assert check_card(None, PO1, v).reason == "no card list yet"


def test_an_unsynchronised_clock_refuses_only_cards_provably_out_of_date() -> None:
    # A Pi booted in 1970: its wall clock proves nothing; the persisted lower bound
    # on the true time (an anchor from a signed message) does.
    clock = ManualClock(wall_ms=0, synced=False)
    anchored = TimeView(False, 0, local_ms("2026-11-28 20:00"))
    assert check_card(CARDS, OLD, anchored).decision == NOT_VALID_NOW
    assert check_card(CARDS, NEW, anchored).decision == ACCEPTED  # may well be valid by now
    blind = view(clock)
    assert check_card(CARDS, OLD, blind).decision == ACCEPTED
    assert check_card(CARDS, PO1, blind).decision == ACCEPTED


# -- visits ------------------------------------------------------------------------------------


def test_taps_closer_than_the_gap_are_one_visit_that_closes_a_gap_after_the_last() -> None:
    p = Point(clock_at("2026-11-28 20:10"))
    assert p.tap(PO1)[:2] == (ACCEPTED, "alone")
    p.run(40)
    decision, signal, checkin = p.tap(PA1)
    assert (decision, signal) == (ACCEPTED, "recorded")
    assert checkin["visit"] == "u:j:v1" and checkin["people"] == 2
    assert p.run(50) == []                    # 50 s after the last tap: still open
    (visit,) = p.run(10)                      # 60 s: closed
    assert visit["kind"] == "visit"
    assert visit["visit"] == "u:j:v1" and visit["cards"] == [PO1, PA1]
    assert visit["badges"] == ["PO-1", "PA-1"] and visit["roles"] == {"police": 1, "patrol": 1}
    assert visit["people"] == 2 and visit["two_person"] and visit["police_led"]
    assert visit["window"] == "evening" and visit["level"] == 3 and visit["clock_synced"]
    assert local(visit["started"]) == "2026-11-28 20:10"
    assert parse_rfc3339(visit["ended"]).timestamp() - \
        parse_rfc3339(visit["started"]).timestamp() == pytest.approx(40)
    # The next tap opens a new visit.
    assert p.tap(PA2)[2]["visit"] == "u:j:v2"


def test_one_person_is_recorded_but_told_to_wait_for_a_second() -> None:
    p = Point(clock_at("2026-11-28 21:00"))
    assert p.tap(PA1)[1] == "alone"
    p.run(30)
    decision, signal, _ = p.tap(PA1)   # the same card again: still alone
    assert (decision, signal) == (REPEAT, "alone")
    (visit,) = p.run(60)
    assert visit["people"] == 1 and not visit["two_person"] and not visit["police_led"]
    assert visit["taps"] == 2 and visit["repeats"] == 1


def test_the_same_person_again_is_a_repeat_even_with_another_card() -> None:
    p = Point(clock_at("2026-11-28 21:00"))
    p.tap(PA2)
    p.run(5)
    decision, _, checkin = p.tap(PA2B)         # PA-2's second card
    assert decision == REPEAT and checkin["people"] == 1
    p.run(5)
    assert p.tap(PO1)[:2] == (ACCEPTED, "recorded")
    (visit,) = p.run(60)
    assert visit["cards"] == [PA2, PA2B, PO1] and visit["people"] == 2


@pytest.mark.parametrize(("cards", "police_led"), [
    ([PO1, PA1], True),          # police countersigned by a patrol guard
    ([PO1, VI1], True),          # ... or a village guard
    ([VI1, PO1], True),          # in any order
    ([PO1, PO2], False),         # two police: no countersignature
    ([PA1, VI1], False),         # no police
    ([PO1], False),
])
def test_police_led_needs_a_police_card_countersigned_by_a_patrol_or_village_card(
        cards: list[str], police_led: bool) -> None:
    p = Point(clock_at("2026-11-28 23:30"))
    for card in cards:
        p.tap(card)
        p.run(5)
    (visit,) = p.run(60)
    assert visit["police_led"] is police_led
    assert visit["two_person"] is (len(cards) >= 2)
    assert visit["window"] == "night"


def test_an_auxiliary_is_carried_in_checkins_and_counted_in_the_visits_roles() -> None:
    p = Point(clock_at("2026-11-28 20:10"), cards=WITH_AUXILIARY)
    decision, signal, checkin = p.tap(AU1)
    assert (decision, signal) == (ACCEPTED, "alone")
    assert checkin["role"] == "auxiliary" and checkin["badge"] == "AU-1"
    p.run(5)
    assert p.tap(VI1)[1] == "recorded"
    (visit,) = p.run(60)
    assert visit["roles"] == {"auxiliary": 1, "village": 1}
    assert visit["people"] == 2 and visit["two_person"] and not visit["police_led"]


@pytest.mark.parametrize(("cards", "police_led"), [
    ([PO1, AU1], False),         # an auxiliary does not countersign
    ([AU1, PA1], False),         # nor lead
    ([PO1, AU1, PA1], True),     # police countersigned by a patrol guard, auxiliary along
    ([LD1, VI1], True),          # a leader is police
])
def test_police_led_stays_keyed_on_police_with_auxiliaries_and_leaders(
        cards: list[str], police_led: bool) -> None:
    p = Point(clock_at("2026-11-28 23:30"), cards=WITH_AUXILIARY)
    for card in cards:
        assert p.tap(card)[0] == ACCEPTED
        p.run(5)
    (visit,) = p.run(60)
    assert visit["police_led"] is police_led
    assert sum(visit["roles"].values()) == len(cards)


def test_min_people_sets_what_a_round_needs() -> None:
    p = Point(clock_at("2026-11-28 09:00"), patrol_cfg(min_people=3))
    assert p.tap(PO1)[1] == "alone"
    assert p.tap(PA1)[1] == "alone"
    assert p.tap(VI1)[1] == "recorded"
    (visit,) = p.run(60)
    assert visit["people"] == 3 and visit["two_person"] and visit["window"] == "day"
    p1 = Point(clock_at("2026-11-28 09:00"), patrol_cfg(min_people=1))
    assert p1.tap(PA1)[1] == "recorded"


def test_refused_taps_are_linked_to_the_visit_but_neither_open_nor_extend_it() -> None:
    p = Point(clock_at("2026-11-28 21:00"))
    decision, signal, checkin = p.tap(STRANGER)
    assert (decision, signal) == (UNKNOWN, "rejected")
    assert checkin["visit"] is None and checkin["badge"] is None and checkin["role"] is None
    p.tap(PO1)
    p.run(50)
    decision, signal, checkin = p.tap(OLD)
    assert (decision, signal) == (NOT_VALID_NOW, "rejected")
    assert checkin["visit"] == "u:j:v1" and checkin["badge"] == "OLD"
    (visit,) = p.run(10)                     # 60 s after PO1: the refused tap did not extend it
    assert visit["rejected"] == [OLD] and visit["people"] == 1


def test_a_tap_after_the_gap_closes_the_old_visit_first() -> None:
    p = Point(clock_at("2026-11-28 21:00"))
    p.tap(PO1)
    p.clock.advance(120)                     # no tick in between
    p.tap(PA1)
    kinds = [k for k, _ in p.store.events]
    assert kinds[-2:] == ["visit", "checkin"]
    assert p.store.kinds("visit")[0]["people"] == 1
    assert p.store.kinds("checkin")[-1]["visit"] == "u:j:v2"


def test_an_open_visit_survives_a_restart_and_one_from_another_boot_closes_at_once() -> None:
    p = Point(clock_at("2026-11-28 21:00"))
    p.tap(PO1)
    p.run(20)
    p.restart()                              # the station restarted, same boot
    assert p.tap(PA1)[1] == "recorded"       # joins the visit opened before
    assert p.logic.state.visit is not None and p.logic.state.visit.id == "u:j:v1"
    p.clock.reboot(BOOT2, monotonic=10.0)    # power cut
    p.restart()
    (visit,) = p.tick()
    assert visit["people"] == 2 and visit["two_person"]
    assert p.tap(PA2)[2]["visit"] == "u:j:v2"


def test_visit_times_taken_before_ntp_are_redated_when_it_syncs() -> None:
    clock = ManualClock(wall_ms=86_400_000, monotonic=50.0, synced=False, boot_id=BOOT1)
    p = Point(clock)
    p.tap(PO1)
    p.run(10)
    p.tap(PA1)
    p.run(30)
    clock.set_wall(local_ms("2026-11-28 21:00"), synced=True)   # NTP steps the clock
    (visit,) = p.run(30)
    assert visit["clock_synced"] is True and visit["window"] == "evening"
    # Started 70 s before "now" (21:00 + 30 s), by the boot-relative clock.
    assert local(visit["started"]) == "2026-11-28 20:59"
    mark = Instant(5, 1.0, BOOT2, False)
    assert wall_of(mark, Instant.now(clock)) == (5, False)   # another boot: cannot redate


# -- windows -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "window"), [
    ("2026-11-28 22:59", None), ("2026-11-28 23:00", "night"), ("2026-11-29 00:00", "night"),
    ("2026-11-29 04:59", "night"), ("2026-11-29 05:00", None), ("2026-11-28 08:30", "day"),
    ("2026-11-28 11:19", "day"), ("2026-11-28 11:20", None), ("2026-11-28 22:29", "evening"),
])
def test_windows_are_local_time_and_may_cross_midnight(when: str, window: str | None) -> None:
    w = Windows({"day": "08:30-11:20", "evening": "20:00-22:30", "night": "23:00-05:00"}, TZ)
    assert w.at(local_ms(when)) == window


def test_occurrences_of_a_window_across_midnight_start_the_evening_before() -> None:
    w = Windows({"night": "23:00-05:00"}, TZ)
    (occ,) = w.occurrences(local_ms("2026-11-29 02:00"), lookback_ms=0)
    assert (local(occ.start_ms), local(occ.end_ms)) == ("2026-11-28 23:00", "2026-11-29 05:00")
    assert occ.key == "night@2026-11-28"
    assert w.occurrences(local_ms("2026-11-29 12:00"), lookback_ms=0) == []


# -- missed rounds ---------------------------------------------------------------------------------


def test_one_round_missed_per_interval_not_a_flood() -> None:
    p = Point(clock_at("2026-11-28 19:00"))
    events = p.run(4 * 3600, step_s=7)       # ticks every 7 s until 23:00
    missed = [e for e in events if e["kind"] == "round_missed"]
    # evening 20:00-22:30 at 60 min: due 21:00 and 22:00; 23:00 is past the window's end.
    assert [local(e["expected_by"]) for e in missed] == ["2026-11-28 21:00", "2026-11-28 22:00"]
    assert [e["missed"] for e in missed] == [1, 2]
    assert all(e["window"] == "evening" and e["level"] == 3 and e["last_visit"] is None
               and e["interval_min"] == 60 for e in missed)


def test_a_two_person_visit_resets_the_interval_and_a_lone_one_does_not() -> None:
    p = Point(clock_at("2026-11-28 20:00"))
    p.run(30 * 60)
    p.tap(PA1)                                # 20:30 alone: not a round
    events = p.run(40 * 60)
    assert [local(e["expected_by"]) for e in events if e["kind"] == "round_missed"] == \
        ["2026-11-28 21:00"]
    p.tap(PO1)
    p.tap(VI1)                                # 21:10: a two-person visit
    events = p.run(70 * 60)                   # to 22:20
    missed = [e for e in events if e["kind"] == "round_missed"]
    assert [local(e["expected_by"]) for e in missed] == ["2026-11-28 22:10"]
    assert local(missed[0]["last_visit"]) == "2026-11-28 21:10"
    assert local(missed[0]["since"]) == "2026-11-28 21:10"


def test_missed_rounds_in_a_window_across_midnight() -> None:
    cfg = patrol_cfg(windows={"night": "23:00-05:00"}, round_every_min={3: 120})
    p = Point(clock_at("2026-11-28 22:00"), cfg)
    events = p.run(8 * 3600, step_s=30)
    missed = [e for e in events if e["kind"] == "round_missed"]
    assert [local(e["expected_by"]) for e in missed] == \
        ["2026-11-29 01:00", "2026-11-29 03:00", "2026-11-29 05:00"]
    assert {local(e["window_start"]) for e in missed} == {"2026-11-28 23:00"}


def test_the_ntp_step_at_first_sync_raises_no_false_alarm() -> None:
    # Booted with the clock at 1970 (no RTC, no network yet), unsynchronised.
    clock = ManualClock(wall_ms=1_000_000, monotonic=20.0, synced=False, boot_id=BOOT1)
    p = Point(clock)
    p.run(600)
    p.tap(PO1)
    p.tap(PA1)                                # a proper round, on the wrong clock
    assert [e["kind"] for e in p.run(1200)] == ["visit"]   # unsynced: no rounds checked
    # NTP: the wall clock jumps 56 years ahead, into the evening window.
    clock.set_wall(local_ms("2026-11-28 21:00"), synced=True)
    events = p.run(30 * 60)
    assert [e for e in events if e["kind"] == "round_missed"] == []   # last round 50 min ago
    events = p.run(20 * 60)                   # 21:50: 70 min since the round, 60 allowed
    (missed,) = [e for e in events if e["kind"] == "round_missed"]
    assert local(missed["expected_by"]) == "2026-11-28 21:40"
    assert local(missed["last_visit"]) == "2026-11-28 20:40"   # redated by the monotonic clock


def test_a_clock_stepped_back_by_ntp_moves_no_deadline() -> None:
    # fake-hwclock restored a time hours ahead of the truth; NTP steps it back.
    p = Point(clock_at("2026-11-29 01:00", synced=False))
    p.run(60)
    p.clock.set_wall(local_ms("2026-11-28 20:05"), synced=True)
    p.tap(PO1)
    p.tap(PA1)
    events = p.run(60 * 60)                    # to 21:05
    missed = [e for e in events if e["kind"] == "round_missed"]
    assert [local(e["expected_by"]) for e in missed] == ["2026-11-28 21:05"]


def test_nothing_is_missed_while_the_clock_is_unsynchronised() -> None:
    p = Point(clock_at("2026-11-28 20:00", synced=False))
    assert [e for e in p.run(3 * 3600, step_s=60) if e["kind"] == "round_missed"] == []


def test_a_stricter_level_gives_one_interval_from_the_change() -> None:
    cfg = patrol_cfg(round_every_min={3: 120, 1: 30})
    p = Point(clock_at("2026-11-28 20:00"), cfg)
    p.run(50 * 60)
    p.level = 1                               # 20:50: level 1, rounds every 30 min
    events = p.run(75 * 60)                   # to 22:05
    missed = [e for e in events if e["kind"] == "round_missed"]
    assert [local(e["expected_by"]) for e in missed] == ["2026-11-28 21:20", "2026-11-28 21:50"]
    assert all(e["level"] == 1 and e["interval_min"] == 30 for e in missed)
    p.level = 3                               # back to normal: 120 min after the last miss
    events = p.run(25 * 60)
    assert [e for e in events if e["kind"] == "round_missed"] == []


def test_reported_misses_are_not_repeated_after_a_restart() -> None:
    p = Point(clock_at("2026-11-28 20:00"))
    p.run(65 * 60)
    assert len(p.store.kinds("round_missed")) == 1
    p.restart()
    p.run(30 * 60)
    assert len(p.store.kinds("round_missed")) == 1
    p.run(30 * 60)                            # 22:05: the 22:00 miss, once
    assert [local(e["expected_by"]) for e in p.store.kinds("round_missed")] == \
        ["2026-11-28 21:00", "2026-11-28 22:00"]


def test_time_the_unit_was_off_is_not_counted_as_missed() -> None:
    p = Point(clock_at("2026-11-28 20:00"))
    p.run(30 * 60)
    p.clock.reboot(BOOT2, monotonic=15.0)
    p.clock.set_wall(local_ms("2026-11-28 21:45"), synced=True)
    p.restart()                               # back after a power cut, at 21:45
    p.run(50 * 60)
    # Watching began at 21:45: the next round was due at 22:45, after the window's end.
    assert p.store.kinds("round_missed") == []


# -- duty ------------------------------------------------------------------------------------


class Post:
    def __init__(self, clock: ManualClock, **duty: Any) -> None:
        self.clock = clock
        self.cfg = DutySection.model_validate({"handover_gap_s": 600, "repeat_s": 10, **duty})
        self.store = Store()
        self.logic = DutyPost(self.cfg)
        self.cards: dict[str, Any] = CARDS

    def tap(self, card: str) -> tuple[str, str, list[dict[str, Any]]]:
        check = check_card(self.cards, card, view(self.clock))
        out = self.logic.tap(card, "main", check, Instant.now(self.clock))
        return out.decision, out.signal, self.store.apply(self.logic, out.steps)

    def restart(self) -> None:
        self.logic = DutyPost(self.cfg, DutyState.from_state(
            json.loads(json.dumps(self.store.state))))


def test_a_tap_toggles_duty_and_the_event_lists_who_is_on_duty() -> None:
    k = Post(clock_at("2026-11-28 08:00"))
    decision, signal, (checkin, duty) = k.tap(PA1)
    assert (decision, signal) == (ACCEPTED, "recorded")
    assert checkin["duty"] == "on" and checkin["visit"] is None
    assert duty["state"] == "on" and duty["on_duty"] == ["PA-1"] and duty["handover_from"] is None
    k.clock.advance(60)
    duty = k.tap(VI1)[2][1]
    assert duty["on_duty"] == ["PA-1", "VI-1"]
    k.clock.advance(4 * 3600)
    decision, signal, (_, duty) = k.tap(PA1)
    assert signal == "off_duty" and duty["state"] == "off" and duty["on_duty"] == ["VI-1"]
    assert duty["shift_s"] == pytest.approx(4 * 3600 + 60)
    assert local(duty["on_since"]) == "2026-11-28 08:00"
    assert k.tap(STRANGER)[:2] == (UNKNOWN, "rejected")
    assert k.store.state["duty/on"].keys() == {"VI-1"}


def test_an_auxiliary_goes_on_duty_with_the_role_in_the_duty_event() -> None:
    k = Post(clock_at("2026-11-28 08:00"))
    k.cards = WITH_AUXILIARY
    _, _, (checkin, duty) = k.tap(AU1)
    assert checkin["role"] == "auxiliary" and duty["role"] == "auxiliary"
    assert duty["state"] == "on" and duty["on_duty"] == ["AU-1"]


def test_off_then_on_within_the_gap_is_a_handover() -> None:
    k = Post(clock_at("2026-11-28 08:00"))
    k.tap(PA1)
    k.clock.advance(8 * 3600)
    k.tap(PA1)                                # PA-1 off at 16:00
    k.clock.advance(300)
    duty = k.tap(VI1)[2][1]                   # VI-1 on five minutes later
    assert duty["handover_from"] == "PA-1" and duty["handover_to"] == "VI-1"
    k.clock.advance(3600)
    k.tap(PA2)
    assert k.store.kinds("duty")[-1]["handover_from"] is None   # each off hands over once


def test_on_then_off_within_the_gap_is_a_handover() -> None:
    k = Post(clock_at("2026-11-28 08:00"))
    k.tap(PA1)
    k.clock.advance(8 * 3600)
    assert k.tap(VI1)[2][1]["handover_from"] is None   # the relief arrives and taps on
    k.clock.advance(120)
    duty = k.tap(PA1)[2][1]                  # then the one relieved taps off
    assert (duty["state"], duty["handover_from"], duty["handover_to"]) == ("off", "PA-1", "VI-1")


def test_beyond_the_gap_is_no_handover() -> None:
    k = Post(clock_at("2026-11-28 08:00"), handover_gap_s=300)
    k.tap(PA1)
    k.clock.advance(3600)
    k.tap(PA1)
    k.clock.advance(301)
    assert k.tap(VI1)[2][1]["handover_from"] is None


def test_a_double_tap_is_a_repeat_not_a_toggle_and_duty_survives_a_restart() -> None:
    k = Post(clock_at("2026-11-28 08:00"))
    k.tap(PA1)
    k.clock.advance(3)
    decision, signal, events = k.tap(PA1)
    assert (decision, signal) == (REPEAT, "recorded") and [e["kind"] for e in events] == \
        ["checkin"]
    k.restart()
    assert list(k.logic.state.on) == ["PA-1"]
    k.clock.advance(20)
    assert k.tap(PA1)[1] == "off_duty"


def test_signals_have_feedback_patterns() -> None:
    from drivers.feedback import PATTERNS

    assert set(SIGNALS) == set(PATTERNS)


def test_instants_round_trip_and_garbage_state_is_dropped() -> None:
    now = Instant(1_795_000_000_123, 12.5, BOOT1, True)
    assert Instant.from_json(now.to_json()) == now
    assert Instant.from_json({"ms": "x"}) is None
    state = PatrolState.from_state({"patrol/visit": {"id": 3}, "patrol/visits": "many",
                                    "patrol/missed": ["x"], "patrol/level": {"level": 7}})
    assert state == PatrolState()
    assert rfc3339_ms(now.wall_ms).endswith(".123Z")


# -- property: the station's cadence does not change what is reported ------------------------


def _oracle(visits: list[int], start: int, end: int, interval: int,
            occurrences: list[tuple[int, int]]) -> list[int]:
    """Missed-round deadlines by the rule, for instantaneous two-person visits (ms)."""
    out: list[int] = []
    for s, e in occurrences:
        base = max([s, start, *[v for v in visits if v <= s]])
        d = base + interval
        while d <= min(e, end):
            hits = [v for v in visits if base < v < d]
            if hits:
                base = max(hits)
            else:
                out.append(d)
                base = d
            d = base + interval
    return sorted(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks=st.lists(st.integers(1, 3600), min_size=1, max_size=30),
       visits=st.sets(st.integers(0, 59), max_size=6),
       restarts=st.sets(st.integers(0, 29), max_size=3))
def test_missed_rounds_do_not_depend_on_when_the_station_looks(
        ticks: list[int], visits: set[int], restarts: set[int]) -> None:
    cfg = patrol_cfg(windows={"evening": "20:00-22:30", "night": "23:00-05:00"},
                     round_every_min={3: 60})
    start, end = local_ms("2026-11-28 19:00"), local_ms("2026-11-29 05:00")
    p = Point(clock_at("2026-11-28 19:00"), cfg)
    visit_ms = sorted(start + v * 600_000 for v in visits)   # ten minutes apart at least
    tick_ms, t = [], start
    for step in ticks:
        t = min(end, t + step * 1000)
        tick_ms.append(t)
    tick_ms.append(end)
    timeline = sorted({(m, "tick", i) for i, m in enumerate(tick_ms)}
                      | {(m, "visit", -1) for m in visit_ms})
    for when, what, i in timeline:
        p.clock.advance((when - p.clock.wall_ms()) / 1000)
        if what == "visit":
            p.tap(PO1)
            p.tap(PA1)
        else:
            p.tick()
            if i in restarts:
                p.restart()
    got = sorted(int(parse_rfc3339(e["expected_by"]).timestamp() * 1000)
                 for e in p.store.kinds("round_missed"))
    occurrences = [(local_ms("2026-11-28 20:00"), local_ms("2026-11-28 22:30")),
                   (local_ms("2026-11-28 23:00"), local_ms("2026-11-29 05:00"))]
    want = _oracle(visit_ms, start, end, 3_600_000, occurrences)
    assert got == want


def test_zero_gaps_switch_handover_and_repeat_off() -> None:
    k = Post(clock_at("2026-11-28 08:00"), handover_gap_s=0, repeat_s=0)
    k.tap(PA1)
    assert k.tap(PA1)[1] == "off_duty"          # at the same instant: still a toggle
    assert k.tap(VI1)[2][1]["handover_from"] is None
