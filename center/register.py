"""``xunfang cards import``: the station's register (人员卡登记) to the units' card list.

A station keeps its people and cards in Excel: one row per card, columns
``badge, name, role, leader, group, zone, card, valid_from, valid_to`` (or
their Chinese headings 工号, 姓名, 角色, 所领导, 巡组, 巡区, 卡号, 生效, 失效).
``cards import`` reads that sheet (XLSX, or CSV in UTF-8 with or without BOM
or GB18030, detected), checks every row before anything else (each problem
names its line and column), shows what changes against the list in force
(added, removed, changed) and, with ``--publish``, sends the signed
``desired/cards`` one version up through :mod:`center.send`. Units get only
what they need (card, badge, role, leader, validity); names, groups and zones
stay in the centre's register (:mod:`center.register_store`, ``--db``).

Everything the station reads is in the ``register`` message catalogue
(``center/locale``): Chinese by default, English with ``--lang en``::

    $ xunfang cards import register.csv --site zhuantang --lang en
    register.csv: 6 card(s) of 5 people, read as UTF-8 (with BOM)
    no list in force: every card is added
      added    14008EC793      P-017  张伟  police, leader
    ...
    6 added, 0 removed, 0 changed, 0 unchanged
    version 1 (not sent: add --publish)

``cards history --db FILE --site S [--version N]`` lists the versions the
register holds, or the people and cards of one.

Exit status of ``import``: 0 when the file is good (and, with ``--publish``, every unit
expected to answer applied it); 1 when the broker failed or a unit rejected or
did not answer; 2 for a bad file, bad rows or bad usage (nothing is sent).
"""

from __future__ import annotations

import argparse
import codecs
import csv
import hashlib
import io
import json
import re
import sys
import threading
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import paho.mqtt.client as mqtt

from drivers.exc import CardPatternInvalid
from drivers.readers.cardid import parse_card_pattern
from firmware_py import desired, topics
from firmware_py.commands import MAX_PAYLOAD_BYTES
from firmware_py.desired import MAX_BADGE_LEN, ArgsInvalid, card_form_ok, time_ms, validate_args
from firmware_py.exc import SignatureError
from firmware_py.signing import load_signing_key

from .i18n import DEFAULT_LANGUAGE, LANGUAGES, Catalogue
from .register_store import RegisterStore, RegisterStoreError, StoredVersion
from .send import CARDS_VALID_S, DEFAULT_WAIT_S, Message, Report, parse_duration, send
from .session import (
    BrokerOptions,
    CentreSession,
    SessionError,
    UsageError,
    add_broker_arguments,
    options_from_args,
    site_name,
)

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["COLUMNS", "ROLES", "Diff", "InForce", "Problem", "RegisterError", "Row", "Table",
           "add_parser", "build_cards", "check_rows", "cmd_history", "cmd_import", "diff",
           "read_table", "retained_cards", "use_language"]

# -- messages -----------------------------------------------------------------------------------

DOMAIN = "register"
_catalogue = Catalogue(DOMAIN)
use_language = _catalogue.use
LOCALE_DIR = _catalogue.locale_dir


def _(message: str) -> str:
    return _catalogue.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _catalogue.ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark a message for the catalogue; translated where it is shown."""
    return message



# -- the columns --------------------------------------------------------------------------------

COLUMNS = ("badge", "name", "role", "leader", "group", "zone", "card", "valid_from", "valid_to")
REQUIRED = ("badge", "name", "role", "card")
#: Chinese headings a station's sheet may use instead of the English names.
ALIASES = {"工号": "badge", "姓名": "name", "角色": "role", "所领导": "leader", "巡组": "group",
           "巡区": "zone", "卡号": "card", "生效": "valid_from", "失效": "valid_to"}
HEADINGS = {v: k for k, v in ALIASES.items()}

ROLES = desired.ROLES
ROLE_ALIASES = {"民警": "police", "协警": "auxiliary", "专职巡防队员": "patrol",
                "护村队员": "village"}
ROLE_LABELS = {"police": N_("police"), "auxiliary": N_("auxiliary"), "patrol": N_("patrol"),
               "village": N_("village")}
TRUE_WORDS = {"true", "yes", "y", "1", "是", "√", "x"}
FALSE_WORDS = {"", "false", "no", "n", "0", "否"}

MAX_NAME_LEN = 64
MAX_TEXT_LEN = 64
DEFAULT_TIMEZONE = "Asia/Shanghai"
#: Validity dates a card list can carry (four-digit years, after the epoch).
MIN_YEAR, MAX_YEAR = 1970, 9998
#: Room left in the units' 256 KiB message limit for the envelope around the list.
ENVELOPE_ROOM = 1024

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DATE_RE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_LOCAL_RE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?$")
_ZONED_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$",
                       re.IGNORECASE)


class RegisterError(Exception):
    """The file cannot be read at all (missing, not CSV/XLSX, not UTF-8 or GB18030)."""


def column_letter(index: int) -> str:
    """Spreadsheet column name of a 0-based index: 0 → A, 26 → AA."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (line, column) and what."""

    line: int | None
    column: int | None      # 0-based index in the sheet
    heading: str | None     # the column's heading as the file spells it
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        if self.column is None:
            return _("line {line}: {message}").format(line=self.line, message=self.message)
        if not self.heading:
            return _("line {line}, column {column}: {message}").format(
                line=self.line, column=column_letter(self.column), message=self.message)
        return _("line {line}, column {column} ({heading}): {message}").format(
            line=self.line, column=column_letter(self.column), heading=self.heading or "",
            message=self.message)


