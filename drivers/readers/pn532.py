"""NXP PN532 over HSU (UART, 115200 8N1): frame codec and host-side driver.

Frames (NXP UM0701-02 §6.2, ``wire-formats.md``)::

    normal    00 | 00 FF | LEN | LCS | TFI | PD0..PDn | DCS | 00
    extended  00 | 00 FF | FF FF | LENM LENL | LCS | TFI | PD0..PDn | DCS | 00
    ACK       00 00 FF 00 FF 00
    NACK      00 00 FF FF 00 00
    error     00 00 FF 01 FF 7F 81 00   (application-level error)

LEN counts TFI and data; LEN + LCS = 0 and TFI + data + DCS = 0 (mod 256);
TFI is D4 host→PN532 and D5 PN532→host, and the response code is the
command + 1. The chip answers every valid command with an ACK, then the
response. :class:`FrameDecoder` is the pure, incremental half: bytes in,
:data:`Event` values out, never raising.

:class:`Pn532Protocol` is the host driver a
:class:`~drivers.readers.base.ReaderThread` runs. At open: wake-up
(``55 55`` and 14 zeros), SAMConfiguration (normal mode),
GetFirmwareVersion (reported in the online event and health),
RFConfiguration item 5 MaxRetries (so that InListPassiveTarget returns when
no card is there: with the default, infinite retries it waits for a card
forever). Then it polls InListPassiveTarget (one target, 106 kbps type A)
for ISO 14443A UIDs of 4, 7 or 10 bytes, and collapses the repeats of a card
held on the reader. A response with a bad checksum is asked for again with a
NACK; a reader that stops answering (``silent_limit`` commands in a row
without an answer) is re-initialised, and if that fails the thread reports
it offline and retries (power-cycling it when it has a relay).

Wiring (docs/readers.md): set the board's interface switches to HSU; its TXD
to the Pi's RXD (GPIO15, pin 10), RXD to TXD (GPIO14, pin 8), VCC to 3.3 V,
GND to GND; ``port = "/dev/serial0"``.

    reader = ReaderThread("door", "/dev/serial0", Pn532Protocol("door"), on_card=print)
    reader.start()
    print(reader.health()["firmware"])
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from drivers.exc import ReaderNotAnswering

from .base import HOLD_S, CardRead, Clock, Counters, ReaderProtocol, RepeatFilter, SerialPort

log = logging.getLogger("xunfang.readers.pn532")

DEFAULT_BAUD = 115200
HOST_TO_PN532 = 0xD4
PN532_TO_HOST = 0xD5
ERROR_CODE = 0x7F

ACK_FRAME = bytes.fromhex("0000FF00FF00")
NACK_FRAME = bytes.fromhex("0000FFFF0000")
ERROR_FRAME = bytes.fromhex("0000FF01FF7F8100")
# HSU wake-up from power-down: 0x55 0x55, then zeros (libnfc sends 14).
WAKEUP = b"\x55\x55" + b"\x00" * 14

# LEN of the largest frame we accept (TFI + data). The PN532's own buffer holds
# 265 bytes (UM0701 §6.2.1.2), so nothing legitimate is longer.
MAX_FRAME_LEN = 265

CMD_GET_FIRMWARE_VERSION = 0x02
CMD_SAM_CONFIGURATION = 0x14
CMD_RF_CONFIGURATION = 0x32
CMD_IN_LIST_PASSIVE_TARGET = 0x4A

COMMAND_NAMES = {
    CMD_GET_FIRMWARE_VERSION: "GetFirmwareVersion",
    CMD_SAM_CONFIGURATION: "SAMConfiguration",
    CMD_RF_CONFIGURATION: "RFConfiguration",
    CMD_IN_LIST_PASSIVE_TARGET: "InListPassiveTarget",
}

UID_LENGTHS = (4, 7, 10)


# -- frame codec --------------------------------------------------------------------


def encode_frame(data: bytes, tfi: int = HOST_TO_PN532) -> bytes:
    """A frame carrying ``data`` (command code and parameters) after ``tfi``.

    Normal when TFI + data fit in LEN (≤ 255 bytes), extended otherwise.
    """
    body = bytes([tfi]) + bytes(data)
    n = len(body)
    if n > MAX_FRAME_LEN:
        raise ValueError(f"PN532 frame of {n} bytes is over the chip's {MAX_FRAME_LEN}")
    dcs = -sum(body) & 0xFF
    if n <= 0xFF:
        header = bytes([0x00, 0x00, 0xFF, n, -n & 0xFF])
    else:
        hi, lo = n >> 8, n & 0xFF
        header = bytes([0x00, 0x00, 0xFF, 0xFF, 0xFF, hi, lo, -(hi + lo) & 0xFF])
    return header + body + bytes([dcs, 0x00])


def command_frame(code: int, params: bytes = b"") -> bytes:
    """The host frame for a PN532 command."""
    return encode_frame(bytes([code]) + bytes(params), HOST_TO_PN532)


@dataclass(frozen=True, slots=True)
class Ack:
    """The chip took the command (or, from the host, abort the current one)."""


@dataclass(frozen=True, slots=True)
class Nack:
    """Send the last frame again."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The application-level error frame (syntax error in the command)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A valid information frame: ``tfi`` and the data after it (code first)."""

    tfi: int
    data: bytes
    extended: bool = False

    @property
    def code(self) -> int | None:
        return self.data[0] if self.data else None


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Something that started like a frame but failed a check (``reason``)."""

    reason: str


Event = Ack | Nack | ErrorFrame | Frame | BadFrame


class FrameDecoder:
    """Incremental PN532 frame decoder: ``feed(bytes) -> [Event]``; never raises.

    Scans for the start code ``00 FF`` (the preamble and postamble are
    optional on input), checks LCS and DCS, resynchronises two bytes after a
    start code whose frame fails a check (a real frame may begin inside it).
    Error kinds counted in ``counters``: ``bad_lcs``, ``bad_dcs``,
    ``too_long``, ``empty_frame``, ``noise`` (bytes outside frames that are
    not the 00 of a preamble/postamble or the 55 of a wake-up, and not the
    rest of a bad frame).
    """

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self._buf = bytearray()
        # After a bad frame, the bytes up to the next start code belong to it.
        self._in_bad = False

    def reset(self) -> None:
        self._buf.clear()
        self._in_bad = False

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf
        buf += data
        out: list[Event] = []
        while True:
            i = buf.find(b"\x00\xff")
            if i < 0:
                # Keep a trailing 00: it may be the first half of a start code.
                keep = 1 if buf.endswith(b"\x00") else 0
                self._noise(buf[:len(buf) - keep])
                del buf[:len(buf) - keep]
                break
            self._noise(buf[:i])
            del buf[:i]
            event, used = self._frame(buf)
            if event is None:
                break  # need more bytes
            self._in_bad = False
            out.append(event)
            if isinstance(event, BadFrame):
                self.counters.error(event.reason)
                self._in_bad = True
            del buf[:used]
        return out

    def _noise(self, chunk: bytes | bytearray) -> None:
        if self._in_bad:
            return
        n = sum(1 for b in chunk if b not in (0x00, 0x55))
        if n:
            self.counters.error("noise", n)

    @staticmethod
    def _frame(buf: bytearray) -> tuple[Event | None, int]:
        """Decode at a start code (buf[0:2] == 00 FF): (event, bytes used) or (None, 0)."""
        if len(buf) < 4:
            return None, 0
        a, b = buf[2], buf[3]
        if a == 0x00 and b == 0xFF:
            return Ack(), 4
        if a == 0xFF and b == 0x00:
            return Nack(), 4
        extended = a == 0xFF and b == 0xFF
        if extended:
            if len(buf) < 7:
                return None, 0
            hi, lo, lcs = buf[4], buf[5], buf[6]
            if (hi + lo + lcs) & 0xFF:
                return BadFrame("bad_lcs"), 2
            length, head = hi << 8 | lo, 7
        else:
            if (a + b) & 0xFF:
                return BadFrame("bad_lcs"), 2
            length, head = a, 4
        if length == 0:
            return BadFrame("empty_frame"), 2
        if length > MAX_FRAME_LEN:
            return BadFrame("too_long"), 2
        if len(buf) < head + length + 1:
            return None, 0
        body = bytes(buf[head:head + length])
        if (sum(body) + buf[head + length]) & 0xFF:
            return BadFrame("bad_dcs"), 2
        used = head + length + 1
        if length == 1 and body[0] == ERROR_CODE:
            return ErrorFrame(), used
        return Frame(body[0], body[1:], extended), used


# -- responses ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    """GetFirmwareVersion: IC (0x32 for a PN532), version, revision, supported protocols."""

    ic: int
    ver: int
    rev: int
    support: int

    def __str__(self) -> str:
        return f"PN5{self.ic:02X} firmware {self.ver}.{self.rev}"

    def as_dict(self) -> dict[str, object]:
        return {"ic": f"0x{self.ic:02X}", "version": f"{self.ver}.{self.rev}",
                "support": f"0x{self.support:02X}"}


def parse_firmware_version(data: bytes) -> FirmwareVersion:
    """The four bytes after the response code 0x03. ValueError if it is not that."""
    if len(data) != 4:
        raise ValueError(f"GetFirmwareVersion answer of {len(data)} bytes, expected 4: "
                         f"{data.hex(' ')}")
    return FirmwareVersion(*data)


@dataclass(frozen=True, slots=True)
class Target:
    """One ISO 14443A target from InListPassiveTarget (106 kbps type A)."""

    tg: int
    sens_res: bytes
    sel_res: int
    uid: bytes

    @property
    def card_hex(self) -> str:
        return self.uid.hex().upper()


def parse_passive_targets(data: bytes) -> list[Target]:
    """The data after response code 0x4B: NbTg, then (for type A) Tg, SENS_RES(2),
    SEL_RES, NFCIDLength, NFCID1 (and an ATS we do not need). Only the first
    target is parsed (we ask for one). ValueError if malformed or if the UID is
    not 4, 7 or 10 bytes."""
    if not data:
        raise ValueError("InListPassiveTarget answer without NbTg")
    count = data[0]
    if count == 0:
        return []
    if count > 2:
        raise ValueError(f"InListPassiveTarget reports {count} targets (at most 2)")
    if len(data) < 6:
        raise ValueError(f"InListPassiveTarget target data too short: {data.hex(' ')}")
    tg, sens_res, sel_res, uid_len = data[1], bytes(data[2:4]), data[4], data[5]
    if uid_len not in UID_LENGTHS:
        raise ValueError(f"UID of {uid_len} bytes (ISO 14443A UIDs are 4, 7 or 10)")
    uid = bytes(data[6:6 + uid_len])
    if len(uid) != uid_len:
        raise ValueError(f"UID cut short: {len(uid)} of {uid_len} bytes")
    return [Target(tg, sens_res, sel_res, uid)]


# -- host driver --------------------------------------------------------------------


class _Silent(Exception):
    """No ACK or no answer in time."""


class _Refused(Exception):
    """The chip answered with an error frame."""


class _Stopped(Exception):
    """The thread is stopping."""


class Pn532Protocol(ReaderProtocol):
    """The PN532 host driver (see the module doc); run it in a ``ReaderThread``.

    Timeouts are wall time (``time.monotonic``); ``clock`` only stamps reads
    and drives repeat collapse, so tests may inject a manual one.

    Error kinds, besides the decoder's: ``timeout`` (no ACK/answer),
    ``error_frame``, ``nack`` (the chip asked for a command again),
    ``unexpected`` (a valid frame that is not the awaited answer),
    ``bad_target`` (a target answer we cannot use).
    """

    driver = "pn532"
    default_baud = DEFAULT_BAUD
    read_timeout = 0.02

    def __init__(self, reader: str = "", *, max_retries: int = 0x05,
                 poll_interval_s: float = 0.15, ack_timeout_s: float = 0.1,
                 response_timeout_s: float = 1.0, silent_limit: int = 3, nack_retries: int = 2,
                 hold_s: float = HOLD_S, clock: Clock = time.monotonic) -> None:
        super().__init__(reader)
        if not 0 <= max_retries <= 0xFE:
            raise ValueError(f"max_retries must be 0..254 (0xFF would wait for a card forever), "
                             f"got {max_retries}")
        self.max_retries = max_retries
        self.poll_interval_s = poll_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.response_timeout_s = response_timeout_s
        self.silent_limit = silent_limit
        self.nack_retries = nack_retries
        self.clock = clock
        self.repeats = RepeatFilter(hold_s)
        self._counters = Counters()
        self.decoder = FrameDecoder(self._counters)
        self._pending: collections.deque[Event] = collections.deque()
        self.firmware: FirmwareVersion | None = None
        self.inits = 0
        self.reinits = 0
        self._silent_in_row = 0

    @property
    def counters(self) -> Counters:
        return self._counters

    def health(self) -> dict[str, object]:
        return {"firmware": str(self.firmware) if self.firmware else None,
                "firmware_info": self.firmware.as_dict() if self.firmware else None,
                "inits": self.inits, "reinits": self.reinits, "max_retries": self.max_retries}

    # -- ReaderProtocol --

    def start(self, port: SerialPort, stop: threading.Event) -> str:
        """Wake the chip and configure it; the detail names its firmware."""
        self.inits += 1
        self.firmware = None
        try:
            self._reset(port)
            port.write(WAKEUP)
            self._command(port, stop, CMD_SAM_CONFIGURATION, b"\x01")
            answer = self._command(port, stop, CMD_GET_FIRMWARE_VERSION)
            try:
                fw = parse_firmware_version(answer)
            except ValueError as err:
                raise ReaderNotAnswering(str(err)) from None
            # Item 5: MxRtyATR, MxRtyPSL, MxRtyPassiveActivation.
            self._command(port, stop, CMD_RF_CONFIGURATION,
                          bytes([0x05, 0xFF, 0x01, self.max_retries]))
        except _Stopped:
            return "stopping"
        except _Silent as err:
            raise ReaderNotAnswering(str(err)) from None
        except _Refused as err:
            raise ReaderNotAnswering(f"initialisation refused: {err}") from None
        self.firmware = fw
        self._silent_in_row = 0
        if fw.ic != 0x32:
            log.warning("reader %s: IC 0x%02X is not a PN532; carrying on", self.reader, fw.ic)
        return f"{fw} (IC 0x{fw.ic:02X}, support 0x{fw.support:02X})"

    def poll(self, port: SerialPort, stop: threading.Event) -> list[CardRead]:
        if stop.wait(self.poll_interval_s):
            return []
        try:
            answer = self._command(port, stop, CMD_IN_LIST_PASSIVE_TARGET, b"\x01\x00")
        except _Stopped:
            return []
        except _Silent as err:
            self._silent_in_row += 1
            if self._silent_in_row >= self.silent_limit:
                self.reinits += 1
                log.warning("reader %s: %s (%d in a row): re-initialising", self.reader, err,
                            self._silent_in_row)
                self.start(port, stop)  # ReaderNotAnswering if it stays mute
            return []
        except _Refused:
            return []
        self._silent_in_row = 0
        try:
            targets = parse_passive_targets(answer)
        except ValueError as err:
            self._counters.error("bad_target")
            log.debug("reader %s: %s", self.reader, err)
            return []
        now = self.clock()
        out: list[CardRead] = []
        for target in targets:
            self._counters.frames += 1
            if self.repeats.admit(target.card_hex, now):
                self._counters.reads += 1
                out.append(CardRead(self.reader, target.card_hex, bytes(answer), now))
            else:
                self._counters.repeats += 1
        return out

    # -- commands --

    def _reset(self, port: SerialPort) -> None:
        self.decoder.reset()
        self._pending.clear()
        port.reset_input_buffer()

    def _command(self, port: SerialPort, stop: threading.Event, code: int,
                 params: bytes = b"") -> bytes:
        """Send a command, await ACK and answer; the answer's data after its code."""
        name = COMMAND_NAMES.get(code, f"command 0x{code:02X}")
        frame = command_frame(code, params)
        self._reset(port)
        port.write(frame)
        acked = False
        asks = 0
        deadline = time.monotonic() + self.ack_timeout_s
        while True:
            event = self._next_event(port, stop, deadline)
            if event is None:
                if stop.is_set():
                    raise _Stopped
                self._counters.error("timeout")
                # An ACK from the host aborts whatever the chip may still be doing.
                port.write(ACK_FRAME)
                raise _Silent(f"no {'answer' if acked else 'ACK'} to {name} within "
                              f"{self.response_timeout_s if acked else self.ack_timeout_s:g} s")
            if isinstance(event, Ack):
                if not acked:
                    acked = True
                    deadline = time.monotonic() + self.response_timeout_s
            elif isinstance(event, Nack):
                self._counters.error("nack")
                if asks >= self.nack_retries:
                    raise _Silent(f"{name} NACKed {asks + 1} times")
                asks += 1
                port.write(frame)
                deadline = time.monotonic() + self.ack_timeout_s
                acked = False
            elif isinstance(event, ErrorFrame):
                self._counters.error("error_frame")
                raise _Refused(f"error frame in answer to {name}")
            elif isinstance(event, BadFrame):
                # Counted by the decoder. A corrupt answer after our ACK: ask again.
                if acked and asks < self.nack_retries:
                    asks += 1
                    port.write(NACK_FRAME)
                    deadline = time.monotonic() + self.response_timeout_s
            elif event.tfi == PN532_TO_HOST and event.code == (code + 1) & 0xFF:
                return event.data[1:]
            else:
                self._counters.error("unexpected")

    def _next_event(self, port: SerialPort, stop: threading.Event,
                    deadline: float) -> Event | None:
        while not self._pending:
            if stop.is_set() or time.monotonic() >= deadline:
                return None
            data = port.read(max(1, port.in_waiting))
            if data:
                self._pending.extend(self.decoder.feed(data))
        return self._pending.popleft()


def pn532_protocol(reader: str = "", **options: Any) -> Pn532Protocol:
    """The protocol a :class:`~drivers.readers.base.ReaderThread` runs for a PN532."""
    return Pn532Protocol(reader, **options)
