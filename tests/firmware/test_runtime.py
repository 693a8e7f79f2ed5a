"""The runtime: READY and watchdog pings through a NOTIFY_SOCKET the test owns,
pings withheld while a loop hangs, failed loops restarted, clean SIGTERM stop."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_py import sim, topics
from firmware_py.clock import ManualClock
from firmware_py.components import unit_runtime
from firmware_py.config import UnitConfig, load_config
from firmware_py.journal import Journal
from firmware_py.runtime import Component, Notifier, Runtime, UnitContext
from firmware_py.signing import SigningKey
from firmware_py.statusfile import read_status
from tests.support.brokers import Mosquitto
from tests.support.daemon import Daemon
from tests.support.gpio import changes, global_mock_factory
from tests.support.units import make_config, write_unit_config
from tests.support.uplink import SITE, UNIT, Watcher, wait_until


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


# -- a damaged journal at start: a real ``xunfang run`` rebuilds it and takes taps ----------

PO1, PA1 = "14008EC793", "0000000457"


def _rot_page(path: Path, seq: int | None) -> set[int]:
    """Overwrite with garbage the 4 KiB page holding alarm ``seq`` (None: the first page,
    the file's header); return the alarms that page held."""
    raw = path.read_bytes()
    page = 0 if seq is None else raw.index(f"M{seq:06d}".encode()) // 4096
    held = {int(m) for m in re.findall(rb"M(\d{6})", raw[page * 4096:(page + 1) * 4096])}
    with open(path, "r+b") as f:
        f.seek(page * 4096)
        f.write(os.urandom(4096))
    return held


@pytest.mark.parametrize("page", ["middle", "first"])
def test_a_rotten_journal_page_is_rebuilt_at_start_and_the_unit_takes_taps(
        tmp_path: Path, mosquitto: Mosquitto, page: str) -> None:
    key = SigningKey.generate("centre-test")
    cfg_path = write_unit_config(
        tmp_path / "unit.toml", tmp_path / "data",
        mqtt={"host": "127.0.0.1", "port": mosquitto.port, "health_interval_s": 5},
        security={"command_keys": {"centre-test": key.public_b64()}},
        readers=[{"name": "main", "driver": "sim", "port": "sim"}],
        feedback={"ok_led": 17, "error_led": 27, "buzzer": 22})
    cfg = load_config(cfg_path)
    cards = {"version": 3, "cards": [{"card": PO1, "badge": "PO-1", "role": "police"},
                                     {"card": PA1, "badge": "PA-1", "role": "patrol"}]}
    centre = mosquitto.probe(None, client_id="centre")
    assert not centre.publish(topics.desired(SITE, "_all", "cards"), json.dumps(
        key.sign_envelope("cards", cards, site=SITE, units=["*"], ttl_s=3600)),
        retain=True).is_failure
    # The unit's journal as it ran before: 1,500 events, the first 500 acknowledged.
    with Journal(cfg.journal_path, unit=UNIT, site=SITE) as j:
        for i in range(1, 1501):
            j.append("alarm", {"source": "test", "state": "active", "mark": f"M{i:06d}",
                               "pad": "x" * 150})
        j.mark_acked(500)
        old_id = j.journal_id
        j.checkpoint()
    lost = _rot_page(cfg.journal_path, 1000 if page == "middle" else None)
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    unit = Daemon(cfg_path, tmp_path / "unit.log", env={"GPIOZERO_PIN_FACTORY": "mock"})
    unit.start()
    try:
        runtime_dir = cfg.unit.runtime_dir
        wait_until(lambda: (s := read_status(runtime_dir)) and
                   s["readers"].get("main", {}).get("state") == "online", 30, "the reader online")
        with Journal(cfg.journal_path, unit=UNIT, site=SITE) as j:
            assert j.journal_id != old_id
            # The card list: salvaged, or (header lost) from the centre's retained document.
            wait_until(lambda: j.state_get("cards"), 30, "the card list in force")
        tapped = sim.tap(cfg, PO1, wait_s=20)
        assert tapped.event is not None and tapped.event.data["decision"] == "accepted"
        status = wait_until(lambda: (s := read_status(runtime_dir)) and s["last_tap"] and s,
                            10, "the tap in the status file")
        assert status["last_tap"]["signal"] == "alone"       # on disk: green
        assert status["journal"]["state"] == "ok" and status["journal"]["id"] != old_id
        moved_to = status["journal"]["rebuilt"]["moved_to"]
        assert moved_to.startswith("journal.db.corrupt-")
        assert (cfg.unit.data_dir / moved_to).exists()
        health = wait_until(lambda: [s.doc for s in watcher.on("health")
                                     if (s.doc.get("journal") or {}).get("rebuilt")
                                     and s.doc.get("station")],
                            30, "health reporting the rebuild")[-1]
        assert health["journal"]["rebuilt"]["moved_to"] == moved_to
        assert health["station"]["journal"]["state"] == "ok"
        with Journal(cfg.journal_path, unit=UNIT, site=SITE) as j:
            events = j.events_after(0, limit=5000)
        (rebuilt,) = [e for e in events if e.kind == "unit" and e.data["state"] ==
                      "journal_rebuilt"]
        assert rebuilt.data["moved_to"] == moved_to
        alarms = {e.seq for e in events if e.kind == "alarm"}
        if page == "middle":
            # Every unacknowledged event but those on the rotten page, as they were numbered.
            assert alarms == set(range(501, 1501)) - lost
            assert rebuilt.data["salvaged"] == 1000 - len(lost)
            assert rebuilt.data["lost"] == len(lost) and rebuilt.data["previous_journal"] == old_id
            assert tapped.event.seq > 1500
        else:
            assert alarms == set() and rebuilt.data["salvaged"] == 0
        # The centre hears of the new journal and gets its events.
        watcher.wait_events(lambda evs: any(e["kind"] == "checkin" and e["journal"] ==
                                            tapped.event.journal for e in evs), 30,
                            "the tap on the wire")
        assert unit.stop() == 0
    finally:
        unit.stop()
        print(f"--- unit log ---\n{unit.text()[-8000:]}")
    assert "Traceback" not in unit.text()


# -- a full disk at boot: the unit starts, shows the fault, recovers by itself ---------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB ext4 file system on a loop device (4 KiB blocks, as on an SD card)."""
    # scripts/setup.sh installs e2fsprogs; mounting needs root, as the suite runs in CI.
    assert os.geteuid() == 0, "mounting a loop file system needs root"
    image, mnt = tmp_path / "sd.img", tmp_path / "sd"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(8 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the file system is full (as root: the reserved blocks too)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (2**16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
    return filler


def test_a_unit_starts_on_a_full_disk_shows_the_fault_and_recovers(
        tmp_path: Path, small_disk: Path, mosquitto: Mosquitto,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from firmware_py.checkin import CheckinPart

    monkeypatch.setattr(CheckinPart, "retry_s", 0.2)
    monkeypatch.setattr(CheckinPart, "reader_defaults", {"hold_s": 0.0})  # the same card again
    monkeypatch.setattr(Runtime, "start_retry_s", 0.2, raising=False)
    cfg = make_config(small_disk / "data", unit={"runtime_dir": str(tmp_path / "run")},
                      mqtt={"host": "127.0.0.1", "port": mosquitto.port,
                            "health_interval_s": 5},
                      readers=[{"name": "main", "driver": "sim", "port": "sim"}],
                      feedback={"ok_led": 17, "error_led": 27, "buzzer": 22})
    with Journal(cfg.journal_path, unit=UNIT, site=SITE) as j:   # the last run's journal
        j.state_set("cards", {"version": 1, "cards": [
            {"card": PO1, "badge": "PO-1", "role": "police"}]})
        j.state_set("desired/cards/unit", {
            "id": "cards-1", "name": "cards", "scope": "unit", "key": "centre-test",
            "args": {"version": 1, "cards": [{"card": PO1, "badge": "PO-1", "role": "police"}]},
            "issued_at": "2026-11-28T00:00:00.000Z", "issued_ms": 1_795_910_400_001,
            "expires_ms": None})
        before = j.last_seq()
    filler = _fill(small_disk)   # the SD card filled up while the unit was off
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    with global_mock_factory() as factory:
        rt = unit_runtime(cfg, ["station", "uplink"], notifier=Notifier({}))
        rt.start()               # before: "cannot start", exit 1, nothing running
        thread = threading.Thread(target=rt.run_until_stopped, daemon=True)
        thread.start()
        try:
            assert rt.journal is not None and rt.journal.read_only_error is not None
            status = wait_until(lambda: (s := read_status(cfg.unit.runtime_dir)) and
                                s["journal"]["state"] == "failing" and s, 10,
                                "the status file saying the journal fails")
            assert "full" in status["journal"]["last_error"] or \
                "I/O" in status["journal"]["last_error"]
            ok_led, error_led = factory.pin(17), factory.pin(27)
            t0 = time.monotonic()
            sim.tap(cfg, PO1, wait_s=0)
            status = wait_until(lambda: (s := read_status(cfg.unit.runtime_dir)) and
                                s["last_tap"] and s, 10, "the tap")
            assert status["last_tap"]["signal"] == "fault"
            assert status["unrecorded"][-1]["card"] == PO1
            wait_until(lambda: changes(error_led, since=t0), 5, "the fault pattern")
            assert changes(error_led, since=t0)[0][1] is True
            assert changes(ok_led, since=t0) == []                   # never green
            assert not [e for e in rt.journal.events_after(before) if e.kind == "unit"]
            # The centre hears of it through health, which needs no write.
            health = wait_until(lambda: [s.doc for s in watcher.on("health") if
                                         ((s.doc.get("station") or {}).get("journal") or {})
                                         .get("state") == "failing"
                                         and s.doc["station"]["unrecorded_taps"]],
                                20, "health reporting the failing journal")[-1]
            assert health["journal"]["error"]
            assert rt.components[1].failures == 0, "the uplink kept running"

            filler.unlink()      # the installer frees space: no restart needed
            wait_until(lambda: read_status(cfg.unit.runtime_dir)["journal"]["state"] == "ok",
                       15, "the journal writable again")
            started = wait_until(lambda: [e for e in rt.journal.events_after(before)
                                          if e.kind == "unit"], 15, "unit started")
            assert started[0].data["state"] == "started" and "started_at" in started[0].data
            t1 = time.monotonic()
            tapped = sim.tap(cfg, PO1, wait_s=10)
            assert tapped.event is not None and tapped.event.data["decision"] == "accepted"
            wait_until(lambda: changes(ok_led, since=t1), 5, "green")
        finally:
            rt.request_stop()
            thread.join(10)
            rt.stop()


# -- one instance per unit: a second ``xunfang run`` leaves the running one alone -----------


def _second_run(cfg_path: Path, *components: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firmware_py.cli", "run", "-c", str(cfg_path),
                           *components], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))


def _unit_events(cfg: UnitConfig) -> list[tuple[int, str, str]]:
    with Journal(cfg.journal_path, unit=UNIT, site=SITE) as j:
        return [(e.seq, e.data["state"], e.data["component"])
                for e in j.events_after(0, limit=5000) if e.kind == "unit"]


def test_a_second_run_of_the_same_unit_is_refused_and_touches_nothing(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg_path = write_unit_config(
        tmp_path / "unit.toml", tmp_path / "data",
        mqtt={"host": "127.0.0.1", "port": mosquitto.port},
        readers=[{"name": "main", "driver": "sim", "port": "sim"}])
    cfg = load_config(cfg_path)
    runtime_dir, data_dir = cfg.unit.runtime_dir, cfg.unit.data_dir
    link = runtime_dir / "sim-main"
    first = Daemon(cfg_path, tmp_path / "first.log", env={"GPIOZERO_PIN_FACTORY": "mock"})
    first.start()
    assert first.proc is not None
    try:
        wait_until(lambda: (s := read_status(runtime_dir)) and
                   s["readers"].get("main", {}).get("state") == "online", 30, "the reader online")
        for name in ("station", "camera", "uplink"):
            assert (data_dir / f".lock-{name}").read_text().strip() == str(first.proc.pid)
        target = os.readlink(link)
        events = _unit_events(cfg)

        t0 = time.monotonic()
        second = _second_run(cfg_path)
        assert second.returncode == 2, second.stderr
        assert time.monotonic() - t0 < 30
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {first.proc.pid}" in lines[0] and "already running" in lines[0]
        assert "zt-pp-03" in lines[0] and ".lock-station" in lines[0]

        # One component of the running unit is enough to refuse.
        assert _second_run(cfg_path, "uplink").returncode == 2
        # Nothing of the running unit's was touched.
        status = read_status(runtime_dir)
        assert status is not None and status["pid"] == first.proc.pid
        assert not status.get("stopped")
        assert os.readlink(link) == target
        assert _unit_events(cfg) == events
        assert first.proc.poll() is None
        tapped = sim.tap(cfg, PO1, wait_s=20)
        assert tapped.event is not None
    finally:
        assert first.stop() == 0
    assert "Traceback" not in first.text()

    # The lock file stays with a dead pid in it; the kernel dropped the lock itself.
    assert (data_dir / ".lock-station").read_text().strip() == str(first.proc.pid)
    again = Daemon(cfg_path, tmp_path / "again.log", env={"GPIOZERO_PIN_FACTORY": "mock"})
    again.start()
    assert again.proc is not None
    try:
        wait_until(lambda: (s := read_status(runtime_dir)) and s["pid"] == again.proc.pid and
                   s["readers"].get("main", {}).get("state") == "online", 30,
                   "the new start's reader online")
        assert (data_dir / ".lock-station").read_text().strip() == str(again.proc.pid)
        tapped = sim.tap(cfg, PO1, wait_s=20)
        assert tapped.event is not None
    finally:
        assert again.stop() == 0


def test_the_components_of_one_unit_run_side_by_side(tmp_path: Path,
                                                     mosquitto: Mosquitto) -> None:
    cfg_path = write_unit_config(
        tmp_path / "unit.toml", tmp_path / "data",
        mqtt={"host": "127.0.0.1", "port": mosquitto.port},
        readers=[{"name": "main", "driver": "sim", "port": "sim"}])
    cfg = load_config(cfg_path)
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    env = {"GPIOZERO_PIN_FACTORY": "mock"}
    station = Daemon(cfg_path, tmp_path / "station.log", ("station",), env=env)
    uplink = Daemon(cfg_path, tmp_path / "uplink.log", ("uplink",), env=env)
    station.start()
    try:
        wait_until(lambda: (s := read_status(cfg.unit.runtime_dir)) and
                   s["readers"].get("main", {}).get("state") == "online", 30, "the reader online")
        uplink.start()
        watcher.wait_status(online=True, timeout=30)
        assert uplink.proc is not None and uplink.proc.poll() is None
        assert (cfg.unit.data_dir / ".lock-uplink").read_text().strip() == str(uplink.proc.pid)
        # A second station is still refused, by the station's lock alone.
        refused = _second_run(cfg_path, "station")
        assert refused.returncode == 2 and f"pid {station.proc.pid}" in refused.stderr
    finally:
        assert uplink.stop() == 0
        assert station.stop() == 0
