"""Uplink backlog drain through Mosquitto to the ledger, next to raw paho QoS 1 publishing.

    .venv/bin/python bench/uplink.py [--events 10000] [--inflight 20] [--rounds 2]

A unit that was offline comes back with a backlog. This measures how fast the
uplink drains one of ``--events`` events from its journal through a Mosquitto
on loopback to the centre's ledger (``xunfang ledger`` in its own process,
storing with fsync and acknowledging), against raw paho publishing the same
payloads at QoS 1 with the same in-flight window in the same run, to the same
broker and ledger. Each side drains its own journal (its own unit id), so the
ledger does the same work for both.

Figures per round, best round kept:

- ``puback``: from the connection until the broker PUBACKed the last event;
- ``end-to-end``: until the ledger's signed ack covers the last event.

Goal: uplink throughput at least 0.8 of raw paho's (PUBACK and end to end).
Prints figures, asserts none.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_py import topics
from firmware_py.clock import SystemClock
from firmware_py.journal import Journal
from firmware_py.runtime import UnitContext
from firmware_py.signing import SigningKey, save_signing_key
from firmware_py.uplink import UplinkComponent
from tests.support.brokers import Mosquitto
from tests.support.units import make_config

SITE = "zhuantang"
DATA = {"card": "14008EC793", "reader": "main", "decision": "accepted", "badge": "P-017",
        "role": "patrol", "visit": "v-20261128-0042"}
XUNFANG = Path(sys.executable).parent / "xunfang"


@dataclass
class Result:
    puback_s: float
    e2e_s: float
    cpu_s: float = 0.0  # this process's CPU time until the last PUBACK


class AckWatch:
    """Follows the ledger's retained acks on every unit's ack topic."""

    def __init__(self, port: int) -> None:
        self._cond = threading.Condition()
        self.acked: dict[str, int] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-acks",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"xunfang/v1/{SITE}/+/ack", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
            unit = msg.topic.split("/")[3]
            with self._cond:
                self.acked[unit] = max(self.acked.get(unit, 0), int(doc["args"]["seq"]))
                self._cond.notify_all()
        except (ValueError, KeyError, TypeError):
            pass

    def wait(self, unit: str, seq: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.acked.get(unit, 0) >= seq, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fill(path: Path, unit: str, n: int) -> Journal:
    journal = Journal(path, unit=unit, site=SITE)
    # One transaction per event would take longer than the drain; the bench only
    # needs the backlog, so the appends go without the per-event fsync.
    journal._db.execute("PRAGMA synchronous=OFF")
    for _ in range(n):
        journal.append("checkin", DATA)
    journal._db.execute("PRAGMA synchronous=FULL")
    return journal


def raw_round(port: int, journal: Journal, inflight: int, acks: AckWatch) -> Result:
    """paho's own in-flight window (max_inflight_messages) and its network thread."""
    n = journal.last_seq()
    payloads = []
    after = 0
    while after < n:
        batch = journal.events_after(after, limit=1000)
        for e in batch:
            payloads.append((topics.event(SITE, journal.unit, e.kind),
                             json.dumps(e.envelope(), ensure_ascii=False,
                                        separators=(",", ":")).encode()))
        after = batch[-1].seq
    done = threading.Event()
    count = 0

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"xunfang_{journal.unit}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    connected.wait(10)
    start = time.perf_counter()
    cpu0 = time.process_time()
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
    done.wait(300)
    puback = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    acks.wait(journal.unit, n, 300)
    e2e = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return Result(puback, e2e, cpu)


