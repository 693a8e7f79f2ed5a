"""Retention: footage is deleted oldest first, and always before the journal starves.

The camera's files live under the data directory::

    clips/{camera}/{YYYY-MM-DD}/{YYYYmmddTHHMMSS.fffZ}-{trigger}.avi   (+ .sha256)
    snapshots/{camera}/{YYYY-MM-DD}/{YYYYmmddTHHMMSS.fffZ}-{trigger}.jpg

and their names sort by the time they were recorded. :meth:`Retention.run`
(the camera daemon calls it every ``RETENTION_EVERY_S`` and after each new
clip) deletes, each deletion a ``footage_deleted`` event:

1. per camera, footage older than ``max_age_days`` (``reason: retention``),
   but only while the clock is synchronised: a Pi that booted with a clock
   years ahead must not take all its footage for old;
2. per camera, the oldest footage while it takes more than ``quota_mb``
   (``retention``);
3. across cameras, the oldest footage while the disk has less free space than
   the largest ``reserve_mb`` (``disk``): footage goes before anything else,
   and the journal keeps its room. If there is nothing left to delete the
   state ``footage/disk`` says so (``short: true``) and the camera's health
   shows ``disk_short``.

A deletion is journaled first, then the file goes, so the centre always
learns about it (a crash in between deletes the file again next time, with
a second event it can dedupe by ``path``). When the disk is short and the
journal cannot take the event, the file goes anyway (free space first) and
the event is recorded as soon as the journal takes it again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firmware_py.clock import Clock, rfc3339_ms
from firmware_py.config import CameraConfig
from firmware_py.exc import JournalError
from firmware_py.journal import Journal

from .files import CLIPS_DIR, HASH_SUFFIX, PART_SUFFIX, SNAPSHOTS_DIR, sha256_file

log = logging.getLogger("xunfang.camera.retention")

__all__ = ["FootageFile", "Retention", "inventory"]

_STAMP_RE = re.compile(r"^(\d{8}T\d{6}\.\d{3})Z")
#: Free this much beyond the reserve when the disk is short, so it does not flap.
HEADROOM_MB = 32


@dataclass(frozen=True)
class FootageFile:
    """One clip or snapshot on disk (a clip's ``.sha256`` file counts with it)."""

    path: Path
    rel: str
    camera: str
    kind: str            # "clip" or "snapshot"
    bytes: int
    stamp_ms: int

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.stamp_ms, self.rel)


def _stamp_ms(path: Path) -> int:
    m = _STAMP_RE.match(path.name)
    if m:
        dt = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    try:
        return int(path.stat().st_mtime * 1000)
    except OSError:
        return 0


def inventory(data_dir: Path, camera: str) -> tuple[list[FootageFile], int]:
    """A camera's finished footage, oldest first, and the bytes of clips still being
    written (counted against the quota, never deleted)."""
    files: list[FootageFile] = []
    writing = 0
    for folder, kind in ((CLIPS_DIR, "clip"), (SNAPSHOTS_DIR, "snapshot")):
        root = data_dir / folder / camera
        if not root.is_dir():
            continue
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    size = path.stat().st_size
                except OSError:
                    continue                      # deleted under our feet
                if name.endswith(PART_SUFFIX) or name.endswith(".tmp.mp4"):
                    writing += size
                    continue
                if name.endswith(HASH_SUFFIX):
                    continue
                side = path.with_name(name + HASH_SUFFIX)
                if kind == "clip":
                    with suppress(OSError):
                        size += side.stat().st_size
                files.append(FootageFile(path, path.relative_to(data_dir).as_posix(), camera,
                                         kind, size, _stamp_ms(path)))
    files.sort(key=lambda f: f.sort_key)
    return files, writing


