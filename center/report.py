"""``xunfang report``: the compliance report of a site for a range of dates.

Reads the ledger's database read-only, measures its events against the plan
(:mod:`center.compliance`) and writes JSON (the shape of ``docs/report.md``,
schema ``docs/schemas/report.json``), CSV (the cells) or one self-contained
HTML file (Jinja2 templates and Apache ECharts from this package, inlined, so
it opens offline). Every word people read comes from the message catalogues
in ``center/locale`` (zh-CN by default, English with ``--lang en``)::

    xunfang report --plan plan.toml --db /var/lib/xunfang-centre/zhuantang.db \\
        --from 2026-11-23 --to 2026-11-29 [--format html|csv|json] [--lang zh-CN|en] \\
        [--register people.csv] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import gettext
import io
import json
import sqlite3
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from center.compliance import CELL_VERDICTS, ROUTE_VERDICTS, Compliance, Person, evaluate
from center.plan import ROLES, Plan, load_plan_or_exit
from center.register import ROLE_ALIASES, RegisterError, column_of, read_table
from firmware_py.exc import XunfangError

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "LANGUAGES",
    "ReportError",
    "add_parser",
    "build_report",
    "load_register",
    "read_events",
    "render",
    "translations",
]

HERE = Path(__file__).resolve().parent
LOCALE_DIR = HERE / "locale"
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
DOMAIN = "report"
LANGUAGES = {"zh-CN": "zh_CN", "en": "en"}
FORMATS = ("html", "csv", "json")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Events this far around the period are read too: what proves a unit was up at its edges.
MARGIN = timedelta(days=2)
VERDICT_COLOURS = {"done": "#2e7d32", "alone": "#f9a825", "short": "#ef6c00",
                   "missed": "#c62828", "no_data": "#9e9e9e"}
ROUTE_COLOURS = {"complete": "#2e7d32", "out_of_order": "#f9a825", "shortened": "#ef6c00",
                 "missed": "#c62828"}


def N_(text: str) -> str:
    """Mark a message for the catalogue; translated where it is shown."""
    return text


VERDICT_LABELS = {
    "done": N_("done"), "alone": N_("alone"), "short": N_("short"),
    "missed": N_("missed"), "no_data": N_("no data"),
}
VERDICT_HELP = {
    "done": N_("enough visits by at least the required number of people"),
    "alone": N_("enough visits, but too few of them by enough people"),
    "short": N_("fewer visits than the level requires"),
    "missed": N_("no visit while the unit was online"),
    "no_data": N_("no visit, and the unit cannot be shown to have been online"),
}
ROUTE_LABELS = {
    "complete": N_("complete"), "out_of_order": N_("out of order"),
    "shortened": N_("shortened"), "missed": N_("missed"),
}
ROLE_LABELS = {"police": N_("police"), "auxiliary": N_("auxiliary police"),
               "patrol": N_("patrol guard"), "village": N_("village guard")}
ANOMALY_LABELS = {"repeat_visits": N_("repeated visits"),
                  "impossible_travel": N_("impossible travel"),
                  "unknown_card": N_("unknown card")}
# The usual window names; a plan's own names are shown as they are.
WINDOW_LABELS = {"day1": N_("morning patrol"), "day2": N_("afternoon patrol"),
                 "evening": N_("evening patrol"), "night": N_("night patrol")}
CSV_COLUMNS = [
    ("date", N_("date")), ("window", N_("window")), ("zone", N_("zone")),
    ("unit", N_("unit")), ("point", N_("point")), ("level", N_("alert level")),
    ("required", N_("visits required")), ("visits", N_("visits")),
    ("good_visits", N_("visits by enough people")),
    ("police_led_visits", N_("police-led visits")),
    ("countersigned_visits", N_("countersigned")), ("round_missed", N_("missed rounds raised")),
    ("verdict", N_("verdict")),
]


class ReportError(XunfangError):
    """The report cannot be made: the database or the register cannot be read."""


# -- catalogues -------------------------------------------------------------------------------


@cache
def translations(lang: str = "zh-CN") -> gettext.NullTranslations:
    """The catalogue of ``lang``: the compiled ``.mo``, or the ``.po`` compiled in memory
    when the ``.mo`` is missing or older (a fresh checkout works either way)."""
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r}: choose from {', '.join(LANGUAGES)}")
    folder = LOCALE_DIR / LANGUAGES[lang] / "LC_MESSAGES"
    po, mo = folder / f"{DOMAIN}.po", folder / f"{DOMAIN}.mo"
    if mo.exists() and (not po.exists() or mo.stat().st_mtime >= po.stat().st_mtime):
        with mo.open("rb") as f:
            return gettext.GNUTranslations(f)
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as f:
        catalog = read_po(f, locale=LANGUAGES[lang])
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


# -- inputs: the ledger and the register --------------------------------------------------------


def _connect_read_only(db: Path) -> sqlite3.Connection:
    if not db.exists():
        raise ReportError(f"{db}: no such ledger database")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM events LIMIT 1")
    except sqlite3.Error as err:
        raise ReportError(f"{db}: not a ledger database: {err}") from err
    return conn


def read_events(db: str | Path, plan: Plan, first: date, last: date) -> list[dict[str, Any]]:
    """The site's events a report of ``first`` … ``last`` needs, as the ledger stores them:
    every event within :data:`MARGIN` of the period, and for each unit and journal the
    last event before that (it proves the unit was up) and the last ``level`` and
    ``duty`` events (the level and who was on duty when the period began)."""
    db = Path(db)
    conn = _connect_read_only(db)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'site'").fetchone()
        if row is not None and row[0] != plan.site:
            raise ReportError(f"{db}: the ledger of site {row[0]!r}, the plan is for "
                              f"{plan.site!r}")
        lo = datetime.combine(first, datetime.min.time(), plan.tz) - MARGIN
        hi = datetime.combine(last + timedelta(days=1), datetime.min.time(), plan.tz) + MARGIN
        lo_s = lo.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        hi_s = hi.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        rows = conn.execute(
            "SELECT envelope FROM events WHERE ts >= ? AND ts < ?", (lo_s, hi_s)).fetchall()
        rows += conn.execute(
            "SELECT e.envelope FROM events e JOIN ("
            "  SELECT unit, journal, max(seq) AS seq FROM events WHERE ts < ?1"
            "  GROUP BY unit, journal"
            "  UNION SELECT unit, journal, max(seq) FROM events"
            "  WHERE ts < ?1 AND kind = 'level' GROUP BY unit, journal"
            "  UNION SELECT unit, journal, max(seq) FROM events"
            "  WHERE ts < ?1 AND kind = 'duty' GROUP BY unit, journal"
            ") last ON e.unit = last.unit AND e.journal = last.journal AND e.seq = last.seq",
            (lo_s,)).fetchall()
    except sqlite3.Error as err:
        raise ReportError(f"{db}: cannot read events: {err}") from err
    finally:
        conn.close()
    events: dict[str, dict[str, Any]] = {}
    for (envelope,) in rows:
        try:
            doc = json.loads(envelope)
        except ValueError:
            continue  # the ledger stores only what parsed; a damaged row is skipped
        if isinstance(doc, dict) and isinstance(doc.get("id"), str):
            events[doc["id"]] = doc
    return list(events.values())


REGISTER_COLUMNS = ("badge", "name", "role", "leader", "group", "zone")
_TRUE = {"1", "true", "yes", "y", "是", "√", "x"}


def load_register(path: str | Path) -> dict[str, Person]:
    """People by badge from the register CSV (UTF-8 with or without BOM, or GB18030;
    columns ``badge, name, role, leader, group, zone, …``) or a card-list JSON."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ReportError(f"{path}: cannot read the register: {err.strerror or err}") from err
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(raw)
            cards = doc["cards"] if isinstance(doc, dict) else doc
            rows = [{k: str(v) for k, v in c.items()} for c in cards]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ReportError(f"{path}: not a card list: {err}") from err
        source = "card list"
    else:
        # The same reading as `xunfang cards import`: CSV (UTF-8, BOM, GB18030) or XLSX,
        # English or Chinese headings; the report needs only who is who, so it is lenient
        # about the rest of a row.
        try:
            table = read_table(path)
        except RegisterError as err:
            raise ReportError(f"{path}: {err}") from err
        if not table.rows:
            raise ReportError(f"{path}: line 1: no 'badge' column (columns: "
                              f"{', '.join(REGISTER_COLUMNS)}, …)")
        header = [column_of(h) or h.strip() for h in table.rows[0][1]]
        if "badge" not in header:
            raise ReportError(f"{path}: line 1: no 'badge' column (columns: "
                              f"{', '.join(REGISTER_COLUMNS)}, …)")
        rows = [dict(zip(header, (c.strip() for c in cells), strict=False))
                for _line, cells in table.rows[1:]]
        source = "register"
    people: dict[str, Person] = {}
    for i, row in enumerate(rows, start=2):
        badge = row.get("badge", "")
        if not badge:
            continue
        role = row.get("role", "")
        role = ROLE_ALIASES.get(role, role.lower())
        if role and role not in ROLES:
            raise ReportError(f"{path}: {source} line {i}, column role: {role!r} is not one of "
                              f"{', '.join(ROLES)}")
        people[badge] = Person(badge=badge, name=row.get("name", ""), role=role,
                               group=row.get("group", ""), zone=row.get("zone", ""),
                               leader=row.get("leader", "").lower() in _TRUE)
    return people


