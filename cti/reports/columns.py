"""The numeric report columns of ``history_events``, derived from each row's payload.

The reports aggregate a few durations that producers put in the JSON payload
(``wait``, ``talk``, ``hold``, ``ring`` of the call events). Extracting them
from JSON for every row of a 30-day period was most of a report's time, so
each row also carries them as plain numeric columns (migration 0007). The
columns are filled by the model's context-sensitive defaults on every insert
(``report_value``), so producers and the batched writer need not know them;
the migration backfilled older rows with the same rule in SQL.

Rule (one place, mirrored by the migration's SQL): a payload value that is a
JSON number (not a boolean) becomes a float; anything else (absent, null,
text) is NULL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

# column name -> payload key
REPORT_COLUMNS: dict[str, str] = {
    "wait_s": "wait",
    "talk_s": "talk",
    "hold_s": "hold",
    "ring_s": "ring",
}


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def report_values(payload: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Every report column of a row with this payload."""
    if not payload:
        return dict.fromkeys(REPORT_COLUMNS)
    return {column: number(payload.get(key)) for column, key in REPORT_COLUMNS.items()}


_KEYS = tuple(REPORT_COLUMNS.values())
_KEY_SET = frozenset(_KEYS)
_NONE_ROW: tuple[None, ...] = (None,) * len(_KEYS)


def report_row(payload: Mapping[str, Any] | None) -> tuple[float | None, ...]:
    """``report_values(payload).values()`` as a tuple, cheaply (the batched writer
    calls it for every row: most payloads have none of the keys)."""
    if not payload or _KEY_SET.isdisjoint(payload):
        return _NONE_ROW
    get = payload.get
    return tuple([_fast_number(get(key)) for key in _KEYS])


def _fast_number(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return cast(float, value)
    if kind is int:
        return float(value)
    return None if value is None else number(value)


def report_value(column: str, params: Mapping[str, Any]) -> float | None:
    """One column's value for an insert's parameters (``ctx.get_current_parameters()``)."""
    payload = params.get("payload")
    if not isinstance(payload, Mapping):
        return None
    return number(payload.get(REPORT_COLUMNS[column]))
