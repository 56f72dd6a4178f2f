"""``cti serve --lab``: start the lab Asterisk (cti.lab.LabPbx) and wire its AMI link.

The lab's run dir is ``<data dir>/lab`` (``./var/lab`` by default; set
``CTI_DATA_DIR`` to move it). A previous run's ports and secrets are reused
(so configured softphones keep working) unless a port is taken, then fresh
free ports are picked. A lab Asterisk that already runs in that dir (``cti lab
start``) is used as is and left running; one started here is stopped by PID
on shutdown. The link is named ``lab`` and registered exactly like the
configured PBXs (``cti.links.pbx``): health ``pbx:lab``, changes into
``services.calls``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from cti.config import HostPort, Settings
from cti.keys import SERVICES
from cti.lab import STATE_FILE, LabPbx, LabPbxError, PortTaken
from cti.links.pbx import PBX_LINKS, setup_pbx_links
from pbx.link import LinkSettings

log = logging.getLogger(__name__)

LAB_PBX_NAME = "lab"
LAB_PBX: web.AppKey[list[LabPbx]] = web.AppKey("lab_pbx")
# Where the lab dialplan sends AGI when settings.agi_listen is unset (cti.links.ivr).
LAB_AGI_LISTEN: web.AppKey[HostPort] = web.AppKey("lab_agi_listen")

Printer = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def lab_run_dir(settings: Settings) -> Path:
    return settings.data_dir / "lab"


def _make_lab(run_dir: Path, settings: Settings, agi: HostPort | None = None) -> LabPbx:
    agi = agi or settings.agi_listen
    agi_host = "127.0.0.1"
    if agi is not None and agi.host not in ("", "0.0.0.0"):
        agi_host = agi.host
    if (run_dir / STATE_FILE).exists():
        try:
            lab = LabPbx.from_state(run_dir)
        except LabPbxError as exc:
            log.warning("lab PBX: ignoring the old state in %s: %s", run_dir, exc)
        else:
            if agi is not None:
                lab.agi_host, lab.agi_port = agi_host, agi.port
            return lab
    return LabPbx(run_dir, agi_host=agi_host, agi_port=agi.port if agi is not None else None)


async def _start_lab(
    run_dir: Path, settings: Settings, agi: HostPort | None = None
) -> tuple[LabPbx, bool]:
    """The lab PBX running in ``run_dir`` and whether we started it."""
    lab = _make_lab(run_dir, settings, agi)
    if lab.is_running():
        return lab, False
    try:
        await lab.astart()
    except PortTaken as exc:
        log.warning("lab PBX: %s; starting on fresh ports", exc)
        lab = LabPbx(run_dir, agi_host=lab.agi_host, agi_port=lab.agi_port)
        await lab.astart()
    return lab, True


def print_lab(lab: LabPbx, out: Printer = _print) -> None:
    out(f"lab PBX: SIP udp {lab.host}:{lab.sip_port}, AMI {lab.host}:{lab.ami_port} "
        f"(pid {lab.pid}, run dir {lab.run_dir})")
    for queue in lab.queues:
        out(f"  lab queue: {queue.name} (dial {queue.number}) members {', '.join(queue.members)}")
    for agent in lab.agent_list():
        out(f"  lab agent SIP login: {agent.name} / {agent.secret}  extension {agent.exten}  "
            f"sip:{agent.name}@{lab.host}:{lab.sip_port}")


def lab_ctx(
    settings: Settings, run_dir: Path | None = None, out: Printer = _print
) -> Callable[[web.Application], AsyncIterator[None]]:
    where = run_dir if run_dir is not None else lab_run_dir(settings)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        lab, ours = await _start_lab(where, settings, app.get(LAB_AGI_LISTEN))
        app[LAB_PBX].append(lab)
        added = False
        try:
            print_lab(lab, out)
            await app[PBX_LINKS].add(app[SERVICES], LAB_PBX_NAME, lab.ami_url)
            added = True
            yield
        finally:
            if added:
                await app[PBX_LINKS].remove(LAB_PBX_NAME)
            if ours:
                pid = lab.pid
                await lab.astop()
                log.info("lab PBX stopped (pid %s)", pid)

    return ctx


def attach_lab(
    app: web.Application,
    settings: Settings,
    *,
    run_dir: Path | None = None,
    link_settings: LinkSettings | None = None,
    out: Printer = _print,
) -> None:
    """For ``cti serve --lab``: start the lab PBX with the app and feed its changes."""
    setup_pbx_links(app, link_settings)
    if LAB_PBX not in app:
        app[LAB_PBX] = []
    app.cleanup_ctx.append(lab_ctx(settings, run_dir, out))
