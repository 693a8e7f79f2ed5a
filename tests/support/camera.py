"""Camera test rigs: a pipeline on a manual clock, and the daemon as a process.

:func:`make_rig` drives a :class:`camera.pipeline.CameraPipeline` through a
video file on a manual clock.

The frames are the ones a live :class:`camera.capture.Capture` would deliver
(:func:`camera.capture.read_file_frames`), stamped with the times a camera
started at ``clock.monotonic()`` would give them; the clock follows the
frames, so journal events appended in between (check-ins, commands) carry the
same time base. No threads, no waiting: a 60-second scene runs in about a
second, and the times in the events are exact.

:class:`CameraDaemon` runs ``xunfang run -c FILE camera`` in a session of its
own; :class:`StationWriter` plays the station next to it (a check-in every
50 ms, each commit timed); :func:`wait_event` and :func:`worker_pid` wait on
the journal with deadlines.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from camera.capture import Frame, StateChange, read_file_frames
from camera.pipeline import CameraPipeline
from firmware_py.clock import ManualClock, SystemClock, parse_rfc3339
from firmware_py.config import UnitConfig
from firmware_py.journal import Event, Journal
from tests.support.schemas import validate_event
from tests.support.units import make_config

T0 = 1000.0
UNIT, SITE = "zt-pp-03", "zhuantang"
CHECKIN: dict[str, Any] = {"card": "14008EC793", "reader": "main", "decision": "accepted",
                           "badge": "P-017", "role": "patrol", "visit": None}


@dataclass
class Rig:
    cfg: UnitConfig
    clock: ManualClock
    journal: Journal
    pipeline: CameraPipeline
    wall0_ms: int

    @property
    def data_dir(self) -> Path:
        return self.cfg.unit.data_dir

    def play(self, path: Path, fps: float | None = None,
             each: Callable[[Frame], None] | None = None, poll: bool = True) -> int:
        """Feed every frame of ``path``; ``each(frame)`` runs before the frame is fed."""
        fps = fps or self.cfg.cameras[0].fps
        start = self.clock.monotonic()
        wall = self.clock.wall_ms()
        n = 0
        for frame in read_file_frames(path, fps_cap=fps, t0=start, wall0_ms=wall):
            self.clock.advance(frame.t - self.clock.monotonic())
            self.clock.set_wall(frame.wall_ms)
            if each is not None:
                each(frame)
            self.pipeline.feed(frame)
            if poll:
                self.pipeline.poll()
            n += 1
        # The next file starts one frame period later, as a live camera would go on.
        self.clock.advance(1.0 / fps)
        return n

    def online(self) -> None:
        self.pipeline.capture_state(StateChange("online", "test footage", self.clock.monotonic()))

    def offline(self) -> None:
        self.pipeline.capture_state(StateChange("offline", "test: stream gone",
                                                self.clock.monotonic()))

    def finish(self) -> None:
        assert self.pipeline.recorder.flush(30), "the recorder's finisher did not finish"

    def events(self, kind: str | None = None) -> list[Event]:
        out = self.journal.events_after(0, limit=10_000, kinds=[kind] if kind else None)
        for e in out:
            validate_event(e.envelope())
        return out

    def rel_s(self, rfc3339: str) -> float:
        """Seconds from the start of the footage to an event time."""
        return (parse_rfc3339(rfc3339).timestamp() * 1000 - self.wall0_ms) / 1000

    def close(self) -> None:
        self.pipeline.close()
        self.journal.close()


def make_rig(tmp_path: Path, free_bytes: Callable[[], int] | None = None,
             **camera: Any) -> Rig:
    """A pipeline for one camera ``gate`` on a manual clock, its journal in ``tmp_path``."""
    cam = {"name": "gate", "source": str(tmp_path / "scene.avi"), **camera}
    cfg = make_config(tmp_path / "data", cameras=[cam])
    clock = ManualClock(monotonic=T0)
    journal = Journal(cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site, clock=clock)
    pipeline = CameraPipeline(cfg.cameras[0], cfg.unit.data_dir, journal, clock,
                              free_bytes=free_bytes)
    rig = Rig(cfg, clock, journal, pipeline, clock.wall_ms())
    rig.online()
    return rig


def decode_all(path: Path) -> list[Any]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def check_media(data_dir: Path, meta: dict[str, Any]) -> Path:
    """The file a ``clip`` or ``snapshot`` object names exists with its size and hash."""
    path = data_dir / meta["path"]
    blob = path.read_bytes()
    assert len(blob) == meta["bytes"], (path, len(blob), meta["bytes"])
    assert hashlib.sha256(blob).hexdigest() == meta["sha256"], path
    return path


# -- the camera daemon as a process (isolation tests, soak) ----------------------------


class StationWriter(threading.Thread):
    """Plays the station: commits a check-in every 50 ms and times each commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="station-writer", daemon=True)
        self.journal = Journal(path, unit=UNIT, site=SITE, clock=SystemClock())
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.wait(0.05):
            t0 = time.monotonic()
            try:
                self.journal.append("checkin", CHECKIN)
            except BaseException as err:  # every failure is a finding
                self.errors.append(err)
            self.latencies.append(time.monotonic() - t0)

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        self.journal.close()


class CameraDaemon:
    """``xunfang run -c FILE camera`` in its own session (so its worker can be found
    and nothing outlives the test)."""

    def __init__(self, cfg_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_py.cli", "run", "-c", str(cfg_path), "camera"],
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._err: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    @property
    def log(self) -> str:
        return "".join(self._err)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def cleanup(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def wait_event(journal: Journal, after: int, kind: str, timeout: float,
               **match: Any) -> Event:
    """The first event of ``kind`` after seq ``after`` whose data matches; fail at the
    deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in journal.events_after(after, limit=10_000, kinds=[kind]):
            if all(e.data.get(k) == v if not callable(v) else v(e.data.get(k))
                   for k, v in match.items()):
                return e
        journal.wait_for_change(0.2)
    raise AssertionError(f"no {kind} event {match} within {timeout} s")


def worker_pid(journal: Journal, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = journal.state_get("device/cameras/gate") or {}
        pid = state.get("pid")
        if isinstance(pid, int) and state.get("state") == "online":
            try:
                os.kill(pid, 0)
                return pid
            except ProcessLookupError:
                pass
        journal.wait_for_change(0.2)
    raise AssertionError("the camera worker never said its pid")


def open_journal(data: Path) -> Journal:
    """The unit's journal, opened (made) by the test before the daemon starts."""
    return Journal(data / "journal.db", unit=UNIT, site=SITE, clock=SystemClock())


