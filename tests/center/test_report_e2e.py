"""Taps on real units → the real ledger → ``xunfang report``: every verdict from real events.

A small district runs for two days on a controlled clock (tests/support/district.py):
two patrol points and the station's duty room, real runtimes with simulated readers,
a real Mosquitto and the centre's ledger. The report is then made by the command line
from the ledger's database, in each format; the JSON is checked against
``docs/schemas/report.json`` and every verdict of docs/report.md appears in it.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.support.district import District
from tests.support.schemas import validator

XUNFANG = Path(sys.executable).parent / "xunfang"
TZ = ZoneInfo("Asia/Shanghai")

PLAN = """\
site = "zhuantang"
timezone = "Asia/Shanghai"
version = 7
min_people = 2

[windows]
evening = "20:00-22:30"
night = "23:00-05:00"

[rounds]
3 = 1
2 = 2
1 = 3

[[zones]]
id = "Z1"
name = "转塘一区"
groups = ["G1", "G2"]

[[points]]
unit = "pp-a"
name = "转塘小学"
zone = "Z1"
latitude = 30.16
longitude = 120.08

[[points]]
unit = "pp-b"
name = "象山校区"
zone = "Z1"
latitude = 30.26
longitude = 120.18

[[points]]
unit = "station"
name = "派出所值班室"
zone = "Z1"
windows = []

[[routes]]
group = "G1"
window = "night"
points = ["pp-a", "pp-b"]

[[routes]]
group = "G2"
window = "night"
points = ["pp-b", "pp-a"]

[supervision]
leader_unit = "station"
"""

# badge, name, role, leader, group, card
PEOPLE = [
    ("PO-1", "王建国", "police", "1", "G1", "E000000001"),
    ("PO-2", "李明", "police", "", "G2", "E000000002"),
    ("AU-1", "赵磊", "auxiliary", "", "G2", "E000000003"),
    ("PA-1", "张伟", "patrol", "", "G1", "E000000004"),
    ("PA-2", "陈静", "patrol", "", "G2", "E000000005"),
    ("VI-1", "刘洋", "village", "", "G1", "E000000006"),
]
CARD = {p[0]: p[5] for p in PEOPLE}
STRANGER = "0A0B0C0D0E"


def local(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, day, hh, mm, tzinfo=TZ)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """Two days of a district, through real units, into the ledger's database."""
    work = tmp_path_factory.mktemp("district")
    plan = work / "plan.toml"
    plan.write_text(PLAN, encoding="utf-8")
    register = work / "register.csv"
    with register.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["badge", "name", "role", "leader", "group", "zone", "card"])
        for badge, name, role, leader, group, card in PEOPLE:
            writer.writerow([badge, name, role, leader, group, "Z1", card])
    units = [("pp-a", "patrol_point"), ("pp-b", "patrol_point"), ("station", "kiosk")]
    windows = {u: {"evening": "20:00-22:30", "night": "23:00-05:00"} for u in ("pp-a", "pp-b")}
    with District(work / "run", "zhuantang", units, local(23, 19), windows=windows) as d:
        d.cards([{"card": card, "badge": badge, "role": role}
                 for badge, _n, role, _l, _g, card in PEOPLE])
        # Evening of the 23rd, level 3: a countersigned police-led visit at A (done);
        # PA-2 alone at A, then at B five minutes later, 14 km away (alone; impossible travel).
        d.at(local(23, 20, 10))
        d.visit("pp-a", CARD["PO-1"], CARD["PA-1"], CARD["VI-1"])
        d.tap("pp-a", STRANGER)
        d.settle()
        d.at(local(23, 20, 30))
        d.visit("pp-a", CARD["PA-2"])
        d.settle()
        d.at(local(23, 20, 35))
        d.visit("pp-b", CARD["PA-2"])
        d.settle()
        # Level 2 from 22:40: two rounds a window, and a leader must be on duty.
        d.at(local(23, 22, 40))
        d.level(2)
        # Night of the 23rd: G1 walks A then B (complete); G2 only B, police-led without
        # countersignature (shortened). A has one visit of two (short), B two (done).
        d.at(local(23, 23, 10))
        d.visit("pp-a", CARD["PA-1"], CARD["VI-1"])
        d.settle()
        d.at(local(23, 23, 30))
        d.tap("station", CARD["PO-1"])            # the leader comes on duty
        d.at(local(23, 23, 40))
        d.visit("pp-b", CARD["PA-1"], CARD["VI-1"])
        d.settle()
        d.at(local(24, 1, 0))
        d.visit("pp-b", CARD["PO-2"], CARD["AU-1"])
        d.settle()
        d.at(local(24, 2, 0))
        d.tap("station", CARD["PO-1"])            # and goes off: a gap until level 3
        d.at(local(24, 6, 0))
        d.level(3)
        # The 24th: B is switched off for the evening (no data); A is up, nobody comes (missed).
        d.at(local(24, 19, 0))
        d.stop_unit("pp-b")
        d.at(local(24, 23, 5))
        d.start_unit("pp-b")
        # Night of the 24th: G1 walks B before A (out of order); G2 nobody (missed); the same
        # two cards visit A four times in one window (repeat visits).
        d.at(local(24, 23, 40))
        d.visit("pp-b", CARD["PA-1"], CARD["VI-1"])
        d.settle()
        for minute in (10, 20, 30, 40):
            d.at(local(25, 0, minute))
            d.visit("pp-a", CARD["PA-1"], CARD["VI-1"])
            d.settle()
        d.at(local(25, 8, 0))
        d.tap("station", CARD["PA-2"])            # an event after the night, at every unit
        d.tap("pp-a", STRANGER)
        d.tap("pp-b", STRANGER)
        d.sync()
    yield plan, d.db_path, register


