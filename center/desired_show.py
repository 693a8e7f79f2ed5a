"""``xunfang desired show``: what the centre has in force, next to what each unit reports.

In force: from the centre database (``--db``, the documents ``send`` recorded:
the newest one no unit rejected, per destination), or without one from the
documents retained on the broker. Per unit the document that governs it is
the one a unit picks (docs/mqtt-api.md, "Precedence of desired documents"):
of its own and the site's ``_all`` document, those not ended, the newer by
``issued_at``. Reported: the unit's retained ``status`` and ``health`` on the
broker (``--broker``), else the status the ledger stored. A line whose
reported value differs from the one in force is marked ``≠``.

Chinese by default, English with ``--lang en`` (catalogue ``desired`` in
``center/locale``)::

    $ xunfang desired show --site zhuantang --db /var/lib/xunfang-centre/zhuantang.db \\
          --broker broker.centre:8883 --tls-ca ca.pem --tls-cert centre.pem --tls-key centre.key
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from firmware_py import topics
from firmware_py.desired import DEFAULT_LEVEL, ArgsInvalid, time_ms

from .i18n import DEFAULT_LANGUAGE, LANGUAGES, Catalogue
from .session import (
    CentreSession,
    SessionError,
    UsageError,
    add_broker_arguments,
    options_from_args,
    site_name,
)
from .store import is_url
from .terminal import clean

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["Document", "Reported", "add_parser", "cmd_show", "in_force", "read_broker",
           "use_language"]

NAMES = ("level", "lights", "cards", "points")
SETTLE_QUIET_S = 0.3
SETTLE_MAX_S = 3.0

_catalogue = Catalogue("desired")
use_language = _catalogue.use


def _(message: str) -> str:
    return _catalogue.gettext(message)


def N_(message: str) -> str:
    """Mark a message for the catalogue; translated where it is shown."""
    return message


#: The documents' names as the operator reads them.
NAME_WORDS = {"level": N_("level"), "lights": N_("lights"), "cards": N_("cards"),
              "points": N_("points")}


# -- what is in force ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """A desired document as the centre holds it (from the book or the broker)."""

    id: str
    name: str
    target: str
    issued_ms: int
    args: dict[str, Any]

    def ended(self, now_ms: int) -> bool:
        end = self.args.get("expires_at") if self.name in ("level", "lights") else None
        try:
            return end is not None and time_ms(end) <= now_ms
        except ArgsInvalid:
            return False


def document_from_envelope(payload: bytes | str, target: str) -> Document | None:
    try:
        env = json.loads(payload)
        return Document(env["id"], env["name"], target, time_ms(env["issued_at"]),
                        dict(env["args"]))
    except (ValueError, KeyError, TypeError, ArgsInvalid, RecursionError):
        return None


def in_force(docs: Mapping[str, Document | None], unit: str, now_ms: int) -> Document | None:
    """The document that governs ``unit``: of its own and the site's, those not ended,
    the newer by ``issued_at`` (the unit's own on a tie); None: the default."""
    candidates = [d for d in (docs.get(unit), docs.get(topics.ALL_UNITS))
                  if d is not None and not d.ended(now_ms)]
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d.issued_ms, d.target != topics.ALL_UNITS))


# -- what units report ------------------------------------------------------------------------


@dataclass
class Reported:
    online: bool | None = None
    level: int | None = None
    lights: dict[str, str] | None = None
    cards_version: int | None = None
    cards_known: bool = False


def reported(status: Mapping[str, Any] | None, health: Mapping[str, Any] | None) -> Reported:
    """What a unit last said: its birth status, else its retained health."""
    out = Reported()
    if status is not None and isinstance(status.get("online"), bool):
        out.online = status["online"]
    if status is not None and status.get("online") is True:
        level = status.get("level")
        out.level = level if isinstance(level, int) else None
        lights = status.get("lights")
        if isinstance(lights, dict):
            out.lights = {str(k): str(v) for k, v in lights.items()}
        version = status.get("cards_version")
        out.cards_version = version if isinstance(version, int) else None
        out.cards_known = "cards_version" in status
        return out
    if health is not None:
        level = health.get("level")
        out.level = level if isinstance(level, int) else None
        lights = health.get("lights")
        if isinstance(lights, dict):
            out.lights = {str(k): str(v.get("state") if isinstance(v, dict) else v)
                          for k, v in lights.items()}
    return out


