"""The runtime: components as supervised loops, systemd notification, clean stop.

A unit is three components (station, camera, uplink) that meet only in the
journal. ``xunfang run`` starts them all in one process; ``xunfang run
station`` starts one, as the systemd units do. Either way each component is a
:class:`Component`: a thread that calls :meth:`Component.step` over and over and
*beats* after every step. The supervisor pings the systemd watchdog only while
every component has beaten recently, so a loop that hangs stops the pings and
systemd restarts the service; one that raises is logged and restarted with
backoff, and the others go on.

systemd's notification protocol (sd_notify(3)) is spoken directly on
``NOTIFY_SOCKET``: READY=1 once every component has started, WATCHDOG=1 every
``WATCHDOG_USEC / 4``, STATUS= a line about what the unit is doing, STOPPING=1
on the way out.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from . import __version__
from .clock import Clock, SatelliteClock, SystemClock, rfc3339_ms
from .config import UnitConfig
from .exc import JournalError, RuntimeFault
from .journal import Journal

log = logging.getLogger("xunfang.runtime")


# -- systemd notification -------------------------------------------------------------


class Notifier:
    """Speaks sd_notify(3) on ``$NOTIFY_SOCKET``; does nothing when it is unset."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines; False when there is no socket or it failed."""
        if not self.address:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, address)
            return True
        except OSError as err:
            log.debug("sd_notify to %s failed: %s", self.address, err)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- components --------------------------------------------------------------------------


class UnitContext:
    """What every component gets: the config, a journal connection, the clock."""

    def __init__(self, config: UnitConfig, journal: Journal, clock: Clock,
                 stop_event: threading.Event) -> None:
        self.config = config
        self.journal = journal
        self.clock = clock
        self.stopping = stop_event


