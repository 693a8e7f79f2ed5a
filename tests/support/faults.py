"""Fault rigs: one unit as three daemons beside a real ledger and Mosquitto, a tap stream,
and a TCP proxy that delays, drops and blackholes.

:class:`Site` writes a unit config (sim reader, feedback LEDs on mock pins, optionally a
camera on a small video file), a signed card list for it, and runs
``xunfang run -c FILE station|camera|uplink`` and ``xunfang ledger`` as child processes,
each in a session of its own so that a SIGKILL takes the whole process group, as
systemd's restart of a failed service does (its cgroup goes with it).

:class:`TapStream` taps cards on the sim reader from a thread with ``firmware_py.sim.tap``
and keeps every tap whose ``checkin`` came back ``accepted``: what the patrol member saw
as green. :class:`Proxy` is an asyncio relay in its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from center.ledger import LedgerDatabaseError, LedgerDB
from firmware_py import topics
from firmware_py.journal import Journal
from firmware_py.signing import SigningKey, save_signing_key
from firmware_py.sim import SimTapError, tap
from tests.support.brokers import Mosquitto
from tests.support.footage import write_video
from tests.support.units import write_unit_config
from tests.support.uplink import SITE, UNIT, wait_until

XUNFANG = Path(sys.executable).parent / "xunfang"
COMPONENTS = ("station", "camera", "uplink")
T = TypeVar("T")


@dataclass(frozen=True)
class Scale:
    """Which run of a fault test this is: the short one (default suite) or the long one."""

    short: bool

    def pick(self, short: T, long: T) -> T:
        return short if self.short else long


class Proc:
    """A child process in its own session; ``kill`` SIGKILLs its whole process group."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.argv, self.log, self.prefix = list(argv), log, list(prefix)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        death = [p, "--pdeathsig", "KILL"] if (p := shutil.which("setpriv")) else []
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, *death, *self.argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is None:
            return
        self.signal_group(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def card_list(n: int) -> list[str]:
    return [f"20{i:08X}" for i in range(n)]


class Site:
    """A unit (three daemons), its ledger and the broker they meet on."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, *, camera: bool = True,
                 cards: int = 60, unit_host: str | None = None, unit_port: int | None = None,
                 keepalive_s: int = 30, uplink_prefix: Sequence[str] = (),
                 mqtt: dict[str, Any] | None = None, patrol: dict[str, Any] | None = None,
                 cameras: list[dict[str, Any]] | None = None) -> None:
        self.tmp, self.broker = tmp_path, broker
        self.data = tmp_path / "data"
        self.cards = card_list(cards)
        self.centre_key = SigningKey.generate("centre-test")
        ledger_key = SigningKey.generate("ledger-test")
        save_signing_key(ledger_key, tmp_path / "ledger.key")
        sections: dict[str, Any] = {
            "mqtt": {"host": unit_host or broker.host, "port": unit_port or broker.port,
                     "keepalive_s": keepalive_s, "resend_after_s": 5, **(mqtt or {})},
            "security": {"command_keys": {"centre-test": self.centre_key.public_b64()},
                         "ack_keys": {"ledger-test": ledger_key.public_b64()}},
            "readers": [{"name": "main", "driver": "sim", "port": "sim"}],
            "feedback": {"ok_led": 17, "error_led": 27, "buzzer": 22},
            "patrol": {"visit_gap_s": 1, **(patrol or {})},
        }
        if cameras is not None:
            sections["cameras"] = cameras
        elif camera:
            scene = tmp_path / "scene.avi"
            rng = np.random.default_rng(7)
            write_video(scene, [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
                                for _ in range(20)], fps=5)
            sections["cameras"] = [{"name": "gate", "source": str(scene), "fps": 5,
                                    "quota_mb": 20}]
        self.config = write_unit_config(tmp_path / "unit.toml", self.data, **sections)
        self.ledger_db = tmp_path / "ledger.db"
        self.ledger = Proc([str(XUNFANG), "ledger", "--broker", f"{broker.host}:{broker.port}",
                            "--site", SITE, "--db", str(self.ledger_db),
                            "--key", str(tmp_path / "ledger.key")], tmp_path / "ledger.log")
        env = {"GPIOZERO_PIN_FACTORY": "mock"}
        names = COMPONENTS if camera else ("station", "uplink")
        self.daemons = {
            name: Proc([str(XUNFANG), "run", "-c", str(self.config), name],
                       tmp_path / f"{name}.log", env,
                       prefix=uplink_prefix if name == "uplink" else ())
            for name in names}
        self.journal = Journal(self.data / "journal.db", unit=UNIT, site=SITE)
        self._reader: LedgerDB | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def publish_cards(self) -> None:
        doc = {"version": 1, "cards": [{"card": c, "badge": f"PA-{i}", "role": "patrol"}
                                       for i, c in enumerate(self.cards)]}
        env = self.centre_key.sign_envelope("cards", doc, site=SITE, units=["*"], ttl_s=86400)
        with self.broker.probe(None, client_id="centre") as centre:
            assert not centre.publish(topics.desired(SITE, topics.ALL_UNITS, "cards"),
                                      json.dumps(env), retain=True).is_failure

    def start(self) -> None:
        self.publish_cards()
        self.ledger.start()
        for daemon in self.daemons.values():
            daemon.start()
        wait_until(self.cards_applied, 40, "the card list applied at the unit")
        wait_until(lambda: sim_link(self).exists(), 20, "the sim reader")

    def cards_applied(self) -> bool:
        return any(e.data.get("name") == "cards" and e.data.get("result") == "applied"
                   for e in self.journal.events_after(0, limit=10_000, kinds=["command"]))

    def close(self) -> None:
        for proc in (*self.daemons.values(), self.ledger):
            with contextlib.suppress(Exception):
                proc.stop(10)
            with contextlib.suppress(Exception):
                proc.kill()
        if self._reader is not None:
            self._reader.close()
        self.journal.close()

    def logs(self) -> str:
        return "\n".join(f"--- {name} log ---\n{proc.text()[-6000:]}" for name, proc in
                         (*self.daemons.items(), ("ledger", self.ledger)))

    # -- the ledger's side -----------------------------------------------------------------

    @property
    def reader(self) -> LedgerDB:
        if self._reader is None:
            self._reader = wait_until(self._open_ledger, 20, "the ledger database")
        return self._reader

    def _open_ledger(self) -> LedgerDB | None:
        # The ledger creates its file, then its schema: a reader may come in between.
        try:
            return LedgerDB(self.ledger_db, readonly=True)
        except LedgerDatabaseError:
            return None

    def ledger_prefix(self) -> int:
        info = self.reader.journal(UNIT, self.journal.journal_id)
        return info.prefix if info else 0

    def wait_all_delivered(self, timeout: float) -> None:
        """Until the ledger holds the journal's every event and the unit has the ack."""
        def done() -> bool:
            last = self.journal.last_seq()
            return self.ledger_prefix() >= last and self.journal.acked_seq() >= last

        if not wait_until_quiet(done, timeout):
            raise AssertionError(
                f"ledger prefix {self.ledger_prefix()}, unit acked {self.journal.acked_seq()}, "
                f"journal last {self.journal.last_seq()} after {timeout} s; gaps "
                f"{[g.missing[:5] for g in self.reader.gaps(UNIT)]}")


def wait_until_quiet(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def sim_link(site: Site) -> Path:
    from firmware_py.checkin import sim_link_path
    from firmware_py.config import load_config

    cfg = load_config(site.config)
    return sim_link_path(cfg, cfg.readers[0])


# -- a stream of taps --------------------------------------------------------------------------


@dataclass(frozen=True)
class Green:
    """A tap the unit answered with ``accepted``: its card and journal sequence number."""

    card: str
    seq: int
    event_id: str


class TapStream(threading.Thread):
    """Taps cards one after another; batches of ``batch`` distinct cards, then a pause
    longer than the visit gap so the next batch starts a new visit (no ``repeat``)."""

    def __init__(self, site: Site, batch: int = 25, pause_s: float = 1.3,
                 wait_s: float = 2.0) -> None:
        super().__init__(name="taps", daemon=True)
        self.site, self.batch, self.pause_s, self.wait_s = site, batch, pause_s, wait_s
        from firmware_py.config import load_config

        self.cfg = load_config(site.config)
        self.halt = threading.Event()
        self.green: list[Green] = []
        self.other: list[tuple[str, str]] = []  # (card, decision) of taps not accepted
        self.unanswered = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        cards, half = self.site.cards, len(self.site.cards) // 2
        turn = 0
        try:
            while not self.halt.is_set():
                group = cards[:half] if turn % 2 == 0 else cards[half:]
                for card in group[:self.batch]:
                    if self.halt.is_set():
                        return
                    self._tap(card)
                turn += 1
                self.halt.wait(self.pause_s)  # close the visit
        except BaseException as err:  # every failure is a finding
            self.errors.append(err)

    def _tap(self, card: str) -> None:
        try:
            result = tap(self.cfg, card, reader="main", wait_s=self.wait_s)
        except SimTapError:
            self.unanswered += 1  # the station is down: no pty to write to
            self.halt.wait(0.1)
            return
        if result.event is None:
            self.unanswered += 1
            return
        decision = result.event.data.get("decision")
        if decision == "accepted":
            self.green.append(Green(card, result.event.seq, result.event.id))
        else:
            self.other.append((card, str(decision)))

    def finish(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the tap stream did not stop"
        assert not self.errors, self.errors


def check_green_in_ledger(site: Site, green: list[Green]) -> None:
    """Every green tap is in the ledger once, as the checkin it was, in tap order; the
    ledger holds the journal's whole prefix with no gaps and no second journal."""
    seqs = [g.seq for g in green]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "taps out of order"
    jid = site.journal.journal_id
    journals = site.reader.journals(UNIT)
    assert [j.journal for j in journals] == [jid], journals
    for g in green:
        assert g.event_id == f"{UNIT}:{jid}:{g.seq}", g
        doc = site.reader.event(g.event_id)
        assert doc is not None, f"green tap {g} not in the ledger"
        assert doc["kind"] == "checkin" and doc["data"]["card"] == g.card, (g, doc)
        assert doc["data"]["decision"] == "accepted", (g, doc)
    prefix = site.ledger_prefix()
    # Unique by id: as many rows as the prefix means every seq exactly once.
    assert site.reader.count(UNIT, jid) == prefix >= max(seqs, default=0)
    assert all(not g.missing for g in site.reader.gaps(UNIT))


# -- a TCP proxy ---------------------------------------------------------------------------------


class Proxy:
    """An asyncio TCP relay ``listen -> target`` in its own thread.

    Modes: ``pass``; ``delay`` (every chunk held ``delay_s`` each way); ``loss`` (each chunk
    ends its connection with probability ``loss``: TCP retransmits a lost packet, so what
    the unit sees of heavy loss is a stalled, then broken, connection); ``blackhole``
    (connections stay open, nothing goes through either way: a silent dead link).
    """

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host, self.port = host, 0
        self.mode, self.delay_s, self.loss = "pass", 0.0, 0.0
        self.connections = 0
        self._rng = random.Random(13)
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def set(self, mode: str, delay_s: float = 0.0, loss: float = 0.0) -> None:
        assert mode in ("pass", "delay", "loss", "blackhole"), mode
        self.mode, self.delay_s, self.loss = mode, delay_s, loss

    def cut(self) -> None:
        """Close every open connection (a reset, not a silent link)."""
        def close_all() -> None:
            for w in list(self._writers):
                w.close()
        self._loop.call_soon_threadsafe(close_all)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}
        try:
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer),
                                 return_exceptions=True)
        finally:
            for w in (writer, up_w):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.mode == "blackhole":
                    continue
                if self.mode == "delay" and self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                if self.mode == "loss" and self._rng.random() < self.loss:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()

    def close(self) -> None:
        def shutdown() -> None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(5)


# -- the systemd side of sd_notify --------------------------------------------------------------


class NotifySocket:
    """A NOTIFY_SOCKET the test owns: collects READY=1 and WATCHDOG=1 with their arrival."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self._lock = threading.Lock()
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="notify", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def times(self, key: str, since: float = 0.0) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if m.get(key) == "1" and t >= since]

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)