class _Retained:
    """The site's retained statuses, health and desired documents, from paho's thread."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.cond = threading.Condition()
        self.statuses: dict[str, dict[str, Any]] = {}
        self.health: dict[str, dict[str, Any]] = {}
        self.docs: dict[tuple[str, str], bytes] = {}
        self.heard = time.monotonic()

    def __call__(self, msg: mqtt.MQTTMessage) -> None:
        parsed = topics.parse(msg.topic)
        with self.cond:
            self.heard = time.monotonic()
            self.cond.notify_all()
        if parsed is None or parsed.site != self.site or not msg.retain or not msg.payload:
            return
        if parsed.channel == "desired" and parsed.name in NAMES:
            with self.cond:
                self.docs[(parsed.name, parsed.unit)] = bytes(msg.payload)
            return
        if parsed.unit == topics.ALL_UNITS or parsed.channel not in ("status", "health"):
            return
        try:
            doc = json.loads(bytes(msg.payload).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return
        if isinstance(doc, dict):
            with self.cond:
                (self.statuses if parsed.channel == "status" else self.health)[parsed.unit] = doc

    def settle(self) -> None:
        deadline = time.monotonic() + SETTLE_MAX_S
        with self.cond:
            self.heard = time.monotonic()
            while True:
                now = time.monotonic()
                until = min(self.heard + SETTLE_QUIET_S, deadline)
                if now >= until:
                    return
                self.cond.wait(until - now)


def read_broker(session: CentreSession, site: str) -> _Retained:
    """Subscribe to the site's retained messages and collect them until they settle."""
    retained = _Retained(site)
    session.on_message = retained
    root = f"{topics.PREFIX}/{site}/+"
    session.subscribe([f"{root}/status", f"{root}/health", f"{root}/desired/+"])
    retained.settle()
    return retained


# -- output -------------------------------------------------------------------------------------


def _pad(text: str, width: int) -> str:
    """``text`` padded to ``width`` terminal columns (a Chinese character takes two)."""
    used = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(1, width - used)


def _short(ident: str) -> str:
    return clean(ident, 13)     # 12 characters, then … when longer


def describe(name: str, doc: Document | None) -> str:
    """A document's state in words (the default when None)."""
    if doc is None:
        return {"level": _("level {level} (default)").format(level=DEFAULT_LEVEL),
                "lights": _("no override"), "cards": _("no card list"),
                "points": _("no patrol points")}[name]
    args = doc.args
    if name == "level":
        text = _("level {level}").format(level=args.get("level"))
    elif name == "lights":
        lights = args.get("lights") or {}
        text = " ".join(f"{clean(str(k), 32)}={clean(str(v), 16)}" for k, v in lights.items()) \
            or _("no override")
    elif name == "cards":
        text = _("version {version}, {count} card(s)").format(
            version=args.get("version"), count=len(args.get("cards") or []))
    else:
        text = _("version {version}, {count} point(s)").format(
            version=args.get("version"), count=len(args.get("points") or []))
    if args.get("expires_at") and name in ("level", "lights"):
        text += " " + _("until {time}").format(time=clean(str(args["expires_at"]), 40))
    return f"{text} ({_short(doc.id)})"


def compare(name: str, doc: Document | None, rep: Reported) -> tuple[str, bool | None]:
    """What the unit reports for ``name`` and whether it differs (None: cannot tell)."""
    if name == "level":
        want = doc.args.get("level") if doc is not None else DEFAULT_LEVEL
        if rep.level is None:
            return _("unknown"), None
        return _("level {level}").format(level=rep.level), rep.level != want
    if name == "lights":
        if rep.lights is None:
            return _("unknown"), None
        override = (doc.args.get("lights") or {}) if doc is not None else {}
        shown = " ".join(f"{clean(k, 32)}={clean(v, 16)}" for k, v in sorted(rep.lights.items()))
        return shown or _("no lights"), any(rep.lights.get(k) != v for k, v in override.items())
    if name == "cards":
        if not rep.cards_known:
            return _("unknown"), None
        want = doc.args.get("version") if doc is not None else None
        text = _("no card list") if rep.cards_version is None else \
            _("version {version}").format(version=rep.cards_version)
        return text, rep.cards_version != want
    return _("not reported"), None


def show(site: str, units: list[str], docs: dict[str, dict[str, Document | None]],
         reports: dict[str, Reported], source: str, now_ms: int, out: IO[str]) -> int:
    """Print the site's and each unit's state; return how many lines differ."""
    print(_("site {site}: in force from {source}; reported by the units").format(
        site=site, source=source), file=out)
    print("  " + _("whole site (_all):"), file=out)
    for name in NAMES:
        site_doc = docs[name].get(topics.ALL_UNITS)
        site_doc = None if site_doc is not None and site_doc.ended(now_ms) else site_doc
        print(f"    {_pad(_(NAME_WORDS[name]), 9)}{describe(name, site_doc)}", file=out)
    differing = 0
    for unit in units:
        rep = reports.get(unit, Reported())
        state = {True: _("online"), False: _("offline"), None: _("no status")}[rep.online]
        print(f"  {clean(unit, 32)}  {state}", file=out)
        for name in NAMES:
            doc = in_force(docs[name], unit, now_ms)
            said, differs = compare(name, doc, rep)
            mark = "≠" if differs else ("=" if differs is False else "?")
            line = "    {name}{in_force}   {mark} {reported}".format(
                name=_pad(_(NAME_WORDS[name]), 9), mark=mark,
                in_force=_("in force: {what}").format(what=describe(name, doc)),
                reported=_("reported: {what}").format(what=said))
            if differs:
                differing += 1
                line += "   " + _("differs")
            print(line, file=out)
    print(_("{units} unit(s), {differing} difference(s)").format(
        units=len(units), differing=differing), file=out)
    return differing



