"""The camera component: runs every configured camera in its own process.

A unit without ``[[cameras]]`` runs this loop idle, so ``xunfang run`` is the
same everywhere; the capture, motion and recording features plug in here.
"""

from __future__ import annotations

from firmware_py.runtime import Component


class CameraComponent(Component):
    name = "camera"

    def step(self) -> None:
        self.ctx.journal.wait_for_change(1.0)
