"""``xunfang watch``: every message of a site (or the fleet) as one readable line.

For the operator at the centre and for field debugging: status (birth and
death), health, every event, the units' answers to commands, the ledger's
acks, and the desired documents and commands the centre sent. Anything at
all may arrive on a broker (another vendor's bug, an attacker's bytes): a
payload that is not what its topic promises is shown as such, control
characters are escaped so a payload cannot drive the terminal, and nothing a
message holds stops the watch.

Example::

    $ xunfang watch --broker broker.centre:8883 --tls-ca ca.pem --site zhuantang
    15:04:05.120 zhuantang/zt-pp-03 status   online v0.1.0 patrol_point level 3 cards v7 …
    15:04:06.002 zhuantang/zt-pp-03 event    #1042 checkin card=14008EC793 decision=accepted …
    15:04:09.310 zhuantang/_all     desired  level 2b0f3c1d level=1 until 2026-11-28T21:04:05Z …
    15:04:09.420 zhuantang/zt-pp-03 event    #1043 command level 2b0f3c1d applied
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from firmware_py import topics

from .session import (
    CentreSession,
    SessionError,
    UsageError,
    add_broker_arguments,
    options_from_args,
    site_name,
)
from .terminal import clean

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_parser", "cmd_watch", "describe", "json_line", "watch"]

LINE_MAX = 400
VALUE_MAX = 60


def _v(value: Any, limit: int = VALUE_MAX) -> str:
    if isinstance(value, str):
        return clean(value, limit)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return clean(text, limit)


def _fields(data: Any, skip: tuple[str, ...] = (), limit: int = 12) -> str:
    if not isinstance(data, dict):
        return _v(data)
    items = [(k, v) for k, v in data.items() if k not in skip]
    text = " ".join(f"{clean(str(k), 30)}={_v(v)}" for k, v in items[:limit])
    if len(items) > limit:
        text += f" (+{len(items) - limit} more)"
    return text


def _short_id(value: Any) -> str:
    return clean(value, 12) if isinstance(value, str) else "-"


def _status(doc: dict[str, Any]) -> str:
    if doc.get("online") is False:
        return "OFFLINE"
    if doc.get("online") is not True:
        return f"? {_fields(doc)}"
    parts = [f"online v{_v(doc.get('version'))}", _v(doc.get("kind")),
             f"level {_v(doc.get('level'))}",
             "no cards" if doc.get("cards_version") is None
             else f"cards v{_v(doc.get('cards_version'))}"]
    if doc.get("lights_override"):
        parts.append(f"override {_v(doc['lights_override'])}")
    parts.append(f"boot {_short_id(doc.get('boot_id'))}")
    if "journal" in doc:
        parts.append(f"journal {_v(doc.get('journal'))} acked {_v(doc.get('acked_seq'))}")
    if doc.get("clock_synced") is False:
        parts.append("clock UNSYNCED")
    return " ".join(parts)


def _devices(doc: dict[str, Any], kind: str) -> str:
    devices = doc.get(kind)
    if not isinstance(devices, dict) or not devices:
        return ""
    states = []
    for name, info in list(devices.items())[:8]:
        state = info.get("state") if isinstance(info, dict) else info
        states.append(f"{clean(str(name), 20)}={_v(state, 20)}")
    return f"{kind}: {','.join(states)}"


def _health(doc: dict[str, Any]) -> str:
    parts = [f"level {_v(doc.get('level'))}", f"pending {_v(doc.get('pending'))}"]
    if doc.get("oldest_pending_s") is not None:
        parts.append(f"oldest {_v(doc.get('oldest_pending_s'))}s")
    parts.append(f"clock {'synced' if doc.get('clock_synced') else 'UNSYNCED'}")
    if doc.get("disk_free_mb") is not None:
        parts.append(f"disk {_v(doc.get('disk_free_mb'))}MB")
    if doc.get("cpu_temp_c") is not None:
        parts.append(f"{_v(doc.get('cpu_temp_c'))}°C")
    if doc.get("acks_rejected"):
        parts.append(f"acks_rejected {_v(doc.get('acks_rejected'))}")
    for kind in ("readers", "lights", "cameras"):
        text = _devices(doc, kind)
        if text:
            parts.append(text)
    return " ".join(parts)


def _event(doc: dict[str, Any], kind: str | None) -> str:
    data = doc.get("data")
    seq = doc.get("seq")
    head = f"#{_v(seq)} {clean(str(doc.get('kind', kind)), 32)}"
    if doc.get("resent"):
        head += " (resent)"
    if doc.get("clock_synced") is False:
        head += " (clock unsynced)"
    if not isinstance(data, dict):
        return f"{head} {_v(data)}"
    if doc.get("kind") == "command":
        line = f"{head} {_v(data.get('name'))} {_short_id(data.get('command'))} " \
               f"{_v(data.get('result'))}"
        if data.get("reason"):
            line += f" {_v(data.get('reason'))}"
        if data.get("detail"):
            line += f": {_v(data.get('detail'), 120)}"
        if data.get("suppressed"):
            line += f" (+{_v(data.get('suppressed'))} held back)"
        return line
    if doc.get("kind") == "level":
        line = f"{head} {_v(data.get('previous'))}→{_v(data.get('level'))}"
        if data.get("expires_at"):
            line += f" until {_v(data.get('expires_at'))}"
        line += f" by {_short_id(data.get('by'))}" if data.get("by") else " (expired)"
        return line
    if doc.get("kind") == "track":
        return f"{head} {_track(data)}"
    if doc.get("kind") == "visit" and data.get("source") == "gnss":
        return (f"{head} {_v(data.get('point'))} by GNSS {_v(data.get('started'))}→"
                f"{_v(data.get('ended'))} {_v(data.get('people'))} people "
                f"{','.join(_v(b, 20) for b in data.get('badges') or [])} "
                f"nearest {_num(data.get('nearest_m'), 0)} m")
    return f"{head} {_fields(data)}"


def _num(value: Any, digits: int) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "-"


def _track(data: dict[str, Any]) -> str:
    """A vehicle's track point as one line: where, how fast, which way, how good, who."""
    fix = data.get("fix") if isinstance(data.get("fix"), dict) else {}
    line = (f"{_num(data.get('lat'), 6)},{_num(data.get('lon'), 6)} "
            f"{_num(data.get('speed_kmh'), 0)} km/h {_num(data.get('heading'), 0)}° "
            f"{_v(fix.get('mode'))} {_v(fix.get('satellites'))} sats "
            f"HDOP {_num(fix.get('hdop'), 1)}")
    if isinstance(data.get("moved_m"), int | float):
        line += f" +{_num(data.get('moved_m'), 0)} m"
    crew = data.get("crew")
    if isinstance(crew, list):
        line += f" crew {','.join(_v(b, 20) for b in crew) or '-'}"
    return line


