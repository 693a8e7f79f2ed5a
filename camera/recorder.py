"""Recorder: clips with pre-roll, snapshots, and the metadata the centre gets.

Every analysed frame is JPEG-encoded once (:meth:`Recorder.encode`) and kept
in a ring buffer of ``pre_roll_s`` seconds (:class:`FrameRing`): about 6.5 MB
for 5 s of 720p at 10 fps, where raw frames would take 138 MB. A recording
starts with the frames of the ring it needs, so the pre-roll is exact to the
frame, whatever segment boundaries: there are none.

Recordings (:class:`Recording`), any number at a time:

``motion``
    starts after ``motion_frames`` consecutive motion frames, with
    ``pre_roll_s`` before the first of them; ends ``post_roll_s`` after the
    last motion frame, or at ``max_clip_s`` (a new clip continues at once if
    the motion goes on).
``level``
    while the alert level asks for it (``continuous_levels``, level 1 by
    default), the camera records continuously in ``segment_s`` segments,
    back to back; motion clips are not made then (the segments hold it all).
``command``, ``alarm``
    a fixed length from the request, with pre-roll.

With the default codec (``mjpeg``) the JPEG frames of the ring go into an
AVI file as they are (:mod:`camera.avi`): recording costs no encoding beyond
the ring's. ``mp4v`` (MPEG-4 Part 2 in MP4, via OpenCV's FFmpeg) makes files
about 5 times smaller for another encoding per frame; ``docs/camera.md`` has
the figures. A clip is written as ``….part``, then finished, fsync'd and
renamed, hashed (SHA-256, also written next to it as ``….sha256`` in
``sha256sum`` format) and announced with a ``footage`` event whose snapshot
is the frame with the most motion. That work runs on a finisher thread, so
the analysis never waits for the SD card.

Before a recording starts, and every few frames while it runs, the free disk
space is checked against ``reserve_mb``: footage never eats into the room the
journal needs (a recording ends early instead, ``end: "disk"``).

Example::

    rec = Recorder("gate", data_dir, RecorderSettings(pre_roll_s=5), on_event=print)
    rec.add(FrameRecord.of(frame, rec.encode(frame.image), result), frame.image)
    rec.close()
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from firmware_py.clock import rfc3339_ms

from .avi import MjpegAviWriter
from .exc import FootageError
from .files import (
    CLIPS_DIR,
    HASH_SUFFIX,
    PART_SUFFIX,
    fsync_dir,
    media_path,
    sha256_file,
    write_durably,
    write_snapshot,
)

log = logging.getLogger("xunfang.camera.recorder")

__all__ = ["FrameRecord", "FrameRing", "Recorder", "RecorderSettings", "Recording",
           "recover_parts", "recovered_footage"]

#: How often (frames) a running recording checks the free disk space.
DISK_CHECK_EVERY = 25
CODECS = {"mjpeg": ("avi", "MJPG"), "mp4v": ("mp4", "mp4v")}


# -- frames and the ring --------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRecord:
    """One analysed frame as the recorder keeps it: encoded, timed, scored."""

    t: float
    wall_ms: int
    jpeg: bytes
    width: int
    height: int
    score: float = 0.0
    motion: bool = False

    def wall_at(self, t: float) -> int:
        """Wall time (ms) of another moment ``t`` on this frame's clock."""
        return self.wall_ms + round((t - self.t) * 1000)


