"""The station component: the unit's hardware side (readers, lights, inputs).

It owns the serial readers and the GPIO pins, and runs the patrol logic. Its
loop waits on the journal (for the inbox and state the uplink writes) and on
its devices; each hardware feature adds its part to :meth:`step`.
"""

from __future__ import annotations

from .runtime import Component


class StationComponent(Component):
    name = "station"

    def step(self) -> None:
        # Wake on any journal change (a command in the inbox, a new desired
        # state), at the latest every second so the watchdog sees the beat.
        self.ctx.journal.wait_for_change(1.0)
