"""Card ids and card-list patterns: the worked example of wire-formats.md, errors, matching."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.exc import CardPatternInvalid, ReaderError
from drivers.readers.cardid import (
    CardIndex,
    card_forms,
    em4100_decimal,
    matches,
    normalize_card_hex,
    parse_card_pattern,
    wiegand26,
)

# Bounds a test that hangs (the fuzzers included).
pytestmark = pytest.mark.timeout(30)

WORKED = "14008EC793"


def test_worked_example_hex_dec_and_w26_name_the_same_tag() -> None:
    assert em4100_decimal(WORKED) == "0009357203"
    assert wiegand26(WORKED) == (142, 51091)
    for text in (WORKED, "dec:0009357203", "w26:142,51091"):
        assert matches(text, WORKED), text
    assert card_forms(WORKED) == [WORKED, "dec:0009357203", "w26:142,51091"]


def test_patterns_parse_to_canonical_text() -> None:
    assert parse_card_pattern(" 14008ec793 ").text == WORKED
    assert parse_card_pattern("dec:9357203").text == "dec:0009357203"
    assert parse_card_pattern("DEC:0009357203").value == 9357203
    assert parse_card_pattern("w26: 142 , 51091").text == "w26:142,51091"
    assert parse_card_pattern("w26:142,51091").value == 0x8EC793
    assert str(parse_card_pattern("04a1b2c3d4e5f6")) == "04A1B2C3D4E5F6"


@pytest.mark.parametrize("text, reason", [
    ("", "not hexadecimal"),
    ("14008EC79", "odd number"),
    ("14008EC79G", "not hexadecimal"),
    ("1400", "4 hex digits"),
    ("00" * 11, "22 hex digits"),
    ("dec:", "1 to 10 digits"),
    ("dec:12345678901", "1 to 10 digits"),
    ("dec:4294967296", "32 bits"),
    ("dec:-1", "1 to 10 digits"),
    ("w26:142", "facility,card"),
    ("w26:256,1", "over 255"),
    ("w26:1,65536", "over 65535"),
    ("w34:1,2", "unknown form"),
])
def test_bad_patterns_raise_a_clear_value_error(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_card_pattern(text)
    assert isinstance(info.value, CardPatternInvalid)
    assert isinstance(info.value, ReaderError)


def test_non_string_pattern_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_card_pattern(1234)  # type: ignore[arg-type]


def test_hex_pattern_matches_exactly_and_ignores_case() -> None:
    assert matches("14008ec793", "14008EC793")
    assert not matches("14008EC793", "15008EC793")
    assert not matches("14008EC793", "008EC793")


def test_dec_matches_low_32_bits_of_4_and_5_byte_ids() -> None:
    assert matches("dec:0009357203", "008EC793")       # a reader that drops the customer byte
    assert matches("dec:0009357203", "FF008EC793")     # any customer byte
    assert not matches("dec:0009357204", WORKED)


def test_w26_matches_low_24_bits() -> None:
    assert matches("w26:142,51091", "8EC793")
    assert matches("w26:142,51091", "77008EC793")
    assert matches("w26:142,51091", "7A8EC793")
    assert not matches("w26:142,51092", WORKED)


def test_short_forms_never_match_7_or_10_byte_uids() -> None:
    assert not matches("dec:0009357203", "04A1B2008EC793")
    assert not matches("w26:142,51091", "04A1B2C3D4E58EC793")


def test_garbage_card_never_matches() -> None:
    assert not matches("dec:0009357203", "not a card")
    assert not matches(WORKED, "")


def test_normalize_rejects_what_no_reader_sends() -> None:
    assert normalize_card_hex("04a1b2c3") == "04A1B2C3"
    with pytest.raises(ValueError):
        normalize_card_hex("04 A1 B2 C3")


def test_card_index_prefers_exact_then_dec_then_w26() -> None:
    idx: CardIndex[str] = CardIndex([("w26:142,51091", "by-w26"), ("dec:0009357203", "by-dec")])
    assert idx.lookup(WORKED) == "by-dec"
    idx.add(WORKED, "by-hex")
    assert idx.lookup(WORKED) == "by-hex"
    assert idx.lookup("998EC793") == "by-w26"
    assert idx.lookup("04A1B2C3D4E5F6") is None
    assert idx.lookup("junk") is None
    assert len(idx) == 3


@given(st.binary(min_size=4, max_size=5))
def test_every_form_of_a_short_id_matches_it(raw: bytes) -> None:
    card = raw.hex().upper()
    for form in card_forms(card):
        assert matches(form, card), form
        assert matches(parse_card_pattern(form), card.lower())


@given(st.text(max_size=30))
def test_parse_card_pattern_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_card_pattern(text)
