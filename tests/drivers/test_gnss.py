"""GNSS driver: real receiver captures (BeiDou BD and GB talkers, a Raspberry Pi GPS HAT)
parsed, split and garbled; the receiver thread over a real pty (replay, unplug and
replug); and gpsd itself, fed the same captures by gpsfake, read over its JSON protocol."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gnss import (
    Fix,
    GnssReceiver,
    GpsdParser,
    NmeaParser,
    encode_epoch,
    haversine_m,
)
from tests.drivers.reader_helpers import PtyPair, point, wait_until

pytestmark = pytest.mark.timeout(60)

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "gnss"


def capture(name: str) -> bytes:
    return (CAPTURES / f"{name}.log").read_bytes()


def sentences(name: str) -> bytes:
    """A capture's sentences without gpsd's comment header, as the receiver sent them."""
    return b"".join(line + b"\r\n" for line in capture(name).splitlines()
                    if line.strip() and not line.startswith(b"#"))


def replay(data: bytes) -> tuple[list[Fix], NmeaParser]:
    p = NmeaParser(clock=lambda: 0.0)
    return p.feed(data) + p.flush(), p


class FixRecorder:
    def __init__(self) -> None:
        self.fixes: list[Fix] = []
        self.states: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def on_fix(self, fix: Fix) -> None:
        with self._lock:
            self.fixes.append(fix)

    def on_state(self, name: str, state: str, detail: str) -> None:
        with self._lock:
            self.states.append((state, detail))

    def valid(self) -> list[Fix]:
        with self._lock:
            return [f for f in self.fixes if f.valid]

    def count(self, state: str) -> int:
        with self._lock:
            return [s for s, _ in self.states].count(state)


# -- the captures, parsed ---------------------------------------------------------------


def test_beidou_bd_capture_no_fix_then_3d_fixes_with_date() -> None:
    fixes, p = replay(sentences("beidou-bd"))
    assert [f.valid for f in fixes] == [False] * 5 + [True] * 5
    assert all(f.lat is None and f.mode == "none" for f in fixes[:5])
    first = fixes[5]
    assert (round(first.lat, 6), round(first.lon, 6)) == (31.24795, 121.587438)
    assert (first.mode, first.quality, first.satellites, first.hdop) == ("3d", "gps", 5, 1.3)
    assert first.utc == datetime(2015, 2, 25, 7, 41, 55, 799000, tzinfo=UTC)
    assert first.speed_kmh == pytest.approx(0.30 * 1.852, abs=0.01)
    assert first.heading == 4.94
    # The proprietary SiRF sentences, GSV and the BD GSA are read but not positions.
    # The capture's " $GNRMC" (a stray space before the sentence) is read like the rest.
    assert fixes[7].speed_kmh == pytest.approx(0.32 * 1.852, abs=0.01)
    assert p.counters.errors == {}
    assert p.counters.ignored > 0


def test_beidou_gb_capture_gp_talker_fixes_and_gb_sentences_ignored() -> None:
    fixes, p = replay(sentences("beidou-gb"))
    valid = [f for f in fixes if f.valid]
    assert len(valid) == 2 and {f.talker for f in valid} == {"GP"}
    assert valid[0].satellites == 6 and valid[0].hdop == 1.2
    assert valid[0].heading == 167.42
    assert p.counters.errors == {}


def test_raspberry_pi_gps_hat_capture_ten_satellites_still() -> None:
    fixes, _ = replay(sentences("hab-gpspi"))
    assert len(fixes) == 3 and all(f.valid and f.mode == "3d" for f in fixes)
    assert {f.satellites for f in fixes} == {10} and {f.hdop for f in fixes} == {0.96}
    # "This device was not moved": three epochs within a metre or two.
    assert haversine_m(fixes[0].lat, fixes[0].lon, fixes[-1].lat, fixes[-1].lon) < 3
    assert fixes[0].heading is None   # RMC course left empty by a still receiver


@pytest.mark.parametrize("talker", ["GP", "GN", "BD", "GB"])
def test_each_talker_gives_a_fix(talker: str) -> None:
    t = datetime(2026, 12, 4, 15, 0, 1, tzinfo=UTC)
    fixes, p = replay(encode_epoch(31.25, 121.59, t, speed_kmh=36, heading=90, talker=talker))
    (fix,) = fixes
    assert (fix.valid, fix.talker, fix.mode, fix.speed_kmh, fix.heading) == (
        True, talker, "3d", 36.0, 90.0)
    assert fix.utc == t and p.counters.errors == {}


@pytest.mark.parametrize("name", ["beidou-bd", "beidou-gb", "hab-gpspi"])
def test_capture_split_at_every_byte_gives_the_same_fixes(name: str) -> None:
    data = sentences(name)
    whole, _ = replay(data)
    p = NmeaParser(clock=lambda: 0.0)
    pieces = [f for i in range(len(data)) for f in p.feed(data[i:i + 1])] + p.flush()
    assert pieces == whole


def test_bad_checksum_and_line_noise_are_counted_and_the_next_fix_is_read() -> None:
    good = sentences("hab-gpspi")
    broken = good.replace(b"*6F", b"*00", 1)          # first RMC's checksum
    noise = bytes(range(256)) + b"\xff" * 400 + b"\r\n"
    fixes, p = replay(noise + broken)
    assert p.counters.errors["checksum"] == 1
    assert p.counters.errors["overlong"] >= 1
    assert len([f for f in fixes if f.valid]) == 3   # the GGA of that epoch still fixes it


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=2000))
def test_parser_never_raises_on_any_bytes(noise: bytes, cut: int) -> None:
    data = sentences("beidou-bd")
    p = NmeaParser(clock=lambda: 0.0)
    p.feed(data[:cut] + noise + data[cut:])
    p.flush()


def test_gpsd_reports_are_fixes_with_sky_quality() -> None:
    p = GpsdParser(clock=lambda: 1.0)
    lines = [
        b'{"class":"VERSION","release":"3.22"}',
        b'{"class":"TPV","device":"/dev/ttyACM0","mode":1}',
        b'{"class":"SKY","hdop":0.8,"uSat":11}',
        b'{"class":"TPV","mode":3,"time":"2026-12-04T15:00:01.000Z","lat":31.25,'
        b'"lon":121.59,"altMSL":12.5,"speed":10.0,"track":271.5}',
        b'not json',
    ]
    fixes = p.feed(b"\n".join(lines) + b"\n")
    assert [f.valid for f in fixes] == [False, True]
    fix = fixes[1]
    assert (fix.mode, fix.satellites, fix.hdop, fix.speed_kmh, fix.heading) == (
        "3d", 11, 0.8, 36.0, 271.5)
    assert fix.utc == datetime(2026, 12, 4, 15, 0, 1, tzinfo=UTC)
    assert p.version == "3.22" and p.counters.errors == {"malformed": 1}


# -- the receiver thread on a real pty ----------------------------------------------------


@pytest.fixture
def ptys() -> Iterator[list[PtyPair]]:
    made: list[PtyPair] = []
    yield made
    for pair in made:
        pair.close()


def new_pty(ptys: list[PtyPair]) -> PtyPair:
    pair = PtyPair()
    ptys.append(pair)
    return pair


@pytest.mark.parametrize("name", ["beidou-bd", "beidou-gb", "hab-gpspi"])
def test_capture_replayed_through_a_pty_reaches_on_fix(name: str,
                                                       ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    rec = FixRecorder()
    expected = [f for f in replay(sentences(name))[0] if f.valid]
    with GnssReceiver("gnss", pair.path, baudrate=9600, on_fix=rec.on_fix,
                      on_state=rec.on_state, quiet_s=0.3) as gnss:
        # pyserial empties the input buffer when it opens the port: write after that.
        wait_until(lambda: gnss.opens == 1, what="port open")
        pair.write(sentences(name))
        wait_until(lambda: len(rec.valid()) == len(expected), what="every fix of the capture")
        assert [(f.lat, f.lon, f.utc) for f in rec.valid()] == [
            (f.lat, f.lon, f.utc) for f in expected]
        assert rec.count("online") == 1
        assert gnss.health()["fix"]["valid"] is True


def test_unplugged_receiver_goes_offline_and_comes_back_at_the_same_path(
        tmp_path: Path, ptys: list[PtyPair]) -> None:
    link = str(tmp_path / "ttyACM0")
    first = new_pty(ptys)
    point(link, first.path)
    rec = FixRecorder()
    t = datetime(2026, 12, 4, 15, 0, 1, tzinfo=UTC)
    with GnssReceiver("gnss", link, on_fix=rec.on_fix, on_state=rec.on_state, quiet_s=0.2,
                      backoff_initial_s=0.05, backoff_max_s=0.2) as gnss:
        wait_until(lambda: gnss.opens == 1, what="port open")
        first.write(encode_epoch(31.25, 121.59, t))
        wait_until(lambda: len(rec.valid()) == 1, what="first fix")
        first.close()                                    # unplugged
        ptys.remove(first)                               # (its fds are closed: only once)
        os.unlink(link)
        wait_until(lambda: rec.count("offline") == 1, what="offline")
        second = new_pty(ptys)
        point(link, second.path)                         # plugged back in
        wait_until(lambda: gnss.opens >= 2, what="reopened")
        second.write(encode_epoch(31.26, 121.60, t.replace(second=2)))
        wait_until(lambda: len(rec.valid()) == 2, what="fix after replug")
        assert rec.count("online") == 2
        assert gnss.health()["port_losses"] >= 1


def test_line_noise_on_the_port_is_counted_and_the_receiver_reads_on(
        ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    rec = FixRecorder()
    with GnssReceiver("gnss", pair.path, on_fix=rec.on_fix, on_state=rec.on_state,
                      quiet_s=0.2) as gnss:
        wait_until(lambda: gnss.opens == 1, what="port open")
        pair.write(bytes(range(256)) * 4 + b"\r\n$GPRMC,garbage*00\r\n" + b"\x00" * 300)
        pair.write(sentences("hab-gpspi"))
        wait_until(lambda: len(rec.valid()) == 3, what="fixes after the noise")
        errors = gnss.health()["errors"]
        assert errors.get("checksum", 0) + errors.get("malformed", 0) >= 1
        assert sum(errors.values()) >= 2 and gnss.opens == 1


def test_a_silent_receiver_is_reported_offline(ptys: list[PtyPair]) -> None:
    pair = new_pty(ptys)
    rec = FixRecorder()
    with GnssReceiver("gnss", pair.path, on_fix=rec.on_fix, on_state=rec.on_state,
                      quiet_s=0.1, silent_s=0.5) as gnss:
        wait_until(lambda: gnss.opens == 1, what="port open")
        pair.write(sentences("hab-gpspi"))
        wait_until(lambda: len(rec.valid()) == 3, what="fixes")
        wait_until(lambda: rec.count("offline") == 1, what="silence noticed")
        assert "no data" in rec.states[-1][1]


def test_missing_port_is_offline_and_stop_is_prompt(tmp_path: Path) -> None:
    rec = FixRecorder()
    gnss = GnssReceiver("gnss", str(tmp_path / "nothing"), on_state=rec.on_state,
                        backoff_initial_s=0.05, backoff_max_s=0.1).start()
    wait_until(lambda: rec.count("offline") == 1, what="offline")
    assert "cannot open" in rec.states[0][1]
    gnss.stop()
    gnss.stop()
    assert not gnss._thread.is_alive()


# -- gpsd, fed by gpsfake ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gpsfake(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real gpsd on a free port, fed the BeiDou capture by gpsfake (in a loop)."""
    exe = shutil.which("gpsfake")
    assert exe, "gpsfake missing: scripts/setup.sh installs gpsd-clients"
    port = _free_port()
    proc = subprocess.Popen([exe, "-q", "-P", str(port), "-c", "0.05",
                             str(CAPTURES / "beidou-bd.log")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield "127.0.0.1", port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_gpsd_fed_by_gpsfake_gives_the_beidou_fixes(gpsfake: tuple[str, int]) -> None:
    host, port = gpsfake
    rec = FixRecorder()
    with GnssReceiver("gnss", f"gpsd://{host}:{port}", on_fix=rec.on_fix,
                      on_state=rec.on_state, backoff_initial_s=0.1, backoff_max_s=0.5) as gnss:
        wait_until(lambda: len(rec.valid()) >= 3, timeout=30, what="fixes through gpsd")
        fix = rec.valid()[-1]
        assert haversine_m(fix.lat, fix.lon, 31.24824, 121.58740) < 50
        assert fix.mode == "3d" and fix.talker == "gpsd"
        assert gnss.parser.version and rec.count("online") >= 1
