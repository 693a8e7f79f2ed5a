"""Patrol rules: card decisions, visits at patrol points, duty at kiosks, missed rounds.

Pure logic with no I/O: every method takes the time (:class:`Instant`) and
the alert level it needs and returns :class:`Step` s, each one event to
append (or none) and the state-store keys to write *in the same
transaction*, with the logic's state as it is once that step is on disk.
The caller (:mod:`firmware_py.checkin`) appends a step and only then adopts
its state with :meth:`PatrolPoint.commit` (or :meth:`DutyPost.commit`), so
what the logic believes and what the journal holds never part, even when a
commit fails.

Rules (``docs/patrol.md`` is the reference for people):

- **Card decisions** (:func:`check_card`): a card not on the list in force
  is ``unknown``; one outside its ``valid_from``/``valid_to`` is
  ``not_valid_now``; else ``accepted``, or ``repeat`` when the same badge
  already tapped in the open visit (patrol points) or toggled less than
  ``[duty] repeat_s`` ago (kiosks). Validity follows the unit's time rules
  (:class:`~firmware_py.desired.TimeView`): a card is refused as expired only
  when its end has *provably* passed, and a card not yet valid is refused
  only on a synchronised clock.
- **Visits** (:class:`PatrolPoint`): accepted taps closer together than
  ``visit_gap_s`` are one visit. It closes ``visit_gap_s`` after its last tap
  with a ``visit`` event: people (distinct badges), roles, ``two_person``
  (at least ``min_people``), ``police_led`` (a police card countersigned by
  a patrol or village card), the window it started in and the level.
- **Duty** (:class:`DutyPost`): a tap toggles the badge on or off duty; a
  badge going off and another coming on within ``handover_gap_s`` (either
  order) is a handover.
- **Missed rounds** (:meth:`PatrolPoint.rounds`): inside each window
  occurrence, one ``round_missed`` per interval of ``round_every_min`` (at
  the level in force) that passes without a two-person visit.

Time: intervals are measured on the boot-relative monotonic clock, never by
subtracting wall-clock times, so an NTP step (a Pi without RTC that boots in
1970 or at fake-hwclock's time, then synchronises) moves no deadline. The
wall clock is used only to place window boundaries, and only while it is
synchronised; a time taken before the sync is re-dated from the monotonic
clock once it is (:func:`wall_of`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

from .clock import Clock, rfc3339_ms
from .config import DutySection, PatrolSection, parse_window
from .desired import ArgsInvalid, TimeView, find_card, time_ms

__all__ = [
    "ACCEPTED",
    "DECISIONS",
    "NOT_VALID_NOW",
    "REPEAT",
    "SIGNALS",
    "UNKNOWN",
    "CardCheck",
    "DutyPost",
    "DutyState",
    "Instant",
    "Occurrence",
    "Outcome",
    "PatrolPoint",
    "PatrolState",
    "Step",
    "Visit",
    "Windows",
    "check_card",
    "wall_of",
]

ACCEPTED, UNKNOWN, NOT_VALID_NOW, REPEAT = "accepted", "unknown", "not_valid_now", "repeat"
DECISIONS = (ACCEPTED, UNKNOWN, NOT_VALID_NOW, REPEAT)

#: What the patrol member is shown (``drivers.feedback.PATTERNS`` has one pattern each).
SIG_RECORDED = "recorded"      # recorded: round complete (patrol point) / on duty (kiosk)
SIG_ALONE = "alone"            # recorded, but you are alone: a second person must tap
SIG_OFF_DUTY = "off_duty"      # recorded: off duty (kiosk)
SIG_REJECTED = "rejected"      # unknown card, or not valid now
SIG_FAULT = "fault"            # not recorded: the unit could not store the tap
SIGNALS = (SIG_RECORDED, SIG_ALONE, SIG_OFF_DUTY, SIG_REJECTED, SIG_FAULT)

# State-store keys (JSON values; docs/patrol.md, "What survives a restart").
VISIT_KEY = "patrol/visit"          # the open visit, absent when none
VISITS_KEY = "patrol/visits"        # how many visits were opened (numbers the visit ids)
ROUND_KEY = "patrol/round"          # the last two-person visit: {at, visit}
WATCH_KEY = "patrol/watch"          # when this boot's station began watching the reader
LEVEL_SEEN_KEY = "patrol/level"     # {level, raised}: the level seen, when it last got stricter
MISSED_KEY = "patrol/missed"        # per window occurrence: what was reported missed
DUTY_KEY = "duty/on"                # badge -> {card, role, since}
HANDOVER_KEY = "duty/handover"      # {last_off, last_on, toggled}

#: Refused cards listed in one visit event, at most.
MAX_REJECTED = 20
#: Window occurrences are looked at this far back (a station restarted after a window ended
#: still reports the intervals it missed); their records are kept twice as long.
LOOKBACK_MS = 24 * 3600 * 1000
#: At most this many ``round_missed`` events from one call (a guard, not a rule).
MAX_MISSED_PER_CALL = 64


# -- time ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instant:
    """A moment as the unit saw it: wall clock, boot-relative time, boot, sync state."""

    wall_ms: int
    mono: float
    boot: str
    synced: bool

    @classmethod
    def now(cls, clock: Clock) -> Instant:
        return cls(clock.wall_ms(), clock.monotonic(), clock.boot_id(), clock.synced())

    def to_json(self) -> dict[str, Any]:
        return {"ms": self.wall_ms, "mono": round(self.mono, 6), "boot": self.boot,
                "synced": self.synced}

    @classmethod
    def from_json(cls, doc: Any) -> Instant | None:
        if not isinstance(doc, dict):
            return None
        try:
            return cls(int(doc["ms"]), float(doc["mono"]), str(doc["boot"]), bool(doc["synced"]))
        except (KeyError, TypeError, ValueError):
            return None


def wall_of(mark: Instant, now: Instant) -> tuple[int, bool]:
    """The best wall time of ``mark`` seen from ``now``, and whether it can be trusted.

    Taken on a synchronised clock: as recorded. Taken before the sync in this
    boot, and the clock is synchronised now: re-dated from the monotonic
    clock. Otherwise: as recorded, untrusted.
    """
    if mark.synced:
        return mark.wall_ms, True
    if now.synced and mark.boot == now.boot:
        return now.wall_ms - round((now.mono - mark.mono) * 1000), True
    return mark.wall_ms, False


def elapsed_s(mark: Instant, now: Instant) -> float | None:
    """Seconds from ``mark`` to ``now`` when they can be known without trusting a wall clock
    that may have stepped: same boot (monotonic), or both taken on a synchronised clock."""
    if mark.boot == now.boot:
        return now.mono - mark.mono
    if mark.synced and now.synced:
        return (now.wall_ms - mark.wall_ms) / 1000
    return None


def _within(mark: Instant | None, now: Instant, seconds: float) -> bool:
    """``mark`` is at most ``seconds`` before ``now`` (never for ``seconds`` <= 0)."""
    if mark is None or seconds <= 0:
        return False
    gap = elapsed_s(mark, now)
    return gap is not None and 0 <= gap <= seconds


# -- windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Occurrence:
    """One occurrence of a window: local start day, and UTC start and end (ms)."""

    name: str
    day: date
    start_ms: int
    end_ms: int

    @property
    def key(self) -> str:
        return f"{self.name}@{self.day.isoformat()}"


class Windows:
    """The patrol windows of ``[patrol] windows`` in the unit's time zone.

    A window whose end is not after its start crosses midnight
    (``23:00-05:00`` runs from 23:00 to 05:00 the next morning).
    """

    def __init__(self, windows: Mapping[str, str], tz: ZoneInfo) -> None:
        self.tz = tz
        self.windows: list[tuple[str, int, int]] = [
            (name, *parse_window(text)) for name, text in windows.items()]

    def __bool__(self) -> bool:
        return bool(self.windows)

    def local(self, wall_ms: int) -> datetime:
        return datetime.fromtimestamp(wall_ms / 1000, tz=self.tz)

    def at(self, wall_ms: int) -> str | None:
        """The name of the (first configured) window that local time ``wall_ms`` falls in."""
        t = self.local(wall_ms)
        minute = t.hour * 60 + t.minute
        for name, start, end in self.windows:
            inside = start <= minute < end if start < end else (minute >= start or minute < end)
            if inside:
                return name
        return None

    def _bounds(self, day: date, start: int, end: int) -> tuple[int, int]:
        first = datetime.combine(day, dtime(start // 60, start % 60), tzinfo=self.tz)
        end_day = day if end > start else day + timedelta(days=1)
        last = datetime.combine(end_day, dtime(end // 60, end % 60), tzinfo=self.tz)
        return int(first.timestamp() * 1000), int(last.timestamp() * 1000)

    def occurrences(self, wall_ms: int, lookback_ms: int = LOOKBACK_MS) -> list[Occurrence]:
        """Occurrences that have begun by ``wall_ms`` and ended no earlier than
        ``lookback_ms`` before it, oldest first."""
        today = self.local(wall_ms).date()
        out: list[Occurrence] = []
        for name, start, end in self.windows:
            for back in (2, 1, 0):
                day = today - timedelta(days=back)
                start_ms, end_ms = self._bounds(day, start, end)
                if start_ms <= wall_ms and end_ms > wall_ms - lookback_ms:
                    out.append(Occurrence(name, day, start_ms, end_ms))
        out.sort(key=lambda o: (o.start_ms, o.name))
        return out


# -- card decisions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CardCheck:
    """What the card list says of a tag: ``accepted``, ``unknown`` or ``not_valid_now``."""

    decision: str
    entry: dict[str, Any] | None = None
    reason: str | None = None

    @property
    def badge(self) -> str | None:
        return self.entry.get("badge") if self.entry else None

    @property
    def role(self) -> str | None:
        return self.entry.get("role") if self.entry else None


def _ms_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return time_ms(value)
    except ArgsInvalid:
        return None


def check_card(cards: Mapping[str, Any] | None, card_hex: str, view: TimeView) -> CardCheck:
    """The card list's word on ``card_hex`` (``cards`` as :func:`~firmware_py.desired.current_cards`
    returns it) at the time ``view`` says it is."""
    entry = find_card(cards, card_hex)
    if entry is None:
        return CardCheck(UNKNOWN, None, "not on the card list" if cards else "no card list yet")
    valid_to = _ms_or_none(entry.get("valid_to"))
    if valid_to is not None and view.passed(valid_to):
        return CardCheck(NOT_VALID_NOW, entry, f"expired at {entry['valid_to']}")
    valid_from = _ms_or_none(entry.get("valid_from"))
    # Only a synchronised clock can say a start is still ahead (an unsynchronised Pi may
    # be years behind); the event carries clock_synced for the centre to judge.
    if valid_from is not None and view.synced and view.wall_ms < valid_from:
        return CardCheck(NOT_VALID_NOW, entry, f"valid from {entry['valid_from']}")
    return CardCheck(ACCEPTED, entry)


# -- steps -------------------------------------------------------------------------------------


@dataclass
class Step:
    """One transaction: an event (``kind`` None: state only) and the state keys with it.

    ``after`` is the logic's state once the transaction is on disk.
    """

    kind: str | None
    data: dict[str, Any] | None
    state: dict[str, Any]
    after: Any


@dataclass
class Outcome:
    """What a tap leads to: the steps to commit, in order, and the signal to show after."""

    steps: list[Step]
    decision: str
    signal: str

    @property
    def checkin(self) -> dict[str, Any]:
        """The checkin event's data."""
        return next(s.data for s in self.steps if s.kind == "checkin" and s.data is not None)


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Keys whose stored value differs (None: delete)."""
    return {key: after.get(key) for key in before.keys() | after.keys()
            if before.get(key) != after.get(key)}


# -- patrol points ------------------------------------------------------------------------------


@dataclass
class Visit:
    """The open visit at a patrol point."""

    id: str
    started: Instant
    last: Instant
    level: int
    cards: list[str] = field(default_factory=list)     # accepted card ids, first-tap order
    badges: list[str] = field(default_factory=list)    # distinct badges: the people
    roles: dict[str, str] = field(default_factory=dict)  # badge -> role
    taps: int = 0                                      # accepted and repeat taps
    repeats: int = 0
    rejected: list[str] = field(default_factory=list)  # refused cards tapped during it
    round_at: Instant | None = None                    # when it reached min_people

    @property
    def people(self) -> int:
        return len(self.badges)

    def copy(self) -> Visit:
        return replace(self, cards=list(self.cards), badges=list(self.badges),
                       roles=dict(self.roles), rejected=list(self.rejected))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "started": self.started.to_json(), "last": self.last.to_json(),
                "level": self.level, "cards": self.cards, "badges": self.badges,
                "roles": self.roles, "taps": self.taps, "repeats": self.repeats,
                "rejected": self.rejected,
                "round_at": self.round_at.to_json() if self.round_at else None}

    @classmethod
    def from_json(cls, doc: Any) -> Visit | None:
        if not isinstance(doc, dict):
            return None
        started, last = Instant.from_json(doc.get("started")), Instant.from_json(doc.get("last"))
        if started is None or last is None or not isinstance(doc.get("id"), str):
            return None
        return cls(doc["id"], started, last, int(doc.get("level", 3)), list(doc.get("cards", [])),
                   list(doc.get("badges", [])), dict(doc.get("roles", {})),
                   int(doc.get("taps", 0)), int(doc.get("repeats", 0)),
                   list(doc.get("rejected", [])), Instant.from_json(doc.get("round_at")))


@dataclass
class PatrolState:
    """Everything a patrol point must remember across a restart."""

    visit: Visit | None = None
    visits: int = 0
    last_round: Instant | None = None
    last_round_visit: str | None = None
    watch: Instant | None = None
    level: int | None = None
    level_raised: Instant | None = None
    missed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def copy(self) -> PatrolState:
        return replace(self, visit=self.visit.copy() if self.visit else None,
                       missed={k: dict(v) for k, v in self.missed.items()})

    def to_state(self) -> dict[str, Any]:
        return {
            VISIT_KEY: self.visit.to_json() if self.visit else None,
            VISITS_KEY: self.visits or None,
            ROUND_KEY: ({"at": self.last_round.to_json(), "visit": self.last_round_visit}
                        if self.last_round else None),
            WATCH_KEY: self.watch.to_json() if self.watch else None,
            LEVEL_SEEN_KEY: ({"level": self.level, "raised": self.level_raised.to_json()
                              if self.level_raised else None}
                             if self.level is not None else None),
            MISSED_KEY: self.missed or None,
        }

    @classmethod
    def from_state(cls, items: Mapping[str, Any]) -> PatrolState:
        """From the journal's ``state_items("patrol/")``; anything unreadable is dropped."""
        s = cls()
        s.visit = Visit.from_json(items.get(VISIT_KEY))
        visits = items.get(VISITS_KEY)
        s.visits = visits if isinstance(visits, int) and visits > 0 else 0
        rnd = items.get(ROUND_KEY)
        if isinstance(rnd, dict):
            s.last_round = Instant.from_json(rnd.get("at"))
            s.last_round_visit = rnd.get("visit") if isinstance(rnd.get("visit"), str) else None
        s.watch = Instant.from_json(items.get(WATCH_KEY))
        seen = items.get(LEVEL_SEEN_KEY)
        if isinstance(seen, dict) and seen.get("level") in (1, 2, 3):
            s.level = seen["level"]
            s.level_raised = Instant.from_json(seen.get("raised"))
        missed = items.get(MISSED_KEY)
        if isinstance(missed, dict):
            s.missed = {k: v for k, v in missed.items() if isinstance(v, dict)}
        return s


