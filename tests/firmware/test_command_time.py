"""What one message may do to the unit's time and ordering marks, and replays for ever.

A document signed by a centre whose clock is wrong must not lock a unit out
(docs/security.md, "What the unit believes about time"), and an old document
or command must stay a replay however many newer ones came since. Same rig
as ``test_commands.py``: a real processor over a real journal file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_py import desired
from firmware_py.clock import ManualClock, rfc3339_ms
from firmware_py.patrol import ACCEPTED, check_card
from tests.firmware.test_commands import (
    CMD,
    DAY,
    HOUR,
    SITE_CMD,
    T0,
    UNIT,
    Rig,
    assert_rejected,
    check_events,
    make_rig,
    site_topic,
    unit_topic,
)

Y2099 = 4_070_908_800_000           # 2099-01-01T00:00:00Z
CARD = "14008EC793"


@pytest.fixture
def unsynced(tmp_path: Path) -> Iterator[Rig]:
    """A Pi without RTC and without NTP: the clock says 1970 and is not synchronised."""
    r = make_rig(tmp_path, clock=ManualClock(wall_ms=5_000, monotonic=5.0, synced=False))
    yield r
    check_events(r.journal)
    for j in r.journals:
        j.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    check_events(r.journal)
    for j in r.journals:
        j.close()


def lower_bound(r: Rig) -> int | None:
    return desired.journal_time_view(r.journal, r.clock).lower_ms


def card_decision(r: Rig) -> str:
    view = desired.journal_time_view(r.journal, r.clock)
    return check_card(desired.current_cards(r.journal), CARD, view).decision


def send_cards(r: Rig, issued_ms: int) -> None:
    """A card list whose one card is valid for 30 days from T0: it also anchors time at T0."""
    cards = [{"card": CARD, "badge": "P-017", "role": "police",
              "valid_to": rfc3339_ms(T0 + 30 * DAY * 1000)}]
    env = r.sign("cards", {"version": 1, "cards": cards}, issued_ms=issued_ms, ttl_s=365 * DAY)
    assert r.send(site_topic("cards"), env).applied


# -- a document from a wrong centre clock ---------------------------------------------------------


def test_a_document_dated_2099_is_refused_and_moves_nothing(unsynced: Rig) -> None:
    r = unsynced
    send_cards(r, T0)
    r.clock.advance(60)
    before = r.snapshot()
    wrong = r.level(1, issued_ms=Y2099)                    # level 1, no end, on _all
    data = assert_rejected(r, r.send(site_topic("level"), wrong), "from_future", before)
    assert "2099" in data["detail"]
    # The lower bound on true time stays where the evidence puts it ...
    bound = lower_bound(r)
    assert bound is not None and T0 <= bound < T0 + HOUR * 1000
    assert r.level_now() == 3
    # ... so later commands are current, and the card is still valid.
    assert r.send(CMD, r.sign("snapshot", issued_ms=T0 + 120_000, ttl_s=300)).applied
    assert r.send(site_topic("level"), r.level(2, issued_ms=T0 + 180_000)).applied
    assert r.level_now() == 2
    assert card_decision(r) == ACCEPTED


def test_a_document_dated_2099_is_refused_by_a_unit_that_knows_no_time_yet(
        unsynced: Rig) -> None:
    r = unsynced
    before = r.snapshot()
    assert_rejected(r, r.send(site_topic("level"), r.level(1, issued_ms=Y2099)), "from_future",
                    before)
    assert lower_bound(r) is None
    # The first current message is believed, as before.
    assert r.send(site_topic("level"), r.level(2, issued_ms=T0)).applied
    assert lower_bound(r) == T0


def test_a_document_months_ahead_applies_but_does_not_move_the_bound(unsynced: Rig) -> None:
    r = unsynced
    send_cards(r, T0)
    # The centre's clock is three months fast when the operator raises the level.
    ahead = r.level(1, issued_ms=T0 + 90 * DAY * 1000)
    out = r.send(site_topic("level"), ahead)
    assert out.applied and r.level_now() == 1
    bound = lower_bound(r)
    assert bound is not None and bound < T0 + HOUR * 1000
    # The centre's clock is put right: its commands are current, the card still valid.
    r.clock.advance(600)
    assert r.send(CMD, r.sign("snapshot", issued_ms=T0 + 600_000, ttl_s=300)).applied
    assert card_decision(r) == ACCEPTED
    # Its next level on the same topic replaces the one from the future, without NTP:
    # the unit's evidence confirms the new one, not the old one.
    fixed = r.level(3, issued_ms=T0 + 660_000)
    r.clock.advance(60)
    out = r.send(site_topic("level"), fixed)
    assert out.applied and out.reason is None and r.level_now() == 3


def test_after_ntp_a_newer_document_outranks_one_from_the_future(unsynced: Rig) -> None:
    r = unsynced
    send_cards(r, T0)
    ahead = r.level(1, issued_ms=T0 + 90 * DAY * 1000)      # site-wide, no end
    assert r.send(site_topic("level"), ahead).applied
    # NTP arrives: it is two hours after T0.
    r.clock.set_wall(T0 + 2 * HOUR * 1000, synced=True)
    r.proc.tick()
    assert lower_bound(r) is not None
    # The operator sets this unit's level: it is newer than anything real, so it wins.
    mine = r.level(2, units=[UNIT])
    out = r.send(unit_topic("level"), mine)
    assert out.applied and out.reason is None
    assert r.level_now() == 2
    # And a newer site-wide document replaces the one from the future on its topic.
    r.clock.advance(60)
    assert r.send(site_topic("level"), r.level(3, ttl_s=HOUR)).applied
    assert r.level_now() == 3
    assert card_decision(r) == ACCEPTED


def test_a_synchronised_clock_heals_a_unit_the_old_rules_locked_out(unsynced: Rig) -> None:
    """State as a unit that applied a 2099 document before this rule wrote it."""
    r = unsynced
    wrong = r.level(1, issued_ms=Y2099)
    doc = {"id": wrong["id"], "name": "level", "scope": "site", "args": wrong["args"],
           "issued_at": wrong["issued_at"], "issued_ms": Y2099, "expires_ms": None,
           "key": "centre-test", "received_ms": 5_000, "received_synced": False}
    r.journal.append("command", {"command": wrong["id"], "name": "level", "result": "applied",
                                 "reason": None},
                     state={"desired/level/site": doc, "desired/level/ids": [wrong["id"]],
                            "clock/anchor": {"ms": Y2099, "boot_id": r.clock.boot_id(),
                                             "mono": r.clock.monotonic(),
                                             "source": "command"}})
    r.restart()
    r.proc.tick()
    assert r.level_now() == 1
    r.clock.set_wall(T0, synced=True)
    r.proc.tick()
    assert lower_bound(r) is not None and lower_bound(r) <= T0 + 60_000
    assert r.send(CMD, r.sign("rebirth", ttl_s=300)).applied
    assert r.send(unit_topic("level"), r.level(2, units=[UNIT])).applied
    assert r.level_now() == 2


def test_a_document_from_the_future_lasts_as_long_as_it_says(unsynced: Rig) -> None:
    r = unsynced
    send_cards(r, T0)
    ahead = r.level(1, issued_ms=T0 + 10 * DAY * 1000, ttl_s=HOUR)
    assert r.send(site_topic("level"), ahead).applied and r.level_now() == 1
    r.clock.advance(HOUR - 10)
    assert r.proc.tick() == [] and r.level_now() == 1
    r.clock.advance(10)
    assert [e.data["level"] for e in r.proc.tick()] == [3]


def test_after_a_long_power_cut_a_new_site_level_still_outranks_an_old_unit_one(
        unsynced: Rig) -> None:
    r = unsynced
    assert r.send(unit_topic("level"), r.level(2, issued_ms=T0, units=[UNIT])).applied
    # Off for three days; no NTP at this site. The operator raised the site's level.
    r.clock.reboot("00000000-0000-4000-8000-000000000002", monotonic=5.0)
    r.restart()
    r.proc.tick()
    late = r.level(1, issued_ms=T0 + 3 * DAY * 1000)
    assert r.send(site_topic("level"), late, retained=True).applied
    assert r.level_now() == 1


# -- replays for ever -----------------------------------------------------------------------------


def test_an_old_document_replayed_after_200_newer_ones_is_a_replay(rig: Rig) -> None:
    old = rig.level(1)                                   # level 1, no end, for every unit
    assert rig.send(unit_topic("level"), old).applied
    for _ in range(200):
        rig.clock.advance(1)
        assert rig.send(unit_topic("level"), rig.level(2, ttl_s=HOUR)).applied
    before = rig.snapshot()
    commands = len(rig.events("command"))
    out = rig.send(site_topic("level"), old)
    assert_rejected(rig, out, "replay", before)
    assert len(rig.events("command")) == commands + 1
    # When the operator's level ends, the default follows, not the replayed level 1.
    rig.clock.advance(HOUR)
    rig.proc.tick()
    assert rig.level_now() == 3
    # The record stays small.
    seen = rig.journal.state_get("desired/level/seen")
    assert len(seen["ids"]) <= desired.SEEN_KEPT


def test_an_old_command_stays_a_replay_after_many_newer_ones(rig: Rig) -> None:
    first = rig.sign("rebirth", ttl_s=HOUR)
    unseen_old = rig.sign("rebirth", ttl_s=HOUR)           # signed then, never delivered
    assert rig.send(CMD, first).applied
    for _ in range(200):
        rig.clock.advance(1)
        assert rig.send(SITE_CMD, rig.sign("rebirth", ttl_s=HOUR)).applied
    # Even where the inbox no longer holds the id, the record's floor refuses both.
    with sqlite3.connect(rig.path) as db:
        db.execute("DELETE FROM inbox WHERE command_id IN (?, ?)", (first["id"], unseen_old["id"]))
    for env in (first, unseen_old):
        before = rig.snapshot()
        assert_rejected(rig, rig.send(CMD, env), "replay", before)
    seen = rig.journal.state_get("cmd/seen")
    assert len(seen["ids"]) <= desired.SEEN_KEPT


def test_a_command_valid_for_more_than_a_day_is_malformed(rig: Rig) -> None:
    before = rig.snapshot()
    out = rig.send(CMD, rig.sign("snapshot", ttl_s=2 * DAY))
    data = assert_rejected(rig, out, "malformed", before)
    assert "24 h" in data["detail"]
    assert rig.send(CMD, rig.sign("snapshot", ttl_s=DAY)).applied


def test_ids_remembered_before_the_replay_record_are_still_refused(rig: Rig) -> None:
    """A journal written by an earlier version holds a plain list of document ids."""
    first = rig.level(1)
    assert rig.send(site_topic("level"), first).applied
    rig.clock.advance(60)
    assert rig.send(site_topic("level"), rig.level(2)).applied
    rig.journal.state_set("desired/level/seen", None)
    rig.journal.state_set("desired/level/ids", [first["id"]])
    before = rig.snapshot()
    assert_rejected(rig, rig.send(unit_topic("level"), first), "replay", before)
    rig.clock.advance(60)
    assert rig.send(unit_topic("level"), rig.level(3, units=[UNIT])).applied
    assert rig.journal.state_get("desired/level/ids") is None
    seen = rig.journal.state_get("desired/level/seen")
    assert first["id"] in [entry[0] for entry in seen["ids"]]


def test_a_synchronised_clock_clamps_a_replay_floor_in_its_future(rig: Rig) -> None:
    """A floor raised while the unit had no clock, by commands of a centre whose clock
    was wrong, does not refuse every command once the clock is synchronised."""
    rig.journal.state_set("cmd/seen", {"floor_ms": Y2099, "ids": []})
    rig.restart()
    rig.proc.tick()
    assert rig.send(CMD, rig.sign("rebirth", ttl_s=300)).applied
