"""Updates with rollback: ``systemd/xunfang-update`` into a ``--root``, with real wheels.

The wheels are built once per session from this checkout with ``pip wheel .
--no-deps``: the real one, a newer good one, a newer one whose daemon exits at
start, and one whose journal schema version is higher. Each update builds a
real venv under the root. systemd is not PID 1 here, so the service manager
is ``tests/support/servicectl.py`` (through ``XUNFANG_SYSTEMCTL``), which
starts a real ``xunfang run`` from ``current``; health is what the updater
reads: the process alive and the station's status file fresh and ``ok``.
"""

from __future__ import annotations

import gettext
import os
import re
import shutil
import sqlite3
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from firmware_py.exc import JournalTooNew
from firmware_py.journal import SCHEMA_VERSION, Journal
from tests.support import servicectl
from tests.support.units import base_document, merge, write_config

REPO = Path(__file__).resolve().parents[1]
UPDATE = REPO / "systemd" / "xunfang-update"
UPDATE_PO = REPO / "systemd" / "locale" / "zh_CN" / "LC_MESSAGES" / "xunfang-update.po"
SERVICECTL = Path(servicectl.__file__)
BASE_VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(),
                         re.M)[1]  # type: ignore[index]
GOOD, BROKEN, NEW_SCHEMA = "99.0.1", "99.0.2", "99.0.3"

pytestmark = pytest.mark.timeout(900)


def _build(tmp: Path, out: Path, version: str | None, patch: dict[str, tuple[str, str]]) -> Path:
    src = tmp / f"src-{version or 'base'}"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
        ".hypothesis", "tests", "bench"))
    if version is not None:
        bump = (f'version = "{BASE_VERSION}"', f'version = "{version}"')
        patch = {**patch, "pyproject.toml": bump}
    for name, (old, new) in patch.items():
        text = (src / name).read_text()
        assert old in text, f"{name} no longer holds {old!r}"
        (src / name).write_text(text.replace(old, new, 1))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--wheel-dir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out / f"xunfang-{version or BASE_VERSION}-py3-none-any.whl"


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("wheels")
    out = tmp / "dist"
    return {
        BASE_VERSION: _build(tmp, out, None, {}),
        GOOD: _build(tmp, out, GOOD, {}),
        # The daemon exits at start: what a broken release looks like on the unit.
        BROKEN: _build(tmp, out, BROKEN, {"firmware_py/cli.py": (
            "def cmd_run(args: argparse.Namespace) -> int:\n",
            "def cmd_run(args: argparse.Namespace) -> int:\n    raise SystemExit(1)\n")}),
        NEW_SCHEMA: _build(tmp, out, NEW_SCHEMA, {"firmware_py/journal.py": (
            f"SCHEMA_VERSION = {SCHEMA_VERSION}\n", f"SCHEMA_VERSION = {SCHEMA_VERSION + 1}\n")}),
    }


