"""Soak (XUNFANG_LONG=1): the camera daemon for several minutes on looping real
footage, with check-ins, a small quota, and its worker crashed now and then.

Memory stays flat, every clip and photo is announced and either on disk with its
hash or announced as deleted, footage stays within its quota, check-ins never
wait. ``XUNFANG_SOAK_S`` sets the length (default 300 s).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from camera.retention import inventory
from tests.support.camera import CameraDaemon, StationWriter, open_journal, worker_pid
from tests.support.footage import bunny_still_motion_still, write_scene
from tests.support.schemas import validate_event
from tests.support.units import write_unit_config

SOAK_S = float(os.environ.get("XUNFANG_SOAK_S", "300"))

pytestmark = [pytest.mark.long, pytest.mark.timeout(int(SOAK_S) + 240)]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_camera_daemon_soak(tmp_path: Path) -> None:
    scene = tmp_path / "scene.avi"
    write_scene(scene, bunny_still_motion_still(still_s=6.0, tail_s=8.0))
    data = tmp_path / "data"
    cfg = write_unit_config(tmp_path / "unit.toml", data, cameras=[{
        "name": "gate", "source": str(scene), "quota_mb": 40, "hang_s": 5.0,
        "pre_roll_s": 3.0, "post_roll_s": 2.0, "fps": 10}])
    j = open_journal(data)
    daemon = CameraDaemon(cfg)
    writer = StationWriter(data / "journal.db")
    samples: list[tuple[float, float]] = []
    crashes = 0
    try:
        start = time.monotonic()
        pid = worker_pid(j, 30)
        writer.start()
        next_crash = start + 60
        while time.monotonic() - start < SOAK_S:
            try:
                pid = worker_pid(j, 30)
                samples.append((time.monotonic() - start, _rss_mb(pid)))
            except (OSError, AssertionError):
                pass
            if time.monotonic() >= next_crash:
                os.kill(pid, signal.SIGSEGV)
                crashes += 1
                next_crash += 60
            j.wait_for_change(1.0)
        assert daemon.proc.poll() is None, daemon.log[-4000:]
        writer.finish()
        assert writer.errors == [] and max(writer.latencies) < 1.0
        assert daemon.terminate() == 0
    finally:
        if writer.is_alive():
            writer.finish()
        daemon.cleanup()
        print(f"--- camera daemon log ---\n{daemon.log[-6000:]}")
    events = j.events_after(0, limit=1_000_000)
    for e in events:
        validate_event(e.envelope())
    by_kind: dict[str, list[Any]] = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e.data)
    loops = SOAK_S / 19.3
    assert len(by_kind.get("footage", [])) >= 0.6 * loops
    offline = [d for d in by_kind.get("camera", []) if d["state"] == "offline"]
    assert len(offline) >= crashes
    deleted = {d["path"] for d in by_kind.get("footage_deleted", [])}
    for f in by_kind.get("footage", []):
        for meta in (f["clip"], f["snapshot"]):
            if meta is None:
                continue
            path = data / meta["path"]
            if meta["path"] in deleted:
                assert not path.exists()
            else:
                assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
    files, writing = inventory(data, "gate")
    assert sum(f.bytes for f in files) + writing <= 40 * 2**20
    # Flat memory: the last minute's peak within 20 MB of the first minute's.
    first = max(r for t, r in samples if t < 60)
    last = max(r for t, r in samples if t > SOAK_S - 60)
    assert last < first + 20, (first, last)
    j.close()
