"""``xunfang check``: the installer's self-tests of a unit's hardware.

::

    xunfang check lights -c /etc/xunfang/unit.toml [--light warning] [--seconds 3]

``check lights`` cycles every light (or the ones named) through every mode
it has, a few seconds each, so the installer can watch each one work. When
the station is running it holds the lights: the check then asks it through
the journal and prints the events it records; otherwise the check drives the
pins itself (``GPIOZERO_PIN_FACTORY=mock`` runs it without hardware). See
``docs/lights.md``. Other hardware checks add their action here.

Exit status: 0 the test ran, 1 it could not, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import sys


def cmd_check_lights(args: argparse.Namespace) -> int:
    from .cli import _load_or_exit
    from .lights_control import run_lights_check

    cfg = _load_or_exit(args.config)
    if args.seconds <= 0 or args.seconds > 600:
        print(f"--seconds must be more than 0 and at most 600, got {args.seconds:g}",
              file=sys.stderr)
        return 2
    try:
        return run_lights_check(cfg, names=args.light or None, seconds=args.seconds)
    except KeyboardInterrupt:
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p_check = sub.add_parser("check", help="self-tests an installer runs (lights)")
    check_sub = p_check.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = check_sub.add_parser(
        "lights", help="cycle every light through every mode, a few seconds each")
    p.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="unit config (TOML), e.g. /etc/xunfang/unit.toml")
    p.add_argument("--light", action="append", metavar="NAME",
                   help="test only this light (repeatable; default: all)")
    p.add_argument("--seconds", type=float, default=3.0,
                   help="how long each mode is shown (3)")
    p.set_defaults(func=cmd_check_lights)
