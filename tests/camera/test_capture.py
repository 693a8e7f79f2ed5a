"""Capture: every kind of source, the newest frame at the configured rate, and a
stream that dies (a deleted file, an IP camera that goes away or hangs) is
reported offline after ``stall_s`` and comes back by itself."""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from camera.capture import Capture, StateChange, parse_source, redact
from camera.exc import CaptureStuck, SourceUnavailable
from tests.support.footage import frames_of, write_video
from tests.support.mjpeg import MjpegServer

pytestmark = pytest.mark.timeout(60)


def until(cap: Capture, state: str, timeout: float) -> list[StateChange]:
    """Check the capture until it reports ``state``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen: list[StateChange] = []
    last = 0
    while time.monotonic() < deadline:
        seen += cap.check()
        if any(c.state == state for c in seen):
            return seen
        frame = cap.wait(last, 0.05)
        if frame is not None:
            last = frame.seq
    raise AssertionError(f"capture never went {state} within {timeout} s: {seen}; "
                         f"{cap.stats()}")


def test_sources_are_told_apart_and_passwords_stay_out_of_logs() -> None:
    assert (parse_source("0").kind, parse_source("0").target) == ("device", 0)
    assert parse_source("/dev/video2").kind == "v4l2"
    assert parse_source("/dev/v4l/by-id/usb-046d_C270-video-index0").kind == "v4l2"
    assert parse_source("rtsp://192.0.2.10:554/stream1").kind == "network"
    assert parse_source("http://192.0.2.10/mjpg/video.mjpg").kind == "network"
    assert parse_source("/var/lib/xunfang/demo.mp4").kind == "file"
    assert not parse_source("demo.mp4").live and parse_source("0").live
    assert redact("rtsp://admin:s3cret@192.0.2.10:554/Streaming/Channels/101") == \
        "rtsp://admin:***@192.0.2.10:554/Streaming/Channels/101"
    assert redact("rtsp://192.0.2.10/stream1") == "rtsp://192.0.2.10/stream1"
    with pytest.raises(ValueError):
        parse_source("  ")


def test_a_file_plays_at_its_own_rate_capped_and_starts_again_at_its_end(
        tmp_path: Path) -> None:
    path = write_video(tmp_path / "one-second.avi", frames_of("bikes.mp4", fps=20)[:20],
                       fps=20.0)
    with Capture(str(path), name="gate", fps_cap=10.0, stall_s=2.0) as cap:
        until(cap, "online", 5.0)
        start = time.monotonic()
        last = 0
        n = 0
        while time.monotonic() - start < 2.5:
            frame = cap.wait(last, 1.0)
            assert frame is not None
            n += frame.seq - last
            last = frame.seq
            assert frame.image.shape == (360, 640, 3)
        stats = cap.stats()
        assert 8.0 <= stats["fps"] <= 11.0, stats             # capped from the file's 20
        assert 16.0 <= stats["fps_in"] <= 22.0, stats
        assert stats["opens"] >= 2                             # it looped
        assert 18 <= n <= 28
        assert cap.state == "online"


def test_a_file_source_deleted_goes_offline_after_stall_s_and_comes_back(
        tmp_path: Path) -> None:
    original = write_video(tmp_path / "keep.avi", frames_of("bikes.mp4")[:10])
    path = tmp_path / "camera.avi"
    shutil.copy(original, path)
    with Capture(str(path), name="gate", fps_cap=10.0, stall_s=1.0, backoff_min_s=0.1,
                 backoff_max_s=0.4) as cap:
        until(cap, "online", 5.0)
        path.unlink()
        gone = time.monotonic()
        [change] = [c for c in until(cap, "offline", 5.0) if c.state == "offline"]
        # The file still plays to its end (at most 1 s), then stall_s passes.
        assert 0.9 <= time.monotonic() - gone <= 3.5
        assert "no such file" in change.detail
        shutil.copy(original, path)
        back = time.monotonic()
        until(cap, "online", 5.0)
        assert time.monotonic() - back <= 2.0
        assert cap.stats()["open_failures"] >= 1


@pytest.fixture
def ipcam() -> Any:
    server = MjpegServer(frames_of("bikes.mp4")[:25], fps=10.0).start()
    try:
        yield server
    finally:
        server.stop()


def test_an_ip_camera_that_dies_is_offline_after_stall_s_and_back_when_it_returns(
        ipcam: MjpegServer) -> None:
    with Capture(ipcam.url, name="gate", fps_cap=10.0, stall_s=1.5, backoff_min_s=0.1,
                 backoff_max_s=0.5, read_timeout_s=1.0, open_timeout_s=1.0) as cap:
        until(cap, "online", 10.0)
        ipcam.stop()
        died = time.monotonic()
        until(cap, "offline", 6.0)
        assert 1.4 <= time.monotonic() - died <= 3.0
        ipcam.start()                                  # the same port again
        until(cap, "online", 6.0)
        frame = cap.wait(0, 2.0)
        assert frame is not None and frame.image.shape == (360, 640, 3)


def test_an_ip_camera_that_hangs_is_offline_and_recovers(ipcam: MjpegServer) -> None:
    with Capture(ipcam.url, name="gate", fps_cap=10.0, stall_s=1.5, backoff_min_s=0.1,
                 backoff_max_s=0.5, read_timeout_s=1.0, open_timeout_s=1.0) as cap:
        until(cap, "online", 10.0)
        ipcam.pause()
        until(cap, "offline", 6.0)
        ipcam.resume()
        until(cap, "online", 8.0)


def test_reconnects_back_off_and_never_give_up() -> None:
    attempts: list[float] = []

    def refuse(spec: Any) -> Any:
        attempts.append(time.monotonic())
        raise SourceUnavailable("camera source rtsp://192.0.2.10/: cannot open")

    with Capture("rtsp://192.0.2.10/", name="gate", stall_s=0.5, backoff_min_s=0.05,
                 backoff_max_s=0.4, opener=refuse) as cap:
        [change] = until(cap, "offline", 3.0)
        assert "cannot open" in change.detail and "192.0.2.10" in change.detail
        deadline = time.monotonic() + 10
        while len(attempts) < 8 and time.monotonic() < deadline:
            cap.wait(0, 0.1)
        assert len(attempts) >= 8
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] < 0.15 and max(gaps) < 0.6
    assert gaps[4] >= 0.3                       # doubled up to the cap


class _HangingCapture:
    """A backend whose read never returns (and ignores its timeout)."""

    def __init__(self, release: threading.Event) -> None:
        self.release_event = release

    def get(self, prop: int) -> float:
        return 0.0

    def grab(self) -> bool:
        self.release_event.wait(30)
        return False

    def retrieve(self) -> tuple[bool, None]:
        return False, None

    def release(self) -> None:
        pass


def test_a_read_that_hangs_in_the_backend_is_abandoned_then_the_worker_gives_up() -> None:
    release = threading.Event()
    opened: list[float] = []

    def opener(spec: Any) -> Any:
        opened.append(time.monotonic())
        return _HangingCapture(release)

    cap = Capture("rtsp://192.0.2.10/", name="gate", stall_s=0.3, read_timeout_s=0.1,
                  opener=opener)
    cap.max_stuck_readers = 2
    cap.stuck_slack_s = 0.1
    cap.start()
    try:
        deadline = time.monotonic() + 20
        with pytest.raises(CaptureStuck):
            while time.monotonic() < deadline:
                cap.check()
                cap.wait(0, 0.05)
        assert len(opened) == 3 and cap.stuck_readers == 3
    finally:
        release.set()
        cap.close()
