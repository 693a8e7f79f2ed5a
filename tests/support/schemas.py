"""Validate MQTT payloads against the JSON Schemas of ``docs/schemas/``.

``validate(topic, payload)`` picks the schema from the topic (status, health,
ack, events/{kind}; an event is checked against the envelope and then its
``data`` against the kind's schema) and raises ``jsonschema.ValidationError``
on any mismatch. An event kind without a schema fails too: every kind the unit
sends must be documented.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from firmware_py import topics

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"
#: Every schema's ``$id`` is this plus its path under ``docs/schemas/`` (docs/mqtt-api.md):
#: an identifier, never fetched.
SCHEMA_BASE = "https://xunfang.example/schemas/v1/"


def schema_id(name: str) -> str:
    """The ``$id`` of ``docs/schemas/{name}.json``."""
    return f"{SCHEMA_BASE}{name}.json"


@cache
def _registry() -> Registry:
    """Every schema under its ``$id``; a ``$ref`` outside them fails (no retrieval)."""
    resources = []
    for path in SCHEMA_DIR.rglob("*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    """The validator of ``docs/schemas/{name}.json`` (e.g. ``health``, ``events/checkin``)."""
    path = SCHEMA_DIR / f"{name}.json"
    if not path.exists():
        raise LookupError(f"no schema docs/schemas/{name}.json: document this message")
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=_registry())


def _decode(payload: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    doc = json.loads(payload)
    if not isinstance(doc, dict):
        raise ValueError(f"payload is a JSON {type(doc).__name__}, not an object")
    return doc


def validate_event(doc: dict[str, Any]) -> None:
    validator("envelope").validate(doc)
    validator(f"events/{doc['kind']}").validate(doc["data"])


def validate(topic_or_name: str, payload: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Validate one payload by its MQTT topic (or a schema name); return the decoded JSON."""
    doc = _decode(payload)
    parsed = topics.parse(topic_or_name)
    if parsed is None:
        name = topic_or_name
        if name == "envelope":
            validate_event(doc)
        else:
            validator(name).validate(doc)
        return doc
    if parsed.channel == "events":
        validate_event(doc)
        if doc["kind"] != parsed.name or doc["unit"] != parsed.unit or doc["site"] != parsed.site:
            raise ValueError(f"event {doc['id']} does not match its topic {topic_or_name}")
    elif parsed.channel in ("status", "health", "ack"):
        validator(parsed.channel).validate(doc)
    elif parsed.channel in ("desired", "cmd"):
        validator("signed").validate(doc)
        specific = SCHEMA_DIR / parsed.channel / f"{parsed.name or doc.get('name')}.json"
        if specific.exists():
            validator(f"{parsed.channel}/{parsed.name or doc.get('name')}").validate(doc["args"])
    return doc
