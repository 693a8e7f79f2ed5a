"""``xunfang send`` and ``xunfang watch`` against a real Mosquitto and real units.

The units are real :class:`UplinkComponent` threads (``tests/support/uplink.py``)
with their own journals, which verify and apply what ``send`` publishes with
:class:`CommandProcessor`; ``send`` runs through the CLI exactly as an
operator types it. A :class:`Watcher` on ``xunfang/#`` validates every
message on the wire against ``docs/schemas`` at the end of each test.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from center.session import BrokerOptions, CentreSession, SessionError
from center.terminal import clean
from center.watch import describe, watch
from firmware_py import desired, topics
from firmware_py.cli import main
from firmware_py.clock import SystemClock
from firmware_py.desired import InboxReader
from firmware_py.journal import Event
from firmware_py.signing import SigningKey, save_signing_key
from tests.support.brokers import Mosquitto, free_port, render_acl
from tests.support.uplink import SITE, UnitRig, Watcher, wait_until

UNITS = ("zt-pp-03", "zt-pp-04")
REPO = Path(__file__).resolve().parents[2]
CLOCK = SystemClock()
DEVICES: dict[str, Any] = {
    "lights": {"warning": {"pins": [17, 27]}, "lightbox": {"pins": [22]}},
    "cameras": [{"name": "front", "source": "front.mp4"}],
}


@pytest.fixture
def centre_key(tmp_path: Path) -> tuple[SigningKey, Path]:
    key = SigningKey.generate("centre-test")
    path = tmp_path / "centre.key"
    save_signing_key(key, path)
    return key, path


@pytest.fixture
def units(tmp_path: Path, centre_key: tuple[SigningKey, Path]
          ) -> Iterator[Callable[..., UnitRig]]:
    """``make(port, unit_id, key=None, **sections)``: a unit trusting the centre's key."""
    made: list[UnitRig] = []

    def make(port: int, unit: str = UNITS[0], key: SigningKey | None = None,
             **sections: Any) -> UnitRig:
        rig = UnitRig(tmp_path / unit, port,
                      {"unit": {"id": unit}, **DEVICES, **sections},
                      command_key=key or centre_key[0])
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def wire(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto.probe(None, client_id="wire"))
    yield w
    w.seen()  # every message of the test, validated against the schemas
    w.probe.close()


def run_send(capsys: pytest.CaptureFixture[str], broker: Mosquitto, key: Path,
             *args: str, wait: float = 10.0) -> tuple[int, str]:
    code = main(["send", *args, "--site", SITE, "--key", str(key),
                 "--broker", f"127.0.0.1:{broker.port}", "--wait", str(wait)])
    out = capsys.readouterr().out
    return code, out


def started(*rigs: UnitRig) -> None:
    for rig in rigs:
        rig.start()
    for rig in rigs:
        rig.wait_connected()


def command_events(rig: UnitRig, ident: str) -> list[dict[str, Any]]:
    return [e.data for e in rig.journal.events_after(0, limit=10_000, kinds=["command"])
            if e.data.get("command") == ident]


def sent_id(out: str) -> str:
    return out.split(", id ", 1)[1].split(",", 1)[0]


# -- send ------------------------------------------------------------------------------------


