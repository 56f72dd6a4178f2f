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
``failover_after`` seconds (``sms_failover_after``) gives up its queued
messages that never left it (no part written to the SMSC socket / handed to
the modem): each moves, under the same idempotency key, to the best available
gateway its routes allow, on this node or another, with one ``sms_rerouted``
history event. A message with a part that may have reached the SMSC stays where
it is and goes out when that link is back, so nothing is sent twice by the
failover itself. The move is ``DatabaseOutbox.move``, a compare-and-set on the
row (still queued on that gateway, no acknowledged part): two nodes deciding at
once move it once.

The outbox key of a reply is ``c<conversation id>-<random>``: the conversation
a receipt belongs to is read back from the key, with no extra lookup table.

Cluster (``cti.cluster.duties``): every SMPP link is the duty ``sms:<name>``
and every modem ``modem:<name>``: only the node holding it binds / opens the
port, with a fresh client each time it takes the duty (which loads the queued
messages and the saved MO parts from the database). On every node the channel
answers ``conversations.outbound``: a reply for a gateway held elsewhere is
routed and stored in the outbox as usual but not queued in memory; the node
publishes ``cti:sms:queued`` on Redis, and the holder picks up the queued rows
it does not know (at once on that message, and every ``pickup_every`` seconds
in case it was missed). When the holder dies the next one finds the same rows;
receipts for parts the dead holder sent are matched by SMSC id in the
database. A part written to the SMSC whose response never came back (the
holder died in that instant) is sent again by the next holder: at-least-once,
as after a restart.

Failover across nodes (theory of operation). Every holder writes its
gateways' state to ``cti:sms:gateway:<name>`` (``{node, up, since}``, renewed
every ``failover_check``, expiring after ``3 x failover_check``, at least 6 s);
every node reads them all on the same tick. A gateway held elsewhere counts as
available (for new messages and as a failover target) only while its record
says up. Who moves what:

- a gateway with a holder: only the holder decides it is down (its own link
  state, ``failover_after``); it withdraws each message from its client, moves
  the row, queues it here if this node runs the target, else publishes
  ``cti:sms:queued`` so the target's holder picks it up at once;
- a gateway with no holder for ``failover_after`` (its node died and no other
  node may take it, e.g. a modem plugged into the dead node's host): any node
  moves its rows, under the Redis lock ``cti:sms:failover:<name>`` and only
  while the lease key ``cti:lease:<duty>`` is empty; a node taking the duty
  waits for that lock before its client loads the rows, so a row is never both
  loaded by a new holder and moved away. A part the dead holder wrote without
  storing the answer may go out again (at least once, as after a restart).
- Redis unreachable: no record is fresh, nothing moves across nodes; gateways
  this node runs still fail over among themselves.

Modems: a node may take ``modem:<name>`` only if the port exists on its host
(a modem is plugged into one machine; every node lists it for routing); the
holder keeps it while the modem is unplugged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError
from sqlalchemy import select

from cti.cluster.duties import Duties, duties_of, local_duties
from cti.cluster.lease import LEASE_KEY
from cti.config import ModemLink, SmppLink
from cti.conversations import OutboundSender
from cti.errors import InvalidInput
from cti.history import HistoryEntry
from cti.identities import IdentityKind
from cti.keys import SERVICES
from cti.logs import correlate
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


QUEUED_CHANNEL = "cti:sms:queued"
STATE_KEY = "cti:sms:gateway:{name}"
FAILOVER_LOCK = "cti:sms:failover:{name}"
LOCK_MS = 2000
# KEYS: key. ARGV: value -> deletes the key only if it still holds value
_DELETE_IF = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
              "return redis.call('DEL', KEYS[1]) end return 0")
Gateway = SmppClient | ModemGateway


def _serial_port_here(port: str) -> bool:
    """A device path that exists on this host (a pyserial URL counts as reachable)."""
    return "://" in port or os.path.exists(port)


