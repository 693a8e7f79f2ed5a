"""xunfang: the unit software of patrol points, duty kiosks and checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xunfang")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"