class FrameRing:
    """The last ``seconds`` of encoded frames, oldest first."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._frames: deque[FrameRecord] = deque()
        self.bytes = 0

    def add(self, rec: FrameRecord) -> None:
        self._frames.append(rec)
        self.bytes += len(rec.jpeg)
        cutoff = rec.t - self.seconds
        while len(self._frames) > 1 and self._frames[0].t < cutoff:
            self.bytes -= len(self._frames.popleft().jpeg)

    def since(self, t: float) -> list[FrameRecord]:
        return [r for r in self._frames if r.t >= t - 1e-9]

    def nearest(self, t: float) -> FrameRecord | None:
        if not self._frames:
            return None
        return min(self._frames, key=lambda r: abs(r.t - t))

    @property
    def newest(self) -> FrameRecord | None:
        return self._frames[-1] if self._frames else None

    @property
    def oldest(self) -> FrameRecord | None:
        return self._frames[0] if self._frames else None

    def clear(self) -> None:
        self._frames.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._frames)


# -- sinks ----------------------------------------------------------------------------------------


class ClipSink(Protocol):
    codec: str
    container: str

    @property
    def size(self) -> int: ...

    @property
    def full(self) -> bool: ...

    def write(self, rec: FrameRecord, image: np.ndarray | None) -> None: ...

    def finish(self, fps: float) -> None: ...

    def abort(self) -> None: ...


class MjpegSink:
    """The ring's JPEG bytes, as they are, in an AVI file."""

    codec = "mjpeg"
    container = "avi"

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        self._avi = MjpegAviWriter(path, width, height)

    @property
    def size(self) -> int:
        return self._avi.size

    @property
    def full(self) -> bool:
        return self._avi.full

    def write(self, rec: FrameRecord, image: np.ndarray | None) -> None:
        self._avi.add(rec.jpeg)

    def finish(self, fps: float) -> None:
        self._avi.finish(fps)

    def abort(self) -> None:
        self._avi.close()


class Mp4vSink:
    """MPEG-4 Part 2 in MP4 through OpenCV's FFmpeg: smaller files, one more encoding.

    Pre-roll frames are decoded from the ring's JPEG first.
    """

    codec = "mp4v"
    container = "mp4"

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        self.path = path
        # FFmpeg picks the container from the name: give it the real suffix.
        self._tmp = path.with_name(path.name.removesuffix(PART_SUFFIX) + ".tmp.mp4") \
            if path.name.endswith(PART_SUFFIX) else path
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                       max(fps, 1.0), (width, height))
        if not self._writer.isOpened():
            raise FootageError(f"cannot open an mp4v writer for {path}")
        self._size = (width, height)
        self._bytes = 0

    @property
    def size(self) -> int:
        try:
            return self._tmp.stat().st_size
        except OSError:
            return 0

    @property
    def full(self) -> bool:
        return False

    def write(self, rec: FrameRecord, image: np.ndarray | None) -> None:
        if image is None:
            image = cv2.imdecode(np.frombuffer(rec.jpeg, np.uint8), cv2.IMREAD_COLOR)
        self._writer.write(image)

    def finish(self, fps: float) -> None:
        self._writer.release()
        if self._tmp != self.path:
            os.replace(self._tmp, self.path)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        self._writer.release()


def make_sink(codec: str, path: Path, width: int, height: int, fps: float) -> ClipSink:
    if codec == "mjpeg":
        return MjpegSink(path, width, height, fps)
    if codec == "mp4v":
        return Mp4vSink(path, width, height, fps)
    raise ValueError(f"unknown codec {codec!r}: choose mjpeg or mp4v")


# -- recordings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecorderSettings:
    pre_roll_s: float = 5.0
    post_roll_s: float = 5.0
    max_clip_s: float = 300.0
    motion_frames: int = 3
    codec: str = "mjpeg"
    jpeg_quality: int = 80
    snapshot_quality: int = 90
    segment_s: float = 60.0
    fps: float = 10.0
    reserve_mb: int = 512
    #: Seconds of frames kept for check-in photos even without pre-roll.
    min_ring_s: float = 3.0


@dataclass
class Recording:
    """One clip being written."""

    trigger: str
    ref: str | None
    start_t: float                  # when the event began (first motion frame, request)
    part: Path
    final: Path
    sink: ClipSink
    width: int
    height: int
    until_t: float | None = None    # fixed length: end here
    last_motion_t: float | None = None
    continues: str | None = None    # path of the clip this one continues
    first: FrameRecord | None = None
    last: FrameRecord | None = None
    frames: int = 0
    motion_frames: int = 0
    peak_score: float = 0.0
    best: FrameRecord | None = None
    best_image: np.ndarray | None = None
    end: str | None = None
    start_wall_ms: int | None = None
    last_motion_wall_ms: int | None = None

    def add(self, rec: FrameRecord, image: np.ndarray | None) -> None:
        self.sink.write(rec, image)
        if self.first is None:
            self.first = rec
        self.last = rec
        self.frames += 1
        if rec.motion:
            self.motion_frames += 1
            if rec.t >= self.start_t:
                self.last_motion_t = rec.t
                self.last_motion_wall_ms = rec.wall_ms
        if rec.motion and rec.score > self.peak_score:
            self.peak_score = rec.score
        # The snapshot: the frame with the most motion; without motion, the frame of the
        # request. Only live frames have a full image to re-encode at snapshot quality.
        best = self.best
        if (rec.motion and (best is None or not best.motion or rec.score > best.score)) or \
                (best is None) or (not best.motion and not rec.motion and
                                   rec.t <= self.start_t + 1e-9):
            self.best = rec
            self.best_image = image.copy() if image is not None else None


