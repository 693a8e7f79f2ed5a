"""The centre's side fails while patrol members tap (invariant 2): the broker SIGKILLed and
restarted, the ledger away for longer than the broker's queue for it holds.

The unit runs as three daemons beside a real ``xunfang ledger`` and Mosquitto
(``tests/support/faults.py``). A broker that crashes loses what it had not saved; a
broker whose queue for the absent ledger is full drops the rest without a word
(``tests/integration/test_brokers.py``). Neither may cost a green tap: the unit keeps
every event until the ledger's signed ack covers it and sends again what was not
acknowledged. Short: two broker crashes, one ledger outage; long (XUNFANG_LONG=1):
twenty crashes, five outages each well past the queue limit.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from tests.support.brokers import Mosquitto
from tests.support.faults import Scale, Site, TapStream, check_green_in_ledger
from tests.support.uplink import wait_until

Factory = Callable[..., Mosquitto]
QUEUE_LIMIT = 20


def _progress(site: Site, more: int, timeout: float = 40) -> None:
    target = site.ledger_prefix() + more
    wait_until(lambda: site.ledger_prefix() >= target, timeout,
               f"the ledger to reach seq {target}")


def test_broker_sigkilled_and_restarted_during_taps_loses_no_green_tap(
        mosquitto_factory: Factory, tmp_path: Path, scale: Scale) -> None:
    # autosave every second: the restarted broker comes back with a stale picture.
    broker = mosquitto_factory(persistence=True, autosave_interval=1)
    # Twenty crashes in minutes would grow the reconnect backoff to its 120 s default cap;
    # a lower cap keeps the run short without changing what it proves.
    site = Site(tmp_path, broker, camera=False, mqtt={"reconnect_max_s": 8})
    taps = TapStream(site)
    rng = random.Random(4)
    try:
        site.start()
        taps.start()
        _progress(site, 10)
        for _ in range(scale.pick(2, 20)):
            broker.kill()
            taps.halt.wait(rng.uniform(0.5, scale.pick(2.0, 8.0)))  # the outage
            broker.start()
            _progress(site, 5, 60)
        taps.finish()
        site.wait_all_delivered(90)
        check_green_in_ledger(site, taps.green)
        print(f"broker crashes {scale.pick(2, 20)}; green taps {len(taps.green)}; "
              f"journal last seq {site.journal.last_seq()}")
    except BaseException:
        print(site.logs())
        raise
    finally:
        if taps.is_alive():
            taps.halt.set()
            taps.join(10)
        site.close()


def test_ledger_away_past_the_broker_queue_limit_loses_no_green_tap(
        mosquitto_factory: Factory, tmp_path: Path, scale: Scale) -> None:
    broker = mosquitto_factory(max_queued_messages=QUEUE_LIMIT)
    site = Site(tmp_path, broker, camera=False)
    taps = TapStream(site)
    try:
        site.start()
        taps.start()
        _progress(site, 10)
        for n in range(scale.pick(1, 5)):
            site.ledger.kill()  # its session stays: the broker queues for it, up to the limit
            held = site.ledger_prefix()
            over = scale.pick(3, 10) * QUEUE_LIMIT
            wait_until(lambda h=held, o=over: site.journal.last_seq() > h + o, 120,
                       f"{over} events recorded while the ledger is away")
            assert broker.wait_for_log("Outgoing messages are being dropped", 10), \
                broker.log_tail()
            site.ledger.start()
            _progress(site, over)
            print(f"outage {n}: {site.journal.last_seq() - held} events behind at restart")
        taps.finish()
        site.wait_all_delivered(120)
        check_green_in_ledger(site, taps.green)
        print(f"green taps {len(taps.green)}; journal last seq {site.journal.last_seq()}")
    except BaseException:
        print(site.logs())
        raise
    finally:
        if taps.is_alive():
            taps.halt.set()
            taps.join(10)
        site.close()
