"""The camera's errors: one family with its own root, :class:`CameraError`.

Leaves also inherit a builtin, so callers may catch either (the gpiozero habit).
Messages name the camera or the source they are about.
"""

from __future__ import annotations

__all__ = ["CameraError", "CaptureStuck", "FootageError", "SourceUnavailable"]


class CameraError(Exception):
    """Something about a camera, its stream or its footage."""


class SourceUnavailable(CameraError, OSError):
    """A camera source could not be opened (no device, refused, no such file)."""


class CaptureStuck(CameraError, RuntimeError):
    """Reads hang inside the capture backend and ignore their timeouts: the worker
    process must be restarted to get rid of them."""


class FootageError(CameraError, OSError):
    """A clip or a snapshot could not be written."""
