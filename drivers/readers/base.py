"""What every reader driver shares: the card read, counters, repeat collapse, the thread.

A driver has two halves, in the manner of ``serial.threaded``:

* a **protocol** (:class:`ReaderProtocol`) that turns the bytes of an open
  port into :class:`CardRead` values. Passive readers (RDM6300, line readers)
  wrap a pure, incremental parser (:class:`StreamParser`) that never raises on
  any input; the PN532 protocol also writes commands. Protocols only use the
  port they are handed.
* :class:`ReaderThread`, which owns the port: opens it with
  ``serial.serial_for_url``, feeds the protocol, delivers reads to
  ``on_card``, reopens a port that went away with capped backoff, reports
  ``online``/``offline`` through ``on_state``, and power-cycles a hung reader
  through an optional relay. Nothing a reader sends, and no exception a
  callback raises, stops the thread (docs/architecture.md, invariant 7).

Callbacks run on the reader's thread::

    on_card(read: CardRead) -> None
    on_state(reader: str, state: "online" | "offline", detail: str) -> None
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import serial

try:
    from termios import error as _TermiosError
except ImportError:  # pragma: no cover - not POSIX
    class _TermiosError(Exception):  # type: ignore[no-redef]
        pass

from drivers.exc import ReaderHung, ReaderNotAnswering, ReaderPortLost

if TYPE_CHECKING:
    from gpiozero import OutputDevice

log = logging.getLogger("xunfang.readers")

# A tag seen again within this long after its last sighting is the same tap.
# RDM6300s repeat a held tag every ~100 ms; Tasmota and esp-rfid block 2–3 s.
HOLD_S = 1.5

# Bad frames further apart than this do not add up to "the reader sends only noise".
NOISE_GAP_S = 5.0

# A reader without a relay that sends only noise is logged at most this often: a
# flood of noise must not fill the SD card with log lines (health has the counts).
NOISE_LOG_EVERY_S = 60.0

# What a port that went away raises: pyserial wraps most OS errors, but not
# all (tcflush on a hung-up tty raises termios.error, which is no OSError).
PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, _TermiosError)

ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class CardRead:
    """One tap: ``card_hex`` is the canonical upper-case hex id (docs/mqtt-api.md).

    ``raw`` is the bytes the id came from (the frame, line or target data),
    ``at_mono`` the ``time.monotonic()`` (or injected clock) when it completed.
    """

    reader: str
    card_hex: str
    raw: bytes
    at_mono: float


OnCard = Callable[[CardRead], None]
OnState = Callable[[str, str, str], None]
Clock = Callable[[], float]


class Counters:
    """Frames, deliveries and errors by kind, for health. Plain ints: read them any time."""

    def __init__(self) -> None:
        self.frames = 0    # well-formed frames (or lines, or target answers)
        self.reads = 0     # card reads delivered (after repeat collapse)
        self.repeats = 0   # frames of a held tag that were collapsed
        self.errors: dict[str, int] = {}
        # Passive readers: frames or lines dropped (any error kind but stray
        # bytes), and every byte dropped, stray or in a dropped frame.
        self.bad_frames = 0
        self.noise_bytes = 0

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def snapshot(self) -> dict[str, Any]:
        return {"frames": self.frames, "reads": self.reads, "repeats": self.repeats,
                "errors": dict(self.errors)}


class RepeatFilter:
    """Collapses the repeats of a held tag into one read.

    A card is a repeat when it is the last card seen and was last seen less
    than ``hold_s`` ago; each repeat extends the hold, so a tag held for a
    minute is one read, and a tag lifted and presented again after ``hold_s``
    is a new one. ``hold_s = 0`` passes every frame.
    """

    def __init__(self, hold_s: float = HOLD_S) -> None:
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s}")
        self.hold_s = hold_s
        self._last: str | None = None
        self._last_seen = 0.0

    def admit(self, card_hex: str, now: float) -> bool:
        """True for a new read, False for a repeat (which extends the hold)."""
        if (card_hex == self._last and self.hold_s > 0
                and abs(now - self._last_seen) < self.hold_s):
            self._last_seen = now
            return False
        self._last, self._last_seen = card_hex, now
        return True

    def reset(self) -> None:
        self._last = None


class StreamParser(ABC):
    """An incremental parser for a reader that only talks: bytes in, reads out.

    ``feed`` takes any chunk (a frame split byte by byte, several frames at
    once, noise), never raises, and keeps bounded state. ``now`` defaults to
    the parser's clock; it stamps reads and drives repeat collapse.
    """

    def __init__(self, reader: str = "", *, hold_s: float = HOLD_S,
                 clock: Clock = time.monotonic) -> None:
        self.reader = reader
        self.clock = clock
        self.repeats = RepeatFilter(hold_s)
        self.counters = Counters()
        # Bad frames since the last good one, none more than NOISE_GAP_S apart:
        # a reader that sends only noise. A stray byte now and then never adds up.
        self.bad_since_good = 0
        self._last_bad = float("-inf")
        self._now = 0.0

    @abstractmethod
    def _parse(self, data: bytes) -> list[tuple[str, bytes]]:
        """Frames completed by ``data``, as ``(card_hex, raw)``; count errors."""

    def feed(self, data: bytes, now: float | None = None) -> list[CardRead]:
        if not data:
            return []
        t = self._now = self.clock() if now is None else now
        out: list[CardRead] = []
        for card, raw in self._parse(bytes(data)):
            self.counters.frames += 1
            self.bad_since_good = 0
            if self.repeats.admit(card, t):
                self.counters.reads += 1
                out.append(CardRead(self.reader, card, raw, t))
            else:
                self.counters.repeats += 1
        return out

    def _bad(self, kind: str, n: int = 1) -> None:
        self.counters.error(kind, n)
        if self._now - self._last_bad > NOISE_GAP_S:
            self.bad_since_good = 0
        self._last_bad = self._now
        self.bad_since_good += 1

    def _bad_frame(self, kind: str, nbytes: int) -> None:
        """A frame or line of ``nbytes`` bytes dropped as ``kind``."""
        self.counters.bad_frames += 1
        self.counters.noise_bytes += nbytes
        self._bad(kind)

    def _noise(self, nbytes: int) -> None:
        """Stray bytes outside any frame (error kind ``noise``, counted in bytes)."""
        self.counters.noise_bytes += nbytes
        self._bad("noise", nbytes)

    def _drop(self, nbytes: int) -> None:
        """More bytes of a frame or line already counted as bad."""
        self.counters.noise_bytes += nbytes

    def reset(self) -> None:
        """Forget a partial frame (a port was reopened). Counters and the hold stay."""
        return None


class SerialPort(Protocol):
    """What drivers use of a pyserial port (``serial.SerialBase``)."""

    is_open: bool

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    @property
    def in_waiting(self) -> int: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


class ReaderProtocol(ABC):
    """A driver's logic on an open port. One instance lives as long as its reader.

    ``start`` prepares a freshly opened port and returns the detail of the
    ``online`` event (raise :class:`ReaderNotAnswering` if the reader is mute);
    ``poll`` blocks for at most about ``read_timeout`` (or until ``stop`` is
    set) and returns the reads that completed. Serial errors propagate: the
    thread owns reopening.
    """

    driver: str = "?"
    default_baud: int = 9600
    # The port's read timeout: how long one poll may block.
    read_timeout: float = 0.5

    def __init__(self, reader: str = "") -> None:
        self.reader = reader

    @property
    @abstractmethod
    def counters(self) -> Counters: ...

    @abstractmethod
    def start(self, port: SerialPort, stop: threading.Event) -> str: ...

    @abstractmethod
    def poll(self, port: SerialPort, stop: threading.Event) -> list[CardRead]: ...

    def hung(self) -> str | None:
        """Why the reader looks hung (worth a power cycle), or None."""
        return None

    def clear_hung(self) -> None:
        """The thread acted on :meth:`hung`: start counting afresh."""
        return None

    def health(self) -> dict[str, Any]:
        return {}


class StreamProtocol(ReaderProtocol):
    """A passive reader: read what arrives and feed it to a :class:`StreamParser`."""

    def __init__(self, parser: StreamParser, *, driver: str, default_baud: int = 9600,
                 noise_limit: int = 50) -> None:
        super().__init__(parser.reader)
        self.parser = parser
        self.driver = driver
        self.default_baud = default_baud
        self.noise_limit = noise_limit

    @property
    def counters(self) -> Counters:
        return self.parser.counters

    def start(self, port: SerialPort, stop: threading.Event) -> str:
        self.parser.reset()
        return "port open, listening"

    def poll(self, port: SerialPort, stop: threading.Event) -> list[CardRead]:
        # read(n) returns as soon as n bytes are there: 1 when idle (block up
        # to the timeout), everything waiting when busy.
        data = port.read(max(1, port.in_waiting))
        return self.parser.feed(data) if data else []

    def hung(self) -> str | None:
        n = self.parser.bad_since_good
        if self.noise_limit and n >= self.noise_limit:
            return f"only noise: {n} bad frames in a row"
        return None

    def clear_hung(self) -> None:
        self.parser.bad_since_good = 0

    def health(self) -> dict[str, Any]:
        return {"bad_frames": self.parser.counters.bad_frames,
                "noise_bytes": self.parser.counters.noise_bytes}


class ReaderThread:
    """Runs one reader: port, protocol, callbacks, reopen, power cycle.

    A reader without a relay that sends only noise is logged at most once every
    ``noise_log_every_s`` (with what came since the last line); health counts
    every episode (``errors.hung``) and the lines held back.

    ``port`` is a pyserial URL (``/dev/serial0``, ``/dev/serial/by-id/…``,
    ``socket://…``, ``rfc2217://…``, ``spy://…``, ``loop://``) or an already
    made pyserial port object (opened here if closed, reopened with
    ``open()`` after a loss). ``power`` is a gpiozero ``OutputDevice`` driving
    a relay whose *active* state cuts the reader's power (wire the reader's
    supply through the relay's normally-closed contact, so a stopped daemon
    leaves the reader powered).

        reader = ReaderThread("main", "/dev/serial0", StreamProtocol(Rdm6300Parser("main"),
                              driver="rdm6300"), on_card=print).start()
        ...
        reader.stop()
    """

    def __init__(
        self,
        name: str,
        port: str | serial.SerialBase,
        protocol: ReaderProtocol,
        *,
        on_card: OnCard | None = None,
        on_state: OnState | None = None,
        baudrate: int | None = None,
        read_timeout: float | None = None,
        write_timeout: float = 1.0,
        power: OutputDevice | None = None,
        own_power: bool = False,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_s: float = 10.0,
        power_cycle_after: int = 2,
        power_off_s: float = 1.0,
        power_settle_s: float = 0.5,
        path_check_s: float = 1.0,
        noise_log_every_s: float = NOISE_LOG_EVERY_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.protocol = protocol
        self.on_card = on_card
        self.on_state = on_state
        self.baudrate = baudrate or protocol.default_baud
        self.read_timeout = protocol.read_timeout if read_timeout is None else read_timeout
        self.write_timeout = write_timeout
        self.power = power
        self._own_power = own_power
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        self.power_cycle_after = power_cycle_after
        self.power_off_s = power_off_s
        self.power_settle_s = power_settle_s
        self.path_check_s = path_check_s
        self.noise_log_every_s = noise_log_every_s
        self.clock = clock

        if isinstance(port, str):
            self.url: str = port
            self._given_port: serial.SerialBase | None = None
        else:
            self.url = getattr(port, "port", None) or repr(port)
            self._given_port = port

        self.state = "starting"
        self.detail = ""
        self.state_since = clock()
        self.opens = 0
        self.reopens = 0
        self.open_failures = 0
        self.port_losses = 0
        self.not_answering = 0
        self.power_cycles = 0
        self.callback_errors = 0
        self.internal_errors = 0
        self.noise_warnings = 0           # "only noise" lines logged
        self.noise_warnings_dropped = 0   # episodes not logged: within the interval
        self._noise_logged_at: float | None = None
        self._noise_mark = (0, 0)         # bad frames, noise bytes at the last line
        self._port: serial.SerialBase | None = None
        self._port_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reader-{name}", daemon=True)
        self._started = False
        self._closed = False

    # -- public ---------------------------------------------------------------------

    def start(self) -> ReaderThread:
        if self._closed:
            raise RuntimeError(f"reader {self.name} is stopped")
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop promptly (a blocked read is cancelled); safe to call twice."""
        self._stop.set()
        self._cancel_read()
        if self._started and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("reader %s: thread did not stop within %.1f s", self.name, timeout)
        if not self._closed:
            self._closed = True
            self._close_port()
            if self.power is not None and self._own_power:
                try:
                    self.power.close()
                except Exception:  # pragma: no cover - gpiozero backends vary
                    log.exception("reader %s: closing power relay", self.name)

    def close(self, timeout: float = 5.0) -> None:
        """The same as :meth:`stop` (gpiozero spelling)."""
        self.stop(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ReaderThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        what = "stopped" if self._closed else self.state
        return f"<{type(self).__name__} {self.name} {self.protocol.driver} on {self.url} {what}>"

    def health(self) -> dict[str, Any]:
        """A snapshot for the unit's health message (``readers.<name>``)."""
        h: dict[str, Any] = {
            "state": "stopped" if self._closed else self.state,
            "detail": self.detail,
            "since_s": round(self.clock() - self.state_since, 3),
            "driver": self.protocol.driver,
            "port": self.url,
            **self.protocol.counters.snapshot(),
            "opens": self.opens,
            "reopens": self.reopens,
            "open_failures": self.open_failures,
            "port_losses": self.port_losses,
            "not_answering": self.not_answering,
            "power_cycles": self.power_cycles,
            "callback_errors": self.callback_errors,
            "internal_errors": self.internal_errors,
            "noise_warnings": self.noise_warnings,
            "noise_warnings_dropped": self.noise_warnings_dropped,
        }
        h.update(self.protocol.health())
        return h

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            healthy = False
            power_reason: str | None = None
            try:
                healthy, power_reason = self._session()
            except Exception:
                # A bug, not a reader fault: log it, stay alive, retry later.
                self.internal_errors += 1
                log.exception("reader %s: internal error; restarting the session", self.name)
                self._set_state(OFFLINE, "internal error (see log)")
            finally:
                self._close_port()
            if self._stop.is_set():
                break
            failures = 0 if healthy else failures + 1
            if self.power is not None and (
                    power_reason is not None
                    or (self.power_cycle_after and failures
                        and failures % self.power_cycle_after == 0)):
                self._power_cycle(power_reason or f"{failures} failures in a row")
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, failures - 1))
            self._stop.wait(delay if failures else self.backoff_initial_s)

    def _session(self) -> tuple[bool, str | None]:
        """One port opening. Returns (was it healthy, reason to power-cycle or None)."""
        try:
            port = self._open()
        except (*PORT_ERRORS, ValueError) as err:
            self.open_failures += 1
            self._set_state(OFFLINE, f"cannot open {self.url}: {err}")
            return False, None
        identity = self._path_identity()
        began = self.clock()
        good = False
        try:
            detail = self.protocol.start(port, self._stop)
            if self._stop.is_set():
                return True, None
            self._set_state(ONLINE, detail)
            last_check = began
            while not self._stop.is_set():
                reads = self.protocol.poll(port, self._stop)
                for read in reads:
                    good = True
                    self._deliver(read)
                now = self.clock()
                if identity is not None and now - last_check >= self.path_check_s:
                    last_check = now
                    if self._path_identity() != identity:
                        raise ReaderPortLost(f"{self.url} vanished or now names another device")
                reason = self.protocol.hung()
                if reason is not None:
                    self.protocol.counters.error("hung")
                    self.protocol.clear_hung()
                    if self.power is not None:
                        raise ReaderHung(reason)
                    # Nothing to cycle: say it (now and then) and keep listening.
                    self._warn_noise(reason)
        except ReaderHung as err:
            self._set_state(OFFLINE, f"hung: {err}")
            return False, str(err)
        except ReaderNotAnswering as err:
            self.not_answering += 1
            self._set_state(OFFLINE, f"not answering on {self.url}: {err}")
            return False, None
        except PORT_ERRORS as err:
            # ReaderPortLost is a ConnectionError, so an OSError, too.
            if self._stop.is_set():
                return True, None
            self.port_losses += 1
            self._set_state(OFFLINE, f"port lost: {self.url}: {err}")
            return good or self.clock() - began >= self.stable_s, None
        return True, None

    # -- helpers ----------------------------------------------------------------------

    def _open(self) -> serial.SerialBase:
        if self._given_port is not None:
            port = self._given_port
            if not port.is_open:
                port.open()
        else:
            port = serial.serial_for_url(self.url, baudrate=self.baudrate,
                                         timeout=self.read_timeout,
                                         write_timeout=self.write_timeout, exclusive=True)
        with self._port_lock:
            self._port = port
        if self.opens:
            self.reopens += 1
        self.opens += 1
        if self._stop.is_set():
            self._cancel_read()
        return port

    def _close_port(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception as err:  # a vanished device may fail to close
                log.debug("reader %s: closing %s: %s", self.name, self.url, err)

    def _cancel_read(self) -> None:
        with self._port_lock:
            port = self._port
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            try:
                cancel()
            except Exception as err:
                log.debug("reader %s: cancel_read: %s", self.name, err)

    def _path_identity(self) -> tuple[int, int, int] | None:
        """Which device a plain path names now (follows symlinks); None for URLs."""
        if self._given_port is not None or "://" in self.url:
            return None
        try:
            st = os.stat(self.url)
        except OSError:
            return (-1, -1, -1)
        return (st.st_dev, st.st_ino, st.st_rdev)

    def _warn_noise(self, reason: str) -> None:
        now = self.clock()
        last = self._noise_logged_at
        if last is not None and now - last < self.noise_log_every_s:
            self.noise_warnings_dropped += 1
            return
        counters = self.protocol.counters
        mark = (counters.bad_frames, counters.noise_bytes)
        if last is None:
            log.warning("reader %s on %s: %s (no power_pin to cycle it); logged at most once "
                        "every %.0f s, counted in health", self.name, self.url, reason,
                        self.noise_log_every_s)
        else:
            log.warning("reader %s on %s: still only noise: %d bad frames, %d noise bytes "
                        "since the last report %.0f s ago (no power_pin to cycle it)",
                        self.name, self.url, mark[0] - self._noise_mark[0],
                        mark[1] - self._noise_mark[1], now - last)
        self.noise_warnings += 1
        self._noise_logged_at, self._noise_mark = now, mark

    def _deliver(self, read: CardRead) -> None:
        if self.on_card is None:
            return
        try:
            self.on_card(read)
        except Exception:
            self.callback_errors += 1
            log.exception("reader %s: on_card callback failed for %s", self.name, read.card_hex)

    def _set_state(self, state: str, detail: str) -> None:
        if state == self.state:
            self.detail = detail
            return
        self.state, self.detail, self.state_since = state, detail, self.clock()
        (log.info if state == ONLINE else log.warning)(
            "reader %s (%s on %s) %s: %s", self.name, self.protocol.driver, self.url, state,
            detail)
        if self.on_state is None:
            return
        try:
            self.on_state(self.name, state, detail)
        except Exception:
            self.callback_errors += 1
            log.exception("reader %s: on_state callback failed", self.name)

    def _power_cycle(self, reason: str) -> None:
        power = self.power
        if power is None:
            return
        self.power_cycles += 1
        log.warning("reader %s: power-cycling through its relay (%s)", self.name, reason)
        try:
            power.on()
            self._stop.wait(self.power_off_s)
        except Exception:
            log.exception("reader %s: relay failed", self.name)
        finally:
            try:
                power.off()
            except Exception:
                log.exception("reader %s: relay failed to restore power", self.name)
        self._stop.wait(self.power_settle_s)
