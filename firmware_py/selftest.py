"""``xunfang check -c FILE``: the installer's self-test of the whole unit.

One line per part, in the installer's language (:mod:`firmware_py.i18n`), and
for each failure what to do::

    [通过] 配置: /etc/xunfang/unit.toml: 站点 zhuantang 的单元 zt-pp-03 (patrol_point)
    [失败] MQTT 服务器: 连不上 10.0.0.5:8883: Connection refused
           → 检查服务器是否在运行，以及 [mqtt] host 和 port

The parts: the config; the data directory (writable, fsync, space left); each
reader (opens; a PN532 names its firmware; ``--tap`` waits for a card); each
light (cycled through its modes, as ``xunfang check lights``); each input;
each camera (one frame, saved under ``{data_dir}/check/``); the TLS files and
password; the broker (connects with the unit's settings and publishes QoS 1
on the unit's own health topic: an empty, non-retained message, which the
ACL must allow and every centre tool ignores); the clock; the trusted keys;
chrony; the hardware watchdog.

While the station runs it owns the readers, lights and inputs: the lights
are then cycled by the station itself (asked through the journal), and the
readers and inputs are reported from its status file and the journal.

Exit status: 0 every part passed, 1 some failed, 2 bad configuration.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import topics
from .clock import SystemClock
from .config import UnitConfig
from .i18n import Translate
from .statusfile import read_status
from .timesync import CHRONY_SNIPPET, WATCHDOG_DROP_IN, render_chrony
from .unitstatus import give_back, station_pid

log = logging.getLogger("xunfang.check")

EXIT_OK, EXIT_FAILED = 0, 1
# Below this much free space the journal and footage soon stop.
MIN_FREE_MB = 200
READER_OPEN_S = 8.0
BROKER_TIMEOUT_S = 10.0
CAMERA_FRAME_S = 15.0
NOT_AUTHORIZED = 0x87


@dataclass
class Outcome:
    """One part's result: ``ok`` True (pass), False (fail) or None (skipped)."""

    part: str
    ok: bool | None
    detail: str
    fix: str = ""


