"""The simulated reader: real ptys, frames of each format read by the real drivers,
tapping by hand with printf, the link, unplug and replug."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drivers.exc import ReaderConfigInvalid, ReaderPortLost
from drivers.readers import ReaderThread, open_reader
from drivers.readers.sim import SimReader, encode_tap, parse_sim_port
from tests.drivers.reader_helpers import Recorder, wait_until

# Every wait below has its own deadline; this bounds a whole test that hangs.
pytestmark = pytest.mark.timeout(30)

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}


def open_sim(port: str, rec: Recorder, **options: Any) -> ReaderThread:
    return open_reader("sim", port, name="main", on_card=rec.on_card, on_state=rec.on_state,
                       **options)


@pytest.mark.parametrize("port, expected", [
    ("sim", ("rdm6300", None)),
    ("sim://", ("rdm6300", None)),
    ("sim://rf125", ("rf125", None)),
    ("sim://hex", ("hex", None)),
    ("sim://dec?link=/run/xunfang/sim-main", ("dec", "/run/xunfang/sim-main")),
])
def test_sim_port_forms(port: str, expected: tuple[str, str | None]) -> None:
    assert parse_sim_port(port) == expected


@pytest.mark.parametrize("port", ["sim://pn532", "/dev/ttyUSB0", "sim://hex?speed=9600",
                                  "simulated"])
def test_bad_sim_ports_are_refused_with_the_port_named(port: str) -> None:
    with pytest.raises(ValueError, match="sim") as info:
        parse_sim_port(port)
    assert isinstance(info.value, ReaderConfigInvalid)
    assert port in str(info.value)


def test_encode_tap_in_each_format() -> None:
    assert encode_tap("14008EC793", "rdm6300") == b"\x0214008EC793CE\x03"
    assert encode_tap("14008EC793", "rf125") == b"\x0214008EC793\xce\x03"
    assert encode_tap("14008EC793", "hex") == b"14008EC793\r\n"
    assert encode_tap("14008EC793", "dec") == b"0009357203\r\n"
    with pytest.raises(ValueError):
        encode_tap("14008EC793", "pn532")


@pytest.mark.parametrize("fmt, card", [
    ("rdm6300", "14008EC793"), ("rf125", "14008EC793"), ("hex", "14008EC793"),
    ("dec", "008EC793"),
])
def test_sim_reader_taps_are_read_by_the_real_driver(fmt: str, card: str) -> None:
    rec = Recorder()
    reader = open_sim(f"sim://{fmt}", rec, **FAST)
    try:
        rec.wait_state("online")
        assert reader.sim.tap("14008EC793") == encode_tap("14008EC793", fmt)  # type: ignore[attr-defined]
        assert rec.wait_cards(1) == [card]
        assert reader.health()["driver"] == "sim"
    finally:
        reader.stop()
    assert reader.sim.port_path.startswith("/dev/pts/")  # type: ignore[attr-defined]


def test_tap_by_hand_with_printf_into_port_path() -> None:
    rec = Recorder()
    reader = open_sim("sim", rec, **FAST)
    try:
        rec.wait_state("online")
        path = reader.sim.port_path  # type: ignore[attr-defined]
        # What the docs tell a person to type.
        command = f"printf '\\00214008EC793CE\\003' > {shlex.quote(path)}"
        subprocess.run(["sh", "-c", command], check=True, timeout=5)
        assert rec.wait_cards(1) == ["14008EC793"]
        wait_until(lambda: reader.sim.relayed == 14, what="14 bytes relayed")  # type: ignore[attr-defined]
    finally:
        reader.stop()


def test_link_names_the_tap_side_and_goes_away_on_stop(tmp_path: Path) -> None:
    link = tmp_path / "sim-main"
    rec = Recorder()
    reader = open_sim(f"sim://hex?link={link}", rec, **FAST)
    try:
        rec.wait_state("online")
        assert os.readlink(link) == reader.sim.port_path  # type: ignore[attr-defined]
        with open(link, "wb", buffering=0) as f:
            f.write(b"04A1B2C3D4E5F6\r\n")
        assert rec.wait_cards(1) == ["04A1B2C3D4E5F6"]
    finally:
        reader.stop()
    assert not link.exists() and not link.is_symlink()


def test_unplug_and_replug_go_offline_and_online() -> None:
    rec = Recorder()
    reader = open_sim("sim", rec, **FAST)
    sim: SimReader = reader.sim  # type: ignore[attr-defined]
    try:
        rec.wait_state("online")
        sim.unplug()
        assert "port lost" in rec.wait_state("offline")
        with pytest.raises(ReaderPortLost, match="unplugged"):
            sim.tap("14008EC793")
        sim.replug()
        rec.wait_state("online", count=2)
        sim.tap("14008EC793")
        assert rec.wait_cards(1) == ["14008EC793"]
        assert reader.health()["reopens"] >= 1
    finally:
        reader.stop()


def test_sim_close_is_safe_twice_and_cleans_up() -> None:
    sim = SimReader("rdm6300")
    device_dir = os.path.dirname(sim.device_path)
    assert os.path.islink(sim.device_path)
    sim.close()
    sim.close()
    assert not os.path.exists(device_dir)
    with pytest.raises(ReaderPortLost, match="closed"):
        sim.write(b"x")
    assert "closed" in repr(sim)


def test_unknown_sim_format_is_refused() -> None:
    with pytest.raises(ValueError, match="sim format"):
        SimReader("pn532")


def test_a_link_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ReaderConfigInvalid, match="cannot make the link"):
        SimReader("rdm6300", link=str(tmp_path / "no-such-dir" / "sim-main"))
