"""``send`` owns the desired state: its checks, putting the last good document back, the book.

Real Mosquitto, real units (:class:`UnitRig`: the real uplink and command
processor on their own journals), ``send`` through the CLI as an operator
types it. Refusals must leave the broker's retained documents exactly as they
were; a rejected document must leave the site with the last good one, so a
unit that joins later comes up in the state the centre believes in.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from center.send import Guard, Message, check, open_book
from center.session import BrokerOptions, CentreSession
from firmware_py import desired, topics
from firmware_py.cli import main
from firmware_py.clock import SystemClock
from firmware_py.signing import SigningKey, save_signing_key
from tests.support.brokers import Mosquitto
from tests.support.postgres import LedgerDatabases
from tests.support.uplink import SITE, UnitRig, wait_until

UNITS = ("zt-pp-03", "zt-pp-04")
CLOCK = SystemClock()
DEVICES: dict[str, Any] = {"lights": {"warning": {"pins": [17, 27]}, "lightbox": {"pins": [22]}}}
LEVEL_ALL = topics.desired(SITE, topics.ALL_UNITS, "level")
LIGHTS_ALL = topics.desired(SITE, topics.ALL_UNITS, "lights")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """The centre's key the units trust, and one they do not."""
    out = {}
    for label, name in (("good", "centre-test"), ("stranger", "centre-other")):
        path = tmp_path / f"{label}.key"
        save_signing_key(SigningKey.generate(name), path)
        out[label] = path
    return out


@pytest.fixture
def units(tmp_path: Path, keys: dict[str, Path]) -> Iterator[Callable[..., UnitRig]]:
    """``make(port, unit_id)``: a started unit trusting the centre's key."""
    from firmware_py.signing import load_signing_key

    made: list[UnitRig] = []
    key = load_signing_key(keys["good"])

    def make(port: int, unit: str) -> UnitRig:
        rig = UnitRig(tmp_path / unit, port, {"unit": {"id": unit}, **DEVICES},
                      command_key=key)
        made.append(rig)
        rig.start()
        rig.wait_connected()
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "units.txt"
    path.write_text("".join(f"{u} {SITE}\n" for u in (*UNITS, "zt-pp-05")) + "xh-pp-01 xihu\n",
                    encoding="utf-8")
    return path


def run_send(capsys: pytest.CaptureFixture[str], broker: Mosquitto, key: Path, *args: str,
             wait: float = 10.0) -> tuple[int, str, str]:
    code = main(["send", *args, "--site", SITE, "--key", str(key),
                 "--broker", f"127.0.0.1:{broker.port}", "--wait", str(wait)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def retained(broker: Mosquitto, topic: str) -> bytes | None:
    """The retained payload on ``topic`` now (None: none). A second SUBSCRIBE is the
    barrier: the broker answers it only after sending the first one's retained messages."""
    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.topic == topic:
            with lock:
                got[topic] = bytes(msg.payload)

    with CentreSession(BrokerOptions("127.0.0.1", broker.port), "probe",
                       on_message=on_message) as session:
        session.connect()
        session.subscribe([topic])
        session.subscribe([f"{topics.PREFIX}/{SITE}/nobody/barrier"])
        with lock:
            return got.get(topic)


def sent_id(out: str) -> str:
    return out.split(", id ", 1)[1].split(",", 1)[0]


def level_of(rig: UnitRig) -> int:
    return desired.current_level(rig.journal, CLOCK).level


def commands_seen(rig: UnitRig) -> int:
    return len(rig.journal.events_after(0, limit=10_000, kinds=["command"]))


# -- refusals ----------------------------------------------------------------------------------


def test_a_key_the_units_do_not_trust_is_refused_and_nothing_is_published(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    rigs = [units(mosquitto.port, u) for u in UNITS]
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "1")
    assert code == 0, out + err
    good = retained(mosquitto, LEVEL_ALL)
    assert good is not None
    code, out, err = run_send(capsys, mosquitto, keys["stranger"], "level", "3")
    assert code == 2
    assert out == ""
    assert (f"xunfang send: refused: key 'centre-other' is not trusted by {UNITS[0]}, "
            f"{UNITS[1]} (their status lists: centre-test)\n") in err
    assert "nothing sent (--force sends it anyway)" in err
    assert retained(mosquitto, LEVEL_ALL) == good
    assert [commands_seen(r) for r in rigs] == [1, 1]      # only the good document's answer
    assert [level_of(r) for r in rigs] == [1, 1]


def test_a_unit_not_in_the_inventory_is_refused_and_nothing_is_retained_for_it(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        inventory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    units(mosquitto.port, UNITS[0])
    ghost = topics.desired(SITE, "ghost", "level")
    for extra in (["--inventory", str(inventory)], []):
        code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "1",
                                  "--unit", "ghost", *extra)
        assert code == 2 and out == ""
        assert retained(mosquitto, ghost) is None
        if extra:
            assert f"refused: unit ghost is not in the inventory {inventory} for site " \
                   f"{SITE}\n" in err
        else:   # no inventory: the units the broker knows from their status stand in
            assert f"refused: unit ghost is not known at site {SITE}: no status from it " \
                   "on the broker" in err
    # A unit of another site is as unknown here; a listed one that never connected is fine.
    code, _, err = run_send(capsys, mosquitto, keys["good"], "level", "1", "--unit",
                            "xh-pp-01", "--inventory", str(inventory), wait=0)
    assert code == 2 and "unit xh-pp-01 is not in the inventory" in err
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "1", "--unit",
                              "zt-pp-05", "--inventory", str(inventory), wait=0)
    assert code == 0, err
    # --force: published as asked, and said so.
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "1", "--unit", "ghost",
                              "--inventory", str(inventory), "--force", wait=0)
    assert code == 0, err
    assert "sent anyway (--force): unit ghost is not in the inventory" in err
    assert json.loads(retained(mosquitto, ghost) or b"{}")["id"] == sent_id(out)


