"""Retention: quota and age delete the oldest footage first, each deletion a
``footage_deleted`` event with the file's hash; when the disk is short footage
goes first, across cameras, even when the journal cannot take the event yet."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import pytest

from camera.avi import MjpegAviWriter
from camera.files import HASH_SUFFIX, media_path
from camera.retention import Retention, inventory
from firmware_py.clock import ManualClock
from firmware_py.exc import JournalWriteFailed
from firmware_py.journal import Journal
from tests.support.footage import frames_of
from tests.support.schemas import validate_event
from tests.support.units import make_config

pytestmark = pytest.mark.timeout(60)

DAY_MS = 86_400_000
NOW_MS = 1_795_000_000_000


def _clip(data_dir: Path, camera: str, wall_ms: int, frames: int = 12) -> tuple[Path, str]:
    """A real MJPEG clip of footage, with its .sha256 beside it, as the recorder leaves it."""
    path = media_path(data_dir, "clips", camera, wall_ms, "motion", ".avi")
    with MjpegAviWriter(path, 640, 360) as avi:
        for f in frames_of("bikes.mp4")[:frames]:
            avi.add(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
        avi.finish(10.0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + HASH_SUFFIX).write_text(f"{digest}  {path.name}\n")
    return path, digest


def _snapshot(data_dir: Path, camera: str, wall_ms: int) -> Path:
    path = media_path(data_dir, "snapshots", camera, wall_ms, "checkin", ".jpg")
    path.write_bytes(cv2.imencode(".jpg", frames_of("bikes.mp4")[0])[1].tobytes())
    return path


def _setup(tmp_path: Path, cameras: list[dict[str, Any]], synced: bool = True
           ) -> tuple[Any, Journal, ManualClock]:
    cfg = make_config(tmp_path / "data", cameras=[{"source": "0", **c} for c in cameras])
    clock = ManualClock(wall_ms=NOW_MS, synced=synced)
    journal = Journal(cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site, clock=clock)
    return cfg, journal, clock


def _deleted(journal: Journal) -> list[dict[str, Any]]:
    events = journal.events_after(0, kinds=["footage_deleted"])
    for e in events:
        validate_event(e.envelope())
    return [e.data for e in events]


def test_quota_deletes_the_oldest_footage_first_and_tells_its_hash(tmp_path: Path) -> None:
    cfg, journal, clock = _setup(tmp_path, [{"name": "gate", "quota_mb": 1}])
    data = cfg.unit.data_dir
    clips = [_clip(data, "gate", NOW_MS - DAY_MS * 2 + i * 3_600_000) for i in range(6)]
    snap = _snapshot(data, "gate", NOW_MS - DAY_MS * 2 + 1_800_000)   # between clips 0 and 1
    total = sum(p.stat().st_size for p, _ in clips)
    assert 1.3 * 2**20 < total < 2.5 * 2**20
    try:
        done = Retention(data, cfg.cameras, journal, clock).run()
        deleted = _deleted(journal)
        assert deleted == done
        assert [d["path"] for d in deleted][:3] == [
            clips[0][0].relative_to(data).as_posix(), snap.relative_to(data).as_posix(),
            clips[1][0].relative_to(data).as_posix()]
        assert all(d["reason"] == "retention" for d in deleted)
        for d in deleted:
            if d["kind"] == "clip":
                assert d["sha256"] == dict((p.relative_to(data).as_posix(), h)
                                           for p, h in clips)[d["path"]]
            assert not (data / d["path"]).exists()
            assert not (data / (d["path"] + HASH_SUFFIX)).exists()
        left, _ = inventory(data, "gate")
        assert sum(f.bytes for f in left) <= 2**20
        # What is left is the newest, in order.
        assert [f.path for f in left] == [p for p, _ in clips[-len(left):]]
        assert journal.state_get("footage/gate")["files"] == len(left)
    finally:
        journal.close()


def test_max_age_deletes_old_footage_only_while_the_clock_is_synchronised(
        tmp_path: Path) -> None:
    cfg, journal, clock = _setup(tmp_path, [{"name": "gate", "max_age_days": 3}],
                                 synced=False)
    data = cfg.unit.data_dir
    old = [_clip(data, "gate", NOW_MS - DAY_MS * d, frames=1)[0] for d in (10, 5)]
    new = _clip(data, "gate", NOW_MS - DAY_MS, frames=1)[0]
    try:
        retention = Retention(data, cfg.cameras, journal, clock)
        # A Pi without an RTC may have booted with any time: nothing goes by age.
        assert retention.run() == []
        clock.set_synced(True)
        assert [d["path"] for d in retention.run()] == \
            [p.relative_to(data).as_posix() for p in old]
        assert new.exists()
    finally:
        journal.close()


def test_when_the_disk_is_short_the_oldest_footage_of_any_camera_goes_first(
        tmp_path: Path) -> None:
    cfg, journal, clock = _setup(tmp_path, [{"name": "gate", "reserve_mb": 100},
                                            {"name": "yard", "reserve_mb": 50}])
    data = cfg.unit.data_dir
    order = [("gate", 0), ("yard", 1), ("gate", 2), ("yard", 3), ("gate", 4)]
    made = {i: _clip(data, cam, NOW_MS - DAY_MS + i * 60_000, frames=2)[0] for cam, i in order}
    part = data / "clips" / "gate" / "x.avi.part"          # a clip being written
    part.write_bytes(b"\0" * 1000)
    sizes = {i: p.stat().st_size + p.with_name(p.name + HASH_SUFFIX).stat().st_size
             for i, p in made.items()}
    size = sizes[0]
    base = 100 * 2**20 - int(2.5 * size)          # short by two and a half clips

    def free() -> int:
        return base + sum(sizes[i] for i, p in made.items() if not p.exists())

    try:
        retention = Retention(data, cfg.cameras, journal, clock, free_bytes=free,
                              headroom_mb=0)
        done = retention.run()
        assert [(d["camera"], d["reason"]) for d in done] == \
            [("gate", "disk"), ("yard", "disk"), ("gate", "disk")]
        assert [d["path"] for d in done] == [made[i].relative_to(data).as_posix()
                                             for i in (0, 1, 2)]
        assert not retention.disk_short and part.exists()
        # Nothing left to delete and still short: the state says so.
        base -= 10 * size
        retention.run()
        assert retention.disk_short
        assert not any(p.exists() for p in made.values()) and part.exists()
        assert journal.state_get("footage/gate")["disk_short"] is True
    finally:
        journal.close()


def test_footage_goes_even_when_the_journal_cannot_record_it_yet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, journal, clock = _setup(tmp_path, [{"name": "gate", "reserve_mb": 10}])
    data = cfg.unit.data_dir
    path, digest = _clip(data, "gate", NOW_MS - DAY_MS, frames=2)
    free = {"bytes": 5 * 2**20}
    real_append = journal.append

    def full(kind: str, *a: Any, **kw: Any) -> Any:
        raise JournalWriteFailed("database or disk is full")

    try:
        retention = Retention(data, cfg.cameras, journal, clock,
                              free_bytes=lambda: free["bytes"], headroom_mb=0)
        monkeypatch.setattr(journal, "append", full)
        retention.run()
        assert not path.exists()                     # free space first
        assert retention.stats()["unreported"] == 1
        monkeypatch.setattr(journal, "append", real_append)
        free["bytes"] = 50 * 2**20
        retention.run()
        [d] = _deleted(journal)
        assert (d["path"], d["sha256"], d["reason"]) == \
            (path.relative_to(data).as_posix(), digest, "disk")
        assert retention.stats()["unreported"] == 0
    finally:
        journal.close()


def test_a_clip_without_its_hash_file_is_hashed_before_it_goes(tmp_path: Path) -> None:
    cfg, journal, clock = _setup(tmp_path, [{"name": "gate", "max_age_days": 1}])
    data = cfg.unit.data_dir
    path, digest = _clip(data, "gate", NOW_MS - 2 * DAY_MS, frames=1)
    path.with_name(path.name + HASH_SUFFIX).unlink()
    try:
        [d] = Retention(data, cfg.cameras, journal, clock).run()
        assert d["sha256"] == digest
    finally:
        journal.close()
