"""The card reader unplugged and plugged back again and again between taps (invariants 1, 2 and 7).

The station runs in this process on gpiozero's mock pins, so that the test can pull the
sim reader's cable: :meth:`~drivers.readers.sim.SimReader.unplug` closes the device-side
pty (the driver's port fails as on a pulled USB cable) and ``replug`` makes a new one and
re-points the symlink the driver opens, so the whole reopen path runs for real. The
uplink and the ledger are real processes beside a real Mosquitto.

Every tap between replugs must be green and reach the ledger; every ``offline`` event
of the reader must be followed by its ``online`` one, none lost or doubled. Short: 5
replugs; long (XUNFANG_LONG=1): 100.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from firmware_py.checkin import CheckinPart
from firmware_py.clock import SystemClock
from firmware_py.config import load_config
from firmware_py.journal import Event, Journal
from firmware_py.runtime import UnitContext
from firmware_py.sim import tap
from firmware_py.station import StationComponent
from tests.support.brokers import Mosquitto
from tests.support.faults import Green, Scale, Site, check_green_in_ledger
from tests.support.gpio import global_mock_factory
from tests.support.uplink import SITE, UNIT, wait_until


def _reader_events(journal: Journal, after: int = 0) -> list[Event]:
    return journal.events_after(after, limit=100_000, kinds=["reader"])


def test_reader_replugged_many_times_loses_no_tap_and_pairs_its_events(
        mosquitto: Mosquitto, tmp_path: Path, scale: Scale) -> None:
    replugs = scale.pick(5, 100)
    site = Site(tmp_path, mosquitto, camera=False)
    cfg = load_config(site.config)
    green: list[Green] = []
    back_in: list[float] = []
    with global_mock_factory():
        journal = Journal(cfg.journal_path, unit=UNIT, site=SITE)
        station = StationComponent(UnitContext(cfg, journal, SystemClock(), threading.Event()))
        try:
            site.publish_cards()
            site.ledger.start()
            site.daemons["uplink"].start()
            wait_until(site.cards_applied, 40, "the card list applied at the unit")
            station.start()
            assert station.started.wait(20)
            (part,) = [p for p in station.parts if isinstance(p, CheckinPart)]
            sim = part.readers["main"].sim  # type: ignore[attr-defined]
            wait_until(lambda: any(e.data["state"] == "online" for e in _reader_events(journal)),
                       20, "the reader online")

            def tap_green() -> None:
                card = site.cards[len(green) % len(site.cards)]
                if green and card == site.cards[0]:
                    # Every card has tapped: let the visit close, or the next is a repeat.
                    last = green[-1].seq
                    wait_until(lambda: journal.events_after(last, limit=10, kinds=["visit"]),
                               20, "the visit closed")
                event = tap(cfg, card, reader="main", wait_s=10).event
                assert event is not None, f"no checkin for {card}"
                assert event.data["decision"] == "accepted", event.data
                green.append(Green(card, event.seq, event.id))

            for n in range(replugs):
                tap_green()
                tap_green()
                mark = journal.last_seq()
                sim.unplug()
                wait_until(lambda m=mark: any(e.data["state"] == "offline"
                                              for e in _reader_events(journal, m)),
                           20, f"the reader offline (unplug {n})")
                plugged = time.monotonic()
                sim.replug()
                wait_until(lambda m=mark: any(e.data["state"] == "online"
                                              for e in _reader_events(journal, m)),
                           30, f"the reader online (replug {n})")
                back_in.append(time.monotonic() - plugged)
            tap_green()
            site.wait_all_delivered(scale.pick(40, 120))
            check_green_in_ledger(site, green)
            states = [e.data["state"] for e in _reader_events(journal)]
            assert states == ["online"] + ["offline", "online"] * replugs, states
            print(f"replugs {replugs}; green taps {len(green)}; reader back online "
                  f"{min(back_in):.2f}-{max(back_in):.2f} s after the replug "
                  f"(mean {sum(back_in) / len(back_in):.2f} s)")
            assert "Traceback" not in site.daemons["uplink"].text()
        except BaseException:
            print(site.logs())
            raise
        finally:
            station.request_stop()
            assert station.join(15), "the station did not stop"
            journal.close()
            site.close()