class Recorder:
    """Decides when clips start and end, and writes them (see the module doc).

    ``on_event(kind, data)`` is called from the finisher thread with each
    ``footage`` and ``snapshot`` event to record; ``free_bytes()`` says how
    much room the data directory has (the seam for disk-full tests).
    """

    def __init__(self, camera: str, data_dir: Path, settings: RecorderSettings,
                 on_event: Callable[[str, dict[str, Any]], None],
                 free_bytes: Callable[[], int] | None = None) -> None:
        self.camera = camera
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.on_event = on_event
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.data_dir).free)
        # The pre-roll counts back from the first of the motion frames that start a clip,
        # so the ring also holds those (at up to half the nominal frame rate).
        lead = max(1.0, 2.0 * settings.motion_frames / settings.fps)
        self.ring = FrameRing(max(settings.pre_roll_s + lead, settings.min_ring_s))
        self.active: list[Recording] = []
        self.continuous = False
        self._run = 0
        self._run_start: FrameRecord | None = None
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Condition()
        self._finisher = threading.Thread(target=self._finish_loop,
                                          name=f"recorder-{camera}", daemon=True)
        self._finisher.start()
        self._closed = False
        self._frames_since_check = 0
        # Counters for health.
        self.clips = 0
        self.snapshots = 0
        self.failures = 0
        self.refused = 0
        self.disk_short = False
        self.last_error: str | None = None
        self.encode_s = 0.0
        self.encoded = 0

    # -- frames in --------------------------------------------------------------------------

    def encode(self, image: np.ndarray, quality: int | None = None) -> bytes:
        """JPEG bytes of a frame (the ring's quality unless told)."""
        t0 = time.perf_counter()
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY,
                                               quality or self.settings.jpeg_quality])
        if not ok:
            raise FootageError(f"camera {self.camera}: JPEG encoding failed")
        self.encode_s += time.perf_counter() - t0
        self.encoded += 1
        return buf.tobytes()

    def add(self, rec: FrameRecord, image: np.ndarray | None = None) -> None:
        """One analysed frame: into the ring, into every active recording; end and start
        recordings as their rules say (an ending clip stops before this frame, the clip
        that continues it starts with it)."""
        self.ring.add(rec)
        if rec.motion:
            if self._run == 0:
                self._run_start = rec
            self._run += 1
        else:
            self._run, self._run_start = 0, None
        for r in list(self.active):
            reason = self._due(r, rec)
            if reason is None:
                self._write(r, rec, image)
                continue
            self._end(r, reason)
            if reason in ("max_length", "max_size", "segment") and self._goes_on(r, rec):
                nxt = self._start(r.trigger, r.ref, rec.t, rec, image, until_t=r.until_t,
                                  pre_roll=False, start_wall_ms=rec.wall_ms,
                                  continues=r.final.relative_to(self.data_dir).as_posix())
                if nxt is not None and r.trigger == "motion":
                    nxt.last_motion_t = r.last_motion_t
                    nxt.last_motion_wall_ms = r.last_motion_wall_ms
        if self.continuous:
            if self._find("level") is None:
                self._start("level", None, rec.t, rec, image, pre_roll=False)
        elif self._find("motion") is None and self._run >= self.settings.motion_frames \
                and self._run_start is not None:
            self._start("motion", None, self._run_start.t, rec, image,
                        start_wall_ms=self._run_start.wall_ms)

    def _due(self, r: Recording, rec: FrameRecord) -> str | None:
        """Why ``r`` ends before ``rec``, or None when ``rec`` belongs in it."""
        if r.first is None:
            return None
        s = self.settings
        length = rec.t - r.first.t
        if r.trigger == "motion":
            last = r.last_motion_t if r.last_motion_t is not None else r.start_t
            if not rec.motion and rec.t - last >= s.post_roll_s:
                return "quiet"
        elif r.trigger == "level":
            if length >= s.segment_s:
                return "segment"
        elif r.until_t is not None and rec.t > r.until_t + 1e-9:
            return "length"
        if length >= s.max_clip_s:
            return "max_length"
        if r.sink.full:
            return "max_size"
        return None

    def _goes_on(self, r: Recording, rec: FrameRecord) -> bool:
        if r.trigger == "motion":
            return not self.continuous
        if r.trigger == "level":
            return self.continuous
        return r.until_t is not None and rec.t <= r.until_t

    def request(self, trigger: str, ref: str | None, seconds: float,
                at: FrameRecord | None = None) -> bool:
        """A fixed-length clip (``command``, ``alarm``) from now, with pre-roll.
        False when there is no picture to record (the camera is offline)."""
        newest = at or self.ring.newest
        if newest is None:
            return False
        r = self._start(trigger, ref, newest.t, newest, None, until_t=newest.t + seconds,
                        from_ring=True)
        return r is not None

    def set_continuous(self, on: bool) -> None:
        if on == self.continuous:
            return
        self.continuous = on
        if not on:
            level = self._find("level")
            if level is not None and level.last is not None:
                self._end(level, "level_changed")

    def stop_all(self, reason: str) -> None:
        """End every recording at its last frame (camera offline, stopping)."""
        for r in list(self.active):
            self._end(r, reason)
        self._run, self._run_start = 0, None

    # -- recordings ----------------------------------------------------------------------

    def _find(self, trigger: str) -> Recording | None:
        return next((r for r in self.active if r.trigger == trigger), None)

    def _room(self) -> bool:
        try:
            free = self.free_bytes()
        except OSError as err:
            self.last_error = f"cannot read free disk space: {err}"
            return True
        short = free < self.settings.reserve_mb * 2**20
        if short and not self.disk_short:
            log.error("camera %s: %.0f MB free, below the reserve of %d MB kept for the "
                      "journal: not recording", self.camera, free / 2**20,
                      self.settings.reserve_mb)
        self.disk_short = short
        return not short

    def _start(self, trigger: str, ref: str | None, start_t: float, rec: FrameRecord,
               image: np.ndarray | None, *, until_t: float | None = None,
               pre_roll: bool = True, from_ring: bool = False,
               start_wall_ms: int | None = None,
               continues: str | None = None) -> Recording | None:
        if not self._room():
            self.refused += 1
            return None
        s = self.settings
        first_t = start_t - s.pre_roll_s if pre_roll else rec.t
        frames = [f for f in self.ring.since(first_t) if f.t <= rec.t] if (pre_roll or from_ring) \
            else [rec]
        frames = [f for f in frames if (f.width, f.height) == (rec.width, rec.height)] or [rec]
        container = CODECS[s.codec][0]
        final = media_path(self.data_dir, CLIPS_DIR, self.camera, frames[0].wall_ms, trigger,
                           f".{container}")
        part = final.with_name(final.name + PART_SUFFIX)
        try:
            sink = make_sink(s.codec, part, rec.width, rec.height, s.fps)
        except (OSError, FootageError) as err:
            self.failures += 1
            self.last_error = f"cannot start a clip: {err}"
            log.error("camera %s: %s", self.camera, self.last_error)
            return None
        r = Recording(trigger, ref, start_t, part, final, sink, rec.width, rec.height,
                      until_t=until_t, continues=continues,
                      start_wall_ms=start_wall_ms if start_wall_ms is not None
                      else rec.wall_at(start_t))
        self.active.append(r)
        log.info("camera %s: %s clip started (%s, %d frames of pre-roll)", self.camera, trigger,
                 final.name, len(frames) - 1)
        for f in frames:
            self._write(r, f, image if f is rec else None)
        return r

    def _write(self, r: Recording, rec: FrameRecord, image: np.ndarray | None) -> None:
        if (rec.width, rec.height) != (r.width, r.height):
            self._end(r, "resolution_changed")
            return
        try:
            r.add(rec, image)
        except (OSError, FootageError, cv2.error) as err:
            self.failures += 1
            self.last_error = f"writing {r.part.name} failed: {err}"
            log.error("camera %s: %s", self.camera, self.last_error)
            self._end(r, "write_failed")
            return
        self._frames_since_check += 1
        if self._frames_since_check >= DISK_CHECK_EVERY:
            self._frames_since_check = 0
            if not self._room():
                self._end(r, "disk")

    def _end(self, r: Recording, reason: str) -> None:
        if r not in self.active:
            return
        self.active.remove(r)
        r.end = reason
        if r.frames == 0:
            r.sink.abort()
            r.part.unlink(missing_ok=True)
            return
        self.submit(lambda: self._finish(r))

    # -- the finisher thread ----------------------------------------------------------------

    def submit(self, job: Callable[[], None]) -> None:
        with self._pending_lock:
            self._pending += 1
        self._jobs.put(job)

    def _finish_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception as err:
                self.failures += 1
                self.last_error = str(err)
                log.exception("camera %s: finishing footage failed", self.camera)
            finally:
                with self._pending_lock:
                    self._pending -= 1
                    self._pending_lock.notify_all()

    def _finish(self, r: Recording) -> None:
        assert r.first is not None and r.last is not None
        s = self.settings
        span = r.last.t - r.first.t
        fps = (r.frames - 1) / span if r.frames > 1 and span > 0 else s.fps
        try:
            r.sink.finish(fps)
            os.replace(r.part, r.final)
            fsync_dir(r.final.parent)
            digest, size = sha256_file(r.final)
            write_durably(r.final.with_name(r.final.name + HASH_SUFFIX),
                           f"{digest}  {r.final.name}\n".encode())
        except OSError as err:
            r.sink.abort()
            r.part.unlink(missing_ok=True)
            raise FootageError(f"camera {self.camera}: cannot finish clip {r.final}: {err}") \
                from err
        snapshot = None
        best = r.best
        if best is not None:
            jpeg = self.encode(r.best_image, s.snapshot_quality) if r.best_image is not None \
                else best.jpeg
            try:
                snapshot = write_snapshot(self.data_dir, self.camera, r.trigger, best.wall_ms,
                                          jpeg, best.width, best.height)
                snapshot["taken"] = rfc3339_ms(best.wall_ms)
            except OSError as err:
                self.failures += 1
                self.last_error = f"cannot write the clip's snapshot: {err}"
                log.error("camera %s: %s", self.camera, self.last_error)
        if r.trigger == "motion":
            started = r.start_wall_ms if r.start_wall_ms is not None else r.first.wall_ms
            ended = r.last_motion_wall_ms if r.last_motion_wall_ms is not None else r.last.wall_ms
        elif r.trigger == "level":
            started, ended = r.first.wall_ms, r.last.wall_ms
        else:
            started = r.start_wall_ms if r.start_wall_ms is not None else r.first.wall_ms
            ended = r.last.wall_ms
        codec, container = r.sink.codec, r.sink.container
        data: dict[str, Any] = {
            "camera": self.camera,
            "trigger": r.trigger,
            "ref": r.ref,
            "started": rfc3339_ms(started),
            "ended": rfc3339_ms(max(started, ended)),
            "clip": {
                "path": r.final.relative_to(self.data_dir).as_posix(),
                "bytes": size,
                "sha256": digest,
                "codec": codec,
                "container": container,
                "width": r.width,
                "height": r.height,
                "fps": round(fps, 3),
                "frames": r.frames,
                "started": rfc3339_ms(r.first.wall_ms),
                "ended": rfc3339_ms(r.last.wall_ms),
                "duration_s": round(span + (1 / fps if fps > 0 else 0), 3),
            },
            "snapshot": snapshot,
            "peak_score": round(r.peak_score, 4),
            "motion_frames": r.motion_frames,
            "pre_roll_s": round(max(0.0, r.start_t - r.first.t), 3),
            "end": r.end,
        }
        if r.continues:
            data["continues"] = r.continues
        self.clips += 1
        log.info("camera %s: %s clip %s: %d frames, %.1f s, %d bytes (%s)", self.camera,
                 r.trigger, data["clip"]["path"], r.frames, span, size, r.end)
        self.on_event("footage", data)

    def snapshot(self, trigger: str, ref: str | None, rec: FrameRecord,
                 image: np.ndarray | None = None, extra: dict[str, Any] | None = None) -> None:
        """Write a snapshot of ``rec`` (re-encoded from ``image`` when given) and record
        a ``snapshot`` event, on the finisher thread."""
        def job() -> None:
            jpeg = self.encode(image, self.settings.snapshot_quality) if image is not None \
                else rec.jpeg
            meta = write_snapshot(self.data_dir, self.camera, trigger, rec.wall_ms, jpeg,
                                  rec.width, rec.height)
            data = {"camera": self.camera, "trigger": trigger, "ref": ref, **meta,
                    "taken": rfc3339_ms(rec.wall_ms), **(extra or {})}
            self.snapshots += 1
            self.on_event("snapshot", data)
        self.submit(job)

    # -- life cycle ------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every clip and snapshot handed to the finisher is done."""
        with self._pending_lock:
            return self._pending_lock.wait_for(lambda: self._pending == 0, timeout)

    def close(self, reason: str = "stopping", timeout: float = 30.0) -> None:
        """End every recording, finish the files, stop the finisher; safe twice."""
        if self._closed:
            return
        self.stop_all(reason)
        self.flush(timeout)
        self._closed = True
        self._jobs.put(None)
        self._finisher.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "recording": [r.trigger for r in self.active],
            "clips": self.clips,
            "snapshots": self.snapshots,
            "failures": self.failures,
            "refused": self.refused,
            "disk_short": self.disk_short,
            "ring_frames": len(self.ring),
            "ring_bytes": self.ring.bytes,
            "encode_ms": round(1000 * self.encode_s / self.encoded, 3) if self.encoded else None,
            "last_error": self.last_error,
        }


