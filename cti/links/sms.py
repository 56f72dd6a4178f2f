"""SMS as a channel of the contact center: the SMPP links wired into cti's services.

``sms_links()`` returns an aiohttp ``cleanup_ctx`` that, for every configured
SMPP link (``settings.smpp``), starts an ``SmppClient`` on the database outbox
and wires it into the seams of ``cti.services.Services``:

- inbound (MO) messages -> ``inbox.receive("sms", ...)`` (customer
  identification, the open SMS conversation or a new one, assignment,
  ``screen_pop`` with channel ``sms``). A sender who is waiting in a voice
  queue first gets that call deflected to SMS (``inbox.deflect_call``), so the
  text joins the caller's context and keeps their place in line;
- agent replies: ``conversations.outbound`` sends SMS through the outbox
  (other channels go to the sender that was there before);
- status steps -> the customer's history (``sms_status``), final receipts ->
  ``inbox.delivery_status`` (history ``delivery_status`` + the agent's socket);
- health -> ``links.register(f"smpp:{name}", ...)``, replacing the placeholder.

GSM modems (``[[modem]]`` in the config file) are gateways too: each runs as a
``ModemGateway`` on the same outbox, with the same status / MO wiring, plus
incoming calls (RING / +CLIP) recorded as missed calls on the caller's
timeline, and health ``modem:<name>`` (SIM, signal, network registration).
Routes come from ``[[sms_route]]``; with none, every gateway serves every
number, SMPP links first, in the order configured, with failover to the next
available one.

Failover of what is already queued: a gateway that stays down longer than
``failover_after`` seconds gives up its queued messages that never left it (no
part written to the SMSC socket / handed to the modem): each moves, under the
same idempotency key, to the best available gateway its routes allow, with a
``sms_rerouted`` history event. A message with a part that may have reached the
SMSC stays where it is and goes out when that link is back, so nothing is sent
twice by the failover itself.

The outbox key of a reply is ``c<conversation id>-<random>``: the conversation
a receipt belongs to is read back from the key, with no extra lookup table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from sqlalchemy import select

from cti.config import ModemLink, SmppLink
from cti.conversations import OutboundSender
from cti.errors import InvalidInput
from cti.history import HistoryEntry
from cti.identities import IdentityKind
from cti.keys import SERVICES
from cti.messaging import MAX_INBOUND_TEXT
from cti.models import Conversation
from cti.services import LinkProbe, Services
from cti.sms_outbox import DatabaseMoParts, DatabaseOutbox
from sms_gateway.encoding import EmptyMessageError, MessageTooLongError, SmsEncodingError
from sms_gateway.esme import InvalidDestinationError, SmppClient, SmppConfig
from sms_gateway.mo import IncomingSms
from sms_gateway.modem.driver import GsmModem, ModemConfig
from sms_gateway.modem.events import IncomingCall
from sms_gateway.modem.gateway import ModemGateway
from sms_gateway.outbox import FINAL_STATUSES, OutboundSms
from sms_gateway.routing import NoRouteError, Route, SmsRouter

log = logging.getLogger(__name__)

SmppTuning = Callable[[SmppLink], SmppConfig]
ModemTuning = Callable[[ModemLink], ModemConfig]
CleanupCtx = Callable[[web.Application], AsyncIterator[None]]
_KEY = re.compile(r"^c(\d{1,18})-[0-9a-f]{32}$")


def default_config(link: SmppLink) -> SmppConfig:
    """The ESME settings from a configured link: its URL's options, ESME defaults for the rest."""
    if link.url:
        return SmppConfig.from_url(link.url, name=link.name)
    return SmppConfig(
        host=link.host,
        port=link.port,
        system_id=link.system_id,
        password=link.password,
        name=link.name,
    )


def default_modem_config(link: ModemLink) -> ModemConfig:
    return ModemConfig(name=link.name, port=link.port, baudrate=link.baudrate, pin=link.pin,
                       new_message_indication="cmt" if link.indication == "cmt" else "cmti")


def conversation_of(key: str) -> int | None:
    match = _KEY.match(key)
    return int(match.group(1)) if match else None


