"""SMPP throughput and TPS pacing against the node-smpp test SMSC (tests/smsc/smsc.js).

    .venv/bin/python -m bench.smpp_throughput

1. SMSC answers every submit_sm after 50 ms; our ESME with window 10 versus
   smpplib 2.2.4's synchronous client (send, then wait for the response) in the
   same run. Target: >= 190 submit_sm/s (95% of window / latency).
2. ESME limited to 30 TPS against an SMSC that throttles above 30/s: the largest
   one-second bucket of accepted submit_sm and the number of ESME_RTHROTTLED.
Needs node and `npm ci` in tests/smsc.
"""

from __future__ import annotations

import asyncio
import collections
import time

import smpplib.client
import smpplib.consts

from sms_gateway.esme import SmppClient, SmppConfig
from sms_gateway.outbox import InMemoryOutbox, OutboundSms
from tests.peers.smsc import Smsc

LATENCY_MS = 50


async def _esme_burst(smsc: Smsc, count: int, **params: object) -> float:
    outbox = InMemoryOutbox()
    config = SmppConfig.from_url(smsc.url(), **params)
    done = asyncio.Event()
    submitted = 0

    async def on_status(message: OutboundSms) -> None:
        nonlocal submitted
        submitted += message.status == "submitted"
        if submitted == count:
            done.set()

    client = SmppClient(config, outbox, on_status=on_status)
    await client.start()
    try:
        await client.wait_bound()
        started = time.monotonic()
        for i in range(count):
            await client.send(f"bench-{time.time_ns()}-{i}", "79001234567", f"bench {i}")
        await asyncio.wait_for(done.wait(), 120)
        return time.monotonic() - started
    finally:
        await client.stop()


def _smpplib_burst(smsc: Smsc, count: int) -> float:
    client = smpplib.client.Client("127.0.0.1", smsc.smpp_port, timeout=10)
    client.set_message_sent_handler(lambda **kwargs: None)
    client.connect()
    try:
        client.bind_transceiver(system_id="cti", password="secret")
        started = time.monotonic()
        for i in range(count):
            client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
                source_addr="CTI",
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                destination_addr="79001234567",
                short_message=f"smpplib {i}".encode(),
            )
            client.read_once()  # the submit_sm_resp
        return time.monotonic() - started
    finally:
        client.unbind()
        client.disconnect()


async def main() -> None:
    smsc = Smsc()
    smsc.start()
    try:
        await smsc.configure(resp_delay_ms=LATENCY_MS)
        n_esme, n_lib = 1000, 60
        t_esme = await _esme_burst(smsc, n_esme, window=10)
        t_lib = await asyncio.to_thread(_smpplib_burst, smsc, n_lib)
        rate_esme, rate_lib = n_esme / t_esme, n_lib / t_lib
        target = 0.95 * 10 / (LATENCY_MS / 1000)
        print(f"SMSC latency {LATENCY_MS} ms, window 10")
        print(f"  sms_gateway ESME : {rate_esme:7.1f} submit_sm/s ({n_esme} in {t_esme:.2f} s)")
        print(f"  smpplib 2.2.4 sync: {rate_lib:7.1f} submit_sm/s ({n_lib} in {t_lib:.2f} s)")
        ceiling = 10 * rate_lib  # window / round trip measured by the synchronous client
        print(f"  ratio {rate_esme / rate_lib:.1f}x; window/round-trip ceiling {ceiling:.0f}/s,")
        print(
            f"  ESME at {100 * rate_esme / ceiling:.0f}% of it; nominal target >= {target:.0f}/s:"
        )
        print("  OK" if rate_esme >= target else "  MISSED (the measured round trip exceeds 50 ms)")

        await smsc.acall("POST", "/reset")
        await smsc.configure(resp_delay_ms=0, throttle_tps=30)
        before = (await smsc.state())["throttled"]
        n_tps = 150
        t_tps = await _esme_burst(smsc, n_tps, window=10, tps=30.0)
        state = await smsc.state()
        buckets = collections.Counter(int(s["at"] // 1000) for s in state["submits"])
        print("ESME tps=30 against an SMSC throttling above 30/s")
        print(f"  {n_tps} messages in {t_tps:.2f} s = {n_tps / t_tps:.1f}/s")
        print(f"  largest one-second bucket: {max(buckets.values())} (limit 30)")
        print(f"  ESME_RTHROTTLED received: {state['throttled'] - before}")
    finally:
        smsc.kill()


if __name__ == "__main__":
    asyncio.run(main())
