"""The daily fill window: a local start time, a duration and an IANA time zone.

Open Connect fills "nightly, inside the ISP's off-peak window" - a wall-clock
time where the site is, so the window follows the site's daylight saving
changes. The rules, chosen so that every instant has one answer:

* the window opens each local day at ``start`` (wall clock in ``timeZone``);
* it lasts ``durationSeconds`` of elapsed time (a 12 h window is 12 real
  hours also on the night the clocks change);
* a start that does not exist that day (inside a spring-forward gap) opens
  when the gap ends (fold=0: the offset in force before the gap, which maps
  02:30 in a skipped hour to 03:30 of the new offset);
* a start that happens twice (fall-back) opens at its first occurrence;
* windows of consecutive days may overlap (24 h durations): the instant is
  in the window when any of them contains it.

Everything here is a pure function of the window and an aware ``datetime``,
so DST transitions are unit-tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cache_node.config import FillWindow


class WindowError(ValueError):
    """The window names a time zone this system does not know."""


@dataclass(frozen=True)
class Interval:
    """One occurrence of the window, as UTC instants (start inclusive, end exclusive)."""

    start: datetime
    end: datetime

    def contains(self, now: datetime) -> bool:
        return self.start <= now < self.end

    @property
    def id(self) -> str:
        """Stable name of this occurrence (per-window budgets are keyed by it)."""
        return self.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zone(window: FillWindow) -> ZoneInfo:
    try:
        return ZoneInfo(window.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise WindowError(
            f"fill.window.timeZone {window.time_zone!r} is not an IANA time zone "
            "(for example Europe/Berlin or UTC)"
        ) from exc


def _start_time(window: FillWindow) -> time:
    hours, minutes = (int(part) for part in window.start.split(":"))
    return time(hours, minutes)


def occurrence(window: FillWindow, day: date) -> Interval:
    """The window that opens on local calendar ``day``."""
    tz = zone(window)
    local = datetime.combine(day, _start_time(window), tzinfo=tz)  # fold=0
    # Round-trip through UTC: a non-existent wall time (DST gap) becomes the real
    # instant it denotes with the pre-gap offset, i.e. just after the gap.
    start = local.astimezone(UTC)
    return Interval(start=start, end=start + timedelta(seconds=window.duration_seconds))


def _local_day(window: FillWindow, now: datetime) -> date:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(zone(window)).date()


def current(window: FillWindow, now: datetime) -> Interval | None:
    """The occurrence containing ``now``, or ``None`` when the window is closed."""
    today = _local_day(window, now)
    for back in (0, 1):
        interval = occurrence(window, today - timedelta(days=back))
        if interval.contains(now):
            return interval
    return None


def is_open(window: FillWindow, now: datetime) -> bool:
    return current(window, now) is not None


def next_open(window: FillWindow, now: datetime) -> datetime:
    """When the window opens next (``now`` itself when it is open)."""
    if is_open(window, now):
        return now
    today = _local_day(window, now)
    for ahead in range(3):
        interval = occurrence(window, today + timedelta(days=ahead))
        if interval.start > now:
            return interval.start
    raise AssertionError("a daily window always opens within two days")  # pragma: no cover
