"""A minimal blocking AMI client for ``cti pbx``: Login, Command, Logoff.

The CTI server's own link (pbx/) is asyncio and event-driven; the engineer's
tool sends a handful of CLI commands and waits for each answer, so a plain
socket with a timeout and a size limit is enough. Asterisk 16 answers
``Action: Command`` with ``Response: Success`` and one ``Output:`` header per
line of CLI output.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

MAX_MESSAGE = 1024 * 1024


class AmiError(RuntimeError):
    """The AMI link failed or refused an action."""


@dataclass(frozen=True, slots=True)
class AmiTarget:
    host: str
    port: int
    user: str
    secret: str = field(repr=False)

    @classmethod
    def from_url(cls, url: str) -> AmiTarget:
        parts = urlsplit(url)
        if parts.scheme != "ami" or not parts.hostname or not parts.username:
            raise AmiError("AMI URL must look like ami://user:secret@host:port")
        return cls(parts.hostname, parts.port or 5038, unquote(parts.username),
                   unquote(parts.password or ""))


def split_messages(buffer: bytearray) -> list[list[tuple[str, str]]]:
    """Pop complete messages (header lists, duplicates kept) from ``buffer``."""
    out: list[list[tuple[str, str]]] = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_MESSAGE:
                raise AmiError("AMI message larger than 1 MiB")
            return out
        raw = bytes(buffer[:end])
        del buffer[: end + 4]
        headers: list[tuple[str, str]] = []
        for line in raw.decode("utf-8", errors="replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers.append((key.strip(), value.removeprefix(" ").rstrip()))
        out.append(headers)


class AmiClient:
    def __init__(self, target: AmiTarget, timeout: float = 15.0) -> None:
        self.target = target
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._banner = False
        self._counter = 0

    def __enter__(self) -> AmiClient:
        try:
            self._sock = socket.create_connection((self.target.host, self.target.port),
                                                  timeout=self.timeout)
        except OSError as exc:
            raise AmiError(f"cannot reach AMI at {self.target.host}:{self.target.port}: {exc}") \
                from exc
        reply = self._action([("Action", "Login"), ("Username", self.target.user),
                              ("Secret", self.target.secret), ("Events", "off")])
        if dict(reply).get("Response") != "Success":
            self.close()
            raise AmiError(f"AMI login refused: {dict(reply).get('Message', '')}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            try:
                self._sock.sendall(b"Action: Logoff\r\n\r\n")
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def command(self, cli: str) -> str:
        """Run one CLI command; return its output (AmiError when refused)."""
        reply = self._action([("Action", "Command"), ("Command", cli)])
        fields = dict(reply)
        if fields.get("Response") not in ("Success", "Follows"):
            raise AmiError(f"AMI refused {cli!r}: {fields.get('Message', '')}")
        return "\n".join(v for k, v in reply if k == "Output")

    def _action(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self._sock is None:
            raise AmiError("AMI link is closed")
        self._counter += 1
        action_id = f"pbxconf-{self._counter}"
        text = "".join(f"{k}: {v}\r\n" for k, v in headers) + f"ActionID: {action_id}\r\n\r\n"
        if any(c in v for _, v in headers for c in "\r\n"):
            raise AmiError("AMI header values cannot contain line breaks")
        try:
            self._sock.sendall(text.encode())
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                if not self._banner:
                    eol = self._buffer.find(b"\r\n")
                    if eol >= 0:
                        del self._buffer[: eol + 2]
                        self._banner = True
                        continue
                else:
                    for message in split_messages(self._buffer):
                        if dict(message).get("ActionID") == action_id:
                            return message
                self._sock.settimeout(max(0.1, deadline - time.monotonic()))
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise AmiError("AMI closed the connection")
                self._buffer += chunk
        except OSError as exc:
            raise AmiError(f"AMI link failed: {exc}") from exc
        raise AmiError(f"no AMI answer within {self.timeout:.0f} s")
