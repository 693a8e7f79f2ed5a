"""Real MQTT brokers for tests: Mosquitto and NATS (its MQTT gateway).

Each broker is a real process on a free 127.0.0.1 port with a config this
module writes into a work directory. Tests can take a broker away (`stop()`
is SIGTERM, so Mosquitto saves its persistence file; `kill()` is SIGKILL,
which loses what was not saved) and bring it back on the same port with
`start()`, which is how the uplink's reconnect and resend paths get tested.

    with Mosquitto(persistence=True) as broker:
        client.connect(broker.host, broker.port)
        broker.kill()
        broker.start()            # same port, same config, same db

Processes never outlive the test run: fixtures close them, an atexit hook
kills any left over, and where possible the broker is started under
`setpriv --pdeathsig KILL` so it dies with the Python process even if that
is SIGKILLed (pytest-timeout's thread method, a CI cancel).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.pki import Credentials, Pki, make_pki

MOSQUITTO = os.environ.get("XUNFANG_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = os.environ.get("XUNFANG_MOSQUITTO_PASSWD", "mosquitto_passwd")
NATS_SERVER = os.environ.get("XUNFANG_NATS_SERVER", "nats-server")

REPO_ROOT = Path(__file__).resolve().parents[2]
ACL_TEMPLATE = REPO_ROOT / "config" / "mosquitto" / "acl"
PRODUCTION_CONF = REPO_ROOT / "config" / "mosquitto" / "xunfang.conf"

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02
_LOG_TYPES = ("error", "warning", "notice", "information", "subscribe", "unsubscribe")

# Everything started and not yet stopped, so the atexit hook can kill it.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()


class BrokerError(RuntimeError):
    """A test broker failed to start or stop; the message carries its log tail."""


class _PortTaken(BrokerError):
    """Someone else bound the port between free_port() and the broker's bind."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connect to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
        _LIVE.clear()
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)


def _pdeathsig_prefix() -> list[str]:
    # The parent-death signal fires when the *thread* that forked exits, so it
    # is only safe from the main thread: a broker restarted from a helper
    # thread would otherwise die with that thread.
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL"]
    return []


