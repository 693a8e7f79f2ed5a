"""The IP camera's stream killed and restored while cards are tapped (invariants 1, 2 and 7).

The unit runs as three processes (station, camera, uplink) beside a real ledger and
Mosquitto; its camera is an HTTP MJPEG source (``tests/support/mjpeg.py``) that dies
(port closed, every stream cut) and comes back on the same port. Meanwhile a stream of
taps goes on: a tap never waits on the camera, so every one is answered green within the
tap's own wait, and reaches the ledger. The camera's ``offline`` and ``online`` events
come in pairs, one pair per kill. Short: 3 kills; long (XUNFANG_LONG=1): 50.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from firmware_py.journal import Event
from tests.support.brokers import Mosquitto
from tests.support.faults import Scale, Site, TapStream, check_green_in_ledger
from tests.support.mjpeg import MjpegServer
from tests.support.uplink import wait_until

STALL_S = 1.5


def _camera_states(site: Site, after: int = 0) -> list[Event]:
    return [e for e in site.journal.events_after(after, limit=100_000, kinds=["camera"])
            if e.data.get("camera") == "gate" and e.data.get("state") in ("online", "offline")]


def test_camera_stream_killed_and_restored_never_holds_up_a_tap(
        mosquitto: Mosquitto, tmp_path: Path, scale: Scale) -> None:
    kills = scale.pick(3, 50)
    rng = np.random.default_rng(11)
    ipcam = MjpegServer([rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
                         for _ in range(10)], fps=10.0).start()
    site = Site(tmp_path, mosquitto, cameras=[{
        "name": "gate", "source": ipcam.url, "fps": 5, "stall_s": STALL_S, "quota_mb": 20}])
    taps = TapStream(site, wait_s=2.0)
    back_in: list[float] = []
    try:
        site.start()
        wait_until(lambda: any(e.data["state"] == "online" for e in _camera_states(site)), 30,
                   "the camera online")
        taps.start()
        for n in range(kills):
            mark = site.journal.last_seq()
            ipcam.stop()
            wait_until(lambda m=mark: any(e.data["state"] == "offline"
                                          for e in _camera_states(site, m)),
                       30, f"the camera offline (kill {n})")
            restored = time.monotonic()
            ipcam.start()
            wait_until(lambda m=mark: any(e.data["state"] == "online"
                                          for e in _camera_states(site, m)),
                       60, f"the camera online (restore {n})")
            back_in.append(time.monotonic() - restored)
        before = len(taps.green)
        wait_until(lambda: len(taps.green) >= before + 3, 30, "taps after the last restore")
        taps.finish()
        site.wait_all_delivered(scale.pick(40, 120))
        check_green_in_ledger(site, taps.green)
        # Every tap answered, green, within its 2 s wait, camera down or up.
        assert taps.unanswered == 0 and taps.other == [], (taps.unanswered, taps.other[:5])
        assert len(taps.green) >= kills * 3, "too few taps to prove anything"
        states = [e.data["state"] for e in _camera_states(site)]
        assert states == ["online"] + ["offline", "online"] * kills, states
        print(f"camera kills {kills}; green taps {len(taps.green)}, unanswered "
              f"{taps.unanswered}; camera back online {min(back_in):.1f}-{max(back_in):.1f} s "
              f"after the restore (mean {sum(back_in) / len(back_in):.1f} s)")
        for name, daemon in site.daemons.items():
            assert "Traceback" not in daemon.text(), f"{name}: {daemon.text()[-3000:]}"
    except BaseException:
        print(site.logs())
        raise
    finally:
        if taps.is_alive():
            taps.halt.set()
            taps.join(10)
        site.close()
        ipcam.stop()