# -- reading the file ---------------------------------------------------------------------------


@dataclass
class Table:
    """The cells of the sheet as text, with the line of each row."""

    path: Path
    encoding: str                                 # how it was read, for the station to see
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    sha256: str = ""


def _decode(data: bytes, path: Path) -> tuple[str, str]:
    if data.startswith(codecs.BOM_UTF8):
        candidates = [("utf-8", N_("UTF-8 (with BOM)"), data[len(codecs.BOM_UTF8):])]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise RegisterError(_("{file} is UTF-16 text: save it from Excel as \"CSV UTF-8\" "
                              "or as XLSX").format(file=path))
    else:
        candidates = [("utf-8", N_("UTF-8"), data), ("gb18030", N_("GB18030"), data)]
    first_error: UnicodeDecodeError | None = None
    for codec, label, body in candidates:
        try:
            return body.decode(codec), label
        except UnicodeDecodeError as err:
            first_error = first_error or err
    assert first_error is not None
    line = data[:first_error.start].count(b"\n") + 1
    raise RegisterError(_("{file} is neither UTF-8 nor GB18030 text (line {line}): save it "
                          "from Excel as \"CSV UTF-8\" or as XLSX").format(file=path, line=line))


def _read_csv(path: Path, data: bytes) -> Table:
    text, label = _decode(data, path)
    table = Table(path, label)
    reader = csv.reader(io.StringIO(text, newline=""))
    consumed = 0
    try:
        for record in reader:
            table.rows.append((consumed + 1, [cell.strip() for cell in record]))
            consumed = reader.line_num
    except csv.Error as err:
        raise RegisterError(_("{file}, line {line}: not CSV: {error}").format(
            file=path, line=reader.line_num, error=err)) from err
    return table


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        # A date cell, or a time of exactly midnight, is a whole day.
        if value.time() == dtime(0, 0):
            return value.date().isoformat()
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _read_xlsx(path: Path, data: bytes) -> Table:
    from openpyxl import load_workbook  # only for XLSX files: it takes a while to import
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, ValueError, OSError) as err:
        raise RegisterError(_("{file} is not a readable XLSX workbook: {error}").format(
            file=path, error=err)) from err
    try:
        sheet = book.worksheets[0]
        table = Table(path, N_("XLSX"))
        for line, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            table.rows.append((line, [_cell_text(v) for v in values]))
    finally:
        book.close()
    return table


def read_table(path: str | Path) -> Table:
    """Read a CSV or XLSX file into text cells; :class:`RegisterError` if it cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RegisterError(_("cannot read {file}: {error}").format(
            file=path, error=err.strerror or err)) from err
    if path.suffix.lower() in (".xlsx", ".xlsm") or data.startswith(b"PK\x03\x04"):
        table = _read_xlsx(path, data)
    else:
        table = _read_csv(path, data)
    table.sha256 = hashlib.sha256(data).hexdigest()
    return table


# -- checking the rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One checked card of the register."""

    line: int
    card: str               # canonical form: upper-case hex, dec:NNNNNNNNNN or w26:F,N
    badge: str
    name: str
    role: str
    leader: bool = False
    group: str | None = None
    zone: str | None = None
    valid_from: str | None = None   # UTC, 2026-12-01T00:00:00Z
    valid_to: str | None = None

    def unit_entry(self) -> dict[str, Any]:
        """What a unit gets: card, badge, role, leader, validity; never names."""
        entry: dict[str, Any] = {"card": self.card, "badge": self.badge, "role": self.role}
        if self.leader:
            entry["leader"] = True
        if self.valid_from:
            entry["valid_from"] = self.valid_from
        if self.valid_to:
            entry["valid_to"] = self.valid_to
        return entry

    def as_dict(self) -> dict[str, Any]:
        return {"card": self.card, "badge": self.badge, "name": self.name, "role": self.role,
                "leader": self.leader, "group": self.group, "zone": self.zone,
                "valid_from": self.valid_from, "valid_to": self.valid_to, "line": self.line}


