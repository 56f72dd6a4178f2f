"""AGI wire codec: the environment block, command encoding and result parsing. No I/O.

Theory of operation
-------------------
A FastAGI connection starts with Asterisk sending the environment: ``agi_*: value``
lines ended by one blank line. After that the script writes one command line and
Asterisk answers with one result line (``200 result=N [(data)] [key=value ...]``),
an error line (``510 ...``, ``511 ...``) or a multi-line usage block (``520-...``
up to a line starting with ``520 ``). When the caller hangs up, Asterisk writes a
bare ``HANGUP`` line, at any moment: between commands or between a command and
its result. From then on the channel is "dead": most commands answer ``511``.

:class:`AgiParser` is fed raw bytes (``receive_data``) and hands out typed events
(``next_event``) in order: one :class:`EnvironmentReceived`, then any number of
:class:`CommandResult` and :class:`HangupNotice`. Lines are split on bytes and
decoded afterwards (UTF-8 with replacement: Asterisk sends whatever the channel
variables hold). Every input is bounded: line length, environment lines and bytes,
usage block lines; exceeding a bound raises :class:`AgiProtocolError`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl

MAX_LINE_BYTES = 8192
MAX_ENV_LINES = 256
MAX_ENV_BYTES = 65536
MAX_USAGE_LINES = 200
MAX_COMMAND_BYTES = 2000  # Asterisk reads commands into a 2048-byte buffer


class AgiProtocolError(Exception):
    """The peer broke the AGI protocol or one of our limits."""


@dataclass(frozen=True, slots=True)
class AgiEnvironment:
    """The ``agi_*`` block. ``values`` keeps every key without its ``agi_`` prefix."""

    values: Mapping[str, str]
    script: str
    query: Mapping[str, str]
    arguments: tuple[str, ...]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    @property
    def channel(self) -> str:
        return self.get("channel")

    @property
    def uniqueid(self) -> str:
        return self.get("uniqueid")

    @property
    def caller_number(self) -> str:
        """The caller's number, or '' when Asterisk reports it as unknown."""
        number = self.get("callerid")
        return "" if number.lower() in ("unknown", "") else number

    @property
    def extension(self) -> str:
        return self.get("extension")

    @property
    def language(self) -> str:
        return self.get("language", "en")


@dataclass(frozen=True, slots=True)
class EnvironmentReceived:
    environment: AgiEnvironment


