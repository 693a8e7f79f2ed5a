"""Alarm inputs at the station: the panic button and the tamper switch become ``alarm`` events.

:class:`AlarmsPart` opens the inputs ``[inputs]`` names (:mod:`drivers.inputs`,
debounced) and keeps, for each source, the journal's state key
``alarm/{source}`` (``{"state": "active"|"cleared", "since", "pin"}``)
equal to what the input says. Every change is one ``alarm`` event ``{source,
state, pin}`` written in the same transaction as the key, so after a restart
the part compares the pin with the journal and reports only what changed
while it was away (a latched panic button is reported once, not at every
start).

What follows an alarm:

- the lights: :class:`~firmware_py.lights_control.LightsPart` reads
  ``alarm/panic`` every turn and strobes the lights of ``[inputs]
  alarm_lights`` while it is active (a tamper alarm does not light anything:
  an installer opening the box for maintenance should not set off a beacon);
- the camera: when an alarm becomes active and the unit has a camera, an
  inbox entry asks for a snapshot (the contract, for the camera daemon)::

      command_id  "alarm-{journal_id}-{seq of the alarm event}"
      name        "snapshot"
      args        {"trigger": "alarm", "ref": "<id of the alarm event>"}

  These local entries never come from the centre, so they carry ``trigger``
  and ``ref``, which the centre's ``snapshot`` command does not; the camera
  reads both with ``InboxReader(journal, "camera", ["snapshot", ...])`` and
  puts ``trigger``/``ref`` into its ``snapshot`` event. The entry follows the
  alarm event in a second transaction: a power cut between the two loses the
  snapshot request, never the alarm.

A momentary panic button makes a short alarm; ``[inputs] panic_hold_s``
keeps the alarm active that long after the press (the lights strobe, the
``cleared`` event waits).

The input's callbacks write the journal on the input's own thread, so an
alarm is recorded within the debounce time; the station's turn reconciles
too (and retries a write that failed).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

from drivers.inputs import AlarmInput, PanicButton, TamperSwitch

from .clock import rfc3339_ms
from .exc import JournalError
from .journal import Journal
from .parts import StationPart
from .runtime import UnitContext

log = logging.getLogger("xunfang.alarms")

__all__ = ["SOURCES", "AlarmsPart", "alarm_key", "snapshot_request_id"]

SOURCES = ("panic", "tamper")


def alarm_key(source: str) -> str:
    """The state key that holds alarm ``source``'s current state."""
    return f"alarm/{source}"


def snapshot_request_id(journal_id: str, seq: int) -> str:
    """The inbox id of the snapshot an alarm event asks for."""
    return f"alarm-{journal_id}-{seq}"


