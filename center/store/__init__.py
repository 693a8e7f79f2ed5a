"""The ledger's storage: one interface, two backends.

``open_store(target)`` opens a SQLite file (a path: the embedded default, for
the demo and a laptop) or a PostgreSQL database (a ``postgresql://`` URL: a
district's centre, where several ledger processes share it). The schema is
versioned: ``migrations/{sqlite,postgres}/NNNN_name.sql`` are applied at
start, in one transaction, and recorded in ``schema_version``; a database
newer than the build is refused.

    with open_store("postgresql://ledger@db.centre/zhuantang", site="zhuantang") as store:
        print(store.gaps())
"""

from __future__ import annotations

import os

from center.store.base import (
    COUNTERS,
    REJECTS_KEPT,
    Cursor,
    EventRow,
    JournalGaps,
    JournalInfo,
    JournalState,
    LedgerDatabaseError,
    LedgerError,
    LedgerStore,
    backend_class,
    complement,
    format_ranges,
    is_url,
    migrations,
    ranges,
)

__all__ = [
    "COUNTERS",
    "REJECTS_KEPT",
    "Cursor",
    "EventRow",
    "JournalGaps",
    "JournalInfo",
    "JournalState",
    "LedgerDatabaseError",
    "LedgerError",
    "LedgerStore",
    "backend_class",
    "complement",
    "format_ranges",
    "is_url",
    "migrations",
    "open_store",
    "ranges",
]

def open_store(target: str | os.PathLike[str], site: str | None = None,
               readonly: bool = False, writer: str = "ledger") -> LedgerStore:
    """Open (and for writing, create or migrate) the ledger database ``target`` names."""
    return backend_class(target)(target, site=site, readonly=readonly, writer=writer)
