"""Time and watchdog: the install script renders chrony's snippet from [time] and the
systemd drop-in for the hardware watchdog; chronyd and systemd read them back."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.units import write_unit_config

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install.sh"
XUNFANG = Path(sys.executable).parent / "xunfang"
SNIPPET = "etc/chrony/conf.d/xunfang.conf"
DROP_IN = "etc/systemd/system.conf.d/xunfang-watchdog.conf"


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def install(root: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(INSTALL), "--no-apt", "--config", str(config)],
               env={**os.environ, "DESTDIR": str(root)})


def test_install_writes_chrony_servers_and_gnss_refclocks(tmp_path: Path) -> None:
    config = write_unit_config(tmp_path / "unit.toml", tmp_path / "data", time={
        "ntp_servers": ["10.20.0.1", "ntp.centre.example"], "gnss_refclock": True,
        "gnss_device": "/dev/ttyAMA0"})
    root = tmp_path / "root"
    done = install(root, config)
    assert done.returncode == 0, done.stdout + done.stderr
    snippet = root / SNIPPET
    assert stat.S_IMODE(snippet.stat().st_mode) == 0o644
    text = snippet.read_text()
    assert "server 10.20.0.1 iburst\nserver ntp.centre.example iburst\n" in text
    assert "refclock SHM 0 refid GPS precision 1e-1 offset 0.0 delay 0.2\n" in text
    assert "refclock SOCK /run/chrony.ttyAMA0.sock refid PPS\n" in text
    # chronyd itself parses the snippet (-p prints the configuration and exits).
    parsed = run(["/usr/sbin/chronyd", "-p", "-f", str(snippet)])
    assert parsed.returncode == 0, parsed.stderr
    assert "server 10.20.0.1 iburst" in parsed.stdout
    assert "refclock SOCK /run/chrony.ttyAMA0.sock refid PPS" in parsed.stdout


def test_install_writes_the_watchdog_drop_in_systemd_reads(tmp_path: Path) -> None:
    config = write_unit_config(tmp_path / "unit.toml", tmp_path / "data")
    root = tmp_path / "root"
    done = install(root, config)
    assert done.returncode == 0, done.stdout + done.stderr
    drop_in = root / DROP_IN
    assert stat.S_IMODE(drop_in.stat().st_mode) == 0o644
    # systemd's own view of its manager configuration under that root.
    shown = run(["systemd-analyze", f"--root={root}", "cat-config", "systemd/system.conf"])
    assert f"# {drop_in}" in shown.stdout, shown.stdout + shown.stderr
    assert "RuntimeWatchdogSec=15s" in shown.stdout
    # No [time]: no servers of ours; chrony keeps its own.
    text = (root / SNIPPET).read_text()
    assert "\nserver " not in text and "refclock" not in text
    assert "servers of /etc/chrony/chrony.conf are used" in text


def test_install_refuses_a_time_section_that_would_break_chrony(tmp_path: Path) -> None:
    config = tmp_path / "unit.toml"
    write_unit_config(config, tmp_path / "data")
    config.write_text(config.read_text() + '\n[time]\nntp_servers = ["10.0.0.1 key 1"]\n')
    done = install(tmp_path / "root", config)
    assert done.returncode == 2
    assert "time.ntp_servers[0]: not a host name or address" in done.stderr
    assert not (tmp_path / "root" / SNIPPET).exists()


def test_config_check_names_bad_time_keys(tmp_path: Path) -> None:
    config = write_unit_config(tmp_path / "unit.toml", tmp_path / "data", time={
        "ntp_servers": ["10.0.0.1", "bad host"], "gnss_refclock": "yes",
        "gnss_device": "ttyS0"})
    done = run([str(XUNFANG), "config", "check", "-c", str(config)])
    assert done.returncode == 2
    assert 'time.ntp_servers[1]: must match' in done.stderr
    assert "time.gnss_refclock: expected bool" in done.stderr
    assert "time.gnss_device: must match" in done.stderr