def test_an_unknown_light_is_refused_and_forced_it_is_rejected_then_removed(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    rigs = [units(mosquitto.port, u) for u in UNITS]
    code, out, err = run_send(capsys, mosquitto, keys["good"], "lights", "nosuch=on")
    assert code == 2 and out == ""
    assert (f"refused: light 'nosuch' is unknown to {UNITS[0]}, {UNITS[1]} "
            "(has: lightbox, warning)\n") in err
    assert retained(mosquitto, LIGHTS_ALL) is None
    assert [commands_seen(r) for r in rigs] == [0, 0]
    # Forced, the units reject it; there was no lights document before, so the rejected
    # one is taken off the broker: a unit joining later does not meet it.
    code, out, err = run_send(capsys, mosquitto, keys["good"], "lights", "nosuch=on",
                              "--force")
    assert code == 1
    assert "sent anyway (--force): light 'nosuch'" in err
    assert f"rejected   {UNITS[0]}  bad_args" in out
    assert f"no earlier document on {LIGHTS_ALL}: removed the rejected one" in out
    assert retained(mosquitto, LIGHTS_ALL) in (None, b"")


def test_the_checks_hold_for_a_unit_that_is_offline(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Its Last Will still lists its keys and lights: a document retained for its return
    is checked like one for a unit online."""
    rig = units(mosquitto.port, UNITS[1])
    rig.stop()
    away = topics.desired(SITE, UNITS[1], "lights")
    code, out, err = run_send(capsys, mosquitto, keys["good"], "lights", "nosuch=on",
                              "--unit", UNITS[1], wait=0)
    assert code == 2 and f"refused: light 'nosuch' is unknown to {UNITS[1]}" in err
    code, out, err = run_send(capsys, mosquitto, keys["stranger"], "lights", "warning=on",
                              "--unit", UNITS[1], wait=0)
    assert code == 2 and f"refused: key 'centre-other' is not trusted by {UNITS[1]}" in err
    assert retained(mosquitto, away) is None
    code, out, err = run_send(capsys, mosquitto, keys["good"], "lights", "warning=on",
                              "--unit", UNITS[1], wait=0)
    assert code == 0, err
    assert json.loads(retained(mosquitto, away) or b"{}")["id"] == sent_id(out)


def test_the_checks_go_by_the_inventory_and_skip_what_a_status_does_not_say() -> None:
    msg = Message("lights", {"lights": {"siren": "on"}}, True, 60)
    statuses: dict[str, dict[str, Any]] = {
        "zt-pp-03": {"online": True, "trusted_keys": ["centre-test"], "lights": {"siren": "off"}},
        "zt-pp-04": {"online": True},                                  # older firmware
        "zt-old-01": {"online": False, "trusted_keys": [], "lights": {}},  # left the site
    }
    listed = Guard(frozenset({"zt-pp-03", "zt-pp-04"}), "units.txt")
    assert check(msg, "centre-test", SITE, [], statuses, listed) == []
    assert check(msg, "centre-test", SITE, [], statuses, Guard()) == [
        "key 'centre-test' is not trusted by zt-old-01 (their status lists: none)",
        "light 'siren' is unknown to zt-old-01 (has: none)"]


# -- the last good document --------------------------------------------------------------------


def test_a_rejected_document_is_replaced_by_the_last_good_one_and_a_new_unit_gets_it(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's scenario, without a database: an engineer's laptop."""
    rigs = [units(mosquitto.port, u) for u in UNITS]
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "1")
    assert code == 0, out + err
    good_id, good = sent_id(out), retained(mosquitto, LEVEL_ALL)
    # A bad document goes out anyway (forced past the key check): every unit rejects it.
    code, out, err = run_send(capsys, mosquitto, keys["stranger"], "level", "3", "--force")
    assert code == 1
    assert f"rejected   {UNITS[0]}  unknown_key" in out
    assert f"put back {good_id} on {LEVEL_ALL} (the last good document, signed as it was" \
        in out
    assert retained(mosquitto, LEVEL_ALL) == good          # byte for byte
    assert [level_of(r) for r in rigs] == [1, 1]
    # A unit that joins now comes up at level 1, as the centre believes the site is.
    late = units(mosquitto.port, "zt-pp-05")
    wait_until(lambda: level_of(late) == 1, 10, "the new unit to apply level 1")


def test_a_document_whose_signature_expired_is_not_put_back_and_send_says_why(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    units(mosquitto.port, UNITS[0])
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "2", "--valid-for",
                              "1s")
    assert code == 0, out + err
    old_id = sent_id(out)
    envelope = json.loads(retained(mosquitto, LEVEL_ALL) or b"{}")
    wait_until(lambda: desired.time_ms(envelope["expires_at"]) < CLOCK.wall_ms() - 50, 5,
               "the first document's signature to expire")
    code, out, err = run_send(capsys, mosquitto, keys["stranger"], "level", "3", "--force")
    assert code == 1
    assert f"cannot put back {old_id} on {LEVEL_ALL}: its signature expired at " \
           f"{envelope['expires_at']}, so units would refuse it" in out
    assert json.loads(retained(mosquitto, LEVEL_ALL) or b"{}")["id"] != old_id


# -- the book (--db) ---------------------------------------------------------------------------


def test_with_db_every_document_and_answer_is_recorded_and_the_good_one_comes_from_it(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        ledger_dbs: LedgerDatabases, capsys: pytest.CaptureFixture[str]) -> None:
    rigs = [units(mosquitto.port, u) for u in UNITS]
    db = ledger_dbs.target("centre")
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "1", "--db", str(db))
    assert code == 0, out + err
    good_id = sent_id(out)
    good = retained(mosquitto, LEVEL_ALL)
    # The broker forgets the document (a broker that lost its store): the database still
    # knows the last good one and puts it back.
    assert main(["send", "clear", "level", "--site", SITE,
                 "--broker", f"127.0.0.1:{mosquitto.port}"]) == 0
    assert retained(mosquitto, LEVEL_ALL) in (None, b"")
    code, out, err = run_send(capsys, mosquitto, keys["stranger"], "level", "2", "--force",
                              "--db", str(db))
    assert code == 1
    bad_id = sent_id(out)
    assert f"put back {good_id} on {LEVEL_ALL}" in out
    assert retained(mosquitto, LEVEL_ALL) == good

    book = open_book(db, SITE)
    try:
        docs = {d.id: d for d in book.documents(SITE)}
        assert set(docs) == {good_id, bad_id}
        assert not docs[good_id].rejected and docs[good_id].restored_ms is not None
        assert docs[bad_id].rejected and docs[bad_id].replaced_by == good_id
        assert docs[good_id].envelope.encode() == good
        assert {(o.unit, o.result) for o in book.outcomes(good_id)} == \
            {(u, "applied") for u in UNITS}
        assert {(o.unit, o.result, o.reason) for o in book.outcomes(bad_id)} == \
            {(u, "rejected", "unknown_key") for u in UNITS}
        in_force = book.in_force(SITE, "level", topics.ALL_UNITS)
        assert in_force is not None and in_force.id == good_id
    finally:
        book.close()
    assert [level_of(r) for r in rigs] == [1, 1]


