"""RDM6300 parser: worked frames, splits, garbage and resync, bad checksums, repeat
collapse with an injected clock, RF125-PS frames, fuzzing; and the real driver on a pty."""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.readers import open_reader
from drivers.readers.base import ReaderThread
from drivers.readers.rdm6300 import (
    FRAME_LEN,
    Rdm6300Parser,
    checksum,
    encode_frame,
    encode_rf125_frame,
    rdm6300_protocol,
)
from tests.drivers.reader_helpers import ManualClock, PtyPair, Recorder

# Every wait below has its own deadline; this bounds a whole test that hangs.
pytestmark = pytest.mark.timeout(30)

# wire-formats.md: "14008EC793" with checksum "CE".
WORKED = bytes.fromhex("02 31 34 30 30 38 45 43 37 39 33 43 45 03")


def parser(**kw: object) -> Rdm6300Parser:
    kw.setdefault("clock", ManualClock())
    return Rdm6300Parser("main", **kw)  # type: ignore[arg-type]


def cards(p: Rdm6300Parser, data: bytes) -> list[str]:
    return [r.card_hex for r in p.feed(data)]


def test_worked_frame_is_card_14008EC793() -> None:
    p = parser()
    (read,) = p.feed(WORKED, now=5.0)
    assert (read.reader, read.card_hex, read.raw, read.at_mono) == ("main", "14008EC793",
                                                                    WORKED, 5.0)
    assert p.counters.snapshot() == {"frames": 1, "reads": 1, "repeats": 0, "errors": {}}


def test_worked_checksum_and_encoder_agree_with_wire_formats() -> None:
    assert checksum("14008EC793") == 0x14 ^ 0x00 ^ 0x8E ^ 0xC7 ^ 0x93 == 0xCE
    assert encode_frame("14008ec793") == WORKED


@pytest.mark.parametrize("cut", range(1, len(WORKED)))
def test_frame_split_at_any_point_is_read_once(cut: int) -> None:
    p = parser()
    assert cards(p, WORKED[:cut]) == []
    assert cards(p, WORKED[cut:]) == ["14008EC793"]


def test_frame_fed_byte_by_byte_is_read() -> None:
    p = parser(hold_s=0)
    got = [c for b in WORKED * 3 for c in cards(p, bytes([b]))]
    assert got == ["14008EC793"] * 3
    assert p.counters.errors == {}


def test_garbage_around_frames_is_skipped_and_counted() -> None:
    p = parser(hold_s=0)
    got = cards(p, b"\xff\x00junk" + WORKED + b"\x03\x03" + encode_frame("0102030405") + b"zz")
    assert got == ["14008EC793", "0102030405"]
    assert p.counters.errors == {"noise": 2 + 4 + 2 + 2}


def test_truncated_frame_then_full_frame_resynchronises() -> None:
    p = parser()
    assert cards(p, WORKED[:6] + WORKED) == ["14008EC793"]
    assert p.counters.errors == {"bad_frame": 1}


def test_stx_inside_a_broken_frame_starts_the_next_one() -> None:
    # Ten digits, then where the checksum should be a new frame begins.
    p = parser()
    assert cards(p, WORKED[:11] + WORKED) == ["14008EC793"]
    assert p.counters.errors["bad_frame"] == 1


def test_bad_checksum_is_dropped_and_counted() -> None:
    bad = WORKED[:11] + b"CF" + WORKED[13:]
    p = parser()
    assert cards(p, bad) == []
    assert p.counters.errors == {"bad_checksum": 1}
    assert p.counters.frames == 0
    assert cards(p, WORKED) == ["14008EC793"]


@pytest.mark.parametrize("frame", [
    WORKED[:5] + b"G" + WORKED[6:],          # not a hex digit
    WORKED[:-1] + b"\x04",                   # no ETX
    WORKED[:12] + b"\x03",                   # one checksum digit, ETX (not a valid RF125 frame)
])
def test_malformed_frames_are_dropped_and_counted(frame: bytes) -> None:
    p = parser(hold_s=0)
    assert cards(p, frame + WORKED) == ["14008EC793"]
    assert p.counters.error_total >= 1


