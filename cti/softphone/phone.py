"""SoftPhone: an asyncio face on one pjsua2 account (agent phone or test UA).

Theory of operation. Two halves that never share mutable state:

* ``_Core`` lives on the engine thread. It owns the pjsua2 Account, the UDP
  transport and the current Call; pjsua callbacks land on it. It turns each
  callback into an immutable snapshot and posts it to the phone's loop.
* ``SoftPhone`` lives on one asyncio loop. It holds the call state machine
  and wakes waiters; its methods send work to the engine thread.

Call state machine (``SoftPhone.state``)::

    idle -> calling (outgoing) | ringing (incoming)
    calling | ringing -> connected -> held <-> connected
    any -> disconnected          (stays until the next call starts)

``held`` means either side put the media on hold. One call per phone: an
INVITE that arrives while a call is up is refused with 486 Busy Here.
Events of an older call (matched by a per-phone serial) are ignored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import pjsua2 as pj

from cti.softphone import engine as eng
from cti.softphone.sip_text import (
    SipHead,
    SipTextError,
    parse_head,
    parse_name_addr,
    uri_port,
)

log = logging.getLogger("cti.softphone")

T = TypeVar("T")

STATES: Final = ("idle", "ringing", "calling", "connected", "held", "disconnected")
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
MAX_DTMF_DIGITS: Final = 64
MAX_URI_CHARS: Final = 512
MAX_NAME_CHARS: Final = 128
DTMF_DURATION_MS: Final = 120
_PJ_EINVALIDOP: Final = 70013
STALE_DTMF_WINDOW: Final = 1.0  # seconds after a re-INVITE rebuilt the media stream
_DTMF_IS_UPDATE: Final = 1  # PJMEDIA_STREAM_DTMF_IS_UPDATE (not exported by pjsua2)
_NUMBER_RE: Final = re.compile(r"^[A-Za-z0-9+*#._~!-]{1,64}$")
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,255}$")


class SoftPhoneError(Exception):
    """Base of every error the softphone raises."""


class SipError(SoftPhoneError):
    """A SIP failure, with the status code and reason phrase."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(message or f"SIP {status} {reason}")


class RegistrationError(SipError):
    """The registrar refused (or never answered) our REGISTER."""


class CallFailed(SipError):
    """An outgoing call was refused, or a call ended while we waited on it."""


class PhoneTimeout(SoftPhoneError, TimeoutError):
    """A wait ran out of time."""


class NoActiveCall(SoftPhoneError):
    """The operation needs a call and there is none (or not in the right state)."""


class PjsuaError(SoftPhoneError):
    """pjsua2 refused an operation (bad URI, no RFC 2833 peer, ...)."""


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """An INVITE offered to this phone, as read from the wire."""

    caller_number: str
    caller_name: str
    remote_uri: str
    called_number: str
    sip_call_id: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """First value of SIP header ``name`` (case-insensitive), or None."""
        low = name.lower()
        for hname, value in self.headers:
            if hname.lower() == low:
                return value
        return None


@dataclass(frozen=True, slots=True)
class _CallSnap:
    inv_state: int
    role: int
    status: int
    reason: str
    hold: str | None


def _incoming_from(head: SipHead) -> IncomingCall:
    from_value = head.header("from") or ""
    remote = parse_name_addr(from_value) if from_value else None
    called = parse_name_addr(head.header("to") or head.request_uri)
    return IncomingCall(
        caller_number=remote.user if remote else "",
        caller_name=remote.display_name if remote else "",
        remote_uri=remote.uri if remote else "",
        called_number=parse_name_addr(head.request_uri).user or called.user,
        sip_call_id=head.header("call-id") or "",
        headers=head.headers,
    )


