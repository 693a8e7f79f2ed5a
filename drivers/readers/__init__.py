"""RFID card readers: one module per protocol, a simulated reader, and the factory.

    from drivers.readers import open_reader
    reader = open_reader("rdm6300", "/dev/serial0", on_card=print, on_state=print)
    ...
    reader.stop()

``open_reader`` builds the named driver (``rdm6300``, ``pn532``, ``line``,
``sim``), wraps it in a started :class:`~drivers.readers.base.ReaderThread`
and returns it. Card ids are canonical upper-case hex; ``cardid`` parses the
forms a card list may use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from drivers.exc import ReaderConfigInvalid

from .base import (
    HOLD_S,
    CardRead,
    Counters,
    OnCard,
    OnState,
    ReaderProtocol,
    ReaderThread,
    RepeatFilter,
    StreamParser,
    StreamProtocol,
)
from .cardid import CardIndex, CardPattern, matches, normalize_card_hex, parse_card_pattern

if TYPE_CHECKING:
    from gpiozero import OutputDevice

__all__ = [
    "DRIVERS",
    "HOLD_S",
    "CardIndex",
    "CardPattern",
    "CardRead",
    "Counters",
    "OnCard",
    "OnState",
    "ReaderProtocol",
    "ReaderThread",
    "RepeatFilter",
    "StreamParser",
    "StreamProtocol",
    "make_protocol",
    "matches",
    "normalize_card_hex",
    "open_reader",
    "parse_card_pattern",
]

DRIVERS: tuple[str, ...] = ("rdm6300", "pn532", "line", "sim")


def make_protocol(driver: str, reader: str, *, number_format: str = "auto",
                  hold_s: float = HOLD_S, clock: Callable[[], float] = time.monotonic,
                  **options: Any) -> ReaderProtocol:
    """The protocol object of a (non-sim) driver; ``options`` go to its constructor."""
    if driver == "rdm6300":
        from .rdm6300 import rdm6300_protocol

        return rdm6300_protocol(reader, hold_s=hold_s, clock=clock, **options)
    if driver == "line":
        from .line import line_protocol

        return line_protocol(reader, number_format=number_format, hold_s=hold_s, clock=clock,
                             **options)
    if driver == "pn532":
        from .pn532 import Pn532Protocol

        return Pn532Protocol(reader, hold_s=hold_s, clock=clock, **options)
    raise ReaderConfigInvalid(f"reader {reader}: unknown driver {driver!r} "
                              f"(one of {', '.join(DRIVERS)})")


def _power_relay(reader: str, pin: int | str, pin_factory: Any) -> OutputDevice:
    from gpiozero import OutputDevice

    try:
        # Active = power cut (relay energised, normally-closed contact opens);
        # idle low, so the reader stays powered while the daemon is down.
        return OutputDevice(pin, active_high=True, initial_value=False, pin_factory=pin_factory)
    except Exception as err:
        raise ReaderConfigInvalid(f"reader {reader}: power_pin GPIO{pin}: {err}") from err


def open_reader(
    driver: str,
    port: str,
    *,
    name: str = "reader",
    baud: int | None = None,
    number_format: str = "auto",
    frame: str | None = None,
    power_pin: int | str | None = None,
    on_card: OnCard | None = None,
    on_state: OnState | None = None,
    pin_factory: Any = None,
    power: OutputDevice | None = None,
    hold_s: float = HOLD_S,
    clock: Callable[[], float] = time.monotonic,
    protocol_options: Mapping[str, Any] | None = None,
    start: bool = True,
    **thread_options: Any,
) -> ReaderThread:
    """A running reader: ``driver`` (one of :data:`DRIVERS`) on ``port``.

    ``port`` is a pyserial URL (``/dev/serial0``, ``loop://``, ``socket://``)
    or, for the ``sim`` driver, ``sim://FORMAT[?link=PATH]``; ``baud`` None is
    the driver's default. ``name`` appears in events and messages.
    ``number_format`` is how a ``line`` reader's numbers are written
    (``auto``, ``hex``, ``dec``); ``frame`` the one frame form an ``rdm6300``
    reads (``rdm6300``, ``rf125``; None: ``rdm6300``).

    ``on_card(CardRead)`` gets each tap; ``on_state(reader, "online" |
    "offline", detail)`` each change of state. With ``power_pin`` set, a
    gpiozero ``OutputDevice`` on that pin (from ``pin_factory``, e.g.
    ``MockFactory()`` in tests) drives the power relay; ``power`` passes a
    ready device instead. ``protocol_options`` go to the driver (e.g.
    ``poll_interval_s`` for a PN532), ``thread_options`` to
    :class:`ReaderThread` (backoff, timeouts). ``start=False`` returns it
    unstarted. The reader's health is ``reader.health()``.

    Raises :class:`~drivers.exc.ReaderConfigInvalid` (a ``ValueError``) for a
    driver or sim port it cannot build; a port that cannot be opened is not an
    error here: the reader reports itself offline and keeps trying.
    """
    if frame is not None and driver != "rdm6300":
        raise ReaderConfigInvalid(f"reader {name}: only an rdm6300 reader has a frame form, "
                                  f"this one is {driver!r}")
    own_power = False
    if power is None and power_pin is not None:
        power = _power_relay(name, power_pin, pin_factory)
        own_power = True
    popts = dict(protocol_options or {})
    try:
        if driver == "sim":
            from .sim import SimReader, SimReaderThread, parse_sim_port

            fmt, link = parse_sim_port(port)
            sim = SimReader(fmt, link=link)
            reader: ReaderThread = SimReaderThread(
                name, sim, hold_s=hold_s, clock=clock, on_card=on_card,
                on_state=on_state, baudrate=baud, power=power, own_power=own_power,
                **thread_options)
        else:
            if driver == "rdm6300":
                popts.setdefault("frame", frame or "rdm6300")
            protocol = make_protocol(driver, name, number_format=number_format, hold_s=hold_s,
                                     clock=clock, **popts)
            reader = ReaderThread(name, port, protocol, on_card=on_card, on_state=on_state,
                                  baudrate=baud, power=power, own_power=own_power,
                                  **thread_options)
    except BaseException:
        if own_power and power is not None:
            power.close()
        raise
    return reader.start() if start else reader
