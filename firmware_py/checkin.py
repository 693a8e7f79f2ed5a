"""Patrol check-in at the station: readers, card policy, journal, feedback, in that order.

:class:`CheckinPart` opens every ``[[readers]]`` entry with
:func:`drivers.readers.open_reader` and handles each tap on the reader's own
thread, so the signal follows the commit without waiting for the station's
turn:

1. the card list in force (:func:`~firmware_py.desired.current_cards`) and
   the unit's time rules decide ``accepted``, ``unknown`` or
   ``not_valid_now`` (:func:`~firmware_py.patrol.check_card`);
2. the patrol logic (:class:`~firmware_py.patrol.PatrolPoint` at patrol
   points, :class:`~firmware_py.patrol.DutyPost` at kiosks and checkpoints)
   turns the tap into journal steps: a ``checkin`` event, and a ``visit`` or
   ``duty`` event with the state keys that change with it;
3. each step is appended (``append()`` returns after the fsync'd commit);
4. only then the feedback (:class:`drivers.feedback.Feedback`) shows
   ``recorded``, ``alone``, ``off_duty`` or ``rejected``. If a commit fails,
   it shows ``fault`` and the failure goes to the status file (below).

The station's turn (:meth:`CheckinPart.tick`) closes visits whose gap has
passed, reports missed rounds (once a second), and keeps each reader's
health object ``device/readers/{name}`` (which the uplink's health message
reports) up to date; a reader going offline or online is a ``reader`` event
written with that object in one transaction.

**The status file** ``{runtime_dir}/station.json`` does not depend on the
journal: when the journal is what fails (a full or dying SD card), the fault
must still reach the centre (docs/architecture.md, invariant 1). It is written at
start, at once on every journal failure and recovery and reader change, and
every :attr:`CheckinPart.status_every_s` otherwise; :func:`read_status`
reads it (for the uplink's health, or a person: ``cat
/run/xunfang/station.json``). Its fields are in ``docs/patrol.md``.

**Sim readers** (``driver = "sim"``) without a ``link`` in their port get
one at ``{runtime_dir}/sim-{name}``: that is where ``xunfang sim tap``
(:mod:`firmware_py.sim`) writes its frames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

from drivers.feedback import Feedback, FeedbackError
from drivers.readers import CardRead, ReaderThread
from drivers.readers.sim import parse_sim_port

from .clock import rfc3339_ms
from .config import ReaderConfig, UnitConfig
from .desired import current_cards, current_level, journal_time_view
from .devices import feedback_from_config, reader_from_config
from .exc import JournalError
from .journal import Event, Journal
from .parts import StationPart
from .patrol import (
    SIG_FAULT,
    CardCheck,
    DutyPost,
    DutyState,
    Instant,
    Outcome,
    PatrolPoint,
    PatrolState,
    Step,
    check_card,
)
from .runtime import UnitContext
from .statusfile import STATUS_NAME, read_status, write_status

log = logging.getLogger("xunfang.checkin")

__all__ = ["STATUS_NAME", "CheckinPart", "read_status", "reader_key", "sim_link_path",
           "sim_reader_config", "write_status"]

#: Taps that could not be recorded, kept in the status file (newest last).
MAX_UNRECORDED = 20


def reader_key(name: str) -> str:
    """The state key of reader ``name``'s health object (the uplink reports it)."""
    return f"device/readers/{name}"


def sim_link_path(config: UnitConfig, reader: ReaderConfig) -> Path:
    """Where the tap side of sim reader ``reader`` is linked (its port's ``link``, else
    ``{runtime_dir}/sim-{name}``)."""
    _fmt, link = parse_sim_port(reader.port)
    return Path(link) if link else config.unit.runtime_dir / f"sim-{reader.name}"


def sim_reader_config(config: UnitConfig, reader: ReaderConfig) -> ReaderConfig:
    """``reader`` with a ``link`` to its tap side under the runtime directory."""
    if reader.driver != "sim":
        return reader
    fmt, link = parse_sim_port(reader.port)
    if link:
        return reader
    path = sim_link_path(config, reader)
    return reader.model_copy(update={"port": f"sim://{fmt}?link={quote(str(path))}"})


def _health_signature(health: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in health.items() if k != "since_s"}, sort_keys=True,
                      default=str)


