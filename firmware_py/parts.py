"""What a station part is: one hardware feature the station gives a turn.

The station (:mod:`firmware_py.station`) builds the parts the config asks for;
each part's module imports only this one, never the station.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .runtime import UnitContext

__all__ = ["StationPart"]


class StationPart:
    """One feature of the station (lights, readers, inputs, patrol logic).

    ``tick(now_mono)`` runs every loop (at least once a second, and whenever
    the journal changes) and must return quickly; ``health()`` is this part's
    contribution to the unit's health, written to the journal's state store.
    """

    name: ClassVar[str] = "part"

    def __init__(self, ctx: UnitContext) -> None:
        self.ctx = ctx

    def open(self) -> None:
        """Claim pins and ports."""

    def tick(self, now_mono: float) -> None:
        """Do what is due."""

    def close(self) -> None:
        """Release pins and ports; safe twice."""

    def health(self) -> dict[str, Any]:
        return {}
