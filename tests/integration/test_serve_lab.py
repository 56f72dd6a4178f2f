"""``cti serve --lab``: the lab Asterisk starts with the server, is wired, and stops with it.

``test_attach_lab_in_process`` drives ``cti.links.lab.attach_lab`` on an app
built here. ``test_serve_lab_demo_subprocess`` runs ``python -m cti serve
--lab --demo`` for real; it needs ``cti.serve.attach_lab`` to call
``cti.links.lab.attach_lab``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cti.app import create_app
from cti.config import Settings
from cti.lab import LabPbx
from cti.links.lab import LAB_PBX, attach_lab
from cti.links.pbx import PBX_LINKS
from pbx.link import LinkSettings
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0
FAST = LinkSettings(ping_interval=1.0, ping_timeout=3.0, backoff_min=0.2, backoff_max=1.0)


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def lab_gone(run_dir: Path, pid: int) -> bool:
    lab = LabPbx.from_state(run_dir)
    lab.pid = pid
    return not lab.is_running()


async def test_attach_lab_in_process(tmp_path: Path) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
        data_dir=tmp_path / "data",
        secret_key="test-secret",
    )
    app = create_app(settings)
    printed: list[str] = []
    attach_lab(app, settings, link_settings=FAST, out=printed.append)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        lab = app[LAB_PBX][0]
        assert lab.run_dir == (tmp_path / "data" / "lab").resolve()
        assert lab.pid is not None and lab.is_running()
        assert any(f"SIP udp 127.0.0.1:{lab.sip_port}" in line for line in printed), printed
        for name, secret in lab.agents.items():
            assert any(f"{name} / {secret}" in line for line in printed), printed

        async def up() -> bool:
            resp = await client.get("/api/v1/health")
            link: dict[str, Any] = (await resp.json())["links"]["pbx:lab"]
            return bool(link["up"])

        await until("pbx:lab up", up)
        assert app[PBX_LINKS]["lab"].health().up
        pid = lab.pid
    finally:
        await client.close()
    assert lab_gone(tmp_path / "data" / "lab", pid), f"lab asterisk pid {pid} still runs"


async def _read_until(
    stream: asyncio.StreamReader, lines: list[str], pattern: re.Pattern[str], within: float
) -> re.Match[str]:
    deadline = time.monotonic() + within
    for line in lines:
        if m := pattern.search(line):
            return m
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no line matching {pattern.pattern!r} in:\n" + "".join(lines))
        try:
            raw = await asyncio.wait_for(stream.readline(), left)
        except TimeoutError:
            continue
        if not raw:
            pytest.fail(f"cti serve exited before {pattern.pattern!r}:\n" + "".join(lines))
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        if m := pattern.search(line):
            return m


async def test_serve_lab_demo_subprocess(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "CTI_HTTP_LISTEN": f"127.0.0.1:{port}",
        "CTI_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}",
        "CTI_DATA_DIR": str(data),
        "CTI_SECRET_KEY": "test-secret",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CTI_AMI_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cti", "serve", "--lab", "--demo",
        cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    lab_pid: int | None = None
    try:
        lab_line = await _read_until(
            proc.stdout, lines, re.compile(r"lab PBX: SIP udp (\S+) .*\(pid (\d+)"), TIMEOUT
        )
        lab_pid = int(lab_line.group(2))
        await _read_until(proc.stdout, lines, re.compile(r"lab agent SIP login: agent1 / "), 5)
        url = await _read_until(proc.stdout, lines, re.compile(r"desk (http://\S+/)"), TIMEOUT)
        assert url.group(1) == f"http://127.0.0.1:{port}/"
        demo = await _read_until(
            proc.stdout, lines, re.compile(r"demo login: (\S+) / (\S+)"), TIMEOUT
        )
        login, password = demo.group(1), demo.group(2)

        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def up() -> bool:
                async with http.get("/api/v1/health") as resp:
                    body: dict[str, Any] = await resp.json()
                    return bool(body["links"].get("pbx:lab", {}).get("up"))

            await until("pbx:lab up in /api/v1/health", up)
            async with http.post(
                "/api/v1/auth/token", json={"login": login, "password": password}
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["token"]

        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), TIMEOUT)
        assert rc == 0, "".join(lines)
        assert lab_gone(data / "lab", lab_pid), f"lab asterisk pid {lab_pid} still runs"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if lab_pid is not None and not lab_gone(data / "lab", lab_pid):
            os.kill(lab_pid, signal.SIGKILL)
