"""Cluster test peers: a private redis-server that a test may stop and start again.

The session ``redis_url`` fixture cannot be stopped by one test; ``own_redis``
is a redis-server with an append-only file (as a production Redis would run),
stopped and restarted on the same port by its PID.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.ports import free_port


class OwnRedis:
    def __init__(self, binary: str, base: Path, port: int) -> None:
        self.binary = binary
        self.base = base
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        log = (self.base / "redis.log").open("a")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.base)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}: "
                            f"{(self.base / 'redis.log').read_text()[-1500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not listen on {self.port} within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing (apt-get install redis-server)")
    peer = OwnRedis(binary, tmp_path, free_port())
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()
