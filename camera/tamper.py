"""Tamper: someone covered, blurred, turned or froze the camera.

Works on the same small grey frame as motion (:func:`camera.motion.analysis_frame`)
and compares each frame with a *baseline* learned from the camera's own
normal picture (time constant ``baseline_s``; armed after ``learn_s`` seconds
of learning):

``covered``
    The picture's contrast collapses (standard deviation below
    ``cover_ratio`` of the baseline's and below ``cover_std``; or below
    ``cover_std_abs`` with no baseline yet), or its brightness does
    (below ``dark_ratio`` of the baseline's and below ``dark_level``): a hand,
    a cap, a bag, spray paint. A picture that is nearly uniform (deviation
    below ``cover_std_abs``), or dark (below ``dark_level``) and nearly so, is
    covered with no baseline at all: a camera that sees nothing is reported.
``defocused``
    Sharpness (the variance of the Laplacian divided by the picture's
    variance, so that dusk does not look like blur) falls below
    ``defocus_ratio`` of the baseline's: a turned focus ring, grease, a
    fogged dome.
``moved``
    The picture no longer matches the baseline's reference image: on a 4x4
    grid of blurred cells, fewer than ``moved_match`` of the textured cells
    correlate with the reference (correlation is blind to brightness and
    contrast, so lights and the IR switch do not count). Judged only while
    less than ``busy_score`` of the picture is moving, so traffic filling
    the view is not taken for a turned camera.
``frozen``
    Successive frames are identical, pixel for pixel, for ``frozen_s``: a
    real sensor always has noise; a stuck encoder, a decoder repeating the
    last frame or a looped recording do not.

Contrast, brightness and frozen are judged on every frame; sharpness, the
match with the reference, and learning every ``slow_s`` (1 s): their
conditions change no faster, and it keeps the per-frame cost near 0.02 ms.

A condition must hold for ``confirm_s`` (and ``min_frames`` frames) before
``tampered`` is reported, and stop holding for ``clear_s`` before
``restored``. While any tamper is suspected or active the baseline stops
learning, so a slow attack (covering gradually) cannot teach it the new
picture. One kind is active at a time, the first of covered, moved,
defocused, frozen that holds.

Example::

    tamper = TamperDetector(TamperSettings(confirm_s=3))
    for change in tamper.update(grey, frame.t, motion_score):
        print(change.state, change.kind)     # tampered covered … restored covered
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

__all__ = ["KINDS", "TamperChange", "TamperDetector", "TamperFeatures", "TamperSettings"]

TamperKind = Literal["covered", "moved", "defocused", "frozen"]
#: In order of priority: a covered lens is also blurred and unlike the reference.
KINDS: tuple[TamperKind, ...] = ("covered", "moved", "defocused", "frozen")


@dataclass(frozen=True)
class TamperSettings:
    confirm_s: float = 3.0
    clear_s: float = 2.0
    min_frames: int = 5
    learn_s: float = 10.0
    baseline_s: float = 120.0
    cover_ratio: float = 0.25
    cover_std: float = 15.0
    cover_std_abs: float = 3.0
    dark_ratio: float = 0.2
    dark_level: float = 20.0
    defocus_ratio: float = 0.35
    moved_match: float = 0.3
    cell_match: float = 0.5
    busy_score: float = 0.25
    frozen_s: float = 10.0
    grid: int = 4
    #: Sharpness, the reference match and learning run this often, not every frame.
    slow_s: float = 1.0


@dataclass(frozen=True)
class TamperFeatures:
    """What one frame looks like, for the verdict and the event's detail."""

    mean: float
    std: float
    sharpness: float
    match: float | None              # fraction of textured cells like the reference
    identical: bool                  # same pixels as the frame before

    def as_dict(self) -> dict[str, Any]:
        return {"mean": round(self.mean, 1), "std": round(self.std, 2),
                "sharpness": round(self.sharpness, 4),
                "match": None if self.match is None else round(self.match, 3)}


@dataclass(frozen=True)
class TamperChange:
    """``tampered`` or ``restored`` for one kind, with the numbers that decided it."""

    state: Literal["tampered", "restored"]
    kind: TamperKind
    t: float
    features: dict[str, Any]
    baseline: dict[str, Any]


