"""The report's words: every one in the catalogues, translated, none hard-coded in templates."""

from __future__ import annotations

import gettext
import re
import shutil
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir, extract_from_file
from babel.messages.pofile import read_po

import center.report as report

REPO = Path(__file__).resolve().parents[2]
LOCALE = REPO / "center" / "locale"


def extracted() -> set[str]:
    method_map = [("center/report.py", "python"), ("center/templates/**.j2", "jinja2")]
    options = {"center/templates/**.j2": {"extensions": "jinja2.ext.i18n"}}
    found = extract_from_dir(str(REPO), method_map, options, keywords={"_": None, "N_": None,
                                                                       "gettext": None})
    return {msg for _file, _line, msg, _comments, _context in found if isinstance(msg, str)}


def catalogue(lang: str) -> dict[str, str]:
    with (LOCALE / lang / "LC_MESSAGES" / "report.po").open("rb") as f:
        return {m.id: m.string for m in read_po(f) if m.id}


def test_every_message_of_the_report_is_translated_to_chinese() -> None:
    messages = extracted()
    assert len(messages) > 60
    zh, en = catalogue("zh_CN"), catalogue("en")
    assert sorted(messages - zh.keys()) == []
    assert sorted(messages - en.keys()) == []
    assert [m for m in messages if not zh[m]] == []
    assert sorted(zh.keys() - messages) == []          # nothing stale either
    # Placeholders survive translation.
    for msgid, text in zh.items():
        assert set(re.findall(r"%\(\w+\)s", msgid)) == set(re.findall(r"%\(\w+\)s", text))


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_the_committed_mo_files_match_their_po(lang: str) -> None:
    with (LOCALE / lang / "LC_MESSAGES" / "report.mo").open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    for msgid, text in catalogue(lang).items():
        assert compiled.gettext(msgid) == (text or msgid)


def test_a_checkout_without_mo_files_compiles_the_po(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(LOCALE, tmp_path / "locale")
    for mo in (tmp_path / "locale").rglob("*.mo"):
        mo.unlink()
    monkeypatch.setattr(report, "LOCALE_DIR", tmp_path / "locale")
    report.translations.cache_clear()
    try:
        assert report.translations("zh-CN").gettext("missed") == "漏巡"
        assert report.translations("en").gettext("missed") == "missed"
    finally:
        report.translations.cache_clear()


def test_templates_hold_no_words_outside_the_catalogue() -> None:
    for template in (REPO / "center" / "templates").glob("*.j2"):
        text = template.read_text(encoding="utf-8")
        text = re.sub(r"<(script|style)\b.*?</\1>", "", text, flags=re.S)
        text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "", text, flags=re.S)
        text = re.sub(r"<[^>]+>", "", text)
        words = re.findall(r"[A-Za-z\u4e00-\u9fff]{2,}", text)
        assert words == [], f"{template.name}: {words}"


# -- xunfang ca (domain ``ca``) -------------------------------------------------------------


def _ca_catalogue() -> dict[str, str]:
    with (LOCALE / "zh_CN" / "LC_MESSAGES" / "ca.po").open("rb") as f:
        return {m.id: m.string for m in read_po(f) if m.id}


def _fields(text: str) -> set[str]:
    return {field for _lit, field, _spec, _conv in string.Formatter().parse(text) if field}


def test_every_message_of_the_ca_is_translated_with_its_placeholders() -> None:
    found = extract_from_file("python", REPO / "center" / "ca.py",
                              keywords={"_": None, "N_": None, "CaError": None})
    messages = {msg for _line, msg, _comments, _context in found}
    assert len(messages) > 30
    zh = _ca_catalogue()
    assert sorted(messages - zh.keys()) == [], "run pybabel extract/update (center/ca.py)"
    assert sorted(zh.keys() - messages) == []
    assert [m for m in messages if not zh[m]] == []
    for msgid, text in zh.items():
        assert _fields(msgid) == _fields(text), msgid
        assert re.search(r"[\u4e00-\u9fff]", text), msgid


def test_the_committed_ca_mo_matches_its_po() -> None:
    with (LOCALE / "zh_CN" / "LC_MESSAGES" / "ca.mo").open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    for msgid, text in _ca_catalogue().items():
        assert compiled.gettext(msgid) == text, msgid


# -- xunfang desired show (domain ``desired``) ----------------------------------------------


def _desired_catalogue() -> dict[str, str]:
    with (LOCALE / "zh_CN" / "LC_MESSAGES" / "desired.po").open("rb") as f:
        return {m.id: m.string for m in read_po(f) if m.id}


def test_every_message_of_desired_show_is_translated_with_its_placeholders() -> None:
    found = extract_from_file("python", REPO / "center" / "desired_show.py",
                              keywords={"_": None, "N_": None})
    messages = {msg for _line, msg, _comments, _context in found}
    assert len(messages) > 20
    zh = _desired_catalogue()
    assert sorted(messages - zh.keys()) == [], \
        "run pybabel extract/update (center/desired_show.py)"
    assert sorted(zh.keys() - messages) == []
    for msgid, text in zh.items():
        assert _fields(msgid) == _fields(text), msgid
        assert re.search(r"[\u4e00-\u9fff]", text), msgid


def test_the_committed_desired_mo_matches_its_po() -> None:
    with (LOCALE / "zh_CN" / "LC_MESSAGES" / "desired.mo").open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    for msgid, text in _desired_catalogue().items():
        assert compiled.gettext(msgid) == text, msgid
