"""One camera's work, frame by frame: motion, tamper, recording, photos, events.

:class:`CameraPipeline` takes frames (from a :class:`~camera.capture.Capture`
in the worker process, or straight from a file in tests and the benchmark)
and the capture's state changes, and turns them into journal events:

- ``camera`` ``online``/``offline`` (from the capture) and ``tampered``/
  ``restored`` (from :mod:`camera.tamper`), each written together with the
  health state ``device/cameras/{name}`` in one transaction;
- ``footage`` for each clip and ``snapshot`` for each photo (from
  :mod:`camera.recorder`);

and it carries out what the journal asks of the camera:

- every ``checkin`` event (followed with the cursor
  ``camera-checkins/{name}``) gets a ``snapshot`` whose ``ref`` is the
  check-in's id, taken from the ring buffer at the moment of the tap, not
  when the camera got round to it (``offset_s`` says how far apart);
- the inbox (consumer ``camera/{name}``): ``snapshot`` and ``clip`` commands
  from the centre (``ref`` is the command id), and the station's alarm
  requests (``{"trigger": "alarm", "ref": <alarm event id>}``), which get a
  snapshot and an ``alarm_clip_s`` clip;
- the alert level: motion sensitivity per level, and continuous recording
  in segments at the levels of ``continuous_levels``.

The pipeline *reads* the journal itself but *writes* through a
:class:`JournalWriter`: in tests that is the journal (:class:`DirectWriter`);
in the worker process it is a pipe to the supervisor, which commits. So the
process that runs OpenCV never holds the journal's write lock, and a worker
frozen at any instant (a hang with the GIL held, SIGSTOP, swapping) cannot
make a check-in wait for the lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from firmware_py.clock import Clock, rfc3339_ms
from firmware_py.config import CameraConfig
from firmware_py.desired import InboxReader, current_level
from firmware_py.exc import JournalError
from firmware_py.journal import Journal

from .capture import Frame, StateChange
from .files import checkin_cursor, device_key
from .motion import MotionDetector, MotionResult, MotionSettings, analysis_frame
from .recorder import FrameRecord, Recorder, RecorderSettings
from .tamper import TamperChange, TamperDetector, TamperSettings

log = logging.getLogger("xunfang.camera")

__all__ = ["CameraPipeline", "DirectWriter", "JournalWriter", "motion_settings",
           "recorder_settings", "tamper_settings"]

SNAPSHOT_TRIGGERS = ("checkin", "alarm", "command")
#: A request that finds the camera without a picture waits this long, then is dropped.
REQUEST_WAIT_S = 60.0
LEVEL_EVERY_S = 2.0
STATE_EVERY_S = 30.0


class JournalWriter(Protocol):
    """Where the pipeline's journal writes go (see the module doc). Each may raise
    :class:`~firmware_py.exc.JournalError`."""

    def append(self, kind: str, data: dict[str, Any],
               state: dict[str, Any] | None = None) -> None: ...

    def set_cursor(self, name: str, seq: int) -> None: ...

    def state_set(self, key: str, value: Any) -> None: ...


class DirectWriter:
    """Writes straight into a journal (tests, and any single-process use)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def append(self, kind: str, data: dict[str, Any],
               state: dict[str, Any] | None = None) -> None:
        self.journal.append(kind, data, state=state)

    def set_cursor(self, name: str, seq: int) -> None:
        self.journal.set_cursor(name, seq)

    def state_set(self, key: str, value: Any) -> None:
        self.journal.state_set(key, value)


def motion_settings(cam: CameraConfig) -> MotionSettings:
    masks = tuple(tuple((float(x), float(y)) for x, y in poly) for poly in cam.masks)
    return MotionSettings(threshold=cam.motion_threshold, min_area=cam.motion_min_area,
                          background_s=cam.background_s, global_change=cam.global_change,
                          masks=masks)


