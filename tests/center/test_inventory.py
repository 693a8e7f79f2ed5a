"""The inventory of units and sites: one file for the broker's ACL and the ledger.

``center.inventory`` (the ledger's reader) and ``config/mosquitto/render-acl.py``
(stdlib only, run on the broker host) parse the same file; these tests hold
them to the same answers, so a unit the broker lets in is one the ledger takes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from center.inventory import (
    MAX_INVENTORY_BYTES,
    InventoryError,
    load_inventory,
    parse_inventory,
    units_of_site,
)
from tests.support.brokers import ACL_TEMPLATE

GOOD = (
    "# unit        site\n"
    "zt-pp-03      zhuantang\n"
    "zt-kiosk-01,zhuantang   # duty kiosk\n"
    "\n"
    "xh-pp-01\txihu\n"
    "zt-pp-03 zhuantang\n"  # listed twice, same site: fine
)

BAD = {
    "three fields": "zt-pp-03 zhuantang extra\n",
    "one field": "zt-pp-03\n",
    "two sites": "zt-pp-03 zhuantang\nzt-pp-03 xihu\n",
    "upper case": "ZT-PP-03 zhuantang\n",
    "dot in site": "zt-pp-03 zhuan.tang\n",
    "too long": f"{'a' * 33} zhuantang\n",
    "centre": "centre zhuantang\n",
    "ledger": "ledger zhuantang\n",
    "_all": "_all zhuantang\n",
}


def _render_script() -> ModuleType:
    script = ACL_TEMPLATE.parent / "render-acl.py"
    spec = importlib.util.spec_from_file_location("render_acl_script", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ledger_and_the_acl_renderer_read_an_inventory_alike() -> None:
    script = _render_script()
    ours = parse_inventory(GOOD)
    assert ours == script.parse_inventory(GOOD)
    assert ours == {"zt-pp-03": "zhuantang", "zt-kiosk-01": "zhuantang", "xh-pp-01": "xihu"}
    script.render(ACL_TEMPLATE.read_text(), ours)  # renders without complaint
    assert units_of_site(ours, "zhuantang") == {"zt-pp-03", "zt-kiosk-01"}
    assert units_of_site(ours, "elsewhere") == frozenset()


@pytest.mark.parametrize("text", list(BAD.values()), ids=list(BAD))
def test_an_inventory_the_renderer_refuses_the_ledger_refuses_too(text: str) -> None:
    script = _render_script()
    with pytest.raises(ValueError):
        script.render(ACL_TEMPLATE.read_text(), script.parse_inventory(text))
    with pytest.raises(InventoryError, match=r"^inventory:\d+: "):
        parse_inventory(text)


def test_load_inventory_names_the_file_and_bounds_what_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "units.txt"
    path.write_text("zt-pp-03 zhuantang\nzt-pp-04\n")
    with pytest.raises(InventoryError, match=r"units\.txt:2: want '<unit id> <site>'"):
        load_inventory(path)
    with pytest.raises(InventoryError, match=r"cannot read inventory .*absent"):
        load_inventory(tmp_path / "absent")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InventoryError, match="not UTF-8"):
        load_inventory(path)
    with path.open("wb") as f:
        f.truncate(MAX_INVENTORY_BYTES + 1)
    with pytest.raises(InventoryError, match="larger than"):
        load_inventory(path)
