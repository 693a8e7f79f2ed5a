"""Motion-JPEG in AVI, written from JPEG frames that are already encoded.

The recorder JPEG-encodes every analysed frame once, for its pre-roll ring
buffer. Writing a clip is then only a matter of putting those same bytes into
a container: no decoding, no second encoding (``docs/camera.md``, the codec
decision). OpenCV's own ``VideoWriter`` cannot take encoded frames for MJPEG,
so this module is a small RIFF/AVI 1.0 muxer: a header, one ``00dc`` chunk per
frame in the ``movi`` list, the ``idx1`` index, then the sizes and the frame
rate patched in. Every player and FFmpeg (hence OpenCV) reads it.

A clip cut short by a crash or a power cut still holds whole JPEG chunks after
a valid header: :func:`repair` rebuilds the index and the sizes from them.
AVI 1.0 holds at most 1 GiB: :attr:`MjpegAviWriter.full` says when to start
the next file.

Example::

    with MjpegAviWriter(path, 1280, 720) as avi:
        for jpeg in frames:
            avi.add(jpeg)
        avi.finish(fps=10.0)
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

__all__ = ["AVI_LIMIT_BYTES", "AviInfo", "MjpegAviWriter", "read_info", "repair"]

#: AVI 1.0 offsets are 32-bit and many readers stop at 1 GiB: stay below it.
AVI_LIMIT_BYTES = 1 << 30
_AVIF_HASINDEX = 0x10
_AVIIF_KEYFRAME = 0x10
# Byte offsets of the fields patched at the end (see _header()).
_OFF_RIFF_SIZE = 4
_OFF_HDRL_SIZE = 16
_OFF_AVIH = 24               # 'avih' fourcc; its data starts 8 bytes later
_OFF_STRH = 100              # 'strh' fourcc (after 'LIST' size 'strl')
_HEADER_BYTES = 224          # RIFF … 'LIST' size 'movi'
_OFF_MOVI_SIZE = _HEADER_BYTES - 8
_OFF_MOVI_FOURCC = _HEADER_BYTES - 4


def _fps_fraction(fps: float) -> tuple[int, int]:
    """dwRate/dwScale for a frame rate, to a thousandth of a frame per second."""
    scale = 1000
    rate = max(1, round(fps * scale))
    return rate, scale


def _header(width: int, height: int, frames: int, fps: float, movi_size: int,
            max_chunk: int, index_size: int) -> bytes:
    rate, scale = _fps_fraction(fps)
    usec = round(1_000_000 / fps) if fps > 0 else 0
    max_bps = min(int(max_chunk * fps), 0xFFFFFFFF)
    avih = struct.pack("<10I4I", usec, max_bps, 0, _AVIF_HASINDEX, frames, 0, 1, max_chunk,
                       width, height, 0, 0, 0, 0)
    strh = struct.pack("<4s4sIHHIIIIIIiI4h", b"vids", b"MJPG", 0, 0, 0, 0, scale, rate, 0,
                       frames, max_chunk, -1, 0, 0, 0, width, height)
    strf = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3,
                       0, 0, 0, 0)
    strl = b"strl" + b"strh" + struct.pack("<I", len(strh)) + strh \
        + b"strf" + struct.pack("<I", len(strf)) + strf
    hdrl = b"hdrl" + b"avih" + struct.pack("<I", len(avih)) + avih \
        + b"LIST" + struct.pack("<I", len(strl)) + strl
    riff_size = 4 + (8 + len(hdrl)) + (8 + movi_size) + (8 + index_size if index_size else 0)
    out = b"RIFF" + struct.pack("<I", riff_size) + b"AVI " \
        + b"LIST" + struct.pack("<I", len(hdrl)) + hdrl \
        + b"LIST" + struct.pack("<I", movi_size) + b"movi"
    assert len(out) == _HEADER_BYTES, len(out)
    return out


class MjpegAviWriter:
    """Writes JPEG frames into an AVI file; :meth:`finish` makes it complete.

    The file is flushed and fsync'd by :meth:`finish`, so once it returns the
    clip is on disk. ``close()`` without ``finish()`` leaves what
    :func:`repair` can mend (the crash case); both are safe twice.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int) -> None:
        self.path = Path(path)
        self.width = width
        self.height = height
        self.frames = 0
        self.bytes_written = 0
        self._index: list[tuple[int, int]] = []    # (offset from 'movi', length)
        self._max_chunk = 0
        self._f: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in finish/close)
        self._f.write(_header(width, height, 0, 1.0, 4, 0, 0))
        self._pos = _HEADER_BYTES               # file offset of the next chunk
        self.finished = False

    @property
    def size(self) -> int:
        """Bytes the file will have once finished (the index included)."""
        return self._pos + 8 + 16 * len(self._index)

    @property
    def full(self) -> bool:
        """True when another large frame could pass the 1 GiB limit of AVI 1.0."""
        return self.size + 2 * max(self._max_chunk, 1 << 20) > AVI_LIMIT_BYTES

    def add(self, jpeg: bytes | memoryview) -> None:
        """Append one JPEG frame (the bytes of a whole JPEG file)."""
        if self._f is None:
            raise ValueError(f"AVI {self.path} is closed")
        n = len(jpeg)
        pad = n & 1
        self._f.write(b"00dc" + struct.pack("<I", n))
        self._f.write(jpeg)
        if pad:
            self._f.write(b"\0")
        self._index.append((self._pos - _OFF_MOVI_FOURCC, n))
        self._pos += 8 + n + pad
        self._max_chunk = max(self._max_chunk, n)
        self.frames += 1

    def finish(self, fps: float) -> int:
        """Write the index and the final header; fsync. Returns the file's size."""
        if self._f is None:
            if self.finished:
                return self._pos
            raise ValueError(f"AVI {self.path} was closed unfinished")
        f = self._f
        fps = fps if fps > 0 else 1.0
        index = b"".join(struct.pack("<4sIII", b"00dc", _AVIIF_KEYFRAME, off, n)
                         for off, n in self._index)
        f.write(b"idx1" + struct.pack("<I", len(index)) + index)
        movi_size = self._pos - _OFF_MOVI_FOURCC
        f.seek(0)
        f.write(_header(self.width, self.height, self.frames, fps, movi_size, self._max_chunk,
                        len(index)))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._f = None
        self.finished = True
        self._pos = self._pos + 8 + len(index)
        return self._pos

    def close(self) -> None:
        """Close without finishing (the file is left for :func:`repair`); safe twice."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> MjpegAviWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "finished" if self.finished else ("closed" if self._f is None else "open")
        return (f"<MjpegAviWriter {self.path} {self.width}x{self.height} {self.frames} frames "
                f"{state}>")


class AviInfo:
    """What :func:`read_info` finds in a file this module wrote."""

    def __init__(self, width: int, height: int, frames: int, fps: float, chunks: int) -> None:
        self.width, self.height, self.frames, self.fps, self.chunks = (width, height, frames,
                                                                       fps, chunks)

    def __repr__(self) -> str:
        return (f"AviInfo({self.width}x{self.height}, frames={self.frames}, fps={self.fps:.3f}, "
                f"chunks={self.chunks})")


def _scan_chunks(f: BinaryIO, end: int) -> list[tuple[int, int]]:
    """Whole ``00dc`` chunks after the header: (file offset of the chunk, length)."""
    chunks: list[tuple[int, int]] = []
    pos = _HEADER_BYTES
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8 or head[:4] != b"00dc":
            break
        (n,) = struct.unpack("<I", head[4:])
        if pos + 8 + n > end:
            break                                   # the crash cut this frame
        chunks.append((pos, n))
        pos += 8 + n + (n & 1)
    return chunks


def read_info(path: str | os.PathLike[str]) -> AviInfo:
    """Header fields and the number of whole frame chunks of an MJPEG AVI."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
        if len(head) < _HEADER_BYTES or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
            raise ValueError(f"{path}: not an AVI file")
        usec, _, _, _, frames = struct.unpack("<5I", head[_OFF_AVIH + 8:_OFF_AVIH + 28])
        width, height = struct.unpack("<2I", head[_OFF_AVIH + 40:_OFF_AVIH + 48])
        scale, rate = struct.unpack("<2I", head[_OFF_STRH + 28:_OFF_STRH + 36])
        end = f.seek(0, os.SEEK_END)
        chunks = len(_scan_chunks(f, end))
    fps = rate / scale if scale else (1_000_000 / usec if usec else 0.0)
    return AviInfo(width, height, frames, fps, chunks)