class _SlotOutbox:
    """The outbox as one gateway's client sees it: a message stored while this node
    does not run the gateway is reported as not created (the client must not queue
    it in memory) and announced to the holder; keys the running client has queued
    are remembered in ``slot.known`` (so the pick-up does not queue them twice)."""

    def __init__(self, inner: DatabaseOutbox, slot: _Slot) -> None:
        self._inner = inner
        self._slot = slot

    async def add(self, message: OutboundSms) -> tuple[OutboundSms, bool]:
        slot = self._slot
        running = slot.running
        was_known = message.key in slot.known
        if running:
            slot.known.add(message.key)  # before the row exists: the pick-up must skip it
        stored, created = await self._inner.add(message)
        if not created and not was_known:
            slot.known.discard(message.key)
        if created and not running:
            await slot.announce()
            return stored, False
        return stored, created

    async def get(self, key: str) -> OutboundSms | None:
        return await self._inner.get(key)

    async def update(self, message: OutboundSms) -> None:
        await self._inner.update(message)
        if message.status != "queued" or message.gateway != self._slot.name:
            self._slot.known.discard(message.key)

    async def unfinished(self, gateway: str) -> list[OutboundSms]:
        found = await self._inner.unfinished(gateway)
        if gateway == self._slot.name:
            self._slot.known.update(m.key for m in found)
        return found

    async def find_by_smsc_id(self, smsc_id: str) -> tuple[OutboundSms, int] | None:
        return await self._inner.find_by_smsc_id(smsc_id)


class _Slot:
    """One SMPP link or modem as a duty: a fresh client each time this node takes it."""

    def __init__(self, channel: SmsChannel, name: str, kind: str,
                 make: Callable[[_SlotOutbox], Gateway], port: str | None = None) -> None:
        self.name = name
        self.port = port
        self.kind = kind  # "smpp" | "modem"
        self.duty = f"{'sms' if kind == 'smpp' else 'modem'}:{name}"
        self._channel = channel
        self._make = make
        self.outbox = _SlotOutbox(channel._outbox, self)
        self.gateway: Gateway = make(self.outbox)
        self.running = False
        self.known: set[str] = set()

    @property
    def available(self) -> bool:
        """Here: the client's own view; held elsewhere: its holder's record says up."""
        if self.running:
            return self.gateway.available
        return self._channel.remote_up(self)

    def eligible(self) -> bool:
        """May this node take the duty? A modem only where its port exists; the holder
        keeps it when the modem is unplugged (its driver reconnects)."""
        return self.running or self.port is None or _serial_port_here(self.port)

    async def send(
        self, key: str, destination: str, text: str, source: str | None = None
    ) -> OutboundSms:
        return await self.gateway.send(key, destination, text, source)

    async def announce(self) -> None:
        await self._channel.announce(self.name)

    async def start(self) -> None:
        self.gateway = self._make(self.outbox)
        self.known.clear()
        await self._channel.wait_failover_lock(self.name)
        # Loads the queued rows (``unfinished``: remembered in ``known``) and MO parts.
        # A reply stored meanwhile is not queued by the client (not running yet): the
        # pick-up queues it unless ``unfinished`` already returned it.
        await self.gateway.start()
        self.running = True
        self._channel.current(self)
        self._channel.held_changed()

    async def stop(self) -> None:
        self.running = False
        self._channel.forget(self)
        await self._channel.drop_state(self.name)
        self._channel.held_changed()
        await self.gateway.stop()
        self.known.clear()

    async def pick_up(self) -> int:
        """Queue the rows of this gateway stored by other nodes (not known here)."""
        if not self.running:
            return 0
        taken = 0
        for message in await self._channel._outbox.unfinished(self.name):
            if not self.running or message.key in self.known:
                continue
            self.known.add(message.key)
            try:
                self.gateway.adopt(message)
            except SmsEncodingError as exc:
                await self.outbox.update(replace(message, status="failed", error=str(exc)))
                continue
            taken += 1
        if taken:
            log.info("%s: picked up %d SMS queued on other nodes", self.name, taken)
        return taken


