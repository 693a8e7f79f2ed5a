"""A week of a small district, through real units and the ledger, then its report.

The district of ``config/plan.toml``: three zones, six patrol points, a village
duty kiosk, the station's duty room and a checkpoint, and twenty people. Each
unit is the real runtime with a simulated reader, on one controlled clock
(``tests/support/district.py``), so the week takes about a minute: patrol
groups walk their routes, some rounds are done alone or skipped, the level is
raised one night, a unit is switched off another, a card turns up where it
cannot be. Then ``xunfang report`` makes the HTML (and JSON) report from the
ledger's database and the path is printed.

    .venv/bin/python scripts/demo_week.py [--dir DIR] [--days 7] [--screenshot FILE]
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from center.plan import load_plan  # noqa: E402
from tests.support.district import District  # noqa: E402

PLAN = REPO / "config" / "plan.toml"
KINDS = {"zt-ks-01": "kiosk", "zt-station": "kiosk", "zt-cp-01": "checkpoint"}

# badge, name, role, leader, group, zone, card
PEOPLE = [
    ("PO-001", "王建国", "police", "1", "", "Z1", "E100000001"),
    ("PO-002", "李明", "police", "1", "", "Z1", "E100000002"),
    ("PO-003", "张伟", "police", "", "G1", "Z1", "E100000003"),
    ("PO-004", "陈静", "police", "", "G3", "Z2", "E100000004"),
    ("AU-001", "刘洋", "auxiliary", "", "G5", "Z3", "E100000005"),
    ("AU-002", "赵磊", "auxiliary", "", "G2", "Z1", "E100000006"),
    ("PA-101", "孙浩", "patrol", "", "G1", "Z1", "E100000007"),
    ("PA-102", "周涛", "patrol", "", "G1", "Z1", "E100000008"),
    ("PA-103", "吴昊", "patrol", "", "G2", "Z1", "E100000009"),
    ("PA-104", "郑凯", "patrol", "", "G3", "Z2", "E10000000A"),
    ("PA-105", "冯亮", "patrol", "", "G3", "Z2", "E10000000B"),
    ("PA-106", "何军", "patrol", "", "G5", "Z3", "E10000000C"),
    ("PA-107", "许强", "patrol", "", "G5", "Z3", "E10000000D"),
    ("PA-108", "沈斌", "patrol", "", "G4", "Z2", "E10000000E"),
    ("VI-201", "朱红梅", "village", "", "G1", "Z1", "E10000000F"),
    ("VI-202", "胡德明", "village", "", "G2", "Z1", "E100000010"),
    ("VI-203", "郭秀英", "village", "", "G3", "Z2", "E100000011"),
    ("VI-204", "林国平", "village", "", "G4", "Z2", "E100000012"),
    ("VI-205", "高志强", "village", "", "G5", "Z3", "E100000013"),
    ("VI-206", "罗桂兰", "village", "", "G6", "Z3", "E100000014"),
]
CARD = {p[0]: p[6] for p in PEOPLE}
STRANGER = "0BADC0FFEE"


def write_register(path: Path) -> Path:
    """The register as a station keeps it in Excel (CSV, UTF-8 with BOM)."""
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["badge", "name", "role", "leader", "group", "zone", "card"])
        writer.writerows(PEOPLE)
    return path


Action = tuple[datetime, Callable[[], None]]


def week_actions(d: District, first: date, days: int, tz: ZoneInfo,
                 rng: random.Random) -> list[Action]:
    """What the district does, as (time, action) in any order."""
    actions: list[Action] = []

    def at(day: date, hh: int, mm: int) -> datetime:
        return datetime(day.year, day.month, day.day, hh, mm, tzinfo=tz)

    def visit(t: datetime, unit: str, *badges: str) -> None:
        def act() -> None:
            if unit in d.runtimes:          # nobody can tap on a unit that is switched off
                d.visit(unit, *(CARD[b] for b in badges))
                d.settle()
        actions.append((t, act))

    def tap(t: datetime, unit: str, card: str) -> None:
        actions.append((t, lambda: d.tap(unit, card) if unit in d.runtimes else None))

    routes = {  # group: (window start hour, points, walkers)
        "G1": (23, ["zt-pp-01", "zt-pp-02"], ["PO-003", "PA-101", "VI-201"]),
        "G2": (20, ["zt-pp-02", "zt-pp-01"], ["PA-103", "VI-202"]),
        "G3": (23, ["zt-pp-03", "zt-pp-04"], ["PA-104", "PA-105", "VI-203"]),
        "G5": (23, ["zt-pp-05", "zt-pp-06"], ["PA-106", "VI-205"]),
    }
    for i in range(days):
        day = first + timedelta(days=i)
        # Duty: village guards at the kiosk in the evening, patrol guards at the checkpoint.
        tap(at(day, 19, 30), "zt-ks-01", CARD["VI-204"])
        tap(at(day, 19, 32), "zt-cp-01", CARD["PA-108"])
        tap(at(day + timedelta(days=1), 6, 30), "zt-ks-01", CARD["VI-204"])
        tap(at(day + timedelta(days=1), 6, 32), "zt-cp-01", CARD["PA-108"])
        # Day patrols: the warehouse in the morning, the industrial park in the afternoon.
        if i != 3:
            visit(at(day, 9, 15), "zt-pp-06", "PA-107", "VI-206")
        visit(at(day, 14, 20), "zt-pp-04", "PA-108", *(["VI-204"] if i != 1 else []))
        # The routes.
        for group, (hour, points, walkers) in routes.items():
            order = list(points)
            who = list(walkers)
            if (group, i) in (("G3", 2), ("G1", 5)):
                order.reverse()                  # walked backwards
            if (group, i) == ("G5", 4):
                order = order[:1]                # cut short
            if (group, i) in (("G2", 6),):
                continue                         # not walked
            if (group, i) == ("G2", 3):
                who = who[:1]                    # alone: the visits do not count
            start = at(day, hour, 10 + rng.randrange(0, 15))
            for j, unit in enumerate(order):
                visit(start + timedelta(minutes=35 * j), unit, *who)
        # A police-led round at the school in the evening, countersigned most nights.
        signers = ["PA-103", "VI-202"] if i % 3 else ["AU-002"]
        visit(at(day, 21, 5), "zt-pp-03", "PO-004", *signers)
        visit(at(day, 21, 40), "zt-pp-05", "AU-001", "PA-107")
        if i != 5:
            visit(at(day, 20, 50), "zt-pp-04", "PA-104", "VI-203")
    # Level 2 on the third night: two rounds, and a leader on duty, whom the station
    # has only from 20:00 to 01:00.
    if days > 2:
        third = first + timedelta(days=2)
        actions.append((at(third, 19, 0), lambda: d.level(2)))
        actions.append((at(third + timedelta(days=1), 7, 0), lambda: d.level(3)))
        tap(at(third, 20, 0), "zt-station", CARD["PO-001"])
        tap(at(third + timedelta(days=1), 1, 0), "zt-station", CARD["PO-001"])
        visit(at(third, 23, 30) + timedelta(hours=3), "zt-pp-01", "PA-102", "VI-201")
    # The fifth evening the tea village's point is switched off until morning.
    if days > 4:
        fifth = first + timedelta(days=4)
        actions.append((at(fifth, 18, 0), lambda: d.stop_unit("zt-pp-03")))
        actions.append((at(fifth + timedelta(days=1), 6, 0),
                        lambda: d.start_unit("zt-pp-03")))
    # A card nobody enrolled, tried at the checkpoint; a guard's card in two places at once;
    # a guard who taps the same point again and again in one night.
    tap(at(first + timedelta(days=min(3, days - 1)), 22, 10), "zt-cp-01", STRANGER)
    second = first + timedelta(days=min(1, days - 1))
    visit(at(second, 20, 20), "zt-pp-02", "PA-102", "VI-201")
    visit(at(second, 20, 23), "zt-pp-06", "PA-102", "PA-107")
    for k in range(4):
        visit(at(second, 23, 50) + timedelta(minutes=20 * k) + timedelta(hours=1),
              "zt-pp-05", "PA-106", "VI-205")
    last = first + timedelta(days=days)
    for unit in d.kinds:   # every unit records something the morning after the week
        tap(at(last, 7, 0), unit, STRANGER if unit != "zt-station" else CARD["PO-002"])
    return actions


def run_week(workdir: Path, first: date, days: int = 7, seed: int = 15,
             screenshot: Path | None = None, say: Callable[[str], None] = print) -> Path:
    """Play the week, then write ``report.html`` and ``report.json``; returns the HTML path."""
    from center.report import build_report, load_register, render

    plan = load_plan(PLAN)
    tz = plan.tz
    workdir.mkdir(parents=True, exist_ok=True)
    register_path = write_register(workdir / "register.csv")
    units = [(p.unit, KINDS.get(p.unit, "patrol_point")) for p in plan.points]
    windows = {p.unit: {w: plan.windows[w] for w in plan.point_windows(p)}
               for p in plan.points if plan.point_windows(p)}
    started = time.monotonic()
    start = datetime(first.year, first.month, first.day, 6, 0, tzinfo=tz)
    # The units' own log lines (every missed round they raise) would drown the story:
    # what they recorded is in the ledger, and the report says it.
    logging.getLogger("xunfang").setLevel(logging.ERROR)
    with District(workdir / "run", plan.site, units, start, windows=windows,
                  round_every_min={3: 150, 2: 75, 1: 50}) as d:
        d.cards([{"card": p[6], "badge": p[0], "role": p[2], "leader": p[3] == "1"}
                 for p in PEOPLE])
        actions = week_actions(d, first, days, tz, random.Random(seed))
        actions.sort(key=lambda a: a[0])
        for n, (when, action) in enumerate(actions, start=1):
            d.at(max(when, d.now()))     # actions a minute apart may overlap a visit's close
            action()
            if n % 40 == 0:
                say(f"  {when.astimezone(tz):%m-%d %H:%M}  {n}/{len(actions)} patrol events "
                    "played")
        d.sync()
        db = d.db_path
    say(f"  {days} day(s) played in {time.monotonic() - started:.0f} s: {len(units)} units, "
        f"{len(actions)} patrol events, ledger {db}")
    register = load_register(register_path)
    last = first + timedelta(days=days - 1)
    result = build_report(plan, db, first, last, register)
    html = workdir / "report.html"
    html.write_text(render(result, "html", "zh-CN", register), encoding="utf-8")
    (workdir / "report.json").write_text(render(result, "json"), encoding="utf-8")
    if screenshot is not None:
        take_screenshot(html, screenshot)
    return html


def take_screenshot(html: Path, png: Path, width: int = 1400, height: int = 2600) -> None:
    """The report as a person sees it, in Debian's headless Chromium."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "chromium"
    driver = webdriver.Chrome(options=options,
                              service=Service(shutil.which("chromedriver") or "chromedriver"))
    try:
        driver.get(html.resolve().as_uri())
        driver.save_screenshot(str(png))
    finally:
        driver.quit()


def last_monday(today: date) -> date:
    return today - timedelta(days=today.weekday() + 7)


def main() -> int:
    parser = argparse.ArgumentParser(description="A week of a small district, then its report.")
    parser.add_argument("--dir", type=Path, default=REPO / "demo-data" / "week")
    parser.add_argument("--from", dest="first", type=date.fromisoformat,
                        help="first date (default: last week's Monday)")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot (PNG) here")
    args = parser.parse_args()
    first = args.first or last_monday(date.today())
    html = run_week(args.dir.resolve(), first, args.days, screenshot=args.screenshot)
    print(f"  the report: {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
