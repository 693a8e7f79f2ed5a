"""``xunfang status -c FILE``: the unit's state from its own files, with every daemon stopped.

::

    xunfang status -c /etc/xunfang/unit.toml [--lang en] [--json] [-n 5]

It reads only what the daemons left behind: the journal (events, the
acknowledgement, the state store: level and lights documents, device
states, the uplink's last health report) and the station's status file.
Text goes through the message catalogue (Chinese, or English with ``--lang
en`` or an English ``LANG``); ``--json`` prints one document whose fields are
listed in ``docs/operations.md`` ("The unit's state"). Exit status: 0 shown,
1 no journal (the unit has not run), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .clock import SystemClock, rfc3339_ms
from .config import UnitConfig
from .exc import JournalError
from .i18n import Translate, choose_language, translator
from .journal import Journal
from .statusfile import read_status

LAST_HEALTH_KEY = "uplink/last_health"


def give_back(journal_path: Path) -> None:
    """Files SQLite made beside the journal go to the journal's owner (a root reader
    must not leave a ``-wal`` the daemons cannot write)."""
    try:
        st = journal_path.stat()
    except OSError:
        return
    if os.geteuid() != 0:
        return
    for suffix in ("-wal", "-shm"):
        side = journal_path.with_name(journal_path.name + suffix)
        with contextlib.suppress(OSError):
            if side.stat().st_uid != st.st_uid:
                os.chown(side, st.st_uid, st.st_gid)


def station_pid(cfg: UnitConfig) -> int | None:
    """The pid of a station that is running now; None when none is.

    From its status file (a station with readers), else from the lights lock
    (a station with lights only holds it while it runs).
    """
    doc = read_status(cfg.unit.runtime_dir)
    if doc is None:
        return _lights_holder(cfg)
    if doc.get("stopped"):
        return None
    pid = doc.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


def _lights_holder(cfg: UnitConfig) -> int | None:
    from .lights_control import LOCK_NAME, LightsLock

    lock = LightsLock(cfg.unit.runtime_dir / LOCK_NAME)
    if not lock.path.exists():
        return None   # never made here: a root-owned lock file would bother the station
    try:
        if lock.acquire():
            lock.release()
            return None
    except OSError:
        return None
    holder = lock.holder().removeprefix("pid ")
    return int(holder) if holder.isdigit() else None


def _age_s(ts: str | None, now_ms: int) -> float | None:
    from .clock import parse_rfc3339

    if not ts:
        return None
    try:
        return round(max(0.0, now_ms / 1000 - parse_rfc3339(ts).timestamp()), 1)
    except ValueError:
        return None


def collect(cfg: UnitConfig, last: int = 5) -> dict[str, Any]:
    """The whole state as one JSON-able document (FileNotFoundError: no journal yet)."""
    from .desired import current_level, current_lights_override

    if not cfg.journal_path.exists():
        raise FileNotFoundError(cfg.journal_path)
    clock = SystemClock()
    now_ms = clock.wall_ms()
    try:
        with Journal(cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site,
                     clock=clock) as journal:
            level = current_level(journal, clock)
            override = current_lights_override(journal, clock)
            devices = journal.state_items("device/")
            health = journal.state_get(LAST_HEALTH_KEY)
            oldest = journal.oldest_pending()
            last_seq = journal.last_seq()
            events = [e.envelope() for e in
                      journal.events_after(max(0, last_seq - last), limit=last)]
            journal_doc = {
                "path": str(journal.path), "id": journal.journal_id, "last_seq": last_seq,
                "acked_seq": journal.acked_seq(), "pending": journal.pending_count(),
                "oldest_pending": oldest.ts if oldest else None,
                "oldest_pending_age_s": (round(max(0.0, (now_ms - oldest.ts_ms) / 1000), 1)
                                         if oldest else None),
                "bytes": journal.size_bytes(),
            }
    finally:
        give_back(cfg.journal_path)

    def device(kind: str, name: str) -> dict[str, Any]:
        value = devices.get(f"device/{kind}/{name}")
        if isinstance(value, dict):
            return value
        return {"state": value if isinstance(value, str) else "unknown"}

    station_doc = read_status(cfg.unit.runtime_dir)
    pid = station_pid(cfg)
    return {
        "unit": cfg.unit.id, "site": cfg.unit.site, "kind": cfg.unit.kind,
        "version": __version__,
        "ts": rfc3339_ms(now_ms),
        "clock_synced": clock.synced(),
        "level": {"level": level.level, "by": level.by, "scope": level.scope,
                  "expires_at": level.expires_at},
        "lights_override": {"lights": override.lights, "by": override.by,
                            "scope": override.scope, "expires_at": override.expires_at},
        "lights": {name: device("lights", name) for name in cfg.lights},
        "readers": {r.name: device("readers", r.name) for r in cfg.readers},
        "cameras": {c.name: device("cameras", c.name) for c in cfg.cameras},
        "station": {
            "running": pid is not None, "pid": pid,
            "status_ts": station_doc.get("ts") if station_doc else None,
            "journal": station_doc.get("journal") if station_doc else None,
            "unrecorded_taps": len(station_doc.get("unrecorded") or []) if station_doc else 0,
        },
        "journal": journal_doc,
        "last_health": health if isinstance(health, dict) else None,
        "events": events,
    }


def render(doc: dict[str, Any], _: Translate) -> str:
    """The document as lines for a person, in the catalogue's language."""
    lines = [_("unit {unit} ({kind}) of site {site}, xunfang {version}, at {ts}{sync}").format(
        unit=doc["unit"], kind=doc["kind"], site=doc["site"], version=doc["version"],
        ts=doc["ts"], sync="" if doc["clock_synced"] else _(" (clock not synchronised)"))]
    lv = doc["level"]
    if lv["by"] is None:
        lines.append(_("level: {level} (the default: no level order in force)").format(
            level=lv["level"]))
    else:
        lines.append(_("level: {level}, set by {by} for {scope}, until {until}").format(
            level=lv["level"], by=lv["by"], scope=lv["scope"] or "?",
            until=lv["expires_at"] or _("further notice")))
    ov = doc["lights_override"]
    for name, state in doc["lights"].items():
        mode = state.get("mode") or state.get("state")
        why = state.get("reason") or "?"
        lines.append(_("light {name}: {mode} ({reason})").format(name=name, mode=mode,
                                                                  reason=why))
    if ov["by"] is not None:
        lines.append(_("lights override by {by}: {lights}, until {until}").format(
            by=ov["by"], lights=", ".join(f"{k}={v}" for k, v in ov["lights"].items()),
            until=ov["expires_at"] or _("further notice")))
    for kind, label in (("readers", _("reader")), ("cameras", _("camera"))):
        for name, state in doc[kind].items():
            detail = state.get("detail") or state.get("firmware") or ""
            lines.append(f"{label} {name}: {state.get('state')}"
                         + (f" ({detail})" if detail else ""))
    st = doc["station"]
    if st["running"]:
        lines.append(_("station: running (PID {pid})").format(pid=st["pid"]))
    else:
        lines.append(_("station: not running{since}").format(
            since=_(" (last status {ts})").format(ts=st["status_ts"]) if st["status_ts"]
            else ""))
    if st["unrecorded_taps"]:
        lines.append(_("taps the journal could not record: {n}").format(
            n=st["unrecorded_taps"]))
    j = doc["journal"]
    if j["pending"]:
        lines.append(_("events waiting for the centre: {n}, the oldest from {ts} ({age})")
                     .format(n=j["pending"], ts=j["oldest_pending"],
                             age=_duration(j["oldest_pending_age_s"], _)))
    else:
        lines.append(_("events waiting for the centre: none (the centre has all {n})").format(
            n=j["last_seq"]))
    h = doc["last_health"]
    if h is None:
        lines.append(_("broker: no health report yet"))
    else:
        broker = h.get("broker") or {}
        lines.append(_("broker at the last health report ({ts}): {state}{error}").format(
            ts=h.get("ts"), state=broker.get("state", "?"),
            error=f" ({broker['last_error']})" if broker.get("last_error") else ""))
    lines.append(_("last events:"))
    for e in doc["events"]:
        fields = " ".join(f"{k}={_short(v)}" for k, v in e["data"].items())
        lines.append(f"  #{e['seq']} {e['ts']} {e['kind']} {fields}".rstrip())
    if not doc["events"]:
        lines.append(_("  (none)"))
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def _duration(seconds: float | None, _: Translate) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return _("{n:.0f} s ago").format(n=seconds)
    if seconds < 7200:
        return _("{n:.0f} min ago").format(n=seconds / 60)
    if seconds < 172800:
        return _("{n:.1f} h ago").format(n=seconds / 3600)
    return _("{n:.1f} days ago").format(n=seconds / 86400)


def cmd_status(args: argparse.Namespace) -> int:
    from .commandline import load_config_or_exit

    cfg = load_config_or_exit(args.config)
    _ = translator(choose_language(args.lang))
    try:
        doc = collect(cfg, last=args.events)
    except FileNotFoundError:
        print(_("no journal at {path}: the unit has not run yet").format(
            path=cfg.journal_path), file=sys.stderr)
        return 1
    except JournalError as err:
        print(_("cannot read the journal: {error}").format(error=err), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print(render(doc, _))
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="the unit's state from its journal and status files "
                                      "(works with the daemons stopped)")
    p.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="unit config (TOML), e.g. /etc/xunfang/unit.toml")
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("-n", "--events", type=int, default=5, metavar="N",
                   help="how many of the last events (5)")
    p.add_argument("--lang", choices=("zh", "en"),
                   help="language (default: Chinese, or English when LANG starts with en)")
    p.set_defaults(func=cmd_status)
