"""The unit's start-up table: the components ``xunfang run`` knows, by name.

This is the one place that names them; the runtime is given the table and
knows nothing else about them. Each factory imports its component's module
when called, so ``xunfang run uplink`` never loads camera or GPIO code (and
the other way round): each daemon loads only what it owns (invariant 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .config import UnitConfig
from .runtime import Component, ComponentFactory, Runtime, UnitContext

__all__ = ["COMPONENT_NAMES", "FACTORIES", "unit_runtime"]


def _station(ctx: UnitContext) -> Component:
    from .station import StationComponent

    return StationComponent(ctx)


def _camera(ctx: UnitContext) -> Component:
    from camera.daemon import CameraComponent

    return CameraComponent(ctx)


def _uplink(ctx: UnitContext) -> Component:
    from .uplink import UplinkComponent

    return UplinkComponent(ctx)


#: Name → factory of every component, in the order ``xunfang run`` starts them.
FACTORIES: Mapping[str, ComponentFactory] = MappingProxyType(
    {"station": _station, "camera": _camera, "uplink": _uplink})
COMPONENT_NAMES: tuple[str, ...] = tuple(FACTORIES)


def unit_runtime(config: UnitConfig, components: list[str] | None = None,
                 **options: Any) -> Runtime:
    """A :class:`~firmware_py.runtime.Runtime` of this unit's components (all, or the
    ones named); ``options`` go to it (``clock``, ``notifier``, ``stall_s``)."""
    return Runtime(config, components, factories=FACTORIES, **options)
