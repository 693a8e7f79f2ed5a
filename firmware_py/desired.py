"""Desired state from the centre: what it may say, what is in force now, and who reads it.

The centre tells a unit how to behave with retained, signed *desired
documents* (``level``, ``cards``, ``lights``) on ``…/{unit or _all}/desired/
{name}``, and asks for one-shot actions (``snapshot``, ``clip``,
``lights.test``, ``rebirth``) on ``…/cmd``. :mod:`firmware_py.commands`
verifies them and writes them into the journal; this module is the other
half, shared by every daemon of the unit:

- the rules for each message's ``args`` (:func:`validate_args`), used by the
  unit on receipt and by ``xunfang send`` before signing;
- the time rules (:class:`TimeView`): what "now" is when the clock may be
  wrong (a Pi without RTC before NTP), from the clock and a persisted lower
  bound on the true time;
- which document is in force (:func:`effective`): of the newest document of
  each scope (the unit's own topic, the site's ``_all``), the newer one that
  has not ended, else the default (level 3, no lights override, no card list);
- the reading side for the station and the camera: :func:`current_level`,
  :func:`current_lights_override`, :func:`current_cards`, :func:`find_card`,
  and :class:`InboxReader` for one-shot actions.

Example (the station)::

    level = current_level(journal, clock)          # Level(level=1, expires_at=..., by=...)
    override = current_lights_override(journal, clock).lights   # {"warning": "strobe"}
    inbox = InboxReader(journal, "station", ["lights.test"])
    for entry in inbox.pending():
        run_light_test(entry.args)
        inbox.done(entry)

State keys (all JSON, in the journal's state store) are listed in
``docs/mqtt-api.md``, "Commands": ``desired/{name}/{scope}``,
``desired/{name}/seen``, ``cmd/seen``, ``level``, ``cards``,
``lights/override`` and ``clock/anchor``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .clock import Clock, parse_rfc3339, rfc3339_ms
from .config import LIGHT_MODES
from .journal import InboxEntry, Journal

if TYPE_CHECKING:
    from .config import UnitConfig

__all__ = [
    "CMD_NAMES",
    "DEFAULT_LEVEL",
    "DESIRED_NAMES",
    "ArgsInvalid",
    "InboxReader",
    "Level",
    "LightsOverride",
    "TimeView",
    "card_matches",
    "current_cards",
    "current_level",
    "current_lights_override",
    "effective",
    "find_card",
    "time_ms",
    "time_view",
    "validate_args",
]

DESIRED_NAMES = ("level", "cards", "lights", "points")
#: One-shot actions, and the daemon that carries each out.
CMD_NAMES = ("rebirth", "snapshot", "clip", "lights.test")
CMD_CONSUMERS = {"rebirth": "uplink", "snapshot": "camera", "clip": "camera",
                 "lights.test": "station"}
SCOPES = ("unit", "site")
DEFAULT_LEVEL = 3
#: Card-list roles: 民警, 协警, 专职巡防队员, 护村队员. A ``leader`` (所领导) is police.
ROLES = ("police", "auxiliary", "patrol", "village")

# -- state keys -------------------------------------------------------------------------------

#: The newest accepted document of one scope, kept after it ends: it is also
#: the mark that an older document of that scope is a replay.
def doc_key(name: str, scope: str) -> str:
    return f"desired/{name}/{scope}"


#: Before the replay record: ids of the last 128 documents applied (read once, then replaced).
def ids_key(name: str) -> str:
    return f"desired/{name}/ids"


#: The replay record of one document name (either scope): see :func:`seen_add`.
def seen_key(name: str) -> str:
    return f"desired/{name}/seen"


#: The replay record of one-shot commands (either scope).
CMD_SEEN_KEY = "cmd/seen"
#: Ids a replay record keeps; older ones are covered by its floor.
SEEN_KEPT = 128
#: The unit's alert level, written with every ``level`` event: {level, expires_at, by, scope}.
#: The uplink's status reports it; other features of the unit may write it too.
LEVEL_KEY = "level"
#: The desired level in force as last announced: {level, expires_at, by_doc, scope}.
LEVEL_IN_FORCE_KEY = "desired/level/in_force"
#: The card list in force: {version, cards, by, issued_at, scope} (absent: none).
CARDS_KEY = "cards"
#: The lights override in force: {lights, expires_at, by, scope} (absent: none).
LIGHTS_KEY = "lights/override"
#: A lower bound on the true time: {ms, boot_id, mono, source}.
ANCHOR_KEY = "clock/anchor"

# -- limits ---------------------------------------------------------------------------------------

#: A message issued further than this ahead of a *synchronised* clock is not yet valid.
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000
#: Without a synchronised clock, a message issued at most this far ahead of the unit's
#: lower bound on true time is believed, and moves the bound (the clock was behind).
PLAUSIBLE_LEAD_MS = 60 * 60 * 1000
#: Without a synchronised clock, a message issued further than this ahead of the lower
#: bound is refused (``from_future``): no unit is off that long and then commanded
#: without NTP; a centre whose clock is that wrong is far likelier.
FROM_FUTURE_MS = 366 * 24 * 60 * 60 * 1000
#: With no bound at all (a new journal, no NTP yet), a message dated after this is
#: refused: thirty years after this software was written.
LATEST_PLAUSIBLE_MS = 2_713_910_400_000      # 2056-01-01T00:00:00Z
#: One-shot commands may be valid for at most this long (``expires_at - issued_at``).
CMD_MAX_VALID_MS = 24 * 60 * 60 * 1000
MAX_CLIP_S = 600
MAX_TEST_S = 600
MAX_BADGE_LEN = 64

TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_HEX_CARD_RE = re.compile(r"^(?:[0-9A-F]{8}|[0-9A-F]{10}|[0-9A-F]{14}|[0-9A-F]{20})$")
_DEC_CARD_RE = re.compile(r"^dec:(\d{10})$")
_W26_CARD_RE = re.compile(r"^w26:(\d{1,3}),(\d{1,5})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ArgsInvalid(ValueError):
    """A message's ``args`` break the rules of its name; the text says where and why."""