def column_of(heading: str) -> str | None:
    """The register column a heading names (English or Chinese), or None."""
    text = heading.strip().lstrip("\ufeff").strip()
    if text in ALIASES:
        return ALIASES[text]
    key = text.lower().replace(" ", "_").replace("-", "_")
    return key if key in COLUMNS else None


def _column_names() -> str:
    return ", ".join(f"{c} ({HEADINGS[c]})" for c in COLUMNS)


class _Checker:
    """Checks the rows of one table, collecting every problem."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self.problems: list[Problem] = []

    def add(self, line: int | None, column: int | None, heading: str | None,
            message: str) -> None:
        self.problems.append(Problem(line, column, heading, message))

    # -- cells --

    def text(self, value: str, limit: int) -> str | None:
        if _CONTROL_RE.search(value):
            return _("control characters are not allowed")
        if len(value) > limit:
            return _("at most {limit} characters, this has {n}").format(limit=limit,
                                                                        n=len(value))
        return None

    def role(self, value: str) -> tuple[str | None, str | None]:
        role = ROLE_ALIASES.get(value) or (value.lower() if value.lower() in ROLES else None)
        if role is None:
            choices = ", ".join(f"{alias} ({r})" for alias, r in ROLE_ALIASES.items())
            return None, _("role must be one of {choices}; got {value!r}").format(
                choices=choices, value=value)
        return role, None

    def card(self, value: str) -> tuple[str | None, str | None]:
        if not value:
            return None, _("a card id is required")
        try:
            card = parse_card_pattern(value).text
        except CardPatternInvalid:
            return None, _("{value!r} is not a card id: give the hex id the reader reports "
                           "(e.g. 14008EC793), dec: and the 10 digits printed on the card "
                           "(dec:0009357203) or w26:facility,number (w26:142,51091)").format(
                value=value)
        if not card_form_ok(card):
            return None, _("{value!r}: a hex card id has 8, 10, 14 or 20 digits (a number "
                           "that lost its leading zeros in Excel? format the column as "
                           "text)").format(value=value)
        return card, None

    def when(self, value: str, end: bool) -> tuple[str | None, str | None]:
        """A validity bound as a UTC time; a plain date is local midnight (after the day
        for an end: a card valid to 2027-03-01 works that whole day)."""
        if not value:
            return None, None
        try:
            m = _DATE_RE.match(value)
            if m and end and m.group(1) == "9999":
                return None, None       # Excel's "for ever"
            if m:
                day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
                if end:
                    day += timedelta(days=1)
                local = datetime.combine(day, dtime(0, 0), self.tz)
            else:
                m = _LOCAL_RE.match(value)
                if m:
                    local = datetime(*(int(g or 0) for g in m.groups()), tzinfo=self.tz)
                elif _ZONED_RE.match(value):
                    local = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
                else:
                    raise ValueError(value)
            utc = local.astimezone(UTC)
            if not MIN_YEAR <= utc.year <= MAX_YEAR:
                raise ValueError(value)
        except (ValueError, OverflowError):
            return None, _("{value!r} is not a date or time: give 2026-12-01, "
                           "2026-12-01 08:00 (site time) or 2026-12-01T00:00:00Z").format(
                value=value)
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ"), None

    # -- the sheet --

    def headings(self, line: int, cells: list[str]) -> dict[str, int] | None:
        where: dict[str, int] = {}
        ok = True
        for i, heading in enumerate(cells):
            if not heading:
                continue
            column = column_of(heading)
            if column is None:
                self.add(line, i, heading, _("unknown column; the columns are: {names}")
                         .format(names=_column_names()))
                ok = False
            elif column in where:
                self.add(line, i, heading, _("column {name} appears twice (also column "
                                             "{other})").format(
                    name=column, other=column_letter(where[column])))
                ok = False
            else:
                where[column] = i
        for column in REQUIRED:
            if column not in where:
                self.add(line, None, None, _("no column {name} ({heading}): the heading row "
                                             "needs at least {required}").format(
                    name=column, heading=HEADINGS[column],
                    required=", ".join(f"{c} ({HEADINGS[c]})" for c in REQUIRED)))
                ok = False
        return where if ok else None

    def rows(self, table: Table) -> list[Row]:
        rows = [(line, cells) for line, cells in table.rows if any(cells)]
        if not rows:
            self.add(None, None, None, _("{file} has no heading row and no cards").format(
                file=table.path))
            return []
        head_line, head_cells = rows[0]
        where = self.headings(head_line, head_cells)
        if where is None:
            return []
        headings = {c: head_cells[i] for c, i in where.items()}
        out: list[Row] = []
        for line, cells in rows[1:]:
            row = self.row(line, cells, where, headings)
            if row is not None:
                out.append(row)
        if len(rows) == 1:
            self.add(None, None, None, _("{file} has a heading row but no cards").format(
                file=table.path))
        self.across(out, where, headings)
        return out

    def row(self, line: int, cells: list[str], where: Mapping[str, int],
            headings: Mapping[str, str]) -> Row | None:
        before = len(self.problems)
        used = set(where.values())
        for i, value in enumerate(cells):
            if value and i not in used:
                self.add(line, i, "", _("a value in a column without a known heading: "
                                        "{value!r}").format(value=value))

        def cell(column: str) -> str:
            i = where.get(column)
            return cells[i] if i is not None and i < len(cells) else ""

        def bad(column: str, message: str) -> None:
            self.add(line, where[column], headings[column], message)

        values: dict[str, Any] = {}
        for column, limit in (("badge", MAX_BADGE_LEN), ("name", MAX_NAME_LEN)):
            value = cell(column)
            if not value:
                bad(column, _("a value is required"))
            elif (why := self.text(value, limit)) is not None:
                bad(column, why)
            values[column] = value
        for column in ("group", "zone"):
            value = cell(column)
            if value and (why := self.text(value, MAX_TEXT_LEN)) is not None:
                bad(column, why)
            values[column] = value or None
        role, why = self.role(cell("role"))
        if why is not None:
            bad("role", why)
        leader = False
        if "leader" in where:
            word = cell("leader").lower()
            if word in TRUE_WORDS:
                leader = True
            elif word not in FALSE_WORDS:
                bad("leader", _("leader must be yes or no (是/否, true/false, 1/0); got "
                                "{value!r}").format(value=cell("leader")))
        if leader and role is not None and role != "police":
            bad("leader", _("a leader (所领导) must be police (民警), not {role}").format(
                role=_(ROLE_LABELS[role])))
        card, why = self.card(cell("card"))
        if why is not None:
            bad("card", why)
        start = end = None
        if "valid_from" in where:
            start, why = self.when(cell("valid_from"), end=False)
            if why is not None:
                bad("valid_from", why)
        if "valid_to" in where:
            end, why = self.when(cell("valid_to"), end=True)
            if why is not None:
                bad("valid_to", why)
        if start and end and time_ms(end) <= time_ms(start):
            bad("valid_to", _("the card's validity ends before it begins"))
        if len(self.problems) > before or role is None or card is None:
            return None
        return Row(line, card, values["badge"], values["name"], role, leader, values["group"],
                   values["zone"], start, end)

    def across(self, rows: Sequence[Row], where: Mapping[str, int],
               headings: Mapping[str, str]) -> None:
        """Problems between rows: a card listed twice (in any of its forms), and one badge
        with two different people."""
        cards = _CardOverlaps()
        by_badge: dict[str, Row] = {}
        for row in rows:
            first = cards.add(row)
            if first is not None:
                message = _("card {card} is already on line {line}").format(
                    card=row.card, line=first.line) if first.card == row.card else \
                    _("{card} can match the same tag as {other} on line {line}").format(
                        card=row.card, other=first.card, line=first.line)
                self.add(row.line, where["card"], headings["card"], message)
            first = by_badge.setdefault(row.badge, row)
            if first is row:
                continue
            for column in ("name", "role", "leader", "group", "zone"):
                if getattr(first, column) != getattr(row, column) and column in where:
                    self.add(row.line, where[column], headings[column],
                             _("badge {badge} is also on line {line} with another {column}: "
                               "one badge is one person").format(
                                 badge=row.badge, line=first.line, column=headings[column]))
                    break


class _CardOverlaps:
    """Finds card-list entries that can match one tag.

    A hex id matches itself only; ``dec:`` a tag of up to five bytes by its low 32
    bits, ``w26:`` by its low 24. So a short hex id overlaps the ``dec:`` of its low
    32 bits and the ``w26:`` of its low 24, and ``dec:`` the ``w26:`` of its low 24;
    two different hex ids never overlap, nor two different ``dec:`` numbers.
    """

    def __init__(self) -> None:
        self.exact: dict[tuple[str, int | str], Row] = {}
        self.hex_low32: dict[int, Row] = {}
        self.hex_low24: dict[int, Row] = {}
        self.dec_low24: dict[int, Row] = {}

    def add(self, row: Row) -> Row | None:
        """Note ``row``; the earlier row it overlaps, if any (then it is not noted)."""
        p = parse_card_pattern(row.card)
        if p.kind == "hex":
            assert isinstance(p.value, str)
            short = len(p.value) <= 10
            value = int(p.value, 16)
            hits = [self.exact.get(("hex", p.value))]
            if short:
                hits += [self.exact.get(("dec", value & 0xFFFFFFFF)),
                         self.exact.get(("w26", value & 0xFFFFFF))]
        else:
            assert isinstance(p.value, int)
            value = p.value
            if p.kind == "dec":
                hits = [self.exact.get(("dec", value)), self.hex_low32.get(value),
                        self.exact.get(("w26", value & 0xFFFFFF))]
            else:
                hits = [self.exact.get(("w26", value)), self.hex_low24.get(value),
                        self.dec_low24.get(value)]
        first = next((h for h in hits if h is not None), None)
        if first is not None:
            return first
        self.exact[(p.kind, p.value)] = row
        if p.kind == "hex" and short:
            self.hex_low32.setdefault(value & 0xFFFFFFFF, row)
            self.hex_low24.setdefault(value & 0xFFFFFF, row)
        elif p.kind == "dec":
            self.dec_low24.setdefault(value & 0xFFFFFF, row)
        return None


def check_rows(table: Table, timezone: str = DEFAULT_TIMEZONE) -> tuple[list[Row], list[Problem]]:
    """Every row checked: the rows, and every problem (an empty list: the file is good)."""
    checker = _Checker(ZoneInfo(timezone))
    rows = checker.rows(table)
    problems = sorted(checker.problems, key=lambda p: (p.line or 0, p.column or 0))
    return rows, problems


def build_cards(rows: Iterable[Row], version: int) -> dict[str, Any]:
    """The ``args`` of ``desired/cards``, checked as a unit checks them."""
    args = {"version": version, "cards": [row.unit_entry() for row in rows]}
    validate_args("cards", args)
    return args


# -- the list in force --------------------------------------------------------------------------


@dataclass
class InForce:
    """The card list the new one replaces: from the centre's register or the broker."""

    version: int | None
    where: str                                   # the register file, or the retained topic
    entries: dict[str, dict[str, Any]]           # card → entry
    has_people: bool = False                     # entries carry names, groups, zones

    @classmethod
    def nothing(cls) -> InForce:
        return cls(None, "", {})


