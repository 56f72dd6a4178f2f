"""Logging: the correlation id of the call or conversation being handled.

Code that handles one call or conversation wraps the work in
``with correlate("call:<id>")`` (or ``"conv:<id>"``); every log record made
inside carries that id (contextvars follow asyncio tasks started inside).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

correlation_id: ContextVar[str | None] = ContextVar("cti_correlation_id", default=None)


@contextlib.contextmanager
def correlate(cid: str | None) -> Iterator[None]:
    token = correlation_id.set(cid)
    try:
        yield
    finally:
        correlation_id.reset(token)
