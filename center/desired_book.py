"""The centre's book of desired documents: what ``send`` published, and what units said.

Two tables in the ledger's database (:mod:`center.store`, migration 3):
``desired_documents``, one row per signed envelope and destination (the
site's ``_all`` or one unit), with the envelope as published, and
``desired_outcomes``, each unit's answer to it. The document *in force* on a
destination is the newest one sent there that no unit rejected: a rejected
one is marked so when ``send`` puts the previous one back.

:class:`DesiredBook` takes any DB-API connection (SQLite's ``qmark`` or
PostgreSQL's ``format`` placeholders); its SQL is portable: no SQLite-only
syntax.

Example::

    book = DesiredBook(sqlite3.connect("/var/lib/xunfang-centre/zhuantang.db"))
    book.record_sent("zhuantang", "_all", topic, envelope, payload, retained=True)
    book.record_outcomes(envelope["id"], [("zt-pp-03", "applied", None, None)])
    book.in_force("zhuantang", "level", "_all")     # -> BookDocument | None
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from firmware_py.desired import ArgsInvalid, time_ms

__all__ = ["BookDocument", "DesiredBook", "Outcome"]


_DOC_COLUMNS = "id, target, site, name, topic, issued_ms, expires_ms, sent_ms, envelope, " \
               "rejected, replaced_by, restored_ms"


@dataclass(frozen=True)
class BookDocument:
    """One document as the book holds it."""

    id: str
    target: str
    site: str
    name: str
    topic: str
    issued_ms: int
    expires_ms: int
    sent_ms: int
    envelope: str
    rejected: bool
    replaced_by: str | None
    restored_ms: int | None

    @property
    def args(self) -> dict[str, Any]:
        doc = json.loads(self.envelope)
        return doc.get("args", {}) if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class Outcome:
    unit: str
    result: str
    reason: str | None = None
    detail: str | None = None


def _now_ms() -> int:
    return int(time.time() * 1000)


class DesiredBook:
    """Desired documents and outcomes on one DB-API connection; every call commits."""

    def __init__(self, connection: Any, placeholder: str | None = None) -> None:
        self.db = connection
        if placeholder is None:
            placeholder = "?" if isinstance(connection, sqlite3.Connection) else "%s"
        self.placeholder = placeholder

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.db.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            return list(cur.fetchall())
        finally:
            cur.close()

    def _write(self, statements: Iterable[tuple[str, Iterable[Any]]]) -> None:
        cur = self.db.cursor()
        try:
            for sql, params in statements:
                cur.execute(self._sql(sql), tuple(params))
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        finally:
            cur.close()

    def close(self) -> None:
        self.db.close()

    # -- writing --------------------------------------------------------------------------------

    def record_sent(self, site: str, target: str, topic: str, envelope: dict[str, Any],
                    payload: str, *, retained: bool, sent_ms: int | None = None) -> None:
        """A signed envelope published on ``topic`` (again: nothing changes)."""
        try:
            issued = time_ms(envelope.get("issued_at"))
            expires = time_ms(envelope.get("expires_at"))
        except ArgsInvalid as err:
            raise ValueError(f"envelope {envelope.get('id')!r}: {err}") from err
        self._write([(
            f"INSERT INTO desired_documents ({_DOC_COLUMNS}, retained)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id, target) DO NOTHING",
            (envelope["id"], target, site, envelope["name"], topic, issued, expires,
             _now_ms() if sent_ms is None else sent_ms, payload, 0, None, None,
             1 if retained else 0))])

    def record_outcomes(self, document: str, outcomes: Iterable[Outcome],
                        at_ms: int | None = None) -> None:
        """Each unit's answer to ``document``; a rejection marks it rejected everywhere."""
        at = _now_ms() if at_ms is None else at_ms
        rows = list(outcomes)
        statements: list[tuple[str, Iterable[Any]]] = [(
            "INSERT INTO desired_outcomes (document, unit, result, reason, detail, at_ms)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT (document, unit, result) DO UPDATE SET"
            " reason = excluded.reason, detail = excluded.detail, at_ms = excluded.at_ms",
            (document, o.unit, o.result, o.reason, o.detail, at)) for o in rows]
        if any(o.result == "rejected" for o in rows):
            statements.append(("UPDATE desired_documents SET rejected = 1 WHERE id = ?",
                               (document,)))
        self._write(statements)

    def record_restored(self, rejected: str, target: str, restored: BookDocument | None,
                        at_ms: int | None = None) -> None:
        """``restored`` was put back on ``target`` in place of the rejected document."""
        at = _now_ms() if at_ms is None else at_ms
        statements: list[tuple[str, Iterable[Any]]] = [(
            "UPDATE desired_documents SET replaced_by = ? WHERE id = ? AND target = ?",
            (restored.id if restored else None, rejected, target))]
        if restored is not None:
            statements.append((
                "UPDATE desired_documents SET restored_ms = ? WHERE id = ? AND target = ?",
                (at, restored.id, restored.target)))
        self._write(statements)

    # -- reading --------------------------------------------------------------------------------

    def _documents(self, where: str, params: Iterable[Any], limit: int | None = None
                   ) -> list[BookDocument]:
        sql = f"SELECT {_DOC_COLUMNS} FROM desired_documents WHERE {where}" \
              " ORDER BY sent_ms DESC, issued_ms DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [BookDocument(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]),
                             r[8], bool(r[9]), r[10], None if r[11] is None else int(r[11]))
                for r in self._rows(sql, params)]

    def in_force(self, site: str, name: str, target: str) -> BookDocument | None:
        """The newest document of ``name`` sent to ``target`` that no unit rejected.

        A document put back after a rejection counts from when it was put back.
        """
        docs = self._documents("site = ? AND name = ? AND target = ? AND retained = 1"
                               " AND rejected = 0", (site, name, target))
        if not docs:
            return None
        return max(docs, key=lambda d: max(d.sent_ms, d.restored_ms or 0))

    def documents(self, site: str, limit: int = 100) -> list[BookDocument]:
        """The newest documents sent to ``site``, newest first."""
        return self._documents("site = ?", (site,), limit)

    def targets(self, site: str) -> list[tuple[str, str]]:
        """Every (name, target) the centre ever sent a desired document to."""
        return sorted({(n, t) for n, t in self._rows(
            "SELECT DISTINCT name, target FROM desired_documents WHERE site = ?"
            " AND retained = 1", (site,))})

    def outcomes(self, document: str) -> list[Outcome]:
        return [Outcome(*r) for r in self._rows(
            "SELECT unit, result, reason, detail FROM desired_outcomes WHERE document = ?"
            " ORDER BY unit, result", (document,))]

    def unit_statuses(self) -> dict[str, dict[str, Any]]:
        """The latest status the ledger stored for each unit (its ``units`` table)."""
        out: dict[str, dict[str, Any]] = {}
        for unit, status in self._rows("SELECT unit, status FROM units"
                                       " WHERE status IS NOT NULL"):
            try:
                doc = json.loads(status)
            except (TypeError, ValueError):
                continue
            if isinstance(doc, dict):
                out[unit] = doc
        return out
