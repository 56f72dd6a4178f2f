"""Logging: the correlation id of the call or conversation being handled, JSON lines, redaction.

Code that handles one call or conversation wraps the work in
``with correlate("call:<id>")`` (or ``"conv:<id>"``); every log record made
inside carries that id (contextvars follow asyncio tasks started inside).

:func:`configure_logging` (``cti serve``) installs one stderr handler with a
:class:`LogContext` filter, which stamps each record with this node's id and
the current correlation id and redacts secrets from the message and the
traceback, and either the text format or :class:`JsonFormatter` (one JSON object
per line: ``time``, ``level``, ``logger``, ``message``, ``node_id``,
``correlation_id``, and ``exc_info`` / ``stack_info`` as strings when present).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TextIO

from aiohttp import web

correlation_id: ContextVar[str | None] = ContextVar("cti_correlation_id", default=None)


@contextlib.contextmanager
def correlate(cid: str | None) -> Iterator[None]:
    token = correlation_id.set(cid)
    try:
        yield
    finally:
        correlation_id.reset(token)


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
REDACTED = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(correlation)s %(message)s"

# scheme://user:PASSWORD@host (ami, smpp, redis, postgresql+asyncpg, http...): the password
# is everything after the first ':' of the userinfo up to the '@' (no '/' or spaces in it).
_URL_PASSWORD = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)[^@\s/]+(?=@)")
# password=x, "secret": "x", token: x, Secret: x (AMI), api_key=x, Authorization: Bearer x...
_KEY_VALUE = re.compile(
    r"(?P<pre>(?i:\b[\w\-]*(?:password|passwd|secret|token|api_?key)[\w\-]*)"
    r"[\"']?\s*[=:]\s*)(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'&,;)}\]]+)"
)
# Customer web-chat links carry their credential in the path: /c/<token>, /api/v1/chat/<token>.
_CHAT_PATH = re.compile(r"(?P<pre>/(?:c|api/v1/chat)/)[A-Za-z0-9_\-]{16,}")
_KEYWORDS = ("password", "passwd", "secret", "token", "apikey", "api_key")
_BEARER = re.compile(r"(?P<pre>(?i:\b(?:bearer|basic)\s+))[A-Za-z0-9._~+/=\-]{8,}")


def _redact_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match.group('pre')}{quote}{REDACTED}{quote}"


def redact(text: str) -> str:
    """``text`` with passwords in URLs, ``password``/``secret``/``token`` values, bearer
    credentials and web-chat link tokens replaced by ``***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("pre") + REDACTED, text)
    if "/c/" in text or "/chat/" in text:
        text = _CHAT_PATH.sub(lambda m: m.group("pre") + REDACTED, text)
    lower = text.lower()
    if any(word in lower for word in _KEYWORDS):
        text = _KEY_VALUE.sub(_redact_value, text)
    if "bearer" in lower or "basic" in lower:
        text = _BEARER.sub(lambda m: m.group("pre") + REDACTED, text)
    return text


class LogContext(logging.Filter):
    """Stamps ``node_id`` and ``correlation_id`` and redacts each record in place (it
    formats the message and the traceback once, here, so every formatter sees the
    redacted text). Never drops a record; a message whose arguments do not fit its
    format string is logged as the raw format and arguments, not raised to the caller."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_cti_redacted", False):
            return True  # a second handler with this filter: already done
        cid = correlation_id.get()
        record.correlation_id = cid
        record.correlation = f" [{cid}]" if cid else ""
        record.node_id = self.node_id
        try:
            message = record.getMessage()
        except Exception as exc:  # malformed format/args: keep what was given
            message = f"{record.msg!r} % {record.args!r} (bad log call: {exc})"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._cti_redacted = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node_id": getattr(record, "node_id", None),
            "correlation_id": getattr(record, "correlation_id", correlation_id.get()),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "INFO", fmt: str = "text", node_id: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one stream handler (stderr by default)
    in ``fmt`` (``text`` or ``json``) at ``level``; returns the handler."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(LogContext(node_id))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


# The HTTP layer: a request on one conversation, customer or call carries its id; any other
# request a request id (the client's X-Request-Id when it is a sane token, else a new one).
_PATH_IDS = (
    (re.compile(r"^/api/v1/conversations/(\d{1,18})(?:/|$)"), "conv"),
    (re.compile(r"^/api/v1/customers/(\d{1,18})(?:/|$)"), "cust"),
    (re.compile(r"^/api/v1/calls/([A-Za-z0-9._:\-]{1,128})/"), "call"),
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
REQUEST_ID_HEADER = "X-Request-Id"


def request_correlation(path: str, request_id: str | None) -> tuple[str, str]:
    """(correlation id, request id) of an HTTP request."""
    rid = request_id if request_id and _REQUEST_ID.fullmatch(request_id) else uuid.uuid4().hex[:16]
    for pattern, kind in _PATH_IDS:
        if match := pattern.match(path):
            return f"{kind}:{match.group(1)}", rid
    return f"req:{rid}", rid


@web.middleware
async def correlation_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    cid, rid = request_correlation(request.path, request.headers.get(REQUEST_ID_HEADER))
    with correlate(cid):
        response = await handler(request)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response
