"""WarningLight on gpiozero's mock pins: each mode's timing from the pins' history,
active-low relays, immediate switching, and the life cycle."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import pairwise

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from drivers.lights import (
    MODES,
    PATTERNS,
    LightClosed,
    LightError,
    LightModeInvalid,
    WarningLight,
    modes_for,
    pattern_period,
)
from tests.support.gpio import changes

TOLERANCE = 0.30        # ±30% on every measured phase and period


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def expected_changes(mode: str, pin_index: int, prior: bool,
                     span: float) -> list[tuple[float, bool]]:
    """Where the table says pin ``pin_index`` changes in the first ``span`` seconds."""
    out: list[tuple[float, bool]] = []
    t, state = 0.0, prior
    while t < span:
        for duration, states in PATTERNS[mode]:
            if states[pin_index] != state:
                state = states[pin_index]
                out.append((t, state))
            t += duration
    return [(t, s) for t, s in out if t < span]


def run_pattern(light: WarningLight, mode: str, cycles: float) -> tuple[float, float]:
    """Show ``mode`` for ``cycles`` periods (a measured interval, not a synchronisation),
    then switch off; return when it started and how long it ran."""
    start = time.monotonic()
    light.show(mode)
    time.sleep(cycles * pattern_period(mode))
    span = time.monotonic() - start
    light.off()
    return start, span


def assert_follows_table(pin: object, mode: str, pin_index: int, start: float,
                         span: float) -> None:
    actual = [(t - start, s) for t, s in changes(pin, since=start - 0.001)]
    actual = [(t, s) for t, s in actual if t < span - 0.001]  # not the final off()
    expected = expected_changes(mode, pin_index, prior=False, span=span)
    # Near the end the two may differ by one change; everything before must match.
    n = min(len(actual), len(expected))
    assert n >= 4, (actual, expected)
    assert abs(len(actual) - len(expected)) <= 1, (actual, expected)
    assert [s for _, s in actual[:n]] == [s for _, s in expected[:n]]
    assert actual[0][0] == pytest.approx(expected[0][0], abs=0.03)
    for i in range(1, n):
        got = actual[i][0] - actual[i - 1][0]
        want = expected[i][0] - expected[i - 1][0]
        assert got == pytest.approx(want, rel=TOLERANCE), (mode, i, got, want)
    # The period, from rising edge to rising edge (every other one for the double flash).
    rises = [t for t, s in actual[:n] if s][:: 2 if mode == "strobe" else 1]
    assert len(rises) >= 2
    for a, b in pairwise(rises):
        assert b - a == pytest.approx(pattern_period(mode), rel=TOLERANCE)


def test_the_table_is_what_the_docs_say() -> None:
    assert MODES == ("off", "on", "blink", "strobe", "alternate")
    assert PATTERNS["blink"] == ((0.5, (True, True)), (0.5, (False, False)))
    assert [d for d, _ in PATTERNS["strobe"]] == [0.08, 0.08, 0.08, 0.56]
    assert PATTERNS["alternate"] == ((0.4, (True, False)), (0.4, (False, True)))
    assert pattern_period("blink") == pytest.approx(1.0)
    assert pattern_period("strobe") == pytest.approx(0.8)
    assert pattern_period("alternate") == pytest.approx(0.8)
    assert pattern_period("on") == 0
    assert modes_for(1) == ("off", "on", "blink", "strobe")
    assert modes_for(2) == MODES


def test_blink_is_half_a_second_on_and_off_on_both_pins_in_phase(factory: MockFactory) -> None:
    with WarningLight(5, 6, name="warning", pin_factory=factory) as light:
        start, span = run_pattern(light, "blink", 2.3)
    a, b = factory.pin(5), factory.pin(6)
    assert_follows_table(a, "blink", 0, start, span)
    assert_follows_table(b, "blink", 1, start, span)
    for (ta, sa), (tb, sb) in zip(changes(a, start), changes(b, start), strict=True):
        assert sa == sb and abs(ta - tb) < 0.01


def test_strobe_is_the_police_double_flash(factory: MockFactory) -> None:
    with WarningLight(13, name="beacon", pin_factory=factory) as light:
        start, span = run_pattern(light, "strobe", 2.6)
    assert_follows_table(factory.pin(13), "strobe", 0, start, span)


def test_alternate_lights_red_and_blue_in_turn(factory: MockFactory) -> None:
    with WarningLight(5, 6, name="warning", pin_factory=factory) as light:
        start, span = run_pattern(light, "alternate", 2.6)
    a, b = factory.pin(5), factory.pin(6)
    assert_follows_table(a, "alternate", 0, start, span)
    assert_follows_table(b, "alternate", 1, start, span)
    # Never both lit at once: each rise of one pin comes with the fall of the other.
    for t, state in changes(b, start):
        if state:
            falls = [ta for ta, sa in changes(a, start) if not sa]
            assert min(abs(t - ta) for ta in falls) < 0.01


def test_an_active_low_relay_gets_the_inverse_levels(factory: MockFactory) -> None:
    with WarningLight(13, active_high=False, name="lightbox", pin_factory=factory) as box:
        pin = factory.pin(13)
        assert pin.state is True          # off: relay input high, relay released
        box.on()
        assert pin.state is False and box.value == (True,) and box.is_lit
        box.off()
        assert pin.state is True and box.value == (False,) and not box.is_lit
        start = time.monotonic()
        box.strobe()
        time.sleep(0.2)                   # first flash and gap of the double flash
        box.off()
        first = changes(pin, start)
        assert [s for _, s in first[:3]] == [False, True, False]
    assert "active-low" not in repr(box) and "closed" in repr(box)


def test_switching_mode_is_immediate_and_stops_the_pattern(factory: MockFactory) -> None:
    with WarningLight(5, 6, name="warning", pin_factory=factory) as light:
        light.strobe()
        time.sleep(0.3)
        light.on()
        assert light.mode == "on"
        assert factory.pin(5).state is True and factory.pin(6).state is True
        settled = time.monotonic()
        time.sleep(0.5)                   # a whole strobe cycle would have changed the pins
        assert changes(factory.pin(5), settled) == []
        light.alternate()
        assert (factory.pin(5).state, factory.pin(6).state) == (True, False)
        light.off()
        assert light.value == (False, False)


def test_showing_the_mode_a_light_already_shows_changes_nothing(factory: MockFactory) -> None:
    with WarningLight(13, name="beacon", pin_factory=factory) as light:
        light.strobe()
        time.sleep(0.12)                  # in the gap between the two flashes
        before = len(factory.pin(13).states)
        light.mode = "strobe"
        assert len(factory.pin(13).states) == before
        assert light.mode == "strobe"


def test_modes_a_light_cannot_show_are_refused_by_name(factory: MockFactory) -> None:
    with WarningLight(13, name="lightbox", pin_factory=factory) as box:
        assert box.modes == ("off", "on", "blink", "strobe")
        with pytest.raises(LightModeInvalid, match="lightbox: mode alternate needs two pins"):
            box.alternate()
        with pytest.raises(ValueError, match="unknown mode 'dance'"):
            box.show("dance")
        assert box.mode == "off"
    with pytest.raises(LightModeInvalid, match="one or two pins"):
        WarningLight(5, 6, 13, pin_factory=factory)


def test_close_turns_off_releases_the_pins_and_is_safe_twice(factory: MockFactory) -> None:
    light = WarningLight(5, 6, name="warning", pin_factory=factory)
    light.blink()
    light.close()
    light.close()
    assert light.closed and light.mode == "off"
    assert "closed" in repr(light) and "warning" in repr(light)
    assert factory.pin(5).function == "input"      # released
    with pytest.raises(LightClosed, match="warning"):
        light.on()
    with pytest.raises(LightError):
        _ = light.value
    # The pins are free for someone else.
    DigitalOutputDevice(5, pin_factory=factory).close()


def test_a_pin_in_use_fails_the_light_and_leaves_no_pin_claimed(factory: MockFactory) -> None:
    holder = DigitalOutputDevice(6, pin_factory=factory)
    with pytest.raises(Exception, match="6"):
        WarningLight(5, 6, name="warning", pin_factory=factory)
    holder.close()
    # GPIO5, opened before GPIO6 failed, was given back.
    WarningLight(5, 6, name="warning", pin_factory=factory).close()


def test_repr_names_the_light_its_pins_and_mode(factory: MockFactory) -> None:
    with WarningLight(13, active_high=False, name="lightbox", pin_factory=factory) as box:
        box.on()
        assert repr(box) == "<WarningLight lightbox (GPIO13 active-low) mode=on>"
