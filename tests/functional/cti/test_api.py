"""The REST API over HTTP on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from cti.auth import Principal, Role
from cti.history import HistoryEntry
from tests.functional.cti.conftest import ADMIN, Api

pytestmark = pytest.mark.integration


async def error_of(resp) -> dict:  # type: ignore[no-untyped-def,type-arg]
    body = await resp.json()
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]  # type: ignore[no-any-return]


async def test_auth_errors(api: Api) -> None:
    c = api.client
    resp = await c.post("/api/v1/auth/token", json={"login": "admin", "password": "wrong-password"})
    assert resp.status == 401 and (await error_of(resp))["code"] == "unauthorized"
    resp = await c.post("/api/v1/auth/token", json={"login": "nobody", "password": "whatever"})
    assert resp.status == 401
    assert (await c.get("/api/v1/me")).status == 401
    token = await api.token(*ADMIN)
    body, mac = token.split(".")
    forged = body[:-1] + ("A" if body[-1] != "A" else "B") + "." + mac
    assert (await c.get("/api/v1/me", headers=api.auth(forged))).status == 401
    expired = api.services.signer.issue(Principal(1, Role.ADMIN), now=time.time() - 10**6)
    resp = await c.get("/api/v1/me", headers=api.auth(expired))
    assert resp.status == 401 and "expired" in (await error_of(resp))["message"]
    ok = await c.get("/api/v1/me", headers=api.auth(token))
    assert ok.status == 200 and (await ok.json())["role"] == "admin"


async def test_roles(api: Api) -> None:
    agent = await api.agent("agent1", "PJSIP/agent1")
    resp = await api.client.post(
        "/api/v1/agents", json={"login": "x", "password": "long-enough"}, headers=api.auth(agent)
    )
    assert resp.status == 403
    admin = await api.token(*ADMIN)
    resp = await api.client.post(
        "/api/v1/agents",
        json={"login": "agent1", "password": "long-enough"},
        headers=api.auth(admin),
    )
    assert resp.status == 409


async def test_customers_any_format_and_bad_input(api: Api) -> None:
    t = api.auth(await api.agent("agent1"))
    c = api.client
    name = "<script>alert(1)</script> Иван"
    resp = await c.post(
        "/api/v1/customers",
        json={"name": name, "phones": ["8 (916) 123-45-67", "12"], "emails": ["I@Example.org"]},
        headers=t,
    )
    assert resp.status == 201, await resp.text()
    card = await resp.json()
    assert card["name"] == name
    assert {(i["value"], i["valid"]) for i in card["identities"]} == {
        ("+79161234567", True),
        ("12", False),
        ("i@example.org", True),
    }
    for phone in ("+7 916 1234567", "89161234567", "+7(916)123-45-67"):
        found = await (await c.get("/api/v1/customers", params={"phone": phone}, headers=t)).json()
        assert [x["id"] for x in found["customers"]] == [card["id"]]
    injection = await c.get("/api/v1/customers", params={"phone": "1' OR '1'='1"}, headers=t)
    assert injection.status == 200 and (await injection.json())["customers"] == []
    got = await c.get(f"/api/v1/customers/{card['id']}", headers=t)
    assert got.status == 200 and got.content_type == "application/json"

    dup = await c.post(
        "/api/v1/customers", json={"name": "B", "phones": ["+79161234567"]}, headers=t
    )
    assert dup.status == 409 and (await error_of(dup))["details"]["customer_id"] == card["id"]
    assert (await c.get("/api/v1/customers/999999", headers=t)).status == 404
    assert (await c.get("/api/v1/customers/abc", headers=t)).status == 404
    for body, field in (
        ({"name": 5}, "name"),
        ({"name": "A", "phones": "+7916"}, "phones"),
        ({"name": "A", "phones": [5]}, "phones[0]"),
        ({}, "name"),
        ([1, 2], "body"),
    ):
        resp = await c.post("/api/v1/customers", json=body, headers=t)
        assert resp.status == 422, body
        assert (await error_of(resp))["details"]["field"] == field
    resp = await c.post("/api/v1/customers", data=b"{not json", headers=t)
    assert resp.status == 422
    big = {"name": "A", "notes": "x" * 100_000}
    resp = await c.post("/api/v1/customers", json=big, headers=t)
    assert resp.status == 413 and (await error_of(resp))["code"] == "body_too_large"


async def test_history_newest_first_with_cursor(api: Api) -> None:
    t = api.auth(await api.agent("agent1"))
    card = await (
        await api.client.post(
            "/api/v1/customers", json={"name": "H", "phones": ["+79160000001"]}, headers=t
        )
    ).json()
    for n in range(25):
        await api.services.history.add(HistoryEntry(card["id"], "note", "system", {"n": n}))
    await api.services.history.flush()
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        resp = await api.client.get(
            f"/api/v1/customers/{card['id']}/history", params=params, headers=t
        )
        assert resp.status == 200
        page = await resp.json()
        seen += [e["payload"]["n"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(24, -1, -1))
    bad = await api.client.get(
        f"/api/v1/customers/{card['id']}/history", params={"cursor": "!!"}, headers=t
    )
    assert bad.status == 422 and (await error_of(bad))["details"]["field"] == "cursor"
    bad = await api.client.get(
        f"/api/v1/customers/{card['id']}/history", params={"limit": "x"}, headers=t
    )
    assert bad.status == 422


async def test_take_race_over_http(api: Api) -> None:
    ta = api.auth(await api.agent("alice"))
    tb = api.auth(await api.agent("bob"))
    svc = api.services
    customer, _ = await svc.customers.identify("phone", "+79160000002")
    conv, _ = await svc.conversations.open("sms", customer.id, contact="+79160000002")
    url = f"/api/v1/conversations/{conv.id}/take"
    ra, rb = await asyncio.gather(
        api.client.post(url, headers=ta), api.client.post(url, headers=tb)
    )
    statuses = sorted([ra.status, rb.status])
    assert statuses == [200, 409]
    winner, loser = (ra, rb) if ra.status == 200 else (rb, ra)
    owner = (await winner.json())["owner_login"]
    err = await error_of(loser)
    assert err["code"] == "already_taken" and err["details"]["owner"] == owner
    wt, lt = (ta, tb) if winner is ra else (tb, ta)

    mine = await (await api.client.get("/api/v1/conversations", headers=wt)).json()
    assert [c["id"] for c in mine["conversations"]] == [conv.id]
    reply = await api.client.post(
        f"/api/v1/conversations/{conv.id}/messages",
        json={"text": "<b>Здравствуйте</b>"},
        headers=wt,
    )
    assert reply.status == 201 and (await reply.json())["status"] == "no_gateway"
    other = await api.client.post(
        f"/api/v1/conversations/{conv.id}/messages", json={"text": "hi"}, headers=lt
    )
    assert other.status == 403
    assert (
        await api.client.post(f"/api/v1/conversations/{conv.id}/close", headers=lt)
    ).status == 403
    bad = await api.client.post(
        f"/api/v1/conversations/{conv.id}/close", json={"wrap_up_code": "nope"}, headers=wt
    )
    assert bad.status == 422
    closed = await api.client.post(f"/api/v1/conversations/{conv.id}/close", json={}, headers=wt)
    assert closed.status == 200 and (await closed.json())["status"] == "closed"
    assert (await api.client.post("/api/v1/conversations/424242/take", headers=wt)).status == 404
    await svc.history.flush()
    hist = await (
        await api.client.get(f"/api/v1/customers/{customer.id}/history", headers=wt)
    ).json()
    out = [e for e in hist["events"] if e["kind"] == "message_out"]
    assert out[0]["payload"]["text"] == "<b>Здравствуйте</b>"


async def test_transfer_and_queue_listing(api: Api) -> None:
    ta = api.auth(await api.agent("alice"))
    tb = api.auth(await api.agent("bob"))
    customer, _ = await api.services.customers.identify("phone", "+79160000003")
    conv, _ = await api.services.conversations.open("chat", customer.id, queue="support")
    queue = await (
        await api.client.get("/api/v1/conversations", params={"scope": "queue"}, headers=ta)
    ).json()
    assert conv.id in [c["id"] for c in queue["conversations"]]
    assert (
        await api.client.post(f"/api/v1/conversations/{conv.id}/take", headers=ta)
    ).status == 200
    resp = await api.client.post(
        f"/api/v1/conversations/{conv.id}/transfer", json={"agent": "bob"}, headers=ta
    )
    assert resp.status == 200 and (await resp.json())["owner_login"] == "bob"
    resp = await api.client.post(
        f"/api/v1/conversations/{conv.id}/transfer", json={"agent": "alice"}, headers=ta
    )
    assert resp.status == 403
    resp = await api.client.post(
        f"/api/v1/conversations/{conv.id}/transfer", json={"agent": "ghost"}, headers=tb
    )
    assert resp.status == 404


async def test_merge_and_undo_over_http(api: Api) -> None:
    await api.agent("boss", role="supervisor")
    boss = api.auth(await api.token("boss"))
    a = await (
        await api.client.post(
            "/api/v1/customers", json={"name": "A", "phones": ["+79160000010"]}, headers=boss
        )
    ).json()
    b = await (
        await api.client.post(
            "/api/v1/customers", json={"name": "B", "phones": ["+79160000011"]}, headers=boss
        )
    ).json()
    resp = await api.client.post(
        f"/api/v1/customers/{a['id']}/merge", json={"source_id": b["id"]}, headers=boss
    )
    assert resp.status == 200
    merge_id = (await resp.json())["merge_id"]
    found = await (
        await api.client.get("/api/v1/customers", params={"phone": "89160000011"}, headers=boss)
    ).json()
    assert found["customers"][0]["id"] == a["id"]
    assert (await api.client.post(f"/api/v1/merges/{merge_id}/undo", headers=boss)).status == 200
    found = await (
        await api.client.get("/api/v1/customers", params={"phone": "89160000011"}, headers=boss)
    ).json()
    assert found["customers"][0]["id"] == b["id"]
    agent = api.auth(await api.agent("agent9"))
    resp = await api.client.post(
        f"/api/v1/customers/{a['id']}/merge", json={"source_id": b["id"]}, headers=agent
    )
    assert resp.status == 403


async def test_health_and_openapi(api: Api) -> None:
    resp = await api.client.get("/api/v1/health")
    body = await resp.json()
    assert resp.status == 200 and body["links"]["database"]["up"] is True
    doc = await (await api.client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/api/v1/customers/{id}/history" in doc["paths"]
