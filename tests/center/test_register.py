"""``xunfang cards import``: the station's register from CSV or XLSX to the units' card list.

Files are written as a station's Excel writes them (UTF-8 with and without
BOM, GB18030, XLSX made with openpyxl). The diff and the publication run
against a real Mosquitto with real units (:class:`UnitRig` uplinks that
verify and apply the list with their command processor); a :class:`Watcher`
validates every message on the wire against ``docs/schemas``.
"""

from __future__ import annotations

import gettext
import json
import os
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from center import register
from center.ledger import LedgerDB
from center.register import check_rows, read_table
from center.register_store import RegisterStore
from firmware_py import desired, topics
from firmware_py.cli import main
from firmware_py.signing import SigningKey, save_signing_key
from tests.support.brokers import Mosquitto
from tests.support.uplink import SITE, UnitRig, Watcher, wait_until

UNITS = ("zt-pp-03", "zt-pp-04")
ALL_CARDS = topics.desired(SITE, topics.ALL_UNITS, "cards")

HEADINGS_ZH = "工号,姓名,角色,所领导,巡组,巡区,卡号,生效,失效"
HEADINGS_EN = "badge,name,role,leader,group,zone,card,valid_from,valid_to"
GOOD_ROWS = [
    "P-001,张建国,民警,是,G1,Z1,14008EC793,,",
    "A-007,李娜,协警,,G1,Z1,dec:0000001111,2026-12-01,2027-02-28",
    "X-103,王小明,专职巡防队员,否,G2,Z1,\"w26:1,2222\",,",
    "V-221,欧阳娜娜,护村队员,,G2,Z2,04A1B2C3,,",
    "V-221,欧阳娜娜,护村队员,,G2,Z2,04A1B2C3D4E5F6,,",   # a second card, same person
]


def csv_text(*rows: str, headings: str = HEADINGS_ZH) -> str:
    return "\r\n".join([headings, *rows]) + "\r\n"


@pytest.fixture(autouse=True)
def _language() -> Iterator[None]:
    yield
    register.use_language(register.DEFAULT_LANGUAGE)


def run(capsys: pytest.CaptureFixture[str], *args: str, lang: str = "en") -> tuple[int, str]:
    code = main(["cards", "import", *args, "--site", SITE, "--lang", lang])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# -- reading what Excel writes --------------------------------------------------------------


