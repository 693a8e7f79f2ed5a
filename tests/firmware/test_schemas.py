"""The published schemas as a third-party client uses them: absolute ``$id``s, every
``$ref`` resolved among them, and ``check-jsonschema`` run from another folder, offline."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, ValidationError

from firmware_py.signing import SigningKey, canonical_bytes
from tests.support import schemas
from tests.support.schemas import SCHEMA_BASE, SCHEMA_DIR

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(SCHEMA_DIR.rglob("*.json")):
        yield path.relative_to(SCHEMA_DIR).as_posix(), json.loads(path.read_text("utf-8"))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_every_schema_has_an_absolute_id_under_one_base() -> None:
    names = []
    for rel, doc in _schemas():
        assert doc["$id"] == SCHEMA_BASE + rel, rel
        names.append(rel)
    assert "ack.json" in names and "signed.json" in names


def test_every_ref_resolves_among_the_published_schemas() -> None:
    for rel, doc in _schemas():
        Draft202012Validator.check_schema(doc)
        # The registry holds docs/schemas/ only and retrieves nothing: a ref that
        # points outside them, or is relative to a folder, raises Unresolvable.
        resolver = schemas.validator(rel.removesuffix(".json"))._resolver
        for ref in set(_refs(doc)):
            resolver.lookup(ref)


def _ack(issued_at: str, seq: int = 12) -> dict[str, Any]:
    """An ack as a ledger on Shanghai time might sign it."""
    key = SigningKey.generate("ledger-1")
    env = key.sign_envelope("ack", {"journal": "0123456789abcdef", "seq": seq},
                            site="zhuantang", units=["zt-pp-03"], ttl_s=3600)
    env["issued_at"] = issued_at
    env["sig"] = base64.b64encode(key.sign(canonical_bytes(env))).decode()
    return env


def _check_jsonschema(cwd: Path, sample: Path) -> subprocess.CompletedProcess[str]:
    """The command docs/mqtt-api.md shows, run from a folder that has no schemas."""
    ack = SCHEMA_DIR / "ack.json"
    return subprocess.run([str(CHECK_JSONSCHEMA), "--schemafile", str(ack),
                           "--base-uri", ack.as_uri(), str(sample.name)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_check_jsonschema_validates_an_ack_from_another_folder_offline(tmp_path: Path) -> None:
    good = tmp_path / "ack.json"
    good.write_text(json.dumps(_ack("2026-12-04T23:00:00+08:00")), encoding="utf-8")
    schemas.validate("ack", good.read_text(encoding="utf-8"))
    done = _check_jsonschema(tmp_path, good)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_ack("2026-12-04T23:00:00+08:00", seq=-1)), encoding="utf-8")
    done = _check_jsonschema(tmp_path, bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "$.args.seq" in done.stdout

    # Only ack.json's own ref (signed.json) catches a bad issued_at: proof it resolved.
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(_ack("2026-12-04 23:00:00")), encoding="utf-8")
    done = _check_jsonschema(tmp_path, worse)
    assert done.returncode == 1 and "$.issued_at" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("time", ["2026-12-04T23:00:00+08:00", "2026-12-04t15:00:00z",
                                  "2026-12-04T15:00:00.123456789Z", "2026-12-04T15:00:00Z"])
def test_the_signed_schema_takes_every_rfc3339_time_a_unit_reads(time: str) -> None:
    schemas.validate("ack", _ack(time))


@pytest.mark.parametrize("time", ["2026-12-04 23:00:00Z", "2026-12-04T23:00Z",
                                  "2026-12-04T23:00:00", "2026-12-04T23:00:00+0800",
                                  "2026-12-04"])
def test_the_signed_schema_refuses_what_a_unit_refuses(time: str) -> None:
    with pytest.raises(ValidationError, match="does not match"):
        schemas.validate("ack", _ack(time))
