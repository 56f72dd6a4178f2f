"""A scripted AMI server on loopback for bad-input tests (what a real Asterisk never sends).

It speaks the AMI framing (banner, ``Key: Value`` lines, empty line), answers
Login, CoreStatus, the resync lists and Ping, records every action received,
and lets a test inject raw bytes or hold back the answer to chosen actions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pbx.framing import AmiMessage, AmiParser, FrameLimits

Responder = Callable[[AmiMessage], bytes | None]


def frame(*headers: tuple[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"


class ScriptedAmi:
    def __init__(self, secret: str = "s3cret", startup: str = "09:00:00") -> None:
        self.secret = secret
        self.startup = startup
        self.actions: list[AmiMessage] = []
        self.connections = 0
        self.banner = b"Asterisk Call Manager/5.0.1\r\n"
        self.silent = False  # accept TCP, then never send a byte
        self.after_login: bytes = b""  # sent once, after the first successful login
        self.responders: dict[str, Responder] = {}
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ami://cti:{self.secret}@127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self.writers:
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_all(self) -> None:
        for w in self.writers:
            w.transport.abort()

    def named(self, action: str) -> list[AmiMessage]:
        return [a for a in self.actions if (a.get("Action") or "").lower() == action.lower()]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.writers.append(writer)
        try:
            if self.silent:
                await reader.read()
                return
            writer.write(self.banner)
            parser = AmiParser(FrameLimits(), expect_banner=False)
            while data := await reader.read(65536):
                for msg in parser.messages(data):
                    self.actions.append(msg)
                    reply = self._reply(msg)
                    if reply:
                        writer.write(reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)

    def _take_after_login(self) -> bytes:
        data, self.after_login = self.after_login, b""
        return data

    def _reply(self, msg: AmiMessage) -> bytes | None:
        name = (msg.get("Action") or "").lower()
        aid = msg.get("ActionID") or ""
        if name in self.responders:
            return self.responders[name](msg)
        if name == "login":
            if msg.get("Secret") != self.secret:
                return frame(("Response", "Error"), ("ActionID", aid),
                             ("Message", "Authentication failed"))
            return frame(("Response", "Success"), ("ActionID", aid),
                         ("Message", "Authentication accepted")) + self._take_after_login()
        if name == "ping":
            return frame(("Response", "Success"), ("ActionID", aid), ("Ping", "Pong"))
        if name == "corestatus":
            return frame(("Response", "Success"), ("ActionID", aid),
                         ("CoreStartupDate", "2026-11-23"), ("CoreStartupTime", self.startup),
                         ("CoreReloadDate", "2026-11-23"), ("CoreReloadTime", self.startup),
                         ("CoreCurrentCalls", "0"))
        lists = {"coreshowchannels": "CoreShowChannelsComplete",
                 "queuestatus": "QueueStatusComplete", "queuesummary": "QueueSummaryComplete"}
        if name in lists:
            return (frame(("Response", "Success"), ("ActionID", aid), ("EventList", "start"),
                          ("Message", "will follow"))
                    + frame(("Event", lists[name]), ("ActionID", aid), ("EventList", "Complete"),
                            ("ListItems", "0")))
        return frame(("Response", "Error"), ("ActionID", aid),
                     ("Message", "Invalid/unknown command"))
