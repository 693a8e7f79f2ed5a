"""``xunfang send``: sign a command or desired document, publish it, and report who applied it.

Desired state is retained on ``…/{unit or _all}/desired/{name}`` (a unit that
is offline gets the newest when it reconnects); one-shot commands go
non-retained to ``…/cmd``. Each is a signed envelope (docs/mqtt-api.md) made with
the centre's private key. ``send`` then waits a few seconds (``--wait``) for
the units' ``command`` events that name the envelope's id, and prints which
units applied it, which rejected it and why, and which did not answer (the
site's units are known from their retained status messages)::

    $ xunfang send level 1 --ttl 6h --site zhuantang --key centre-2026.key \\
          --broker broker.centre:8883 --tls-ca ca.pem --tls-cert centre.pem --tls-key centre.key
    level 1 until 2026-11-28T21:04:05.123Z, id 2b0f3c1d…,
      retained on xunfang/v1/zhuantang/_all/desired/level
      applied    zt-pp-03
      rejected   zt-pp-04  bad_args: lights.siren: no such light on this unit
      no answer  zt-pp-05  (online)
      offline    zt-pp-06  (gets it when it reconnects)
    4 unit(s): 1 applied, 1 rejected, 1 no answer, 1 offline

Before publishing, ``send`` checks the message against the site's retained
statuses (:func:`check`): the key must be one the units list in
``trusted_keys``, a ``--unit`` must be in the inventory (or known), a light
must be one the units have; otherwise it refuses, publishing nothing, unless
``--force``. When units reject a desired document anyway, the last good one
(from the centre database with ``--db``, else the one retained before) is put
back as the retained one, signed as it was (:func:`_restore`).

Exit status: 0 when no unit rejected and every unit expected to answer did;
1 when one rejected or did not answer, or the broker refused; 2 for bad usage
or a refused check.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import psycopg

from firmware_py import topics
from firmware_py.clock import rfc3339_ms
from firmware_py.config import LIGHT_MODES
from firmware_py.desired import CMD_MAX_VALID_MS, CMD_NAMES, ArgsInvalid, time_ms, validate_args
from firmware_py.exc import SignatureError, XunfangError
from firmware_py.signing import SigningKey, load_signing_key

from .desired_book import BookDocument, DesiredBook, Outcome
from .inventory import InventoryError, load_inventory, units_of_site
from .session import (
    BrokerOptions,
    CentreSession,
    SessionError,
    UsageError,
    add_broker_arguments,
    options_from_args,
    site_name,
)
from .store import LedgerError, LedgerStore, is_url
from .store.postgres import redact
from .terminal import clean

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["DESIRED_VALID_S", "Report", "add_parser", "build", "cmd_send", "parse_duration",
           "send"]

#: How long a retained desired document may be applied: long, since a unit may
#: first see it after weeks offline, and a late document still tells it that
#: the older one was replaced. One-shot commands: five minutes.
DESIRED_VALID_S = 30 * 86400
CARDS_VALID_S = 365 * 86400
CMD_VALID_S = 300
DEFAULT_WAIT_S = 5.0

_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``6h``, ``2d``, ``1h30m`` or plain seconds → seconds (> 0)."""
    text = text.strip().lower()
    if text.isdigit():
        seconds = int(text)
    else:
        m = _DURATION_RE.match(text)
        if not m or not any(m.groups()):
            raise argparse.ArgumentTypeError(f"{text!r}: give a duration like 90s, 30m, 6h, "
                                             "2d or 1h30m")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


# -- what to send ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """An envelope to sign, and where it goes."""

    name: str
    args: dict[str, Any]
    desired: bool
    valid_s: int


def _light_pair(text: str) -> tuple[str, str]:
    name, sep, mode = text.partition("=")
    if not sep or not name or mode not in LIGHT_MODES:
        raise UsageError(f"{text!r}: give LIGHT=MODE with MODE one of {', '.join(LIGHT_MODES)}")
    return name, mode


def _cmd_value(key: str, value: str) -> Any:
    if key == "lights":
        return [v for v in value.split(",") if v]
    return int(value) if value.isdigit() else value


