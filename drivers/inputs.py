"""Alarm inputs: the panic button and the enclosure tamper switch.

Both are a contact between a GPIO pin and ground, read through a gpiozero
:class:`~gpiozero.Button` with the Pi's internal pull-up: a closed contact
reads low, an open one (or a cut wire) high. What counts as *active* depends
on the contact:

- a **panic button** is normally open: pressing it closes the contact, so it
  is active while the pin is low (``normally_closed=False``, the default of
  :class:`PanicButton`);
- a **tamper switch** is normally closed: the shut lid holds the contact
  closed, opening the lid (or cutting the wire) opens it, so it is active
  while the pin is high (``normally_closed=True``, the default of
  :class:`TamperSwitch`). With a plain microswitch that the lid presses, wire
  COM and the NO terminal: the contact is closed while the lid presses it.

Debounce: a change counts only once the pin has held its new level for
``debounce_s`` (so contact bounce, and spikes on a long cable, never make
two events). gpiozero's ``bounce_time`` is passed on too, but pin drivers
implement it differently (lockout after an edge, a stable-level filter, or,
on the mock pins, not at all), so the rule is enforced here: every edge
restarts a settle timer on one thread per input, and when the pin has been
quiet for ``debounce_s`` its level is read and compared with the last
reported state. The level is also re-read every ``poll_s`` in case an edge
was lost. The callbacks ``when_activated`` and ``when_deactivated`` run on
that thread; an exception in one is logged and the input goes on.

Example::

    from drivers.inputs import PanicButton
    panic = PanicButton(19, debounce_s=0.05)      # button from GPIO19 (pin 35) to GND
    panic.when_activated = lambda: print("panic!")
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from gpiozero import Button
from gpiozero.threads import GPIOThread

from drivers.exc import DriverError

log = logging.getLogger("xunfang.inputs")

__all__ = ["AlarmInput", "InputClosed", "InputError", "PanicButton", "TamperSwitch"]

Callback = Callable[[], None]


class InputError(DriverError):
    """An alarm input could not do what was asked."""


class InputClosed(InputError, RuntimeError):
    """The input was closed: its pin is released."""


class AlarmInput:
    """A contact to ground on one GPIO pin, debounced, with an active and a normal state.

    ``normally_closed`` says which level is normal: False (a normally-open
    push button) makes the input active while the contact is closed (pin
    low); True (a tamper loop) makes it active while the contact is open (pin
    high, which a cut wire also gives). :attr:`is_active` is the debounced
    state; :attr:`raw_active` what the pin says this instant.
    """

    def __init__(self, pin: int | str, *, normally_closed: bool, debounce_s: float = 0.05,
                 name: str | None = None, pin_factory: Any = None, poll_s: float = 1.0) -> None:
        if debounce_s <= 0:
            raise ValueError(f"input {name or pin}: debounce_s must be positive, "
                             f"got {debounce_s}")
        self.name = name or type(self).__name__
        self.normally_closed = normally_closed
        self.debounce_s = debounce_s
        self.poll_s = poll_s
        self.when_activated: Callback | None = None
        self.when_deactivated: Callback | None = None
        self._closed = False
        self._edge = threading.Event()
        self._button = Button(pin, pull_up=True, bounce_time=debounce_s,
                              pin_factory=pin_factory)
        self._pin_name = str(self._button.pin)
        self._stable = self.raw_active
        self._button.when_activated = self._on_edge
        self._button.when_deactivated = self._on_edge
        self._thread = GPIOThread(self._watch, name=f"input-{self.name}")
        self._thread.start()

    # -- state ---------------------------------------------------------------------------------

    @property
    def raw_active(self) -> bool:
        """Whether the pin reads active this instant (not debounced)."""
        if self._closed:
            raise InputClosed(f"input {self.name} ({self._pin_name}) is closed")
        closed_contact = bool(self._button.is_pressed)
        return not closed_contact if self.normally_closed else closed_contact

    @property
    def is_active(self) -> bool:
        """The debounced state: True while the alarm condition holds."""
        if self._closed:
            raise InputClosed(f"input {self.name} ({self._pin_name}) is closed")
        return self._stable

    @property
    def pin(self) -> Any:
        """The gpiozero pin (a mock pin in tests: ``drive_low()``/``drive_high()``)."""
        return self._button.pin

    @property
    def closed(self) -> bool:
        return self._closed

    # -- machinery ----------------------------------------------------------------------------

    def _on_edge(self) -> None:
        self._edge.set()

    def _watch(self) -> None:
        stopping = self._thread.stopping
        while not stopping.is_set():
            edged = self._edge.wait(self.poll_s)
            if stopping.is_set():
                return
            if not edged and self._read() == self._stable:
                continue  # the periodic look: nothing changed
            # Settle: wait until a whole debounce period passes without an edge.
            self._edge.clear()
            while True:
                if stopping.wait(self.debounce_s):
                    return
                if not self._edge.is_set():
                    break
                self._edge.clear()
            state = self._read()
            if state is None or state == self._stable:
                continue
            self._stable = state
            callback = self.when_activated if state else self.when_deactivated
            if callback is not None:
                try:
                    callback()
                except Exception:
                    log.exception("input %s: %s callback failed", self.name,
                                  "activated" if state else "deactivated")

    def _read(self) -> bool | None:
        try:
            return self.raw_active
        except Exception as err:  # closed underneath us, or a pin driver error
            log.debug("input %s: cannot read %s: %s", self.name, self._pin_name, err)
            return None

    def close(self) -> None:
        """Stop watching and release the pin; safe to call twice."""
        if self._closed:
            return
        self._thread.stopping.set()
        self._edge.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        self._closed = True
        self._button.close()

    def __enter__(self) -> AlarmInput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "NC" if self.normally_closed else "NO"
        if self._closed:
            return f"<{type(self).__name__} {self.name} ({self._pin_name} {kind}) closed>"
        state = "active" if self._stable else "normal"
        return f"<{type(self).__name__} {self.name} ({self._pin_name} {kind}) {state}>"


class PanicButton(AlarmInput):
    """A panic button from a GPIO pin to GND (internal pull-up).

    Fit a normally-open button (latching ones, released with a key or a twist,
    keep the alarm up until someone resets it); for a button with a
    normally-closed contact pass ``normally_closed=True``.

    Example::

        panic = PanicButton(19)          # GPIO19 (header pin 35) to GND (pin 39)
        panic.when_activated = raise_alarm
    """

    def __init__(self, pin: int | str, *, normally_closed: bool = False,
                 debounce_s: float = 0.05, name: str = "panic", pin_factory: Any = None,
                 poll_s: float = 1.0) -> None:
        super().__init__(pin, normally_closed=normally_closed, debounce_s=debounce_s,
                         name=name, pin_factory=pin_factory, poll_s=poll_s)


class TamperSwitch(AlarmInput):
    """An enclosure tamper switch from a GPIO pin to GND (internal pull-up).

    Normally closed: the shut lid holds the contact closed (pin low); opening
    the lid, or cutting the wire, lets the pull-up take the pin high and the
    switch becomes active. For a switch that closes when the lid opens, pass
    ``normally_closed=False``.

    Example::

        lid = TamperSwitch(26)           # GPIO26 (header pin 37) to GND (pin 39)
        lid.when_activated = lambda: print("enclosure opened")
    """

    def __init__(self, pin: int | str, *, normally_closed: bool = True,
                 debounce_s: float = 0.05, name: str = "tamper", pin_factory: Any = None,
                 poll_s: float = 1.0) -> None:
        super().__init__(pin, normally_closed=normally_closed, debounce_s=debounce_s,
                         name=name, pin_factory=pin_factory, poll_s=poll_s)