def _times_equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return time_ms(a) == time_ms(b)
    except ArgsInvalid:
        return bool(a == b)


UNIT_FIELDS = ("badge", "role", "leader", "valid_from", "valid_to")
PEOPLE_FIELDS = ("name", "group", "zone")


@dataclass
class Diff:
    added: list[Row] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[tuple[Row, dict[str, Any], list[str]]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff(rows: Sequence[Row], in_force: InForce) -> Diff:
    """Added, removed and changed cards, by card; people's details only when known."""
    out = Diff()
    new_cards = {row.card for row in rows}
    fields = UNIT_FIELDS + (PEOPLE_FIELDS if in_force.has_people else ())
    for row in rows:
        old = in_force.entries.get(row.card)
        if old is None:
            out.added.append(row)
            continue
        new = row.as_dict()
        changed = []
        for name in fields:
            a, b = old.get(name), new.get(name)
            if name == "leader":
                a, b = bool(a), bool(b)
            elif name in PEOPLE_FIELDS:
                a, b = a or None, b or None
            same = _times_equal(a, b) if name.startswith("valid_") else a == b
            if not same:
                changed.append(name)
        if changed:
            out.changed.append((row, old, changed))
        else:
            out.unchanged += 1
    out.removed = [e for card, e in sorted(in_force.entries.items()) if card not in new_cards]
    return out


def retained_cards(options: BrokerOptions, site: str,
                   timeout: float = 10.0) -> tuple[dict[str, Any] | None, str]:
    """The retained ``desired/cards`` envelope on the site's ``_all`` topic (None: none)."""
    topic = topics.desired(site, topics.ALL_UNITS, "cards")
    got: list[bytes] = []
    lock = threading.Lock()

    def on_message(msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topic and msg.retain:
            with lock:
                got.append(bytes(msg.payload))

    with CentreSession(options, "xunfang_cards", on_message=on_message) as session:
        session.connect()
        # At QoS 0 the broker writes the retained message straight after the SUBACK; the
        # SUBACK of a second subscription therefore comes after it, if there is one.
        session.subscribe([topic], timeout, qos=0)
        session.subscribe([f"{topics.PREFIX}/{site}/{topics.ALL_UNITS}/desired/level"],
                          timeout, qos=0)
    with lock:
        payload = got[0] if got else b""
    if not payload:
        return None, topic
    try:
        env = json.loads(payload.decode("utf-8"))
        if not isinstance(env, dict) or env.get("name") != "cards":
            raise ValueError("not a cards envelope")
        validate_args("cards", env.get("args"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RegisterError(_("the retained document on {topic} is not a card list: "
                              "{error}").format(topic=topic, error=err)) from err
    return env, topic


def in_force_from_broker(env: dict[str, Any] | None, topic: str) -> InForce:
    if env is None:
        return InForce(None, topic, {})
    args = env["args"]
    return InForce(args["version"], topic, {e["card"]: dict(e) for e in args["cards"]})


def in_force_from_store(stored: StoredVersion | None, path: str) -> InForce:
    if stored is None:
        return InForce(None, path, {}, has_people=True)
    return InForce(stored.version, path, {e["card"]: e for e in stored.entries},
                   has_people=True)


# -- output -------------------------------------------------------------------------------------


def _role(role: Any) -> str:
    return _(ROLE_LABELS[role]) if role in ROLE_LABELS else str(role)


def _local(value: Any, tz: ZoneInfo) -> str:
    """A UTC time of the card list as the station thinks of it: local, to the minute."""
    try:
        ms = time_ms(value)
    except ArgsInvalid:
        return str(value)
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def _describe(entry: Mapping[str, Any], tz: ZoneInfo) -> str:
    parts = [str(entry.get("badge", ""))]
    if entry.get("name"):
        parts.append(str(entry["name"]))
    what = _role(entry.get("role"))
    if entry.get("leader"):
        what += _(", leader")
    parts.append(what)
    for column in ("group", "zone"):
        if entry.get(column):
            parts.append(str(entry[column]))
    if entry.get("valid_from") or entry.get("valid_to"):
        parts.append(_("valid {start} to {end}").format(
            start=_local(entry["valid_from"], tz) if entry.get("valid_from") else "…",
            end=_local(entry["valid_to"], tz) if entry.get("valid_to") else "…"))
    return "  ".join(parts)


def _value(name: str, value: Any, tz: ZoneInfo) -> str:
    if name.startswith("valid_") and value:
        return _local(value, tz)
    if name == "role":
        return _role(value)
    if name == "leader":
        return _("yes") if value else _("no")
    return str(value) if value not in (None, "") else _("(none)")


FIELD_LABELS = {"badge": N_("badge"), "name": N_("name"), "role": N_("role"),
                "leader": N_("leader"), "group": N_("group"), "zone": N_("zone"),
                "valid_from": N_("valid from"), "valid_to": N_("valid to")}


def print_diff(result: Diff, rows: Sequence[Row], out: IO[str], tz: ZoneInfo) -> None:
    """The diff for the station; validity in the site's local time."""
    width = max([len(r.card) for r in rows] + [len(e["card"]) for e in result.removed] + [8])
    added, removed, changed = _("added"), _("removed"), _("changed")
    pad = max(len(added), len(removed), len(changed))
    for row in result.added:
        print(f"  {added:<{pad}} {row.card:<{width}}  {_describe(row.as_dict(), tz)}", file=out)
    for entry in result.removed:
        print(f"  {removed:<{pad}} {entry['card']:<{width}}  {_describe(entry, tz)}", file=out)
    for row, old, names in result.changed:
        new = row.as_dict()
        changes = "; ".join(
            _("{field} {old} → {new}").format(field=_(FIELD_LABELS[n]),
                                              old=_value(n, old.get(n), tz),
                                              new=_value(n, new.get(n), tz))
            for n in names)
        print(f"  {changed:<{pad}} {row.card:<{width}}  {row.badge}: {changes}", file=out)
    print(_("{added} added, {removed} removed, {changed} changed, {same} unchanged").format(
        added=len(result.added), removed=len(result.removed), changed=len(result.changed),
        same=result.unchanged), file=out)


def print_report(report: Report, out: IO[str], waited: bool) -> None:
    """Who applied the list, as ``xunfang send`` reports it, in the station's language."""
    print(_("sent, id {id}, retained on {topics}").format(id=report.id,
                                                           topics=", ".join(report.topics)),
          file=out)
    if not waited:
        return
    applied, rejected, silent, offline = _("applied"), _("rejected"), _("no answer"), \
        _("offline")
    pad = max(len(applied), len(rejected), len(silent), len(offline))
    for unit in report.applied():
        print(f"  {applied:<{pad}} {unit}", file=out)
    for a in report.rejected():
        detail = f": {a.detail}" if a.detail else ""
        print(f"  {rejected:<{pad}} {a.unit}  {a.reason}{detail}", file=out)
    for unit in report.silent():
        state = _("online") if unit in report.online else (
            offline if unit in report.offline else _("not known to the broker"))
        print(f"  {silent:<{pad}} {unit}  ({state})", file=out)
    late = sorted(report.offline - set(report.answers) - report.expected)
    later = _("gets it when it reconnects")
    for unit in late:
        print(f"  {offline:<{pad}} {unit}  ({later})", file=out)
    total = len(report.expected | report.offline | set(report.answers))
    print(_("{total} unit(s): {applied} applied, {rejected} rejected, {silent} no answer, "
            "{offline} offline").format(total=total, applied=len(report.applied()),
                                        rejected=len(report.rejected()),
                                        silent=len(report.silent()), offline=len(late)),
          file=out)


# -- the command --------------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _fail(message: str, code: int) -> int:
    print(f"xunfang cards: {message}", file=sys.stderr)
    return code


def cmd_import(args: argparse.Namespace) -> int:
    use_language(args.lang)
    out = sys.stdout
    tz = _zone(args.timezone)
    if tz is None:
        return _fail(_("unknown time zone {tz!r} (e.g. Asia/Shanghai)").format(
            tz=args.timezone), 2)
    if args.publish and (args.broker is None or args.key is None):
        return _fail(_("--publish needs --broker and --key"), 2)
    options = None
    if args.broker is not None:
        try:
            options = options_from_args(args)
        except UsageError as err:
            return _fail(str(err), 2)
    key = None
    if args.publish:
        try:
            key = load_signing_key(args.key)
        except SignatureError as err:
            return _fail(str(err), 2)
        except OSError as err:
            return _fail(_("cannot read key {file}: {error}").format(
                file=args.key, error=err.strerror or err), 2)

    try:
        table = read_table(args.file)
    except RegisterError as err:
        return _fail(str(err), 2)
    rows, problems = check_rows(table, str(tz.key))
    if problems:
        print(ngettext("{file}: {n} problem; nothing was sent", "{file}: {n} problems; "
                       "nothing was sent", len(problems)).format(file=table.path,
                                                                 n=len(problems)), file=out)
        for problem in problems:
            print(f"  {problem}", file=out)
        return 2
    people = len({row.badge for row in rows})
    print(ngettext("{file}: {n} card of {people} people, read as {encoding}",
                   "{file}: {n} cards of {people} people, read as {encoding}",
                   len(rows)).format(file=table.path, n=len(rows), people=people,
                                     encoding=_(table.encoding)), file=out)

    # The list in force: the centre's register when given, else the broker's copy.
    store: RegisterStore | None = None
    stored: StoredVersion | None = None
    retained: dict[str, Any] | None = None
    topic = topics.desired(args.site, topics.ALL_UNITS, "cards")
    try:
        if args.db:
            store = RegisterStore(args.db, args.site, create=args.publish)
            stored = store.current() if store.exists else None
        if options is not None:
            retained, topic = retained_cards(options, args.site)
    except RegisterStoreError as err:
        return _fail(str(err), 2)
    except RegisterError as err:
        return _fail(str(err), 1)
    except SessionError as err:
        return _fail(str(err), 1)
    try:
        return _diff_and_publish(args, out, table, rows, store, stored, retained, topic,
                                 options, key)
    finally:
        if store is not None:
            store.close()


def _diff_and_publish(args: argparse.Namespace, out: IO[str], table: Table, rows: list[Row],
                      store: RegisterStore | None, stored: StoredVersion | None,
                      retained: dict[str, Any] | None, topic: str,
                      options: BrokerOptions | None, key: Any) -> int:
    if store is not None:
        in_force = in_force_from_store(stored, args.db)
    elif options is not None:
        in_force = in_force_from_broker(retained, topic)
    else:
        in_force = InForce.nothing()
    if in_force.version is not None:
        print(ngettext("list in force: version {version}, {n} card ({where})",
                       "list in force: version {version}, {n} cards ({where})",
                       len(in_force.entries)).format(version=in_force.version,
                                                     n=len(in_force.entries),
                                                     where=in_force.where), file=out)
    elif in_force.where:
        print(_("no list in force ({where}): every card is added").format(
            where=in_force.where), file=out)
    else:
        print(_("no list in force given (--db or --broker): every card is added"), file=out)
    broker_version = retained["args"]["version"] if retained is not None else None
    if store is not None and options is not None and broker_version != in_force.version:
        print(_("note: the broker holds version {broker}, the register version {register}")
              .format(broker=broker_version if broker_version is not None else _("(none)"),
                      register=in_force.version if in_force.version is not None
                      else _("(none)")), file=out)
    result = diff(rows, in_force)
    print_diff(result, rows, out, ZoneInfo(args.timezone))

    known = [v for v in (in_force.version, broker_version) if v is not None]
    version = max(known) + 1 if known else 1
    try:
        cards = build_cards(rows, version)
    except ArgsInvalid as err:  # the rows were checked: a unit's rule this file does not know
        return _fail(str(err), 2)
    size = len(json.dumps(cards, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size + ENVELOPE_ROOM > MAX_PAYLOAD_BYTES:
        print(_("the card list is {size} bytes: over the units' limit of {limit} bytes; "
                "nothing was sent").format(size=size, limit=MAX_PAYLOAD_BYTES), file=out)
        return 2
    if not args.publish:
        print(_("version {version} (not sent: add --publish)").format(version=version),
              file=out)
        return 0
    if result.empty and broker_version is not None and broker_version == in_force.version:
        print(_("nothing changed: version {version} stays in force, nothing was sent")
              .format(version=in_force.version), file=out)
        return 0
    assert options is not None
    msg = Message("cards", cards, True, args.valid_for or CARDS_VALID_S)
    issued = int(time.time() * 1000)
    try:
        report = send(options, key, msg, args.site, [], args.wait, now_ms=issued)
    except SessionError as err:
        return _fail(str(err), 1)
    print(ngettext("version {version}, {n} card:", "version {version}, {n} cards:",
                   len(rows)).format(version=version, n=len(rows)), file=out)
    print_report(report, out, args.wait > 0)
    if store is not None:
        from firmware_py.clock import rfc3339_ms

        store.record(version, report.id, rfc3339_ms(issued), table.path.name, table.sha256,
                     table.encoding, [row.as_dict() for row in rows])
        print(_("register {file}: version {version} recorded").format(file=args.db,
                                                                      version=version),
              file=out)
    return 0 if report.ok() else 1


def cmd_history(args: argparse.Namespace) -> int:
    """``cards history``: the versions in the register, or the people of one version."""
    use_language(args.lang)
    tz = _zone(args.timezone)
    if tz is None:
        return _fail(_("unknown time zone {tz!r} (e.g. Asia/Shanghai)").format(
            tz=args.timezone), 2)
    if not Path(args.db).exists():
        return _fail(_("no register at {file}").format(file=args.db), 2)
    try:
        store = RegisterStore(args.db, args.site)
    except RegisterStoreError as err:
        return _fail(str(err), 2)
    try:
        history = store.history()
        if args.version is None:
            print(ngettext("register {file}, site {site}: {n} version",
                           "register {file}, site {site}: {n} versions", len(history)).format(
                file=args.db, site=args.site, n=len(history)))
            for info in history:
                print("  " + _("version {version}  sent {when}  {n} cards  from {source}  "
                               "id {id}").format(
                    version=info.version, when=_local(info.issued_at, tz), n=info.cards,
                    source=info.source, id=info.envelope_id))
            return 0
        stored = store.version(args.version)
        if stored is None:
            return _fail(_("register {file} has no version {version} of site {site}").format(
                file=args.db, version=args.version, site=args.site), 2)
        print(_("version {version}  sent {when}  {n} cards  from {source}  id {id}").format(
            version=stored.version, when=_local(stored.info.issued_at, tz),
            n=stored.info.cards, source=stored.info.source, id=stored.info.envelope_id))
        width = max([len(e["card"]) for e in stored.entries] + [8])
        for entry in stored.entries:
            print(f"  {entry['card']:<{width}}  {_describe(entry, tz)}")
        return 0
    finally:
        store.close()


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cards", help="the register of people and cards (command centre)",
        description="Import the station's register (CSV or XLSX) and send the units' "
                    "card list.")
    sub = p.add_subparsers(dest="cards_command", metavar="{import,history}", required=True)
    imp = sub.add_parser(
        "import", help="check a register file, show what changes, and publish it",
        description="Check every row of a register (CSV in UTF-8 or GB18030, or XLSX), "
                    "show the cards added, removed and changed against the list in force, "
                    "and with --publish send the signed desired/cards, one version up.")
    imp.add_argument("file", metavar="FILE", help="register.csv or register.xlsx")
    imp.add_argument("--site", type=site_name, required=True, help="the units' site")
    imp.add_argument("--db", metavar="FILE",
                     help="the centre's register (the ledger's database, or a file of its "
                          "own): diff against it, and record what is published")
    imp.add_argument("--publish", action="store_true",
                     help="send the list (needs --broker and --key)")
    imp.add_argument("--key", metavar="FILE", help="the centre's private key file")
    imp.add_argument("--timezone", default=DEFAULT_TIMEZONE, metavar="TZ",
                     help=f"the site's time zone, for plain dates ({DEFAULT_TIMEZONE})")
    imp.add_argument("--lang", choices=list(LANGUAGES), default=DEFAULT_LANGUAGE,
                     help="language of the output (zh-CN)")
    imp.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                     help=f"wait this long for the units' answers ({DEFAULT_WAIT_S:g})")
    imp.add_argument("--valid-for", type=parse_duration, metavar="DURATION",
                     help="how long units may apply the list (365d)")
    add_broker_arguments(imp, required=False)
    imp.set_defaults(func=cmd_import)

    hist = sub.add_parser(
        "history", help="the versions kept in the centre's register, or one version's cards",
        description="List the card-list versions recorded in the register (--db), or with "
                    "--version N the people and cards of that version.")
    hist.add_argument("--db", required=True, metavar="FILE", help="the centre's register")
    hist.add_argument("--site", type=site_name, required=True, help="the units' site")
    hist.add_argument("--version", type=int, metavar="N", help="show the cards of version N")
    hist.add_argument("--timezone", default=DEFAULT_TIMEZONE, metavar="TZ",
                      help=f"the site's time zone, for the times shown ({DEFAULT_TIMEZONE})")
    hist.add_argument("--lang", choices=list(LANGUAGES), default=DEFAULT_LANGUAGE,
                      help="language of the output (zh-CN)")
    hist.set_defaults(func=cmd_history)
    return p
