"""GET /api/v1/reports/{voice,text,fcr,tags,agents} (JSON or CSV) and tag marking."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from cti.api import principal, services
from cti.auth import Role
from cti.config import Settings
from cti.errors import InvalidInput, NotFound
from cti.keys import SERVICES
from cti.reports.metrics import (
    Report,
    ReportOptions,
    agents_report,
    fcr_report,
    text_report,
    voice_report,
)
from cti.reports.period import parse_period
from cti.reports.tags import Marking, tags_report
from cti.validation import json_body, path_id, string, string_list

ReportFn = Callable[[AsyncEngine, Any, ReportOptions], Awaitable[Report]]
REPORTS: dict[str, ReportFn] = {
    "voice": voice_report,
    "text": text_report,
    "fcr": fcr_report,
    "tags": tags_report,
    "agents": agents_report,
}
REPORT_OPTIONS = web.AppKey("report_options", ReportOptions)
MARKING = web.AppKey("marking", Marking)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

routes = web.RouteTableDef()


def csv_text(report: Report) -> str:
    """The report's rows, then one TOTAL row; text that a spreadsheet would run is quoted."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(report.columns)
    for row in report.rows:
        writer.writerow([_cell(row.get(col)) for col in report.columns])
    _first, *rest = report.columns
    writer.writerow(["TOTAL", *(_cell(report.totals.get(col)) for col in rest)])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return str(value)


def _options(request: web.Request) -> ReportOptions:
    options = request.app[REPORT_OPTIONS]
    days = request.query.get("fcr_days")
    if days is None:
        return options
    if not days.isdigit() or not 1 <= int(days) <= 90:
        raise InvalidInput("fcr_days must be 1..90", field="fcr_days")
    return replace(options, fcr_days=int(days))


@routes.get("/api/v1/reports/{name}")
async def get_report(request: web.Request) -> web.StreamResponse:
    principal(request, Role.SUPERVISOR)
    name = request.match_info["name"]
    build = REPORTS.get(name)
    if build is None:
        raise NotFound(f"no report {name!r}", reports=sorted(REPORTS))
    q = request.query
    fmt = q.get("format") or ("csv" if "text/csv" in request.headers.get("Accept", "") else "json")
    if fmt not in ("json", "csv"):
        raise InvalidInput("format must be json or csv", field="format")
    period = parse_period(q.get("from"), q.get("to"), q.get("tz"), q.get("group_by"))
    report = await build(services(request).engine, period, _options(request))
    if fmt == "json":
        return web.json_response(report.json())
    day = period.start.astimezone(period.tz).date().isoformat()
    return web.Response(
        text=csv_text(report),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-{day}.csv"'},
    )


@routes.post(r"/api/v1/conversations/{id:\d{1,18}}/marking")
async def mark(request: web.Request) -> web.Response:
    who = principal(request)
    body = await json_body(request)
    tags = await request.app[MARKING].mark(
        path_id(request),
        who,
        string_list(body, "tags", max_len=64),
        string(body, "sentiment", required=False, max_len=16),
    )
    return web.json_response({"conversation_id": path_id(request), "tags": tags})


def options_from(settings: Settings) -> ReportOptions:
    return ReportOptions(
        service_level=settings.report_service_level,
        service_level_by_queue=dict(settings.report_service_level_by_queue),
        first_response_sla={"chat": 60.0, "sms": settings.sms_first_reply_sla, "social": 3600.0},
        fcr_days=settings.fcr_days,
    )


def setup_reports(app: web.Application, options: ReportOptions | None = None) -> None:
    svc = app[SERVICES]
    app[REPORT_OPTIONS] = options or options_from(svc.settings)
    app[MARKING] = Marking(svc.sessions, svc.history)
    app.add_routes(routes)
