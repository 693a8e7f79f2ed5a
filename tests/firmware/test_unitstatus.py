"""`xunfang status`: a real unit runs (taps, a level order, health), stops, and is read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_py.journal import Journal
from firmware_py.signing import SigningKey, save_signing_key
from tests.support.brokers import Mosquitto
from tests.support.daemon import Daemon
from tests.support.units import ACK_KEY, write_unit_config
from tests.support.uplink import wait_until

XUNFANG = Path(sys.executable).parent / "xunfang"
UNIT, SITE = "zt-pp-03", "zhuantang"
CARD = "14008EC793"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env.update(GPIOZERO_PIN_FACTORY="mock", XUNFANG_CLOCK_SYNCED="1")
    env.update(extra)
    return env


def xunfang(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(XUNFANG), *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(**env), check=False)


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    return wait_until(predicate, timeout, what, step=0.1)


@pytest.fixture(scope="module")
def stopped_unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A unit that ran against a real broker (no ledger), took a tap and a level order,
    reported its health, and was stopped; and the level order's id."""
    tmp = tmp_path_factory.mktemp("unit")
    key = SigningKey.generate("centre-test")
    save_signing_key(key, tmp / "centre.key")
    with Mosquitto() as broker:
        cfg = write_unit_config(
            tmp / "unit.toml", tmp / "data",
            mqtt={"host": "127.0.0.1", "port": broker.port, "health_interval_s": 5},
            security={"command_keys": {"centre-test": key.public_b64()},
                      "ack_keys": {"ledger-test": ACK_KEY}},
            readers=[{"name": "main", "driver": "sim", "port": "sim://rdm6300"}],
            lights={"warning": {"pins": [17, 27]}})
        unit = Daemon(cfg, tmp / "unit.log",
                      env={"GPIOZERO_PIN_FACTORY": "mock", "XUNFANG_CLOCK_SYNCED": "1"})
        unit.start()
        try:
            status_file = tmp / "data/run/station.json"
            wait_for(lambda: status_file.exists() and '"online"' in status_file.read_text(),
                     "the reader online")
            tap = xunfang("sim", "tap", CARD, "-c", str(cfg), "--wait", "10")
            assert tap.returncode == 0, tap.stdout + tap.stderr + unit.text()
            sent = xunfang("send", "level", "2", "--ttl", "6h", "--site", SITE, "--unit", UNIT,
                           "--key", str(tmp / "centre.key"), "--broker",
                           f"127.0.0.1:{broker.port}", "--wait", "10", "--json")
            assert sent.returncode == 0, sent.stdout + sent.stderr + unit.text()
            level_id = json.loads(sent.stdout)["id"]

            def reported() -> bool:
                with Journal(tmp / "data/journal.db", unit=UNIT, site=SITE) as j:
                    health = j.state_get("uplink/last_health")
                    level = j.state_get("device/lights/warning")
                return bool(health) and isinstance(level, dict) and level.get("reason") == "level"

            wait_for(reported, "a health report after the level order", timeout=30)
        finally:
            assert unit.stop() == 0, unit.text()
    yield cfg, level_id


def test_status_in_english_with_every_daemon_stopped(stopped_unit: tuple[Path, str]) -> None:
    cfg, level_id = stopped_unit
    done = xunfang("status", "-c", str(cfg), "-n", "50", LANG="en_US.UTF-8")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"unit {UNIT} (patrol_point) of site {SITE}, xunfang ")
    assert f"level: 2, set by {level_id} for unit, until 20" in out
    assert "light warning: " in out and "(level)" in out
    assert "reader main: " in out
    assert "station: not running (last status 20" in out
    assert "events waiting for the centre: " in out and "the oldest from 20" in out
    assert "broker at the last health report (20" in out and "): connected" in out
    assert "last events:" in out
    assert any(" checkin " in line and f"card={CARD}" in line for line in out.splitlines())


def test_status_is_chinese_by_default(stopped_unit: tuple[Path, str]) -> None:
    cfg, level_id = stopped_unit
    done = xunfang("status", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    assert f"站点 {SITE} 的单元 {UNIT}" in done.stdout
    assert f"等级: 2, 由 {level_id} 设定" in done.stdout
    assert "station: 未运行" in done.stdout
    assert "等待指挥中心确认的事件: " in done.stdout
    assert "上次健康报告时的 MQTT 服务器" in done.stdout
    assert "最近的事件:" in done.stdout


def test_status_json_fields(stopped_unit: tuple[Path, str]) -> None:
    cfg, level_id = stopped_unit
    done = xunfang("status", "-c", str(cfg), "--json", "-n", "50")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc) == {"unit", "site", "kind", "version", "ts", "clock_synced", "level",
                        "lights_override", "lights", "readers", "cameras", "station",
                        "journal", "last_health", "events"}
    assert doc["level"]["level"] == 2 and doc["level"]["by"] == level_id
    assert doc["level"]["scope"] == "unit" and doc["level"]["expires_at"]
    assert doc["lights"]["warning"]["reason"] == "level"
    assert doc["station"]["running"] is False and doc["station"]["pid"] is None
    j = doc["journal"]
    # No ledger ever acknowledged: every event still waits for the centre.
    assert j["pending"] == j["last_seq"] > 0 and j["acked_seq"] == 0
    assert j["oldest_pending"] and j["oldest_pending_age_s"] >= 0
    assert doc["last_health"]["broker"]["state"] == "connected"
    assert doc["last_health"]["version"] == doc["version"]
    kinds = [e["kind"] for e in doc["events"]]
    assert "checkin" in kinds and "command" in kinds


def test_status_without_a_journal_says_so(tmp_path: Path) -> None:
    cfg = write_unit_config(tmp_path / "unit.toml", tmp_path / "data")
    done = xunfang("status", "-c", str(cfg), "--lang", "en")
    assert done.returncode == 1
    assert "the unit has not run yet" in done.stderr


def test_status_of_an_unreadable_journal_is_one_line(tmp_path: Path) -> None:
    cfg = write_unit_config(tmp_path / "unit.toml", tmp_path / "data")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/journal.db").write_bytes(b"not a database " * 100)
    done = xunfang("status", "-c", str(cfg), "--lang", "en")
    assert done.returncode == 1
    assert done.stderr.startswith("cannot read the journal: ")
    assert "journal.db" in done.stderr and "Traceback" not in done.stderr


def test_status_while_the_station_runs_names_its_pid(tmp_path: Path) -> None:
    cfg = write_unit_config(tmp_path / "unit.toml", tmp_path / "data",
                            readers=[{"name": "main", "driver": "sim", "port": "sim://rdm6300"}])
    station = Daemon(cfg, tmp_path / "station.log", ("station",),
                     env={"GPIOZERO_PIN_FACTORY": "mock", "XUNFANG_CLOCK_SYNCED": "1"})
    station.start()
    try:
        status_file = tmp_path / "data/run/station.json"
        wait_for(lambda: status_file.exists() and '"online"' in status_file.read_text(),
                 "the reader online")
        done = xunfang("status", "-c", str(cfg), "--json")
    finally:
        station.stop()
    assert station.proc is not None
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["station"]["running"] is True
    assert doc["station"]["pid"] == station.proc.pid
    assert doc["readers"]["main"]["state"] == "online"
    assert doc["last_health"] is None   # no uplink ran
