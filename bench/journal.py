"""Journal append latency next to the raw fsync latency of the same disk.

    .venv/bin/python bench/journal.py [--n 2000] [--dir DIR] [--no-loop]

``append()`` returns only after its commit is fsync'd, so its floor is the
disk's own fsync. This measures both in the same run on the same file
system: by default a loop-mounted ext4 image (when run as root; tmpfs would
ignore fsync and flatter everything), else a folder on the disk holding DIR.
Goal: append p99 within 2 ms of raw fsync p99. Prints figures, asserts none.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_py.journal import Journal

PAYLOAD = {"card": "14008EC793", "reader": "main", "decision": "accepted", "badge": "P-017",
           "role": "patrol", "visit": "v-20261128-0042"}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


@contextlib.contextmanager
def loop_ext4(size_mb: int = 256) -> Iterator[Path]:
    """A fresh ext4 file system on a loop device, mounted in a temp folder."""
    work = Path(tempfile.mkdtemp(prefix="xunfang-bench-", dir="/var/tmp"))
    image, mnt = work / "ext4.img", work / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def raw_fsync(directory: Path, n: int, sync: str) -> list[float]:
    """Append ~300 bytes and fsync (or fdatasync), n times: what a WAL commit costs at least."""
    path = directory / f"raw-{sync}.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    do_sync = os.fsync if sync == "fsync" else os.fdatasync
    block = b"x" * 300
    times: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, block)
            do_sync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return times


def appends(directory: Path, n: int) -> list[float]:
    times: list[float] = []
    with Journal(directory / "journal.db", unit="bench-unit", site="bench") as j:
        for _ in range(50):  # warm the file up: first pages, WAL creation
            j.append("checkin", PAYLOAD)
        for _ in range(n):
            t0 = time.perf_counter()
            j.append("checkin", PAYLOAD)
            times.append(time.perf_counter() - t0)
    return times


def report(label: str, times: list[float]) -> tuple[float, float]:
    p50, p99 = percentile(times, 50) * 1000, percentile(times, 99) * 1000
    print(f"{label:<22} n={len(times):<6} p50={p50:7.3f} ms  p99={p99:7.3f} ms  "
          f"mean={statistics.fmean(times) * 1000:7.3f} ms")
    return p50, p99


def run(directory: Path, n: int) -> None:
    print(f"file system: {fs_type(directory)} at {directory}")
    _, fsync_p99 = report("raw write+fsync", raw_fsync(directory, n, "fsync"))
    report("raw write+fdatasync", raw_fsync(directory, n, "fdatasync"))
    _a50, a99 = report("journal.append()", appends(directory, n))
    print(f"append p99 - fsync p99 = {a99 - fsync_p99:+.3f} ms (goal: within +2 ms); "
          f"ratio p99 {a99 / fsync_p99:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-loop", action="store_true", help="never use a loop-mounted ext4")
    args = parser.parse_args()
    if not args.no_loop and os.geteuid() == 0 and shutil.which("mkfs.ext4"):
        try:
            with loop_ext4() as mnt:
                print("== loop-mounted ext4")
                run(mnt, args.n)
        except subprocess.CalledProcessError as err:
            print(f"loop-mounted ext4 not available ({err}); using the disk only")
    work = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir))
    try:
        if fs_type(work) == "tmpfs":
            print(f"warning: {work} is tmpfs, which ignores fsync: figures mean little")
        print("== the disk holding", args.dir)
        run(work, args.n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
