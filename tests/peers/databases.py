"""Database peers: a private PostgreSQL 15 cluster and a redis-server.

``postgres_url`` (session): a cluster made with initdb in a temp dir, on a free
loopback port, run as the ``postgres`` system user when the tests run as root,
stopped by its PID. ``redis_url`` (session): redis-server with no persistence.
``db_url`` (function, parametrized): a fresh SQLite file or a fresh PostgreSQL
database, so one test runs on both backends.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.ports import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "cti"
START_TIMEOUT = 60.0
_db_counter = itertools.count(1)


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"{what} exited with {proc.returncode} at start:\n{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT}s")


def _stop(proc: subprocess.Popen[Any], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the postgres user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root needs the 'postgres' system user (apt-get install postgresql)")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    for tool in ("initdb", "postgres", "createdb"):
        if not (PG_BIN / tool).exists():
            pytest.fail(
                f"PostgreSQL 15 server binary {PG_BIN / tool} is missing "
                "(apt-get install postgresql-15)"
            )
    # Not under tmp_path_factory: its 0700 root-owned parents bar the postgres user.
    base = Path(tempfile.mkdtemp(prefix="cti-postgres-"))
    data = base / "data"
    log = base / "postgres.log"
    as_user = _run_as()
    if as_user:
        os.chown(base, as_user["user"], as_user["group"])
    init = subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        check=False,
        **as_user,
    )
    if init.returncode != 0:
        pytest.fail(f"initdb failed ({init.returncode}):\n{init.stderr[-2000:]}")
    port = free_port()
    with log.open("w") as log_fh:
        if as_user:
            os.chown(log, as_user["user"], as_user["group"])
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
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            **as_user,
        )
    try:
        _wait_port(port, proc, "postgres", log)
        _createdb(port, "cti")
        yield f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{port}/cti"
    finally:
        _stop(proc, signal.SIGINT)  # fast shutdown: SIGTERM would wait for clients
        shutil.rmtree(base, ignore_errors=True)


def _createdb(port: int, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        out = subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, name],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0:
            return
        if "starting up" not in out.stderr or time.monotonic() > deadline:
            pytest.fail(f"createdb {name} failed: {out.stderr.strip()}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing (apt-get install redis-server)")
    base = tmp_path_factory.mktemp("redis")
    log = base / "redis.log"
    port = free_port()
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(base),
            ],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(port, proc, "redis-server", log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc, signal.SIGTERM)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cti.sqlite3'}"
    base_url: str = request.getfixturevalue("postgres_url")
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    name = f"t{os.getpid()}_{next(_db_counter)}"
    _createdb(port, name)
    return base_url.rsplit("/", 1)[0] + "/" + name
