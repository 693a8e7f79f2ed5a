"""Tamper on real footage: covered, defocused, moved and frozen each come as a
``camera`` ``tampered`` event after their confirmation and clear as ``restored``;
the baseline does not learn while tamper is suspected; slow dusk is not tamper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from camera.motion import analysis_frame
from camera.tamper import TamperDetector, TamperSettings
from tests.support.camera import make_rig
from tests.support.footage import blurred, covered, frames_of, noisy, shifted, write_scene

pytestmark = pytest.mark.timeout(60)

LEARN_S, TAMPER_S, AFTER_S = 12.0, 8.0, 6.0
CONFIRM_S = 3.0


def _frozen(image: np.ndarray, n: int) -> list[np.ndarray]:
    frame = noisy(image, 1, seed=9)[0]
    return [frame] * n        # a stuck encoder: the very same frame again and again


CASES: dict[str, tuple[Callable[[np.ndarray, int], list[np.ndarray]], float]] = {
    # kind: (how to make the tampered frames, how long they last)
    "covered": (covered, TAMPER_S),
    "defocused": (blurred, TAMPER_S),
    "moved": (shifted, TAMPER_S),
    "frozen": (_frozen, 14.0),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_kind_of_tamper_comes_after_confirmation_and_clears(tmp_path: Path,
                                                                kind: str) -> None:
    make, tamper_s = CASES[kind]
    scene = frames_of("bigbuckbunny.mp4")[0]
    path = tmp_path / f"{kind}.avi"
    fps = 10
    write_scene(path, [(noisy(scene, int(LEARN_S * fps), seed=1), "still"),
                       (make(scene, int(tamper_s * fps)), kind),
                       (noisy(scene, int(AFTER_S * fps), seed=2), "still")])
    rig = make_rig(tmp_path, tamper_confirm_s=CONFIRM_S, tamper_learn_s=8.0, frozen_s=10.0)
    try:
        rig.play(path)
        rig.finish()
        events = [e for e in rig.events("camera") if e.data["state"] != "online"]
        assert [(e.data["state"], e.data["detail"]) for e in events] == \
            [("tampered", kind), ("restored", kind)], [e.data for e in events]
        onset = rig.rel_s(events[0].ts)
        cleared = rig.rel_s(events[1].ts)
        confirm = 10.0 if kind == "frozen" else CONFIRM_S
        # Confirmed after its confirmation time (a recalibration second for "moved").
        assert LEARN_S + confirm - 0.2 <= onset <= LEARN_S + confirm + 1.5, onset
        end = LEARN_S + tamper_s
        assert end <= cleared <= end + 3.0, cleared
        assert events[1].data["duration_s"] == pytest.approx(cleared - onset, abs=0.2)
        assert events[0].data["features"] and events[0].data["baseline"]["armed"]
        # The health state said "tampered" in between, and says online again now.
        assert rig.journal.state_get("device/cameras/gate")["state"] == "online"
        # Tamper is not motion: no clip of a black lens or a turned camera.
        assert rig.events("footage") == []
    finally:
        rig.close()


def test_health_state_says_tampered_while_it_lasts(tmp_path: Path) -> None:
    scene = frames_of("bigbuckbunny.mp4")[0]
    path = tmp_path / "cover.avi"
    write_scene(path, [(noisy(scene, 100), "still"), (covered(scene, 60), "covered")])
    rig = make_rig(tmp_path, tamper_confirm_s=2.0, tamper_learn_s=5.0)
    try:
        rig.play(path)
        state = rig.journal.state_get("device/cameras/gate")
        assert (state["state"], state["tamper"]) == ("tampered", "covered")
    finally:
        rig.close()


def _greys(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [analysis_frame(f) for f in frames]


def test_baseline_stops_learning_while_tamper_is_suspected() -> None:
    scene = frames_of("bigbuckbunny.mp4")[0]
    normal = _greys(noisy(scene, 100))
    soft = _greys(blurred(scene, 40))
    det = TamperDetector(TamperSettings(confirm_s=5.0, learn_s=5.0))
    t = 0.0
    for g in normal:
        assert det.update(g, t) == []
        t += 0.1
    before = det.baseline()
    assert before["armed"]
    # 4 s of blur: suspected (not yet confirmed), and the baseline holds still.
    for g in soft:
        assert det.update(g, t) == []
        t += 0.1
    assert det.suspected == "defocused" and det.active is None
    during = det.baseline()
    assert during["sharpness"] == before["sharpness"] and during["std"] == before["std"]
    # The picture comes back before confirmation: learning goes on, no event.
    for g in normal[:20]:
        assert det.update(g, t) == []
        t += 0.1
    assert det.suspected is None and det.baseline()["learned_s"] > before["learned_s"]


def test_a_slow_attack_cannot_teach_the_baseline_a_covered_lens() -> None:
    """Fading the picture to black over a minute: suspicion freezes the baseline as soon
    as the contrast is low, so the cover is reported, not learned."""
    scene = frames_of("bigbuckbunny.mp4")[0]
    det = TamperDetector(TamperSettings(confirm_s=3.0, learn_s=5.0, baseline_s=30.0))
    t = 0.0
    for g in _greys(noisy(scene, 60)):
        det.update(g, t)
        t += 0.5
    kinds = []
    for i in range(120):
        gain = max(0.0, 1.0 - i / 60)
        frame = noisy((scene.astype(np.float32) * gain + 10).astype(np.uint8), 1, start=i)[0]
        kinds += [c.kind for c in det.update(analysis_frame(frame), t)]
        t += 0.5
    assert kinds == ["covered"]


def test_dusk_falling_slowly_is_not_tamper() -> None:
    """Half an hour of light fading to a fifth: the baseline follows, nothing is reported."""
    scene = frames_of("bikes.mp4")[40]
    det = TamperDetector(TamperSettings(learn_s=10.0))
    t = 0.0
    changes = []
    for i in range(900):                  # every 2 s for 30 min
        gain = 1.0 - 0.8 * min(1.0, i / 900)
        frame = noisy((scene.astype(np.float32) * gain).astype(np.uint8), 1, start=i)[0]
        changes += det.update(analysis_frame(frame), t)
        t += 2.0
    assert changes == []


def test_a_camera_covered_from_the_start_is_reported_without_a_baseline() -> None:
    dark = covered(frames_of("bigbuckbunny.mp4")[0], 50)
    det = TamperDetector(TamperSettings(confirm_s=2.0))
    kinds = []
    for i, g in enumerate(_greys(dark)):
        kinds += [(c.state, c.kind) for c in det.update(g, i * 0.1)]
    assert kinds == [("tampered", "covered")]


def test_traffic_filling_the_view_is_not_a_moved_camera(tmp_path: Path) -> None:
    """Big Buck Bunny walks through most of the picture: motion, not "moved"."""
    clip = frames_of("bigbuckbunny.mp4")
    path = tmp_path / "busy.avi"
    write_scene(path, [(noisy(clip[0], 120), "still"), (clip + clip[::-1] + clip, "busy"),
                       (noisy(clip[0], 60), "still")])
    rig = make_rig(tmp_path, tamper_confirm_s=3.0, tamper_learn_s=8.0)
    try:
        rig.play(path)
        rig.finish()
        tamper = [e.data for e in rig.events("camera") if e.data["state"] == "tampered"]
        assert tamper == []
        assert len(rig.events("footage")) == 1
    finally:
        rig.close()
