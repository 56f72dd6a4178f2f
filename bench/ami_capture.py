"""Raw AMI capture for the lab benches: every byte Asterisk sends, untouched."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cti.lab import LabPbx


@contextmanager
def raw_ami_capture(pbx: LabPbx, action_id: str | None = None) -> Iterator[list[bytes]]:
    """Log in to ``pbx``'s AMI over a raw socket with ``Events: on`` and append every
    chunk received to the yielded list until the block exits."""
    chunks: list[bytes] = []
    stop = threading.Event()
    sock = socket.create_connection((pbx.host, pbx.ami_port), timeout=5)
    thread: threading.Thread | None = None
    try:
        action = f"ActionID: {action_id}\r\n" if action_id else ""
        sock.sendall(f"Action: Login\r\n{action}Username: {pbx.ami_user}\r\n"
                     f"Secret: {pbx.ami_secret}\r\nEvents: on\r\n\r\n".encode())
        sock.settimeout(0.2)

        def reader() -> None:
            while not stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                chunks.append(data)

        thread = threading.Thread(target=reader)
        thread.start()
        yield chunks
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        sock.close()
