"""Motion: is something moving in the picture, and how much?

Computed on a small grey frame (``rows`` high, 100 by default, as Frigate
does), never on the full image: :func:`analysis_frame` scales the decoded
frame down first (nearest-neighbour on the colour frame, then grey: 0.07 ms
at 640x480 where an area-averaging resize costs 1.7 ms), and everything after
works on some 18,000 pixels.

:class:`MotionDetector` keeps a background that learns slowly (a time
constant of ``background_s`` seconds, so a changing frame rate does not
change it), and for every frame:

1. blurs the small frame (sensor noise) and compares it with the frame of
   ``lag_s`` ago, at ``threshold`` grey levels, outside the masks (polygons
   to ignore: a tree, a flag, a sign that blinks). Nothing changed, the
   usual case: no motion, after four cheap calls;
2. otherwise compares it with the background: if more than
   ``global_change`` of the analysed area differs at once, the scene did not
   move, the light did (lights switched on, the IR cut filter at dusk, auto
   exposure): the background is recalibrated for ``recalibrate_s`` instead
   of reporting motion;
3. keeps the changes from the background that lie near a change since the
   lagged frame: where an object used to stand before the background has
   learned it gone (a "ghost") is not motion, so an event ends when the
   movement does, not seconds later;
4. dilates what is left and keeps the blobs of at least ``min_area`` (a
   fraction of the frame): motion is any such blob, its score the moving
   fraction of the analysed area.

Sensitivity (per alert level in ``[[cameras]] sensitivity``) divides the
threshold and the minimum area: 1.5 at level 1 reports smaller, fainter
movements than 1.0 at level 3.

Example::

    detector = MotionDetector(MotionSettings(threshold=25, min_area=0.001))
    result = detector.detect(analysis_frame(frame.image), frame.t)
    if result.motion:
        print(result.score, result.boxes)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["MotionDetector", "MotionResult", "MotionSettings", "analysis_frame", "polygon_mask"]

Polygon = Sequence[Sequence[float]]


def analysis_frame(image: np.ndarray, rows: int = 100) -> np.ndarray:
    """The small grey frame motion and tamper work on: ``rows`` high, aspect kept."""
    h, w = image.shape[:2]
    if h != rows:
        width = max(8, round(w * rows / h))
        # Nearest-neighbour: 0.07 ms at 640x480 where bilinear takes 0.11 and area
        # averaging 1.7; the blur that motion applies next takes care of the noise.
        image = cv2.resize(image, (width, rows), interpolation=cv2.INTER_NEAREST)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image


def polygon_mask(shape: tuple[int, int], polygons: Sequence[Polygon]) -> np.ndarray | None:
    """255 where the picture is analysed, 0 inside the mask polygons; None without masks.

    Polygon corners are fractions of the width and height (0,0 is top left),
    so a mask drawn once fits every resolution of the same camera.
    """
    if not polygons:
        return None
    h, w = shape
    mask = np.full((h, w), 255, np.uint8)
    for poly in polygons:
        pts = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in poly], np.int32)
        cv2.fillPoly(mask, [pts], 0)
    return mask


@dataclass(frozen=True)
class MotionSettings:
    """The knobs of :class:`MotionDetector` (``[[cameras]] motion_*`` and friends)."""

    threshold: int = 25
    min_area: float = 0.001
    background_s: float = 5.0
    global_change: float = 0.6
    masks: tuple[tuple[tuple[float, float], ...], ...] = ()
    dilate: int = 2
    recalibrate_s: float = 1.0
    blur: int = 3
    lag_s: float = 0.1


@dataclass(frozen=True)
class MotionResult:
    """One frame's verdict. ``boxes`` are (x, y, w, h) as fractions of the frame."""

    motion: bool
    score: float
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    recalibrating: bool = False
    global_change: bool = False


@dataclass
class _Background:
    image: np.ndarray                     # float32 running average
    mask: np.ndarray | None
    area: int                             # pixels analysed (outside the masks)
    last_t: float
    recal_until: float = -math.inf
    recent: deque[tuple[float, np.ndarray]] = field(default_factory=deque)

    def lagged(self, t: float, lag_s: float) -> np.ndarray | None:
        """The newest kept frame at least ``lag_s`` older than ``t`` (else the oldest)."""
        best = None
        for ft, image in self.recent:
            if ft <= t - lag_s + 1e-6:
                best = image
            else:
                break
        if best is None and self.recent:
            best = self.recent[0][1]
        return best

    def keep(self, t: float, image: np.ndarray, lag_s: float) -> None:
        self.recent.append((t, image))
        while len(self.recent) > 1 and self.recent[1][0] <= t - lag_s + 1e-6:
            self.recent.popleft()