def uplink_round(port: int, journal: Journal, inflight: int, data_dir: Path,
                 ack_key: SigningKey, acks: AckWatch) -> Result:
    n = journal.last_seq()
    cfg = make_config(data_dir, unit={"id": journal.unit},
                      mqtt={"port": port, "inflight": inflight},
                      security={"ack_keys": {ack_key.name: ack_key.public_b64()}})
    up = UplinkComponent(UnitContext(cfg, journal, SystemClock(), threading.Event()))
    cpu0 = time.process_time()
    up.start()
    while up.connects == 0:
        time.sleep(0.01)  # coarse: a busy poll would steal the GIL from the uplink
    start = up._connected_at
    while up._puback_high < n:
        time.sleep(0.01)  # coarse: a busy poll would steal the GIL from the uplink
    puback = time.monotonic() - start
    cpu = time.process_time() - cpu0
    acks.wait(journal.unit, n, 300)
    e2e = time.monotonic() - start
    up.request_stop()
    up.join(10)
    return Result(puback, e2e, cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--inflight", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xunfang-bench-uplink-", dir="/var/tmp"))
    key = SigningKey.generate("ledger-bench")
    save_signing_key(key, work / "ledger.key")
    broker = Mosquitto(workdir=work / "broker", max_queued_messages=1_000_000)
    broker.start()
    ledger = subprocess.Popen(
        [str(XUNFANG), "ledger", "--broker", f"127.0.0.1:{broker.port}", "--site", SITE,
         "--db", str(work / "ledger.db"), "--key", str(work / "ledger.key")],
        stdout=subprocess.DEVNULL, stderr=(work / "ledger.log").open("wb"))
    acks = AckWatch(broker.port)
    try:
        if not broker.wait_for_log("xunfang_ledger_zhuantang 1", 10):
            print("ledger did not subscribe:", (work / "ledger.log").read_text()[-2000:])
            return 1
        print(f"{args.events} events, in-flight window {args.inflight}, Mosquitto "
              f"{broker.port} on loopback, ledger in its own process; work dir {work}")
        raws: list[Result] = []
        ups: list[Result] = []
        for r in range(args.rounds):
            raw_j = fill(work / f"raw{r}" / "journal.db", f"bench-raw-{r}", args.events)
            up_j = fill(work / f"up{r}" / "journal.db", f"bench-up-{r}", args.events)
            runs = (("raw paho", partial(raw_round, broker.port, raw_j, args.inflight, acks)),
                    ("uplink", partial(uplink_round, broker.port, up_j, args.inflight,
                                       work / f"up{r}", key, acks)))
            for label, run in runs:
                res = run()
                (raws if label == "raw paho" else ups).append(res)
                print(f"round {r + 1} {label:<9} puback {res.puback_s:6.2f} s "
                      f"({args.events / res.puback_s:7.0f} ev/s)   end-to-end "
                      f"{res.e2e_s:6.2f} s ({args.events / res.e2e_s:7.0f} ev/s)   "
                      f"CPU {res.cpu_s:5.2f} s")
            raw_j.close()
            up_j.close()
        raw_p, raw_e = min(x.puback_s for x in raws), min(x.e2e_s for x in raws)
        up_p, up_e = min(x.puback_s for x in ups), min(x.e2e_s for x in ups)
        print(f"best: raw paho {args.events / raw_p:.0f} ev/s PUBACKed, "
              f"{args.events / raw_e:.0f} ev/s end to end; uplink {args.events / up_p:.0f} ev/s "
              f"PUBACKed, {args.events / up_e:.0f} ev/s end to end")
        print(f"ratio uplink/raw: PUBACK {raw_p / up_p:.2f}, end to end {raw_e / up_e:.2f} "
              "(goal >= 0.8)")
        raw_c = statistics.median(x.cpu_s for x in raws)
        up_c = statistics.median(x.cpu_s for x in ups)
        print(f"CPU per event in this process (median): raw paho {raw_c / args.events * 1e6:.0f} "
              f"us, uplink {up_c / args.events * 1e6:.0f} us (the uplink also reads and "
              "encodes from the journal; raw paho's payloads were encoded before the clock "
              "started). Wall-clock ratios move with other load on the machine: "
              f"load average now {os.getloadavg()[0]:.2f}")
    finally:
        acks.close()
        ledger.terminate()
        ledger.wait(15)
        broker.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