class Retention:
    """Applies quota, age and the disk reserve to every camera's footage (module doc).

    ``free_bytes()`` is the free space of the data directory's file system
    (the seam for disk-full tests).
    """

    def __init__(self, data_dir: Path, cameras: Iterable[CameraConfig], journal: Journal,
                 clock: Clock, free_bytes: Callable[[], int] | None = None,
                 headroom_mb: float = HEADROOM_MB) -> None:
        self.data_dir = Path(data_dir)
        self.cameras = list(cameras)
        self.journal = journal
        self.clock = clock
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.data_dir).free)
        self.reserve_bytes = max((c.reserve_mb for c in self.cameras), default=0) * 2**20
        self.headroom_bytes = int(headroom_mb * 2**20)
        self._unreported: list[dict[str, Any]] = []
        self.deleted = 0
        self.deleted_bytes = 0
        self.disk_short = False
        self.last_error: str | None = None

    def run(self) -> list[dict[str, Any]]:
        """One pass of the rules; returns the ``footage_deleted`` data of each deletion."""
        self._report_backlog()
        done: list[dict[str, Any]] = []
        per_camera: dict[str, list[FootageFile]] = {}
        writing: dict[str, int] = {}
        now_ms = self.clock.wall_ms()
        synced = self.clock.synced()
        for cam in self.cameras:
            files, writing[cam.name] = inventory(self.data_dir, cam.name)
            if synced:
                cutoff = now_ms - cam.max_age_days * 86_400_000
                while files and files[0].stamp_ms < cutoff:
                    done.append(self._delete(files.pop(0), "retention"))
            quota = cam.quota_mb * 2**20
            total = sum(f.bytes for f in files) + writing[cam.name]
            while files and total > quota:
                f = files.pop(0)
                done.append(self._delete(f, "retention"))
                total -= f.bytes
            per_camera[cam.name] = files
        done += self._free_disk(per_camera)
        self._write_state(per_camera, writing)
        return [d for d in done if d]

    def _free_disk(self, per_camera: dict[str, list[FootageFile]]) -> list[dict[str, Any]]:
        if not self.reserve_bytes:
            self.disk_short = False
            return []
        try:
            free = self.free_bytes()
        except OSError as err:
            self.last_error = f"cannot read free disk space: {err}"
            return []
        if free >= self.reserve_bytes:
            self.disk_short = False
            return []
        target = self.reserve_bytes + self.headroom_bytes
        pool = sorted((f for files in per_camera.values() for f in files),
                      key=lambda f: f.sort_key)
        done: list[dict[str, Any]] = []
        log.warning("disk has %.0f MB free, below the %.0f MB reserve: deleting the oldest "
                    "footage", free / 2**20, self.reserve_bytes / 2**20)
        while pool and free < target:
            f = pool.pop(0)
            per_camera[f.camera].remove(f)
            done.append(self._delete(f, "disk"))
            try:
                free = self.free_bytes()
            except OSError:
                free += f.bytes
        self.disk_short = free < self.reserve_bytes
        if self.disk_short:
            log.error("disk has %.0f MB free and no footage is left to delete: the reserve "
                      "of %.0f MB is not met", free / 2**20, self.reserve_bytes / 2**20)
        return done

    def _delete(self, f: FootageFile, reason: str) -> dict[str, Any]:
        side = f.path.with_name(f.path.name + HASH_SUFFIX)
        digest = None
        try:
            text = side.read_text(encoding="ascii").split()
            if text and re.fullmatch(r"[0-9a-f]{64}", text[0]):
                digest = text[0]
        except OSError:
            pass
        if digest is None:
            try:
                digest, _ = sha256_file(f.path)
            except OSError as err:
                log.error("cannot read %s before deleting it: %s", f.rel, err)
                digest = ""
        data: dict[str, Any] = {"camera": f.camera, "path": f.rel, "sha256": digest,
                                "reason": reason, "kind": f.kind, "bytes": f.bytes,
                                "recorded": rfc3339_ms(f.stamp_ms)}
        recorded = self._record(data)
        if not recorded and reason != "disk":
            return {}                     # keep the file until the deletion can be told
        for p in (f.path, side):
            try:
                p.unlink(missing_ok=True)
            except OSError as err:
                self.last_error = f"cannot delete {f.rel}: {err}"
                log.error("%s", self.last_error)
        self._prune_dirs(f.path.parent)
        self.deleted += 1
        self.deleted_bytes += f.bytes
        log.info("deleted %s %s (%d bytes, %s)", f.kind, f.rel, f.bytes, reason)
        return data

    def _record(self, data: dict[str, Any]) -> bool:
        try:
            self.journal.append("footage_deleted", data)
            return True
        except JournalError as err:
            self.last_error = f"cannot record a deletion: {err}"
            log.error("%s", self.last_error)
            self._unreported.append(data)
            return False

    def _report_backlog(self) -> None:
        while self._unreported:
            try:
                self.journal.append("footage_deleted", self._unreported[0])
            except JournalError:
                return
            self._unreported.pop(0)

    def _prune_dirs(self, folder: Path) -> None:
        """Remove day folders left empty (never the camera's own folder)."""
        try:
            if folder.parent.parent.name in (CLIPS_DIR, SNAPSHOTS_DIR) and \
                    not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            pass

    def _write_state(self, per_camera: dict[str, list[FootageFile]],
                     writing: dict[str, int]) -> None:
        try:
            for name, files in per_camera.items():
                self.journal.state_set(f"footage/{name}", {
                    "files": len(files),
                    "mb": round((sum(f.bytes for f in files) + writing.get(name, 0)) / 2**20, 1),
                    "oldest": rfc3339_ms(files[0].stamp_ms) if files else None,
                    "disk_short": self.disk_short,
                })
        except JournalError as err:
            log.error("cannot write the footage state: %s", err)

    def stats(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "deleted_mb": round(self.deleted_bytes / 2**20, 1),
                "disk_short": self.disk_short, "unreported": len(self._unreported),
                "last_error": self.last_error}