class MotionDetector:
    """Finds motion in successive :func:`analysis_frame` frames (see the module doc)."""

    def __init__(self, settings: MotionSettings | None = None, sensitivity: float = 1.0) -> None:
        self.settings = settings or MotionSettings()
        self.sensitivity = sensitivity
        self._bg: _Background | None = None
        self._kernel = np.ones((3, 3), np.uint8)
        self.recalibrations = 0

    @property
    def sensitivity(self) -> float:
        return self._sensitivity

    @sensitivity.setter
    def sensitivity(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"motion sensitivity must be above 0, got {value}")
        self._sensitivity = float(value)

    def reset(self) -> None:
        """Forget the background: the next frame starts a new one."""
        self._bg = None

    def _start(self, blurred: np.ndarray, t: float) -> None:
        mask = polygon_mask(blurred.shape[:2], self.settings.masks)
        area = int(np.count_nonzero(mask)) if mask is not None else blurred.size
        self._bg = _Background(blurred.astype(np.float32), mask, max(area, 1), t)
        self._bg.keep(t, blurred, self.settings.lag_s)

    def detect(self, grey: np.ndarray, t: float) -> MotionResult:
        """Analyse one small grey frame taken at ``t`` seconds."""
        s = self.settings
        blurred = cv2.GaussianBlur(grey, (s.blur, s.blur), 0) if s.blur > 1 else grey
        bg = self._bg
        if bg is None or bg.image.shape != blurred.shape:
            self._start(blurred, t)
            return MotionResult(False, 0.0, recalibrating=True)
        dt = min(max(t - bg.last_t, 0.0), 5.0)
        bg.last_t = t
        threshold = max(1, round(s.threshold / self._sensitivity))
        alpha = 1.0 - math.exp(-dt / s.background_s) if s.background_s > 0 else 1.0
        previous = bg.lagged(t, s.lag_s)
        bg.keep(t, blurred, s.lag_s)
        if t < bg.recal_until:
            cv2.accumulateWeighted(blurred, bg.image, 0.5)
            return MotionResult(False, 0.0, recalibrating=True)
        recent = None
        if previous is not None:
            # Nothing changed since a moment ago: no motion and no light switched (the
            # common case, and the cheap one: four calls).
            _, recent = cv2.threshold(cv2.absdiff(blurred, previous), threshold, 255,
                                      cv2.THRESH_BINARY)
            if bg.mask is not None:
                recent = cv2.bitwise_and(recent, bg.mask)
            if cv2.countNonZero(recent) == 0:
                cv2.accumulateWeighted(blurred, bg.image, alpha)
                return MotionResult(False, 0.0)
        diff = cv2.absdiff(blurred, cv2.convertScaleAbs(bg.image))
        _, changed = cv2.threshold(diff, threshold, 255, cv2.THRESH_BINARY)
        if bg.mask is not None:
            changed = cv2.bitwise_and(changed, bg.mask)
        changed_fraction = cv2.countNonZero(changed) / bg.area
        if changed_fraction >= s.global_change:
            # The light changed, not the scene: learn the new picture quickly.
            self.recalibrations += 1
            bg.image[:] = blurred
            bg.recal_until = t + s.recalibrate_s
            return MotionResult(False, round(changed_fraction, 4), recalibrating=True,
                                global_change=True)
        if recent is not None:
            if s.dilate:
                recent = cv2.dilate(recent, self._kernel, iterations=s.dilate)
            moving = cv2.bitwise_and(changed, recent)
        else:
            moving = changed
        score = cv2.countNonZero(moving) / bg.area
        boxes: list[tuple[float, float, float, float]] = []
        if score > 0:
            grown = cv2.dilate(moving, self._kernel, iterations=s.dilate) if s.dilate else moving
            # findContours and a short loop: 40 us where connectedComponentsWithStats
            # takes 110 on the same masks.
            contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            min_px = s.min_area / self._sensitivity * grey.size
            h, w = grey.shape[:2]
            for c in contours:
                if cv2.contourArea(c) >= min_px:
                    x, y, bw, bh = cv2.boundingRect(c)
                    boxes.append((round(x / w, 4), round(y / h, 4), round(bw / w, 4),
                                  round(bh / h, 4)))
        if alpha > 0:
            cv2.accumulateWeighted(blurred, bg.image, alpha)
        return MotionResult(bool(boxes), round(score, 4), tuple(boxes))
