"""``xunfang sim tap``: tap a card on a running unit's simulated reader.

A unit whose config has a ``driver = "sim"`` reader runs a real pty for it
(:mod:`drivers.readers.sim`); the station links its tap side to
``{runtime_dir}/sim-{name}`` (or the port's ``link``). This command writes
one real frame of the reader's format (RDM6300, RF125-PS, hex or decimal
line) into it, exactly the bytes a reader would send, and waits for the
``checkin`` event that the unit records for it::

    $ xunfang sim tap 14008EC793 --reader main -c unit.toml
    tapped 14008EC793 on main (run/sim-main, rdm6300 frame 14 bytes)
    #12     2026-11-28T15:04:05.123Z checkin    card=14008EC793 reader=main decision=accepted …

``CARD`` is a hex id, or the number printed on an EM4100 card
(``dec:0009357203``, ``w26:142,51091``; sent as a tag with customer byte 00).
The same card again within 1.5 s is one tap to the reader (a held tag), as
with a real reader.

From Python (the demo)::

    from firmware_py.sim import tap
    result = tap("unit.toml", "14008EC793", reader="main")
    print(result.event.data["decision"] if result.event else "no checkin seen")
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.readers import normalize_card_hex, parse_card_pattern
from drivers.readers.sim import SIM_FORMATS, encode_tap, parse_sim_port

from .checkin import sim_link_path
from .config import ReaderConfig, UnitConfig, load_config
from .exc import ConfigError, JournalError, XunfangError
from .journal import Event, Journal

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["SimTapError", "TapResult", "add_parser", "card_id", "find_sim_reader", "tap"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_POLL_S = 0.02


class SimTapError(XunfangError):
    """The tap could not be made: no such sim reader, or the unit is not running."""


@dataclass(frozen=True)
class TapResult:
    """What a tap did: the card id and bytes written, where, and the checkin it made."""

    card: str
    reader: str
    path: Path
    frame: bytes
    event: Event | None


def card_id(text: str) -> str:
    """The hex id to send for ``text``: a hex id, or an EM4100 card by its printed number."""
    pattern = parse_card_pattern(text)
    if pattern.kind == "hex":
        return normalize_card_hex(str(pattern.value))
    # A tag with customer byte 00 and these low bits matches the dec:/w26: entry.
    return f"{int(pattern.value):010X}"


def find_sim_reader(config: UnitConfig, name: str | None) -> ReaderConfig:
    sims = [r for r in config.readers if r.driver == "sim"]
    if name is None:
        if not sims:
            raise SimTapError("this unit has no sim reader (a [[readers]] entry with "
                              "driver = \"sim\")")
        return sims[0]
    for reader in config.readers:
        if reader.name == name:
            if reader.driver != "sim":
                raise SimTapError(f"reader {name} is a {reader.driver} reader, not a sim reader")
            return reader
    raise SimTapError(f"no reader named {name!r} (sim readers: "
                      f"{', '.join(r.name for r in sims) or 'none'})")


def _write(path: Path, data: bytes) -> None:
    if not path.exists():
        raise SimTapError(f"no sim reader at {path}: is the unit running "
                          f"(xunfang run -c FILE)?")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as err:
        raise SimTapError(f"cannot open the sim reader {path}: {err}") from err
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as err:
        raise SimTapError(f"cannot write to the sim reader {path}: {err}") from err
    finally:
        os.close(fd)


def _wait_checkin(journal: Journal, after: int, card: str, reader: str,
                  timeout: float) -> Event | None:
    deadline = time.monotonic() + timeout
    while True:
        top = journal.last_seq()
        for event in journal.events_after(after, limit=500, kinds=["checkin"]):
            if event.data.get("card") == card and event.data.get("reader") == reader:
                return event
        after = top
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        journal.wait(after, min(remaining, 0.5))


def tap(config: str | os.PathLike[str] | UnitConfig, card: str, reader: str | None = None,
        *, wait_s: float = 5.0, fmt: str | None = None) -> TapResult:
    """Tap ``card`` on sim reader ``reader`` (default: the first) of the unit running
    with ``config``; with ``wait_s`` > 0, wait that long for its ``checkin`` event.

    Raises :class:`SimTapError` when the reader or the running unit cannot be
    found, ``ValueError`` for a card that is not a card id.
    """
    cfg = config if isinstance(config, UnitConfig) else load_config(config)
    rc = find_sim_reader(cfg, reader)
    card_hex = card_id(card)
    reader_fmt, _link = parse_sim_port(rc.port)
    frame = encode_tap(card_hex, fmt or reader_fmt)
    path = sim_link_path(cfg, rc)
    journal: Journal | None = None
    if wait_s > 0 and cfg.journal_path.exists():
        try:
            journal = Journal(cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site)
        except JournalError:
            journal = None
    try:
        after = journal.last_seq() if journal is not None else 0
        _write(path, frame)
        event = None
        if journal is not None:
            # The checkin reports the id as read: a line reader in dec mode reads the low
            # 32 bits only, so match on what this format can carry.
            expect = card_hex
            if (fmt or reader_fmt) == "dec":
                expect = f"{int(card_hex, 16) & 0xFFFFFFFF:08X}"
            event = _wait_checkin(journal, after, expect, rc.name, wait_s)
        return TapResult(card_hex, rc.name, path, frame, event)
    finally:
        if journal is not None:
            journal.close()


# -- the command ------------------------------------------------------------------------------


def cmd_sim_tap(args: argparse.Namespace) -> int:
    from .commandline import format_event, load_config_or_exit

    cfg = load_config_or_exit(args.config)
    try:
        result = tap(cfg, args.card, args.reader, wait_s=args.wait, fmt=args.format)
    except SimTapError as err:
        print(str(err), file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, ConfigError) as err:
        print(f"{args.card}: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"card": result.card, "reader": result.reader,
                          "path": str(result.path), "frame": result.frame.hex(),
                          "event": result.event.envelope() if result.event else None},
                         ensure_ascii=False))
    else:
        print(f"tapped {result.card} on {result.reader} ({result.path}, "
              f"{len(result.frame)} bytes)")
        if result.event is not None:
            print(format_event(result.event))
    if args.wait > 0 and result.event is None:
        print(f"no checkin for {result.card} within {args.wait:g} s (the same card again "
              f"within 1.5 s is one tap to the reader; is the station running?)",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser("sim", help="play the simulated hardware of a running unit")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser("tap", help="tap a card on a sim reader (writes a real frame)")
    t.add_argument("card", metavar="CARD",
                   help="hex id (14008EC793), or dec:0009357203 / w26:142,51091")
    t.add_argument("--reader", metavar="NAME", help="the sim reader (default: the first)")
    t.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="the running unit's config (TOML)")
    t.add_argument("--format", choices=SIM_FORMATS,
                   help="frame format (default: the reader's own)")
    t.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                   help="wait this long for the checkin event (5; 0: do not wait)")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=cmd_sim_tap)
