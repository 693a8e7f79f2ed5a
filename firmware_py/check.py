"""``xunfang check``: the installer's self-tests of a unit.

::

    xunfang check -c /etc/xunfang/unit.toml [--tap] [--lang en] [--skip PART]
    xunfang check lights -c /etc/xunfang/unit.toml [--light warning] [--seconds 3]

``check lights`` cycles every light (or the ones named) through every mode
it has, a few seconds each, so the installer can watch each one work. When
the station is running it holds the lights: the check then asks it through
the journal and prints the events it records; otherwise the check drives the
pins itself (``GPIOZERO_PIN_FACTORY=mock`` runs it without hardware). See
``docs/lights.md``. Without an action, ``check`` tests the whole unit, one
line per part (:mod:`firmware_py.selftest`, ``docs/operations.md``).

Exit status: 0 the test ran (every part passed), 1 it could not (some part
failed), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import logging
import sys


def cmd_check_lights(args: argparse.Namespace) -> int:
    from .commandline import load_config_or_exit
    from .lights_control import run_lights_check

    cfg = load_config_or_exit(args.config)
    if args.seconds <= 0 or args.seconds > 600:
        print(f"--seconds must be more than 0 and at most 600, got {args.seconds:g}",
              file=sys.stderr)
        return 2
    try:
        return run_lights_check(cfg, names=args.light or None, seconds=args.seconds)
    except KeyboardInterrupt:
        return 1


def cmd_check_all(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .commandline import load_config_or_exit
    from .i18n import choose_language, translator
    from .selftest import SelfTest

    if not args.config:
        print("xunfang check: -c/--config FILE is required", file=sys.stderr)
        return 2
    cfg = load_config_or_exit(args.config)
    unknown = sorted(set(args.skip or []) - set(SelfTest.PARTS))
    if unknown:
        print(f"--skip {', '.join(unknown)}: choose from {', '.join(SelfTest.PARTS)}",
              file=sys.stderr)
        return 2
    _ = translator(choose_language(args.lang))
    if not args.verbose:
        # The report is the output; the drivers' info lines would only interleave with it.
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return SelfTest(cfg, _, root=Path(args.root), tap=args.tap,
                        tap_timeout_s=args.tap_timeout, light_seconds=args.light_seconds,
                        skip=tuple(args.skip or ())).run()
    except KeyboardInterrupt:
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_check = sub.add_parser(
        "check", help="the installer's self-test of the whole unit, or of its lights",
        description="Without ACTION: test every part of the unit, one line each; exit 0 "
                    "when all pass, 1 when some fail, 2 for a bad config.")
    p_check.add_argument("-c", "--config", metavar="FILE",
                         help="unit config (TOML), e.g. /etc/xunfang/unit.toml")
    p_check.add_argument("--tap", action="store_true",
                         help="wait for a card on each reader and show its id")
    p_check.add_argument("--tap-timeout", type=float, default=30.0, metavar="SECONDS",
                         help="how long to wait for each card (30)")
    p_check.add_argument("--light-seconds", type=float, default=1.0, metavar="SECONDS",
                         help="how long each light shows each mode (1)")
    p_check.add_argument("--skip", action="append", metavar="PART",
                         help="leave out a part (repeatable): " + ", ".join((
                             "config", "data", "readers", "lights", "inputs", "cameras",
                             "credentials", "broker", "clock", "keys", "chrony", "watchdog")))
    p_check.add_argument("--lang", choices=("zh", "en"),
                         help="language of the report (default: Chinese, or English when "
                              "LANG starts with en)")
    p_check.add_argument("--root", default="/", metavar="DIR",
                         help="look for chrony, systemd and /dev under DIR (an image; /)")
    p_check.set_defaults(func=cmd_check_all)
    check_sub = p_check.add_subparsers(dest="action", required=False, metavar="ACTION")
    p = check_sub.add_parser(
        "lights", help="cycle every light through every mode, a few seconds each")
    p.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="unit config (TOML), e.g. /etc/xunfang/unit.toml")
    p.add_argument("--light", action="append", metavar="NAME",
                   help="test only this light (repeatable; default: all)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="how long each mode is shown (3)")
    p.set_defaults(func=cmd_check_lights)