class SmsChannel:
    """The SMPP clients of one server and their wiring into ``Services``."""

    def __init__(
        self,
        services: Services,
        configs: list[SmppConfig],
        modems: list[ModemConfig] | None = None,
    ) -> None:
        self._services = services
        self._outbox = DatabaseOutbox(services.sessions)
        self.clients: dict[str, SmppClient] = {
            config.name: SmppClient(
                config,
                self._outbox,
                on_status=self.on_status,
                on_incoming=self.on_incoming,
                mo_parts=DatabaseMoParts(services.sessions),
            )
            for config in configs
        }
        self.modems: dict[str, ModemGateway] = {
            config.name: ModemGateway(
                GsmModem(config),
                self._outbox,
                on_status=self.on_status,
                on_incoming=self.on_incoming,
                on_call=self.on_call,
            )
            for config in modems or []
        }
        gateways: dict[str, SmppClient | ModemGateway] = {**self.clients, **self.modems}
        routes = [
            Route(r.gateway, r.prefixes, r.senders) for r in services.settings.sms_routes
        ] or [Route(name) for name in gateways]
        self._gateways = gateways
        self._router = SmsRouter(gateways, routes)
        self._previous: OutboundSender = services.conversations.outbound
        self.failover_after = 30.0
        self.failover_check = 2.0
        self._down_since: dict[str, float] = {}
        self._failover_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for name, client in self.clients.items():
            self._services.links.register(f"smpp:{name}", self._probe(client))
        for name, modem in self.modems.items():
            self._services.links.register(f"modem:{name}", self._modem_probe(modem))
        self._services.conversations.outbound = self
        for client in self.clients.values():
            await client.start()
        for modem in self.modems.values():
            await modem.start()
        if len(self._gateways) > 1:
            self._failover_task = asyncio.create_task(self._failover_loop(), name="sms-failover")

    async def stop(self) -> None:
        task, self._failover_task = self._failover_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._services.conversations.outbound is self:
            self._services.conversations.outbound = self._previous
        for client in self.clients.values():
            await client.stop()
        for modem in self.modems.values():
            await modem.stop()

    async def _failover_loop(self) -> None:
        while True:
            await asyncio.sleep(self.failover_check)
            try:
                await self.failover_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SMS failover pass failed")

    async def failover_once(self, now: float | None = None) -> int:
        """Move queued messages off gateways down for ``failover_after``; how many moved."""
        now = time.monotonic() if now is None else now
        moved = 0
        for name, gateway in self._gateways.items():
            if gateway.available:
                self._down_since.pop(name, None)
                continue
            if now - self._down_since.setdefault(name, now) < self.failover_after:
                continue
            for message in await self._outbox.unfinished(name):
                if any(part is not None for part in message.smsc_ids):
                    continue
                targets = [
                    other for other in self._router.candidates(
                        message.destination, message.source or None
                    )
                    if other != name and self._gateways[other].available
                ]
                if not targets or not gateway.withdraw(message.key):
                    continue
                target = self._gateways[targets[0]]
                if isinstance(gateway, SmppClient) and not message.destination.startswith("+"):
                    # The ESME stores digits only and sends them as TON international;
                    # a modem takes the "+" as the TPDU's international type of number.
                    message = replace(message, destination=f"+{message.destination}")
                try:
                    fitted = target.fit(message)
                except SmsEncodingError as exc:
                    log.warning("SMS %s cannot move to %s: %s", message.key, target.name, exc)
                    gateway.adopt(message)
                    continue
                await self._outbox.update(fitted)
                target.adopt(fitted)
                moved += 1
                log.info("SMS %s moved from %s (down) to %s", message.key, name, target.name)
                conversation_id = conversation_of(message.key)
                if conversation_id is not None:
                    conv = await self._services.conversations.get(conversation_id)
                    await self._services.history.add(
                        HistoryEntry(
                            customer_id=conv.customer_id,
                            conversation_id=conv.id,
                            kind="sms_rerouted",
                            channel="sms",
                            payload={"message_ref": message.key, "from": name,
                                     "to": target.name},
                            dedup_key=f"sms-reroute:{message.key}:{target.name}",
                        )
                    )
        return moved

    @staticmethod
    def _modem_probe(modem: ModemGateway) -> LinkProbe:
        async def probe() -> dict[str, Any]:
            health = modem.health()
            return {
                "kind": "modem",
                "up": health.up,
                "port": modem.modem.config.port,
                "sim": health.sim,
                "signal_rssi": health.signal_rssi,
                "signal_dbm": health.signal_dbm,
                "registration": health.registration,
                "operator": health.operator,
                "outbox": health.outbox,
                "detail": health.last_error,
            }

        return probe

    async def on_call(self, call: IncomingCall) -> None:
        """A voice call to a modem's SIM: the driver never answers; it is a missed call."""
        services = self._services
        number = call.number or ""
        try:
            customer, _ = await services.customers.identify(IdentityKind.PHONE, number)
        except InvalidInput:
            customer = await services.customers.new_anonymous("unknown caller")
        await services.history.add(
            HistoryEntry(
                customer_id=customer.id,
                conversation_id=None,
                kind="call_missed",
                channel="voice",
                payload={"number": number or None, "via": f"modem:{call.modem}",
                         "reason": "GSM modem line (not answered)"},
                occurred_at=call.at,
                dedup_key=f"modem-call:{call.modem}:{number}:{call.at.timestamp():.0f}",
            )
        )

    def _probe(self, client: SmppClient) -> LinkProbe:
        async def probe() -> dict[str, Any]:
            health = client.health()
            return {
                "kind": "smpp",
                "up": health.state == "bound",
                "server": f"{client.config.host}:{client.config.port}",
                "state": health.state,
                "detail": health.last_error,
                "bind_failures": health.bind_failures,
                "reconnects": health.reconnects,
                "in_flight": health.in_flight,
                "queued_parts": health.queued_parts,
                "submitted_parts": health.submitted_parts,
                "resent_after_drop": health.resent_after_drop,
                "unknown_receipts": health.unknown_receipts,
            }

        return probe

    # -- outbound (conversations.outbound) --------------------------------------

    async def send(self, channel: str, contact: str, text: str, conversation_id: int) -> str:
        if channel != "sms":
            return await self._previous.send(channel, contact, text, conversation_id)
        key = f"c{conversation_id}-{uuid.uuid4().hex}"
        try:
            message = await self._router.send(key, contact, text)
        except MessageTooLongError as exc:
            raise InvalidInput(
                f"the text needs {exc.parts_needed} SMS parts, at most {exc.max_parts} allowed",
                field="text",
                max_parts=exc.max_parts,
                parts_needed=exc.parts_needed,
            ) from None
        except EmptyMessageError:
            raise InvalidInput("the text is empty", field="text") from None
        except SmsEncodingError as exc:
            raise InvalidInput(str(exc), field="text") from None
        except InvalidDestinationError:
            raise InvalidInput(
                "the conversation's contact is not a phone number SMS can reach",
                field="contact",
            ) from None
        except NoRouteError:
            raise InvalidInput("no SMS gateway serves this number", field="contact") from None
        await self._record(message, conversation_id)
        return message.status

    # -- status steps (ESME on_status) ----------------------------------------

    async def on_status(self, message: OutboundSms) -> None:
        conversation_id = conversation_of(message.key)
        if conversation_id is None:
            return  # not a conversation reply (e.g. sent by the IVR): nothing to thread
        await self._record(message, conversation_id)
        if message.status in FINAL_STATUSES:
            await self._services.inbox.delivery_status(
                conversation_id, message.key, message.status, message.error
            )

    async def _record(self, message: OutboundSms, conversation_id: int) -> None:
        conv = await self._services.conversations.get(conversation_id)
        await self._services.history.add(
            HistoryEntry(
                customer_id=conv.customer_id,
                conversation_id=conv.id,
                kind="sms_status",
                channel="sms",
                payload={
                    "message_ref": message.key,
                    "status": message.status,
                    "parts": message.parts,
                    "gateway": message.gateway,
                    "error": message.error,
                },
                dedup_key=f"sms:{message.key}:{message.status}",
            )
        )

    # -- inbound (ESME on_incoming) -------------------------------------------

    async def on_incoming(self, sms: IncomingSms) -> None:
        details: dict[str, Any] = {
            "to": sms.destination,
            "parts": sms.parts_received,
            "parts_expected": sms.parts_expected,
            "complete": sms.complete,
        }
        text = sms.text
        if len(text) > MAX_INBOUND_TEXT:
            text = text[:MAX_INBOUND_TEXT]
            details["truncated_from"] = len(sms.text)
        try:
            joined = await self._join_waiting_call(sms.source)
            conv = await self._services.inbox.receive("sms", sms.source, text, details=details)
        except InvalidInput as exc:
            # A permanent refusal (no usable sender): refusing it at the SMPP level
            # would make the SMSC redeliver it forever. The text is not logged.
            log.warning(
                "SMS from %r to %r (%d characters) not accepted: %s",
                sms.source[:32],
                sms.destination[:32],
                len(sms.text),
                exc.message,
            )
            return
        if joined and conv.status == "queued":
            # receive() only offers conversations it creates: offer the joined one now.
            await self._services.conversations.assign_text(conv.id)

    async def _join_waiting_call(self, sender: str) -> bool:
        """A sender waiting in a voice queue: deflect that call to SMS first, so the
        message lands in a conversation linked to the call that keeps its place."""
        services = self._services
        try:
            customer = await services.customers.lookup(IdentityKind.PHONE, sender)
        except InvalidInput:
            return False
        if customer is None:
            return False
        contact = services.customers.normalise(IdentityKind.PHONE, sender).value
        async with services.sessions() as session:
            waiting = await session.scalar(
                select(Conversation)
                .where(
                    Conversation.channel == "voice",
                    Conversation.status == "queued",
                    Conversation.customer_id == customer.id,
                    Conversation.contact == contact,
                    Conversation.external_ref.is_not(None),
                )
                .order_by(Conversation.id.desc())
                .limit(1)
            )
        if waiting is None or waiting.external_ref is None:
            return False
        await services.inbox.deflect_call(waiting.external_ref, "sms")
        log.info("SMS from a caller waiting in queue joins call %s", waiting.external_ref)
        return True


def sms_links(
    tuning: SmppTuning = default_config,
    modem_tuning: ModemTuning = default_modem_config,
    running: list[SmsChannel] | None = None,
) -> CleanupCtx:
    """A cleanup_ctx running every configured SMPP link and GSM modem; ``tuning`` builds
    each link's ``SmppConfig`` (window, TPS, source address, max parts...),
    ``modem_tuning`` each modem's ``ModemConfig``; ``running`` receives the channel."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        settings = services.settings
        if not settings.smpp and not settings.modems:
            yield
            return
        channel = SmsChannel(
            services,
            [tuning(link) for link in settings.smpp],
            [modem_tuning(modem) for modem in settings.modems],
        )
        if running is not None:
            running.append(channel)
        await channel.start()
        try:
            yield
        finally:
            await channel.stop()

    return ctx
