"""The runtime: READY and watchdog pings through a NOTIFY_SOCKET the test owns,
pings withheld while a loop hangs, failed loops restarted, clean SIGTERM stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_py.clock import ManualClock
from firmware_py.config import UnitConfig
from firmware_py.journal import Journal
from firmware_py.runtime import Component, Notifier, Runtime, UnitContext
from tests.support.units import make_config, write_unit_config


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that collects messages."""

    def __init__(self, path: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"xunfang-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, since: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return [(t, m) for t, m in self.messages if key in m and t >= since]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0,
                 since: float = 0.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, msg in self.with_key(key, since):
                if value is None or msg[key] == value:
                    return msg
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} notification within {timeout} s: {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path / "notify.sock")
    yield lst
    lst.close()


class Ticker(Component):
    """A component whose loop can be made to hang or to raise on demand."""

    name = "ticker"
    restart_min_s = 0.05
    restart_max_s = 0.2

    def __init__(self, ctx: UnitContext) -> None:
        super().__init__(ctx)
        self.steps = 0
        self.hang = threading.Event()
        self.release = threading.Event()
        self.fail_next = threading.Event()
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def step(self) -> None:
        if self.fail_next.is_set():
            self.fail_next.clear()
            raise RuntimeError("simulated fault in the loop")
        if self.hang.is_set():
            self.release.wait(30)
            self.hang.clear()
        self.steps += 1
        self.sleep(0.02)


def _config(tmp_path: Path) -> UnitConfig:
    return make_config(tmp_path / "data")


def _runtime(cfg: UnitConfig, env: dict[str, str], stall_s: float | None = None) -> Runtime:
    return Runtime(cfg, ["ticker"], clock=ManualClock(), notifier=Notifier(env),
                   factories={"ticker": Ticker}, stall_s=stall_s)


def test_ready_then_watchdog_pings_while_every_loop_beats(tmp_path: Path,
                                                         listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"}
    rt = _runtime(_config(tmp_path), env)
    rt.start()
    thread = threading.Thread(target=rt.run_until_stopped, daemon=True)
    thread.start()
    try:
        listener.wait_for("READY", "1")
        t0 = time.monotonic()
        time.sleep(1.0)
        pings = listener.with_key("WATCHDOG", since=t0)
        # WATCHDOG_USEC/4 = 0.1 s: about ten in a second; generous bounds for a busy CI.
        assert 4 <= len(pings) <= 14, pings
    finally:
        rt.request_stop()
        thread.join(5)
        rt.stop()
    listener.wait_for("STOPPING", "1")


def test_a_hung_loop_stops_the_pings_and_they_resume_when_it_recovers(
        tmp_path: Path, listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"}
    rt = _runtime(_config(tmp_path), env)
    rt.start()
    thread = threading.Thread(target=rt.run_until_stopped, daemon=True)
    thread.start()
    ticker = rt.components[0]
    assert isinstance(ticker, Ticker)
    try:
        listener.wait_for("WATCHDOG", "1")
        ticker.hang.set()
        # Stall threshold is WATCHDOG_USEC/2 = 0.2 s; after that no more pings.
        hung_msg = listener.wait_for("STATUS", "hung: ticker", timeout=5)
        assert hung_msg
        t_hung = time.monotonic()
        time.sleep(0.8)
        assert listener.with_key("WATCHDOG", since=t_hung) == []
        ticker.release.set()
        listener.wait_for("WATCHDOG", "1", since=time.monotonic(), timeout=5)
    finally:
        ticker.release.set()
        rt.request_stop()
        thread.join(5)
        rt.stop()


def test_a_loop_that_raises_is_restarted_and_counted(tmp_path: Path) -> None:
    rt = _runtime(_config(tmp_path), {})
    rt.start()
    ticker = rt.components[0]
    assert isinstance(ticker, Ticker)
    try:
        ticker.fail_next.set()
        deadline = time.monotonic() + 5
        while (ticker.failures < 1 or ticker.setups < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ticker.failures == 1 and ticker.setups >= 2
        steps = ticker.steps
        deadline = time.monotonic() + 5
        while ticker.steps <= steps and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ticker.steps > steps, "the loop did not come back after the fault"
        assert rt.watch_once() is True
    finally:
        rt.stop()


def test_stop_records_unit_events_and_closes_the_journal(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    rt = _runtime(cfg, {})
    rt.start()
    rt.stop()
    assert rt.journal is not None and rt.journal.closed
    with Journal(cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site) as j:
        events = j.events_after(0)
    assert [(e.kind, e.data["state"]) for e in events] == [("unit", "started"),
                                                           ("unit", "stopping")]
    assert all(e.data["component"] == "ticker" for e in events)


def test_notifier_speaks_to_abstract_sockets_and_is_silent_without_one(tmp_path: Path) -> None:
    abstract = NotifyListener(tmp_path / "unused", abstract=True)
    try:
        n = Notifier({"NOTIFY_SOCKET": abstract.address})
        assert n.notify(status="hello") is True
        abstract.wait_for("STATUS", "hello")
    finally:
        abstract.close()
    assert Notifier({}).notify(ready=1) is False
    assert Notifier({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}).watchdog_s is None


def test_sigterm_stops_the_daemon_cleanly(tmp_path: Path, listener: NotifyListener) -> None:
    data = tmp_path / "data"
    cfg_path = write_unit_config(tmp_path / "unit.toml", data)
    env = dict(os.environ, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="2000000")
    proc = subprocess.Popen([sys.executable, "-m", "firmware_py.cli", "run", "-c",
                             str(cfg_path), "station"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        listener.wait_for("READY", "1", timeout=20)
        listener.wait_for("WATCHDOG", "1", timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert "received SIGTERM" in err and "stopped" in err
    listener.wait_for("STOPPING", "1")
    with Journal(data / "journal.db", unit="zt-pp-03", site="zhuantang") as j:
        states = [(e.kind, e.data.get("state"), e.data.get("component"))
                  for e in j.events_after(0)]
        # Folded into the main file on a clean stop.
        assert not (data / "journal.db-wal").exists() or \
            (data / "journal.db-wal").stat().st_size == 0
    assert states == [("unit", "started", "station"), ("unit", "stopping", "station")]


def test_a_bad_config_never_starts_a_daemon(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[unit]\nid = "Bad Id"\nsite = "zhuantang"\nkind = "patrol_point"\n')
    proc = subprocess.run([sys.executable, "-m", "firmware_py.cli", "run", "-c", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unit.id: must match" in proc.stderr
    assert not (tmp_path / "data").exists()