def recover_parts(data_dir: Path, camera: str, fps: float) -> Iterable[Path]:
    """Clips a crash left as ``….avi.part``: mend each (:func:`camera.avi.repair`) and
    return the finished paths; unusable ones are deleted."""
    from .avi import repair

    root = data_dir / CLIPS_DIR / camera
    if not root.is_dir():
        return []
    mended: list[Path] = []
    for part in sorted(root.rglob("*" + PART_SUFFIX)):
        final = part.with_name(part.name.removesuffix(PART_SUFFIX))
        kept = 0
        if final.suffix == ".avi":
            try:
                kept = repair(part, fps)
            except OSError as err:
                log.error("camera %s: cannot mend %s: %s", camera, part, err)
        if kept:
            os.replace(part, final)
            fsync_dir(final.parent)
            mended.append(final)
            log.warning("camera %s: mended %s after a crash (%d frames)", camera, final.name, kept)
        else:
            part.unlink(missing_ok=True)
            log.warning("camera %s: removed %s left by a crash (nothing usable)", camera,
                        part.name)
    return mended


_NAME_RE = re.compile(r"^(\d{8}T\d{6}\.\d{3})Z-([a-z]+)")
FOOTAGE_TRIGGERS = ("motion", "checkin", "alarm", "command", "level")