class Component:
    """A loop that the supervisor starts, watches and stops.

    Subclasses implement :meth:`step`, which does one round of work and
    returns within about a second (wait on the journal or an event with a
    timeout, never block forever), and may override :meth:`setup` and
    :meth:`teardown`. :meth:`status` is one line for systemd's STATUS and
    :meth:`health` a dict for the unit's health report.
    """

    name: ClassVar[str] = "component"
    # Restart backoff after a step raised: first, then doubled up to the cap.
    restart_min_s: ClassVar[float] = 1.0
    restart_max_s: ClassVar[float] = 30.0

    def __init__(self, ctx: UnitContext) -> None:
        self.ctx = ctx
        self.log = logging.getLogger(f"xunfang.{self.name}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = time.monotonic()
        self.failures = 0
        self.started = threading.Event()

    # Hooks for subclasses ---------------------------------------------------------

    def setup(self) -> None:
        """Open what the loop needs (ports, pins, connections)."""

    def step(self) -> None:
        """One round of work; called until the component is stopped."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what setup opened; called once, also after a failure."""

    def status(self) -> str:
        return "running"

    def health(self) -> dict[str, Any]:
        return {"state": "running" if self.is_alive() else "stopped", "failures": self.failures}

    # Machinery ------------------------------------------------------------------------

    def beat(self) -> None:
        """Tell the supervisor this loop is alive. Long steps may beat midway."""
        self._last_beat = time.monotonic()

    @property
    def beat_age(self) -> float:
        return time.monotonic() - self._last_beat

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True when the component is being stopped."""
        return self._stop.wait(seconds)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeFault(f"component {self.name} is already started")
        self._thread = threading.Thread(target=self._run, name=f"xunfang-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = self.restart_min_s
        while not self._stop.is_set():
            try:
                self.beat()
                self.setup()
                self.started.set()
                while not self._stop.is_set():
                    self.step()
                    self.beat()
                    backoff = self.restart_min_s
            except Exception:
                self.failures += 1
                self.log.exception("%s loop failed (failure %d); restarting in %.0f s",
                                   self.name, self.failures, backoff)
                self.started.set()
            finally:
                try:
                    self.teardown()
                except Exception:
                    self.log.exception("%s teardown failed", self.name)
            if self._wait_beating(backoff):
                break
            backoff = min(backoff * 2, self.restart_max_s)

    def _wait_beating(self, seconds: float) -> bool:
        """The restart backoff is a deliberate wait, not a hang: keep beating through it."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.beat()
            if self._stop.wait(min(remaining, 1.0)):
                return True
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else "stopped"
        return f"<{type(self).__name__} {self.name} {state}>"


#: Builds a component; the unit's own are in :data:`firmware_py.components.FACTORIES`.
ComponentFactory = Callable[[UnitContext], Component]


# -- the supervisor ---------------------------------------------------------------------------


class Runtime:
    """Starts components, pings the watchdog while all are alive, stops them cleanly."""

    #: How often a ``unit started`` event the journal refused is tried again.
    start_retry_s: ClassVar[float] = 5.0

    def __init__(self, config: UnitConfig, components: list[str] | None = None,
                 clock: Clock | None = None, notifier: Notifier | None = None, *,
                 factories: Mapping[str, ComponentFactory],
                 stall_s: float | None = None) -> None:
        self.config = config
        self.factories = dict(factories)
        self.names = components or list(self.factories)
        self.clock = clock or SystemClock()
        if config.gnss is not None and config.gnss.time and "station" in self.names:
            # The station owns the receiver and feeds this clock (docs/vehicle.md, "Time").
            self.clock = SatelliteClock(self.clock)
        self.notifier = notifier or Notifier()
        unknown = [n for n in self.names if n not in self.factories]
        if unknown:
            raise RuntimeFault(f"unknown component(s) {', '.join(unknown)}; "
                               f"known: {', '.join(self.factories)}")
        self.stop_event = threading.Event()
        self.components: list[Component] = []
        self.journal: Journal | None = None
        watchdog = self.notifier.watchdog_s
        # A loop that has not beaten for this long counts as hung.
        self.stall_s = stall_s or (watchdog / 2 if watchdog else 30.0)
        self.ping_every_s = watchdog / 4 if watchdog else 1.0
        self._hung: set[str] = set()
        # The ``unit started`` event while the journal cannot take it (a full disk).
        self._start_event: dict[str, Any] | None = None
        self._next_start_try = 0.0

    @property
    def label(self) -> str:
        return "all" if len(self.names) > 1 else self.names[0]

    def start(self) -> None:
        cfg = self.config
        context = {"version": __version__, "config_sha256": cfg.sha256, "component": self.label}
        self.journal, moved_aside = Journal.open_or_recover(
            cfg.journal_path, unit=cfg.unit.id, site=cfg.unit.site, clock=self.clock,
            context=context)
        started: dict[str, Any] = {"state": "started", **context}
        if moved_aside is not None:
            started["journal_recovered"] = moved_aside.name
        self._start_event = started
        if not self._record_start():
            # A full disk must not keep the unit from starting: the station shows the
            # fault on a tap and the status file and health say why; the event follows
            # once the journal takes writes again.
            started["started_at"] = rfc3339_ms(self.clock.wall_ms())
        ctx = UnitContext(cfg, self.journal, self.clock, self.stop_event)
        for name in self.names:
            component = self.factories[name](ctx)
            self.components.append(component)
            component.start()
        for component in self.components:
            component.started.wait(10)
        log.info("unit %s (%s) started: %s; journal %s id %s", cfg.unit.id, cfg.unit.kind,
                 ", ".join(self.names), cfg.journal_path, self.journal.journal_id)
        self.notifier.notify(ready=1, status=self.status_line())

    def _record_start(self) -> bool:
        """Append the pending ``unit started`` event; False while the journal refuses it."""
        if self._start_event is None or self.journal is None:
            return True
        first = "started_at" not in self._start_event
        try:
            self.journal.append("unit", self._start_event)
        except JournalError as err:
            self._next_start_try = time.monotonic() + self.start_retry_s
            if first:
                log.critical("cannot record the start in the journal (%s): running anyway; "
                             "it is recorded once the journal takes writes again", err)
            return False
        if not first:
            log.warning("the journal takes writes again: recorded the start of %s",
                        self._start_event["started_at"])
        self._start_event = None
        return True

    def status_line(self) -> str:
        parts = [f"{c.name}: {c.status()}" for c in self.components]
        return "; ".join(parts) or "no components"

    def watch_once(self) -> bool:
        """Check every loop; ping the watchdog only when all are alive. True if pinged."""
        hung = {c.name for c in self.components
                if c.beat_age > self.stall_s or not c.is_alive()}
        for name in sorted(hung - self._hung):
            comp = next(c for c in self.components if c.name == name)
            log.error("%s loop has not beaten for %.1f s: withholding the watchdog ping",
                      name, comp.beat_age)
        for name in sorted(self._hung - hung):
            log.warning("%s loop is beating again", name)
        self._hung = hung
        if hung:
            self.notifier.notify(status=f"hung: {', '.join(sorted(hung))}")
            return False
        if self.notifier.watchdog_s:
            self.notifier.notify(watchdog=1, status=self.status_line())
        return True

    def run_until_stopped(self) -> None:
        """Supervise until :meth:`request_stop` (or SIGTERM/SIGINT when installed)."""
        last_status = ""
        while not self.stop_event.wait(self.ping_every_s):
            self.watch_once()
            if self._start_event is not None and time.monotonic() >= self._next_start_try:
                self._record_start()
            line = self.status_line()
            if line != last_status and not self.notifier.watchdog_s:
                self.notifier.notify(status=line)
                last_status = line

    def request_stop(self) -> None:
        self.stop_event.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every component, record ``unit stopping``, close the journal."""
        self.notifier.notify(stopping=1, status="stopping")
        for component in self.components:
            component.request_stop()
        deadline = time.monotonic() + timeout
        for component in self.components:
            if not component.join(max(0.1, deadline - time.monotonic())):
                log.error("%s did not stop within %.0f s", component.name, timeout)
        if self.journal is not None and not self.journal.closed:
            try:
                self.journal.append("unit", {
                    "state": "stopping", "version": __version__,
                    "config_sha256": self.config.sha256, "component": self.label,
                })
                self.journal.checkpoint()
            except JournalError as err:
                log.error("could not record the stop: %s", err)
            self.journal.close()
        self.notifier.close()
        log.info("unit %s stopped", self.config.unit.id)

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


# -- logging ---------------------------------------------------------------------------------

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}


class JournaldFormatter(logging.Formatter):
    """``<3>xunfang.uplink: broker refused …``: journald reads the priority prefix
    and adds its own timestamp (sd-daemon(3))."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when the
    handler was made: a tool run inside another program (a test, an embedding
    service) that swaps stderr never leaves threads writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: bare lines with priorities under systemd, timestamps elsewhere."""
    handler = StderrHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