def _quote_display(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or any(ch in name for ch in "\r\n\0"):
        raise ValueError(f"display name must be one line of at most {MAX_NAME_CHARS} chars")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_uri(uri: str) -> str:
    if not uri.startswith(("sip:", "sips:")) or len(uri) > MAX_URI_CHARS:
        raise ValueError(f"not a SIP URI (sip:..., at most {MAX_URI_CHARS} chars): {uri[:80]!r}")
    if any(ch in uri for ch in "\r\n\0 <>\""):
        raise ValueError("SIP URI contains a forbidden character")
    return uri


def _check_number(value: str, what: str) -> str:
    if not _NUMBER_RE.match(value):
        raise ValueError(f"{what} must be 1-64 characters of [A-Za-z0-9+*#._~!-]: {value!r}")
    return value


def _hostport(host: str, port: int) -> str:
    if not _HOST_RE.match(host):
        raise ValueError(f"bad host: {host!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad port: {port}")
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class _PjAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, core: _Core) -> None:
        super().__init__()
        self.core = core

    def onRegState(self, prm: Any) -> None:
        self.core.on_reg_state(int(prm.code), str(prm.reason), int(prm.expiration))

    def onIncomingCall(self, prm: Any) -> None:
        self.core.on_incoming(int(prm.callId), str(prm.rdata.wholeMsg))


class _PjCall(pj.Call):  # type: ignore[misc]
    def __init__(self, core: _Core, serial: int, acc: Any, call_id: int) -> None:
        super().__init__(acc, call_id)
        self.core = core
        self.serial = serial
        self.last_dtmf: tuple[str, int] | None = None
        self.media_rebuilt_at = float("-inf")
        self.last_dtmf_at = float("-inf")

    def onCallState(self, prm: Any) -> None:
        self.core.on_call_state(self)

    def onCallMediaState(self, prm: Any) -> None:
        self.media_rebuilt_at = time.monotonic()
        self.core.on_media_state(self)
        self.core.on_call_state(self)

    def onCallTsxState(self, prm: Any) -> None:
        e = prm.e
        if int(e.type) != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx = e.body.tsxState.tsx
        if str(tsx.method) == "INVITE" and int(tsx.role) == pj.PJSIP_ROLE_UAC:
            code = int(tsx.statusCode)
            if 100 <= code < 200:
                self.core.on_provisional(self, code)

    def onDtmfEvent(self, prm: Any) -> None:
        # pjsua reports RFC 2833 events here (not in onDtmfDigit once this is
        # overridden): start (flags 0), updates (bit 0) and end (bit 1). One
        # digit per event: count the first report of it, i.e. not an update.
        # Quirk: after a hold/unhold re-INVITE pjsua builds a new stream, and
        # Asterisk's retransmitted end packets of the last event then show up
        # as a new start with the same digit and timestamp: skip those. On a
        # loaded machine the stale tail can reach the new stream with another
        # timestamp, so a repeat of the last digit received BEFORE the rebuild,
        # arriving within STALE_DTMF_WINDOW after it, is treated as that tail too.
        digit, stamp = str(prm.digit), int(prm.timestamp)
        log.debug("DTMF event %s flags=%s ts=%s", digit, prm.flags, stamp)
        if int(prm.flags) & _DTMF_IS_UPDATE or (digit, stamp) == self.last_dtmf:
            return
        now = time.monotonic()
        last_digit = self.last_dtmf[0] if self.last_dtmf else None
        if (
            digit == last_digit
            and self.last_dtmf_at < self.media_rebuilt_at
            and now - self.media_rebuilt_at < STALE_DTMF_WINDOW
        ):
            log.debug("DTMF %s right after a media rebuild: stale tail, skipped", digit)
            return
        self.last_dtmf = (digit, stamp)
        self.last_dtmf_at = now
        self.core.on_dtmf(self, digit)


