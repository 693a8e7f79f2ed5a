"""`xunfang check -c FILE`: the installer's self-test, run as the real command.

Real parts: Mosquitto (plain, and with TLS and the ACL rendered from the
inventory), sim readers on ptys, gpiozero's mock pins, a video file as the
camera, the install script writing chrony's snippet and the watchdog drop-in
into a root directory, and a running station for the "in use" paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from tests.drivers.pn532_peer import Pn532Peer
from tests.support.brokers import Mosquitto, render_acl
from tests.support.daemon import Daemon
from tests.support.footage import clip_path
from tests.support.units import write_unit_config
from tests.support.uplink import wait_until

REPO = Path(__file__).resolve().parents[2]
XUNFANG = Path(sys.executable).parent / "xunfang"
TIME = {"ntp_servers": ["192.0.2.1", "ntp.example.cn"]}
UNIT, SITE = "zt-pp-03", "zhuantang"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env.update(GPIOZERO_PIN_FACTORY="mock", XUNFANG_CLOCK_SYNCED="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def check(config: Path, *args: str, root: Path | None = None, timeout: float = 90,
          **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(XUNFANG), "check", "-c", str(config), *args]
    if root is not None:
        cmd += ["--root", str(root)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_env(**env), check=False)


def lines_of(out: str, part: str) -> list[str]:
    return [line for line in out.splitlines() if f" {part}" in line.split(":")[0]]


@pytest.fixture(scope="module")
def system_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A unit's root as the install script leaves it, with chronyd and a watchdog device."""
    root = tmp_path_factory.mktemp("root")
    config = write_unit_config(root.parent / "installed.toml", root / "unused", time=TIME)
    done = subprocess.run(["bash", str(REPO / "systemd/install.sh"), "--no-apt", "--config",
                           str(config)], env={**os.environ, "DESTDIR": str(root)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    (root / "usr/sbin/chronyd").symlink_to("/usr/sbin/chronyd")
    (root / "dev").mkdir(exist_ok=True)
    # In a real root this is the kernel's character device; only its name is looked at.
    (root / "dev/watchdog0").touch()
    return root


def unit_config(tmp_path: Path, **sections: Any) -> Path:
    sections.setdefault("time", TIME)
    return write_unit_config(tmp_path / "unit.toml", tmp_path / "data", **sections)


def test_every_part_passes_on_a_complete_unit(tmp_path: Path, system_root: Path) -> None:
    with Mosquitto(tls=True, acl_text=render_acl({UNIT: SITE})) as broker:
        assert broker.pki is not None
        creds = broker.pki.client(UNIT)
        cfg = unit_config(
            tmp_path,
            mqtt={"host": "127.0.0.1", "port": broker.port,
                  "tls": {"ca": str(creds.ca), "cert": str(creds.cert), "key": str(creds.key)}},
            readers=[{"name": "main", "driver": "sim", "port": "sim://rdm6300"}],
            lights={"warning": {"pins": [17, 27]}},
            inputs={"panic": 5},
            cameras=[{"name": "gate", "source": str(clip_path("bikes.mp4"))}],
        )
        proc = subprocess.Popen(
            [str(XUNFANG), "check", "-c", str(cfg), "--tap", "--tap-timeout", "30",
             "--light-seconds", "0.2", "--root", str(system_root)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(LANG="en_GB.UTF-8"))
        assert proc.stdout is not None
        out: list[str] = []
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            out.append(line)
            if "tap a card on reader main now" in line:
                tap = subprocess.run([str(XUNFANG), "sim", "tap", "14008EC793", "-c", str(cfg),
                                      "--wait", "0"], capture_output=True, text=True,
                                     timeout=30, env=_env(), check=False)
                assert tap.returncode == 0, tap.stdout + tap.stderr
            assert time.monotonic() < deadline, "".join(out)
        rc = proc.wait(60)
        stderr = proc.stderr.read() if proc.stderr else ""
    text = "".join(out)
    assert rc == 0, text + stderr
    for part in ("config", "data directory", "reader main", "light warning", "input panic",
                 "camera gate", "TLS files", "broker", "clock", "trusted keys", "time daemon",
                 "hardware watchdog"):
        assert any(line.startswith(f"[ ok ] {part}:") for line in text.splitlines()), (part, text)
    assert "read card 14008EC793" in text
    assert f"published on xunfang/v1/{SITE}/{UNIT}/health (MQTT 5: the ACL allows it)" in text
    assert f"certificate CN {UNIT}" in text
    assert "chrony configured: 192.0.2.1, ntp.example.cn" in text
    assert "RuntimeWatchdogSec=15s, device /dev/watchdog0" in text
    frame = tmp_path / "data/check/camera-gate.jpg"
    assert str(frame) in text
    image = cv2.imread(str(frame))
    assert image is not None and image.shape[0] > 0
    assert text.rstrip().endswith("all 12 checks passed")


def test_report_is_chinese_by_default(tmp_path: Path, system_root: Path) -> None:
    with Mosquitto() as broker:
        cfg = unit_config(tmp_path, mqtt={"host": "127.0.0.1", "port": broker.port})
        done = check(cfg, root=system_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[通过] 配置:" in done.stdout
    assert "[通过] MQTT 服务器: 已连接" in done.stdout
    assert "[跳过] 读卡器: 未配置" in done.stdout
    assert done.stdout.rstrip().endswith("项检查通过")


def test_password_unit_passes_and_a_wrong_password_is_refused(tmp_path: Path,
                                                              system_root: Path) -> None:
    password = tmp_path / "mqtt.password"
    with Mosquitto(passwords={UNIT: "s3cret"}, acl_text=render_acl({UNIT: SITE})) as broker:
        mqtt = {"host": "127.0.0.1", "port": broker.port, "username": UNIT,
                "password_file": str(password)}
        cfg = unit_config(tmp_path, mqtt=mqtt)
        password.write_text("s3cret\n")
        good = check(cfg, "--lang", "en", root=system_root)
        password.write_text("wrong\n")
        bad = check(cfg, "--lang", "en", root=system_root)
    assert good.returncode == 0, good.stdout
    assert f"[ ok ] password file: {password}: readable" in good.stdout
    assert "(MQTT 5: the ACL allows it)" in good.stdout
    assert bad.returncode == 1
    [line] = [x for x in bad.stdout.splitlines() if x.startswith("[FAIL] broker:")]
    assert f"127.0.0.1:{broker.port} refused the unit:" in line
    assert "ask the centre to add it" in bad.stdout


def test_broker_down_fails_with_what_to_do(tmp_path: Path, system_root: Path) -> None:
    broker = Mosquitto()
    port = broker.port  # never started: nothing listens there
    broker.close()
    cfg = unit_config(tmp_path, mqtt={"host": "127.0.0.1", "port": port})
    done = check(cfg, root=system_root, LANG="en_US.UTF-8")
    assert done.returncode == 1, done.stdout
    out = done.stdout.splitlines()
    i = next(i for i, line in enumerate(out) if line.startswith("[FAIL] broker:"))
    assert f"cannot reach 127.0.0.1:{port}" in out[i]
    assert out[i + 1].strip().startswith("→ check that the broker runs")
    assert done.stdout.rstrip().endswith("1 of 7 checks failed")


def test_acl_refusing_the_units_topic_fails(tmp_path: Path, system_root: Path) -> None:
    # The inventory puts the unit in another site: its certificate is accepted,
    # but nothing under its configured site may be published.
    with Mosquitto(tls=True, acl_text=render_acl({UNIT: "other-site"})) as broker:
        assert broker.pki is not None
        creds = broker.pki.client(UNIT)
        cfg = unit_config(tmp_path, mqtt={
            "host": "127.0.0.1", "port": broker.port,
            "tls": {"ca": str(creds.ca), "cert": str(creds.cert), "key": str(creds.key)}})
        done = check(cfg, "--lang", "en", root=system_root)
    assert done.returncode == 1, done.stdout
    [line] = [x for x in done.stdout.splitlines() if x.startswith("[FAIL] broker:")]
    assert f"the ACL refuses a publish on xunfang/v1/{SITE}/{UNIT}/health" in line
    assert "ask the centre to add it to the inventory" in done.stdout
    assert "[ ok ] TLS files:" in done.stdout


def test_unreadable_key_fails_the_tls_files_and_the_broker(tmp_path: Path,
                                                          system_root: Path) -> None:
    with Mosquitto(tls=True, acl_text=render_acl({UNIT: SITE})) as broker:
        assert broker.pki is not None
        creds = broker.pki.client(UNIT)
        key = tmp_path / "unit.key"
        key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        cfg = unit_config(tmp_path, mqtt={
            "host": "127.0.0.1", "port": broker.port,
            "tls": {"ca": str(creds.ca), "cert": str(creds.cert), "key": str(key)}})
        done = check(cfg, "--lang", "en", root=system_root)
    assert done.returncode == 1, done.stdout
    assert f"[FAIL] TLS files: key {key}:" in done.stdout
    assert "[FAIL] broker: cannot set up the connection" in done.stdout


def test_wrong_ca_certificate_is_refused_by_the_broker(tmp_path: Path,
                                                       system_root: Path) -> None:
    with Mosquitto(tls=True, acl_text=render_acl({UNIT: SITE})) as broker:
        assert broker.pki is not None
        creds = broker.pki.wrong_client(UNIT)
        cfg = unit_config(tmp_path, mqtt={
            "host": "127.0.0.1", "port": broker.port,
            "tls": {"ca": str(creds.ca), "cert": str(creds.cert), "key": str(creds.key)}})
        done = check(cfg, "--lang", "en", "--skip", "keys", root=system_root)
    assert done.returncode == 1, done.stdout
    [line] = [x for x in done.stdout.splitlines() if x.startswith("[FAIL] broker:")]
    assert "refuses the unit's certificate" in line or "TLS with" in line, line


def test_pn532_names_its_firmware_and_a_tapped_card(tmp_path: Path, system_root: Path) -> None:
    peer = Pn532Peer()
    try:
        cfg = unit_config(tmp_path, readers=[
            {"name": "door", "driver": "pn532", "port": peer.path, "baud": 115200}])
        proc = subprocess.Popen(
            [str(XUNFANG), "check", "-c", str(cfg), "--tap", "--tap-timeout", "20", "--lang",
             "en", "--skip", "broker", "--root", str(system_root)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        assert proc.stdout is not None
        out = []
        for line in proc.stdout:
            out.append(line)
            if "tap a card on reader door now" in line:
                peer.present(bytes.fromhex("04A1B2C3D4E580"))
        rc = proc.wait(60)
    finally:
        peer.close()
    text = "".join(out)
    assert rc == 0, text
    assert (f"[ ok ] reader door: pn532 on {peer.path} opens, reports PN532 firmware 1.6; "
            "read card 04A1B2C3D4E580") in text


def test_no_card_within_the_tap_timeout_fails(tmp_path: Path, system_root: Path) -> None:
    cfg = unit_config(tmp_path,
                      readers=[{"name": "main", "driver": "sim", "port": "sim://rdm6300"}])
    done = check(cfg, "--tap", "--tap-timeout", "1", "--lang", "en", "--skip", "broker",
                 root=system_root)
    assert done.returncode == 1
    assert "[FAIL] reader main: sim on sim://rdm6300 opens; no card read within 1 s" \
        in done.stdout
    assert "hold the card flat on the reader" in done.stdout


def test_camera_without_frames_fails(tmp_path: Path, system_root: Path) -> None:
    missing = tmp_path / "no-such-clip.avi"
    cfg = unit_config(tmp_path, cameras=[{"name": "gate", "source": str(missing)}])
    done = check(cfg, "--lang", "en", "--skip", "broker", root=system_root)
    assert done.returncode == 1
    [line] = [x for x in done.stdout.splitlines() if "camera gate" in x]
    assert line.startswith(f"[FAIL] camera gate: no frame from {missing} within 15 s")
    assert "check the camera's cable and power" in done.stdout
    assert not (tmp_path / "data/check/camera-gate.jpg").exists()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only file system (a read-only tmpfs; the tests run as root,
    whom permission bits would not stop)."""
    where = tmp_path / "ro"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                   check=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def test_data_dir_that_cannot_be_written_fails(tmp_path: Path, system_root: Path,
                                               read_only_dir: Path) -> None:
    # (A data_dir that is a file is already a config error: config check says so, exit 2.)
    cfg = write_unit_config(tmp_path / "unit.toml", read_only_dir, time=TIME)
    done = check(cfg, "--lang", "en", "--skip", "broker", root=system_root)
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = [x for x in done.stdout.splitlines() if "data directory" in x]
    assert line.startswith(f"[FAIL] data directory: {read_only_dir}: cannot write")
    assert "Read-only file system" in line
    assert "→ make" in done.stdout


def test_reader_whose_port_is_missing_fails(tmp_path: Path, system_root: Path) -> None:
    cfg = unit_config(tmp_path, readers=[
        {"name": "door", "driver": "rdm6300", "port": str(tmp_path / "ttyUSB9")}])
    done = check(cfg, "--lang", "en", "--skip", "broker", root=system_root)
    assert done.returncode == 1, done.stdout
    [line] = [x for x in done.stdout.splitlines() if "reader door" in x]
    assert line.startswith("[FAIL] reader door: rdm6300 on")
    assert "did not come online" in line
    assert f"that {tmp_path / 'ttyUSB9'} exists" in done.stdout


def test_tamper_loop_open_fails_the_input(tmp_path: Path, system_root: Path) -> None:
    # Mock pins float high: a normally-closed tamper loop reads open (lid off, wire cut).
    cfg = unit_config(tmp_path, inputs={"panic": 5, "tamper": 6})
    done = check(cfg, "--lang", "en", "--skip", "broker", root=system_root)
    assert "[ ok ] input panic: GPIO5: normal" in done.stdout
    assert "[FAIL] input tamper: GPIO6: ACTIVE (alarm)" in done.stdout
    assert "close the lid" in done.stdout
    assert done.returncode == 1


def test_unsynchronised_clock_and_missing_time_files_fail(tmp_path: Path) -> None:
    cfg = unit_config(tmp_path)
    empty_root = tmp_path / "root"
    empty_root.mkdir()
    done = check(cfg, "--lang", "en", "--skip", "broker", root=empty_root,
                 XUNFANG_CLOCK_SYNCED="0")
    assert done.returncode == 1
    assert "[FAIL] clock: not synchronised" in done.stdout
    assert "[FAIL] time daemon: chrony is not installed" in done.stdout
    assert "[FAIL] hardware watchdog: systemd does not use it" in done.stdout
    assert done.stdout.count("sudo ./systemd/install.sh") == 2


def test_chrony_snippet_out_of_step_with_the_config_fails(tmp_path: Path,
                                                          system_root: Path) -> None:
    cfg = unit_config(tmp_path, time={"ntp_servers": ["10.0.0.1"]})
    done = check(cfg, "--lang", "en", "--skip", "broker", root=system_root)
    assert done.returncode == 1
    assert "xunfang.conf does not match [time] in the config" in done.stdout


def test_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "unit.toml"
    cfg.write_text('[unit]\nid = "Bad Id"\n')
    done = check(cfg)
    assert done.returncode == 2
    assert "unit.id" in done.stderr


def test_while_the_station_runs_it_is_asked_not_bypassed(tmp_path: Path,
                                                        system_root: Path) -> None:
    cfg = unit_config(tmp_path,
                      readers=[{"name": "main", "driver": "sim", "port": "sim://rdm6300"}],
                      lights={"warning": {"pins": [17, 27]}}, inputs={"panic": 5})
    station = Daemon(cfg, tmp_path / "station.log", ("station",),
                     env={"GPIOZERO_PIN_FACTORY": "mock", "XUNFANG_CLOCK_SYNCED": "1"})
    station.start()
    try:
        status = tmp_path / "data/run/station.json"
        wait_until(lambda: status.exists() and '"online"' in status.read_text(), 30,
                   "the running station's status file", step=0.1)
        assert station.proc is not None
        done = check(cfg, "--lang", "en", "--skip", "broker", "--light-seconds", "0.2",
                     root=system_root)
    finally:
        station.stop()
    assert done.returncode == 0, done.stdout + station.text()
    pid = station.proc.pid
    assert (f"[ ok ] reader main: in use by the running station (PID {pid}), state from its "
            "status file: online") in done.stdout
    assert "[ ok ] light warning: GPIO17/GPIO27: cycled through its modes by the running " \
           "station" in done.stdout
    assert f"[ ok ] input panic: GPIO5: normal; in use by the running station (PID {pid})" \
        in done.stdout


def test_a_station_with_lights_only_is_found_by_its_lock(tmp_path: Path,
                                                         system_root: Path) -> None:
    cfg = unit_config(tmp_path, lights={"warning": {"pins": [17, 27]}}, inputs={"panic": 5})
    station = Daemon(cfg, tmp_path / "station.log", ("station",),
                     env={"GPIOZERO_PIN_FACTORY": "mock", "XUNFANG_CLOCK_SYNCED": "1"})
    station.start()
    try:
        lock = tmp_path / "data/run/lights.lock"
        wait_until(lambda: lock.exists() and lock.read_text().strip().isdigit(), 30,
                   "the station's lights lock", step=0.1)
        done = check(cfg, "--lang", "en", "--skip", "broker", "--skip", "lights",
                     root=system_root)
    finally:
        station.stop()
    assert station.proc is not None
    assert done.returncode == 0, done.stdout + station.text()
    assert f"[ ok ] input panic: GPIO5: normal; in use by the running station " \
           f"(PID {station.proc.pid})" in done.stdout
