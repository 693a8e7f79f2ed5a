"""Clips: long motion is split without a gap, level 1 records in back-to-back
segments, both codecs decode and match their hashes, a clip cut by a crash is
mended, and footage never eats into the journal's reserve."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camera.avi import MjpegAviWriter, read_info, repair
from camera.recorder import recover_parts, recovered_footage
from tests.support.camera import check_media, decode_all, make_rig
from tests.support.footage import FPS, bunny_still_motion_still, frames_of, noisy, write_scene
from tests.support.schemas import validate

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def bunny_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "bunny.avi"
    write_scene(path, bunny_still_motion_still())
    return path


def test_long_motion_is_split_at_max_clip_s_without_a_gap_or_a_repeat(
        tmp_path: Path, bunny_scene: Path) -> None:
    rig = make_rig(tmp_path, pre_roll_s=2.0, post_roll_s=2.0, max_clip_s=5.0)
    try:
        rig.play(bunny_scene)
        rig.finish()
        clips = [e.data for e in rig.events("footage")]
        assert len(clips) >= 2
        assert "continues" not in clips[0]
        for prev, nxt in itertools.pairwise(clips):
            assert nxt["continues"] == prev["clip"]["path"]
            # The next clip starts one frame after the previous one ended.
            gap = rig.rel_s(nxt["clip"]["started"]) - rig.rel_s(prev["clip"]["ended"])
            assert gap == pytest.approx(1 / FPS, abs=0.01)
            assert prev["end"] == "max_length"
        assert clips[-1]["end"] == "quiet"
        for c in clips:
            assert c["clip"]["duration_s"] <= 5.0 + 1 / FPS + 1e-6
            assert len(decode_all(check_media(rig.data_dir, c["clip"]))) == c["clip"]["frames"]
    finally:
        rig.close()


def test_level_1_records_continuously_in_back_to_back_segments(tmp_path: Path) -> None:
    still = frames_of("bikes.mp4")[40]
    path = tmp_path / "quiet.avi"
    write_scene(path, [(noisy(still, 130), "still")])
    rig = make_rig(tmp_path, segment_s=5.0)
    try:
        rig.pipeline.set_level(1)
        rig.play(path, poll=False)
        rig.pipeline.set_level(3)           # the level drops: the segment ends there
        rig.finish()
        segs = [e.data for e in rig.events("footage")]
        assert [s["trigger"] for s in segs] == ["level"] * 3
        assert [s["end"] for s in segs] == ["segment", "segment", "level_changed"]
        assert sum(s["clip"]["frames"] for s in segs) == 130
        for prev, nxt in itertools.pairwise(segs):
            gap = rig.rel_s(nxt["clip"]["started"]) - rig.rel_s(prev["clip"]["ended"])
            assert gap == pytest.approx(1 / FPS, abs=0.01)
        for s in segs:
            check_media(rig.data_dir, s["clip"])
            assert s["motion_frames"] == 0
    finally:
        rig.close()


def test_mp4v_clips_decode_and_match_their_hash(tmp_path: Path, bunny_scene: Path) -> None:
    rig = make_rig(tmp_path, codec="mp4v", pre_roll_s=2.0, post_roll_s=2.0)
    try:
        rig.play(bunny_scene)
        rig.finish()
        [f] = [e.data for e in rig.events("footage")]
        clip = f["clip"]
        assert (clip["codec"], clip["container"]) == ("mp4v", "mp4")
        path = check_media(rig.data_dir, clip)
        assert path.suffix == ".mp4"
        frames = decode_all(path)
        assert len(frames) == clip["frames"]
        cap = cv2.VideoCapture(str(path))
        # FFmpeg names MPEG-4 Part 2 "FMP4" when it reads it back.
        assert cap.get(cv2.CAP_PROP_FOURCC) in (cv2.VideoWriter_fourcc(*"mp4v"),
                                                cv2.VideoWriter_fourcc(*"FMP4"))
        cap.release()
        assert not list(rig.data_dir.rglob("*.part")) and not list(rig.data_dir.rglob("*.tmp*"))
    finally:
        rig.close()


def test_a_clip_cut_by_a_crash_is_mended_and_reported(tmp_path: Path) -> None:
    frames = frames_of("carphone_pristine.mp4")
    folder = tmp_path / "clips" / "gate" / "2026-11-28"
    folder.mkdir(parents=True)
    part = folder / "20261128T150405.123Z-motion.avi.part"
    avi = MjpegAviWriter(part, 640, 360)
    for f in frames:
        avi.add(cv2.imencode(".jpg", f)[1].tobytes())
    avi.close()                               # no finish(): the process died here
    with open(part, "r+b") as fh:             # and the last frame is half written
        fh.truncate(part.stat().st_size - 500)
    [mended] = recover_parts(tmp_path, "gate", fps=10.0)
    assert mended.name == "20261128T150405.123Z-motion.avi" and not part.exists()
    assert len(decode_all(mended)) == len(frames) - 1
    data = recovered_footage(tmp_path, "gate", mended)
    assert data["recovered"] and data["clip"]["frames"] == len(frames) - 1
    assert data["started"] == "2026-11-28T15:04:05.123Z"
    check_media(tmp_path, data["clip"])
    validate("events/footage", data)
    # Nothing usable (the header alone): removed.
    empty = folder / "20261128T150500.000Z-motion.avi.part"
    MjpegAviWriter(empty, 640, 360).close()
    assert list(recover_parts(tmp_path, "gate", fps=10.0)) == []
    assert not empty.exists()


def test_footage_stops_at_the_journal_reserve(tmp_path: Path, bunny_scene: Path) -> None:
    free = {"bytes": 10 * 2**30}
    rig = make_rig(tmp_path, free_bytes=lambda: free["bytes"], reserve_mb=100,
                   pre_roll_s=2.0, post_roll_s=2.0)
    try:
        # The disk fills while the clip is being written: it ends early ("disk").
        def fill(frame: object) -> None:
            if rig.pipeline.recorder.active:
                free["bytes"] = 50 * 2**20

        rig.play(bunny_scene, each=fill)
        rig.finish()
        [f] = [e.data for e in rig.events("footage")]
        assert f["end"] == "disk"
        check_media(rig.data_dir, f["clip"])
        assert rig.pipeline.recorder.disk_short
        # And no new clip starts while the disk is short.
        rig.play(bunny_scene)
        rig.finish()
        assert len(rig.events("footage")) == 1
        assert rig.pipeline.recorder.refused >= 1
        rig.pipeline.write_state()
        assert rig.journal.state_get("device/cameras/gate")["disk_short"] is True
    finally:
        rig.close()


def test_avi_writer_header_and_opencv_agree(tmp_path: Path) -> None:
    jpegs = [cv2.imencode(".jpg", np.full((48, 64, 3), i * 25, np.uint8))[1].tobytes()
             for i in range(9)]
    path = tmp_path / "a.avi"
    with MjpegAviWriter(path, 64, 48) as avi:
        for j in jpegs:
            avi.add(j)
        size = avi.finish(12.5)
    assert size == path.stat().st_size
    info = read_info(path)
    assert (info.width, info.height, info.frames, info.chunks) == (64, 48, 9, 9)
    assert info.fps == pytest.approx(12.5)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.5)
    frames = decode_all(path)
    assert [round(float(f.mean())) for f in frames] == [i * 25 for i in range(9)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), cut=st.integers(0, 4000))
def test_repair_keeps_every_whole_frame_whatever_the_cut(tmp_path_factory: pytest.TempPathFactory,
                                                         n: int, cut: int) -> None:
    path = tmp_path_factory.mktemp("cut") / "c.avi"
    jpegs = [cv2.imencode(".jpg", np.full((24, 32, 3), 40 * i, np.uint8))[1].tobytes()
             for i in range(n)]
    avi = MjpegAviWriter(path, 32, 24)
    for j in jpegs:
        avi.add(j)
    avi.close()
    size = path.stat().st_size
    os.truncate(path, max(0, size - cut))
    kept = repair(path, 10.0)
    whole = 0
    pos = 224
    for j in jpegs:
        pos += 8 + len(j) + (len(j) & 1)
        if pos - (len(j) & 1) <= size - cut:
            whole += 1
    assert kept == whole
    if kept:
        assert len(decode_all(path)) == kept