def test_utf8_csv_with_chinese_headings_and_names_is_read_and_everything_is_added(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
    code, out = run(capsys, str(path))
    assert code == 0, out
    assert "5 cards of 4 people, read as UTF-8\n" in out
    assert "no list in force given (--db or --broker): every card is added" in out
    assert re.search(r"added +14008EC793 +P-001  张建国  police, leader  G1  Z1", out)
    assert re.search(r"added +dec:0000001111 +A-007  李娜  auxiliary", out)
    assert "5 added, 0 removed, 0 changed, 0 unchanged" in out
    assert "version 1 (not sent: add --publish)" in out


def test_utf8_with_bom_is_detected_and_the_bom_is_not_part_of_the_first_heading(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "register.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text(*GOOD_ROWS[:2]).encode("utf-8"))
    code, out = run(capsys, str(path))
    assert code == 0, out
    assert "2 cards of 2 people, read as UTF-8 (with BOM)" in out
    table = read_table(path)
    rows, problems = check_rows(table)
    assert problems == [] and [r.badge for r in rows] == ["P-001", "A-007"]


def test_gb18030_with_chinese_names_is_detected(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "register.csv"
    # What Excel on a Chinese Windows writes for "CSV (comma delimited)".
    data = csv_text(*GOOD_ROWS, "P-002,司马懿,民警,,G1,Z1,dec:0000003333,,").encode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    path.write_bytes(data)
    code, out = run(capsys, str(path))
    assert code == 0, out
    assert "6 cards of 5 people, read as GB18030" in out
    assert "司马懿" in out and "欧阳娜娜" in out
    rows, problems = check_rows(read_table(path))
    assert not problems and rows[-1].name == "司马懿"


def test_xlsx_written_by_openpyxl_with_typed_cells(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(HEADINGS_EN.split(","))
    sheet.append(["P-001", "张建国", "police", True, "G1", "Z1", "14008EC793", None, None])
    # Excel types dates as dates and "08:00" times as datetimes: both are the site's time.
    sheet.append(["A-007", "李娜", "auxiliary", False, "G1", "Z1", "dec:0000001111",
                  datetime(2026, 12, 1, 8, 0), date(2027, 2, 28)])
    sheet.append([None] * 9)                       # an empty row Excel leaves behind
    sheet.append(["V-9", "王芳", "village", None, None, None, "w26:1,2222", None, None])
    path = tmp_path / "register.xlsx"
    book.save(path)
    code, out = run(capsys, str(path))
    assert code == 0, out
    assert "3 cards of 3 people, read as XLSX" in out
    rows, problems = check_rows(read_table(path))
    assert problems == []
    assert [r.line for r in rows] == [2, 3, 5]
    assert rows[0].leader and rows[0].role == "police"
    # Asia/Shanghai is UTC+8: 08:00 local is midnight UTC; a plain end date is the whole day.
    assert rows[1].valid_from == "2026-12-01T00:00:00Z"
    assert rows[1].valid_to == "2027-02-28T16:00:00Z"
    assert rows[2].unit_entry() == {"card": "w26:1,2222", "badge": "V-9", "role": "village"}


@pytest.mark.parametrize(("text", "end", "want"), [
    ("2026-12-01", False, "2026-11-30T16:00:00Z"),
    ("2026-12-01", True, "2026-12-01T16:00:00Z"),
    ("2026/12/1", False, "2026-11-30T16:00:00Z"),
    ("2026-12-01 08:30", False, "2026-12-01T00:30:00Z"),
    ("2026-12-01T08:30:00+08:00", True, "2026-12-01T00:30:00Z"),
    ("2026-12-01T00:30:00Z", False, "2026-12-01T00:30:00Z"),
    ("2026-12-01T00:30:00.250z", False, "2026-12-01T00:30:00Z"),
])
def test_dates_are_rfc_3339_or_in_the_sites_time_zone(text: str, end: bool, want: str) -> None:
    checker = register._Checker(ZoneInfo("Asia/Shanghai"))
    assert checker.when(text, end) == (want, None)


def test_an_end_in_the_year_9999_is_no_end() -> None:
    checker = register._Checker(ZoneInfo("Asia/Shanghai"))
    assert checker.when("9999-12-31", end=True) == (None, None)
    assert checker.when("9999-12-31", end=False)[0] is None


@pytest.mark.parametrize("text", ["0001-01-01", "2026-02-30", "2026-12-01 25:00",
                                  "01/12/2026", "明天", "2026-12-01T08:00+0800"])
def test_what_is_not_a_usable_date_is_a_problem_not_a_crash(text: str) -> None:
    checker = register._Checker(ZoneInfo("Asia/Shanghai"))
    for end in (False, True):
        value, why = checker.when(text, end)
        assert value is None and why is not None and repr(text) in why


# -- every problem, with its line and column ----------------------------------------------------

BAD_ROWS = [
    # line 2: good
    "P-001,张建国,民警,是,G1,Z1,14008EC793,,",
    # line 3: unknown role
    "P-002,赵六,警察,,G1,Z1,0000000002,,",
    # line 4: a leader who is not police
    "A-003,钱七,协警,是,G1,Z1,0000000003,,",
    # line 5: leader neither yes nor no
    "P-004,孙八,民警,也许,G1,Z1,0000000004,,",
    # line 6: not a card id
    "P-005,周九,民警,,G1,Z1,14008EC7ZZ,,",
    # line 7: hex of a length the card list does not take (a number that lost its zeros)
    "P-006,吴十,民警,,G1,Z1,123456,,",
    # line 8: the same card as line 2
    "P-007,郑一,民警,,G1,Z1,14008ec793,,",
    # line 9: line 2's card in its printed form (the low 32 bits of 14008EC793)
    "P-008,王二,民警,,G1,Z1,dec:0009357203,,",
    # line 10: badge of line 2 with another name
    "P-001,张三,民警,是,G1,Z1,0000000010,,",
    # line 11: no badge and no name
    ",,民警,,G1,Z1,0000000011,,",
    # line 12: a date that is not one
    "P-012,冯三,民警,,G1,Z1,0000000012,下周一,",
    # line 13: ends before it begins
    "P-013,陈四,民警,,G1,Z1,0000000013,2027-01-02,2027-01-01",
    # line 14: a value past the last heading
    "P-014,褚五,民警,,G1,Z1,0000000014,,,多余",
    # line 15: a badge longer than units take
    f"{'P' * 65},卫六,民警,,G1,Z1,0000000015,,",
]
EXPECTED = [
    (3, "C", "角色", "role must be one of 民警 (police), 协警 (auxiliary), 专职巡防队员 (patrol), "
                    "护村队员 (village); got '警察'"),
    (4, "D", "所领导", "a leader (所领导) must be police (民警), not auxiliary"),
    (5, "D", "所领导", "leader must be yes or no"),
    (6, "G", "卡号", "'14008EC7ZZ' is not a card id"),
    (7, "G", "卡号", "'123456': a hex card id has 8, 10, 14 or 20 digits"),
    (8, "G", "卡号", "card 14008EC793 is already on line 2"),
    (9, "G", "卡号", "dec:0009357203 can match the same tag as 14008EC793 on line 2"),
    (10, "B", "姓名", "badge P-001 is also on line 2 with another 姓名: one badge is one person"),
    (11, "A", "工号", "a value is required"),
    (11, "B", "姓名", "a value is required"),
    (12, "H", "生效", "'下周一' is not a date or time"),
    (13, "I", "失效", "the card's validity ends before it begins"),
    (14, "J", "", "a value in a column without a known heading: '多余'"),
    (15, "A", "工号", "at most 64 characters, this has 65"),
]


def test_every_row_problem_names_its_line_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*BAD_ROWS), encoding="utf-8")
    register.use_language("en")
    _, problems = check_rows(read_table(path))
    got = [(p.line, register.column_letter(p.column or 0), p.heading, p.message)
           for p in problems]
    assert len(got) == len(EXPECTED), "\n".join(map(str, got))
    for (line, column, heading, message), want in zip(got, EXPECTED, strict=True):
        assert (line, column, heading) == want[:3]
        assert message.startswith(want[3]), (message, want[3])
    code, out = run(capsys, str(path))
    assert code == 2
    assert f"{path}: {len(EXPECTED)} problems; nothing was sent" in out
    assert "line 6, column G (卡号): '14008EC7ZZ' is not a card id" in out
    assert "line 14, column J: a value in a column without a known heading" in out
    assert "version" not in out


@pytest.mark.parametrize(("first", "second", "overlap"), [
    ("14008EC793", "15008EC793", False),          # two tags: hex matches exactly
    ("14008EC793", "dec:0009357203", True),       # its printed number
    ("14008EC793", "w26:142,51091", True),        # its Wiegand-26 view
    ("dec:0009357203", "w26:142,51091", True),
    ("dec:0009357203", "dec:0026134419", False),  # same low 24 bits, different numbers
    ("w26:142,51091", "dec:0026134419", True),
    ("04A1B2C3", "dec:0077705923", True),         # a 4-byte UID read as a number
    ("04A1B2C3D4E5F6", "dec:0000000001", False),  # 7-byte UIDs have no printed forms
    ("w26:1,2", "w26:001,2", True),               # one form, two spellings
])
def test_a_card_named_twice_in_any_of_its_forms_is_found(first: str, second: str,
                                                          overlap: bool, tmp_path: Path) -> None:
    path = tmp_path / "register.csv"
    path.write_text(csv_text(f'P-1,甲,民警,,,,"{first}",,', f'P-2,乙,民警,,,,"{second}",,'),
                    encoding="utf-8")
    register.use_language("en")
    _, problems = check_rows(read_table(path))
    assert [(p.line, p.heading) for p in problems] == ([(3, "卡号")] if overlap else [])


def test_problems_are_in_chinese_by_default(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*BAD_ROWS[:4]), encoding="utf-8")
    code, out = run(capsys, str(path), lang="zh-CN")
    assert code == 2
    assert "3 处问题；未发送" in out
    assert "第 4 行 D 列（所领导）：所领导必须是民警，不能是协警" in out


def test_problems_with_the_headings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "register.csv"
    path.write_text(csv_text("P-1,甲,民警,P-1", headings="badge,姓名,role,工号,phone"),
                    encoding="utf-8")
    register.use_language("en")
    _, problems = check_rows(read_table(path))
    text = [str(p) for p in problems]
    assert text[0].startswith("line 1: no column card (卡号)")
    assert text[1] == "line 1, column D (工号): column badge appears twice (also column A)"
    assert text[2].startswith("line 1, column E (phone): unknown column; the columns are: "
                              "badge (工号), name (姓名)")
    code, _ = run(capsys, str(path))
    assert code == 2


@pytest.mark.parametrize(("name", "data", "says"), [
    ("latin1.csv", "badge,name\nP-1,Jos\xe9\n".encode("latin-1") + b"\xff\xfe\xff", "neither "
     "UTF-8 nor GB18030 text (line 2)"),
    ("unicode.csv", "badge,name\n".encode("utf-16"), "UTF-16 text"),
    ("broken.xlsx", b"PK\x03\x04 not really a workbook", "not a readable XLSX workbook"),
    ("empty.csv", b"\r\n,,\r\n", "has no heading row and no cards"),
    ("heading-only.csv", HEADINGS_ZH.encode("utf-8"), "has a heading row but no cards"),
])
def test_files_that_cannot_be_a_register_exit_2_with_the_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, data: bytes,
        says: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    code, out = run(capsys, str(path))
    assert code == 2
    assert says in out
    assert len(out.strip().splitlines()) <= 2


def test_a_missing_file_and_bad_usage_exit_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, str(tmp_path / "nope.csv"))
    assert code == 2 and "cannot read" in out and "nope.csv" in out
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
    code, out = run(capsys, str(path), "--publish")
    assert code == 2 and "--publish needs --broker and --key" in out
    code, out = run(capsys, str(path), "--timezone", "Mars/Olympus")
    assert code == 2 and "unknown time zone 'Mars/Olympus'" in out