class _BrokerProcess:
    """Start/stop/kill/restart of one broker process on a fixed host and port."""

    name = "broker"

    def __init__(self, workdir: Path | None, host: str, port: int | None) -> None:
        if workdir is None:
            self._own_workdir = True
            workdir = Path(tempfile.mkdtemp(prefix=f"xunfang-{self.name}-"))
        else:
            self._own_workdir = False
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.host = host
        # A port we picked may be taken before the broker binds it; only
        # then, and only before the first start, do we pick another.
        self._auto_port = port is None
        self._ever_ready = False
        self.port = port if port is not None else free_port(host)
        self.log_path = workdir / f"{self.name}.log"
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._probes: list[MqttProbe] = []

    # What subclasses provide.
    ready_text = ""  # logged once the broker listens; a foreign listener never says it

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def _repick_ports(self) -> None:
        self.port = free_port(self.host)

    def _ready_ports(self) -> list[int]:
        return [self.port]

    default_protocol = "5"

    def _probe_auth(
        self, user: str | None, *, wrong_ca: bool, cert: bool, password: str | None
    ) -> dict[str, Any]:
        return {} if user is None else {"username": user, "password": password}

    # Clients.
    def probe(
        self,
        user: str | None = None,
        *,
        client_id: str | None = None,
        protocol: str | None = None,
        connect: bool = True,
        wrong_ca: bool = False,
        cert: bool = True,
        password: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
        timeout: float = 5.0,
    ) -> MqttProbe:
        """An MqttProbe for this broker, connected unless connect=False.

        `user` is the identity: with TLS the client certificate's CN (from the
        broker's PKI; `wrong_ca` takes one from the unrelated CA, `cert=False`
        sends none), otherwise the username (with `password`). The client id
        defaults to the unit's, `xunfang_<user>`. The broker closes every probe
        it made when it is closed.
        """
        if client_id is None:
            client_id = f"xunfang_{user}" if user else f"probe-{len(self._probes) + 1}"
        probe = MqttProbe(
            self.host,
            self.port,
            client_id=client_id,
            protocol=protocol or self.default_protocol,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
            **self._probe_auth(user, wrong_ca=wrong_ca, cert=cert, password=password),
        )
        self._probes.append(probe)
        if connect:
            try:
                probe.connect(timeout=timeout)
            except BaseException:
                probe.close()
                raise
        return probe

    # Lifecycle.
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start (or restart) on the same port; return once it listens."""
        if self._closed:
            raise BrokerError(f"{self!r} is closed")
        if self.running:
            raise BrokerError(f"{self!r} is already running")
        for attempt in range(3):
            try:
                self._launch(timeout)
            except _PortTaken:
                if self._ever_ready or not self._auto_port or attempt == 2:
                    raise
                self._repick_ports()
                self._write_config()
                continue
            self._ever_ready = True
            break
        return self

    def _launch(self, timeout: float) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- xunfang tests: start #{self.starts} ---\n".encode())
            log.flush()
            offset = log.tell()
            # Own session: a Ctrl-C in the terminal reaches pytest, which then
            # tears the broker down in order, rather than both racing.
            proc = subprocess.Popen(
                [*_pdeathsig_prefix(), *self._command()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._proc = proc
        with _LIVE_LOCK:
            _LIVE[proc.pid] = proc
        deadline = time.monotonic() + timeout
        pending = list(self._ready_ports())
        said_ready = False
        while True:
            if proc.poll() is not None:
                self._forget(proc)
                self._proc = None
                text = self._log_since(offset)
                error = _PortTaken if "address already in use" in text.lower() else BrokerError
                raise error(
                    f"{self.name} exited with {proc.returncode} while starting on "
                    f"{self.host}:{self.port}:\n{self.log_tail()}"
                )
            said_ready = said_ready or self.ready_text in self._log_since(offset)
            while said_ready and pending and port_accepts(self.host, pending[0]):
                pending.pop(0)
            if said_ready and not pending:
                return
            if time.monotonic() > deadline:
                self._terminate(signal.SIGKILL, STOP_TIMEOUT_S)
                raise BrokerError(
                    f"{self.name} not ready on {self.host}:{self.port} within {timeout} s "
                    f"(said ready: {said_ready}, ports pending: {pending}):\n{self.log_tail()}"
                )
            time.sleep(_POLL_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait: a clean shutdown (Mosquitto writes its db). Returns the exit code."""
        return self._terminate(signal.SIGTERM, timeout)

    def kill(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGKILL and wait: a crash, nothing is saved. Returns the exit code."""
        return self._terminate(signal.SIGKILL, timeout)

    def restart(self, *, crash: bool = False, timeout: float = START_TIMEOUT_S) -> Self:
        """stop() (or kill() with crash=True), then start() on the same port."""
        if crash:
            self.kill()
        else:
            self.stop()
        return self.start(timeout=timeout)

    def close(self) -> None:
        """Stop the broker (kill if it will not stop) and drop an own temp dir. Safe twice."""
        if self._closed:
            return
        for probe in self._probes:
            probe.close()
        self._probes.clear()
        try:
            self.stop()
        finally:
            self._closed = True
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self, sig: signal.Signals, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Never leave a process behind: a stuck shutdown becomes a kill.
                proc.kill()
                proc.wait(timeout=timeout)
        self._forget(proc)
        self._proc = None
        return proc.returncode

    @staticmethod
    def _forget(proc: subprocess.Popen[bytes]) -> None:
        with _LIVE_LOCK:
            _LIVE.pop(proc.pid, None)

    # Logs.
    def log_text(self) -> str:
        """Everything the broker logged, across restarts."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        """Poll the log until `text` appears; False at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if text in self.log_text():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)

    # Context manager.
    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.running else "stopped")
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