def cmd_show(args: argparse.Namespace) -> int:
    use_language(args.lang)
    if not args.db and args.broker is None:
        print("xunfang desired show: " + _("give --db PATH, --broker HOST:PORT, or both"),
              file=sys.stderr)
        return 2
    now_ms = int(time.time() * 1000)
    docs: dict[str, dict[str, Document | None]] = {n: {} for n in NAMES}
    statuses: dict[str, dict[str, Any]] = {}
    health: dict[str, dict[str, Any]] = {}
    units: set[str] = set()
    book = None
    try:
        if args.db:
            from .send import open_book

            if not is_url(args.db) and not Path(args.db).is_file():
                raise UsageError(_("no centre database at {db}").format(db=args.db))
            book = open_book(args.db, None)
            statuses.update(book.unit_statuses())
            for name, target in book.targets(args.site):
                doc = book.in_force(args.site, name, target)
                if name in docs and doc is not None:
                    docs[name][target] = document_from_envelope(doc.envelope, target)
                if target != topics.ALL_UNITS:
                    units.add(target)
        if args.broker is not None:
            options = options_from_args(args)
            with CentreSession(options, "xunfang_desired") as session:
                session.connect()
                retained = read_broker(session, args.site)
            statuses.update(retained.statuses)
            health.update(retained.health)
            if book is None:
                for (name, target), payload in retained.docs.items():
                    docs[name][target] = document_from_envelope(payload, target)
                    if target != topics.ALL_UNITS:
                        units.add(target)
    except UsageError as err:
        print(f"xunfang desired show: {err}", file=sys.stderr)
        return 2
    except SessionError as err:
        print(f"xunfang desired show: {err}", file=sys.stderr)
        return 1
    finally:
        if book is not None:
            book.close()
    units |= set(statuses) | set(health)
    ordered = sorted(units)
    reports = {u: reported(statuses.get(u), health.get(u)) for u in ordered}
    source = _("the database {db}").format(db=args.db) if args.db else \
        _("the documents retained on the broker")
    if args.json:
        print(json.dumps(_as_json(args.site, ordered, docs, reports, now_ms), indent=2,
                         ensure_ascii=False))
        return 0
    show(args.site, ordered, docs, reports, source, now_ms, sys.stdout)
    return 0


def _as_json(site: str, units: list[str], docs: dict[str, dict[str, Document | None]],
             reports: dict[str, Reported], now_ms: int) -> dict[str, Any]:
    def doc_json(doc: Document | None) -> dict[str, Any] | None:
        return None if doc is None else {"id": doc.id, "target": doc.target, "args": doc.args}

    out: dict[str, Any] = {"site": site, "whole_site": {n: doc_json(docs[n].get(topics.ALL_UNITS))
                                                         for n in NAMES}, "units": {}}
    for unit in units:
        rep = reports[unit]
        entry: dict[str, Any] = {"online": rep.online, "reported": {
            "level": rep.level, "lights": rep.lights, "cards_version": rep.cards_version}}
        for name in NAMES:
            doc = in_force(docs[name], unit, now_ms)
            entry[name] = {"in_force": doc_json(doc), "differs": compare(name, doc, rep)[1]}
        out["units"][unit] = entry
    return out


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "desired", help="the desired state the centre has in force (command centre)",
        description="Show the desired state the centre has in force per unit and site, next "
                    "to what the units last reported.")
    p.set_defaults(func=lambda _args: (p.print_usage(sys.stderr), 2)[1])
    sub = p.add_subparsers(dest="desired_command", metavar="{show}")
    s = sub.add_parser(
        "show", help="in force (database or broker) next to what each unit reports",
        description="Per unit and for the whole site: the level, lights override, card list "
                    "and patrol points in force, and what the unit last reported; "
                    "differences are marked ≠.")
    s.add_argument("--site", type=site_name, required=True, help="the site")
    s.add_argument("--db", metavar="PATH",
                   help="the centre database (the ledger's) that send --db records into")
    s.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    s.add_argument("--lang", choices=list(LANGUAGES), default=DEFAULT_LANGUAGE,
                   help="language of the output (zh-CN)")
    add_broker_arguments(s, required=False)
    s.set_defaults(func=cmd_show)
    return p