class _Core:
    """Engine-thread half of a phone: only ever touched on the pjsua2 thread."""

    def __init__(self, engine: eng.Engine, phone: SoftPhone, loop: asyncio.AbstractEventLoop):
        self.engine = engine
        self.phone = phone
        self.loop = loop
        self.account: _PjAccount | None = None
        self.transport_id: int | None = None
        self.port = 0
        self.bind = ""
        self.call: _PjCall | None = None
        self.auto_answer = False
        self.registers = False
        self._serials = itertools.count(1)

    # -- PortOwner ----------------------------------------------------------
    def account_index(self) -> int | None:
        return int(self.account.getId()) if self.account is not None else None

    def post(self, fn: Callable[..., None], *args: object) -> None:
        eng.post(self.loop, fn, *args)

    # -- setup / teardown ---------------------------------------------------
    def open(self, *, bind: str, port: int, id_uri: str, registrar: str | None,
             username: str, password: str) -> int:
        self.transport_id, self.port = self.engine.take_transport(bind, port)
        self.bind = bind
        acfg = pj.AccountConfig()
        acfg.idUri = id_uri
        acfg.sipConfig.transportId = self.transport_id
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.natConfig.sipOutboundUse = 0
        acfg.mediaConfig.transportConfig.boundAddress = bind
        acfg.mediaConfig.transportConfig.port = 0
        self.registers = registrar is not None
        if registrar is not None:
            acfg.regConfig.registrarUri = registrar
            acfg.regConfig.registerOnAdd = True
            acfg.regConfig.timeoutSec = 300
            acfg.regConfig.retryIntervalSec = 30
            acfg.regConfig.unregWaitMsec = 2000
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", username, 0, password))
        else:
            acfg.regConfig.registerOnAdd = False
        account = _PjAccount(self)
        self.engine.keepalive.add(account)
        self.engine.owners[self.port] = self
        try:
            account.create(acfg, False)
        except Exception:
            self.engine.keepalive.discard(account)
            self.engine.owners.pop(self.port, None)
            self.engine.park_transport(bind, self.port, self.transport_id)
            self.transport_id = None
            raise
        self.account = account
        return self.port

    def unregister(self) -> bool:
        if self.account is None or not self.registers:
            return False
        self.account.setRegistration(False)
        return True

    def close(self) -> None:
        if self.call is not None:
            self._hangup_quietly(self.call)
        account, self.account = self.account, None
        if account is not None:
            account.shutdown()
            self.engine.keepalive.discard(account)
            # Quirk: pjsua2's ~Account() calls shutdown() again, which deletes
            # whatever account has since been given the same id. Keep dead
            # Account objects until engine teardown (ids are freed anyway).
            self.engine.morgue.append(account)
        if self.transport_id is not None:
            self.engine.owners.pop(self.port, None)
            self.engine.park_transport(self.bind, self.port, self.transport_id)
            self.transport_id = None

    def _hangup_quietly(self, call: _PjCall) -> None:
        try:
            call.hangup(pj.CallOpParam(True))
        except pj.Error as exc:
            log.debug("hangup: %s", exc.info())

    # -- operations (engine thread) -----------------------------------------
    def make_call(self, uri: str, local_uri: str | None) -> int:
        if self.account is None:
            raise NoActiveCall("phone is closed")
        if self.call is not None:
            raise SoftPhoneError("phone already has a call")
        serial = next(self._serials)
        call = _PjCall(self, serial, self.account, pj.PJSUA_INVALID_ID)
        prm = pj.CallOpParam(True)
        if local_uri is not None:
            prm.txOption.localUri = local_uri
        self.call = call
        self.engine.keepalive.add(call)
        self.post(self.phone._ev_outgoing, serial)
        try:
            call.makeCall(uri, prm)
        except Exception:
            self.call = None
            self.engine.keepalive.discard(call)
            self.engine.graveyard.append(call)
            gone = _CallSnap(pj.PJSIP_INV_STATE_DISCONNECTED, pj.PJSIP_ROLE_UAC, 0, "not sent",
                             None)
            self.post(self.phone._ev_call_state, serial, gone)
            raise
        return serial

    def current(self, serial: int | None = None) -> _PjCall:
        call = self.call
        if call is None or (serial is not None and call.serial != serial):
            raise NoActiveCall("no call on this phone")
        return call

    def answer(self, code: int) -> None:
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        self.current().answer(prm)

    def hangup(self) -> None:
        self.current().hangup(pj.CallOpParam(True))

    def set_hold(self, hold: bool) -> bool:
        """Send the hold/unhold re-INVITE; False if another INVITE transaction is pending."""
        try:
            self._set_hold(hold)
        except pj.Error as exc:
            if int(exc.status) == _PJ_EINVALIDOP:
                return False
            raise
        return True

    def _set_hold(self, hold: bool) -> None:
        call = self.current()
        prm = pj.CallOpParam(True)
        if hold:
            call.setHold(prm)
        else:
            prm.opt.flag = pj.PJSUA_CALL_UNHOLD
            call.reinvite(prm)

    def send_dtmf(self, digits: str) -> None:
        prm = pj.CallSendDtmfParam()
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        prm.digits = digits
        prm.duration = DTMF_DURATION_MS
        self.current().sendDtmf(prm)

    # -- callbacks (engine thread) ------------------------------------------
    def on_reg_state(self, code: int, reason: str, expiration: int) -> None:
        self.post(self.phone._ev_reg, code, reason, expiration)

    def on_incoming(self, call_id: int, whole_msg: str) -> None:
        account = self.account
        if account is None:
            return
        serial = next(self._serials)
        call = _PjCall(self, serial, account, call_id)
        self.engine.keepalive.add(call)
        refuse = 486 if self.call is not None else 0
        try:
            head = parse_head(whole_msg)
            offer = _incoming_from(head)
        except SipTextError as exc:
            log.warning("refusing an unreadable INVITE: %s", exc)
            offer, refuse = None, 400
        else:
            port = uri_port(head.request_uri)
            if port is not None and port != self.port and port in self.engine.ports:
                refuse = 480  # for a closed phone's parked port, not for us
        prm = pj.CallOpParam(True)
        if refuse or offer is None:
            prm.statusCode = refuse or 400
            try:
                call.hangup(prm)
            except pj.Error as exc:
                log.debug("refuse: %s", exc.info())
            return
        self.call = call
        self.post(self.phone._ev_incoming, serial, offer)
        prm.statusCode = 180
        call.answer(prm)
        if self.auto_answer:
            prm.statusCode = 200
            call.answer(prm)

    def on_media_state(self, call: _PjCall) -> None:
        """Wire active call audio to the sound device (the null device in tests)."""
        ci = call.getInfo()
        for media in ci.media:
            if (int(media.type) == pj.PJMEDIA_TYPE_AUDIO
                    and int(media.status) == pj.PJSUA_CALL_MEDIA_ACTIVE):
                audio = call.getAudioMedia(int(media.index))
                adm = self.engine.ep.audDevManager()
                audio.startTransmit(adm.getPlaybackDevMedia())
                adm.getCaptureDevMedia().startTransmit(audio)

    def on_provisional(self, call: _PjCall, code: int) -> None:
        self.post(self.phone._ev_provisional, call.serial, code)

    def on_call_state(self, call: _PjCall) -> None:
        ci = call.getInfo()
        hold: str | None = None
        for media in ci.media:
            if int(media.type) != pj.PJMEDIA_TYPE_AUDIO:
                continue
            status = int(media.status)
            if status == pj.PJSUA_CALL_MEDIA_LOCAL_HOLD:
                hold = "local"
            elif status == pj.PJSUA_CALL_MEDIA_REMOTE_HOLD:
                hold = "remote"
        snap = _CallSnap(int(ci.state), int(ci.role), int(ci.lastStatusCode),
                         str(ci.lastReason), hold)
        if snap.inv_state == pj.PJSIP_INV_STATE_DISCONNECTED:
            if self.call is call:
                self.call = None
            self.engine.keepalive.discard(call)
            self.engine.graveyard.append(call)
        self.post(self.phone._ev_call_state, call.serial, snap)

    def on_dtmf(self, call: _PjCall, digit: str) -> None:
        self.post(self.phone._ev_dtmf, call.serial, digit)


