"""Every configuration rule gives one line with its key path, what was expected
and what was found; `xunfang config check` lists them all and exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.readers.rdm6300 import Rdm6300Parser
from firmware_py.config import load_config, parse_config
from firmware_py.exc import ConfigInvalid, ConfigUnreadable
from tests.support.units import base_document, merge, write_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "config").glob("*.toml"))


def problems(tmp_path: Path, **overrides: Any) -> list[str]:
    doc = merge(base_document(tmp_path), overrides)
    with pytest.raises(ConfigInvalid) as info:
        parse_config(doc)
    return info.value.problems


def test_there_is_an_example_for_each_kind_of_site_and_the_demo() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"patrol-point", "kiosk", "checkpoint", "demo"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.sha256 and cfg.source_path == path


# (overrides, the line expected among the problems)
RULES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top key", {"unti": {}}, "unti: unknown key"),
    ("unknown nested key", {"mqtt": {"keepalive": 30}},
     "mqtt.keepalive: unknown key; did you mean keepalive_s?"),
    ("unknown top key suggests", {"unti": {}}, "unti: unknown key; did you mean unit?"),
    ("unknown light key suggests", {"lights": {"box": {"pins": [13], "schedul": "always"}}},
     "lights.box.schedul: unknown key; did you mean schedule?"),
    ("unknown camera key suggests", {"cameras": [{"name": "gate", "source": "0",
                                                  "preroll_s": 5}]},
     "cameras[0].preroll_s: unknown key; did you mean pre_roll_s?"),
    ("no suggestion for a stranger", {"mqtt": {"colour": "red"}},
     "mqtt.colour: unknown key (see docs/configuration.md)"),
    ("internal fields are not keys", {"sha256": "0" * 64}, "sha256: unknown key"),
    ("unit id", {"unit": {"id": "ZT_pp"}}, 'unit.id: must match ^[a-z0-9-]{1,32}$, got "ZT_pp"'),
    ("site", {"unit": {"site": "zhuan tang"}}, "unit.site: must match"),
    ("kind", {"unit": {"kind": "patrol_pont"}},
     'unit.kind: must be one of "patrol_point", "kiosk", "checkpoint", "vehicle", '
     'got "patrol_pont"'),
    ("timezone", {"unit": {"timezone": "Mars/Olympus"}},
     "unit.timezone: must be an IANA time zone"),
    ("latitude range", {"unit": {"latitude": 91, "longitude": 120}},
     "unit.latitude: must be at most 90.0, got 91"),
    ("coordinates go together", {"unit": {"latitude": 30.16}},
     "unit: latitude and longitude go together"),
    ("port", {"mqtt": {"port": 70000}}, "mqtt.port: must be at most 65535, got 70000"),
    ("protocol", {"mqtt": {"protocol": 5}}, 'mqtt.protocol: must be one of "5", "3.1.1", got 5'),
    ("keepalive", {"mqtt": {"keepalive_s": 1}}, "mqtt.keepalive_s: must be at least 5, got 1"),
    ("password needs user", {"mqtt": {"password_file": "/etc/pw"}},
     "mqtt: password_file is set but username is not"),
    ("tls pairs", {"mqtt": {"tls": {"ca": "/ca.pem", "cert": "/c.pem"}}},
     "mqtt.tls: cert and key go together"),
    ("tls needs ca", {"mqtt": {"tls": {"cert": "/c.pem", "key": "/k.pem"}}},
     "mqtt.tls.ca: required key is missing"),
    ("boolean", {"mqtt": {"centre_ack": "yes"}}, 'mqtt.centre_ack: expected bool, got "yes"'),
    ("key not base64", {"security": {"command_keys": {"c": "not base64!"}}},
     "security.command_keys: key 'c': must be the standard base64"),
    ("key wrong length", {"security": {"command_keys": {"c": "AAAA"}}},
     "security.command_keys: key 'c': must decode to 32 bytes"),
    ("ack key commands", {"security": {"ack_keys": {"l": "X4aAoRL1/AE8KU0YGX1XjwsuFD5cOLtHy1x"
                                                         "+cLha81Y="}}},
     "security: ack key(s) l also listed in command_keys"),
    ("driver", {"readers": [{"name": "m", "driver": "rdm630", "port": "/dev/serial0"}]},
     'readers[0].driver: must be one of "rdm6300", "pn532", "line", "sim", got "rdm630"'),
    ("baud", {"readers": [{"name": "m", "driver": "rdm6300", "port": "/dev/serial0",
                           "baud": 9601}]},
     "readers[0].baud: must be one of 9600, 19200, 38400, 57600, 115200, got 9601"),
    ("reader port", {"readers": [{"name": "m", "driver": "line"}]},
     "readers[0].port: required key is missing"),
    ("frame form", {"readers": [{"name": "m", "driver": "rdm6300", "port": "/dev/serial0",
                                 "frame": "rf126"}]},
     'readers[0].frame: must be one of "rdm6300", "rf125", got "rf126"'),
    ("frame only for rdm6300", {"readers": [{"name": "m", "driver": "line",
                                             "port": "/dev/ttyUSB0", "frame": "rf125"}]},
     'readers[0].frame: only an "rdm6300" reader has a frame form, this one is "line"'),
    ("frame of a sim", {"readers": [{"name": "m", "driver": "sim", "port": "sim",
                                     "frame": "rf125"}]},
     'readers[0].frame: only an "rdm6300" reader has a frame form, this one is "sim" '
     '(a sim reader takes its form from port, e.g. "sim://rf125")'),
    ("pin range", {"feedback": {"ok_led": 40}}, "feedback.ok_led: must be at most 27, got 40"),
    ("pin type", {"feedback": {"buzzer": "GPIO22"}}, 'feedback.buzzer: expected int, got "GPIO22"'),
    ("light pins", {"lights": {"warning": {"pins": [5, 6, 7]}}},
     "lights.warning.pins: at most 2 items, got 3"),
    ("light pins empty", {"lights": {"warning": {"pins": []}}},
     "lights.warning.pins: at least 1 item, got 0"),
    ("alternate needs two", {"lights": {"box": {"pins": [13], "schedule_mode": "alternate"}}},
     "lights.box: mode alternate needs two pins"),
    ("light mode", {"lights": {"box": {"pins": [13], "schedule_mode": "flash"}}},
     'lights.box.schedule_mode: must be one of "off", "on", "blink", "strobe", "alternate"'),
    ("schedule window", {"lights": {"box": {"pins": [13], "schedule": ["25:00-01:00"]}}},
     "lights.box.schedule: must be a time window HH:MM-HH:MM, got '25:00-01:00'"),
    ("empty window list", {"lights": {"box": {"pins": [13], "schedule": []}}},
     "lights.box.schedule: an empty list of windows"),
    ("schedule word", {"lights": {"box": {"pins": [13], "schedule": "nightly"}}},
     "lights.box.schedule"),
    ("level key", {"lights": {"box": {"pins": [13], "level_modes": {"4": "on"}}}},
     "lights.box.level_modes[4]: must be one of 1, 2, 3, got 4"),
    ("patrol window", {"patrol": {"windows": {"night": "23:00-23:00"}}},
     "patrol.windows: window 'night': window '23:00-23:00' is empty"),
    ("round interval", {"patrol": {"round_every_min": {"3": "two hours"}}},
     'patrol.round_every_min[3]: expected int, got "two hours"'),
    ("min people", {"patrol": {"min_people": 0}}, "patrol.min_people: must be at least 1, got 0"),
    ("handover gap", {"duty": {"handover_gap_s": -1}},
     "duty.handover_gap_s: must be at least 0, got -1"),
    ("duty repeat", {"duty": {"repeat_s": 601}}, "duty.repeat_s: must be at most 600, got 601"),
    ("duty key", {"duty": {"handover_s": 60}}, "duty.handover_s: unknown key"),
    ("camera source", {"cameras": [{"name": "gate", "source": ""}]},
     "cameras[0].source: string should have at least 1 character"),
    ("camera codec", {"cameras": [{"name": "gate", "source": "0", "codec": "h264"}]},
     'cameras[0].codec: must be one of "mjpeg", "mp4v", got "h264"'),
    ("camera mask corner", {"cameras": [{"name": "gate", "source": "0",
                                         "masks": [[[0, 0], [1.5, 0], [0.5, 0.5]]]}]},
     "cameras[0].masks[0][1][0]: must be at most 1.0, got 1.5"),
    ("camera mask corners", {"cameras": [{"name": "gate", "source": "0",
                                          "masks": [[[0, 0], [0.5, 0]]]}]},
     "cameras[0].masks[0]: at least 3 items, got 2"),
    ("camera sensitivity level", {"cameras": [{"name": "gate", "source": "0",
                                               "sensitivity": {"4": 2.0}}]},
     "cameras[0].sensitivity[4]: must be one of 1, 2, 3, got 4"),
    ("camera sensitivity", {"cameras": [{"name": "gate", "source": "0",
                                         "sensitivity": {"1": 0}}]},
     "cameras[0].sensitivity[1]: must be more than 0"),
    ("camera pre-roll", {"cameras": [{"name": "gate", "source": "0", "pre_roll_s": 10,
                                      "max_clip_s": 8}]},
     "cameras[0]: pre_roll_s (10.0) must be below max_clip_s (8.0)"),
    ("camera continuous level", {"cameras": [{"name": "gate", "source": "0",
                                              "continuous_levels": [0]}]},
     "cameras[0].continuous_levels[0]: must be one of 1, 2, 3, got 0"),
    ("camera memory", {"cameras": [{"name": "gate", "source": "0", "memory_mb": 16}]},
     "cameras[0].memory_mb: must be at least 64, got 16"),
    ("camera size pair", {"cameras": [{"name": "gate", "source": "0", "width": 1280}]},
     "cameras[0]: width and height go together"),
    ("camera unknown key", {"cameras": [{"name": "gate", "source": "0", "preroll_s": 5}]},
     "cameras[0].preroll_s: unknown key"),
    ("journal size", {"journal": {"max_mb": 0}}, "journal.max_mb: must be at least 1, got 0"),
    # Documented maximums (docs/configuration.md, Limits).
    ("readers limit", {"readers": [{"name": f"r{i}", "driver": "sim", "port": "sim"}
                                   for i in range(9)]},
     "readers: at most 8 items, got 9"),
    ("lights limit", {"lights": {f"l{i}": {"pins": [2 + i]} for i in range(17)}},
     "lights: at most 16 items, got 17"),
    ("cameras limit", {"cameras": [{"name": f"c{i}", "source": "0"} for i in range(5)]},
     "cameras: at most 4 items, got 5"),
    ("light windows limit", {"lights": {"box": {"pins": [13],
                                                "schedule": ["18:00-19:00"] * 25}}},
     "lights.box.schedule: at most 24 items, got 25"),
    ("patrol windows limit", {"patrol": {"windows": {f"w{i}": "08:00-09:00"
                                                     for i in range(25)}}},
     "patrol.windows: at most 24 items, got 25"),
    ("command keys limit", {"security": {"command_keys": {f"k{i}": "AAAA" for i in range(16)}}},
     "security.command_keys: at most 16 items, got 17"),          # and the base's own key
    ("alarm lights limit", {"inputs": {"alarm_lights": ["warning"] * 17}},
     "inputs.alarm_lights: at most 16 items, got 17"),
    ("masks limit", {"cameras": [{"name": "gate", "source": "0",
                                  "masks": [[[0, 0], [1, 0], [1, 1]]] * 33}]},
     "cameras[0].masks: at most 32 items, got 33"),
    ("mask corners limit", {"cameras": [{"name": "gate", "source": "0",
                                         "masks": [[[0, 0]] * 65]}]},
     "cameras[0].masks[0]: at most 64 items, got 65"),
    ("any table or list", {"patrol": {"round_every_min": {str(i): 1 for i in range(300)}}},
     "patrol.round_every_min: at most 256 entries, got 300"),
    ("nesting", {"unit": {"id": [[[[[[[["x"]]]]]]]]}},
     "unit.id[0][0][0][0][0][0][0]: nested too deeply"),
    ("control characters are shown escaped", {"lights": {"x\x1b[2J\x9b": {"pins": [5]}}},
     'lights."x\\u001b[2J\\x9b": must match ^[a-z0-9_-]{1,32}$, got "x\\u001b[2J\\x9b"'),
    ("long values are cut short", {"unit": {"id": "x" * 10_000}},
     'unit.id: must match ^[a-z0-9-]{1,32}$, got "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…" '
     "(10000 characters)"),
]


@pytest.mark.parametrize(("overrides", "expected"), [(o, e) for _, o, e in RULES],
                         ids=[r[0] for r in RULES])
def test_each_rule_names_its_key_path(tmp_path: Path, overrides: dict[str, Any],
                                      expected: str) -> None:
    found = problems(tmp_path, **overrides)
    assert any(line.startswith(expected) for line in found), found


CROSS_RULES: list[tuple[str, dict[str, Any], str]] = [
    ("pin used twice", {"feedback": {"ok_led": 17}, "inputs": {"panic": 17}},
     "inputs.panic: GPIO17 is already used by feedback.ok_led"),
    ("light pin clash", {"lights": {"a": {"pins": [5, 6]}, "b": {"pins": [6]}}},
     "lights.b.pins[0]: GPIO6 is already used by lights.a.pins[1]"),
    ("sunset needs position", {"lights": {"a": {"pins": [5], "schedule": "sunset-sunrise"}}},
     'lights.a.schedule: "sunset-sunrise" needs unit.latitude and unit.longitude'),
    ("reader names", {"readers": [{"name": "m", "driver": "sim", "port": "sim"},
                                  {"name": "m", "driver": "line", "port": "/dev/ttyUSB0"}]},
     "readers[1].name: 'm' is already the name of readers[0]"),
    ("pin used twice beside a field error",
     {"feedback": {"ok_led": 17, "buzzer": 99}, "inputs": {"panic": 17}},
     "inputs.panic: GPIO17 is already used by feedback.ok_led"),
]


@pytest.mark.parametrize(("overrides", "expected"), [(o, e) for _, o, e in CROSS_RULES],
                         ids=[r[0] for r in CROSS_RULES])
def test_rules_across_sections_name_both_keys(tmp_path: Path, overrides: dict[str, Any],
                                              expected: str) -> None:
    assert expected in problems(tmp_path, **overrides)


def test_field_and_cross_problems_are_listed_together(tmp_path: Path) -> None:
    found = problems(tmp_path, mqtt={"port": 0}, feedback={"ok_led": 17},
                     inputs={"panic": 17, "tamper": "GPIO26"},
                     lights={"a": {"pins": [5, 6], "schedule": "sunset-sunrise"},
                             "b": {"pins": [6, 40]}})
    assert found == [
        "mqtt.port: must be at least 1, got 0",
        "lights.b.pins[1]: must be at most 27, got 40",
        'inputs.tamper: expected int, got "GPIO26" (str)',
        "lights.a.schedule: \"sunset-sunrise\" needs unit.latitude and unit.longitude",
        "lights.b.pins[0]: GPIO6 is already used by lights.a.pins[1]",
        "inputs.panic: GPIO17 is already used by feedback.ok_led",
    ]


def test_a_value_for_a_key_of_two_shapes_gets_one_line(tmp_path: Path) -> None:
    # schedule is a word or a list of windows: a bad one of either is one problem.
    assert problems(tmp_path, lights={"box": {"pins": [13], "schedule": "nightly"}}) == [
        'lights.box.schedule: must be one of "sunset-sunrise", "always", "never", '
        '"on-duty", got "nightly"']
    assert problems(tmp_path, lights={"box": {"pins": [13], "schedule": ["18:00-19:00"] * 30}}) \
        == ["lights.box.schedule: at most 24 items, got 30"]


def test_all_problems_are_listed_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, unit={"id": "X", "kind": "shop"}, mqtt={"port": 0},
                     readers=[{"name": "m", "driver": "rdm6300", "port": "p", "baud": 1}])
    assert [line.split(":")[0] for line in found] == ["unit.id", "unit.kind", "mqtt.port",
                                                     "readers[0].baud"]


def test_an_rdm6300_reader_reads_the_14_byte_form_unless_told_rf125(tmp_path: Path) -> None:
    readers = [{"name": "a", "driver": "rdm6300", "port": "/dev/serial0"},
               {"name": "b", "driver": "rdm6300", "port": "/dev/ttyUSB0", "frame": "rf125"}]
    cfg = parse_config(merge(base_document(tmp_path), {"readers": readers}))
    assert [r.frame for r in cfg.readers] == [None, "rf125"]  # unset: the 14-byte form
    assert Rdm6300Parser("a").frame == "rdm6300"


def test_a_dumped_config_parses_again(tmp_path: Path) -> None:
    # The camera daemon hands its worker the config as JSON; every default must survive
    # the round trip (a sim reader's unset frame once stopped every camera worker).
    readers = [{"name": "a", "driver": "sim", "port": "sim"},
               {"name": "b", "driver": "rdm6300", "port": "/dev/ttyUSB0", "frame": "rf125"},
               {"name": "c", "driver": "line", "port": "loop://"}]
    cfg = parse_config(merge(base_document(tmp_path), {"readers": readers}))
    again = parse_config(cfg.model_dump(mode="json"))
    assert again.readers == cfg.readers


def test_defaults_follow_the_contract(tmp_path: Path) -> None:
    cfg = parse_config(merge(base_document(tmp_path),
                             {"lights": {"w": {"pins": [5, 6]}, "b": {"pins": [13]}}}))
    assert cfg.mqtt.protocol == "5" and cfg.mqtt.keepalive_s == 30
    assert cfg.mqtt.centre_ack is True and cfg.mqtt.resend_after_s == 60
    assert cfg.mqtt.health_interval_s == 60
    assert cfg.patrol.visit_gap_s == 60 and cfg.patrol.min_people == 2
    assert cfg.patrol.round_every_min == {3: 120, 2: 60, 1: 30}
    assert cfg.patrol.windows["night"] == "23:00-05:00"
    assert cfg.duty.handover_gap_s == 600 and cfg.duty.repeat_s == 10
    assert cfg.lights["w"].effective_schedule_mode == "alternate"
    assert cfg.lights["b"].effective_schedule_mode == "on"
    assert cfg.lights["w"].effective_level_modes == {1: "strobe", 2: "alternate"}
    assert cfg.lights["b"].effective_level_modes == {1: "strobe", 2: "blink"}


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    doc = merge(base_document(Path("data")), {"mqtt": {
        "username": "zt-pp-03", "password_file": "secret/pw",
        "tls": {"ca": "tls/ca.pem", "cert": "/etc/xunfang/unit.pem", "key": "tls/unit.key"}}})
    path = write_config(tmp_path / "site" / "unit.toml", doc) if (tmp_path / "site").mkdir() \
        is None else None
    assert path is not None
    cfg = load_config(path)
    assert cfg.unit.data_dir == tmp_path / "site" / "data"
    assert cfg.mqtt.password_file == tmp_path / "site" / "secret" / "pw"
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.tls.ca == tmp_path / "site" / "tls" / "ca.pem"
    assert cfg.mqtt.tls.cert == Path("/etc/xunfang/unit.pem")


def test_unreadable_and_non_toml_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigUnreadable, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[unit\nid = 1\n")
    with pytest.raises(ConfigUnreadable, match="not valid TOML"):
        load_config(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[unit]")
    with pytest.raises(ConfigUnreadable, match="not UTF-8"):
        load_config(binary)


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firmware_py.cli", "config", "check", "-c",
                           str(path)], capture_output=True, text=True, timeout=60)


def test_config_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    doc = merge(base_document(tmp_path), {"unit": {"id": "ZT_pp"}, "mqtt": {"port": 0},
                                          "readers": [{"name": "m", "driver": "rdm6300",
                                                       "port": "/dev/serial0", "baud": 9601}]})
    proc = _check(write_config(tmp_path / "unit.toml", doc))
    assert proc.returncode == 2
    assert "configuration has 3 problem(s)" in proc.stderr
    for line in ('unit.id: must match ^[a-z0-9-]{1,32}$, got "ZT_pp"',
                 "mqtt.port: must be at least 1, got 0",
                 "readers[0].baud: must be one of 9600, 19200, 38400, 57600, 115200, got 9601"):
        assert f"  {line}\n" in proc.stderr


def test_config_check_says_ok_for_a_good_file_and_exits_2_for_no_file(tmp_path: Path) -> None:
    # The example as installed: its certificate files in place.
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("ca.pem", "unit.pem", "unit.key"):
        (tls / name).write_text("-----BEGIN …\n")
    kiosk = tmp_path / "kiosk.toml"
    kiosk.write_text((REPO / "config" / "kiosk.toml").read_text().replace(
        "/etc/xunfang/tls/", f"{tls}/"))
    proc = _check(kiosk)
    assert proc.returncode == 0, proc.stderr
    assert "ok: unit zt-kiosk-shangbu (kiosk) of site zhuantang" in proc.stdout
    assert _check(tmp_path / "nope.toml").returncode == 2


# -- [inputs]: contacts and the lights an alarm drives (docs/lights.md) ----------------------


def test_inputs_defaults_panic_normally_open_tamper_normally_closed(tmp_path: Path) -> None:
    inputs = parse_config(merge(base_document(tmp_path), {"inputs": {"panic": 19}})).inputs
    assert (inputs.panic_normally_closed, inputs.tamper_normally_closed) == (False, True)
    assert inputs.panic_hold_s == 0 and inputs.alarm_lights is None
    assert inputs.alarm_light_names(["warning", "lightbox"]) == ["warning"]
    assert inputs.alarm_light_names(["beacon", "lightbox"]) == []


def test_alarm_lights_name_configured_lights(tmp_path: Path) -> None:
    lights = {"beacon": {"pins": [5]}, "lightbox": {"pins": [13]}}
    cfg = parse_config(merge(base_document(tmp_path), {
        "lights": lights, "inputs": {"panic": 19, "alarm_lights": ["beacon"]}}))
    assert cfg.inputs.alarm_light_names(cfg.lights) == ["beacon"]
    found = problems(tmp_path, lights=lights, inputs={"alarm_lights": ["beacon", "warning"]})
    assert found == ["inputs.alarm_lights[1]: no light 'warning' in [lights.*] "
                     "(has: beacon, lightbox)"]


@pytest.mark.parametrize(("inputs", "expected"), [
    ({"tamper_normally_closed": "yes"}, 'inputs.tamper_normally_closed: expected bool, got "yes"'),
    ({"panic_hold_s": -1}, "inputs.panic_hold_s: must be at least 0, got -1"),
    ({"alarm_lights": ["Warning!"]}, "inputs.alarm_lights[0]: must match"),
], ids=["polarity", "hold", "light name"])
def test_inputs_rules_name_their_key(tmp_path: Path, inputs: dict[str, Any],
                                     expected: str) -> None:
    found = problems(tmp_path, inputs=inputs)
    assert any(line.startswith(expected) for line in found), found


def test_camera_keys_have_working_defaults_and_take_toml_level_tables(tmp_path: Path) -> None:
    cfg = parse_config(merge(base_document(tmp_path), {"cameras": [
        {"name": "gate", "source": "rtsp://192.0.2.10:554/stream1",
         "sensitivity": {"1": 2.0, "3": 1.0}, "masks": [[[0, 0], [0.25, 0], [0.25, 1]]]},
    ]}))
    cam = cfg.cameras[0]
    assert cam.sensitivity == {1: 2.0, 3: 1.0}
    assert (cam.pre_roll_s, cam.post_roll_s, cam.codec, cam.continuous_levels) == \
        (5.0, 5.0, "mjpeg", [1])
    assert cam.masks == [[[0.0, 0.0], [0.25, 0.0], [0.25, 1.0]]]


def test_a_camera_config_survives_the_json_trip_to_its_worker(tmp_path: Path) -> None:
    """The camera daemon hands its worker the config as JSON (camera/worker.py)."""
    import json

    cfg = parse_config(merge(base_document(tmp_path), {"cameras": [
        {"name": "gate", "source": "0", "sensitivity": {"1": 2.0}}]}))
    again = parse_config(json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again.cameras == cfg.cameras


# -- hostile files: one line naming the file or the key, exit 2, at once -----------------------

XUNFANG = Path(sys.executable).parent / "xunfang"
# The daemon must answer at once; this only keeps a hanging one from hanging the test run.
HANG_S = 30.0
BASE_TOML = """\
[unit]
id = "zt-pp-03"
site = "zhuantang"
kind = "patrol_point"
data_dir = "data"
runtime_dir = "run"
"""


def _deep_tables(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "unit.toml"
    path.write_text(BASE_TOML + "x = " + "{ a = " * 5000 + "1" + " }" * 5000 + "\n")
    return path, f"{path}: not valid TOML: tables or arrays nested too deeply"


def _deep_arrays(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "unit.toml"
    path.write_text(BASE_TOML + "[patrol]\nwindows = { day = " + "[" * 200 + "]" * 200 + " }\n")
    return path, "patrol.windows.day[0][0][0][0][0][0]: nested too deeply"


def _dev_zero(tmp_path: Path) -> tuple[Path, str]:
    return Path("/dev/zero"), "/dev/zero: cannot read config: a character device, not a file"


def _fifo(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "unit.toml"
    os.mkfifo(path)
    return path, f"{path}: cannot read config: a FIFO, not a file"


def _directory(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path, f"{tmp_path}: cannot read config: a directory, not a file"


def _huge(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "unit.toml"
    with path.open("w") as out:
        out.write(BASE_TOML)
        out.write(("# " + "x" * 1000 + "\n") * 300)
    return path, f"{path}: cannot read config: larger than 256 KiB"


def _data_dir_is_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "data").write_text("not a folder\n")
    path = tmp_path / "unit.toml"
    path.write_text(BASE_TOML)
    return path, f"unit.data_dir: {tmp_path / 'data'} is a file, not a directory"


def _data_dir_under_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "data").write_text("not a folder\n")
    path = tmp_path / "unit.toml"
    path.write_text(BASE_TOML.replace('"data"', '"data/unit"'))
    return path, f"unit.data_dir: {tmp_path / 'data'} is a file, not a directory"


def _many_windows(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "unit.toml"
    windows = ", ".join(['"18:00-19:00"'] * 15_000)          # 100,000 would pass 256 KiB
    path.write_text(BASE_TOML + f"[lights.warning]\npins = [5]\nschedule = [{windows}]\n")
    return path, "lights.warning.schedule: at most 256 entries, got 15000"


def _many_patrol_windows(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "unit.toml"
    windows = ", ".join(f'w{i} = "08:00-09:00"' for i in range(10_000))
    path.write_text(BASE_TOML + f"[patrol]\nwindows = {{ {windows} }}\n")
    return path, "patrol.windows: at most 256 entries, got 10000"


HOSTILE = {
    "deeply nested tables": _deep_tables,
    "deeply nested arrays": _deep_arrays,
    "/dev/zero": _dev_zero,
    "a FIFO": _fifo,
    "a directory": _directory,
    "a 300 KB file": _huge,
    "data_dir is a file": _data_dir_is_a_file,
    "data_dir under a file": _data_dir_under_a_file,
    "15,000 light windows": _many_windows,
    "10,000 patrol windows": _many_patrol_windows,
}


def _xunfang(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([str(XUNFANG), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=HANG_S,
                          env=dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))
    return proc, time.monotonic() - started


@pytest.mark.parametrize("command", [("config", "check"), ("run",)], ids=["check", "run"])
@pytest.mark.parametrize("make", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_config_gets_one_line_and_exit_2_at_once(tmp_path: Path, make: Any,
                                                            command: tuple[str, ...]) -> None:
    path, expected = make(tmp_path)
    proc, took = _xunfang(*command, "-c", str(path))
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and expected in lines[0], lines[:5]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    # One second is the goal on a Pi; this only catches a hang or a runaway on a busy machine.
    assert took < HANG_S / 3
    assert not (tmp_path / "data" / "journal.db").exists()


# -- `config check`: every problem at once, the files it names, "did you mean" ----------------


def test_config_check_reports_field_and_cross_problems_together(tmp_path: Path) -> None:
    doc = merge(base_document(tmp_path / "data"), {
        "mqtt": {"keepalive": 30}, "feedback": {"ok_led": 17, "buzzer": 99},
        "inputs": {"panic": 17}})
    proc = _check(write_config(tmp_path / "unit.toml", doc))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[1:] == [
        "  mqtt.keepalive: unknown key; did you mean keepalive_s? (see docs/configuration.md)",
        "  feedback.buzzer: must be at most 27, got 99",
        "  inputs.panic: GPIO17 is already used by feedback.ok_led",
    ]


def test_config_check_reports_missing_and_unusable_credential_files(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "unit.pem").write_text("certificate\n")
    (tmp_path / "tls" / "unit.key").mkdir()
    doc = merge(base_document(Path("data")), {"mqtt": {
        "username": "zt-pp-03", "password_file": "secret/mqtt.pw",
        "tls": {"ca": "tls/ca.pem", "cert": "tls/unit.pem", "key": "tls/unit.key"}}})
    path = write_config(tmp_path / "unit.toml", doc)
    proc = _check(path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[1:] == [
        f"  mqtt.password_file: {tmp_path / 'secret' / 'mqtt.pw'} does not exist",
        f"  mqtt.tls.ca: {tmp_path / 'tls' / 'ca.pem'} does not exist",
        f"  mqtt.tls.key: {tmp_path / 'tls' / 'unit.key'} is a directory, not a file",
    ]
    # The daemons do not refuse to start over them (the services check with their
    # component's name): the station works without the broker, and the uplink says what
    # it cannot read each time it tries, and takes the files when they appear.
    for component in ("station", "camera", "uplink"):
        proc = subprocess.run([str(XUNFANG), "config", "check", "-c", str(path), component],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert load_config(path).mqtt.tls is not None
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "mqtt.pw").write_text("pw\n")
    (tmp_path / "tls" / "ca.pem").write_text("ca\n")
    (tmp_path / "tls" / "unit.key").rmdir()
    (tmp_path / "tls" / "unit.key").write_text("key\n")
    proc = _check(path)
    assert proc.returncode == 0, proc.stderr
