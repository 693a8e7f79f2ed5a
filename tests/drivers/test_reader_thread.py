"""The reader thread: ports by URL and by object, unplug and replug of a pty behind a
symlink, capped backoff, callbacks that raise, prompt stop, power cycling through a
relay on gpiozero's MockFactory, the spy:// trace, and the open_reader factory."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory

from drivers.exc import ReaderConfigInvalid
from drivers.readers import DRIVERS, make_protocol, open_reader
from drivers.readers.base import CardRead, ReaderThread
from drivers.readers.pn532 import Pn532Protocol
from drivers.readers.rdm6300 import encode_frame, rdm6300_protocol
from tests.drivers.reader_helpers import ManualClock, PtyPair, Recorder, point, wait_until

# Every wait below has its own deadline; this bounds a whole test that hangs.
pytestmark = pytest.mark.timeout(30)

WORKED = encode_frame("14008EC793")
OTHER = encode_frame("0102030405")
FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1, "read_timeout": 0.1,
        "path_check_s": 0.05}


@pytest.fixture
def ptys() -> Iterator[list[PtyPair]]:
    made: list[PtyPair] = []
    yield made
    for p in made:
        p.close()


def new_pty(ptys: list[PtyPair]) -> PtyPair:
    p = PtyPair()
    ptys.append(p)
    return p


def rdm(name: str, port: object, rec: Recorder, **kw: object) -> ReaderThread:
    options = {**FAST, **kw}
    return ReaderThread(name, port, rdm6300_protocol(name), on_card=rec.on_card,  # type: ignore[arg-type]
                        on_state=rec.on_state, **options)  # type: ignore[arg-type]


def test_loop_port_object_is_read_by_the_real_driver() -> None:
    port = serial.serial_for_url("loop://", timeout=0.1)
    rec = Recorder()
    with rdm("main", port, rec) as reader:
        rec.wait_state("online")
        for b in WORKED:
            port.write(bytes([b]))
        assert rec.wait_cards(1) == ["14008EC793"]
        assert reader.url == "loop://"
    assert not port.is_open


def test_unplugged_pty_goes_offline_and_a_new_pty_at_the_same_path_comes_online(
        tmp_path: Path, ptys: list[PtyPair]) -> None:
    link = str(tmp_path / "ttyUSB0")
    first = new_pty(ptys)
    point(link, first.path)
    rec = Recorder()
    with rdm("main", link, rec) as reader:
        rec.wait_state("online")
        first.write(WORKED)
        rec.wait_cards(1)
        first.close()                                    # USB cable pulled
        detail = rec.wait_state("offline")
        assert "port lost" in detail and link in detail
        second = new_pty(ptys)
        point(link, second.path)                         # plugged back in
        rec.wait_state("online", count=2)
        second.write(OTHER)
        assert rec.wait_cards(2) == ["14008EC793", "0102030405"]
        health = reader.health()
    assert rec.state_names == ["online", "offline", "online"]
    assert health["reopens"] >= 1 and health["port_losses"] == 1
    assert health["state"] == "online"


def test_a_path_repointed_to_another_device_is_reopened(tmp_path: Path,
                                                        ptys: list[PtyPair]) -> None:
    link = str(tmp_path / "reader")
    first, second = new_pty(ptys), new_pty(ptys)
    point(link, first.path)
    rec = Recorder()
    with rdm("main", link, rec):
        rec.wait_state("online")
        point(link, second.path)          # the old device is still there, the path moved
        assert "another device" in rec.wait_state("offline")
        rec.wait_state("online", count=2)
        second.write(WORKED)
        assert rec.wait_cards(1) == ["14008EC793"]


def test_missing_port_is_offline_once_until_it_appears(tmp_path: Path,
                                                      ptys: list[PtyPair]) -> None:
    link = str(tmp_path / "serial0")
    rec = Recorder()
    with rdm("main", link, rec) as reader:
        detail = rec.wait_state("offline")
        assert "cannot open" in detail and link in detail
        wait_until(lambda: reader.open_failures >= 3, what="retries")
        pair = new_pty(ptys)
        point(link, pair.path)
        rec.wait_state("online")
        pair.write(WORKED)
        rec.wait_cards(1)
    assert rec.state_names == ["offline", "online"]       # transitions only, no flood


def test_backoff_is_capped(tmp_path: Path) -> None:
    rec = Recorder()
    with rdm("main", str(tmp_path / "absent"), rec, backoff_initial_s=0.005,
             backoff_max_s=0.01) as reader:
        # Uncapped doubling from 5 ms would need hours for 30 attempts.
        wait_until(lambda: reader.open_failures >= 30, timeout=5, what="30 attempts")


def test_callbacks_that_raise_do_not_stop_the_reader(ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    got: list[str] = []

    def on_card(read: CardRead) -> None:
        got.append(read.card_hex)
        raise RuntimeError("station bug")

    def on_state(reader: str, state: str, detail: str) -> None:
        raise ValueError("another bug")

    reader = ReaderThread("main", pair.path, rdm6300_protocol("main"), on_card=on_card,
                          on_state=on_state, **FAST)  # type: ignore[arg-type]
    with reader:
        wait_until(lambda: reader.state == "online", what="online")
        pair.write(WORKED)
        wait_until(lambda: got == ["14008EC793"], what="first card")
        pair.write(OTHER)
        wait_until(lambda: got == ["14008EC793", "0102030405"], what="second card")
        assert reader.running
        assert reader.callback_errors == 3    # on_state once, on_card twice


def test_stop_is_prompt_during_a_blocking_read_and_safe_twice(ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    rec = Recorder()
    reader = rdm("main", pair.path, rec, read_timeout=30.0).start()
    rec.wait_state("online")
    began = time.monotonic()
    reader.stop()
    assert time.monotonic() - began < 1.0
    reader.stop()
    reader.close()
    assert not reader.running
    assert reader.health()["state"] == "stopped"
    assert "stopped" in repr(reader)
    with pytest.raises(RuntimeError, match="stopped"):
        reader.start()


def test_binary_noise_cannot_stop_the_reader(ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    rec = Recorder()
    with rdm("main", pair.path, rec) as reader:
        rec.wait_state("online")
        pair.write(bytes(range(256)) * 8 + b"\x02" * 100 + b"\x03" * 100)
        pair.write(WORKED)
        assert rec.wait_cards(1) == ["14008EC793"]
        assert reader.running and reader.internal_errors == 0


def test_noise_only_reader_is_power_cycled_through_its_relay(ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    factory = MockFactory()
    rec = Recorder()
    reader = open_reader("rdm6300", pair.path, name="main", power_pin=17, on_card=rec.on_card,
                         on_state=rec.on_state, pin_factory=factory,
                         power_off_s=0.05, power_settle_s=0.0, **FAST)
    pin = factory.pin(17)
    try:
        rec.wait_state("online")
        assert pin.state is False                      # reader powered
        pair.write(b"\x02G" * 60)                      # 60 malformed frames, nothing good
        assert "only noise" in rec.wait_state("offline")
        rec.wait_state("online", count=2)
        assert [s.state for s in pin.states][:3] == [False, True, False]
        pair.write(WORKED)
        assert rec.wait_cards(1) == ["14008EC793"]
        assert reader.health()["power_cycles"] == 1
    finally:
        reader.stop()
    assert reader.power is not None and reader.power.closed


def test_noise_without_a_relay_is_counted_and_listening_goes_on(ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    rec = Recorder()
    with rdm("main", pair.path, rec) as reader:
        rec.wait_state("online")
        pair.write(b"\x02G" * 60)
        wait_until(lambda: reader.protocol.counters.errors.get("hung") == 1, what="hung")
        pair.write(WORKED)
        assert rec.wait_cards(1) == ["14008EC793"]
        assert rec.state_names == ["online"]


def _noise_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "xunfang.readers" and "only noise" in r.getMessage()]


def test_a_noise_flood_logs_at_most_one_warning_a_minute_with_counts(
        ptys: list[PtyPair], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="xunfang.readers")
    pair = new_pty(ptys)
    clock = ManualClock()
    rec = Recorder()

    def flood(episodes: int, done: int) -> None:
        # 50 malformed frames (100 bytes) at a time: one "only noise" episode each,
        # which the unit used to log every time (~24 KB/s of noise, 2 GB a day).
        for k in range(episodes):
            pair.write(b"\x02G" * 50)
            wait_until(lambda k=k: reader.protocol.counters.errors.get("hung") == done + k + 1,
                       what=f"episode {done + k + 1}")

    with rdm("main", pair.path, rec, clock=clock) as reader:
        rec.wait_state("online")
        flood(30, 0)
        first = _noise_warnings(caplog)
        assert len(first) == 1                              # one line, not 30
        clock.advance(30)
        flood(10, 30)
        assert len(_noise_warnings(caplog)) == 1            # still within the minute
        clock.advance(31)
        flood(20, 40)
        lines = _noise_warnings(caplog)
        h = reader.health()
        pair.write(WORKED)
        assert rec.wait_cards(1) == ["14008EC793"]          # still listening
    assert len(lines) == 2
    assert "main" in lines[0] and pair.path in lines[0] and "50 bad frames" in lines[0]
    # The next line (episode 41, a minute later) counts all since the first: 40 x 50 frames.
    assert "2000 bad frames" in lines[1] and "4000 noise bytes" in lines[1], lines[1]
    assert (h["bad_frames"], h["noise_bytes"]) == (3000, 6000)
    assert (h["noise_warnings"], h["noise_warnings_dropped"]) == (2, 58)
    assert h["errors"]["hung"] == 60 and rec.state_names == ["online"]


def test_noise_warning_interval_is_configurable(ptys: list[PtyPair],
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="xunfang.readers")
    pair = new_pty(ptys)
    clock = ManualClock()
    rec = Recorder()
    with rdm("main", pair.path, rec, clock=clock, noise_log_every_s=5.0) as reader:
        rec.wait_state("online")
        for k in range(4):
            pair.write(b"\x02G" * 50)
            wait_until(lambda k=k: reader.protocol.counters.errors.get("hung") == k + 1,
                       what=f"episode {k + 1}")
            clock.advance(5)
    assert len(_noise_warnings(caplog)) == 4


def test_spy_url_writes_a_trace_for_field_debugging(tmp_path: Path,
                                                    ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    trace = tmp_path / "trace.txt"
    rec = Recorder()
    with rdm("main", f"spy://{pair.path}?file={trace}", rec):
        rec.wait_state("online")
        pair.write(WORKED)
        assert rec.wait_cards(1) == ["14008EC793"]
    text = trace.read_text()
    # A hex dump of every read (split as the reads happened to be), ASCII beside it.
    rx = bytearray()
    for line in text.splitlines():
        m = re.match(r"\S+ RX\s+[0-9A-F]{4}  (.{49})", line)
        if m:
            rx += bytes.fromhex(m.group(1))
    assert bytes(rx) == WORKED


def test_open_reader_builds_each_driver_with_its_default_baud(tmp_path: Path) -> None:
    expected = {"rdm6300": 9600, "pn532": 115200, "line": 9600}
    for driver, baud in expected.items():
        reader = open_reader(driver, str(tmp_path / "x"), name="r1", start=False)
        assert (reader.protocol.driver, reader.baudrate) == (driver, baud)
        reader.stop()
    reader = open_reader("line", "loop://", name="r1", baud=115200, number_format="dec",
                         start=False)
    assert reader.baudrate == 115200
    assert reader.protocol.parser.number_format == "dec"  # type: ignore[attr-defined]
    reader.stop()
    pn = open_reader("pn532", "loop://", name="k", start=False,
                     protocol_options={"poll_interval_s": 0.5})
    assert isinstance(pn.protocol, Pn532Protocol) and pn.protocol.poll_interval_s == 0.5
    pn.stop()
    assert DRIVERS == ("rdm6300", "pn532", "line", "sim")


def test_unknown_driver_and_busy_power_pin_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ReaderConfigInvalid, match="unknown driver"):
        make_protocol("wiegand", "r1")
    factory = MockFactory()
    holder = OutputDevice(17, pin_factory=factory)
    with pytest.raises(ValueError, match="power_pin GPIO17"):
        open_reader("rdm6300", str(tmp_path / "x"), name="main", power_pin=17,
                    pin_factory=factory)
    holder.close()


def test_health_names_state_port_and_counters(ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    rec = Recorder()
    with rdm("main", pair.path, rec) as reader:
        rec.wait_state("online")
        pair.write(WORKED[:-1] + b"\x04" + WORKED)
        rec.wait_cards(1)
        h = reader.health()
    assert h["state"] == "online" and h["port"] == pair.path and h["driver"] == "rdm6300"
    assert h["detail"] and h["since_s"] >= 0
    assert (h["frames"], h["reads"], h["errors"]) == (1, 1, {"bad_frame": 1})
    for key in ("opens", "reopens", "open_failures", "port_losses", "power_cycles",
                "callback_errors", "internal_errors", "not_answering", "repeats"):
        assert key in h
    assert os.path.exists(pair.path)
