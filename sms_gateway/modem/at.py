"""Pure AT response parser (3GPP TS 27.007 / 27.005, V.250 framing). No I/O.

Theory of operation
-------------------
The modem answers a command with `<CR><LF>line<CR><LF>` lines and ends it with
one final result code (OK, ERROR, +CME ERROR: n, +CMS ERROR: n, NO CARRIER...).
Between two commands, and also *between the lines of a command's answer*, it
may emit unsolicited result codes (URCs). The parser is fed raw bytes, splits
them on CR/LF first and decodes each line after (latin-1: lossless; PDU mode
keeps everything ASCII). Each line is classified:

1. echo of the pending command (ATE1 modems, or a modem that ignored ATE0), or
   of the PDU typed after the "> " prompt: dropped;
2. a line whose prefix is the pending command's own response prefix
   (`+CREG: 0,1` answering `AT+CREG?`): an intermediate response line, even if
   the same prefix is also a URC;
3. a known URC prefix: a `Urc` event, now, even mid-response. `+CMT:` and
   `+CDS:` announce one more line (the PDU), which the parser consumes next;
4. a final result code while a command is pending: a `Final` event carrying
   all intermediate lines;
5. anything else while a command is pending: an intermediate line (+CMGR and
   +CMGL PDU lines, `+CSQ: ...`, manufacturer text);
6. anything else when idle: an `Unexpected` event (logged by the driver).

The "> " prompt of +CMGS/+CMGW ends with no CR/LF and may come late: while a
command that expects it is pending, a partial line that starts with ">" is the
prompt. Every line is capped at `max_line` bytes and every answer at
`max_lines` lines; beyond that the parser emits `Overflow` and discards the
rest of the line (the driver fails the pending command).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LINE = 4096
MAX_LINES = 2000

# URCs the parser routes out by prefix. +CREG/+CGREG/+CLIP/+CUSD are URCs unless
# they match the pending command's prefix.
URC_PREFIXES: frozenset[str] = frozenset(
    {"+CMTI", "+CMT", "+CDS", "+CDSI", "+CLIP", "+CUSD", "+CREG", "+CGREG", "+CBM", "+CPIN",
     "+CRING"}
)
URC_WORDS: frozenset[str] = frozenset({"RING"})
URC_WITH_PDU: frozenset[str] = frozenset({"+CMT", "+CDS", "+CBM"})

FINAL_OK = frozenset({"OK", "CONNECT"})
FINAL_ERROR = frozenset({"ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE"})


@dataclass(frozen=True, slots=True)
class Final:
    """A command finished. `ok` is False for ERROR, +CME ERROR, +CMS ERROR..."""

    command: str
    ok: bool
    result: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Prompt:
    """The "> " prompt asking for the PDU of +CMGS/+CMGW."""


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited result code: `name` like "+CMTI" or "RING", `args` the rest."""

    name: str
    args: str
    pdu: str | None = None


@dataclass(frozen=True, slots=True)
class Unexpected:
    """A line that is neither a URC nor part of a pending command's answer."""

    line: str


@dataclass(frozen=True, slots=True)
class Overflow:
    """A line or an answer exceeded the parser's limits; data was discarded."""

    reason: str


AtEvent = Final | Prompt | Urc | Unexpected | Overflow


@dataclass(slots=True)
class _Pending:
    command: str
    prefix: str | None
    expects_prompt: bool
    echoes: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)


def split_prefix(line: str) -> tuple[str, str]:
    """`+CMTI: "SM",3` -> ("+CMTI", '"SM",3'); `RING` -> ("RING", "")."""
    if line.startswith("+") and ":" in line:
        name, _, rest = line.partition(":")
        return name.strip().upper(), rest.strip()
    return line.strip().upper(), ""


