"""A short-lived MQTT session for the centre's command-line tools (``send``, ``watch``).

One paho-mqtt 2.x client with its network thread, and calls that wait for the
broker's answer with a deadline: :meth:`CentreSession.connect` (CONNACK),
:meth:`~CentreSession.subscribe` (SUBACK), :meth:`~CentreSession.publish`
(PUBACK). A refusal or a silent broker is a :class:`SessionError` naming the
broker and what it said, never a hang. The broker options are the same for
every tool (``--broker HOST:PORT --protocol --username --password-file
--tls-ca --tls-cert --tls-key``): :func:`add_broker_arguments` and
:func:`options_from_args`.

Example::

    with CentreSession(BrokerOptions("broker.centre", 8883, tls_ca="ca.pem")) as s:
        s.connect()
        s.subscribe(["xunfang/v1/zhuantang/+/status"])
        s.publish("xunfang/v1/zhuantang/_all/cmd", payload)
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from firmware_py import topics
from firmware_py.exc import XunfangError

__all__ = ["BrokerOptions", "CentreSession", "SessionError", "UsageError",
           "add_broker_arguments", "broker_address", "options_from_args", "site_name"]

CONNECT_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 10.0


class SessionError(XunfangError, ConnectionError):
    """The broker could not be reached, refused us, or did not answer in time."""


class UsageError(XunfangError, ValueError):
    """Command-line options that cannot work together (exit status 2)."""


@dataclass(frozen=True)
class BrokerOptions:
    host: str
    port: int
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (MQTT {self.protocol}{' TLS' if self.tls else ''})"


def broker_address(text: str) -> tuple[str, int | None]:
    """``HOST:PORT`` (or ``HOST``, ``[v6]:PORT``) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:PORT, e.g. broker.centre:8883")
    return host, int(port)


def site_name(text: str) -> str:
    if not topics.NAME_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} must match {topics.NAME_RE.pattern}")
    return text


def add_broker_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("broker")
    g.add_argument("--broker", type=broker_address, required=required, metavar="HOST:PORT",
                   help="MQTT broker (port 1883, or 8883 with TLS, if left out)")
    g.add_argument("--protocol", choices=["5", "3.1.1"], default="5",
                   help="MQTT version (5; 3.1.1 for brokers such as NATS)")
    g.add_argument("--username", help="broker username")
    g.add_argument("--password-file", metavar="FILE", help="file holding the broker password")
    g.add_argument("--tls-ca", metavar="CA", help="CA certificate (PEM) to trust the broker by")
    g.add_argument("--tls-cert", metavar="CERT", help="client certificate (PEM)")
    g.add_argument("--tls-key", metavar="KEY", help="the client certificate's key (PEM)")


def options_from_args(args: argparse.Namespace) -> BrokerOptions:
    """The broker options of a parsed command line; :class:`UsageError` when they clash."""
    host, port = args.broker
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("give --tls-cert and --tls-key together")
    password = None
    if args.password_file:
        if not args.username:
            raise UsageError("--password-file needs --username")
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise UsageError(f"cannot read {args.password_file}: {err.strerror or err}") \
                from err
    tls = bool(args.tls_ca or args.tls_cert)
    return BrokerOptions(host, port if port is not None else (8883 if tls else 1883),
                         args.protocol, args.username, password, args.tls_ca, args.tls_cert,
                         args.tls_key)