# -- times ----------------------------------------------------------------------------------


def time_ms(text: object, what: str = "time") -> int:
    """Milliseconds since the epoch of ``2026-11-28T15:04:05.123Z`` (UTC, ``Z`` only).

    The API writes every time this way; anything else raises :class:`ArgsInvalid`.
    """
    if not isinstance(text, str) or not TIME_RE.match(text):
        raise ArgsInvalid(f"{what} must be an RFC 3339 UTC time like "
                          f"2026-11-28T15:04:05.123Z, got {_show(text)}")
    try:
        dt = parse_rfc3339(text)
    except ValueError as err:
        raise ArgsInvalid(f"{what} {text!r} is not a valid time: {err}") from err
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class TimeView:
    """What the unit may believe about "now".

    ``synced``: the kernel says NTP disciplines the clock; then ``now_ms`` is
    the wall clock. Otherwise the wall clock proves nothing (a Pi without RTC
    boots in 1970, or at the time fake-hwclock saved), and ``now_ms`` is
    ``lower_ms``: a time the true time is certainly past, from the persisted
    anchor plus the boot-relative time since it was taken (or None when
    nothing is known). Something has *provably* passed when it is at or
    before ``now_ms``: an unsynchronised unit never calls a message expired
    on the word of a clock that may be wrong.
    """

    synced: bool
    wall_ms: int
    lower_ms: int | None

    @property
    def now_ms(self) -> int | None:
        return self.wall_ms if self.synced else self.lower_ms

    def passed(self, t_ms: int | None) -> bool:
        """True when time ``t_ms`` has provably come (never for None: no end)."""
        now = self.now_ms
        return t_ms is not None and now is not None and t_ms <= now

    def too_far_ahead(self, t_ms: int) -> bool:
        """A synchronised clock says ``t_ms`` is more than the allowed skew in the future."""
        return self.synced and t_ms > self.wall_ms + MAX_FUTURE_SKEW_MS

    def unconfirmed(self, t_ms: int) -> bool:
        """``t_ms`` lies beyond what the unit's own evidence supports.

        Synchronised: more than the allowed skew ahead of the clock. Otherwise:
        more than :data:`PLAUSIBLE_LEAD_MS` ahead of the lower bound (never when
        no bound is known: then a message is the only evidence there is).
        """
        if self.synced:
            return self.too_far_ahead(t_ms)
        return self.lower_ms is not None and t_ms > self.lower_ms + PLAUSIBLE_LEAD_MS

    def from_future(self, t_ms: int) -> bool:
        """An unsynchronised unit finds ``t_ms`` implausibly far ahead of all it knows."""
        if self.synced:
            return False
        if self.lower_ms is None:
            return t_ms > LATEST_PLAUSIBLE_MS
        return t_ms > self.lower_ms + FROM_FUTURE_MS