# -- against a real broker and real units -------------------------------------------------------


@pytest.fixture
def centre_key(tmp_path: Path) -> tuple[SigningKey, Path]:
    key = SigningKey.generate("centre-test")
    path = tmp_path / "centre.key"
    save_signing_key(key, path)
    return key, path


@pytest.fixture
def units(tmp_path: Path, centre_key: tuple[SigningKey, Path]
          ) -> Iterator[Callable[[int, str], UnitRig]]:
    made: list[UnitRig] = []

    def make(port: int, unit: str) -> UnitRig:
        rig = UnitRig(tmp_path / unit, port, {"unit": {"id": unit}},
                      command_key=centre_key[0])
        made.append(rig)
        rig.start()
        rig.wait_connected()
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def wire(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto.probe(None, client_id="wire"))
    yield w
    w.seen()  # every message of the test, validated against the schemas
    w.probe.close()


def broker_args(broker: Mosquitto, key: Path | None = None) -> list[str]:
    args = ["--broker", f"127.0.0.1:{broker.port}", "--wait", "10"]
    return args + (["--key", str(key)] if key else [])


def retained(broker: Mosquitto) -> dict[str, Any] | None:
    with broker.probe(None, client_id="look") as look:
        look.subscribe(ALL_CARDS)
        try:
            msg = look.expect(ALL_CARDS, timeout=1.0)
        except TimeoutError:
            return None
    return json.loads(msg.payload)


