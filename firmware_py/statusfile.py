"""The station's status file: a path to the centre that does not need the journal.

Invariant 1: when the journal cannot record a tap, the patrol member sees the
fault signal and the fault must still reach the centre. The station writes
``{runtime_dir}/station.json`` (journal state, last error, taps it could not
record, readers, a heartbeat ``ts``) atomically; the uplink, which may still
reach the broker when the journal is failing, reads it into every health
message. This module imports no hardware code, so the uplink can use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUS_NAME = "station.json"


def write_status(path: Path, doc: dict[str, Any]) -> None:
    """Replace the status file atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_status(runtime_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The station's status file, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads((Path(runtime_dir) / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
