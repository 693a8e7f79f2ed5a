"""The network between the uplink and the broker fails (invariant 2): nothing is lost, and
a dead link is noticed within a bound of the keepalive.

Partition: the uplink daemon runs in a network namespace of its own, joined to the host
by a veth pair on a private /30 that only this test uses; the broker listens on the host
end. The link is cut (``ip link set down``) and restored while patrol members tap.

Loss, delay and a silent blackhole: an asyncio TCP proxy (``tests/support/faults.py``)
between the uplink and the broker.

Each run reports the time the uplink took to notice the dead link and the time the
broker took to publish its Last Will; the goal is 1.5x the keepalive (``keepalive_s``),
asserted with a generous bound for a busy machine. Short: one cut; long
(XUNFANG_LONG=1): ten cuts and longer outages.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.brokers import Mosquitto
from tests.support.faults import Proxy, Scale, Site, TapStream, check_green_in_ledger
from tests.support.uplink import Watcher, wait_until

Factory = Callable[..., Mosquitto]
KEEPALIVE_S = 5  # the smallest the config takes: the shortest honest run
# The uplink's goal is 1.5x the keepalive; 2 s on top for a busy machine.
UNIT_NOTICE_BOUND_S = 1.5 * KEEPALIVE_S + 2
# The broker's Last Will: 1.5x the keepalive after the unit's last packet, and Mosquitto
# checks keepalives only every few seconds; generous.
NOTICE_BOUND_S = 3 * KEEPALIVE_S + 5
# Repeated faults minutes apart would grow the reconnect backoff to its 120 s default cap;
# a lower cap keeps the runs short without changing what they prove.
MQTT = {"reconnect_max_s": 8}


def ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, f"ip {' '.join(args)}: {out.stderr.strip()}"


def _free_slash30() -> tuple[str, str]:
    """Two addresses of a /30 in 10.213.0.0/16 that no interface of the host uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                          timeout=20).stdout
    start = (os.getpid() * 4) % 65536
    for i in range(0, 65536, 4):
        n = (start + i) % 65536
        base = f"10.213.{n // 256}.{n % 256}"
        host, unit = f"10.213.{n // 256}.{n % 256 + 1}", f"10.213.{n // 256}.{n % 256 + 2}"
        if f" {base}/" not in used and f" {host}/" not in used and f" {unit}/" not in used:
            return host, unit
    raise AssertionError("no free /30 in 10.213.0.0/16")


class NetnsLink:
    """A network namespace for the uplink, and the veth pair that is its only link."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns, self.host_if, self.unit_if = f"xf-up-{tag}", f"xfh{tag}", f"xfu{tag}"
        self.host_addr, self.unit_addr = _free_slash30()

    def create(self) -> None:
        ip("netns", "add", self.ns)
        ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.unit_if)
        ip("link", "set", self.unit_if, "netns", self.ns)
        ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        ip("-n", self.ns, "addr", "add", f"{self.unit_addr}/30", "dev", self.unit_if)
        ip("-n", self.ns, "link", "set", "lo", "up")
        ip("-n", self.ns, "link", "set", self.unit_if, "up")
        ip("link", "set", self.host_if, "up")
        # An address is usable once duplicate address detection and the link are done.
        wait_until(lambda: "UP" in subprocess.run(
            ["ip", "-br", "link", "show", self.host_if], capture_output=True, text=True,
            timeout=10).stdout.split()[1:2], 10, "the veth link up")

    def down(self) -> None:
        ip("link", "set", self.host_if, "down")

    def up(self) -> None:
        ip("link", "set", self.host_if, "up")

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def remove(self) -> None:
        # Deleting one end of a veth deletes both; the namespace goes last.
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=20)


@pytest.fixture
def netns_link() -> Iterator[NetnsLink]:
    link = NetnsLink()
    try:
        link.create()
        yield link
    finally:
        link.remove()


def losses(site: Site) -> int:
    return site.daemons["uplink"].text().count("lost the connection")


def connects(site: Site) -> int:
    return site.daemons["uplink"].text().count("connected to ")


def timed_notice(site: Site, watcher: Watcher, cut: Callable[[], None]) -> tuple[float, float]:
    """Cut the link; the seconds until the uplink logs the loss and until the broker
    publishes the unit's Last Will (offline status)."""
    lost_before = losses(site)
    offline_before = len(offline_statuses(watcher))
    t0 = time.monotonic()
    cut()
    unit_s = broker_s = None
    deadline = t0 + NOTICE_BOUND_S + 10
    while (unit_s is None or broker_s is None) and time.monotonic() < deadline:
        now = time.monotonic() - t0
        if unit_s is None and losses(site) > lost_before:
            unit_s = now
        if broker_s is None and len(offline_statuses(watcher)) > offline_before:
            broker_s = now
        time.sleep(0.05)
    assert unit_s is not None, f"the uplink never noticed the dead link\n{site.logs()}"
    assert broker_s is not None, "the broker never published the Last Will"
    return unit_s, broker_s


