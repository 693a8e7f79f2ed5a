"""The station frozen (SIGSTOP): its watchdog pings stop, so systemd would restart it;
after SIGCONT they resume and the station takes taps again.

``xunfang run -c FILE station`` runs with a NOTIFY_SOCKET this test owns and
WATCHDOG_USEC of one second (pings every quarter second). A frozen process cannot
ping: the silence must outlast WATCHDOG_USEC (systemd's ``WatchdogSec`` then restarts
the service). A process that comes back must ping again and record the next tap.
Short: one freeze; long (XUNFANG_LONG=1): twenty.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from firmware_py.config import load_config
from firmware_py.journal import Journal
from firmware_py.sim import tap
from tests.support.faults import XUNFANG, NotifySocket, Proc, Scale, card_list
from tests.support.units import write_unit_config
from tests.support.uplink import SITE, UNIT, wait_until

WATCHDOG_S = 1.0
FREEZE_S = 3 * WATCHDOG_S


def test_a_frozen_station_stops_pinging_and_resumes_after_sigcont(
        tmp_path: Path, scale: Scale) -> None:
    config = write_unit_config(
        tmp_path / "unit.toml", tmp_path / "data",
        readers=[{"name": "main", "driver": "sim", "port": "sim"}],
        feedback={"ok_led": 17, "error_led": 27, "buzzer": 22})
    cfg = load_config(config)
    notify = NotifySocket(tmp_path / "notify.sock")
    station = Proc([str(XUNFANG), "run", "-c", str(config), "station"], tmp_path / "station.log",
                   env={"GPIOZERO_PIN_FACTORY": "mock", "NOTIFY_SOCKET": notify.address,
                        "WATCHDOG_USEC": str(int(WATCHDOG_S * 1_000_000))})
    silences: list[float] = []
    resumed_in: list[float] = []
    cards = card_list(40)
    try:
        station.start()
        wait_until(lambda: notify.times("READY"), 30, "READY=1")
        wait_until(lambda: notify.times("WATCHDOG"), 10, "the first watchdog ping")
        for n in range(scale.pick(1, 20)):
            station.signal_group(signal.SIGSTOP)
            stopped = time.monotonic()
            # A ping sent just before the stop may still be on its way: allow it 0.3 s.
            time.sleep(FREEZE_S)  # the freeze itself: the unit is stopped, nothing to wait on
            assert notify.times("WATCHDOG", since=stopped + 0.3) == [], \
                "pings while the station was stopped"
            station.signal_group(signal.SIGCONT)
            resumed = time.monotonic()
            first = wait_until(lambda r=resumed: notify.times("WATCHDOG", since=r), 10,
                               "a ping after SIGCONT")[0]
            before = max(t for t in notify.times("WATCHDOG") if t < resumed)
            silences.append(first - before)
            resumed_in.append(first - resumed)
            # Still pinging steadily, not one ping and silence (stale beats after the freeze).
            wait_until(lambda r=resumed: len(notify.times("WATCHDOG", since=r)) >= 4, 10,
                       "steady pings after SIGCONT")
            assert station.running, station.text()
            # And it takes taps: an unknown card is recorded (the centre sees who tried).
            result = tap(cfg, cards[n % len(cards)], reader="main", wait_s=10)
            assert result.event is not None, f"no checkin after the freeze {n}"
        assert station.stop() == 0, station.text()
    finally:
        station.kill()
        notify.close()
    print(f"watchdog {WATCHDOG_S} s, frozen {FREEZE_S} s x{len(silences)}: silence "
          f"{max(silences):.1f} s at most, first ping {max(resumed_in):.2f} s after SIGCONT "
          f"at most")
    # systemd restarts a service whose pings stop for WatchdogSec: the silence was longer.
    assert min(silences) > WATCHDOG_S
    assert max(resumed_in) < 5.0
    with Journal(cfg.journal_path, unit=UNIT, site=SITE) as journal:
        checkins = journal.events_after(0, limit=1000, kinds=["checkin"])
    assert len(checkins) == len(silences), [(e.seq, e.ts_ms, e.data) for e in checkins]
    assert "Traceback" not in station.text()