# -- outputs ----------------------------------------------------------------------------------


def build_report(plan: Plan, db: str | Path, first: date, last: date,
                 register: Mapping[str, Person] | None = None) -> Compliance:
    """Read the ledger and evaluate: what every format renders."""
    return evaluate(plan, read_events(db, plan, first, last), first, last, register)


def render(result: Compliance, fmt: str = "html", lang: str = "zh-CN",
           register: Mapping[str, Person] | None = None) -> str:
    if fmt == "json":
        return json.dumps(result.as_dict(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        return render_csv(result, lang)
    if fmt == "html":
        return render_html(result, lang, register)
    raise ValueError(f"format {fmt!r}: choose from {', '.join(FORMATS)}")


def window_label(plan: Plan, name: str, _: Callable[[str], str]) -> str:
    label = _(WINDOW_LABELS[name]) if name in WINDOW_LABELS else name
    return f"{label} {plan.windows[name]}"


def render_csv(result: Compliance, lang: str = "zh-CN") -> str:
    """The cells, one row each, headed in ``lang``; UTF-8 with a BOM so spreadsheets read it."""
    _ = translations(lang).gettext
    zones = {z.id: z.name for z in result.plan.zones}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([_(label) for _key, label in CSV_COLUMNS])
    for cell in result.cells:
        row = cell.as_dict()
        row["verdict"] = _(VERDICT_LABELS[cell.verdict])
        row["window"] = window_label(result.plan, cell.window, _)
        row["zone"] = zones.get(cell.zone, cell.zone)
        writer.writerow([row[key] for key, _label in CSV_COLUMNS])
    return "\ufeff" + out.getvalue()


def _local(dt: datetime, plan: Plan, fmt: str = "%m-%d %H:%M") -> str:
    return dt.astimezone(plan.tz).strftime(fmt)


def _minute_of_night(dt: datetime, day: date, plan: Plan) -> float:
    """Minutes from 06:00 local of ``day``: a night's timeline runs 06:00 to 06:00."""
    start = datetime.combine(day, datetime.min.time(), plan.tz) + timedelta(hours=6)
    return round((dt - start).total_seconds() / 60, 1)


def render_html(result: Compliance, lang: str = "zh-CN",
                register: Mapping[str, Person] | None = None) -> str:
    """One self-contained HTML file: styles, data and ECharts inlined."""
    import jinja2

    from center.compliance import parse_ts

    trans = translations(lang)
    _ = trans.gettext
    plan = result.plan
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             extensions=["jinja2.ext.i18n"])
    env.install_gettext_translations(trans, newstyle=True)  # type: ignore[attr-defined]
    people = register or {}
    days = [result.first + timedelta(days=i) for i in range((result.last - result.first).days + 1)]
    columns = [(d, w) for d in days for w in plan.windows]
    rows = [p for p in plan.points if plan.point_windows(p)]
    col_index = {c: i for i, c in enumerate(columns)}
    row_index = {p.unit: i for i, p in enumerate(rows)}
    heat = [[col_index[(c.date, c.window)], row_index[c.unit], CELL_VERDICTS.index(c.verdict),
             c.level, c.required, c.visits, c.good_visits] for c in result.cells]
    counts = {v: sum(c.verdict == v for c in result.cells) for v in CELL_VERDICTS}

    def who(badge: str | None) -> str:
        if not badge:
            return ""
        person = people.get(badge)
        return f"{person.name} ({badge})" if person and person.name else badge

    nights = []
    for d in days:
        marks = []
        for v in result.visits:
            if v.occurrence is not None and v.occurrence.date != d:
                continue
            if v.occurrence is None and v.started.astimezone(plan.tz).date() != d:
                continue
            kind = "good" if v.good else "alone"
            marks.append({"y": v.unit, "x": _minute_of_night(v.started, d, plan), "kind": kind,
                          "text": f"{_local(v.started, plan, '%H:%M')} "
                                  f"{plan.point_by_unit[v.unit].name}: "
                                  + ", ".join(who(b) for b in v.badges)})
        for m in result.missed_rounds:
            t = parse_ts(m["ts"])
            if t is None:
                continue
            x = _minute_of_night(t, d, plan)
            if 0 <= x < 1440:
                marks.append({"y": m["unit"], "x": x, "kind": "round_missed",
                              "text": f"{_local(t, plan, '%H:%M')} {_('missed round raised')}"})
        for row in result.duty:
            t = parse_ts(row["ts"])
            if t is None:
                continue
            x = _minute_of_night(t, d, plan)
            if 0 <= x < 1440:
                state = _("on duty") if row["state"] == "on" else _("off duty")
                marks.append({"y": row["unit"], "x": x,
                              "kind": "leader" if row["leader"] else "duty",
                              "text": f"{_local(t, plan, '%H:%M')} {who(row['badge'])} {state}"})
        if marks:
            nights.append({"date": d.isoformat(), "marks": marks})
    timeline_units = [p.unit for p in plan.points]

    data = {
        "verdicts": list(CELL_VERDICTS),
        "verdictLabels": [_(VERDICT_LABELS[v]) for v in CELL_VERDICTS],
        "colours": [VERDICT_COLOURS[v] for v in CELL_VERDICTS],
        "columns": [f"{d.strftime('%m-%d')} {window_label(plan, w, _).split(' ')[0]}"
                    for d, w in columns],
        "rows": [f"{p.name} {p.unit}" for p in rows],
        "cells": heat,
        "nights": nights,
        "timelineUnits": [f"{plan.point_by_unit[u].name}" for u in timeline_units],
        "timelineIndex": {u: i for i, u in enumerate(timeline_units)},
        "labels": {
            "level": _("alert level"), "required": _("visits required"),
            "visits": _("visits"), "good": _("visits by enough people"),
            "verdict": _("verdict"), "good_visit": _("visit by enough people"),
            "alone_visit": _("visit by too few people"),
            "round_missed": _("missed round raised"), "duty": _("duty change"),
            "leader": _("leader on or off duty"),
        },
    }
    env.filters["point"] = lambda unit: plan.point_by_unit[unit].name \
        if unit in plan.point_by_unit else unit
    template = env.get_template("report.html.j2")
    return template.render(
        lang=lang, plan=plan, result=result, counts=counts,
        verdict_labels={v: _(VERDICT_LABELS[v]) for v in CELL_VERDICTS},
        verdict_help={v: _(VERDICT_HELP[v]) for v in CELL_VERDICTS},
        verdict_colours=VERDICT_COLOURS, route_colours=ROUTE_COLOURS,
        route_labels={v: _(ROUTE_LABELS[v]) for v in ROUTE_VERDICTS},
        role_labels={r: _(ROLE_LABELS[r]) for r in ROLES},
        anomaly_labels={k: _(v) for k, v in ANOMALY_LABELS.items()},
        window=lambda name: window_label(plan, name, _),
        point=lambda unit: plan.point_by_unit[unit].name if unit in plan.point_by_unit else unit,
        local=lambda text, fmt="%m-%d %H:%M": _local(parse_ts(text), plan, fmt)
        if parse_ts(text) else "",
        who=who,
        zone_name={z.id: z.name for z in plan.zones},
        duration=lambda s: f"{s // 3600}:{s % 3600 // 60:02d}",
        police_led_roles=", ".join(_(ROLE_LABELS[r]) for r in plan.supervision.police_led),
        patrol_roles=", ".join(_(ROLE_LABELS[r]) for r in plan.supervision.patrol),
        heat_height=130 + 34 * len(rows),
        data_json=json.dumps(data, ensure_ascii=False).replace("</", "<\\/"),
        echarts_js=(STATIC_DIR / "echarts.min.js").read_text(encoding="utf-8"),
    )


# -- CLI --------------------------------------------------------------------------------------


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def cmd_report(args: argparse.Namespace) -> int:
    plan = load_plan_or_exit(args.plan)
    if args.to < args.from_:
        print(f"--to {args.to} is before --from {args.from_}", file=sys.stderr)
        return EXIT_USAGE
    try:
        register = load_register(args.register) if args.register else None
        result = build_report(plan, args.db, args.from_, args.to, register)
    except ReportError as err:
        print(str(err), file=sys.stderr)
        return EXIT_FAILED
    text = render(result, args.format, args.lang, register)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8", newline="")
        except OSError as err:
            print(f"{args.out}: cannot write the report: {err.strerror or err}", file=sys.stderr)
            return EXIT_FAILED
        counts = {v: sum(c.verdict == v for c in result.cells) for v in CELL_VERDICTS}
        print(f"{args.out}: {len(result.cells)} cells ("
              + ", ".join(f"{v} {n}" for v, n in counts.items()) + f"), {len(result.routes)} "
              f"routes, {len(result.leader)} leader gaps, {len(result.anomalies)} anomalies")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def add_parser(sub: SubParsers) -> None:
    p = sub.add_parser("report", help="compliance report of a site: rounds, routes, "
                                      "supervision, leader on duty, anomalies")
    p.add_argument("--plan", required=True, metavar="PLAN", help="the site's plan.toml")
    p.add_argument("--db", required=True, metavar="DB", help="the site's ledger database")
    p.add_argument("--from", dest="from_", required=True, type=_date, metavar="DATE",
                   help="first date (YYYY-MM-DD, local), by the date a window starts")
    p.add_argument("--to", required=True, type=_date, metavar="DATE", help="last date")
    p.add_argument("--format", choices=FORMATS, default="html", help="html (default), csv, json")
    p.add_argument("--lang", choices=list(LANGUAGES), default="zh-CN",
                   help="language of the html and csv (zh-CN, default; en)")
    p.add_argument("--register", metavar="FILE",
                   help="the register (CSV, or a card list JSON): names, groups, leaders")
    p.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=cmd_report)
