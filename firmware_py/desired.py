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
``desired/{name}/ids``, ``level``, ``cards``, ``lights/override`` and
``clock/anchor``.
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
ROLES = ("police", "patrol", "village")

# -- state keys -------------------------------------------------------------------------------

#: The newest accepted document of one scope, kept after it ends: it is also
#: the mark that an older document of that scope is a replay.
def doc_key(name: str, scope: str) -> str:
    return f"desired/{name}/{scope}"


#: Ids of documents applied lately (either scope), newest last.
def ids_key(name: str) -> str:
    return f"desired/{name}/ids"


IDS_KEPT = 128
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
        _only(entry, ("card", "badge", "role", "valid_from", "valid_to"), where)
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


def ended(doc: Mapping[str, Any], view: TimeView) -> bool:
    return view.passed(doc.get("expires_ms"))


def effective(docs: Mapping[str, Mapping[str, Any] | None],
              view: TimeView) -> dict[str, Any] | None:
    """The document in force: the newest (by ``issued_at``) that has not provably ended.

    On a tie the unit's own document wins over the site's.
    """
    live = [dict(d) for d in docs.values() if d is not None and not ended(d, view)]
    if not live:
        return None
    return max(live, key=lambda d: (d["issued_ms"], d.get("scope") == "unit"))


def newest(docs: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The newest document of either scope, whether or not it has ended."""
    present = [dict(d) for d in docs.values() if d is not None]
    if not present:
        return None
    return max(present, key=lambda d: (d["issued_ms"], d.get("scope") == "unit"))


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
