"""Time as the unit knows it: wall clock, boot id, boot-relative time, sync state.

A Raspberry Pi has no real-time clock: until NTP (or the centre) sets it, the
wall clock may be days or years off. Every event therefore carries, next to its
UTC time, the boot id and the seconds since boot (which are always right within
one boot) and whether the kernel considered the clock synchronised.

Sync state is read from the kernel with ``adjtimex(2)`` (modes 0: read only).
The kernel clears ``STA_UNSYNC`` and returns a state other than ``TIME_ERROR``
once an NTP daemon (systemd-timesyncd, chrony, ntpd) has disciplined the clock;
this is the same test ``timedatectl`` shows as "System clock synchronized".

Everything here is injectable: components take a :class:`Clock`, tests pass a
:class:`ManualClock`, and a whole process (a daemon started by a test, the
demo) can be steered through two environment variables:

``XUNFANG_CLOCK_SYNCED``
    ``1``/``0`` overrides the kernel's answer.
``XUNFANG_CLOCK_OFFSET_S``
    seconds added to the wall clock (negative to go back), to play a Pi that
    booted with a clock in the past.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Protocol

# From <sys/timex.h>: a status bit and a return value of adjtimex().
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; the trailing padding is 11 ints.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    ]


_libc: ctypes.CDLL | None = None


def kernel_clock_synced() -> bool:
    """True when the kernel says an NTP daemon has synchronised the clock."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    tx.modes = 0
    state = _libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        return False
    return state != _TIME_ERROR and not (tx.status & _STA_UNSYNC)


def read_boot_id() -> str:
    """The kernel's boot id, new at every boot; a random stand-in where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return str(uuid.uuid4())


def rfc3339_ms(epoch_ms: int) -> str:
    """``2026-11-28T15:04:05.123Z`` for a UTC time in milliseconds."""
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 time with a zone (``Z`` or an offset); raise ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected an RFC 3339 time string, got {type(text).__name__}")
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone: add Z or an offset")
    return dt.astimezone(UTC)


class Clock(Protocol):
    """What the unit asks of time. Every component takes one."""

    def wall_ms(self) -> int:
        """UTC wall-clock time in milliseconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds since boot (CLOCK_BOOTTIME: keeps counting through suspend)."""

    def boot_id(self) -> str:
        """The id of the current boot."""

    def synced(self) -> bool:
        """Whether the wall clock is synchronised."""


class SystemClock:
    """The real clock, with the two environment overrides of the module doc."""

    def __init__(self) -> None:
        self._boot_id = read_boot_id()
        self._offset_ms = int(float(os.environ.get("XUNFANG_CLOCK_OFFSET_S", "0") or 0) * 1000)
        forced = os.environ.get("XUNFANG_CLOCK_SYNCED", "").strip().lower()
        self._forced: bool | None = {
            "1": True, "yes": True, "true": True, "0": False, "no": False, "false": False,
        }.get(forced)
        self._synced_cache: tuple[float, bool] | None = None

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self._offset_ms

    def monotonic(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def boot_id(self) -> str:
        return self._boot_id

    def synced(self) -> bool:
        if self._forced is not None:
            return self._forced
        # adjtimex is a cheap syscall, but events can come in bursts: ask once a second.
        now = time.monotonic()
        if self._synced_cache is None or now - self._synced_cache[0] > 1.0:
            self._synced_cache = (now, kernel_clock_synced())
        return self._synced_cache[1]


class ManualClock:
    """A clock that tests set and advance by hand. Thread-safe."""

    def __init__(
        self,
        wall_ms: int = 1_795_000_000_000,
        monotonic: float = 100.0,
        synced: bool = True,
        boot_id: str = "00000000-0000-4000-8000-000000000001",
    ) -> None:
        self._lock = threading.Lock()
        self._wall_ms = wall_ms
        self._mono = monotonic
        self._synced = synced
        self._boot_id = boot_id

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall_ms

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def boot_id(self) -> str:
        return self._boot_id

    def synced(self) -> bool:
        with self._lock:
            return self._synced

    def advance(self, seconds: float) -> None:
        """Move both clocks forward, as time passing does."""
        with self._lock:
            self._wall_ms += int(seconds * 1000)
            self._mono += seconds

    def set_wall(self, wall_ms: int, synced: bool | None = None) -> None:
        """Step the wall clock alone, as NTP does when it first syncs."""
        with self._lock:
            self._wall_ms = wall_ms
            if synced is not None:
                self._synced = synced

    def set_synced(self, synced: bool) -> None:
        with self._lock:
            self._synced = synced

    def reboot(self, boot_id: str, monotonic: float = 5.0) -> None:
        """A new boot: new boot id, boot-relative time starts again."""
        with self._lock:
            self._boot_id = boot_id
            self._mono = monotonic


#: GNSS times before this are not believed: a receiver past a GPS week rollover
#: (or gpsd guessing the century of an old two-digit date) reports 1999 or 2034.
GNSS_PLAUSIBLE_FROM_MS = 1_767_225_600_000     # 2026-01-01T00:00:00Z
GNSS_PLAUSIBLE_SPAN_MS = 20 * 365 * 86400 * 1000


class SatelliteClock:
    """A clock that takes its time from satellites while the system clock is not synchronised.

    ``base`` is the unit's clock (boot id, boot-relative time, the kernel's sync
    state). :meth:`set_from_gnss` is given the UTC time of a valid fix with
    date and the ``base.monotonic()`` at which it was read. While ``base`` is
    not synchronised, :meth:`wall_ms` counts from the latest such fix on the
    boot-relative clock, and :meth:`synced` is True for ``max_age_s`` after
    it (the monotonic clock drifts a few ppm, and a fix a second late is
    still honest to a second). Once ``base`` is synchronised (chrony with
    gpsd's SHM refclock, or NTP), ``base`` is used as it is.
    """

    def __init__(self, base: Clock, max_age_s: float = 3600.0) -> None:
        self.base = base
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._anchor: tuple[int, float, str] | None = None   # utc_ms, mono, boot
        self.rejected = 0

    def set_from_gnss(self, utc_ms: int, mono: float) -> bool:
        """Adopt a fix's time; False (and counted) when it is not plausible."""
        if not GNSS_PLAUSIBLE_FROM_MS <= utc_ms <= GNSS_PLAUSIBLE_FROM_MS + \
                GNSS_PLAUSIBLE_SPAN_MS:
            self.rejected += 1
            return False
        with self._lock:
            self._anchor = (utc_ms, mono, self.base.boot_id())
        return True

    def _gnss_ms(self) -> int | None:
        with self._lock:
            anchor = self._anchor
        if anchor is None or anchor[2] != self.base.boot_id():
            return None
        age = self.base.monotonic() - anchor[1]
        if not 0 <= age <= self.max_age_s:
            return None
        return anchor[0] + round(age * 1000)

    @property
    def source(self) -> str:
        """Where the time comes from now: ``system`` (synchronised), ``gnss`` or ``none``."""
        if self.base.synced():
            return "system"
        return "gnss" if self._gnss_ms() is not None else "none"

    def wall_ms(self) -> int:
        if not self.base.synced():
            gnss = self._gnss_ms()
            if gnss is not None:
                return gnss
        return self.base.wall_ms()

    def monotonic(self) -> float:
        return self.base.monotonic()

    def boot_id(self) -> str:
        return self.base.boot_id()

    def synced(self) -> bool:
        return self.base.synced() or self._gnss_ms() is not None
