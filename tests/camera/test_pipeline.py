"""What the journal asks of the camera: a photo of every check-in (from the moment
of the tap), alarm snapshots and clips, the centre's ``snapshot`` and ``clip``
commands, online/offline events, and the health state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from camera.capture import Frame
from firmware_py.alarms import snapshot_request_id
from tests.support.camera import check_media, make_rig
from tests.support.footage import FPS, bunny_still_motion_still, frames_of, noisy, write_scene

pytestmark = pytest.mark.timeout(60)

CHECKIN: dict[str, Any] = {"card": "14008EC793", "reader": "main", "decision": "accepted",
                           "badge": "P-017", "role": "patrol", "visit": "v1"}


@pytest.fixture(scope="module")
def quiet_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "quiet.avi"
    write_scene(path, [(noisy(frames_of("bikes.mp4")[40], 80), "still")])
    return path


@pytest.fixture(scope="module")
def bunny_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "bunny.avi"
    write_scene(path, bunny_still_motion_still())
    return path


def test_every_checkin_gets_a_snapshot_of_the_moment_of_the_tap(tmp_path: Path,
                                                               bunny_scene: Path) -> None:
    rig = make_rig(tmp_path)
    taps: dict[int, str] = {}

    def tap(frame: Frame) -> None:
        if frame.seq in (20, 95, 96, 150):       # two people tapping one after the other
            taps[frame.seq] = rig.journal.append("checkin", CHECKIN).id

    try:
        rig.play(bunny_scene, each=tap)
        rig.finish()
        snaps = [e.data for e in rig.events("snapshot")]
        assert [s["ref"] for s in snaps] == list(taps.values())
        checkins = rig.events("checkin")
        for s, c in zip(snaps, checkins, strict=True):
            assert (s["trigger"], s["camera"], s["reader"]) == ("checkin", "gate", "main")
            # The frame of the moment of the tap, not of when the camera got to it.
            assert abs(s["offset_s"]) <= 1 / FPS
            assert abs(rig.rel_s(s["taken"]) - rig.rel_s(c.ts)) <= 1 / FPS
            assert (s["width"], s["height"]) == (640, 360)
            assert check_media(rig.data_dir, s).suffix == ".jpg"
        assert rig.journal.cursor("camera-checkins/gate") == checkins[-1].seq
    finally:
        rig.close()


def test_a_checkin_while_the_camera_is_offline_gets_no_wrong_photo(tmp_path: Path,
                                                                   quiet_scene: Path) -> None:
    rig = make_rig(tmp_path, stall_s=2.0)
    try:
        rig.play(quiet_scene)
        rig.clock.advance(2.0)                       # no frame for stall_s: offline
        rig.offline()
        tap = rig.journal.append("checkin", CHECKIN)
        rig.pipeline.poll()
        assert rig.events("snapshot") == []          # waits a moment for a picture…
        rig.clock.advance(5.0)
        rig.pipeline.poll()                          # …then gives up: no photo of that tap
        rig.online()
        rig.play(quiet_scene)
        rig.finish()
        assert rig.events("snapshot") == []
        assert rig.pipeline.checkins_missed == 1
        assert rig.journal.cursor("camera-checkins/gate") == tap.seq
        offline = [e.data for e in rig.events("camera")]
        assert [d["state"] for d in offline] == ["online", "offline", "online"]
        assert rig.journal.state_get("device/cameras/gate")["checkins_missed"] == 1
    finally:
        rig.close()


def test_a_panic_alarm_gets_a_snapshot_and_a_clip(tmp_path: Path, quiet_scene: Path) -> None:
    rig = make_rig(tmp_path, pre_roll_s=2.0, alarm_clip_s=3)
    alarm: dict[str, Any] = {}

    def press(frame: Frame) -> None:
        if frame.seq == 30:
            event = rig.journal.append("alarm", {"source": "panic", "state": "active",
                                                 "pin": 19})
            rig.journal.inbox_put(snapshot_request_id(rig.journal.journal_id, event.seq),
                                  "snapshot", {"trigger": "alarm", "ref": event.id})
            alarm["id"] = event.id
            alarm["t"] = rig.rel_s(event.ts)

    try:
        rig.play(quiet_scene, each=press)
        rig.finish()
        [snap] = [e.data for e in rig.events("snapshot")]
        assert (snap["trigger"], snap["ref"]) == ("alarm", alarm["id"])
        check_media(rig.data_dir, snap)
        [clip] = [e.data for e in rig.events("footage")]
        assert (clip["trigger"], clip["ref"], clip["end"]) == ("alarm", alarm["id"], "length")
        assert rig.rel_s(clip["clip"]["started"]) == pytest.approx(alarm["t"] - 2.0, abs=0.15)
        assert rig.rel_s(clip["clip"]["ended"]) == pytest.approx(alarm["t"] + 3.0, abs=0.15)
        check_media(rig.data_dir, clip["clip"])
        check_media(rig.data_dir, clip["snapshot"])
    finally:
        rig.close()


def test_snapshot_and_clip_commands_for_this_camera_or_all(tmp_path: Path,
                                                          quiet_scene: Path) -> None:
    rig = make_rig(tmp_path, pre_roll_s=1.0)

    def commands(frame: Frame) -> None:
        if frame.seq == 10:
            rig.journal.inbox_put("cmd-1", "snapshot", {"camera": "gate"})
            rig.journal.inbox_put("cmd-2", "snapshot", {"camera": "yard"})   # not ours
            rig.journal.inbox_put("cmd-3", "clip", {"seconds": 2})

    try:
        rig.play(quiet_scene, each=commands)
        rig.finish()
        snaps = [e.data for e in rig.events("snapshot")]
        assert [(s["trigger"], s["ref"]) for s in snaps] == [("command", "cmd-1")]
        [clip] = [e.data for e in rig.events("footage")]
        assert (clip["trigger"], clip["ref"]) == ("command", "cmd-3")
        assert clip["clip"]["duration_s"] == pytest.approx(3.0 + 1 / FPS, abs=0.15)
        assert rig.pipeline.inbox.pending() == []
    finally:
        rig.close()


def test_a_request_waits_for_the_camera_to_come_back(tmp_path: Path,
                                                     quiet_scene: Path) -> None:
    rig = make_rig(tmp_path)
    try:
        rig.offline()
        rig.journal.inbox_put("cmd-9", "snapshot", {})
        rig.pipeline.poll()
        assert rig.events("snapshot") == [] and len(rig.pipeline.inbox.pending()) == 1
        rig.online()
        rig.play(quiet_scene)
        rig.finish()
        [snap] = [e.data for e in rig.events("snapshot")]
        assert snap["ref"] == "cmd-9"
        # A request older than a minute with no picture is dropped, and said so.
        rig.offline()
        rig.journal.inbox_put("cmd-10", "snapshot", {})
        rig.clock.advance(61.0)
        rig.pipeline.poll()
        assert rig.pipeline.inbox.pending() == [] and rig.pipeline.requests_dropped == 1
    finally:
        rig.close()


def test_the_level_in_the_journal_sets_sensitivity_and_continuous_recording(
        tmp_path: Path, bunny_scene: Path) -> None:
    rig = make_rig(tmp_path, sensitivity={"1": 2.0}, segment_s=30.0)
    try:
        rig.journal.state_set("desired/level/unit", {
            "id": "doc-1", "issued_ms": rig.clock.wall_ms() - 1000, "scope": "unit",
            "args": {"level": 1}})
        rig.pipeline.poll()
        assert rig.pipeline.level == 1 and rig.pipeline.motion.sensitivity == 2.0
        assert rig.pipeline.recorder.continuous
        rig.play(bunny_scene)
        rig.pipeline.close()
        footage = [e.data for e in rig.events("footage")]
        assert {f["trigger"] for f in footage} == {"level"}
        assert sum(f["motion_frames"] for f in footage) > 10
        assert rig.journal.state_get("device/cameras/gate")["state"] == "stopped"
    finally:
        rig.journal.close()
