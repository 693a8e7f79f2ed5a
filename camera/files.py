"""Where the camera's footage lives, what its files are called, and their hashes.

No OpenCV here: the camera daemon's supervisor (retention) uses this module
and stays small; the worker's recorder writes by the same rules::

    clips/{camera}/{YYYY-MM-DD}/{YYYYmmddTHHMMSS.fffZ}-{trigger}.avi   (+ .sha256)
    snapshots/{camera}/{YYYY-MM-DD}/{YYYYmmddTHHMMSS.fffZ}-{trigger}.jpg

Names sort by the time the footage was recorded (UTC), which retention relies
on. A file being written ends in ``.part`` and is renamed when whole.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["CLIPS_DIR", "HASH_SUFFIX", "PART_SUFFIX", "SNAPSHOTS_DIR", "checkin_cursor",
           "device_key", "fsync_dir", "media_path", "sha256_file", "write_durably",
           "write_snapshot"]

CLIPS_DIR = "clips"
SNAPSHOTS_DIR = "snapshots"
PART_SUFFIX = ".part"
HASH_SUFFIX = ".sha256"


def device_key(camera: str) -> str:
    """The journal state key the uplink's health reads for this camera."""
    return f"device/cameras/{camera}"


def checkin_cursor(camera: str) -> str:
    """The journal cursor of the check-ins this camera has photographed."""
    return f"camera-checkins/{camera}"


def _stamp(wall_ms: int) -> tuple[str, str]:
    dt = datetime.fromtimestamp(wall_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%d"), dt.strftime("%Y%m%dT%H%M%S.") + f"{wall_ms % 1000:03d}Z"


def media_path(data_dir: Path, kind: str, camera: str, wall_ms: int, trigger: str,
               suffix: str) -> Path:
    """``{data_dir}/{clips|snapshots}/{camera}/{YYYY-MM-DD}/{YYYYmmddTHHMMSS.fffZ}-{trigger}{suffix}``.

    Names sort by time (retention relies on it); a name taken already (or
    being written) gets ``-2``, ``-3``…
    """
    day, stamp = _stamp(wall_ms)
    folder = data_dir / kind / camera / day
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        name = f"{stamp}-{trigger}{'' if n == 1 else f'-{n}'}{suffix}"
        path = folder / name
        if not path.exists() and not path.with_name(name + PART_SUFFIX).exists():
            return path
        n += 1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + PART_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_snapshot(data_dir: Path, camera: str, trigger: str, wall_ms: int, jpeg: bytes,
                   width: int, height: int) -> dict[str, Any]:
    """Write a JPEG snapshot durably; return its ``{path, bytes, sha256, width, height}``."""
    path = media_path(data_dir, SNAPSHOTS_DIR, camera, wall_ms, trigger, ".jpg")
    write_durably(path, jpeg)
    return {"path": path.relative_to(data_dir).as_posix(), "bytes": len(jpeg),
            "sha256": hashlib.sha256(jpeg).hexdigest(), "width": width, "height": height}