def _signed(doc: dict[str, Any], channel: str) -> str:
    target = doc.get("target")
    units = target.get("units") if isinstance(target, dict) else None
    to = ",".join(clean(str(u), 32) for u in units[:5]) if isinstance(units, list) else "?"
    args = doc.get("args")
    if doc.get("name") == "level" and isinstance(args, dict):
        what = f"level={_v(args.get('level'))}"
        what += f" until {_v(args.get('expires_at'))}" if args.get("expires_at") else ""
    elif doc.get("name") == "cards" and isinstance(args, dict):
        cards = args.get("cards")
        count = len(cards) if isinstance(cards, list) else "?"
        what = f"version={_v(args.get('version'))} cards={count}"
    elif channel == "ack" and isinstance(args, dict):
        what = f"journal {_v(args.get('journal'))} up to {_v(args.get('seq'))}"
    else:
        what = _fields(args)
    line = " ".join(p for p in (_v(doc.get("name"), 32), _short_id(doc.get("id")), what) if p)
    line += f" to {to} by {_v(doc.get('key'), 32)}"
    if "sig" not in doc:
        line += " UNSIGNED"
    if doc.get("expires_at"):
        line += f" valid until {_v(doc.get('expires_at'))}"
    return line


def describe(topic: str, payload: bytes, retained: bool = False,
             received: datetime | None = None) -> str:
    """One line for one message: time, site/unit, channel, what it says. Never raises."""
    try:
        return _describe(topic, payload, retained, received)
    except Exception as err:  # a formatting bug must not stop the watch
        return f"{clean(topic, 120)} (could not show {len(payload)} bytes: " \
               f"{clean(type(err).__name__)})"


def _describe(topic: str, payload: bytes, retained: bool, received: datetime | None) -> str:
    when = (received or datetime.now(UTC)).strftime("%H:%M:%S.%f")[:-3]
    parsed = topics.parse(topic)
    if parsed is None:
        where, channel = clean(topic, 80), "?"
    else:
        where = f"{parsed.site}/{parsed.unit}"
        channel = "event" if parsed.channel == "events" else parsed.channel
    suffix = "  (retained)" if retained else ""
    if not payload:
        body = "(empty: cleared)" if retained or parsed is None or \
            parsed.channel in ("desired", "ack", "status", "health") else "(empty)"
        return f"{when} {where:<20} {channel:<8} {body}{suffix}"
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        preview = payload[:40]
        body = f"(not JSON: {len(payload)} bytes {clean(repr(preview), 60)})"
        return f"{when} {where:<20} {channel:<8} {body}{suffix}"
    if not isinstance(doc, dict):
        body = f"(JSON {type(doc).__name__}, not an object: {_v(doc)})"
    elif parsed is None:
        body = _fields(doc)
    elif parsed.channel == "status":
        body = _status(doc)
    elif parsed.channel == "health":
        body = _health(doc)
    elif parsed.channel == "events":
        body = _event(doc, parsed.name)
    else:  # desired, cmd, ack: signed envelopes
        body = _signed(doc, parsed.channel)
    line = f"{when} {where:<20} {channel:<8} {body}{suffix}"
    return line if len(line) <= LINE_MAX else line[: LINE_MAX - 1] + "…"


