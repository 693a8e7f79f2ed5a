"""Feedback at the card reader: a green LED, a red LED and a buzzer, in five patterns.

What a patrol member sees after a tap must be unmistakable and quick, so a
pattern's first step is set on the caller's thread, before :meth:`Feedback.show`
returns (the tap-to-green latency is the journal commit plus a pin write); the
rest runs on one background thread per :class:`Feedback`, against absolute
deadlines. A new pattern replaces the one playing at once.

:data:`PATTERNS` is the one table of timings (also in ``docs/patrol.md``):

============ ========================================== =========== ========== ==========
pattern      meaning                                    green       red        buzzer
============ ========================================== =========== ========== ==========
``recorded`` on disk: round complete / on duty (kiosk)  steady 1 s  –          1 short
``alone``    on disk, but you are alone: a second       4 flashes   –          2 short
             person must tap
``off_duty`` on disk: off duty (kiosk)                  2 long      –          1 short
``rejected`` unknown card, or not valid now             –           steady 1 s 1 long
``fault``    NOT recorded: the unit could not store it  –           6 flashes  3 tones
============ ========================================== =========== ========== ==========

Green means on disk: the station shows ``recorded``, ``alone`` and
``off_duty`` only after the tap's event is committed (docs/architecture.md,
invariant 1). Each pattern stays distinct with any one of the three outputs
fitted, except that a buzzer alone cannot tell ``recorded`` from
``off_duty``.

Wiring: each LED from its GPIO through a resistor (330 Ω–1 kΩ) to ground; an
*active* buzzer (one with its own oscillator, 3.3–5 V) through an NPN
transistor or a logic-level MOSFET, since a GPIO pin sources only a few mA.
Example::

    from drivers.feedback import Feedback
    with Feedback(ok_led=17, error_led=27, buzzer=22) as fb:
        fb.show("recorded")
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from gpiozero import LED, Buzzer, DigitalOutputDevice

from drivers.exc import DriverError

log = logging.getLogger("xunfang.feedback")

__all__ = ["OUTPUTS", "PATTERNS", "Feedback", "FeedbackClosed", "FeedbackError",
           "FeedbackPatternInvalid", "pattern_length"]

#: The outputs, in the order of a step's states.
OUTPUTS: tuple[str, ...] = ("ok_led", "error_led", "buzzer")

#: One step: how long (seconds), and the state of (ok_led, error_led, buzzer).
Step = tuple[float, tuple[bool, bool, bool]]

_G, _R, _B = True, True, True
_OFF = (False, False, False)


def _flashes(n: int, on: float, off: float, state: tuple[bool, bool, bool],
             beeps: int) -> tuple[Step, ...]:
    steps: list[Step] = []
    for i in range(n):
        lit = (state[0], state[1], i < beeps)
        steps += [(on, lit), (off, _OFF)]
    return tuple(steps)


#: The one table of timings. Everything is dark again when a pattern ends.
PATTERNS: Mapping[str, tuple[Step, ...]] = {
    "recorded": ((0.12, (_G, False, _B)), (0.88, (_G, False, False))),
    "alone": _flashes(4, 0.15, 0.15, (_G, False, False), beeps=2),
    "off_duty": ((0.12, (_G, False, _B)), (0.28, (_G, False, False)), (0.2, _OFF),
                 (0.4, (_G, False, False))),
    "rejected": ((0.6, (False, _R, _B)), (0.4, (False, _R, False))),
    "fault": _flashes(6, 0.25, 0.25, (False, _R, False), beeps=3),
}


def pattern_length(name: str) -> float:
    """Seconds the pattern ``name`` takes."""
    return sum(d for d, _ in PATTERNS[name])


class FeedbackError(DriverError):
    """The feedback outputs could not do what was asked."""


class FeedbackPatternInvalid(FeedbackError, ValueError):
    """No such pattern."""


class FeedbackClosed(FeedbackError, RuntimeError):
    """The feedback outputs were closed: their pins are released."""


class Feedback:
    """The green LED, red LED and buzzer next to a reader (any of them may be absent).

    Pins are BCM numbers (or gpiozero pin names); ``pin_factory`` is
    gpiozero's (``MockFactory()`` in tests; None: its default, which
    ``GPIOZERO_PIN_FACTORY=mock`` also makes the mock one).
    """

    def __init__(self, ok_led: int | str | None = None, error_led: int | str | None = None,
                 buzzer: int | str | None = None, *, pin_factory: Any = None,
                 patterns: Mapping[str, tuple[Step, ...]] = PATTERNS) -> None:
        self.patterns = dict(patterns)
        self.pins: dict[str, int | str | None] = {"ok_led": ok_led, "error_led": error_led,
                                                  "buzzer": buzzer}
        self._devices: list[DigitalOutputDevice | None] = []
        try:
            for name, pin in self.pins.items():
                if pin is None:
                    self._devices.append(None)
                    continue
                kind = Buzzer if name == "buzzer" else LED
                try:
                    self._devices.append(kind(pin, pin_factory=pin_factory))
                except Exception as err:
                    raise FeedbackError(f"feedback {name}: cannot use GPIO{pin}: {err}") from err
        except BaseException:
            for dev in self._devices:
                if dev is not None:
                    dev.close()
            raise
        self.shown: Counter[str] = Counter()
        self.last: str | None = None
        self.last_at: float | None = None
        self._cond = threading.Condition(threading.Lock())
        self._plan: list[tuple[float, tuple[bool, bool, bool]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)
        self._thread.start()

    # -- what callers use --

    def show(self, pattern: str) -> None:
        """Start ``pattern`` now (its first step is set before this returns)."""
        steps = self.patterns.get(pattern)
        if steps is None:
            raise FeedbackPatternInvalid(f"no feedback pattern {pattern!r} "
                                         f"(one of {', '.join(self.patterns)})")
        with self._cond:
            if self._closed:
                raise FeedbackClosed("feedback outputs are closed")
            now = time.monotonic()
            self._apply(steps[0][1])
            plan: list[tuple[float, tuple[bool, bool, bool]]] = []
            at = now + steps[0][0]
            for duration, states in steps[1:]:
                plan.append((at, states))
                at += duration
            plan.append((at, _OFF))
            self._plan = plan
            self.shown[pattern] += 1
            self.last, self.last_at = pattern, now
            self._cond.notify_all()

    def off(self) -> None:
        """Stop any pattern; everything dark."""
        with self._cond:
            self._plan = []
            if not self._closed:
                self._apply(_OFF)
            self._cond.notify_all()

    @property
    def playing(self) -> bool:
        with self._cond:
            return bool(self._plan)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the pattern playing has ended; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._plan or self._closed, timeout)

    def health(self) -> dict[str, Any]:
        return {"state": "closed" if self._closed else "ok",
                "pins": {k: v for k, v in self.pins.items() if v is not None},
                "shown": dict(self.shown), "last": self.last}

    def close(self) -> None:
        """Dark, pins released; safe twice."""
        with self._cond:
            if self._closed:
                return
            self._plan = []
            try:
                self._apply(_OFF)
            except Exception:  # a pin that failed already: still release the rest
                log.exception("feedback: switching off failed")
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(2.0)
        for dev in self._devices:
            if dev is not None:
                try:
                    dev.close()
                except Exception:
                    log.exception("feedback: closing %r failed", dev)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Feedback:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        pins = ", ".join(f"{k}=GPIO{v}" for k, v in self.pins.items() if v is not None)
        return f"<Feedback {pins or 'no outputs'}{' closed' if self._closed else ''}>"

    # -- internals --

    def _apply(self, states: tuple[bool, bool, bool]) -> None:
        for dev, on in zip(self._devices, states, strict=True):
            if dev is None:
                continue
            if on:
                dev.on()
            else:
                dev.off()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._plan:
                    self._cond.wait()
                    continue
                at, states = self._plan[0]
                delay = at - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                self._plan.pop(0)
                try:
                    self._apply(states)
                except Exception:
                    log.exception("feedback: setting the outputs failed")
                if not self._plan:
                    self._cond.notify_all()