class CheckinPart(StationPart):
    """Readers, card policy, patrol logic and feedback; see the module doc.

    ``pin_factory`` is gpiozero's for the feedback outputs and reader power
    relays; ``reader_options`` go to :func:`~drivers.readers.open_reader`
    (``hold_s``, backoff times).
    """

    name: ClassVar[str] = "checkin"
    #: How often reader health is compared with what the journal holds.
    health_every_s: float = 5.0
    #: How often the status file is rewritten when nothing happens (its ``ts`` is a heartbeat).
    status_every_s: float = 30.0
    #: How often missed rounds are looked for.
    rounds_every_s: float = 1.0
    #: After a failed write in the station's turn, wait this long before trying again.
    retry_s: float = 5.0
    #: Options every reader gets from :func:`~drivers.readers.open_reader` unless
    #: ``reader_options`` says otherwise (tests set ``hold_s`` here).
    reader_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def for_config(cls, ctx: UnitContext) -> list[StationPart]:
        """This part when the unit has a reader (for ``build_parts``)."""
        return [cls(ctx)] if ctx.config.readers else []

    def __init__(self, ctx: UnitContext, *, pin_factory: Any = None,
                 reader_options: dict[str, Any] | None = None) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.journal: Journal = ctx.journal
        self.clock = ctx.clock
        self.pin_factory = pin_factory
        self.reader_options = {**self.reader_defaults, **(reader_options or {})}
        self.kind = cfg.unit.kind
        self.status_path = cfg.unit.runtime_dir / STATUS_NAME
        self.readers: dict[str, ReaderThread] = {}
        self.reader_errors: dict[str, str] = {}
        self.feedback: Feedback | None = None
        self.feedback_error: str | None = None
        self.patrol: PatrolPoint | None = None
        self.duty: DutyPost | None = None
        self.taps = 0
        self.signals: dict[str, int] = {}
        self.last_tap: dict[str, Any] | None = None
        self.journal_failures = 0
        self.journal_failing_since: int | None = None
        self.journal_last_error: str | None = None
        self.journal_last_ok: int | None = None
        self.unrecorded: deque[dict[str, Any]] = deque(maxlen=MAX_UNRECORDED)
        self._lock = threading.RLock()
        self._written_health: dict[str, str] = {}
        self._next_health = 0.0
        self._next_status = 0.0
        self._next_rounds = 0.0
        self._retry_at = 0.0
        self._opened = False

    # -- life cycle ---------------------------------------------------------------------

    def open(self) -> None:
        cfg = self.ctx.config
        with contextlib.suppress(OSError):
            cfg.unit.runtime_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            try:
                self._load_logic()
            except (JournalError, sqlite3.Error) as err:
                # Taps must still get a signal: start from empty state, and say why.
                log.error("cannot read the patrol state from the journal (%s): starting "
                          "without it", err)
                self._load_logic(empty=True)
                self._journal_failed(err)
            try:
                self.feedback = feedback_from_config(cfg.feedback, pin_factory=self.pin_factory)
                self.feedback_error = None
            except FeedbackError as err:
                self.feedback_error = str(err)
                log.error("%s; taps are recorded without feedback", err)
            if self.patrol is not None:
                for step in self.patrol.start(Instant.now(self.clock)):
                    try:
                        self._commit([step])
                    except (JournalError, sqlite3.Error) as err:
                        self._journal_failed(err)
                        self.patrol.commit(step)   # watching starts now, stored or not
            if self.journal_failing_since is None and self._probe():
                # A journal that cannot be written (a full disk at boot) shows at once in
                # the status file, not only at the first tap.
                self.journal_last_ok = self.clock.wall_ms()
            self._opened = True
        for rc in cfg.readers:
            try:
                reader = reader_from_config(sim_reader_config(cfg, rc), on_card=self._on_card,
                                            on_state=self._on_state, pin_factory=self.pin_factory,
                                            start=False, **self.reader_options)
            except Exception as err:
                text = f"cannot start reader {rc.name} ({rc.driver} on {rc.port}): {err}"
                log.error("%s", text)
                with self._lock:
                    self.reader_errors[rc.name] = text
                    self._store_health(rc.name, {"state": "error", "detail": text,
                                                 "driver": rc.driver, "port": rc.port})
                continue
            with self._lock:
                self.readers[rc.name] = reader   # before it starts: its first event needs it
            reader.start()
        with self._lock:
            self._write_status()

    def _load_logic(self, empty: bool = False) -> None:
        cfg = self.ctx.config
        if self.kind == "patrol_point":
            state = PatrolState.from_state({} if empty else self.journal.state_items("patrol/"))
            prefix = f"{cfg.unit.id}:{self.journal.journal_id}:v"
            self.patrol = PatrolPoint(cfg.patrol, ZoneInfo(cfg.unit.timezone), prefix, state)
        else:
            self.duty = DutyPost(cfg.duty, DutyState.from_state(
                {} if empty else self.journal.state_items("duty/")))

    def close(self) -> None:
        with self._lock:
            readers, self.readers = self.readers, {}
        for reader in readers.values():   # outside the lock: a tap in progress may need it
            try:
                reader.stop()
            except Exception:
                log.exception("stopping reader %s failed", reader.name)
        with self._lock:
            if self._opened:
                for name, reader in readers.items():
                    self._store_health(name, reader.health())
            if self.feedback is not None:
                self.feedback.close()
                self.feedback = None
            if self._opened:
                self._write_status(stopped=True)
            self._opened = False

    # -- taps (on the reader's thread) ------------------------------------------------------

    def _on_card(self, read: CardRead) -> None:
        with self._lock:
            self.taps += 1
            try:
                outcome, events = self._record(read)
            except Exception as err:
                # Not on disk (or not all of it): the member must not see green.
                if not isinstance(err, JournalError | sqlite3.Error):
                    log.exception("tap %s on %s: recording failed", read.card_hex, read.reader)
                self._show(SIG_FAULT)
                self._note_tap(read, None, SIG_FAULT)
                self._journal_failed(err, read)
                return
            self._journal_ok()
            self._show(outcome.signal)
            self._note_tap(read, outcome, outcome.signal)
            data = outcome.checkin
            log.info("tap %s on %s: %s%s%s -> %s", read.card_hex, read.reader, outcome.decision,
                     f" ({data.get('badge')}, {data.get('role')})" if data.get("badge") else "",
                     f" visit {data['visit']}" if data.get("visit") else "", outcome.signal)
            for event in events:
                if event.kind != "checkin":
                    log.info("%s: %s", event.kind, json.dumps(event.data, ensure_ascii=False))
            self._write_status()   # after the signal: it costs the member nothing

    def _record(self, read: CardRead) -> tuple[Outcome, list[Event]]:
        now = Instant.now(self.clock)
        check = self.check(read.card_hex)
        if self.patrol is not None:
            level = current_level(self.journal, self.clock).level
            outcome = self.patrol.tap(read.card_hex, read.reader, check, now, level)
        else:
            assert self.duty is not None
            outcome = self.duty.tap(read.card_hex, read.reader, check, now)
        return outcome, self._commit(outcome.steps)

    def check(self, card_hex: str) -> CardCheck:
        """The card list's decision on ``card_hex`` now."""
        return check_card(current_cards(self.journal), card_hex,
                          journal_time_view(self.journal, self.clock))

    def _commit(self, steps: list[Step]) -> list[Event]:
        """Append each step, adopting its state once it is on disk."""
        events: list[Event] = []
        logic: PatrolPoint | DutyPost | None = self.patrol or self.duty
        assert logic is not None
        for step in steps:
            if step.kind is not None:
                events.append(self.journal.append(step.kind, step.data, state=step.state or None))
            else:
                for key, value in step.state.items():
                    self.journal.state_set(key, value)
            logic.commit(step)
        return events

    def _show(self, signal: str) -> None:
        self.signals[signal] = self.signals.get(signal, 0) + 1
        if self.feedback is None:
            return
        try:
            self.feedback.show(signal)
        except Exception:
            log.exception("feedback %s failed", signal)

    def _note_tap(self, read: CardRead, outcome: Outcome | None, signal: str) -> None:
        self.last_tap = {
            "card": read.card_hex, "reader": read.reader, "signal": signal,
            "decision": outcome.decision if outcome else None,
            "at": rfc3339_ms(self.clock.wall_ms()),
        }

    # -- journal health -----------------------------------------------------------------------

    def _journal_failed(self, err: BaseException, read: CardRead | None = None) -> None:
        now_ms = self.clock.wall_ms()
        self.journal_failures += 1
        self.journal_last_error = str(err)
        if self.journal_failing_since is None:
            self.journal_failing_since = now_ms
            log.critical("journal write failed: %s; taps are NOT recorded (fault shown, "
                         "reported in %s)", err, self.status_path)
        else:
            log.error("journal write failed again (%d): %s", self.journal_failures, err)
        if read is not None:
            self.unrecorded.append({"card": read.card_hex, "reader": read.reader,
                                    "at": rfc3339_ms(now_ms)})
        self._retry_at = time.monotonic() + self.retry_s
        self._write_status()

    def _journal_ok(self) -> None:
        self.journal_last_ok = self.clock.wall_ms()
        if self.journal_failing_since is not None:
            log.warning("journal writes work again after %d failure(s)", self.journal_failures)
            self.journal_failing_since = None
            self._write_status()

    # -- readers (on the reader's thread) --------------------------------------------------------

    def _on_state(self, name: str, state: str, detail: str) -> None:
        with self._lock:
            reader = self.readers.get(name)
            health = reader.health() if reader is not None else {}
            health.update(state=state, detail=detail)
            try:
                self.journal.append("reader", {"reader": name, "state": state, "detail": detail},
                                    state={reader_key(name): health})
                self._written_health[name] = _health_signature(health)
                self._journal_ok()
            except (JournalError, sqlite3.Error) as err:
                self._journal_failed(err)
            self._write_status()

    def _store_health(self, name: str, health: dict[str, Any]) -> None:
        sig = _health_signature(health)
        if self._written_health.get(name) == sig:
            return
        try:
            self.journal.state_set(reader_key(name), health)
            self._written_health[name] = sig
        except (JournalError, sqlite3.Error) as err:
            self._journal_failed(err)

    # -- the station's turn ------------------------------------------------------------------------

    def tick(self, now_mono: float) -> None:
        with self._lock:
            if now_mono < self._retry_at:
                return
            try:
                now = Instant.now(self.clock)
                if self.patrol is not None:
                    self._commit(self.patrol.due(now))
                    if now_mono >= self._next_rounds:
                        self._next_rounds = now_mono + self.rounds_every_s
                        level = current_level(self.journal, self.clock).level
                        for step in self.patrol.rounds(now, level):
                            self._commit([step])
                            if step.kind == "round_missed":
                                log.warning("round missed: %s", json.dumps(step.data))
                if now_mono >= self._next_health:
                    self._next_health = now_mono + self.health_every_s
                    for name, reader in self.readers.items():
                        self._store_health(name, reader.health())
            except (JournalError, sqlite3.Error) as err:
                self._journal_failed(err)
                return
            if self.journal_failing_since is not None and self._probe():
                self._journal_ok()
            if now_mono >= self._next_status:
                self._write_status()

    def _probe(self) -> bool:
        """While the journal is failing, try a small write now and then: it may be back."""
        try:
            self.journal.state_set("station/probe", {"ms": self.clock.wall_ms()})
            return True
        except (JournalError, sqlite3.Error) as err:
            self._journal_failed(err)
            return False

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status file's document."""
        readers: dict[str, Any] = {}
        for name, reader in self.readers.items():
            h = reader.health()
            readers[name] = {"state": h.get("state"), "detail": h.get("detail"),
                             "reads": h.get("reads"), "errors": h.get("errors")}
        for name, text in self.reader_errors.items():
            readers.setdefault(name, {"state": "error", "detail": text})
        failing = self.journal_failing_since is not None
        return {
            "v": 1,
            "unit": self.ctx.config.unit.id,
            "component": "station",
            "pid": os.getpid(),
            "boot_id": self.clock.boot_id(),
            "ts": rfc3339_ms(self.clock.wall_ms()),
            "clock_synced": self.clock.synced(),
            "journal": {
                "id": self.journal.journal_id,
                "state": "failing" if failing else "ok",
                "since": rfc3339_ms(self.journal_failing_since) if failing else None,
                "failures": self.journal_failures,
                "last_error": self.journal_last_error,
                "last_ok": rfc3339_ms(self.journal_last_ok) if self.journal_last_ok else None,
                # Set once the journal was found damaged and rebuilt (docs/operations.md).
                "rebuilt": self.journal.rebuilt,
            },
            "unrecorded": list(self.unrecorded),
            "readers": readers,
            "feedback": (self.feedback.health() if self.feedback is not None
                         else {"state": "error" if self.feedback_error else "none",
                               "detail": self.feedback_error}),
            "taps": self.taps,
            "signals": dict(self.signals),
            "last_tap": self.last_tap,
        }

    def _write_status(self, stopped: bool = False) -> None:
        self._next_status = time.monotonic() + self.status_every_s
        doc = self.status()
        if stopped:
            doc["stopped"] = True
        try:
            write_status(self.status_path, doc)
        except OSError as err:
            log.error("cannot write the status file %s: %s", self.status_path, err)

    def health(self) -> dict[str, Any]:
        with self._lock:
            out = self.status()
        if self.patrol is not None:
            visit = self.patrol.state.visit
            out["visit"] = {"id": visit.id, "people": visit.people} if visit else None
        if self.duty is not None:
            out["on_duty"] = list(self.duty.state.on)
        return out