class PatrolPoint:
    """Visits and missed rounds at a patrol point.

        point = PatrolPoint(cfg.patrol, ZoneInfo("Asia/Shanghai"), "zt-pp-03:5f1c…:")
        out = point.tap("14008EC793", "main", check, Instant.now(clock), level=3)
        for step in out.steps:
            journal.append(step.kind, step.data, state=step.state)
            point.commit(step)
    """

    def __init__(self, patrol: PatrolSection, tz: ZoneInfo, visit_prefix: str = "v",
                 state: PatrolState | None = None) -> None:
        self.cfg = patrol
        self.windows = Windows(patrol.windows, tz)
        self.visit_prefix = visit_prefix
        self.state = state or PatrolState()

    # -- the life of the state --

    def commit(self, step: Step) -> None:
        """The step is on disk: adopt its state."""
        self.state = step.after

    def _step(self, before: PatrolState, after: PatrolState, kind: str | None,
              data: dict[str, Any] | None) -> Step:
        return Step(kind, data, _delta(before.to_state(), after.to_state()), after.copy())

    def interval_s(self, level: int) -> float:
        table: Mapping[int, int] = self.cfg.round_every_min
        minutes = table.get(level) or table.get(3) or 120
        return float(minutes) * 60

    def joinable(self, visit: Visit, now: Instant) -> bool:
        gap = elapsed_s(visit.last, now)
        return visit.last.boot == now.boot and gap is not None and gap < self.cfg.visit_gap_s

    # -- taps --

    def tap(self, card_hex: str, reader: str, check: CardCheck, now: Instant,
            level: int) -> Outcome:
        """One tap. ``check`` is :func:`check_card`'s answer, ``level`` the level in force."""
        steps: list[Step] = []
        s = self.state.copy()
        if s.visit is not None and not self.joinable(s.visit, now):
            steps.append(self._close(s, now))
        if check.decision == ACCEPTED and check.badge is not None:
            open_visit = s.visit
            people = open_visit.people if open_visit is not None else 0
            if (open_visit is None or open_visit.round_at is None) and \
                    (open_visit is None or check.badge not in open_visit.badges) and \
                    people + 1 >= self.cfg.min_people:
                # This tap completes a round: first report any interval that ran out
                # before it (the station's turn may not have come since).
                steps += self._rounds(s, now, level)
        before = s.copy()
        decision = check.decision
        visit = s.visit
        data: dict[str, Any] = {"card": card_hex, "reader": reader, "decision": decision,
                                "badge": check.badge, "role": check.role, "visit": None}
        if decision == ACCEPTED:
            assert check.entry is not None
            badge, role = str(check.entry["badge"]), str(check.entry["role"])
            if visit is None:
                s.visits += 1
                visit = s.visit = Visit(f"{self.visit_prefix}{s.visits}", now, now, level)
            if badge in visit.badges:
                decision = REPEAT
                visit.repeats += 1
            else:
                visit.badges.append(badge)
                visit.roles[badge] = role
            if card_hex not in visit.cards:
                visit.cards.append(card_hex)
            visit.taps += 1
            visit.last = now
            if visit.round_at is None and visit.people >= self.cfg.min_people:
                visit.round_at = now
                s.last_round, s.last_round_visit = now, visit.id
            signal = SIG_RECORDED if visit.people >= self.cfg.min_people else SIG_ALONE
            data.update(decision=decision, visit=visit.id, people=visit.people)
        else:
            if visit is not None:
                # Refused taps are linked to the visit they happened in, but neither open
                # nor extend one: only accepted cards make a patrol.
                data["visit"] = visit.id
                if len(visit.rejected) < MAX_REJECTED:
                    visit.rejected.append(card_hex)
            signal = SIG_REJECTED
        if check.reason:
            data["reason"] = check.reason
        steps.append(self._step(before, s, "checkin", data))
        return Outcome(steps, decision, signal)

    def _close(self, s: PatrolState, now: Instant) -> Step:
        """Close ``s.visit`` (mutating ``s``): the ``visit`` event."""
        before = s.copy()
        visit = s.visit
        assert visit is not None
        started_ms, ok1 = wall_of(visit.started, now)
        ended_ms, ok2 = wall_of(visit.last, now)
        synced = ok1 and ok2
        roles = dict(Counter(visit.roles.values()))
        data = {
            "visit": visit.id,
            "started": rfc3339_ms(started_ms),
            "ended": rfc3339_ms(ended_ms),
            "cards": list(visit.cards),
            "badges": list(visit.badges),
            "roles": roles,
            "people": visit.people,
            "two_person": visit.people >= self.cfg.min_people,
            # Keyed on police, countersigned by the guards: an auxiliary (协警) is
            # counted in roles but neither leads nor countersigns.
            "police_led": roles.get("police", 0) > 0
            and (roles.get("patrol", 0) + roles.get("village", 0)) > 0,
            "window": self.windows.at(started_ms) if synced else None,
            "level": visit.level,
            "taps": visit.taps,
            "repeats": visit.repeats,
            "rejected": list(visit.rejected),
            "duration_s": round(max(0.0, visit.last.mono - visit.started.mono), 3),
            "clock_synced": synced,
        }
        s.visit = None
        return self._step(before, s, "visit", data)

    # -- the station's turn --

    def start(self, now: Instant) -> list[Step]:
        """At start-up: begin watching (once per boot)."""
        s = self.state.copy()
        if s.watch is not None and s.watch.boot == now.boot:
            return []
        before = s.copy()
        s.watch = now
        return [self._step(before, s, None, None)]

    def due(self, now: Instant) -> list[Step]:
        """Close the open visit once ``visit_gap_s`` has passed since its last tap
        (at once when it was opened in another boot)."""
        if self.state.visit is None or self.joinable(self.state.visit, now):
            return []
        s = self.state.copy()
        return [self._close(s, now)]

    def rounds(self, now: Instant, level: int) -> list[Step]:
        """``round_missed`` events that are due, and the level bookkeeping.

        For each window occurrence, the reference is the latest of: its start,
        when this boot's station began watching, the last two-person visit, and
        when the level last got stricter. Every ``round_every_min`` after the
        reference (or after the last miss reported) that passes inside the
        occurrence is one miss. Only on a synchronised clock; all intervals on
        the monotonic clock.
        """
        return self._rounds(self.state.copy(), now, level)

    def _rounds(self, s: PatrolState, now: Instant, level: int) -> list[Step]:
        """:meth:`rounds` on ``s``, which it changes."""
        steps: list[Step] = []
        before = s.copy()
        if s.level != level or (s.level_raised is not None and s.level_raised.boot != now.boot):
            if s.level is not None and self.interval_s(level) < self.interval_s(s.level):
                s.level_raised = now   # a stricter level gives one interval from now
            elif s.level_raised is not None and s.level_raised.boot != now.boot:
                s.level_raised = None
            s.level = level
            steps.append(self._step(before, s, None, None))
            before = s.copy()
        if not now.synced or not self.windows:
            return steps
        interval = self.interval_s(level)

        def mono_of(wall_ms: int) -> float:
            return now.mono - (now.wall_ms - wall_ms) / 1000

        def wall_at(mono: float) -> int:
            return now.wall_ms - round((now.mono - mono) * 1000)

        refs: list[float] = []
        if s.watch is not None and s.watch.boot == now.boot:
            refs.append(s.watch.mono)
        else:
            refs.append(now.mono)   # not watching yet (start() not run): nothing is due
        if s.last_round is not None and s.last_round.boot == now.boot:
            refs.append(s.last_round.mono)
        if s.level_raised is not None and s.level_raised.boot == now.boot:
            refs.append(s.level_raised.mono)
        last_visit = None
        if s.last_round is not None:
            last_visit = rfc3339_ms(wall_of(s.last_round, now)[0])
        emitted = 0
        for occ in self.windows.occurrences(now.wall_ms):
            start_mono, end_mono = mono_of(occ.start_ms), mono_of(occ.end_ms)
            ref = max([start_mono, *refs])
            rec = s.missed.get(occ.key)
            last_mono = None
            if rec is not None and rec.get("boot") == now.boot and \
                    isinstance(rec.get("last_mono"), int | float):
                last_mono = float(rec["last_mono"])
            count = int(rec.get("count", 0)) if rec is not None and last_mono is not None else 0
            if last_mono is None or ref > last_mono:
                base, count = ref, 0
            else:
                base = last_mono
            deadline = base + interval
            while deadline <= now.mono and deadline <= end_mono \
                    and emitted < MAX_MISSED_PER_CALL:
                count += 1
                emitted += 1
                s.missed[occ.key] = {"boot": now.boot, "last_mono": round(deadline, 6),
                                     "count": count, "end_ms": occ.end_ms,
                                     "expected_by": rfc3339_ms(wall_at(deadline))}
                data = {"window": occ.name, "expected_by": rfc3339_ms(wall_at(deadline)),
                        "last_visit": last_visit, "level": level,
                        "interval_min": round(interval / 60, 3),
                        "since": rfc3339_ms(wall_at(ref)), "missed": count,
                        "window_start": rfc3339_ms(occ.start_ms),
                        "window_end": rfc3339_ms(occ.end_ms)}
                steps.append(self._step(before, s, "round_missed", data))
                before = s.copy()
                deadline += interval
        keep_after = now.wall_ms - 2 * LOOKBACK_MS
        stale = [k for k, v in s.missed.items()
                 if not isinstance(v.get("end_ms"), int) or v["end_ms"] < keep_after]
        if stale:
            for k in stale:
                del s.missed[k]
            steps.append(self._step(before, s, None, None))
        return steps


