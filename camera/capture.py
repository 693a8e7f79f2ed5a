"""Capture: one camera source read on its own thread, the newest frame always at hand.

A source is what ``[[cameras]] source`` says, opened with ``cv2.VideoCapture``:

- ``"0"``: a device index (V4L2 backend), as a USB camera is numbered;
- ``/dev/video0`` or ``/dev/v4l/by-id/…``: a V4L2 device path (USB, or a CSI
  camera the kernel exposes as V4L2);
- ``rtsp://…``, ``http://…``, ``https://…``: an IP camera's stream (FFmpeg
  backend, with open and read timeouts so a dead camera cannot block a read
  for ever; RTSP over TCP unless ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` says
  otherwise);
- anything else: a video file, played at its own frame rate as if it were a
  camera and started again when it ends (the demo and the tests).

The reader thread grabs every frame the source sends (so an RTSP buffer never
lags behind) but converts only as many as ``fps_cap`` asks for. The consumer
calls :meth:`Capture.wait` for the newest frame and :meth:`Capture.check` for
state changes: no frame for ``stall_s`` means ``offline``, the first frame
after that ``online``. The reader reconnects for ever with exponential backoff;
a read that hangs inside the backend is abandoned and a new reader started.
Nothing here raises into the consumer except :class:`CaptureStuck` when
several readers hang at once (the worker process then exits and is restarted).

Example::

    with Capture("rtsp://192.0.2.10:554/stream1", fps_cap=10) as cap:
        frame = cap.wait(after=0, timeout=5.0)
        for change in cap.check():
            print(change.state, change.detail)
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from .exc import CaptureStuck, SourceUnavailable

log = logging.getLogger("xunfang.camera.capture")

__all__ = ["Capture", "Frame", "FrameClock", "HostClock", "SourceSpec", "StateChange",
           "open_source", "parse_source", "read_file_frames", "redact"]

SourceKind = Literal["device", "v4l2", "network", "file"]
_URL_RE = re.compile(r"^(rtsp|rtsps|rtmp|http|https|tcp|udp)://", re.IGNORECASE)
_CREDENTIALS_RE = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/@]*)@", re.IGNORECASE)


@dataclass(frozen=True)
class Frame:
    """One decoded picture and when it was grabbed (``clock.monotonic()`` and wall ms)."""

    seq: int
    image: np.ndarray
    t: float
    wall_ms: int

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class StateChange:
    """``online`` or ``offline``, with a detail for the ``camera`` event."""

    state: Literal["online", "offline"]
    detail: str
    t: float


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``source``: how to open it and whether it is a live camera."""

    text: str
    kind: SourceKind
    target: str | int

    @property
    def live(self) -> bool:
        return self.kind != "file"

    def describe(self) -> str:
        """The source for logs and events, without a password."""
        return redact(self.text)


def redact(source: str) -> str:
    """``rtsp://admin:secret@192.0.2.10/…`` → ``rtsp://admin:***@192.0.2.10/…``."""
    def hide(m: re.Match[str]) -> str:
        user = m.group(2).split(":", 1)[0]
        return f"{m.group(1)}{user}:***@" if ":" in m.group(2) else m.group(0)
    return _CREDENTIALS_RE.sub(hide, source)


def parse_source(text: str) -> SourceSpec:
    """What kind of source ``text`` names (see the module doc)."""
    text = text.strip()
    if not text:
        raise ValueError("camera source is empty")
    if text.isdigit():
        return SourceSpec(text, "device", int(text))
    if _URL_RE.match(text):
        return SourceSpec(text, "network", text)
    if text.startswith("/dev/"):
        return SourceSpec(text, "v4l2", text)
    return SourceSpec(text, "file", text)


def open_source(spec: SourceSpec, open_timeout_s: float = 10.0,
                read_timeout_s: float = 5.0,
                size: tuple[int, int] | None = None) -> cv2.VideoCapture:
    """Open a source with the backend that fits it; raise :class:`SourceUnavailable`.

    ``size`` (width, height) is asked of V4L2 devices, in MJPEG: USB 2 carries
    raw YUYV at 1280x720 only at a few frames a second.
    """
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
    if spec.kind in ("device", "v4l2"):
        cap = cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
        if cap.isOpened() and size is not None:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
    else:
        if spec.kind == "file" and not Path(str(spec.target)).is_file():
            raise SourceUnavailable(f"camera source {spec.describe()}: no such file")
        if spec.kind == "network" and str(spec.target).lower().startswith("rtsp"):
            # UDP loses packets on a busy link and smears the picture; TCP does not.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise SourceUnavailable(f"camera source {spec.describe()}: cannot open")
    return cap


def _source_fps(cap: cv2.VideoCapture) -> float | None:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 0.5 <= fps <= 240 else None


