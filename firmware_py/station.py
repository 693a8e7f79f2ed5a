"""The station component: the unit's hardware side (readers, lights, inputs).

It owns the serial readers and the GPIO pins and runs the patrol logic. Each
hardware feature is a :class:`StationPart` in its own module: the station
builds the parts the config asks for, gives each a turn every loop, and waits
on the journal (the inbox and state the uplink writes) in between. A part that
fails is logged and retried on the next turn; the others go on (invariant 7).
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from .alarms import AlarmsPart
from .checkin import CheckinPart
from .lights_control import LightsPart
from .parts import StationPart
from .runtime import Component, UnitContext
from .vehicle import VehiclePart

__all__ = ["StationComponent", "StationPart", "build_parts"]

log = logging.getLogger("xunfang.station")


def build_parts(ctx: UnitContext) -> list[StationPart]:
    """The parts this unit's config asks for, in the order they should act."""
    parts: list[StationPart] = []
    parts += AlarmsPart.for_config(ctx)   # before the lights: an alarm strobes them
    parts += LightsPart.for_config(ctx)
    parts += CheckinPart.for_config(ctx)  # readers, patrol logic, feedback
    parts += VehiclePart.for_config(ctx)  # GNSS: tracks, geofence visits, satellite time
    return parts


class StationComponent(Component):
    name = "station"
    # Longest wait between turns: schedules and blink-free decisions need no more.
    tick_s: ClassVar[float] = 0.25
    #: How often a part whose open() failed is opened again.
    reopen_s: ClassVar[float] = 5.0

    def __init__(self, ctx: UnitContext) -> None:
        super().__init__(ctx)
        self.parts: list[StationPart] = []
        self._all_parts: list[StationPart] = []
        self._unopened: list[StationPart] = []
        self._next_open = 0.0
        self._part_errors: dict[str, int] = {}

    def setup(self) -> None:
        self._all_parts = build_parts(self.ctx)
        self._unopened = list(self._all_parts)
        self.parts = []
        self._open_parts()

    def _open_parts(self) -> None:
        """Open the parts not open yet. One that fails (its journal unreadable, a pin
        taken) must not keep the others, the readers above all, from working."""
        for part in list(self._unopened):
            try:
                part.open()
            except Exception:
                n = self._part_errors[part.name] = self._part_errors.get(part.name, 0) + 1
                log.error("station part %s cannot open (%d times); retrying every %.0f s",
                          part.name, n, self.reopen_s, exc_info=n == 1 or n % 100 == 0)
                try:
                    part.close()
                except Exception:
                    log.exception("closing station part %s failed", part.name)
                continue
            self._unopened.remove(part)
        self.parts = [p for p in self._all_parts if p not in self._unopened]
        self._next_open = time.monotonic() + self.reopen_s

    def step(self) -> None:
        now = time.monotonic()
        if self._unopened and now >= self._next_open:
            self._open_parts()
        for part in self.parts:
            try:
                part.tick(now)
            except Exception:
                n = self._part_errors[part.name] = self._part_errors.get(part.name, 0) + 1
                # Every failure is logged, but with the traceback only now and then.
                log.error("station part %s failed (%d times)", part.name, n,
                          exc_info=n == 1 or n % 100 == 0)
            self.beat()
        # Wake on any journal change (a command in the inbox, a new desired state).
        self.ctx.journal.wait_for_change(self.tick_s)

    def teardown(self) -> None:
        for part in reversed(self.parts):
            try:
                part.close()
            except Exception:
                log.exception("closing station part %s failed", part.name)
        self.parts, self._all_parts, self._unopened = [], [], []

    def status(self) -> str:
        return ", ".join(p.name for p in self.parts) or "idle"

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = super().health()
        out["part_errors"] = dict(self._part_errors)
        out["parts_not_open"] = [p.name for p in self._unopened]
        return out
