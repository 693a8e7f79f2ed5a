"""Line readers: line endings, hex and decimal numbers and their conversion, auto
detection, garbage, fuzzing; and the real driver on a pty."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.readers import open_reader
from drivers.readers.base import ReaderThread
from drivers.readers.cardid import matches
from drivers.readers.line import (
    LineParser,
    dec_line_to_card,
    encode_line,
    hex_line_to_card,
    line_protocol,
    line_to_card,
)
from tests.drivers.reader_helpers import ManualClock, PtyPair, Recorder, wait_until

# Every wait below has its own deadline; this bounds a whole test that hangs.
pytestmark = pytest.mark.timeout(30)


def parser(fmt: str = "auto", **kw: object) -> LineParser:
    kw.setdefault("clock", ManualClock())
    kw.setdefault("hold_s", 0)
    return LineParser("booth", number_format=fmt, **kw)  # type: ignore[arg-type]


def cards(p: LineParser, data: bytes) -> list[str]:
    return [r.card_hex for r in p.feed(data)]


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_each_line_ending_ends_a_card(ending: bytes) -> None:
    p = parser("hex")
    assert cards(p, b"14008EC793" + ending + b"04A1B2C3" + ending) == ["14008EC793", "04A1B2C3"]
    assert p.counters.errors == {}


def test_lines_split_byte_by_byte() -> None:
    p = parser("hex")
    got = [c for b in b"14008ec793\r\n0102030405\n" for c in cards(p, bytes([b]))]
    assert got == ["14008EC793", "0102030405"]


def test_cr_and_lf_in_separate_reads_make_one_line() -> None:
    p = parser("hex")
    assert cards(p, b"14008EC793\r") == ["14008EC793"]
    assert cards(p, b"\n04A1B2C3\r") == ["04A1B2C3"]
    assert p.counters.errors == {}


def test_blank_lines_and_wrappers_are_ignored() -> None:
    p = parser("hex")
    assert cards(p, b"\r\n\r\n  \x0214008EC793\x03 \t\r\n") == ["14008EC793"]
    assert p.counters.errors == {}


@pytest.mark.parametrize("text, card", [
    ("14008EC793", "14008EC793"),
    ("0x04a1b2c3", "04A1B2C3"),
    ("04:A1:B2:C3:D4:E5:F6", "04A1B2C3D4E5F6"),
    ("04-a1-b2-c3", "04A1B2C3"),
    ("04 A1 B2 C3 D4 E5 F6 07 18 29", "04A1B2C3D4E5F6071829"),
])
def test_hex_lines(text: str, card: str) -> None:
    assert hex_line_to_card(text) == card


@pytest.mark.parametrize("text", ["14008EC79", "1400", "XYZ", "04::A1B2C3", "00" * 11, "",
                                  "8EC793", "00" * 6, "00" * 8, "00" * 9, "A", "0x5"])
def test_bad_hex_lines_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        hex_line_to_card(text)


@pytest.mark.parametrize("text, card", [
    ("0009357203", "008EC793"),       # the 10-digit EM4100 print: low 32 bits, 4 bytes
    ("4294967295", "FFFFFFFF"),
    ("85908703123", "14008EC793"),    # the whole 40-bit EM4100 number
    ("142,51091", "8EC793"),          # Wiegand-26 facility,card
    ("00000009357203", "00008EC793"),            # past 10 digits: 5 bytes at least
    ("72057594037927935", "FFFFFFFFFFFFFF"),     # 2**56 - 1: 7 bytes
    ("72057594037927936", "00000100000000000000"),  # 2**56: 10 bytes
])
def test_decimal_lines_convert_as_documented(text: str, card: str) -> None:
    assert dec_line_to_card(text) == card


@pytest.mark.parametrize("text", ["", "12a4", "256,1", "1,65536", "-5", "9" * 26,
                                  "5", "00", "9357203", "009357203", "142,5109", "42,51091",
                                  "1,2"])
def test_bad_decimal_lines_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        dec_line_to_card(text)


def test_decimal_reads_match_the_card_list_forms_of_the_same_tag() -> None:
    p = parser("dec")
    got = cards(p, b"0009357203\r\n142,51091\r\n")
    assert got == ["008EC793", "8EC793"]
    assert all(matches("dec:0009357203", c) for c in got[:1])
    assert all(matches("w26:142,51091", c) for c in got)


def test_auto_reads_letters_as_hex_and_digits_as_decimal() -> None:
    assert line_to_card("14008EC793", "auto") == "14008EC793"
    assert line_to_card("0009357203", "auto") == "008EC793"
    assert line_to_card("0x1234567890", "auto") == "1234567890"


def test_auto_latches_to_hex_once_a_reader_showed_hex_letters() -> None:
    p = parser("auto")
    assert cards(p, b"0009357203\r\n") == ["008EC793"]      # decimal, until shown otherwise
    assert cards(p, b"14008EC793\r\n") == ["14008EC793"]
    assert cards(p, b"1400812793\r\n") == ["1400812793"]    # now read as hex
    assert p.hex_seen


def test_explicit_hex_never_reads_digits_as_decimal() -> None:
    assert cards(parser("hex"), b"0009357203\n") == ["0009357203"]


def test_garbage_lines_are_counted_and_dropped() -> None:
    p = parser("auto")
    got = cards(p, b"hello\r\nERROR 12\r\n\xff\xfe\r\n14008EC793\r\n")
    assert got == ["14008EC793"]
    assert p.counters.errors == {"garbage": 3}


def test_overlong_line_is_counted_once_and_the_next_line_read() -> None:
    p = parser("hex")
    assert cards(p, b"A" * 50) == []
    assert cards(p, b"B" * 50) == []
    assert cards(p, b"C" * 50 + b"\r\n14008EC793\r\n") == ["14008EC793"]
    assert p.counters.errors == {"overlong": 1}
    assert len(p._buf) == 0


def test_repeats_within_the_hold_collapse() -> None:
    clock = ManualClock()
    p = parser("hex", clock=clock, hold_s=1.5)
    assert cards(p, b"04A1B2C3\r\n04A1B2C3\r\n") == ["04A1B2C3"]
    clock.advance(2)
    assert cards(p, b"04A1B2C3\r\n") == ["04A1B2C3"]


def test_bad_number_format_is_refused() -> None:
    with pytest.raises(ValueError, match="number_format"):
        LineParser("x", number_format="octal")
    with pytest.raises(ValueError, match="number_format"):
        line_to_card("123", "octal")


def test_encode_line_round_trips() -> None:
    assert encode_line("14008EC793") == b"14008EC793\r\n"
    assert encode_line("14008EC793", "dec") == b"0009357203\r\n"
    assert cards(parser("dec"), encode_line("14008EC793", "dec")) == ["008EC793"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["auto", "hex", "dec"]), st.integers(1, 20))
def test_fuzz_never_raises_and_every_card_is_canonical_hex(data: bytes, fmt: str,
                                                          chunk: int) -> None:
    p = parser(fmt)
    for i in range(0, len(data), chunk):
        for r in p.feed(data[i:i + chunk]):
            assert r.card_hex == r.card_hex.upper()
            int(r.card_hex, 16)
            assert len(r.card_hex) in (6, 8, 10, 14, 20)
    assert len(p._buf) <= p.max_line


ids = st.sampled_from([4, 5, 7, 10]).flatmap(
    lambda n: st.binary(min_size=n, max_size=n)).map(lambda b: b.hex().upper())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"\r", b"\n", b"\r\n"]), ids), min_size=1,
                max_size=10), st.integers(1, 7))
def test_fuzz_hex_lines_are_all_found(lines: list[tuple[bytes, str]], chunk: int) -> None:
    stream = b"".join(card.encode() + end for end, card in lines)
    p = parser("hex")
    got = [r.card_hex for i in range(0, len(stream), chunk) for r in p.feed(stream[i:i + chunk])]
    assert got == [c for _, c in lines]


def test_driver_reads_lines_from_a_pty() -> None:
    pair = PtyPair()
    rec = Recorder()
    reader = ReaderThread("booth", pair.path, line_protocol("booth", number_format="dec"),
                          on_card=rec.on_card, on_state=rec.on_state)
    with reader:
        rec.wait_state("online")
        pair.write(b"0009357")
        pair.write(b"203\r\ngarbage\r\n")
        pair.write(b"142,51091\n")
        assert rec.wait_cards(2) == ["008EC793", "8EC793"]
        assert reader.health()["errors"] == {"garbage": 1}
    pair.close()


# -- noise: numbers of no card id's length ----------------------------------------------


@pytest.mark.parametrize("fmt, line, card", [
    ("hex", b"04A1B2C3", "04A1B2C3"),                        # 4-byte UID
    ("hex", b"14008EC793", "14008EC793"),                    # EM4100
    ("hex", b"04A1B2C3D4E5F6", "04A1B2C3D4E5F6"),            # 7-byte UID
    ("hex", b"04A1B2C3D4E5F6071829", "04A1B2C3D4E5F6071829"),  # 10-byte UID
    ("dec", b"0009357203", "008EC793"),                      # the printed 10-digit form
    ("dec", b"85908703123", "14008EC793"),                   # the whole 40-bit number
    ("dec", b"142,51091", "8EC793"),                         # Wiegand-26, facility,card
    ("auto", b"12345678", "12345678"),                       # 8 digits: only hex has them
])
def test_lines_of_card_id_lengths_are_read(fmt: str, line: bytes, card: str) -> None:
    p = parser(fmt)
    assert cards(p, line + b"\r\n") == [card]
    assert p.counters.errors == {}


@pytest.mark.parametrize("fmt, line", [
    ("auto", b"5"), ("dec", b"5"), ("auto", b"0"), ("dec", b"42"), ("dec", b"9357203"),
    ("auto", b"123456789"), ("dec", b"7,42"), ("hex", b"8EC793"), ("hex", b"0A"),
    ("hex", b"04A1B2C3D4E5"), ("auto", b"04A1B2C3D4E5F607"), ("hex", b"00" * 9),
])
def test_numbers_of_no_card_id_length_are_counted_and_dropped(fmt: str, line: bytes) -> None:
    p = parser(fmt)
    valid, card = (b"0009357203", "008EC793") if fmt == "dec" else (b"04A1B2C3D4E5F6",
                                                                    "04A1B2C3D4E5F6")
    assert cards(p, line + b"\r\n" + valid + b"\r\n") == [card]
    assert p.counters.errors == {"bad_length": 1}
    assert p.counters.bad_frames == 1 and p.counters.noise_bytes == len(line)


@pytest.mark.parametrize("fmt", ["auto", "hex", "dec"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_megabyte_of_random_bytes_yields_no_card(fmt: str, seed: int) -> None:
    # Before lengths were checked, about 2 one-digit "cards" came out of every MB.
    data = random.Random(seed).randbytes(1 << 20)
    p = parser(fmt)
    assert [c for i in range(0, len(data), 4096) for c in cards(p, data[i:i + 4096])] == []
    assert cards(p, b"\r\n142,51091\r\n" if fmt == "dec" else b"\r\n04A1B2C3\r\n") == [
        "8EC793" if fmt == "dec" else "04A1B2C3"]


def test_driver_reads_no_card_from_a_megabyte_of_noise_on_a_pty() -> None:
    pair = PtyPair()
    rec = Recorder()
    reader = open_reader("line", pair.path, name="booth", on_card=rec.on_card,
                         on_state=rec.on_state, hold_s=0)
    data = random.Random(0).randbytes(1 << 20)
    try:
        rec.wait_state("online")
        view = memoryview(data)
        while view:
            view = view[os.write(pair.master, view[:4096]):]
        pair.write(b"\r\n0009357203\r\n")      # a valid line after the noise
        assert rec.wait_cards(1, timeout=30) == ["008EC793"]
        wait_until(lambda: reader.health()["frames"] == 1, what="the valid line")
        health = reader.health()
    finally:
        reader.stop()
        pair.close()
    assert health["reads"] == 1
    assert health["bad_frames"] == sum(health["errors"].get(k, 0)
                                       for k in ("garbage", "overlong", "bad_length"))
    assert 0 < health["noise_bytes"] <= len(data)
