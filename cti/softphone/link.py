"""The softphone's link to the CTI server (``cti phone --cti URL``).

Theory of operation: ``DeskLink`` logs in (``POST /api/v1/auth/token``) and
keeps three tasks:

- the socket: ``/api/v1/events`` with ``{"type": "auth", "client": "softphone",
  "last_seq"}``. Every seq'd message advances ``last_seq``, so a reconnect
  (backoff 0.2 s doubling to 5 s) resumes where it stopped; a ``hello`` with a
  new ``epoch`` (server restarted) resets it. ``phone_command`` messages run
  on the phone one at a time, in order; a failed command is reported back as
  a ``phone_state`` with ``error`` and ``command_id``. A voice ``screen_pop``
  raises a notification with the customer's name. A 4001 close (token
  refused) logs in again before reconnecting.
- the token: tokens are not refreshable, so the link logs in again with the
  password it holds in memory (never logged) when 80% of the token's life has
  passed. The socket is authenticated once at connect and is not disturbed.
- the reporter: follows the phone's state and posts each change to
  ``/api/v1/agents/me/phone/state`` (``registered`` when idle and registered).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

log = logging.getLogger("cti.softphone.link")

MAX_MESSAGE = 1 << 20
UNAUTHORIZED = 4001
RENEW_AT = 0.8
FALLBACK_TTL = 600.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


class Notifier(Protocol):
    """Shows one notification (desktop, terminal, or a recorder in tests)."""

    async def notify(self, title: str, body: str) -> None: ...


class Phone(Protocol):
    """What the link needs of a ``SoftPhone``."""

    @property
    def state(self) -> str: ...

    @property
    def registered(self) -> bool: ...

    @property
    def offer(self) -> Any: ...

    async def answer(self) -> None: ...

    async def hangup(self, timeout: float = 10.0) -> None: ...  # noqa: ASYNC109

    async def hold(self, timeout: float = 10.0) -> None: ...  # noqa: ASYNC109

    async def unhold(self, timeout: float = 10.0) -> None: ...  # noqa: ASYNC109

    async def send_dtmf(self, digits: str) -> None: ...

    async def wait_change(self, seen: str, timeout: float = 10.0) -> str: ...  # noqa: ASYNC109


@dataclass
class RecordingNotifier:
    """Keeps every notification; ``wait_for(text)`` waits for one containing ``text``."""

    shown: list[tuple[str, str]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def notify(self, title: str, body: str) -> None:
        self.shown.append((title, body))
        self._changed.set()

    async def wait_for(self, text: str, timeout: float = 30.0) -> tuple[str, str]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while True:
                for item in self.shown:
                    if text in item[1]:
                        return item
                self._changed.clear()
                await self._changed.wait()


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a CTI token (``b64url(json).mac``), or None if unreadable."""
    body = token.split(".", 1)[0]
    try:
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        return None


def pop_line(pop: dict[str, Any]) -> str | None:
    """The notification body for a voice screen_pop (customer name, else the number)."""
    if pop.get("channel") != "voice":
        return None
    from cti.softphone.cli import notification_line

    customer = pop.get("customer") if isinstance(pop.get("customer"), dict) else None
    interaction = pop.get("interaction") if isinstance(pop.get("interaction"), dict) else {}
    name = str(customer.get("name") or "") if customer else ""
    number = str((interaction or {}).get("caller") or "")
    return notification_line(name, number).removeprefix("Incoming call: ")


