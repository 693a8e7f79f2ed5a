"""The wall clock jumping forward and back under the running unit, and the unit coming up
with its clock at 1970 (invariants 2, 5 and 6).

The unit runs as three processes (station, uplink, beside a real ledger and Mosquitto);
a clock jump reaches them through ``XUNFANG_CLOCK_OFFSET_S`` and ``XUNFANG_CLOCK_SYNCED``
(``firmware_py/clock.py``): both daemons are restarted with the new offset, as a unit
whose clock NTP stepped, or that came up without an RTC, would run. The monotonic
(boot-relative) clock goes on counting through every jump.

Patrol windows cover the whole day and a round is due every minute at every level, so a
deadline computed from wall-clock differences would throw ``round_missed`` at once after
a two-hour jump; none may appear (the run is shorter than one interval). Taps at every
offset are green and reach the ledger. At 1970 (unsynchronised) a signed level document
applied before is replayed and must be refused (``replay``), while a fresh one from the
centre must still be applied: the centre is not locked out.

Short: jumps of +2 h and -2 h, then 1970, then back to the true time; long
(XUNFANG_LONG=1): twenty random jumps of up to ten days either way first.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from firmware_py import topics
from firmware_py.config import load_config
from firmware_py.sim import SimTapError, tap
from tests.support.brokers import Mosquitto
from tests.support.faults import Green, Scale, Site, check_green_in_ledger
from tests.support.uplink import SITE, UNIT, wait_until

#: Whole-day windows, a round due every minute at every level.
PATROL = {"windows": {"am": "00:00-12:00", "pm": "12:00-00:00"},
          "round_every_min": {3: 1, 2: 1, 1: 1}}
#: Seconds to add to the true time for a wall clock at 1970-01-01T01:00Z.
TO_1970 = 3600


def _set_clock(site: Site, offset_s: float, synced: bool) -> None:
    for daemon in site.daemons.values():
        daemon.env["XUNFANG_CLOCK_OFFSET_S"] = str(offset_s)
        daemon.env["XUNFANG_CLOCK_SYNCED"] = "1" if synced else "0"


def _restart_with_clock(site: Site, offset_s: float, synced: bool) -> None:
    for daemon in site.daemons.values():
        assert daemon.stop() == 0, daemon.text()[-3000:]
    _set_clock(site, offset_s, synced)
    for daemon in site.daemons.values():
        daemon.start()


def _tap_green(site: Site, card: str, green: list[Green]) -> None:
    """Tap until the restarted station answers (its sim pty comes back with it)."""
    cfg = load_config(site.config)

    def attempt() -> Any:
        try:
            return tap(cfg, card, reader="main", wait_s=3).event
        except SimTapError:
            return None

    event = wait_until(attempt, 30, f"a checkin for {card}")
    assert event.data["decision"] == "accepted", event.data
    green.append(Green(card, event.seq, event.id))


def _publish_level(site: Site, env: dict[str, Any]) -> None:
    with site.broker.probe(None, client_id="centre") as centre:
        assert not centre.publish(topics.desired(SITE, UNIT, "level"), json.dumps(env),
                                  retain=True).is_failure


def _command_result(site: Site, ident: str, after: int = 0) -> tuple[str, str | None]:
    def outcome() -> tuple[str, str | None] | None:
        for e in site.journal.events_after(after, limit=10_000, kinds=["command"]):
            if e.data.get("command") == ident:
                return e.data["result"], e.data.get("reason")
        return None

    return wait_until(outcome, 20, f"the unit's answer to {ident}")


def _level_doc(site: Site, level: int) -> dict[str, Any]:
    return site.centre_key.sign_envelope("level", {"level": level}, site=SITE, units=[UNIT],
                                         ttl_s=3600)


def test_clock_jumps_and_a_1970_boot_miss_no_round_and_lock_out_no_centre(
        mosquitto: Mosquitto, tmp_path: Path, scale: Scale) -> None:
    rng = random.Random(1970)
    site = Site(tmp_path, mosquitto, camera=False, patrol=PATROL)
    answering_in: list[float] = []  # from a restart to the station's first green tap
    jumps: list[float] = [7200, -7200] if scale.short else \
        [rng.uniform(-10, 10) * 86400 for _ in range(20)]
    green: list[Green] = []
    cards = iter(site.cards * 10)
    try:
        _set_clock(site, 0, True)
        site.start()
        _tap_green(site, next(cards), green)
        old = _level_doc(site, 2)
        _publish_level(site, old)
        assert _command_result(site, old["id"]) == ("applied", None)
        newer = _level_doc(site, 3)
        _publish_level(site, newer)
        assert _command_result(site, newer["id"]) == ("applied", None)

        def jump(offset_s: float, synced: bool) -> None:
            began = time.monotonic()
            _restart_with_clock(site, offset_s, synced)
            _tap_green(site, next(cards), green)
            answering_in.append(time.monotonic() - began)
            _tap_green(site, next(cards), green)

        for offset in jumps:
            jump(offset, True)

        # A Pi without RTC or NTP: 1970, unsynchronised.
        jump(TO_1970 - time.time(), False)
        last = green[-1]
        assert site.journal.events_after(last.seq - 1, limit=1)[0].ts_ms < 86_400_000
        before = site.journal.last_seq()
        _publish_level(site, old)
        assert _command_result(site, old["id"], before) == ("rejected", "replay")
        fresh = _level_doc(site, 1)
        _publish_level(site, fresh)
        assert _command_result(site, fresh["id"], before) == ("applied", None)

        # NTP comes: back to the true time.
        jump(0, True)

        site.wait_all_delivered(scale.pick(40, 120))
        check_green_in_ledger(site, green)
        events = site.journal.events_after(0, limit=100_000)
        missed = [e.data for e in events if e.kind == "round_missed"]
        assert missed == [], missed[:3]
        levels = [e.data for e in events if e.kind == "command"
                  and e.data.get("name") == "level"]
        print(f"jumps {len(jumps)} + 1970 + back; green taps {len(green)}; level commands "
              f"{[(d['result'], d['reason']) for d in levels]}; round_missed {len(missed)}; "
              f"journal last seq {site.journal.last_seq()}; first green tap "
              f"{min(answering_in):.1f}-{max(answering_in):.1f} s after a restart")
        for name, daemon in site.daemons.items():
            assert "Traceback" not in daemon.text(), f"{name}: {daemon.text()[-3000:]}"
    except BaseException:
        print(site.logs())
        raise
    finally:
        site.close()
