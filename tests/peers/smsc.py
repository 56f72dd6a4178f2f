"""The test SMSC peer: node-smpp (tests/smsc/smsc.js) on free loopback ports.

Fixture ``smsc`` (function scope) starts ``node tests/smsc/smsc.js`` and stops it
by PID. It fails with a clear message when node or tests/smsc/node_modules is
missing (``npm ci`` in tests/smsc installs it from the committed lock file).
The SMSC can be killed and started again on the same SMPP port.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.ports import free_port

SMSC_DIR = Path(__file__).resolve().parent.parent / "smsc"
START_TIMEOUT = 20.0


class Smsc:
    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node (Node.js 20) is not installed: the test SMSC needs it")
        if not (SMSC_DIR / "node_modules" / "smpp").is_dir():
            pytest.fail(f"{SMSC_DIR}/node_modules is missing: run `npm ci` in {SMSC_DIR}")
        self.node = node
        self.smpp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.record_path: Path | None = None

    def recorded_submits(self) -> list[dict[str, Any]]:
        """Every submit_sm accepted by every run of this SMSC (survives kills)."""
        if self.record_path is None or not self.record_path.exists():
            return []
        lines = self.record_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, **params: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"source_addr": "CTI", **params}.items())
        return f"smpp://cti:secret@127.0.0.1:{self.smpp_port}?{query}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.node,
                str(SMSC_DIR / "smsc.js"),
                "--smpp-port",
                str(self.smpp_port),
                "--http-port",
                str(self.http_port),
                *(["--record", str(self.record_path)] if self.record_path else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=SMSC_DIR,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while time.monotonic() < deadline and b"\n" not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        if b'"ready":true' not in line:
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()
            self.kill()
            pytest.fail(f"test SMSC did not start: {line!r} {err[-2000:]!r}")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    async def acall(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self.call, method, path, body)

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.acall("GET", "/state")
        return result

    async def configure(self, **settings: object) -> None:
        await self.acall("POST", "/config", dict(settings))


@pytest.fixture
def smsc(tmp_path: Path) -> Iterator[Smsc]:
    peer = Smsc()
    peer.record_path = tmp_path / "smsc-submits.jsonl"
    peer.start()
    try:
        yield peer
    finally:
        peer.kill()
