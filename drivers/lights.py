"""Warning lights and light boxes on one or two GPIO outputs.

A :class:`WarningLight` is a named light: a single LED, beacon or light-box
relay on one pin, or a red/blue bar on two. It shows one *mode* at a time:

``off``, ``on``
    steady.
``blink``, ``strobe``, ``alternate``
    patterns from :data:`PATTERNS`, the one table of timings (also in
    ``docs/lights.md``). ``alternate`` needs two pins.

Patterns run on one background thread per light (gpiozero's own
:class:`~gpiozero.threads.GPIOThread`, the thread its ``blink()`` uses), which
steps through the table against absolute deadlines so a pattern does not drift
and both pins of a light stay in phase; gpiozero's ``blink()`` only knows two
steps and one pin, which fits neither the double flash nor the alternation.
Switching mode stops the old pattern at once and starts the new one; setting
the mode a light already shows changes nothing (no glitch).

Wiring (see ``docs/lights.md``): a GPIO pin can source only a few mA, so a
beacon hangs off a logic-level MOSFET or a relay board. Relay boards are
usually active-low: pass ``active_high=False``. Example::

    from drivers.lights import WarningLight
    with WarningLight(5, 6, name="warning") as light:   # BCM 5 red, BCM 6 blue
        light.strobe()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from gpiozero import DigitalOutputDevice
from gpiozero.threads import GPIOThread

from drivers.exc import DriverError

log = logging.getLogger("xunfang.lights")

__all__ = [
    "MODES",
    "PATTERNS",
    "LightClosed",
    "LightError",
    "LightModeInvalid",
    "Step",
    "WarningLight",
    "modes_for",
    "pattern_period",
]

#: Every mode a light knows, in the order the self-test shows them.
MODES: tuple[str, ...] = ("off", "on", "blink", "strobe", "alternate")

#: One step of a pattern: how long (seconds), and the state of pin A and pin B.
#: A one-pin light uses pin A's column only.
Step = tuple[float, tuple[bool, bool]]

_ON, _OFF = (True, True), (False, False)
_A, _B = (True, False), (False, True)

#: The one table of timings. Each pattern repeats for as long as its mode holds.
#:
#: =========== ======================================= ========
#: mode        steps                                   period
#: =========== ======================================= ========
#: blink       on 500 ms, off 500 ms (both pins)       1.0 s
#: strobe      on 80, off 80, on 80, off 560 ms (both) 0.8 s
#: alternate   A 400 ms, B 400 ms (red / blue)         0.8 s
#: =========== ======================================= ========
#:
#: ``strobe`` is the police double flash: two 80 ms flashes 80 ms apart, then
#: a dark gap, 75 flashes a minute in pairs. All steps are at least 80 ms:
#: long enough for a relay to follow (though see docs/lights.md on relay wear).
PATTERNS: Mapping[str, tuple[Step, ...]] = {
    "blink": ((0.5, _ON), (0.5, _OFF)),
    "strobe": ((0.08, _ON), (0.08, _OFF), (0.08, _ON), (0.56, _OFF)),
    "alternate": ((0.4, _A), (0.4, _B)),
}


def pattern_period(mode: str) -> float:
    """Seconds one cycle of ``mode``'s pattern takes (0 for a steady mode)."""
    return sum(d for d, _ in PATTERNS.get(mode, ()))


def modes_for(pin_count: int) -> tuple[str, ...]:
    """The modes a light of ``pin_count`` pins can show."""
    return MODES if pin_count >= 2 else tuple(m for m in MODES if m != "alternate")


# -- errors ---------------------------------------------------------------------------------


class LightError(DriverError):
    """A warning light could not do what was asked."""


class LightModeInvalid(LightError, ValueError):
    """An unknown mode, or one the light cannot show (``alternate`` on one pin)."""


class LightClosed(LightError, RuntimeError):
    """The light was closed: its pins are released."""


# -- the light ------------------------------------------------------------------------------