def tamper_settings(cam: CameraConfig) -> TamperSettings:
    return TamperSettings(confirm_s=cam.tamper_confirm_s, learn_s=cam.tamper_learn_s,
                          defocus_ratio=cam.defocus_ratio, moved_match=cam.moved_match,
                          frozen_s=cam.frozen_s)


def recorder_settings(cam: CameraConfig) -> RecorderSettings:
    return RecorderSettings(pre_roll_s=cam.pre_roll_s, post_roll_s=cam.post_roll_s,
                            max_clip_s=cam.max_clip_s, motion_frames=cam.motion_frames,
                            codec=cam.codec, jpeg_quality=cam.jpeg_quality,
                            segment_s=cam.segment_s, fps=cam.fps, reserve_mb=cam.reserve_mb)


class CameraPipeline:
    """See the module doc. Not thread-safe: one thread feeds it (events it
    records may come from the recorder's finisher thread; the journal is)."""

    def __init__(self, cam: CameraConfig, data_dir: Path, journal: Journal, clock: Clock,
                 free_bytes: Callable[[], int] | None = None,
                 writer: JournalWriter | None = None) -> None:
        self.cam = cam
        self.name = cam.name
        self.data_dir = Path(data_dir)
        self.journal = journal
        self.writer: JournalWriter = writer or DirectWriter(journal)
        self.clock = clock
        self.motion = MotionDetector(motion_settings(cam))
        self.tamper = TamperDetector(tamper_settings(cam)) if cam.tamper else None
        self.recorder = Recorder(cam.name, self.data_dir, recorder_settings(cam),
                                 on_event=self._recorded, free_bytes=free_bytes)
        self.inbox = InboxReader(journal, f"camera/{cam.name}", ["snapshot", "clip"])
        self.state = "starting"
        self.detail: str | None = None
        self.since_ms = clock.wall_ms()
        self.level = 3
        self.last: FrameRecord | None = None
        self.last_image: np.ndarray | None = None
        self.last_result: MotionResult | None = None
        self._checkin_seen = 0
        self._inbox_seen = 0
        self._next_level = 0.0
        self._next_state = 0.0
        self._tamper_since: dict[str, float] = {}
        self.stats_extra: dict[str, Any] = {}
        # Counters for health and the benchmark.
        self.frames = 0
        self.motion_frames = 0
        self.analysis_s = 0.0
        self.checkin_snapshots = 0
        self.checkins_missed = 0
        self.requests_dropped = 0
        self.event_failures = 0

    # -- events ---------------------------------------------------------------------------

    def _device(self) -> dict[str, Any]:
        tamper = self.tamper.active if self.tamper is not None else None
        state = "tampered" if tamper is not None and self.state == "online" else self.state
        rec = self.recorder.stats()
        try:
            storage = self.journal.state_get(f"footage/{self.name}")   # from retention
        except JournalError:
            storage = None
        return {
            "state": state, "since": rfc3339_ms(self.since_ms), "detail": self.detail,
            "tamper": tamper, "level": self.level, "frames": self.frames,
            "recording": rec["recording"], "clips": rec["clips"],
            "snapshots": rec["snapshots"],
            "disk_short": rec["disk_short"] or bool(isinstance(storage, dict) and
                                                    storage.get("disk_short")),
            "checkins_missed": self.checkins_missed, "last_error": rec["last_error"],
            "storage": storage, **self.stats_extra,
        }

    def _append(self, kind: str, data: dict[str, Any], with_state: bool = False) -> None:
        """Record an event; a journal that fails is logged and counted, never raised
        into the capture loop (the footage stays on disk for retention to find)."""
        try:
            self.writer.append(kind, data,
                               state={device_key(self.name): self._device()} if with_state
                               else None)
        except (JournalError, ValueError) as err:
            self.event_failures += 1
            log.error("camera %s: cannot record %s event: %s", self.name, kind, err)

    def _recorded(self, kind: str, data: dict[str, Any]) -> None:
        self._append(kind, data)

    def write_state(self) -> None:
        try:
            self.writer.state_set(device_key(self.name), self._device())
        except JournalError as err:
            log.error("camera %s: cannot write its health state: %s", self.name, err)

    def _camera_event(self, state: str, detail: str | None, **extra: Any) -> None:
        self._append("camera", {"camera": self.name, "state": state, "detail": detail, **extra},
                     with_state=True)

    # -- capture state ----------------------------------------------------------------------

    def capture_state(self, change: StateChange) -> None:
        """The capture went online or offline."""
        if change.state == self.state:
            return
        stored = self.journal.state_get(device_key(self.name)) or {}
        was = stored.get("state") if isinstance(stored, dict) else None
        self.state = change.state
        self.detail = change.detail
        self.since_ms = self.clock.wall_ms()
        if change.state == "offline":
            self.recorder.stop_all("offline")
            self.motion.reset()
        if was == change.state or (was == "tampered" and change.state == "online"):
            self.write_state()                       # already said (by the supervisor)
            return
        self._camera_event(change.state, change.detail)

    # -- frames -----------------------------------------------------------------------------

    def feed(self, frame: Frame) -> MotionResult:
        """Analyse, judge, encode and record one frame."""
        t0 = time.perf_counter()
        grey = analysis_frame(frame.image, self.cam.motion_rows)
        result = self.motion.detect(grey, frame.t)
        changes = self.tamper.update(grey, frame.t, result.score) if self.tamper else []
        self.analysis_s += time.perf_counter() - t0
        if self.tamper is not None and self.tamper.active is not None:
            # A covered or turned camera is not "motion": no clip of a black lens.
            result = MotionResult(False, result.score, result.boxes, result.recalibrating,
                                  result.global_change)
        jpeg = self.recorder.encode(frame.image)
        rec = FrameRecord(frame.t, frame.wall_ms, jpeg, frame.width, frame.height,
                          result.score, result.motion)
        self.recorder.add(rec, frame.image)
        self.last, self.last_image, self.last_result = rec, frame.image, result
        self.frames += 1
        self.motion_frames += result.motion
        for change in changes:
            self._tamper_event(change)
        return result

    def _tamper_event(self, change: TamperChange) -> None:
        extra: dict[str, Any] = {"features": change.features, "baseline": change.baseline}
        if change.state == "tampered":
            self._tamper_since[change.kind] = change.t
            log.warning("camera %s tampered: %s (%s)", self.name, change.kind, change.features)
        else:
            since = self._tamper_since.pop(change.kind, None)
            if since is not None:
                extra["duration_s"] = round(change.t - since, 3)
            log.warning("camera %s restored after %s", self.name, change.kind)
        self._camera_event(change.state, change.kind, **extra)

    # -- requests ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Level, check-ins, inbox, and the periodic health state; call often."""
        now = self.clock.monotonic()
        if now >= self._next_level:
            self._next_level = now + LEVEL_EVERY_S
            self.refresh_level()
        if self.cam.checkin_snapshots:
            self._checkins()
        self._inbox()
        if now >= self._next_state:
            self._next_state = now + STATE_EVERY_S
            self.write_state()

    def refresh_level(self) -> None:
        try:
            level = current_level(self.journal, self.clock).level
        except JournalError as err:
            log.error("camera %s: cannot read the alert level: %s", self.name, err)
            return
        self.set_level(level)

    def set_level(self, level: int) -> None:
        if level != self.level:
            log.info("camera %s: alert level %d", self.name, level)
        self.level = level
        self.motion.sensitivity = next(
            (float(v) for k, v in self.cam.sensitivity.items() if k == level), 1.0)
        self.recorder.set_continuous(level in self.cam.continuous_levels)

    def _has_picture(self) -> bool:
        return self.state == "online" and self.last is not None

    def _checkins(self) -> None:
        cursor = max(self.journal.cursor(checkin_cursor(self.name)), self._checkin_seen)
        events = self.journal.events_after(cursor, limit=100, kinds=["checkin"])
        if not events:
            return
        ring = self.recorder.ring
        now = self.clock.monotonic()
        tolerance = max(2.0 / self.cam.fps, 1.0)
        for e in events:
            t = e.mono if e.boot_id == self.clock.boot_id() else None
            newest = ring.newest
            if t is not None and (newest is None or t > newest.t + 1e-6) and \
                    now - t < self.cam.stall_s + 1.0:
                break                                # the frame of that moment is on its way
            rec = ring.nearest(t) if t is not None else None
            if rec is None or t is None or abs(rec.t - t) > tolerance:
                self.checkins_missed += 1
                log.warning("camera %s: no picture from the moment of check-in %s "
                            "(camera %s)", self.name, e.id, self.state)
                self._done_checkin(e.seq)
                continue
            extra = {"offset_s": round(rec.t - t, 3), "reader": e.data.get("reader")}
            self.recorder.snapshot("checkin", e.id, rec, extra=extra)
            self.checkin_snapshots += 1
            self._checkin_seen = e.seq
            self.recorder.submit(lambda seq=e.seq: self._done_checkin(seq))

    def _done_checkin(self, seq: int) -> None:
        self._checkin_seen = max(self._checkin_seen, seq)
        try:
            self.writer.set_cursor(checkin_cursor(self.name), seq)
        except JournalError as err:
            log.error("camera %s: cannot move the check-in cursor: %s", self.name, err)

    def _inbox(self) -> None:
        try:
            # The cursor in the journal may lag what was done (the writer commits later).
            position = max(self.inbox.position, self._inbox_seen)
            entries = self.journal.inbox_after(position, self.inbox.names)
        except JournalError as err:
            log.error("camera %s: cannot read the inbox: %s", self.name, err)
            return
        for entry in entries:
            args = entry.args
            if args.get("camera") not in (None, self.name):
                self._inbox_done(entry.n)
                continue
            if not self._has_picture():
                age_s = (self.clock.wall_ms() - entry.received_ms) / 1000
                if age_s < REQUEST_WAIT_S:
                    break                            # wait for a picture
                self.requests_dropped += 1
                log.error("camera %s: dropped %s request %s: no picture for %.0f s",
                          self.name, entry.name, entry.command_id, age_s)
                self._inbox_done(entry.n)
                continue
            assert self.last is not None
            trigger = args.get("trigger") if args.get("trigger") in SNAPSHOT_TRIGGERS \
                else "command"
            ref = args.get("ref") if isinstance(args.get("ref"), str) else entry.command_id
            if entry.name == "snapshot":
                self.recorder.snapshot(trigger, ref, self.last, image=self.last_image)
                if trigger == "alarm" and self.cam.alarm_clip_s:
                    self.recorder.request("alarm", ref, self.cam.alarm_clip_s)
            else:
                seconds = args.get("seconds")
                seconds = seconds if isinstance(seconds, int) and seconds > 0 else \
                    self.cam.clip_s
                self.recorder.request("command", ref, seconds)
            log.info("camera %s: %s for %s (%s)", self.name, entry.name, trigger, ref)
            self._inbox_done(entry.n)

    def _inbox_done(self, n: int) -> None:
        self._inbox_seen = max(self._inbox_seen, n)
        try:
            self.writer.set_cursor(self.inbox.cursor_name, n)
        except JournalError as err:
            log.error("camera %s: cannot move the inbox cursor: %s", self.name, err)

    # -- life cycle -----------------------------------------------------------------------

    def close(self, reason: str = "stopping") -> None:
        """Finish every clip and photo; the device state says ``stopped``."""
        self.recorder.close(reason)
        self.state = "stopped"
        self.since_ms = self.clock.wall_ms()
        self.write_state()

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state, "level": self.level, "frames": self.frames,
            "motion_frames": self.motion_frames,
            "analysis_ms": round(1000 * self.analysis_s / self.frames, 3) if self.frames
            else None,
            "tamper": self.tamper.active if self.tamper else None,
            "checkin_snapshots": self.checkin_snapshots, "checkins_missed": self.checkins_missed,
            "requests_dropped": self.requests_dropped, **self.recorder.stats(),
        }
