"""The real-broker fixtures, and the shipped Mosquitto config and ACL, against real brokers.

What the ACL must do is docs/mqtt-api.md's contract: a unit writes only its own
status/events/health, reads only its own desired/cmd/ack and its own site's
`_all`; only the centre commands and only the ledger acknowledges.

Negative deliveries ("the ledger never receives it") are proved without
sleeping: after the forbidden message the same client publishes an allowed
sentinel. Mosquitto handles one client's packets in order and delivers to a
subscriber in order, so once the sentinel is in, the forbidden message would
have been too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.brokers import (
    ACL_TEMPLATE,
    BrokerError,
    ConnectFailed,
    Mosquitto,
    MqttProbe,
    NatsServer,
    render_acl,
)

SITE = "zhuantang"
OTHER_SITE = "xihu"
UNIT = "zt-pp-03"
NEIGHBOUR = "zt-pp-04"  # same site
STRANGER = "xh-pp-01"  # other site
UNITS = {UNIT: SITE, NEIGHBOUR: SITE, STRANGER: OTHER_SITE}
NOT_AUTHORIZED = 0x87

Factory = Callable[..., Mosquitto]


def topic(unit: str, rest: str, site: str = SITE) -> str:
    return f"xunfang/v1/{site}/{unit}/{rest}"


def ok(rc: ReasonCode) -> bool:
    # Below 0x80 is success; 0x10 "no matching subscribers" included.
    return not rc.is_failure


@pytest.fixture
def acl_broker(mosquitto_factory: Factory) -> Mosquitto:
    """TLS broker with the shipped ACL template rendered for UNITS."""
    return mosquitto_factory(tls=True, acl_text=render_acl(UNITS))


def ledger_watching(broker: Mosquitto) -> MqttProbe:
    ledger = broker.probe("ledger", client_id="xunfang-ledger")
    assert all(ok(rc) for rc in ledger.subscribe("xunfang/v1/#"))
    return ledger


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reaped child is gone; an unreaped zombie would still answer kill(0).
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


# --- Fixtures ----------------------------------------------------------------


def test_plain_mosquitto_fixture_passes_a_qos1_message(mosquitto: Mosquitto) -> None:
    sub = mosquitto.probe("sub")
    sub.subscribe("a/b")
    pub = mosquitto.probe("pub")
    assert pub.publish("a/b", b"hello").value == 0
    msg = sub.expect("a/b", b"hello")
    assert msg.qos == 1
    assert mosquitto.host == "127.0.0.1"
    assert "New client connected" in mosquitto.log_text()


def test_stop_and_start_keep_the_port_and_persistence_keeps_retained(
    mosquitto_factory: Factory,
) -> None:
    broker = mosquitto_factory(persistence=True)
    port = broker.port
    broker.probe("a").publish("r/kept", b"1", retain=True)
    broker.stop()
    assert not broker.running
    with pytest.raises(ConnectFailed):
        broker.probe("while-down", timeout=1.0)
    broker.start()
    assert broker.port == port
    # SIGTERM wrote the db, so the retained message is back.
    reader = broker.probe("c")
    reader.subscribe("r/#")
    reader.expect("r/kept", b"1")

    # SIGKILL loses what came after the last save (autosave default 1800 s).
    reader.publish("r/lost", b"2", retain=True)
    broker.kill()
    broker.start()
    assert broker.port == port
    after = broker.probe("d")
    after.subscribe("r/#")
    after.publish("r/sentinel", b"s")  # not retained: arrives after any retained
    after.expect("r/sentinel")
    assert "r/kept" in after.topics()
    assert "r/lost" not in after.topics()


def test_without_persistence_a_restart_forgets_retained(mosquitto: Mosquitto) -> None:
    mosquitto.probe("a").publish("r/x", b"1", retain=True)
    mosquitto.restart()
    reader = mosquitto.probe("b")
    reader.subscribe("r/#")
    reader.publish("r/sentinel", b"s")
    reader.expect("r/sentinel")
    assert reader.topics() == ["r/sentinel"]


def test_max_queued_messages_keeps_the_oldest_and_drops_the_rest_silently(
    mosquitto_factory: Factory,
) -> None:
    broker = mosquitto_factory(max_queued_messages=5)
    away = broker.probe("ledger", clean_start=False, session_expiry_s=3600)
    away.subscribe("q/#")
    away.close()
    unit = broker.probe("unit")
    # Every publish is PUBACKed as a success, dropped or not.
    assert all(unit.publish(f"q/{i}", str(i)).value == 0 for i in range(12))
    back = broker.probe("ledger", clean_start=False, session_expiry_s=3600)
    assert back.session_present
    unit.publish("q/sentinel", b"s")
    back.expect("q/sentinel")
    assert back.topics() == [f"q/{i}" for i in range(5)] + ["q/sentinel"]


def test_stop_kill_and_close_leave_no_process(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory()
    pid = broker.pid
    assert pid is not None and alive(pid)
    assert broker.kill() == -9
    assert not alive(pid)
    broker.start()
    pid = broker.pid
    assert pid is not None
    broker.close()
    broker.close()  # safe twice
    assert not alive(pid)
    with pytest.raises(BrokerError):
        broker.start()


def test_a_broker_that_cannot_start_reports_its_log(mosquitto_factory: Factory) -> None:
    with pytest.raises(BrokerError, match="Unknown configuration variable"):
        mosquitto_factory(extra=["no_such_option 1"])


def test_password_file_broker_refuses_a_wrong_password(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory(passwords={"centre": "s3cret"})
    assert broker.probe("centre", password="s3cret").connack is not None
    with pytest.raises(ConnectFailed, match=r"Not authorized|Bad user name or password"):
        broker.probe("centre", client_id="other", password="wrong")
    with pytest.raises(ConnectFailed):
        broker.probe(None)  # anonymous


# --- TLS -----------------------------------------------------------------------


def test_tls_accepts_a_certificate_from_the_ca_and_uses_its_cn_as_username(
    mosquitto_factory: Factory,
) -> None:
    broker = mosquitto_factory(tls=True)
    unit = broker.probe(UNIT)
    assert unit.connack is not None and unit.connack.value == 0
    assert broker.wait_for_log(f"as xunfang_{UNIT} (p5, c1, k30, u'{UNIT}')")


def test_tls_refuses_a_certificate_from_another_ca(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory(tls=True)
    with pytest.raises(ConnectFailed):
        broker.probe(UNIT, wrong_ca=True)
    assert broker.wait_for_log("certificate verify failed")


def test_tls_refuses_a_client_without_a_certificate(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory(tls=True)
    with pytest.raises(ConnectFailed):
        broker.probe(UNIT, cert=False)
    assert broker.wait_for_log("peer did not return a certificate")


# --- The ACL template ----------------------------------------------------------


def test_unit_publishes_its_own_status_events_and_health(acl_broker: Mosquitto) -> None:
    ledger = ledger_watching(acl_broker)
    unit = acl_broker.probe(UNIT)
    for rest in ("status", "events/checkin", "health"):
        assert unit.publish(topic(UNIT, rest), b"{}").value == 0
        ledger.expect(topic(UNIT, rest))


def test_unit_cannot_publish_as_another_unit_mqtt5(acl_broker: Mosquitto) -> None:
    ledger = ledger_watching(acl_broker)
    unit = acl_broker.probe(UNIT)
    forged = [
        topic(NEIGHBOUR, "events/checkin"),
        topic(NEIGHBOUR, "status"),
        topic(STRANGER, "health", site=OTHER_SITE),
    ]
    for t in forged:
        assert unit.publish(t, b"forged").value == NOT_AUTHORIZED
    unit.publish(topic(UNIT, "events/sentinel"), b"s")
    ledger.expect(topic(UNIT, "events/sentinel"))
    assert not set(forged) & set(ledger.topics())


def test_unit_cannot_publish_as_another_unit_mqtt311_puback_lies(
    acl_broker: Mosquitto,
) -> None:
    ledger = ledger_watching(acl_broker)
    unit = acl_broker.probe(UNIT, protocol="3.1.1")
    forged = topic(NEIGHBOUR, "events/checkin")
    # MQTT 3.1.1 has no way to say no: the denied publish is PUBACKed ...
    assert unit.publish(forged, b"forged").value == 0
    unit.publish(topic(UNIT, "events/sentinel"), b"s")
    ledger.expect(topic(UNIT, "events/sentinel"))
    # ... and silently dropped.
    assert forged not in ledger.topics()


def test_unit_cannot_publish_under_another_sites_name_mqtt5(acl_broker: Mosquitto) -> None:
    # Each unit may write only under its own site: a unit naming another site
    # would otherwise write into that site's record (its ledger stores and acks).
    ledger = ledger_watching(acl_broker)
    unit = acl_broker.probe(UNIT)
    forged = [topic(UNIT, rest, site=OTHER_SITE) for rest in ("events/checkin", "status",
                                                               "health")]
    for t in forged:
        assert unit.publish(t, b"forged").value == NOT_AUTHORIZED, t
    unit.publish(topic(UNIT, "events/sentinel"), b"s")
    ledger.expect(topic(UNIT, "events/sentinel"))
    assert not set(forged) & set(ledger.topics())


def test_unit_cannot_publish_under_another_sites_name_mqtt311_dropped(
    acl_broker: Mosquitto,
) -> None:
    ledger = ledger_watching(acl_broker)
    unit = acl_broker.probe(UNIT, protocol="3.1.1")
    forged = topic(UNIT, "events/checkin", site=OTHER_SITE)
    assert unit.publish(forged, b"forged").value == 0  # 3.1.1 cannot say no ...
    unit.publish(topic(UNIT, "events/sentinel"), b"s")
    ledger.expect(topic(UNIT, "events/sentinel"))
    assert forged not in ledger.topics()  # ... and drops it


@pytest.mark.parametrize(
    "target",
    [
        topic(UNIT, "desired/level"),
        topic(UNIT, "cmd"),
        topic(UNIT, "ack"),
        topic("_all", "desired/cards"),
        topic("_all", "cmd"),
        topic(NEIGHBOUR, "cmd"),
        topic(UNIT, "firmware"),  # not in the contract at all
    ],
)
def test_unit_cannot_write_commands_desired_state_or_acks(
    acl_broker: Mosquitto, target: str
) -> None:
    unit = acl_broker.probe(UNIT)
    assert unit.publish(target, b"{}", retain=True).value == NOT_AUTHORIZED


def test_unit_reads_its_own_and_its_sites_topics_only(acl_broker: Mosquitto) -> None:
    unit = acl_broker.probe(UNIT)
    # Mosquitto 2.0 grants every SUBSCRIBE and filters each delivery, so the
    # SUBACKs say nothing: only what arrives does.
    for t in ("xunfang/v1/+/+/cmd", "xunfang/v1/+/+/desired/#", "xunfang/v1/+/+/ack"):
        assert all(ok(rc) for rc in unit.subscribe(t))
    centre = acl_broker.probe("centre", client_id="xunfang-centre")
    ledger = acl_broker.probe("ledger", client_id="xunfang-ledger")
    allowed = [
        topic(UNIT, "desired/level"),
        topic(UNIT, "ack"),
        topic("_all", "desired/cards"),
        topic("_all", "cmd"),
    ]
    denied = [
        topic(NEIGHBOUR, "cmd"),
        topic(NEIGHBOUR, "desired/level"),
        topic(NEIGHBOUR, "ack"),
        topic("_all", "cmd", site=OTHER_SITE),
        topic("_all", "desired/cards", site=OTHER_SITE),
        topic(UNIT, "cmd", site=OTHER_SITE),
        topic(UNIT, "desired/level", site=OTHER_SITE),
        topic(UNIT, "ack", site=OTHER_SITE),
    ]
    for t in allowed + denied:
        writer = ledger if t.endswith("/ack") else centre
        assert ok(writer.publish(t, b"{}")), t
    centre.publish(topic(UNIT, "cmd"), b"sentinel")
    unit.expect(topic(UNIT, "cmd"), b"sentinel")
    got = set(unit.topics())
    assert set(allowed) <= got
    assert not set(denied) & got


def test_unit_gets_retained_desired_state_of_its_site_on_subscribe(
    acl_broker: Mosquitto,
) -> None:
    centre = acl_broker.probe("centre", client_id="xunfang-centre")
    centre.publish(topic("_all", "desired/level"), b"site", retain=True)
    centre.publish(topic("_all", "desired/level", site=OTHER_SITE), b"other", retain=True)
    unit = acl_broker.probe(UNIT)
    unit.subscribe("xunfang/v1/+/_all/desired/#")
    unit.subscribe(topic(UNIT, "cmd"))
    centre.publish(topic(UNIT, "cmd"), b"sentinel")
    unit.expect(topic(UNIT, "cmd"))
    assert [m.payload for m in unit.messages] == [b"site", b"sentinel"]


def test_only_the_centre_commands_and_only_the_ledger_acknowledges(
    acl_broker: Mosquitto,
) -> None:
    centre = acl_broker.probe("centre", client_id="xunfang-centre")
    ledger = acl_broker.probe("ledger", client_id="xunfang-ledger")
    assert ok(centre.publish(topic(UNIT, "cmd")))
    assert ok(centre.publish(topic("_all", "desired/level"), retain=True))
    assert centre.publish(topic(UNIT, "ack")).value == NOT_AUTHORIZED
    assert centre.publish(topic(UNIT, "events/checkin")).value == NOT_AUTHORIZED
    assert ok(ledger.publish(topic(UNIT, "ack"), retain=True))
    assert ledger.publish(topic(UNIT, "cmd")).value == NOT_AUTHORIZED
    assert ledger.publish(topic("_all", "desired/level")).value == NOT_AUTHORIZED


def test_a_unit_missing_from_the_inventory_may_do_nothing(mosquitto_factory: Factory) -> None:
    # Rights come only from the inventory: a certificate the CA issued for a
    # unit that is not (or no longer) listed may neither write nor read.
    broker = mosquitto_factory(tls=True, acl_text=render_acl({NEIGHBOUR: SITE}))
    ledger = ledger_watching(broker)
    unit = broker.probe(UNIT)
    unit.subscribe("xunfang/v1/#")
    for rest in ("status", "events/checkin", "health"):
        assert unit.publish(topic(UNIT, rest), b"{}").value == NOT_AUTHORIZED, rest
    centre = broker.probe("centre", client_id="xunfang-centre")
    centre.publish(topic(UNIT, "cmd"))
    centre.publish(topic("_all", "cmd"))
    neighbour = broker.probe(NEIGHBOUR)
    neighbour.subscribe(topic(NEIGHBOUR, "cmd"))
    centre.publish(topic(NEIGHBOUR, "cmd"), b"sentinel")
    neighbour.expect(topic(NEIGHBOUR, "cmd"), b"sentinel")
    neighbour.publish(topic(NEIGHBOUR, "events/sentinel"), b"s")
    ledger.expect(topic(NEIGHBOUR, "events/sentinel"))
    assert unit.topics() == []
    assert not [t for t in ledger.topics() if f"/{UNIT}/" in t]


def test_the_bare_template_gives_units_nothing(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory(tls=True, acl_file=ACL_TEMPLATE)
    unit = broker.probe(UNIT)
    unit.subscribe("xunfang/v1/#")
    assert unit.publish(topic(UNIT, "health")).value == NOT_AUTHORIZED
    centre = broker.probe("centre", client_id="xunfang-centre")
    centre.publish(topic("_all", "cmd"))
    centre.publish(topic(UNIT, "cmd"))
    # The centre's own rights still work: it reads back what it wrote.
    centre.subscribe(topic(UNIT, "desired/#"))
    centre.publish(topic(UNIT, "desired/level"), b"sentinel")
    centre.expect(topic(UNIT, "desired/level"), b"sentinel")
    assert unit.topics() == []


def test_a_unit_taken_out_of_the_inventory_is_refused_after_a_reload(
    mosquitto_factory: Factory,
) -> None:
    broker = mosquitto_factory(shipped_config=True, acl_text=render_acl(UNITS))
    unit = broker.probe(UNIT)
    assert ok(unit.publish(topic(UNIT, "health")))
    assert broker.acl_path is not None
    broker.acl_path.write_text(render_acl({NEIGHBOUR: SITE, STRANGER: OTHER_SITE}))
    broker.reload()
    # The connection stays up; what it may do follows the new file at once.
    assert unit.publish(topic(UNIT, "health")).value == NOT_AUTHORIZED
    assert ok(broker.probe(NEIGHBOUR).publish(topic(NEIGHBOUR, "health")))


@pytest.mark.parametrize(
    ("units", "error"),
    [
        ({"centre": SITE}, "reserved"),
        ({"ledger": SITE}, "reserved"),
        ({"Bad.Unit": SITE}, "does not match"),
        ({UNIT: "a site"}, "does not match"),
        ({"_all": SITE}, "does not match"),
    ],
)
def test_render_acl_refuses_unusable_unit_ids(units: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        render_acl(units)


def test_shipped_config_runs_and_enforces_tls_and_the_acl(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory(shipped_config=True, acl_text=render_acl(UNITS))
    assert "max_queued_messages 200000" in broker.conf_path.read_text()
    with pytest.raises(ConnectFailed):
        broker.probe(UNIT, wrong_ca=True)
    ledger = ledger_watching(broker)
    unit = broker.probe(UNIT)
    assert unit.publish(topic(NEIGHBOUR, "events/checkin")).value == NOT_AUTHORIZED
    assert unit.publish(topic(UNIT, "events/checkin")).value == 0
    ledger.expect(topic(UNIT, "events/checkin"))


# --- NATS ------------------------------------------------------------------------


def test_nats_mqtt_gateway_passes_a_qos1_message_over_3_1_1(nats_mqtt: NatsServer) -> None:
    sub = nats_mqtt.probe("ledger", clean_start=False)
    assert [rc.value for rc in sub.subscribe(topic(UNIT, "events/#"))] == [1]
    pub = nats_mqtt.probe(UNIT)
    assert pub.publish(topic(UNIT, "events/checkin"), b"{}").value == 0
    assert sub.expect(topic(UNIT, "events/checkin")).qos == 1


def unsubscribe_answered(probe: MqttProbe, topic_filter: str) -> bool:
    """Whether the broker answers an UNSUBSCRIBE (UNSUBACK) within a few seconds."""
    answered = threading.Event()
    probe.client.on_unsubscribe = lambda *_args: answered.set()
    probe.client.unsubscribe(topic_filter)
    return answered.wait(5)


# The uplink asks a quiet broker for an answer by unsubscribing from its own status
# topic, which it never subscribes to (firmware_py/uplink.py, _LinkWatch): every broker
# the unit supports must answer that, whatever its ACL allows.
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_uplinks_link_probe_is_answered_under_the_shipped_acl(
        acl_broker: Mosquitto, protocol: str) -> None:
    unit = acl_broker.probe(UNIT, protocol=protocol)
    assert unsubscribe_answered(unit, topic(UNIT, "status"))


def test_the_uplinks_link_probe_is_answered_by_the_nats_mqtt_gateway(
        nats_mqtt: NatsServer) -> None:
    unit = nats_mqtt.probe(UNIT)
    assert unsubscribe_answered(unit, topic(UNIT, "status"))


def test_nats_refuses_mqtt5(nats_mqtt: NatsServer) -> None:
    with pytest.raises(ConnectFailed, match="Unsupported protocol version"):
        nats_mqtt.probe(UNIT, protocol="5")


def test_nats_restart_keeps_the_port_and_the_session(nats_mqtt: NatsServer) -> None:
    port = nats_mqtt.port
    sub = nats_mqtt.probe("ledger", clean_start=False)
    sub.subscribe(topic(UNIT, "events/#"))
    sub.close()
    nats_mqtt.kill()
    nats_mqtt.start()
    assert nats_mqtt.port == port
    nats_mqtt.probe(UNIT).publish(topic(UNIT, "events/checkin"), b"{}")
    # JetStream keeps the session on disk, so even a SIGKILL loses nothing.
    back = nats_mqtt.probe("ledger", clean_start=False)
    assert back.session_present
    back.expect(topic(UNIT, "events/checkin"))


def test_a_revoked_unit_certificate_is_refused_after_a_reload(
    mosquitto_factory: Factory,
) -> None:
    broker = mosquitto_factory(shipped_config=True, acl_text=render_acl(UNITS), crl=True)
    connected = broker.probe(UNIT)
    broker.revoke(UNIT)
    with pytest.raises(ConnectFailed):
        broker.probe(UNIT, client_id="stolen-pi")
    broker.probe(NEIGHBOUR)  # everyone else still gets in
    # A connection made before the revocation stays up: the CRL is checked
    # only in the TLS handshake (docs/broker.md: restart to cut it off).
    assert ok(connected.publish(topic(UNIT, "health")))
    broker.restart()
    with pytest.raises(ConnectFailed):
        broker.probe(UNIT, client_id="stolen-pi-again")


def test_taking_another_units_client_id_leaks_none_of_its_messages(
    acl_broker: Mosquitto,
) -> None:
    # Mosquitto 2.0 cannot bind client ids to usernames (short of
    # use_username_as_clientid), so a unit can take over another's session;
    # the ACL is checked per delivery against the *username*, so it gets
    # none of the victim's messages (docs/broker.md).
    victim = acl_broker.probe(NEIGHBOUR, clean_start=False, session_expiry_s=3600)
    victim.subscribe(topic(NEIGHBOUR, "cmd"))
    victim.close()
    centre = acl_broker.probe("centre", client_id="xunfang-centre")
    centre.publish(topic(NEIGHBOUR, "cmd"), b"queued for the victim")
    thief = acl_broker.probe(
        UNIT, client_id=f"xunfang_{NEIGHBOUR}", clean_start=False, session_expiry_s=3600
    )
    assert thief.session_present
    thief.subscribe(topic(UNIT, "cmd"))
    centre.publish(topic(UNIT, "cmd"), b"sentinel")
    thief.expect(topic(UNIT, "cmd"))
    assert thief.topics() == [topic(UNIT, "cmd")]


def _squat(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_port_taken_before_the_first_start_is_replaced(mosquitto_factory: Factory) -> None:
    broker = mosquitto_factory(start=False)
    taken = broker.port
    with _squat(taken):
        broker.start()
        assert broker.port != taken
        assert broker.probe("a").connack is not None


def test_a_port_taken_before_a_restart_is_an_error_not_a_hang(
    mosquitto_factory: Factory,
) -> None:
    broker = mosquitto_factory()
    broker.stop()
    # The squatter accepts connections, yet the broker is not ready: start()
    # must not mistake one for the other.
    with _squat(broker.port), pytest.raises(BrokerError, match="Address already in use"):
        broker.start(timeout=5.0)
    assert not broker.running


def test_render_acl_script_reads_an_inventory_as_installers_write_it(tmp_path: Path) -> None:
    inventory = tmp_path / "units.txt"
    inventory.write_text(
        "# unit      site\n"
        f"{UNIT}   {SITE}\n"
        f"{NEIGHBOUR},{SITE}   # kiosk\n"
        "\n"
        f"{STRANGER}\t{OTHER_SITE}\n"
    )
    out = tmp_path / "xunfang.acl"
    script = ACL_TEMPLATE.parent / "render-acl.py"
    done = subprocess.run(
        [sys.executable, str(script), "--units", str(inventory), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text == render_acl(UNITS)
    own = f"xunfang/v1/{OTHER_SITE}/{STRANGER}"
    assert (
        f"user {STRANGER}\n"
        f"topic write {own}/status\n"
        f"topic write {own}/events/#\n"
        f"topic write {own}/health\n"
        f"topic read {own}/desired/#\n"
        f"topic read {own}/cmd\n"
        f"topic read {own}/ack\n"
        f"topic read xunfang/v1/{OTHER_SITE}/_all/desired/#\n"
        f"topic read xunfang/v1/{OTHER_SITE}/_all/cmd\n"
    ) in text
    # No rule lets a unit name a site other than its own.
    assert not [line for line in text.splitlines() if line.startswith("pattern")]

    inventory.write_text(f"{UNIT} {SITE}\n{UNIT} {OTHER_SITE}\n")
    done = subprocess.run(
        [sys.executable, str(script), "--units", str(inventory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "units.txt:2" in done.stderr and "listed for sites" in done.stderr
