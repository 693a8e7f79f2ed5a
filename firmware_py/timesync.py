"""Time and watchdog files the install script writes, rendered from the unit's config.

- ``/etc/chrony/conf.d/xunfang.conf``: the NTP servers of ``[time]
  ntp_servers`` and, with ``gnss_refclock = true``, gpsd's two reference
  clocks (NMEA time through shared memory, PPS through gpsd's socket);
- ``/etc/systemd/system.conf.d/xunfang-watchdog.conf``: systemd pets the
  SoC's hardware watchdog (``RuntimeWatchdogSec``), so a hung kernel or
  systemd reboots the unit.

``xunfang check`` compares the installed files with what the config renders
now. Stdlib only: the install script runs it with the system's Python before
the unit's virtual environment exists::

    python3 firmware_py/timesync.py chrony /etc/xunfang/unit.toml
    python3 firmware_py/timesync.py watchdog
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

CHRONY_SNIPPET = Path("etc/chrony/conf.d/xunfang.conf")
WATCHDOG_DROP_IN = Path("etc/systemd/system.conf.d/xunfang-watchdog.conf")
# The BCM2835's watchdog cannot count past about 15.9 s; systemd pets it every half of this.
RUNTIME_WATCHDOG_S = 15
REBOOT_WATCHDOG = "2min"
DEFAULT_GNSS_DEVICE = "/dev/ttyS0"
# A host name, IPv4 or IPv6 address: nothing that could end a chrony directive.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$"
DEVICE_PATTERN = r"^/dev/[A-Za-z0-9._/-]{1,64}$"


def time_settings(doc: dict[str, Any]) -> tuple[list[str], bool, str]:
    """``(ntp_servers, gnss_refclock, gnss_device)`` of a parsed unit config; ValueError if bad."""
    section = doc.get("time", {})
    if not isinstance(section, dict):
        raise ValueError("time: expected a table")
    servers = section.get("ntp_servers", [])
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise ValueError("time.ntp_servers: expected a list of host names or addresses")
    for i, server in enumerate(servers):
        if not re.match(HOST_PATTERN, server):
            raise ValueError(f"time.ntp_servers[{i}]: not a host name or address: {server!r}")
    gnss = section.get("gnss_refclock", False)
    if not isinstance(gnss, bool):
        raise ValueError("time.gnss_refclock: expected true or false")
    device = section.get("gnss_device", DEFAULT_GNSS_DEVICE)
    if not isinstance(device, str) or not re.match(DEVICE_PATTERN, device):
        raise ValueError(f"time.gnss_device: expected a /dev path, got {device!r}")
    return list(servers), gnss, device


def render_chrony(servers: list[str], gnss_refclock: bool = False,
                  gnss_device: str = DEFAULT_GNSS_DEVICE) -> str:
    """The chrony snippet for these settings (the same text every time)."""
    lines = [
        "# Written by xunfang's install script from [time] in /etc/xunfang/unit.toml.",
        "# Change the config and run the install script again; `xunfang check` compares.",
    ]
    if not servers:
        lines.append("# No [time] ntp_servers: the servers of /etc/chrony/chrony.conf are used.")
    lines += [f"server {s} iburst" for s in servers]
    if gnss_refclock:
        sock = f"/run/chrony.{Path(gnss_device).name}.sock"
        lines += [
            f"# GNSS receiver on {gnss_device} through gpsd: NMEA time (coarse), then PPS.",
            "refclock SHM 0 refid GPS precision 1e-1 offset 0.0 delay 0.2",
            f"refclock SOCK {sock} refid PPS",
        ]
    # A Pi has no battery clock: step the clock at any offset in the first updates.
    lines.append("makestep 1 3")
    return "\n".join(lines) + "\n"


def render_watchdog(seconds: int = RUNTIME_WATCHDOG_S) -> str:
    return (
        "# Written by xunfang's install script: systemd pets the hardware watchdog;\n"
        "# if the kernel or systemd hangs, the SoC resets the unit.\n"
        "[Manager]\n"
        f"RuntimeWatchdogSec={seconds}s\n"
        f"RebootWatchdogSec={REBOOT_WATCHDOG}\n"
    )


def chrony_for_config(path: Path) -> str:
    """Render the chrony snippet straight from a config file (OSError, ValueError)."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    return render_chrony(*time_settings(doc))


def main(argv: list[str]) -> int:
    if argv[:1] == ["watchdog"] and len(argv) == 1:
        sys.stdout.write(render_watchdog())
        return 0
    if argv[:1] == ["chrony"] and len(argv) == 2:
        try:
            sys.stdout.write(chrony_for_config(Path(argv[1])))
        except (OSError, ValueError) as err:
            print(f"{argv[1]}: {err}", file=sys.stderr)
            return 2
        return 0
    print("usage: timesync.py chrony CONFIG | timesync.py watchdog", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
