"""The period, time zone and grouping of a report, parsed from query parameters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cti.errors import InvalidInput

GROUPS = ("queue", "agent", "channel", "tag", "day", "hour")
MAX_DAYS = 400


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # aware, inclusive
    end: datetime  # aware, exclusive
    tz: ZoneInfo
    group_by: str | None = None

    @property
    def tz_name(self) -> str:
        return self.tz.key


def parse_tz(text: str | None) -> ZoneInfo:
    name = text or "UTC"
    if len(name) > 64 or ".." in name or name.startswith("/"):
        raise InvalidInput("tz must be an IANA time zone name", field="tz")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r}", field="tz") from None


def _moment(text: str, tz: ZoneInfo, field: str, *, end: bool) -> datetime:
    if len(text) > 40:
        raise InvalidInput(f"{field} is too long", field=field)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if end:  # a date as the end of the period includes that whole day
                day += timedelta(days=1)
            return datetime.combine(day, time(), tz)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{field} must be a date (YYYY-MM-DD) or an ISO 8601 time", field=field
        ) from None
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment


def parse_period(
    start: str | None,
    end: str | None,
    tz_text: str | None = None,
    group_by: str | None = None,
    *,
    now: datetime | None = None,
) -> Period:
    """Dates are local days in ``tz``; ``to`` as a date includes that day."""
    tz = parse_tz(tz_text)
    if group_by is not None and group_by not in GROUPS:
        raise InvalidInput(f"group_by must be one of {', '.join(GROUPS)}", field="group_by")
    today = (now or datetime.now(UTC)).astimezone(tz).date()
    first = (
        _moment(start, tz, "from", end=False)
        if start
        else datetime.combine(today - timedelta(days=6), time(), tz)
    )
    last = (
        _moment(end, tz, "to", end=True)
        if end
        else datetime.combine(today + timedelta(days=1), time(), tz)
    )
    if last <= first:
        raise InvalidInput("to must be after from", field="to")
    if last - first > timedelta(days=MAX_DAYS):
        raise InvalidInput(f"a report covers at most {MAX_DAYS} days", field="to")
    return Period(first.astimezone(UTC), last.astimezone(UTC), tz, group_by)