# -- kiosks and checkpoints -------------------------------------------------------------------


@dataclass
class DutyState:
    """Who is on duty at a kiosk or checkpoint, and what a handover needs to remember."""

    on: dict[str, dict[str, Any]] = field(default_factory=dict)   # badge -> {card, role, since}
    last_off: tuple[str, Instant] | None = None    # a badge that went off, not yet handed over
    last_on: tuple[str, Instant] | None = None     # a badge that came on while others were on
    toggled: dict[str, Instant] = field(default_factory=dict)     # badge -> its last toggle

    def copy(self) -> DutyState:
        return replace(self, on={b: dict(v) for b, v in self.on.items()},
                       toggled=dict(self.toggled))

    def to_state(self) -> dict[str, Any]:
        def pair(p: tuple[str, Instant] | None) -> dict[str, Any] | None:
            return {"badge": p[0], "at": p[1].to_json()} if p else None

        return {
            DUTY_KEY: self.on or None,
            HANDOVER_KEY: ({"last_off": pair(self.last_off), "last_on": pair(self.last_on),
                            "toggled": {b: t.to_json() for b, t in self.toggled.items()}}
                           if (self.last_off or self.last_on or self.toggled) else None),
        }

    @classmethod
    def from_state(cls, items: Mapping[str, Any]) -> DutyState:
        s = cls()
        on = items.get(DUTY_KEY)
        if isinstance(on, dict):
            s.on = {b: v for b, v in on.items() if isinstance(v, dict)}
        ho = items.get(HANDOVER_KEY)
        if isinstance(ho, dict):
            def pair(doc: Any) -> tuple[str, Instant] | None:
                if not isinstance(doc, dict) or not isinstance(doc.get("badge"), str):
                    return None
                at = Instant.from_json(doc.get("at"))
                return (doc["badge"], at) if at else None

            s.last_off, s.last_on = pair(ho.get("last_off")), pair(ho.get("last_on"))
            toggled = ho.get("toggled")
            if isinstance(toggled, dict):
                s.toggled = {b: t for b, v in toggled.items()
                             if (t := Instant.from_json(v)) is not None}
        return s


