"""``xunfang run -c FILE [components]`` as a child process, as systemd runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

XUNFANG = Path(sys.executable).parent / "xunfang"


class Daemon:
    """Start, SIGTERM (``stop``) or SIGKILL (``kill``) a unit daemon; its output in ``log``.

    Under ``setpriv --pdeathsig KILL`` where available, so a crashed test never
    leaves a daemon behind.
    """

    def __init__(self, config: Path, log: Path, components: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.config, self.log, self.components = config, log, components
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        prefix = [p, "--pdeathsig", "KILL"] if (p := shutil.which("setpriv")) else []
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*prefix, str(XUNFANG), "run", "-c", str(self.config), *self.components],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
