"""The journal's promises: durable appends, sequence numbers never reused, pruning
only what the centre acknowledged, and concurrent writers in several processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from firmware_py.clock import ManualClock
from firmware_py.exc import JournalCorrupt, JournalError, JournalWriteFailed
from firmware_py.journal import Journal
from tests.support.schemas import validate

UNIT, SITE = "zt-pp-03", "zhuantang"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall_ms=1_795_000_000_123, monotonic=42.5, synced=False,
                       boot_id="3f1c2d4e-0000-4000-8000-00000000beef")


@pytest.fixture
def journal(tmp_path: Path, clock: ManualClock) -> Journal:
    j = Journal(tmp_path / "journal.db", unit=UNIT, site=SITE, clock=clock)
    yield j
    j.close()


def test_new_journal_is_owner_only_wal_and_has_a_random_id(tmp_path: Path) -> None:
    path = tmp_path / "data" / "journal.db"
    with Journal(path, unit=UNIT, site=SITE) as j:
        j.append("unit", {"state": "started", "version": "t", "config_sha256": ""})
        assert len(j.journal_id) == 16 and int(j.journal_id, 16) >= 0
        assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
            mode = stat.S_IMODE(os.stat(path.parent / name).st_mode)
            assert mode == 0o600, f"{name} has mode {oct(mode)}"
    with Journal(tmp_path / "other.db", unit=UNIT, site=SITE) as other:
        assert other.journal_id != j.journal_id
    with Journal(path, unit=UNIT, site=SITE) as again:
        assert again.journal_id == j.journal_id


def test_append_stamps_the_envelope_from_the_injected_clock(journal: Journal) -> None:
    event = journal.append("checkin", {"card": "14008EC793", "reader": "main",
                                       "decision": "accepted", "badge": "P-017",
                                       "role": "patrol", "visit": None})
    env = event.envelope()
    assert env["id"] == f"{UNIT}:{journal.journal_id}:1"
    assert env["seq"] == 1 and env["kind"] == "checkin"
    assert env["ts"] == "2026-11-18T11:06:40.123Z"
    assert env["mono"] == 42.5
    assert env["boot_id"] == "3f1c2d4e-0000-4000-8000-00000000beef"
    assert env["clock_synced"] is False
    assert "resent" not in env and event.envelope(resent=True)["resent"] is True
    validate(f"xunfang/v1/{SITE}/{UNIT}/events/checkin", env)
    stored = journal.event(1)
    assert stored is not None and stored.envelope() == env



def test_event_rows_are_the_events_with_their_data_as_stored(journal: Journal,
                                                             clock: ManualClock) -> None:
    journal.append("checkin", {"visit": None, "card": "14008EC793", "n": [1.5, 2]})
    clock.set_wall(1_800_000_000_000, synced=True)
    journal.append("alarm", {"source": "panic", "label": "东门"})
    journal.append("unit", {})
    rows = journal.event_rows_after(0)
    assert [r.to_event(journal.journal_id) for r in rows] == journal.events_after(0)
    # Compact, sorted keys, not ASCII-escaped: what append() wrote.
    assert [r.data_json for r in rows] == [
        '{"card":"14008EC793","n":[1.5,2],"visit":null}',
        '{"label":"东门","source":"panic"}',
        "{}",
    ]
    assert (rows[0].clock_synced, rows[1].clock_synced) == (0, 1)
    assert [r.seq for r in journal.event_rows_after(1, limit=1)] == [2]
    assert journal.event_rows_after(3) == []
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.event_rows_after(0)

def test_clock_sync_state_is_recorded_per_event(journal: Journal, clock: ManualClock) -> None:
    first = journal.append("unit", {"state": "started"})
    clock.set_wall(1_800_000_000_000, synced=True)
    second = journal.append("unit", {"state": "stopping"})
    assert (first.clock_synced, second.clock_synced) == (False, True)
    assert second.ts_ms - first.ts_ms == 1_800_000_000_000 - 1_795_000_000_123


def test_bad_kind_and_oversized_data_are_refused_and_nothing_is_written(journal: Journal) -> None:
    with pytest.raises(ValueError, match="kind"):
        journal.append("Check-In", {})
    with pytest.raises(ValueError, match="limit"):
        journal.append("checkin", {"blob": "x" * 70_000})
    assert journal.last_seq() == 0


def test_sequence_numbers_are_never_reused_after_pruning_everything(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, unit=UNIT, site=SITE) as j:
        for i in range(10):
            j.append("reader", {"i": i})
        j.mark_acked(10)
        assert j.prune(max_age_s=0) == 10
        assert j.count() == 0
    with Journal(path, unit=UNIT, site=SITE) as j:
        assert j.last_seq() == 10
        assert j.append("reader", {"i": 10}).seq == 11


def test_a_failed_transaction_does_not_consume_a_sequence_number(journal: Journal) -> None:
    journal.append("reader", {})
    with pytest.raises(RuntimeError), journal._write() as cur:
        cur.execute("INSERT INTO events (kind, unit, site, ts_ms, boot_id, mono, clock_synced,"
                    " data, recorded_at) VALUES ('x','u','s',0,'b',0,0,'{}',0)")
        raise RuntimeError("abort")
    assert journal.append("reader", {}).seq == 2


def test_disk_full_raises_write_failed_and_the_journal_recovers(journal: Journal) -> None:
    journal.append("reader", {"n": 0})
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
    # Cap the file at its current size: SQLite then fails exactly as on a full disk.
    journal._db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(JournalWriteFailed, match="full"):
        for i in range(1000):
            journal.append("reader", {"n": i, "pad": "y" * 2000})
    stored_before = journal.count()
    journal._db.execute("PRAGMA max_page_count=1073741823")
    event = journal.append("reader", {"after": True})
    assert event.seq == journal.last_seq() and journal.count() == stored_before + 1


def test_ack_only_moves_forward_and_never_past_the_last_event(journal: Journal) -> None:
    for _ in range(5):
        journal.append("reader", {})
    assert journal.mark_acked(3) is True
    assert journal.mark_acked(2) is False and journal.acked_seq() == 3
    with pytest.raises(ValueError, match="beyond"):
        journal.mark_acked(6)
    assert journal.pending_count() == 2
    oldest = journal.oldest_pending()
    assert oldest is not None and oldest.seq == 4


def test_cursors_are_per_consumer_and_monotonic(journal: Journal) -> None:
    journal.set_cursor("camera-checkins", 7)
    journal.set_cursor("camera-checkins", 4)
    journal.set_cursor("other", 1)
    assert journal.cursor("camera-checkins") == 7
    assert journal.cursor("other") == 1 and journal.cursor("never") == 0


def test_prune_by_age_removes_only_acknowledged_events(journal: Journal) -> None:
    for i in range(20):
        journal.append("reader", {"i": i})
    journal.mark_acked(12)
    assert journal.prune(max_age_s=3600) == 0  # all younger than an hour
    assert journal.prune(max_age_s=0) == 12
    assert journal.first_seq() == 13 and journal.count() == 8


def test_prune_by_size_stops_at_the_first_unacknowledged_event(journal: Journal) -> None:
    for i in range(600):
        journal.append("reader", {"i": i, "pad": "z" * 400})
    journal.mark_acked(200)
    big = journal.size_bytes()
    deleted = journal.prune(max_bytes=16 * 1024, batch=50)
    assert deleted == 200
    assert journal.first_seq() == 201 and journal.count() == 400
    assert journal.size_bytes() < big
    # Over the limit and nothing acknowledged left: nothing more goes.
    assert journal.prune(max_bytes=1) == 0 and journal.count() == 400


def test_inbox_keeps_each_command_once_with_its_event(journal: Journal) -> None:
    entry = journal.inbox_put("cmd-1", "snapshot", {"camera": "gate"}, event_kind="command",
                              event_data={"command": "cmd-1", "name": "snapshot",
                                          "result": "applied", "reason": None})
    assert entry is not None and entry.n == 1
    assert journal.inbox_put("cmd-1", "snapshot", {"camera": "gate"}, event_kind="command",
                             event_data={}) is None
    journal.inbox_put("cmd-2", "lights.test", {})
    assert [e.command_id for e in journal.inbox_after(0)] == ["cmd-1", "cmd-2"]
    assert [e.name for e in journal.inbox_after(0, names=["lights.test"])] == ["lights.test"]
    assert journal.inbox_seen("cmd-2") and not journal.inbox_seen("cmd-3")
    assert [e.kind for e in journal.events_after(0)] == ["command"]


def test_state_store_survives_reopen_and_commits_with_its_event(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, unit=UNIT, site=SITE) as j:
        j.state_set("level", {"level": 2, "expires_at": None})
        event = j.append("level", {"level": 1, "previous": 2, "expires_at": None, "by": "c1"},
                         state={"level": {"level": 1, "expires_at": None}, "gone": None})
        j.state_set("device/readers/main", {"state": "online"})
    with Journal(path, unit=UNIT, site=SITE) as j:
        assert j.state_get("level") == {"level": 1, "expires_at": None}
        assert j.state_get("missing", "default") == "default"
        assert j.state_items("device/") == {"device/readers/main": {"state": "online"}}
        assert j.event(event.seq).kind == "level"


def test_wait_sees_an_append_from_another_process(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, unit=UNIT, site=SITE) as j:
        assert j.wait(0, timeout=0.2) is False
        code = (f"from firmware_py.journal import Journal\n"
                f"Journal({str(path)!r}, unit={UNIT!r}, site={SITE!r}).append('reader', {{}})\n")
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            assert j.wait(0, timeout=20) is True
        finally:
            proc.wait(timeout=20)
        assert time.monotonic() - started < 20
        assert j.events_after(0)[0].kind == "reader"


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalCorrupt, match=r"garbage\.db"):
        Journal(garbage, unit=UNIT, site=SITE)
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(JournalCorrupt, match="not a xunfang journal"):
        Journal(foreign, unit=UNIT, site=SITE)


def test_close_is_safe_twice_and_a_closed_journal_says_so(journal: Journal) -> None:
    journal.close()
    journal.close()
    assert "closed" in repr(journal)
    with pytest.raises(JournalError, match="closed"):
        journal.append("reader", {})


# -- several processes, and crashes ----------------------------------------------------------


def _append_many(path: str, tag: str, count: int, barrier: multiprocessing.Barrier) -> None:
    with Journal(path, unit=UNIT, site=SITE) as j:
        barrier.wait(timeout=30)
        for i in range(count):
            j.append("reader", {"writer": tag, "i": i})


def test_three_processes_appending_get_distinct_gap_free_numbers(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path, unit=UNIT, site=SITE).close()
    per_writer = 150
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_append_many, args=(str(path), tag, per_writer, barrier))
             for tag in ("station", "camera", "uplink")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
        assert p.exitcode == 0
    with Journal(path, unit=UNIT, site=SITE) as j:
        events = j.events_after(0, limit=10_000)
    assert [e.seq for e in events] == list(range(1, 3 * per_writer + 1))
    for tag in ("station", "camera", "uplink"):
        mine = [e.data["i"] for e in events if e.data["writer"] == tag]
        assert mine == list(range(per_writer)), f"{tag} lost or reordered rows"


_CRASH_WRITER = textwrap.dedent("""
    import sys
    from firmware_py.journal import Journal
    j = Journal(sys.argv[1], unit="zt-pp-03", site="zhuantang")
    i = 0
    while True:
        e = j.append("checkin", {"i": i, "pad": "p" * (i % 700)})
        if i % 50 == 0:
            j.mark_acked(e.seq - 10) if e.seq > 10 else None
            j.prune(max_bytes=64 * 1024)
        # Only now, after append() returned, may the outside world know of it.
        sys.stdout.write(f"{e.seq} {i}\\n")
        sys.stdout.flush()
        i += 1