class DutyPost:
    """Duty on/off at a kiosk or checkpoint: a tap toggles the badge.

        post = DutyPost(cfg.duty)
        out = post.tap("14008EC793", "main", check, Instant.now(clock))
    """

    def __init__(self, duty: DutySection, state: DutyState | None = None) -> None:
        self.cfg = duty
        self.state = state or DutyState()

    def commit(self, step: Step) -> None:
        self.state = step.after

    def tap(self, card_hex: str, reader: str, check: CardCheck, now: Instant) -> Outcome:
        s = self.state.copy()
        before = s.copy()
        data: dict[str, Any] = {"card": card_hex, "reader": reader, "decision": check.decision,
                                "badge": check.badge, "role": check.role, "visit": None}
        if check.reason:
            data["reason"] = check.reason
        if check.decision != ACCEPTED:
            return Outcome([Step("checkin", data, {}, s)], check.decision, SIG_REJECTED)
        assert check.entry is not None
        badge, role = str(check.entry["badge"]), str(check.entry["role"])
        # Forget toggles too old to make a repeat.
        s.toggled = {b: t for b, t in s.toggled.items() if _within(t, now, self.cfg.repeat_s)}
        if badge in s.toggled:
            data.update(decision=REPEAT, duty="on" if badge in s.on else "off")
            signal = SIG_RECORDED if badge in s.on else SIG_OFF_DUTY
            return Outcome([Step("checkin", data, _delta(before.to_state(), s.to_state()),
                                 s.copy())], REPEAT, signal)
        handover_from = handover_to = None
        shift: dict[str, Any] = {}
        gap = self.cfg.handover_gap_s
        if badge in s.on:
            state = "off"
            shift = s.on.pop(badge)
            last_on = s.last_on
            if last_on is not None and last_on[0] != badge and last_on[0] in s.on \
                    and _within(last_on[1], now, gap):
                handover_from, handover_to = badge, last_on[0]
                s.last_on = None
            else:
                s.last_off = (badge, now)
            if s.last_on is not None and s.last_on[0] == badge:
                s.last_on = None
            signal = SIG_OFF_DUTY
        else:
            state = "on"
            others = bool(s.on)
            s.on[badge] = {"card": card_hex, "role": role, "since": now.to_json()}
            last_off = s.last_off
            if last_off is not None and last_off[0] != badge and _within(last_off[1], now, gap):
                handover_from, handover_to = last_off[0], badge
                s.last_off = None
            else:
                if last_off is not None and last_off[0] == badge:
                    s.last_off = None   # back on after a slip: not a handover
                s.last_on = (badge, now) if others else None
            signal = SIG_RECORDED
        s.toggled[badge] = now
        data["duty"] = state
        duty: dict[str, Any] = {"card": card_hex, "badge": badge, "role": role, "state": state,
                                "on_duty": list(s.on), "handover_from": handover_from,
                                "handover_to": handover_to}
        if state == "off":
            since = Instant.from_json(shift.get("since"))
            if since is not None:
                since_ms, _ = wall_of(since, now)
                duty["on_since"] = rfc3339_ms(since_ms)
                took = elapsed_s(since, now)
                duty["shift_s"] = round(took, 3) if took is not None else None
        # The duty change is stored with the duty event, so the list of who is on duty
        # never changes without the event that says so; the checkin comes first.
        return Outcome([Step("checkin", data, {}, before),
                        Step("duty", duty, _delta(before.to_state(), s.to_state()),
                             s.copy())], ACCEPTED, signal)
