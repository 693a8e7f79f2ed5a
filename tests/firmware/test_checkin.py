"""The check-in part in a real station loop: a sim reader (real ptys), the real journal,
gpiozero's mock pins for the feedback.

Taps go in as real frames (``firmware_py.sim.tap``, what ``xunfang sim tap``
runs, or the sim's device side); what comes out is read from the journal,
the pins' history and the status file. No uplink runs here: the unit is
offline, which must not change anything a patrol member sees.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from firmware_py import sim
from firmware_py.checkin import STATUS_NAME, CheckinPart, read_status, reader_key
from firmware_py.clock import SystemClock
from firmware_py.config import UnitConfig
from firmware_py.exc import JournalError, JournalWriteFailed
from firmware_py.journal import Event, Journal
from firmware_py.runtime import UnitContext
from firmware_py.station import StationComponent, StationPart
from tests.support.gpio import changes, global_mock_factory, wait_until
from tests.support.schemas import validator
from tests.support.units import make_config

OK_LED, ERROR_LED, BUZZER = 17, 27, 22
PO1, PA1, VI1, STRANGER = "14008EC793", "0000000457", "0000000458", "AABBCCDDEE"
CARDS = [
    {"card": PO1, "badge": "PO-1", "role": "police"},
    {"card": "dec:0000001111", "badge": "PA-1", "role": "patrol"},   # = 0000000457
    {"card": VI1, "badge": "VI-1", "role": "village"},
]


def put_cards(journal: Journal, cards: list[dict[str, Any]], version: int = 1) -> None:
    """The card list as the uplink stores an applied ``desired/cards`` document."""
    journal.state_set("desired/cards/unit", {
        "id": f"cards-{version}", "name": "cards", "scope": "unit", "key": "centre-test",
        "args": {"version": version, "cards": cards}, "issued_at": "2026-11-28T00:00:00.000Z",
        "issued_ms": 1_795_910_400_000 + version, "expires_ms": None})


class GatedJournal(Journal):
    """A journal whose checkin appends can be held before the commit, and which notes when
    each commit returned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.committed_at: dict[int, float] = {}

    def append(self, kind: str, data: dict[str, Any] | None = None,
               state: dict[str, Any] | None = None) -> Event:
        if kind == "checkin":
            self.entered.set()
            assert self.gate.wait(10), "the test never released the commit"
        event = super().append(kind, data, state)
        self.committed_at[event.seq] = time.monotonic()
        return event


class Station:
    """A StationComponent of one unit, running in this process on mock pins."""

    def __init__(self, config: UnitConfig, factory: MockFactory) -> None:
        self.config, self.factory = config, factory
        self.journal = GatedJournal(config.journal_path, unit=config.unit.id,
                                    site=config.unit.site)
        put_cards(self.journal, CARDS)
        self.component = StationComponent(UnitContext(config, self.journal, SystemClock(),
                                                      threading.Event()))

    def start(self) -> Station:
        self.component.start()
        assert self.component.started.wait(10)
        self.wait_event(lambda e: e.kind == "reader" and e.data["state"] == "online",
                        "the reader online")
        return self

    @property
    def part(self) -> CheckinPart:
        (part,) = [p for p in self.component.parts if isinstance(p, CheckinPart)]
        return part

    def events(self, kind: str | None = None) -> list[Event]:
        return [e for e in self.journal.events_after(0, limit=10_000)
                if kind is None or e.kind == kind]

    def wait_event(self, pred: Callable[[Event], bool], what: str,
                   timeout: float = 10.0) -> Event:
        found: Event = wait_until(lambda: next((e for e in self.events() if pred(e)), None),
                                  timeout)
        assert found, what
        return found

    def tap(self, card: str) -> Event:
        result = sim.tap(self.config, card, wait_s=10)
        assert result.event is not None, f"no checkin for {card}"
        return result.event

    def signal_after(self, before: int) -> str:
        """Wait for the next signal the part shows; return its name."""
        wait_until(lambda: sum(self.part.signals.values()) > before, 10)
        last = self.part.last_tap
        assert last is not None
        return str(last["signal"])

    def stop(self) -> None:
        self.component.request_stop()
        assert self.component.join(15), "station did not stop"
        self.journal.close()


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Callable[..., Station]]:
    made: list[Station] = []

    def make(kind: str = "patrol_point", **sections: Any) -> Station:
        cfg = make_config(
            tmp_path / f"unit{len(made)}", unit={"kind": kind},
            readers=[{"name": "main", "driver": "sim", "port": "sim"}],
            feedback={"ok_led": OK_LED, "error_led": ERROR_LED, "buzzer": BUZZER},
            **sections)
        st = Station(cfg, factory)
        made.append(st)
        return st.start()

    with global_mock_factory() as factory:
        try:
            yield make
        finally:
            for st in made:
                st.stop()


