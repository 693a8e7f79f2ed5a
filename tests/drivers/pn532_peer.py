"""A PN532 on the far side of a pty, speaking HSU frames as NXP UM0701-02 §6.2 describes.

A test peer, not a stub of the driver: it is written from the wire-format
facts of NXP UM0701-02 (as docs/readers.md lists them) with its own frame code, and the
driver under test talks to it through a real pty opened by pyserial. Like the
chip it

* sleeps until woken by ``0x55`` on HSU (after power-up and a power cycle),
  ignoring frames until then;
* answers every valid command frame (TFI D4, good LCS and DCS) with an ACK,
  then the response (TFI D5, code = command + 1); ignores frames with bad
  checksums; treats a host ACK as "abort" and a host NACK as "send your last
  response again"; answers an unknown command with the error frame;
* with the default MaxRetries (0xFF) lets InListPassiveTarget wait for a
  card forever: a host that did not send RFConfiguration item 5 gets no
  answer while no card is there.

Faults on demand: ``silent`` (answers nothing), ``drop_commands`` (the next
n commands get no ACK and no answer), ``corrupt_responses`` (the
next n responses go out with a bad DCS), ``error_responses`` (ACK, then the
error frame), ``nack_commands`` (NACK instead of ACK), ``send_raw`` (noise),
``extended_responses`` (answers in extended frames), ``close`` (unplug).
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import threading
import tty
from collections.abc import Callable

ACK = bytes([0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00])
NACK = bytes([0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00])
ERROR = bytes([0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00])

# Typical SENS_RES/SEL_RES of cards with 4-, 7- and 10-byte UIDs.
_CARD_KIND = {4: (b"\x00\x04", 0x08), 7: (b"\x00\x44", 0x00), 10: (b"\x00\x84", 0x00)}


def pn532_frame(payload: bytes, *, extended: bool = False, tfi: int = 0xD5) -> bytes:
    """A frame as the chip sends it (UM0701 §6.2.1.1 and §6.2.1.2)."""
    body = bytes([tfi]) + payload
    dcs = (0x100 - sum(body) % 0x100) % 0x100
    if extended:
        n = len(body)
        lenm, lenl = n // 256, n % 256
        head = bytes([0x00, 0x00, 0xFF, 0xFF, 0xFF, lenm, lenl,
                      (0x100 - (lenm + lenl) % 0x100) % 0x100])
    else:
        head = bytes([0x00, 0x00, 0xFF, len(body), (0x100 - len(body)) % 0x100])
    return head + body + bytes([dcs, 0x00])


class Pn532Peer:
    """The emulated chip. ``path`` is the pty the driver opens."""

    def __init__(self, *, firmware: bytes = bytes([0x32, 0x01, 0x06, 0x07]),
                 asleep: bool = True) -> None:
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self.firmware = firmware
        self.asleep = asleep
        self.max_retries_passive = 0xFF
        self.card: tuple[bytes, int, bytes] | None = None  # sens_res, sel_res, uid
        self.silent = False
        self.corrupt_responses = 0
        self.error_responses = 0
        self.nack_commands = 0
        self.drop_commands = 0
        self.extended_responses = False
        self.received = bytearray()
        self.commands: list[tuple[int, bytes]] = []
        self.host_acks = 0
        self.host_nacks = 0
        self.power_cycles = 0
        self._last_response: bytes | None = None
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pn532-peer", daemon=True)
        self._thread.start()

    # -- what a test does --

    def present(self, uid: bytes, sens_res: bytes | None = None,
                sel_res: int | None = None) -> None:
        default_sens, default_sel = _CARD_KIND.get(len(uid), (b"\x00\x04", 0x08))
        with self._cond:
            self.card = (sens_res or default_sens,
                         default_sel if sel_res is None else sel_res, bytes(uid))

    def remove(self) -> None:
        with self._cond:
            self.card = None

    def power_cycle(self) -> None:
        """What a relay does: the chip restarts asleep, with its default settings."""
        with self._cond:
            self.asleep = True
            self.silent = False
            self.max_retries_passive = 0xFF
            self.power_cycles += 1

    def send_raw(self, data: bytes) -> None:
        os.write(self.master, data)

    def count(self, code: int) -> int:
        with self._cond:
            return sum(1 for c, _ in self.commands if c == code)

    def wait_commands(self, predicate: Callable[[list[tuple[int, bytes]]], bool],
                      timeout: float = 5.0, what: str = "commands") -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.commands), timeout)
        assert ok, f"timed out waiting for {what}; got {[hex(c) for c, _ in self.commands]}"

    def wait_count(self, code: int, n: int, timeout: float = 5.0) -> None:
        self.wait_commands(lambda cmds: sum(1 for c, _ in cmds if c == code) >= n, timeout,
                           f"{n} x command 0x{code:02X}")

    def close(self) -> None:
        """Unplug: the master closes, the driver's port fails."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(2.0)
        for fd in (self.master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the chip --

    def _run(self) -> None:
        while not self._closed:
            try:
                ready, _, _ = select.select([self.master, self._wake_r], [], [], 0.5)
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            with self._cond:
                self.received += data
                self._take(data)
                self._cond.notify_all()

    def _take(self, data: bytes) -> None:
        for b in data:
            if self.asleep and b == 0x55:
                self.asleep = False
        if self.asleep:
            return  # a sleeping chip hears nothing but the wake-up
        buf = self._buf
        buf += data
        while True:
            start = buf.find(b"\x00\xff")
            if start < 0:
                del buf[:max(0, len(buf) - 1)]
                return
            del buf[:start]
            if len(buf) < 4:
                return
            length, lcs = buf[2], buf[3]
            if (length, lcs) == (0x00, 0xFF):
                self.host_acks += 1  # abort: nothing in progress here
                del buf[:4]
                continue
            if (length, lcs) == (0xFF, 0x00):
                self.host_nacks += 1
                del buf[:4]
                if self._last_response is not None and not self.silent:
                    self._write(self._last_response)
                continue
            if (length + lcs) % 0x100 != 0 or length == 0:
                del buf[:2]
                continue
            if len(buf) < 4 + length + 1:
                return
            body = bytes(buf[4:4 + length])
            dcs = buf[4 + length]
            del buf[:4 + length + 1]
            if (sum(body) + dcs) % 0x100 != 0 or body[0] != 0xD4 or len(body) < 2:
                continue  # the chip drops what it cannot verify
            self._command(body[1], body[2:])

    def _command(self, code: int, params: bytes) -> None:
        self.commands.append((code, params))
        if self.silent:
            return
        if self.drop_commands:
            self.drop_commands -= 1  # lost on the line: no ACK, no answer
            return
        if self.nack_commands:
            self.nack_commands -= 1
            self._write(NACK)
            return
        self._write(ACK)
        if self.error_responses:
            self.error_responses -= 1
            self._write(ERROR)
            return
        payload = self._answer(code, params)
        if payload is None:
            return
        if payload == b"error":
            self._write(ERROR)
            return
        frame = pn532_frame(payload, extended=self.extended_responses)
        self._last_response = frame
        if self.corrupt_responses:
            self.corrupt_responses -= 1
            frame = frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]
        self._write(frame)

    def _answer(self, code: int, params: bytes) -> bytes | None:
        if code == 0x14:  # SAMConfiguration
            return b"\x15"
        if code == 0x02:  # GetFirmwareVersion
            return b"\x03" + self.firmware
        if code == 0x32:  # RFConfiguration
            if params[:1] == b"\x05" and len(params) == 4:
                self.max_retries_passive = params[3]
            return b"\x33"
        if code == 0x4A:  # InListPassiveTarget
            if params[:2] != b"\x01\x00":
                return b"error"
            if self.card is None:
                if self.max_retries_passive == 0xFF:
                    return None  # waits for a card forever
                return b"\x4b\x00"
            sens_res, sel_res, uid = self.card
            return b"\x4b\x01\x01" + sens_res + bytes([sel_res, len(uid)]) + uid
        return b"error"

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, data)

