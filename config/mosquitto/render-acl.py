#!/usr/bin/env python3
"""Render the xunfang Mosquitto ACL: the template plus every unit's rights.

Mosquitto's `pattern` rules can put the username (%u) only into the unit
level of `xunfang/v1/{site}/{unit}/...`, so a pattern cannot tie a unit to
its site: `xunfang/v1/+/%u/events/#` would let a unit write into any site's
record. So every right of a unit is rendered per unit, from the centre's
inventory of units and sites: its own topics under its own site, and its
site's `_all/desired/#` and `_all/cmd`. A unit not in the inventory gets
nothing. The site's ledger reads the same inventory (`xunfang ledger
--inventory`) and stores events of listed units only.

Inventory: one unit per line, `<unit id> <site>` (space, tab or comma
separated); `#` starts a comment. Both match [a-z0-9-]{1,32} (docs/mqtt-api.md).

    python3 render-acl.py --units /etc/mosquitto/xunfang-units.txt \
        --template acl --output /etc/mosquitto/xunfang.acl
    kill -HUP "$(cat /run/mosquitto/mosquitto.pid)"   # re-read the ACL

Stdlib only: it runs on the centre's broker host, not in the unit's venv.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

MARKER = "#@units@"
NAME = re.compile(r"[a-z0-9-]{1,32}")


def parse_inventory(text: str, source: str = "inventory") -> dict[str, str]:
    """{unit id: site} from inventory text; raises ValueError naming the line."""
    units: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{source}:{number}: want '<unit id> <site>', got {raw!r}")
        unit, site = fields
        if unit in units and units[unit] != site:
            raise ValueError(
                f"{source}:{number}: unit {unit!r} listed for sites {units[unit]!r} and {site!r}"
            )
        units[unit] = site
    return units


def reserved_users(template: str) -> set[str]:
    """The usernames the template already has `user` sections for (centre tools)."""
    return {
        line.split(None, 1)[1].strip()
        for line in template.splitlines()
        if line.startswith("user ") and len(line.split(None, 1)) == 2
    }


def render(template: str, units: dict[str, str]) -> str:
    """The template with the marker line replaced by one block per unit."""
    if any(line.startswith("pattern") for line in template.splitlines()):
        # A pattern applies to every user: it would undo the tie to the site.
        raise ValueError("template holds `pattern` rules; unit rights are rendered per unit")
    lines = template.splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip() == MARKER]
    if len(marks) != 1:
        raise ValueError(f"template must contain the line {MARKER!r} exactly once")
    if any(line.strip() and not line.lstrip().startswith("#") for line in lines[marks[0] + 1 :]):
        raise ValueError(f"{MARKER!r} must come after every rule in the template")
    reserved = reserved_users(template) | {"_all"}
    block: list[str] = []
    for unit in sorted(units):
        site = units[unit]
        for what, value in (("unit id", unit), ("site", site)):
            if not NAME.fullmatch(value):
                raise ValueError(f"{what} {value!r} does not match [a-z0-9-]{{1,32}}")
        if unit in reserved:
            raise ValueError(f"unit id {unit!r} is reserved for the centre's tools")
        own = f"xunfang/v1/{site}/{unit}"
        block += [
            f"user {unit}",
            f"topic write {own}/status",
            f"topic write {own}/events/#",
            f"topic write {own}/health",
            f"topic read {own}/desired/#",
            f"topic read {own}/cmd",
            f"topic read {own}/ack",
            f"topic read xunfang/v1/{site}/_all/desired/#",
            f"topic read xunfang/v1/{site}/_all/cmd",
        ]
    header = f"# {len(units)} units rendered by render-acl.py"
    out = [*lines[: marks[0]], header, *block, *lines[marks[0] + 1 :]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", required=True, type=Path, help="inventory: '<unit> <site>'")
    parser.add_argument("--template", type=Path, default=here / "acl")
    parser.add_argument("--output", type=Path, help="write here (atomically); default stdout")
    args = parser.parse_args(argv)
    try:
        text = render(
            args.template.read_text(),
            parse_inventory(args.units.read_text(), str(args.units)),
        )
    except (OSError, ValueError) as err:
        print(f"render-acl: {err}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(text)
        return 0
    # Atomic replace: a broker reloading mid-write must never see half a file.
    fd, tmp = tempfile.mkstemp(dir=args.output.parent, prefix=".acl-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
