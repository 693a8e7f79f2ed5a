"""PN532: the frame codec on the NXP example frames, and the host driver against an
emulated chip (tests/drivers/pn532_peer.py) on the far side of a real pty."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.readers.base import ReaderThread
from drivers.readers.pn532 import (
    ACK_FRAME,
    NACK_FRAME,
    WAKEUP,
    Ack,
    BadFrame,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Nack,
    Pn532Protocol,
    command_frame,
    encode_frame,
    parse_firmware_version,
    parse_passive_targets,
)
from tests.drivers.pn532_peer import Pn532Peer, pn532_frame
from tests.drivers.reader_helpers import ManualClock, Recorder, wait_until

# Every wait below has its own deadline; this bounds a whole test that hangs.
pytestmark = pytest.mark.timeout(30)

H = bytes.fromhex

# wire-formats.md, NXP UM0701-02 examples.
SAM = H("00 00 FF 03 FD D4 14 01 17 00")
SAM_ANSWER = H("00 00 FF 02 FE D5 15 16 00")
GET_FW = H("00 00 FF 02 FE D4 02 2A 00")
GET_FW_ANSWER = H("00 00 FF 06 FA D5 03 32 01 06 07 E8 00")
IN_LIST = H("00 00 FF 04 FC D4 4A 01 00 E1 00")
ACK = H("00 00 FF 00 FF 00")
NACK = H("00 00 FF FF 00 00")
ERROR = H("00 00 FF 01 FF 7F 81 00")

UID4 = H("DEADBEEF")
UID7 = H("04A1B2C3D4E5F6")
UID10 = H("04A1B2C3D4E5F6071829")


def rf_config_max_retries(n: int) -> bytes:
    # "D4 32 05 FF 01 <n> in a frame": LEN 6, LCS, and DCS by the rule.
    body = bytes([0xD4, 0x32, 0x05, 0xFF, 0x01, n])
    return bytes([0x00, 0x00, 0xFF, 6, 0x100 - 6, *body, (0x100 - sum(body) % 256) % 256, 0x00])


# -- codec -------------------------------------------------------------------------


def test_host_frames_are_the_manual_examples() -> None:
    assert command_frame(0x14, b"\x01") == SAM
    assert command_frame(0x02) == GET_FW
    assert command_frame(0x4A, b"\x01\x00") == IN_LIST
    assert command_frame(0x32, bytes([0x05, 0xFF, 0x01, 0x05])) == rf_config_max_retries(5)
    assert ACK_FRAME == ACK and NACK_FRAME == NACK
    assert bytes([0x55, 0x55, *[0x00] * 14]) == WAKEUP


def test_decoder_reads_answers_ack_nack_and_error_frames() -> None:
    d = FrameDecoder()
    events = d.feed(ACK + SAM_ANSWER + ACK + GET_FW_ANSWER + NACK + ERROR)
    assert events == [Ack(), Frame(0xD5, b"\x15"), Ack(), Frame(0xD5, H("03 32 01 06 07")),
                      Nack(), ErrorFrame()]
    assert d.counters.errors == {}


def test_firmware_version_of_the_example_is_pn532_v1_6() -> None:
    (frame,) = FrameDecoder().feed(GET_FW_ANSWER)
    assert isinstance(frame, Frame) and frame.code == 0x03
    fw = parse_firmware_version(frame.data[1:])
    assert (fw.ic, fw.ver, fw.rev, fw.support) == (0x32, 1, 6, 7)
    assert str(fw) == "PN532 firmware 1.6"


def test_decoder_handles_every_split() -> None:
    stream = ACK + GET_FW_ANSWER + ERROR
    for cut in range(1, len(stream)):
        d = FrameDecoder()
        assert d.feed(stream[:cut]) + d.feed(stream[cut:]) == [
            Ack(), Frame(0xD5, H("03 32 01 06 07")), ErrorFrame()]


def test_decoder_reads_without_preamble_and_skips_noise() -> None:
    d = FrameDecoder()
    assert d.feed(b"\x55\x55\x00\x00junk" + GET_FW_ANSWER[1:]) == [
        Frame(0xD5, H("03 32 01 06 07"))]
    assert d.counters.errors == {"noise": 4}


def test_bad_lcs_and_bad_dcs_are_counted_and_the_next_frame_is_found() -> None:
    bad_lcs = bytearray(GET_FW_ANSWER)
    bad_lcs[4] ^= 0x10
    bad_dcs = bytearray(GET_FW_ANSWER)
    bad_dcs[-2] ^= 0x01
    d = FrameDecoder()
    events = d.feed(bytes(bad_lcs) + bytes(bad_dcs) + SAM_ANSWER)
    assert events == [BadFrame("bad_lcs"), BadFrame("bad_dcs"), Frame(0xD5, b"\x15")]
    assert d.counters.errors == {"bad_lcs": 1, "bad_dcs": 1}


def test_frame_hidden_inside_a_bad_frame_is_found() -> None:
    # A start code whose LEN claims more bytes than follow before a real frame.
    d = FrameDecoder()
    events = d.feed(H("00 FF 10 F0 D5") + SAM_ANSWER + bytes(20))
    assert Frame(0xD5, b"\x15") in events
    assert d.counters.errors.get("bad_dcs") == 1


def test_extended_frames_round_trip() -> None:
    payload = bytes(range(256)) + b"\x4b"
    frame = encode_frame(payload, 0xD5)
    assert frame[:5] == H("00 00 FF FF FF")
    assert frame[5:8] == bytes([0x01, 0x02, (0x100 - 3) % 256])  # LEN 258, LCS
    assert frame == pn532_frame(payload, extended=True)
    assert FrameDecoder().feed(frame) == [Frame(0xD5, payload, extended=True)]


def test_normal_frame_of_255_bytes_is_not_extended() -> None:
    payload = bytes(254)
    frame = encode_frame(payload, 0xD5)
    assert frame[3:5] == H("FF 01")
    assert FrameDecoder().feed(frame) == [Frame(0xD5, payload)]


def test_too_long_and_empty_frames_are_refused() -> None:
    d = FrameDecoder()
    events = d.feed(H("00 00 FF FF FF 02 00 FE") + H("00 00 FF 00 00"))
    assert events[0] == BadFrame("too_long")
    assert d.counters.errors["too_long"] == 1
    with pytest.raises(ValueError):
        encode_frame(bytes(300))


def test_passive_targets_of_4_7_and_10_bytes() -> None:
    for uid, sens in ((UID4, H("0004")), (UID7, H("0044")), (UID10, H("0084"))):
        (t,) = parse_passive_targets(b"\x01\x01" + sens + bytes([0x08, len(uid)]) + uid)
        assert (t.tg, t.sens_res, t.sel_res, t.uid) == (1, sens, 0x08, uid)
        assert t.card_hex == uid.hex().upper()
    assert parse_passive_targets(b"\x00") == []


@pytest.mark.parametrize("data", [b"", H("01 01 00 04 08 05 0102030405"), H("01 01 00 04 08 07 01"),
                                  H("03"), H("01 01 00")])
def test_malformed_target_answers_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_passive_targets(data)


pn532ish = st.one_of(st.sampled_from([b"\x00", b"\xff", b"\x00\xff", b"\xd5", b"\x7f", b"\x01"]),
                     st.binary(max_size=6))
streams = st.lists(pn532ish, max_size=80).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), streams), st.integers(1, 30))
def test_fuzz_decoder_never_raises_and_yields_only_checked_frames(data: bytes,
                                                                  chunk: int) -> None:
    d = FrameDecoder()
    events = [e for i in range(0, len(data), chunk) for e in d.feed(data[i:i + chunk])]
    for e in events:
        if isinstance(e, Frame):
            encoded = pn532_frame(e.data, extended=e.extended, tfi=e.tfi)
            # Start code, LEN, LCS, TFI, data, DCS (pre- and postamble are optional).
            assert encoded[1:-1] in data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(min_size=0, max_size=40)),
                min_size=1, max_size=6))
def test_fuzz_frames_in_noise_are_all_found(parts: list[tuple[bytes, bytes]]) -> None:
    # Noise without a start code in it, so it cannot swallow the frame after it.
    stream = b"".join(noise.replace(b"\xff", b"\xfe") + pn532_frame(b"\x4b" + data)
                      for noise, data in parts)
    frames = [e for e in FrameDecoder().feed(stream) if isinstance(e, Frame)]
    assert [f.data for f in frames] == [b"\x4b" + data for _, data in parts]


# -- the driver against the emulated chip ---------------------------------------------


@pytest.fixture
def peer() -> Iterator[Pn532Peer]:
    p = Pn532Peer()
    yield p
    p.close()


FAST = {"poll_interval_s": 0.02, "ack_timeout_s": 0.1, "response_timeout_s": 0.3,
        "silent_limit": 2}


def run(peer: Pn532Peer, rec: Recorder, *, thread: dict[str, Any] | None = None,
        **proto: Any) -> ReaderThread:
    options = {**FAST, **proto}
    return ReaderThread("door", peer.path, Pn532Protocol("door", **options),
                        on_card=rec.on_card, on_state=rec.on_state,
                        backoff_initial_s=0.05, backoff_max_s=0.2, **(thread or {})).start()


def test_open_sends_the_manual_init_sequence_exactly(peer: Pn532Peer) -> None:
    rec = Recorder()
    reader = run(peer, rec, max_retries=5)
    try:
        detail = rec.wait_state("online")
        peer.wait_count(0x4A, 1)
    finally:
        reader.stop()
    expected = WAKEUP + SAM + GET_FW + rf_config_max_retries(5) + IN_LIST
    assert bytes(peer.received[:len(expected)]) == expected
    assert "PN532 firmware 1.6" in detail and "0x32" in detail
    assert reader.health()["firmware"] == "PN532 firmware 1.6"
    assert reader.health()["firmware_info"] == {"ic": "0x32", "version": "1.6",
                                                "support": "0x07"}


def test_idle_polls_return_because_max_retries_was_set(peer: Pn532Peer) -> None:
    # The emulated chip, like the real one, never answers InListPassiveTarget with
    # no card when MaxRetries is left at 0xFF.
    rec = Recorder()
    with run(peer, rec) as reader:
        rec.wait_state("online")
        peer.wait_count(0x4A, 5)
        assert peer.max_retries_passive == 5
        assert "timeout" not in reader.protocol.counters.errors


@pytest.mark.parametrize("uid", [UID4, UID7, UID10], ids=["4", "7", "10"])
def test_uid_of_4_7_and_10_bytes_is_reported(peer: Pn532Peer, uid: bytes) -> None:
    rec = Recorder()
    with run(peer, rec):
        rec.wait_state("online")
        peer.present(uid)
        assert rec.wait_cards(1) == [uid.hex().upper()]
    assert rec.cards[0].reader == "door"
    assert uid in rec.cards[0].raw


def test_card_held_on_the_reader_is_one_read(peer: Pn532Peer) -> None:
    clock = ManualClock()
    rec = Recorder()
    with run(peer, rec, clock=clock) as reader:
        rec.wait_state("online")
        peer.present(UID4)
        rec.wait_cards(1)
        seen = peer.count(0x4A)
        peer.wait_count(0x4A, seen + 5)          # polled 5 more times while held
        wait_until(lambda: reader.protocol.counters.repeats >= 3, what="repeats")
        assert len(rec.cards) == 1
        peer.remove()
        clock.advance(2.0)
        peer.present(UID4)
        assert rec.wait_cards(2) == ["DEADBEEF", "DEADBEEF"]


def test_error_frame_is_counted_and_polling_goes_on(peer: Pn532Peer) -> None:
    rec = Recorder()
    with run(peer, rec) as reader:
        rec.wait_state("online")
        peer.error_responses = 1
        peer.present(UID7)
        assert rec.wait_cards(1) == [UID7.hex().upper()]
        assert reader.protocol.counters.errors.get("error_frame") == 1
        assert rec.state_names == ["online"]


def test_corrupt_answer_is_asked_for_again_with_a_nack(peer: Pn532Peer) -> None:
    rec = Recorder()
    with run(peer, rec) as reader:
        rec.wait_state("online")
        peer.present(UID10)
        peer.corrupt_responses = 1
        assert rec.wait_cards(1) == [UID10.hex().upper()]
        assert peer.host_nacks >= 1
        assert NACK in peer.received
        assert reader.protocol.counters.errors.get("bad_dcs") == 1


def test_nack_from_the_chip_makes_the_host_send_again(peer: Pn532Peer) -> None:
    rec = Recorder()
    with run(peer, rec) as reader:
        rec.wait_state("online")
        peer.nack_commands = 1
        peer.present(UID4)
        assert rec.wait_cards(1) == ["DEADBEEF"]
        assert reader.protocol.counters.errors.get("nack") == 1


def test_extended_answers_are_understood(peer: Pn532Peer) -> None:
    peer.extended_responses = True
    rec = Recorder()
    with run(peer, rec):
        assert "PN532" in rec.wait_state("online")
        peer.present(UID7)
        assert rec.wait_cards(1) == [UID7.hex().upper()]


def test_noise_on_the_line_does_not_stop_polling(peer: Pn532Peer) -> None:
    rec = Recorder()
    with run(peer, rec) as reader:
        rec.wait_state("online")
        peer.send_raw(b"\xff\x00\xff\x13\x37garbage\x00\x00\xff")
        peer.present(UID4)
        assert rec.wait_cards(1) == ["DEADBEEF"]
        assert reader.state == "online"


def test_silent_reader_is_reinitialised_and_reported(peer: Pn532Peer) -> None:
    rec = Recorder()
    with run(peer, rec) as reader:
        rec.wait_state("online")
        peer.silent = True
        detail = rec.wait_state("offline")
        assert "not answering" in detail and peer.path in detail
        assert reader.protocol.reinits >= 1
        peer.silent = False
        assert "PN532" in rec.wait_state("online", count=2)
        assert peer.received.count(WAKEUP) >= 2           # woken and configured again
        peer.present(UID4)
        assert rec.wait_cards(1) == ["DEADBEEF"]
        assert reader.health()["not_answering"] >= 1


def test_a_lost_command_is_bridged_by_reinitialising_without_going_offline(
        peer: Pn532Peer) -> None:
    rec = Recorder()
    with run(peer, rec, silent_limit=1) as reader:
        rec.wait_state("online")
        inits = reader.protocol.inits
        peer.drop_commands = 1
        wait_until(lambda: reader.protocol.inits > inits, what="re-initialisation")
        peer.present(UID4)
        assert rec.wait_cards(1) == ["DEADBEEF"]
        assert reader.protocol.reinits == 1
        assert reader.protocol.counters.errors.get("timeout") == 1
        assert rec.state_names == ["online"]
        assert peer.received.count(WAKEUP) == 2


def test_hung_reader_is_power_cycled_through_its_relay(peer: Pn532Peer) -> None:
    factory = MockFactory()
    relay = OutputDevice(17, active_high=True, initial_value=False, pin_factory=factory)
    pin = factory.pin(17)
    peer.silent = True
    rec = Recorder()
    reader = run(peer, rec, thread={"power": relay, "own_power": True, "power_cycle_after": 1,
                                    "power_off_s": 0.05, "power_settle_s": 0.0})
    try:
        rec.wait_state("offline")
        # The relay cuts power (pin high) and restores it; the chip restarts.
        wait_until(lambda: [s.state for s in pin.states][-2:] == [True, False],
                   what="relay on then off")
        peer.power_cycle()
        assert "PN532" in rec.wait_state("online")
    finally:
        reader.stop()
    assert reader.power_cycles >= 1
    assert relay.closed
    assert pin.states[0].state is False        # powered while the daemon runs


def test_chip_unplugged_goes_offline_with_the_port_named(peer: Pn532Peer) -> None:
    rec = Recorder()
    with run(peer, rec) as reader:
        rec.wait_state("online")
        peer.close()
        detail = rec.wait_state("offline")
        assert peer.path in detail
        assert reader.running
