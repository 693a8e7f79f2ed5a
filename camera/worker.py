"""The camera worker: one camera's capture and pipeline, in a process of its own.

The camera daemon (:mod:`camera.daemon`) starts one worker per camera::

    python -m camera.worker --camera gate

and writes the unit's configuration to its stdin as one JSON line. Then stdin
carries ``stop``; end of file means the supervisor is gone, and the worker
stops too. On its stdout the worker writes JSON lines (:class:`PipeWriter`):

``{"op": "status", …}``
    every ``STATUS_EVERY_S``, from its main loop (never from a helper
    thread, so the lines stop when the loop hangs): the heartbeat the
    supervisor watches;
``{"op": "append", …}``, ``{"op": "cursor", …}``, ``{"op": "state", …}``
    the journal writes of :class:`~camera.pipeline.CameraPipeline`, which
    the supervisor commits: this process reads the journal but never holds
    its write lock, so freezing it at any instant cannot make a check-in wait.

Logs go to stderr, and so does anything a library prints (the protocol keeps
its own copy of the original stdout).

Everything OpenCV does for this camera (decoding, scaling, encoding) happens
here: a crash, a hang or a memory blow-up in it ends this process, which the
supervisor restarts; the daemon, the station and the uplink never notice.

Exit status: 0 stopped, 2 bad configuration, 3 the capture backend hung.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

STATUS_EVERY_S = 0.5
EXIT_OK, EXIT_CONFIG, EXIT_STUCK = 0, 2, 3

log = logging.getLogger("xunfang.camera.worker")


def limit_memory(mb: int) -> str | None:
    """Cap the address space at ``mb`` MB (RLIMIT_AS), so that a runaway allocation fails
    inside this process instead of starving the Pi. Returns why it could not, or None.

    Under systemd the service's syscall filter forbids setrlimit (``@resources``):
    there MemoryMax= on the service does the job (docs/camera.md).
    """
    limit = mb * 2**20
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft == resource.RLIM_INFINITY or soft > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return None
    except (OSError, ValueError) as err:
        return str(err)


def volunteer_for_oom_killer() -> None:
    """Under memory pressure the kernel kills the process with the highest score: make it
    this one, never the station or the uplink (raising one's own score needs no privilege)."""
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
            f.write("1000")
    except OSError as err:
        log.debug("cannot raise oom_score_adj: %s", err)


class PipeWriter:
    """The pipeline's journal writes, as lines for the supervisor to commit."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()

    def append(self, kind: str, data: dict[str, Any],
               state: dict[str, Any] | None = None) -> None:
        self.send({"op": "append", "kind": kind, "data": data, "state": state})

    def set_cursor(self, name: str, seq: int) -> None:
        self.send({"op": "cursor", "name": name, "seq": seq})

    def state_set(self, key: str, value: Any) -> None:
        self.send({"op": "state", "key": key, "value": value})


def _watch_stdin(stop: threading.Event, stream: TextIO) -> None:
    try:
        for line in stream:
            if line.strip() == "stop":
                break
    except (OSError, ValueError):
        pass
    stop.set()


def run(camera: str, doc: dict[str, Any], out: PipeWriter, stop: threading.Event) -> int:
    """The worker's life, once the config is read."""
    import cv2

    from firmware_py.clock import SystemClock
    from firmware_py.config import parse_config
    from firmware_py.exc import ConfigInvalid
    from firmware_py.journal import Journal

    from .capture import Capture
    from .exc import CaptureStuck
    from .pipeline import CameraPipeline
    from .recorder import recover_parts, recovered_footage

    try:
        cfg = parse_config(doc, "<config from the camera daemon>")
    except ConfigInvalid as err:
        log.critical("%s", err)
        return EXIT_CONFIG
    cam = next((c for c in cfg.cameras if c.name == camera), None)
    if cam is None:
        log.critical("no camera %r in the configuration", camera)
        return EXIT_CONFIG
    # Two cores: leave one to the station and the uplink.
    cv2.setNumThreads(1)
    clock = SystemClock()
    data_dir = Path(cfg.unit.data_dir)
    journal = Journal(cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site, clock=clock)
    pipeline: CameraPipeline | None = None
    capture: Capture | None = None
    code = EXIT_OK
    try:
        for path in recover_parts(data_dir, cam.name, cam.fps):
            out.append("footage", recovered_footage(data_dir, cam.name, path))
        pipeline = CameraPipeline(cam, data_dir, journal, clock, writer=out)
        size = (cam.width, cam.height) if cam.width and cam.height else None
        capture = Capture(cam.source, name=cam.name, fps_cap=cam.fps, stall_s=cam.stall_s,
                          clock=clock, size=size).start()
        last_seq = 0
        next_status = 0.0
        beat = 0
        while not stop.is_set():
            frame = capture.wait(last_seq, 0.2)
            for change in capture.check():
                pipeline.capture_state(change)
            if frame is not None:
                last_seq = frame.seq
                pipeline.feed(frame)
            pipeline.stats_extra = {"fps": capture.stats()["fps"],
                                    "source_fps": capture.source_fps, "pid": os.getpid()}
            pipeline.poll()
            now = time.monotonic()
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                beat += 1
                cs = capture.stats()
                ps = pipeline.stats()
                out.send({"op": "status", "beat": beat, "pid": os.getpid(),
                          "state": ps["state"], "tamper": ps["tamper"], "fps": cs["fps"],
                          "frames": cs["frames"], "clips": ps["clips"],
                          "snapshots": ps["snapshots"], "recording": ps["recording"],
                          "level": ps["level"]})
    except CaptureStuck as err:
        log.critical("%s: exiting so that the supervisor starts a fresh worker", err)
        code = EXIT_STUCK
    except BrokenPipeError:
        log.info("camera %s: the supervisor is gone; stopping", camera)
    finally:
        if pipeline is not None:
            try:
                pipeline.close("stopping")
            except BrokenPipeError:
                log.warning("camera %s: the supervisor is gone: the last clip's event is "
                            "lost (the clip is on disk)", camera)
        if capture is not None:
            capture.close(timeout=2.0)
        journal.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camera.worker",
                                     description="one camera's capture and analysis")
    parser.add_argument("--camera", required=True, help="name of the camera in the config")
    parser.add_argument("--memory-mb", type=int, default=0,
                        help="cap the address space (RLIMIT_AS) at this many MB")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    # The protocol keeps the real stdout; whatever else prints goes to stderr.
    status = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    from firmware_py.runtime import setup_logging

    setup_logging(args.verbose)
    volunteer_for_oom_killer()
    if args.memory_mb:
        why = limit_memory(args.memory_mb)
        if why:
            log.info("camera %s: no address-space limit (%s); the supervisor still watches "
                     "the memory", args.camera, why)
    line = sys.stdin.readline()
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as err:
        log.critical("camera %s: no configuration on stdin: %s", args.camera, err)
        return EXIT_CONFIG
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # systemd (KillMode=control-group) and a terminal's Ctrl-C signal the whole
        # group: finish the open clips, like a "stop" from the supervisor.
        log.info("camera %s: %s: stopping", args.camera, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=_watch_stdin, args=(stop, sys.stdin), name="control",
                     daemon=True).start()
    return run(args.camera, doc, PipeWriter(status), stop)


if __name__ == "__main__":
    sys.exit(main())