class Mosquitto(_BrokerProcess):
    """A real `mosquitto -c <conf>` with a config written for the test.

    Options:
      persistence: keep the in-memory db on disk (written on SIGTERM and every
        `autosave_interval` s); a restart then restores sessions, queues and
        retained messages. Off, a restart forgets everything.
      autosave_interval: seconds between saves (Mosquitto's default is 1800).
      max_queued_messages / max_inflight_messages: per-client limits, as in
        production; Mosquitto drops queued QoS 1/2 messages past the first.
      tls: a TLS listener with `require_certificate` and
        `use_identity_as_username`, so a client certificate's CN is the
        username. Uses `pki` (made in the work dir if not given).
      crl: also check a CRL (`crlfile`), empty at first; `revoke()` adds to it.
      acl_file / acl_text: an ACL to enforce (copied into the work dir);
        `render_acl()` turns the shipped template into one.
      passwords: {username: password}; written as a password file hashed with
        `mosquitto_passwd -U`. `password_file` uses an existing one instead.
      allow_anonymous: default True unless tls or passwords are given.
      extra: further config lines, appended after the listener block.
      debug_log: `log_type all` (every packet) instead of the usual levels.
      shipped_config: run config/mosquitto/xunfang.conf as installers get it
        (TLS, ACL, persistence, its queue limits), with only its paths and
        port rewritten; the ACL defaults to the unrendered template. Limit
        options above are then ignored: the shipped file decides.
    """

    name = "mosquitto"
    ready_text = " running"  # "mosquitto version 2.0.11 running", after the listeners open

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        persistence: bool = False,
        autosave_interval: int | None = None,
        max_queued_messages: int | None = None,
        max_inflight_messages: int | None = None,
        tls: bool = False,
        pki: Pki | None = None,
        crl: bool = False,
        acl_file: Path | None = None,
        acl_text: str | None = None,
        passwords: Mapping[str, str] | None = None,
        password_file: Path | None = None,
        allow_anonymous: bool | None = None,
        extra: Sequence[str] = (),
        debug_log: bool = False,
        shipped_config: bool = False,
    ) -> None:
        super().__init__(workdir, host, port)
        if shipped_config:
            # The shipped config is TLS-only with an ACL and persistence.
            tls, persistence = True, True
            if acl_file is None and acl_text is None:
                acl_text = ACL_TEMPLATE.read_text()
        if acl_file is not None and acl_text is not None:
            raise ValueError("give acl_file or acl_text, not both")
        if passwords is not None and password_file is not None:
            raise ValueError("give passwords or password_file, not both")
        self.persistence = persistence
        self.tls = tls or pki is not None or crl
        self.pki: Pki | None = None
        if self.tls:
            self.pki = pki if pki is not None else make_pki(self.workdir / "pki")
        self.crl_path: Path | None = None
        self._revoked: set[str] = set()
        if crl:
            assert self.pki is not None
            self.crl_path = self.pki.ca.write_crl([])
        self.acl_path: Path | None = None
        if acl_file is not None:
            acl_text = Path(acl_file).read_text()
        if acl_text is not None:
            self.acl_path = self.workdir / "acl"
            self.acl_path.write_text(acl_text)
        self.password_path: Path | None = None
        if passwords is not None:
            self.password_path = self._write_passwords(passwords)
        elif password_file is not None:
            self.password_path = Path(password_file)
        if allow_anonymous is None:
            allow_anonymous = not (self.tls or self.password_path is not None)
        self.allow_anonymous = allow_anonymous
        self.persistence_dir = self.workdir / "db"
        self.conf_path = self.workdir / "mosquitto.conf"
        self._shipped = shipped_config
        self._extra = list(extra)
        self._limits = {
            "autosave_interval": autosave_interval,
            "max_queued_messages": max_queued_messages,
            "max_inflight_messages": max_inflight_messages,
        }
        self._debug_log = debug_log
        self._write_config()

    def _write_config(self) -> None:
        if self._shipped:
            text = self._shipped_config(self._extra)
        else:
            text = self._config(limits=self._limits, extra=self._extra, debug_log=self._debug_log)
        self.conf_path.write_text(text)

    def _shipped_config(self, extra: Sequence[str]) -> str:
        """config/mosquitto/xunfang.conf with its paths and port pointed at this test."""
        assert self.pki is not None and self.acl_path is not None
        self.persistence_dir.mkdir(exist_ok=True)
        text = PRODUCTION_CONF.read_text()
        for old, new in {
            "listener 8883\n": f"listener {self.port} {self.host}\n",
            "/etc/mosquitto/certs/ca.crt": str(self.pki.ca_cert),
            "/etc/mosquitto/certs/server.crt": str(self.pki.server.cert),
            "/etc/mosquitto/certs/server.key": str(self.pki.server.key),
            "/etc/mosquitto/xunfang.acl": str(self.acl_path),
        }.items():
            if old not in text:
                raise BrokerError(f"{PRODUCTION_CONF} no longer contains {old!r}")
            text = text.replace(old, new)
        # What Debian's /etc/mosquitto/mosquitto.conf adds around the drop-in.
        head = [
            "# tests/support/brokers.py: the shipped xunfang.conf, paths rewritten.",
            "user root",
            "log_dest stderr",
            f"persistence_location {self.persistence_dir}/",
        ]
        tail = [f"crlfile {self.crl_path}"] if self.crl_path is not None else []
        return "\n".join([*head, text, *tail, *extra]) + "\n"

    def _write_passwords(self, passwords: Mapping[str, str]) -> Path:
        path = self.workdir / "passwd"
        for user in passwords:
            if not user or ":" in user:
                raise ValueError(f"unusable MQTT username {user!r}")
        path.write_text("".join(f"{user}:{pw}\n" for user, pw in passwords.items()))
        # -U hashes a plain user:password file in place: one call for all users.
        done = subprocess.run(
            [MOSQUITTO_PASSWD, "-U", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise BrokerError(f"mosquitto_passwd -U {path} failed: {done.stderr.strip()}")
        return path

    def _config(
        self, *, limits: Mapping[str, int | None], extra: Sequence[str], debug_log: bool
    ) -> str:
        lines = [
            "# Written by tests/support/brokers.py for one test.",
            # Run as root rather than dropping to `mosquitto`: the work dir is
            # under pytest's 0700 temp tree and the broker must write its db
            # and read 0600 keys there. Ignored when the tests are not root.
            "user root",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "log_dest stderr",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        # One type per line: Mosquitto reads only the first word of a log_type line.
        for kind in ("all",) if debug_log else _LOG_TYPES:
            lines.append(f"log_type {kind}")
        if self.persistence:
            self.persistence_dir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        lines += [f"{key} {value}" for key, value in limits.items() if value is not None]
        if self.acl_path is not None:
            lines.append(f"acl_file {self.acl_path}")
        if self.password_path is not None:
            lines.append(f"password_file {self.password_path}")
        # Listener options must follow their `listener` line.
        lines.append(f"listener {self.port} {self.host}")
        if self.pki is not None:
            lines += [
                f"cafile {self.pki.ca_cert}",
                f"certfile {self.pki.server.cert}",
                f"keyfile {self.pki.server.key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        if self.crl_path is not None:
            lines.append(f"crlfile {self.crl_path}")
        lines += list(extra)
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.conf_path)]

    def _probe_auth(
        self, user: str | None, *, wrong_ca: bool, cert: bool, password: str | None
    ) -> dict[str, Any]:
        if self.pki is None:
            return super()._probe_auth(user, wrong_ca=wrong_ca, cert=cert, password=password)
        if not cert or user is None:
            return {"tls_ca": self.pki.ca_cert}
        creds = self.pki.wrong_client(user) if wrong_ca else self.pki.client(user)
        return {"tls": creds}

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP, and wait until Mosquitto says it reloaded.

        Mosquitto re-reads its ACL, password file and CRL on SIGHUP. It is
        single-threaded, so once "Reloading config." is logged, the next
        connection it handles sees the new files.
        """
        if self._proc is None or not self.running:
            raise BrokerError(f"{self!r} is not running")
        marker = "Reloading config."
        before = self.log_text().count(marker)
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log_text().count(marker) <= before:
            if time.monotonic() > deadline:
                raise BrokerError(f"{self!r} did not reload within {timeout} s")
            time.sleep(_POLL_S)

    def revoke(self, *users: str, timeout: float = 5.0) -> None:
        """Revoke these users' client certificates (needs crl=True) and reload.

        Only new connections are refused: one already open stays up until it
        drops (docs/broker.md).
        """
        if self.pki is None or self.crl_path is None:
            raise BrokerError(f"{self!r} was not started with crl=True")
        self._revoked.update(users)
        self.pki.ca.write_crl([self.pki.client(user) for user in sorted(self._revoked)])
        self.reload(timeout=timeout)


class NatsServer(_BrokerProcess):
    """nats-server with JetStream and its MQTT gateway (MQTT 3.1.1 only).

    `port` is the MQTT port, so code under test uses it like a Mosquitto;
    `nats_port` is the NATS client port. JetStream (where the gateway keeps
    sessions, QoS 1 messages and retained messages) lives in the work dir,
    so a restart keeps them.

    Options:
      server_name: required by JetStream; any unique name.
      max_ack_pending: the gateway's cap on unacknowledged QoS 1 messages per
        subscription (NATS default 1024), the analogue of Mosquitto's queue.
      ack_wait: how long before an unacknowledged QoS 1 message is redelivered.
      extra / mqtt_extra: further lines for the top level / the mqtt block.
    """

    name = "nats"
    ready_text = "Server is ready"

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        nats_port: int | None = None,
        server_name: str = "xunfang-test",
        max_ack_pending: int | None = None,
        ack_wait: str | None = None,
        extra: Sequence[str] = (),
        mqtt_extra: Sequence[str] = (),
    ) -> None:
        super().__init__(workdir, host, port)
        self._auto_port = self._auto_port and nats_port is None
        self.nats_port = nats_port if nats_port is not None else free_port(host)
        self.server_name = server_name
        # nats-server keeps its streams in <store_dir>/jetstream.
        self.store_dir = self.workdir / "jetstream"
        self.conf_path = self.workdir / "nats.conf"
        self._mqtt_options: list[str] = []
        if max_ack_pending is not None:
            self._mqtt_options.append(f"max_ack_pending: {max_ack_pending}")
        if ack_wait is not None:
            self._mqtt_options.append(f'ack_wait: "{ack_wait}"')
        self._mqtt_options += list(mqtt_extra)
        self._extra = list(extra)
        self._write_config()

    def _repick_ports(self) -> None:
        self.port = free_port(self.host)
        self.nats_port = free_port(self.host)

    def _write_config(self) -> None:
        mqtt = [f"host: {self.host}", f"port: {self.port}", *self._mqtt_options]
        body = [
            "# Written by tests/support/brokers.py for one test.",
            f'server_name: "{self.server_name}"',
            f"host: {self.host}",
            f"port: {self.nats_port}",
            # Small limits: the defaults reserve a share of the machine's RAM/disk.
            f'jetstream {{ store_dir: "{self.workdir}", max_memory_store: 64MB, '
            "max_file_store: 1GB }",
            "mqtt {",
            *(f"  {line}" for line in mqtt),
            "}",
            *self._extra,
        ]
        self.conf_path.write_text("\n".join(body) + "\n")

    default_protocol = "3.1.1"

    def _command(self) -> list[str]:
        return [NATS_SERVER, "-c", str(self.conf_path)]

    def _ready_ports(self) -> list[int]:
        # The MQTT listener opens only after JetStream is up; wait for both.
        return [self.nats_port, self.port]


def render_acl(units: Mapping[str, str], template: Path = ACL_TEMPLATE) -> str:
    """The shipped ACL template with a site block for each unit ({unit id: site}).

    Same rendering as `config/mosquitto/render-acl.py`, which installers run;
    the tests load that script so the two cannot drift.
    """
    import importlib.util

    script = template.parent / "render-acl.py"
    spec = importlib.util.spec_from_file_location("xunfang_render_acl", script)
    if spec is None or spec.loader is None:
        raise BrokerError(f"cannot load {script}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: str = module.render(template.read_text(), dict(units))
    return rendered


class ConnectFailed(ConnectionError):
    """A probe's connection was refused (CONNACK failure, TLS alert, reset)."""


class MqttProbe:
    """A paho-mqtt 2.x client for asserting what a broker does, with deadlines.

    Every call waits on a condition with a timeout and raises TimeoutError at
    the deadline, so a broker that stays silent fails the test instead of
    hanging it. PUBACK results come from `on_publish` keyed by mid (not
    `wait_for_publish`, which is known to hang). No automatic reconnects:
    a refused connection stays refused.

        with broker.probe("zt-pp-03") as unit:
            assert unit.publish("xunfang/v1/zt/zt-pp-03/health", b"{}").value == 0
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        protocol: str = "5",
        tls: Credentials | None = None,
        tls_ca: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
    ) -> None:
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol must be '5' or '3.1.1', not {protocol!r}")
        self.host, self.port, self.client_id = host, port, client_id
        self.v5 = protocol == "5"
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else clean_start,
            reconnect_on_failure=False,
        )
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.cert), keyfile=str(tls.key))
        elif tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        if username is not None:
            self.client.username_pw_set(username, password)
        self._cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.session_present = False
        self.disconnect_reason: ReasonCode | None = None
        self._failed = False
        self._pubacks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._loop_started = False

    # Callbacks (network thread).
    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = rc
            self.session_present = bool(flags.session_present)
            self._cond.notify_all()

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.disconnect_reason = rc
            self._failed = True
            self._cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._pubacks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any
    ) -> None:
        with self._cond:
            self._subacks[mid] = list(rcs)
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(f"{self.client_id}: no {what} within {timeout} s")

    # Actions.
    def connect(self, timeout: float = 5.0) -> ReasonCode:
        """Connect and wait for a successful CONNACK; ConnectFailed otherwise."""
        props = None
        if self.v5 and self._session_expiry_s is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
        kwargs: dict[str, Any] = {"keepalive": 30, "properties": props}
        if self.v5:
            kwargs["clean_start"] = self._clean_start
        self.client.connect_timeout = timeout
        try:
            self.client.connect(self.host, self.port, **kwargs)
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            raise ConnectFailed(f"{self.client_id}: connect failed: {err!r}") from err
        self.client.loop_start()
        self._loop_started = True
        self._wait(lambda: self.connack is not None or self._failed, timeout, "CONNACK")
        if self.connack is None or self.connack.is_failure:
            raise ConnectFailed(
                f"{self.client_id}: refused: connack={self.connack} "
                f"disconnect={self.disconnect_reason}"
            )
        return self.connack

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> ReasonCode:
        """Publish and return the PUBACK's reason code (QoS 0: once sent)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self._wait(lambda: info.mid in self._pubacks, timeout, f"PUBACK for {topic}")
        with self._cond:
            return self._pubacks.pop(info.mid)

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and return the SUBACK's reason codes."""
        result, mid = self.client.subscribe(topic, qos=qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectFailed(f"{self.client_id}: subscribe {topic} failed: {result}")
        self._wait(lambda: mid in self._subacks, timeout, f"SUBACK for {topic}")
        with self._cond:
            return self._subacks.pop(mid)

    def expect(
        self, topic: str, payload: bytes | None = None, timeout: float = 5.0
    ) -> mqtt.MQTTMessage:
        """Wait for a message on `topic` (and with `payload`, if given) and return it."""

        def found() -> mqtt.MQTTMessage | None:
            for msg in self.messages:
                if msg.topic == topic and (payload is None or msg.payload == payload):
                    return msg
            return None

        self._wait(lambda: found() is not None, timeout, f"message on {topic}")
        with self._cond:
            msg = found()
        assert msg is not None
        return msg

    def wait_for_count(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least `count` messages have arrived."""
        self._wait(lambda: len(self.messages) >= count, timeout, f"{count} messages")

    def topics(self) -> list[str]:
        with self._cond:
            return [m.topic for m in self.messages]

    def wait_disconnected(self, timeout: float = 5.0) -> ReasonCode | None:
        """Wait until the broker (or the network) closed the connection."""
        self._wait(lambda: self._failed, timeout, "disconnect")
        return self.disconnect_reason

    def close(self) -> None:
        """Disconnect and stop the network thread. Safe twice."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        if self._loop_started:
            self.client.loop_stop()
            self._loop_started = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
