"""The ESME against the real node-smpp test SMSC (tests/smsc/smsc.js)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sms_gateway.esme import SmppClient, SmppConfig
from sms_gateway.mo import IncomingSms
from sms_gateway.outbox import InMemoryOutbox, OutboundSms
from tests.peers.smsc import Smsc

pytestmark = pytest.mark.integration

CYRILLIC_200 = (
    "Здравствуйте! Ваш заказ номер 4521 принят и будет доставлен завтра с 10 до 14 часов. "
    "Если вам неудобно это время, ответьте на это сообщение, и оператор подберёт другое. Спасибо!"
    " Хорошего дня, ваш маг."
)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], limit: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + limit
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Harness:
    def __init__(self, smsc: Smsc, **params: object) -> None:
        self.smsc = smsc
        self.outbox = InMemoryOutbox()
        self.statuses: list[tuple[str, str]] = []
        self.incoming: list[IncomingSms] = []
        defaults: dict[str, object] = {
            "reconnect_min": 0.05,
            "reconnect_max": 0.5,
            "response_timeout": 5.0,
            "enquire_link_interval": 5.0,
        }
        defaults.update(params)
        self.config = SmppConfig.from_url(smsc.url(), **defaults)
        self.client = SmppClient(
            self.config, self.outbox, on_status=self._on_status, on_incoming=self._on_incoming
        )

    async def _on_status(self, message: OutboundSms) -> None:
        self.statuses.append((message.key, message.status))

    async def _on_incoming(self, message: IncomingSms) -> None:
        self.incoming.append(message)

    async def status_of(self, key: str) -> str:
        message = await self.outbox.get(key)
        assert message is not None
        return message.status


@pytest.fixture
async def harness_factory(smsc: Smsc) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    started: list[Harness] = []

    async def make(**params: object) -> Harness:
        h = Harness(smsc, **params)
        await h.client.start()
        started.append(h)
        return h

    yield make
    for h in started:
        await h.client.stop()


async def test_cyrillic_200_chars_three_parts_reassembled_by_smsc(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    assert len(CYRILLIC_200) == 200
    h = await harness_factory()
    await h.client.send("k1", "+79001234567", CYRILLIC_200)
    await wait_until(lambda: _status_is(h, "k1", "submitted"), what="submitted")
    state = await smsc.state()
    submits = state["submits"]
    assert len(submits) == 3
    refs = {s["udh"]["ref"] for s in submits}
    assert len(refs) == 1
    assert sorted(s["udh"]["seq"] for s in submits) == [1, 2, 3]
    assert {s["udh"]["total"] for s in submits} == {3}
    assert all(s["data_coding"] == 8 and s["esm_class"] & 0x40 for s in submits)
    assert all(s["registered_delivery"] == 1 for s in submits)
    [ref] = refs
    for s in submits:  # node-smpp lists the elements without the UDHL octet
        assert s["udh_hex"] == f"0003{ref:02x}03{s['udh']['seq']:02x}"
    [message] = state["messages"].values()
    assert message["complete"] and message["text"] == CYRILLIC_200
    assert submits[0]["destination"] == "79001234567"


async def _status_is(h: Harness, key: str, status: str) -> bool:
    return await h.status_of(key) == status


async def test_per_part_receipts_combine_into_one_delivered_status(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    h = await harness_factory()
    await h.client.send("dlr", "79001234567", CYRILLIC_200)
    await wait_until(lambda: _status_is(h, "dlr", "submitted"), what="submitted")
    ids = [s["message_id"] for s in (await smsc.state())["submits"]]
    assert len(ids) == 3
    # Three receipt styles: hex id in text with a 10-digit date, decimal id with a
    # 12-digit date, and the receipted_message_id / message_state TLVs.
    await smsc.acall("POST", "/dlr", {"message_id": ids[0], "stat": "DELIVRD"})
    await smsc.acall(
        "POST",
        "/dlr",
        {"message_id": ids[1], "stat": "DELIVRD", "id_format": "dec", "date_digits": 12},
    )
    await wait_until(lambda: _part_states_count(h, "dlr", 2), what="two part receipts")
    assert await h.status_of("dlr") == "submitted"
    await smsc.acall("POST", "/dlr", {"message_id": ids[2], "stat": "DELIVRD", "tlv": True})
    await wait_until(lambda: _status_is(h, "dlr", "delivered"), what="delivered")
    assert h.statuses == [("dlr", "submitted"), ("dlr", "delivered")]
    # A late intermediate notification does not undo a final receipt.
    await smsc.acall("POST", "/dlr", {"message_id": ids[0], "stat": "ENROUTE"})
    await wait_until(lambda: _deliver_resps(smsc, 4), what="late notification answered")
    late = await h.outbox.get("dlr")
    assert late is not None and late.part_states == ("delivered",) * 3
    # A receipt for an unknown id is counted and answered, nothing else changes.
    await smsc.acall("POST", "/dlr", {"message_id": "DEADBEEF", "stat": "UNDELIV"})
    await wait_until(
        lambda: _true(h.client.health().unknown_receipts == 1), what="unknown receipt counted"
    )
    assert await h.status_of("dlr") == "delivered"


async def test_failed_part_fails_the_message(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    h = await harness_factory()
    await h.client.send("f", "79001234567", "a" * 200)
    await wait_until(lambda: _status_is(h, "f", "submitted"), what="submitted")
    ids = [s["message_id"] for s in (await smsc.state())["submits"]]
    assert len(ids) == 2
    await smsc.acall("POST", "/dlr", {"message_id": ids[1], "stat": "UNDELIV"})
    await wait_until(lambda: _status_is(h, "f", "failed"), what="failed")


async def test_mo_parts_out_of_order_make_one_message(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    h = await harness_factory()
    await h.client.wait_bound()
    text = CYRILLIC_200 + " 😀"
    sent = await smsc.acall(
        "POST",
        "/mo",
        {"source": "79005550000", "destination": "CTI", "text": text, "order": [3, 1, 4, 2]},
    )
    assert sent["sent"] == 4
    await wait_until(lambda: _true(len(h.incoming) == 1), what="one MO message")
    [message] = h.incoming
    assert message.text == text
    assert message.complete and message.parts_received == 4
    assert message.source == "79005550000"
    await wait_until(lambda: _deliver_resps(smsc, 4), what="deliver_sm_resp")
    assert set((await smsc.state())["deliver_resps"]) == {0}


async def test_mo_missing_part_delivered_incomplete_after_timeout(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    h = await harness_factory(mo_timeout=1.0)
    await h.client.wait_bound()
    await smsc.acall(
        "POST",
        "/mo",
        {"source": "79005550001", "destination": "CTI", "text": CYRILLIC_200, "order": [3, 1]},
    )
    await wait_until(lambda: _true(len(h.incoming) == 1), what="incomplete MO message")
    [message] = h.incoming
    assert not message.complete
    assert (message.parts_expected, message.parts_received) == (3, 2)
    assert message.text == CYRILLIC_200[:67] + CYRILLIC_200[134:]


async def _true(value: bool) -> bool:
    return value


async def _part_states_count(h: Harness, key: str, n: int) -> bool:
    message = await h.outbox.get(key)
    assert message is not None
    return sum(s is not None for s in message.part_states) == n


async def _deliver_resps(smsc: Smsc, n: int) -> bool:
    return len((await smsc.state())["deliver_resps"]) >= n


def _count_texts(submits: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in submits:
        counts[s["text"]] = counts.get(s["text"], 0) + 1
    return counts


async def test_smsc_killed_mid_burst_every_message_arrives_duplicates_bounded(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    window = 10
    await smsc.configure(resp_delay_ms=20)
    h = await harness_factory(window=window)
    await h.client.wait_bound()
    texts = [f"burst message {i:03d}" for i in range(500)]
    for i, text in enumerate(texts):
        await h.client.send(f"b{i}", "79001234567", text)

    await wait_until(
        lambda: _true(len(smsc.recorded_submits()) >= 150), what="150 submits before the kill"
    )
    smsc.kill()
    killed_at = len(smsc.recorded_submits())
    assert killed_at < 500, "the burst finished before the kill: the test proves nothing"
    await asyncio.sleep(0.3)
    smsc.start()
    await smsc.configure(resp_delay_ms=20)

    async def all_submitted() -> bool:
        return all(m.status == "submitted" for m in h.outbox.all())

    await wait_until(all_submitted, limit=60, what="all 500 submitted")
    counts = _count_texts(smsc.recorded_submits())
    assert set(counts) == set(texts), "a message never reached the SMSC"
    duplicates = sum(n - 1 for n in counts.values())
    resent = h.client.health().resent_after_drop
    print(f"killed at {killed_at}, resent {resent}, duplicates {duplicates}")
    assert 1 <= resent <= window
    assert duplicates <= resent
    assert h.client.health().reconnects >= 1


async def test_throttled_by_smsc_backs_off_and_drops_nothing(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    await smsc.configure(throttle_tps=20)
    h = await harness_factory(window=10)
    texts = [f"throttle {i:02d}" for i in range(50)]
    for i, text in enumerate(texts):
        await h.client.send(f"t{i}", "79001234567", text)

    async def all_submitted() -> bool:
        return all(m.status == "submitted" for m in h.outbox.all())

    await wait_until(all_submitted, limit=60, what="all throttled messages submitted")
    state = await smsc.state()
    assert state["throttled"] > 0
    assert h.client.health().throttled == state["throttled"]
    assert _count_texts(state["submits"]) == dict.fromkeys(texts, 1)


async def test_tps_limit_paces_below_smsc_throttle(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    await smsc.configure(throttle_tps=30)  # margin for arrivals bunched by a loaded host
    h = await harness_factory(window=10, tps=20.0)
    await h.client.wait_bound()
    started = time.monotonic()
    for i in range(41):
        await h.client.send(f"p{i}", "79001234567", f"paced {i}")

    async def all_submitted() -> bool:
        return all(m.status == "submitted" for m in h.outbox.all())

    await wait_until(all_submitted, limit=60, what="paced messages submitted")
    assert time.monotonic() - started >= 1.9  # 41 sends 1/20 s apart span 2 s
    assert (await smsc.state())["throttled"] == 0


async def test_bind_refused_shows_in_health_and_retries_quietly(
    smsc: Smsc,
    harness_factory: Callable[..., Awaitable[Harness]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await smsc.configure(bind_status=0x0D)
    caplog.set_level("DEBUG", logger="sms_gateway.esme")
    h = await harness_factory(reconnect_min=0.05, reconnect_max=0.2)
    await h.client.send("after", "79001234567", "sent once the bind works")
    await wait_until(
        lambda: _true(h.client.health().bind_failures >= 4), what="repeated bind refusals"
    )
    health = h.client.health()
    assert health.state == "bind_refused"
    assert "0x0000000d" in health.last_error
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "bind refused" in r.message
    ]
    assert len(warnings) == 1
    assert all("secret" not in r.getMessage() for r in caplog.records)
    assert "secret" not in repr(h.config)
    await smsc.configure(bind_status=0)
    await wait_until(lambda: _status_is(h, "after", "submitted"), what="submitted after bind")
    assert h.client.health().state == "bound"


@pytest.mark.parametrize(
    "garbage",
    [
        "00000000" + "00000004" + "00000000" + "00000001",  # command_length 0
        "00a00000" + "00000005" + "00000000" + "00000001",  # 10 MB
        "0000000a" + "00000005" + "0000",  # command_length 10 (< header)
        "00000011" + "00000005" + "00000000" + "00000007" + "00",  # truncated deliver_sm
    ],
    ids=["length-0", "length-10MB", "length-10", "truncated-body"],
)
async def test_malformed_pdu_resets_and_reconnects(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]], garbage: str
) -> None:
    h = await harness_factory()
    await h.client.wait_bound()
    binds_before = (await smsc.state())["binds"]
    await smsc.acall("POST", "/garbage", {"hex": garbage})
    await wait_until(lambda: _binds_at_least(smsc, binds_before + 1), what="a new bind")
    assert "link lost" in h.client.health().last_error or h.client.health().state == "bound"
    await h.client.send("ok", "79001234567", "after the reset")
    await wait_until(lambda: _status_is(h, "ok", "submitted"), what="submitted after reset")


async def test_dead_link_detected_by_enquire_link(
    smsc: Smsc,
    harness_factory: Callable[..., Awaitable[Harness]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = await harness_factory(enquire_link_interval=0.3, response_timeout=1.0)
    await h.client.wait_bound()
    await smsc.configure(silent=True)
    await wait_until(
        lambda: _true(any("enquire_link unanswered" in r.getMessage() for r in caplog.records)),
        what="enquire_link timeout",
    )
    assert h.client.health().state != "bound"
    binds_before = (await smsc.state())["binds"]
    await smsc.configure(silent=False)
    await wait_until(lambda: _binds_at_least(smsc, binds_before + 1), what="rebind")
    await wait_until(lambda: _true(h.client.health().state == "bound"), what="bound again")


async def _binds_at_least(smsc: Smsc, n: int) -> bool:
    return int((await smsc.state())["binds"]) >= n


async def test_message_payload_mode_and_16_bit_reference(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    payload_h = await harness_factory(use_message_payload=True)
    await payload_h.client.send("mp", "79001234567", CYRILLIC_200)
    await wait_until(lambda: _status_is(payload_h, "mp", "submitted"), what="payload submitted")
    [one] = (await smsc.state())["submits"]
    assert one["udh"] is None and one["text"] == CYRILLIC_200 and one["data_coding"] == 8
    await payload_h.client.stop()
    await smsc.acall("POST", "/reset")

    ref16_h = await harness_factory(ref16=True)
    text = "{GSM} " * 40  # 320 septets with the escapes -> 3 parts
    await ref16_h.client.send("r16", "79001234567", text)
    await wait_until(lambda: _status_is(ref16_h, "r16", "submitted"), what="ref16 submitted")
    state = await smsc.state()
    assert [s["udh"]["bits"] for s in state["submits"]] == [16, 16, 16]
    assert all(s["data_coding"] == 0 for s in state["submits"])
    [message] = state["messages"].values()
    assert message["complete"] and message["text"] == text


async def test_restart_sends_only_parts_without_smsc_id(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    # The outbox as a crash left it: part 1 acknowledged by the SMSC, parts 2-3 not.
    h = Harness(smsc)
    await h.outbox.add(
        OutboundSms(
            "crash",
            "79001234567",
            CYRILLIC_200,
            "CTI",
            gateway="smpp",
            smsc_ids=("ACKED1", None, None),
            part_states=(None, None, None),
        )
    )
    await h.client.start()
    try:
        await wait_until(lambda: _status_is(h, "crash", "submitted"), what="submitted")
        submits = (await smsc.state())["submits"]
        assert sorted(s["udh"]["seq"] for s in submits) == [2, 3]
        again = await h.client.send("crash", "79001234567", CYRILLIC_200)
        assert again.status == "submitted"
        await asyncio.sleep(0.3)
        assert len((await smsc.state())["submits"]) == 2
    finally:
        await h.client.stop()


async def test_bad_input_is_refused_before_the_outbox(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    from sms_gateway.encoding import EmptyMessageError, MessageTooLongError
    from sms_gateway.esme import InvalidDestinationError

    h = await harness_factory(max_parts=2)
    with pytest.raises(MessageTooLongError) as err:
        await h.client.send("long", "79001234567", "я" * 135)
    assert err.value.max_parts == 2
    with pytest.raises(EmptyMessageError):
        await h.client.send("empty", "79001234567", "")
    with pytest.raises(InvalidDestinationError):
        await h.client.send("dest", "call me", "hi")
    assert h.outbox.all() == []


async def test_routing_by_prefix_and_sender_with_failover(smsc: Smsc) -> None:
    from sms_gateway.routing import NoRouteError, Route, SmsGateway, SmsRouter

    second = Smsc()
    second.start()
    outbox = InMemoryOutbox()  # one outbox shared by both links, as in the database
    fast = dict(reconnect_min=0.05, reconnect_max=0.3, response_timeout=3.0)
    ru = SmppClient(SmppConfig.from_url(smsc.url(), name="ru", **fast), outbox)
    uk = SmppClient(SmppConfig.from_url(second.url(), name="uk", **fast), outbox)
    gateways: dict[str, SmsGateway] = {"ru": ru, "uk": uk}
    router = SmsRouter(
        gateways,
        [
            Route("ru", prefixes=("7",)),
            Route("uk", prefixes=("44",)),
            Route("uk", senders=("BANK",)),
            Route("uk"),  # default and failover
        ],
    )
    try:
        await ru.start()
        await uk.start()
        await ru.wait_bound()
        await uk.wait_bound()
        assert router.candidates("+79001234567") == ["ru", "uk"]
        assert router.candidates("447700900123") == ["uk"]
        assert router.candidates("79001234567", "BANK") == ["uk", "ru"]
        await router.send("r1", "+79001234567", "to Russia")
        await router.send("r2", "447700900123", "to the UK")
        await router.send("r3", "79001234567", "from the bank", "BANK")

        async def submitted(*keys: str) -> bool:
            for key in keys:
                message = await outbox.get(key)
                if message is None or message.status != "submitted":
                    return False
            return True

        await wait_until(lambda: submitted("r1", "r2", "r3"), what="routed messages")
        assert [s["text"] for s in (await smsc.state())["submits"]] == ["to Russia"]
        assert sorted(s["text"] for s in (await second.state())["submits"]) == [
            "from the bank",
            "to the UK",
        ]
        smsc.kill()
        await wait_until(lambda: _true(not ru.available), what="ru link down")
        await router.send("r4", "79001234567", "failover")
        await wait_until(lambda: submitted("r4"), what="failover message")
        assert "failover" in [s["text"] for s in (await second.state())["submits"]]
        with pytest.raises(NoRouteError):
            SmsRouter(gateways, [Route("ru", prefixes=("7",))]).choose("15551234567")
    finally:
        await ru.stop()
        await uk.stop()
        second.kill()


async def test_mo_handler_failure_loses_nothing(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    h = await harness_factory()
    failures = {"left": 2}
    delivered: list[IncomingSms] = []

    async def flaky(message: IncomingSms) -> None:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("database unavailable")
        delivered.append(message)

    h.client._on_incoming = flaky
    await h.client.wait_bound()
    await smsc.acall("POST", "/mo", {"source": "7900555", "destination": "CTI", "text": "один"})
    await wait_until(lambda: _deliver_resps(smsc, 1), what="single-part deliver_sm_resp")
    assert (await smsc.state())["deliver_resps"] == [0x64]  # ESME_RX_T_APPN: SMSC retries
    await smsc.acall(
        "POST",
        "/mo",
        {"source": "7900555", "destination": "CTI", "text": CYRILLIC_200, "order": [2, 3, 1]},
    )
    await wait_until(lambda: _true(len(delivered) == 1), what="multipart delivered on retry")
    assert delivered[0].text == CYRILLIC_200 and delivered[0].complete


async def test_window_bounds_outstanding_submits(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    await smsc.configure(resp_delay_ms=30)
    h = await harness_factory(window=4)
    for i in range(40):
        await h.client.send(f"w{i}", "79001234567", f"window {i}")

    async def all_submitted() -> bool:
        return all(m.status == "submitted" for m in h.outbox.all())

    await wait_until(all_submitted, what="windowed messages submitted")
    assert (await smsc.state())["max_outstanding"] == 4


async def test_unknown_command_gets_generic_nack_and_unbind_reconnects(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    h = await harness_factory()
    await h.client.wait_bound()
    # A well-framed PDU with an unknown command id: answered, the link stays up.
    await smsc.acall("POST", "/garbage", {"hex": "0000001400000103000000000000abcd01020304"})

    async def nacked() -> bool:
        return bool((await smsc.state())["generic_nacks"])

    await wait_until(nacked, what="generic_nack")
    state = await smsc.state()
    assert state["generic_nacks"] == [{"sequence": 0xABCD, "status": 3}]  # ESME_RINVCMDID
    assert state["binds"] == 1 and h.client.health().state == "bound"
    await smsc.acall("POST", "/unbind")
    await wait_until(lambda: _binds_at_least(smsc, 2), what="rebind after unbind")
    assert (await smsc.state())["unbind_resps"] == 1


async def test_stored_message_that_no_longer_fits_fails_at_start(smsc: Smsc) -> None:
    h = Harness(smsc, max_parts=2)
    await h.outbox.add(
        OutboundSms(
            "old",
            "79001234567",
            CYRILLIC_200,
            gateway="smpp",
            smsc_ids=(None, None, None),
            part_states=(None, None, None),
        )
    )
    await h.client.start()
    try:
        assert await h.status_of("old") == "failed"
        assert h.statuses == [("old", "failed")]
    finally:
        await h.client.stop()


async def test_smsc_down_backs_off_with_one_warning(
    smsc: Smsc,
    harness_factory: Callable[..., Awaitable[Harness]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = await harness_factory(reconnect_min=0.05, reconnect_max=0.2)
    await h.client.wait_bound()
    smsc.kill()
    await wait_until(lambda: _true(h.client.health().reconnects >= 6), what="reconnect attempts")
    assert h.client.health().state in ("down", "connecting")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "link lost" in warnings[0]  # the failed reconnects: debug
    assert "connect failed" in h.client.health().last_error
    smsc.start()
    await wait_until(lambda: _true(h.client.health().state == "bound"), what="bound again")


async def test_mo_gsm7_16_bit_reference_with_escape_across_parts(
    smsc: Smsc, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    h = await harness_factory()
    await h.client.wait_bound()
    text = "a" * 152 + "€ costs {5}" + "b" * 20  # the escape pair of € straddles parts 1-2
    await smsc.acall(
        "POST",
        "/mo",
        {
            "source": "79005550002",
            "destination": "CTI",
            "text": text,
            "coding": "gsm7",
            "ref16": True,
            "ref": 0x1234,
            "order": [2, 1],
        },
    )
    await wait_until(lambda: _true(len(h.incoming) == 1), what="GSM-7 MO message")
    assert h.incoming[0].text == text and h.incoming[0].complete
