"""AMI framing: a pure, incremental parser (no I/O), fed bytes, giving messages.

Theory of operation: the manager interface sends one banner line
(``Asterisk Call Manager/5.0.x\\r\\n``), then messages made of ``Key: Value``
lines ending with ``\\r\\n`` and separated by an empty line. The parser splits on
bytes first (``\\r\\n\\r\\n``) and decodes each complete message afterwards, so a
UTF-8 character split across two TCP reads is never lost. Undecodable bytes
become U+FFFD. Every input is bounded: a header line, a whole message and the
number of headers; going past a limit raises :class:`AmiFramingError` and the
parser is dead (the link resets the connection and reconnects).

Early drop: given ``keep_events`` (lower-case event names), an unsolicited
event whose name is not among them is skipped on its bytes, before it is
decoded (the name is the first line, where Asterisk always puts ``Event``).
Events that answer an action (they carry an ``ActionID``: list entries,
OriginateResponse) are always decoded. ``events`` counts every event block
read, kept or skipped.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

BANNER_PREFIX = "Asterisk Call Manager/"
_EOM = b"\r\n\r\n"
_EOL = b"\r\n"
_EVENT = re.compile(rb"event:[ ]?([^\r\n]*)", re.IGNORECASE)
_ACTION_ID = re.compile(rb"^actionid:", re.IGNORECASE | re.MULTILINE)


class AmiFramingError(Exception):
    """The byte stream is not AMI or went past a limit; the connection must be reset."""


class MissingHeader(KeyError):
    """An AMI message lacks a header the code needs."""

    def __init__(self, header: str, message: AmiMessage) -> None:
        kind = message.get("Event") or message.get("Response") or "message"
        super().__init__(f"AMI {kind} has no {header!r} header")
        self.header = header

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class FrameLimits:
    max_line: int = 16 * 1024
    max_message: int = 256 * 1024
    max_headers: int = 512
    max_banner: int = 256


class AmiMessage(Mapping[str, str]):
    """An immutable AMI message; header lookup is case-insensitive.

    ``msg["Channel"]`` gives the first value and raises :class:`MissingHeader`
    when absent (never an empty string). ``get_all`` gives repeated headers.

    A message from the parser is lazy (:meth:`from_block`): a lookup searches
    the message's bytes for the header line (``bytes.find`` on an ASCII-lowered
    copy, so the first line wins whatever its case) and decodes only that
    value; the full list of headers is parsed only when something iterates it.
    Most events are read for a handful of headers, so most are never parsed.
    """

    __slots__ = ("_first", "_headers", "_low", "_raw")

    def __init__(self, headers: tuple[tuple[str, str], ...]) -> None:
        self._headers: tuple[tuple[str, str], ...] | None = headers
        self._first: dict[str, str] | None = {k.lower(): v for k, v in reversed(headers)}
        self._raw: bytes | None = None
        self._low: bytes | None = None

    @classmethod
    def from_block(cls, block: bytes) -> AmiMessage:
        """A lazy message over one block whose lines all end with CRLF (no bare CR/LF)."""
        msg = cls.__new__(cls)
        msg._headers = None
        msg._first = None
        msg._raw = b"\r\n" + block + b"\r\n"
        msg._low = None
        return msg

    def _parse(self) -> tuple[tuple[str, str], ...]:
        raw = self._raw
        assert raw is not None
        headers = _parse_text(raw[2:-2].decode("utf-8", "replace"))
        self._headers = headers
        self._first = {k.lower(): v for k, v in reversed(headers)}
        return headers

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        headers = self._headers
        return headers if headers is not None else self._parse()

    def _lookup(self) -> dict[str, str]:
        if self._first is None:
            self._parse()
        assert self._first is not None
        return self._first

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        raw = self._raw
        if raw is None or self._first is not None:
            return self._lookup().get(key.lower(), default)
        pattern = _PATTERNS.get(key)
        if pattern is None:
            if not key or not key.isascii() or ":" in key or "\r" in key or "\n" in key:
                return self._lookup().get(key.lower(), default)
            pattern = b"\r\n" + key.lower().encode() + b":"
            if len(_PATTERNS) < _MAX_PATTERNS:
                _PATTERNS[key] = pattern
        low = self._low
        if low is None:
            low = self._low = raw.lower()  # ASCII only: offsets stay those of raw
        i = low.find(pattern)
        if i < 0:
            return default
        start = i + len(pattern)
        if raw[start] == 0x20:  # one space after the colon is the separator
            start += 1
        return raw[start : raw.find(b"\r\n", start)].decode("utf-8", "replace")

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise MissingHeader(key, self)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for key, _ in self.headers:
            if key.lower() not in seen:
                seen.add(key.lower())
                yield key

    def __len__(self) -> int:
        return len(self._lookup())

    @property
    def lowered(self) -> Mapping[str, str]:
        """First value of each header, keyed by the lower-case header name."""
        return self._lookup()

    def get_all(self, key: str) -> tuple[str, ...]:
        k = key.lower()
        return tuple(v for name, v in self.headers if name.lower() == k)

    @property
    def event(self) -> str | None:
        return self.get("Event")

    @property
    def response(self) -> str | None:
        return self.get("Response")

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.headers[:4])
        more = ", ..." if len(self.headers) > 4 else ""
        return f"AmiMessage({shown}{more})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AmiMessage) and self.headers == other.headers

    def __hash__(self) -> int:
        return hash(self.headers)


_PATTERNS: dict[str, bytes] = {}  # header name -> b"\r\n<lower-case name>:"
_MAX_PATTERNS = 4096


def _parse_text(text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for line in text.split("\n"):
        line = line.strip("\r")
        if line:
            key, sep, value = line.partition(":")
            # A line with no colon (old "Response: Follows" body): kept, keyless.
            pairs.append((key, value[1:] if value[:1] == " " else value) if sep else ("", line))
    return tuple(pairs)


def decode_message(block: bytes, limits: FrameLimits = FrameLimits()) -> AmiMessage:
    """Decode one complete message (without its terminating empty line)."""
    if len(block) > limits.max_line:  # only then can one line be too long
        for raw in block.split(_EOL):
            if len(raw) > limits.max_line:
                raise AmiFramingError(f"AMI header line longer than {limits.max_line} bytes")
    crlf = block.count(_EOL)
    if crlf + 1 > limits.max_headers and len(_parse_text(block.decode("utf-8", "replace"))) > (
        limits.max_headers
    ):
        raise AmiFramingError(f"AMI message has more than {limits.max_headers} headers")
    if block.count(b"\n") == crlf and block.count(b"\r") == crlf:
        return AmiMessage.from_block(block)  # what Asterisk sends: lazy
    # Bare CR or LF line ends: parse now. The block is complete, so decoding it
    # whole never splits a character.
    return AmiMessage(_parse_text(block.decode("utf-8", "replace")))


class AmiParser:
    """``feed(bytes)`` then ``next_message()`` until it returns ``None``."""

    __slots__ = (
        "_buf", "_dead", "_expect_banner", "_keep", "_pos", "_scan", "banner", "events", "limits",
        "skipped",
    )

    def __init__(
        self,
        limits: FrameLimits = FrameLimits(),
        expect_banner: bool = True,
        keep_events: Collection[str] | None = None,
    ) -> None:
        self.limits = limits
        self.banner: str | None = None
        self._keep = (
            None if keep_events is None
            else frozenset(name.lower().encode() for name in keep_events)
        )
        self.events = 0  # event blocks read (kept or skipped)
        self.skipped = 0  # unsolicited events dropped on their name
        self._expect_banner = expect_banner
        self._buf = bytearray()
        self._pos = 0  # start of the unparsed bytes in _buf
        self._scan = 0  # where to resume looking for a terminator
        self._dead: AmiFramingError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._dead is not None:
            raise self._dead
        if self._pos and self._pos >= 65536:
            del self._buf[: self._pos]
            self._scan -= self._pos
            self._pos = 0
        self._buf += data

    def _fail(self, text: str) -> AmiFramingError:
        self._dead = AmiFramingError(text)
        return self._dead

    def next_message(self) -> AmiMessage | None:
        if self._dead is not None:
            raise self._dead
        buf = self._buf
        if self._expect_banner and self.banner is None:
            end = buf.find(_EOL, self._pos)
            if end < 0:
                if len(buf) - self._pos > self.limits.max_banner:
                    raise self._fail("no AMI banner line")
                return None
            line = bytes(buf[self._pos : end]).decode("utf-8", "replace")
            if not line.startswith(BANNER_PREFIX):
                raise self._fail(f"not an AMI server: banner {line[:80]!r}")
            self.banner = line
            self._pos = self._scan = end + 2
        while True:
            start = self._pos
            end = buf.find(_EOM, max(self._scan, start))
            if end < 0:
                pending = len(buf) - start
                self._scan = max(start, len(buf) - 3)
                if pending > self.limits.max_message:
                    raise self._fail(f"AMI message longer than {self.limits.max_message} bytes")
                last_eol = buf.rfind(_EOL, start)
                line_start = start if last_eol < 0 else last_eol + 2
                if len(buf) - line_start > self.limits.max_line:
                    raise self._fail(f"AMI header line longer than {self.limits.max_line} bytes")
                if self._pos == len(buf):
                    buf.clear()
                    self._pos = self._scan = 0
                return None
            self._pos = self._scan = end + 4
            if end - start > self.limits.max_message:
                raise self._fail(f"AMI message longer than {self.limits.max_message} bytes")
            event = _EVENT.match(buf, start, end)
            if event is not None:
                self.events += 1
                if self._keep is not None:
                    name = event.group(1).strip().lower()
                    if name not in self._keep and _ACTION_ID.search(buf, start, end) is None:
                        self.skipped += 1
                        continue
            block = bytes(buf[start:end])
            if not block.strip():
                continue
            try:
                return decode_message(block, self.limits)
            except AmiFramingError as exc:
                self._dead = exc
                raise

    def messages(self, data: bytes) -> list[AmiMessage]:
        """Feed ``data`` and return every message now complete."""
        self.feed(data)
        out: list[AmiMessage] = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out
