"""``xunfang report``'s inputs and errors: the ledger read read-only, the register, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from center.ledger import LedgerDB
from center.plan import load_plan
from center.report import ReportError, load_register, read_events

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "config" / "plan.toml"
XUNFANG = Path(sys.executable).parent / "xunfang"


def make_ledger(path: Path, site: str, events: list[tuple[str, int, str, str]]) -> Path:
    """A ledger database (the ledger's own schema) holding ``(unit, seq, kind, ts)`` events."""
    db = LedgerDB(path, site=site)
    with db.transaction() as cur:
        for unit, seq, kind, ts in events:
            journal = "00000000000000aa"
            envelope = {"v": 1, "id": f"{unit}:{journal}:{seq}", "unit": unit, "site": site,
                        "journal": journal, "seq": seq, "kind": kind, "ts": ts,
                        "clock_synced": True,
                        "data": {"level": 2} if kind == "level" else {"state": "started"}}
            cur.execute("INSERT INTO events (id, unit, journal, seq, kind, ts, received_ms, "
                        "resent, digest, envelope) VALUES (?, ?, ?, ?, ?, ?, 0, 0, '', ?)",
                        (envelope["id"], unit, journal, seq, kind, ts, json.dumps(envelope)))
    db.close()
    return path


def test_events_before_the_period_bring_the_level_and_the_last_sign_of_life(
        tmp_path: Path) -> None:
    db = make_ledger(tmp_path / "ledger.db", "zhuantang", [
        ("zt-pp-01", 1, "unit", "2026-10-01T00:00:00.000Z"),
        ("zt-pp-01", 2, "level", "2026-10-02T00:00:00.000Z"),
        ("zt-pp-01", 3, "reader", "2026-10-03T00:00:00.000Z"),
        ("zt-pp-01", 4, "reader", "2026-11-23T12:00:00.000Z"),
        ("zt-pp-01", 5, "reader", "2026-12-20T00:00:00.000Z"),
    ])
    events = read_events(db, load_plan(PLAN), date(2026, 11, 23), date(2026, 11, 24))
    assert sorted(e["seq"] for e in events) == [2, 3, 4]


def test_a_ledger_of_another_site_is_refused(tmp_path: Path) -> None:
    db = make_ledger(tmp_path / "ledger.db", "xihu", [])
    with pytest.raises(ReportError, match="the ledger of site 'xihu', the plan is for "
                                          "'zhuantang'"):
        read_events(db, load_plan(PLAN), date(2026, 11, 23), date(2026, 11, 24))


def test_the_register_reads_gb18030_and_utf8_with_bom(tmp_path: Path) -> None:
    text = "badge,name,role,leader,group,zone,card\nPO-001,王建国,police,是,,Z1,E1\n" \
           "AU-001,刘洋,auxiliary,,G5,Z3,E2\n"
    for encoding in ("gb18030", "utf-8-sig"):
        path = tmp_path / f"register-{encoding}.csv"
        path.write_bytes(text.encode(encoding))
        people = load_register(path)
        assert people["PO-001"].name == "王建国" and people["PO-001"].leader
        assert (people["AU-001"].role, people["AU-001"].group) == ("auxiliary", "G5")


def test_the_register_reads_a_workbook_with_chinese_headings(tmp_path: Path) -> None:
    from openpyxl import Workbook
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["工号", "姓名", "角色", "所领导", "巡组", "巡区", "卡号"])
    sheet.append(["PO-001", "王建国", "民警", "是", "", "Z1", "E100000001"])
    sheet.append(["VI-201", "朱红梅", "护村队员", "", "G1", "Z1", "E10000000F"])
    path = tmp_path / "register.xlsx"
    book.save(path)
    people = load_register(path)
    assert (people["PO-001"].name, people["PO-001"].role, people["PO-001"].leader) == \
        ("王建国", "police", True)
    assert (people["VI-201"].role, people["VI-201"].group) == ("village", "G1")


def test_a_bad_register_row_names_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "register.csv"
    path.write_text("badge,name,role\nPO-001,王建国,police\nX-1,某人,guard\n", encoding="utf-8")
    with pytest.raises(ReportError, match=r"register line 3, column role: 'guard'"):
        load_register(path)
    path.write_text("name,role\n王建国,police\n", encoding="utf-8")
    with pytest.raises(ReportError, match="line 1: no 'badge' column"):
        load_register(path)


def test_a_card_list_serves_as_a_register(tmp_path: Path) -> None:
    path = tmp_path / "cards.json"
    path.write_text(json.dumps({"version": 3, "cards": [
        {"card": "E1", "badge": "PO-001", "role": "police"}]}), encoding="utf-8")
    assert load_register(path)["PO-001"].role == "police"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(XUNFANG), "report", *args], capture_output=True, text=True,
                          timeout=60)


def test_report_errors_are_one_line_with_their_exit_status(tmp_path: Path) -> None:
    common = ["--plan", str(PLAN), "--from", "2026-11-23"]
    out = run(*common, "--to", "2026-11-24", "--db", str(tmp_path / "none.db"))
    assert (out.returncode, out.stderr) == (1, f"{tmp_path / 'none.db'}: no such ledger "
                                               "database\n")
    db = make_ledger(tmp_path / "ledger.db", "zhuantang", [])
    out = run(*common, "--to", "2026-11-20", "--db", str(db))
    assert (out.returncode, out.stderr) == (2, "--to 2026-11-20 is before --from "
                                               "2026-11-23\n")
    out = run(*common, "--to", "24.11.2026", "--db", str(db))
    assert out.returncode == 2 and "'24.11.2026' is not a date YYYY-MM-DD" in out.stderr
    bad_plan = tmp_path / "plan.toml"
    bad_plan.write_text(PLAN.read_text(encoding="utf-8").replace("version = 1", "verion = 1"),
                        encoding="utf-8")
    out = run("--plan", str(bad_plan), "--from", "2026-11-23", "--to", "2026-11-24",
              "--db", str(db))
    assert out.returncode == 2 and "verion: unknown key" in out.stderr
    empty = run(*common, "--to", "2026-11-23", "--db", str(db), "--format", "json")
    assert empty.returncode == 0
    doc = json.loads(empty.stdout)
    assert {c["verdict"] for c in doc["cells"]} == {"no_data"} and len(doc["cells"]) == 13
