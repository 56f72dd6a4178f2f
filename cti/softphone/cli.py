"""``cti phone``: the agent's softphone on the PC beside the desk.

It registers the agent's endpoint, rings, optionally auto-answers, and shows
each offered call's caller as a desktop notification (``notify-send`` when
present, else a line on stdout).

Seam for the desk link: everything the phone reports goes through a
``PhoneEventSink``. Today the sinks are the notifier; a later WebSocket link
to the CTI server will be one more sink, and will drive the phone through
the same ``SoftPhone`` methods (answer / hangup / hold / send_dtmf).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable
from typing import Protocol, TypeVar

log = logging.getLogger("cti.softphone.cli")

T = TypeVar("T")

PASSWORD_ENV = "CTI_PHONE_PASSWORD"
DESK_PASSWORD_ENV = "CTI_DESK_PASSWORD"
MAX_NOTIFY_CHARS = 200


class PhoneEventSink(Protocol):
    """Receives what the phone sees. Implemented by the notifier (and later the desk link)."""

    async def offered(self, call: object) -> None: ...

    async def state_changed(self, state: str) -> None: ...


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:MAX_NOTIFY_CHARS]


def notification_line(caller_name: str, caller_number: str) -> str:
    """One safe line naming the caller (control characters replaced, length capped)."""
    name, number = _printable(caller_name), _printable(caller_number)
    if name and number:
        return f"Incoming call: {name} <{number}>"
    return f"Incoming call: {name or number or 'unknown caller'}"


class DesktopNotifier:
    """notify-send when available (body escaped: notification servers parse markup), else stdout."""

    def __init__(self, use_notify_send: bool = True) -> None:
        self._notify_send = shutil.which("notify-send") if use_notify_send else None

    async def offered(self, call: object) -> None:
        name = str(getattr(call, "caller_name", ""))
        number = str(getattr(call, "caller_number", ""))
        line = notification_line(name, number)
        print(line, flush=True)
        if self._notify_send is not None:
            proc = await asyncio.create_subprocess_exec(
                self._notify_send, "--app-name=cti phone", "Incoming call",
                html.escape(line.removeprefix("Incoming call: ")),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await proc.wait()

    async def state_changed(self, state: str) -> None:
        print(f"Call state: {state}", flush=True)

    async def notify(self, title: str, body: str) -> None:
        """A notification from the CTI link (the customer's name from the screen pop)."""
        line = f"{_printable(title)}: {_printable(body)}"
        print(line, flush=True)
        if self._notify_send is not None:
            proc = await asyncio.create_subprocess_exec(
                self._notify_send, "--app-name=cti phone", _printable(title),
                html.escape(_printable(body)),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await proc.wait()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="HOST:PORT",
                        help="SIP registrar (the Asterisk PJSIP UDP transport)")
    parser.add_argument("--user", required=True, help="agent endpoint, e.g. agent1")
    parser.add_argument("--password", default=None,
                        help=f"SIP password (prefer the {PASSWORD_ENV} environment variable)")
    parser.add_argument("--display-name", default=None)
    parser.add_argument("--auto-answer", action="store_true", help="answer offered calls at once")
    parser.add_argument("--bind", default=None, metavar="ADDR",
                        help="local address for SIP/RTP (default: loopback for a loopback server)")
    parser.add_argument("--local-port", type=int, default=0, help="local SIP port (0: any)")
    parser.add_argument("--no-notify-send", action="store_true",
                        help="print notifications on stdout only")
    parser.add_argument("--cti", default=None, metavar="URL",
                        help="link to the CTI server (http://host:port): the desk drives the "
                             "phone and screen pops raise notifications")
    parser.add_argument("--login", default=None, help="CTI login (default: --user)")
    parser.add_argument("--cti-password", default=None,
                        help=f"CTI password (prefer {DESK_PASSWORD_ENV}; default: the SIP one)")
    parser.add_argument("--exit-after-calls", type=int, default=0, metavar="N",
                        help=argparse.SUPPRESS)


def _split_server(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--server must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def _until_stopped(stop: asyncio.Event, aw: Awaitable[T]) -> T | None:
    """``await aw`` unless ``stop`` is set first (then cancel it and return None)."""
    work = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stopper):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if work.cancelled():
        return None
    return work.result()


async def _done(aw: Awaitable[None]) -> bool:
    await aw
    return True


async def _serve(args: argparse.Namespace, password: str, sinks: list[PhoneEventSink]) -> int:
    from cti.softphone.engine import shutdown_engine
    from cti.softphone.phone import SoftPhone, SoftPhoneError

    host, port = _split_server(args.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        phone = await SoftPhone.create(
            username=args.user, password=password, host=host, port=port,
            display_name=args.display_name, auto_answer=args.auto_answer,
            bind_address=args.bind, local_port=args.local_port,
        )
    except (SoftPhoneError, ValueError) as exc:
        print(f"cti phone: {exc}", file=sys.stderr, flush=True)
        await shutdown_engine()
        return 2
    print(f"Registered {args.user} at {host}:{port} (SIP port {phone.local_port})", flush=True)
    link = None
    if args.cti:
        import aiohttp

        from cti.softphone.link import DeskLink

        notifier = next((s for s in sinks if isinstance(s, DesktopNotifier)), DesktopNotifier())
        cti_password = (args.cti_password or os.environ.get(DESK_PASSWORD_ENV) or password)
        link = DeskLink(args.cti, args.login or args.user, cti_password, phone, notifier)
        try:
            await link.start()
        except (OSError, aiohttp.ClientError, ValueError) as exc:
            print(f"cti phone: CTI link: {exc}", file=sys.stderr, flush=True)
            await phone.close()
            await shutdown_engine()
            return 2
        print(f"Linked to the CTI server {args.cti} as {link.login}", flush=True)
    handled = 0
    day = 86_400.0
    try:
        while not stop.is_set():
            try:
                offer = await _until_stopped(stop, phone.wait_for_incoming(day))
            except SoftPhoneError:
                continue
            if offer is None:
                break
            for sink in sinks:
                await sink.offered(offer)
            if args.auto_answer:
                with contextlib.suppress(SoftPhoneError):
                    if await _until_stopped(stop, _done(phone.wait_state("connected", 10))):
                        for sink in sinks:
                            await sink.state_changed("connected")
            with contextlib.suppress(SoftPhoneError):
                await _until_stopped(stop, _done(phone.wait_state("disconnected", day)))
            for sink in sinks:
                await sink.state_changed(phone.state)
            handled += 1
            if args.exit_after_calls and handled >= args.exit_after_calls:
                break
    finally:
        if link is not None:
            await link.close()
        await phone.close()
        await shutdown_engine()
    return 0


def run(args: argparse.Namespace) -> int:
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
    if not password:
        print(f"cti phone: give --password or set {PASSWORD_ENV}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    sinks: list[PhoneEventSink] = [DesktopNotifier(not args.no_notify_send)]
    return asyncio.run(_serve(args, password, sinks))


def main(argv: list[str] | None = None) -> int:
    """``python -m cti.softphone.cli`` (same as ``cti phone``)."""
    parser = argparse.ArgumentParser(prog="cti phone", description="the agent softphone (pjsua2)")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
