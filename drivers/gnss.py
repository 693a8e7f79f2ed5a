"""GNSS receivers: positions and time from BeiDou/GPS, over NMEA 0183 or from gpsd.

Two sources, one :class:`Fix`:

* a receiver on a serial port (the Pi's UART ``/dev/serial0``, a USB receiver
  on ``/dev/ttyACM0``, or any pyserial URL) speaking NMEA 0183. Sentences are
  parsed with pynmeagps; every talker is accepted (``GP`` GPS, ``GN``
  combined, ``BD``/``GB`` BeiDou, ``GL`` GLONASS, ``GA`` Galileo). RMC, GGA,
  GNS and GSA sentences of one epoch (one receiver time) make one fix.
* ``gpsd://host:port``: the gpsd daemon's JSON protocol (``TPV`` and ``SKY``
  reports), for a Pi where gpsd already owns the receiver (and feeds chrony).

:class:`NmeaParser` and :class:`GpsdParser` are pure, incremental parsers:
bytes in, fixes out, never raising on any input, garbage counted by kind.
:class:`GnssReceiver` owns the port or socket: opens it, reopens it with
capped backoff when it goes away (a USB receiver unplugged), and reports
``online``/``offline`` through ``on_state``::

    gnss = GnssReceiver("gnss", "/dev/serial0", baudrate=9600, on_fix=print).start()
    ...
    gnss.stop()

Callbacks run on the receiver's thread::

    on_fix(fix: Fix) -> None
    on_state(name: str, state: "online" | "offline", detail: str) -> None
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any
from urllib.parse import urlsplit

import serial
from pynmeagps import NMEAMessage, NMEAReader
from pynmeagps.exceptions import (
    NMEAMessageError,
    NMEAParseError,
    NMEAStreamError,
    NMEATypeError,
)

log = logging.getLogger("xunfang.gnss")

ONLINE = "online"
OFFLINE = "offline"

#: NMEA 0183 caps a sentence at 82 characters; some receivers overrun it a little.
MAX_SENTENCE = 256
#: gpsd's JSON reports are longer (SKY lists every satellite).
MAX_JSON_LINE = 16384
KNOT_KMH = 1.852

#: GGA fix quality → name (NMEA 0183 4.x).
GGA_QUALITY = {0: "none", 1: "gps", 2: "dgps", 3: "pps", 4: "rtk", 5: "float_rtk",
               6: "estimated", 7: "manual", 8: "simulated"}
#: GNS/RMC mode letters → quality name.
MODE_QUALITY = {"A": "gps", "D": "dgps", "P": "pps", "R": "rtk", "F": "float_rtk",
                "E": "estimated", "M": "manual", "S": "simulated", "N": "none"}

PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError)

OnFix = Callable[["Fix"], None]
OnState = Callable[[str, str, str], None]


@dataclass(frozen=True, slots=True)
class Fix:
    """One receiver epoch.

    ``valid`` is False for a receiver that reports but has no fix (``lat`` and
    ``lon`` are then None). ``mode`` is ``none``, ``2d`` or ``3d``; ``quality``
    a name from :data:`GGA_QUALITY`; ``speed_kmh`` and ``heading`` (degrees
    true) come from RMC (or gpsd's TPV) when the receiver sends them.
    ``utc`` is the receiver's time, with the date only when the receiver gave
    one (RMC, or gpsd): only then can it set a clock. ``at_mono`` is when the
    epoch completed, on the receiver thread's clock.
    """

    valid: bool
    lat: float | None
    lon: float | None
    mode: str
    quality: str
    satellites: int | None
    hdop: float | None
    speed_kmh: float | None
    heading: float | None
    altitude_m: float | None
    utc: datetime | None
    talker: str
    at_mono: float

    @property
    def has_date(self) -> bool:
        return self.utc is not None

    def utc_ms(self) -> int | None:
        return None if self.utc is None else round(self.utc.timestamp() * 1000)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["utc"] = None if self.utc is None else self.utc.isoformat()
        return doc


class Counters:
    """Sentences (or reports), fixes and errors by kind, for health."""

    def __init__(self) -> None:
        self.sentences = 0
        self.fixes = 0
        self.ignored = 0        # well-formed but not used (GSV, VTG, proprietary …)
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {"sentences": self.sentences, "fixes": self.fixes, "ignored": self.ignored,
                "errors": dict(self.errors)}


def _num(value: Any) -> float | None:
    """A pynmeagps field as a float; empty fields come as ``""``."""
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None else int(n)


class _Epoch:
    """What the sentences of one receiver time said, until the epoch closes."""

    def __init__(self, tod: dtime | None) -> None:
        self.tod = tod
        self.day: date | None = None
        self.valid: bool | None = None
        self.lat: float | None = None
        self.lon: float | None = None
        self.quality: str | None = None
        self.mode: str | None = None
        self.satellites: int | None = None
        self.hdop: float | None = None
        self.speed_kmh: float | None = None
        self.heading: float | None = None
        self.altitude_m: float | None = None
        self.talker = ""
        self.used = False

    def position(self, msg: NMEAMessage) -> None:
        lat, lon = _num(getattr(msg, "lat", None)), _num(getattr(msg, "lon", None))
        if lat is not None and lon is not None and (lat, lon) != (0.0, 0.0) \
                and -90 <= lat <= 90 and -180 <= lon <= 180:
            self.lat, self.lon = lat, lon

    def fix(self, at_mono: float) -> Fix:
        valid = bool(self.valid) and self.lat is not None and self.lon is not None
        mode = self.mode or ("none" if not valid else "3d" if self.altitude_m is not None
                             else "2d")
        if not valid:
            mode = "none"
        utc = None
        if self.day is not None and self.tod is not None:
            utc = datetime.combine(self.day, self.tod.replace(tzinfo=None), tzinfo=UTC)
        return Fix(valid, self.lat if valid else None, self.lon if valid else None, mode,
                   self.quality or ("gps" if valid else "none"),
                   self.satellites, self.hdop, self.speed_kmh, self.heading, self.altitude_m,
                   utc, self.talker, at_mono)


class NmeaParser:
    """NMEA 0183 bytes → :class:`Fix` per epoch. Never raises; bounded state.

    A fix is made when a sentence of a new receiver time arrives (the
    previous epoch is complete) or on :meth:`flush` (the line went quiet).
    Bad checksums, malformed sentences, overlong lines and bytes that are
    not NMEA are counted in ``counters.errors`` and skipped.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counters = Counters()
        self._buf = bytearray()
        self._epoch: _Epoch | None = None
        self._now = 0.0

    def feed(self, data: bytes, now: float | None = None) -> list[Fix]:
        self._now = self.clock() if now is None else now
        out: list[Fix] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_SENTENCE:
                    self.counters.error("overlong")
                    del self._buf[:]
                break
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            out += self._line(line)
        return out

    def flush(self, now: float | None = None) -> list[Fix]:
        """Close the open epoch (call when the line has been quiet for a while)."""
        epoch, self._epoch = self._epoch, None
        if epoch is None or not epoch.used:
            return []
        return [self._emit(epoch, self.clock() if now is None else now)]

    def reset(self) -> None:
        """Forget a partial line and the open epoch (a port was reopened)."""
        del self._buf[:]
        self._epoch = None

    def _emit(self, epoch: _Epoch, now: float) -> Fix:
        self.counters.fixes += 1
        return epoch.fix(now)

    def _line(self, raw: bytes) -> list[Fix]:
        start = raw.find(b"$")
        if start < 0:
            if raw.strip(b"\r\x00 \t"):
                self.counters.error("not_nmea")
            return []
        if start > 0 and raw[:start].strip(b"\r\x00 \t"):
            self.counters.error("junk_before_sentence")
        text = raw[start:].rstrip(b"\r\x00 \t")
        if len(text) > MAX_SENTENCE:
            self.counters.error("overlong")
            return []
        try:
            msg = NMEAReader.parse(text, validate=1)   # VALCKSUM
        except NMEAParseError as err:
            self.counters.error("checksum" if "checksum" in str(err).lower() else "malformed")
            return []
        except (NMEATypeError, NMEAMessageError, NMEAStreamError, ValueError,
                IndexError, TypeError):
            self.counters.error("malformed")
            return []
        self.counters.sentences += 1
        return self._message(msg)

    def _message(self, msg: NMEAMessage) -> list[Fix]:
        ident = getattr(msg, "msgID", "")
        if ident not in ("RMC", "GGA", "GNS", "GSA"):
            self.counters.ignored += 1
            return []
        out: list[Fix] = []
        tod = getattr(msg, "time", None)
        if not isinstance(tod, dtime):
            tod = None
        if ident != "GSA" and tod is not None:
            if self._epoch is not None and self._epoch.tod != tod:
                out += self.flush(self._now)
            if self._epoch is None:
                self._epoch = _Epoch(tod)
        if self._epoch is None:
            if ident == "GSA":
                self.counters.ignored += 1   # no epoch to join yet
                return out
            self._epoch = _Epoch(None)
        e = self._epoch
        e.used = True
        e.talker = e.talker or getattr(msg, "talker", "")
        if ident == "RMC":
            status = getattr(msg, "status", "")
            e.valid = status == "A" if e.valid is None else (e.valid and status == "A")
            day = getattr(msg, "date", None)
            if isinstance(day, date):
                e.day = day
            e.position(msg)
            knots = _num(getattr(msg, "spd", None))
            e.speed_kmh = None if knots is None else round(knots * KNOT_KMH, 2)
            e.heading = _num(getattr(msg, "cog", None))
            mode = str(getattr(msg, "posMode", "") or "")
            if mode in MODE_QUALITY and e.quality is None:
                e.quality = MODE_QUALITY[mode]
        elif ident == "GGA":
            quality = _int(getattr(msg, "quality", None)) or 0
            e.valid = quality > 0 if e.valid is None else (e.valid and quality > 0)
            e.quality = GGA_QUALITY.get(quality, "gps")
            e.position(msg)
            e.satellites = _int(getattr(msg, "numSV", None))
            e.hdop = _num(getattr(msg, "HDOP", None))
            e.altitude_m = _num(getattr(msg, "alt", None))
        elif ident == "GNS":
            modes = str(getattr(msg, "posMode", "") or "")
            ok = any(c not in "N" for c in modes) if modes else False
            if e.valid is None:
                e.valid = ok
            e.position(msg)
            if e.satellites is None:
                e.satellites = _int(getattr(msg, "numSV", None))
            if e.hdop is None:
                e.hdop = _num(getattr(msg, "HDOP", None))
            if e.altitude_m is None:
                e.altitude_m = _num(getattr(msg, "alt", None))
            if e.quality is None:
                e.quality = next((MODE_QUALITY[c] for c in modes if c in MODE_QUALITY
                                  and c != "N"), None)
        else:  # GSA: fix type; one per constellation, the best one counts
            nav = _int(getattr(msg, "navMode", None))
            mode = {2: "2d", 3: "3d"}.get(nav or 0, "none")
            if e.mode is None or (e.mode, mode) in (("none", "2d"), ("none", "3d"),
                                                   ("2d", "3d")):
                e.mode = mode
            if e.hdop is None:
                e.hdop = _num(getattr(msg, "HDOP", None))
        return out


class GpsdParser:
    """gpsd JSON reports → :class:`Fix`. Never raises; bounded state.

    Each ``TPV`` report is one fix; the latest ``SKY`` report gives satellites
    used and HDOP.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counters = Counters()
        self.version: str | None = None
        self.devices: list[str] = []
        self._buf = bytearray()
        self._sky: dict[str, Any] = {}

    def feed(self, data: bytes, now: float | None = None) -> list[Fix]:
        t = self.clock() if now is None else now
        out: list[Fix] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_JSON_LINE:
                    self.counters.error("overlong")
                    del self._buf[:]
                break
            line = bytes(self._buf[:end]).strip()
            del self._buf[:end + 1]
            if line:
                fix = self._report(line, t)
                if fix is not None:
                    out.append(fix)
        return out

    def flush(self, now: float | None = None) -> list[Fix]:
        return []

    def reset(self) -> None:
        del self._buf[:]
        self._sky = {}

    def _report(self, line: bytes, now: float) -> Fix | None:
        try:
            doc = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            self.counters.error("malformed")
            return None
        if not isinstance(doc, dict):
            self.counters.error("malformed")
            return None
        self.counters.sentences += 1
        cls = doc.get("class")
        if cls == "VERSION":
            self.version = str(doc.get("release", ""))
        elif cls == "DEVICES":
            self.devices = [str(d.get("path")) for d in doc.get("devices", [])
                            if isinstance(d, dict)]
        elif cls == "SKY":
            self._sky = doc
        elif cls == "TPV":
            return self._tpv(doc, now)
        else:
            self.counters.ignored += 1
        return None

    def _tpv(self, doc: dict[str, Any], now: float) -> Fix:
        mode = _int(doc.get("mode")) or 0
        lat, lon = _num(doc.get("lat")), _num(doc.get("lon"))
        valid = mode >= 2 and lat is not None and lon is not None
        utc = None
        if isinstance(doc.get("time"), str):
            try:
                utc = datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).astimezone(UTC)
            except ValueError:
                self.counters.error("bad_time")
        speed = _num(doc.get("speed"))   # m/s
        sky = self._sky
        used = _int(sky.get("uSat"))
        if used is None and isinstance(sky.get("satellites"), list):
            used = sum(1 for s in sky["satellites"] if isinstance(s, dict) and s.get("used"))
        status = _int(doc.get("status"))
        quality = {2: "dgps", 3: "rtk", 4: "float_rtk", 5: "estimated", 6: "manual",
                   7: "simulated"}.get(status or 1, "gps") if valid else "none"
        self.counters.fixes += 1
        return Fix(valid, lat if valid else None, lon if valid else None,
                   {2: "2d", 3: "3d"}.get(mode, "none") if valid else "none", quality,
                   used, _num(sky.get("hdop")),
                   None if speed is None else round(speed * 3.6, 2),
                   _num(doc.get("track")), _num(doc.get("altMSL", doc.get("alt"))),
                   utc, "gpsd", now)


def encode_epoch(lat: float | None, lon: float | None, utc: datetime, *,
                 speed_kmh: float = 0.0, heading: float = 0.0, satellites: int = 9,
                 hdop: float = 0.9, altitude_m: float = 20.0, talker: str = "GN") -> bytes:
    """One receiver epoch as NMEA (RMC, GGA, GSA), as a receiver sends it.

    ``lat``/``lon`` None: a receiver without a fix (status ``V``, quality 0).
    For the simulated vehicle of the demo and for tests; real receivers are
    replayed from their captures.
    """
    utc = utc.astimezone(UTC)
    fixed = lat is not None and lon is not None
    pos: dict[str, Any] = ({"lat": lat, "NS": "N" if lat >= 0 else "S", "lon": lon,
                            "EW": "E" if lon >= 0 else "W"} if fixed else {})
    rmc = NMEAMessage(talker, "RMC", 0, time=utc.time(), status="A" if fixed else "V",
                      spd=round(speed_kmh / KNOT_KMH, 2) if fixed else "",
                      cog=round(heading, 1) if fixed else "", date=utc.date(),
                      posMode="A" if fixed else "N", **pos)
    gga = NMEAMessage(talker, "GGA", 0, time=utc.time(), quality=1 if fixed else 0,
                      numSV=satellites if fixed else 0, HDOP=hdop if fixed else "",
                      alt=altitude_m if fixed else "", altUnit="M", sep=8.3 if fixed else "",
                      sepUnit="M", **pos)
    gsa = NMEAMessage(talker, "GSA", 0, opMode="A", navMode=3 if fixed else 1,
                      PDOP=round(hdop * 1.6, 1) if fixed else "", HDOP=hdop if fixed else "",
                      VDOP=round(hdop * 1.2, 1) if fixed else "")
    return gga.serialize() + gsa.serialize() + rmc.serialize()


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


class GnssReceiver:
    """Runs one GNSS source: port or gpsd socket, parser, callbacks, reopen.

    ``source`` is a pyserial URL (``/dev/serial0``, ``/dev/ttyACM0``,
    ``socket://…``, ``loop://``) for a receiver speaking NMEA, or
    ``gpsd://host:port`` for gpsd (port 2947 when left out). ``baudrate`` is
    the receiver's (most leave the factory at 9600; some u-blox at 38400).
    ``quiet_s``: a serial line silent this long closes the open epoch;
    ``silent_s``: silent this long, the receiver is reported offline.
    ``clock`` stamps each fix's ``at_mono`` (the unit's boot-relative clock).
    """

    def __init__(self, name: str, source: str, *, baudrate: int = 9600,
                 on_fix: OnFix | None = None, on_state: OnState | None = None,
                 read_timeout: float = 0.2, quiet_s: float = 0.5,
                 silent_s: float = 10.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, path_check_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.source = source
        self.baudrate = baudrate
        self.on_fix = on_fix
        self.on_state = on_state
        self.read_timeout = read_timeout
        self.quiet_s = quiet_s
        self.silent_s = silent_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.path_check_s = path_check_s
        self.clock = clock
        self.gpsd = source.startswith("gpsd://")
        if self.gpsd:
            parts = urlsplit(source)
            if not parts.hostname:
                raise ValueError(f"gnss source {source!r}: expected gpsd://host[:port]")
            self.gpsd_address = (parts.hostname, parts.port or 2947)
        self.parser: NmeaParser | GpsdParser = (GpsdParser(clock=clock) if self.gpsd
                                                else NmeaParser(clock=clock))
        self.state = "starting"
        self.detail = ""
        self.state_since = clock()
        self.opens = 0
        self.open_failures = 0
        self.port_losses = 0
        self.callback_errors = 0
        self.last_fix: Fix | None = None
        self._port: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gnss-{name}", daemon=True)
        self._started = False
        self._closed = False

    @property
    def driver(self) -> str:
        return "gpsd" if self.gpsd else "nmea"

    @property
    def counters(self) -> Counters:
        return self.parser.counters

    def start(self) -> GnssReceiver:
        if self._closed:
            raise RuntimeError(f"gnss receiver {self.name} is stopped")
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop promptly; safe to call twice."""
        self._stop.set()
        self._wake()
        if self._started and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("gnss %s: thread did not stop within %.1f s", self.name, timeout)
        self._close_port()
        self._closed = True

    close = stop

    def __enter__(self) -> GnssReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        what = "stopped" if self._closed else self.state
        return f"<GnssReceiver {self.name} {self.driver} on {self.source} {what}>"

    def health(self) -> dict[str, Any]:
        fix = self.last_fix
        h: dict[str, Any] = {
            "state": "stopped" if self._closed else self.state,
            "detail": self.detail,
            "since_s": round(self.clock() - self.state_since, 3),
            "driver": self.driver,
            "port": self.source,
            **self.counters.snapshot(),
            "opens": self.opens,
            "open_failures": self.open_failures,
            "port_losses": self.port_losses,
            "callback_errors": self.callback_errors,
            "fix": None if fix is None else {
                "valid": fix.valid, "mode": fix.mode, "satellites": fix.satellites,
                "hdop": fix.hdop, "age_s": round(self.clock() - fix.at_mono, 3)},
        }
        return h

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            healthy = False
            try:
                healthy = self._session()
            except Exception:
                log.exception("gnss %s: internal error; restarting the session", self.name)
                self._set_state(OFFLINE, "internal error (see log)")
            finally:
                self._close_port()
            if self._stop.is_set():
                break
            failures = 0 if healthy else failures + 1
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, failures - 1))
            self._stop.wait(delay)

    def _session(self) -> bool:
        try:
            self._open()
        except (*PORT_ERRORS, ValueError) as err:
            self.open_failures += 1
            self._set_state(OFFLINE, f"cannot open {self.source}: {err}")
            return False
        self.parser.reset()
        identity = self._path_identity()
        good = False
        last_data = last_check = time.monotonic()
        online = False
        try:
            # A receiver only talks: the port being there is not enough, online waits for
            # the first sentence.
            while not self._stop.is_set():
                data = self._read()
                now = time.monotonic()   # the thread's own timing; fixes use ``clock``
                fixes: list[Fix] = []
                if data:
                    last_data = now
                    fixes = self.parser.feed(data, self.clock())
                    if not online and self.counters.sentences:
                        online = True
                        self._set_state(ONLINE, f"{self.driver} on {self.source}")
                elif now - last_data >= self.quiet_s:
                    fixes = self.parser.flush(self.clock())
                    if now - last_data >= self.silent_s and self.state != OFFLINE:
                        online = False
                        self._set_state(OFFLINE, f"no data from {self.source} for "
                                                 f"{self.silent_s:g} s")
                for fix in fixes:
                    good = True
                    self._deliver(fix)
                if identity is not None and now - last_check >= self.path_check_s:
                    last_check = now
                    if self._path_identity() != identity:
                        raise ConnectionError(f"{self.source} vanished or now names another "
                                              "device")
        except PORT_ERRORS as err:
            if self._stop.is_set():
                return True
            self.port_losses += 1
            self._set_state(OFFLINE, f"port lost: {self.source}: {err}")
            return good
        return True

    def _open(self) -> None:
        if self.gpsd:
            sock = socket.create_connection(self.gpsd_address, timeout=2.0)
            sock.settimeout(self.read_timeout)
            sock.sendall(b'?WATCH={"enable":true,"json":true};\n')
            port: Any = sock
        else:
            port = serial.serial_for_url(self.source, baudrate=self.baudrate,
                                         timeout=self.read_timeout)
        with self._lock:
            self._port = port
        self.opens += 1

    def _read(self) -> bytes:
        with self._lock:
            port = self._port
        if port is None:
            raise ConnectionError(f"{self.source} is closed")
        if self.gpsd:
            try:
                data = port.recv(4096)
            except TimeoutError:
                return b""
            if not data:
                raise ConnectionError("gpsd closed the connection")
            return data
        return port.read(max(1, port.in_waiting))

    def _wake(self) -> None:
        """End a blocking read without closing the port under it (its fd must not be reused
        while the thread still selects on it)."""
        with self._lock:
            port = self._port
        try:
            if isinstance(port, socket.socket):
                port.shutdown(socket.SHUT_RDWR)
            elif port is not None and hasattr(port, "cancel_read"):
                port.cancel_read()
        except Exception as err:
            log.debug("gnss %s: waking the reader: %s", self.name, err)

    def _close_port(self) -> None:
        with self._lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception as err:
                log.debug("gnss %s: closing %s: %s", self.name, self.source, err)

    def _path_identity(self) -> tuple[int, int, int] | None:
        if self.gpsd or "://" in self.source:
            return None
        try:
            st = os.stat(self.source)
        except OSError:
            return (-1, -1, -1)
        return (st.st_dev, st.st_ino, st.st_rdev)

    def _deliver(self, fix: Fix) -> None:
        self.last_fix = fix
        if self.on_fix is None:
            return
        try:
            self.on_fix(fix)
        except Exception:
            self.callback_errors += 1
            log.exception("gnss %s: on_fix callback failed", self.name)

    def _set_state(self, state: str, detail: str) -> None:
        if state == self.state:
            self.detail = detail
            return
        self.state, self.detail, self.state_since = state, detail, self.clock()
        (log.info if state == ONLINE else log.warning)(
            "gnss %s (%s on %s) %s: %s", self.name, self.driver, self.source, state, detail)
        if self.on_state is None:
            return
        try:
            self.on_state(self.name, state, detail)
        except Exception:
            self.callback_errors += 1
            log.exception("gnss %s: on_state callback failed", self.name)
