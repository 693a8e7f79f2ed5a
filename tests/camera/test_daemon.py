"""Isolation: the camera runs as ``xunfang run -c FILE camera``, with OpenCV in a
worker process of its own. A crash, a hang or a memory blow-up there, or the
whole camera daemon dying, never holds up check-ins: a station-like writer
commits check-ins to the same journal all along, and each commit stays fast.
Each failure is a ``camera`` ``offline`` event saying why, and the camera comes
back by itself; check-ins while it was up get their photos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from camera.avi import MjpegAviWriter
from tests.support.camera import (
    CameraDaemon,
    StationWriter,
    open_journal,
    wait_event,
    worker_pid,
)
from tests.support.footage import bunny_still_motion_still, write_scene
from tests.support.schemas import validate_event
from tests.support.units import write_unit_config

pytestmark = pytest.mark.timeout(90)

@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "bunny.avi"
    write_scene(path, bunny_still_motion_still(still_s=3.0, tail_s=2.0))
    return path


@pytest.fixture
def rig(tmp_path: Path, scene: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    made: dict[str, Any] = {"data": data, "daemons": [], "writer": None}

    def start(**camera: Any) -> CameraDaemon:
        cam = {"name": "gate", "source": str(scene), "stall_s": 2.0, "hang_s": 3.0,
               "tamper": False, **camera}
        cfg_path = write_unit_config(tmp_path / "unit.toml", data, cameras=[cam])
        d = CameraDaemon(cfg_path)
        made["daemons"].append(d)
        return d

    made["start"] = start
    try:
        yield made
    finally:
        if made["writer"] is not None and made["writer"].is_alive():
            made["writer"].finish()
        for d in made["daemons"]:
            d.cleanup()
            print(f"--- camera daemon log ---\n{d.log[-6000:]}")


def test_a_crashed_or_hung_worker_is_restarted_and_checkins_never_wait(
        rig: dict[str, Any]) -> None:
    j = open_journal(rig["data"])
    daemon = rig["start"]()
    try:
        wait_event(j, 0, "camera", 30, state="online")
        writer = rig["writer"] = StationWriter(rig["data"] / "journal.db")
        writer.start()
        wait_event(j, 0, "snapshot", 10, trigger="checkin")
        # A crash in a decoder: the worker dies of SIGSEGV.
        pid = worker_pid(j)
        mark = j.last_seq()
        os.kill(pid, signal.SIGSEGV)
        off = wait_event(j, mark, "camera", 15, state="offline")
        assert off.data["detail"] == "worker killed by SIGSEGV"
        back = wait_event(j, off.seq, "camera", 20, state="online")
        wait_event(j, back.seq, "snapshot", 10, trigger="checkin")
        # A hang: the worker stops dead (SIGSTOP); after hang_s it is killed.
        pid2 = worker_pid(j)
        assert pid2 != pid
        os.kill(pid2, signal.SIGSTOP)
        hung = wait_event(j, back.seq, "camera", 15, state="offline")
        assert hung.data["detail"].startswith("worker hung: no status for")
        again = wait_event(j, hung.seq, "camera", 20, state="online")
        wait_event(j, again.seq, "snapshot", 10, trigger="checkin")
        # The daemon itself never stopped, and the station never waited.
        assert daemon.proc.poll() is None
        writer.finish()
        assert writer.errors == []
        assert len(writer.latencies) >= 60
        assert max(writer.latencies) < 1.0, sorted(writer.latencies)[-5:]
        # Check-ins while the camera was up have their photos, of their moment.
        snaps = [e for e in j.events_after(0, limit=10_000, kinds=["snapshot"])]
        assert len(snaps) >= 3
        for e in j.events_after(0, limit=10_000):
            validate_event(e.envelope())
        checkin_ids = {e.id for e in j.events_after(0, limit=10_000, kinds=["checkin"])}
        for s in snaps:
            assert s.data["ref"] in checkin_ids and abs(s.data["offset_s"]) <= 1.0
            assert (rig["data"] / s.data["path"]).is_file()
        assert daemon.terminate() == 0
    finally:
        j.close()


def test_the_supervisor_never_loads_opencv() -> None:
    """The daemon's own process stays small and out of OpenCV's way: only workers load it."""
    code = ("import sys, camera.daemon, firmware_py.cli; "
            "print(sorted(m for m in ('cv2', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def _huge_frames(path: Path, side: int = 5000, n: int = 3) -> Path:
    """An MJPEG stream whose frames decode to 5000x5000: some 110 MB each, a malformed
    or hostile stream making OpenCV balloon."""
    image = np.zeros((side, side, 3), np.uint8)
    image[::50] = 255
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes()
    with MjpegAviWriter(path, side, side) as avi:
        for _ in range(n):
            avi.add(jpeg)
        avi.finish(5.0)
    return path


def test_a_memory_blow_up_kills_only_the_worker(rig: dict[str, Any], tmp_path: Path,
                                                scene: Path) -> None:
    source = tmp_path / "camera.avi"
    _huge_frames(source)
    j = open_journal(rig["data"])
    daemon = rig["start"](source=str(source), memory_mb=128)
    try:
        writer = rig["writer"] = StationWriter(rig["data"] / "journal.db")
        writer.start()
        off = wait_event(j, 0, "camera", 30, state="offline",
                         detail=lambda d: isinstance(d, str) and "MB of memory" in d)
        assert "(limit 128 MB)" in off.data["detail"]
        # The source is mended: the next restart brings the camera back.
        tmp = source.with_name("mended.avi")
        tmp.write_bytes(scene.read_bytes())
        os.replace(tmp, source)
        wait_event(j, off.seq, "camera", 30, state="online")
        assert daemon.proc.poll() is None
        writer.finish()
        assert writer.errors == [] and max(writer.latencies) < 1.0
    finally:
        j.close()


def test_the_whole_camera_daemon_killed_leaves_no_worker_and_checkins_go_on(
        rig: dict[str, Any]) -> None:
    j = open_journal(rig["data"])
    daemon = rig["start"]()
    try:
        wait_event(j, 0, "camera", 30, state="online")
        pid = worker_pid(j)
        writer = rig["writer"] = StationWriter(rig["data"] / "journal.db")
        writer.start()
        daemon.proc.kill()                          # SIGKILL: no goodbye
        daemon.proc.wait(10)
        # The orphaned worker sees its supervisor gone and finishes its clip.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            j.wait_for_change(0.2)
        else:
            raise AssertionError(f"worker {pid} outlived its daemon")
        n = len(writer.latencies)
        j.wait(j.last_seq() + 10, 5)                # check-ins go on meanwhile
        assert len(writer.latencies) > n
        # Started again (systemd's Restart=on-failure), it picks up where it was.
        mark = j.last_seq()
        again = rig["start"]()
        # The gap is on record: offline (it was cut off without a word), then online.
        stale = wait_event(j, mark, "camera", 30, state="offline")
        assert stale.data["detail"] == "the camera daemon stopped without a word"
        wait_event(j, stale.seq, "camera", 30, state="online")
        writer.finish()
        assert writer.errors == [] and max(writer.latencies) < 1.0
        assert again.terminate() == 0
        assert j.state_get("device/cameras/gate")["state"] == "stopped"
    finally:
        j.close()