def anchor_lower_ms(anchor: object, clock: Clock) -> int | None:
    """The lower bound on true time that ``anchor`` gives now (None when unusable)."""
    if not isinstance(anchor, dict):
        return None
    ms = anchor.get("ms")
    if not isinstance(ms, int) or isinstance(ms, bool):
        return None
    mono = anchor.get("mono")
    if anchor.get("boot_id") == clock.boot_id() and isinstance(mono, int | float):
        elapsed = clock.monotonic() - float(mono)
        if elapsed > 0:
            return ms + int(elapsed * 1000)
    # Another boot: the time since then is unknown, but it did not run backwards.
    return ms


def time_view(anchor: object, clock: Clock) -> TimeView:
    return TimeView(clock.synced(), clock.wall_ms(), anchor_lower_ms(anchor, clock))


def journal_time_view(journal: Journal, clock: Clock) -> TimeView:
    return time_view(journal.state_get(ANCHOR_KEY), clock)


# -- args ---------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _only(args: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    extra = sorted(set(args) - set(allowed))
    if extra:
        raise ArgsInvalid(f"{what}: unknown field(s) {', '.join(_show(k) for k in extra[:5])}; "
                          f"allowed: {', '.join(allowed)}")


def _expiry(args: Mapping[str, Any], what: str) -> int | None:
    if "expires_at" not in args or args["expires_at"] is None:
        return None
    return time_ms(args["expires_at"], f"{what}.expires_at")


def _light_names(config: UnitConfig | None) -> dict[str, int] | None:
    """Configured light name → number of pins (None: not known, as on the centre)."""
    if config is None:
        return None
    return {name: len(light.pins) for name, light in config.lights.items()}


