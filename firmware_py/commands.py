"""Signed commands and desired documents from the centre: verify, then apply or reject.

Only the command centre commands a unit (docs/architecture.md, invariant 5). The
uplink hands every message it receives on ``…/desired/{name}`` and ``…/cmd``
to :meth:`CommandProcessor.handle`, which runs the checks of docs/mqtt-api.md ("To
a unit") before anything enters the journal:

1. the topic is this unit's own or its site's ``_all``;
2. the payload is not empty (a cleared retained document: ignored), at most
   256 KiB, UTF-8 JSON, an object nested at most :data:`~firmware_py.signing.MAX_DEPTH` deep;
3. ``_all`` messages whose ``target.units`` names only other units are
   ignored without a word (every other unit of the site gets them too);
4. Ed25519 signature by a key of ``[security] command_keys`` (an ack key
   never commands);
5. the envelope's shape, ``name`` matching the topic, ``target.site`` and
   ``target.units``;
6. time: not expired, not issued in the future of a synchronised clock, not
   implausibly far ahead of an unsynchronised unit's lower bound on true time
   (``from_future``); a message moves that bound only within
   :data:`~firmware_py.desired.PLAUSIBLE_LEAD_MS` of it (the rules are in
   :mod:`firmware_py.desired` and ``docs/mqtt-api.md``, "Commands and time");
7. ``args`` valid for the message's name and this unit's config;
8. replay: a one-shot ``cmd`` or a desired document whose id its replay
   record holds, or issued no later than the record's floor, is a replay; a
   desired document older than the ordering mark of its topic is
   ``older_document``, the one in force arriving again is ignored (the
   broker redelivers retained documents on every reconnect).

Every message accepted or rejected becomes a ``command`` event (data:
``command``, ``name``, ``result`` applied|rejected, ``reason``, ``detail``,
``scope``) committed in the same transaction as its effect; a rejected
message changes nothing else. Rejection events are rate-limited (a burst of
:data:`REJECT_BURST`, then one per :data:`REJECT_REFILL_S`), and the number
held back is reported in the next one, so a flood of garbage cannot fill the
journal.

The processor is synchronous and owns no thread: the uplink calls
:meth:`~CommandProcessor.handle` from its MQTT callback and
:meth:`~CommandProcessor.tick` from its loop (expiry of desired state,
the clock anchor). Example::

    proc = CommandProcessor(config, journal, clock, on_rebirth=publish_birth_now)
    for topic_filter, qos in proc.subscriptions():
        client.subscribe(topic_filter, qos)
    outcome = proc.handle(msg.topic, msg.payload, retained=msg.retain)
    proc.tick()                       # about once a second
    birth.update(proc.status_fields())  # {"level": 3, "cards_version": 7}
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import desired, topics
from .clock import Clock, rfc3339_ms
from .desired import (
    ANCHOR_KEY,
    CARDS_KEY,
    CMD_MAX_VALID_MS,
    CMD_NAMES,
    CMD_SEEN_KEY,
    DESIRED_NAMES,
    LEVEL_IN_FORCE_KEY,
    LEVEL_KEY,
    LIGHTS_KEY,
    ArgsInvalid,
    TimeView,
    doc_key,
    ids_key,
    seen_key,
)
from .exc import JournalError, KeyInvalid, SignatureError, SignatureKeyUnknown
from .journal import Event, Journal
from .signing import MAX_DEPTH, envelope_id_ok, public_key_from_b64, verify_envelope

if TYPE_CHECKING:
    from .config import UnitConfig

__all__ = ["MAX_PAYLOAD_BYTES", "REASONS", "CommandProcessor", "Outcome"]

log = logging.getLogger("xunfang.commands")

#: Largest message looked at (docs/mqtt-api.md: 256 KiB).
MAX_PAYLOAD_BYTES = 256 * 1024
#: Rejection events: a burst of this many …
REJECT_BURST = 20
#: … then one per this many seconds (boot-relative time).
REJECT_REFILL_S = 3.0
#: Ids of rejected retained documents remembered (in memory) so that their
#: redelivery on every reconnect is not reported again.
REJECTED_REMEMBERED = 256
#: The clock anchor is written at most this often (it is also written with
#: every accepted message).
ANCHOR_EVERY_MS = 5 * 60 * 1000
#: The journal's limit on one event's data is 64 KiB; ``detail`` stays short.
DETAIL_MAX = 200

#: Every reason a message is rejected (or ignored), for docs/mqtt-api.md and the centre.
REASONS: dict[str, str] = {
    # rejected: a command event with result "rejected"
    "wrong_topic": "not this unit's or its site's _all topic, or name does not match the topic",
    "too_large": "payload over 256 KiB",
    "malformed": "not UTF-8 JSON, not an object, duplicate keys, or a field of the wrong "
                 "type or form (id, name, target, times)",
    "too_deep": "JSON nested deeper than 32 levels",
    "missing_signature": "no sig: unsigned",
    "malformed_signature": "sig is not padded base64 of 64 bytes",
    "unknown_key": "signed with a key not in [security] command_keys (or none named)",
    "ack_key": "signed with a key of [security] ack_keys: the ledger's key cannot command",
    "bad_signature": "signature does not verify: forged, or altered after signing",
    "not_canonical": "content that has no canonical form (floats, non-ASCII keys, …)",
    "wrong_site": "target.site is another site",
    "wrong_unit": "on this unit's own topic, but target.units names neither it nor \"*\"",
    "unknown_command": "a cmd whose name is not rebirth, snapshot, clip or lights.test",
    "expired": "the envelope's expires_at has (provably) passed",
    "not_yet_valid": "issued more than 5 minutes in the future of a synchronised clock",
    "from_future": "unsynchronised: issued more than a year ahead of the unit's lower bound "
                   "on true time (with none, after 2056): the centre's clock is wrong",
    "bad_args": "args break the rules of the message's name or this unit's config",
    "unsupported": "an action this unit has no device for (clip on a unit without camera)",
    "replay": "a one-shot cmd seen before, or a desired document applied before under "
              "another topic; or a message issued no later than the oldest its replay "
              "record still covers",
    "older_document": "a desired document not newer (issued_at) than the last one applied "
                      "on its topic",
    "rate_limited": "(summary) rejection events held back by the rate limit",
    # ignored: no event
    "empty": "empty payload: a cleared retained document",
    "not_for_us": "an _all message whose target.units names only other units",
    "already_applied": "the desired document in force on its topic (retained redelivery)",
    "rejected_before": "a retained redelivery of a message rejected before by this process",
    "journal_error": "the journal could not record it (nothing applied; logged)",
}

_SIGNED_FIELDS = ("id", "name", "args", "target", "issued_at", "expires_at", "key", "sig")


class Rejected(Exception):
    """A message that must change nothing; ``reason`` is a code of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Ignored(Exception):
    """A message to drop without an event (``reason`` is a code of :data:`REASONS`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    """What :meth:`CommandProcessor.handle` did with one message.

    ``result``: ``applied``, ``rejected``, ``ignored`` (no event) or ``failed``
    (the journal could not record it). ``events`` are the journal events
    written (the ``command`` event first, then a ``level`` event if the level
    changed); empty when ignored, failed, or a rejection held back by the
    rate limit.
    """

    result: str
    reason: str | None = None
    command: str | None = None
    name: str | None = None
    detail: str = ""
    events: tuple[Event, ...] = field(default=())

    @property
    def applied(self) -> bool:
        return self.result == "applied"


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 3] + "..."


def _reject_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    """No container nested deeper than ``limit`` (top level is 0); iterative."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit and any(isinstance(c, dict | list) for c in children):
            return False
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return True