def json_line(topic: str, payload: bytes, retained: bool, received: datetime) -> str:
    """The ``--json`` form: topic, retained, received, and the payload (or its base64)."""
    out: dict[str, Any] = {"topic": topic, "retained": retained,
                           "received": received.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
    try:
        out["payload"] = json.loads(payload.decode("utf-8")) if payload else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        out["payload_b64"] = base64.b64encode(payload).decode("ascii")
    return json.dumps(out, ensure_ascii=False)


def watch_filters(site: str | None, unit: str | None) -> list[str]:
    s = site or "+"
    if unit is None:
        return [f"{topics.PREFIX}/{s}/#"]
    # The unit's own topics and what its site's _all sends it.
    return [f"{topics.PREFIX}/{s}/{unit}/#", f"{topics.PREFIX}/{s}/{topics.ALL_UNITS}/#"]


def watch(session: CentreSession, filters: list[str], out: IO[str], *, as_json: bool = False,
          count: int | None = None, duration: float | None = None,
          stop: threading.Event | None = None,
          on_line: Callable[[str], None] | None = None,
          on_subscribed: Callable[[], None] | None = None) -> int:
    """Print every message until ``count`` messages, ``duration`` seconds or ``stop``.

    Returns how many messages were shown. Lines are written on the caller's
    thread, in arrival order.
    """
    stop = stop or threading.Event()
    lines: list[str] = []
    cond = threading.Condition()

    def on_message(msg: mqtt.MQTTMessage) -> None:
        received = datetime.now(UTC)
        payload = bytes(msg.payload)
        line = json_line(msg.topic, payload, bool(msg.retain), received) if as_json \
            else describe(msg.topic, payload, bool(msg.retain), received)
        with cond:
            lines.append(line)
            cond.notify_all()

    session.on_message = on_message
    session.subscribe(filters)
    if on_subscribed is not None:
        on_subscribed()
    shown = 0
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        if session.lost is not None:
            _resume(session, filters, out, stop)
            continue
        with cond:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            cond.wait_for(lambda: bool(lines), timeout=min(0.2, remaining or 0.2))
            batch, lines[:] = list(lines), []
        for line in batch:
            out.write(line + "\n")
            if on_line is not None:
                on_line(line)
            shown += 1
            if count is not None and shown >= count:
                out.flush()
                return shown
        out.flush()
    return shown


def _resume(session: CentreSession, filters: list[str], out: IO[str],
            stop: threading.Event) -> None:
    """The broker went away: say so, then reconnect with backoff and subscribe again."""
    out.write(f"-- {session.lost}; reconnecting to {session.options}\n")
    out.flush()
    backoff = 0.5
    while not stop.is_set():
        try:
            session.reconnect()
            session.subscribe(filters)
        except SessionError:
            stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)  # a live view: back soon after the broker
            continue
        out.write(f"-- reconnected to {session.options}\n")
        out.flush()
        return


def cmd_watch(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except UsageError as err:
        print(f"xunfang watch: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        with CentreSession(options, "xunfang_watch") as session:
            session.connect()
            filters = watch_filters(args.site, args.unit)
            print(f"watching {', '.join(filters)} on {options} (Ctrl-C stops)", file=sys.stderr)
            watch(session, filters, sys.stdout, as_json=args.json, count=args.count,
                  duration=args.duration, stop=stop)
    except SessionError as err:
        print(f"xunfang watch: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "watch", help="show every message of a site as one line each (command centre)",
        description="Subscribe to a site's (or every site's) topics and print each message "
                    "as one readable line: status, health, events, command results, acks, "
                    "desired documents and commands. Garbage is shown, never fatal.")
    add_broker_arguments(p)
    p.add_argument("--site", type=site_name, help="only this site (default: every site)")
    p.add_argument("--unit", type=site_name, help="only this unit (and its site's _all)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per message: topic, retained, received, payload")
    p.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    p.add_argument("--for", dest="duration", type=float, metavar="SECONDS",
                   help="stop after this many seconds")
    p.set_defaults(func=cmd_watch)
    return p
