"""Panic button and tamper switch on gpiozero's mock pins: polarity and debounce.

Bouncing contacts are played on the mock pins with ``drive_low()`` /
``drive_high()`` a few milliseconds apart; each press must give one event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from drivers.inputs import AlarmInput, InputClosed, PanicButton, TamperSwitch

DEBOUNCE_S = 0.03
QUIET_S = 0.2           # well past the debounce time: anything still to come has come


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


class Recorder:
    """Counts an input's debounced callbacks; lets a test wait for the n-th one."""

    def __init__(self, inp: AlarmInput) -> None:
        self.calls: list[str] = []
        self._cond = threading.Condition()
        inp.when_activated = lambda: self._add("active")
        inp.when_deactivated = lambda: self._add("normal")

    def _add(self, what: str) -> None:
        with self._cond:
            self.calls.append(what)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 2.0) -> list[str]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), self.calls
            return list(self.calls)

    def quiet(self) -> list[str]:
        """The calls after QUIET_S with nothing more (a timed wait for *no* event)."""
        with self._cond:
            n = len(self.calls)
            self._cond.wait_for(lambda: len(self.calls) > n, QUIET_S)
            return list(self.calls)


def bounce(pin: MockPin, final_low: bool, flips: int = 8, gap_s: float = 0.002) -> None:
    """A contact that chatters ``flips`` times, ``gap_s`` apart, then settles."""
    towards, away = (pin.drive_low, pin.drive_high) if final_low else (pin.drive_high,
                                                                      pin.drive_low)
    for i in range(flips):
        (towards if i % 2 == 0 else away)()
        time.sleep(gap_s)
    towards()


def test_a_bouncing_press_and_release_make_one_event_each(factory: MockFactory) -> None:
    with PanicButton(19, debounce_s=DEBOUNCE_S, pin_factory=factory) as panic:
        rec = Recorder(panic)
        pin = factory.pin(19)
        assert pin.state is True and not panic.is_active   # pull-up: not pressed
        bounce(pin, final_low=True)
        assert rec.wait_for(1) == ["active"]
        assert rec.quiet() == ["active"]
        assert panic.is_active and panic.raw_active
        bounce(pin, final_low=False)
        assert rec.wait_for(2) == ["active", "normal"]
        assert rec.quiet() == ["active", "normal"]
        assert not panic.is_active


def test_a_glitch_shorter_than_the_debounce_time_is_no_event(factory: MockFactory) -> None:
    with PanicButton(19, debounce_s=DEBOUNCE_S, pin_factory=factory) as panic:
        rec = Recorder(panic)
        pin = factory.pin(19)
        pin.drive_low()
        time.sleep(0.005)
        pin.drive_high()
        assert rec.quiet() == []
        assert not panic.is_active


def test_a_change_counts_only_after_the_pin_holds_it_for_the_debounce_time(
        factory: MockFactory) -> None:
    with PanicButton(19, debounce_s=0.1, pin_factory=factory) as panic:
        rec = Recorder(panic)
        pressed = time.monotonic()
        factory.pin(19).drive_low()
        rec.wait_for(1)
        assert time.monotonic() - pressed >= 0.1


def test_a_tamper_switch_is_normally_closed_so_an_open_lid_is_active(
        factory: MockFactory) -> None:
    with TamperSwitch(26, debounce_s=DEBOUNCE_S, pin_factory=factory) as lid:
        rec = Recorder(lid)
        pin = factory.pin(26)
        assert lid.normally_closed and lid.is_active    # nothing closes the loop yet
        bounce(pin, final_low=True)       # the lid is shut: the contact closes, with chatter
        assert rec.wait_for(1) == ["normal"]
        assert not lid.is_active
        pin.drive_high()                  # lid opened (or the wire cut): the pull-up wins
        assert rec.wait_for(2) == ["normal", "active"]
        assert rec.quiet() == ["normal", "active"]
        assert lid.is_active


def test_an_unconnected_tamper_loop_is_active_from_the_start(factory: MockFactory) -> None:
    with TamperSwitch(26, debounce_s=DEBOUNCE_S, pin_factory=factory) as lid:
        assert lid.is_active              # the pull-up alone: an open (or cut) loop


def test_contacts_of_the_other_kind_are_a_parameter(factory: MockFactory) -> None:
    with PanicButton(19, normally_closed=True, debounce_s=DEBOUNCE_S,
                     pin_factory=factory) as panic:
        assert panic.is_active            # NC contact open: pressed (or wire cut)
    with TamperSwitch(26, normally_closed=False, debounce_s=DEBOUNCE_S,
                      pin_factory=factory) as lid:
        rec = Recorder(lid)
        assert not lid.is_active          # open contact: the lid is shut
        factory.pin(26).drive_low()       # closes when the lid opens
        assert rec.wait_for(1) == ["active"]


def test_a_lost_edge_is_found_by_the_periodic_look(factory: MockFactory) -> None:
    with PanicButton(19, debounce_s=DEBOUNCE_S, pin_factory=factory, poll_s=0.05) as panic:
        rec = Recorder(panic)
        # Change the level without an edge interrupt, as a missed interrupt would.
        factory.pin(19)._change_state(False)
        assert rec.wait_for(1) == ["active"]


def test_a_failing_callback_is_logged_and_the_input_goes_on(factory: MockFactory,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    with PanicButton(19, debounce_s=DEBOUNCE_S, pin_factory=factory) as panic:
        done = threading.Event()

        def boom() -> None:
            raise RuntimeError("boom")

        panic.when_activated = boom
        panic.when_deactivated = done.set
        pin = factory.pin(19)
        pin.drive_low()
        time.sleep(DEBOUNCE_S * 3)        # let the press settle before releasing
        pin.drive_high()
        assert done.wait(2)
    assert "activated callback failed" in caplog.text


def test_close_releases_the_pin_and_is_safe_twice(factory: MockFactory) -> None:
    panic = PanicButton(19, debounce_s=DEBOUNCE_S, pin_factory=factory)
    assert repr(panic) == "<PanicButton panic (GPIO19 NO) normal>"
    panic.close()
    panic.close()
    assert panic.closed and repr(panic) == "<PanicButton panic (GPIO19 NO) closed>"
    with pytest.raises(InputClosed, match="panic"):
        _ = panic.is_active
    PanicButton(19, debounce_s=DEBOUNCE_S, pin_factory=factory).close()   # pin is free


def test_debounce_must_be_positive(factory: MockFactory) -> None:
    with pytest.raises(ValueError, match="debounce_s must be positive"):
        PanicButton(19, debounce_s=0, pin_factory=factory)
