"""One running instance per unit and component: an ``flock`` on ``{data_dir}/.lock-NAME``.

``xunfang run`` takes the lock of every component it starts before it touches
the journal, the status file or the sim reader links, so a second start of
the same unit leaves the running one alone (docs/operations.md, "One instance
per unit"). The kernel drops a lock when its holder exits, crash or not: a
lock file left behind never blocks a start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .exc import RuntimeFault

LOCK_PREFIX = ".lock-"
# The winner writes its pid just after it locks: a loser that reads in between
# waits this long for it before it names no pid.
_PID_WAIT_S = 1.0


class AlreadyRunning(RuntimeFault):
    """Another process holds the lock of a component of this unit."""

    def __init__(self, component: str, path: Path, pid: int | None) -> None:
        self.component, self.path, self.pid = component, path, pid
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"{component} of this unit is already running ({holder}, lock "
                         f"{path}): not starting a second one")


def lock_path(data_dir: Path, component: str) -> Path:
    return Path(data_dir) / f"{LOCK_PREFIX}{component}"


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class ComponentLock:
    """The exclusive lock of one component of the unit whose data is in ``data_dir``."""

    def __init__(self, data_dir: Path, component: str) -> None:
        self.component = component
        self.path = lock_path(data_dir, component)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock; :class:`AlreadyRunning` when another holds it, OSError when
        the file cannot be made."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Close-on-exec: a child (ffmpeg) that outlives the daemon must not keep the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(self.component, self.path, self._holder()) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _holder(self) -> int | None:
        deadline = time.monotonic() + _PID_WAIT_S
        while (pid := _read_pid(self.path)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return pid

    def release(self) -> None:
        """Let go (the file stays: removing it would race a starting instance)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __repr__(self) -> str:
        return f"<ComponentLock {self.path} {'held' if self.held else 'free'}>"


class UnitLock:
    """The locks of every component one ``xunfang run`` starts: all of them, or none."""

    def __init__(self, data_dir: Path, components: Iterable[str]) -> None:
        self.locks = [ComponentLock(data_dir, name) for name in components]

    def acquire(self) -> UnitLock:
        taken: list[ComponentLock] = []
        try:
            for lock in self.locks:
                lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in taken:
                lock.release()
            raise
        return self

    def release(self) -> None:
        for lock in self.locks:
            lock.release()

    def __enter__(self) -> UnitLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
