"""The patrol plan: strict keys with key paths, cross-checks, ``xunfang plan check``."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from center.plan import PlanInvalid, load_plan, parse_plan

REPO = Path(__file__).resolve().parents[2]
XUNFANG = Path(sys.executable).parent / "xunfang"

PLAN: dict[str, Any] = {
    "site": "zhuantang", "timezone": "Asia/Shanghai",
    "windows": {"evening": "20:00-22:30", "night": "23:00-05:00"},
    "rounds": {"3": 1, "2": 2, "1": 3},
    "zones": [{"id": "Z1", "name": "转塘一区", "groups": ["G1", "G2"]}],
    "points": [{"unit": "zt-pp-03", "name": "转塘小学", "zone": "Z1"},
               {"unit": "zt-pp-04", "name": "象山", "zone": "Z1", "windows": ["night"]},
               {"unit": "zt-station", "name": "派出所", "zone": "Z1", "windows": []}],
    "routes": [{"group": "G1", "window": "night", "points": ["zt-pp-03", "zt-pp-04"]}],
    "supervision": {"leader_unit": "zt-station"},
}


def problems(**changes: Any) -> list[str]:
    doc = copy.deepcopy(PLAN)
    doc.update(changes)
    with pytest.raises(PlanInvalid) as err:
        parse_plan(doc)
    return err.value.problems


def test_the_shipped_example_plan_is_valid() -> None:
    plan = load_plan(REPO / "config" / "plan.toml")
    assert plan.site == "zhuantang" and len(plan.points) == 9 and plan.plan_version == "1"
    assert plan.supervision.leader_unit == "zt-station"


def test_unknown_keys_are_errors_with_their_key_path() -> None:
    lines = problems(zones=[{"id": "Z1", "name": "一区", "groups": ["G1"], "colour": "red"}],
                     supervison={})
    assert "zones[0].colour: unknown key (misspelt? see docs/report.md)" in lines
    assert "supervison: unknown key (misspelt? see docs/report.md)" in lines


def test_cross_checks_name_every_missing_reference() -> None:
    lines = problems(
        rounds={"3": 1, "2": 2},
        points=[{"unit": "zt-pp-03", "name": "a", "zone": "Z9", "windows": ["dawn"]},
                {"unit": "zt-pp-03", "name": "b", "zone": "Z1"}],
        routes=[{"group": "G7", "window": "noon", "points": ["zt-pp-99"]}],
        supervision={"leader_unit": "zt-nowhere"})
    assert lines == [
        "rounds: no rounds for level 1 (give levels 1, 2 and 3)",
        "points[0].zone: zone 'Z9' is not one of the plan's zones (Z1)",
        "points[0].windows[0]: window 'dawn' is not one of the plan's windows (evening, night)",
        "points[1].unit: unit 'zt-pp-03' is already points[0]",
        "routes[0].group: group 'G7' is not in any zone's groups",
        "routes[0].window: window 'noon' is not one of the plan's windows (evening, night)",
        "routes[0].points[0]: unit 'zt-pp-99' is not one of the plan's points",
        "supervision.leader_unit: unit 'zt-nowhere' is not one of the plan's points",
    ]


def test_a_route_through_a_point_not_patrolled_in_its_window_is_an_error() -> None:
    lines = problems(routes=[{"group": "G1", "window": "evening",
                              "points": ["zt-pp-03", "zt-pp-04"]}])
    assert lines == ["routes[0].points[1]: point 'zt-pp-04' is not patrolled in window "
                     "'evening' (its windows: night)"]


def test_bad_values_say_what_was_expected() -> None:
    lines = problems(site="Zhuan Tang", timezone="Mars/Olympus",
                     windows={"night": "23:00-23:00"}, min_people=0)
    assert any(line.startswith("site: must match") for line in lines)
    assert any(line.startswith("timezone: must be an IANA time zone") for line in lines)
    assert any("window 'night'" in line and "empty" in line for line in lines)
    assert "min_people: must be at least 1, got 0" in lines


def test_leader_levels_need_a_leader_unit() -> None:
    assert problems(supervision={}) == [
        "supervision.leader_unit: required while leader_levels is not empty "
        "(or set leader_levels = [])"]
    parse_plan({**PLAN, "supervision": {"leader_levels": []}})


def test_min_people_written_after_the_rounds_table_is_taken_as_meant() -> None:
    plan = parse_plan({**PLAN, "rounds": {"3": 1, "2": 2, "1": 3, "min_people": 3}})
    assert plan.min_people == 3 and set(plan.rounds) == {1, 2, 3}


def test_a_night_window_crosses_midnight_and_belongs_to_its_start_date() -> None:
    plan = parse_plan(PLAN)
    occ = plan.occurrence("night", date(2026, 11, 23))
    tz = ZoneInfo("Asia/Shanghai")
    assert occ.start == datetime(2026, 11, 23, 23, 0, tzinfo=tz)
    assert occ.end == datetime(2026, 11, 24, 5, 0, tzinfo=tz)
    assert plan.occurrence_at(datetime(2026, 11, 24, 2, 0, tzinfo=tz)) == occ
    assert plan.occurrence_at(datetime(2026, 11, 24, 12, 0, tzinfo=tz)) is None


def test_plan_check_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "plan.toml"
    bad.write_text((REPO / "config" / "plan.toml").read_text(encoding="utf-8")
                   .replace('zone = "Z3"', 'zone = "Z4"').replace("leader_levels", "leader_lvls"),
                   encoding="utf-8")
    out = subprocess.run([str(XUNFANG), "plan", "check", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0] == f"{bad}: plan has 1 problem(s):"
    assert lines[1:] == ["  supervision.leader_lvls: unknown key (misspelt? see docs/report.md)"]
    bad.write_text(bad.read_text(encoding="utf-8").replace("leader_lvls", "leader_levels"),
                   encoding="utf-8")
    out = subprocess.run([str(XUNFANG), "plan", "check", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines()[1:] == [
        f"  points[{i}].zone: zone 'Z4' is not one of the plan's zones (Z1, Z2, Z3)"
        for i in (4, 5, 8)]
    good = subprocess.run([str(XUNFANG), "plan", "check", str(REPO / "config" / "plan.toml")],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and ": ok: site zhuantang" in good.stdout


def test_an_unreadable_plan_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "plan.toml"
    bad.write_text("site = \n", encoding="utf-8")
    out = subprocess.run([str(XUNFANG), "plan", "check", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith(f"{bad}: not valid TOML")


def test_a_plan_without_a_version_is_known_by_its_file_digest(tmp_path: Path) -> None:
    import hashlib

    text = (REPO / "config" / "plan.toml").read_text(encoding="utf-8")
    path = tmp_path / "plan.toml"
    path.write_text(text.replace("version = 1\n", ""), encoding="utf-8")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_plan(path).plan_version == f"sha256:{digest[:12]}"