# -- desired show ------------------------------------------------------------------------------


def show(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["desired", "show", "--site", SITE, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lines_of(out: str, unit: str) -> list[str]:
    """The lines of one unit's block in ``desired show``'s output."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {unit}  "))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        block.append(line)
    return block


def test_desired_show_puts_what_is_in_force_next_to_what_units_report(
        mosquitto: Mosquitto, units: Callable[..., UnitRig], keys: dict[str, Path],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rigs = [units(mosquitto.port, u) for u in UNITS]
    db = tmp_path / "centre.db"
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "1", "--db", str(db))
    assert code == 0, out + err
    first = sent_id(out)
    # zt-pp-04 goes offline; the site then goes to level 2, which only zt-pp-03 applies.
    rigs[1].stop()
    code, out, err = run_send(capsys, mosquitto, keys["good"], "level", "2", "--db", str(db),
                              wait=3)
    assert code == 0, out + err
    second = sent_id(out)
    # A rejected document is never in force.
    code, out, err = run_send(capsys, mosquitto, keys["stranger"], "level", "3", "--force",
                              "--db", str(db))
    assert code == 1

    # The unit republishes its status within a second or so of the change.
    status = topics.status(SITE, UNITS[0])
    wait_until(lambda: json.loads(retained(mosquitto, status) or b"{}").get("level") == 2, 10,
               f"{UNITS[0]}'s status to report level 2")
    broker = ["--broker", f"127.0.0.1:{mosquitto.port}"]
    code, out, err = show(capsys, "--db", str(db), *broker, "--lang", "en")
    assert code == 0, err
    assert out.startswith(f"site {SITE}: in force from the database {db}; reported by the "
                          "units\n")
    assert f"    level    level 2 ({second[:12]}…)" in out, out          # the whole site
    here = lines_of(out, UNITS[0])
    assert here[0] == f"  {UNITS[0]}  online"
    assert f"    level    in force: level 2 ({second[:12]}…)   = reported: level 2" in here
    assert "    cards    in force: no card list ({})   = reported: no card list".replace(
        " ({})", "") in here
    gone = lines_of(out, UNITS[1])
    assert gone[0] == f"  {UNITS[1]}  offline"
    level_line = next(line for line in gone if line.startswith("    level"))
    assert level_line.startswith(f"    level    in force: level 2 ({second[:12]}…)   ≠ "
                                 "reported: level ")
    assert level_line.endswith("   differs")
    assert first[:12] not in out
    # Chinese by default; --json for scripts.
    code, out, _ = show(capsys, "--db", str(db), *broker)
    assert code == 0 and f"站点 {SITE}" in out and "不一致" in out
    code, out, _ = show(capsys, "--db", str(db), *broker, "--json")
    report = json.loads(out)
    assert report["whole_site"]["level"]["id"] == second
    assert report["units"][UNITS[0]]["level"]["differs"] is False
    assert report["units"][UNITS[1]]["level"]["differs"] is True
    # Without a database: what is retained on the broker is what is in force.
    code, out, _ = show(capsys, *broker, "--lang", "en")
    assert code == 0 and "in force from the documents retained on the broker" in out
    assert f"    level    level 2 ({second[:12]}…)" in out
    # Neither: usage.
    code, _, err = show(capsys, "--lang", "en")
    assert code == 2 and "give --db PATH, --broker HOST:PORT, or both" in err
