"""What every ``xunfang`` subcommand shares: exit codes, loading the unit's
config (exit 2 when it is bad), one journal event as a line."""

from __future__ import annotations

import json
import sys
from typing import Any

from .config import UnitConfig, load_config
from .exc import ConfigError, ConfigInvalid
from .journal import Event

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "MAX_PROBLEM_LINES", "format_event",
           "load_config_or_exit"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
#: Problems printed at most; a file with more says how many it left out.
MAX_PROBLEM_LINES = 50

def load_config_or_exit(path: str, *, check_files: bool = False) -> UnitConfig:
    """Load the config; print every problem and exit 2 when it is bad.

    One problem is one line (``FILE: key.path: what is wrong``), for the
    journal; more are listed under a heading, one a line.
    """
    try:
        return load_config(path, check_files=check_files)
    except ConfigInvalid as err:
        if len(err.problems) == 1:
            print(f"{err.path}: {err.problems[0]}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        print(f"{err.path}: configuration has {len(err.problems)} problem(s):", file=sys.stderr)
        for line in err.problems[:MAX_PROBLEM_LINES]:
            print(f"  {line}", file=sys.stderr)
        if len(err.problems) > MAX_PROBLEM_LINES:
            print(f"  … and {len(err.problems) - MAX_PROBLEM_LINES} more", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def format_event(event: Event, acked: bool | None = None) -> str:
    """One readable line: ``#12 2026-…Z checkin card=14008EC793 decision=accepted``."""
    fields = " ".join(f"{k}={_short(v)}" for k, v in event.data.items())
    mark = "" if acked is None else (" ✓" if acked else "  ")
    sync = "" if event.clock_synced else " (clock unsynced)"
    return f"#{event.seq:<6}{mark} {event.ts}{sync} {event.kind:<10} {fields}".rstrip()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."
