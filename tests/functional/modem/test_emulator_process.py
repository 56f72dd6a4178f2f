"""The emulator also runs as its own process (python -m tests.modem_emulator)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from sms_gateway.modem.driver import GsmModem, ModemConfig

from .conftest import FAST

ROOT = Path(__file__).resolve().parents[3]


async def test_driver_against_the_emulator_process(tmp_path: Path) -> None:
    link = tmp_path / "ttyGSM-proc"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.modem_emulator", "--link", str(link), "--pin", "1111",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    modem = GsmModem(ModemConfig(name="proc", port=str(link), pin="1111", **FAST))  # type: ignore[arg-type]
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().strip() == str(link), "emulator process did not start"
        await modem.start()
        await asyncio.wait_for(modem.wait_online(), 30)
        answer = await modem.ussd("*100#")
        assert answer.text == "Balance: 100.00 RUB"
    finally:
        await modem.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