def validate_args(name: str, args: object, config: UnitConfig | None = None) -> dict[str, Any]:
    """Check the ``args`` of message ``name``; return them, or raise :class:`ArgsInvalid`.

    With a unit ``config``, light and camera names must be configured ones;
    without (the centre's ``send``), only their form is checked.
    """
    if not isinstance(args, dict):
        raise ArgsInvalid(f"args of {name} must be an object")
    if name == "level":
        _only(args, ("level", "expires_at"), "level")
        level = args.get("level")
        if not _is_int(level) or level not in (1, 2, 3):
            raise ArgsInvalid(f"level must be 1, 2 or 3, got {_show(level)}")
        _expiry(args, "level")
    elif name == "lights":
        _only(args, ("lights", "expires_at"), "lights")
        lights = args.get("lights")
        if not isinstance(lights, dict):
            raise ArgsInvalid("lights.lights must be an object of light name → mode")
        known = _light_names(config)
        for light, mode in lights.items():
            if mode not in LIGHT_MODES:
                raise ArgsInvalid(f"lights.{light}: mode must be one of "
                                  f"{', '.join(LIGHT_MODES)}, got {_show(mode)}")
            if known is not None:
                if light not in known:
                    raise ArgsInvalid(f"lights.{_show(light)}: no such light on this unit "
                                      f"(has: {', '.join(known) or 'none'})")
                if mode == "alternate" and known[light] < 2:
                    raise ArgsInvalid(f"lights.{light}: alternate needs a light with two pins")
        _expiry(args, "lights")
    elif name == "cards":
        _validate_cards(args)
    elif name == "points":
        _validate_points(args)
    elif name == "rebirth":
        _only(args, (), "rebirth")
    elif name in ("snapshot", "clip"):
        _only(args, ("camera", "seconds") if name == "clip" else ("camera",), name)
        camera = args.get("camera")
        if camera is not None:
            if not isinstance(camera, str):
                raise ArgsInvalid(f"{name}.camera must be a camera name")
            if config is not None and camera not in {c.name for c in config.cameras}:
                raise ArgsInvalid(f"{name}.camera: no camera {_show(camera)} on this unit")
        seconds = args.get("seconds")
        if seconds is not None and (not _is_int(seconds) or not 1 <= seconds <= MAX_CLIP_S):
            raise ArgsInvalid(f"clip.seconds must be 1 to {MAX_CLIP_S}, got {_show(seconds)}")
    elif name == "lights.test":
        _only(args, ("lights", "seconds"), "lights.test")
        lights = args.get("lights")
        if lights is not None:
            if not isinstance(lights, list) or not lights or \
                    not all(isinstance(x, str) for x in lights) or len(set(lights)) != len(lights):
                raise ArgsInvalid("lights.test.lights must be a non-empty list of distinct "
                                  "light names")
            known = _light_names(config)
            if known is not None:
                unknown = [x for x in lights if x not in known]
                if unknown:
                    raise ArgsInvalid(f"lights.test: no light {_show(unknown[0])} on this unit")
        seconds = args.get("seconds")
        if seconds is not None and (not _is_int(seconds) or not 1 <= seconds <= MAX_TEST_S):
            raise ArgsInvalid(f"lights.test.seconds must be 1 to {MAX_TEST_S}, "
                              f"got {_show(seconds)}")
    else:
        raise ArgsInvalid(f"no message named {_show(name)}")
    return args


def _validate_cards(args: Mapping[str, Any]) -> None:
    _only(args, ("version", "cards"), "cards")
    version = args.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ArgsInvalid(f"cards.version must be a whole number >= 0, got {_show(version)}")
    cards = args.get("cards")
    if not isinstance(cards, list):
        raise ArgsInvalid("cards.cards must be a list")
    seen: dict[str, int] = {}
    for i, entry in enumerate(cards):
        where = f"cards[{i}]"
        if not isinstance(entry, dict):
            raise ArgsInvalid(f"{where} must be an object")
        _only(entry, ("card", "badge", "role", "leader", "valid_from", "valid_to"), where)
        card = entry.get("card")
        if not isinstance(card, str) or not card_form_ok(card):
            raise ArgsInvalid(f"{where}.card must be a hex id (upper case, 8/10/14/20 digits), "
                              f"dec:NNNNNNNNNN or w26:FAC,NUM, got {_show(card)}")
        if card in seen:
            raise ArgsInvalid(f"{where}.card {card} is already cards[{seen[card]}]")
        seen[card] = i
        badge = entry.get("badge")
        if not isinstance(badge, str) or not badge.strip() or len(badge) > MAX_BADGE_LEN:
            raise ArgsInvalid(f"{where}.badge must be a non-empty string of at most "
                              f"{MAX_BADGE_LEN} characters")
        if entry.get("role") not in ROLES:
            raise ArgsInvalid(f"{where}.role must be one of {', '.join(ROLES)}, "
                              f"got {_show(entry.get('role'))}")
        leader = entry.get("leader", False)
        if not isinstance(leader, bool):
            raise ArgsInvalid(f"{where}.leader must be true or false, got {_show(leader)}")
        if leader and entry["role"] != "police":
            raise ArgsInvalid(f"{where}: a leader must be police, not {entry['role']}")
        start = end = None
        if entry.get("valid_from") is not None:
            start = time_ms(entry["valid_from"], f"{where}.valid_from")
        if entry.get("valid_to") is not None:
            end = time_ms(entry["valid_to"], f"{where}.valid_to")
        if start is not None and end is not None and end <= start:
            raise ArgsInvalid(f"{where}: valid_to is not after valid_from")


