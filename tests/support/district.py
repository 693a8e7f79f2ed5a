"""A district of real units on one controlled clock: for the report's tests and the demo.

Every unit is the real runtime (station and uplink, as ``xunfang run`` starts
them) with a simulated reader (a real pty), its own journal, talking to a real
Mosquitto; the centre's real ledger stores their events. All of them run in
this process on one :class:`~firmware_py.clock.ManualClock`, so a week of
patrols takes a minute: the clock jumps from one patrol to the next, and the
units see time pass (wall and boot-relative clocks together, as in the field).

    with District(workdir, "zhuantang", [("zt-pp-01", "patrol_point")], start) as d:
        d.cards([{"card": "14008EC793", "badge": "PO-017", "role": "police"}])
        d.at(local(2026, 11, 23, 20, 10))
        d.visit("zt-pp-01", "14008EC793", "0000000457")
        d.sync()
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from center.ledger import Ledger
from firmware_py import topics
from firmware_py.clock import ManualClock
from firmware_py.components import unit_runtime
from firmware_py.config import UnitConfig, load_config
from firmware_py.journal import Event, Journal
from firmware_py.runtime import Runtime
from firmware_py.signing import SigningKey
from firmware_py.sim import tap
from tests.support.brokers import Mosquitto
from tests.support.units import write_unit_config

WAIT_S = 20.0
HOLD_S = 1.6


class District:
    """Units of one site on a shared manual clock, a real broker and the real ledger."""

    def __init__(self, workdir: Path, site: str, units: Iterable[tuple[str, str]],
                 start: datetime, *, visit_gap_s: int = 60,
                 windows: Mapping[str, Mapping[str, str]] | None = None,
                 round_every_min: Mapping[int, int] | None = None,
                 timezone: str = "Asia/Shanghai") -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.site = site
        self.clock = ManualClock(wall_ms=int(start.timestamp() * 1000), monotonic=1000.0)
        self.visit_gap_s = visit_gap_s
        self.centre = SigningKey.generate("district-centre")
        self.ledger_key = SigningKey.generate("district-ledger")
        self.broker = Mosquitto(workdir=self.dir / "broker")
        self.db_path = self.dir / "ledger.db"
        self.ledger: Ledger | None = None
        self.kinds = dict(units)
        self._windows = windows or {}
        self._round_every = round_every_min
        self._timezone = timezone
        self.configs: dict[str, UnitConfig] = {}
        self.runtimes: dict[str, Runtime] = {}
        self._open_visits: dict[str, int] = {}  # unit -> seq of its last accepted tap
        self._publisher: mqtt.Client | None = None
        self._last_tap: dict[tuple[str, str], float] = {}

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.broker.start()
        # The ledger first: it must hold every unit's first events.
        self.ledger = Ledger(self.db_path, self.site, self.ledger_key, port=self.broker.port)
        self.ledger.start()
        if not self.ledger.wait_connected(WAIT_S):
            raise RuntimeError("the ledger did not connect to the broker")
        for unit, kind in self.kinds.items():
            patrol: dict[str, Any] = {"visit_gap_s": self.visit_gap_s}
            if unit in self._windows:
                patrol["windows"] = dict(self._windows[unit])
            if self._round_every:
                patrol["round_every_min"] = {str(k): v for k, v in self._round_every.items()}
            path = write_unit_config(
                self.dir / f"{unit}.toml", self.dir / unit,
                unit={"id": unit, "site": self.site, "kind": kind, "timezone": self._timezone},
                mqtt={"port": self.broker.port, "health_interval_s": 3600},
                security={"command_keys": {self.centre.name: self.centre.public_b64()},
                          "ack_keys": {self.ledger_key.name: self.ledger_key.public_b64()}},
                readers=[{"name": "main", "driver": "sim", "port": "sim"}],
                patrol=patrol)
            self.configs[unit] = load_config(path)
            self.start_unit(unit)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="district-centre",
                             protocol=mqtt.MQTTv5)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        self._publisher = client

    def start_unit(self, unit: str) -> None:
        runtime = unit_runtime(self.configs[unit], ["station", "uplink"], clock=self.clock)
        runtime.start()
        self.runtimes[unit] = runtime

    def stop_unit(self, unit: str) -> None:
        """A clean stop: the unit records ``unit stopping`` and goes quiet."""
        self.runtimes.pop(unit).stop()
        self._open_visits.pop(unit, None)

    def close(self) -> None:
        for unit in list(self.runtimes):
            with contextlib.suppress(Exception):
                self.stop_unit(unit)
        if self._publisher is not None:
            self._publisher.loop_stop()
            self._publisher.disconnect()
        if self.ledger is not None:
            self.ledger.stop()
        self.broker.close()

    # -- time ---------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall_ms() / 1000, UTC)

    def at(self, when: datetime) -> None:
        """Let time pass until ``when`` (never backwards)."""
        delta = (when - self.now()).total_seconds()
        if delta < 0:
            raise ValueError(f"{when} is before the district's clock ({self.now()})")
        self.advance(delta)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        # Let the stations see it (they check rounds once a second).
        time.sleep(0.05)

    # -- the centre -------------------------------------------------------------------------

    def publish(self, name: str, args: Mapping[str, Any], ttl_s: int = 30 * 86400) -> str:
        """A signed, retained ``desired/{name}`` for the whole site, issued now (the district's
        clock); waits until every running unit applied it."""
        env = self.centre.sign_envelope(name, dict(args), site=self.site, units=["*"],
                                        ttl_s=ttl_s, clock=self.clock)
        assert self._publisher is not None
        self._publisher.publish(topics.desired(self.site, "_all", name), json.dumps(env),
                                qos=1, retain=True).wait_for_publish(WAIT_S)
        for unit in self.runtimes:
            self._wait(unit, lambda e, i=env["id"]: e.kind == "command"
                       and e.data.get("command") == i, f"{name} applied")
        return str(env["id"])

    def cards(self, people: Iterable[Mapping[str, Any]], version: int = 1) -> None:
        cards = [{"card": p["card"], "badge": p["badge"], "role": p["role"],
                  **({"leader": True} if p.get("leader") else {})} for p in people]
        self.publish("cards", {"version": version, "cards": cards})

    def level(self, level: int) -> None:
        self.publish("level", {"level": level})
        for unit in self.runtimes:
            self._wait(unit, lambda e: e.kind == "level" and e.data.get("level") == level,
                       f"level {level}")

    # -- taps -------------------------------------------------------------------------------

    def tap(self, unit: str, card: str) -> Event:
        # A reader takes the same card within 1.5 s (real time) for a tag held still.
        held = self._last_tap.get((unit, card))
        if held is not None and time.monotonic() - held < HOLD_S:
            time.sleep(HOLD_S - (time.monotonic() - held))
        result = tap(self.configs[unit], card, wait_s=WAIT_S)
        self._last_tap[(unit, card)] = time.monotonic()
        if result.event is None:
            raise RuntimeError(f"{unit}: no checkin for card {card}")
        if self.kinds[unit] == "patrol_point" and result.event.data.get("decision") in (
                "accepted", "repeat"):
            self._open_visits[unit] = result.event.seq
        return result.event

    def visit(self, unit: str, *cards: str) -> None:
        """People tap one after another (10 s apart); the visit closes at :meth:`settle`."""
        for i, card in enumerate(cards):
            if i:
                self.advance(10)
            self.tap(unit, card)

    def settle(self) -> None:
        """Let every open visit close (``visit_gap_s`` passes) and wait for its event."""
        if not self._open_visits:
            return
        self.advance(self.visit_gap_s + 1)
        for unit, seq in list(self._open_visits.items()):
            self._wait(unit, lambda e, s=seq: e.kind == "visit" and e.seq > s, "the visit",
                       after=seq)
        self._open_visits.clear()

    def _wait(self, unit: str, match: Any, what: str, after: int = 0) -> Event:
        cfg = self.configs[unit]
        deadline = time.monotonic() + WAIT_S
        with Journal(cfg.journal_path, unit=unit, site=self.site) as journal:
            while True:
                top = journal.last_seq()
                for event in journal.events_after(after, limit=1000):
                    if match(event):
                        return event
                after = top
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{unit}: no {what} within {WAIT_S} s")
                journal.wait(after, 0.2)

    # -- the ledger -------------------------------------------------------------------------

    def sync(self, timeout: float = 60.0) -> None:
        """Wait until the ledger holds every unit's every event."""
        assert self.ledger is not None
        deadline = time.monotonic() + timeout
        for unit, cfg in self.configs.items():
            with Journal(cfg.journal_path, unit=unit, site=self.site) as journal:
                jid, last = journal.journal_id, journal.last_seq()
            while self.ledger.prefix(unit, jid) < last:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{unit}: the ledger holds up to "
                                       f"{self.ledger.prefix(unit, jid)} of {last}")
                time.sleep(0.1)