def command_prefix(command: str) -> str | None:
    """The response prefix of an extended command: `AT+CREG?` -> "+CREG"."""
    body = command.strip()
    if body[:2].upper() == "AT":
        body = body[2:]
    if not body.startswith("+"):
        return None
    end = 1
    while end < len(body) and (body[end].isalnum() or body[end] in "_"):
        end += 1
    return body[:end].upper()


class AtParser:
    """Feed bytes with `feed()`; collect typed events with `events()`."""

    def __init__(self, *, max_line: int = MAX_LINE, max_lines: int = MAX_LINES) -> None:
        self._max_line = max_line
        self._max_lines = max_lines
        self._buf = bytearray()
        self._discarding = False
        self._pending: _Pending | None = None
        self._pdu_for: Urc | None = None
        self._swallow_space = False
        self._out: list[AtEvent] = []

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def begin(self, command: str, *, expects_prompt: bool = False) -> None:
        """Declare the command just written (without CR). One at a time."""
        if self._pending is not None:
            raise RuntimeError(f"command {self._pending.command!r} still pending")
        self._pending = _Pending(
            command=command,
            prefix=command_prefix(command),
            expects_prompt=expects_prompt,
            echoes={command.strip().upper()},
        )

    def add_echo(self, text: str) -> None:
        """Text typed after the prompt (the PDU) that an echoing modem will repeat."""
        if self._pending is not None:
            self._pending.echoes.add(text.strip().upper())
            self._pending.expects_prompt = False

    def abandon(self) -> None:
        """Forget the pending command (timeout, disconnect)."""
        self._pending = None

    def events(self) -> list[AtEvent]:
        out, self._out = self._out, []
        return out

    def feed(self, data: bytes) -> None:
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._discarding:
                    self._discarding = False
                    self._buf.clear()
                elif self._buf:
                    raw = bytes(self._buf)
                    self._buf.clear()
                    self._line(raw)
                continue
            if self._discarding:
                continue
            if self._swallow_space:
                self._swallow_space = False
                if byte == 0x20:
                    continue
            if byte == 0x1A or byte == 0x00:
                continue
            self._buf.append(byte)
            if (
                byte == 0x3E
                and len(self._buf) == 1
                and self._pending is not None
                and self._pending.expects_prompt
                and self._pdu_for is None
            ):
                self._buf.clear()
                self._pending.expects_prompt = False
                self._swallow_space = True
                self._out.append(Prompt())
                continue
            if len(self._buf) > self._max_line:
                self._buf.clear()
                self._discarding = True
                self._out.append(Overflow(f"line longer than {self._max_line} bytes"))

    def _line(self, raw: bytes) -> None:
        line = raw.decode("latin-1").strip()
        if not line:
            return
        if self._pdu_for is not None:
            urc, self._pdu_for = self._pdu_for, None
            self._out.append(Urc(urc.name, urc.args, line))
            return
        pending = self._pending
        upper = line.upper()
        if pending is not None and upper in pending.echoes:
            return
        name, args = split_prefix(line)
        if pending is not None and pending.prefix is not None and name == pending.prefix:
            self._intermediate(pending, line)
            return
        if name in URC_WORDS or (line.startswith("+") and name in URC_PREFIXES):
            urc = Urc(name, args)
            if name in URC_WITH_PDU:
                self._pdu_for = urc
            else:
                self._out.append(urc)
            return
        if pending is None:
            self._out.append(Unexpected(line))
            return
        if upper in FINAL_OK:
            self._finish(pending, True, line)
        elif upper in FINAL_ERROR or name in ("+CME ERROR", "+CMS ERROR"):
            self._finish(pending, False, line)
        else:
            self._intermediate(pending, line)

    def _intermediate(self, pending: _Pending, line: str) -> None:
        if len(pending.lines) >= self._max_lines:
            self._out.append(Overflow(f"more than {self._max_lines} lines in one answer"))
            return
        pending.lines.append(line)

    def _finish(self, pending: _Pending, ok: bool, result: str) -> None:
        self._pending = None
        self._out.append(Final(pending.command, ok, result, tuple(pending.lines)))
