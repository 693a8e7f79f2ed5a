"""The unit builds drivers from the unit's config: every ``[[readers]]`` and
``[feedback]`` key reaches the driver, which itself takes only ports and pins."""

from __future__ import annotations

from pathlib import Path

from gpiozero.pins.mock import MockFactory

from firmware_py.config import FeedbackSection, ReaderConfig
from firmware_py.devices import feedback_from_config, reader_from_config


def test_reader_from_config_passes_every_reader_key(tmp_path: Path) -> None:
    factory = MockFactory()
    config = ReaderConfig(name="gate", driver="rdm6300", port=str(tmp_path / "tty"),
                          baud=19200, power_pin=17, frame="rf125")
    reader = reader_from_config(config, pin_factory=factory, start=False)
    try:
        assert (reader.name, reader.url, reader.baudrate) == ("gate", str(tmp_path / "tty"),
                                                               19200)
        assert reader.protocol.parser.frame == "rf125"  # type: ignore[attr-defined]
        assert reader.power is not None and reader.power.pin is factory.pin(17)
    finally:
        reader.stop()
    line = reader_from_config(ReaderConfig(name="booth", driver="line", port="loop://",
                                           number_format="dec"), start=False)
    try:
        assert line.protocol.parser.number_format == "dec"  # type: ignore[attr-defined]
        assert line.baudrate == 9600   # no baud in the config: the driver's default
    finally:
        line.stop()


def test_feedback_from_config_uses_the_pins_it_names() -> None:
    factory = MockFactory()
    with feedback_from_config(FeedbackSection(ok_led=17, buzzer=22), pin_factory=factory) as fb:
        assert fb.pins == {"ok_led": 17, "error_led": None, "buzzer": 22}
        fb.show("recorded")
        assert factory.pin(17).state and factory.pin(22).state