class SmsChannel:
    """The SMPP clients of one server and their wiring into ``Services``."""

    def __init__(
        self,
        services: Services,
        configs: list[SmppConfig],
        modems: list[ModemConfig] | None = None,
        duties: Duties | None = None,
    ) -> None:
        self._services = services
        self._duties = duties if duties is not None else local_duties()
        self._outbox = DatabaseOutbox(services.sessions)
        # The clients running here (metrics read them: a link is exported by its holder).
        self.clients: dict[str, SmppClient] = {}
        self.modems: dict[str, ModemGateway] = {}
        self._slots: dict[str, _Slot] = {}
        for config in configs:
            self._slots[config.name] = _Slot(self, config.name, "smpp", self._smpp_maker(config))
        for mconfig in modems or []:
            self._slots[mconfig.name] = _Slot(self, mconfig.name, "modem",
                                              self._modem_maker(mconfig), mconfig.port)
        routes = [
            Route(r.gateway, r.prefixes, r.senders) for r in services.settings.sms_routes
        ] or [Route(name) for name in self._slots]
        self._router = SmsRouter(self._slots, routes)
        self._previous: OutboundSender = services.conversations.outbound
        self.failover_after = services.settings.sms_failover_after
        self.failover_check = 2.0
        self.pickup_every = 2.0
        self._down_since: dict[str, float] = {}
        self._unheld_since: dict[str, float] = {}
        self._state_since: dict[str, tuple[bool, float]] = {}  # running here: (up, wall since)
        self._remote: dict[str, dict[str, Any]] = {}  # the records read on the last tick
        self._failover_task: asyncio.Task[None] | None = None
        self._pickup_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._pickup_wake = asyncio.Event()

    def _smpp_maker(self, config: SmppConfig) -> Callable[[_SlotOutbox], Gateway]:
        def make(outbox: _SlotOutbox) -> Gateway:
            return SmppClient(config, outbox, on_status=self.on_status,
                              on_incoming=self.on_incoming,
                              mo_parts=DatabaseMoParts(self._services.sessions))

        return make

    def _modem_maker(self, config: ModemConfig) -> Callable[[_SlotOutbox], Gateway]:
        def make(outbox: _SlotOutbox) -> Gateway:
            return ModemGateway(GsmModem(config), outbox, on_status=self.on_status,
                                on_incoming=self.on_incoming, on_call=self.on_call)

        return make

    def current(self, slot: _Slot) -> None:
        if isinstance(slot.gateway, SmppClient):
            self.clients[slot.name] = slot.gateway
        else:
            self.modems[slot.name] = slot.gateway

    def forget(self, slot: _Slot) -> None:
        self.clients.pop(slot.name, None)
        self.modems.pop(slot.name, None)

    def holder(self, duty: str) -> str | None:
        return self._duties.holder(duty)

    def remote_up(self, slot: _Slot) -> bool:
        if not self._duties.clustered or self._services.redis is None:
            return self.holder(slot.duty) is not None
        record = self._remote.get(slot.name)
        return record is not None and bool(record.get("up"))

    # -- gateway state shared through Redis ---------------------------------------

    async def publish_states(self) -> None:
        """Write the state of the gateways this node runs; read everyone's records."""
        redis = self._services.redis
        if redis is None or not self._duties.clustered:
            return
        ttl_ms = int(max(6.0, 3 * self.failover_check) * 1000)
        names = list(self._slots)
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for name, slot in self._slots.items():
                    if not slot.running:
                        continue
                    up = slot.gateway.available
                    was = self._state_since.get(name)
                    if was is None or was[0] != up:
                        was = self._state_since[name] = (up, time.time())
                    record = {"node": self._duties.node_id, "up": up, "since": was[1]}
                    pipe.set(STATE_KEY.format(name=name), json.dumps(record), px=ttl_ms)
                pipe.mget([STATE_KEY.format(name=n) for n in names])
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("SMS gateway states: Redis unreachable (%s)", exc)
            self._remote = {}
            return
        remote: dict[str, dict[str, Any]] = {}
        for name, raw in zip(names, replies[-1], strict=True):
            if raw is None:
                continue
            with contextlib.suppress(ValueError, TypeError):
                record = json.loads(raw)
                if isinstance(record, dict):
                    remote[name] = record
        self._remote = remote

    async def drop_state(self, name: str) -> None:
        self._state_since.pop(name, None)
        self._down_since.pop(name, None)
        redis = self._services.redis
        if redis is None or not self._duties.clustered:
            return
        key = STATE_KEY.format(name=name)
        with contextlib.suppress(RedisError, OSError, ValueError, TypeError):
            raw = await redis.get(key)
            if raw is not None and json.loads(raw).get("node") == self._duties.node_id:
                await redis.eval(_DELETE_IF, 1, key, raw)
        self._remote.pop(name, None)

    async def wait_failover_lock(self, name: str) -> None:
        """Before a new holder's client loads the rows: let a node moving them off this
        gateway (it had no holder) finish; it holds the lock at most ``LOCK_MS``."""
        redis = self._services.redis
        if redis is None or not self._duties.clustered:
            return
        key = FAILOVER_LOCK.format(name=name)
        with contextlib.suppress(RedisError, OSError):
            for _ in range(LOCK_MS // 50):
                if not await redis.exists(key):
                    return
                await asyncio.sleep(0.05)

    def held(self, name: str) -> bool:
        slot = self._slots.get(name)
        return slot is not None and slot.running

    def held_changed(self) -> None:
        self._pickup_wake.set()

    async def announce(self, gateway: str) -> None:
        """Tell the holder of ``gateway`` that a message waits in the outbox."""
        redis = self._services.redis
        if redis is None:
            return
        try:
            await redis.publish(QUEUED_CHANNEL, gateway)
        except (RedisError, OSError) as exc:  # the holder's periodic pick-up finds it
            log.warning("SMS queued for %s: could not notify the holder (%s)", gateway, exc)

    async def start(self) -> None:
        for name, slot in self._slots.items():
            if slot.kind == "smpp":
                self._services.links.register(f"smpp:{name}", self._probe(slot))
            else:
                self._services.links.register(f"modem:{name}", self._modem_probe(slot))
        self._services.conversations.outbound = self
        for slot in self._slots.values():
            eligible = slot.eligible if self._duties.clustered and slot.port else None
            await self._duties.add(slot.duty, slot.start, slot.stop, eligible=eligible)
        if len(self._slots) > 1 or self._duties.clustered:
            self._failover_task = asyncio.create_task(self._failover_loop(), name="sms-failover")
        if self._duties.clustered:
            self._pickup_task = asyncio.create_task(self._pickup_loop(), name="sms-pickup")
            if self._services.redis is not None:
                self._listen_task = asyncio.create_task(self._listen(), name="sms-queued")

    async def stop(self) -> None:
        for attr in ("_failover_task", "_pickup_task", "_listen_task"):
            task = getattr(self, attr)
            setattr(self, attr, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._services.conversations.outbound is self:
            self._services.conversations.outbound = self._previous
        for slot in self._slots.values():
            await self._duties.remove(slot.duty)

    async def _pickup_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.pickup_every):
                    await self._pickup_wake.wait()
            self._pickup_wake.clear()
            try:
                for slot in list(self._slots.values()):
                    await slot.pick_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SMS pick-up failed; again in %g s", self.pickup_every)

    async def _listen(self) -> None:
        """``cti:sms:queued`` from other nodes: pick up at once (the loop also polls)."""
        redis = self._services.redis
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(QUEUED_CHANNEL)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and any(s.running for s in self._slots.values()):
                        self._pickup_wake.set()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.debug("SMS queued notifications: %s; resubscribing", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _failover_loop(self) -> None:
        while True:
            try:
                await self.publish_states()
                if len(self._slots) > 1:
                    await self.failover_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SMS failover pass failed")
            await asyncio.sleep(self.failover_check)

    async def failover_once(self, now: float | None = None) -> int:
        """Move queued messages off gateways down for ``failover_after``; how many moved.
        A gateway held here: this node decides; held elsewhere: its holder does; held
        by no node: any node may (under the failover lock, see the module doc)."""
        now = time.monotonic() if now is None else now
        moved = 0
        for name, slot in self._slots.items():
            if slot.running:
                self._unheld_since.pop(name, None)
                if slot.gateway.available:
                    self._down_since.pop(name, None)
                    continue
                if now - self._down_since.setdefault(name, now) >= self.failover_after:
                    moved += await self._move_off(slot, list(await self._outbox.unfinished(name)))
                continue
            self._down_since.pop(name, None)
            if not self._duties.clustered or self.holder(slot.duty) is not None:
                self._unheld_since.pop(name, None)
                continue
            if now - self._unheld_since.setdefault(name, now) >= self.failover_after:
                moved += await self._move_off_unheld(slot)
        return moved

    def _targets(self, message: OutboundSms, source: str) -> list[_Slot]:
        return [
            self._slots[other] for other in self._router.candidates(
                message.destination, message.source or None)
            if other != source and self._slots[other].available
        ]

    async def _move_off_unheld(self, slot: _Slot) -> int:
        """Move the rows of a gateway no node holds, if still no node holds it."""
        redis = self._services.redis
        if redis is None:
            return 0
        key, token = FAILOVER_LOCK.format(name=slot.name), uuid.uuid4().hex
        try:
            if not await redis.set(key, token, nx=True, px=LOCK_MS):
                return 0  # another node is at it
        except (RedisError, OSError):
            return 0
        try:
            if await redis.exists(LEASE_KEY.format(duty=slot.duty)):
                return 0  # a node took it meanwhile: its client has the rows
            stop_at = time.monotonic() + LOCK_MS / 2000
            messages = await self._outbox.unfinished(slot.name)
            return await self._move_off(slot, messages, stop_at=stop_at)
        except (RedisError, OSError):
            return 0
        finally:
            with contextlib.suppress(RedisError, OSError):
                await redis.eval(_DELETE_IF, 1, key, token)

    async def _move_off(self, slot: _Slot, messages: list[OutboundSms],
                        stop_at: float | None = None) -> int:
        name = slot.name
        moved = 0
        for message in messages:
            if stop_at is not None and time.monotonic() > stop_at:
                break  # the failover lock expires soon: the rest at the next pass
            if any(part is not None for part in message.smsc_ids):
                continue
            targets = self._targets(message, name)
            if not targets:
                continue
            gateway = slot.gateway
            if slot.running and not gateway.withdraw(message.key):
                continue  # a part of it may have left this gateway: it stays
            target_slot = targets[0]
            target = target_slot.gateway
            # The ESME stores digits only and sends them as TON international;
            # a modem takes the "+" as the TPDU's international type of number.
            digits = message.destination.lstrip("+")
            try:
                fitted = target.fit(replace(
                    message, destination=digits if target_slot.kind == "smpp" else f"+{digits}"))
            except SmsEncodingError as exc:
                log.warning("SMS %s cannot move to %s: %s", message.key, target_slot.name, exc)
                if slot.running:
                    gateway.adopt(message)
                continue
            try:
                won = await self._outbox.move(fitted, name)
            except Exception:
                if slot.running:
                    gateway.adopt(message)  # still queued here in the database
                raise
            if not won:
                current = await self._outbox.get(message.key)
                if slot.running and current is not None and current.gateway == name \
                        and current.status == "queued":
                    gateway.adopt(current)
                continue
            slot.known.discard(message.key)
            if target_slot.running:
                target_slot.known.add(fitted.key)
                target.adopt(fitted)
            else:
                await self.announce(target_slot.name)
            moved += 1
            log.info("SMS %s moved from %s (down) to %s", message.key, name, target_slot.name)
            await self._rerouted(message.key, name, target_slot.name)
        return moved

    async def _rerouted(self, key: str, source: str, target: str) -> None:
        conversation_id = conversation_of(key)
        if conversation_id is None:
            return
        conv = await self._services.conversations.get(conversation_id)
        await self._services.history.add(
            HistoryEntry(
                customer_id=conv.customer_id,
                conversation_id=conv.id,
                kind="sms_rerouted",
                channel="sms",
                payload={"message_ref": key, "from": source, "to": target},
                dedup_key=f"sms-reroute:{key}:{target}",
            )
        )

    def _elsewhere(self, slot: _Slot, kind: str) -> dict[str, Any]:
        holder = self.holder(slot.duty)
        record = self._remote.get(slot.name)
        return {"kind": kind, "up": holder is not None, "held_by": holder,
                "gateway_up": None if record is None else bool(record.get("up")),
                "detail": f"run by node {holder}" if holder else "no node runs it"}

    def _modem_probe(self, slot: _Slot) -> LinkProbe:
        async def probe() -> dict[str, Any]:
            modem = slot.gateway
            if not slot.running or not isinstance(modem, ModemGateway):
                return self._elsewhere(slot, "modem")
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

    def _probe(self, slot: _Slot) -> LinkProbe:
        async def probe() -> dict[str, Any]:
            client = slot.gateway
            if not slot.running or not isinstance(client, SmppClient):
                return self._elsewhere(slot, "smpp")
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
        with correlate(f"conv:{conversation_id}"):
            return await self._send_sms(contact, text, conversation_id)

    async def _send_sms(self, contact: str, text: str, conversation_id: int) -> str:
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
        with correlate(f"conv:{conversation_id}"):
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
            duties_of(app),
        )
        if running is not None:
            running.append(channel)
        await channel.start()
        try:
            yield
        finally:
            await channel.stop()

    return ctx