""")


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_mid_stream_loses_no_returned_event_and_reuses_no_number(
        tmp_path: Path, round_: int) -> None:
    path = tmp_path / "journal.db"
    confirmed: dict[int, int] = {}
    for attempt in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _CRASH_WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        target = 300 + 150 * round_
        for got, line in enumerate(proc.stdout, start=1):
            seq, i = map(int, line.split())
            assert seq not in confirmed, f"sequence number {seq} handed out twice"
            confirmed[seq] = i
            if got >= target:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Lines still buffered in the pipe were returned by append() too.
        for line in proc.stdout.read().splitlines():
            seq, i = map(int, line.split())
            confirmed[seq] = i
        with Journal(path, unit=UNIT, site=SITE) as j:
            assert j._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            acked = j.acked_seq()
            stored = {e.seq: e.data["i"] for e in j.events_after(0, limit=100_000)}
            for seq, i in confirmed.items():
                if seq > acked:
                    assert stored.get(seq) == i, f"confirmed event {seq} lost (attempt {attempt})"
            assert j.last_seq() >= max(confirmed)
    with Journal(path, unit=UNIT, site=SITE) as j:
        assert j.append("reader", {}).seq > max(confirmed)
    assert json.dumps(sorted(confirmed))  # numbers were unique across both runs


def test_a_corrupt_journal_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, unit=UNIT, site=SITE) as j:
        j.append("reader", {})
        old_id = j.journal_id
    # A mangled SD card: the header page overwritten.
    with open(path, "r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 256)
    j, aside = Journal.open_or_recover(path, unit=UNIT, site=SITE)
    with j:
        assert aside is not None and aside.name.startswith("journal.db.corrupt-")
        assert aside.exists(), "the damaged file is kept for forensics"
        assert j.journal_id != old_id
        (rebuilt,) = j.events_after(0)          # nothing could be read: it says so
        assert rebuilt.kind == "unit" and rebuilt.data["state"] == "journal_rebuilt"
        assert rebuilt.data["moved_to"] == aside.name and rebuilt.data["salvaged"] == 0
        validate("events/unit", rebuilt.data)
        assert j.append("reader", {}).id.startswith(f"{UNIT}:{j.journal_id}:")
    again, none = Journal.open_or_recover(path, unit=UNIT, site=SITE)
    with again:
        assert none is None and again.last_seq() == 2


# -- damage found while running or at start: salvage into a new journal -------------------


def _written_journal(path: Path, events: int = 3000, acked: int = 1000) -> str:
    """A journal as the unit writes it: alarms with a findable marker each, an ack, a
    state key, an inbox entry; checkpointed into the main file (a clean stop)."""
    with Journal(path, unit=UNIT, site=SITE) as j:
        for i in range(1, events + 1):
            j.append("alarm", {"source": "test", "state": "active", "mark": f"M{i:06d}",
                               "pad": "x" * 150})
        j.mark_acked(acked)
        j.state_set("level", {"level": 2, "by": "centre"})
        j.inbox_put("cmd-1", "lights.test", {"seconds": 5})
        j.checkpoint()
        return j.journal_id


def _rot_page_with(path: Path, seq: int) -> set[int]:
    """Overwrite the 4 KiB page holding event ``seq`` with garbage, as a dying SD card
    does; return the events that page held."""
    raw = path.read_bytes()
    page = raw.index(f"M{seq:06d}".encode()) // 4096
    held = {int(m) for m in __import__("re").findall(
        rb"M(\d{6})", raw[page * 4096:(page + 1) * 4096])}
    with open(path, "r+b") as f:
        f.seek(page * 4096)
        f.write(os.urandom(4096))
    return held


def _check_salvage(j: Journal, old_id: str, lost: set[int], aside: Path) -> None:
    events = {e.seq: e for e in j.events_after(0, limit=10_000)}
    rebuilt = next(e for e in events.values() if e.kind == "unit")
    assert rebuilt.data["state"] == "journal_rebuilt"
    assert rebuilt.data["previous_journal"] == old_id and rebuilt.data["moved_to"] == aside.name
    assert rebuilt.data["salvaged"] == 2000 - len(lost) and rebuilt.data["lost"] == len(lost)
    assert rebuilt.data["acked_seq"] == 1000 and rebuilt.data["last_seq"] == 3000
    assert rebuilt.data["salvaged_inbox"] == 1 and rebuilt.data["salvaged_state"] >= 1
    validate("events/unit", rebuilt.data)
    # Every unacknowledged event that could be read, with its own sequence number.
    alarms = {s: e for s, e in events.items() if e.kind == "alarm"}
    assert set(alarms) == set(range(1001, 3001)) - lost
    assert all(e.data["mark"] == f"M{s:06d}" for s, e in alarms.items())
    assert alarms[1001].data["salvaged_from"] == f"{UNIT}:{old_id}:1001"
    assert rebuilt.seq == 3001 and j.acked_seq() == 1000 and j.first_seq() == 1001
    assert j.state_get("level") == {"level": 2, "by": "centre"}
    assert [e.command_id for e in j.inbox_after(0)] == ["cmd-1"]
    new_entry = j.inbox_put("cmd-2", "lights.test", {"seconds": 1})
    assert new_entry is not None and new_entry.n == 2        # the inbox numbers go on too
    assert j.rebuilt is not None and j.rebuilt["lost"] == len(lost)
    assert aside.exists(), "the damaged file is kept for the centre to fetch"


def test_a_rotten_page_is_found_at_start_and_what_is_readable_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    old_id = _written_journal(path)
    lost = _rot_page_with(path, 2000)
    assert lost and min(lost) > 1000
    # It opens: only the check finds it.
    with Journal(path, unit=UNIT, site=SITE) as plain:
        assert plain.quick_check() is not None
    j, aside = Journal.open_or_recover(path, unit=UNIT, site=SITE,
                                       context={"component": "station"})
    with j:
        assert aside is not None and j.journal_id != old_id
        _check_salvage(j, old_id, lost, aside)
        assert j.append("reader", {}).seq == 3002      # numbers go on, never reused
    again, none = Journal.open_or_recover(path, unit=UNIT, site=SITE)
    with again:
        assert none is None and again.quick_check() is None


def test_a_statement_that_finds_damage_rebuilds_and_other_users_follow(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    old_id = _written_journal(path)
    reader = Journal(path, unit=UNIT, site=SITE)      # e.g. the uplink
    writer = Journal(path, unit=UNIT, site=SITE)      # e.g. the station
    try:
        lost = _rot_page_with(path, 2000)
        writer.append("reader", {"n": 1})             # lands after the page: still works
        # The next read crosses the rotten page: the journal is rebuilt under the call,
        # which is answered from the new journal.
        rows = reader.events_after(1000, limit=5000)
        aside = next(tmp_path.glob("journal.db.corrupt-*[!lmh]"))
        assert reader.journal_id != old_id
        assert [e.seq for e in rows if e.kind == "alarm"] == sorted(
            set(range(1001, 3001)) - lost)
        assert any(e.kind == "reader" and e.seq == 3001 for e in rows), "the later write too"
        # The other connection still has the old file open: its next write goes to the
        # new journal, not into the file moved aside.
        event = writer.append("checkin", {"card": "14008EC793"})
        assert writer.journal_id == reader.journal_id and event.seq == 3003
        assert reader.event(3003) is not None
        unit = [e for e in reader.events_after(0, limit=10_000) if e.kind == "unit"]
        assert len(unit) == 1 and unit[0].data["lost"] == len(lost)
        assert unit[0].data["moved_to"] == aside.name
    finally:
        reader.close()
        writer.close()


def test_a_full_disk_is_not_taken_for_damage(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    _written_journal(path, events=10, acked=0)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorcode = 4874  # type: ignore[attr-defined]  # SQLITE_IOERR_SHMSIZE
    malformed = sqlite3.DatabaseError("database disk image is malformed")
    malformed.sqlite_errorcode = sqlite3.SQLITE_CORRUPT  # type: ignore[attr-defined]
    from firmware_py.journal import is_corruption
    assert not is_corruption(full) and not is_corruption(io)
    assert is_corruption(malformed)
    wrapped = JournalWriteFailed("cannot append")
    wrapped.__cause__ = malformed
    assert is_corruption(wrapped)


def test_a_rotten_page_among_the_state_keys_loses_only_that_page(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, unit=UNIT, site=SITE) as j:
        for i in range(400):
            j.state_set(f"k/{i:04d}", {"mark": f"S{i:04d}", "pad": "y" * 200})
        j.append("reader", {})
        j.checkpoint()
    raw = path.read_bytes()
    page = raw.index(b"S0200") // 4096
    on_page = {int(m) for m in __import__("re").findall(rb"S(\d{4})",
                                                        raw[page * 4096:(page + 1) * 4096])}
    with open(path, "r+b") as f:
        f.seek(page * 4096)
        f.write(os.urandom(4096))
    j, aside = Journal.open_or_recover(path, unit=UNIT, site=SITE)
    with j:
        assert aside is not None
        kept = {int(k[2:]) for k in j.state_items("k/")}
        # Everything before the page (read forwards) and after it (read backwards).
        assert kept == set(range(400)) - on_page
        (rebuilt,) = [e for e in j.events_after(0) if e.kind == "unit"]
        assert rebuilt.data["state_lost"] is True
        assert rebuilt.data["salvaged_state"] == 400 - len(on_page)
        assert [e.kind for e in j.events_after(0)] == ["reader", "unit"]