def test_send_level_to_the_site_is_applied_by_every_unit_and_reported(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rigs = [units(mosquitto.port, u) for u in UNITS]
    started(*rigs)
    code, out = run_send(capsys, mosquitto, centre_key[1], "level", "1", "--ttl", "6h")
    assert code == 0, out
    assert f"retained on {topics.desired(SITE, '_all', 'level')}" in out
    for u in UNITS:
        assert f"applied    {u}" in out
    assert "2 unit(s): 2 applied, 0 rejected, 0 no answer, 0 offline" in out
    for rig in rigs:
        level = desired.current_level(rig.journal, CLOCK)
        assert level.level == 1 and level.expires_at is not None
    # The retained document and every unit's answer went over the wire, schema-valid.
    docs = [s for s in wire.on("desired") if s.doc]
    assert docs and docs[-1].doc["args"]["level"] == 1
    # send has its answers; the wire's own subscriber may get the last one a moment later.
    def units_that_sent(kind: str) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda evs: {e["unit"] for e in evs if e["kind"] == kind} == set(UNITS)

    wire.wait_events(units_that_sent("command"), 10, "every unit's command event on the wire")
    wire.wait_events(units_that_sent("level"), 10, "every unit's level event on the wire")


def test_a_unit_that_rejects_is_named_with_its_reason(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    good = units(mosquitto.port, UNITS[0])
    # This one trusts another key under the same name: the centre's signature fails there.
    stale = units(mosquitto.port, UNITS[1], key=SigningKey.generate("centre-test"))
    started(good, stale)
    code, out = run_send(capsys, mosquitto, centre_key[1], "level", "2")
    assert code == 1, out
    assert f"applied    {UNITS[0]}" in out
    assert f"rejected   {UNITS[1]}  bad_signature" in out
    assert desired.current_level(stale.journal, CLOCK).level == 3


def test_send_to_one_unit_reports_a_bad_light_name(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rigs = [units(mosquitto.port, u) for u in UNITS]
    started(*rigs)
    # send itself refuses an unknown light (test_send_checks.py); forced, the unit says no.
    code, out = run_send(capsys, mosquitto, centre_key[1], "lights", "siren=on",
                         "--unit", UNITS[0], "--force")
    assert code == 1
    assert f"rejected   {UNITS[0]}  bad_args" in out and "siren" in out
    assert UNITS[1] not in out
    code, out = run_send(capsys, mosquitto, centre_key[1], "lights", "warning=strobe",
                         "lightbox=on", "--ttl", "2h", "--unit", UNITS[0])
    assert code == 0, out
    assert f"retained on {topics.desired(SITE, UNITS[0], 'lights')}" in out
    override = desired.current_lights_override(rigs[0].journal, CLOCK)
    assert override.lights == {"warning": "strobe", "lightbox": "on"}
    assert desired.current_lights_override(rigs[1].journal, CLOCK).lights == {}


def test_units_that_do_not_answer_and_offline_units_are_listed(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rig = units(mosquitto.port, UNITS[0])
    started(rig)
    # Two more units the broker knows from their retained status: one says it is
    # online but its uplink is wedged, one is offline.
    with mosquitto.probe(None, client_id="others") as others:
        for unit, online in (("zt-pp-08", True), ("zt-pp-09", False)):
            status = {"online": online, "unit": unit, "site": SITE}
            if online:
                status.update(kind="patrol_point", version="0", boot_id="b", level=3,
                              cards_version=None)
            others.publish(topics.status(SITE, unit), json.dumps(status).encode(), retain=True)
    code, out = run_send(capsys, mosquitto, centre_key[1], "level", "2", wait=1.5)
    assert code == 1
    assert f"applied    {UNITS[0]}" in out
    assert "no answer  zt-pp-08  (online)" in out
    assert "offline    zt-pp-09  (gets it when it reconnects)" in out
    assert "3 unit(s): 1 applied, 0 rejected, 1 no answer, 1 offline" in out


def test_one_shot_commands_reach_the_inbox_and_rebirth_republishes_status(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rig = units(mosquitto.port, UNITS[0])
    started(rig)
    code, out = run_send(capsys, mosquitto, centre_key[1], "cmd", "snapshot", "camera=front")
    assert code == 0, out
    assert f"sent to {topics.cmd(SITE, '_all')}" in out
    code, out = run_send(capsys, mosquitto, centre_key[1], "cmd", "lights.test",
                         "lights=warning,lightbox", "seconds=5", "--unit", UNITS[0])
    assert code == 0, out
    camera = InboxReader(rig.journal, "camera", ["snapshot", "clip"])
    station = InboxReader(rig.journal, "station", ["lights.test"])
    assert [(e.name, e.args) for e in camera.pending()] == [("snapshot", {"camera": "front"})]
    assert [(e.name, e.args) for e in station.pending()] == [
        ("lights.test", {"lights": ["warning", "lightbox"], "seconds": 5})]
    births = len([s for s in wire.on("status") if s.doc.get("online")])
    code, out = run_send(capsys, mosquitto, centre_key[1], "cmd", "rebirth")
    assert code == 0, out
    wait_until(lambda: len([s for s in wire.on("status") if s.doc.get("online")]) > births,
               10, "a new birth after rebirth")


def test_a_card_list_from_a_file_is_applied_and_status_reports_its_version(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    rig = units(mosquitto.port, UNITS[0])
    started(rig)
    cards = tmp_path / "cards.json"
    cards.write_text(json.dumps({"version": 12, "cards": [
        {"card": "14008EC793", "badge": "P-017", "role": "police"},
        {"card": "dec:0009357203", "badge": "X-1", "role": "patrol"}]}))
    code, out = run_send(capsys, mosquitto, centre_key[1], "cards", str(cards))
    assert code == 0, out
    assert "cards version 12 (2 card(s))" in out
    held = desired.current_cards(rig.journal)
    assert held is not None and held["version"] == 12
    code, out = run_send(capsys, mosquitto, centre_key[1], "cmd", "rebirth")
    assert code == 0
    wait_until(lambda: any(s.doc.get("cards_version") == 12 for s in wire.on("status")), 10,
               "a birth with cards_version 12")


def test_a_unit_offline_when_sent_applies_the_retained_document_once(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rig = units(mosquitto.port, UNITS[0])
    code, out = run_send(capsys, mosquitto, centre_key[1], "level", "2", "--ttl", "1h",
                         wait=0)
    assert code == 0
    ident = sent_id(out)
    started(rig)
    wait_until(lambda: command_events(rig, ident), 10, "the retained document applied")
    assert desired.current_level(rig.journal, CLOCK).level == 2
    # Restart the uplink: the broker hands the retained document over again, and the
    # unit says nothing more about it.
    rig.stop()
    up = rig.start()
    wait_until(lambda: up.commands.counters["ignored"] >= 1, 10,
               "the retained document redelivered")
    assert len(command_events(rig, ident)) == 1


def test_over_tls_with_the_shipped_acl_the_centre_commands_and_a_unit_cannot(
        mosquitto_factory: Callable[..., Mosquitto], units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    broker = mosquitto_factory(tls=True, acl_text=render_acl({UNITS[0]: SITE}))
    assert broker.pki is not None
    mine = broker.pki.client(UNITS[0])
    rig = units(broker.port, UNITS[0], mqtt={
        "tls": {"ca": str(mine.ca), "cert": str(mine.cert), "key": str(mine.key)}})
    started(rig)

    def send_as(user: str, *args: str) -> tuple[int, str, str]:
        assert broker.pki is not None
        creds = broker.pki.client(user)
        code = main(["send", *args, "--site", SITE, "--key", str(centre_key[1]),
                     "--broker", f"127.0.0.1:{broker.port}", "--tls-ca", str(creds.ca),
                     "--tls-cert", str(creds.cert), "--tls-key", str(creds.key),
                     "--wait", "10"])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = send_as("centre", "level", "2", "--unit", UNITS[0])
    assert code == 0, out
    assert f"applied    {UNITS[0]}" in out
    # A unit's certificate may not command, not even with the centre's key file:
    # the broker refuses the message (MQTT 5 says so in the PUBACK). --force: a unit's
    # certificate reads no status, so send's own checks would stop it first.
    code, out, err = send_as(UNITS[0], "level", "1", "--unit", UNITS[0], "--force")
    assert code == 1 and "refused the message" in err
    assert desired.current_level(rig.journal, CLOCK).level == 2


def test_send_usage_errors_exit_2(centre_key: tuple[SigningKey, Path],
                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["--site", SITE, "--key", str(centre_key[1]), "--broker", "127.0.0.1:1"]
    assert main(["send", "lights", "warning=dance", *base]) == 2
    no_version = tmp_path / "cards.json"
    no_version.write_text("[]")
    assert main(["send", "cards", str(no_version), *base]) == 2
    assert main(["send", "cmd", "clip", "seconds=9999", *base]) == 2
    assert main(["send", "cmd", "rebirth", "--valid-for", "2d", *base]) == 2
    assert main(["send", "level", "1", *base[:2], "--key", str(tmp_path / "nope"),
                 *base[4:]]) == 2
    with pytest.raises(SystemExit) as err:
        main(["send", "level", "1", "--ttl", "soon", *base])
    assert err.value.code == 2
    err_text = capsys.readouterr().err
    assert "dance" in err_text and "version" in err_text and "clip.seconds" in err_text
    assert "at most 24 h" in err_text


def test_send_to_a_broker_that_is_not_there_fails_quickly(
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["send", "level", "1", "--site", SITE, "--key", str(centre_key[1]),
                 "--broker", f"127.0.0.1:{free_port()}"])
    assert code == 1
    assert "cannot connect" in capsys.readouterr().err


def test_send_clear_removes_the_retained_document_and_units_ignore_it(
        mosquitto: Mosquitto, wire: Watcher, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rig = units(mosquitto.port, UNITS[0])
    started(rig)
    code, _ = run_send(capsys, mosquitto, centre_key[1], "level", "1")
    assert code == 0
    before = len(rig.journal.events_after(0, limit=10_000, kinds=["command"]))
    assert main(["send", "clear", "level", "--site", SITE,
                 "--broker", f"127.0.0.1:{mosquitto.port}"]) == 0
    with mosquitto.probe(None, client_id="late") as late:
        late.subscribe(topics.desired(SITE, "_all", "level"))
        with pytest.raises(TimeoutError):
            late.expect(topics.desired(SITE, "_all", "level"), timeout=0.5)
    # The unit saw the empty payload and kept its level, without a word.
    code, _ = run_send(capsys, mosquitto, centre_key[1], "cmd", "rebirth")
    assert code == 0
    assert desired.current_level(rig.journal, CLOCK).level == 1
    after = rig.journal.events_after(0, limit=10_000, kinds=["command"])
    assert len(after) == before + 1 and after[-1].data["name"] == "rebirth"


# A unit's answer that tries to drive the operator's terminal: clear the
# screen, set the window title, overwrite the line and draw fake results.
HOSTILE_REASON = "\x1b[2J\x1b[H\x1b]0;every unit applied\x07bad_args"
HOSTILE_DETAIL = ("siren\r\x1b[2K  applied    zt-pp-05\n  applied    zt-pp-06\x08\x08\x08"
                  "\x1b]2;title\x1b\\\x9b31m\u202eevil\x7f\x00\x1bP+q\x1b\\end")


class HostileUnit:
    """A real MQTT client that answers every command on its topic as a unit would,
    with the given result and a hostile reason and detail."""

    def __init__(self, broker: Mosquitto, unit: str, result: str) -> None:
        self.unit, self.result = unit, result
        self.seq = itertools.count(1)
        self.probe = broker.probe(unit)
        original = self.probe.client.on_message

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            original(client, userdata, msg)
            command = json.loads(msg.payload)
            seq = next(self.seq)
            event = Event(seq=seq, kind="command", unit=unit, site=SITE,
                          journal="5f1c9a0e7d2b4c11", ts_ms=CLOCK.wall_ms(),
                          boot_id="00000000-0000-4000-8000-000000000001", mono=10.0 + seq,
                          clock_synced=True,
                          data={"command": command["id"], "name": command["name"],
                                "result": result, "reason": HOSTILE_REASON,
                                "detail": HOSTILE_DETAIL})
            client.publish(topics.event(SITE, unit, "command"),
                           json.dumps(event.envelope()), qos=1)

        self.probe.client.on_message = on_message
        self.probe.subscribe(topics.cmd(SITE, unit))


def terminal_safe(out: bytes) -> bool:
    """Nothing but printable text and line ends: no byte a terminal acts on."""
    if any((b < 0x20 and b != 0x0A) or b == 0x7F for b in out):
        return False
    return all(ch.isprintable() or ch == "\n" for ch in out.decode("utf-8"))


def test_send_escapes_what_units_say_so_no_control_character_reaches_the_terminal(
        mosquitto: Mosquitto, centre_key: tuple[SigningKey, Path]) -> None:
    HostileUnit(mosquitto, UNITS[0], "applied")
    HostileUnit(mosquitto, UNITS[1], "rejected")
    command = [sys.executable, "-m", "firmware_py.cli", "send", "cmd", "rebirth",
               "--unit", UNITS[0], "--unit", UNITS[1], "--site", SITE,
               "--key", str(centre_key[1]), "--broker", f"127.0.0.1:{mosquitto.port}",
               "--wait", "20", "--force"]   # these units publish no status to check against
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=60,
                          check=False)
    out = done.stdout
    assert done.returncode == 1, (out, done.stderr)  # one unit rejected
    assert terminal_safe(out), out
    lines = out.decode("utf-8").splitlines()
    # Two head lines, one per unit, the summary: no line drawn by a unit.
    assert len(lines) == 5, lines
    assert lines[2].startswith(f"  applied    {UNITS[0]}  (")
    assert lines[3].startswith(f"  rejected   {UNITS[1]}  ")
    assert lines[4] == "2 unit(s): 1 applied, 1 rejected, 0 no answer, 0 offline"
    # What the unit said is still there to read, made visible.
    assert "\\x1b[2J\\x1b[H\\x1b]0;every unit applied\\x07bad_args" in lines[3]
    assert "siren\\r\\x1b[2K  applied    zt-pp-05\\n  applied" in lines[3]
    assert "\\x9b31m\\u202eevil\\x7f\\x00" in lines[3]

    # --json keeps the unit's words exactly, escaped by JSON itself.
    done = subprocess.run([*command, "--json"], cwd=REPO, env=env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert terminal_safe(done.stdout), done.stdout
    report = json.loads(done.stdout)
    assert report["rejected"] == [{"unit": UNITS[1], "reason": HOSTILE_REASON,
                                   "detail": HOSTILE_DETAIL}]


# -- watch -------------------------------------------------------------------------------------


class LiveWatch:
    """``watch`` on the site in a thread, as an operator's terminal runs it."""

    def __init__(self, broker: Mosquitto) -> None:
        self.out = io.StringIO()
        self.stop = threading.Event()
        self.lines: list[str] = []
        self.session = CentreSession(BrokerOptions("127.0.0.1", broker.port), "xunfang_watch")
        self.session.connect()
        self.subscribed = threading.Event()
        self.thread = threading.Thread(
            target=watch, args=(self.session, [f"xunfang/v1/{SITE}/#"], self.out),
            kwargs={"stop": self.stop, "on_line": self.lines.append,
                    "on_subscribed": self.subscribed.set}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.session.close()


def test_watch_shows_every_message_as_one_line_and_survives_garbage(
        mosquitto: Mosquitto, units: Callable[..., UnitRig],
        centre_key: tuple[SigningKey, Path], capsys: pytest.CaptureFixture[str]) -> None:
    live = LiveWatch(mosquitto)
    out, lines, subscribed, t = live.out, live.lines, live.subscribed, live.thread
    try:
        assert subscribed.wait(10)
        rig = units(mosquitto.port, UNITS[0])
        started(rig)
        code, _ = run_send(capsys, mosquitto, centre_key[1], "level", "1", "--ttl", "6h")
        assert code == 0
        with mosquitto.probe(None, client_id="vandal") as vandal:
            root = f"xunfang/v1/{SITE}/{UNITS[1]}"
            vandal.publish(f"{root}/events/checkin", b"\x1b[2J\x00not json")
            vandal.publish(f"{root}/status", b"[1, 2]")
            vandal.publish(f"{root}/health", json.dumps({"level": "\x1b[31mred"}).encode())
            vandal.publish(f"xunfang/v1/{SITE}/odd topic/x", b"{}")
            vandal.publish(f"{root}/events/alarm", json.dumps({"kind": "alarm"}).encode())
        wait_until(lambda: any("odd topic" in line for line in lines), 10, "the garbage shown")
        wait_until(lambda: any(" level " in line and "→1" in line for line in lines), 10,
                   "the level event shown")
    finally:
        live.close()
    assert not t.is_alive()
    text = out.getvalue()
    shown = text.splitlines()
    assert shown == lines
    assert all("\x1b" not in line and "\x00" not in line for line in shown)
    by = {k: [line for line in shown if k in line] for k in
          ("status", "health", "desired", "command", "not JSON", "JSON list")}
    assert any("online" in line and f"{SITE}/{UNITS[0]}" in line for line in by["status"])
    assert any("level=1 until" in line and "to *" in line for line in by["desired"])
    assert any("level" in line and "applied" in line for line in by["command"])
    assert by["not JSON"] and by["JSON list"]
    assert any("\\x1b" in line for line in by["health"])


def test_watch_says_when_the_broker_goes_and_carries_on_when_it_returns(
        mosquitto: Mosquitto) -> None:
    live = LiveWatch(mosquitto)
    out, lines, subscribed = live.out, live.lines, live.subscribed
    status = json.dumps({"online": False, "unit": "zt-pp-09", "site": SITE}).encode()
    try:
        assert subscribed.wait(10)
        mosquitto.restart()
        wait_until(lambda: "reconnected" in out.getvalue(), 20, "the watch reconnected")
        with mosquitto.probe(None, client_id="after") as probe:
            probe.publish(topics.status(SITE, "zt-pp-09"), status)
        wait_until(lambda: any("zt-pp-09" in line for line in lines), 10,
                   "a message after the restart shown")
    finally:
        live.close()
    text = out.getvalue()
    assert "reconnecting to" in text
    assert text.index("reconnecting to") < text.index("reconnected") < text.index("zt-pp-09")


def test_watch_cli_stops_after_count(mosquitto: Mosquitto,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with mosquitto.probe(None, client_id="seed") as seed:
        seed.publish(topics.status(SITE, "zt-pp-07"),
                     json.dumps({"online": False, "unit": "zt-pp-07", "site": SITE}).encode(),
                     retain=True)
    code = main(["watch", "--broker", f"127.0.0.1:{mosquitto.port}", "--site", SITE,
                 "--count", "1", "--for", "10"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "zt-pp-07" in out[0] and "OFFLINE" in out[0] \
        and "(retained)" in out[0]
    code = main(["watch", "--broker", f"127.0.0.1:{mosquitto.port}", "--json", "--count", "1",
                 "--for", "10"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["retained"] is True and doc["payload"]["online"] is False


def test_watch_refused_connection_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "--broker", f"127.0.0.1:{free_port()}", "--for", "1"]) == 1
    with pytest.raises(SessionError):
        CentreSession(BrokerOptions("127.0.0.1", free_port())).connect(timeout=2)


@settings(max_examples=400, deadline=None)
@given(topic=st.one_of(st.text(max_size=60), st.sampled_from([
           f"xunfang/v1/{SITE}/zt-pp-03/status", f"xunfang/v1/{SITE}/zt-pp-03/health",
           f"xunfang/v1/{SITE}/zt-pp-03/events/command", f"xunfang/v1/{SITE}/_all/cmd",
           f"xunfang/v1/{SITE}/_all/desired/level", f"xunfang/v1/{SITE}/zt-pp-03/ack"])),
       payload=st.one_of(st.binary(max_size=200), st.recursive(
           st.none() | st.booleans() | st.integers() | st.text(max_size=30),
           lambda c: st.lists(c, max_size=4) | st.dictionaries(
               st.sampled_from(["online", "data", "kind", "args", "target", "name", "seq",
                                "units", "level", "readers", "id", "x"]), c, max_size=5),
           max_leaves=25).map(lambda v: json.dumps(v).encode())),
       retained=st.booleans())
def test_describe_never_raises_and_prints_one_clean_line(topic: str, payload: bytes,
                                                          retained: bool) -> None:
    line = describe(topic, payload, retained, datetime(2026, 11, 28, tzinfo=UTC))
    assert isinstance(line, str) and "\n" not in line and "\r" not in line
    assert all(ch.isprintable() for ch in line)
    assert len(line) <= 400


def test_clean_escapes_terminal_control() -> None:
    assert clean("a\x1b[2Jb\x00\n") == "a\\x1b[2Jb\\x00\\n"
    assert clean("x" * 100, 10) == "x" * 9 + "…"
    assert clean("\x9b31m\u202e\u2028\x7f\U000e0001") == "\\x9b31m\\u202e\\u2028\\x7f\\U000e0001"
    assert clean("巡防 zt-pp-03") == "巡防 zt-pp-03"


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_clean_lets_no_control_character_through(text: str) -> None:
    assert all(ch.isprintable() for ch in clean(text, 10_000))
