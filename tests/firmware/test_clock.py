"""Time as events carry it: injectable wall clock, sync state, boot id, RFC 3339."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from firmware_py.clock import (
    ManualClock,
    SystemClock,
    kernel_clock_synced,
    parse_rfc3339,
    read_boot_id,
    rfc3339_ms,
)


def test_rfc3339_has_milliseconds_and_z() -> None:
    assert rfc3339_ms(1_795_000_000_123) == "2026-11-18T11:06:40.123Z"
    assert rfc3339_ms(5) == "1970-01-01T00:00:00.005Z"


def test_parse_rfc3339_accepts_zones_and_refuses_naive_times() -> None:
    assert parse_rfc3339("2026-11-28T15:04:05.123Z") == datetime(2026, 11, 28, 15, 4, 5, 123000,
                                                                 tzinfo=UTC)
    assert parse_rfc3339("2026-11-28T23:04:05+08:00") == datetime(2026, 11, 28, 15, 4, 5,
                                                                  tzinfo=UTC)
    with pytest.raises(ValueError, match="no zone"):
        parse_rfc3339("2026-11-28T15:04:05")
    with pytest.raises(ValueError):
        parse_rfc3339("yesterday")
    with pytest.raises(ValueError, match="string"):
        parse_rfc3339(1234)  # type: ignore[arg-type]


def test_kernel_sync_state_is_read_without_error() -> None:
    # This machine's kernel never reports NTP sync; a Pi after timesyncd does.
    assert kernel_clock_synced() in (True, False)
    boot = read_boot_id()
    assert len(boot) == 36 and boot == read_boot_id()


def test_system_clock_follows_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XUNFANG_CLOCK_SYNCED", "1")
    monkeypatch.setenv("XUNFANG_CLOCK_OFFSET_S", "-86400")
    clock = SystemClock()
    assert clock.synced() is True
    assert abs(clock.wall_ms() - (time.time() * 1000 - 86_400_000)) < 5_000
    monkeypatch.setenv("XUNFANG_CLOCK_SYNCED", "no")
    monkeypatch.delenv("XUNFANG_CLOCK_OFFSET_S")
    clock = SystemClock()
    assert clock.synced() is False
    assert abs(clock.wall_ms() - time.time() * 1000) < 5_000
    first = clock.monotonic()
    assert clock.monotonic() >= first > 0


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(wall_ms=1000, monotonic=10.0, synced=False, boot_id="a")
    clock.advance(1.5)
    assert (clock.wall_ms(), clock.monotonic()) == (2500, 11.5)
    clock.set_wall(9_000_000, synced=True)
    assert clock.wall_ms() == 9_000_000 and clock.synced() and clock.monotonic() == 11.5
    clock.reboot("b", monotonic=3.0)
    assert (clock.boot_id(), clock.monotonic()) == ("b", 3.0)


@pytest.mark.parametrize("text, utc", [
    ("2026-12-04T23:00:00+08:00", datetime(2026, 12, 4, 15, tzinfo=UTC)),
    ("2026-12-04t15:00:00z", datetime(2026, 12, 4, 15, tzinfo=UTC)),
    ("2026-12-04T15:00:00.123456789Z", datetime(2026, 12, 4, 15, 0, 0, 123456, tzinfo=UTC)),
    ("2026-12-04T09:30:00-05:30", datetime(2026, 12, 4, 15, tzinfo=UTC)),
    ("2026-12-04T15:00:00-00:00", datetime(2026, 12, 4, 15, tzinfo=UTC)),
])
def test_parse_rfc3339_reads_every_rfc3339_form_into_utc(text: str, utc: datetime) -> None:
    assert parse_rfc3339(text) == utc


@pytest.mark.parametrize("text", [
    "2026-12-04 15:00:00Z", "2026-12-04T15:00Z", "2026-12-04T15:00:00+0800",
    "2026-12-04T15:00:00+24:00", "2026-02-30T15:00:00Z", "２０２６-12-04T15:00:00Z",
    "2026-12-04T15:00:00.Z", "2026-12-04T15:00:00Z ", "2026-W49-5T15:00:00Z",
])
def test_parse_rfc3339_refuses_what_is_not_rfc3339(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)