class CentreSession:
    """A clean MQTT session for one tool run; ``on_message(msg)`` runs on paho's thread."""

    def __init__(self, options: BrokerOptions, client_prefix: str = "xunfang_tool",
                 on_message: Callable[[mqtt.MQTTMessage], None] | None = None) -> None:
        self.options = options
        self.client_id = f"{client_prefix}_{secrets.token_hex(4)}"
        self.on_message = on_message
        v5 = options.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True, reconnect_on_failure=False)
        if options.username is not None:
            self.client.username_pw_set(options.username, options.password)
        if options.tls:
            try:
                self.client.tls_set(ca_certs=options.tls_ca, certfile=options.tls_cert,
                                    keyfile=options.tls_key)
            except (OSError, ValueError) as err:
                raise SessionError(f"TLS set-up for {options}: {err}") from err
        self._cond = threading.Condition()
        self._connack: Any = None
        self._gone: str | None = None
        self._pubacks: dict[int, Any] = {}
        self._subacks: dict[int, list[Any]] = {}
        self._loop = False
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # -- paho's thread -----------------------------------------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self._connack = reason
            self._cond.notify_all()

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        with self._cond:
            self._gone = "the connection failed"
            self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self._gone = f"disconnected: {reason}"
            self._cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self._pubacks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[Any],
                      _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = list(reasons)
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(msg)

    # -- the caller's thread --------------------------------------------------------------------

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: ready() or self._gone is not None, timeout)
            if ready():
                return
            if not ok:
                raise SessionError(f"{self.options}: no {what} within {timeout:.0f} s")
            raise SessionError(f"{self.options}: {self._gone} while waiting for {what}")

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.client.connect_timeout = timeout
        try:
            self.client.connect(self.options.host, self.options.port, keepalive=30)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            raise SessionError(f"cannot connect to {self.options}: {err}") from err
        self.client.loop_start()
        self._loop = True
        self._wait(lambda: self._connack is not None, timeout, "CONNACK")
        if self._connack.is_failure:
            raise SessionError(f"{self.options} refused the connection: {self._connack}")

    @property
    def lost(self) -> str | None:
        """Why the connection went away, or None while it holds."""
        with self._cond:
            return self._gone

    def reconnect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect again after a loss (a live view outlives a broker restart)."""
        with self._cond:
            self._connack, self._gone = None, None
        # Without automatic reconnection paho's network thread ends with the
        # connection: join it, connect, and start a new one.
        if self._loop:
            self.client.loop_stop()
            self._loop = False
        try:
            self.client.reconnect()
            self.client.loop_start()
            self._loop = True
        except (OSError, ValueError) as err:
            with self._cond:
                self._gone = f"reconnect failed: {err}"
            raise SessionError(f"cannot reconnect to {self.options}: {err}") from err
        self._wait(lambda: self._connack is not None, timeout, "CONNACK")
        if self._connack.is_failure:
            raise SessionError(f"{self.options} refused the connection: {self._connack}")

    def subscribe(self, filters: Sequence[str], timeout: float = ANSWER_TIMEOUT_S,
                  qos: int = 1) -> None:
        result, mid = self.client.subscribe([(f, qos) for f in filters])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise SessionError(f"{self.options}: subscribe failed: {mqtt.error_string(result)}")
        self._wait(lambda: mid in self._subacks, timeout, "SUBACK")
        refused = [f for f, r in zip(filters, self._subacks.pop(mid), strict=False)
                   if getattr(r, "is_failure", False) or getattr(r, "value", 0) >= 0x80]
        if refused:
            raise SessionError(f"{self.options} refused the subscription to "
                               f"{', '.join(refused)} (check the ACL)")

    def publish(self, topic: str, payload: bytes, retain: bool = False,
                timeout: float = ANSWER_TIMEOUT_S) -> None:
        """Publish at QoS 1 and wait for the PUBACK; :class:`SessionError` on a refusal."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SessionError(f"{self.options}: publish to {topic} failed: "
                               f"{mqtt.error_string(info.rc)}")
        self._wait(lambda: info.mid in self._pubacks, timeout, f"PUBACK for {topic}")
        reason = self._pubacks.pop(info.mid)
        if getattr(reason, "is_failure", False):
            raise SessionError(f"{self.options} refused the message on {topic}: {reason} "
                               "(check the ACL: only the centre's user may command)")

    def close(self) -> None:
        """Disconnect and stop the network thread. Safe twice."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        if self._loop:
            self.client.loop_stop()
            self._loop = False

    def __enter__(self) -> CentreSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
