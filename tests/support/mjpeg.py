"""An IP camera for tests: an HTTP server sending MJPEG (multipart/x-mixed-replace),
as many cheap IP cameras do at ``/video.mjpg`` or ``/mjpg/video.mjpg``.

It can die (:meth:`MjpegServer.stop`: the port closes and every open stream
is cut), come back on the same port (:meth:`start`), or hang
(:meth:`pause`: connections stay open but no bytes flow, as a camera whose
encoder locked up).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

BOUNDARY = b"xunfangframe"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: MjpegServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._track(self.connection)
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        i = 0
        period = 1.0 / owner.fps
        next_t = time.monotonic()
        try:
            while not owner._stopping.is_set():
                if owner._paused.is_set():
                    owner._stopping.wait(0.05)
                    continue
                jpeg = owner.jpegs[i % len(owner.jpegs)]
                i += 1
                self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\n"
                                 b"Content-Length: " + str(len(jpeg)).encode() + b"\r\n\r\n"
                                 + jpeg + b"\r\n")
                self.wfile.flush()
                owner.sent += 1
                next_t += period
                owner._stopping.wait(max(0.0, next_t - time.monotonic()))
        except OSError:
            pass


class MjpegServer:
    """Serves ``frames`` (BGR images) in a loop at ``fps`` on 127.0.0.1."""

    def __init__(self, frames: list[np.ndarray], fps: float = 10.0, port: int = 0) -> None:
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
                      for f in frames]
        self.fps = fps
        self.port = port
        self.sent = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._paused = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.append(conn)

    def start(self) -> MjpegServer:
        self._stopping.clear()
        self._paused.clear()
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Die: close the port and cut every stream."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        if self._thread is not None:
            self._thread.join(5)

    def pause(self) -> None:
        """Hang: keep the connections, send nothing."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
