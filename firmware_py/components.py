"""The table of components a unit runs, by the name ``xunfang run`` takes.

Each feature plugs its loop in here; the runtime knows nothing else about
them. Imports are lazy so that ``xunfang run uplink`` never imports camera or
GPIO code (and the other way round): each daemon loads only what it owns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import Component, UnitContext


def _station(ctx: UnitContext) -> Component:
    from .station import StationComponent

    return StationComponent(ctx)


def _camera(ctx: UnitContext) -> Component:
    from camera.daemon import CameraComponent

    return CameraComponent(ctx)


def _uplink(ctx: UnitContext) -> Component:
    from .uplink import UplinkComponent

    return UplinkComponent(ctx)


FACTORIES = {"station": _station, "camera": _camera, "uplink": _uplink}
