"""Reports on a known scenario, built through the real services, on SQLite and PostgreSQL.

Voice calls arrive as pbx.changes objects through ``services.calls.handle``
(exactly how the AMI link delivers them); text conversations through the
conversation/inbox services, with their messages recorded at known times.
Times are in Europe/Moscow (UTC+3): T0 = 2026-11-10 09:00 local.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.auth import Principal, Role
from cti.config import Settings
from cti.history import HistoryEntry
from cti.keys import SERVICES
from cti.reports.api import csv_text, setup_reports
from cti.reports.importers import AsteriskImporter
from cti.reports.metrics import (
    ReportOptions,
    agents_report,
    fcr_report,
    text_report,
    voice_report,
)
from cti.reports.period import parse_period, parse_tz
from cti.reports.sentiment import classify
from cti.reports.tags import Marking, tags_report
from cti.services import Services
from pbx.changes import (
    CallAbandoned,
    CallAnswered,
    CallEnded,
    CallOffered,
    CallQueued,
    CallStarted,
    Durations,
)
from tests.functional.cti.conftest import ADMIN, make_agent

pytestmark = pytest.mark.integration

TZ = "Europe/Moscow"
T0 = datetime(2026, 11, 10, 6, 0, tzinfo=UTC)  # 09:00 in Moscow
OPTIONS = ReportOptions(service_level_by_queue={"support": 40.0})
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sentiment"


def ts(offset: float) -> float:
    return (T0 + timedelta(seconds=offset)).timestamp()


def at(offset: float) -> datetime:
    return T0 + timedelta(seconds=offset)


@dataclass
class Scenario:
    calls: dict[str, int]  # letter -> voice conversation id
    text: dict[str, int]  # letter -> text conversation id
    customers: dict[str, int]


async def _call(
    svc: Services,
    name: str,
    number: str,
    queue: str,
    start: float,
    *,
    answer: tuple[str, float, float, float] | None = None,  # interface, wait, talk, hold
    abandon_wait: float | None = None,
) -> int:
    call_id = f"lab:{name}"
    await svc.calls.handle(
        CallStarted("lab", call_id, "PJSIP/trunk-1", number, "", "100", ts(start))
    )
    await svc.calls.handle(CallQueued("lab", call_id, queue, 1, number, "", ts(start)))
    if answer is not None:
        iface, wait, talk, hold = answer
        await svc.calls.handle(
            CallOffered(
                "lab", call_id, queue, iface, number, "", "100", wait - 2, ts(start + wait - 2)
            )
        )
        await svc.calls.handle(
            CallAnswered("lab", call_id, queue, iface, wait, 2.0, ts(start + wait))
        )
        end = start + wait + talk + hold
        await svc.calls.handle(
            CallEnded(
                "lab",
                call_id,
                16,
                "Normal",
                "hangup",
                queue,
                iface,
                Durations(wait, 2.0, talk, hold),
                ts(end),
            )
        )
    if abandon_wait is not None:
        end = start + abandon_wait
        await svc.calls.handle(CallAbandoned("lab", call_id, queue, 1, abandon_wait, ts(end)))
        await svc.calls.handle(
            CallEnded(
                "lab",
                call_id,
                16,
                "Normal",
                "hangup",
                queue,
                None,
                Durations(abandon_wait, 0, 0, 0),
                ts(end),
            )
        )
    conv = await svc.conversations.by_ref(call_id)
    assert conv is not None
    return conv.id


async def _message(svc: Services, conv_id: int, kind: str, offset: float, text: str) -> None:
    conv = await svc.conversations.get(conv_id)
    await svc.history.add(
        HistoryEntry(conv.customer_id, kind, conv.channel, {"text": text}, conv.id, at(offset))
    )


async def _closed(svc: Services, conv_id: int, offset: float) -> None:
    conv = await svc.conversations.get(conv_id)
    await svc.history.add(
        HistoryEntry(
            conv.customer_id, "closed", conv.channel, {"wrap_up_code": None}, conv.id, at(offset)
        )
    )


async def build_scenario(svc: Services) -> Scenario:
    agent1 = await make_agent(svc, "agent1", endpoint="PJSIP/agent1")
    await make_agent(svc, "agent2", endpoint="PJSIP/agent2")
    calls: dict[str, int] = {}
    # A: answered after 12 s, talk 100, hold 20, wrap-up 15 (closed 15 s after hang-up)
    calls["A"] = await _call(
        svc, "A", "+79161110001", "sales", 0, answer=("PJSIP/agent1", 12, 100, 20)
    )
    await _closed(svc, calls["A"], 12 + 100 + 20 + 15)
    # B: abandoned after 45 s
    calls["B"] = await _call(svc, "B", "+79161110002", "sales", 600, abandon_wait=45)
    # C: support queue (service level 40 s), answered after 30 s, talk 200
    calls["C"] = await _call(
        svc, "C", "+79161110003", "support", 3600, answer=("PJSIP/agent2", 30, 200, 0)
    )
    # D: switches to SMS while waiting (deflected), then hangs up after 30 s
    calls["D"] = await _call(svc, "D", "+79161110004", "sales", 7200)
    deflected = await svc.inbox.deflect_call("lab:D", "sms")
    await svc.calls.mark_deflected("lab:D", int(deflected["id"]), "sales")
    await svc.calls.handle(
        CallAbandoned("lab", "lab:D", "sales", 1, 30, ts(7230))
    )  # ignored: deflected
    await svc.calls.handle(
        CallEnded("lab", "lab:D", 16, "Normal", "hangup", "sales", None, Durations(30), ts(7230))
    )
    # E: books a callback, leaves after 50 s; the callback leg is connected later
    calls["E"] = await _call(svc, "E", "+79161110005", "sales", 9000, abandon_wait=50)
    conv_e = await svc.conversations.get(calls["E"])
    await svc.history.add(
        HistoryEntry(
            conv_e.customer_id, "callback_booked", "voice", {"queue": "sales"}, conv_e.id, at(9040)
        )
    )
    leg, _ = await svc.conversations.open(
        "voice",
        conv_e.customer_id,
        queue="sales",
        linked_to_id=conv_e.id,
        external_ref="callback:1:leg",
        queued_at=at(9600),
    )
    await svc.history.add(
        HistoryEntry(conv_e.customer_id, "callback_connected", "voice", {}, leg.id, at(9610))
    )

    customer_b = (await svc.conversations.get(calls["B"])).customer_id
    customer_a = (await svc.conversations.get(calls["A"])).customer_id
    text: dict[str, int] = {}
    # F: the customer of B comes back 400 s later by chat (a repeat contact)
    f, _ = await svc.conversations.open("chat", customer_b, queue="web", queued_at=at(1000))
    text["F"] = f.id
    await svc.conversations.take(f.id, agent1)
    await _message(svc, f.id, "message_in", 1000, "Thanks, the discount worked perfectly!")
    await _message(svc, f.id, "message_out", 1050, "Glad to help")
    await _message(svc, f.id, "message_in", 1100, "Great service")
    await _closed(svc, f.id, 1300)
    # the SMS conversation D switched to: first answer after 120 s, closed at +600 s
    text["D"] = int(deflected["id"])
    await _message(svc, text["D"], "message_in", 7300, "Когда заканчивается акция?")
    await _message(svc, text["D"], "message_out", 7420, "30 ноября")
    await _closed(svc, text["D"], 7800)
    # G: the customer of A writes an SMS five days later; answered after 1000 s
    g, _ = await svc.conversations.open(
        "sms", customer_a, contact="+79161110001", queued_at=at(5 * 86400)
    )
    text["G"] = g.id
    await _message(
        svc, g.id, "message_in", 5 * 86400, "Terrible service, nobody answers the phone."
    )
    await _message(svc, g.id, "message_out", 5 * 86400 + 1000, "Sorry!")

    supervisor = Principal(agent1, Role.SUPERVISOR)
    marking = Marking(svc.sessions, svc.history)
    await marking.mark(f.id, supervisor, ["promo-nov"], "positive")
    await marking.mark(g.id, supervisor, ["promo-nov"], "negative")
    await marking.mark(calls["A"], supervisor, ["promo-nov", "delivery"], "neutral")
    await marking.mark(calls["A"], supervisor, ["delivery"], None)  # re-marked: no sentiment
    await svc.history.flush()
    return Scenario(calls, text, {"A": customer_a, "B": customer_b})


def period(group_by: str | None = None) -> Any:
    return parse_period("2026-11-10", "2026-11-16", TZ, group_by)


VOICE_TOTALS = {
    "calls": 5,
    "offered": 5,
    "answered": 2,
    "abandoned": 1,
    "avg_abandon_wait": 45.0,
    "max_abandon_wait": 45.0,
    "deflected": 1,
    "callback_requested": 1,
    "called_back": 1,
    "asa": 21.0,  # (12 + 30) / 2
    "aht": 167.5,  # (100 + 20 + 15 + 200) / 2
    "avg_talk": 150.0,
    "avg_hold": 10.0,
    "avg_wrap": 7.5,
    "answered_in_sl": 2,  # A 12 s <= 20 s; C 30 s <= 40 s (support)
    "service_level": 66.67,  # 2 / (2 answered + 1 abandoned)
    "longest_wait": 50.0,  # E
}


async def check_figures(svc: Services, sc: Scenario) -> None:
    engine = svc.engine
    voice = await voice_report(engine, period(), OPTIONS)
    assert voice.totals == VOICE_TOTALS
    assert voice.rows == [{"all": "all", **VOICE_TOTALS}]

    by_queue = await voice_report(engine, period("queue"), OPTIONS)
    rows = {r["queue"]: r for r in by_queue.rows}
    assert set(rows) == {"sales", "support"}
    assert (rows["support"]["answered"], rows["support"]["asa"], rows["support"]["aht"]) == (
        1,
        30.0,
        200.0,
    )
    assert rows["support"]["service_level"] == 100.0
    sales = rows["sales"]
    assert (sales["calls"], sales["answered"], sales["abandoned"], sales["deflected"]) == (
        4,
        1,
        1,
        1,
    )
    assert (sales["called_back"], sales["asa"], sales["aht"], sales["service_level"]) == (
        1,
        12.0,
        135.0,
        50.0,
    )
    assert by_queue.totals == VOICE_TOTALS

    by_hour = await voice_report(engine, period("hour"), OPTIONS)
    assert [(r["hour"], r["calls"], r["answered"]) for r in by_hour.rows] == [
        ("2026-11-10 09:00", 2, 1),  # A, B (06:00 UTC)
        ("2026-11-10 10:00", 1, 1),  # C
        ("2026-11-10 11:00", 2, 0),  # D, E
    ]
    by_day_utc = await voice_report(
        engine, parse_period("2026-11-10", "2026-11-16", "UTC", "day"), OPTIONS
    )
    assert [(r["day"], r["calls"]) for r in by_day_utc.rows] == [("2026-11-10", 5)]
    by_agent = await voice_report(engine, period("agent"), OPTIONS)
    assert [(r["agent"], r["answered"], r["aht"]) for r in by_agent.rows] == [
        ("(none)", 0, None),
        ("agent1", 1, 135.0),
        ("agent2", 1, 200.0),
    ]
    by_tag = await voice_report(engine, period("tag"), OPTIONS)
    assert [(r["tag"], r["calls"], r["answered"]) for r in by_tag.rows] == [
        ("delivery", 1, 1),
        ("promo-nov", 1, 1),
    ]
    assert by_tag.totals == VOICE_TOTALS
    # a period that ends before B starts holds only A
    only_a = await voice_report(
        engine, parse_period("2026-11-10T09:00", "2026-11-10T09:05", TZ), OPTIONS
    )
    assert (only_a.totals["calls"], only_a.totals["answered"], only_a.totals["asa"]) == (1, 1, 12.0)

    text = await text_report(engine, period(), OPTIONS)
    assert text.totals == {
        "conversations": 3,
        "responded": 3,
        "avg_first_response": 390.0,  # (50 + 120 + 1000) / 3
        "max_first_response": 1000.0,
        "responded_in_sla": 2,  # chat 50 <= 60, SMS 120 <= 900; not SMS 1000
        "sla": 66.67,
        "resolved": 2,
        "avg_resolution": 450.0,  # chat 300; SMS 600 from the caller's queue entry
        "messages": 7,
        "messages_per_conversation": 2.33,
    }
    by_channel = {
        r["channel"]: r for r in (await text_report(engine, period("channel"), OPTIONS)).rows
    }
    assert (by_channel["chat"]["conversations"], by_channel["chat"]["sla"]) == (1, 100.0)
    assert (by_channel["sms"]["conversations"], by_channel["sms"]["sla"]) == (2, 50.0)
    assert by_channel["sms"]["avg_first_response"] == 560.0

    fcr = await fcr_report(engine, period(), OPTIONS)
    assert fcr.totals == {"contacts": 7, "repeated": 1, "resolved_first_contact": 6, "fcr": 85.71}
    assert [
        (r["conversation_id"], r["repeat_conversation_id"], r["repeat_channel"])
        for r in fcr.json()["repeat_contacts"]
    ] == [(sc.calls["B"], sc.text["F"], "chat")]
    fcr_channel = {
        r["channel"]: r for r in (await fcr_report(engine, period("channel"), OPTIONS)).rows
    }
    assert {ch: (r["contacts"], r["repeated"], r["fcr"]) for ch, r in fcr_channel.items()} == {
        "voice": (5, 1, 80.0),
        "chat": (1, 0, 100.0),
        "sms": (1, 0, 100.0),
    }
    six_days = ReportOptions(fcr_days=6)
    fcr6 = await fcr_report(engine, period(), six_days)
    assert (fcr6.totals["repeated"], fcr6.totals["fcr"]) == (2, 71.43)  # A -> G after 5 days

    tags = await tags_report(engine, period(), OPTIONS)
    zero = dict.fromkeys(
        (
            "agent_positive",
            "agent_negative",
            "agent_neutral",
            "agent_unmarked",
            "auto_positive",
            "auto_negative",
            "auto_neutral",
            "auto_no_text",
        ),
        0,
    )
    assert tags.rows == [
        {"tag": "delivery", **zero, "conversations": 1, "agent_unmarked": 1, "auto_no_text": 1},
        {
            "tag": "promo-nov",
            **zero,
            "conversations": 3,
            "agent_positive": 1,
            "agent_negative": 1,
            "agent_neutral": 1,
            "auto_positive": 1,
            "auto_negative": 1,
            "auto_no_text": 1,
        },
    ]
    tags_by_channel = await tags_report(engine, period("channel"), OPTIONS)
    assert [(r["tag"], r["channel"], r["conversations"]) for r in tags_by_channel.rows] == [
        ("delivery", "voice", 1),
        ("promo-nov", "chat", 1),
        ("promo-nov", "sms", 1),
        ("promo-nov", "voice", 1),
    ]

    agents = await agents_report(engine, period(), OPTIONS)
    rows = {r["agent"]: r for r in agents.rows}
    assert (rows["agent1"]["voice_answered"], rows["agent1"]["voice_aht"]) == (1, 135.0)
    assert (rows["agent1"]["text_conversations"], rows["agent1"]["text_avg_first_response"]) == (
        1,
        50.0,
    )
    assert (rows["agent2"]["voice_answered"], rows["agent2"]["text_conversations"]) == (1, None)
    # The agents report folds only what it shows: the same figures as the voice report.
    voice_by_agent = await voice_report(engine, period("agent"), OPTIONS)
    voice_cols = ("answered", "asa", "aht", "avg_talk", "avg_hold", "avg_wrap")
    assert {r["agent"]: {k: r[f"voice_{k}"] for k in voice_cols} for r in agents.rows} == {
        r["agent"]: {k: r[k] for k in voice_cols} for r in voice_by_agent.rows
    } | {
        r["agent"]: dict.fromkeys(voice_cols)
        for r in agents.rows
        if r["voice_aht"] is None and r["voice_answered"] is None
    }
    assert {k: agents.totals[f"voice_{k}"] for k in voice_cols} == {
        k: voice_by_agent.totals[k] for k in voice_cols
    }


async def test_every_figure_of_a_known_scenario(services: Services) -> None:
    sc = await build_scenario(services)
    await check_figures(services, sc)
    # the same changes delivered again (an AMI resync) change nothing
    await services.calls.handle(CallAbandoned("lab", "lab:B", "sales", 1, 45, ts(645)))
    await services.history.flush()
    assert (await voice_report(services.engine, period(), OPTIONS)).totals == VOICE_TOTALS

    # Asterisk's records: X answered and Y abandoned never reached the CTI; Z switched to
    # SMS in the IVR; A is already recorded live; W is a direct (non-queue) call in the CDR.
    t = ts(20000)
    queue_log = [
        f"{t:.0f}|A|sales|NONE|ENTERQUEUE||+79161110001|1",
        f"{t + 12:.0f}|A|sales|PJSIP/agent1|CONNECT|12|A.2|2",
        f"{t:.0f}|X|sales|NONE|ENTERQUEUE||+79161110009|1",
        f"{t + 8:.0f}|X|sales|PJSIP/agent2|CONNECT|8|X.2|3",
        f"{t + 68:.0f}|X|sales|PJSIP/agent2|COMPLETECALLER|8|60|1",
        f"{t + 1:.0f}|Y|support|NONE|ENTERQUEUE||+79161110008|1",
        f"{t + 61:.0f}|Y|support|NONE|ABANDON|1|1|60",
        f"{t + 2:.0f}|Z|sales|NONE|ENTERQUEUE||+79161110007|2",
        f"{t + 20:.0f}|Z|sales|NONE|EXITWITHKEY|1|2|18",
        f"{t + 21:.0f}|Z|sales|NONE|DEFLECTED|77",
        f"{t + 30:.0f}|Q|sales|NONE|CONNECT|5|Q.2|1",  # started before the file: unknown
        f"{t:.0f}|NONE|NONE|NONE|QUEUESTART|",
        "garbage line",
    ]
    importer = AsteriskImporter(services, "lab")
    first = await importer.import_queue_log(queue_log)
    assert first.json() == {
        "lines": 13,
        "records": 11,
        "skipped": 3,
        "calls_created": 3,
        "events_new": 8,
        "unknown_calls": 1,
    }  # X: queued, answered, ended; Y: queued, abandoned, ended; Z: queued, deflected;
    # skipped: the QUEUESTART line, the garbage line, EXITWITHKEY (DEFLECTED tells the outcome)
    again = await importer.import_queue_log(queue_log)
    assert (again.calls_created, again.events_new) == (0, 0)
    cdr = [
        [
            "",
            "+79161110006",
            "200",
            "internal",
            '"W" <+79161110006>',
            "PJSIP/trunk-00000001",
            "PJSIP/agent1-00000002",
            "Dial",
            "PJSIP/agent1",
            "2026-11-10 12:00:00",
            "2026-11-10 12:00:05",
            "2026-11-10 12:01:05",
            "65",
            "60",
            "ANSWERED",
            "DOCUMENTATION",
            "W",
        ],
        [
            "",
            "+79161110009",
            "100",
            "queues",
            "",
            "PJSIP/trunk-00000003",
            "",
            "Queue",
            "sales,t",
            "2026-11-10 11:33:20",
            "",
            "2026-11-10 11:34:28",
            "68",
            "68",
            "ANSWERED",
            "DOCUMENTATION",
            "X",
        ],
        ["too", "short"],
    ]
    cdr_stats = await importer.import_cdr(cdr, parse_tz("UTC"))
    assert (cdr_stats.records, cdr_stats.skipped, cdr_stats.calls_created) == (2, 1, 1)
    assert cdr_stats.events_new == 3  # W started + ended; X started (its end is known)
    assert (await importer.import_cdr(cdr, parse_tz("UTC"))).events_new == 0
    totals = (await voice_report(services.engine, period(), OPTIONS)).totals
    assert {k: totals[k] for k in ("calls", "offered", "answered", "abandoned", "deflected")} == {
        "calls": 9,
        "offered": 8,
        "answered": 3,
        "abandoned": 2,
        "deflected": 2,
    }
    assert totals["asa"] == round((12 + 30 + 8) / 3, 2)
    assert totals["longest_wait"] == 60.0


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings)
    setup_reports(app, OPTIONS)
    test_client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


async def _token(client: TestClient[Any, Any], login: str, password: str) -> dict[str, str]:
    resp = await client.post("/api/v1/auth/token", json={"login": login, "password": password})
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def test_api_json_and_csv_row_by_row(client: TestClient[Any, Any]) -> None:
    svc: Services = client.app[SERVICES]
    sc = await build_scenario(svc)
    admin = await _token(client, *ADMIN)
    base = f"from=2026-11-10&to=2026-11-16&tz={TZ}"
    for name in ("voice", "text", "fcr", "tags", "agents"):
        for group in ("", "queue", "agent", "channel", "tag", "day", "hour"):
            query = f"/api/v1/reports/{name}?{base}" + (f"&group_by={group}" if group else "")
            resp = await client.get(query, headers=admin)
            assert resp.status == 200, await resp.text()
            report = await resp.json()
            resp = await client.get(query + "&format=csv", headers=admin)
            assert resp.status == 200 and resp.content_type == "text/csv"
            lines = list(csv.reader(io.StringIO(await resp.text())))
            assert lines[0] == report["columns"]
            assert len(lines) == len(report["rows"]) + 2
            for line, row in zip(lines[1:], report["rows"], strict=False):
                assert line == ["" if row[c] is None else str(row[c]) for c in report["columns"]]
            assert lines[-1][0] == "TOTAL"
            assert lines[-1][1:] == [
                "" if report["totals"].get(c) is None else str(report["totals"][c])
                for c in report["columns"][1:]
            ]
    resp = await client.get(f"/api/v1/reports/voice?{base}", headers=admin)
    assert (await resp.json())["totals"] == VOICE_TOTALS
    resp = await client.get(f"/api/v1/reports/fcr?{base}&fcr_days=6", headers=admin)
    assert (await resp.json())["totals"]["repeated"] == 2
    resp = await client.get(
        f"/api/v1/reports/voice?{base}", headers={**admin, "Accept": "text/csv"}
    )
    assert resp.content_type == "text/csv"
    # errors: unknown report, bad zone, bad group, no role
    for query, status, field in (
        ("/api/v1/reports/nope", 404, None),
        (f"/api/v1/reports/voice?{base}&group_by=planet", 422, "group_by"),
        ("/api/v1/reports/voice?tz=Mars/Base", 422, "tz"),
        ("/api/v1/reports/voice?from=2026-11-10&to=2026-11-01", 422, "to"),
        ("/api/v1/reports/voice?from=yesterday", 422, "from"),
        (f"/api/v1/reports/fcr?{base}&fcr_days=0", 422, "fcr_days"),
        (f"/api/v1/reports/voice?{base}&format=xml", 422, "format"),
    ):
        resp = await client.get(query, headers=admin)
        assert resp.status == status, query
        if field:
            assert (await resp.json())["error"]["details"]["field"] == field
    agent_headers = await _token(client, "agent1", "agent-password")
    resp = await client.get(f"/api/v1/reports/voice?{base}", headers=agent_headers)
    assert resp.status == 403
    # marking through the API: the owner marks; a tag that starts like a formula stays text in CSV
    resp = await client.post(
        f"/api/v1/conversations/{sc.text['F']}/marking",
        json={"tags": ["=cmd()"], "sentiment": "positive"},
        headers=agent_headers,
    )
    assert resp.status == 200, await resp.text()
    await svc.history.flush()
    resp = await client.get(f"/api/v1/reports/tags?{base}&format=csv", headers=admin)
    assert "'=cmd()" in await resp.text()
    resp = await client.post(
        f"/api/v1/conversations/{sc.text['F']}/marking",
        json={"tags": ["x"], "sentiment": "great"},
        headers=agent_headers,
    )
    assert resp.status == 422


def _accuracy(name: str) -> tuple[float, int]:
    rows = [line.rstrip("\n").split("\t") for line in (FIXTURES / name).open(encoding="utf-8")]
    right = sum(classify(text).label == label for label, text in rows)
    return right / len(rows), len(rows)


def test_sentiment_accuracy_on_labelled_samples() -> None:
    """Development samples (the lexicons were tuned on them) and a hold-out set."""
    floors = {"en.tsv": 0.95, "ru.tsv": 0.95, "holdout_en.tsv": 0.75, "holdout_ru.tsv": 0.65}
    for name, floor in floors.items():
        accuracy, n = _accuracy(name)
        print(f"sentiment accuracy {name}: {accuracy:.1%} of {n}")
        assert accuracy >= floor, (name, accuracy)
    assert classify("Не понравилось, но оператор молодец").label == "positive"
    assert classify("не работает").label == "negative"
    assert classify("I am not happy").label == "negative"


def test_csv_quotes_formulas_and_keeps_numbers() -> None:
    from cti.reports.metrics import Report

    report = Report("x", period(), ("tag", "n"), [{"tag": "@SUM(A1)", "n": -1}], {"n": -1})
    assert csv_text(report).splitlines() == ["tag,n", "'@SUM(A1),-1", "TOTAL,-1"]


def test_report_options_from_the_config_file(tmp_path: Path) -> None:
    from cti.config import load_settings
    from cti.reports.api import options_from

    path = tmp_path / "cti.toml"
    path.write_text(
        "[server]\nsms_first_reply_sla = 600\n"
        "[reports]\nservice_level = 15\nfcr_days = 7\n"
        "[reports.service_level_by_queue]\nvip = 10\n",
        encoding="utf-8",
    )
    options = options_from(load_settings(path, environ={}))
    assert (options.service_level, dict(options.service_level_by_queue)) == (15.0, {"vip": 10.0})
    assert (options.fcr_days, options.first_response_sla["sms"]) == (7, 600.0)
    env = options_from(load_settings(None, environ={"CTI_FCR_DAYS": "5"}))
    assert (env.fcr_days, env.service_level) == (5, 20.0)


REPORT_PAYLOADS: list[dict[str, Any]] = [
    {"wait": 12.25, "talk": 300, "hold": 0, "ring": 2.5},
    {"wait": None, "talk": "30", "hold": True},  # not numbers: NULL
    {"text": "Когда заканчивается акция?"},
    {"wait": 1e-3, "talk": -4, "queue": "sales"},
    {},
]


async def test_report_columns_backfilled_and_filled_on_insert(db_url: str) -> None:
    """Migration 0007 backfills the columns in SQL with the same rule every insert applies
    in Python (the model's defaults): Core executemany (the history writer) and the ORM."""
    from alembic import command
    from sqlalchemy import Connection, insert, select, text

    from cti.db import alembic_config, create_engine, migrate, sessionmaker
    from cti.models import HistoryEvent
    from cti.reports.columns import REPORT_COLUMNS, report_values

    engine = create_engine(db_url)
    json_param = "CAST(:p AS JSON)" if engine.dialect.name == "postgresql" else ":p"

    def before_0007(conn: Connection) -> None:
        command.upgrade(alembic_config(conn), "0006_cluster")

    try:
        async with engine.begin() as conn:
            await conn.run_sync(before_0007)
            await conn.execute(
                text(
                    "INSERT INTO customers (id, name, tags, notes, custom, provisional, "
                    "created_at, updated_at) VALUES (1, '', '[]', '', '{}', false, :t, :t)"
                ),
                {"t": T0.replace(tzinfo=None)},
            )
            for payload in REPORT_PAYLOADS:
                await conn.execute(
                    text(
                        "INSERT INTO history_events (customer_id, kind, channel, "
                        f"occurred_at, payload) VALUES (1, 'call_ended', 'voice', :t, "
                        f"{json_param})"
                    ),
                    {"t": T0.replace(tzinfo=None), "p": json.dumps(payload)},
                )
        await migrate(engine)
        n = len(REPORT_PAYLOADS)
        async with engine.begin() as conn:
            await conn.execute(
                insert(HistoryEvent),
                [
                    {
                        "customer_id": 1,
                        "kind": "call_ended",
                        "channel": "voice",
                        "occurred_at": T0,
                        "payload": payload,
                    }
                    for payload in REPORT_PAYLOADS
                ],
            )
        async with sessionmaker(engine)() as session, session.begin():
            session.add_all(
                HistoryEvent(
                    customer_id=1, kind="closed", channel="voice", occurred_at=T0, payload=p
                )
                for p in REPORT_PAYLOADS
            )
        columns = [HistoryEvent.__table__.c[name] for name in REPORT_COLUMNS]
        async with engine.connect() as conn:
            rows = (
                await conn.execute(select(HistoryEvent.id, *columns).order_by(HistoryEvent.id))
            ).all()
        assert len(rows) == 3 * n
        for i, row in enumerate(rows):
            expected = report_values(REPORT_PAYLOADS[i % n])
            assert dict(zip(REPORT_COLUMNS, row[1:], strict=True)) == expected, (i, row)
        assert dict(zip(REPORT_COLUMNS, rows[0][1:], strict=True)) == {
            "wait_s": 12.25,
            "talk_s": 300.0,
            "hold_s": 0.0,
            "ring_s": 2.5,
        }
    finally:
        await engine.dispose()