class _Rate:
    """Frames per second over a sliding window of a few seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: list[float] = []

    def tick(self, t: float) -> None:
        self._times.append(t)
        cutoff = t - self.window_s
        if self._times[0] < cutoff:
            self._times = [x for x in self._times if x >= cutoff]

    def value(self, now: float) -> float:
        times = [x for x in self._times if x >= now - self.window_s]
        if len(times) < 2:
            return 0.0
        span = max(times[-1] - times[0], 1e-6)
        return round((len(times) - 1) / span, 2)


Opener = Callable[[SourceSpec], Any]


class FrameClock(Protocol):
    """What a capture asks of time (the unit's clock is one)."""

    def monotonic(self) -> float:
        """Seconds since boot."""

    def wall_ms(self) -> int:
        """UTC wall-clock time in milliseconds since the epoch."""


class HostClock:
    """The host's clocks: CLOCK_BOOTTIME (counts through suspend) and the wall clock."""

    def monotonic(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


class Capture:
    """Reads one source on a thread; see the module doc.

    ``clock`` stamps the frames (its ``monotonic`` is the boot-relative time
    the journal's events carry, so a frame can be matched to a check-in; the
    worker passes the unit's clock, None is :class:`HostClock`).
    ``opener`` is the seam for tests that need a source to misbehave.
    """

    #: Readers hung inside the backend at the same time before giving up.
    max_stuck_readers = 3
    #: A read is hung when it outlasts stall_s + read_timeout_s + this.
    stuck_slack_s = 1.0

    def __init__(self, source: str | SourceSpec, *, name: str = "camera", fps_cap: float = 10.0,
                 stall_s: float = 5.0, clock: FrameClock | None = None,
                 backoff_min_s: float = 0.5, backoff_max_s: float = 30.0,
                 open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 size: tuple[int, int] | None = None, opener: Opener | None = None) -> None:
        self.spec = source if isinstance(source, SourceSpec) else parse_source(source)
        self.name = name
        self.fps_cap = fps_cap
        self.stall_s = stall_s
        self.clock: FrameClock = clock or HostClock()
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.size = size
        self._opener: Opener = opener or (
            lambda spec: open_source(spec, self.open_timeout_s, self.read_timeout_s, self.size))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._frame: Frame | None = None
        self._seq = 0
        self._generation = 0
        self._threads: list[threading.Thread] = []
        self._in_call_since: float | None = None    # the current reader is inside the backend
        self._state: Literal["starting", "online", "offline"] = "starting"
        self._since = self.clock.monotonic()
        self._last_frame_t: float | None = None
        self._next_out = 0.0
        self._changes: list[StateChange] = []
        self._closed = False
        # Counters for health and the benchmark.
        self.opens = 0
        self.open_failures = 0
        self.read_failures = 0
        self.stuck_readers = 0
        self.grabbed = 0
        self.delivered = 0
        self.last_error: str | None = None
        self.source_fps: float | None = None
        self._rate_in = _Rate()
        self._rate_out = _Rate()

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Capture:
        with self._cond:
            if self._closed:
                raise ValueError(f"capture {self.name} is closed")
            if not self._threads:
                self._spawn_reader()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading and release the source; safe twice."""
        with self._cond:
            self._closed = True
            self._stop.set()
            self._cond.notify_all()
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn_reader(self) -> None:
        self._generation += 1
        t = threading.Thread(target=self._read_loop, args=(self._generation,),
                             name=f"capture-{self.name}-{self._generation}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    # -- what the consumer calls ------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def latest(self) -> Frame | None:
        return self._frame

    def wait(self, after: int, timeout: float) -> Frame | None:
        """The newest frame with a sequence number above ``after``; None on timeout."""
        with self._cond:
            self._cond.wait_for(lambda: self._stop.is_set() or
                                (self._frame is not None and self._frame.seq > after),
                                timeout)
            frame = self._frame
        return frame if frame is not None and frame.seq > after else None

    def check(self) -> list[StateChange]:
        """Evaluate the stall rule and a hung reader; return the state changes since last time."""
        now = self.clock.monotonic()
        with self._cond:
            quiet_since = self._last_frame_t if self._last_frame_t is not None else self._since
            if self._state != "offline" and now - quiet_since >= self.stall_s:
                detail = self.last_error or f"no frame for {self.stall_s:g} s"
                self._set_state("offline", f"{detail} ({self.spec.describe()})", now)
            stuck_for = now - self._in_call_since if self._in_call_since is not None else 0.0
            if not self._closed and \
                    stuck_for > self.stall_s + self.read_timeout_s + self.stuck_slack_s:
                # The backend ignored its timeout: leave that thread and start afresh.
                self.stuck_readers += 1
                alive = sum(t.is_alive() for t in self._threads)
                log.error("camera %s: a read has hung for %.0f s inside the backend; "
                          "starting a new reader (%d hung so far)", self.name, stuck_for,
                          self.stuck_readers)
                self.last_error = f"read hung for {stuck_for:.0f} s"
                self._in_call_since = None
                if alive > self.max_stuck_readers:
                    raise CaptureStuck(f"camera {self.name}: {alive - 1} readers hang inside "
                                       f"the backend of {self.spec.describe()}")
                self._spawn_reader()
            changes, self._changes = self._changes, []
        return changes

    def stats(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        frame = self._frame
        return {
            "state": self._state,
            "fps_in": self._rate_in.value(now),
            "fps": self._rate_out.value(now),
            "source_fps": self.source_fps,
            "grabbed": self.grabbed,
            "frames": self.delivered,
            "opens": self.opens,
            "open_failures": self.open_failures,
            "read_failures": self.read_failures,
            "stuck_readers": self.stuck_readers,
            "width": frame.width if frame is not None else None,
            "height": frame.height if frame is not None else None,
            "last_error": self.last_error,
        }

    # -- the reader thread ----------------------------------------------------------------------

    def _set_state(self, state: Literal["online", "offline"], detail: str, t: float) -> None:
        if state != self._state:
            self._state = state
            self._since = t
            self._changes.append(StateChange(state, detail, t))
            (log.info if state == "online" else log.warning)("camera %s %s: %s", self.name,
                                                             state, detail)

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _calling(self, generation: int, since: float | None) -> None:
        """Note that the reader of ``generation`` entered (a time) or left (None) the backend."""
        if generation == self._generation:
            self._in_call_since = since

    def _read_loop(self, generation: int) -> None:
        backoff = self.backoff_min_s
        while self._current(generation):
            try:
                self._calling(generation, self.clock.monotonic())
                cap = self._opener(self.spec)
            except Exception as err:
                if not self._current(generation):
                    return
                self._calling(generation, None)
                self.open_failures += 1
                self.last_error = str(err) if isinstance(err, SourceUnavailable) else \
                    f"cannot open: {err}"
                log.debug("camera %s: %s; next try in %.1f s", self.name, self.last_error,
                          backoff)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            self._calling(generation, None)
            if not self._current(generation):
                cap.release()
                return
            self.opens += 1
            try:
                got = self._read_session(cap, generation)
            except Exception as err:  # a backend error must not end the thread
                got = 0
                self.last_error = f"read failed: {err}"
                log.exception("camera %s: reading failed", self.name)
            finally:
                self._calling(generation, None)
                try:
                    cap.release()
                except Exception:
                    log.debug("camera %s: release failed", self.name, exc_info=True)
            if got:
                backoff = self.backoff_min_s
                if not self.spec.live:
                    continue                        # a file ended: play it again at once
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.backoff_max_s)

    def _read_session(self, cap: Any, generation: int) -> int:
        """Read until the source fails; return how many frames it delivered."""
        src_fps = _source_fps(cap)
        self.source_fps = src_fps
        pace = None if self.spec.live else 1.0 / (src_fps or self.fps_cap)
        period = 1.0 / self.fps_cap
        start = self.clock.monotonic()
        n = got = 0
        while self._current(generation):
            if pace is not None:
                # A file plays at its own rate, as a camera would deliver it.
                delay = start + n * pace - self.clock.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            self._calling(generation, self.clock.monotonic())
            ok = cap.grab()
            self._calling(generation, None)
            if not self._current(generation):
                break
            if not ok:
                self.read_failures += 1
                self.last_error = "stream ended" if not self.spec.live else "read failed"
                break
            n += 1
            self.grabbed += 1
            now = self.clock.monotonic()
            self._rate_in.tick(now)
            # The cadence goes on across reconnects (a looping file reopens every loop).
            if now < self._next_out:
                continue
            self._next_out = max(self._next_out + period, now - period / 2)
            self._calling(generation, now)
            ok, image = cap.retrieve()
            self._calling(generation, None)
            if not ok or image is None or image.size == 0:
                self.read_failures += 1
                self.last_error = "frame could not be decoded"
                continue
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            got += 1
            self._publish(image, generation)
        return got

    def _publish(self, image: np.ndarray, generation: int) -> None:
        now = self.clock.monotonic()
        wall = self.clock.wall_ms()
        with self._cond:
            if generation != self._generation:
                return
            self._seq += 1
            self._frame = Frame(self._seq, image, now, wall)
            self._last_frame_t = now
            self.delivered += 1
            self._rate_out.tick(now)
            if self._state != "online":
                h, w = image.shape[:2]
                self._set_state("online", f"{w}x{h} from {self.spec.describe()}", now)
                self.last_error = None
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<Capture {self.name} {self.spec.describe()} {self._state}>"


def read_file_frames(path: str | os.PathLike[str], fps_cap: float | None = None,
                     t0: float = 1000.0, wall0_ms: int = 1_795_000_000_000,
                     source_fps: float | None = None) -> Iterator[Frame]:
    """Every frame of a video file (at most ``fps_cap`` a second of its timeline),
    stamped with the time it would have had from a live camera started at ``t0``.

    For tests and the benchmark: the same frames a :class:`Capture` delivers,
    without threads or waiting.
    """
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise SourceUnavailable(f"video file {path}: cannot open")
    try:
        fps = source_fps or _source_fps(cap) or 25.0
        period = 1.0 / fps_cap if fps_cap else 0.0
        next_out = t0
        i = seq = 0
        while True:
            if not cap.grab():
                return
            t = t0 + i / fps
            i += 1
            if period and t + 1e-9 < next_out:
                continue
            next_out = max(next_out + period, t - period / 2) if period else t
            ok, image = cap.retrieve()
            if not ok:
                continue
            seq += 1
            yield Frame(seq, image, t, wall0_ms + round((t - t0) * 1000))
    finally:
        cap.release()
