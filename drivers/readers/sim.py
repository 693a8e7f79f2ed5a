"""A simulated reader: real ptys that a person, the demo or a test writes real frames into.

:class:`SimReader` opens two pty pairs and relays between them:

* the **tap side**, ``port_path`` (``/dev/pts/N``): write frames here, by
  hand or from a script::

      printf '\\x0214008EC793CE\\x03' > /dev/pts/N

* the **device side**, ``device_path``: a symlink (in a private temp dir) to
  the slave of the second pty, which the driver opens with
  ``serial.serial_for_url`` and reads exactly as it reads a USB or UART
  reader. :meth:`SimReader.unplug` closes that pty (the driver sees the port
  fail, as with a pulled USB cable) and :meth:`SimReader.replug` makes a new one
  and re-points the symlink, so the whole reopen path runs for real.

Writing to a pty's slave sends the bytes to its master, not to other readers
of the slave; hence the relay (tap master → device master). :meth:`tap`
writes straight into the device side.

The frame format is chosen when the sim is made (``SIM_FORMATS``):
``rdm6300`` (14-byte EM4100 frames, 10-digit ids), ``rf125`` (the 13-byte
RF125-PS form), ``hex`` and ``dec`` (line readers). There is no ``pn532``
format: a PN532 only speaks when asked, so there is nothing to write into a
pty; its tests run the driver against an emulator of the chip.

In a unit's config, ``driver = "sim"`` and ``port`` is ``sim`` (rdm6300
frames) or ``sim://FORMAT[?link=PATH]``; ``link`` makes a symlink to the tap
side at a known place (``/run/xunfang/sim-main``) for the ``xunfang sim``
command and for people.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import select
import shutil
import tempfile
import threading
import time
import tty
from urllib.parse import parse_qs, urlsplit

from drivers.exc import ReaderConfigInvalid, ReaderPortLost

from . import line, rdm6300
from .base import HOLD_S, Clock, ReaderThread, StreamProtocol

log = logging.getLogger("xunfang.readers.sim")

SIM_FORMATS: tuple[str, ...] = ("rdm6300", "rf125", "hex", "dec")


def parse_sim_port(port: str) -> tuple[str, str | None]:
    """``sim`` or ``sim://FORMAT[?link=PATH]`` -> (format, link path or None)."""
    text = port.strip()
    if text == "sim":
        return "rdm6300", None
    parts = urlsplit(text)
    if parts.scheme != "sim":
        raise ReaderConfigInvalid(f"sim reader port {port!r}: expected 'sim' or "
                                  "'sim://FORMAT[?link=PATH]'")
    fmt = parts.netloc or parts.path.strip("/") or "rdm6300"
    if fmt not in SIM_FORMATS:
        raise ReaderConfigInvalid(f"sim reader port {port!r}: format {fmt!r} is not one of "
                                  f"{', '.join(SIM_FORMATS)}")
    query = parse_qs(parts.query)
    unknown = set(query) - {"link"}
    if unknown:
        raise ReaderConfigInvalid(f"sim reader port {port!r}: unknown option(s) "
                                  f"{', '.join(sorted(unknown))}")
    links = query.get("link")
    return fmt, (links[-1] if links else None)


def encode_tap(card_hex: str, fmt: str) -> bytes:
    """The bytes a reader of format ``fmt`` sends for one sighting of ``card_hex``."""
    if fmt == "rdm6300":
        return rdm6300.encode_frame(card_hex)
    if fmt == "rf125":
        return rdm6300.encode_rf125_frame(card_hex)
    if fmt == "hex":
        return line.encode_line(card_hex, "hex")
    if fmt == "dec":
        return line.encode_line(card_hex, "dec")
    raise ValueError(f"sim format must be one of {SIM_FORMATS}, got {fmt!r}")


def sim_protocol(fmt: str, reader: str = "", *, hold_s: float = HOLD_S,
                 clock: Clock = time.monotonic) -> StreamProtocol:
    """The protocol that reads a sim of format ``fmt``: the real driver of that format."""
    if fmt in ("rdm6300", "rf125"):
        proto = rdm6300.rdm6300_protocol(reader, hold_s=hold_s, clock=clock, frame=fmt)
    elif fmt in ("hex", "dec"):
        proto = line.line_protocol(reader, number_format=fmt, hold_s=hold_s, clock=clock)
    else:
        raise ValueError(f"sim format must be one of {SIM_FORMATS}, got {fmt!r}")
    proto.driver = "sim"
    return proto


def _symlink(target: str, link: str) -> None:
    """Point ``link`` at ``target`` atomically (a reader never sees it missing)."""
    tmp = f"{link}.tmp-{os.getpid()}-{threading.get_ident()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


