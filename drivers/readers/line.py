"""Readers that send one card number per line (many USB readers in virtual-COM mode).

A line ends with CR, LF or CRLF; spaces, tabs and STX/ETX around the number
are ignored, empty lines skipped. Only numbers of a length some card id has
are read: noise on the line makes short "numbers" (a lone digit between two
line ends about twice in every MB of random bytes), never these.
``number_format`` says how the number is written:

``hex``
    the id's bytes in hex: 4, 5, 7 or 10 bytes (8, 10, 14 or 20 digits: a
    4-byte UID, an EM4100 id, a 7- or 10-byte UID; ``14008EC793``,
    ``04A1B2C3D4E5F6``); an optional ``0x`` prefix and ``:``/``-``/space
    separators are allowed (``04:A1:B2:C3``).
``dec``
    a decimal number, converted to the id as these readers define it:

    * 10 digits below 2**32 (the "10-digit" output, zero-padded as printed on
      the card, ``0009357203``): the 32-bit number, as 4 bytes
      (``008EC793``). For an EM4100 tag that is its low 32 bits; the customer
      byte is lost, so such a reader's ids never equal the 10-digit hex an
      RDM6300 reports for the same tag (enrol those cards as
      ``dec:0009357203``, which matches both);
    * larger numbers of 10 to 25 digits: the fewest of 5, 7 or 10 bytes that
      hold them (a reader that prints the whole 40-bit EM4100 number,
      ``85908703123``, gives ``14008EC793``);
    * ``FFF,CCCCC`` (facility, card, the Wiegand-26 print, 3 and 5 digits as
      printed on the card): 3 bytes ``facility << 16 | card`` (``142,51091``
      gives ``8EC793``).

    Ambiguity: whether a reader prints the UID of a 4-byte MIFARE card in
    decimal big- or little-endian varies by model; we read it big-endian.
``auto``
    hex when the line has a hex letter (A–F) or a ``0x`` prefix, or is 8
    digits (no decimal form has 8); decimal when it is otherwise all digits.
    Once a line has shown hex letters, all-digit lines are read as hex too
    (the reader evidently writes hex). Ambiguity: about 1% of EM4100 ids have
    no letter in hex, so set the format when you know it.

Numbers of another length (``bad_length``), garbage lines (anything else),
over-long lines and non-ASCII bytes are counted and dropped; the parser never
raises.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from drivers.exc import CardIdImplausible, CardPatternInvalid

from .base import HOLD_S, Clock, StreamParser, StreamProtocol

NumberFormat = Literal["auto", "hex", "dec"]
NUMBER_FORMATS: tuple[str, ...] = ("auto", "hex", "dec")
DEFAULT_BAUD = 9600
MAX_LINE = 64
# Hex digits of the card ids a reader prints: 4-byte UID, EM4100, 7- and 10-byte UIDs.
HEX_DIGITS = (8, 10, 14, 20)
# Decimal: the printed 10-digit form, up to a 10-byte UID's 25 digits.
MIN_DEC_DIGITS, MAX_DEC_DIGITS = 10, 25

_EOL = re.compile(rb"[\r\n]")
_STRIP = b" \t\x02\x03\x00"
_HEX_LETTER = re.compile(r"[A-Fa-f]")
_HEX_ID = re.compile(r"(?:0[xX])?([0-9A-Fa-f]{2}(?:[:\- ]?[0-9A-Fa-f]{2})*)")
_DEC = re.compile(r"[0-9]+")
_W26 = re.compile(r"([0-9]+),([0-9]+)")


def hex_line_to_card(text: str) -> str:
    """A hex card number as written by a reader -> canonical id. ValueError if it is not one."""
    m = _HEX_ID.fullmatch(text)
    if not m:
        raise CardPatternInvalid(f"{text!r} is not a hex card number")
    digits = re.sub(r"[:\- ]", "", m.group(1))
    if len(digits) not in HEX_DIGITS:
        raise CardIdImplausible(f"{text!r}: {len(digits)} hex digits, a card id has "
                                f"{', '.join(map(str, HEX_DIGITS))}")
    return digits.upper()


def dec_line_to_card(text: str) -> str:
    """A decimal card number as written by a reader -> canonical id (see the module doc)."""
    m = _W26.fullmatch(text)
    if m:
        if (len(m.group(1)), len(m.group(2))) != (3, 5):
            raise CardIdImplausible(f"{text!r}: a Wiegand-26 number is printed as 3 digits, "
                                    "a comma and 5 digits (e.g. 142,51091)")
        facility, number = int(m.group(1)), int(m.group(2))
        if facility > 0xFF or number > 0xFFFF:
            raise CardPatternInvalid(f"{text!r}: Wiegand-26 facility/card out of range")
        return f"{facility << 16 | number:06X}"
    if not _DEC.fullmatch(text) or len(text) > MAX_DEC_DIGITS:
        raise CardPatternInvalid(f"{text!r} is not a decimal card number")
    if len(text) < MIN_DEC_DIGITS:
        raise CardIdImplausible(f"{text!r}: {len(text)} digits, a decimal card number has "
                                f"{MIN_DEC_DIGITS} or more (e.g. 0009357203)")
    value = int(text)
    if len(text) == MIN_DEC_DIGITS and value <= 0xFFFFFFFF:
        return f"{value:08X}"
    for size in (5, 7, 10):
        if value < 1 << (8 * size):
            return f"{value:0{size * 2}X}"
    raise CardPatternInvalid(f"{text!r} does not fit in 10 bytes")


def line_to_card(text: str, number_format: str = "auto", *, hex_seen: bool = False) -> str:
    """One line's card number -> canonical hex id, per ``number_format``. ValueError if garbage."""
    if number_format == "hex":
        return hex_line_to_card(text)
    if number_format == "dec":
        return dec_line_to_card(text)
    if number_format != "auto":
        raise ValueError(f"number_format must be one of {NUMBER_FORMATS}, got {number_format!r}")
    if (text[:2] in ("0x", "0X") or _HEX_LETTER.search(text) or hex_seen
            or (len(text) == 8 and text.isdigit())):
        return hex_line_to_card(text)
    return dec_line_to_card(text)


