"""Request body checks: every wrong type or size is a 422 naming the field."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cti.errors import InvalidInput

MISSING = object()


async def json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the body; oversize bodies raise 413 inside aiohttp."""
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON", field="body") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    return data


def string(
    body: dict[str, Any],
    name: str,
    *,
    required: bool = True,
    max_len: int = 200,
    min_len: int = 0,
    default: str | None = None,
) -> str | None:
    value = body.get(name, MISSING)
    if value is MISSING or value is None:
        if required:
            raise InvalidInput(f"{name} is required", field=name)
        return default
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string", field=name)
    if not min_len <= len(value) <= max_len:
        raise InvalidInput(f"{name} must have {min_len}..{max_len} characters", field=name)
    return value


def req_string(body: dict[str, Any], name: str, *, max_len: int = 200, min_len: int = 1) -> str:
    value = string(body, name, max_len=max_len, min_len=min_len)
    assert value is not None
    return value


def string_list(
    body: dict[str, Any], name: str, *, max_items: int = 50, max_len: int = 256
) -> list[str]:
    value = body.get(name, MISSING)
    if value is MISSING or value is None:
        return []
    if not isinstance(value, list) or len(value) > max_items:
        raise InvalidInput(f"{name} must be a list of at most {max_items} strings", field=name)
    for index, item in enumerate(value):
        if not isinstance(item, str) or not 1 <= len(item) <= max_len:
            raise InvalidInput(
                f"{name}[{index}] must be a string of 1..{max_len} characters",
                field=f"{name}[{index}]",
            )
    return list(value)


def integer(
    body: dict[str, Any], name: str, *, required: bool = True, lo: int = 0, hi: int = 2**62
) -> int | None:
    value = body.get(name, MISSING)
    if value is MISSING or value is None:
        if required:
            raise InvalidInput(f"{name} is required", field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be an integer in {lo}..{hi}", field=name)
    return value


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{name} must be in {lo}..{hi}", field=name)
    return value


def path_id(request: web.Request, name: str = "id") -> int:
    text = request.match_info[name]
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(f"{name} must be a positive integer", field=name)
    return int(text)
