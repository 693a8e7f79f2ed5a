"""Signed commands and desired documents: verification, desired state, time rules.

Each test drives a real :class:`CommandProcessor` over a real journal file
with a :class:`ManualClock`, signing messages the way ``xunfang send`` does.
Every event the processor writes and every message signed here is validated
against ``docs/schemas`` when the test ends.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_py import desired, topics
from firmware_py.clock import ManualClock, rfc3339_ms
from firmware_py.commands import REASONS, CommandProcessor, Outcome
from firmware_py.config import UnitConfig
from firmware_py.desired import InboxReader, card_matches, find_card
from firmware_py.journal import Journal
from firmware_py.signing import SigningKey, canonical_bytes
from tests.support import schemas
from tests.support.units import make_config

SITE = "zhuantang"
UNIT = "zt-pp-03"
OTHER = "zt-pp-04"
T0 = 1_795_000_000_000          # 2026-11-18T11:06:40Z
HOUR = 3600
DAY = 86400


def unit_topic(name: str) -> str:
    return topics.desired(SITE, UNIT, name)


def site_topic(name: str) -> str:
    return topics.desired(SITE, topics.ALL_UNITS, name)


CMD = topics.cmd(SITE, UNIT)
SITE_CMD = topics.cmd(SITE, topics.ALL_UNITS)


@dataclass
class Rig:
    """A unit's command side: config, journal, clock, processor, and the centre's keys."""

    path: Path
    key: SigningKey
    ack_key: SigningKey
    clock: ManualClock
    config: UnitConfig
    journal: Journal
    proc: CommandProcessor
    rebirths: list[int] = field(default_factory=list)
    signed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    journals: list[Journal] = field(default_factory=list)

    # -- the centre's side --------------------------------------------------------------------

    def sign(self, name: str, args: dict[str, Any] | None = None, *, units: list[str] | None = None,
             site: str = SITE, key: SigningKey | None = None, issued_ms: int | None = None,
             ttl_s: int = 30 * DAY, id: str | None = None) -> dict[str, Any]:
        issued = self.clock.wall_ms() if issued_ms is None else issued_ms
        return (key or self.key).sign_envelope(
            name, args or {}, site=site, units=units or ["*"], issued_at=rfc3339_ms(issued),
            expires_at=rfc3339_ms(issued + ttl_s * 1000), id=id)

    def level(self, level: int, ttl_s: int | None = None, **kw: Any) -> dict[str, Any]:
        issued = kw.get("issued_ms", self.clock.wall_ms())
        args: dict[str, Any] = {"level": level}
        if ttl_s is not None:
            args["expires_at"] = rfc3339_ms(issued + ttl_s * 1000)
        return self.sign("level", args, **kw)

    def send(self, topic: str, env: dict[str, Any] | bytes, retained: bool = False) -> Outcome:
        if isinstance(env, dict):
            # What the centre puts on the wire must match the published schemas.
            schemas.validate(topic, env)
            self.signed.append((topic, env))
            payload = json.dumps(env).encode()
        else:
            payload = env
        return self.proc.handle(topic, payload, retained)

    # -- the unit's side ----------------------------------------------------------------------

    def restart(self) -> None:
        """Close the journal and start over from the file, as after a power cut."""
        self.journal.close()
        self.journal = Journal(self.path, unit=UNIT, site=SITE, clock=self.clock)
        self.journals.append(self.journal)
        self.proc = CommandProcessor(self.config, self.journal, self.clock,
                                     on_rebirth=lambda: self.rebirths.append(1))

    def snapshot(self) -> tuple[dict[str, Any], list[Any]]:
        return self.journal.state_items(), self.journal.inbox_after(0)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs = self.journal.events_after(0, limit=10_000)
        return [e.data for e in evs if kind is None or e.kind == kind]

    def level_now(self) -> int:
        return desired.current_level(self.journal, self.clock).level


def make_rig(tmp_path: Path, *, clock: ManualClock | None = None, **sections: Any) -> Rig:
    key = SigningKey.generate("centre-test")
    ack = SigningKey.generate("ledger-test")
    doc: dict[str, Any] = {
        "security": {"command_keys": {"centre-test": key.public_b64()},
                     "ack_keys": {"ledger-test": ack.public_b64()}},
        "lights": {"warning": {"pins": [17, 27]}, "lightbox": {"pins": [22]}},
        "cameras": [{"name": "front", "source": "front.mp4"}],
    }
    doc.update(sections)
    config = make_config(tmp_path, **doc)
    clock = clock or ManualClock(wall_ms=T0, synced=True)
    path = tmp_path / "journal.db"
    journal = Journal(path, unit=UNIT, site=SITE, clock=clock)
    rig = Rig(path, key, ack, clock, config, journal,
              CommandProcessor(config, journal, clock), journals=[journal])
    rig.proc.on_rebirth = lambda: rig.rebirths.append(1)
    return rig


def check_events(journal: Journal) -> None:
    for event in journal.events_after(0, limit=100_000):
        schemas.validate(topics.event(SITE, UNIT, event.kind), event.envelope())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    check_events(r.journal)
    for j in r.journals:
        j.close()


@pytest.fixture
def unsynced(tmp_path: Path) -> Iterator[Rig]:
    """A Pi that booted without RTC: the clock says 1970 and is not synchronised."""
    r = make_rig(tmp_path, clock=ManualClock(wall_ms=5_000, monotonic=5.0, synced=False))
    yield r
    check_events(r.journal)
    for j in r.journals:
        j.close()


def assert_rejected(rig: Rig, outcome: Outcome, reason: str,
                    before: tuple[dict[str, Any], list[Any]]) -> dict[str, Any]:
    """Rejected for ``reason``, reported in one command event, and nothing else changed."""
    assert outcome.result == "rejected", outcome
    assert outcome.reason == reason, outcome
    assert reason in REASONS
    assert rig.snapshot() == before
    assert len(outcome.events) == 1
    data = outcome.events[0].data
    assert outcome.events[0].kind == "command"
    assert data["result"] == "rejected" and data["reason"] == reason
    return data


# -- accepted --------------------------------------------------------------------------------------


def test_a_site_level_document_applies_and_is_announced(rig: Rig) -> None:
    env = rig.level(1, ttl_s=6 * HOUR)
    out = rig.send(site_topic("level"), env, retained=True)
    assert out.result == "applied" and out.reason is None and out.command == env["id"]
    command, level = (e.data for e in out.events)
    assert command == {"command": env["id"], "name": "level", "result": "applied",
                       "reason": None, "scope": "site", "detail": None}
    assert level == {"level": 1, "previous": 3, "expires_at": env["args"]["expires_at"],
                     "by": env["id"], "source": env["id"], "scope": "site", "reason": "command"}
    now = desired.current_level(rig.journal, rig.clock)
    assert (now.level, now.expires_at, now.by) == (1, env["args"]["expires_at"], env["id"])
    assert rig.proc.status_fields()["level"] == 1
    # The uplink's birth reads the same key.
    assert rig.journal.state_get("level")["level"] == 1


def test_a_unit_document_on_the_units_own_topic_applies(rig: Rig) -> None:
    env = rig.level(2, units=[UNIT])
    out = rig.send(unit_topic("level"), env)
    assert out.applied and out.events[0].data["scope"] == "unit"
    assert rig.level_now() == 2


def test_site_document_naming_this_unit_applies(rig: Rig) -> None:
    out = rig.send(site_topic("level"), rig.level(2, units=[OTHER, UNIT]))
    assert out.applied and rig.level_now() == 2


def test_two_trusted_keys_both_command_during_a_rotation(tmp_path: Path) -> None:
    old, new = SigningKey.generate("centre-2025"), SigningKey.generate("centre-2026")
    r = make_rig(tmp_path, security={"command_keys": {"centre-2025": old.public_b64(),
                                                     "centre-2026": new.public_b64()}})
    try:
        assert r.send(site_topic("level"), r.level(2, key=old)).applied
        r.clock.advance(1)
        assert r.send(site_topic("level"), r.level(1, key=new)).applied
        assert r.level_now() == 1
    finally:
        r.journal.close()


# -- rejections: each one reported, none changes anything -------------------------------------


def _forged(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    # Signed by a stranger who names the trusted key.
    stranger = SigningKey.generate("centre-test")
    return site_topic("level"), rig.level(1, key=stranger)


def _unsigned(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(1)
    del env["sig"]
    return site_topic("level"), json.dumps(env).encode()


def _tampered(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(3)
    env["args"]["level"] = 1
    return site_topic("level"), env


def _tampered_target(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(1, units=[OTHER])
    env["target"]["units"] = [UNIT]
    return unit_topic("level"), env


def _unknown_key(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), rig.level(1, key=SigningKey.generate("centre-evil"))


def _ack_key(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), rig.level(1, key=rig.ack_key)


def _bad_sig_text(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(1)
    env["sig"] = "not base64!"
    return site_topic("level"), json.dumps(env).encode()


def _other_site(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), rig.level(1, site="xixi")


def _other_unit(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return unit_topic("level"), rig.level(1, units=[OTHER])


def _other_units_topic(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return topics.desired(SITE, OTHER, "level"), rig.level(1)


def _other_sites_topic(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return topics.desired("xixi", topics.ALL_UNITS, "level"), rig.level(1)


def _name_not_topic(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("lights"), json.dumps(rig.level(1)).encode()


def _desired_on_cmd(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return CMD, json.dumps(rig.level(1)).encode()


def _unknown_command(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return CMD, json.dumps(rig.sign("reboot")).encode()


def _expired(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return CMD, rig.sign("snapshot", issued_ms=T0 - 600_000, ttl_s=300)


def _not_yet_valid(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), rig.level(1, issued_ms=T0 + 3600_000)


def _not_json(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), b"{level: 1"


def _not_utf8(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), b"\xff\xfe{}"


def _json_list(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), b"[1, 2, 3]"


def _duplicate_keys(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    text = json.dumps(rig.level(1))
    return site_topic("level"), (text[:-1] + ', "name": "level"}').encode()


def _nan(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), b'{"id": NaN}'


def _extra_field(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(1)
    env["note"] = "hi"
    env["sig"] = base64.b64encode(rig.key.sign(canonical_bytes(env))).decode()
    return site_topic("level"), json.dumps(env).encode()


def _bad_time(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(1)
    env["issued_at"] = "yesterday"
    env["sig"] = base64.b64encode(rig.key.sign(canonical_bytes(env))).decode()
    return site_topic("level"), json.dumps(env).encode()


def _float(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(1)
    env["args"]["level"] = 1.0
    return site_topic("level"), json.dumps(env).encode()


def _too_deep(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.level(1)
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    env["args"]["x"] = nested
    return site_topic("level"), json.dumps(env).encode()


def _very_deep(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), b"[" * 100_000 + b"]" * 100_000


def _too_large(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    env = rig.sign("cards", {"version": 1, "cards": [
        {"card": f"{i:010X}", "badge": "x" * 60, "role": "patrol"} for i in range(3000)]})
    return site_topic("cards"), json.dumps(env).encode()


def _bad_level(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), json.dumps(rig.sign("level", {"level": 4})).encode()


def _level_typo(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), json.dumps(
        rig.sign("level", {"level": 1, "expire_at": "2026-11-18T12:00:00Z"})).encode()


def _level_ends_before_issue(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("level"), rig.sign("level", {"level": 1,
                                                   "expires_at": rfc3339_ms(T0 - 1000)})


def _unknown_light(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("lights"), rig.sign("lights", {"lights": {"siren": "on"}})


def _alternate_one_pin(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("lights"), rig.sign("lights", {"lights": {"lightbox": "alternate"}})


def _bad_card(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("cards"), json.dumps(rig.sign("cards", {"version": 2, "cards": [
        {"card": "14008ec793", "badge": "A1", "role": "patrol"}]})).encode()


def _duplicate_card(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    entry = {"card": "14008EC793", "badge": "A1", "role": "patrol"}
    return site_topic("cards"), rig.sign("cards", {"version": 2, "cards": [entry, entry]})


def _bad_role(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("cards"), json.dumps(rig.sign("cards", {"version": 2, "cards": [
        {"card": "14008EC793", "badge": "A1", "role": "chief"}]})).encode()


def _leader_not_police(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("cards"), json.dumps(rig.sign("cards", {"version": 2, "cards": [
        {"card": "14008EC793", "badge": "A1", "role": "auxiliary", "leader": True}]})).encode()


def _leader_not_bool(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return site_topic("cards"), json.dumps(rig.sign("cards", {"version": 2, "cards": [
        {"card": "14008EC793", "badge": "P1", "role": "police", "leader": "yes"}]})).encode()


def _unknown_camera(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return CMD, rig.sign("snapshot", {"camera": "back"}, ttl_s=300)


def _clip_too_long(rig: Rig) -> tuple[str, bytes | dict[str, Any]]:
    return CMD, json.dumps(rig.sign("clip", {"seconds": 3600}, ttl_s=300)).encode()


REJECTIONS: dict[str, tuple[Callable[[Rig], tuple[str, bytes | dict[str, Any]]], str]] = {
    "forged": (_forged, "bad_signature"),
    "unsigned": (_unsigned, "missing_signature"),
    "tampered args": (_tampered, "bad_signature"),
    "tampered target": (_tampered_target, "bad_signature"),
    "unknown key": (_unknown_key, "unknown_key"),
    "ack key used for a command": (_ack_key, "ack_key"),
    "signature not base64": (_bad_sig_text, "malformed_signature"),
    "other site": (_other_site, "wrong_site"),
    "other unit": (_other_unit, "wrong_unit"),
    "another unit's topic": (_other_units_topic, "wrong_topic"),
    "another site's topic": (_other_sites_topic, "wrong_topic"),
    "name does not match the topic": (_name_not_topic, "wrong_topic"),
    "desired document on cmd": (_desired_on_cmd, "wrong_topic"),
    "unknown command": (_unknown_command, "unknown_command"),
    "expired": (_expired, "expired"),
    "issued in the future": (_not_yet_valid, "not_yet_valid"),
    "not JSON": (_not_json, "malformed"),
    "not UTF-8": (_not_utf8, "malformed"),
    "a JSON list": (_json_list, "malformed"),
    "duplicate keys": (_duplicate_keys, "malformed"),
    "NaN": (_nan, "malformed"),
    "unknown envelope field": (_extra_field, "malformed"),
    "bad issued_at": (_bad_time, "malformed"),
    "float": (_float, "not_canonical"),
    "deeply nested": (_too_deep, "too_deep"),
    "nested past the parser": (_very_deep, "too_deep"),
    "oversized": (_too_large, "too_large"),
    "level 4": (_bad_level, "bad_args"),
    "misspelt expires_at": (_level_typo, "bad_args"),
    "level that ends before it was issued": (_level_ends_before_issue, "bad_args"),
    "unknown light": (_unknown_light, "bad_args"),
    "alternate on a one-pin light": (_alternate_one_pin, "bad_args"),
    "lower-case card id": (_bad_card, "bad_args"),
    "card listed twice": (_duplicate_card, "bad_args"),
    "unknown role": (_bad_role, "bad_args"),
    "a leader who is not police": (_leader_not_police, "bad_args"),
    "leader not true or false": (_leader_not_bool, "bad_args"),
    "unknown camera": (_unknown_camera, "bad_args"),
    "clip too long": (_clip_too_long, "bad_args"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejection_is_reported_and_changes_nothing(rig: Rig, case: str) -> None:
    # Something in force already, so "changes nothing" has something to keep.
    assert rig.send(site_topic("level"), rig.level(2)).applied
    assert rig.send(CMD, rig.sign("snapshot", ttl_s=300)).applied
    rig.clock.advance(1)
    make, reason = REJECTIONS[case]
    topic, env = make(rig)
    before = rig.snapshot()
    out = rig.send(topic, env)
    data = assert_rejected(rig, out, reason, before)
    assert data["detail"]
    assert rig.level_now() == 2


def test_every_documented_rejection_reason_is_tested() -> None:
    tested = {reason for _, reason in REJECTIONS.values()}
    ignored = {"empty", "not_for_us", "already_applied", "rejected_before", "journal_error"}
    # replay, older_document, unsupported and rate_limited have their own tests below,
    # from_future in test_command_time.py (it needs an unsynchronised clock).
    assert set(REASONS) - tested - ignored == {"replay", "older_document", "unsupported",
                                               "rate_limited", "from_future"}


def test_a_rejection_names_the_claimed_command_so_the_centre_can_match_it(rig: Rig) -> None:
    topic, env = _tampered(rig)
    assert isinstance(env, dict)
    out = rig.send(topic, env)
    assert out.events[0].data["command"] == env["id"]
    assert out.events[0].data["name"] == "level"


def test_unsupported_actions_are_rejected_on_a_unit_without_camera_or_lights(
        tmp_path: Path) -> None:
    r = make_rig(tmp_path, lights={}, cameras=[])
    try:
        for name in ("snapshot", "clip", "lights.test"):
            before = r.snapshot()
            out = r.send(CMD, r.sign(name, ttl_s=300))
            assert_rejected(r, out, "unsupported", before)
        check_events(r.journal)
    finally:
        r.journal.close()


# -- replays, redeliveries, silence ---------------------------------------------------------------


def test_a_replayed_one_shot_command_is_rejected_and_not_run_again(rig: Rig) -> None:
    env = rig.sign("snapshot", {"camera": "front"}, ttl_s=300)
    assert rig.send(CMD, env).applied
    rig.clock.advance(5)
    before = rig.snapshot()
    assert_rejected(rig, rig.send(CMD, env), "replay", before)
    # On the site topic too: the id is what counts.
    assert_rejected(rig, rig.send(SITE_CMD, env), "replay", before)
    assert [e.command_id for e in rig.journal.inbox_after(0)] == [env["id"]]


def test_a_retained_redelivery_of_a_command_is_silent(rig: Rig) -> None:
    env = rig.sign("clip", {"seconds": 30}, ttl_s=300)
    assert rig.send(CMD, env, retained=True).applied
    n = len(rig.events())
    out = rig.send(CMD, env, retained=True)
    assert out.result == "ignored" and out.reason == "already_applied"
    assert len(rig.events()) == n


def test_retained_redelivery_of_an_applied_document_is_silent(rig: Rig) -> None:
    env = rig.level(1, ttl_s=HOUR)
    assert rig.send(site_topic("level"), env, retained=True).applied
    n = len(rig.events())
    before = rig.snapshot()
    for _ in range(3):  # three reconnects
        out = rig.send(site_topic("level"), env, retained=True)
        assert (out.result, out.reason) == ("ignored", "already_applied")
    assert len(rig.events()) == n and rig.snapshot() == before


def test_retained_redeliveries_stay_silent_after_their_envelope_expired(rig: Rig) -> None:
    doc = rig.level(2, ttl_s=DAY)
    cmd = rig.sign("clip", ttl_s=300)
    assert rig.send(site_topic("level"), doc, retained=True).applied
    assert rig.send(CMD, cmd, retained=True).applied
    n = len(rig.events())
    rig.clock.advance(2 * DAY)  # both envelopes have expired since
    for topic, env in ((site_topic("level"), doc), (CMD, cmd)):
        out = rig.send(topic, env, retained=True)
        assert (out.result, out.reason) == ("ignored", "already_applied")
    assert len(rig.events()) == n


def test_a_retained_rejected_document_is_reported_once_per_process(rig: Rig) -> None:
    env = rig.level(1, key=SigningKey.generate("centre-evil"))
    first = rig.send(site_topic("level"), env, retained=True)
    assert first.result == "rejected" and len(first.events) == 1
    again = rig.send(site_topic("level"), env, retained=True)
    assert (again.result, again.reason) == ("ignored", "rejected_before")
    assert len(rig.events("command")) == 1


def test_empty_retained_payload_is_a_cleared_document_and_silent(rig: Rig) -> None:
    assert rig.send(site_topic("level"), rig.level(1)).applied
    before, n = rig.snapshot(), len(rig.events())
    for topic in (site_topic("level"), unit_topic("cards"), CMD):
        out = rig.send(topic, b"", retained=True)
        assert (out.result, out.reason) == ("ignored", "empty")
    assert rig.snapshot() == before and len(rig.events()) == n and rig.level_now() == 1


def test_site_documents_for_other_units_are_ignored_silently(rig: Rig) -> None:
    before = rig.snapshot()
    for env in (rig.level(1, units=[OTHER]), rig.sign("snapshot", units=[OTHER], ttl_s=300)):
        topic = site_topic("level") if env["name"] == "level" else SITE_CMD
        out = rig.send(topic, env, retained=True)
        assert (out.result, out.reason) == ("ignored", "not_for_us")
    # Even unsigned: every other unit of the site sees the same message.
    env = rig.level(1, units=[OTHER])
    del env["sig"]
    assert rig.proc.handle(site_topic("level"), json.dumps(env).encode()).reason == "not_for_us"
    assert rig.snapshot() == before and rig.events() == []


def test_an_older_desired_document_is_rejected_as_a_replay(rig: Rig) -> None:
    old = rig.level(1, ttl_s=HOUR)
    rig.clock.advance(60)
    new = rig.level(2, ttl_s=HOUR)
    assert rig.send(site_topic("level"), new).applied
    before = rig.snapshot()
    assert_rejected(rig, rig.send(site_topic("level"), old), "older_document", before)
    # The same issued_at with another id is not newer either.
    same = rig.level(1, issued_ms=rig.clock.wall_ms())
    assert_rejected(rig, rig.send(site_topic("level"), same), "older_document", before)
    assert rig.level_now() == 2


def test_an_earlier_document_replayed_after_a_newer_one_is_a_replay(rig: Rig) -> None:
    first = rig.level(1)
    assert rig.send(site_topic("level"), first).applied
    rig.clock.advance(60)
    assert rig.send(site_topic("level"), rig.level(2)).applied
    before = rig.snapshot()
    # The first one, republished on the unit's own topic (where nothing is older).
    assert_rejected(rig, rig.send(unit_topic("level"), first), "replay", before)


def test_the_rate_limit_holds_back_a_flood_of_rejections_and_counts_it(tmp_path: Path) -> None:
    r = make_rig(tmp_path)
    r.proc = CommandProcessor(r.config, r.journal, r.clock, reject_burst=5, reject_refill_s=2.0)
    try:
        outs = [r.proc.handle(site_topic("level"), b"garbage %d" % i) for i in range(12)]
        assert all(o.result == "rejected" and o.reason == "malformed" for o in outs)
        assert sum(1 for o in outs if o.events) == 5
        assert len(r.events("command")) == 5
        r.clock.advance(2.5)
        summary = r.proc.tick()
        assert len(summary) == 1
        assert summary[0].data["reason"] == "rate_limited"
        assert summary[0].data["suppressed"] == 7
        # A genuine command still gets through, and is journaled.
        assert r.send(site_topic("level"), r.level(1)).applied
        assert r.proc.counters["held_back"] == 7
        check_events(r.journal)
    finally:
        r.journal.close()


# -- unit and site scope, expiry -------------------------------------------------------------------


def test_newer_wins_across_unit_and_site_and_expiry_falls_back(rig: Rig) -> None:
    # Site: level 2 for a day. Then unit: level 1 for an hour.
    site = rig.level(2, ttl_s=DAY)
    assert rig.send(site_topic("level"), site).applied
    rig.clock.advance(60)
    unit = rig.level(1, ttl_s=HOUR, units=[UNIT])
    assert rig.send(unit_topic("level"), unit).applied
    assert rig.level_now() == 1
    # The hour passes: back to the site's level 2, said in a level event without `by`.
    rig.clock.advance(HOUR)
    events = rig.proc.tick()
    assert [e.data for e in events] == [{
        "level": 2, "previous": 1, "expires_at": site["args"]["expires_at"], "by": None,
        "source": site["id"], "scope": "site", "reason": "expired"}]
    assert rig.level_now() == 2 and rig.proc.status_fields()["level"] == 2
    # The day passes: back to the default.
    rig.clock.advance(DAY)
    events = rig.proc.tick()
    assert [e.data for e in events] == [{
        "level": 3, "previous": 2, "expires_at": None, "by": None, "source": None,
        "scope": None, "reason": "expired"}]
    assert rig.proc.tick() == []


def test_a_newer_site_document_overrides_a_unit_document(rig: Rig) -> None:
    assert rig.send(unit_topic("level"), rig.level(1, units=[UNIT])).applied
    rig.clock.advance(60)
    site = rig.level(2, ttl_s=HOUR)
    assert rig.send(site_topic("level"), site).applied
    assert rig.level_now() == 2
    # When the site's hour is over, the unit's own (no end) is in force again.
    rig.clock.advance(HOUR)
    (event,) = rig.proc.tick()
    assert event.data["level"] == 1 and event.data["by"] is None
    assert event.data["scope"] == "unit"


def test_an_older_document_of_the_other_scope_is_stored_for_later(rig: Rig) -> None:
    # After a reconnect the broker hands over both retained documents, newest first.
    unit = rig.level(1, units=[UNIT])                 # no end
    rig.clock.advance(60)
    site = rig.level(2, ttl_s=HOUR)
    assert rig.send(site_topic("level"), site, retained=True).applied
    out = rig.send(unit_topic("level"), unit, retained=True)
    assert out.applied and out.reason == "superseded"
    assert out.events[0].data["reason"] == "superseded"
    assert len(out.events) == 1          # the level did not change
    assert rig.level_now() == 2
    rig.clock.advance(HOUR)
    assert [e.data["level"] for e in rig.proc.tick()] == [1]


def test_a_document_whose_state_already_ended_still_replaces_the_older_one(rig: Rig) -> None:
    # Site: level 1 for 8 h. Then level 2 for 1 h, seen by this unit only 2 h later.
    assert rig.send(site_topic("level"), rig.level(1, ttl_s=8 * HOUR)).applied
    rig.clock.advance(60)
    late = rig.level(2, ttl_s=HOUR)
    rig.clock.advance(2 * HOUR)
    out = rig.send(site_topic("level"), late, retained=True)
    assert out.applied and out.reason == "ended"
    # The centre replaced level 1: the unit falls back to the default, not to level 1.
    assert rig.level_now() == 3
    assert out.events[1].data == {"level": 3, "previous": 1, "expires_at": None,
                                  "by": late["id"], "source": None, "scope": None,
                                  "reason": "command"}


def test_lights_override_applies_expires_and_is_exposed(rig: Rig) -> None:
    args = {"lights": {"warning": "strobe", "lightbox": "on"},
            "expires_at": rfc3339_ms(T0 + 2 * HOUR * 1000)}
    env = rig.sign("lights", args)
    out = rig.send(site_topic("lights"), env)
    assert out.applied and [e.kind for e in out.events] == ["command"]
    now = desired.current_lights_override(rig.journal, rig.clock)
    assert now.lights == {"warning": "strobe", "lightbox": "on"}
    assert now.expires_at == args["expires_at"] and now.by == env["id"]
    assert rig.journal.state_get("lights/override")["lights"] == args["lights"]
    assert rig.proc.status_fields()["lights_override"] == args["lights"]
    rig.clock.advance(2 * HOUR)
    assert desired.current_lights_override(rig.journal, rig.clock).lights == {}
    rig.proc.tick()
    assert rig.journal.state_get("lights/override") is None


def test_an_empty_lights_override_cancels_the_previous_one(rig: Rig) -> None:
    assert rig.send(site_topic("lights"), rig.sign("lights", {"lights": {"warning": "on"}}))\
        .applied
    rig.clock.advance(1)
    assert rig.send(site_topic("lights"), rig.sign("lights", {"lights": {}})).applied
    assert desired.current_lights_override(rig.journal, rig.clock).lights == {}


def test_card_list_applies_and_status_reports_its_version(rig: Rig) -> None:
    cards = [
        {"card": "14008EC793", "badge": "P-017", "role": "police"},
        {"card": "dec:0009357203", "badge": "X-1", "role": "patrol",
         "valid_from": "2026-11-01T00:00:00Z", "valid_to": "2027-01-01T00:00:00.000Z"},
        {"card": "w26:142,51091", "badge": "V-9", "role": "village"},
        {"card": "04A1B2C3D4E5F6", "badge": "P-018", "role": "police"},
    ]
    env = rig.sign("cards", {"version": 7, "cards": cards}, ttl_s=365 * DAY)
    assert rig.send(site_topic("cards"), env).applied
    assert rig.proc.status_fields()["cards_version"] == 7
    held = desired.current_cards(rig.journal)
    assert held is not None and held["version"] == 7 and held["by"] == env["id"]
    assert rig.journal.state_get("cards")["version"] == 7  # what the uplink's birth reads
    assert find_card(held, "14008EC793")["badge"] == "P-017"
    assert find_card(held, "00008EC793")["badge"] == "X-1"     # 0x8EC793 == 9357203
    assert find_card(held, "AB008EC793")["badge"] == "X-1"     # only the low 32 bits count
    assert find_card(held, "FF008EC793") is not None
    w26 = (142 << 16) | 51091
    assert find_card(held, f"{0x55000000 | w26:010X}")["badge"] == "V-9"
    assert find_card(held, "04A1B2C3D4E5F6")["badge"] == "P-018"
    assert find_card(held, "1400000000") is None
    # A newer unit list wins; the older site list stays stored.
    rig.clock.advance(60)
    mine = rig.sign("cards", {"version": 8, "cards": cards[:1]}, units=[UNIT])
    assert rig.send(unit_topic("cards"), mine).applied
    assert rig.proc.status_fields()["cards_version"] == 8


def test_a_card_list_with_auxiliaries_and_a_leader_applies(rig: Rig) -> None:
    cards = [
        {"card": "14008EC793", "badge": "P-001", "role": "police", "leader": True},
        {"card": "dec:0000001111", "badge": "A-7", "role": "auxiliary"},
        {"card": "w26:1,2222", "badge": "P-017", "role": "police", "leader": False},
    ]
    env = rig.sign("cards", {"version": 3, "cards": cards}, ttl_s=365 * DAY)
    assert rig.send(site_topic("cards"), env).applied
    held = desired.current_cards(rig.journal)
    assert held is not None and held["version"] == 3
    assert find_card(held, "14008EC793") == cards[0]
    assert find_card(held, f"{1111:010X}")["role"] == "auxiliary"
    assert rig.proc.status_fields()["cards_version"] == 3


def test_a_leader_who_is_not_police_is_rejected_with_the_entry_named(rig: Rig) -> None:
    cards = [{"card": "14008EC793", "badge": "P-001", "role": "police", "leader": True},
             {"card": "0000000002", "badge": "V-2", "role": "village", "leader": True}]
    env = rig.sign("cards", {"version": 4, "cards": cards})
    before = rig.snapshot()
    out = rig.send(site_topic("cards"), json.dumps(env).encode())
    data = assert_rejected(rig, out, "bad_args", before)
    assert "cards[1]" in data["detail"] and "leader must be police" in data["detail"]
    assert desired.current_cards(rig.journal) is None


def test_card_matching_forms() -> None:
    assert card_matches("14008EC793", "14008EC793")
    assert not card_matches("14008EC793", "14008EC794")
    assert card_matches("dec:0009357203", "14008EC793")
    assert card_matches("w26:142,51091", "14008EC793")
    assert not card_matches("w26:141,51091", "14008EC793")
    assert not card_matches("dec:0009357203", "zz")
    # Exact matches win over number forms.
    cards = {"cards": [{"card": "dec:0009357203", "badge": "dec"},
                       {"card": "14008EC793", "badge": "hex"}]}
    assert find_card(cards, "14008EC793")["badge"] == "hex"


@pytest.mark.parametrize(("form", "ok"), [
    ("14008EC793", True), ("04A1B2C3", True), ("04A1B2C3D4E5F6", True),
    ("04A1B2C3D4E5F6A7B8C9", True), ("14008ec793", False), ("14008EC79", False),
    ("dec:0009357203", True), ("dec:4294967295", True), ("dec:4294967296", False),
    ("dec:123", False), ("w26:255,65535", True), ("w26:256,1", False), ("w26:1,65536", False),
    ("w26:1", False), ("", False),
])
def test_card_forms(form: str, ok: bool) -> None:
    assert desired.card_form_ok(form) is ok


# -- one-shot actions and the inbox ----------------------------------------------------------------


def test_one_shot_actions_reach_the_inbox_of_their_daemon(rig: Rig) -> None:
    sent = [rig.sign("snapshot", {"camera": "front"}, ttl_s=300),
            rig.sign("lights.test", {"lights": ["warning"], "seconds": 10}, ttl_s=300),
            rig.sign("clip", {"seconds": 20}, ttl_s=300),
            rig.sign("rebirth", ttl_s=300)]
    for env in sent:
        out = rig.send(SITE_CMD if env["name"] == "clip" else CMD, env)
        assert out.applied and out.events[0].data["name"] == env["name"]
    camera = InboxReader(rig.journal, "camera", ["snapshot", "clip"])
    station = InboxReader(rig.journal, "station", ["lights.test"])
    assert [(e.name, e.args) for e in camera.pending()] == [
        ("snapshot", {"camera": "front"}), ("clip", {"seconds": 20})]
    assert [(e.name, e.args) for e in station.pending()] == [
        ("lights.test", {"lights": ["warning"], "seconds": 10})]
    first = camera.pending()[0]
    camera.done(first)
    assert [e.name for e in camera.pending()] == ["clip"]
    # The position is in the journal: a restarted camera does not take the snapshot again.
    rig.restart()
    camera = InboxReader(rig.journal, "camera", ["snapshot", "clip"])
    assert [e.name for e in camera.wait(0.1)] == ["clip"]


def test_rebirth_asks_the_uplink_to_publish_its_status_again(rig: Rig) -> None:
    assert not rig.proc.take_rebirth()
    assert rig.send(SITE_CMD, rig.sign("rebirth", ttl_s=300)).applied
    assert rig.rebirths == [1]
    assert rig.proc.take_rebirth() and not rig.proc.take_rebirth()


def test_inbox_reader_wait_returns_when_a_command_arrives(rig: Rig) -> None:
    camera = InboxReader(rig.journal, "camera", ["snapshot"])
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.extend(camera.wait(10.0)))
    t.start()
    assert rig.send(CMD, rig.sign("snapshot", ttl_s=300)).applied
    t.join(10)
    assert not t.is_alive() and [e.name for e in got] == ["snapshot"]


# -- restarts -----------------------------------------------------------------------------------


def test_desired_state_and_replay_protection_survive_a_restart(rig: Rig) -> None:
    level = rig.level(1, ttl_s=6 * HOUR)
    cmd = rig.sign("snapshot", ttl_s=300)
    older = rig.level(2, issued_ms=T0 - 1000)
    assert rig.send(site_topic("level"), level, retained=True).applied
    assert rig.send(CMD, cmd).applied
    rig.send(site_topic("cards"), rig.sign("cards", {"version": 3, "cards": []}))
    rig.restart()
    assert rig.level_now() == 1
    assert rig.proc.status_fields() == {"level": 1, "cards_version": 3, "lights_override": None}
    before = rig.snapshot()
    # The broker redelivers the retained document on reconnect: silent.
    out = rig.send(site_topic("level"), level, retained=True)
    assert (out.result, out.reason) == ("ignored", "already_applied")
    assert_rejected(rig, rig.send(CMD, cmd), "replay", before)
    assert_rejected(rig, rig.send(site_topic("level"), older), "older_document", before)
    # Expiry still happens after the restart.
    rig.clock.advance(6 * HOUR)
    assert [e.data["level"] for e in rig.proc.tick()] == [3]


def test_a_level_change_cut_short_by_a_crash_is_announced_on_the_next_tick(rig: Rig) -> None:
    env = rig.level(1)
    doc = {"id": env["id"], "name": "level", "scope": "site", "args": env["args"],
           "issued_at": env["issued_at"], "issued_ms": T0, "expires_ms": None,
           "key": "centre-test"}
    # The command event and the document are on disk; the level event is not.
    rig.journal.append("command", {"command": env["id"], "name": "level",
                                   "result": "applied", "reason": None},
                       state={"desired/level/site": doc, "desired/level/ids": [env["id"]]})
    rig.restart()
    (event,) = rig.proc.tick()
    assert event.data["level"] == 1 and event.data["by"] == env["id"]
    assert rig.proc.tick() == []


def test_a_failing_journal_fails_the_message_without_raising(rig: Rig) -> None:
    env = rig.level(1)
    rig.journal.close()
    out = rig.proc.handle(site_topic("level"), json.dumps(env).encode())
    assert (out.result, out.reason) == ("failed", "journal_error")
    assert rig.proc.tick() == []
    rig.restart()


# -- time without a synchronised clock ----------------------------------------------------------


def test_unsynced_1970_clock_accepts_current_messages(unsynced: Rig) -> None:
    r = unsynced
    now = T0
    env = r.level(1, issued_ms=now, ttl_s=6 * HOUR)
    out = r.send(site_topic("level"), env)
    assert out.applied and r.level_now() == 1
    # The authentic message shows the clock is behind: the anchor moves to its issue time.
    anchor = r.journal.state_get("clock/anchor")
    assert anchor["ms"] == now and anchor["source"] == "command"
    cmd = r.sign("snapshot", issued_ms=now, ttl_s=300)
    assert r.send(CMD, cmd).applied


def test_unsynced_clock_far_ahead_does_not_expire_current_messages(tmp_path: Path) -> None:
    ahead = ManualClock(wall_ms=T0 + 400 * DAY * 1000, synced=False)
    r = make_rig(tmp_path, clock=ahead)
    try:
        env = r.level(1, issued_ms=T0, ttl_s=HOUR)
        assert r.send(site_topic("level"), env).applied
        assert r.level_now() == 1
        check_events(r.journal)
    finally:
        r.journal.close()


def test_unsynced_clock_still_refuses_replays_and_older_documents(unsynced: Rig) -> None:
    r = unsynced
    cmd = r.sign("clip", issued_ms=T0, ttl_s=300)
    new = r.level(2, issued_ms=T0 + 60_000)
    old = r.level(1, issued_ms=T0)
    assert r.send(CMD, cmd).applied
    assert r.send(site_topic("level"), new).applied
    before = r.snapshot()
    assert_rejected(r, r.send(CMD, cmd), "replay", before)
    assert_rejected(r, r.send(site_topic("level"), old), "older_document", before)


def test_unsynced_clock_rejects_what_is_provably_expired(unsynced: Rig) -> None:
    r = unsynced
    assert r.send(site_topic("level"), r.level(2, issued_ms=T0)).applied
    # The anchor says it is at least T0 now; a command that ended before T0 is expired.
    stale = r.sign("snapshot", issued_ms=T0 - 3600_000, ttl_s=300)
    before = r.snapshot()
    assert_rejected(r, r.send(CMD, stale), "expired", before)
    # And boot-relative time carries the anchor forward.
    r.clock.advance(600)
    later = r.sign("snapshot", issued_ms=T0, ttl_s=300)
    before = r.snapshot()
    assert_rejected(r, r.send(CMD, later), "expired", before)


def test_unsynced_level_expires_by_boot_relative_time(unsynced: Rig) -> None:
    r = unsynced
    assert r.send(site_topic("level"), r.level(1, issued_ms=T0, ttl_s=6 * HOUR)).applied
    r.clock.advance(6 * HOUR - 10)
    assert r.proc.tick() == [] and r.level_now() == 1
    r.clock.advance(10)
    assert [e.data["level"] for e in r.proc.tick()] == [3]


def test_after_an_unsynced_reboot_a_level_ends_late_rather_than_early(unsynced: Rig) -> None:
    r = unsynced
    assert r.send(site_topic("level"), r.level(1, issued_ms=T0, ttl_s=HOUR)).applied
    r.clock.advance(20 * 60)
    r.proc.tick()                                 # anchor written every 5 minutes
    assert r.journal.state_get("clock/anchor")["ms"] >= T0 + 15 * 60_000
    # Power cut; the Pi comes back with its 1970 clock and no network time.
    r.clock.reboot("00000000-0000-4000-8000-000000000002", monotonic=5.0)
    r.clock.set_wall(5_000)
    r.restart()
    r.proc.tick()
    # How long the power was off is unknown: the level stays until time is proven ...
    r.clock.advance(30 * 60)
    r.proc.tick()
    assert r.level_now() == 1
    r.clock.advance(15 * 60)
    # ... by boot-relative time since the reboot (20 + 45 minutes > 1 hour) ...
    assert [e.data["level"] for e in r.proc.tick()] == [3]


def test_after_an_unsynced_reboot_the_centre_is_not_locked_out(unsynced: Rig) -> None:
    r = unsynced
    assert r.send(site_topic("level"), r.level(1, issued_ms=T0, ttl_s=HOUR)).applied
    r.clock.reboot("00000000-0000-4000-8000-000000000002", monotonic=5.0)
    r.restart()
    r.proc.tick()
    # A week later, the clock still in 1970: new messages apply at once ...
    week = T0 + 7 * DAY * 1000
    out = r.send(site_topic("level"), r.level(2, issued_ms=week))
    assert out.applied and r.level_now() == 2
    assert r.send(CMD, r.sign("rebirth", issued_ms=week, ttl_s=300)).applied
    # ... but one message's word is not evidence enough to move the bound a week (the
    # centre's clock may be the wrong one): it stays where the unit's evidence puts it.
    assert r.journal.state_get("clock/anchor")["ms"] < T0 + HOUR * 1000
    stale = r.sign("snapshot", issued_ms=T0 - HOUR * 1000, ttl_s=300)
    before = r.snapshot()
    assert_rejected(r, r.send(CMD, stale), "expired", before)


def test_ntp_sync_takes_over_from_the_anchor(unsynced: Rig) -> None:
    r = unsynced
    assert r.send(site_topic("level"), r.level(1, issued_ms=T0, ttl_s=HOUR)).applied
    r.clock.set_wall(T0 + 2 * HOUR * 1000, synced=True)
    assert [e.data["level"] for e in r.proc.tick()] == [3]
    assert r.journal.state_get("clock/anchor")["source"] == "clock"


def test_a_message_far_ahead_of_an_unsynced_clock_means_the_clock_is_behind(
        unsynced: Rig) -> None:
    r = unsynced
    far = T0 + 30 * DAY * 1000
    assert r.send(site_topic("level"), r.level(2, issued_ms=far)).applied
    assert r.journal.state_get("clock/anchor")["ms"] == far


def test_synced_clock_rejects_a_message_from_the_future(rig: Rig) -> None:
    before = rig.snapshot()
    out = rig.send(site_topic("level"), rig.level(1, issued_ms=T0 + HOUR * 1000))
    assert_rejected(rig, out, "not_yet_valid", before)
    # Within the allowed skew it applies.
    assert rig.send(site_topic("level"), rig.level(1, issued_ms=T0 + 60_000)).applied


def test_a_future_document_from_a_wrong_centre_clock_does_not_lock_the_topic(
        unsynced: Rig) -> None:
    r = unsynced
    # The centre's clock was a year ahead when it signed this; the unit had no clock.
    wrong = r.level(1, issued_ms=T0 + 365 * DAY * 1000)
    assert r.send(site_topic("level"), wrong).applied
    # NTP arrives; the centre's clock is fixed; its next document is "older".
    r.clock.set_wall(T0, synced=True)
    r.proc.tick()
    fixed = r.level(2, issued_ms=T0)
    out = r.send(site_topic("level"), fixed)
    assert out.applied and r.level_now() == 2


# -- fuzz ------------------------------------------------------------------------------------------


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)
_field_names = st.sampled_from(["id", "name", "args", "target", "issued_at", "expires_at",
                                "key", "sig", "x"])
_topics = st.sampled_from([site_topic("level"), unit_topic("cards"), site_topic("lights"),
                           CMD, SITE_CMD, topics.desired(SITE, OTHER, "level"), "garbage",
                           "xunfang/v1/zhuantang/zt-pp-03/ack"])


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = make_rig(tmp_path_factory.mktemp("fuzz"))
    assert r.send(site_topic("level"), r.level(2)).applied
    r.proc = CommandProcessor(r.config, r.journal, r.clock, reject_burst=10**9)
    yield r
    check_events(r.journal)
    r.journal.close()


def _assert_handled_without_change(r: Rig, topic: str, payload: bytes, retained: bool) -> None:
    before = r.snapshot()
    out = r.proc.handle(topic, payload, retained)
    assert out.result in ("rejected", "ignored")
    assert out.reason in REASONS
    assert r.snapshot() == before


@FUZZ
@given(topic=_topics, payload=st.binary(max_size=300), retained=st.booleans())
def test_fuzz_random_bytes_never_raise_and_change_nothing(
        fuzz_rig: Rig, topic: str, payload: bytes, retained: bool) -> None:
    _assert_handled_without_change(fuzz_rig, topic, payload, retained)


@FUZZ
@given(topic=_topics, value=_json_values, retained=st.booleans())
def test_fuzz_random_json_never_raises_and_changes_nothing(
        fuzz_rig: Rig, topic: str, value: Any, retained: bool) -> None:
    _assert_handled_without_change(fuzz_rig, topic, json.dumps(value).encode(), retained)


@FUZZ
@given(topic=_topics, name=st.sampled_from(["level", "cards", "lights", "snapshot", "ack"]),
       field_name=_field_names, value=_json_values, drop=st.booleans(), retained=st.booleans())
def test_fuzz_altered_signed_envelopes_are_rejected_and_change_nothing(
        fuzz_rig: Rig, topic: str, name: str, field_name: str, value: Any, drop: bool,
        retained: bool) -> None:
    r = fuzz_rig
    env = r.sign(name, {"level": 1} if name == "level" else {}, id="fuzz0001")
    if drop:
        if field_name not in env:
            return
        del env[field_name]
    else:
        if env.get(field_name) == value:
            return
        env[field_name] = value
    _assert_handled_without_change(r, topic, json.dumps(env).encode(), retained)