class DeskLink:
    def __init__(self, server: str, login: str, password: str, phone: Phone,
                 notifier: Notifier, *, backoff: tuple[float, float] = (0.2, 5.0)) -> None:
        self.server = server.rstrip("/")
        self.login = login
        self._password = password
        self.phone = phone
        self.notifier = notifier
        self._backoff = backoff
        self.token = ""
        self.token_exp = 0.0
        self.last_seq: int | None = None
        self.epoch: str | None = None
        self.connects = 0
        self.logins = 0
        self.linked = asyncio.Event()
        self.executed: list[tuple[str, str, str | None]] = []  # (id, action, error)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue(64)
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def __repr__(self) -> str:
        return f"DeskLink({self.server!r}, login={self.login!r}, password=<hidden>)"

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Log in (raises on a refused login), then run the link in the background."""
        self._session = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        try:
            await self._login()
        except Exception:
            await self._session.close()
            raise
        for name, job in (("socket", self._socket_loop), ("renew", self._renew_loop),
                          ("report", self._report_loop), ("commands", self._command_loop)):
            self._spawn(name, job)

    async def __aenter__(self) -> DeskLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.create_task(job(), name=f"desk-link-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def drop_socket(self) -> None:
        """Close the current socket (the link reconnects and resumes by seq)."""
        if self._ws is not None:
            self.linked.clear()
            await self._ws.close()

    # -- HTTP --------------------------------------------------------------------
    async def _login(self) -> None:
        assert self._session is not None
        async with self._session.post(f"{self.server}/api/v1/auth/token",
                                      json={"login": self.login,
                                            "password": self._password}) as resp:
            if resp.status != 200:
                raise PermissionError(f"CTI login refused for {self.login}: HTTP {resp.status}")
            token = str((await resp.json())["token"])
        self.token = token
        self.token_exp = token_expiry(token) or time.time() + FALLBACK_TTL
        self.logins += 1

    async def report(self, state: str, **extra: Any) -> None:
        assert self._session is not None
        body = {"state": state, **extra}
        async with self._session.post(f"{self.server}/api/v1/agents/me/phone/state", json=body,
                                      headers={"Authorization": f"Bearer {self.token}"}) as resp:
            if resp.status != 202:
                log.warning("phone state %s not accepted: HTTP %s", state, resp.status)

    # -- tasks ---------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        while True:
            issued = time.time()
            life = max(self.token_exp - issued, 1.0)
            await asyncio.sleep(life * RENEW_AT)
            try:
                await self._login()
            except (aiohttp.ClientError, TimeoutError, PermissionError) as exc:
                log.warning("token renewal failed (%s); retrying in 5 s", exc)
                await asyncio.sleep(5)

    async def _socket_loop(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                await self._one_socket()
                delay = self._backoff[0]
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.info("CTI socket: %s; reconnecting in %.1f s", exc, delay)
            self.linked.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _one_socket(self) -> None:
        assert self._session is not None
        url = self.server + "/api/v1/events"
        async with self._session.ws_connect(url, heartbeat=20, max_msg_size=MAX_MESSAGE,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            self._ws = ws
            await ws.send_json({"type": "auth", "token": self.token, "client": "softphone",
                                "last_seq": self.last_seq})
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                if isinstance(data, dict):
                    await self._on_message(data)
            if ws.close_code == UNAUTHORIZED:
                await self._login()

    async def _on_message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        seq = data.get("seq")
        if isinstance(seq, int):
            self.last_seq = seq
        if kind == "hello":
            if self.epoch is not None and data.get("epoch") != self.epoch:
                self.last_seq = None
            self.epoch = str(data.get("epoch"))
            self.connects += 1
            self.linked.set()
            self._spawn("hello-report", self._report_now)
        elif kind == "phone_command":
            try:
                self._commands.put_nowait(data)
            except asyncio.QueueFull:
                log.warning("phone command dropped: too many pending")
        elif kind == "screen_pop":
            line = pop_line(data)
            if line is not None:
                await self.notifier.notify("Incoming call", line)

    async def _command_loop(self) -> None:
        from cti.softphone.phone import SoftPhoneError

        while True:
            cmd = await self._commands.get()
            action, cid = str(cmd.get("action")), str(cmd.get("id", ""))
            error: str | None = None
            try:
                await self._execute(action, cmd)
            except (SoftPhoneError, ValueError) as exc:
                error = str(exc)[:200]
            self.executed.append((cid, action, error))
            if error is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await self.report(self._public_state(), command_id=cid, error=error)

    async def _execute(self, action: str, cmd: dict[str, Any]) -> None:
        if action == "answer":
            await self.phone.answer()
        elif action == "hangup":
            await self.phone.hangup()
        elif action == "hold":
            await self.phone.hold()
        elif action == "unhold":
            await self.phone.unhold()
        elif action == "dtmf":
            await self.phone.send_dtmf(str(cmd.get("digits", "")))
        else:
            raise ValueError(f"unknown phone command {action!r}")

    def _public_state(self) -> str:
        state = self.phone.state
        if state in ("idle", "disconnected"):
            return "registered" if self.phone.registered else "idle"
        return state

    async def _report_now(self) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await self.report(self._public_state(), **self._call())

    def _call(self) -> dict[str, Any]:
        offer = self.phone.offer
        if offer is None or self.phone.state in ("idle", "disconnected"):
            return {}
        return {"call": {"caller_number": str(offer.caller_number)[:64],
                         "caller_name": str(offer.caller_name)[:200],
                         "called_number": str(offer.called_number)[:64]}}

    async def _report_loop(self) -> None:
        seen = self.phone.state
        while True:
            try:
                state = await self.phone.wait_change(seen, 3600)
            except TimeoutError:
                continue
            if state == seen:  # the phone is closed
                return
            seen = state
            if self.linked.is_set():
                await self._report_now()
