"""Test helpers for the uplink: an in-process unit, a wire watcher, a TCP gate.

``UnitRig`` runs a real :class:`firmware_py.uplink.UplinkComponent` in its
thread against a real broker, with its own journal and signing keys, and
signs acks the way the ledger does. ``Watcher`` subscribes to everything
under ``xunfang/`` and validates every message it sees against the JSON
Schemas of ``docs/schemas`` (``tests/support/schemas.py``). ``Gate`` is a TCP
relay between a unit and its broker that counts MQTT packets in both
directions, can hold the broker's replies (to fill the unit's in-flight
window) and can cut every connection (a network fault without a broker
restart).

Every wait takes a deadline: :func:`wait_until` polls a condition and fails
the test with a message when time runs out.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from firmware_py import topics
from firmware_py.clock import SystemClock
from firmware_py.config import UnitConfig
from firmware_py.journal import Event, Journal
from firmware_py.runtime import UnitContext
from firmware_py.signing import SigningKey
from firmware_py.uplink import UplinkComponent
from tests.support import schemas
from tests.support.brokers import MqttProbe
from tests.support.units import make_config, write_unit_config

SITE = "zhuantang"
UNIT = "zt-pp-03"
ACK_KEY_NAME = "ledger-test"
COMMAND_KEY_NAME = "centre-test"
_POLL_S = 0.01


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               step: float = _POLL_S) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def alarm(i: int) -> dict[str, Any]:
    """Event data that the ``alarm`` schema accepts."""
    return {"source": "test", "state": "active" if i % 2 else "cleared", "n": i}


# -- the wire ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One message a watcher received, validated and decoded."""

    topic: str
    doc: dict[str, Any]
    retain: bool
    raw: bytes

    @property
    def channel(self) -> str:
        parsed = topics.parse(self.topic)
        return parsed.channel if parsed else "?"