def report(plan: Path, db: Path, register: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(XUNFANG), "report", "--plan", str(plan), "--db", str(db), "--from", "2026-11-23",
         "--to", "2026-11-24", "--register", str(register), *args],
        capture_output=True, text=True, timeout=120)


def cells(doc: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(c["unit"], c["date"], c["window"]): c for c in doc["cells"]}


@pytest.mark.timeout(300)
def test_every_verdict_comes_from_real_events(ledger: tuple[Path, Path, Path]) -> None:
    plan, db, register = ledger
    out = report(plan, db, register, "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    validator("report").validate(doc)
    assert (doc["site"], doc["from"], doc["to"], doc["plan_version"]) == \
        ("zhuantang", "2026-11-23", "2026-11-24", "7")

    c = cells(doc)
    verdicts = {k: v["verdict"] for k, v in c.items()}
    assert verdicts == {
        ("pp-a", "2026-11-23", "evening"): "done",
        ("pp-b", "2026-11-23", "evening"): "alone",
        ("pp-a", "2026-11-23", "night"): "short",
        ("pp-b", "2026-11-23", "night"): "done",
        ("pp-a", "2026-11-24", "evening"): "missed",
        ("pp-b", "2026-11-24", "evening"): "no_data",
        ("pp-a", "2026-11-24", "night"): "done",
        ("pp-b", "2026-11-24", "night"): "done",
    }
    a = c[("pp-a", "2026-11-23", "evening")]
    assert (a["visits"], a["good_visits"], a["police_led_visits"], a["countersigned_visits"]) \
        == (2, 1, 1, 1)
    night = c[("pp-a", "2026-11-23", "night")]
    assert (night["level"], night["required"], night["visits"]) == (2, 2, 1)
    assert c[("pp-b", "2026-11-23", "night")]["police_led_visits"] == 1
    assert c[("pp-b", "2026-11-23", "night")]["countersigned_visits"] == 0
    assert c[("pp-a", "2026-11-24", "evening")]["round_missed"] >= 1   # the unit raised it too

    routes = {(r["group"], r["date"]): (r["verdict"], r["missing"]) for r in doc["routes"]}
    assert routes == {("G1", "2026-11-23"): ("complete", []),
                      ("G2", "2026-11-23"): ("shortened", ["pp-a"]),
                      ("G1", "2026-11-24"): ("out_of_order", []),
                      ("G2", "2026-11-24"): ("missed", ["pp-b", "pp-a"])}

    first = doc["supervision"][0]
    assert (first["police_led_visits"], first["countersigned"]) == (2, 1)
    assert [(v["unit"], v["roles"]) for v in first["not_countersigned"]] == \
        [("pp-b", {"auxiliary": 1, "police": 1})]
    assert (first["patrol_visits"], first["patrol_countersigned"]) == (4, 2)

    gaps = [(g["start"], g["end"], g["level"]) for g in doc["leader"]]
    assert gaps == [("2026-11-23T14:40:00Z", "2026-11-23T15:30:00Z", 2),
                    ("2026-11-23T18:00:00Z", "2026-11-23T22:00:00Z", 2)]

    kinds = sorted({x["kind"] for x in doc["anomalies"]})
    assert kinds == ["impossible_travel", "repeat_visits", "unknown_card"]
    travel = next(x for x in doc["anomalies"] if x["kind"] == "impossible_travel")
    assert (travel["from_unit"], travel["unit"], travel["badge"]) == ("pp-a", "pp-b", "PA-2")
    repeats = {x["card"] for x in doc["anomalies"] if x["kind"] == "repeat_visits"}
    assert repeats == {CARD["PA-1"], CARD["VI-1"]}


@pytest.mark.timeout(300)
def test_csv_and_html_carry_the_same_cells(ledger: tuple[Path, Path, Path],
                                           tmp_path: Path) -> None:
    plan, db, register = ledger
    doc = json.loads(report(plan, db, register, "--format", "json").stdout)
    out = report(plan, db, register, "--format", "csv", "--lang", "en")
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout.lstrip("\ufeff"))))
    assert rows[0][0] == "date" and rows[0][-1] == "verdict"
    assert [r[-1] for r in rows[1:]] == [
        {"no_data": "no data"}.get(c["verdict"], c["verdict"]) for c in doc["cells"]]
    zh = report(plan, db, register, "--format", "csv")
    assert zh.stdout.startswith("\ufeff日期,时段,巡区")
    html = tmp_path / "report.html"
    out = report(plan, db, register, "--out", str(html))
    assert out.returncode == 0, out.stderr
    assert "8 cells" in out.stdout
    text = html.read_text(encoding="utf-8")
    assert "巡防考核报告" in text and "王建国" in text   # names from the register
    assert "<script src" not in text and "http" not in text.split("<script>")[0]