def _json_file(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise UsageError(f"{path} is not JSON: {err}") from err


def build(args: argparse.Namespace, now_ms: int) -> Message:
    """The message a parsed ``send`` command line asks for; :class:`UsageError` otherwise."""
    what = args.what
    ttl = getattr(args, "ttl", None)
    until = rfc3339_ms(now_ms + ttl * 1000) if ttl else None
    if what == "level":
        body: dict[str, Any] = {"level": args.level}
        if until:
            body["expires_at"] = until
        msg = Message("level", body, True, DESIRED_VALID_S)
    elif what == "lights":
        lights = dict(_light_pair(p) for p in args.pairs)
        body = {"lights": lights}
        if until:
            body["expires_at"] = until
        msg = Message("lights", body, True, DESIRED_VALID_S)
    elif what == "cards":
        try:
            doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except OSError as err:
            raise UsageError(f"cannot read {args.file}: {err.strerror or err}") from err
        except ValueError as err:
            raise UsageError(f"{args.file} is not JSON: {err}") from err
        if isinstance(doc, list):
            doc = {"cards": doc}
        if not isinstance(doc, dict):
            raise UsageError(f"{args.file}: give {{\"version\": N, \"cards\": [...]}} or a list")
        if args.version is not None:
            doc["version"] = args.version
        if "version" not in doc:
            raise UsageError(f"{args.file} has no version: add one or give --version N")
        msg = Message("cards", doc, True, CARDS_VALID_S)
    elif what == "points":
        doc = _json_file(args.file)
        if isinstance(doc, list):
            doc = {"points": doc}
        if not isinstance(doc, dict):
            raise UsageError(f"{args.file}: give {{\"version\": N, \"points\": [...]}} or a list")
        if args.version is not None:
            doc["version"] = args.version
        if "version" not in doc:
            raise UsageError(f"{args.file} has no version: add one or give --version N")
        msg = Message("points", doc, True, CARDS_VALID_S)
    elif what == "cmd":
        body = {}
        for pair in args.params:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise UsageError(f"{pair!r}: give KEY=VALUE, e.g. camera=front or seconds=30")
            body[key] = _cmd_value(key, value)
        msg = Message(args.name, body, False, CMD_VALID_S)
    else:  # pragma: no cover - argparse allows nothing else
        raise UsageError(f"nothing to send for {what!r}")
    try:
        validate_args(msg.name, msg.args)
    except ArgsInvalid as err:
        raise UsageError(str(err)) from err
    valid_s = getattr(args, "valid_for", None) or msg.valid_s
    if not msg.desired and valid_s * 1000 > CMD_MAX_VALID_MS:
        raise UsageError(f"--valid-for: a one-shot command may be valid for at most "
                         f"{CMD_MAX_VALID_MS // 3_600_000} h (units refuse longer ones)")
    return Message(msg.name, msg.args, msg.desired, valid_s)


def destinations(msg: Message, site: str, units: Sequence[str]) -> list[str]:
    """The topics an envelope goes to: each named unit's own, else the site's ``_all``."""
    targets = list(units) or [topics.ALL_UNITS]
    if msg.desired:
        return [topics.desired(site, u, msg.name) for u in targets]
    return [topics.cmd(site, u) for u in targets]


# -- collecting answers ----------------------------------------------------------------------


@dataclass
class Answer:
    unit: str
    result: str
    reason: str | None = None
    detail: str | None = None


@dataclass
class Report:
    """What the units said about one envelope."""

    id: str
    name: str
    topics: list[str]
    expected: set[str] = field(default_factory=set)    # units that should answer
    online: set[str] = field(default_factory=set)      # from retained status
    offline: set[str] = field(default_factory=set)
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)   # what was put back after rejections
    overridden: list[str] = field(default_factory=list)  # checks --force overrode

    def applied(self) -> list[str]:
        return sorted(u for u, a in self.answers.items() if any(x.result == "applied" for x in a))

    def rejected(self) -> list[Answer]:
        return [x for u in sorted(self.answers) for x in self.answers[u]
                if x.result == "rejected"]

    def silent(self) -> list[str]:
        return sorted(self.expected - set(self.answers))

    def ok(self) -> bool:
        return not self.rejected() and not self.silent()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "topics": self.topics,
                "applied": self.applied(),
                "rejected": [{"unit": a.unit, "reason": a.reason, "detail": a.detail}
                             for a in self.rejected()],
                "no_answer": self.silent(),
                "offline": sorted(self.offline - set(self.answers)),
                "restored": self.restored, "forced_past": self.overridden}


