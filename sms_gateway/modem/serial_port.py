"""The only module that touches the serial library (pyserial-asyncio-fast)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import serial_asyncio_fast


class PortProtocol(asyncio.Protocol):
    """Hands received bytes and the loss of the port to two callbacks."""

    def __init__(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


async def open_port(
    port: str,
    baudrate: int,
    on_data: Callable[[bytes], None],
    on_lost: Callable[[Exception | None], None],
) -> asyncio.BaseTransport:
    """Open `port` (a device path or a pyserial URL). Raises OSError when it cannot
    (pyserial's SerialException is an OSError)."""
    loop = asyncio.get_running_loop()
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop,
        lambda: PortProtocol(on_data, on_lost),
        port,
        baudrate=baudrate,
        rtscts=False,
        xonxoff=False,
    )
    return transport