def test_lower_case_digits_are_read_as_upper_case_id() -> None:
    frame = b"\x02" + b"14008ec793" + b"ce" + b"\x03"
    assert cards(parser(), frame) == ["14008EC793"]


def test_held_tag_repeats_collapse_into_one_read() -> None:
    clock = ManualClock()
    p = parser(clock=clock)
    got: list[str] = []
    for _ in range(30):            # held for 3 s, a frame every 100 ms
        got += cards(p, WORKED)
        clock.advance(0.1)
    assert got == ["14008EC793"]
    assert (p.counters.frames, p.counters.reads, p.counters.repeats) == (30, 1, 29)


def test_hold_extends_from_the_last_repeat() -> None:
    clock = ManualClock()
    p = parser(clock=clock, hold_s=1.5)
    assert cards(p, WORKED) == ["14008EC793"]
    clock.advance(1.4)
    assert cards(p, WORKED) == []              # 1.4 s after the last sighting
    clock.advance(1.4)
    assert cards(p, WORKED) == []              # 2.8 s after the first, 1.4 after the last
    clock.advance(1.6)
    assert cards(p, WORKED) == ["14008EC793"]  # lifted and presented again


def test_another_tag_is_a_new_read_at_once_and_so_is_the_first_again() -> None:
    p = parser()
    other = encode_frame("0102030405")
    assert cards(p, WORKED + other + WORKED) == ["14008EC793", "0102030405", "14008EC793"]


def test_hold_zero_reports_every_frame() -> None:
    assert cards(parser(hold_s=0), WORKED * 4) == ["14008EC793"] * 4


@pytest.mark.parametrize("card", ["14008EC793", "0000000002", "0000000003", "0000000041",
                                  "0000000030"])
def test_rf125_ps_frame_with_raw_checksum_is_read(card: str) -> None:
    # Raw checksums 0x02 (STX), 0x03 (ETX), 0x41 and 0x30 (ASCII hex digits).
    frame = encode_rf125_frame(card)
    assert len(frame) == 13
    p = parser(hold_s=0, frame="rf125")
    assert cards(p, frame + frame + frame) == [card] * 3
    assert p.counters.errors == {}


def test_rf125_ps_bad_raw_checksum_is_counted() -> None:
    frame = bytearray(encode_rf125_frame("14008EC793"))
    frame[11] ^= 0x01
    p = parser(frame="rf125")
    assert cards(p, bytes(frame)) == []
    assert p.counters.errors == {"bad_checksum": 1}


def test_rf125_ps_frames_are_refused_by_a_reader_of_14_byte_frames() -> None:
    p = parser()
    assert cards(p, encode_rf125_frame("14008EC793") + WORKED) == ["14008EC793"]
    assert p.counters.errors == {"bad_frame": 1}


def test_reset_forgets_a_partial_frame() -> None:
    p = parser()
    p.feed(WORKED[:7])
    p.reset()
    assert cards(p, WORKED[7:]) == []
    assert cards(p, WORKED) == ["14008EC793"]


def test_buffer_stays_bounded_under_endless_digits() -> None:
    p = parser()
    for _ in range(200):
        p.feed(b"\x02" + b"1" * 50)
    assert len(p._buf) <= 14


# -- fuzzing ----------------------------------------------------------------------------


def _valid_frame(raw: bytes) -> bool:
    """Independent check of a frame the parser reported: digits, checksum, ends."""
    if raw[:1] != b"\x02" or raw[-1:] != b"\x03":
        return False
    digits = raw[1:11].decode("ascii")
    data = bytes.fromhex(digits)
    x = data[0] ^ data[1] ^ data[2] ^ data[3] ^ data[4]
    if len(raw) == 14:
        return int(raw[11:13].decode("ascii"), 16) == x
    return len(raw) == 13 and raw[11] == x


# Bytes that make frames likely: STX/ETX and hex digits, plus anything.
frame_bytes = st.one_of(st.sampled_from(b"\x02\x030123456789ABCDEFabcdef"),
                        st.integers(0, 255))
