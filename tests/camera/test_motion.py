"""Motion on real footage: one event for one movement, at the right times; noise,
light changes and masked areas are not motion; sensitivity follows the level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camera.motion import MotionDetector, MotionSettings, analysis_frame, polygon_mask
from tests.support.camera import check_media, decode_all, make_rig
from tests.support.footage import (
    FPS,
    bunny_still_motion_still,
    frames_of,
    noisy,
    write_scene,
)

pytestmark = pytest.mark.timeout(60)

# Big Buck Bunny moves from 8.0 s to 13.3 s of the scene.
MOTION_START, MOTION_END = 8.0, 13.3
TOL = 0.35


@pytest.fixture(scope="module")
def bunny_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "bunny.avi"
    spans = write_scene(path, bunny_still_motion_still())
    assert (spans[1].start_s, round(spans[1].end_s, 1)) == (MOTION_START, MOTION_END)
    return path


def test_still_motion_still_gives_one_clip_with_its_times_pre_roll_and_hash(
        tmp_path: Path, bunny_scene: Path) -> None:
    rig = make_rig(tmp_path, pre_roll_s=4.0, post_roll_s=3.0)
    try:
        rig.play(bunny_scene)
        rig.finish()
        footage = [e.data for e in rig.events("footage")]
        assert len(footage) == 1, footage
        f = footage[0]
        assert f["trigger"] == "motion" and f["camera"] == "gate" and f["ref"] is None
        assert abs(rig.rel_s(f["started"]) - MOTION_START) <= TOL, f["started"]
        assert abs(rig.rel_s(f["ended"]) - MOTION_END) <= TOL, f["ended"]
        clip = f["clip"]
        # Pre-roll exact to the frame: the clip starts pre_roll_s before the motion.
        assert abs(rig.rel_s(clip["started"]) - (rig.rel_s(f["started"]) - 4.0)) <= 1 / FPS
        assert f["pre_roll_s"] == pytest.approx(4.0, abs=1 / FPS)
        # …and ends post_roll_s after it.
        assert abs(rig.rel_s(clip["ended"]) - (rig.rel_s(f["ended"]) + 3.0)) <= 2 / FPS
        assert (clip["codec"], clip["container"], clip["width"], clip["height"]) == \
            ("mjpeg", "avi", 640, 360)
        assert clip["fps"] == pytest.approx(FPS, rel=0.01)
        path = check_media(rig.data_dir, clip)
        assert path.suffix == ".avi" and path.parent.parent.name == "gate"
        frames = decode_all(path)
        assert len(frames) == clip["frames"] > 0
        assert frames[0].shape == (360, 640, 3)
        assert (path.with_name(path.name + ".sha256").read_text().split()[0]
                == clip["sha256"])
        # The snapshot is the frame with the most motion, from inside the movement.
        snap = f["snapshot"]
        check_media(rig.data_dir, snap)
        assert MOTION_START <= rig.rel_s(snap["taken"]) <= MOTION_END + TOL
        assert 0 < f["peak_score"] <= 1 and f["motion_frames"] >= 10
    finally:
        rig.close()


def test_sensor_noise_alone_is_no_motion(tmp_path: Path) -> None:
    still = frames_of("bikes.mp4")[60]
    path = tmp_path / "still.avi"
    write_scene(path, [(noisy(still, 150, sigma=3.0), "still")])
    rig = make_rig(tmp_path)
    try:
        rig.play(path)
        rig.finish()
        assert rig.pipeline.motion_frames == 0
        assert rig.events("footage") == []
    finally:
        rig.close()


def test_lights_switched_on_recalibrate_instead_of_starting_an_event(tmp_path: Path) -> None:
    still = frames_of("bigbuckbunny.mp4")[0]
    bright = np.clip(still.astype(np.float32) * 1.5 + 40, 0, 255).astype(np.uint8)
    dim = (still.astype(np.float32) * 0.45).astype(np.uint8)
    path = tmp_path / "lights.avi"
    write_scene(path, [(noisy(still, 60, seed=1), "still"), (noisy(bright, 60, seed=2), "on"),
                       (noisy(dim, 60, seed=3), "dusk IR off")])
    rig = make_rig(tmp_path, tamper=False)
    try:
        rig.play(path)
        rig.finish()
        assert rig.pipeline.motion.recalibrations >= 2
        assert rig.pipeline.motion_frames == 0
        assert rig.events("footage") == []
    finally:
        rig.close()


def test_motion_inside_a_mask_is_ignored_and_outside_it_is_not(
        tmp_path: Path, bunny_scene: Path) -> None:
    # Where the bunny moves (found from the unmasked run), then masked away.
    rig = make_rig(tmp_path / "a")
    try:
        boxes: list[tuple[float, float, float, float]] = []

        def watch(_frame: object) -> None:
            r = rig.pipeline.last_result
            if r is not None and r.motion:
                boxes.extend(r.boxes)

        rig.play(bunny_scene, each=watch)
        assert boxes
    finally:
        rig.close()
    x0 = max(0.0, min(b[0] for b in boxes) - 0.05)
    y0 = max(0.0, min(b[1] for b in boxes) - 0.05)
    x1 = min(1.0, max(b[0] + b[2] for b in boxes) + 0.05)
    y1 = min(1.0, max(b[1] + b[3] for b in boxes) + 0.05)
    mask = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    rig = make_rig(tmp_path / "b", masks=[mask])
    try:
        rig.play(bunny_scene)
        rig.finish()
        assert rig.pipeline.motion_frames == 0
        assert rig.events("footage") == []
    finally:
        rig.close()
    # A mask elsewhere (the sky) changes nothing.
    rig = make_rig(tmp_path / "c", masks=[[[0.0, 0.0], [0.3, 0.0], [0.3, 0.1]]])
    try:
        rig.play(bunny_scene)
        rig.finish()
        assert len(rig.events("footage")) == 1
    finally:
        rig.close()


def test_sensitivity_per_level_finds_small_faint_motion_only_when_raised(
        tmp_path: Path) -> None:
    """A small, faint figure far away (carphone.mp4 shrunk and blended into a still
    scene) moves: the level-1 sensitivity sees it, level 3 does not."""
    bg = frames_of("bigbuckbunny.mp4")[0]
    clip = frames_of("carphone_pristine.mp4", size=(36, 30))
    frames = []
    for i, small in enumerate(clip * 2):
        f = bg.copy()
        x = 400 + (i * 3) % 120
        patch = f[250:280, x:x + 36].astype(np.float32)
        f[250:280, x:x + 36] = (patch * 0.5 + small.astype(np.float32) * 0.5).astype(np.uint8)
        frames.append(f)
    path = tmp_path / "far.avi"
    write_scene(path, [(noisy(bg, 30), "still"), (frames, "figure"), (noisy(bg, 70), "still")])
    counts = {}
    for level in (3, 1):
        rig = make_rig(tmp_path / f"l{level}", sensitivity={"3": 1.0, "2": 1.5, "1": 3.0},
                       motion_min_area=0.004, motion_threshold=30, tamper=False,
                       continuous_levels=[])
        try:
            rig.pipeline.set_level(level)
            assert rig.pipeline.motion.sensitivity == {3: 1.0, 1: 3.0}[level]
            rig.play(path, poll=False)
            rig.finish()
            counts[level] = len(rig.events("footage"))
        finally:
            rig.close()
    assert counts == {3: 0, 1: 1}


def test_polygon_mask_and_analysis_frame_shapes() -> None:
    mask = polygon_mask((100, 200), [[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]])
    assert mask is not None and mask.shape == (100, 200)
    assert mask[:, :95].max() == 0 and mask[:, 105:].min() == 255
    assert polygon_mask((100, 200), []) is None
    grey = analysis_frame(np.zeros((720, 1280, 3), np.uint8), 100)
    assert grey.shape == (100, 178) and grey.dtype == np.uint8


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=4, max_size=4),
       st.floats(0.1, 10), st.integers(1, 255))
def test_detector_takes_any_frames_and_scores_within_0_and_1(
        levels: list[int], sensitivity: float, threshold: int) -> None:
    rng = np.random.default_rng(sum(levels))
    det = MotionDetector(MotionSettings(threshold=threshold), sensitivity)
    for i, level in enumerate(levels):
        frame = np.clip(rng.normal(level, 20, (100, 133)), 0, 255).astype(np.uint8)
        r = det.detect(frame, i * 0.1)
        assert 0.0 <= r.score <= 1.0
        assert all(0 <= v <= 1 for box in r.boxes for v in box)
