"""Card ids and the forms a card list may name them by.

A reader reports a card as canonical upper-case hex of its id bytes
(``docs/mqtt-api.md``): an EM4100 tag as five bytes (customer byte and 32-bit
number, ``14008EC793``), an ISO 14443A tag as its 4-, 7- or 10-byte UID.

Installers enrol EM4100 cards by what is printed on them, so a card list
entry may be any of:

``14008EC793``
    the full hex id: matches exactly that id (case does not matter).
``dec:0009357203``
    the 10-digit decimal printed on EM4100 cards: the low 32 bits of the tag.
    Matches every id of up to 5 bytes whose low 32 bits equal it
    (``14008EC793``, and ``008EC793`` from a reader that drops the customer
    byte).
``w26:142,51091``
    the Wiegand-26 view: facility (8 bits) and card number (16 bits) of the low
    24 bits. Matches every id of up to 5 bytes whose low 24 bits equal
    ``facility << 16 | card``.

The ``dec:`` and ``w26:`` forms never match 7- or 10-byte UIDs: those are not
EM4100 numbers and nothing prints them that way. Worked example
(``wire-formats.md``): tag ``14008EC793`` ↔ ``dec:0009357203`` ↔
``w26:142,51091``.

    >>> matches(parse_card_pattern("dec:0009357203"), "14008EC793")
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from drivers.exc import CardPatternInvalid

__all__ = [
    "CardIndex",
    "CardPattern",
    "card_forms",
    "em4100_decimal",
    "matches",
    "normalize_card_hex",
    "parse_card_pattern",
    "wiegand26",
]

# Shortest and longest ids we accept as hex: 3 bytes (a Wiegand-26 reader's
# 24 bits) to 10 bytes (a triple-size ISO 14443A UID).
MIN_ID_BYTES = 3
MAX_ID_BYTES = 10
# dec:/w26: forms apply to ids of at most this many bytes (EM4100 and shorter).
_SHORT_ID_BYTES = 5

_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_DEC_RE = re.compile(r"[0-9]{1,10}")
_W26_RE = re.compile(r"\s*([0-9]{1,3})\s*,\s*([0-9]{1,5})\s*")

Kind = Literal["hex", "dec", "w26"]


def normalize_card_hex(text: str) -> str:
    """``text`` as a canonical card id (upper-case hex, 3 to 10 whole bytes).

    Raises :class:`CardPatternInvalid` (a ``ValueError``) saying what is wrong.
    """
    if not isinstance(text, str):
        raise CardPatternInvalid(f"card id must be a string, got {type(text).__name__}")
    s = text.strip()
    if not _HEX_RE.fullmatch(s):
        raise CardPatternInvalid(f"card id {text!r} is not hexadecimal "
                                 "(expected e.g. 14008EC793, dec:0009357203 or w26:142,51091)")
    if len(s) % 2:
        raise CardPatternInvalid(f"card id {text!r} has an odd number of hex digits ({len(s)}): "
                                 "ids are whole bytes")
    if not MIN_ID_BYTES * 2 <= len(s) <= MAX_ID_BYTES * 2:
        raise CardPatternInvalid(f"card id {text!r} has {len(s)} hex digits: expected "
                                 f"{MIN_ID_BYTES * 2} to {MAX_ID_BYTES * 2} (8 for a 4-byte UID, "
                                 "10 for EM4100, 14 or 20 for 7- or 10-byte UIDs)")
    return s.upper()


@dataclass(frozen=True, slots=True)
class CardPattern:
    """One card-list entry, parsed. ``text`` is its canonical spelling."""

    kind: Kind
    text: str
    # hex: the canonical id; dec: the 32-bit value; w26: the 24-bit value.
    value: str | int

    def __str__(self) -> str:
        return self.text


def parse_card_pattern(text: str) -> CardPattern:
    """Parse a card-list entry: full hex, ``dec:NNNNNNNNNN`` or ``w26:FFF,CCCCC``.

    Raises :class:`CardPatternInvalid` (a ``ValueError``) with the reason.
    """
    if not isinstance(text, str):
        raise CardPatternInvalid(f"card pattern must be a string, got {type(text).__name__}")
    s = text.strip()
    prefix, sep, rest = s.partition(":")
    if not sep:
        card = normalize_card_hex(s)
        return CardPattern("hex", card, card)
    prefix = prefix.lower()
    if prefix == "dec":
        digits = rest.strip()
        if not _DEC_RE.fullmatch(digits):
            raise CardPatternInvalid(f"card pattern {text!r}: dec: takes the decimal number "
                                     "printed on the card, 1 to 10 digits (e.g. dec:0009357203)")
        value = int(digits)
        if value > 0xFFFFFFFF:
            raise CardPatternInvalid(f"card pattern {text!r}: {value} does not fit in 32 bits "
                                     "(the largest EM4100 card number is 4294967295)")
        return CardPattern("dec", f"dec:{value:010d}", value)
    if prefix == "w26":
        m = _W26_RE.fullmatch(rest)
        if not m:
            raise CardPatternInvalid(f"card pattern {text!r}: w26: takes facility,card "
                                     "(e.g. w26:142,51091)")
        facility, number = int(m.group(1)), int(m.group(2))
        if facility > 0xFF:
            raise CardPatternInvalid(f"card pattern {text!r}: facility {facility} is over 255")
        if number > 0xFFFF:
            raise CardPatternInvalid(f"card pattern {text!r}: card number {number} is over 65535")
        return CardPattern("w26", f"w26:{facility},{number}", facility << 16 | number)
    raise CardPatternInvalid(f"card pattern {text!r}: unknown form {prefix!r}: "
                             "use full hex, dec:… or w26:…")


def _as_pattern(pattern: CardPattern | str) -> CardPattern:
    return pattern if isinstance(pattern, CardPattern) else parse_card_pattern(pattern)


def matches(pattern: CardPattern | str, card_hex: str) -> bool:
    """Whether the card read as ``card_hex`` is the card ``pattern`` names.

    ``pattern`` may be a :class:`CardPattern` or its text (parsed, so a bad
    pattern raises ``ValueError``). A ``card_hex`` that is not a card id never
    matches.
    """
    p = _as_pattern(pattern)
    try:
        card = normalize_card_hex(card_hex)
    except ValueError:
        return False
    if p.kind == "hex":
        return card == p.value
    if len(card) > _SHORT_ID_BYTES * 2:
        return False
    value = int(card, 16)
    if p.kind == "dec":
        return value & 0xFFFFFFFF == p.value
    return value & 0xFFFFFF == p.value


def em4100_decimal(card_hex: str) -> str:
    """The 10-digit decimal printed on an EM4100 card: its low 32 bits."""
    return f"{int(normalize_card_hex(card_hex), 16) & 0xFFFFFFFF:010d}"


def wiegand26(card_hex: str) -> tuple[int, int]:
    """The Wiegand-26 ``(facility, card)`` view of a tag's low 24 bits."""
    low = int(normalize_card_hex(card_hex), 16) & 0xFFFFFF
    return low >> 16, low & 0xFFFF


