"""``xunfang``: the one command of a unit and of the centre's tools.

Unit side::

    xunfang config check -c /etc/xunfang/unit.toml
    xunfang run -c /etc/xunfang/unit.toml [station|camera|uplink]
    xunfang journal tail -c /etc/xunfang/unit.toml [-n 20] [--no-follow]
    xunfang journal stats -c /etc/xunfang/unit.toml
    xunfang check -c /etc/xunfang/unit.toml [--tap]      (the installer's self-test)
    xunfang status -c /etc/xunfang/unit.toml [--json]    (works with the daemons stopped)

Centre side: ``xunfang keys``, and the tools each feature adds.

Exit status: 0 ok, 1 failure at run time, 2 bad configuration or usage (or the unit
is already running: ``xunfang run`` of a component that runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from types import ModuleType

from center import ca, desired_show, keys, ledger, plan, register, report, send, watch

from . import __version__, check, enrol, sim, unitstatus
from .commandline import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    MAX_PROBLEM_LINES,
    format_event,
    load_config_or_exit,
)
from .components import COMPONENT_NAMES, unit_runtime
from .config import UnitConfig
from .exc import JournalError, RuntimeFault
from .journal import Event, Journal
from .runtime import setup_logging
from .unitlock import AlreadyRunning, UnitLock

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "MAX_PROBLEM_LINES", "SUBCOMMANDS",
           "build_parser", "format_event", "main"]

log = logging.getLogger("xunfang.cli")

#: The subcommands each feature adds with its ``add_parser(subparsers)``, in the
#: order ``xunfang --help`` lists them: the one place the CLI learns of them.
SUBCOMMANDS: tuple[tuple[str, ModuleType], ...] = (
    ("keys", keys), ("ledger", ledger), ("cards", register), ("send", send),
    ("watch", watch), ("check", check), ("sim", sim), ("status", unitstatus),
    ("plan", plan), ("report", report), ("ca", ca), ("enrol", enrol),
    ("desired", desired_show),
)


# -- config ---------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    unknown = [n for n in args.components if n not in COMPONENT_NAMES]
    if unknown:
        print(f"unknown component(s) {', '.join(unknown)}: choose from "
              f"{', '.join(COMPONENT_NAMES)}", file=sys.stderr)
        return EXIT_CONFIG
    # The installer's check (no component) also wants the credential files in place.
    # A daemon's check before it starts does not: the station and camera never use
    # them, and the uplink reports them on every attempt and takes them when they appear.
    cfg = load_config_or_exit(args.config, check_files=not args.components)
    u = cfg.unit
    print(f"{args.config}: ok: unit {u.id} ({u.kind}) of site {u.site}; "
          f"{len(cfg.readers)} reader(s), {len(cfg.lights)} light(s), "
          f"{len(cfg.cameras)} camera(s); broker {cfg.mqtt.host}:{cfg.mqtt.port} "
          f"MQTT {cfg.mqtt.protocol}{' TLS' if cfg.mqtt.tls else ''}")
    return EXIT_OK


# -- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    names = list(dict.fromkeys(args.components)) or list(COMPONENT_NAMES)
    unknown = [n for n in names if n not in COMPONENT_NAMES]
    if unknown:
        print(f"unknown component(s) {', '.join(unknown)}: choose from "
              f"{', '.join(COMPONENT_NAMES)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        runtime = unit_runtime(cfg, names)
    except RuntimeFault as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    # Before anything touches the journal, the status file or the sim links: a second
    # start of the same unit must leave the running one's files alone.
    lock = UnitLock(cfg.unit.data_dir, names)
    try:
        lock.acquire()
    except AlreadyRunning as err:
        print(f"unit {cfg.unit.id}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as err:
        log.critical("cannot start: %s", err)
        return EXIT_FAILED
    try:
        runtime.install_signal_handlers()
        try:
            runtime.start()
        except (JournalError, OSError) as err:
            # A data_dir this user may not create or write, a read-only card: say so in one line.
            log.critical("cannot start: %s", err)
            runtime.stop()
            return EXIT_FAILED
        try:
            runtime.run_until_stopped()
        finally:
            runtime.stop()
        return EXIT_OK
    finally:
        lock.release()


# -- journal ------------------------------------------------------------------------------------


def _open_journal(cfg: UnitConfig, wait_s: float) -> Journal:
    path = cfg.journal_path
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if time.monotonic() >= deadline:
            raise JournalError(f"no journal at {path} (has the unit run yet?)")
        time.sleep(0.2)
    return Journal(path, unit=cfg.unit.id, site=cfg.unit.site)


def cmd_journal_tail(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    try:
        journal = _open_journal(cfg, wait_s=30 if args.follow else 0)
    except JournalError as err:
        print(str(err), file=sys.stderr)
        return EXIT_FAILED
    with journal:
        start = max(0, journal.last_seq() - args.lines)
        if args.json:
            def show(e: Event) -> str:
                return json.dumps(e.envelope(), ensure_ascii=False)
        else:
            def show(e: Event) -> str:
                return format_event(e)
        after = start
        try:
            while True:
                for event in journal.events_after(after, limit=500):
                    print(show(event), flush=True)
                    after = event.seq
                if not args.follow:
                    return EXIT_OK
                journal.wait(after, timeout=1.0)
        except (KeyboardInterrupt, BrokenPipeError):
            return EXIT_OK


def cmd_journal_stats(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    try:
        journal = _open_journal(cfg, wait_s=0)
    except JournalError as err:
        print(str(err), file=sys.stderr)
        return EXIT_FAILED
    with journal:
        oldest = journal.oldest_pending()
        stats = {
            "path": str(journal.path),
            "journal": journal.journal_id,
            "last_seq": journal.last_seq(),
            "first_seq": journal.first_seq(),
            "stored": journal.count(),
            "acked_seq": journal.acked_seq(),
            "pending": journal.pending_count(),
            "oldest_pending": oldest.ts if oldest else None,
            "bytes": journal.size_bytes(),
            "rebuilt": journal.rebuilt,
        }
    print(json.dumps(stats, indent=2, ensure_ascii=False))
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xunfang", description="Patrol point, kiosk and checkpoint unit and centre tools.")
    parser.add_argument("--version", action="version", version=f"xunfang {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="unit config (TOML), e.g. /etc/xunfang/unit.toml")

    p_config = sub.add_parser("config", help="check a unit config")
    config_sub = p_config.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = config_sub.add_parser("check", help="validate; list every problem and exit 2 if any")
    config_arg(p)
    p.add_argument("components", nargs="*", metavar="COMPONENT",
                   help=f"check only what stops this daemon starting ({', '.join(COMPONENT_NAMES)}"
                        "; the services do this): the password and TLS files are left out")
    p.set_defaults(func=cmd_config_check)

    p = sub.add_parser("run", help="run the unit (all components, or the ones named)")
    config_arg(p)
    p.add_argument("components", nargs="*", metavar="COMPONENT",
                   help=f"one or more of {', '.join(COMPONENT_NAMES)} (default: all)")
    p.set_defaults(func=cmd_run)

    p_journal = sub.add_parser("journal", help="read the unit's journal")
    journal_sub = p_journal.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = journal_sub.add_parser("tail", help="show the newest events, then follow new ones")
    config_arg(p)
    p.add_argument("-n", "--lines", type=int, default=20, help="events shown first (20)")
    p.add_argument("--no-follow", dest="follow", action="store_false",
                   help="print and exit instead of following")
    p.add_argument("--json", action="store_true", help="one MQTT envelope per line")
    p.set_defaults(func=cmd_journal_tail)
    p = journal_sub.add_parser("stats", help="sequence numbers, acknowledgement, size")
    config_arg(p)
    p.set_defaults(func=cmd_journal_stats)

    for _name, module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