class SelfTest:
    """Runs every part in order and prints each line as soon as it is known."""

    def __init__(self, cfg: UnitConfig, _: Translate, *, root: Path = Path("/"),
                 tap: bool = False, tap_timeout_s: float = 30.0, light_seconds: float = 1.0,
                 skip: tuple[str, ...] = (), out: IO[str] | None = None) -> None:
        self.cfg = cfg
        self._ = _
        self.root = root
        self.tap = tap
        self.tap_timeout_s = tap_timeout_s
        self.light_seconds = light_seconds
        self.skip = set(skip)
        self.out = out or sys.stdout
        self.results: list[Outcome] = []
        self.station = station_pid(cfg)

    # -- driving -------------------------------------------------------------------------------

    PARTS = ("config", "data", "readers", "lights", "inputs", "cameras", "credentials",
             "broker", "clock", "keys", "chrony", "watchdog")

    def run(self) -> int:
        for name in self.PARTS:
            if name in self.skip:
                self.report(Outcome(name, None, self._("skipped (--skip)")))
                continue
            try:
                for outcome in getattr(self, f"check_{name}")():
                    self.report(outcome)
            except Exception as err:  # one broken part must not hide the others
                log.debug("check %s failed", name, exc_info=True)
                self.report(Outcome(name, False, self._("the check itself failed: {error}")
                                    .format(error=_err(err)), self._(
                                    "run it again with -v and report the log")))
        failed = sum(1 for r in self.results if r.ok is False)
        passed = sum(1 for r in self.results if r.ok)
        if failed:
            print(self._("{failed} of {total} checks failed").format(
                failed=failed, total=failed + passed), file=self.out, flush=True)
            return EXIT_FAILED
        print(self._("all {total} checks passed").format(total=passed), file=self.out,
              flush=True)
        return EXIT_OK

    def report(self, outcome: Outcome) -> None:
        self.results.append(outcome)
        mark = {True: self._("[ ok ]"), False: self._("[FAIL]"), None: self._("[skip]")}
        print(f"{mark[outcome.ok]} {outcome.part}: {outcome.detail}", file=self.out, flush=True)
        if outcome.ok is False and outcome.fix:
            print(f"       → {outcome.fix}", file=self.out, flush=True)

    # -- config and data -----------------------------------------------------------------------

    def check_config(self) -> Iterator[Outcome]:
        u = self.cfg.unit
        yield Outcome(self._("config"), True, self._(
            "{path}: unit {unit} ({kind}) of site {site}").format(
            path=self.cfg.source_path, unit=u.id, kind=u.kind, site=u.site))

    def check_data(self) -> Iterator[Outcome]:
        part = self._("data directory")
        data = self.cfg.unit.data_dir
        try:
            data.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".check-", dir=data)
            try:
                os.write(fd, b"x" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
            dir_fd = os.open(data, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            free_mb = shutil.disk_usage(data).free / 2**20
        except OSError as err:
            yield Outcome(part, False, self._("{path}: cannot write and fsync a file: {error}")
                          .format(path=data, error=err.strerror or err),
                          self._("make {path} a writable directory on a working disk (the "
                                 "install script creates /var/lib/xunfang); a card that "
                                 "cannot fsync is failing: replace it").format(path=data))
            return
        if free_mb < MIN_FREE_MB:
            yield Outcome(part, False, self._("{path}: only {free:.0f} MB free").format(
                path=data, free=free_mb), self._(
                "free space on that disk (at least {min} MB) or use a larger card").format(
                min=MIN_FREE_MB))
            return
        yield Outcome(part, True, self._("{path}: writable, fsync works, {free:.0f} MB free")
                      .format(path=data, free=free_mb))

    # -- readers -------------------------------------------------------------------------------

    def _in_use(self) -> str:
        return self._("in use by the running station (PID {pid}), state from its status "
                      "file").format(pid=self.station)

    def check_readers(self) -> Iterator[Outcome]:
        if not self.cfg.readers:
            yield Outcome(self._("readers"), None, self._("none configured"))
            return
        if self.station is not None:
            doc = read_status(self.cfg.unit.runtime_dir) or {}
            readers = doc.get("readers") if isinstance(doc.get("readers"), dict) else {}
            for rc in self.cfg.readers:
                state = readers.get(rc.name) if isinstance(readers.get(rc.name), dict) else {}
                online = state.get("state") == "online"
                yield Outcome(self._("reader {name}").format(name=rc.name), online,
                              f"{self._in_use()}: {state.get('state', '?')}"
                              f" {state.get('detail') or ''}".rstrip(),
                              self._reader_fix(rc.port))
            return
        for rc in self.cfg.readers:
            yield self._open_reader(rc)

    def _reader_fix(self, port: str) -> str:
        return self._("check the wiring and power of the reader, that {port} exists "
                      "(ls -l {port}) and the serial console is off (docs/readers.md)").format(
                      port=port)

    def _open_reader(self, rc: Any) -> Outcome:
        from drivers.readers import CardRead
        from drivers.readers.base import ONLINE

        from .checkin import sim_reader_config
        from .devices import reader_from_config

        part = self._("reader {name}").format(name=rc.name)
        states: list[tuple[str, str]] = []
        cards: list[CardRead] = []
        changed = threading.Condition()

        def on_state(_name: str, state: str, detail: str) -> None:
            with changed:
                states.append((state, detail))
                changed.notify_all()

        def on_card(read: CardRead) -> None:
            with changed:
                cards.append(read)
                changed.notify_all()

        with contextlib.suppress(OSError):
            self.cfg.unit.runtime_dir.mkdir(parents=True, exist_ok=True)
        try:
            reader = reader_from_config(sim_reader_config(self.cfg, rc), on_card=on_card,
                                        on_state=on_state)
        except Exception as err:
            return Outcome(part, False, self._("cannot start {driver} on {port}: {error}")
                           .format(driver=rc.driver, port=rc.port, error=err),
                           self._reader_fix(rc.port))
        try:
            with changed:
                changed.wait_for(lambda: any(s == ONLINE for s, _ in states), READER_OPEN_S)
            online = [d for s, d in states if s == ONLINE]
            if not online:
                last = states[-1][1] if states else self._("no answer")
                return Outcome(part, False, self._(
                    "{driver} on {port} did not come online within {s:.0f} s: {detail}").format(
                    driver=rc.driver, port=rc.port, s=READER_OPEN_S, detail=last),
                    self._reader_fix(rc.port))
            firmware = reader.health().get("firmware")
            detail = self._("{driver} on {port} opens").format(driver=rc.driver, port=rc.port)
            if firmware:
                detail += self._(", reports {firmware}").format(firmware=firmware)
            if not self.tap:
                return Outcome(part, True, detail)
            print(self._("       tap a card on reader {name} now ({s:.0f} s)...").format(
                name=rc.name, s=self.tap_timeout_s), file=self.out, flush=True)
            with changed:
                changed.wait_for(lambda: bool(cards), self.tap_timeout_s)
            if not cards:
                return Outcome(part, False, detail + self._("; no card read within {s:.0f} s")
                               .format(s=self.tap_timeout_s), self._(
                               "hold the card flat on the reader for a second; try another "
                               "card; check the reader's antenna and its card type"))
            return Outcome(part, True, detail + self._("; read card {card}").format(
                card=cards[0].card_hex))
        finally:
            reader.stop()

    # -- lights and inputs ---------------------------------------------------------------------

    def check_lights(self) -> Iterator[Outcome]:
        from .lights_control import run_lights_check

        if not self.cfg.lights:
            yield Outcome(self._("lights"), None, self._("none configured"))
            return
        for name, lc in self.cfg.lights.items():
            part = self._("light {name}").format(name=name)
            buf = io.StringIO()
            try:
                rc = run_lights_check(self.cfg, names=[name], seconds=self.light_seconds,
                                      out=buf)
            except Exception as err:  # a pin library error must not end the whole check
                rc, buf = 1, io.StringIO(str(err))
            text = buf.getvalue()
            pins = "/".join(f"GPIO{p}" for p in lc.pins)
            by_station = text.startswith("check lights: a station")
            if rc == 0:
                yield Outcome(part, True, self._(
                    "{pins}: cycled through its modes{how}: did you see each one?").format(
                    pins=pins, how=self._(" by the running station") if by_station else ""))
            else:
                last = text.strip().splitlines()[-1] if text.strip() else ""
                yield Outcome(part, False, f"{pins}: {last}", self._(
                    "check the relay board's power and wiring to {pins}, and that the "
                    "station is running or the pins are free").format(pins=pins))

    def check_inputs(self) -> Iterator[Outcome]:
        cfg = self.cfg.inputs
        pins = {s: p for s, p in (("panic", cfg.panic), ("tamper", cfg.tamper)) if p is not None}
        if not pins:
            yield Outcome(self._("inputs"), None, self._("none configured"))
            return
        for source, pin in pins.items():
            part = self._("input {name}").format(name=source)
            nc = cfg.panic_normally_closed if source == "panic" else cfg.tamper_normally_closed
            fix = (self._("release the panic button; if it is not pressed, check its wiring "
                          "and panic_normally_closed")
                   if source == "panic" else
                   self._("close the lid; if it is closed, check the tamper loop's wiring and "
                          "tamper_normally_closed"))
            if self.station is not None:
                active = self._stored_alarm(source)
                yield Outcome(part, active is False, self._(
                    "GPIO{pin}: {state}; {how}").format(
                    pin=pin, state=self._active_text(active),
                    how=self._("in use by the running station (PID {pid}), state from the "
                               "journal").format(pid=self.station)), fix)
                continue
            yield self._read_input(part, source, pin, nc, fix)

    def _active_text(self, active: bool | None) -> str:
        if active is None:
            return self._("state unknown")
        return self._("ACTIVE (alarm)") if active else self._("normal")

    def _stored_alarm(self, source: str) -> bool | None:
        from .alarms import alarm_key
        from .journal import Journal

        if not self.cfg.journal_path.exists():
            return None
        with Journal(self.cfg.journal_path, unit=self.cfg.unit.id,
                     site=self.cfg.unit.site) as journal:
            stored = journal.state_get(alarm_key(source))
        give_back(self.cfg.journal_path)
        if isinstance(stored, dict) and stored.get("state") in ("active", "cleared"):
            return stored["state"] == "active"
        return False if stored is None else None  # never raised: normal

    def _stored_device(self, kind: str, name: str) -> str | None:
        """A device's state as its service last recorded it in the journal, if any."""
        from .journal import Journal

        if not self.cfg.journal_path.exists():
            return None
        try:
            with Journal(self.cfg.journal_path, unit=self.cfg.unit.id,
                         site=self.cfg.unit.site) as journal:
                stored = journal.state_get(f"device/{kind}/{name}")
        except Exception:
            return None  # the journal has its own line in `xunfang status`
        finally:
            give_back(self.cfg.journal_path)
        return str(stored.get("state")) if isinstance(stored, dict) else None

    def _read_input(self, part: str, source: str, pin: int, nc: bool, fix: str) -> Outcome:
        from drivers.inputs import PanicButton, TamperSwitch

        kind = PanicButton if source == "panic" else TamperSwitch
        try:
            inp = kind(pin, normally_closed=nc, debounce_s=0.05, name=source)
        except Exception as err:
            return Outcome(part, False, self._("cannot open GPIO{pin}: {error}").format(
                pin=pin, error=err), self._("check that no other program uses GPIO{pin}")
                .format(pin=pin))
        try:
            active = inp.raw_active
        finally:
            inp.close()
        return Outcome(part, not active, self._("GPIO{pin}: {state}").format(
            pin=pin, state=self._active_text(active)), fix)

    # -- cameras -------------------------------------------------------------------------------

    def check_cameras(self) -> Iterator[Outcome]:
        if not self.cfg.cameras:
            yield Outcome(self._("cameras"), None, self._("none configured"))
            return
        for cc in self.cfg.cameras:
            yield self._grab(cc)

    def _grab(self, cc: Any) -> Outcome:
        import cv2

        from camera.capture import Capture, redact

        part = self._("camera {name}").format(name=cc.name)
        size = (cc.width, cc.height) if cc.width and cc.height else None
        source = redact(cc.source)
        wait_s = max(CAMERA_FRAME_S, cc.stall_s)
        with Capture(cc.source, name=cc.name, fps_cap=cc.fps, stall_s=cc.stall_s,
                     size=size).start() as cap:
            frame = cap.wait(after=0, timeout=wait_s)
            error = cap.last_error
        if frame is None:
            held = self._stored_device("cameras", cc.name)
            note = self._("; the camera service last reported it {state}").format(
                state=held) if held else ""
            return Outcome(part, False, self._("no frame from {source} within {s:.0f} s{error}")
                           .format(source=source, s=wait_s,
                                   error=f" ({error})" if error else "") + note, self._(
                           "check the camera's cable and power, the source in the config, "
                           "and stop xunfang-camera if it holds a USB camera "
                           "(systemctl stop xunfang-camera)"))
        path = self.cfg.unit.data_dir / "check" / f"camera-{cc.name}.jpg"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), frame.image):
                raise OSError(f"cannot write {path}")
        except OSError as err:
            return Outcome(part, False, self._("got a frame but cannot save it: {error}")
                           .format(error=err), self._("check the data directory (above)"))
        return Outcome(part, True, self._("{source}: {w}x{h} frame saved to {path}: look at "
                                          "it").format(source=source, w=frame.width,
                                                       h=frame.height, path=path))

    # -- credentials and broker ----------------------------------------------------------------

    def check_credentials(self) -> Iterator[Outcome]:
        m = self.cfg.mqtt
        if m.tls is None and m.password_file is None:
            yield Outcome(self._("credentials"), None, self._("no TLS and no password file"))
            return
        if m.password_file is not None:
            part = self._("password file")
            try:
                text = Path(m.password_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                yield Outcome(part, False, f"{m.password_file}: {_err(err)}", self._(
                    "put the unit's MQTT password in {path} (mode 0640, group xunfang)")
                    .format(path=m.password_file))
            else:
                detail = self._("{path}: readable") if text else self._("{path}: empty")
                yield Outcome(part, bool(text), detail.format(path=m.password_file),
                              self._("put the unit's MQTT password in {path}").format(
                                  path=m.password_file))
        if m.tls is not None:
            yield from self._tls_files()

    def _tls_files(self) -> Iterator[Outcome]:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        tls = self.cfg.mqtt.tls
        assert tls is not None
        part = self._("TLS files")
        fix_files = self._("copy the CA certificate, the unit's certificate and key into "
                           "/etc/xunfang/tls/ (mode 0640, group xunfang; see docs/broker.md)")
        try:
            ca = x509.load_pem_x509_certificates(Path(tls.ca).read_bytes())
        except (OSError, ValueError) as err:
            yield Outcome(part, False, self._("CA certificate {path}: {error}").format(
                path=tls.ca, error=_err(err)), fix_files)
            return
        if tls.cert is None or tls.key is None:
            yield Outcome(part, True, self._("CA certificate {path}: {n} certificate(s); no "
                                             "client certificate").format(path=tls.ca,
                                                                          n=len(ca)))
            return
        try:
            cert = x509.load_pem_x509_certificate(Path(tls.cert).read_bytes())
        except (OSError, ValueError) as err:
            yield Outcome(part, False, self._("certificate {path}: {error}").format(
                path=tls.cert, error=_err(err)), fix_files)
            return
        try:
            key = serialization.load_pem_private_key(Path(tls.key).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as err:
            yield Outcome(part, False, self._("key {path}: {error}").format(
                path=tls.key, error=_err(err)), self._(
                "the key must be the unencrypted PEM key made with the certificate's "
                "request; make a new one if it is lost (docs/broker.md)"))
            return
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        pem = serialization.Encoding.PEM
        if key.public_key().public_bytes(pem, spki) != cert.public_key().public_bytes(pem, spki):
            yield Outcome(part, False, self._("key {key} does not belong to certificate {cert}")
                          .format(key=tls.key, cert=tls.cert), fix_files)
            return
        days = (cert.not_valid_after_utc.timestamp() - time.time()) / 86400
        cn = ", ".join(str(a.value) for a in cert.subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME))
        if days < 0:
            yield Outcome(part, False, self._("certificate {path} (CN {cn}) expired {d:.0f} "
                                              "days ago").format(path=tls.cert, cn=cn, d=-days),
                          self._("have the centre sign a new certificate (docs/broker.md)"))
            return
        ok = cn == self.cfg.unit.id
        yield Outcome(part, ok, self._("certificate CN {cn}, valid for {d:.0f} more days, key "
                                       "matches").format(cn=cn, d=days),
                      self._("the certificate's CN must be the unit id {unit}: the broker "
                             "uses it as the username").format(unit=self.cfg.unit.id))

    def check_broker(self) -> Iterator[Outcome]:
        yield self._broker()

    def _broker(self) -> Outcome:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        m = self.cfg.mqtt
        u = self.cfg.unit
        part = self._("broker")
        where = f"{m.host}:{m.port}"
        v5 = m.protocol == "5"
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"{topics.client_id(u.id)}_check",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             clean_session=None if v5 else True, reconnect_on_failure=False)
        events: dict[str, Any] = {}
        cond = threading.Condition()

        def note(key: str, value: Any) -> None:
            with cond:
                events.setdefault(key, value)
                cond.notify_all()

        client.on_connect = lambda _c, _u, _f, rc, _p: note("connack", rc)
        client.on_disconnect = lambda _c, _u, _f, rc, _p: note("disconnect", rc)
        client.on_publish = lambda _c, _u, mid, rc, _p: note(f"puback-{mid}", rc)
        fix_net = self._("check that the broker runs and [mqtt] host and port are right, "
                         "and that the network lets the unit reach it (ping {host})").format(
                         host=m.host)
        try:
            if m.username is not None:
                password = None
                if m.password_file is not None:
                    password = Path(m.password_file).read_text(encoding="utf-8").rstrip("\r\n")
                client.username_pw_set(m.username, password)
            if m.tls is not None:
                client.tls_set(ca_certs=str(m.tls.ca),
                               certfile=str(m.tls.cert) if m.tls.cert else None,
                               keyfile=str(m.tls.key) if m.tls.key else None)
        except (OSError, ValueError, ssl.SSLError) as err:
            return Outcome(part, False, self._("cannot set up the connection: {error}").format(
                error=_err(err)), self._("fix the TLS files and password file (above)"))
        client.connect_timeout = BROKER_TIMEOUT_S
        try:
            client.connect(m.host, m.port, keepalive=m.keepalive_s)
        except ssl.SSLError as err:
            return Outcome(part, False, self._("TLS with {where} failed: {error}").format(
                where=where, error=_err(err)), self._(
                "the broker's certificate must be signed by [mqtt.tls] ca and name the host "
                "{host}; the unit's clock must be right").format(host=m.host))
        except OSError as err:
            return Outcome(part, False, self._("cannot reach {where}: {error}").format(
                where=where, error=_err(err)), fix_net)
        client.loop_start()
        try:
            with cond:
                cond.wait_for(lambda: "connack" in events or "disconnect" in events,
                              BROKER_TIMEOUT_S)
            rc = events.get("connack")
            if rc is None:
                return Outcome(part, False, self._(
                    "{where} closed the connection before accepting it: the broker refuses "
                    "the unit's certificate").format(where=where), self._(
                    "the certificate must be signed by the broker's CA and not revoked; ask "
                    "the centre (docs/broker.md)"))
            if rc.is_failure:
                return Outcome(part, False, self._("{where} refused the unit: {reason}").format(
                    where=where, reason=str(rc)), self._(
                    "the broker does not know this unit's username, password or certificate: "
                    "ask the centre to add it (docs/broker.md)"))
            topic = topics.health(u.site, u.id)
            info = client.publish(topic, b"", qos=1, retain=False)
            key = f"puback-{info.mid}"
            with cond:
                cond.wait_for(lambda: key in events or "disconnect" in events, BROKER_TIMEOUT_S)
            puback = events.get(key)
            fix_acl = self._("the broker's ACL must list unit {unit} under site {site}: ask "
                             "the centre to add it to the inventory and render the ACL "
                             "(docs/broker.md)").format(unit=u.id, site=u.site)
            if puback is None:
                return Outcome(part, False, self._(
                    "connected, but the broker did not acknowledge a publish on {topic}").format(
                    topic=topic), fix_acl)
            if v5 and int(puback.value) == NOT_AUTHORIZED:
                return Outcome(part, False, self._(
                    "connected, but the ACL refuses a publish on {topic} (not authorised)")
                    .format(topic=topic), fix_acl)
            if v5 and puback.is_failure:
                return Outcome(part, False, self._(
                    "connected, but the broker refused a publish on {topic}: {reason}").format(
                    topic=topic, reason=str(puback)), fix_acl)
            how = self._("MQTT 5: the ACL allows it") if v5 else self._(
                "MQTT 3.1.1 cannot tell whether the ACL allowed it")
            tls = self._(" over TLS") if m.tls is not None else ""
            return Outcome(part, True, self._("connected to {where}{tls}; published on "
                                              "{topic} ({how})").format(
                where=where, tls=tls, topic=topic, how=how))
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()

    # -- clock, keys, time daemon, watchdog ----------------------------------------------------

    def check_clock(self) -> Iterator[Outcome]:
        part = self._("clock")
        now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        if SystemClock().synced():
            yield Outcome(part, True, self._("synchronised ({now})").format(now=now))
        else:
            yield Outcome(part, False, self._("not synchronised ({now})").format(now=now),
                          self._("the unit must reach an NTP server ([time] ntp_servers) or "
                                 "have a GNSS receiver; chronyc sources shows what chrony "
                                 "sees"))

    def check_keys(self) -> Iterator[Outcome]:
        from .signing import public_key_from_b64

        sec = self.cfg.security
        part = self._("trusted keys")
        bad = []
        for table, keys in (("command_keys", sec.command_keys), ("ack_keys", sec.ack_keys)):
            for name, value in keys.items():
                try:
                    public_key_from_b64(value)
                except ValueError as err:
                    bad.append(f"{table}.{name}: {err}")
        fix = self._("paste the lines `xunfang keys new` printed at the centre into "
                     "[security] (docs/security.md)")
        if bad:
            yield Outcome(part, False, "; ".join(bad), fix)
        elif not sec.command_keys:
            yield Outcome(part, False, self._("no command_keys: the centre cannot command "
                                              "this unit"), fix)
        elif self.cfg.mqtt.centre_ack and not sec.ack_keys:
            yield Outcome(part, False, self._("no ack_keys but centre_ack is on: events "
                                              "would never count as delivered"), fix)
        else:
            yield Outcome(part, True, self._("{n} command key(s) ({names}), {m} ack key(s) "
                                             "load").format(
                n=len(sec.command_keys), names=", ".join(sec.command_keys),
                m=len(sec.ack_keys)))

    def _system(self, path: Path | str) -> Path:
        return self.root / str(path).lstrip("/")

    def check_chrony(self) -> Iterator[Outcome]:
        part = self._("time daemon")
        t = self.cfg.time
        snippet = self._system(CHRONY_SNIPPET)
        fix_install = self._("run the install script again (sudo ./systemd/install.sh): it "
                             "installs chrony and writes {path}").format(path="/" + str(
                             CHRONY_SNIPPET))
        if not self._system("usr/sbin/chronyd").exists():
            yield Outcome(part, False, self._("chrony is not installed"), fix_install)
            return
        try:
            installed = snippet.read_text(encoding="utf-8")
        except OSError as err:
            yield Outcome(part, False, f"{snippet}: {_err(err)}", fix_install)
            return
        if installed != render_chrony(t.ntp_servers, t.gnss_refclock, t.gnss_device):
            yield Outcome(part, False, self._("{path} does not match [time] in the config")
                          .format(path=snippet), fix_install)
            return
        servers = ", ".join(t.ntp_servers) or self._("chrony's default servers")
        gnss = self._(" and GNSS through gpsd") if t.gnss_refclock else ""
        yield Outcome(part, True, self._("chrony configured: {servers}{gnss}").format(
            servers=servers, gnss=gnss))

    def check_watchdog(self) -> Iterator[Outcome]:
        part = self._("hardware watchdog")
        fix = self._("run the install script again (sudo ./systemd/install.sh): it writes "
                     "{path}").format(path="/" + str(WATCHDOG_DROP_IN))
        seconds = runtime_watchdog(self._system("etc/systemd"))
        if not seconds or seconds in ("0", "off"):
            yield Outcome(part, False, self._("systemd does not use it (no RuntimeWatchdogSec)"),
                          fix)
            return
        devices = sorted(p.name for p in self._system("dev").glob("watchdog*"))
        if not devices:
            yield Outcome(part, False, self._("RuntimeWatchdogSec={s}, but there is no "
                                              "/dev/watchdog").format(s=seconds), self._(
                "on a Raspberry Pi the watchdog is built in: check that "
                "/boot/firmware/config.txt does not turn it off, then reboot"))
            return
        yield Outcome(part, True, self._("RuntimeWatchdogSec={s}, device {dev}").format(
            s=seconds, dev="/dev/" + devices[0]))


def runtime_watchdog(systemd_dir: Path) -> str | None:
    """``RuntimeWatchdogSec`` as systemd reads it: system.conf, then its drop-ins in order."""
    files = [systemd_dir / "system.conf",
             *sorted((systemd_dir / "system.conf.d").glob("*.conf"), key=lambda p: p.name)]
    value: str | None = None
    for path in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in path.read_text(encoding="utf-8").splitlines():
                m = re.match(r"^\s*RuntimeWatchdogSec\s*=\s*(\S*)\s*$", line)
                if m:
                    value = m.group(1)
    return value


def _err(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def run_self_test(cfg: UnitConfig, _: Translate, **options: Any) -> int:
    return SelfTest(cfg, _, **options).run()

