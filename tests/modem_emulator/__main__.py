"""Run the emulator as a process: `python -m tests.modem_emulator --link /tmp/ttyGSM0`."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from .emulator import ModemEmulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--link", type=Path, required=True, help="symlink to create to the PTY")
    parser.add_argument("--pin", default=None, help="SIM PIN the emulated SIM asks for")
    parser.add_argument("--prompt-delay", type=float, default=0.0)
    parser.add_argument("--force-echo", action="store_true", help="ignore ATE0")
    args = parser.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    emulator = ModemEmulator(
        args.link, pin=args.pin, prompt_delay=args.prompt_delay, force_echo=args.force_echo,
        ussd_replies={"*100#": ("Balance: 100.00 RUB", 15)},
    )
    with emulator:
        print(args.link, flush=True)
        done.wait()


if __name__ == "__main__":
    main()