# -- desired/points: patrol points for geofence visits (docs/vehicle.md) ---------------------

POINT_ID_RE = re.compile(r"^[a-z0-9-]{1,32}$")
MAX_POINTS = 1000
MAX_POINT_NAME_LEN = 64
POINT_RADIUS_M = (5, 5000)
POINT_DWELL_S = (1, 3600)


def _validate_points(args: Mapping[str, Any]) -> None:
    """``{"version": n, "points": [{"id", "lat_e7", "lon_e7", "radius_m", "dwell_s"?,
    "name"?}]}``: coordinates in units of 1e-7 degree (signed messages carry no floats)."""
    _only(args, ("version", "points"), "points")
    version = args.get("version")
    if not _is_int(version) or version < 0:
        raise ArgsInvalid(f"points.version must be a whole number >= 0, got {_show(version)}")
    points = args.get("points")
    if not isinstance(points, list) or len(points) > MAX_POINTS:
        raise ArgsInvalid(f"points.points must be a list of at most {MAX_POINTS} points")
    seen: dict[str, int] = {}
    for i, entry in enumerate(points):
        where = f"points[{i}]"
        if not isinstance(entry, dict):
            raise ArgsInvalid(f"{where} must be an object")
        _only(entry, ("id", "name", "lat_e7", "lon_e7", "radius_m", "dwell_s"), where)
        ident = entry.get("id")
        if not isinstance(ident, str) or not POINT_ID_RE.match(ident):
            raise ArgsInvalid(f"{where}.id must match [a-z0-9-]{{1,32}}, got {_show(ident)}")
        if ident in seen:
            raise ArgsInvalid(f"{where}.id {ident} is already points[{seen[ident]}]")
        seen[ident] = i
        name = entry.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_POINT_NAME_LEN):
            raise ArgsInvalid(f"{where}.name must be a string of at most {MAX_POINT_NAME_LEN} "
                              "characters")
        for key, limit in (("lat_e7", 900_000_000), ("lon_e7", 1_800_000_000)):
            value = entry.get(key)
            if not _is_int(value) or not -limit <= value <= limit:
                raise ArgsInvalid(f"{where}.{key} must be a whole number of 1e-7 degrees "
                                  f"from {-limit} to {limit}, got {_show(value)}")
        for key, (low, high), required in (("radius_m", POINT_RADIUS_M, True),
                                           ("dwell_s", POINT_DWELL_S, False)):
            value = entry.get(key)
            if value is None and not required:
                continue
            if not _is_int(value) or not low <= value <= high:
                raise ArgsInvalid(f"{where}.{key} must be a whole number from {low} to {high}, "
                                  f"got {_show(value)}")


