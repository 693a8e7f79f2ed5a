"""Unit configs for tests: a valid base document, deep-merged with overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from firmware_py.config import UnitConfig, parse_config, resolve_paths

# Public keys only; tests that sign make their own key pairs and override these.
COMMAND_KEY = "X4aAoRL1/AE8KU0YGX1XjwsuFD5cOLtHy1x+cLha81Y="
ACK_KEY = "TDVSHQkR7qvQGaB1YRjozMW5Oi1mgPmTAOOL8120D0w="


def base_document(data_dir: Path) -> dict[str, Any]:
    return {
        "unit": {
            "id": "zt-pp-03", "site": "zhuantang", "kind": "patrol_point",
            "timezone": "Asia/Shanghai", "data_dir": str(data_dir),
            "runtime_dir": str(data_dir / "run"),
        },
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "security": {"command_keys": {"centre-test": COMMAND_KEY},
                     "ack_keys": {"ledger-test": ACK_KEY}},
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base`` (tables merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_config(data_dir: Path, **sections: dict[str, Any] | list[Any]) -> UnitConfig:
    """A validated config whose data lives in ``data_dir``; sections override the base."""
    doc = merge(base_document(data_dir), sections)
    return resolve_paths(parse_config(doc, "<test config>"), data_dir)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """Write a config document as TOML (tables, arrays of tables, inline tables)."""
    lines: list[str] = []
    for section, body in doc.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
                lines.append("")
        elif isinstance(body, dict) and section == "lights":
            for name, light in body.items():
                lines.append(f"[lights.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in light.items()]
                lines.append("")
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
            lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_unit_config(path: Path, data_dir: Path, **sections: Any) -> Path:
    """Write a valid unit config file (base document plus overrides) and return its path."""
    return write_config(path, merge(base_document(data_dir), sections))
