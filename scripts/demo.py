"""The demo: a patrol point with no hardware, end to end, narrated.

Started by ``./scripts/demo.sh`` (which sets up .venv first). It runs, each as
its own process as in the field:

- a private Mosquitto on a free loopback port (the centre's broker);
- the centre's ledger, which stores every event once and signs the acks;
- the unit, ``xunfang run -c unit.toml``, from ``config/demo.toml`` with this
  demo's broker port and freshly made keys;

and prints the unit's journal as it grows, with the centre's acknowledgement
catching up. Then it plays what the field does to a unit (see SCENARIO) and
keeps running until Ctrl-C, or for ``--seconds``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware_py.cli import format_event  # noqa: E402
from firmware_py.journal import Journal  # noqa: E402
from firmware_py.signing import SigningKey, save_signing_key  # noqa: E402
from tests.support.brokers import Mosquitto  # noqa: E402

XUNFANG = str(Path(sys.executable).with_name("xunfang"))


def say(text: str) -> None:
    print(f"\n\033[1m-- {text}\033[0m" if sys.stdout.isatty() else f"\n-- {text}", flush=True)


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.logs = workdir / "logs"
        self.broker: Mosquitto | None = None
        self.unit: subprocess.Popen[bytes] | None = None
        self.ledger: subprocess.Popen[bytes] | None = None
        self.config = workdir / "unit.toml"
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
        self.config.write_text(text, encoding="utf-8")
        check = subprocess.run([XUNFANG, "config", "check", "-c", str(self.config)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"demo config is invalid:\n{check.stderr}")
        print(f"  broker  mosquitto on 127.0.0.1:{self.broker.port} (this demo's own)")
        print(f"  centre  ledger for site demo, keys in {keys}")
        print(f"  unit    demo-pp-01, config {self.config}")
        print(f"  logs    {self.logs}/")

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    def start_ledger(self) -> None:
        assert self.broker is not None
        self.ledger = self._spawn("ledger", [
            XUNFANG, "ledger", "--broker", f"127.0.0.1:{self.broker.port}", "--site", "demo",
            "--db", str(self.dir / "ledger.db"), "--key", str(self.dir / "keys" / "ledger.key"),
        ])

    def start_unit(self) -> None:
        self.unit = self._spawn("unit", [XUNFANG, "run", "-c", str(self.config)])

    def stop_unit(self) -> None:
        if self.unit is not None and self.unit.poll() is None:
            self.unit.send_signal(signal.SIGTERM)
            self.unit.wait(timeout=30)

    # -- the journal, as it grows -------------------------------------------------------------

    def follow_journal(self) -> None:
        path = self.dir / "data" / "journal.db"
        while not path.exists() and not self.stop.is_set():
            time.sleep(0.1)
        if self.stop.is_set():
            return
        journal = Journal(path, unit="demo-pp-01", site="demo")
        after, acked = 0, 0
        try:
            while not self.stop.is_set():
                for event in journal.events_after(after):
                    print("  " + format_event(event), flush=True)
                    after = event.seq
                now_acked = journal.acked_seq()
                if now_acked > acked:
                    acked = now_acked
                    print(f"  {'':8}✓ centre acknowledged up to #{acked} "
                          f"({journal.pending_count()} pending)", flush=True)
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
            (6, "network outage: the broker goes away for 10 s", broker.stop),
            (3, "the unit restarts while offline: its events wait in the journal",
             self.restart_unit),
            (7, "the broker is back: the backlog reaches the centre, in order, once",
             broker.start),
        ]

    def restart_unit(self) -> None:
        self.stop_unit()
        self.start_unit()

    def run(self, seconds: float) -> int:
        say("xunfang demo: a patrol point with no hardware")
        self.prepare()
        self.start_ledger()
        self.start_unit()
        say("journal of demo-pp-01 (each line is on disk before anything else happens)")
        follower = threading.Thread(target=self.follow_journal, daemon=True)
        follower.start()
        started = time.monotonic()
        for delay, text, action in self.scenario():
            if self.wait(delay):
                break
            say(text)
            action()
        remaining = (seconds - (time.monotonic() - started)) if seconds else None
        if remaining is None:
            say("the unit keeps running; Ctrl-C stops the demo")
            self.stop.wait()
        elif remaining > 0:
            self.wait(remaining)
        return 0

    def close(self) -> None:
        self.stop.set()
        self.stop_unit()
        for proc in (self.ledger,):
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
    args = parser.parse_args()
    demo = Demo(args.dir.resolve())
    signal.signal(signal.SIGTERM, lambda *_: demo.stop.set())
    try:
        return demo.run(args.seconds)
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping: unit (clean stop), ledger, broker")
        demo.close()
        print(f"  the demo's files stay in {demo.dir} (journal: data/journal.db)")


if __name__ == "__main__":
    sys.exit(main())