def points_from(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    args = doc["args"]
    return {"version": args["version"], "points": args["points"], "by": doc["id"],
            "issued_at": doc.get("issued_at"), "scope": doc.get("scope")}


def current_points(journal: Journal) -> dict[str, Any] | None:
    """The patrol points in force: ``{"version", "points", "by", "issued_at", "scope"}`` or
    None. Like card lists, they do not end: the newer of the unit's and the site's."""
    return points_from(newest(stored_docs(journal, "points")))


def args_expiry_ms(name: str, args: Mapping[str, Any]) -> int | None:
    """When the desired state of a (valid) document ends; None: no end."""
    if name in ("level", "lights") and args.get("expires_at") is not None:
        return time_ms(args["expires_at"])
    return None


# -- cards ------------------------------------------------------------------------------------


def card_form_ok(card: str) -> bool:
    """True for a card form of the card list: hex id, ``dec:NNNNNNNNNN`` or ``w26:F,N``."""
    if _HEX_CARD_RE.match(card):
        return True
    m = _DEC_CARD_RE.match(card)
    if m:
        return int(m.group(1)) <= 0xFFFFFFFF
    m = _W26_CARD_RE.match(card)
    if m:
        return int(m.group(1)) <= 0xFF and int(m.group(2)) <= 0xFFFF
    return False


def card_matches(form: str, card_hex: str) -> bool:
    """Does a tag read as ``card_hex`` (upper-case hex) match the card list's ``form``?

    ``14008EC793`` matches itself; ``dec:0009357203`` a tag of at most five
    bytes whose low 32 bits are 9357203; ``w26:142,51091`` one whose low 24
    bits are facility 142 and number 51091. The printed forms come from
    125 kHz cards: a 7- or 10-byte ISO 14443A UID never matches them. One
    implementation for the unit and the reader docs: :mod:`drivers.readers.cardid`.
    """
    from drivers.readers.cardid import matches

    try:
        return matches(form, card_hex)
    except ValueError:
        return False


def find_card(cards: Mapping[str, Any] | None, card_hex: str) -> dict[str, Any] | None:
    """The card list entry for a tag: an exact hex match first, then ``dec:``, then ``w26:``."""
    if not cards:
        return None
    entries = [e for e in cards.get("cards", []) if isinstance(e, dict)]
    for prefix in ("", "dec:", "w26:"):
        for entry in entries:
            form = entry.get("card")
            if not isinstance(form, str):
                continue
            kind = form[:4] if form[:4] in ("dec:", "w26:") else ""
            if kind == prefix and card_matches(form, card_hex):
                return entry
    return None


# -- what is in force -------------------------------------------------------------------------


def stored_doc(journal: Journal, name: str, scope: str) -> dict[str, Any] | None:
    doc = journal.state_get(doc_key(name, scope))
    return doc if _doc_ok(doc) else None


def _doc_ok(doc: object) -> bool:
    return (isinstance(doc, dict) and isinstance(doc.get("id"), str)
            and _is_int(doc.get("issued_ms")) and isinstance(doc.get("args"), dict))


def stored_docs(journal: Journal, name: str) -> dict[str, dict[str, Any] | None]:
    return {scope: stored_doc(journal, name, scope) for scope in SCOPES}


def confirmed(doc: Mapping[str, Any]) -> bool:
    """Whether the unit's evidence supports the document's ``issued_at`` (see :func:`effective`)."""
    return doc.get("confirmed", True) is not False


def doc_mark(doc: Mapping[str, Any]) -> int | None:
    """The ordering mark of a document's topic: the newest *confirmed* ``issued_at`` on it.

    A document is refused as ``older_document`` when it is not after this mark;
    a synchronised clock clamps a mark that lies in its future.
    """
    mark = doc.get("mark_ms", doc["issued_ms"] if confirmed(doc) else None)
    return mark if _is_int(mark) else None


def ended(doc: Mapping[str, Any], view: TimeView) -> bool:
    """The document's state has provably ended.

    A document from beyond the unit's evidence (``confirmed`` false) is timed
    in its own frame: it lasts as long as it says, counted from its arrival
    (``ahead_ms`` is how far its ``issued_at`` lay ahead of the bound then).
    """
    end = doc.get("expires_ms")
    if end is not None and not confirmed(doc):
        ahead = doc.get("ahead_ms")
        if _is_int(ahead) and ahead > 0:
            end -= ahead
    return view.passed(end)


def _precedence(doc: Mapping[str, Any]) -> tuple[int, bool]:
    return doc["issued_ms"], doc.get("scope") == "unit"


def _first(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the (at most two) documents, the one that takes precedence.

    By ``issued_at`` (on a tie the unit's own), as long as both are confirmed
    or both are not. A document whose ``issued_at`` the unit's evidence does
    not support (a centre's clock running ahead) competes with a confirmed one
    by arrival instead: the later one received wins, so a document from the
    future of the unit's time outranks what came before it, never what comes
    after it.
    """
    if not docs:
        return None
    best = docs[0]
    for doc in docs[1:]:
        if confirmed(doc) == confirmed(best):
            better = _precedence(doc) > _precedence(best)
        else:
            better = (doc.get("received_seq", 0), *_precedence(doc)) > \
                (best.get("received_seq", 0), *_precedence(best))
        if better:
            best = doc
    return best


def effective(docs: Mapping[str, Mapping[str, Any] | None],
              view: TimeView) -> dict[str, Any] | None:
    """The document in force: of those that have not provably ended, the one that
    takes precedence (the newer by ``issued_at``; on a tie the unit's own)."""
    return _first([dict(d) for d in docs.values() if d is not None and not ended(d, view)])


def newest(docs: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The document that takes precedence, whether or not it has ended."""
    return _first([dict(d) for d in docs.values() if d is not None])


# -- the replay record ---------------------------------------------------------------------------


def seen_get(journal: Journal, key: str, legacy_key: str | None = None) -> dict[str, Any]:
    """A replay record: ``{"floor_ms": int | None, "ids": [[id, issued_ms], ...]}``.

    A record written before there was one (a list of ids under ``legacy_key``)
    is read as ids of unknown issue time.
    """
    record = journal.state_get(key)
    if isinstance(record, dict) and isinstance(record.get("ids"), list):
        floor = record.get("floor_ms")
        ids = [[e[0], e[1] if _is_int(e[1]) else None] for e in record["ids"]
               if isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)]
        return {"floor_ms": floor if _is_int(floor) else None, "ids": ids}
    legacy = journal.state_get(legacy_key) if legacy_key else None
    ids = [[i, None] for i in legacy if isinstance(i, str)] if isinstance(legacy, list) else []
    return {"floor_ms": None, "ids": ids}


def seen_before(record: Mapping[str, Any], ident: str, issued_ms: int) -> str | None:
    """Why the record calls a message a replay: ``"id"`` (taken before), ``"floor"``
    (issued no later than an id the record let go of), or None."""
    if any(entry[0] == ident for entry in record["ids"]):
        return "id"
    floor = record["floor_ms"]
    if floor is not None and issued_ms <= floor:
        return "floor"
    return None


def seen_add(record: Mapping[str, Any], ident: str, issued_ms: int,
             keep: int = SEEN_KEPT) -> dict[str, Any]:
    """The record with ``ident`` taken; bounded to ``keep`` ids.

    The id let go of is the one issued earliest (ids of unknown issue time
    first), and the floor rises to its ``issued_at``: every message issued
    no later than the floor is refused, so an id once taken stays refused for
    ever in bounded space. Letting go of the earliest keeps the floor as low as
    it can be: it rises past a message only once ``keep`` messages issued after
    it were taken, so one message with a wrong ``issued_at`` cannot lift it.
    """
    ids = [list(e) for e in record["ids"] if e[0] != ident] + [[ident, issued_ms]]
    floor = record["floor_ms"]
    if len(ids) > keep:
        ids.sort(key=lambda e: (e[1] is not None, e[1] or 0))
        for gone in ids[: len(ids) - keep]:
            if gone[1] is not None:
                floor = gone[1] if floor is None else max(floor, gone[1])
        ids = ids[len(ids) - keep:]
    return {"floor_ms": floor, "ids": ids}


@dataclass(frozen=True)
class Level:
    """The alert level in force: 1 (highest) to 3 (normal, the default)."""

    level: int = DEFAULT_LEVEL
    expires_at: str | None = None
    by: str | None = None            # id of the document in force; None for the default
    scope: str | None = None


@dataclass(frozen=True)
class LightsOverride:
    """The centre's override of lights: light name → mode, on top of schedule and level."""

    lights: dict[str, str] = field(default_factory=dict)
    expires_at: str | None = None
    by: str | None = None
    scope: str | None = None


def level_from(doc: Mapping[str, Any] | None) -> Level:
    if doc is None:
        return Level()
    args = doc["args"]
    return Level(args["level"], args.get("expires_at"), doc["id"], doc.get("scope"))


def lights_from(doc: Mapping[str, Any] | None) -> LightsOverride:
    if doc is None:
        return LightsOverride()
    args = doc["args"]
    return LightsOverride(dict(args.get("lights", {})), args.get("expires_at"), doc["id"],
                          doc.get("scope"))


def cards_from(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    args = doc["args"]
    return {"version": args["version"], "cards": args["cards"], "by": doc["id"],
            "issued_at": doc.get("issued_at"), "scope": doc.get("scope")}


def current_level(journal: Journal, clock: Clock) -> Level:
    """The level in force now (the default, 3, when no document is)."""
    view = journal_time_view(journal, clock)
    return level_from(effective(stored_docs(journal, "level"), view))


def current_lights_override(journal: Journal, clock: Clock) -> LightsOverride:
    """The lights override in force now (empty when none)."""
    view = journal_time_view(journal, clock)
    return lights_from(effective(stored_docs(journal, "lights"), view))


def current_cards(journal: Journal) -> dict[str, Any] | None:
    """The card list in force: ``{"version", "cards", "by", "issued_at", "scope"}`` or None.

    Card lists do not end; the newer of the unit's and the site's is in force.
    """
    return cards_from(newest(stored_docs(journal, "cards")))


def level_expiry_text(ms: int | None) -> str | None:
    return None if ms is None else rfc3339_ms(ms)


# -- the inbox -----------------------------------------------------------------------------------


class InboxReader:
    """One daemon's view of the inbox: the verified one-shot actions it carries out.

    The position is a journal cursor (``inbox:{consumer}``), so an action is
    taken once across restarts: call :meth:`done` after carrying it out (an
    action cut short by a crash is offered again).

    Example (the camera)::

        inbox = InboxReader(journal, "camera", ["snapshot", "clip"])
        while running:
            for entry in inbox.wait(1.0):
                take_snapshot(entry.args.get("camera"))
                inbox.done(entry)
    """

    def __init__(self, journal: Journal, consumer: str, names: Iterable[str]) -> None:
        self.journal = journal
        self.consumer = consumer
        self.names = list(names)
        self.cursor_name = f"inbox:{consumer}"

    @property
    def position(self) -> int:
        return self.journal.cursor(self.cursor_name)

    def pending(self, limit: int = 100) -> list[InboxEntry]:
        """Entries for this consumer not yet done, oldest first."""
        return self.journal.inbox_after(self.position, self.names, limit)

    def wait(self, timeout: float) -> list[InboxEntry]:
        """:meth:`pending`, waiting up to ``timeout`` seconds for something to arrive."""
        entries = self.pending()
        if not entries and self.journal.wait_for_change(timeout):
            entries = self.pending()
        return entries

    def done(self, entry: InboxEntry) -> None:
        """Mark ``entry`` (and everything before it) carried out."""
        self.journal.set_cursor(self.cursor_name, entry.n)

    def __repr__(self) -> str:
        return f"<InboxReader {self.consumer} {self.names} at {self.position}>"
