"""``cti serve``: run the CTI server (HTTP API, WebSocket, links)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from cti.app import create_app
from cti.callbacks import setup_callbacks
from cti.cluster.node import setup_cluster
from cti.config import ConfigError, Settings, load_settings
from cti.demo import seed
from cti.desk_api import seed_desk, setup_desk_api
from cti.keys import SERVICES
from cti.links.callcontrol import setup_call_control
from cti.links.ivr import setup_ivr
from cti.links.lab import attach_lab
from cti.links.pbx import setup_pbx_links
from cti.links.sms import sms_links
from cti.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from cti.metrics import SMS_CHANNELS, setup_metrics
from cti.partitions import setup_partitions
from cti.phone_api import setup_phone_api
from cti.reports.api import setup_reports
from cti.wallboard import setup_wallboard
from cti.web import setup_web
from cti.webchat.routes import setup_webchat
from cti.ws import setup_ws

log = logging.getLogger("cti.serve")

def build_app(settings: Settings, *, lab: bool = False) -> web.Application:
    """The whole server: core API, desk, AMI links + call control, SMPP links, lab PBX."""
    app = create_app(settings)
    setup_web(app)
    setup_pbx_links(app)
    setup_cluster(app)
    setup_partitions(app)  # PostgreSQL: next months' history partitions, daily
    setup_metrics(app)  # its SMS_CHANNELS list receives the running SMS channel below
    setup_call_control(app)
    setup_reports(app)
    setup_callbacks(app)
    setup_phone_api(app)
    setup_wallboard(app)
    setup_ws(app)
    setup_desk_api(app)
    app.cleanup_ctx.append(sms_links(running=app[SMS_CHANNELS]))
    setup_webchat(app)  # after the SMS links: it wraps their sender
    if lab:
        attach_lab(app, settings)
    setup_ivr(app, lab=lab)
    return app


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="seed demo agents (agent1..agent4, supervisor, admin) and customers",
    )
    parser.add_argument("--lab", action="store_true", help="start and use the lab Asterisk PBX")
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help="default: CTI_LOG_LEVEL / [logging] level / INFO"
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS,
        help="stderr log lines: text, or json (one object per line); default: CTI_LOG_FORMAT / "
        "[logging] format / text",
    )


def _demo_ctx(logins: list[tuple[str, str]]) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        logins.extend(await seed(app[SERVICES]))
        await seed_desk(app[SERVICES])
        yield

    return ctx


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    app = build_app(settings, lab=args.lab)
    logins: list[tuple[str, str]] = []
    if args.demo:
        app.cleanup_ctx.append(_demo_ctx(logins))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_listen.host, settings.http_listen.port)
        await site.start()
        host = settings.http_listen.host
        url = (
            f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{settings.http_listen.port}"
        )
        print(f"CTI server listening on {url}  (API {url}/api/v1, desk {url}/)", flush=True)
        for login, password in logins:
            print(f"  demo login: {login} / {password}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"cti serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        args.log_level or settings.log_level,
        args.log_format or settings.log_format,
        settings.node_id,
    )
    try:
        return asyncio.run(_serve(settings, args))
    except ConfigError as exc:
        print(f"cti serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cti serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