def _validated(events: list[Event]) -> list[Event]:
    for e in events:
        validator(f"events/{e.kind}").validate(e.data)
    return events


def test_taps_become_checkins_then_a_visit_with_the_right_signals(
        station: Callable[..., Station]) -> None:
    st = station(patrol={"visit_gap_s": 1})
    first = st.tap(PO1)
    assert first.data["decision"] == "accepted" and first.data["badge"] == "PO-1"
    assert st.signal_after(0) == "alone"
    second = st.tap(PA1)                       # enrolled as dec:0000001111
    assert st.signal_after(1) == "recorded"
    assert second.data["visit"] == first.data["visit"]
    st.tap(STRANGER)
    assert st.signal_after(2) == "rejected"
    visit = st.wait_event(lambda e: e.kind == "visit", "the visit closing")
    assert visit.data["people"] == 2 and visit.data["two_person"] and visit.data["police_led"]
    assert visit.data["cards"] == [PO1, PA1] and visit.data["rejected"] == [STRANGER]
    _validated(st.events())
    assert st.part.feedback is not None and st.part.feedback.shown == {
        "alone": 1, "recorded": 1, "rejected": 1}
    health = st.journal.state_get(reader_key("main"))
    assert health["state"] == "online" and health["driver"] == "sim"


def test_an_auxiliary_and_a_leader_tap_in_with_their_roles(
        station: Callable[..., Station]) -> None:
    st = station(patrol={"visit_gap_s": 1})
    leader, auxiliary = "0000000501", "0000000502"
    # The list the register import sends: a station leader (police) and an auxiliary.
    put_cards(st.journal, [*CARDS, {"card": leader, "badge": "LD-1", "role": "police",
                                    "leader": True},
                           {"card": auxiliary, "badge": "AU-1", "role": "auxiliary"}], 2)
    first = st.tap(leader)
    assert first.data["decision"] == "accepted" and first.data["role"] == "police"
    second = st.tap(auxiliary)
    assert second.data["decision"] == "accepted" and second.data["role"] == "auxiliary"
    visit = st.wait_event(lambda e: e.kind == "visit", "the visit closing")
    assert visit.data["roles"] == {"police": 1, "auxiliary": 1}
    assert visit.data["two_person"] and not visit.data["police_led"]
    _validated(st.events())


def test_green_shows_only_after_the_commit_returned(station: Callable[..., Station]) -> None:
    st = station()
    green = st.factory.pin(OK_LED)
    st.journal.gate.clear()
    t0 = time.monotonic()
    st.part.readers["main"].sim.tap(PO1)      # type: ignore[attr-defined]
    assert st.journal.entered.wait(10)
    # The tap is inside append(), before its commit: nothing is lit, nothing is stored.
    assert not green.state and changes(green, since=t0) == []
    assert st.events("checkin") == []
    st.journal.gate.set()
    wait_until(lambda: changes(green, since=t0), 10)
    (checkin,) = st.events("checkin")
    rose_at = changes(green, since=t0)[0][0]
    assert rose_at >= st.journal.committed_at[checkin.seq]