def recovered_footage(data_dir: Path, camera: str, path: Path) -> dict[str, Any]:
    """The ``footage`` event of a clip :func:`recover_parts` mended (``recovered: true``;
    no snapshot, no motion figures: they died with the process)."""
    from .avi import read_info

    info = read_info(path)
    digest, size = sha256_file(path)
    write_durably(path.with_name(path.name + HASH_SUFFIX), f"{digest}  {path.name}\n".encode())
    m = _NAME_RE.match(path.name)
    if m:
        start = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
        started_ms = int(start.timestamp() * 1000)
        trigger = m.group(2) if m.group(2) in FOOTAGE_TRIGGERS else "motion"
    else:
        started_ms, trigger = int(path.stat().st_mtime * 1000), "motion"
    duration = info.chunks / info.fps if info.fps else 0.0
    ended_ms = started_ms + round(duration * 1000)
    return {
        "camera": camera, "trigger": trigger, "ref": None,
        "started": rfc3339_ms(started_ms), "ended": rfc3339_ms(ended_ms),
        "clip": {"path": path.relative_to(data_dir).as_posix(), "bytes": size, "sha256": digest,
                 "codec": "mjpeg", "container": "avi", "width": info.width,
                 "height": info.height, "fps": round(info.fps, 3), "frames": info.chunks,
                 "started": rfc3339_ms(started_ms), "ended": rfc3339_ms(ended_ms),
                 "duration_s": round(duration, 3)},
        "snapshot": None, "peak_score": 0.0, "end": "crash", "recovered": True,
    }