noisy = st.lists(frame_bytes, max_size=300).map(bytes)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), noisy),
       cuts=st.lists(st.integers(1, 20), max_size=40), form=st.sampled_from(["rdm6300", "rf125"]))
def test_fuzz_never_raises_and_never_yields_an_invalid_frame(data: bytes, cuts: list[int],
                                                             form: str) -> None:
    p = parser(hold_s=0, frame=form)
    reads = []
    pos = 0
    for n in [*cuts, len(data)]:
        reads += p.feed(data[pos:pos + n])
        pos += n
    for r in reads:
        assert r.raw in data
        assert _valid_frame(r.raw), r.raw
        assert len(r.raw) == (14 if form == "rdm6300" else 13)
        assert r.card_hex == r.raw[1:11].decode().upper()


ids = st.binary(min_size=5, max_size=5).map(lambda b: b.hex().upper())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(noisy, ids), min_size=1, max_size=8), noisy,
       st.integers(1, 16), st.booleans())
def test_fuzz_valid_frames_in_noise_are_all_found(parts: list[tuple[bytes, str]],
                                                  tail: bytes, chunk: int, rf: bool) -> None:
    stream = b"".join(n + (encode_rf125_frame(c) if rf else encode_frame(c))
                      for n, c in parts) + tail
    p = parser(hold_s=0, frame="rf125" if rf else "rdm6300")
    got = [r.card_hex for i in range(0, len(stream), chunk) for r in p.feed(stream[i:i + chunk])]
    # Noise may itself hold a valid frame; every embedded frame must be found, in order.
    it = iter(got)
    assert all(any(g == c for g in it) for _, c in parts), (got, [c for _, c in parts])


# -- the real driver on a pty ----------------------------------------------------------


def test_driver_reads_frames_written_into_a_pty_byte_by_byte() -> None:
    pair = PtyPair()
    rec = Recorder()
    reader = ReaderThread("main", pair.path, rdm6300_protocol("main"), on_card=rec.on_card,
                          on_state=rec.on_state)
    with reader:
        rec.wait_state("online")
        for b in b"\x00\xffnoise" + WORKED:
            pair.write(bytes([b]))
        assert rec.wait_cards(1) == ["14008EC793"]
        for _ in range(5):       # the reader repeats a held tag: one read
            os.write(pair.master, WORKED)
        pair.write(encode_frame("0102030405"))
        assert rec.wait_cards(2) == ["14008EC793", "0102030405"]
        health = reader.health()
    pair.close()
    assert health["state"] == "online"
    assert health["driver"] == "rdm6300"
    assert health["frames"] == 7 and health["reads"] == 2 and health["repeats"] == 5
    assert health["errors"] == {"noise": 7}
    assert rec.cards[0].raw == WORKED


# -- a byte lost on the line (UART overrun) ---------------------------------------------


def dropped(frame: bytes, pos: int) -> bytes:
    """``frame`` with the byte at ``pos`` lost, as a UART overrun loses it."""
    return frame[:pos] + frame[pos + 1:]


# 14-byte frames that, with one byte lost, read as a well-formed 13-byte RF125-PS
# frame of another card (found by search: about 0.3% of single-byte losses).
PHANTOMS = [("B85DFAF673", 7, "B85DFA6739"), ("DE47133FB4", 6, "DE4713FB40"),
            ("DE47133FB4", 7, "DE4713FB40"), ("60F72D8F30", 9, "60F72D8F00")]


@pytest.mark.parametrize("card, pos, phantom", PHANTOMS)
def test_a_frame_that_lost_a_byte_is_no_card_and_never_another_card(card: str, pos: int,
                                                                   phantom: str) -> None:
    frame = encode_frame(card)
    assert encode_rf125_frame(phantom) == dropped(frame, pos)   # what made it a phantom
    clock = ManualClock()
    p = parser(clock=clock)
    got: list[str] = []
    for part in (frame, dropped(frame, pos), frame):   # a held tag, one repeat damaged
        got += cards(p, part)
        clock.advance(0.1)
    assert got == [card]                               # one tap, recorded once
    assert p.counters.errors == {"bad_frame": 1}