def _claimed_id(env: dict[str, Any]) -> str | None:
    ident = env.get("id")
    return ident if envelope_id_ok(ident) else None


def _claimed_name(env: dict[str, Any]) -> str | None:
    name = env.get("name")
    if isinstance(name, str) and 0 < len(name) <= 64 and name.isprintable():
        return name
    return None


class _RejectLimiter:
    """A token bucket on boot-relative time: lets a burst through, then one per interval."""

    def __init__(self, clock: Clock, burst: int, refill_s: float) -> None:
        self.clock = clock
        self.burst = burst
        self.refill_s = refill_s
        self.tokens = float(burst)
        self.last = clock.monotonic()
        self.held = 0

    def _refill(self) -> None:
        now = self.clock.monotonic()
        if now < self.last:  # a new boot's clock (tests' ManualClock.reboot)
            self.last = now
        if self.refill_s > 0:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) / self.refill_s)
        else:
            self.tokens = float(self.burst)
        self.last = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.held += 1
        return False

    def available(self) -> bool:
        self._refill()
        return self.tokens >= 1


class CommandProcessor:
    """Verifies and applies the centre's signed commands and desired documents.

    ``on_rebirth`` is called (on the caller's thread, inside :meth:`handle`)
    when a ``rebirth`` command was accepted; :meth:`take_rebirth` says the same
    to a caller that polls instead.
    """

    def __init__(self, config: UnitConfig, journal: Journal, clock: Clock, *,
                 on_rebirth: Callable[[], None] | None = None,
                 reject_burst: int = REJECT_BURST,
                 reject_refill_s: float = REJECT_REFILL_S) -> None:
        self.config = config
        self.journal = journal
        self.clock = clock
        self.unit = config.unit.id
        self.site = config.unit.site
        self.on_rebirth = on_rebirth
        self.keys: dict[str, Ed25519PublicKey] = {}
        for name, text in config.security.command_keys.items():
            try:
                self.keys[name] = public_key_from_b64(text)
            except KeyInvalid as err:  # config validation makes this unlikely
                log.error("[security] command_keys.%s is not usable, ignoring it: %s", name, err)
        self.ack_key_names = frozenset(config.security.ack_keys)
        self._lock = threading.RLock()
        self._limiter = _RejectLimiter(clock, reject_burst, reject_refill_s)
        self._rejected_ids: OrderedDict[str, None] = OrderedDict()
        self._rebirth = False
        # Whether a synchronised clock has judged what is stored since it last was not.
        self._judged_by_clock = False
        self._last_tick: tuple[float, int, bool, str] | None = None
        self.counters: dict[str, int] = {"applied": 0, "rejected": 0, "ignored": 0,
                                         "failed": 0, "held_back": 0}

    # -- what the uplink asks ----------------------------------------------------------------

    def subscriptions(self) -> list[tuple[str, int]]:
        """Topic filters (QoS 1) to subscribe to on every connect."""
        out = []
        for unit in (self.unit, topics.ALL_UNITS):
            root = topics.root(self.site, unit)
            out += [(f"{root}/desired/+", 1), (f"{root}/cmd", 1)]
        return out

    def status_fields(self) -> dict[str, Any]:
        """``level`` and ``cards_version`` for the birth status (and ``lights_override``).

        ``level`` is the unit's level as the state store's ``level`` key holds it
        (what the last ``level`` event said), else the desired level in force.
        """
        with self._lock:
            view = self._view()
            said = self.journal.state_get(LEVEL_KEY)
            level = said.get("level") if isinstance(said, dict) else None
            if level not in (1, 2, 3) or isinstance(level, bool):
                level = desired.level_from(desired.effective(self._docs("level"), view)).level
            cards = desired.cards_from(desired.newest(self._docs("cards")))
            lights = desired.lights_from(desired.effective(self._docs("lights"), view))
        return {"level": level,
                "cards_version": cards["version"] if cards else None,
                "lights_override": lights.lights or None}

    def take_rebirth(self) -> bool:
        """True once after each accepted ``rebirth``: publish the birth status again."""
        with self._lock:
            wanted, self._rebirth = self._rebirth, False
            return wanted

    # -- handling a message ---------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> Outcome:
        """Verify one message and apply or reject it. Never raises for any input."""
        with self._lock:
            try:
                return self._handle(topic, bytes(payload), retained)
            except JournalError as err:
                self.counters["failed"] += 1
                log.error("could not record a message on %s: %s", topic, err)
                return Outcome("failed", "journal_error", detail=_describe(err))

    def _handle(self, topic: str, payload: bytes, retained: bool) -> Outcome:
        env: dict[str, Any] = {}
        scope: str | None = None
        try:
            parsed, scope = self._check_topic(topic)
            env = self._decode(payload)
            self._check_addressed(env, parsed)
            self._check_signature(env)
            self._check_shape(env, parsed)
            self._check_seen(env, parsed, scope, retained)
            view = self._view()
            self._check_time(env, view)
            name = env["name"]
            try:
                desired.validate_args(name, env["args"], self.config)
            except ArgsInvalid as err:
                raise Rejected("bad_args", str(err)) from err
            if parsed.channel == "cmd":
                return self._apply_cmd(env, scope, view)
            return self._apply_desired(env, scope, view)
        except Ignored as ign:
            self.counters["ignored"] += 1
            return Outcome("ignored", ign.reason, _claimed_id(env), _claimed_name(env))
        except Rejected as rej:
            return self._reject(env, scope, rej, retained)

    def _check_topic(self, topic: str) -> tuple[topics.Topic, str]:
        parsed = topics.parse(topic) if isinstance(topic, str) else None
        if parsed is None or parsed.channel not in ("desired", "cmd"):
            raise Rejected("wrong_topic", f"{str(topic)[:100]!r} is not a desired or cmd topic")
        if parsed.site != self.site or parsed.unit not in (self.unit, topics.ALL_UNITS):
            raise Rejected("wrong_topic", f"{topic} is not a topic of {self.site}/{self.unit}")
        return parsed, "site" if parsed.unit == topics.ALL_UNITS else "unit"

    def _decode(self, payload: bytes) -> dict[str, Any]:
        if not payload:
            raise Ignored("empty")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise Rejected("too_large", f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise Rejected("malformed", f"not UTF-8: {err}") from err
        try:
            env = json.loads(text, object_pairs_hook=_reject_pairs,
                             parse_constant=_reject_constant)
        except RecursionError as err:
            raise Rejected("too_deep", f"nested too deep to parse (limit {MAX_DEPTH})") from err
        except ValueError as err:
            raise Rejected("malformed", f"not JSON: {_describe(err)}") from err
        if not _depth_ok(env):
            raise Rejected("too_deep", f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(env, dict):
            raise Rejected("malformed", f"a JSON {type(env).__name__}, not an object")
        return env

    def _check_addressed(self, env: dict[str, Any], parsed: topics.Topic) -> None:
        """Site-wide messages for other units are none of our business, signed or not."""
        if parsed.unit != topics.ALL_UNITS:
            return
        target = env.get("target")
        units = target.get("units") if isinstance(target, dict) else None
        if isinstance(units, list) and units and all(isinstance(u, str) for u in units) \
                and "*" not in units and self.unit not in units:
            raise Ignored("not_for_us")

    def _check_signature(self, env: dict[str, Any]) -> None:
        try:
            verify_envelope(env, self.keys)
        except SignatureKeyUnknown as err:
            if isinstance(env.get("key"), str) and env["key"] in self.ack_key_names:
                raise Rejected("ack_key", f"signed with ack key {env['key']!r}: an ack key "
                                          "cannot command") from err
            raise Rejected(err.reason, _describe(err)) from err
        except SignatureError as err:
            raise Rejected(err.reason, _describe(err)) from err
        except (ValueError, RecursionError) as err:
            raise Rejected("malformed", _describe(err)) from err

    def _check_shape(self, env: dict[str, Any], parsed: topics.Topic) -> None:
        missing = [f for f in _SIGNED_FIELDS if f not in env]
        if missing:
            raise Rejected("malformed", f"missing {', '.join(missing)}")
        extra = sorted(set(env) - set(_SIGNED_FIELDS))
        if extra:
            raise Rejected("malformed", f"unknown field(s) {', '.join(e[:30] for e in extra[:5])}")
        if not envelope_id_ok(env["id"]):
            raise Rejected("malformed", "id is not 1 to 64 of [A-Za-z0-9_-]")
        name = env["name"]
        if not isinstance(name, str):
            raise Rejected("malformed", "name is not a string")
        if not isinstance(env["args"], dict):
            raise Rejected("malformed", "args is not an object")
        target = env["target"]
        if not isinstance(target, dict) or set(target) != {"site", "units"}:
            raise Rejected("malformed", "target is not {\"site\": …, \"units\": […]}")
        units = target["units"]
        if not isinstance(target["site"], str) or not isinstance(units, list) or not units or \
                not all(u == "*" or (isinstance(u, str) and topics.NAME_RE.match(u))
                        for u in units):
            raise Rejected("malformed", "target.site or target.units has the wrong form")
        for what in ("issued_at", "expires_at"):
            try:
                env[f"_{what}_ms"] = desired.time_ms(env[what], what)
            except ArgsInvalid as err:
                raise Rejected("malformed", str(err)) from err
        if env["_expires_at_ms"] <= env["_issued_at_ms"]:
            raise Rejected("malformed", "expires_at is not after issued_at")
        # The signature does not cover the topic: the name ties the two together.
        if parsed.channel == "desired":
            if name != parsed.name:
                raise Rejected("wrong_topic", f"a {name[:40]!r} document on the desired/"
                                              f"{parsed.name} topic")
        elif name not in CMD_NAMES:
            if name in DESIRED_NAMES:
                raise Rejected("wrong_topic", f"{name!r} is desired state: send it on "
                                              f"desired/{name}, not cmd")
            raise Rejected("unknown_command", f"no command {name[:40]!r} (known: "
                                              f"{', '.join(CMD_NAMES)})")
        if parsed.channel == "cmd" and \
                env["_expires_at_ms"] - env["_issued_at_ms"] > CMD_MAX_VALID_MS:
            # A bounded life keeps a captured command from being useful for long.
            raise Rejected("malformed", f"a one-shot command may be valid for at most "
                                        f"{CMD_MAX_VALID_MS // 3_600_000} h after issued_at")
        if target["site"] != self.site:
            raise Rejected("wrong_site", f"for site {target['site'][:40]!r}, this is {self.site}")
        if "*" not in units and self.unit not in units:
            raise Rejected("wrong_unit", f"for {', '.join(units[:5])}, this is {self.unit}")

    def _check_seen(self, env: dict[str, Any], parsed: topics.Topic, scope: str,
                    retained: bool) -> None:
        """What the broker hands over again on every reconnect: ignored, even once expired."""
        if parsed.channel == "desired":
            mine = desired.stored_doc(self.journal, env["name"], scope)
            if mine is not None and mine["id"] == env["id"]:
                raise Ignored("already_applied")
        elif retained and self.journal.inbox_seen(env["id"]):
            raise Ignored("already_applied")

    def _check_time(self, env: dict[str, Any], view: TimeView) -> None:
        issued, expires = env["_issued_at_ms"], env["_expires_at_ms"]
        if view.passed(expires):
            how = "clock" if view.synced else "unsynchronised; known lower bound"
            now = view.now_ms
            raise Rejected("expired", f"expired at {env['expires_at']}; now "
                                      f"{rfc3339_ms(now) if now is not None else '?'} ({how})")
        if view.too_far_ahead(issued):
            raise Rejected("not_yet_valid", f"issued at {env['issued_at']}, more than "
                                            f"{desired.MAX_FUTURE_SKEW_MS // 1000} s ahead of "
                                            f"the synchronised clock "
                                            f"({rfc3339_ms(view.wall_ms)}): check the "
                                            "centre's clock")
        if view.from_future(issued):
            known = f"the unit's lower bound on true time is {rfc3339_ms(view.lower_ms)}" \
                if view.lower_ms is not None else "the unit knows no time yet"
            raise Rejected("from_future", f"issued at {env['issued_at']}, implausibly far "
                                          f"ahead: {known} (clock unsynchronised): check "
                                          "the centre's clock")

    # -- one-shot commands ----------------------------------------------------------------------

    def _apply_cmd(self, env: dict[str, Any], scope: str, view: TimeView) -> Outcome:
        ident, name = env["id"], env["name"]
        issued = env["_issued_at_ms"]
        record = desired.seen_get(self.journal, CMD_SEEN_KEY)
        seen = desired.seen_before(record, ident, issued)
        if seen == "id" or self.journal.inbox_seen(ident):
            raise Rejected("replay", f"command {ident} was received before")
        if seen == "floor":
            raise Rejected("replay", f"issued at {env['issued_at']}, no later than "
                                     f"{rfc3339_ms(record['floor_ms'])}: commands that old "
                                     f"may have been taken before")
        if name in ("snapshot", "clip") and not self.config.cameras:
            raise Rejected("unsupported", f"{name}: this unit has no camera")
        if name == "lights.test" and not self.config.lights:
            raise Rejected("unsupported", "lights.test: this unit has no lights")
        data = self._event_data(ident, name, "applied", None, scope)
        before = self.journal.last_seq()
        # The anchor is not part of this transaction (inbox_put takes no state);
        # it only ever moves forward, so writing it just after is as safe.
        entry = self.journal.inbox_put(ident, name, env["args"], event_kind="command",
                                       event_data=data)
        if entry is None:  # another process queued it between our check and now
            raise Rejected("replay", f"command {ident} was received before")
        # Written just after the inbox entry, which alone refuses the id meanwhile.
        self.journal.state_set(CMD_SEEN_KEY, desired.seen_add(record, ident, issued))
        self._advance_anchor(env, view)
        self.counters["applied"] += 1
        log.info("accepted command %s (%s) from key %s on the %s topic", name, ident, env["key"],
                 scope)
        events = tuple(e for e in self.journal.events_after(before, kinds=["command"])
                       if e.data.get("command") == ident)
        if name == "rebirth":
            self._rebirth = True
            if self.on_rebirth is not None:
                try:
                    self.on_rebirth()
                except Exception:  # the command is recorded; the uplink's trouble is its own
                    log.exception("the rebirth callback failed")
        return Outcome("applied", None, ident, name, events=events[:1])

    def _advance_anchor(self, env: dict[str, Any], view: TimeView) -> None:
        anchor = self._anchor_after(env["_issued_at_ms"], view)
        if anchor is not None:
            self.journal.state_set(ANCHOR_KEY, anchor)

    def _anchor_after(self, issued_ms: int | None, view: TimeView) -> dict[str, Any] | None:
        """The anchor after an authentic message issued at ``issued_ms`` (None: unchanged).

        The centre signed it no earlier than ``issued_ms``, so the true time is
        past that: an unsynchronised clock that says otherwise is behind. One
        message is believed only within :data:`~firmware_py.desired.PLAUSIBLE_LEAD_MS`
        of the bound: further ahead it may as well be the centre's clock that is
        wrong, and the bound stays where the evidence puts it.
        """
        if view.synced:
            best, source = view.wall_ms, "clock"
        else:
            lower = view.lower_ms
            if issued_ms is None or (lower is not None and lower >= issued_ms) or \
                    view.unconfirmed(issued_ms):
                return None
            best, source = issued_ms, "command"
        return {"ms": best, "boot_id": self.clock.boot_id(), "mono": self.clock.monotonic(),
                "source": source}

    # -- desired documents --------------------------------------------------------------------

    def _docs(self, name: str) -> dict[str, dict[str, Any] | None]:
        return desired.stored_docs(self.journal, name)

    def _view(self) -> TimeView:
        return desired.journal_time_view(self.journal, self.clock)

    def _apply_desired(self, env: dict[str, Any], scope: str, view: TimeView) -> Outcome:
        ident, name = env["id"], env["name"]
        self._confirm_by_clock(view)
        docs = self._docs(name)
        mine = docs[scope]
        issued = env["_issued_at_ms"]
        record = desired.seen_get(self.journal, seen_key(name), ids_key(name))
        seen = desired.seen_before(record, ident, issued)
        if seen == "id":
            raise Rejected("replay", f"document {ident} was applied before, and is no longer "
                                     f"the newest on this topic")
        # Believed: its issued_at is within what the unit's own evidence supports.
        believed = not view.unconfirmed(issued)
        if mine is not None:
            mark = desired.doc_mark(mine)
            # A stored document from beyond the unit's evidence (a centre's clock
            # running ahead) does not lock its topic against a believed one.
            passes = desired.confirmed(mine) or not believed
            if (mark is not None and issued <= mark) or (passes and issued <= mine["issued_ms"]):
                raise Rejected("older_document", f"issued at {env['issued_at']}, not after "
                                                 f"{mine.get('issued_at')} ({mine['id']}) "
                                                 f"applied on this topic")
        if seen == "floor":
            raise Rejected("replay", f"issued at {env['issued_at']}, no later than "
                                     f"{rfc3339_ms(record['floor_ms'])}: documents that old "
                                     f"may have been applied before")
        expires_ms = desired.args_expiry_ms(name, env["args"])
        if expires_ms is not None and expires_ms <= issued:
            raise Rejected("bad_args", f"args.expires_at {env['args'].get('expires_at')} is "
                                       f"not after issued_at {env['issued_at']}")
        previous_mark = desired.doc_mark(mine) if mine is not None else None
        # Stored with its times in UTC, whatever offset the centre wrote (docs/mqtt-api.md).
        doc = {"id": ident, "name": name, "scope": scope,
               "args": desired.utc_args(name, env["args"]),
               "issued_at": desired.utc_time(env["issued_at"]), "issued_ms": issued,
               "expires_ms": expires_ms, "key": env["key"],
               "received_ms": self.clock.wall_ms(), "received_synced": view.synced,
               "received_seq": self.journal.last_seq() + 1, "confirmed": believed,
               "mark_ms": issued if believed else previous_mark,
               "ahead_ms": 0 if believed or view.now_ms is None else issued - view.now_ms}
        if not believed:
            log.warning("%s document %s is issued at %s, beyond the unit's evidence of time "
                        "(%s): applied, but it does not move the unit's time", name, ident,
                        env["issued_at"], rfc3339_ms(view.now_ms) if view.now_ms else "none")
        docs = {**docs, scope: doc}
        state: dict[str, Any] = {doc_key(name, scope): doc,
                                 seen_key(name): desired.seen_add(record, ident, issued),
                                 ids_key(name): None}
        anchor = self._anchor_after(issued, view)
        if anchor is not None:
            state[ANCHOR_KEY] = anchor
            view = desired.time_view(anchor, self.clock)
        in_force = desired.effective(docs, view)
        reason: str | None = None
        if name == "cards":
            # Card lists do not end: the newer of the two scopes is in force.
            in_force = desired.newest(docs)
            state[CARDS_KEY] = desired.cards_from(in_force)
        elif name == "lights":
            lights = desired.lights_from(in_force)
            state[LIGHTS_KEY] = self._lights_state(lights)
        if in_force is None or in_force["id"] != ident:
            reason = "ended" if desired.ended(doc, view) else "superseded"
        data = self._event_data(ident, name, "applied", reason, scope)
        if reason == "superseded" and in_force is not None:
            data["detail"] = f"stored; {in_force['id']} ({in_force['scope']}) is newer"
        elif reason == "ended":
            data["detail"] = f"stored; its state ended at {env['args'].get('expires_at')}"
        first = self.journal.append("command", data, state=state)
        self.counters["applied"] += 1
        log.info("applied %s document %s from key %s on the %s topic%s", name, ident, env["key"],
                 scope, f" ({reason})" if reason else "")
        events = [first]
        if name == "level":
            level_event = self._announce_level(cause=ident)
            if level_event is not None:
                events.append(level_event)
        return Outcome("applied", reason, ident, name, data.get("detail", ""), tuple(events))

    @staticmethod
    def _lights_state(lights: desired.LightsOverride) -> dict[str, Any] | None:
        if lights.by is None:
            return None
        return {"lights": lights.lights, "expires_at": lights.expires_at, "by": lights.by,
                "scope": lights.scope}

    def _announce_level(self, cause: str | None = None) -> Event | None:
        """If the desired level in force differs from the one last announced, announce it.

        The record of what was announced (``desired/level/in_force``) changes only
        together with its ``level`` event, so a crash between a document's
        ``command`` event and this one is made good by the next :meth:`tick`.
        """
        view = self._view()
        docs = self._docs("level")
        in_force = desired.effective(docs, view)
        now = desired.level_from(in_force)
        record = self.journal.state_get(LEVEL_IN_FORCE_KEY)
        if not isinstance(record, dict):
            record = None
        before = (record.get("level"), record.get("expires_at"), record.get("by_doc")) \
            if record else (desired.DEFAULT_LEVEL, None, None)
        if (now.level, now.expires_at, now.by) == before:
            return None
        said = self.journal.state_get(LEVEL_KEY)
        if not isinstance(said, dict):
            said = record
        # ``by``: the command that brought it, or None when it came from an expiry.
        newest = desired.newest(docs)
        if cause is not None:
            by = cause
        elif in_force is not None and newest is not None and in_force["id"] == newest["id"]:
            by = in_force["id"]  # applied earlier, announced late (e.g. after a crash)
        else:
            by = None
        previous = said.get("level") if said else desired.DEFAULT_LEVEL
        if isinstance(previous, bool) or previous not in (1, 2, 3):
            previous = None
        data = {"level": now.level, "previous": previous,
                "expires_at": now.expires_at, "by": by, "source": now.by, "scope": now.scope,
                "reason": "command" if by is not None else "expired"}
        state = {LEVEL_KEY: {"level": now.level, "expires_at": now.expires_at, "by": by,
                             "scope": now.scope},
                 LEVEL_IN_FORCE_KEY: {"level": now.level, "expires_at": now.expires_at,
                                      "by_doc": now.by, "scope": now.scope}}
        event = self.journal.append("level", data, state=state)
        log.info("level %s (was %s)%s", now.level, data["previous"],
                 f" by {by}" if by else " after expiry")
        return event

    # -- rejections ----------------------------------------------------------------------------

    def _event_data(self, ident: str | None, name: str | None, result: str,
                    reason: str | None, scope: str | None) -> dict[str, Any]:
        return {"command": ident, "name": name, "result": result, "reason": reason,
                "scope": scope, "detail": None}

    def _reject(self, env: dict[str, Any], scope: str | None, rej: Rejected,
                retained: bool) -> Outcome:
        ident, name = _claimed_id(env), _claimed_name(env)
        if retained and ident is not None:
            # The broker redelivers a retained message on every reconnect: say so once.
            key = f"{scope}:{name}:{ident}"
            if key in self._rejected_ids:
                self._rejected_ids.move_to_end(key)
                self.counters["ignored"] += 1
                return Outcome("ignored", "rejected_before", ident, name, rej.detail)
            self._rejected_ids[key] = None
            while len(self._rejected_ids) > REJECTED_REMEMBERED:
                self._rejected_ids.popitem(last=False)
        self.counters["rejected"] += 1
        journaled = self._limiter.take()
        # A flood is logged as sparingly as it is journaled.
        log.log(logging.WARNING if journaled else logging.DEBUG,
                "rejected a message%s%s on the %s topic: %s: %s",
                f" {name}" if name else "", f" ({ident})" if ident else "", scope or "?",
                rej.reason, rej.detail)
        if not journaled:
            self.counters["held_back"] += 1
            return Outcome("rejected", rej.reason, ident, name, rej.detail)
        data = self._event_data(ident, name, "rejected", rej.reason, scope)
        data["detail"] = rej.detail[:DETAIL_MAX]
        if self._limiter.held:
            data["suppressed"] = self._limiter.held
            self._limiter.held = 0
        event = self.journal.append("command", data)
        return Outcome("rejected", rej.reason, ident, name, rej.detail, (event,))

    # -- time ----------------------------------------------------------------------------------

    def tick(self) -> list[Event]:
        """Time-based work; call about once a second. Returns the events it wrote.

        - announces a level that changed because a document ended (``level``
          event with ``by`` null), and keeps ``lights/override`` current;
        - keeps the clock anchor: the synchronised time every
          :data:`ANCHOR_EVERY_MS`, or while unsynchronised the lower bound
          carried forward by boot-relative time (after a reboot, re-based on
          this boot);
        - reports rejections the rate limit held back.
        """
        with self._lock:
            try:
                return self._tick()
            except JournalError as err:
                log.error("commands: time-based update failed: %s", err)
                return []

    def _tick(self) -> list[Event]:
        clock = self.clock
        stamp = (clock.monotonic(), clock.wall_ms(), clock.synced(), clock.boot_id())
        last = self._last_tick
        if last is not None and stamp[2:] == last[2:] and 0 <= stamp[0] - last[0] < 1.0 \
                and abs((stamp[1] - last[1]) - (stamp[0] - last[0]) * 1000) < 1000:
            return []
        self._last_tick = stamp
        events: list[Event] = []
        self._keep_anchor()
        self._confirm_by_clock(self._view())
        event = self._announce_level()
        if event is not None:
            events.append(event)
        lights = self._lights_state(desired.lights_from(
            desired.effective(self._docs("lights"), self._view())))
        if self.journal.state_get(LIGHTS_KEY) != lights:
            self.journal.state_set(LIGHTS_KEY, lights)
        if self._limiter.held and self._limiter.available():
            self._limiter.take()
            data = self._event_data(None, None, "rejected", "rate_limited", None)
            data["suppressed"] = self._limiter.held
            data["detail"] = f"{self._limiter.held} rejection(s) not journaled one by one"
            self._limiter.held = 0
            events.append(self.journal.append("command", data))
        return events

    def _confirm_by_clock(self, view: TimeView) -> None:
        """Let a synchronised clock judge the ``issued_at`` of what is stored (once a sync).

        A stored document the clock finds in its future came from a centre whose
        clock was wrong: it is no longer confirmed, and its topic's ordering mark
        is clamped to now, so documents issued from now on replace and outrank
        it. One the clock finds in its past (held while the unit's bound lagged
        behind) is confirmed. Replay floors in the clock's future are clamped.
        """
        if not view.synced:
            self._judged_by_clock = False
            return
        if self._judged_by_clock:
            return  # stored while synchronised: judged on receipt
        wall, skew = view.wall_ms, desired.MAX_FUTURE_SKEW_MS
        state: dict[str, Any] = {}
        for name in DESIRED_NAMES:
            for scope in desired.SCOPES:
                doc = desired.stored_doc(self.journal, name, scope)
                if doc is None:
                    continue
                future = view.too_far_ahead(doc["issued_ms"])
                mark = desired.doc_mark(doc)
                if future and (desired.confirmed(doc) or (mark is not None and mark > wall - skew)):
                    log.warning("%s document %s (%s) is issued at %s, in the future of the "
                                "synchronised clock: the centre's clock was wrong; newer "
                                "documents replace it", name, doc["id"], scope,
                                doc.get("issued_at"))
                    state[doc_key(name, scope)] = {
                        **doc, "confirmed": False,
                        # Fuzzy by the allowed skew: the centre's clock may be a little behind.
                        "mark_ms": None if mark is None else min(mark, wall - skew),
                        "ahead_ms": doc.get("ahead_ms") or doc["issued_ms"] - wall}
                elif not future and not desired.confirmed(doc):
                    state[doc_key(name, scope)] = {
                        **doc, "confirmed": True, "ahead_ms": 0,
                        "mark_ms": max(mark or doc["issued_ms"], doc["issued_ms"])}
            state.update(self._clamped_floor(seen_key(name), wall, ids_key(name)))
        state.update(self._clamped_floor(CMD_SEEN_KEY, wall))
        # Key by key: a crash between two leaves nothing the next tick does not redo.
        for key, value in state.items():
            self.journal.state_set(key, value)
        self._judged_by_clock = True

    def _clamped_floor(self, key: str, wall: int, legacy: str | None = None) -> dict[str, Any]:
        record = desired.seen_get(self.journal, key, legacy)
        floor, skew = record["floor_ms"], desired.MAX_FUTURE_SKEW_MS
        if floor is None or floor <= wall + skew:
            return {}
        log.warning("replay record %s: floor %s is in the future of the synchronised clock; "
                    "clamped", key, rfc3339_ms(floor))
        # Like an ordering mark: what is issued from now on is newer than the floor.
        return {key: {**record, "floor_ms": wall - skew}}

    def _keep_anchor(self) -> None:
        clock = self.clock
        anchor = self.journal.state_get(ANCHOR_KEY)
        valid = isinstance(anchor, dict) and isinstance(anchor.get("ms"), int)
        boot = clock.boot_id()
        if clock.synced():
            wall = clock.wall_ms()
            # A synchronised clock wins: also over an anchor in its future, which
            # only a centre with a wrong clock can have put there.
            if not valid or anchor.get("boot_id") != boot or \
                    wall - anchor["ms"] >= ANCHOR_EVERY_MS or \
                    anchor["ms"] > wall + desired.MAX_FUTURE_SKEW_MS:
                self.journal.state_set(ANCHOR_KEY, {"ms": wall, "boot_id": boot,
                                                    "mono": clock.monotonic(),
                                                    "source": "clock"})
            return
        if not valid:
            return  # nothing known: expiry waits for a clock or a message
        lower = desired.anchor_lower_ms(anchor, clock)
        assert lower is not None
        if anchor.get("boot_id") != boot or lower - anchor["ms"] >= ANCHOR_EVERY_MS:
            self.journal.state_set(ANCHOR_KEY, {"ms": lower, "boot_id": boot,
                                                "mono": clock.monotonic(),
                                                "source": anchor.get("source", "clock")})

    def __repr__(self) -> str:
        return f"<CommandProcessor {self.site}/{self.unit} {self.counters}>"