def repair(path: str | os.PathLike[str], fps: float) -> int:
    """Make a clip cut short by a crash whole: keep every complete frame, write the
    index and sizes, fsync. Returns the number of frames kept (0: nothing to keep)."""
    path = Path(path)
    with open(path, "r+b") as f:
        head = f.read(_HEADER_BYTES)
        if len(head) < _HEADER_BYTES or head[:4] != b"RIFF" or \
                head[_OFF_MOVI_FOURCC:_HEADER_BYTES] != b"movi":
            return 0
        width, height = struct.unpack("<2I", head[_OFF_AVIH + 40:_OFF_AVIH + 48])
        end = f.seek(0, os.SEEK_END)
        chunks = _scan_chunks(f, end)
        if not chunks:
            return 0
        last_off, last_n = chunks[-1]
        movi_end = last_off + 8 + last_n + (last_n & 1)
        index = b"".join(struct.pack("<4sIII", b"00dc", _AVIIF_KEYFRAME,
                                     off - _OFF_MOVI_FOURCC, n) for off, n in chunks)
        f.truncate(movi_end)
        f.seek(movi_end)
        f.write(b"idx1" + struct.pack("<I", len(index)) + index)
        f.seek(0)
        f.write(_header(width, height, len(chunks), fps, movi_end - _OFF_MOVI_FOURCC,
                        max(n for _, n in chunks), len(index)))
        f.flush()
        os.fsync(f.fileno())
    return len(chunks)