@dataclass(frozen=True, slots=True)
class HangupNotice:
    """Asterisk's asynchronous ``HANGUP`` line: the caller is gone."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """One answer to one command.

    ``result`` is the text after ``result=`` (``None`` when the line has none, e.g.
    ``510``); ``data`` is the parenthesised part; ``extra`` the trailing
    ``key=value`` pairs (``endpos``); ``usage`` the body of a ``520-`` block.
    """

    code: int
    result: str | None
    data: str | None
    extra: Mapping[str, str]
    text: str
    usage: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def value(self) -> int:
        """``result`` as an integer (``GET DATA`` digits are a string: use ``result``)."""
        if self.result is None:
            raise AgiProtocolError(f"result line has no result=: {self.text!r}")
        try:
            return int(self.result)
        except ValueError as exc:
            raise AgiProtocolError(f"result is not an integer: {self.text!r}") from exc


AgiEvent = EnvironmentReceived | HangupNotice | CommandResult

_RESULT_RE = re.compile(r"^(?P<code>\d{3}) result=(?P<result>\S*)(?P<rest>.*)$", re.DOTALL)
# Greedy data: GET VARIABLE values may themselves contain parentheses.
_DATA_RE = re.compile(r"^ \((?P<data>.*)\)(?P<extra>(?: [A-Za-z_]+=\S*)*)$", re.DOTALL)
_EXTRA_RE = re.compile(r"([A-Za-z_]+)=(\S*)")
_CODE_RE = re.compile(r"^(?P<code>\d{3})(?P<sep>[ -])(?P<text>.*)$", re.DOTALL)


def parse_result_line(line: str) -> CommandResult:
    """Parse one single-line answer (``200 result=...``, ``510 ...``, ``511 ...``)."""
    match = _RESULT_RE.match(line)
    if match:
        code = int(match["code"])
        rest = match["rest"]
        data: str | None = None
        extra_text = rest
        data_match = _DATA_RE.match(rest)
        if data_match:
            data = data_match["data"]
            extra_text = data_match["extra"]
        extra = dict(_EXTRA_RE.findall(extra_text))
        return CommandResult(code, match["result"], data, MappingProxyType(extra), line)
    match = _CODE_RE.match(line)
    if match and match["sep"] == " ":
        return CommandResult(int(match["code"]), None, None, MappingProxyType({}), line)
    raise AgiProtocolError(f"not an AGI result line: {line[:120]!r}")


def build_environment(pairs: Mapping[str, str]) -> AgiEnvironment:
    """Build the environment from ``agi_``-less keys (``network_script``, ``arg_1``...)."""
    raw_script = pairs.get("network_script", "")
    name, _, query_text = raw_script.partition("?")
    query = dict(parse_qsl(query_text, keep_blank_values=True, max_num_fields=50))
    args: list[str] = []
    index = 1
    while f"arg_{index}" in pairs:
        args.append(pairs[f"arg_{index}"])
        index += 1
    return AgiEnvironment(
        values=MappingProxyType(dict(pairs)),
        script=name.strip("/"),
        query=MappingProxyType(query),
        arguments=tuple(args),
    )


@dataclass(slots=True)
class AgiParser:
    """Incremental AGI reader: ``receive_data(bytes)`` then ``next_event()`` until None."""

    _buffer: bytearray = field(default_factory=bytearray)
    _events: deque[AgiEvent] = field(default_factory=deque)
    _env: dict[str, str] | None = field(default_factory=dict)
    _env_lines: int = 0
    _env_bytes: int = 0
    _usage_code: str | None = None
    _usage_lines: list[str] = field(default_factory=list)
    _usage_first: str = ""

    @property
    def in_environment(self) -> bool:
        return self._env is not None

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        while True:
            index = self._buffer.find(b"\n")
            if index < 0:
                if len(self._buffer) > MAX_LINE_BYTES:
                    raise AgiProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
                return
            if index > MAX_LINE_BYTES:
                raise AgiProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
            raw = bytes(self._buffer[:index])
            del self._buffer[: index + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            self._line(raw)

    def next_event(self) -> AgiEvent | None:
        return self._events.popleft() if self._events else None

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        if self._env is not None:
            self._environment_line(self._env, line, len(raw))
        elif self._usage_code is not None:
            self._usage_line(self._usage_code, line)
        elif line == "HANGUP":
            self._events.append(HangupNotice())
        elif line == "":
            return  # stray blank line between results: ignore
        else:
            match = _CODE_RE.match(line)
            if match and match["sep"] == "-":
                self._usage_code = match["code"]
                self._usage_first = line
                self._usage_lines = []
                return
            self._events.append(parse_result_line(line))

    def _environment_line(self, env: dict[str, str], line: str, size: int) -> None:
        if line == "":
            self._env = None
            self._events.append(EnvironmentReceived(build_environment(env)))
            return
        self._env_lines += 1
        self._env_bytes += size
        if self._env_lines > MAX_ENV_LINES or self._env_bytes > MAX_ENV_BYTES:
            raise AgiProtocolError("AGI environment too large")
        key, sep, value = line.partition(":")
        if not sep or not key.startswith("agi_"):
            raise AgiProtocolError(f"not an AGI environment line: {line[:120]!r}")
        env[key[4:]] = value.lstrip(" ")

    def _usage_line(self, code: str, line: str) -> None:
        if line.startswith(code + " "):
            self._usage_code = None
            final = parse_result_line(line)
            self._events.append(
                CommandResult(
                    final.code,
                    None,
                    None,
                    MappingProxyType({}),
                    self._usage_first,
                    tuple(self._usage_lines),
                )
            )
            return
        if line == "HANGUP":
            self._events.append(HangupNotice())
            return
        if len(self._usage_lines) >= MAX_USAGE_LINES:
            raise AgiProtocolError("AGI usage block too long")
        self._usage_lines.append(line)


_NEEDS_QUOTES = re.compile(r'[\s"\\]')


def quote_argument(argument: str) -> str:
    """Quote one argument the way Asterisk's ``parse_args`` reads it back."""
    if "\n" in argument or "\r" in argument or "\0" in argument:
        raise ValueError("AGI arguments cannot contain newlines or NUL")
    if argument and not _NEEDS_QUOTES.search(argument):
        return argument
    escaped = argument.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def encode_command(command: str, *arguments: str | int) -> bytes:
    """``encode_command("STREAM FILE", "hello", "12")`` -> ``b'STREAM FILE hello 12\\n'``.

    ``command`` is the command keyword(s) (never quoted); every argument is quoted
    when needed. Raises ValueError for newlines and for lines Asterisk cannot read.
    """
    if not re.fullmatch(r"[A-Z]+(?: [A-Z]+)*", command):
        raise ValueError(f"not an AGI command keyword: {command!r}")
    parts = [command, *(quote_argument(str(a)) for a in arguments)]
    line = " ".join(parts).encode("utf-8") + b"\n"
    if len(line) > MAX_COMMAND_BYTES:
        raise ValueError(f"AGI command longer than {MAX_COMMAND_BYTES} bytes")
    return line
