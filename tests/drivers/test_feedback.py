"""Feedback LEDs and buzzer on gpiozero's mock pins: the table's timings from the pins'
history, the first step before ``show`` returns, distinct patterns, the life cycle."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import combinations

import pytest
from gpiozero import LED
from gpiozero.pins.mock import MockFactory

from drivers.feedback import (
    OUTPUTS,
    PATTERNS,
    Feedback,
    FeedbackClosed,
    FeedbackError,
    FeedbackPatternInvalid,
    pattern_length,
)
from tests.support.gpio import changes

SLACK_S = 0.06          # scheduling slack on each change (CI machines are busy)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def expected(pattern: str, index: int) -> list[tuple[float, bool]]:
    """When the table says output ``index`` changes, from dark, until dark again."""
    out: list[tuple[float, bool]] = []
    t, state = 0.0, False
    for duration, states in PATTERNS[pattern]:
        if states[index] != state:
            state = states[index]
            out.append((t, state))
        t += duration
    if state:
        out.append((t, False))
    return out


def test_every_pattern_plays_its_table_on_the_pins(factory: MockFactory) -> None:
    # All five at once, each on its own three pins: one pattern's time for the lot.
    boards = {name: Feedback(*(4 + 3 * i + k for k in range(3)), pin_factory=factory)
              for i, name in enumerate(PATTERNS)}
    try:
        starts = {}
        for name, fb in boards.items():
            starts[name] = time.monotonic()
            fb.show(name)
        for fb in boards.values():
            assert fb.wait_idle(10)
        for i, name in enumerate(PATTERNS):
            for k, output in enumerate(OUTPUTS):
                pin = factory.pin(4 + 3 * i + k)
                seen = changes(pin, since=starts[name] - 0.001)
                want = expected(name, k)
                assert [s for _, s in seen] == [s for _, s in want], (name, output)
                for (t, _), (offset, _) in zip(seen, want, strict=True):
                    assert t - starts[name] == pytest.approx(offset, abs=SLACK_S), (name, output)
    finally:
        for fb in boards.values():
            fb.close()


def test_the_first_step_is_on_the_pins_before_show_returns(factory: MockFactory) -> None:
    with Feedback(17, 27, 22, pin_factory=factory) as fb:
        fb.show("recorded")
        assert factory.pin(17).state and factory.pin(22).state and not factory.pin(27).state
        fb.show("rejected")     # and a new pattern replaces the old one at once
        assert not factory.pin(17).state and factory.pin(27).state
        assert fb.wait_idle(5)
        assert not any(factory.pin(p).state for p in (17, 27, 22))
        assert fb.shown == {"recorded": 1, "rejected": 1} and fb.last == "rejected"


def test_a_replaced_pattern_never_comes_back(factory: MockFactory) -> None:
    with Feedback(17, 27, 22, pin_factory=factory) as fb:
        start = time.monotonic()
        fb.show("fault")
        fb.show("recorded")
        assert fb.wait_idle(5)
        red = changes(factory.pin(27), since=start)
        assert red[-1][1] is False and [s for _, s in red].count(True) == 1


def _timeline(pattern: str, index: int) -> tuple[tuple[bool, int], ...]:
    """What one output does in a pattern, as (state, milliseconds) runs."""
    runs: list[tuple[bool, int]] = []
    for duration, states in PATTERNS[pattern]:
        ms = round(duration * 1000)
        if runs and runs[-1][0] == states[index]:
            runs[-1] = (runs[-1][0], runs[-1][1] + ms)
        else:
            runs.append((states[index], ms))
    while runs and not runs[-1][0]:
        runs.pop()
    return tuple(runs)


def test_green_only_means_on_disk_and_patterns_are_told_apart() -> None:
    assert not any(s[0] for _, s in PATTERNS["rejected"] + PATTERNS["fault"])
    assert not any(s[1] for name in ("recorded", "alone", "off_duty") for _, s in PATTERNS[name])
    for a, b in combinations(PATTERNS, 2):
        # All outputs together: always distinct.
        assert any(_timeline(a, i) != _timeline(b, i) for i in range(3)), (a, b)
    # One output alone: green tells the recorded kinds apart, red the refusals.
    for a, b in combinations(("recorded", "alone", "off_duty"), 2):
        assert _timeline(a, 0) != _timeline(b, 0)
    assert _timeline("rejected", 1) != _timeline("fault", 1)
    # Every pattern is over within a few seconds, and starts at once (first step > 0).
    assert all(0 < pattern_length(p) <= 3.0 for p in PATTERNS)


def test_absent_outputs_unknown_patterns_and_close(factory: MockFactory) -> None:
    fb = Feedback(ok_led=17, pin_factory=factory)
    fb.show("alone")
    assert factory.pin(17).state
    with pytest.raises(FeedbackPatternInvalid, match="no feedback pattern 'blink'"):
        fb.show("blink")
    with pytest.raises(ValueError):
        fb.show("")
    fb.close()
    fb.close()   # safe twice
    assert "closed" in repr(fb) and not factory.pin(17).state
    with pytest.raises(FeedbackClosed):
        fb.show("recorded")
    LED(17, pin_factory=factory).close()   # the pin was released
    assert repr(Feedback(pin_factory=factory)) == "<Feedback no outputs>"


def test_a_pin_in_use_is_a_clear_error_and_leaks_nothing(factory: MockFactory) -> None:
    taken = LED(27, pin_factory=factory)
    with pytest.raises(FeedbackError, match="error_led: cannot use GPIO27"):
        Feedback(17, 27, 22, pin_factory=factory)
    taken.close()
    with Feedback(17, 27, 22, pin_factory=factory) as fb:   # 17 was given back
        assert fb.health()["pins"] == {"ok_led": 17, "error_led": 27, "buzzer": 22}
