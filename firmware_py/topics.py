"""MQTT topic names of the v1 API (``docs/mqtt-api.md``), in one place.

Root: ``xunfang/v1/{site}/{unit}/``; ``_all`` in place of the unit addresses
every unit of a site. No level contains ``.`` or spaces (NATS rejects them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "xunfang/v1"
ALL_UNITS = "_all"
NAME_RE = re.compile(r"^[a-z0-9-]{1,32}$")
EVENT_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DESIRED_NAMES = ("level", "cards", "lights", "points")


def _check(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} must match {NAME_RE.pattern}")
    return name


def root(site: str, unit: str) -> str:
    _check(site, "site")
    if unit != ALL_UNITS:
        _check(unit, "unit")
    return f"{PREFIX}/{site}/{unit}"


def status(site: str, unit: str) -> str:
    return f"{root(site, unit)}/status"


def health(site: str, unit: str) -> str:
    return f"{root(site, unit)}/health"


def event(site: str, unit: str, kind: str) -> str:
    if not EVENT_KIND_RE.match(kind):
        raise ValueError(f"event kind {kind!r} must match {EVENT_KIND_RE.pattern}")
    return f"{root(site, unit)}/events/{kind}"


def ack(site: str, unit: str) -> str:
    return f"{root(site, unit)}/ack"


def desired(site: str, unit: str, name: str) -> str:
    if name not in DESIRED_NAMES:
        raise ValueError(f"desired document {name!r} must be one of {', '.join(DESIRED_NAMES)}")
    return f"{root(site, unit)}/desired/{name}"


def cmd(site: str, unit: str) -> str:
    return f"{root(site, unit)}/cmd"


def client_id(unit: str) -> str:
    return f"xunfang_{_check(unit, 'unit')}"


@dataclass(frozen=True)
class Topic:
    """A parsed v1 topic: ``site``, ``unit`` (or ``_all``), ``channel`` and its ``name``.

    ``channel`` is ``status``, ``health``, ``events``, ``ack``, ``desired`` or
    ``cmd``; ``name`` is the event kind or desired document name, else None.
    """

    site: str
    unit: str
    channel: str
    name: str | None = None


def parse(topic: str) -> Topic | None:
    """Parse a v1 topic; None for anything that is not one."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "xunfang" or parts[1] != "v1":
        return None
    _, _, site, unit, channel, *rest = parts
    if not NAME_RE.match(site) or not (unit == ALL_UNITS or NAME_RE.match(unit)):
        return None
    if channel in ("status", "health", "ack", "cmd") and not rest:
        return Topic(site, unit, channel)
    if channel == "events" and len(rest) == 1 and EVENT_KIND_RE.match(rest[0]):
        return Topic(site, unit, channel, rest[0])
    if channel == "desired" and len(rest) == 1 and rest[0] in DESIRED_NAMES:
        return Topic(site, unit, channel, rest[0])
    return None