class Watcher:
    """A subscriber to ``xunfang/#`` whose every message must match the API's schemas."""

    def __init__(self, probe: MqttProbe) -> None:
        self.probe = probe
        rcs = probe.subscribe("xunfang/#")
        assert all(not rc.is_failure for rc in rcs), rcs
        self._checked = 0
        self._seen: list[Seen] = []

    def seen(self) -> list[Seen]:
        """Every message so far, each validated (schemas.validate raises on a mismatch)."""
        with self.probe._cond:
            messages: list[mqtt.MQTTMessage] = list(self.probe.messages)
        for msg in messages[self._checked:]:
            payload = bytes(msg.payload)
            if not payload:
                doc: dict[str, Any] = {}
            else:
                doc = schemas.validate(msg.topic, payload)
            self._seen.append(Seen(msg.topic, doc, bool(msg.retain), payload))
        self._checked = len(messages)
        return list(self._seen)

    def events(self) -> list[dict[str, Any]]:
        return [s.doc for s in self.seen() if s.channel == "events"]

    def on(self, channel: str) -> list[Seen]:
        return [s for s in self.seen() if s.channel == channel]

    def wait_events(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float,
                    what: str) -> list[dict[str, Any]]:
        wait_until(lambda: predicate(self.events()), timeout, what)
        return self.events()

    def wait_seq(self, seq: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return self.wait_events(lambda evs: any(e["seq"] >= seq for e in evs), timeout,
                                f"event {seq} on the wire")

    def wait_status(self, online: bool, after: int = 0, timeout: float = 10.0) -> Seen:
        """The first status message with ``online`` among those after the ``after``-th."""
        def find() -> Seen | None:
            for s in self.on("status")[after:]:
                if s.doc.get("online") is online:
                    return s
            return None

        result: Seen = wait_until(find, timeout, f"status online={online}")
        return result


# -- a unit in this process -------------------------------------------------------------------


@dataclass
class UnitRig:
    """One unit: config, journal, keys, and (when started) its uplink component."""

    data_dir: Path
    port: int
    sections: dict[str, Any] = field(default_factory=dict)
    ack_key: SigningKey = field(default_factory=lambda: SigningKey.generate(ACK_KEY_NAME))
    command_key: SigningKey = field(
        default_factory=lambda: SigningKey.generate(COMMAND_KEY_NAME))
    uplink: UplinkComponent | None = None

    def __post_init__(self) -> None:
        self.config = self.make_config()
        self.journal = Journal(self.config.journal_path, unit=self.config.unit.id,
                               site=self.config.unit.site)

    def _sections(self) -> dict[str, Any]:
        mqtt_section = {"host": "127.0.0.1", "port": self.port, "reconnect_min_s": 0.1,
                        "reconnect_max_s": 0.5, **self.sections.get("mqtt", {})}
        security = {"command_keys": {COMMAND_KEY_NAME: self.command_key.public_b64()},
                    "ack_keys": {ACK_KEY_NAME: self.ack_key.public_b64()}}
        others = {k: v for k, v in self.sections.items() if k != "mqtt"}
        return {"mqtt": mqtt_section, "security": security, **others}

    def make_config(self) -> UnitConfig:
        return make_config(self.data_dir, **self._sections())

    def write_config(self, path: Path) -> Path:
        """The same config as a TOML file, for ``xunfang run -c FILE uplink``."""
        return write_unit_config(path, self.data_dir, **self._sections())

    @property
    def journal_id(self) -> str:
        return self.journal.journal_id

    def append(self, n: int, kind: str = "alarm", start: int = 0) -> list[Event]:
        return [self.journal.append(kind, alarm(start + i)) for i in range(n)]

    def start(self) -> UplinkComponent:
        assert self.uplink is None, "already started"
        ctx = UnitContext(self.config, self.journal, SystemClock(), threading.Event())
        self.uplink = UplinkComponent(ctx)
        self.uplink.start()
        assert self.uplink.started.wait(10), "uplink did not start"
        return self.uplink

    def stop(self, timeout: float = 10.0) -> None:
        if self.uplink is not None:
            self.uplink.request_stop()
            assert self.uplink.join(timeout), "uplink did not stop"
            self.uplink = None

    def wait_connected(self, timeout: float = 10.0) -> UplinkComponent:
        up = self.uplink
        assert up is not None
        wait_until(lambda: up.state.value == "connected", timeout, "the uplink to connect")
        return up

    def ack(self, seq: int, *, journal: str | None = None, key: SigningKey | None = None,
            site: str = SITE, units: list[str] | None = None,
            name: str = "ack") -> bytes:
        """A signed ack payload, as the ledger makes it."""
        env = (key or self.ack_key).sign_envelope(
            name, {"journal": journal or self.journal_id, "seq": seq}, site=site,
            units=units or [self.config.unit.id], ttl_s=3600)
        return json.dumps(env, separators=(",", ":")).encode()

    @property
    def ack_topic(self) -> str:
        return topics.ack(self.config.unit.site, self.config.unit.id)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.journal.close()


# -- a TCP gate between unit and broker -----------------------------------------------------


class _PacketSplitter:
    """Splits a byte stream into MQTT control packets: yields (type, flags) of each."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, int]]:
        self._buf += data
        while True:
            buf = self._buf
            if len(buf) < 2:
                return
            length, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                return
            first = buf[0]
            del self._buf[: i + length]
            yield first >> 4, first & 0x0F


PUBLISH, PUBACK = 3, 4


class Gate:
    """A TCP relay to a broker that counts the unit's QoS 1 PUBLISHes and the broker's
    PUBACKs, can hold the broker's replies, and can cut every connection.

    ``outstanding`` is PUBLISHes sent minus PUBACKs passed back: an upper bound
    on what the unit has in flight (PUBACKs are counted before they are
    forwarded, so the unit can never have seen more of them than counted).
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._server = socket.create_server((host, 0))
        self.port = int(self._server.getsockname()[1])
        self._cond = threading.Condition()
        self._held = False
        self._closed = False
        self._socks: list[socket.socket] = []
        self.publishes = 0
        self.pubacks = 0
        self.max_outstanding = 0
        self.connections = 0
        threading.Thread(target=self._accept, name="gate-accept", daemon=True).start()

    @property
    def outstanding(self) -> int:
        with self._cond:
            return self.publishes - self.pubacks

    def hold(self) -> None:
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def cut(self) -> None:
        """Close every relayed connection (the unit sees a dropped network)."""
        with self._cond:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._held = False
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._server.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._cond:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._socks += [client, upstream]
                self.connections += 1
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, up), daemon=True,
                                 name="gate-pipe").start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        splitter = _PacketSplitter()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._cond:
                    if not upstream:
                        self._cond.wait_for(lambda: not self._held or self._closed)
                    for ptype, flags in splitter.feed(data):
                        if upstream and ptype == PUBLISH and (flags >> 1) & 3:
                            self.publishes += 1
                            self.max_outstanding = max(self.max_outstanding,
                                                       self.publishes - self.pubacks)
                        elif not upstream and ptype == PUBACK:
                            self.pubacks += 1
                    self._cond.notify_all()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SilentServer:
    """Accepts TCP connections and never says a word (a broker that hangs)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = socket.create_server((host, 0))
        self.port = int(self._server.getsockname()[1])
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="silent").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.close()
        for conn in self.accepted:
            with contextlib.suppress(OSError):
                conn.close()