# -- in a real browser ------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, through its chromedriver (scripts/setup.sh installs both)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2600"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options,
                              service=Service(shutil.which("chromedriver") or "chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


HEATMAP = """
var chart = echarts.getInstanceByDom(document.getElementById('heatmap'));
var option = chart.getOption();
return {cells: option.series[0].data, rows: option.yAxis[0].data, columns: option.xAxis[0].data,
        pieces: option.visualMap[0].pieces.map(function (p) { return p.color; }),
        timelines: document.querySelectorAll('.timeline canvas').length,
        tiles: Array.from(document.querySelectorAll('.tile')).map(function (t) {
          return [t.dataset.verdict, t.querySelector('b').textContent]; })};
"""


GLYPHS_DIFFER = """
function draw(ch) {
  var canvas = document.createElement('canvas');
  canvas.width = canvas.height = 48;
  var ctx = canvas.getContext('2d');
  ctx.font = '40px ' + getComputedStyle(document.body).fontFamily;
  ctx.fillText(ch, 2, 40);
  return Array.from(ctx.getImageData(0, 0, 48, 48).data);
}
var a = draw(arguments[0]), b = draw(arguments[1]);
var inked = a.some(function (v) { return v > 0; });
return inked && a.some(function (v, i) { return v !== b[i]; });
"""


@pytest.mark.timeout(300)
def test_the_html_report_renders_in_chromium_with_the_json_cells(
        ledger: tuple[Path, Path, Path], chromium: Any, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from center.compliance import CELL_VERDICTS
    from center.report import VERDICT_COLOURS

    plan, db, register = ledger
    doc = json.loads(report(plan, db, register, "--format", "json").stdout)
    html = tmp_path / "report.html"
    assert report(plan, db, register, "--out", str(html)).returncode == 0
    chromium.get(html.as_uri())
    shown = chromium.execute_script(HEATMAP)
    errors = [e for e in chromium.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []

    # The heat map holds exactly the JSON's cells: point, date, window and verdict.
    got = sorted((shown["rows"][y], shown["columns"][x], CELL_VERDICTS[v])
                 for x, y, v, *_ in shown["cells"])
    want = sorted((f"{c['point']} {c['unit']}",
                   f"{c['date'][5:]} {'晚间巡防' if c['window'] == 'evening' else '夜巡'}",
                   c["verdict"]) for c in doc["cells"])
    assert got == want
    assert shown["pieces"] == [VERDICT_COLOURS[v] for v in CELL_VERDICTS]
    assert dict(shown["tiles"]) == {v: str(sum(c["verdict"] == v for c in doc["cells"]))
                                    for v in CELL_VERDICTS}
    assert shown["timelines"] >= 2          # a timeline for each night with something on it

    # What a person sees: the screenshot has the verdict colours and Chinese text drawn
    # (with no CJK font the headings would be empty boxes; see scripts/setup.sh).
    png = tmp_path / "report.png"
    assert chromium.save_screenshot(str(png))
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] >= 1200
    for verdict in ("done", "missed", "no_data"):
        bgr = np.array([int(VERDICT_COLOURS[verdict][i:i + 2], 16) for i in (5, 3, 1)])
        assert (np.abs(image.astype(int) - bgr).sum(axis=2) < 12).sum() > 500, verdict
    title = chromium.find_element("css selector", "header h1")
    assert title.text.startswith("巡防考核报告") and title.size["width"] > 150
    # Two different characters drawn in the page's font differ: without a CJK font both
    # would be the same empty box.
    assert chromium.execute_script(GLYPHS_DIFFER, "巡", "防")
    print(f"screenshot: {png}")


@pytest.mark.timeout(300)
def test_the_english_report_has_no_chinese_words_of_its_own(
        ledger: tuple[Path, Path, Path], chromium: Any, tmp_path: Path) -> None:
    import re

    plan, db, register = ledger
    html = tmp_path / "report-en.html"
    assert report(plan, db, register, "--out", str(html), "--lang", "en").returncode == 0
    chromium.get(html.as_uri())
    assert chromium.find_element("css selector", "header h1").text.startswith(
        "Patrol compliance report")
    assert [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"] == []
    body = chromium.find_element("css selector", "main").text
    # Chinese left on the page is data: the plan's point and zone names, the register's names.
    data = set("转塘小学象山校区派出所值班室一区王建国李明赵磊张伟陈静刘洋")
    assert {ch for ch in re.findall(r"[\u4e00-\u9fff]", body)} <= data
