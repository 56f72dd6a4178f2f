"""`cti serve` as a process: demo seed, login, clean stop on SIGINT, config errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.peers.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
SERVE = (
    "import argparse, sys; from cti import serve; p = argparse.ArgumentParser(); "
    "serve.configure(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))"
)


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SERVE, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_serve_demo_logs_in_and_stops(tmp_path: Path) -> None:
    port = free_port()
    proc = start(
        ["--demo", "--log-level", "WARNING"],
        {
            "CTI_HTTP_LISTEN": f"127.0.0.1:{port}",
            "CTI_DATA_DIR": str(tmp_path),
            "CTI_SECRET_KEY": "k",
            "CTI_BOOTSTRAP_ADMIN": "root:root-password",
        },
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "demo login: admin" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}" in text and "agent1 / agent1-pass" in text, text
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}/api/v1"
            for login, password in (("agent1", "agent1-pass"), ("root", "root-password")):
                resp = await http.post(
                    f"{base}/auth/token", json={"login": login, "password": password}
                )
                assert resp.status == 200, login
            token = (await resp.json())["token"]
            found = await http.get(
                f"{base}/customers",
                params={"phone": "8 916 123 45 67"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert (await found.json())["customers"][0]["name"] == "Иван Петров"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert (tmp_path / "cti.sqlite3").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_bad_config_exits_2(tmp_path: Path) -> None:
    proc = start([], {"CTI_AMI_URL": "ami://nosecret@h", "CTI_DATA_DIR": str(tmp_path)})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "CTI_AMI_URL" in err
    bad = tmp_path / "x.toml"
    bad.write_text("[server]\nhttp_listen = 5\n")
    proc = start(["--config", str(bad)], {"CTI_DATA_DIR": str(tmp_path)})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "http_listen" in err