def encode_line(card_hex: str, number_format: str = "hex", ending: bytes = b"\r\n") -> bytes:
    """What a line reader sends for this card: hex, or the 10-digit decimal of its low 32 bits."""
    if number_format == "dec":
        return f"{int(card_hex, 16) & 0xFFFFFFFF:010d}".encode() + ending
    return card_hex.upper().encode("ascii") + ending


class LineParser(StreamParser):
    """Lines in, card reads out. Error kinds: ``bad_length`` (a number of a
    length no card id has), ``garbage`` (a line that is no card number),
    ``overlong`` (a line past ``max_line`` bytes)."""

    def __init__(self, reader: str = "", *, number_format: str = "auto",
                 hold_s: float = HOLD_S, clock: Clock = time.monotonic,
                 max_line: int = MAX_LINE) -> None:
        if number_format not in NUMBER_FORMATS:
            raise ValueError(f"number_format must be one of {NUMBER_FORMATS}, "
                             f"got {number_format!r}")
        super().__init__(reader, hold_s=hold_s, clock=clock)
        self.number_format = number_format
        self.max_line = max_line
        self.hex_seen = False
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: drop until its end

    def reset(self) -> None:
        self._buf.clear()
        self._skipping = False

    def _parse(self, data: bytes) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        pos = 0
        for m in _EOL.finditer(data):
            self._take(data[pos:m.start()])
            pos = m.end()
            if self._skipping:
                self._skipping = False
            else:
                line = bytes(self._buf)
                got = self._line(line)
                if got is not None:
                    out.append((got, line))
            self._buf.clear()
        self._take(data[pos:])
        return out

    def _take(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._skipping:
            self._drop(len(chunk))
            return
        self._buf += chunk
        if len(self._buf) > self.max_line:
            self._bad_frame("overlong", len(self._buf))
            self._buf.clear()
            self._skipping = True

    def _line(self, line: bytes) -> str | None:
        body = line.strip(_STRIP)
        if not body:
            return None
        try:
            text = body.decode("ascii")
            card = line_to_card(text, self.number_format, hex_seen=self.hex_seen)
        except CardIdImplausible:
            self._bad_frame("bad_length", len(line))
            return None
        except ValueError:
            self._bad_frame("garbage", len(line))
            return None
        if self.number_format == "auto" and _HEX_LETTER.search(text):
            self.hex_seen = True
        return card


def line_protocol(reader: str = "", *, number_format: str = "auto", hold_s: float = HOLD_S,
                  clock: Clock = time.monotonic, noise_limit: int = 50) -> StreamProtocol:
    """The protocol a :class:`~drivers.readers.base.ReaderThread` runs for a line reader."""
    parser = LineParser(reader, number_format=number_format, hold_s=hold_s, clock=clock)
    return StreamProtocol(parser, driver="line", default_baud=DEFAULT_BAUD,
                          noise_limit=noise_limit)