class Unit:
    """A --root install with its config, and the stand-in service manager."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.root.mkdir()
        self.data = tmp / "data"
        doc = merge(base_document(self.data), {"mqtt": {"port": 9}})
        doc["readers"] = [{"name": "main", "driver": "sim", "port": "sim"}]
        self.config = write_config(tmp / "unit.toml", doc)
        self.state = tmp / "services"
        self.systemctl = [sys.executable, str(SERVICECTL), "--root", str(self.root),
                          "--config", str(self.config), "--state", str(self.state)]
        self.prefix = self.root / "opt/xunfang"
        self.log = self.root / "var/log/xunfang-update.log"

    def update(self, *args: str | Path, deadline: float = 90, settle: float = 4,
               lang: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "XUNFANG_SYSTEMCTL": " ".join(self.systemctl)}
        if lang is not None:
            env = {**_without_locale(env), "LANG": lang}
        return subprocess.run(
            [sys.executable, str(UPDATE), "--root", str(self.root), "--config", str(self.config),
             "--deadline", str(deadline), "--settle", str(settle), *map(str, args)],
            capture_output=True, text=True, timeout=600, check=False, env=env)

    def ctl(self, *args: str) -> int:
        return subprocess.run([*self.systemctl, *args], timeout=60, check=False).returncode

    def current(self) -> str:
        return os.readlink(self.prefix / "current")

    def running(self) -> str:
        """The version the last start ran (the stand-in logs it)."""
        starts = re.findall(r"--- start (\S+) ---", (self.state / "daemon.log").read_text())
        return starts[-1]

    def wait_for_status(self, since: float, timeout: float = 60) -> None:
        path = self.data / "run" / "station.json"
        deadline = time.monotonic() + timeout
        while not (path.exists() and path.stat().st_mtime >= since):
            assert time.monotonic() < deadline, f"no fresh {path}"
            time.sleep(0.1)


@pytest.fixture
def unit(tmp_path: Path, wheels: dict[str, Path]) -> Iterator[Unit]:
    unit = Unit(tmp_path)
    first = unit.update("--no-restart", wheels[BASE_VERSION])
    assert first.returncode == 0, first.stderr
    assert unit.current() == BASE_VERSION
    since = time.time()
    assert unit.ctl("restart", "xunfang.target") == 0
    unit.wait_for_status(since)
    try:
        yield unit
    finally:
        unit.ctl("stop", "xunfang.target")


def _without_locale(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")}


def journal_events(unit: Unit) -> list[int]:
    with Journal(unit.data / "journal.db", unit="zt-pp-03", site="zhuantang") as j:
        return [e.seq for e in j.events_after(0, limit=1000)]


def test_an_update_to_a_healthy_version_switches_and_keeps_the_old_one(
    unit: Unit, wheels: dict[str, Path],
) -> None:
    before = journal_events(unit)
    result = unit.update(wheels[GOOD])
    assert result.returncode == 0, result.stderr
    assert unit.current() == GOOD and unit.running() == GOOD
    assert os.readlink(unit.prefix / "previous") == BASE_VERSION
    assert (unit.prefix / BASE_VERSION / "bin/xunfang").exists()
    assert unit.ctl("is-active", "--quiet", "xunfang-station.service") == 0
    assert f"updated to {GOOD}" in unit.log.read_text()
    assert journal_events(unit)[: len(before)] == before

    # And back by hand.
    back = unit.update("--rollback")
    assert back.returncode == 0, back.stderr
    assert unit.current() == BASE_VERSION and unit.running() == BASE_VERSION
    assert os.readlink(unit.prefix / "previous") == GOOD


def test_an_update_that_is_not_healthy_rolls_back_by_itself(
    unit: Unit, wheels: dict[str, Path],
) -> None:
    before = journal_events(unit)
    started = time.monotonic()
    result = unit.update(wheels[BROKEN], deadline=15)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started >= 15
    # The old version runs again, healthy, from the link; the broken one is gone.
    assert unit.current() == BASE_VERSION and unit.running() == BASE_VERSION
    assert not (unit.prefix / BROKEN).exists()
    assert unit.ctl("is-active", "--quiet", "xunfang-station.service") == 0
    log = unit.log.read_text()
    assert f"{BROKEN} is not healthy within 15 s (not every service is active)" in log
    assert f"rolled back to {BASE_VERSION}: healthy again" in log
    calls = (unit.state / "calls").read_text().splitlines()
    assert calls.count("restart xunfang.target") == 3   # start, the update, the rollback
    assert journal_events(unit)[: len(before)] == before
    assert not (unit.prefix / "previous").exists()      # nothing good to go back to


def test_an_update_with_a_journal_the_old_version_cannot_read_is_refused(
    unit: Unit, wheels: dict[str, Path],
) -> None:
    result = unit.update(wheels[NEW_SCHEMA], "--lang", "en")
    assert result.returncode == 2
    assert (f"{NEW_SCHEMA} uses journal schema {SCHEMA_VERSION + 1}, {BASE_VERSION} uses "
            f"{SCHEMA_VERSION}") in result.stderr
    assert unit.current() == BASE_VERSION
    assert not (unit.prefix / NEW_SCHEMA).exists()
    assert (unit.state / "calls").read_text().count("restart") == 1   # never restarted


def test_update_refuses_the_running_version_and_a_file_that_is_not_a_wheel(
    unit: Unit, wheels: dict[str, Path], tmp_path: Path,
) -> None:
    again = unit.update(wheels[BASE_VERSION], "--lang", "en")
    assert again.returncode == 2 and "already the running version" in again.stderr
    odd = tmp_path / "update.zip"
    odd.write_bytes(b"PK")
    bad = unit.update(odd, lang="C")
    assert bad.returncode == 2 and "want a xunfang wheel" in bad.stderr
    # The installer's default language is Chinese; the log file stays English.
    again = unit.update(wheels[BASE_VERSION], lang="zh_CN.UTF-8")
    assert again.returncode == 2
    assert f"xunfang-update: 已拒绝：{BASE_VERSION} 已是正在运行的版本" in again.stderr
    assert f"refused: {BASE_VERSION} is already the running version" in unit.log.read_text()
    assert unit.current() == BASE_VERSION


# -- the journal's schema version ---------------------------------------------------------


def test_a_journal_from_a_newer_schema_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal(path, unit="zt-pp-03", site="zhuantang") as j:
        j.append("boot", {})
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalTooNew, match="written by a newer xunfang"):
        Journal.open_or_recover(path, unit="zt-pp-03", site="zhuantang")
    # Not taken for a corrupt file: nothing moved aside, nothing lost.
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    db.close()


def test_the_daemon_refuses_to_start_on_a_newer_journal(tmp_path: Path) -> None:
    doc = base_document(tmp_path / "data")
    config = write_config(tmp_path / "unit.toml", doc)
    path = tmp_path / "data" / "journal.db"
    path.parent.mkdir(parents=True)
    with Journal(path, unit="zt-pp-03", site="zhuantang"):
        pass
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    xunfang = Path(sys.prefix) / "bin" / "xunfang"
    done = subprocess.run([str(xunfang), "run", "-c", str(config), "uplink"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "written by a newer xunfang" in done.stderr
    assert path.exists()


# -- the installer's language -------------------------------------------------------------


@pytest.mark.parametrize(("flag", "env", "chinese"), [
    ((), {}, True),
    ((), {"LANG": "zh_CN.UTF-8"}, True),
    ((), {"LANG": "C.UTF-8"}, False),
    ((), {"LANG": "en_GB.UTF-8"}, False),
    ((), {"LC_ALL": "zh_CN.UTF-8", "LANG": "en_GB.UTF-8"}, True),
    (("--lang", "en"), {"LANG": "zh_CN.UTF-8"}, False),
    (("--lang", "zh-CN"), {"LANG": "C"}, True),
])
def test_update_speaks_chinese_unless_told_english(
    tmp_path: Path, flag: tuple[str, ...], env: dict[str, str], chinese: bool,
) -> None:
    odd = tmp_path / "update.zip"
    odd.write_bytes(b"PK")
    done = subprocess.run(
        [sys.executable, str(UPDATE), "--root", str(tmp_path / "root"), *flag, str(odd)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**_without_locale(dict(os.environ)), **env})
    assert done.returncode == 2
    if chinese:
        assert done.stderr == ("xunfang-update: 已拒绝：update.zip：需要巡防的 wheel 安装包，"
                               "文件名形如 xunfang-版本号-py3-none-any.whl\n")
    else:
        assert done.stderr == ("xunfang-update: refused: update.zip: want a xunfang wheel, "
                               "xunfang-VERSION-py3-none-any.whl\n")
    log = (tmp_path / "root/var/log/xunfang-update.log").read_text()
    assert log.endswith(" refused: update.zip: want a xunfang wheel, "
                        "xunfang-VERSION-py3-none-any.whl\n")


def _fields(text: str) -> set[str]:
    return {field for _lit, field, _spec, _conv in string.Formatter().parse(text) if field}


def test_every_message_of_the_updater_is_translated_with_its_placeholders() -> None:
    found = extract_from_file("python", UPDATE, keywords={"Msg": None})
    messages = {msg for _line, msg, _comments, _context in found}
    assert len(messages) > 30
    with UPDATE_PO.open("rb") as f:
        zh = {m.id: m.string for m in read_po(f) if m.id}
    assert sorted(messages - zh.keys()) == [], "run pybabel extract/update (systemd/locale)"
    assert sorted(zh.keys() - messages) == []
    for msgid, text in zh.items():
        assert text and _fields(msgid) == _fields(text), msgid
    with UPDATE_PO.with_suffix(".mo").open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    for msgid, text in zh.items():
        assert compiled.gettext(msgid) == text, msgid
