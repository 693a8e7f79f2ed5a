"""The centre's inventory of units: which unit belongs to which site.

One file serves the broker and the ledger: ``config/mosquitto/render-acl.py``
renders each listed unit's broker rights (its own topics under its own site)
from it, and ``xunfang ledger --inventory`` stores events only of the units
it lists for the ledger's site. Format: one unit per line, ``<unit id>
<site>`` separated by spaces, a tab or a comma; ``#`` starts a comment; both
names match ``[a-z0-9-]{1,32}``; a unit listed twice must name the same site::

    # unit        site
    zt-pp-03      zhuantang
    zt-kiosk-01   zhuantang   # duty kiosk at the gate
    xh-pp-01      xihu

The parsing rules are the same as render-acl.py's (which must stay stdlib-only
on the broker host); the tests hold the two to the same answers.
"""

from __future__ import annotations

import os
from pathlib import Path

from firmware_py import topics

__all__ = [
    "MAX_INVENTORY_BYTES",
    "InventoryError",
    "load_inventory",
    "parse_inventory",
    "units_of_site",
]

#: A fleet of 10,000 units is about 300 KB; anything far larger is not an inventory.
MAX_INVENTORY_BYTES = 8 * 1024 * 1024
#: Names the centre's own broker users and the site-wide topic take.
RESERVED = frozenset({"centre", "ledger", topics.ALL_UNITS})


class InventoryError(ValueError):
    """An inventory that cannot be read or used; the message names the file and line."""


def parse_inventory(text: str, source: str = "inventory") -> dict[str, str]:
    """{unit id: site} from inventory text; :class:`InventoryError` naming the line."""
    units: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise InventoryError(f"{source}:{number}: want '<unit id> <site>', got {raw!r}")
        unit, site = fields
        for what, value in (("unit id", unit), ("site", site)):
            if not topics.NAME_RE.match(value):
                raise InventoryError(
                    f"{source}:{number}: {what} {value!r} does not match [a-z0-9-]{{1,32}}")
        if unit in RESERVED:
            raise InventoryError(f"{source}:{number}: unit id {unit!r} is reserved for the "
                                 "centre's tools")
        if unit in units and units[unit] != site:
            raise InventoryError(f"{source}:{number}: unit {unit!r} listed for sites "
                                 f"{units[unit]!r} and {site!r}")
        units[unit] = site
    return units


def load_inventory(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read and parse an inventory file (at most :data:`MAX_INVENTORY_BYTES`)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_INVENTORY_BYTES + 1)
    except OSError as err:
        raise InventoryError(f"cannot read inventory {path}: {err.strerror or err}") from err
    if len(data) > MAX_INVENTORY_BYTES:
        raise InventoryError(f"inventory {path} is larger than {MAX_INVENTORY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InventoryError(f"inventory {path} is not UTF-8 text: {err}") from err
    return parse_inventory(text, str(path))


def units_of_site(inventory: dict[str, str], site: str) -> frozenset[str]:
    """The unit ids the inventory lists for ``site``."""
    return frozenset(unit for unit, its_site in inventory.items() if its_site == site)