class AlarmsPart(StationPart):
    """Turns the panic button and tamper switch into ``alarm`` events and snapshot requests.

    ``pin_factory`` is gpiozero's (None: its default); ``retry_s`` how often an
    input whose pin failed to open is tried again.
    """

    name: ClassVar[str] = "alarms"

    @classmethod
    def for_config(cls, ctx: UnitContext) -> list[StationPart]:
        """This part when ``[inputs]`` names a pin, else nothing (for ``build_parts``)."""
        inputs = ctx.config.inputs
        return [cls(ctx)] if inputs.panic is not None or inputs.tamper is not None else []

    def __init__(self, ctx: UnitContext, *, pin_factory: Any = None,
                 retry_s: float = 30.0) -> None:
        super().__init__(ctx)
        cfg = ctx.config.inputs
        self.journal: Journal = ctx.journal
        self.pin_factory = pin_factory
        self.retry_s = retry_s
        self.pins: dict[str, int] = {s: p for s, p in (("panic", cfg.panic),
                                                       ("tamper", cfg.tamper)) if p is not None}
        self.inputs: dict[str, AlarmInput | None] = dict.fromkeys(self.pins)
        self.errors: dict[str, str] = {}
        self.hold_s = float(cfg.panic_hold_s)
        self._lock = threading.RLock()
        self._pressed_at: dict[str, float] = {}
        self._was_raw: dict[str, bool] = {}
        # When to try the pins (or the lock) again; None: at the next turn.
        self._next_claim: float | None = None
        self._failing: set[str] = set()

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        self._claim(None)

    def close(self) -> None:
        with self._lock:
            inputs = [i for i in self.inputs.values() if i is not None]
            self.inputs = dict.fromkeys(self.pins)
        for inp in inputs:
            try:
                inp.close()
            except Exception:
                log.exception("closing input %s failed", inp.name)

    def _claim(self, now: float | None) -> None:
        cfg = self.ctx.config.inputs
        debounce_s = cfg.debounce_ms / 1000
        for source, pin in self.pins.items():
            if self.inputs[source] is not None:
                continue
            kind = PanicButton if source == "panic" else TamperSwitch
            nc = cfg.panic_normally_closed if source == "panic" else cfg.tamper_normally_closed
            try:
                inp = kind(pin, normally_closed=nc, debounce_s=debounce_s, name=source,
                           pin_factory=self.pin_factory)
            except Exception as err:
                text = f"cannot open GPIO{pin}: {err}"
                if self.errors.get(source) != text:
                    log.error("input %s: %s (retrying every %.0f s)", source, text, self.retry_s)
                self.errors[source] = text
                continue
            self.errors.pop(source, None)
            inp.when_activated = lambda s=source: self._sync(s)
            inp.when_deactivated = lambda s=source: self._sync(s)
            with self._lock:
                self.inputs[source] = inp
            self._sync(source)
        self._next_claim = None if now is None else now + self.retry_s

    # -- the work -----------------------------------------------------------------------------

    def tick(self, now_mono: float) -> None:
        if self.errors and (self._next_claim is None or now_mono >= self._next_claim):
            self._claim(now_mono)
        for source in self.pins:
            self._sync(source)

    def _alarm_active(self, source: str, raw: bool, now: float) -> bool:
        """The alarm's state from the debounced input (and the panic hold time)."""
        if raw and not self._was_raw.get(source, False):
            self._pressed_at[source] = now
        self._was_raw[source] = raw
        if raw:
            return True
        if source == "panic" and self.hold_s > 0:
            pressed = self._pressed_at.get(source)
            return pressed is not None and now - pressed < self.hold_s
        return False

    def _sync(self, source: str) -> None:
        """Make ``alarm/{source}`` say what the input says; an event for each change."""
        with self._lock:
            inp = self.inputs.get(source)
            if inp is None or inp.closed:
                return  # not known: leave the recorded state as it is
            try:
                active = self._alarm_active(source, inp.is_active, time.monotonic())
                stored = self.journal.state_get(alarm_key(source))
                recorded = isinstance(stored, dict) and stored.get("state") == "active"
                if active == recorded:
                    return
                self._record(source, active)
                self._failing.discard(source)
            except JournalError as err:
                if source not in self._failing:
                    log.error("alarm %s: cannot record it (retrying): %s", source, err)
                self._failing.add(source)

    def _record(self, source: str, active: bool) -> None:
        state = "active" if active else "cleared"
        pin = self.pins[source]
        since = rfc3339_ms(self.journal.clock.wall_ms())
        event = self.journal.append("alarm", {"source": source, "state": state, "pin": pin},
                                    state={alarm_key(source): {"state": state, "since": since,
                                                               "pin": pin}})
        log.warning("alarm %s %s (GPIO%d)", source, state, pin)
        if active and self.ctx.config.cameras:
            self.journal.inbox_put(snapshot_request_id(self.journal.journal_id, event.seq),
                                   "snapshot", {"trigger": "alarm", "ref": event.id})

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for source, pin in self.pins.items():
            inp = self.inputs.get(source)
            if source in self.errors or inp is None:
                out[source] = {"state": "error", "pin": pin,
                               "detail": self.errors.get(source, "not open")}
            else:
                out[source] = {"state": "active" if inp.is_active else "normal", "pin": pin}
        return out