class SimReader:
    """Two ptys and a relay; see the module doc.

        sim = SimReader("rdm6300")
        print(sim.port_path)       # write frames here by hand
        sim.tap("14008EC793")      # or from code
        sim.close()
    """

    def __init__(self, fmt: str = "rdm6300", *, link: str | None = None) -> None:
        if fmt not in SIM_FORMATS:
            raise ReaderConfigInvalid(f"sim format must be one of {SIM_FORMATS}, got {fmt!r}")
        self.format = fmt
        self.link = link
        self.relayed = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._closed = False
        self._dir = tempfile.mkdtemp(prefix="xunfang-sim-")
        self.device_path = os.path.join(self._dir, "device")
        self._dev_master: int | None = None
        self._dev_slave: int | None = None
        self._tap_master, self._tap_slave = pty.openpty()
        # Raw both ways, held by our own slave fd: bytes pass unchanged, and a
        # writer opening and closing the slave never hangs up the master.
        tty.setraw(self._tap_slave)
        self.port_path = os.ttyname(self._tap_slave)
        self._wake_r, self._wake_w = os.pipe()
        self.replug()
        self._relay = threading.Thread(target=self._run_relay, name=f"sim-relay-{fmt}",
                                       daemon=True)
        self._relay.start()
        if link:
            try:
                _symlink(self.port_path, link)
            except OSError as err:
                self.link = None
                self.close()
                raise ReaderConfigInvalid(f"sim reader: cannot make the link {link}: "
                                          f"{err}") from err

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("plugged" if self.plugged else "unplugged")
        return f"<SimReader {self.format} tap={self.port_path} {state}>"

    @property
    def plugged(self) -> bool:
        return self._dev_master is not None

    def frame(self, card_hex: str, fmt: str | None = None) -> bytes:
        """The bytes of one sighting of ``card_hex`` in ``fmt`` (default: the sim's format)."""
        return encode_tap(card_hex, fmt or self.format)

    def tap(self, card_hex: str, fmt: str | None = None) -> bytes:
        """Write one sighting of ``card_hex`` into the device side; returns the bytes."""
        data = self.frame(card_hex, fmt)
        self.write(data)
        return data

    def write(self, data: bytes) -> None:
        """Write raw bytes into the device side (frames, noise, half frames)."""
        with self._lock:
            if self._closed:
                raise ReaderPortLost(f"sim reader {self.port_path} is closed")
            if self._dev_master is None:
                raise ReaderPortLost(f"sim reader {self.port_path} is unplugged")
            self._write_all(self._dev_master, data)

    def unplug(self) -> None:
        """Close the device-side pty: the driver's port fails as on a pulled cable."""
        with self._lock:
            for fd in (self._dev_master, self._dev_slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._dev_master = self._dev_slave = None

    def replug(self) -> None:
        """Make a new device-side pty and point ``device_path`` at it."""
        with self._lock:
            if self._closed:
                raise ReaderPortLost("sim reader is closed")
            if self._dev_master is not None:
                return
            master, slave = pty.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._dev_master, self._dev_slave = master, slave
            _symlink(os.ttyname(slave), self.device_path)

    def close(self) -> None:
        """Close everything; safe twice."""
        if self._closed:
            return
        self.unplug()
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._relay is not threading.current_thread():
            self._relay.join(2.0)
        for fd in (self._tap_master, self._tap_slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self.port_path:
                    os.unlink(self.link)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SimReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                # Nobody is reading the device side (driver offline): drop.
                self.dropped += len(view)
                log.warning("sim reader %s: device side full, %d bytes dropped",
                            self.port_path, len(view))
                return
            view = view[n:]

    def _run_relay(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._tap_master, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in ready or self._closed:
                return
            try:
                data = os.read(self._tap_master, 4096)
            except OSError:
                return
            with self._lock:
                if self._dev_master is None:
                    self.dropped += len(data)
                    continue
                self._write_all(self._dev_master, data)
                self.relayed += len(data)


class SimReaderThread(ReaderThread):
    """A :class:`ReaderThread` on its own :class:`SimReader` (``.sim``), closed with it."""

    def __init__(self, name: str, sim: SimReader, *, hold_s: float = HOLD_S,
                 clock: Clock = time.monotonic, **options: object) -> None:
        protocol = sim_protocol(sim.format, name, hold_s=hold_s, clock=clock)
        super().__init__(name, sim.device_path, protocol, **options)  # type: ignore[arg-type]
        self.sim = sim

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.sim.close()