def offline_statuses(watcher: Watcher) -> list[object]:
    return [s for s in watcher.on("status") if s.doc.get("online") is False]


def wait_delivering(site: Site, more: int, timeout: float = 60) -> None:
    target = site.ledger_prefix() + more
    wait_until(lambda: site.ledger_prefix() >= target, timeout,
               f"the ledger to reach seq {target}")


def test_partition_in_a_network_namespace_loses_nothing_and_is_noticed(
        mosquitto_factory: Factory, netns_link: NetnsLink, tmp_path: Path,
        scale: Scale) -> None:
    broker = mosquitto_factory(host=netns_link.host_addr, persistence=True)
    site = Site(tmp_path, broker, camera=False, keepalive_s=KEEPALIVE_S,
                uplink_prefix=netns_link.prefix(), mqtt=MQTT)
    taps = TapStream(site)
    watcher = Watcher(broker.probe(None, client_id="watch"))
    notices: list[tuple[float, float]] = []
    try:
        site.start()
        taps.start()
        wait_delivering(site, 10)
        for _ in range(scale.pick(1, 10)):
            offline_before = len(taps.green)
            notices.append(timed_notice(site, watcher, netns_link.down))
            # Taps go on being recorded while the unit is cut off.
            wait_until(lambda b=offline_before: len(taps.green) >= b + 5, 30,
                       "green taps while cut off")
            reconnected = connects(site)
            netns_link.up()
            wait_until(lambda c=reconnected: connects(site) > c, 60,
                       "the uplink back after the link returned")
            wait_delivering(site, 5)
        taps.finish()
        site.wait_all_delivered(60)
        check_green_in_ledger(site, taps.green)
    except BaseException:
        print(site.logs())
        raise
    finally:
        if taps.is_alive():
            taps.halt.set()
            taps.join(10)
        watcher.probe.close()
        site.close()
    unit_worst = max(u for u, _ in notices)
    broker_worst = max(b for _, b in notices)
    print(f"keepalive {KEEPALIVE_S} s; link cut {len(notices)}x: uplink noticed in "
          f"{[round(u, 1) for u, _ in notices]} s (worst {unit_worst:.1f} s = "
          f"{unit_worst / KEEPALIVE_S:.2f}x), broker's Last Will after "
          f"{[round(b, 1) for _, b in notices]} s; green taps {len(taps.green)}")
    assert unit_worst <= UNIT_NOTICE_BOUND_S
    assert broker_worst <= NOTICE_BOUND_S


@pytest.fixture
def proxy(mosquitto: Mosquitto) -> Iterator[Proxy]:
    relay = Proxy(mosquitto.host, mosquitto.port)
    try:
        yield relay
    finally:
        relay.close()


def test_delay_loss_and_a_blackhole_lose_nothing(
        mosquitto: Mosquitto, proxy: Proxy, tmp_path: Path, scale: Scale) -> None:
    site = Site(tmp_path, mosquitto, camera=False, keepalive_s=KEEPALIVE_S,
                unit_host=proxy.host, unit_port=proxy.port, mqtt=MQTT)
    taps = TapStream(site)
    watcher = Watcher(mosquitto.probe(None, client_id="watch"))
    notices: list[tuple[float, float]] = []
    try:
        site.start()
        taps.start()
        wait_delivering(site, 10)
        for _ in range(scale.pick(1, 5)):
            proxy.set("delay", delay_s=0.4)
            wait_delivering(site, 5)
            proxy.set("loss", loss=0.05)
            # Each loss ends a connection; the unit reconnects through the proxy.
            wait_until(lambda c=proxy.connections: proxy.connections > c, 60,
                       "a connection lost to the proxy's loss")
            proxy.set("pass")
            wait_delivering(site, 5)
            notices.append(timed_notice(site, watcher, lambda: proxy.set("blackhole")))
            proxy.cut()  # the broker's side of the silent connection goes too
            proxy.set("pass")
            wait_delivering(site, 5)
        taps.finish()
        site.wait_all_delivered(60)
        check_green_in_ledger(site, taps.green)
    except BaseException:
        print(site.logs())
        raise
    finally:
        if taps.is_alive():
            taps.halt.set()
            taps.join(10)
        with contextlib.suppress(Exception):
            watcher.probe.close()
        site.close()
    unit_worst = max(u for u, _ in notices)
    print(f"keepalive {KEEPALIVE_S} s; blackhole {len(notices)}x: uplink noticed in "
          f"{[round(u, 1) for u, _ in notices]} s (worst {unit_worst / KEEPALIVE_S:.2f}x); "
          f"broker's Last Will after {[round(b, 1) for _, b in notices]} s; proxy "
          f"connections {proxy.connections}; green taps {len(taps.green)}")
    assert unit_worst <= UNIT_NOTICE_BOUND_S
    assert all(b <= NOTICE_BOUND_S for _, b in notices)
