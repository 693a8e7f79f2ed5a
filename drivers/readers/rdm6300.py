"""RDM6300 (and compatible) EM4100 125 kHz readers on a UART: 9600 8N1, receive only.

A frame is 14 bytes (``wire-formats.md``)::

    STX 0x02 | ten ASCII hex digits: customer byte + 32-bit number | two ASCII
    hex digits: XOR of the five data bytes | ETX 0x03

    02 31 34 30 30 38 45 43 37 39 33 43 45 03   ->  card 14008EC793 (checksum CE)

The reader repeats the frame every ~100 ms while a tag is in the field; the
parser collapses those repeats (:class:`~drivers.readers.base.RepeatFilter`).

The RF125-PS variant sends 11 characters between STX and ETX: the same ten
digits, then the checksum as one *raw* byte (13 bytes in all). A parser reads
one form only, the one its reader is configured for (``frame``: ``rdm6300``
or ``rf125``), never a guess per frame: a 14-byte frame that lost one byte on
the line (a UART overrun) often has the shape of a 13-byte one, and its
one-byte checksum then passes for about 1 in 256 of them, which would be a
card that was never there.

The parser resynchronises on the next STX after anything that is not a frame,
drops (and counts) bad checksums and malformed frames, and never raises.

Wiring (docs/readers.md): the module's TX to the Pi's RXD (GPIO15, pin 10)
through a divider or level shifter if it drives 5 V, +5V and GND to the Pi's
5 V and GND; ``port = "/dev/serial0"``.

    parser = Rdm6300Parser("main")
    parser.feed(bytes.fromhex("02 31 34 30 30 38 45 43 37 39 33 43 45 03"))
    # -> [CardRead(reader='main', card_hex='14008EC793', ...)]
"""

from __future__ import annotations

import time

from drivers.exc import ReaderConfigInvalid

from .base import HOLD_S, Clock, StreamParser, StreamProtocol

STX = 0x02
ETX = 0x03
FRAME_LEN = 14
RF125_FRAME_LEN = 13
DEFAULT_BAUD = 9600
# The frame forms a reader may be configured for (``[[readers]] frame``).
FRAMES: tuple[str, ...] = ("rdm6300", "rf125")

_HEX = frozenset(b"0123456789ABCDEFabcdef")
_NEED, _OK, _BAD_CHECKSUM, _BAD_FRAME = range(4)


def checksum(card_hex: str) -> int:
    """XOR of the five data bytes of a 10-digit EM4100 id."""
    data = bytes.fromhex(card_hex)
    if len(data) != 5:
        raise ValueError(f"an EM4100 id is 5 bytes (10 hex digits), got {card_hex!r}")
    x = 0
    for b in data:
        x ^= b
    return x


def encode_frame(card_hex: str) -> bytes:
    """The 14-byte RDM6300 frame of a 10-digit EM4100 id (what the reader sends)."""
    card = card_hex.upper()
    return bytes([STX]) + card.encode("ascii") + f"{checksum(card):02X}".encode() + bytes([ETX])


def encode_rf125_frame(card_hex: str) -> bytes:
    """The 13-byte RF125-PS frame: ten digits and a raw checksum byte."""
    card = card_hex.upper()
    return bytes([STX]) + card.encode("ascii") + bytes([checksum(card), ETX])


class Rdm6300Parser(StreamParser):
    """Bytes from an RDM6300 in, card reads out (``feed``); errors counted by kind.

    ``frame`` is the one form read: ``rdm6300`` (14 bytes, two hex checksum
    digits) or ``rf125`` (13 bytes, a raw checksum byte); frames of the other
    form are malformed.

    Error kinds: ``bad_checksum`` (a well-formed frame whose checksum is
    wrong), ``bad_frame`` (an STX followed by something that is not a frame;
    the bytes up to the next STX go with it), ``noise`` (other bytes outside
    any frame).
    """

    def __init__(self, reader: str = "", *, hold_s: float = HOLD_S,
                 clock: Clock = time.monotonic, frame: str = "rdm6300") -> None:
        if frame not in FRAMES:
            raise ReaderConfigInvalid(f"reader {reader}: frame must be one of "
                                      f"{', '.join(FRAMES)}, got {frame!r}")
        super().__init__(reader, hold_s=hold_s, clock=clock)
        self.frame = frame
        self._buf = bytearray()
        # After a malformed frame, the bytes up to the next STX belong to it:
        # counted once as a bad frame, not again as noise.
        self._in_bad = False

    def reset(self) -> None:
        self._buf.clear()
        self._in_bad = False

    def _parse(self, data: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[str, bytes]] = []
        i = 0
        while True:
            j = buf.find(STX, i)
            end = len(buf) if j < 0 else j
            if end > i:
                # Stray bytes, or the rest of a malformed frame (counted with it).
                (self._drop if self._in_bad else self._noise)(end - i)
            if j < 0:
                i = len(buf)
                break
            self._in_bad = False
            result, length = self._frame_at(buf, j)
            if result == _NEED:
                i = j
                break
            if result == _OK:
                raw = bytes(buf[j:j + length])
                out.append((raw[1:11].decode("ascii").upper(), raw))
                i = j + length
            elif result == _BAD_CHECKSUM:
                self._bad_frame("bad_checksum", length)
                i = j + length
            else:
                # Resynchronise on the byte after this STX: a real frame may
                # start inside what we just rejected.
                self._bad_frame("bad_frame", 1)
                self._in_bad = True
                i = j + 1
        del buf[:i]
        return out

    def _frame_at(self, buf: bytearray, j: int) -> tuple[int, int]:
        avail = len(buf) - j
        rf125 = self.frame == "rf125"
        length = RF125_FRAME_LEN if rf125 else FRAME_LEN
        # Hex digits up to the checksum: ten in either form, two more in the 14-byte one.
        hex_end = 11 if rf125 else 13
        for k in range(1, min(avail, hex_end)):
            if buf[j + k] not in _HEX:
                return _BAD_FRAME, 0
        if avail < length:
            return _NEED, 0
        if buf[j + length - 1] != ETX:
            return _BAD_FRAME, 0
        expected = checksum(buf[j + 1:j + 11].decode("ascii"))
        got = buf[j + 11] if rf125 else int(buf[j + 11:j + 13].decode("ascii"), 16)
        return (_OK if got == expected else _BAD_CHECKSUM), length


def rdm6300_protocol(reader: str = "", *, hold_s: float = HOLD_S, clock: Clock = time.monotonic,
                     frame: str = "rdm6300", noise_limit: int = 50) -> StreamProtocol:
    """The protocol a :class:`~drivers.readers.base.ReaderThread` runs for an RDM6300."""
    parser = Rdm6300Parser(reader, hold_s=hold_s, clock=clock, frame=frame)
    return StreamProtocol(parser, driver="rdm6300", default_baud=DEFAULT_BAUD,
                          noise_limit=noise_limit)
