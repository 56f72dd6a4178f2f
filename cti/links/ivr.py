"""``cti serve`` runs the IVR: the FastAGI server (ivr.server) with cti's ports.

``setup_ivr(app, lab=...)`` appends a cleanup_ctx that, when ``settings.agi_listen``
(``CTI_AGI_LISTEN``) is set, starts the FastAGI server there with the flows of
``ivr.flows.default_routes`` and the ports of :mod:`cti.ivr_ports`, registers the
``ivr`` link in health and closes the server on shutdown (running sessions get
their grace period). ``settings.ivr_digit_timeout`` / ``ivr_retries``
(``[ivr]``, ``CTI_IVR_DIGIT_TIMEOUT`` / ``CTI_IVR_RETRIES``) tune the prompts.
With ``--lab`` and no ``agi_listen`` a free loopback port is picked and handed
to the lab PBX, whose dialplan then calls this server.

Allow-list: only Asterisk may open AGI sessions: 127.0.0.1 and ::1, plus every
configured AMI host (``settings.ami``) as written and as resolved at start.

The same ctx makes text work follow the agent's pause on the PBX (a follower of
``cti.presence``'s status, over every PBX of the cluster; a listener on
``services.calls`` reading the local links when no presence is installed): an
agent paused in every queue takes no new text conversation; on unpause the
waiting ones (deflected callers included) are offered oldest queue entry first.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from cti.config import HostPort, Settings
from cti.ivr_ports import (
    CustomerDirectoryPort,
    IvrHistoryPort,
    LiveQueueStatistics,
    OrderServicePort,
    TextDeflection,
    callbacks_port,
)
from cti.keys import SERVICES
from cti.links.lab import LAB_AGI_LISTEN
from cti.links.pbx import PBX_LINKS
from cti.logs import correlation_id
from cti.presence import PRESENCE, StatusFollower, member_status
from cti.services import LinkProbe, Services
from ivr.flows import IvrConfig, default_routes
from ivr.ports import IvrPorts
from ivr.server import FastAgiServer, FastAgiSettings, Flow
from ivr.session import AgiSession
from pbx.changes import Change, QueueMemberChanged
from pbx.link import AmiLink

log = logging.getLogger(__name__)

IVR_SERVER: web.AppKey[list[FastAgiServer]] = web.AppKey("ivr_server")
LOOPBACK = frozenset({"127.0.0.1", "::1"})
RESOLVE_TIMEOUT = 5.0
MAX_FOLLOWED = 10_000

ChangeListener = Callable[[Change], Awaitable[None]]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def allowed_hosts(settings: Settings) -> frozenset[str]:
    hosts = set(LOOPBACK)
    loop = asyncio.get_running_loop()
    for server in settings.ami:
        hosts.add(server.host)
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(server.host, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            log.warning("IVR allow-list: cannot resolve AMI host %s: %s", server.host, exc)
            continue
        hosts.update(str(info[4][0]) for info in infos)
    return frozenset(hosts)


def build_ports(app: web.Application) -> IvrPorts:
    services = app[SERVICES]

    def links() -> Iterable[AmiLink]:
        registry = app.get(PBX_LINKS)
        return list(registry.links.values()) if registry is not None else []

    return IvrPorts(
        customers=CustomerDirectoryPort(services),
        orders=OrderServicePort(services),
        history=IvrHistoryPort(services, links),
        queues=LiveQueueStatistics(services, links),
        deflection=TextDeflection(services, links),
        callbacks=callbacks_port(app),
    )


def ivr_call_id(uniqueid: str, settings: Settings) -> str:
    """The correlation id of an IVR session: ``call:<pbx>:<Uniqueid>``, as
    :mod:`cti.calls` names the call (``<pbx>:<Linkedid>``; the IVR answers the
    caller's own channel, whose Uniqueid is the call's Linkedid). With several
    PBXs the session does not say which one it came from: ``call:<Uniqueid>``."""
    uid = uniqueid[:64] or "?"
    return f"call:{settings.ami[0].name}:{uid}" if len(settings.ami) == 1 else f"call:{uid}"


def correlated(routes: dict[str, Flow], settings: Settings) -> dict[str, Flow]:
    """Each flow run with the call's correlation id. It is set, not reset: the session is
    its own task (one per AGI connection), so the id also reaches the server's log of
    how the session ended (hangup, timeout, a flow's exception) and dies with the task."""

    def wrap(flow: Flow) -> Flow:
        async def run(session: AgiSession, ports: IvrPorts) -> None:
            correlation_id.set(ivr_call_id(session.environment.uniqueid, settings))
            await flow(session, ports)

        return run

    return {name: wrap(flow) for name, flow in routes.items()}


def _probe(server: FastAgiServer, listen: HostPort) -> LinkProbe:
    async def probe() -> dict[str, Any]:
        c = server.counters
        try:
            up = bool(server.address)  # raises once the server stopped listening
        except RuntimeError:
            up = False
        return {
            "kind": "ivr",
            "up": up,
            "listen": str(listen),
            "sessions": server.active_sessions,
            "accepted": c.accepted,
            "rejected_host": c.rejected_host,
            "hangups": c.hangups,
            "flow_errors": c.flow_errors,
        }

    return probe


def _pause_follower(app: web.Application, services: Services) -> ChangeListener:
    """Without ``cti.presence`` (an app with no desk): the local links decide."""
    seen: dict[str, bool] = {}  # interface -> paused, as last applied
    # (pbx, queue, interface) -> (paused, removed): most QueueMemberChanged events are
    # device-state churn (ringing, in use); only a pause or membership change can change
    # the agent's text availability, and only then are all queues looked at.
    members: dict[tuple[str, str, str], tuple[bool, bool]] = {}

    async def on_change(change: Change) -> None:
        if not isinstance(change, QueueMemberChanged):
            return
        key = (change.pbx, change.queue, change.interface)
        state = (change.paused, change.removed)
        if members.get(key) == state:
            return
        if len(members) >= MAX_FOLLOWED * 8:
            members.clear()
        members[key] = state
        registry = app.get(PBX_LINKS)
        links = list(registry.links.values()) if registry is not None else []
        paused = bool(member_status(links, change.interface)["paused"])
        if seen.get(change.interface) is paused:
            return  # device-state churn: nothing to apply
        if len(seen) >= MAX_FOLLOWED:
            seen.clear()
        seen[change.interface] = paused
        await services.inbox.set_text_available(change.interface, not paused)

    return on_change


def _status_follower(services: Services) -> StatusFollower:
    """Text availability from the status ``cti.presence`` builds on each pause change
    (over every PBX of the cluster). No memo of what was applied: in a cluster another
    node may have applied a later status; the UPDATE is conditional and cheap.

    A partial status (a PBX's holder did not answer) that says paused is not applied:
    the silent PBX may hold an unpaused membership, and a paused agent given a text
    conversation costs less than an available one starved of work on a guess; the
    holder's next change (a new holder resyncs within seconds) decides. Not paused is
    certain (a queue that answered is unpaused) and always applied."""

    async def on_status(endpoint: str, status: dict[str, Any]) -> None:
        paused = bool(status.get("paused"))
        if paused and status.get("unavailable"):
            log.info("text availability of %s unchanged: paused on the PBXes that answered, "
                     "%s did not", endpoint, ", ".join(map(str, status["unavailable"])))
            return
        await services.inbox.set_text_available(endpoint, not paused)

    return on_status


def ivr_ctx(
    listen: HostPort | None, config: IvrConfig
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        presence = app.get(PRESENCE)
        follower = _pause_follower(app, services)
        on_status = _status_follower(services)
        if presence is not None:
            presence.followers.append(on_status)
        else:
            services.calls.listeners.append(follower)
        server: FastAgiServer | None = None
        try:
            if listen is not None:
                settings = FastAgiSettings(
                    host=listen.host,
                    port=listen.port,
                    allowed_hosts=await allowed_hosts(services.settings),
                )
                routes = correlated(default_routes(config), services.settings)
                server = FastAgiServer(settings, routes, build_ports(app))
                await server.start()
                app[IVR_SERVER].append(server)
                services.links.register("ivr", _probe(server, listen))
                log.info("IVR: FastAGI server on %s (allowed: %s)", listen,
                         ", ".join(sorted(settings.allowed_hosts)))
            yield
        finally:
            if server is not None:
                await server.close()
                app[IVR_SERVER].remove(server)
            if follower in services.calls.listeners:
                services.calls.listeners.remove(follower)
            if presence is not None and on_status in presence.followers:
                presence.followers.remove(on_status)

    return ctx


def setup_ivr(app: web.Application, *, lab: bool = False, config: IvrConfig | None = None) -> None:
    """Run the FastAGI server of ``settings.agi_listen`` (or, with the lab and no
    setting, on a free loopback port the lab dialplan is pointed at)."""
    settings = app[SERVICES].settings
    listen = settings.agi_listen
    if listen is None and lab:
        listen = HostPort("127.0.0.1", free_loopback_port())
        app[LAB_AGI_LISTEN] = listen
    if IVR_SERVER not in app:
        app[IVR_SERVER] = []
    if config is None:
        config = IvrConfig(digit_timeout=settings.ivr_digit_timeout, retries=settings.ivr_retries)
    app.cleanup_ctx.append(ivr_ctx(listen, config))