@pytest.mark.parametrize("pos", range(FRAME_LEN))
def test_a_frame_that_lost_the_byte_at_any_position_yields_no_card(pos: int) -> None:
    p = parser(hold_s=0)
    for card in ["14008EC793", *(c for c, _, _ in PHANTOMS)]:
        assert cards(p, dropped(encode_frame(card), pos) + WORKED) == ["14008EC793"]
    assert p.counters.frames == 1 + len(PHANTOMS)


def test_rf125_form_reads_only_13_byte_frames() -> None:
    p = parser(hold_s=0, frame="rf125")
    rf125 = encode_rf125_frame("14008EC793")
    assert cards(p, rf125 + WORKED + rf125) == ["14008EC793"] * 2
    assert p.counters.errors == {"bad_frame": 1}


def test_unknown_frame_form_is_refused() -> None:
    with pytest.raises(ValueError, match="frame"):
        Rdm6300Parser("main", frame="rf126")


forms = st.sampled_from(["rdm6300", "rf125"])


@settings(max_examples=400, deadline=None)
@given(ids, st.integers(0, FRAME_LEN - 1), forms, st.integers(1, 16))
@example("B85DFAF673", 7, "rdm6300", 14)
@example("60F72D8F30", 9, "rdm6300", 1)
def test_fuzz_a_lost_byte_never_yields_a_card_other_than_the_real_one(
        card: str, pos: int, form: str, chunk: int) -> None:
    frame = encode_frame(card) if form == "rdm6300" else encode_rf125_frame(card)
    pos %= len(frame)
    stream = frame + dropped(frame, pos) + frame + dropped(frame, pos)
    p = parser(hold_s=0, frame=form)
    got = [r.card_hex for i in range(0, len(stream), chunk) for r in p.feed(stream[i:i + chunk])]
    assert got == [card, card]


@settings(max_examples=100, deadline=None)
@given(ids, forms)
def test_fuzz_every_one_byte_loss_of_a_frame_yields_no_card(card: str, form: str) -> None:
    frame = encode_frame(card) if form == "rdm6300" else encode_rf125_frame(card)
    stream = b"".join(dropped(frame, pos) for pos in range(len(frame)))
    p = parser(hold_s=0, frame=form)
    assert cards(p, stream + frame) == [card]
    assert p.counters.frames == 1


def test_driver_configured_for_14_byte_frames_reads_no_card_from_damaged_frames() -> None:
    pair = PtyPair()
    rec = Recorder()
    reader = open_reader("rdm6300", pair.path, name="main", on_card=rec.on_card,
                         on_state=rec.on_state, hold_s=0)
    try:
        rec.wait_state("online")
        stream = b"".join(dropped(encode_frame(card), pos)
                          for card in ["14008EC793", *(c for c, _, _ in PHANTOMS)]
                          for pos in range(FRAME_LEN))
        pair.write(stream)
        pair.write(encode_frame("0102030405"))    # the next good frame: all before it is read
        assert rec.wait_cards(1) == ["0102030405"]
        health = reader.health()
    finally:
        reader.stop()
        pair.close()
    assert health["frames"] == 1 and health["reads"] == 1
    assert health["noise_bytes"] == len(stream)    # every damaged byte accounted for
    assert health["bad_frames"] >= len(PHANTOMS) + 1


def test_driver_configured_for_rf125_reads_rf125_frames_over_a_pty() -> None:
    pair = PtyPair()
    rec = Recorder()
    reader = open_reader("rdm6300", pair.path, name="main", frame="rf125", on_card=rec.on_card,
                         on_state=rec.on_state, hold_s=0)
    try:
        rec.wait_state("online")
        for card in ("14008EC793", "0000000003", "0000000041"):   # raw checksums ETX, "A"
            pair.write(dropped(encode_rf125_frame(card), 5) + encode_rf125_frame(card))
        pair.write(WORKED + encode_rf125_frame("0102030405"))
        assert rec.wait_cards(4) == ["14008EC793", "0000000003", "0000000041", "0102030405"]
        health = reader.health()
    finally:
        reader.stop()
        pair.close()
    assert health["frames"] == 4 and health["errors"].get("bad_checksum", 0) == 0
