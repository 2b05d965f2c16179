"""The fill window: local start, elapsed duration, IANA zones, DST transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cache_node.config import FillWindow
from cache_node.prepos import window as w


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


BERLIN = FillWindow(start="02:00", duration_seconds=12 * 3600, time_zone="Europe/Berlin")


def test_plain_day_in_winter_and_summer() -> None:
    # Winter: CET = UTC+1, so 02:00 local is 01:00 UTC.
    assert w.occurrence(BERLIN, datetime(2026, 1, 15).date()).start == utc(2026, 1, 15, 1)
    # Summer: CEST = UTC+2, so 02:00 local is 00:00 UTC.
    assert w.occurrence(BERLIN, datetime(2026, 7, 15).date()).start == utc(2026, 7, 15, 0)
    assert not w.is_open(BERLIN, utc(2026, 1, 15, 0, 59))
    assert w.is_open(BERLIN, utc(2026, 1, 15, 1, 0))
    assert w.is_open(BERLIN, utc(2026, 1, 15, 12, 59))
    assert not w.is_open(BERLIN, utc(2026, 1, 15, 13, 0))  # end is exclusive


def test_spring_forward_gap_opens_when_the_gap_ends() -> None:
    # 2026-03-29: Berlin clocks jump 02:00 CET -> 03:00 CEST (01:00 UTC). 02:00 does not exist.
    interval = w.occurrence(BERLIN, datetime(2026, 3, 29).date())
    assert interval.start == utc(2026, 3, 29, 1)
    assert interval.end - interval.start == timedelta(hours=12)  # elapsed, not wall clock
    assert not w.is_open(BERLIN, utc(2026, 3, 29, 0, 59, 59))
    assert w.is_open(BERLIN, utc(2026, 3, 29, 1, 0))
    # A 02:30 start inside the gap opens at 03:30 CEST (= 01:30 UTC).
    half = FillWindow(start="02:30", duration_seconds=3600, time_zone="Europe/Berlin")
    assert w.occurrence(half, datetime(2026, 3, 29).date()).start == utc(2026, 3, 29, 1, 30)


def test_fall_back_ambiguous_start_opens_at_first_occurrence() -> None:
    # 2026-10-25: Berlin clocks go back 03:00 CEST -> 02:00 CET (01:00 UTC); 02:30 happens twice.
    half = FillWindow(start="02:30", duration_seconds=3600, time_zone="Europe/Berlin")
    interval = w.occurrence(half, datetime(2026, 10, 25).date())
    assert interval.start == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, the first one
    assert w.is_open(half, utc(2026, 10, 25, 1, 29))
    assert not w.is_open(half, utc(2026, 10, 25, 1, 30))  # the second 02:30 is outside
    # The day after, the window opens at 02:30 CET again.
    assert w.occurrence(half, datetime(2026, 10, 26).date()).start == utc(2026, 10, 26, 1, 30)


def test_us_zone_and_window_crossing_midnight() -> None:
    ny = FillWindow(start="22:00", duration_seconds=6 * 3600, time_zone="America/New_York")
    # 2026-03-08 US spring forward at 02:00 EST; the window from the 7th (22:00 EST = 03:00 UTC)
    # lasts 6 elapsed hours, to 09:00 UTC (05:00 EDT, not 04:00).
    assert w.is_open(ny, utc(2026, 3, 8, 8, 59))
    assert not w.is_open(ny, utc(2026, 3, 8, 9, 0))
    current = w.current(ny, utc(2026, 3, 8, 4))
    assert current is not None
    assert current.start == utc(2026, 3, 8, 3)
    assert current.id == "2026-03-08T03:00:00Z"


def test_full_day_window_is_always_open() -> None:
    day = FillWindow(start="00:00", duration_seconds=24 * 3600, time_zone="Asia/Tokyo")
    for hour in range(0, 48, 5):
        assert w.is_open(day, utc(2026, 5, 1) + timedelta(hours=hour))


def test_next_open() -> None:
    assert w.next_open(BERLIN, utc(2026, 1, 15, 14)) == utc(2026, 1, 16, 1)
    assert w.next_open(BERLIN, utc(2026, 1, 15, 0)) == utc(2026, 1, 15, 1)
    inside = utc(2026, 1, 15, 5)
    assert w.next_open(BERLIN, inside) == inside
    # Across the spring-forward night the next opening is the post-gap instant.
    assert w.next_open(BERLIN, utc(2026, 3, 28, 14)) == utc(2026, 3, 29, 1)


def test_unknown_zone_and_naive_time_are_clear_errors() -> None:
    bad = FillWindow(time_zone="Mars/Olympus_Mons")
    with pytest.raises(w.WindowError, match="not an IANA time zone"):
        w.is_open(bad, utc(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        w.is_open(BERLIN, datetime(2026, 1, 1))