class _Collector:
    """Retained statuses (who exists, what they trust, their lights), the retained
    documents on the topics we publish to, and command events naming our id, from
    paho's thread."""

    def __init__(self, site: str, desired_topics: Sequence[str] = ()) -> None:
        self.site = site
        self.desired_topics = list(desired_topics)
        self.cond = threading.Condition()
        self.status: dict[str, bool] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.retained: dict[str, bytes] = {}
        self.answers: dict[str, list[Answer]] = {}
        self.want: str | None = None
        self.heard = time.monotonic()

    def filters(self) -> list[str]:
        root = f"{topics.PREFIX}/{self.site}/+"
        return [f"{root}/status", f"{root}/events/command", *self.desired_topics]

    def settle(self, quiet_s: float, max_s: float) -> None:
        """Wait until no retained message came for ``quiet_s`` (at most ``max_s``)."""
        deadline = time.monotonic() + max_s
        with self.cond:
            self.heard = time.monotonic()
            while True:
                now = time.monotonic()
                quiet_until = self.heard + quiet_s
                if now >= quiet_until or now >= deadline:
                    return
                self.cond.wait(min(quiet_until, deadline) - now)

    def __call__(self, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.heard = time.monotonic()
        if msg.topic in self.desired_topics:
            if msg.retain:
                with self.cond:
                    self.retained[msg.topic] = bytes(msg.payload)
            return
        parsed = topics.parse(msg.topic)
        if parsed is None or parsed.site != self.site or parsed.unit == topics.ALL_UNITS:
            return
        try:
            doc = json.loads(bytes(msg.payload).decode("utf-8")) if msg.payload else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            return
        if not isinstance(doc, dict):
            return
        with self.cond:
            if parsed.channel == "status" and isinstance(doc.get("online"), bool):
                self.status[parsed.unit] = doc["online"]
                self.statuses[parsed.unit] = doc
            elif parsed.channel == "events":
                data = doc.get("data")
                if not isinstance(data, dict) or self.want is None or \
                        data.get("command") != self.want or doc.get("unit") != parsed.unit:
                    return
                result = data.get("result")
                if result not in ("applied", "rejected"):
                    return
                answer = Answer(parsed.unit, result, _text(data.get("reason")),
                                _text(data.get("detail")))
                seen = self.answers.setdefault(parsed.unit, [])
                if answer not in seen:  # a resent event says the same again
                    seen.append(answer)
            self.cond.notify_all()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- the checks before publishing -------------------------------------------------------------

#: After the SUBACK, the broker's retained messages have arrived once none came for this long.
SETTLE_QUIET_S = 0.3
SETTLE_MAX_S = 3.0


class Refused(XunfangError, ValueError):
    """``send`` will not publish: each of ``reasons`` is one line saying why (exit 2)."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


@dataclass
class Guard:
    """What ``send`` checks a message against, and where it keeps what it sent.

    ``inventory``: the units the inventory lists for the site (None: no
    inventory given; the units known from their statuses stand in).
    ``book``: the centre database (None: the broker's retained document is the
    last good one). ``force``: publish even when a check fails.
    """

    inventory: frozenset[str] | None = None
    inventory_source: str = ""
    book: DesiredBook | None = None
    force: bool = False


def light_names(msg: Message) -> list[str]:
    """The light names a message addresses (a lights override, or lights.test's list)."""
    if msg.name == "lights" and isinstance(msg.args.get("lights"), dict):
        return list(msg.args["lights"])
    if msg.name == "lights.test" and isinstance(msg.args.get("lights"), list):
        return [str(x) for x in msg.args["lights"]]
    return []


def check(msg: Message, key_name: str, site: str, units: Sequence[str],
          statuses: dict[str, dict[str, Any]], guard: Guard) -> list[str]:
    """Why the message must not go out (empty: it may). One line per refusal."""
    reasons: list[str] = []
    where = "the database or the broker" if guard.book is not None else "the broker"
    for unit in units:
        if guard.inventory is not None:
            if unit not in guard.inventory:
                reasons.append(f"unit {unit} is not in the inventory {guard.inventory_source} "
                               f"for site {site}")
        elif unit not in statuses:
            reasons.append(f"unit {unit} is not known at site {site}: no status from it on "
                           f"{where} (give --inventory FILE to check the site's inventory)")
    # The whole site: the units the inventory lists (the broker lets no other one read),
    # else every unit with a status.
    targets = list(units) if units else sorted(
        guard.inventory if guard.inventory is not None else statuses)
    distrust = sorted(u for u in targets if isinstance(statuses.get(u, {}).get("trusted_keys"),
                                                       list)
                      and key_name not in statuses[u]["trusted_keys"])
    if distrust:
        trusted = sorted({str(k) for u in distrust for k in statuses[u]["trusted_keys"]})
        reasons.append(f"key {key_name!r} is not trusted by {_units(distrust)} (their status "
                       f"lists: {', '.join(clean(k, 64) for k in trusted) or 'none'})")
    for light in light_names(msg):
        lacking = sorted(u for u in targets if isinstance(statuses.get(u, {}).get("lights"),
                                                          dict)
                         and light not in statuses[u]["lights"])
        if lacking:
            has = sorted({str(n) for u in lacking for n in statuses[u]["lights"]})
            reasons.append(f"light {light!r} is unknown to {_units(lacking)} (has: "
                           f"{', '.join(clean(n, 32) for n in has) or 'none'})")
    return reasons


def _units(units: Sequence[str], shown: int = 8) -> str:
    text = ", ".join(units[:shown])
    return text + (f" and {len(units) - shown} more" if len(units) > shown else "")


# -- the last good document -------------------------------------------------------------------


@dataclass(frozen=True)
class GoodDocument:
    """A document to put back: its signed payload as published, and when it stops being valid."""

    id: str
    payload: bytes
    expires_at: str
    expires_ms: int
    book: BookDocument | None = None


def good_from_retained(payload: bytes | None) -> GoodDocument | None:
    """The retained document on a topic before ``send`` published (None: none, or unreadable)."""
    if not payload:
        return None
    try:
        env = json.loads(payload.decode("utf-8"))
        if not isinstance(env, dict) or not isinstance(env.get("id"), str):
            return None
        return GoodDocument(env["id"], payload, env["expires_at"], time_ms(env["expires_at"]))
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, ArgsInvalid):
        return None


def good_from_book(doc: BookDocument | None) -> GoodDocument | None:
    if doc is None:
        return None
    return GoodDocument(doc.id, doc.envelope.encode("utf-8"), rfc3339_ms(doc.expires_ms),
                        doc.expires_ms, doc)


# -- sending ------------------------------------------------------------------------------------


def send(options: BrokerOptions, key: SigningKey, msg: Message, site: str,
         units: Sequence[str], wait_s: float, now_ms: int | None = None,
         guard: Guard | None = None) -> Report:
    """Sign, publish and collect the units' answers for up to ``wait_s`` seconds.

    With a ``guard``: first check the message against the site's units
    (:func:`check`; :class:`Refused` and nothing published when one fails,
    unless ``guard.force``), and when a unit rejects a desired document, put
    the last good one back as the retained one (:attr:`Report.restored`).
    """
    issued = int(time.time() * 1000) if now_ms is None else now_ms
    env = key.sign_envelope(msg.name, msg.args, site=site, units=list(units) or ["*"],
                            issued_at=rfc3339_ms(issued),
                            expires_at=rfc3339_ms(issued + msg.valid_s * 1000))
    text = json.dumps(env, ensure_ascii=False, separators=(",", ":"))
    payload = text.encode("utf-8")
    where = destinations(msg, site, units)
    collector = _Collector(site, where if msg.desired and guard is not None else ())
    report = Report(env["id"], msg.name, where)
    with CentreSession(options, "xunfang_send", on_message=collector) as session:
        session.connect()
        with collector.cond:
            collector.want = env["id"]
        # Subscribed before publishing: no answer can slip past. The broker sends the
        # retained statuses after the SUBACK and before it answers our PUBLISH.
        if wait_s > 0 or guard is not None:
            session.subscribe(collector.filters())
        before: dict[str, GoodDocument | None] = {}
        if guard is not None:
            collector.settle(SETTLE_QUIET_S, SETTLE_MAX_S)
            with collector.cond:
                statuses = dict(collector.statuses)
                retained = dict(collector.retained)
            if guard.book is not None:
                statuses = {**guard.book.unit_statuses(), **statuses}
            reasons = check(msg, key.name, site, units, statuses, guard)
            report.overridden = reasons if guard.force else []
            if reasons and not guard.force:
                raise Refused(reasons)
            if msg.desired:
                for topic in where:
                    target = _target(topic)
                    good = good_from_book(guard.book.in_force(site, msg.name, target)) \
                        if guard.book is not None else None
                    before[topic] = good or good_from_retained(retained.get(topic))
        for topic in where:
            session.publish(topic, payload, retain=msg.desired)
            if guard is not None and guard.book is not None:
                guard.book.record_sent(site, _target(topic), topic, env, text,
                                       retained=msg.desired, sent_ms=issued)
        with collector.cond:
            known = dict(collector.status)
        report.online = {u for u, up in known.items() if up}
        report.offline = {u for u, up in known.items() if not up}
        report.expected = set(units) if units else set(report.online)
        if wait_s <= 0:
            report.expected = set()
        else:
            deadline = time.monotonic() + wait_s
            with collector.cond:
                collector.cond.wait_for(
                    lambda: report.expected <= set(collector.answers) and bool(report.expected),
                    timeout=max(0.0, deadline - time.monotonic()))
                report.answers = {u: list(a) for u, a in collector.answers.items()}
        if guard is not None:
            if guard.book is not None and wait_s > 0:
                guard.book.record_outcomes(env["id"], _outcomes(report))
            if msg.desired and report.rejected():
                _restore(session, report, site, before, guard)
    return report


def _target(topic: str) -> str:
    """The unit (or ``_all``) of one of our own destination topics."""
    parsed = topics.parse(topic)
    assert parsed is not None, topic
    return parsed.unit


def _outcomes(report: Report) -> list[Outcome]:
    out = [Outcome(u, a.result, a.reason, a.detail)
           for u in sorted(report.answers) for a in report.answers[u]]
    out += [Outcome(u, "no_answer") for u in report.silent()]
    out += [Outcome(u, "offline") for u in sorted(report.offline - set(report.answers)
                                                   - report.expected)]
    return out


def _restore(session: CentreSession, report: Report, site: str,
             before: dict[str, GoodDocument | None], guard: Guard) -> None:
    """Units rejected the document: put the last good one back where they got it."""
    rejecting = {a.unit for a in report.rejected()}
    now = int(time.time() * 1000)
    for topic in report.topics:
        target = _target(topic)
        if target != topics.ALL_UNITS and target not in rejecting:
            continue    # that unit applied its copy: it stays
        good = before.get(topic)
        if good is None:
            session.publish(topic, b"", retain=True)
            report.restored.append(f"no earlier document on {topic}: removed the rejected "
                                   "one from the broker (units keep what they applied)")
        elif good.expires_ms <= now:
            report.restored.append(
                f"cannot put back {good.id} on {topic}: its signature expired at "
                f"{good.expires_at}, so units would refuse it; the rejected document stays "
                "retained (send the state you want again, or send clear)")
            continue
        else:
            session.publish(topic, good.payload, retain=True)
            report.restored.append(f"put back {good.id} on {topic} (the last good document, "
                                   f"signed as it was, valid until {good.expires_at})")
        if guard.book is not None:
            guard.book.record_restored(report.id, target, good.book if good else None)


# -- output ------------------------------------------------------------------------------------


def _summary_head(msg: Message, report: Report) -> str:
    args = msg.args
    if msg.name == "level":
        what = f"level {args['level']}" + (f" until {args['expires_at']}"
                                           if args.get("expires_at") else " (no end)")
    elif msg.name == "lights":
        what = "lights " + (" ".join(f"{k}={v}" for k, v in args["lights"].items()) or "(none)")
        what += f" until {args['expires_at']}" if args.get("expires_at") else " (no end)"
    elif msg.name == "cards":
        what = f"cards version {args['version']} ({len(args['cards'])} card(s))"
    elif msg.name == "points":
        what = f"points version {args['version']} ({len(args['points'])} point(s))"
    else:
        what = msg.name + "".join(f" {k}={v}" for k, v in args.items())
    how = "retained on" if msg.desired else "sent to"
    return f"{what}, id {report.id},\n  {how} {', '.join(report.topics)}"


#: How much of a unit's reason code and detail a report line shows.
REASON_MAX = 80
DETAIL_MAX = 300


def _said(answer: Answer) -> str:
    """A unit's reason and detail, escaped: a unit must not drive the operator's terminal."""
    text = clean(answer.reason or "", REASON_MAX)
    if answer.detail:
        text += f": {clean(answer.detail, DETAIL_MAX)}"
    return text


def print_report(msg: Message, report: Report, out: IO[str], waited: bool) -> None:
    print(_summary_head(msg, report), file=out)
    for line in report.restored:
        print(f"  {line}", file=out)
    if not waited:
        return
    for unit in report.applied():
        notes = [a for a in report.answers[unit] if a.result == "applied" and a.reason]
        note = f"  ({_said(notes[0])})" if notes else ""
        print(f"  applied    {unit}{note}", file=out)
    for a in report.rejected():
        print(f"  rejected   {a.unit}  {_said(a)}", file=out)
    for unit in report.silent():
        state = "online" if unit in report.online else (
            "offline" if unit in report.offline else "not known to the broker")
        print(f"  no answer  {unit}  ({state})", file=out)
    late = sorted(report.offline - set(report.answers) - report.expected)
    for unit in late:
        later = "gets it when it reconnects" if msg.desired else \
            "queued by the broker if its session lives; may expire first"
        print(f"  offline    {unit}  ({later})", file=out)
    answered = set(report.answers)
    total = len(report.expected | report.offline | answered)
    print(f"{total} unit(s): {len(report.applied())} applied, {len(report.rejected())} rejected,"
          f" {len(report.silent())} no answer, {len(late)} offline", file=out)


def cmd_send(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
        msg = build(args, int(time.time() * 1000))
    except UsageError as err:
        print(f"xunfang send: {err}", file=sys.stderr)
        return 2
    try:
        key = load_signing_key(args.key)
    except SignatureError as err:
        print(f"xunfang send: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"xunfang send: cannot read key {args.key}: {err.strerror or err}", file=sys.stderr)
        return 2
    units = list(dict.fromkeys(args.unit or []))
    try:
        guard = make_guard(args)
    except UsageError as err:
        print(f"xunfang send: {err}", file=sys.stderr)
        return 2
    try:
        report = send(options, key, msg, args.site, units, args.wait, guard=guard)
    except Refused as refused:
        for reason in refused.reasons:
            print(f"xunfang send: refused: {reason}", file=sys.stderr)
        print("xunfang send: nothing sent (--force sends it anyway)", file=sys.stderr)
        return 2
    except SessionError as err:
        print(f"xunfang send: {err}", file=sys.stderr)
        return 1
    except (sqlite3.Error, LedgerError, psycopg.Error) as err:
        shown = redact(args.db) if is_url(args.db) else args.db
        print(f"xunfang send: database {shown}: {err}", file=sys.stderr)
        return 1
    finally:
        if guard.book is not None:
            guard.book.close()
    for reason in report.overridden:
        print(f"xunfang send: sent anyway (--force): {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print_report(msg, report, sys.stdout, args.wait > 0)
    return 0 if report.ok() else 1


def open_book(target: str, site: str | None) -> DesiredBook:
    """The centre database's desired documents (the ledger's database, a SQLite file or a
    ``postgresql://`` URL, made or migrated as the ledger does); :class:`UsageError` when
    it cannot be used."""
    try:
        LedgerStore(target, site=site).close()
        if is_url(target):
            try:
                return DesiredBook(psycopg.connect(target, connect_timeout=10))
            except psycopg.Error as err:
                raise UsageError(f"{redact(target)}: {err}") from None
        return DesiredBook(sqlite3.connect(target, timeout=30.0))
    except (LedgerError, sqlite3.Error) as err:
        raise UsageError(str(err)) from err


def make_guard(args: argparse.Namespace) -> Guard:
    """The checks and the database a parsed ``send`` command line asks for."""
    inventory = None
    if args.inventory:
        try:
            inventory = units_of_site(load_inventory(args.inventory), args.site)
        except InventoryError as err:
            raise UsageError(str(err)) from err
    book = open_book(args.db, args.site) if args.db else None
    return Guard(inventory, args.inventory or "", book, args.force)


def cmd_clear(args: argparse.Namespace) -> int:
    """``send clear NAME``: remove a retained desired document from the broker."""
    try:
        options = options_from_args(args)
    except UsageError as err:
        print(f"xunfang send: {err}", file=sys.stderr)
        return 2
    targets = list(dict.fromkeys(args.unit or [])) or [topics.ALL_UNITS]
    try:
        with CentreSession(options, "xunfang_send") as session:
            session.connect()
            for unit in targets:
                topic = topics.desired(args.site, unit, args.name)
                session.publish(topic, b"", retain=True)
                print(f"cleared the retained document on {topic} (units keep what they "
                      "applied; send a new document to change it)")
    except SessionError as err:
        print(f"xunfang send: {err}", file=sys.stderr)
        return 1
    return 0


# -- command line --------------------------------------------------------------------------------


def _common(with_key: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--site", type=site_name, required=True, help="the units' site")
    p.add_argument("--unit", type=site_name, action="append", metavar="UNIT",
                   help="only this unit (repeat for several); default: the whole site")
    if with_key:
        p.add_argument("--key", required=True, metavar="FILE",
                       help="the centre's private key file (xunfang keys new)")
        p.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                       help=f"wait this long for the units' answers ({DEFAULT_WAIT_S:g}; "
                            "0: do not wait)")
        p.add_argument("--valid-for", type=parse_duration, metavar="DURATION",
                       help="how long units may apply the message (default 5m for cmd, at "
                            "most 24h; 30d for level and lights, 365d for cards)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--inventory", metavar="FILE",
                       help="the site's inventory (the file the broker's ACL is rendered from): "
                            "refuse units it does not list")
        p.add_argument("--db", metavar="PATH",
                       help="the centre database (the ledger's): record what is sent and each "
                            "unit's answer; the last good document comes from it")
        p.add_argument("--force", action="store_true",
                       help="send even when a check fails (unknown unit, light or key)")
    add_broker_arguments(p)
    return p


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "send", help="sign and send a command or desired state to units (command centre)",
        description="Sign a desired document (level, lights, cards, points) or a one-shot "
                    "command with the centre's key, publish it, and report which units applied it.")
    sub = p.add_subparsers(dest="what", metavar="{level,lights,cards,points,cmd,clear}",
                           required=True)
    common = _common()

    lv = sub.add_parser("level", parents=[common], help="set the alert level (1 highest, 3 normal)")
    lv.add_argument("level", type=int, choices=[1, 2, 3])
    lv.add_argument("--ttl", type=parse_duration, metavar="DURATION",
                    help="how long the level lasts (e.g. 6h); default: until replaced")
    lv.set_defaults(func=cmd_send)

    li = sub.add_parser("lights", parents=[common], help="override lights: NAME=MODE ...")
    li.add_argument("pairs", nargs="*", metavar="LIGHT=MODE",
                    help=f"modes: {', '.join(LIGHT_MODES)}; none at all cancels the override")
    li.add_argument("--ttl", type=parse_duration, metavar="DURATION",
                    help="how long the override lasts (e.g. 2h); default: until replaced")
    li.set_defaults(func=cmd_send)

    ca = sub.add_parser("cards", parents=[common], help="send a card list (JSON file)")
    ca.add_argument("file", metavar="FILE.json",
                    help='{"version": N, "cards": [{"card", "badge", "role", ...}]} or a list')
    ca.add_argument("--version", type=int, help="the list's version (overrides the file's)")
    ca.set_defaults(func=cmd_send)

    po = sub.add_parser("points", parents=[common],
                        help="send patrol points for vehicles' geofence visits (JSON file)")
    po.add_argument("file", metavar="FILE.json",
                    help='{"version": N, "points": [{"id", "lat_e7", "lon_e7", "radius_m", '
                         '"dwell_s"?, "name"?}]} or a list')
    po.add_argument("--version", type=int, help="the points' version (overrides the file's)")
    po.set_defaults(func=cmd_send)

    cm = sub.add_parser("cmd", parents=[common], help="a one-shot action: rebirth, snapshot, "
                                                      "clip, lights.test")
    cm.add_argument("name", choices=list(CMD_NAMES))
    cm.add_argument("params", nargs="*", metavar="KEY=VALUE",
                    help="camera=NAME, seconds=N, lights=A,B")
    cm.set_defaults(func=cmd_send)

    cl = sub.add_parser("clear", parents=[_common(with_key=False)],
                        help="remove a retained desired document from the broker")
    cl.add_argument("name", choices=["level", "cards", "lights", "points"])
    cl.set_defaults(func=cmd_clear)
    return p

