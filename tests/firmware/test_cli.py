"""`xunfang journal tail` and `stats` read a journal other processes write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from firmware_py.journal import Journal
from tests.support.schemas import validate
from tests.support.units import write_unit_config


def _xunfang(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firmware_py.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def _journal_with_events(tmp_path: Path, n: int) -> tuple[Path, Journal]:
    data = tmp_path / "data"
    cfg = write_unit_config(tmp_path / "unit.toml", data)
    j = Journal(data / "journal.db", unit="zt-pp-03", site="zhuantang")
    for i in range(n):
        j.append("reader", {"reader": "main", "state": "online" if i % 2 else "offline",
                            "detail": f"try {i}"})
    return cfg, j


def test_tail_prints_the_newest_events_one_per_line(tmp_path: Path) -> None:
    cfg, j = _journal_with_events(tmp_path, 30)
    with j:
        proc = _xunfang("journal", "tail", "-c", str(cfg), "-n", "5", "--no-follow")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["#26", "#27", "#28", "#29", "#30"]
    assert "reader" in lines[-1] and "detail=try 29" in lines[-1]


def test_tail_json_gives_valid_envelopes(tmp_path: Path) -> None:
    cfg, j = _journal_with_events(tmp_path, 3)
    with j:
        proc = _xunfang("journal", "tail", "-c", str(cfg), "--json", "--no-follow")
    envelopes = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["seq"] for e in envelopes] == [1, 2, 3]
    for env in envelopes:
        validate(f"xunfang/v1/zhuantang/zt-pp-03/events/{env['kind']}", env)


def test_tail_follows_events_appended_after_it_started(tmp_path: Path) -> None:
    cfg, j = _journal_with_events(tmp_path, 1)
    proc = subprocess.Popen([sys.executable, "-m", "firmware_py.cli", "journal", "tail", "-c",
                             str(cfg), "-n", "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        # The first line is the last old event: tail is following from then on.
        assert proc.stdout.readline().startswith("#1")
        j.append("alarm", {"source": "panic", "state": "active"})
        line = proc.stdout.readline()
        assert line.startswith("#2") and "alarm" in line and "source=panic" in line
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        j.close()


def test_stats_reports_sequence_acknowledgement_and_pending(tmp_path: Path) -> None:
    cfg, j = _journal_with_events(tmp_path, 12)
    with j:
        j.mark_acked(4)
        journal_id = j.journal_id
    proc = _xunfang("journal", "stats", "-c", str(cfg))
    stats = json.loads(proc.stdout)
    assert stats["journal"] == journal_id
    assert (stats["last_seq"], stats["acked_seq"], stats["pending"]) == (12, 4, 8)
    assert stats["oldest_pending"].endswith("Z")


def test_tail_without_a_journal_says_so(tmp_path: Path) -> None:
    cfg = write_unit_config(tmp_path / "unit.toml", tmp_path / "data")
    proc = _xunfang("journal", "tail", "-c", str(cfg), "--no-follow")
    assert proc.returncode == 1 and "no journal at" in proc.stderr


def test_run_that_cannot_make_its_data_dir_says_so_without_a_traceback(tmp_path: Path) -> None:
    # /proc takes no new folders, even from root: a data_dir the unit cannot create.
    cfg = write_unit_config(tmp_path / "unit.toml", Path("/proc/xunfang/data"),
                            unit={"runtime_dir": str(tmp_path / "run")})
    proc = _xunfang("run", "-c", str(cfg), "station", timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "cannot start: [Errno 2] No such file or directory: '/proc/xunfang'" in proc.stderr
