"""gpiozero's mock pins for tests: a fixture-friendly factory and pin-history helpers.

Mock pins keep a history of ``(seconds since the previous change, state)``;
these helpers turn it into absolute change times and phases to compare with
the timing table of :mod:`drivers.lights`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPin

from tests.support.uplink import wait_until as _wait_until


@contextmanager
def global_mock_factory() -> Iterator[MockFactory]:
    """Make a fresh :class:`MockFactory` gpiozero's default for the duration (as
    ``GPIOZERO_PIN_FACTORY=mock`` does for a whole process)."""
    before = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = before


def changes(pin: Any, since: float = 0.0) -> list[tuple[float, bool]]:
    """The pin's changes as ``(time.monotonic() of the change, new state)``, after ``since``.

    The first history entry is where the history starts (no change), so it is left out.
    """
    states = list(pin.states)
    end = pin._last_change  # monotonic time of the newest entry
    out: list[tuple[float, bool]] = []
    t = end
    for entry in reversed(states[1:]):
        out.append((t, bool(entry.state)))
        t -= entry.timestamp
    out.reverse()
    return [(t, s) for t, s in out if t >= since]


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds."""
    return _wait_until(predicate, timeout, str(predicate), step=step)


class ContactPin(MockPin):
    """A mock input wired to a contact to ground, which outlasts the device that reads it.

    A plain mock pin follows its pull when a device opens it, but on a real Pi
    a closed contact holds the pin low whatever the pull: use
    ``MockFactory(pin_class=ContactPin)`` and :meth:`close_contact` /
    :meth:`open_contact` to play a latched button across a restart.
    """

    contact_closed = False

    def close_contact(self) -> None:
        self.contact_closed = True
        self.drive_low()

    def open_contact(self) -> None:
        self.contact_closed = False
        self.drive_high()

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.contact_closed:
            self.drive_low()