def _fill(journal: Journal) -> None:
    """Make SQLite report a full disk: cap the file's pages, then fill them."""
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
    journal._db.execute(f"PRAGMA max_page_count={pages}")
    for size in (4000, 400, 40, 0):
        try:
            for _ in range(10_000):
                journal.append("alarm", {"source": "fill", "state": "active", "pad": "x" * size})
        except JournalWriteFailed:
            continue


def test_a_failing_journal_shows_the_fault_and_says_so_in_the_status_file(
        station: Callable[..., Station], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CheckinPart, "retry_s", 0.2)
    st = station()
    status_path = st.config.unit.runtime_dir / STATUS_NAME
    assert read_status(st.config.unit.runtime_dir)["journal"]["state"] == "ok"
    _fill(st.journal)
    t0 = time.monotonic()
    before = st.journal.last_seq()
    sim.tap(st.config, PO1, wait_s=0)
    assert st.signal_after(0) == "fault"
    assert changes(st.factory.pin(OK_LED), since=t0) == []        # never green
    assert changes(st.factory.pin(ERROR_LED), since=t0)[0][1] is True
    assert st.journal.last_seq() == before                        # nothing recorded
    status = wait_until(lambda: (s := read_status(st.config.unit.runtime_dir))
                        and s["journal"]["state"] == "failing" and s)
    assert "full" in status["journal"]["last_error"]
    assert status["unrecorded"][-1]["card"] == PO1
    assert status["last_tap"]["signal"] == "fault" and status_path.exists()
    # Room again (the operator freed the disk): the station notices, and taps record.
    st.journal._db.execute("PRAGMA max_page_count=1000000")
    wait_until(lambda: read_status(st.config.unit.runtime_dir)["journal"]["state"] == "ok")
    assert st.tap(PA1).data["decision"] == "accepted"
    assert st.signal_after(1) == "alone"


def test_reader_unplug_and_replug_reach_the_journal(station: Callable[..., Station]) -> None:
    st = station()
    reader = st.part.readers["main"]
    reader.sim.unplug()                        # type: ignore[attr-defined]
    off = st.wait_event(lambda e: e.kind == "reader" and e.data["state"] == "offline",
                        "the reader offline")
    assert "port lost" in off.data["detail"]
    assert st.journal.state_get(reader_key("main"))["state"] == "offline"
    # The status file is rewritten just after the event's commit, not in its transaction.
    assert wait_until(lambda: read_status(st.config.unit.runtime_dir)["readers"]["main"]
                      ["state"] == "offline", timeout=10.0)
    reader.sim.replug()                        # type: ignore[attr-defined]
    st.wait_event(lambda e: e.kind == "reader" and e.data["state"] == "online"
                  and e.seq > off.seq, "the reader back online")
    assert st.journal.state_get(reader_key("main"))["state"] == "online"
    assert st.tap(PO1).data["decision"] == "accepted"
    _validated(st.events("reader"))


def test_reader_noise_counts_reach_the_health_object(station: Callable[..., Station],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CheckinPart, "health_every_s", 0.2)
    st = station()
    st.part.readers["main"].sim.write(b"\x02G" * 120)   # type: ignore[attr-defined]
    health = wait_until(lambda: (h := st.journal.state_get(reader_key("main")))
                        and h.get("bad_frames") == 120 and h, 10)
    # 120 malformed frames are one to two "only noise" episodes (as reads happen to
    # split them): the first is logged, a second within the minute is not.
    assert health["noise_bytes"] == 240 and health["noise_warnings"] == 1
    assert health["noise_warnings_dropped"] == health["errors"]["hung"] - 1
    assert st.tap(PO1).data["decision"] == "accepted"      # the reader still reads


