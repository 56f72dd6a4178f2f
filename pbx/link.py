"""The AMI link to one Asterisk: the only module that imports panoramisk.

Theory of operation
-------------------
A supervisor task connects, logs in, resyncs, then serves the connection until
it drops, and starts again after a backoff (doubling from ``backoff_min`` to
``backoff_max``; ``auth_retry`` after a refused login). panoramisk's
``Manager`` gives the action/response bookkeeping (ActionID, lists of events
ending in ``...Complete``); everything else in it is bypassed or fixed:

* bytes go through :class:`pbx.framing.AmiParser` (``_LinkProtocol``), which
  splits before decoding, so a UTF-8 character split across reads survives
  (panoramisk 1.4 decodes each chunk with errors='ignore' and loses it), and
  bounds every line and message (a violation resets the connection);
* panoramisk re-sends unanswered actions after a reconnect; here an action
  in flight when the link drops fails with :class:`UnknownOutcome` and is
  never re-sent; an action asked for while the link is down fails at once
  with :class:`PbxUnavailable`;
* panoramisk's Ping never checks the Pong; the watchdog here aborts the
  connection when a Ping gets no answer within ``ping_timeout``;
* panoramisk reconnects on a fixed timer from its own callbacks; the
  supervisor here owns reconnection;
* events lost during an outage are recovered by the resync (CoreStatus,
  CoreShowChannels, QueueStatus, QueueSummary) fed to ``PbxTracker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from panoramisk import Manager
from panoramisk.actions import Action as PanoramiskAction
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message as PanoramiskMessage

from pbx import actions as act
from pbx import events as ev
from pbx.actions import (
    AmiAuthError,
    AmiEndpoint,
    DuplicateAction,
    OriginateFailed,
    PbxUnavailable,
    UnknownOutcome,
)
from pbx.changes import Change, PbxLinkChanged
from pbx.framing import AmiFramingError, AmiMessage, AmiParser, FrameLimits
from pbx.state import CallSnapshot, PbxTracker, QueueSnapshot

log = logging.getLogger("pbx.link")
_MAX_CORRELATIONS = 100_000


@dataclass(frozen=True, slots=True)
class LinkHealth:
    pbx: str
    up: bool
    detail: str
    since: float
    connects: int
    asterisk_started: str | None
    bad_events: int


@dataclass(frozen=True, slots=True)
class OriginateResult:
    correlation_id: str
    channel_id: str  # the Uniqueid of the agent's leg
    call_id: str  # "<pbx>:<channel_id>": the Linkedid of the new call
    channel: str


@dataclass(slots=True)
class LinkSettings:
    connect_timeout: float = 5.0
    login_timeout: float = 10.0
    action_timeout: float = 10.0
    resync_timeout: float = 30.0
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    backoff_min: float = 0.5
    backoff_max: float = 15.0
    auth_retry: float = 30.0
    limits: FrameLimits = field(default_factory=FrameLimits)


class _LinkDown(Exception):
    pass


class _LinkProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with the pbx framing parser instead of per-chunk decoding."""

    def __init__(self, link: AmiLink) -> None:
        super().__init__()
        self.responses: dict[str, Any] = {}
        self.closed = False
        self.link = link
        # Unsolicited events the tracker has no use for are dropped on their name.
        self.parser = AmiParser(link.settings.limits, keep_events=ev.EVENT_TYPES.keys())
        self._counted = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason = "the AMI connection was closed"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.factory = self.link._manager
        self.log = log
        self.encoding = "utf-8"

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        try:
            parser.feed(data)
            while (msg := parser.next_message()) is not None:
                self._dispatch(msg)
        except AmiFramingError as exc:
            self.abort(f"protocol error, connection reset: {exc}")
        finally:
            self.link.events_received += parser.events - self._counted
            self._counted = parser.events

    def abort(self, reason: str) -> None:
        if not self.closed:
            self.reason = reason
            self.transport.abort()

    def _dispatch(self, msg: AmiMessage) -> None:
        action_id = msg.action_id
        if action_id is not None and action_id in self.responses:
            first: dict[str, str] = {}
            for key, value in msg.headers:
                first.setdefault(key, value)
            pm = PanoramiskMessage(first)
            pm.ami = msg
            self.handle_message(pm)
        elif msg.event is not None:
            self.link._on_event(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending: dict[str, Any] = self.responses
        self.responses = {}
        for action in {id(a): a for a in pending.values()}.values():
            if not action.future.done():
                action.future.set_exception(UnknownOutcome(
                    str(action["Action"]), str(action.id), "the AMI connection was lost",
                    channel_id=action.get("ChannelId") or None))
                action.future.exception()  # mark retrieved: the waiter may be gone
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        # panoramisk's close() queues unanswered actions for a re-send: never here.
        if not self.closed:
            self.closed = True
            self.transport.close()


class _ChangeStream:
    def __init__(self, link: AmiLink) -> None:
        self._link = link
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue()
        link._subscribers.add(self._queue)

    def __aiter__(self) -> _ChangeStream:
        return self

    async def __anext__(self) -> Change:
        item = await self._queue.get()
        if item is None:
            self._link._subscribers.discard(self._queue)
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._link._subscribers.discard(self._queue)


class AmiLink:
    """One supervised AMI connection to the Asterisk called ``name``.

    ``async with AmiLink("pbx1", "ami://user:secret@host:5038") as link:`` starts it;
    ``link.changes()`` yields every :mod:`pbx.changes` event from then on.
    """

    def __init__(
        self,
        name: str,
        url: str,
        settings: LinkSettings | None = None,
        *,
        originate_context: str = "from-agents",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.endpoint: AmiEndpoint = act.parse_ami_url(url)
        self.settings = settings or LinkSettings()
        self.originate_context = originate_context
        self.tracker = PbxTracker(name)
        self._clock = clock
        self._manager = Manager(
            host=self.endpoint.host, port=self.endpoint.port, log=log,
            forgetable_actions=_Everything(),
        )
        self._manager.callbacks.clear()
        self._protocol: _LinkProtocol | None = None
        self._subscribers: set[asyncio.Queue[Change | None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._up = False
        self._detail = "not started"
        self._since = clock()
        self._connects = 0
        self._started: str | None = None
        self._bad_events = 0
        # Raw AMI events read from the socket (before any filtering), all sessions.
        self.events_received = 0
        self._correlations: dict[str, None] = {}  # insertion-ordered set
        self._ready = asyncio.Event()

    def __repr__(self) -> str:
        return f"AmiLink({self.name!r}, {self.endpoint})"

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"ami-link-{self.name}")

    async def stop(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for q in list(self._subscribers):
            q.put_nowait(None)

    async def __aenter__(self) -> AmiLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_up(self, within: float) -> None:
        """Wait until logged in and resynced (raises TimeoutError)."""
        async with asyncio.timeout(within):
            await self._ready.wait()

    def changes(self) -> AsyncIterator[Change]:
        """A stream of every change from now on (subscribe before you need them)."""
        return _ChangeStream(self)

    def health(self) -> LinkHealth:
        return LinkHealth(
            pbx=self.name, up=self._up, detail=self._detail, since=self._since,
            connects=self._connects, asterisk_started=self._started,
            bad_events=self._bad_events,
        )

    def calls(self) -> tuple[CallSnapshot, ...]:
        return self.tracker.call_snapshots(self._clock())

    def call(self, call_id: str) -> CallSnapshot | None:
        return self.tracker.call_snapshot(call_id, self._clock())

    def queues(self) -> tuple[QueueSnapshot, ...]:
        return self.tracker.queue_snapshots(self._clock())

    def queue(self, name: str) -> QueueSnapshot | None:
        return self.tracker.queue_snapshot(name, self._clock())

    # -- supervisor -------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self.settings.backoff_min
        while True:
            try:
                await self._session()
                delay = self.settings.backoff_min
            except AmiAuthError as exc:
                self._note_error(str(exc))
                delay = self.settings.auth_retry
            except _LinkDown as exc:
                self._note_error(str(exc))
            except (OSError, TimeoutError, UnknownOutcome, PbxUnavailable, AmiFramingError,
                    act.AmiActionError, ev.EventError) as exc:
                protocol = self._protocol
                if protocol is not None and protocol.closed and isinstance(
                        exc, UnknownOutcome | PbxUnavailable):
                    self._note_error(protocol.reason)
                else:
                    self._note_error(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug in one session must not end the link for good
                log.exception("AMI %s: unexpected error, reconnecting", self.name)
                self._note_error(f"internal error: {type(exc).__name__}")
            finally:
                await self._down()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.settings.backoff_max)

    def _note_error(self, detail: str) -> None:
        if detail != self._detail:
            log.warning("AMI %s (%s:%s): %s", self.name, self.endpoint.host,
                        self.endpoint.port, detail)
        self._detail = detail

    async def _down(self) -> None:
        protocol, self._protocol = self._protocol, None
        self._manager.protocol = None
        if protocol is not None and not protocol.closed:
            protocol.transport.abort()
        self._ready.clear()
        if self._up:
            self._up = False
            self._since = self._clock()
            self._publish([PbxLinkChanged(self.name, False, self._detail, False, self._since)])

    async def _session(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(s.connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: _LinkProtocol(self), self.endpoint.host, self.endpoint.port)
        assert isinstance(protocol, _LinkProtocol)
        self._protocol = protocol
        self._manager.protocol = protocol
        # Events may arrive in the same read as the login response: mark before.
        self.tracker.begin_resync()
        self._manager.responses = protocol.responses
        response = await self._send(act.login(self.endpoint), s.login_timeout)
        if (response.response or "").lower() != "success":
            raise AmiAuthError(f"AMI login as {self.endpoint.username!r} refused: "
                               f"{response.get('Message') or response.response}")
        pinger = asyncio.create_task(self._watchdog(protocol))
        try:
            restarted = await self._resync(protocol)
            self._connects += 1
            self._up = True
            self._detail = "up"
            self._since = self._clock()
            self._publish([PbxLinkChanged(self.name, True, "up", restarted, self._since)])
            self._ready.set()
            log.info("AMI %s up (%s)", self.name, self.endpoint)
            await asyncio.shield(protocol.lost)
            raise _LinkDown(protocol.reason)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _watchdog(self, protocol: _LinkProtocol) -> None:
        s = self.settings
        while not protocol.closed:
            await asyncio.sleep(s.ping_interval)
            try:
                await self._send({"Action": "Ping"}, s.ping_timeout)
            except UnknownOutcome:
                protocol.abort(f"no Pong within {s.ping_timeout:g} s: link half-open, reset")
                return

    async def _resync(self, protocol: _LinkProtocol) -> bool:
        s = self.settings
        status = act.check_response(
            "CoreStatus", await self._send({"Action": "CoreStatus"}, s.resync_timeout))
        core = ev.decode_as(ev.CoreStatus, status)
        restarted = self._started is not None and core.started != self._started
        channels = await self._list({"Action": "CoreShowChannels"}, s.resync_timeout)
        queue_status = await self._list({"Action": "QueueStatus"}, s.resync_timeout)
        await self._list({"Action": "QueueSummary"}, s.resync_timeout)
        decoded = [ev.decode_event(m) for m in channels + queue_status]
        changes = self.tracker.finish_resync(
            [e for e in decoded if isinstance(e, ev.CoreShowChannel)],
            [e for e in decoded if isinstance(e, ev.QueueMember)],
            [e for e in decoded if isinstance(e, ev.QueueEntry)],
            [e for e in decoded if isinstance(e, ev.QueueParams)],
            self._clock(),
        )
        self._publish(changes)
        # Committed only now: an Asterisk still booting (app_queue not loaded yet)
        # fails the resync, and the retry must still see the restart.
        self._started = core.started
        return restarted

    # -- events -------------------------------------------------------------------

    def _on_event(self, msg: AmiMessage) -> None:
        try:
            event = ev.decode_event(msg)
        except ev.EventError as exc:
            self._bad_events += 1
            log.warning("AMI %s: ignored a malformed event: %s", self.name, exc)
            return
        if event is None:
            return
        self._publish(self.tracker.apply(event, ev.event_time(msg, self._clock())))

    def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            for q in self._subscribers:
                q.put_nowait(change)

    # -- actions ------------------------------------------------------------------

    async def _send(self, action: act.Action, limit: float | None = None) -> AmiMessage:
        result = await self._send_raw(action, limit, as_list=False)
        assert isinstance(result, AmiMessage)
        return result

    async def _list(self, action: act.Action, limit: float) -> list[AmiMessage]:
        result = await self._send_raw(action, limit, as_list=None)
        msgs = result if isinstance(result, list) else [result]
        act.check_response(str(action["Action"]), msgs[0])
        return msgs[1:]

    async def _send_raw(self, action: act.Action, limit: float | None,
                        as_list: bool | None) -> AmiMessage | list[AmiMessage]:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            raise PbxUnavailable(f"AMI link {self.name} is down: {self._detail}")
        pa = PanoramiskAction(dict(action), as_list=as_list)
        future = protocol.send(pa, as_list=as_list)
        try:
            async with asyncio.timeout(limit or self.settings.action_timeout):
                result = await asyncio.shield(future)
        except TimeoutError:
            protocol.responses.pop(pa.id, None)
            raise UnknownOutcome(str(action["Action"]), str(pa.id), "no answer in time",
                                 channel_id=str(action.get("ChannelId") or "") or None) from None
        if isinstance(result, list):
            return [m.ami for m in result]
        msg: AmiMessage = result.ami
        return msg

    def _need_up(self) -> None:
        if not self._ready.is_set():
            raise PbxUnavailable(f"AMI link {self.name} is down: {self._detail}")

    async def action(self, action: act.Action, limit: float | None = None) -> AmiMessage:
        """Send one action; a non-success response raises :class:`AmiActionError`."""
        self._need_up()
        return act.check_response(str(action["Action"]), await self._send(action, limit))

    async def originate(
        self, agent_interface: str, number: str, *, caller_id: str = "",
        correlation_id: str | None = None, ring_timeout: float = 30.0,
        variables: dict[str, str] | None = None,
    ) -> OriginateResult:
        """Click-to-dial: ring the agent first, then dial ``number``.

        Returns once the agent answered. Raises :class:`OriginateFailed` when
        the agent did not answer, :class:`UnknownOutcome` when the link dropped
        (the call may exist: look for ``channel_id``), and never sends twice.
        """
        self._need_up()
        correlation_id = correlation_id or act.new_correlation_id()
        if correlation_id in self._correlations:
            raise DuplicateAction(f"Originate {correlation_id} was already sent")
        action = act.originate_click_to_dial(
            agent_interface, number, context=self.originate_context,
            correlation_id=correlation_id, caller_id=caller_id, timeout=ring_timeout,
            variables=variables)
        self._correlations[correlation_id] = None
        if len(self._correlations) > _MAX_CORRELATIONS:  # bounded: forget the oldest
            self._correlations.pop(next(iter(self._correlations)))
        result = await self._send_raw(action, ring_timeout + self.settings.action_timeout, None)
        msgs = result if isinstance(result, list) else [result]
        act.check_response("Originate", msgs[0])
        final = msgs[-1]
        channel_id = str(action["ChannelId"])
        if final.event != "OriginateResponse" or final.response != "Success":
            reason = final.get("Reason") or "0"
            raise OriginateFailed(
                f"agent did not answer (reason {reason})",
                int(reason) if reason.isdigit() else 0, final)
        return OriginateResult(correlation_id, channel_id, self.tracker.call_id(channel_id),
                               final.get("Channel") or "")

    async def hangup(self, channel: str, cause: int = 16) -> None:
        await self.action(act.hangup(channel, cause))

    async def redirect(self, channel: str, exten: str, context: str, priority: int = 1) -> None:
        """Blind transfer / take a caller out of a queue."""
        await self.action(act.redirect(channel, context, exten, priority))
        self._publish(self.tracker.redirected(channel, exten, self._clock()))

    async def atxfer(self, channel: str, exten: str, context: str = "from-agents") -> None:
        await self.action(act.atxfer(channel, exten, context))

    async def cancel_atxfer(self, channel: str) -> None:
        await self.action(act.cancel_atxfer(channel))

    async def queue_pause(self, interface: str, paused: bool, queue: str | None = None,
                          reason: str = "") -> None:
        await self.action(act.queue_pause(interface, paused, queue, reason))

    async def queue_add(self, queue: str, interface: str, member_name: str = "",
                        penalty: int = 0, paused: bool = False) -> None:
        await self.action(act.queue_add(queue, interface, member_name, penalty, paused,
                                        state_interface=interface))

    async def queue_remove(self, queue: str, interface: str) -> None:
        await self.action(act.queue_remove(queue, interface))

    async def play_dtmf(self, channel: str, digit: str, duration_ms: int = 250,
                        receive: bool = False) -> None:
        await self.action(act.play_dtmf(channel, digit, duration_ms, receive))

    async def setvar(self, variable: str, value: str, channel: str | None = None) -> None:
        await self.action(act.setvar(variable, value, channel))

    async def getvar(self, variable: str, channel: str | None = None) -> str:
        response = await self.action(act.getvar(variable, channel))
        return response.get("Value") or ""

    async def user_event(self, name: str, headers: dict[str, str] | None = None) -> None:
        await self.action(act.user_event(name, headers))


class _Everything:
    """panoramisk's ``forgetable_actions``: forget every action, re-send none."""

    def __contains__(self, item: Any) -> bool:
        return True