class WarningLight:
    """A warning light, light box or beacon on one or two GPIO pins.

    Wire each pin through a driver stage (a logic-level N-MOSFET on the low
    side of a 12 V LED beacon, or one channel of a relay board) and give the
    BCM numbers: ``WarningLight(5, 6)`` for a red/blue bar on GPIO5 (header
    pin 29) and GPIO6 (pin 31). Relay boards that switch on a low input take
    ``active_high=False``. ``pin_factory`` is gpiozero's: tests pass a
    :class:`~gpiozero.pins.mock.MockFactory`.

    Actions are verbs (:meth:`on`, :meth:`off`, :meth:`blink`, :meth:`strobe`,
    :meth:`alternate`); :attr:`mode` is the current mode (assignable too).
    The light starts ``off``; :meth:`close` turns it off and releases the
    pins, and is safe twice.

    Example::

        box = WarningLight(13, active_high=False, name="lightbox")
        box.on()
        print(box.mode)        # "on"
        box.close()
    """

    def __init__(self, *pins: int | str, active_high: bool = True, name: str | None = None,
                 pin_factory: Any = None,
                 patterns: Mapping[str, Sequence[Step]] | None = None) -> None:
        if not 1 <= len(pins) <= 2:
            raise LightModeInvalid(f"light {name or '?'}: needs one or two pins, "
                                   f"got {len(pins)}")
        self.name = name or "light"
        self._patterns = dict(PATTERNS if patterns is None else patterns)
        self._lock = threading.RLock()
        self._mode = "off"
        self._thread: GPIOThread | None = None
        self._closed = False
        self._outputs: list[DigitalOutputDevice] = []
        try:
            for pin in pins:
                self._outputs.append(DigitalOutputDevice(
                    pin, active_high=active_high, initial_value=False,
                    pin_factory=pin_factory))
        except BaseException:
            for out in self._outputs:
                out.close()
            self._outputs = []
            self._closed = True
            raise
        self._pin_names = tuple(str(o.pin) for o in self._outputs)
        self.active_high = active_high

    # -- state ---------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The mode the light shows now: one of :data:`MODES`."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.show(mode)

    @property
    def modes(self) -> tuple[str, ...]:
        """Every mode this light can show (``alternate`` only with two pins)."""
        return modes_for(len(self._outputs) or len(self._pin_names))

    @property
    def pins(self) -> tuple[Any, ...]:
        """The gpiozero pins (pin A, then pin B), e.g. for a mock pin's ``states``."""
        return tuple(o.pin for o in self._outputs)

    @property
    def value(self) -> tuple[bool, ...]:
        """Whether each pin's lamp is lit right now (a pattern changes this all the time)."""
        self._check_open()
        return tuple(bool(o.value) for o in self._outputs)

    @property
    def is_lit(self) -> bool:
        """True while any lamp of the light is lit at this instant."""
        return any(self.value)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- actions -------------------------------------------------------------------------------

    def on(self) -> None:
        self.show("on")

    def off(self) -> None:
        self.show("off")

    def blink(self) -> None:
        self.show("blink")

    def strobe(self) -> None:
        self.show("strobe")

    def alternate(self) -> None:
        self.show("alternate")

    def show(self, mode: str) -> None:
        """Switch to ``mode`` now; a no-op when the light already shows it."""
        if mode not in MODES:
            raise LightModeInvalid(f"light {self.name}: unknown mode {mode!r}; "
                                   f"modes are {', '.join(MODES)}")
        if mode not in self.modes:
            raise LightModeInvalid(f"light {self.name}: mode {mode} needs two pins, "
                                   f"this light has one ({self._pin_names[0]})")
        with self._lock:
            self._check_open()
            if mode == self._mode:
                return
            self._stop_pattern()
            self._mode = mode
            if mode in ("on", "off"):
                self._write((mode == "on", mode == "on"))
            else:
                steps = tuple(self._patterns[mode])
                self._thread = GPIOThread(self._run_pattern, (steps,),
                                          name=f"light-{self.name}-{mode}")
                self._thread.start()

    def close(self) -> None:
        """Turn the light off and release its pins; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_pattern()
            for out in self._outputs:
                try:
                    out.off()
                    out.close()
                except Exception:  # a pin that failed must not keep the others claimed
                    log.exception("light %s: closing %s failed", self.name, out)
            self._mode = "off"

    # -- machinery ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LightClosed(f"light {self.name} ({', '.join(self._pin_names) or 'no pins'}) "
                              "is closed")

    def _write(self, states: tuple[bool, bool]) -> None:
        for out, state in zip(self._outputs, states, strict=False):
            if state:
                out.on()
            else:
                out.off()

    def _stop_pattern(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    def _run_pattern(self, steps: tuple[Step, ...]) -> None:
        thread = threading.current_thread()
        assert isinstance(thread, GPIOThread)
        stopping = thread.stopping
        deadline = time.monotonic()
        while True:
            for duration, states in steps:
                self._write(states)
                deadline += duration
                now = time.monotonic()
                if deadline < now - 1.0:
                    # Stalled (a suspended process, a stopped clock): start afresh
                    # instead of racing through the missed steps.
                    deadline = now + duration
                if stopping.wait(max(0.0, deadline - now)):
                    return

    def __enter__(self) -> WarningLight:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        pins = ", ".join(self._pin_names)
        if self._closed:
            return f"<WarningLight {self.name} ({pins}) closed>"
        polarity = "" if self.active_high else " active-low"
        return f"<WarningLight {self.name} ({pins}{polarity}) mode={self._mode}>"