def _state_of(snap: _CallSnap) -> str:
    s = snap.inv_state
    if s == pj.PJSIP_INV_STATE_DISCONNECTED:
        return "disconnected"
    if s == pj.PJSIP_INV_STATE_CONFIRMED:
        return "held" if snap.hold else "connected"
    return "calling" if snap.role == pj.PJSIP_ROLE_UAC else "ringing"


class SoftPhone:
    """A SIP phone on the process pjsua2 engine. Build with ``create``/``create_unregistered``."""

    def __init__(self, engine: eng.Engine, *, username: str, display_name: str | None,
                 auto_answer: bool, registered: bool, host: str | None = None) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._core = _Core(engine, self, self._loop)
        self._core.auto_answer = auto_answer
        self.username = username
        self.display_name = display_name
        self.auto_answer = auto_answer
        self._registering = registered
        self._host = host
        self._port = 0
        self._state = "idle"
        self._serial = 0
        self._provisional = 0
        self._disconnects = 0
        self._registered = False
        self._reg_failure: tuple[int, str] | None = None
        self._last_status = 0
        self._last_reason = ""
        self._dtmf: list[str] = []
        self._offers: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self._offer: IncomingCall | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._closed = False

    # -- construction --------------------------------------------------------
    @classmethod
    async def create(cls, *, username: str, password: str, host: str, port: int,
                     display_name: str | None = None, auto_answer: bool = False,
                     bind_address: str | None = None, local_port: int = 0,
                     register_timeout: float | None = 10.0) -> SoftPhone:
        """A phone registered as ``username`` with the registrar ``host:port`` over UDP.

        Waits for the registration to succeed (``RegistrationError`` on refusal)
        unless ``register_timeout`` is None.
        """
        _check_number(username, "username")
        hostport = _hostport(host, port)
        bind = bind_address if bind_address is not None else (
            "127.0.0.1" if _is_loopback(host) else "")
        id_uri = f"sip:{username}@{host}"
        if display_name:
            id_uri = f"{_quote_display(display_name)} <{id_uri}>"
        engine = await eng.get_engine()
        phone = cls(engine, username=username, display_name=display_name,
                    auto_answer=auto_answer, registered=True, host=hostport)
        phone._port = await phone._run(lambda: phone._core.open(
            bind=bind, port=local_port, id_uri=id_uri, registrar=f"sip:{hostport}",
            username=username, password=password))
        if register_timeout is not None:
            try:
                await phone.wait_registered(register_timeout)
            except SoftPhoneError:
                await phone.close()
                raise
        return phone

    @classmethod
    async def create_unregistered(cls, *, local_port: int, username: str = "customer",
                                  display_name: str | None = None, auto_answer: bool = False,
                                  bind_address: str = "127.0.0.1") -> SoftPhone:
        """A phone that listens on ``bind_address:local_port`` and registers nowhere."""
        _check_number(username, "username")
        id_uri = f"sip:{username}@{_hostport(bind_address, local_port or 5060).rsplit(':', 1)[0]}"
        if display_name:
            id_uri = f"{_quote_display(display_name)} <{id_uri}>"
        engine = await eng.get_engine()
        phone = cls(engine, username=username, display_name=display_name,
                    auto_answer=auto_answer, registered=False)
        phone._port = await phone._run(lambda: phone._core.open(
            bind=bind_address, port=local_port, id_uri=id_uri, registrar=None,
            username=username, password=""))
        phone._host = _hostport(bind_address, phone._port)
        return phone

    # -- read-only views -----------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def local_port(self) -> int:
        """The UDP port this phone's SIP transport listens on."""
        return self._port

    @property
    def uri(self) -> str:
        """Where to call this phone directly (``sip:user@host:port``)."""
        host = _hostport("127.0.0.1", self._port) if self._registering else self._host
        return f"sip:{self.username}@{host}"

    @property
    def offer(self) -> IncomingCall | None:
        """The INVITE of the current (or last) incoming call, if any."""
        return self._offer

    @property
    def received_dtmf(self) -> str:
        """RFC 2833 digits received during the current (or last) call."""
        return "".join(self._dtmf)

    @property
    def last_status(self) -> tuple[int, str]:
        """Last SIP status code and reason of the current (or last) call."""
        return self._last_status, self._last_reason

    # -- waits -----------------------------------------------------------------
    async def _wait_until(self, pred: Callable[[], bool], limit: float, what: str) -> None:
        try:
            async with asyncio.timeout(limit):
                while not pred():
                    fut: asyncio.Future[None] = self._loop.create_future()
                    self._waiters.add(fut)
                    try:
                        await fut
                    finally:
                        self._waiters.discard(fut)
        except TimeoutError:
            raise PhoneTimeout(
                f"{self.username}: {what} not reached within {limit:g}s "
                f"(state={self._state}, last SIP {self._last_status} {self._last_reason})"
            ) from None

    def _notify(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_registered(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (public API)
        if not self._registering:
            raise SoftPhoneError(f"{self.username} does not register")

        def done() -> bool:
            if self._reg_failure is not None:
                code, reason = self._reg_failure
                raise RegistrationError(code, reason,
                                        f"{self.username}: registration refused: {code} {reason}")
            return self._registered

        await self._wait_until(done, timeout, "registration")

    async def wait_for_incoming(self, timeout: float = 10.0) -> IncomingCall:  # noqa: ASYNC109 (public API)
        try:
            async with asyncio.timeout(timeout):
                return await self._offers.get()
        except TimeoutError:
            raise PhoneTimeout(f"{self.username}: no incoming call within {timeout:g}s") from None

    async def wait_state(self, state: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (public API)
        """Wait until ``state`` is the current state.

        Raises ``CallFailed`` if the call ends while waiting for another state.
        """
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {STATES}")
        start = self._disconnects

        def reached() -> bool:
            if self._state == state:
                return True
            if self._disconnects != start and state not in ("disconnected", "idle"):
                raise CallFailed(self._last_status, self._last_reason,
                                 f"{self.username}: call ended ({self._last_status} "
                                 f"{self._last_reason}) while waiting for {state!r}")
            return False

        await self._wait_until(reached, timeout, f"state {state!r}")

    async def wait_change(self, seen: str, timeout: float = 10.0) -> str:  # noqa: ASYNC109 (public API)
        """Wait until the state is not ``seen`` (or the phone closes); return the state."""
        await self._wait_until(lambda: self._state != seen or self._closed, timeout,
                               f"a state other than {seen!r}")
        return self._state

    async def wait_dtmf(self, n: int, timeout: float = 10.0) -> str:  # noqa: ASYNC109 (public API)
        """Wait until at least ``n`` digits were received in this call; return them all."""
        await self._wait_until(lambda: len(self._dtmf) >= n, timeout, f"{n} DTMF digits")
        return self.received_dtmf

    # -- commands ----------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await self._engine.run(fn)
        except pj.Error as exc:
            raise PjsuaError(f"{self.username}: {exc.info()}") from None

    async def call(self, uri: str, *, caller_id: str | None = None,
                   caller_name: str | None = None, response_timeout: float = 10.0) -> None:
        """Call ``uri``; returns once the far end answers with anything (1xx or 2xx).

        ``caller_id``/``caller_name`` set the From header of this call. Raises
        ``CallFailed`` on a final error or when nothing answers in time (408).
        """
        _check_uri(uri)
        local_uri: str | None = None
        if caller_id is not None or caller_name is not None:
            user = _check_number(caller_id, "caller_id") if caller_id else self.username
            host = self._host or "127.0.0.1"
            local_uri = f"sip:{user}@{host.rsplit(':', 1)[0] if self._registering else host}"
            name = caller_name if caller_name is not None else self.display_name
            if name:
                local_uri = f"{_quote_display(name)} <{local_uri}>"
        serial = await self._run(lambda: self._core.make_call(uri, local_uri))
        start = self._disconnects

        def proceeding() -> bool:
            if self._disconnects != start or self._serial != serial:
                raise CallFailed(self._last_status, self._last_reason,
                                 f"call to {uri} failed: {self._last_status} {self._last_reason}")
            return self._provisional > 0 or self._state in ("connected", "held")

        try:
            await self._wait_until(proceeding, response_timeout, f"an answer from {uri}")
        except PhoneTimeout:
            await self._run(self._core.hangup)
            raise CallFailed(408, "Request Timeout",
                             f"call to {uri}: no response within {response_timeout:g}s") from None

    async def answer(self) -> None:
        if self._state != "ringing":
            raise NoActiveCall(f"{self.username}: nothing to answer (state={self._state})")
        serial = self._serial
        await self._run(lambda: self._core.current(serial).answer(_op(200)))

    async def hangup(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (public API)
        """Hang up (or cancel, or decline) the current call and wait until it is gone."""
        if self._state in ("idle", "disconnected"):
            raise NoActiveCall(f"{self.username}: no call to hang up")
        await self._run(self._core.hangup)
        await self.wait_state("disconnected", timeout)

    async def hold(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (public API)
        """Put the call on hold (re-INVITE sendonly) and wait for the ``held`` state."""
        self._need_connected()
        await self._reinvite(True, timeout)
        await self.wait_state("held", timeout)

    async def unhold(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (public API)
        if self._state != "held":
            raise NoActiveCall(f"{self.username}: call is not held (state={self._state})")
        await self._reinvite(False, timeout)
        await self.wait_state("connected", timeout)

    async def _reinvite(self, hold: bool, limit: float) -> None:
        # A re-INVITE cannot start while the previous INVITE transaction is
        # still open (e.g. we answered the far end's re-INVITE and its ACK is
        # not in yet): pjsua says PJ_EINVALIDOP. Retry briefly with backoff.
        serial = self._serial
        delay = 0.02
        async with asyncio.timeout(limit):
            while not await self._run(lambda: self._core.set_hold(hold)):
                if self._serial != serial or self._state not in ("connected", "held"):
                    raise NoActiveCall(f"{self.username}: call ended (state={self._state})")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def send_dtmf(self, digits: str) -> None:
        """Send ``digits`` as RFC 2833 / RFC 4733 telephone-events in the media stream."""
        if not digits or len(digits) > MAX_DTMF_DIGITS or set(digits) - DTMF_DIGITS:
            raise ValueError(f"DTMF must be 1-{MAX_DTMF_DIGITS} of 0-9 * # A-D: {digits!r}")
        self._need_connected()
        await self._run(lambda: self._core.send_dtmf(digits))

    def _need_connected(self) -> None:
        if self._state not in ("connected", "held"):
            raise NoActiveCall(f"{self.username}: no connected call (state={self._state})")

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (public API)
        """Hang up, unregister (bounded wait) and free the account and transport."""
        if self._closed:
            return
        self._closed = True
        if self._engine.alive:
            if self._state not in ("idle", "disconnected"):
                try:
                    await self.hangup(timeout)
                except SoftPhoneError as exc:
                    log.debug("%s: hangup on close: %s", self.username, exc)
            if self._registered:
                try:
                    if await self._run(self._core.unregister):
                        await self._wait_until(lambda: not self._registered, timeout,
                                               "unregister")
                except SoftPhoneError as exc:
                    log.debug("%s: unregister on close: %s", self.username, exc)
            await self._run(self._core.close)
        self._notify()

    # -- events posted by the engine thread ---------------------------------------
    def _ev_reg(self, code: int, reason: str, expiration: int) -> None:
        if 200 <= code < 300:
            self._registered = expiration > 0
            self._reg_failure = None
        else:
            self._registered = False
            self._reg_failure = (code, reason)
        self._notify()

    def _new_call(self, serial: int, state: str) -> None:
        self._serial = serial
        self._state = state
        self._provisional = 0
        self._dtmf.clear()
        self._last_status, self._last_reason = 0, ""

    def _ev_outgoing(self, serial: int) -> None:
        self._new_call(serial, "calling")
        self._notify()

    def _ev_incoming(self, serial: int, offer: IncomingCall) -> None:
        self._new_call(serial, "ringing")
        self._offer = offer
        self._offers.put_nowait(offer)
        self._notify()

    def _ev_provisional(self, serial: int, code: int) -> None:
        if serial == self._serial:
            self._provisional = code
            self._notify()

    def _ev_call_state(self, serial: int, snap: _CallSnap) -> None:
        if serial != self._serial or self._state == "disconnected":
            return
        if snap.status:
            self._last_status, self._last_reason = snap.status, snap.reason
        self._state = _state_of(snap)
        if self._state == "disconnected":
            self._disconnects += 1
        self._notify()

    def _ev_dtmf(self, serial: int, digit: str) -> None:
        if serial == self._serial and len(self._dtmf) < 4096:
            self._dtmf.append(digit)
            self._notify()


def _op(code: int) -> Any:
    prm = pj.CallOpParam(True)
    prm.statusCode = code
    return prm
