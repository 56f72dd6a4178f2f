"""A throwaway PostgreSQL 15 cluster for benchmarks: initdb in a temp dir, free loopback port.

Durability settings are PostgreSQL's defaults (fsync on, synchronous_commit on),
unlike the test cluster: a benchmark of writes must pay for commits. Stopped by
its PID (SIGINT = fast shutdown) and removed on exit.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "cti"
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@contextmanager
def pg_cluster(*settings: str) -> Iterator[str]:
    """Yield an asyncpg SQLAlchemy URL to a fresh database ``cti``."""
    for tool in ("initdb", "postgres", "createdb"):
        if not (PG_BIN / tool).exists():
            raise SystemExit(f"PostgreSQL 15 binary {PG_BIN / tool} is missing")
    base = Path(tempfile.mkdtemp(prefix="cti-bench-pg-"))
    as_user = _as_user()
    if as_user:
        os.chown(base, as_user["user"], as_user["group"])
    data = base / "data"
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        capture_output=True,
        check=True,
        **as_user,
    )
    port = free_port()
    extra: list[str] = []
    for item in settings:
        extra += ["-c", item]
    log = (base / "postgres.log").open("w")
    if as_user:
        os.chown(base / "postgres.log", as_user["user"], as_user["group"])
    proc = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(base),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        **as_user,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"postgres exited: {(base / 'postgres.log').read_text()[-2000:]}")
            done = subprocess.run(
                [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "cti"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"createdb failed: {done.stderr}")
            time.sleep(0.3)
        yield f"postgresql+asyncpg://{USER}@127.0.0.1:{port}/cti"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