def _cell_means(image: np.ndarray, n: int) -> np.ndarray:
    """The mean of each of n x n cells (area averaging does it in one call)."""
    h, w = image.shape[:2]
    return cv2.resize(image[:h - h % n, :w - w % n], (n, n), interpolation=cv2.INTER_AREA)


def _cell_stats(image: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each cell."""
    mean = _cell_means(image, n)
    var = _cell_means(cv2.multiply(image, image), n) - mean * mean
    return mean, np.maximum(var, 0.0)


class TamperDetector:
    """See the module doc. Feed it every analysed frame with :meth:`update`."""

    def __init__(self, settings: TamperSettings | None = None) -> None:
        self.settings = settings or TamperSettings()
        self.active: TamperKind | None = None
        self.suspected: TamperKind | None = None
        self._suspect_since = 0.0
        self._suspect_frames = 0
        self._clear_since: float | None = None
        self._clear_frames = 0
        self._prev: np.ndarray | None = None
        self._last_change_t: float | None = None
        self._last_t: float | None = None
        self._busy_until = -math.inf
        # The baseline.
        self.learned_s = 0.0
        self._base_std: float | None = None
        self._base_mean: float | None = None
        self._base_sharp: float | None = None
        self._reference: np.ndarray | None = None
        self._ref_cells_ok: np.ndarray | None = None
        self._ref_stats: tuple[np.ndarray, np.ndarray] | None = None
        self.last_features: TamperFeatures | None = None
        self._slow: tuple[float, float | None, np.ndarray] | None = None
        self._slow_fresh = False
        self._next_slow = -math.inf
        self._last_learn_t: float | None = None

    @property
    def armed(self) -> bool:
        """True once the baseline has learned long enough for the relative checks."""
        return self.learned_s >= self.settings.learn_s and self._reference is not None

    def baseline(self) -> dict[str, Any]:
        return {"std": None if self._base_std is None else round(self._base_std, 2),
                "mean": None if self._base_mean is None else round(self._base_mean, 1),
                "sharpness": None if self._base_sharp is None else round(self._base_sharp, 4),
                "learned_s": round(self.learned_s, 1), "armed": self.armed}

    # -- features ---------------------------------------------------------------------------

    def _coarse(self, grey: np.ndarray) -> np.ndarray:
        """Half size and blurred: the scene's layout without its fine texture (grass in
        the wind), which is what "moved" compares."""
        return cv2.GaussianBlur(cv2.pyrDown(grey), (3, 3), 0).astype(np.float32)

    def _match(self, coarse: np.ndarray) -> float | None:
        """Fraction of the reference's textured cells that still correlate with it."""
        ref = self._reference
        if ref is None or ref.shape != coarse.shape or self._ref_stats is None:
            return None
        ok = self._ref_cells_ok
        if ok is None or int(ok.sum()) < 4:
            return None                       # a featureless view: nothing to compare
        n = self.settings.grid
        ref_mean, ref_var = self._ref_stats
        mean, var = _cell_stats(coarse, n)
        cov = _cell_means(cv2.multiply(coarse, ref), n) - mean * ref_mean
        ncc = cov / (np.sqrt(var * ref_var) + 1e-6)
        return float((ncc[ok] > self.settings.cell_match).mean())

    def features(self, grey: np.ndarray, t: float) -> TamperFeatures:
        """This frame's features; sharpness and match are refreshed every ``slow_s``."""
        mean, std = cv2.meanStdDev(grey)
        m, s = float(mean[0, 0]), float(std[0, 0])
        prev = self._prev
        identical = prev is not None and np.array_equal(prev, grey)
        if self._slow is None or t >= self._next_slow:
            self._next_slow = t + self.settings.slow_s
            lap = cv2.Laplacian(grey, cv2.CV_32F)
            _, lstd = cv2.meanStdDev(lap)
            sharp = float(lstd[0, 0]) ** 2 / max(s * s, 1.0)
            coarse = self._coarse(grey)
            self._slow = (sharp, self._match(coarse), coarse)
            self._slow_fresh = True
        sharp, match, _ = self._slow
        return TamperFeatures(m, s, sharp, match, identical)

    # -- the verdict ----------------------------------------------------------------------

    def _conditions(self, f: TamperFeatures, t: float) -> dict[TamperKind, bool]:
        s = self.settings
        # Seeing nothing at all is covered, baseline or not.
        covered = f.std < s.cover_std_abs or (f.mean < s.dark_level and
                                              f.std < 2 * s.cover_std_abs)
        if self._base_std is not None and self._reference is not None:
            covered = covered or (f.std < s.cover_ratio * self._base_std and f.std < s.cover_std)
        if self._base_mean is not None and self._reference is not None:
            covered = covered or (f.mean < s.dark_ratio * self._base_mean and
                                  f.mean < s.dark_level)
        armed = self.armed
        moved = armed and f.match is not None and f.match < s.moved_match and \
            t >= self._busy_until
        defocused = armed and self._base_sharp is not None and \
            f.sharpness < s.defocus_ratio * self._base_sharp
        frozen = self._last_change_t is not None and t - self._last_change_t >= s.frozen_s
        return {"covered": covered, "moved": moved, "defocused": defocused, "frozen": frozen}

    def _learn(self, f: TamperFeatures, t: float) -> None:
        """Move the baseline towards this frame (on the slow cadence)."""
        if not self._slow_fresh or self._slow is None:
            return
        self._slow_fresh = False
        s = self.settings
        dt = 0.0 if self._last_learn_t is None else min(max(t - self._last_learn_t, 0.0),
                                                        s.slow_s * 4)
        self._last_learn_t = t
        coarse = self._slow[2]
        if self._reference is None or self._reference.shape != coarse.shape:
            alpha = 1.0
        else:
            alpha = 1.0 - math.exp(-dt / s.baseline_s)
            # Learn quickly at first, so a short learn_s gives a usable baseline.
            if self.learned_s < s.learn_s:
                alpha = max(alpha, min(1.0, dt / max(self.learned_s + dt, 1e-6)))

        def ema(old: float | None, new: float) -> float:
            return new if old is None or alpha >= 1.0 else old + alpha * (new - old)

        self._base_std = ema(self._base_std, f.std)
        self._base_mean = ema(self._base_mean, f.mean)
        self._base_sharp = ema(self._base_sharp, f.sharpness)
        if alpha >= 1.0 or self._reference is None:
            self._reference = coarse.copy()
        else:
            cv2.accumulateWeighted(coarse, self._reference, alpha)
        self._ref_stats = _cell_stats(self._reference, s.grid)
        self._ref_cells_ok = self._ref_stats[1] >= 4.0      # std of at least 2 grey levels
        self.learned_s += dt

    def update(self, grey: np.ndarray, t: float, motion_score: float = 0.0) -> list[TamperChange]:
        """Judge one frame taken at ``t``; return what changed (usually nothing)."""
        s = self.settings
        self._last_t = t
        f = self.features(grey, t)
        self.last_features = f
        if not f.identical or self._last_change_t is None:
            self._last_change_t = t
        self._prev = grey            # a fresh array every frame (analysis_frame)
        if motion_score >= s.busy_score:
            self._busy_until = t + 1.0
        cond = self._conditions(f, t)
        changes: list[TamperChange] = []
        if self.active is not None:
            if cond[self.active]:
                self._clear_since, self._clear_frames = None, 0
            else:
                if self._clear_since is None:
                    self._clear_since, self._clear_frames = t, 0
                self._clear_frames += 1
                # A frozen picture is over at the first new frame.
                done = self.active == "frozen" or (
                    t - self._clear_since >= s.clear_s and self._clear_frames >= s.min_frames)
                if done:
                    changes.append(TamperChange("restored", self.active, t, f.as_dict(),
                                                self.baseline()))
                    self.active = None
                    self.suspected = None
                    self._clear_since = None
            if self.active is not None:
                return changes
        candidate = next((k for k in KINDS if cond[k]), None)
        if candidate is None:
            self.suspected = None
            if not changes:
                self._learn(f, t)
            return changes
        if candidate != self.suspected:
            self.suspected = candidate
            self._suspect_since, self._suspect_frames = t, 0
        self._suspect_frames += 1
        confirmed = candidate == "frozen" or (
            t - self._suspect_since >= s.confirm_s and self._suspect_frames >= s.min_frames)
        if confirmed:
            self.active = candidate
            self._clear_since = None
            changes.append(TamperChange("tampered", candidate, t, f.as_dict(), self.baseline()))
        return changes