def test_nothing_is_published_when_one_row_is_bad(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[[int, str], UnitRig],
        centre_key: tuple[SigningKey, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rig = units(mosquitto.port, UNITS[0])
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*GOOD_ROWS, "A-9,钱七,协警,是,G1,Z1,0000000009,,"),
                    encoding="utf-8")
    code, out = run(capsys, str(path), "--publish", "--db", str(tmp_path / "register.db"),
                    *broker_args(mosquitto, centre_key[1]))
    assert code == 2
    assert "line 7, column D (所领导): a leader (所领导) must be police" in out
    assert retained(mosquitto) is None
    assert not [s for s in wire.on("desired")]
    assert rig.journal.events_after(0, limit=1000, kinds=["command"]) == []
    assert not (tmp_path / "register.db").exists()


def test_the_diff_is_against_the_list_retained_on_the_broker(
        mosquitto: Mosquitto, wire: Watcher, centre_key: tuple[SigningKey, Path],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    in_force = tmp_path / "cards-v7.json"
    in_force.write_text(json.dumps({"version": 7, "cards": [
        {"card": "14008EC793", "badge": "P-001", "role": "police"},
        {"card": "dec:0000001111", "badge": "A-007", "role": "patrol"},
        {"card": "0000000099", "badge": "GONE", "role": "village"},
        {"card": "04A1B2C3", "badge": "V-221", "role": "village"},
        {"card": "04A1B2C3D4E5F6", "badge": "V-221", "role": "village"}]}))
    assert main(["send", "cards", str(in_force), "--site", SITE, "--key", str(centre_key[1]),
                 "--broker", f"127.0.0.1:{mosquitto.port}", "--wait", "0"]) == 0
    capsys.readouterr()
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
    code, out = run(capsys, str(path), *broker_args(mosquitto))
    assert code == 0, out
    assert f"list in force: version 7, 5 cards ({ALL_CARDS})" in out
    assert re.search(r"added +w26:1,2222 +X-103  王小明  patrol", out)
    assert re.search(r"removed +0000000099 +GONE  village", out)
    assert re.search(r"changed +14008EC793 +P-001: leader no → yes", out)
    # Validity as the station wrote it: the site's local time.
    assert re.search(r"changed +dec:0000001111 +A-007: role patrol → auxiliary; valid from "
                     r"\(none\) → 2026-12-01 00:00; valid to \(none\) → 2027-03-01 00:00",
                     out)
    assert "1 added, 1 removed, 2 changed, 2 unchanged" in out
    assert "version 8 (not sent: add --publish)" in out
    held = retained(mosquitto)
    assert held is not None and held["args"]["version"] == 7    # nothing sent


def test_publish_is_applied_by_the_units_and_each_import_is_one_version_up(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[[int, str], UnitRig],
        centre_key: tuple[SigningKey, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rigs = [units(mosquitto.port, u) for u in UNITS]
    db = tmp_path / "register.db"
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
    code, out = run(capsys, str(path), "--publish", "--db", str(db),
                    *broker_args(mosquitto, centre_key[1]))
    assert code == 0, out
    assert f"no list in force ({db}): every card is added" in out
    assert "version 1, 5 cards:" in out
    for u in UNITS:
        assert re.search(rf"applied +{u}\n", out)
    assert "2 unit(s): 2 applied, 0 rejected, 0 no answer, 0 offline" in out
    assert f"register {db}: version 1 recorded" in out
    for rig in rigs:
        held = desired.current_cards(rig.journal)
        assert held is not None and held["version"] == 1
        # Units get what they need, never names, groups or zones.
        assert held["cards"][0] == {"card": "14008EC793", "badge": "P-001", "role": "police",
                                    "leader": True}
        assert held["cards"][1]["role"] == "auxiliary"
        assert all(set(c) <= {"card", "badge", "role", "leader", "valid_from", "valid_to"}
                   for c in held["cards"])
    on_wire = retained(mosquitto)
    assert on_wire is not None and "张建国" not in json.dumps(on_wire, ensure_ascii=False)
    assert os.stat(db).st_mode & 0o077 == 0

    # The register keeps the people; the next import is diffed against it, names and all.
    store = RegisterStore(db, SITE)
    assert store.people()["P-001"] == {"name": "张建国", "role": "police", "leader": True,
                                       "group": "G1", "zone": "Z1"}
    store.close()
    rows = list(GOOD_ROWS)
    rows[2] = rows[2].replace("王小明", "王晓明")
    path.write_text(csv_text(*rows[:4]), encoding="utf-8")
    code, out = run(capsys, str(path), "--publish", "--db", str(db),
                    *broker_args(mosquitto, centre_key[1]))
    assert code == 0, out
    assert f"list in force: version 1, 5 cards ({db})" in out
    assert re.search(r"changed +w26:1,2222 +X-103: name 王小明 → 王晓明", out)
    assert re.search(r"removed +04A1B2C3D4E5F6 +V-221  欧阳娜娜  village  G2  Z2", out)
    assert "version 2, 4 cards:" in out
    for rig in rigs:
        wait_until(lambda r=rig: (desired.current_cards(r.journal) or {}).get("version") == 2,
                   10, "version 2 applied")
    # Unchanged: nothing to send.
    code, out = run(capsys, str(path), "--publish", "--db", str(db),
                    *broker_args(mosquitto, centre_key[1]))
    assert code == 0, out
    assert "nothing changed: version 2 stays in force, nothing was sent" in out
    store = RegisterStore(db, SITE)
    assert [v.version for v in store.history()] == [1, 2]
    assert store.version(1) is not None and len(store.version(1).entries) == 5
    store.close()
    wait_until(lambda: [s.doc["args"]["version"] for s in wire.on("desired") if s.doc] == [1, 2],
               10, "versions 1 and 2 on the wire, and no other")
    # The history the station can read back.
    assert main(["cards", "history", "--db", str(db), "--site", SITE, "--lang", "en"]) == 0
    out = capsys.readouterr().out
    assert f"register {db}, site {SITE}: 2 versions" in out
    assert re.search(r"version 1  sent \d{4}-\d\d-\d\d \d\d:\d\d  5 cards  from register.csv  "
                     r"id [0-9a-f]{32}", out)
    assert main(["cards", "history", "--db", str(db), "--site", SITE, "--version", "1"]) == 0
    out = capsys.readouterr().out
    assert "5 张卡" in out and "04A1B2C3D4E5F6  V-221  欧阳娜娜  护村队员  G2  Z2" in out
    assert main(["cards", "history", "--db", str(db), "--site", SITE, "--version", "9",
                 "--lang", "en"]) == 2
    assert "has no version 9 of site zhuantang" in capsys.readouterr().err
    assert main(["cards", "history", "--db", str(tmp_path / "none.db"), "--site", SITE]) == 2
    assert not (tmp_path / "none.db").exists()


def test_the_version_follows_the_broker_when_the_register_is_behind_it(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[[int, str], UnitRig],
        centre_key: tuple[SigningKey, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rig = units(mosquitto.port, UNITS[0])
    in_force = tmp_path / "cards.json"
    in_force.write_text(json.dumps({"version": 41, "cards": []}))
    assert main(["send", "cards", str(in_force), "--site", SITE, "--key", str(centre_key[1]),
                 "--broker", f"127.0.0.1:{mosquitto.port}", "--wait", "10"]) == 0
    capsys.readouterr()
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
    code, out = run(capsys, str(path), "--publish", "--db", str(tmp_path / "new.db"),
                    *broker_args(mosquitto, centre_key[1]))
    assert code == 0, out
    assert "note: the broker holds version 41, the register version (none)" in out
    assert "version 42, 5 cards:" in out
    wait_until(lambda: (desired.current_cards(rig.journal) or {}).get("version") == 42, 10,
               "version 42 applied")


def test_the_register_lives_beside_the_ledger_in_its_database(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[[int, str], UnitRig],
        centre_key: tuple[SigningKey, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    units(mosquitto.port, UNITS[0])
    ledger_path = tmp_path / "zhuantang.db"
    LedgerDB(ledger_path, site=SITE).close()
    path = tmp_path / "register.csv"
    path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
    code, out = run(capsys, str(path), "--publish", "--db", str(ledger_path),
                    *broker_args(mosquitto, centre_key[1]))
    assert code == 0, out
    ledger = LedgerDB(ledger_path, site=SITE)      # still the ledger's database
    ledger.close()
    store = RegisterStore(ledger_path, SITE)
    assert store.current() is not None and store.current().version == 1
    store.close()
    code, out = main(["cards", "import", str(path), "--site", "other", "--db",
                      str(ledger_path), "--lang", "en"]), capsys.readouterr().err
    assert code == 2 and "is the ledger of site 'zhuantang', not 'other'" in out


def test_a_unit_that_rejects_is_reported_and_the_exit_status_says_so(
        mosquitto: Mosquitto, wire: Watcher, tmp_path: Path,
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    # This unit trusts another key under the same name: the signature fails there.
    rig = UnitRig(tmp_path / "stale", mosquitto.port, {"unit": {"id": UNITS[1]}},
                  command_key=SigningKey.generate("centre-test"))
    try:
        rig.start()
        rig.wait_connected()
        path = tmp_path / "register.csv"
        path.write_text(csv_text(*GOOD_ROWS), encoding="utf-8")
        code, out = run(capsys, str(path), "--publish",
                        *broker_args(mosquitto, centre_key[1]))
        assert code == 1, out
        assert re.search(rf"rejected +{UNITS[1]}  bad_signature", out)
        assert desired.current_cards(rig.journal) is None
    finally:
        rig.close()


# -- the message catalogue ----------------------------------------------------------------------


def test_the_catalogue_has_every_message_translated_and_compiled() -> None:
    source = Path(register.__file__)
    keywords = {"_": None, "N_": None, "ngettext": (1, 2)}
    wanted = set()
    for _lineno, message, _comments, _context in extract_from_file("python", source,
                                                                    keywords=keywords):
        wanted.add(message[0] if isinstance(message, tuple) else message)
    po_path = register.LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "register.po"
    with po_path.open("rb") as f:
        catalog = read_po(f)
    have = {m.id[0] if isinstance(m.id, tuple) else m.id: m for m in catalog if m.id}
    assert wanted - set(have) == set(), "run pybabel extract/update (docs/centre.md)"
    untranslated = [k for k, m in have.items() if not (m.string[0] if isinstance(
        m.string, tuple) else m.string)]
    assert untranslated == []
    # The compiled catalogue the CLI loads says what the .po says.
    mo = gettext.translation(register.DOMAIN, register.LOCALE_DIR, languages=["zh_CN"])
    for key, m in have.items():
        if isinstance(m.id, tuple):
            assert mo.ngettext(m.id[0], m.id[1], 1) == m.string[0], key
        else:
            assert mo.gettext(key) == m.string, key


def test_the_sample_register_in_config_is_a_good_one(capsys: pytest.CaptureFixture[str]) -> None:
    sample = Path(__file__).resolve().parents[2] / "config" / "register-sample.csv"
    code, out = run(capsys, str(sample))
    assert code == 0, out
    assert "9 cards of 8 people, read as UTF-8 (with BOM)" in out
