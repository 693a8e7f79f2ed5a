"""Random SIGKILLs of the unit's three daemons during a stream of taps (invariants 1, 2).

The unit runs as systemd runs it: ``xunfang run -c FILE station``, ``camera`` and
``uplink``, three processes meeting only in the journal, beside a real ``xunfang ledger``
and a real Mosquitto. Cards are tapped on the sim reader one after another; a tap is
green when the station answered it with an ``accepted`` checkin (the journal event
``xunfang sim tap`` waits for; the LED is lit only after that commit, which
``tests/firmware/test_checkin.py`` proves). One daemon at a time, chosen at random, is
SIGKILLed with its process group at a random moment and started again.

Every green tap must reach the ledger once, as the checkin it was, in tap order, and the
ledger must hold the journal's whole prefix without gaps. Short: 5 kills of each daemon;
long (XUNFANG_LONG=1): 100 of each.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.support.brokers import Mosquitto
from tests.support.faults import COMPONENTS, Scale, Site, TapStream, check_green_in_ledger


def test_random_sigkills_of_each_daemon_lose_no_green_tap(
        mosquitto: Mosquitto, tmp_path: Path, scale: Scale) -> None:
    kills_each = scale.pick(5, 100)
    rng = random.Random(20261204)
    site = Site(tmp_path, mosquitto)
    order = [name for name in COMPONENTS for _ in range(kills_each)]
    rng.shuffle(order)
    taps = TapStream(site)
    try:
        site.start()
        taps.start()
        kills = dict.fromkeys(COMPONENTS, 0)
        for name in order:
            # A random moment: mid-tap, mid-commit, mid-publish, mid-start.
            taps.halt.wait(rng.uniform(0.2, scale.pick(1.2, 2.0)))
            daemon = site.daemons[name]
            daemon.kill()
            kills[name] += 1
            daemon.start()
        # A last batch with everything up: taps answered again after the last kill.
        before = len(taps.green)
        deadline = time.monotonic() + 30
        while len(taps.green) < before + 5 and time.monotonic() < deadline:
            taps.halt.wait(0.2)
        taps.finish()
        assert all(d.running for d in site.daemons.values()), site.logs()
        site.wait_all_delivered(scale.pick(60, 180))
        check_green_in_ledger(site, taps.green)
        print(f"kills {kills}; green taps {len(taps.green)}, other decisions "
              f"{len(taps.other)}, unanswered {taps.unanswered}; journal last seq "
              f"{site.journal.last_seq()}")
        assert kills == dict.fromkeys(COMPONENTS, kills_each)
        assert len(taps.green) >= before + 5, "no green tap after the last kill"
        assert len(taps.green) >= kills_each * 3, "too few green taps to prove anything"
        # Taps are never answered red because of a kill: every card is on the list.
        assert taps.other == [], taps.other[:10]
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
