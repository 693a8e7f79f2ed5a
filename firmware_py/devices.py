"""Drivers built from the unit's config.

The drivers take plain ports and pins, as gpiozero and pyserial do; this is
where a ``[[readers]]`` entry or the ``[feedback]`` section becomes one.
"""

from __future__ import annotations

from typing import Any

from drivers.feedback import Feedback
from drivers.readers import ReaderThread, open_reader

from .config import FeedbackSection, ReaderConfig

__all__ = ["feedback_from_config", "reader_from_config"]


def reader_from_config(config: ReaderConfig, **options: Any) -> ReaderThread:
    """The reader one ``[[readers]]`` entry describes; ``options`` go to
    :func:`drivers.readers.open_reader` (callbacks, ``pin_factory``, ``start``)."""
    return open_reader(config.driver, config.port, name=config.name, baud=config.baud,
                       number_format=config.number_format, frame=config.frame,
                       power_pin=config.power_pin, **options)


def feedback_from_config(section: FeedbackSection, pin_factory: Any = None) -> Feedback:
    """The feedback outputs ``[feedback]`` names (any of them may be absent)."""
    return Feedback(section.ok_led, section.error_led, section.buzzer, pin_factory=pin_factory)
