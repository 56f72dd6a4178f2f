"""Gateway routing: pick the SMS gateway (SMPP link or modem) for an outgoing message.

Routes are tried in order of specificity: a route naming the sender id beats
one that does not, then the longest matching destination prefix wins, then the
configured order. Failover: an unavailable gateway (link down, bind refused,
modem unplugged) is skipped in favour of the next matching route; if none is
available the message is queued on the best match and goes out when it comes
back. A message is routed once, when it enters the outbox; its idempotency key
then binds it to that gateway (a repeated key returns the stored message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sms_gateway.outbox import OutboundSms


class SmsGateway(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def available(self) -> bool: ...

    async def send(
        self, key: str, destination: str, text: str, source: str | None = None
    ) -> OutboundSms: ...


@dataclass(frozen=True, slots=True)
class Route:
    gateway: str
    prefixes: tuple[str, ...] = ()  # empty: any destination
    senders: tuple[str, ...] = ()  # empty: any sender id


class NoRouteError(LookupError):
    """No route matches the destination and sender."""


class SmsRouter:
    def __init__(self, gateways: Mapping[str, SmsGateway], routes: Sequence[Route]) -> None:
        unknown = {r.gateway for r in routes} - set(gateways)
        if unknown:
            raise ValueError(f"routes name unknown gateways: {sorted(unknown)}")
        self._gateways = dict(gateways)
        self._routes = list(routes)

    def candidates(self, destination: str, source: str | None = None) -> list[str]:
        number = destination.lstrip("+")
        scored: list[tuple[int, int, int, str]] = []
        for order, route in enumerate(self._routes):
            if route.senders and (source is None or source not in route.senders):
                continue
            if route.prefixes:
                matching = [p for p in route.prefixes if number.startswith(p.lstrip("+"))]
                if not matching:
                    continue
                prefix_len = max(len(p.lstrip("+")) for p in matching)
            else:
                prefix_len = 0
            scored.append((-int(bool(route.senders)), -prefix_len, order, route.gateway))
        names: list[str] = []
        for *_, name in sorted(scored):
            if name not in names:
                names.append(name)
        return names

    def choose(self, destination: str, source: str | None = None) -> SmsGateway:
        names = self.candidates(destination, source)
        if not names:
            raise NoRouteError(f"no SMS route for {destination!r}")
        for name in names:
            if self._gateways[name].available:
                return self._gateways[name]
        return self._gateways[names[0]]

    async def send(
        self, key: str, destination: str, text: str, source: str | None = None
    ) -> OutboundSms:
        return await self.choose(destination, source).send(key, destination, text, source)