def test_duty_at_a_kiosk_toggles_with_handover(station: Callable[..., Station],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CheckinPart, "reader_defaults", {"hold_s": 0.0})
    st = station(kind="kiosk", duty={"repeat_s": 0, "handover_gap_s": 600})
    assert st.tap(PA1).data["duty"] == "on"
    assert st.signal_after(0) == "recorded"
    assert st.tap(PA1).data["duty"] == "off"
    assert st.signal_after(1) == "off_duty"
    st.tap(VI1)
    duty = st.wait_event(lambda e: e.kind == "duty" and e.data["badge"] == "VI-1", "duty")
    assert duty.data["handover_from"] == "PA-1" and duty.data["on_duty"] == ["VI-1"]
    assert st.journal.state_get("duty/on").keys() == {"VI-1"}
    _validated(st.events())


def test_a_restarted_station_keeps_the_open_visit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, readers=[{"name": "main", "driver": "sim", "port": "sim"}],
                      patrol={"visit_gap_s": 600})
    with global_mock_factory() as factory:
        first = Station(cfg, factory).start()
        visit = first.tap(PO1).data["visit"]
        first.stop()
        second = Station(cfg, factory).start()
        try:
            assert second.tap(PA1).data["visit"] == visit
            assert second.part.signals == {"recorded": 1}
            assert second.part.feedback is not None   # no pins configured: no outputs, no error
        finally:
            second.stop()


def test_a_journal_rebuilt_by_another_process_takes_the_next_tap_with_green(
        station: Callable[..., Station]) -> None:
    st = station()
    for i in range(1, 1501):
        st.journal.append("alarm", {"source": "test", "state": "active", "mark": f"M{i:06d}",
                                    "pad": "x" * 150})
    st.journal.checkpoint()
    path = st.config.journal_path
    raw = path.read_bytes()
    page = raw.index(b"M000800") // 4096
    with open(path, "r+b") as f:    # a rotten page in the middle of the file
        f.seek(page * 4096)
        f.write(os.urandom(4096))
    # The uplink (another connection, as another process) reads across it and rebuilds.
    uplink = Journal(path, unit=st.config.unit.id, site=st.config.unit.site)
    try:
        uplink.events_after(0, limit=5000)
        assert uplink.journal_id != st.journal.journal_id
        t0 = time.monotonic()
        checkin = st.tap(PO1)
        assert checkin.journal == uplink.journal_id        # in the new journal, not aside
        assert st.signal_after(0) == "alone"
        assert changes(st.factory.pin(OK_LED), since=t0)  # green
        assert st.journal.journal_id == uplink.journal_id
        status = wait_until(lambda: (s := read_status(st.config.unit.runtime_dir))
                            and s["journal"]["rebuilt"] and s)
        assert status["journal"]["id"] == uplink.journal_id
        assert status["journal"]["rebuilt"]["moved_to"].startswith("journal.db.corrupt-")
        assert uplink.event(checkin.seq) is not None
    finally:
        uplink.close()


class _FailsToOpenOnce(StationPart):
    """A part whose first open() fails (its state unreadable, say), ahead of the readers."""

    name = "flaky"
    opens = 0

    def open(self) -> None:
        type(self).opens += 1
        if type(self).opens == 1:
            raise JournalError("journal journal.db: disk I/O error")


def test_a_part_that_cannot_open_does_not_keep_the_readers_closed(
        station: Callable[..., Station], monkeypatch: pytest.MonkeyPatch) -> None:
    import firmware_py.station as station_mod

    real_build = station_mod.build_parts
    monkeypatch.setattr(station_mod, "build_parts",
                        lambda ctx: [_FailsToOpenOnce(ctx), *real_build(ctx)])
    monkeypatch.setattr(StationComponent, "reopen_s", 0.2, raising=False)
    monkeypatch.setattr(_FailsToOpenOnce, "opens", 0)
    st = station()                      # waits for the reader to come online
    assert st.tap(PO1).data["decision"] == "accepted"
    assert st.signal_after(0) == "alone"
    wait_until(lambda: [p.name for p in st.component.parts] == ["flaky", "checkin"], 5)
    assert st.component.health()["parts_not_open"] == []
    assert st.component.failures == 0
