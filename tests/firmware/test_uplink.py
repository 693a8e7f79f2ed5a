"""The uplink against a real Mosquitto: status, events, the in-flight window, acks, health.

Each test runs a real :class:`UplinkComponent` in its own thread against a
broker from the fixtures, and watches the wire with a subscriber whose every
message is validated against ``docs/schemas``. Acks are signed here the way
the ledger signs them (the end-to-end runs with the real ledger are in
``tests/integration/test_delivery.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import firmware_py.uplink as uplink_mod
from firmware_py import __version__, topics
from firmware_py.journal import Event, EventRow, Journal
from firmware_py.journal import _json as stored_json
from firmware_py.signing import SigningKey
from firmware_py.statusfile import STATUS_NAME, write_status
from firmware_py.uplink import BrokerState, EnvelopeEncoder
from tests.support.brokers import Mosquitto
from tests.support.faults import Proxy
from tests.support.pki import make_pki
from tests.support.schemas import validate
from tests.support.uplink import (
    ACK_KEY_NAME,
    COMMAND_KEY_NAME,
    SITE,
    UNIT,
    Gate,
    SilentServer,
    UnitRig,
    Watcher,
    wait_until,
)

Factory = Callable[..., Mosquitto]


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Callable[..., UnitRig]]:
    """``make(port, **sections)`` → a UnitRig; every rig is stopped and closed afterwards."""
    made: list[UnitRig] = []

    def make(port: int, data_dir: Path | None = None, **sections: object) -> UnitRig:
        rig = UnitRig(data_dir or tmp_path / f"unit{len(made)}", port, dict(sections))
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


def watch(broker: Mosquitto, name: str = "watch") -> Watcher:
    return Watcher(broker.probe(None, client_id=name))


# -- status: birth, will, death ---------------------------------------------------------------


def test_birth_is_retained_and_names_the_journal_position(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port)
    rig.append(3)
    rig.journal.mark_acked(2)
    early = watch(mosquitto, "early")
    rig.start()
    rig.wait_connected()
    # Once the broker has passed the birth on, it holds it retained: a subscriber that
    # comes later gets it from the retained store, not live.
    early.wait_status(online=True)
    late = watch(mosquitto, "late")
    birth = late.wait_status(online=True)
    assert birth.retain
    doc = birth.doc
    assert doc["unit"] == UNIT and doc["site"] == SITE and doc["kind"] == "patrol_point"
    assert doc["version"] == __version__
    assert doc["boot_id"] and doc["level"] == 3 and doc["cards_version"] is None
    assert doc["journal"] == rig.journal_id and doc["acked_seq"] == 2
    assert doc["centre_ack"] is True
    # The names of its command keys, never its ack keys: the centre checks its key first.
    assert doc["trusted_keys"] == [COMMAND_KEY_NAME]


def test_birth_reports_level_and_card_list_from_the_journal_state(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port)
    rig.journal.state_set("level", {"level": 1, "expires_at": None})
    rig.journal.state_set("cards", {"version": 7, "cards": []})
    w = watch(mosquitto)
    rig.start()
    doc = w.wait_status(online=True).doc
    assert doc["level"] == 1 and doc["cards_version"] == 7


def test_status_is_published_again_when_its_state_changes_and_only_then(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port, mqtt={"health_interval_s": 5})
    rig.journal.state_set("cards", {"version": 1, "cards": []})
    early = watch(mosquitto, "early")
    rig.start()
    assert early.wait_status(online=True).doc["cards_version"] == 1
    centre = mosquitto.probe(None, client_id="centre")

    def apply(name: str, args: dict[str, object]) -> None:
        env = rig.command_key.sign_envelope(name, args, site=SITE, units=["*"], ttl_s=3600)
        assert not centre.publish(topics.desired(SITE, topics.ALL_UNITS, name),
                                  json.dumps(env), retain=True).is_failure

    apply("cards", {"version": 9, "cards": [{"card": "14008EC793", "badge": "PO-1",
                                             "role": "police"}]})
    wait_until(lambda: [s for s in early.on("status") if s.doc.get("cards_version") == 9],
               15, "a status with cards_version 9")
    late = watch(mosquitto, "late")
    retained = wait_until(lambda: [s.doc for s in late.on("status") if s.retain], 10,
                          "the retained status")[-1]
    assert retained["online"] is True and retained["cards_version"] == 9
    assert retained["level"] == 3

    apply("level", {"level": 1})
    wait_until(lambda: [s for s in early.on("status") if s.doc.get("level") == 1], 15,
               "a status with level 1")
    # Once per change: while the state stands, the status checks (every second) publish
    # nothing; a health report 5 s on proves that several ran.
    statuses, healths = len(early.on("status")), len(early.on("health"))
    wait_until(lambda: len(early.on("health")) > healths, 15, "the next health report")
    assert len(early.on("status")) == statuses
    assert [s.doc["cards_version"] for s in early.on("status")] == [1, 9, 9]
    assert [s.doc["level"] for s in early.on("status")] == [3, 3, 1]


def test_clean_stop_replaces_the_birth_with_a_retained_death(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port)
    w = watch(mosquitto)
    rig.start()
    w.wait_status(online=True)
    rig.stop()
    death = w.wait_status(online=False)
    assert death.doc == {"online": False, "unit": UNIT, "site": SITE,
                         "trusted_keys": [COMMAND_KEY_NAME], "lights": {}}
    late = watch(mosquitto, "late")
    retained = late.wait_status(online=False)
    assert retained.retain and late.on("status")[0].doc["online"] is False


def test_a_dropped_connection_fires_the_will_and_the_unit_comes_back(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    gate = Gate(mosquitto.port)
    try:
        rig = rigs(gate.port)
        w = watch(mosquitto)
        rig.start()
        rig.wait_connected()
        rig.append(10)
        w.wait_seq(10)
        # The centre holds 1..4; 5..10 were only PUBACKed by the broker.
        w.probe.publish(rig.ack_topic, rig.ack(4), retain=True)
        wait_until(lambda: rig.journal.acked_seq() == 4, 5, "ack 4 applied")
        births = len(w.on("status"))
        gate.cut()
        # The broker saw the connection drop without DISCONNECT: the Will goes out.
        will = w.wait_status(online=False, after=births - 1)
        assert will.doc == {"online": False, "unit": UNIT, "site": SITE,
                            "trusted_keys": [COMMAND_KEY_NAME], "lights": {}}
        w.wait_status(online=True, after=births)
        # After the reconnect: from the first unacknowledged event, marked resent.
        resent = w.wait_events(lambda evs: sum(1 for e in evs if e.get("resent")) >= 6, 10,
                               "events 5..10 re-sent")
        again = [e["seq"] for e in resent if e.get("resent")]
        assert again == [5, 6, 7, 8, 9, 10]
        assert rig.uplink is not None and rig.uplink.connects == 2
        health = rig.uplink.health_report()
        assert health["broker"]["reconnects"] == 1
    finally:
        gate.close()


KEEPALIVE_S = 5  # the smallest the config takes
# The goal is 1.5x the keepalive; the 2 s on top are for a busy machine. paho alone
# needs twice the keepalive after the last packet from the broker.
DEAD_LINK_BOUND_S = 1.5 * KEEPALIVE_S + 2


@pytest.fixture
def relay(mosquitto: Mosquitto) -> Iterator[Proxy]:
    proxy = Proxy(mosquitto.host, mosquitto.port)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_silent_dead_link_is_noticed_within_one_and_a_half_keepalives(
        mosquitto: Mosquitto, relay: Proxy, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(relay.port, mqtt={"keepalive_s": KEEPALIVE_S})
    w = watch(mosquitto)
    up = rig.start()
    rig.wait_connected()
    rig.append(1)
    # The PUBACK just came: the broker was last heard from now, the worst case for paho.
    wait_until(lambda: up.pubacks >= 1, 10, "the PUBACK of event 1")
    relay.set("blackhole")
    cut = time.monotonic()
    rig.append(3, start=1)  # recorded while the link is silently dead
    wait_until(lambda: up.state is BrokerState.DISCONNECTED, 4 * KEEPALIVE_S,
               "the uplink to notice the dead link")
    noticed = time.monotonic() - cut
    print(f"keepalive {KEEPALIVE_S} s: a blackholed link noticed after {noticed:.1f} s")
    assert noticed < DEAD_LINK_BOUND_S, f"noticed after {noticed:.1f} s"
    assert "the link is dead" in (up.last_error or "")
    # Nothing is lost: the reconnect sends what the dead link swallowed.
    relay.set("pass")
    relay.cut()  # a reconnect made through the blackhole waits for a CONNACK: end it
    w.wait_seq(4, timeout=30)
    assert {e["seq"] for e in w.events()} >= {1, 2, 3, 4}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_quiet_healthy_link_is_kept(mosquitto: Mosquitto, rigs: Callable[..., UnitRig],
                                      protocol: str) -> None:
    rig = rigs(mosquitto.port, mqtt={"keepalive_s": KEEPALIVE_S, "protocol": protocol})
    up = rig.start()
    rig.wait_connected()
    # Nothing to send for three keepalives: the broker's answers to the uplink's own
    # probes keep the link alive, on both protocol versions.
    quiet_until = time.monotonic() + 3 * KEEPALIVE_S
    while time.monotonic() < quiet_until:
        assert up.state is BrokerState.CONNECTED, up.last_error
        time.sleep(0.1)
    assert up.connects == 1, up.last_error


# -- events --------------------------------------------------------------------------------------


def test_events_go_out_in_sequence_order_as_compact_envelopes(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port)
    w = watch(mosquitto)
    rig.append(20)
    rig.start()
    rig.wait_connected()
    rig.journal.append("reader", {"reader": "main", "state": "online", "detail": ""})
    rig.append(19, start=20)
    events = w.wait_seq(40)
    assert [e["seq"] for e in events] == list(range(1, 41))
    for seen in w.on("events"):
        doc = seen.doc
        assert seen.topic == topics.event(SITE, UNIT, doc["kind"])
        assert doc["id"] == f"{UNIT}:{rig.journal_id}:{doc['seq']}"
        assert "resent" not in doc
        # Compact UTF-8 JSON, exactly the journal's envelope.
        stored = rig.journal.event(doc["seq"])
        assert stored is not None
        assert seen.raw == json.dumps(stored.envelope(), ensure_ascii=False,
                                      separators=(",", ":")).encode()
    assert events[20]["kind"] == "reader"


@pytest.mark.parametrize(("inflight", "broker_max", "window"), [(5, None, 5), (10, 3, 3)],
                         ids=["config-window", "broker-receive-maximum"])
def test_the_inflight_window_is_never_exceeded(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig], inflight: int,
        broker_max: int | None, window: int) -> None:
    broker = mosquitto_factory(max_inflight_messages=broker_max)
    with Gate(broker.port) as gate:
        rig = rigs(gate.port, mqtt={"inflight": inflight})
        w = watch(broker)
        up = rig.start()
        rig.wait_connected()
        wait_until(lambda: gate.publishes >= 2 and gate.outstanding == 0, 5,
                   "birth and health PUBACKed")
        gate.hold()
        rig.append(40)
        wait_until(lambda: gate.outstanding == window, 5, f"{window} events in flight")
        # Held PUBACKs: the unit must not send more however long it waits.
        assert not wait_until_or_false(lambda: gate.outstanding > window, 0.3)
        gate.release()
        w.wait_seq(40)
        assert gate.max_outstanding == window
        assert up.window == window


def wait_until_or_false(predicate: Callable[[], bool], timeout: float) -> bool:
    try:
        wait_until(predicate, timeout, "")
    except AssertionError:
        return False
    return True


# -- acknowledgement ---------------------------------------------------------------------------


@pytest.fixture
def acked_unit(mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> tuple[UnitRig, Watcher]:
    """A connected unit with 12 events, the first 5 acknowledged by the 'ledger'."""
    rig = rigs(mosquitto.port)
    w = watch(mosquitto, "ledger")
    rig.append(12)
    rig.start()
    rig.wait_connected()
    w.wait_seq(12)
    assert not w.probe.publish(rig.ack_topic, rig.ack(5), retain=True).is_failure
    wait_until(lambda: rig.journal.acked_seq() == 5, 5, "ack 5 applied")
    return rig, w


def test_a_valid_ack_advances_the_journal_and_lets_pruning_remove_only_acked_events(
        acked_unit: tuple[UnitRig, Watcher]) -> None:
    rig, w = acked_unit
    up = rig.uplink
    assert up is not None
    w.probe.publish(rig.ack_topic, rig.ack(9), retain=True)
    wait_until(lambda: rig.journal.acked_seq() == 9, 5, "ack 9 applied")
    assert up.acks_accepted == 2 and up.acks_rejected == 0
    assert rig.journal.prune(max_age_s=0) == 9
    assert rig.journal.first_seq() == 10 and rig.journal.pending_count() == 3


def _forged(rig: UnitRig) -> bytes:
    return rig.ack(11, key=SigningKey.generate(ACK_KEY_NAME))


def _command_key(rig: UnitRig) -> bytes:
    return rig.ack(11, key=rig.command_key)


def _tampered(rig: UnitRig) -> bytes:
    doc = json.loads(rig.ack(6))
    doc["args"]["seq"] = 11
    return json.dumps(doc).encode()


def _unsigned(rig: UnitRig) -> bytes:
    doc = json.loads(rig.ack(11))
    del doc["sig"]
    return json.dumps(doc).encode()


def _seq_as(value: object) -> Callable[[UnitRig], bytes]:
    def make(rig: UnitRig) -> bytes:
        env = rig.ack_key.sign_envelope("ack", {"journal": rig.journal_id, "seq": value},
                                        site=SITE, units=[UNIT], ttl_s=3600)
        return json.dumps(env).encode()
    return make


BAD_ACKS: dict[str, tuple[Callable[[UnitRig], bytes], str]] = {
    "forged": (_forged, "bad_signature"),
    "signed-with-a-command-key": (_command_key, "unknown_key"),
    "tampered-after-signing": (_tampered, "bad_signature"),
    "unsigned": (_unsigned, "missing_signature"),
    "other-journal": (lambda r: r.ack(11, journal="0123456789abcdef"), "other_journal"),
    "beyond-last-seq": (lambda r: r.ack(13), "beyond_last_seq"),
    "other-site": (lambda r: r.ack(11, site="xihu"), "wrong_target"),
    "other-unit": (lambda r: r.ack(11, units=["zt-pp-04"]), "wrong_target"),
    "not-an-ack": (lambda r: r.ack(11, name="level"), "not_ack"),
    "seq-as-string": (_seq_as("11"), "malformed"),
    "seq-as-bool": (_seq_as(True), "malformed"),
    "not-json": (lambda r: b"{ack: 11", "malformed"),
    "not-utf8": (lambda r: b"\xff\xfe\x00ack", "malformed"),
    "json-array": (lambda r: b"[11]", "malformed"),
    "deep-nesting": (lambda r: b"[" * 100_000 + b"]" * 100_000, "malformed"),
    "oversized": (lambda r: b'{"pad": "' + b"x" * (300 * 1024) + b'"}', "oversized"),
}


@pytest.mark.parametrize("case", list(BAD_ACKS))
def test_a_bad_ack_changes_nothing_and_is_counted(
        acked_unit: tuple[UnitRig, Watcher], case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    rig, w = acked_unit
    up = rig.uplink
    assert up is not None
    make, reason = BAD_ACKS[case]
    caplog.set_level(logging.WARNING, logger="xunfang.uplink")
    w.probe.publish(rig.ack_topic, make(rig), retain=True)
    wait_until(lambda: up.acks_rejected == 1, 5, "the ack to be rejected")
    assert up.last_ack_rejection == reason
    # Logged right after it is counted, on the uplink's thread.
    wait_until(lambda: any(reason in r.getMessage() for r in caplog.records), 5,
               f"a log line naming {reason}")
    assert rig.journal.acked_seq() == 5
    assert rig.journal.prune(max_age_s=0) == 5  # only what was acknowledged before
    assert rig.journal.first_seq() == 6
    # Counted in the health report; and the uplink goes on: a good ack still works.
    assert up.health_report()["acks_rejected"] == 1
    w.probe.publish(rig.ack_topic, rig.ack(12), retain=True)
    wait_until(lambda: rig.journal.acked_seq() == 12, 5, "a later good ack")
    assert up.is_alive() and up.failures == 0


def test_a_lower_ack_is_ignored_not_rejected(acked_unit: tuple[UnitRig, Watcher]) -> None:
    # docs/mqtt-api.md: "an ack below the current one is ignored". A retained ack and
    # the older ones queued in the session arrive again after every reconnect;
    # counting them as rejected would raise a false alarm at the centre.
    rig, w = acked_unit
    up = rig.uplink
    assert up is not None
    stale = up.acks_stale
    w.probe.publish(rig.ack_topic, rig.ack(3), retain=True)
    wait_until(lambda: up.acks_stale == stale + 1, 5, "the lower ack to be seen")
    assert rig.journal.acked_seq() == 5 and up.acks_rejected == 0
    assert rig.journal.prune(max_age_s=0) == 5


def test_an_empty_retained_ack_is_a_cleared_topic(acked_unit: tuple[UnitRig, Watcher]) -> None:
    rig, w = acked_unit
    up = rig.uplink
    assert up is not None
    w.probe.publish(rig.ack_topic, b"", retain=True)
    w.probe.publish(rig.ack_topic, rig.ack(7), retain=True)
    wait_until(lambda: rig.journal.acked_seq() == 7, 5, "ack 7")
    assert up.acks_rejected == 0 and up.messages_bad == 0


def test_rejected_acks_are_still_counted_after_a_restart(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig], tmp_path: Path) -> None:
    rig = rigs(mosquitto.port)
    w = watch(mosquitto, "ledger")
    rig.append(3)
    up = rig.start()
    rig.wait_connected()
    for _ in range(2):
        w.probe.publish(rig.ack_topic, _forged(rig), retain=True)
    wait_until(lambda: up.acks_rejected == 2, 5, "two rejections")
    rig.stop()
    # The retained forged ack is delivered again on the next connect: a third rejection.
    up = rig.start()
    rig.wait_connected()
    wait_until(lambda: up.acks_rejected == 3, 5, "the count carried over plus one")
    assert up.health_report()["acks_rejected"] == 3


def test_with_centre_ack_off_the_puback_prefix_is_the_ack(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port, mqtt={"centre_ack": False})
    w = watch(mosquitto)
    rig.append(30)
    up = rig.start()
    wait_until(lambda: rig.journal.acked_seq() == 30, 10, "the PUBACKs to acknowledge all")
    health = w.on("health")[-1].doc if w.on("health") else up.health_report()
    assert health["centre_ack"] is False
    assert w.wait_status(online=True).doc["centre_ack"] is False
    assert up.acks_accepted == 0


def test_unacknowledged_events_are_resent_one_window_at_a_time_beside_new_ones(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    # resend_after_s has a floor of 5 s in the config: this test takes about that long.
    rig = rigs(mosquitto.port, mqtt={"inflight": 4, "resend_after_s": 5})
    w = watch(mosquitto, "ledger")
    rig.append(10)
    up = rig.start()
    w.wait_seq(10)
    # No ack comes: after resend_after_s one window (1..4) goes again, marked resent.
    w.wait_events(lambda evs: sum(1 for e in evs if e.get("resent")) >= 4, 10,
                  "the first resend window")
    assert [e["seq"] for e in w.events() if e.get("resent")] == [1, 2, 3, 4]
    assert up.resends == 1
    # New events go out at once, first time, whatever the ack does.
    rig.append(2, start=10)
    w.wait_seq(12)
    assert [e["seq"] for e in w.events() if e["seq"] > 10] == [11, 12]
    assert not any(e.get("resent") for e in w.events() if e["seq"] > 10)
    assert [e["seq"] for e in w.events() if e.get("resent")] == [1, 2, 3, 4]
    # The ledger acknowledges the window: the rest follows without another wait.
    w.probe.publish(rig.ack_topic, rig.ack(4), retain=True)
    w.wait_events(lambda evs: [e["seq"] for e in evs if e.get("resent")][-1:] == [12], 5,
                  "the rest re-sent")
    assert [e["seq"] for e in w.events() if e.get("resent")] == list(range(1, 13))
    w.probe.publish(rig.ack_topic, rig.ack(12), retain=True)
    wait_until(lambda: rig.journal.acked_seq() == 12, 5, "ack 12")
    assert up.resends == 1


def test_a_restarted_uplink_marks_what_an_earlier_one_sent_as_resent(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port)
    w = watch(mosquitto)
    rig.append(6)
    rig.start()
    w.wait_seq(6)
    rig.stop()
    assert rig.journal.cursor(uplink_mod.SENT_CURSOR) >= 6
    rig.start()
    rig.append(1)
    events = w.wait_events(lambda evs: any(e["seq"] == 7 for e in evs), 10, "event 7")
    second = events[6:]
    assert [e["seq"] for e in second] == [1, 2, 3, 4, 5, 6, 7]
    assert all(e.get("resent") for e in second[:6]) and "resent" not in second[6]


# -- health ------------------------------------------------------------------------------


def test_health_reports_the_unit_and_its_devices_and_repeats(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(
        mosquitto.port, mqtt={"health_interval_s": 5},
        readers=[{"name": "main", "driver": "sim", "port": "loop://"}],
        lights={"warning": {"pins": [17]}, "lightbox": {"pins": [27]}},
        cameras=[{"name": "gate", "source": "/dev/video0"}],
    )
    rig.journal.state_set("device/readers/main", {"state": "online", "since": "x"})
    rig.journal.state_set("device/lights/warning", {"state": "strobe"})
    rig.journal.state_set("level", {"level": 2})
    rig.append(4)
    w = watch(mosquitto)
    rig.start()
    first = wait_until(lambda: w.on("health"), 5, "health after connect")[0]
    doc = first.doc
    assert doc["level"] == 2 and doc["centre_ack"] is True
    assert doc["pending"] == rig.journal.last_seq() - rig.journal.acked_seq() == 4
    assert doc["oldest_pending_s"] is not None and doc["oldest_pending_s"] >= 0
    assert isinstance(doc["disk_free_mb"], float) and doc["disk_free_mb"] > 0
    assert doc["acks_rejected"] == 0 and isinstance(doc["clock_synced"], bool)
    temp = Path("/sys/class/thermal/thermal_zone0/temp")
    assert (doc["cpu_temp_c"] is None) == (not temp.exists())
    assert doc["broker"]["state"] == "connected" and doc["broker"]["reconnects"] == 0
    assert doc["journal"]["id"] == rig.journal_id and doc["journal"]["last_seq"] == 4
    assert doc["journal"]["bytes"] > 0
    assert doc["readers"] == {"main": {"state": "online", "since": "x"}}
    assert doc["lights"] == {"warning": {"state": "strobe"}, "lightbox": {"state": "unknown"}}
    assert doc["cameras"] == {"gate": {"state": "unknown"}}
    # Retained, and repeated every health_interval_s with what changed meanwhile.
    late = watch(mosquitto, "late")
    assert wait_until(lambda: late.on("health"), 5, "the retained health")[0].retain
    w.probe.publish(rig.ack_topic, rig.ack(4), retain=True)
    second = wait_until(lambda: w.on("health")[1:], 8, "the next health report")[0]
    assert second.doc["ts"] > doc["ts"] and second.doc["pending"] == 0
    assert second.doc["oldest_pending_s"] is None


def test_a_failing_journal_reaches_the_centre_through_health_by_the_status_file(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    # Invariant 1: the station could not record a tap; the centre must hear of it.
    rig = rigs(mosquitto.port, mqtt={"health_interval_s": 5},
               lights={"warning": {"pins": [17]}})
    runtime_dir = rig.config.unit.runtime_dir
    runtime_dir.mkdir(parents=True, exist_ok=True)
    write_status(runtime_dir / STATUS_NAME, {
        "journal": {"state": "failing", "last_error": "database or disk is full",
                    "since": "2026-11-28T03:00:00.000Z", "failures": 3},
        "unrecorded": [{"card": "14008EC793"}, {"card": "0000000457"}],
        "ts": "2026-11-28T03:00:05.000Z", "stopped": False,
    })
    rig.journal.state_set("device/lights/warning", {"state": "strobe"})
    w = watch(mosquitto)
    up = rig.start()
    doc = wait_until(lambda: w.on("health"), 5, "health after connect")[0].doc
    assert doc["station"]["journal"]["state"] == "failing"
    assert doc["station"]["journal"]["last_error"] == "database or disk is full"
    assert doc["station"]["unrecorded_taps"] == 2
    birth = wait_until(lambda: [s for s in w.on("status") if s.doc.get("online")], 5,
                       "the birth")[0].doc
    assert birth["lights"] == {"warning": "strobe"}
    # When the uplink cannot read the journal either, health still goes out.
    fallback = up.health_without_journal("disk I/O error")
    validate("health", fallback)
    assert fallback["journal"]["error"] == "disk I/O error"
    assert fallback["station"]["unrecorded_taps"] == 2


def test_health_is_not_journaled_and_accepted_acks_are_not_either(
        acked_unit: tuple[UnitRig, Watcher]) -> None:
    rig, _ = acked_unit
    assert {e.kind for e in rig.journal.events_after(0, limit=100)} == {"alarm"}


# -- connecting ----------------------------------------------------------------------------


def test_password_from_the_file_and_a_wrong_one_is_retried_not_fatal(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig], tmp_path: Path) -> None:
    broker = mosquitto_factory(passwords={UNIT: "s3cret", "watcher": "w"})
    pw = tmp_path / "mqtt.pw"
    pw.write_text("wrong\n")
    rig = rigs(broker.port, mqtt={"username": UNIT, "password_file": str(pw)})
    rig.append(3)
    up = rig.start()
    wait_until(lambda: up._failures >= 2 and up.last_error and "refused" in up.last_error, 10,
               "the broker to refuse the wrong password, twice")
    assert up.is_alive() and up.state.value != "connected"
    pw.write_text("s3cret\n")  # trailing newline, as editors write it
    w = Watcher(broker.probe("watcher", password="w", client_id="watch"))
    rig.wait_connected()
    w.wait_seq(3)


def test_a_broker_down_at_start_is_retried_until_it_comes(
        mosquitto_factory: Factory, rigs: Callable[..., UnitRig]) -> None:
    broker = mosquitto_factory(start=False)
    rig = rigs(broker.port)
    rig.append(5)
    up = rig.start()
    wait_until(lambda: up._failures >= 3, 10, "three refused attempts")
    assert up.state.value != "connected" and "refused" in (up.last_error or "").lower()
    broker.start()
    w = watch(broker)
    rig.wait_connected()
    w.wait_seq(5)


def test_a_broker_that_never_answers_is_given_up_and_the_loop_keeps_beating(
        rigs: Callable[..., UnitRig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uplink_mod, "CONNACK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(uplink_mod, "CONNECT_TIMEOUT_S", 0.5)
    silent = SilentServer()
    try:
        plain = rigs(silent.port)
        ca = make_pki(tmp_path / "pki").ca_cert
        tls = rigs(silent.port, mqtt={"tls": {"ca": str(ca)}})
        ups = [plain.start(), tls.start()]
        worst = 0.0

        def retried() -> bool:
            nonlocal worst
            worst = max(worst, *(u.beat_age for u in ups))
            return all(u._failures >= 2 for u in ups)

        wait_until(retried, 10, "both to give up twice")
        assert "no CONNACK" in (ups[0].last_error or "")
        assert "timed out" in (ups[1].last_error or "").lower()
        # The handshake blocks a helper thread, never the component's loop.
        assert worst < 1.5, worst
    finally:
        silent.close()


@pytest.mark.parametrize("tls", [False, True], ids=["awaiting-connack", "in-tls-handshake"])
def test_stop_while_connecting_returns_promptly(
        rigs: Callable[..., UnitRig], tmp_path: Path, tls: bool) -> None:
    silent = SilentServer()
    try:
        extra: dict[str, object] = {}
        if tls:
                extra = {"tls": {"ca": str(make_pki(tmp_path / "pki").ca_cert)}}
        rig = rigs(silent.port, mqtt=extra)
        up = rig.start()
        wait_until(lambda: silent.accepted, 5, "a connection attempt")
        up.request_stop()
        assert up.join(3), "the uplink did not stop while connecting"
        rig.uplink = None
    finally:
        silent.close()


def test_a_connect_that_hangs_past_its_deadline_is_abandoned_and_retried(
        rigs: Callable[..., UnitRig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The helper thread blocks in a TLS handshake nobody answers; the component gives
    # up on it (its socket is closed when the thread returns) and tries again.
    monkeypatch.setattr(uplink_mod, "CONNECT_TIMEOUT_S", 3.0)
    monkeypatch.setattr(uplink_mod, "ATTEMPT_DEADLINE_S", 0.3)
    silent = SilentServer()
    try:
        ca = make_pki(tmp_path / "pki").ca_cert
        rig = rigs(silent.port, mqtt={"tls": {"ca": str(ca)}})
        up = rig.start()
        wait_until(lambda: up._failures >= 2 and len(silent.accepted) >= 2, 5,
                   "two abandoned attempts")
        assert "still connecting" in (up.last_error or "")
        assert up.beat_age < 1.5 and up.is_alive()
    finally:
        silent.close()


def test_pruning_runs_on_its_own_and_keeps_unacknowledged_events(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uplink_mod, "FIRST_PRUNE_S", 1.0)
    # retention of ~0.1 s: every acknowledged event is old enough at once.
    rig = rigs(mosquitto.port, journal={"retention_days": 1e-6, "prune_every_s": 10})
    rig.append(20)
    probe = mosquitto.probe(None, client_id="ledger")
    probe.publish(rig.ack_topic, rig.ack(10), retain=True)  # waiting, retained
    up = rig.start()
    wait_until(lambda: rig.journal.first_seq() == 11, 15, "acknowledged events pruned")
    assert rig.journal.count() == 10 and up.is_alive()


# -- the envelope on the wire ----------------------------------------------------------------

_json_leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
              | st.floats(allow_nan=False, allow_infinity=False) | st.text())
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(1, 2**53),
    kind=st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"),
    ts_ms=st.integers(0, 2**42),
    boot_id=st.text(max_size=40),
    mono=st.floats(0, 1e9) | st.integers(0, 10**6),
    synced=st.booleans(),
    data=st.dictionaries(st.text(max_size=10), _json, max_size=6),
    resent=st.booleans(),
)
def test_the_fast_envelope_encoding_is_byte_for_byte_the_reference(
        seq: int, kind: str, ts_ms: int, boot_id: str, mono: float, synced: bool,
        data: dict[str, object], resent: bool) -> None:
    event = Event(seq, kind, UNIT, SITE, "0123456789abcdef", ts_ms, boot_id, mono, synced,
                  data)
    encoder = EnvelopeEncoder(check_every=10**9)  # no self-check: compare here instead
    reference = json.dumps(event.envelope(resent=resent), ensure_ascii=False,
                           separators=(",", ":")).encode()
    assert encoder.encode(event, resent) == reference
    assert not encoder.fallback


def test_the_fast_envelope_encoder_falls_back_when_the_envelope_changes(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    event = Event(1, "alarm", UNIT, SITE, "0123456789abcdef", 1_795_000_000_123, "b", 1.5,
                  True, {"source": "panic", "state": "active"})
    original = Event.envelope

    def grown(self: Event, resent: bool = False) -> dict[str, object]:
        return {**original(self, resent), "new_field": 1}

    monkeypatch.setattr(Event, "envelope", grown)
    encoder = EnvelopeEncoder(check_every=1000)
    assert json.loads(encoder.encode(event, False))["new_field"] == 1  # the first is checked
    assert encoder.fallback and "differs" in caplog.text
    assert json.loads(encoder.encode(event, True))["new_field"] == 1


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(1, 2**53),
    kind=st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"),
    unit=st.text(max_size=12),
    site=st.text(max_size=12),
    ts_ms=st.integers(0, 2**42),
    boot_id=st.text(max_size=40),
    mono=st.floats(0, 1e9) | st.integers(0, 10**6),
    synced=st.integers(0, 1),
    data=st.dictionaries(st.text(max_size=10), _json | st.floats(), max_size=6),
    resent=st.booleans(),
)
def test_a_journal_row_encodes_byte_for_byte_as_its_event(
        seq: int, kind: str, unit: str, site: str, ts_ms: int, boot_id: str, mono: float,
        synced: int, data: dict[str, object], resent: bool) -> None:
    # data_json as the journal stores it; the reference is what the uplink published
    # before rows: the Event that events_after() makes of the same row.
    row = EventRow(seq, kind, unit, site, ts_ms, boot_id, float(mono), synced,
                   stored_json(data))
    event = row.to_event("0123456789abcdef")
    encoder = EnvelopeEncoder(check_every=10**9)  # no self-check: compare here instead
    reference = json.dumps(event.envelope(resent=resent), ensure_ascii=False,
                           separators=(",", ":")).encode()
    assert encoder.encode_row(row, "0123456789abcdef", resent) == reference
    assert encoder.encode(event, resent) == reference
    assert not encoder.fallback


def test_rows_read_from_a_journal_encode_as_the_events_read_from_it(tmp_path: Path) -> None:
    awkward: list[dict[str, object]] = [
        {"z": 1, "a": {"y": [1.5, -0.0, 1e300, 2**70], "b": None}, "é": "ü\u2028\x7f"},
        {"quote": '"\\/\n\t\x00', "nan": float("nan"), "inf": float("-inf"), "": True},
        {"10": "ten", "9": "nine", "emoji": "\U0001f600", "nested": [{"b": 1, "a": 2}]},
        {},
    ]
    with Journal(tmp_path / "journal.db", unit='zt"pp\\03', site="zhuàntang") as j:
        for data in awkward * 3:
            j.append("checkin", data)
        rows = j.event_rows_after(0, limit=100)
        events = j.events_after(0, limit=100)
        assert [r.to_event(j.journal_id) for r in rows] == events
        fast, reference = EnvelopeEncoder(check_every=1), EnvelopeEncoder(check_every=10**9)
        for row, event in zip(rows, events, strict=True):
            for resent in (False, True):
                assert fast.encode_row(row, j.journal_id, resent) == \
                    reference.encode(event, resent)
        assert not fast.fallback  # every one of them was checked against the reference


def test_a_row_whose_data_is_not_as_the_journal_writes_it_makes_the_encoder_fall_back(
        caplog: pytest.LogCaptureFixture) -> None:
    # Spaces and unsorted keys: valid JSON, but not byte for byte what the encoder
    # would write; the periodic check must notice and switch to the reference.
    row = EventRow(1, "alarm", UNIT, SITE, 1_795_000_000_123, "b", 1.5, 1,
                   '{"state": "active", "source": "panic"}')
    encoder = EnvelopeEncoder(check_every=1000)
    first = encoder.encode_row(row, "0123456789abcdef", False)  # the first is checked
    assert encoder.fallback and "differs" in caplog.text
    expected = json.dumps(row.to_event("0123456789abcdef").envelope(), ensure_ascii=False,
                          separators=(",", ":")).encode()
    assert first == expected
    assert encoder.encode_row(row, "0123456789abcdef", False) == expected


def test_the_row_encoder_falls_back_when_the_envelope_changes(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    row = EventRow(1, "alarm", UNIT, SITE, 1_795_000_000_123, "b", 1.5, 1,
                   '{"source":"panic","state":"active"}')
    original = Event.envelope

    def grown(self: Event, resent: bool = False) -> dict[str, object]:
        return {**original(self, resent), "new_field": 1}

    monkeypatch.setattr(Event, "envelope", grown)
    encoder = EnvelopeEncoder(check_every=1000)
    assert json.loads(encoder.encode_row(row, "0123456789abcdef", False))["new_field"] == 1
    assert encoder.fallback and "differs" in caplog.text
    assert json.loads(encoder.encode_row(row, "0123456789abcdef", True))["new_field"] == 1


def test_corking_is_harmless_where_it_does_not_apply() -> None:
    # The uplink corks its socket around a burst of publishes; a socket that is not
    # TCP, or none at all, must simply be left alone.
    a, b = socket.socketpair()
    with a, b:
        uplink_mod._set_cork(a, True)
        uplink_mod._set_cork(a, False)
        a.sendall(b"x")
        assert b.recv(1) == b"x"
    uplink_mod._set_cork(None, True)



def test_a_rebuilt_journal_is_announced_and_published_on_the_same_connection(
        mosquitto: Mosquitto, rigs: Callable[..., UnitRig]) -> None:
    rig = rigs(mosquitto.port)
    w = watch(mosquitto)
    for i in range(1, 1201):
        rig.journal.append("alarm", {"source": "test", "state": "active", "mark": f"M{i:06d}",
                                     "pad": "x" * 150})
    up = rig.start()
    rig.wait_connected()
    # The broker took them all (a watcher busy validating may fall past Mosquitto's 1,000
    # queued messages and miss some: the broker's PUBACKs are the proof here).
    wait_until(lambda: up.pubacks >= 1200, 30, "PUBACKs for all 1200 events")
    w.probe.publish(rig.ack_topic, rig.ack(400), retain=True)
    wait_until(lambda: rig.journal.acked_seq() == 400, 10, "ack 400 applied")
    old = rig.journal_id
    rig.journal.checkpoint()
    path = rig.config.journal_path
    raw = path.read_bytes()
    page = raw.index(b"M000800") // 4096
    lost = {int(m) for m in re.findall(rb"M(\d{6})", raw[page * 4096:(page + 1) * 4096])}
    with open(path, "r+b") as f:      # a rotten page among the unacknowledged events
        f.seek(page * 4096)
        f.write(os.urandom(4096))
    statuses = len(w.on("status"))
    # Another process (the station, say) reads across the page and rebuilds the journal.
    with Journal(path, unit=UNIT, site=SITE) as other:
        other.events_after(0, limit=5000)
        new = other.journal_id
    assert new != old
    birth = wait_until(lambda: next((s for s in w.on("status")[statuses:]
                                     if s.doc.get("journal") == new), None), 10,
                       "the birth of the new journal")
    assert birth.doc["online"] is True and birth.doc["acked_seq"] == 400
    assert all(s.doc["online"] for s in w.on("status")[statuses:]), "the connection stayed up"
    copies = w.wait_events(lambda evs: any(e["journal"] == new and e["kind"] == "unit"
                                           for e in evs), 20, "the new journal on the wire")
    published = {e["seq"]: e for e in copies if e["journal"] == new}
    assert {s for s, e in published.items() if e["kind"] == "alarm"} == \
        set(range(401, 1201)) - lost
    assert published[401]["data"]["salvaged_from"] == f"{UNIT}:{old}:401"
    assert published[401]["id"] == f"{UNIT}:{new}:401"
    # The retained ack of the old journal, seen again: stale, not a forgery.
    w.probe.publish(rig.ack_topic, rig.ack(400, journal=old), retain=True)
    wait_until(lambda: up.acks_stale >= 1, 10, "the old journal's ack counted stale")
    assert up.acks_rejected == 0
    w.probe.publish(rig.ack_topic, rig.ack(1201, journal=new), retain=True)
    wait_until(lambda: rig.journal.acked_seq() == 1201, 10, "the new journal acknowledged")
