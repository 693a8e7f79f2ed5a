"""Test plumbing for the reader drivers: raw pty pairs, callback recorders, a manual clock.

Nothing here imitates a driver or a port: ptys are real kernel ptys, and the
driver code under test opens them with pyserial like any serial device.
"""

from __future__ import annotations

import contextlib
import os
import pty
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from drivers.readers.base import CardRead

DEADLINE_S = 5.0


class PtyPair:
    """A raw pty: the driver opens ``path`` (the slave); the test writes the master."""

    def __init__(self) -> None:
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_available(self, timeout: float = 0.2) -> bytes:
        import select

        out = bytearray()
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                break
            out += os.read(self.master, 4096)
        return bytes(out)

    def close(self) -> None:
        """Close both sides: the driver's open slave fails, like a pulled USB cable."""
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def point(link: str, target: str) -> None:
    """Re-point a symlink atomically (the port path a reader thread was given)."""
    tmp = link + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


class Recorder:
    """Collects ``on_card`` and ``on_state`` calls; waits on them with a deadline."""

    def __init__(self) -> None:
        self.cards: list[CardRead] = []
        self.states: list[tuple[str, str, str]] = []
        self._cond = threading.Condition()

    def on_card(self, read: CardRead) -> None:
        with self._cond:
            self.cards.append(read)
            self._cond.notify_all()

    def on_state(self, reader: str, state: str, detail: str) -> None:
        with self._cond:
            self.states.append((reader, state, detail))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[Recorder], Any], timeout: float = DEADLINE_S,
             what: str = "condition") -> Any:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self), timeout)
        assert ok, (f"timed out after {timeout} s waiting for {what}; cards="
                    f"{[c.card_hex for c in self.cards]} states={self.states}")
        return ok

    def wait_cards(self, n: int, timeout: float = DEADLINE_S) -> list[str]:
        self.wait(lambda r: len(r.cards) >= n, timeout, f"{n} card(s)")
        return self.card_ids

    def wait_state(self, state: str, count: int = 1, timeout: float = DEADLINE_S) -> str:
        """Wait until ``state`` was reported ``count`` times; return its latest detail."""
        self.wait(lambda r: r.state_names.count(state) >= count, timeout,
                  f"state {state!r} x{count}")
        return [d for _, s, d in self.states if s == state][-1]

    @property
    def card_ids(self) -> list[str]:
        with self._cond:
            return [c.card_hex for c in self.cards]

    @property
    def state_names(self) -> list[str]:
        return [s for _, s, _ in self.states]


class ManualClock:
    """A monotonic clock the test moves by hand (for repeat collapse)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE_S,
               what: str = "condition", interval: float = 0.005) -> Any:
    """Poll ``predicate`` until true or fail at the deadline (for state with no callback)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
