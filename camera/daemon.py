"""The camera component: supervises one worker process per camera, and retention.

``xunfang run -c FILE camera`` (the ``xunfang-camera`` service) runs this
component alone; ``xunfang run`` runs it next to the station and the uplink.
Either way the component itself never imports OpenCV: each configured camera
gets a worker process (:mod:`camera.worker`) that captures, analyses,
records and writes its own events to the journal. The component:

- starts each worker and feeds it the configuration;
- commits the worker's journal writes (events, cursors, its health state),
  which arrive as lines on its stdout: the process that runs OpenCV never
  holds the journal's write lock, so freezing it cannot delay a check-in;
- watches it: a worker that exits (a crash in a decoder: SIGSEGV, SIGABRT),
  that stops sending its status lines for ``hang_s`` (a hang), or whose
  resident memory passes ``memory_mb`` (a leak or a blow-up) is killed if
  need be, reported with a ``camera`` ``offline`` event that says why, and
  started again with backoff (1 s doubling to 60 s);
- runs :class:`~camera.retention.Retention` every ``RETENTION_EVERY_S``, and
  after new footage (at most every ``RETENTION_MIN_GAP_S``), and once more on
  the way out;
- stops the workers cleanly on the way out (each finishes its open clips).

A unit without ``[[cameras]]`` runs this loop idle, so ``xunfang run`` is the
same everywhere. Why processes and not threads: ``docs/camera.md``, Isolation.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from firmware_py.clock import rfc3339_ms
from firmware_py.config import CameraConfig
from firmware_py.exc import JournalError
from firmware_py.journal import Journal
from firmware_py.runtime import Component, UnitContext

from .files import device_key
from .retention import Retention

log = logging.getLogger("xunfang.camera")

__all__ = ["RETENTION_EVERY_S", "RETENTION_MIN_GAP_S", "CameraComponent", "CameraWorker"]

RETENTION_EVERY_S = 30.0
#: New footage brings retention forward, but not closer together than this.
RETENTION_MIN_GAP_S = 5.0
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
#: A worker that ran this long resets the restart backoff.
HEALTHY_RUN_S = 60.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class CameraWorker:
    """The supervisor's handle on one camera's worker process."""

    def __init__(self, cam: CameraConfig, config_doc: dict[str, Any], journal: Journal,
                 python: str = sys.executable) -> None:
        self.cam = cam
        self.journal = journal
        self.name = cam.name
        self._doc_line = json.dumps(config_doc, separators=(",", ":")) + "\n"
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.last_status: dict[str, Any] = {}
        self.last_beat = 0.0
        self.started_at = 0.0
        self.restarts = 0
        self.next_start = 0.0
        self.backoff = RESTART_MIN_S
        self.last_problem: str | None = None
        self.new_footage = False
        self.commits = 0
        self.commit_failures = 0
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        env.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        # The address-space cap is a backstop for a runaway allocation between two RSS
        # checks; virtual size runs far above resident (thread stacks, malloc arenas,
        # libraries: about 0.8 GB for an idle worker), hence the margin.
        cmd = [self.python, "-m", "camera.worker", "--camera", self.name,
               "--memory-mb", str(max(4 * self.cam.memory_mb, 2048))]
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            cmd.append("--verbose")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, text=True, env=env, close_fds=True)
        self.started_at = self.last_beat = time.monotonic()
        self._messages = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc, self._messages),
                                        name=f"camera-{self.name}-lines", daemon=True)
        self._reader.start()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(self._doc_line)
            self.proc.stdin.flush()
        except OSError as err:
            log.error("camera %s: cannot hand the worker its configuration: %s", self.name, err)
        log.info("camera %s: worker started (pid %d)", self.name, self.proc.pid)

    def _read(self, proc: subprocess.Popen[str], out: queue.Queue[dict[str, Any]]) -> None:
        """Status lines to the queue; journal writes committed here, in order."""
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue                        # a line cut short by a kill
                if not isinstance(msg, dict):
                    continue
                op = msg.get("op")
                if op == "status":
                    out.put(msg)
                elif op in ("append", "cursor", "state"):
                    self._commit(msg)
        except (OSError, ValueError):
            pass

    def _commit(self, msg: dict[str, Any]) -> None:
        try:
            if msg["op"] == "append":
                self.journal.append(str(msg["kind"]), msg.get("data") or {},
                                    state=msg.get("state") or None)
                if msg["kind"] in ("footage", "snapshot"):
                    self.new_footage = True
            elif msg["op"] == "cursor":
                self.journal.set_cursor(str(msg["name"]), int(msg["seq"]))
            else:
                self.journal.state_set(str(msg["key"]), msg.get("value"))
            self.commits += 1
        except (JournalError, ValueError, KeyError, TypeError) as err:
            self.commit_failures += 1
            log.error("camera %s: cannot record the worker's %s: %s", self.name,
                      msg.get("kind") or msg.get("op"), err)

    def wait_reader(self, timeout: float) -> None:
        """Let the reader commit what the worker wrote before it died."""
        if self._reader is not None:
            self._reader.join(timeout)

    def drain(self) -> None:
        """Take the status lines that came in; each one is a heartbeat."""
        while True:
            try:
                msg = self._messages.get_nowait()
            except queue.Empty:
                return
            self.last_beat = time.monotonic()
            self.last_status = msg

    def problem(self, now: float) -> str | None:
        """Why a running worker must be killed now (hung, too big), or None."""
        if not self.running:
            return None
        quiet = now - self.last_beat
        if quiet > self.cam.hang_s:
            return f"worker hung: no status for {quiet:.0f} s"
        rss = rss_mb(self.proc.pid) if self.proc is not None else None
        if rss is not None and rss > self.cam.memory_mb:
            return f"worker used {rss:.0f} MB of memory (limit {self.cam.memory_mb} MB)"
        return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                log.error("camera %s: worker %d does not die", self.name, self.proc.pid)

    def request_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except OSError:
                pass

    def wait_stopped(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("camera %s: worker did not stop within %.0f s; killing it", self.name,
                      timeout)
            self.kill()

    def health(self) -> dict[str, Any]:
        return {"pid": self.pid, "running": self.running, "restarts": self.restarts,
                "last_problem": self.last_problem, "commits": self.commits,
                "commit_failures": self.commit_failures,
                "rss_mb": round(r, 1) if self.pid and (r := rss_mb(self.pid)) else None,
                **{k: self.last_status.get(k) for k in ("state", "fps", "frames", "clips")}}


class CameraComponent(Component):
    name = "camera"
    step_s: ClassVar[float] = 0.5

    def __init__(self, ctx: UnitContext) -> None:
        super().__init__(ctx)
        self.workers: list[CameraWorker] = []
        self.retention: Retention | None = None
        self._next_retention = 0.0
        self._last_retention = -RETENTION_MIN_GAP_S

    def setup(self) -> None:
        cfg = self.ctx.config
        if not cfg.cameras:
            return
        doc = cfg.model_dump(mode="json")
        self.workers = [CameraWorker(cam, doc, self.ctx.journal) for cam in cfg.cameras]
        for cam in cfg.cameras:
            self._close_stale(cam.name)
        self.retention = Retention(cfg.unit.data_dir, cfg.cameras, self.ctx.journal,
                                   self.ctx.clock)
        self._next_retention = 0.0

    def step(self) -> None:
        if not self.workers:
            self.ctx.journal.wait_for_change(1.0)
            return
        now = time.monotonic()
        for w in self.workers:
            self._supervise(w, now)
            self.beat()
        fresh = any(w.new_footage for w in self.workers)
        if now >= self._next_retention or (fresh and now >= self._last_retention +
                                           RETENTION_MIN_GAP_S):
            self._retain(now)
        self.sleep(self.step_s)

    def _retain(self, now: float) -> None:
        if self.retention is None:
            return
        for w in self.workers:
            w.new_footage = False
        self._last_retention = now
        self._next_retention = now + RETENTION_EVERY_S
        try:
            self.retention.run()
        except (OSError, JournalError):
            self.log.exception("retention failed")

    def _supervise(self, w: CameraWorker, now: float) -> None:
        if w.proc is None:
            if now >= w.next_start:
                self._start(w)
            return
        w.drain()
        code = w.proc.poll()
        if code is None:
            why = w.problem(now)
            if why is None:
                return
            self.log.error("camera %s: %s; killing it", w.name, why)
            w.kill()
            self._gone(w, why, now)
            return
        why = f"worker {_exit_text(code)}"
        (self.log.error if code else self.log.warning)("camera %s: %s", w.name, why)
        self._gone(w, why, now)

    def _start(self, w: CameraWorker) -> None:
        try:
            w.start()
        except OSError as err:
            self.log.error("camera %s: cannot start a worker: %s", w.name, err)
            w.proc = None
            w.next_start = time.monotonic() + w.backoff
            w.backoff = min(w.backoff * 2, RESTART_MAX_S)

    def _gone(self, w: CameraWorker, why: str, now: float) -> None:
        """A worker died or was killed: say so, and plan its restart."""
        w.last_problem = why
        w.wait_reader(5.0)
        if now - w.started_at >= HEALTHY_RUN_S:
            w.backoff = RESTART_MIN_S
        w.restarts += 1
        w.proc = None
        w.next_start = now + w.backoff
        w.backoff = min(w.backoff * 2, RESTART_MAX_S)
        self._report_offline(w.name, why, w.restarts)

    def _close_stale(self, name: str) -> None:
        """A camera the journal still calls online was cut off without a word (the
        daemon was killed, the Pi lost power): say so before its worker starts."""
        try:
            stored = self.ctx.journal.state_get(device_key(name))
        except JournalError as err:
            self.log.error("camera %s: cannot read its state: %s", name, err)
            return
        if isinstance(stored, dict) and stored.get("state") in ("online", "tampered"):
            self._report_offline(name, "the camera daemon stopped without a word", 0)

    def _report_offline(self, name: str, why: str, restarts: int) -> None:
        journal = self.ctx.journal
        key = device_key(name)
        try:
            stored = journal.state_get(key) or {}
            state = {**(stored if isinstance(stored, dict) else {}), "state": "offline",
                     "detail": why, "since": rfc3339_ms(self.ctx.clock.wall_ms()),
                     "worker_restarts": restarts, "recording": []}
            if isinstance(stored, dict) and stored.get("state") in ("offline", "stopped"):
                journal.state_set(key, state)
            else:
                journal.append("camera", {"camera": name, "state": "offline", "detail": why},
                               state={key: state})
        except JournalError as err:
            self.log.error("camera %s: cannot record that its worker is gone: %s", name, err)

    def teardown(self) -> None:
        for w in self.workers:
            w.request_stop()
        # Inside the runtime's own 10 s for stopping a component.
        deadline = time.monotonic() + 8.0
        for w in self.workers:
            w.wait_stopped(max(0.5, deadline - time.monotonic()))
            w.wait_reader(max(0.5, deadline - time.monotonic()))
            self.beat()
        if self.workers:
            self._retain(time.monotonic())      # the last clips count against the quota too
        self.workers = []

    def status(self) -> str:
        if not self.workers:
            return "no cameras"
        return ", ".join(f"{w.name} {w.last_status.get('state', 'starting')}"
                         if w.running else f"{w.name} down" for w in self.workers)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = super().health()
        out["workers"] = {w.name: w.health() for w in self.workers}
        if self.retention is not None:
            out["retention"] = self.retention.stats()
        return out
