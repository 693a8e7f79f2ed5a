"""Tap-to-feedback latency of the station, next to raw fsync on the same disk; idle CPU.

    .venv/bin/python bench/checkin.py [--n 1000] [--idle-s 60] [--dir DIR] [--no-loop]

A real station loop (``StationComponent`` with the check-in part) runs in this
process on gpiozero's mock pins, with a sim reader (real ptys) and the journal
on disk. Each tap writes an RDM6300 frame into the reader's pty; the latency
runs from the write of the frame's *last byte* to the ok LED pin going high,
as the mock pin's own history timestamps it. Between taps the LED is switched
off so every tap makes a fresh edge. Taps alternate two enrolled cards (the
reader collapses the same card within 1.5 s), so after the first two every tap
is a recorded repeat in one visit: the path a busy patrol point takes.

Green means on disk, so the floor is the disk's fsync: the raw write+fsync
latency of the same file system is measured in the same run, once before the
taps and once more interleaved with them (one raw write+fsync before each tap,
so both see the disk in the same state: a loop device's fsync drifts by a
factor of two within a minute). Goal: tap p99 within 5 ms of raw fsync p99.
The station's own ``append()`` of each checkin is timed too. By default the
journal and the raw test use a loop-mounted ext4 image when run as root
(tmpfs ignores fsync), as ``bench/journal.py`` does.

Idle CPU: the station with the reader attached and no taps, over ``--idle-s``
seconds (goal: under 1% of one core), for the process and per thread.
Prints figures; asserts none.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from drivers.readers.sim import encode_tap
from firmware_py.checkin import CheckinPart
from firmware_py.clock import SystemClock
from firmware_py.config import parse_config
from firmware_py.journal import Journal
from firmware_py.runtime import UnitContext
from firmware_py.station import StationComponent


def _bench_journal() -> Any:
    """bench/journal.py's helpers (raw fsync, loop-mounted ext4, percentiles)."""
    spec = importlib.util.spec_from_file_location("bench_journal",
                                                  Path(__file__).with_name("journal.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bj = _bench_journal()
OK_LED = 17
CARDS = ("14008EC793", "0000000457")


def unit_config(directory: Path) -> Any:
    return parse_config({
        "unit": {"id": "bench-pp", "site": "bench", "kind": "patrol_point",
                 "data_dir": str(directory / "data"), "runtime_dir": str(directory / "run")},
        "readers": [{"name": "main", "driver": "sim", "port": "sim"}],
        "feedback": {"ok_led": OK_LED, "error_led": 27, "buzzer": 22},
    })


def put_cards(journal: Journal) -> None:
    journal.state_set("desired/cards/unit", {
        "id": "bench-cards", "name": "cards", "scope": "unit", "issued_ms": 1,
        "issued_at": "1970-01-01T00:00:00.001Z", "expires_ms": None,
        "args": {"version": 1, "cards": [
            {"card": CARDS[0], "badge": "PO-1", "role": "police"},
            {"card": "dec:0000001111", "badge": "PA-1", "role": "patrol"}]}})


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(step)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1]
        except (OSError, IndexError):
            continue
        parts = fields.split()
        out[t.name] = out.get(t.name, 0.0) + (int(parts[11]) + int(parts[12])) / tick
    return out


def rising_edge(pin: Any, since: float) -> float | None:
    """Monotonic time of the pin's first rise after ``since``, from its history."""
    t = pin._last_change
    edges: list[float] = []
    for entry in reversed(pin.states[1:]):
        if t < since:
            break
        if entry.state:
            edges.append(t)
        t -= entry.timestamp
    return min(edges) if edges else None


def run(directory: Path, n: int, idle_s: float, warmup: int = 20) -> None:
    print(f"file system: {bj.fs_type(directory)} at {directory}")
    _f50, fsync_p99 = bj.report("raw write+fsync", bj.raw_fsync(directory, n, "fsync"))
    cfg = unit_config(directory)
    factory = MockFactory()
    before_factory = Device.pin_factory
    Device.pin_factory = factory
    journal = Journal(cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site)
    put_cards(journal)
    station = StationComponent(UnitContext(cfg, journal, SystemClock(), threading.Event()))
    station.start()
    try:
        assert station.started.wait(10), "station did not start"
        wait_for(lambda: any(e.kind == "reader" and e.data.get("state") == "online"
                             for e in journal.events_after(0)), 10, "reader online", 0.01)
        (part,) = station.parts
        assert isinstance(part, CheckinPart) and part.feedback is not None
        sim = part.readers["main"].sim  # type: ignore[attr-defined]
        pin = factory.pin(OK_LED)

        # Idle first, on a fresh station: reader attached, no taps.
        time.sleep(1.0)
        cpu0, threads0, wall0 = time.process_time(), thread_cpu(), time.monotonic()
        time.sleep(idle_s)
        cpu1, threads1, wall1 = time.process_time(), thread_cpu(), time.monotonic()
        span = wall1 - wall0
        print(f"idle CPU over {span:.1f} s: {(cpu1 - cpu0) / span * 100:.3f} % of one core "
              f"(goal: under 1 %)")
        for name in sorted(threads1, key=lambda k: threads0.get(k, 0) - threads1[k]):
            used = threads1[name] - threads0.get(name, 0.0)
            print(f"  {name:<28} {used / span * 100:6.3f} %")

        # The station's own checkin commits, timed where they happen.
        appends: list[float] = []
        plain_append = journal.append

        def timed_append(kind: str, data: Any = None, state: Any = None) -> Any:
            t = time.perf_counter()
            event = plain_append(kind, data, state=state)
            if kind == "checkin":
                appends.append(time.perf_counter() - t)
            return event

        journal.append = timed_append  # type: ignore[method-assign]
        latencies: list[float] = []
        fsyncs: list[float] = []
        raw = os.open(directory / "raw-interleaved.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o600)
        try:
            for i in range(warmup + n):
                # One raw write+fsync before each tap: the disk as it is at that moment.
                t = time.perf_counter()
                os.write(raw, b"x" * 300)
                os.fsync(raw)
                raw_s = time.perf_counter() - t
                frame = encode_tap(CARDS[i % 2], "rdm6300")
                sim.write(frame[:-1])
                t0 = time.monotonic()
                sim.write(frame[-1:])
                edge = wait_for(lambda t0=t0: rising_edge(pin, t0), 10, f"green for tap {i}")
                if i >= warmup:
                    latencies.append(edge - t0)
                    fsyncs.append(raw_s)
                part.feedback.off()   # dark again: the next tap makes a fresh edge
        finally:
            os.close(raw)
        print("during the taps, on the same file system:")
        _r50, raw99 = bj.report("  raw write+fsync", fsyncs)
        bj.report("  station's append()", appends[warmup:])
        _t50, t99 = bj.report("  tap -> green LED", latencies)
        print(f"  max={max(latencies) * 1000:.3f} ms  stdev="
              f"{statistics.pstdev(latencies) * 1000:.3f} ms")
        print(f"tap p99 - raw fsync p99 = {t99 - raw99:+.3f} ms (goal: within +5 ms); "
              f"ratio p99 {t99 / raw99:.2f}x (against the fsync run before the taps: "
              f"{t99 - fsync_p99:+.3f} ms)")
        recorded = len(journal.events_after(0, limit=100_000, kinds=["checkin"]))
        print(f"checkins recorded: {recorded}, signals shown: {part.signals}")
    finally:
        station.request_stop()
        station.join(15)
        journal.close()
        Device.pin_factory = before_factory
        factory.reset()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="taps measured (1000)")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle CPU span (60 s)")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-loop", action="store_true", help="never use a loop-mounted ext4")
    args = parser.parse_args()
    if not args.no_loop and os.geteuid() == 0 and shutil.which("mkfs.ext4"):
        try:
            with bj.loop_ext4() as mnt:
                print("== loop-mounted ext4")
                run(mnt, args.n, args.idle_s)
            return 0
        except subprocess.CalledProcessError as err:
            print(f"loop-mounted ext4 not available ({err}); using the disk only")
    work = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir))
    try:
        if bj.fs_type(work) == "tmpfs":
            print(f"warning: {work} is tmpfs, which ignores fsync: figures mean little")
        print("== the disk holding", args.dir)
        run(work, args.n, args.idle_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
