"""The service manager for update tests, where systemd is not PID 1.

``xunfang-update`` calls ``$XUNFANG_SYSTEMCTL restart xunfang.target`` and
``$XUNFANG_SYSTEMCTL is-active --quiet UNIT...``. Pointed at this script, a
restart stops the running daemon and starts a real ``xunfang run -c CONFIG``
from ``ROOT/opt/xunfang/current`` (all three components in one process, as
the units' ExecStart would, resolved through the link at start time);
``is-active`` answers whether that process is alive. ``stop`` ends it.

    XUNFANG_SYSTEMCTL="python servicectl.py --root R --config C --state DIR"
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT_S = 30.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _pid(state: Path) -> int | None:
    try:
        pid = int((state / "pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def stop(state: Path) -> None:
    pid = _pid(state)
    if pid is None:
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    (state / "pid").unlink(missing_ok=True)


def start(state: Path, root: Path, config: Path) -> None:
    xunfang = root / "opt/xunfang/current/bin/xunfang"
    with (state / "daemon.log").open("ab") as log:
        log.write(f"--- start {os.readlink(root / 'opt/xunfang/current')} ---\n".encode())
        log.flush()
        proc = subprocess.Popen([str(xunfang), "run", "-c", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    (state / "pid").write_text(str(proc.pid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="as systemctl's")
    args = parser.parse_args(argv)
    words = [w for w in args.command if not w.startswith("-")]   # --quiet and the like
    if not words:
        parser.error("no command")
    args.verb, args.rest = words[0], words[1:]
    args.state.mkdir(parents=True, exist_ok=True)
    with (args.state / "calls").open("a") as f:
        f.write(" ".join([args.verb, *args.rest]) + "\n")
    if args.verb == "restart":
        stop(args.state)
        start(args.state, args.root, args.config)
        return 0
    if args.verb == "stop":
        stop(args.state)
        return 0
    if args.verb == "is-active":
        return 0 if _pid(args.state) is not None else 3
    print(f"servicectl: unknown verb {args.verb}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
