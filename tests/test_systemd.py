"""The systemd units, udev rules and install script under ``systemd/``.

The units are checked by systemd itself: ``systemd-analyze verify`` (syntax,
and that every ExecStart= program exists, which is why the units are rendered
first to run this checkout's ``xunfang`` with a real config) and
``systemd-analyze security --offline=true`` (the exposure score). Invariant 4
(hardware processes have no network; the network process has no hardware) is
asserted on the settings themselves. ``install.sh`` runs for real into a
temporary DESTDIR, which touches nothing outside it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
INSTALL = SYSTEMD / "install.sh"
SERVICES = ("xunfang-station.service", "xunfang-camera.service", "xunfang-uplink.service")
UNIT_FILES = (*SERVICES, "xunfang.target")
XUNFANG = Path(sys.prefix) / "bin" / "xunfang"  # this checkout's venv

INSTALLED_VENV = "/opt/xunfang/current/bin/xunfang"
INSTALLED_CONFIG = "/etc/xunfang/unit.toml"

# Measured with systemd 252 (Debian 12): 1.0, 1.0, 1.4. Each hardening
# setting given up costs at least 0.1, so any regression fails here. The
# 0.4 that all three pay is ProtectClock=no and adjtimex in the syscall
# filter: the unit reads the clock's sync state with adjtimex (read only).
EXPOSURE_MAX = {
    "xunfang-station.service": 1.0,
    "xunfang-camera.service": 1.0,
    "xunfang-uplink.service": 1.4,
}

pytestmark = pytest.mark.timeout(60)


# -- helpers ------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value in order (unit files repeat keys; for a
    single-valued setting the last one wins). Comments and line
    continuations as systemd.syntax(7) has them."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((SYSTEMD / name).read_text())


def last(u: dict[str, dict[str, list[str]]], section: str, key: str) -> str | None:
    values = u.get(section, {}).get(key)
    return values[-1] if values else None


def words(u: dict[str, dict[str, list[str]]], section: str, key: str) -> list[str]:
    """A list setting: every assignment's words; an empty assignment resets."""
    out: list[str] = []
    for value in u.get(section, {}).get(key, []):
        out = [] if not value else [*out, *value.split()]
    return out


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as they would run here: this checkout's xunfang, the demo config."""
    root = tmp_path_factory.mktemp("units")
    config = root / "unit.toml"
    shutil.copy(REPO / "config" / "demo.toml", config)
    assert XUNFANG.is_file(), f"{XUNFANG} missing: run scripts/setup.sh"
    check = run([str(XUNFANG), "config", "check", "-c", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr
    out = root / "system"
    out.mkdir()
    for name in UNIT_FILES:
        text = (SYSTEMD / name).read_text()
        text = text.replace(INSTALLED_VENV, str(XUNFANG)).replace(INSTALLED_CONFIG, str(config))
        (out / name).write_text(text)
    return out


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(["systemd-analyze", *args], cwd=cwd)


# -- systemd's own checks -----------------------------------------------------------------


def test_units_point_at_the_installed_paths() -> None:
    for name in SERVICES:
        component = name.removeprefix("xunfang-").removesuffix(".service")
        u = unit(name)
        assert last(u, "Service", "ExecStart") == (
            f"{INSTALLED_VENV} run -c {INSTALLED_CONFIG} {component}")
        assert last(u, "Service", "ExecStartPre") == (
            f"{INSTALLED_VENV} config check -c {INSTALLED_CONFIG} {component}")


def test_systemd_analyze_verify(rendered: Path) -> None:
    result = analyze("verify", "--man=no", *(f"./{n}" for n in UNIT_FILES), cwd=rendered)
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if "xunfang" in line or str(rendered) in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_verify_catches_a_broken_unit(rendered: Path, tmp_path: Path) -> None:
    """The check above would see a typo: systemd-analyze only warns, so the
    test reads its output as well as its exit status."""
    text = (rendered / "xunfang-uplink.service").read_text()
    (tmp_path / "xunfang-uplink.service").write_text(text.replace("Type=notify", "Type=notifyy"))
    shutil.copy(rendered / "xunfang.target", tmp_path)
    result = analyze("verify", "--man=no", "./xunfang-uplink.service", cwd=tmp_path)
    assert "notifyy" in result.stdout + result.stderr


def exposure(path: Path) -> float:
    result = analyze("security", "--offline=true", "--no-pager", f"./{path.name}", cwd=path.parent)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure(rendered: Path, name: str) -> None:
    score = exposure(rendered / name)
    print(f"{name}: exposure {score}")
    assert score <= EXPOSURE_MAX[name], f"{name}: exposure {score} > {EXPOSURE_MAX[name]}"


def test_camera_rtsp_drop_in_reaches_only_the_camera(rendered: Path, tmp_path: Path) -> None:
    """The invariant's exception: with the example drop-in the camera has IP,
    and an allow list of one address."""
    shutil.copy(rendered / "xunfang-camera.service", tmp_path)
    shutil.copy(rendered / "xunfang.target", tmp_path)
    dropins = tmp_path / "xunfang-camera.service.d"
    dropins.mkdir()
    shutil.copy(SYSTEMD / "examples" / "camera-rtsp.conf", dropins / "rtsp.conf")
    result = analyze("security", "--offline=true", "--no-pager", "./xunfang-camera.service",
                     cwd=tmp_path)
    lines = result.stdout.splitlines()
    network = next(line for line in lines if "PrivateNetwork=" in line)
    deny = next(line for line in lines if "IPAddressDeny=" in line)
    # The drop-in is read: the network is on, so the line carries a penalty.
    assert re.search(r"\d\.\d\s*$", network), network
    assert "allow list with non-localhost entries" in deny, deny
    assert exposure(tmp_path / "xunfang-camera.service") > EXPOSURE_MAX["xunfang-camera.service"]
    verify = analyze("verify", "--man=no", "./xunfang-camera.service", cwd=tmp_path)
    assert verify.returncode == 0 and "xunfang" not in verify.stdout + verify.stderr


# -- the settings behind invariant 4 and the runtime contract ------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_common_service_contract(name: str) -> None:
    u = unit(name)
    s = "Service"
    assert last(u, s, "Type") == "notify"
    assert last(u, s, "NotifyAccess") == "main"
    assert last(u, s, "WatchdogSec") == "30s"
    assert last(u, s, "Restart") == "on-failure"
    assert last(u, s, "RestartSec")
    assert last(u, "Unit", "StartLimitIntervalSec") and last(u, "Unit", "StartLimitBurst")
    assert last(u, "Unit", "PartOf") == "xunfang.target"
    assert last(u, "Install", "WantedBy") == "xunfang.target"
    assert (last(u, s, "User"), last(u, s, "Group")) == ("xunfang", "xunfang")
    assert last(u, s, "StateDirectory") == "xunfang"
    assert last(u, s, "StateDirectoryMode") == "0700"
    assert last(u, s, "RuntimeDirectory") == "xunfang"
    assert last(u, s, "RuntimeDirectoryPreserve") == "yes"  # shared by the three
    assert last(u, s, "UMask") == "0077"
    assert last(u, s, "CapabilityBoundingSet") == ""
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                "RestrictNamespaces", "LockPersonality", "MemoryDenyWriteExecute",
                "RestrictSUIDSGID", "RestrictRealtime"):
        assert last(u, s, key) == "yes", key
    assert last(u, s, "ProtectSystem") == "strict"
    assert set(words(u, s, "ReadWritePaths")) == {"/var/lib/xunfang", "/run/xunfang"}
    assert "GPIOZERO_PIN_FACTORY" not in " ".join(u[s].get("Environment", []))
    # The clock's sync state is read with adjtimex(); glibc makes it the
    # clock_adjtime syscall, outside @system-service, and ProtectClock=yes
    # would forbid it: every event would then say clock_synced=false.
    filters = u[s]["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert {"adjtimex", "clock_adjtime"} <= set(filters[-1].split())
    assert last(u, s, "ProtectClock") in (None, "no")


@pytest.mark.parametrize("name", ["xunfang-station.service", "xunfang-camera.service"])
def test_hardware_services_have_no_network(name: str) -> None:
    u = unit(name)
    assert last(u, "Service", "PrivateNetwork") == "yes"
    assert last(u, "Service", "IPAddressDeny") == "any"
    assert words(u, "Service", "RestrictAddressFamilies") == ["AF_UNIX"]
    assert last(u, "Service", "DevicePolicy") == "closed"


def test_station_devices_and_groups() -> None:
    u = unit("xunfang-station.service")
    allowed = {v.split()[0]: v.split()[1] for v in u["Service"]["DeviceAllow"]}
    assert allowed == {"char-ttyS": "rw", "char-ttyUSB": "rw", "char-ttyACM": "rw",
                       "char-ttyAMA": "rw", "char-gpiochip": "rw"}
    assert words(u, "Service", "SupplementaryGroups") == ["dialout", "gpio"]


def test_camera_devices_and_groups() -> None:
    u = unit("xunfang-camera.service")
    assert u["Service"]["DeviceAllow"] == ["char-video4linux rw"]
    assert words(u, "Service", "SupplementaryGroups") == ["video"]
    # A memory blow-up in OpenCV stays inside the camera's cgroup.
    assert u["Service"]["MemoryMax"] == ["600M"]


def test_uplink_has_no_hardware() -> None:
    u = unit("xunfang-uplink.service")
    assert last(u, "Service", "PrivateDevices") == "yes"
    assert "DeviceAllow" not in u["Service"]
    assert not words(u, "Service", "SupplementaryGroups")
    assert sorted(words(u, "Service", "RestrictAddressFamilies")) == [
        "AF_INET", "AF_INET6", "AF_UNIX"]
    assert last(u, "Service", "PrivateNetwork") in (None, "no")


def test_target_is_wanted_by_multi_user() -> None:
    assert last(unit("xunfang.target"), "Install", "WantedBy") == "multi-user.target"


def test_parse_unit_keeps_duplicates_and_continuations() -> None:
    u = parse_unit("[Service]\n# c\nA=1\nA=2\nB=x \\\n  y\nC=\n")
    assert u["Service"] == {"A": ["1", "2"], "B": ["x  y"], "C": [""]}


# -- udev ---------------------------------------------------------------------------------


def test_udev_rules_name_readers_and_set_groups() -> None:
    rules = [line for line in (SYSTEMD / "99-xunfang.rules").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    for vendor, product in (("1a86", "7523"), ("10c4", "ea60"), ("0403", "6001"),
                            ("067b", "2303")):
        rule = next(r for r in rules if f'ATTRS{{idVendor}}=="{vendor}"' in r)
        assert f'ATTRS{{idProduct}}=="{product}"' in rule
        assert 'SUBSYSTEM=="tty"' in rule
        assert 'SYMLINK+="xunfang-reader-' in rule
        assert 'GROUP="dialout"' in rule and 'MODE="0660"' in rule
    gpio = next(r for r in rules if "gpiochip" in r)
    assert 'GROUP="gpio"' in gpio and 'MODE="0660"' in gpio
    for rule in rules:  # every key is KEY==, KEY=, KEY+= or KEY{attr}...
        for part in (p.strip() for p in rule.split(",")):
            assert re.fullmatch(r'[A-Z]+(\{[A-Za-z_]+\})?(==|!=|\+=|=)"[^"]*"', part), part


# -- install.sh ---------------------------------------------------------------------------


def test_install_script_parses() -> None:
    result = run(["bash", "-n", str(INSTALL)])
    assert result.returncode == 0, result.stderr
    assert os.access(INSTALL, os.X_OK)


def test_shell_scripts_pass_shellcheck() -> None:
    # scripts/setup.sh installs shellcheck with the other test tools.
    scripts = [INSTALL, *sorted((REPO / "scripts").glob("*.sh")), REPO / ".ci" / "run"]
    result = run(["shellcheck", "--severity=warning", *map(str, scripts)])
    assert result.returncode == 0, result.stdout + result.stderr


def install(destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(destdir)}
    return run(["bash", str(INSTALL), *args], env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_destdir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    before = {p: os.path.exists(p) for p in ("/opt/xunfang", "/etc/xunfang",
                                              "/etc/systemd/system/xunfang.target")}
    result = install(root)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in UNIT_FILES:
        installed = root / "etc/systemd/system" / name
        assert installed.read_bytes() == (SYSTEMD / name).read_bytes()
        assert mode(installed) == 0o644
    rules = root / "etc/udev/rules.d/99-xunfang.rules"
    assert mode(rules) == 0o644
    assert mode(root / "etc/xunfang") == 0o750
    config = root / "etc/xunfang/unit.toml"
    assert mode(config) == 0o640
    assert config.read_bytes() == (REPO / "config/patrol-point.toml").read_bytes()
    docs = root / "usr/share/doc/xunfang"
    assert (docs / "operations.md").is_file()
    assert (docs / "examples/camera-rtsp.conf").is_file()
    assert os.readlink(root / "usr/local/bin/xunfang") == INSTALLED_VENV
    # What acts on the machine is only printed, and nothing outside DESTDIR moved.
    assert "skip (DESTDIR): systemctl daemon-reload" in result.stdout
    assert "skip (DESTDIR): runuser" in result.stdout
    assert "still the patrol-point example" in result.stdout
    assert not (root / "opt/xunfang/venv").exists()  # a venv cannot be moved
    assert before == {p: os.path.exists(p) for p in before}

    # A second run keeps the config an installer wrote...
    config.write_text(config.read_text().replace('id = "zt-pp-03"', 'id = "zt-pp-04"'))
    again = install(root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert 'id = "zt-pp-04"' in config.read_text()
    assert "keeping the existing" in again.stdout
    assert "skip (DESTDIR): systemctl enable" in again.stdout
    # ...and --config replaces it, keeping the old one beside it.
    new = tmp_path / "zt-cp-east.toml"
    shutil.copy(REPO / "config/checkpoint.toml", new)
    third = install(root, "--config", str(new))
    assert third.returncode == 0, third.stdout + third.stderr
    assert config.read_bytes() == new.read_bytes() and mode(config) == 0o640
    backups = list(config.parent.glob("unit.toml.bak-*"))
    assert len(backups) == 1 and 'id = "zt-pp-04"' in backups[0].read_text()


def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = install(root, "--dry-run", "--kind", "kiosk")
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(root.iterdir()) == []
    assert "would run: install -D -m 0640" in result.stdout
    assert "kiosk.toml" in result.stdout


def test_install_rejects_bad_arguments(tmp_path: Path) -> None:
    assert install(tmp_path, "--kind", "castle").returncode == 2
    assert install(tmp_path, "--frobnicate").returncode == 2
    assert install(tmp_path, "--config", str(tmp_path / "missing.toml")).returncode == 2
    assert run(["bash", str(INSTALL), "--dry-run"],
               env={**os.environ, "DESTDIR": "relative/root"}).returncode == 2


def test_install_lays_out_versions_behind_current_and_installs_the_updater(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    result = install(root)
    assert result.returncode == 0, result.stdout + result.stderr
    updater = root / "usr/local/sbin/xunfang-update"
    assert updater.read_bytes() == (SYSTEMD / "xunfang-update").read_bytes()
    assert mode(updater) == 0o755
    # Without DESTDIR (dry): the venv is built by the updater, into VERSION behind current.
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    dry = run(["bash", str(INSTALL), "--dry-run", "--no-apt"], env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "xunfang-update --no-restart" in dry.stdout
    for name in SERVICES:
        assert "/opt/xunfang/current/bin/xunfang run" in (SYSTEMD / name).read_text()


def test_station_gpsd_drop_in_reaches_only_the_loopback(rendered: Path, tmp_path: Path) -> None:
    """A station reading gpsd (docs/vehicle.md): IP on, and an allow list of localhost only."""
    shutil.copy(rendered / "xunfang-station.service", tmp_path)
    shutil.copy(rendered / "xunfang.target", tmp_path)
    dropins = tmp_path / "xunfang-station.service.d"
    dropins.mkdir()
    shutil.copy(SYSTEMD / "examples" / "station-gpsd.conf", dropins / "gpsd.conf")
    result = analyze("security", "--offline=true", "--no-pager", "./xunfang-station.service",
                     cwd=tmp_path)
    deny = next(line for line in result.stdout.splitlines() if "IPAddressDeny=" in line)
    assert "only localhost" in deny, deny
    verify = analyze("verify", "--man=no", "./xunfang-station.service", cwd=tmp_path)
    assert verify.returncode == 0 and "xunfang" not in verify.stdout + verify.stderr