def card_forms(card_hex: str) -> list[str]:
    """Every pattern text that names this card: hex, and for short ids dec: and w26:."""
    card = normalize_card_hex(card_hex)
    forms = [card]
    if len(card) <= _SHORT_ID_BYTES * 2:
        facility, number = wiegand26(card)
        forms += [f"dec:{em4100_decimal(card)}", f"w26:{facility},{number}"]
    return forms


T = TypeVar("T")


class CardIndex(Generic[T]):
    """A card list for lookups in constant time, whatever forms it uses.

    ``lookup`` prefers an exact hex entry, then ``dec:``, then ``w26:``
    (the most specific form wins when a card is listed twice).

        >>> idx = CardIndex([("dec:0009357203", "badge-7")])
        >>> idx.lookup("14008EC793")
        'badge-7'
    """

    def __init__(self, entries: Iterable[tuple[CardPattern | str, T]] = ()) -> None:
        self._by_kind: dict[Kind, dict[str | int, T]] = {"hex": {}, "dec": {}, "w26": {}}
        for pattern, item in entries:
            self.add(pattern, item)

    def add(self, pattern: CardPattern | str, item: T) -> CardPattern:
        """Add one entry (a later entry for the same pattern replaces an earlier one)."""
        p = _as_pattern(pattern)
        self._by_kind[p.kind][p.value] = item
        return p

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_kind.values())

    def lookup(self, card_hex: str) -> T | None:
        """The entry naming this card, or None."""
        try:
            card = normalize_card_hex(card_hex)
        except ValueError:
            return None
        hit = self._by_kind["hex"].get(card)
        if hit is not None or len(card) > _SHORT_ID_BYTES * 2:
            return hit
        value = int(card, 16)
        hit = self._by_kind["dec"].get(value & 0xFFFFFFFF)
        if hit is not None:
            return hit
        return self._by_kind["w26"].get(value & 0xFFFFFF)
