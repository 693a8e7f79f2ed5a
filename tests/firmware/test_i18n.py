"""The unit's message catalogue: every installer-facing string has a Chinese translation,
and the committed .mo is the compiled .po (a fresh clone needs no build step)."""

from __future__ import annotations

import gettext
import io
from pathlib import Path

from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from firmware_py.i18n import LOCALE_DIR, choose_language, translator

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("firmware_py/selftest.py", "firmware_py/unitstatus.py", "firmware_py/enrol.py")
PO = LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "xunfang.po"


def _source_ids() -> set[str]:
    ids: set[str] = set()
    for name in SOURCES:
        for _line, message, _comments, _ctx in extract_from_file(
                "python", REPO / name, keywords={"_": None}):
            ids.add(message)
    return ids


def test_every_message_has_a_chinese_translation() -> None:
    catalog = read_po(PO.open("rb"))
    translated = {m.id: m.string for m in catalog if m.id}
    missing = sorted(i for i in _source_ids() if not translated.get(i))
    assert not missing, f"untranslated: {missing} (see firmware_py/i18n.py)"


def test_translations_keep_every_placeholder() -> None:
    import string

    catalog = read_po(PO.open("rb"))
    for m in catalog:
        if not m.id:
            continue
        fields = {f for _, f, _, _ in string.Formatter().parse(m.id) if f}
        assert fields == {f for _, f, _, _ in string.Formatter().parse(m.string) if f}, m.id


def test_committed_mo_is_the_compiled_po() -> None:
    catalog = read_po(PO.open("rb"))
    buf = io.BytesIO()
    write_mo(buf, catalog)
    compiled = gettext.GNUTranslations(io.BytesIO(buf.getvalue()))
    committed = gettext.GNUTranslations(PO.with_suffix(".mo").open("rb"))
    for m in catalog:
        if m.id:
            assert committed.gettext(m.id) == compiled.gettext(m.id), m.id


def test_language_choice() -> None:
    assert choose_language(None, {}) == "zh"
    assert choose_language(None, {"LANG": "en_GB.UTF-8"}) == "en"
    assert choose_language(None, {"LANG": "zh_CN.UTF-8"}) == "zh"
    assert choose_language(None, {"LANGUAGE": "zh_CN", "LANG": "en_US.UTF-8"}) == "zh"
    assert choose_language("en", {"LANG": "zh_CN.UTF-8"}) == "en"
    assert translator("zh")("clock") == "时钟"
    assert translator("en")("clock") == "clock"
