"""One FastAGI session: the typed command API the flows use.

Theory of operation
-------------------
Commands are strictly one at a time (one pending result per connection). Each
command has a deadline; reading stops at the first :class:`CommandResult`.
A ``HANGUP`` line seen at any time marks the session hung up; the result that
follows (``200 result=-1`` or ``511``) then raises :class:`AgiHangup`, as does
any later command, and EOF at any point.

Quirk worked around: Asterisk answers ``STREAM FILE`` of a missing sound file
with ``200 result=-1 endpos=0``, the same result as a hangup mid-playback. On
``result=-1`` without a HANGUP line, the session probes with ``CHANNEL STATUS``:
on a hung-up channel Asterisk first sends ``HANGUP`` and then ``511`` (its AGI
loop reads the dead channel before it reads our next command), on a live channel
a normal result. So a missing file is logged and the flow continues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ivr.agi import (
    AgiEnvironment,
    AgiParser,
    AgiProtocolError,
    CommandResult,
    EnvironmentReceived,
    HangupNotice,
    encode_command,
)

log = logging.getLogger(__name__)

READ_CHUNK = 4096
DTMF_DIGITS = frozenset("0123456789*#ABCD")
ALL_DIGITS = "0123456789*#"


class AgiSessionEnded(Exception):
    """Base of the exceptions that end a session."""


class AgiHangup(AgiSessionEnded):
    """The caller hung up or Asterisk closed the connection."""


class AgiCommandTimeout(AgiSessionEnded):
    """Asterisk did not answer a command in time."""


class AgiCommandError(Exception):
    """Asterisk refused a command (510 unknown command, 520 usage)."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(f"{result.code} {result.text}")
        self.result = result


@dataclass(frozen=True, slots=True)
class SessionLimits:
    command_timeout: float = 10.0  # plain commands
    media_timeout: float = 600.0  # playback, say, exec: bounded by the prompt length
    input_margin: float = 30.0  # added to a GET DATA's own timeouts


async def read_environment(
    reader: asyncio.StreamReader, parser: AgiParser, within: float
) -> AgiEnvironment:
    """Read the ``agi_*`` block; AgiHangup on EOF (also mid-block), TimeoutError."""
    async with asyncio.timeout(within):
        while True:
            event = parser.next_event()
            if isinstance(event, EnvironmentReceived):
                return event.environment
            if event is not None:
                raise AgiProtocolError(f"unexpected {event!r} before the environment")
            data = await reader.read(READ_CHUNK)
            if not data:
                raise AgiHangup("connection closed during the AGI environment")
            parser.receive_data(data)


def _check_escape_digits(digits: str) -> str:
    if not set(digits) <= DTMF_DIGITS:
        raise ValueError(f"not DTMF escape digits: {digits!r}")
    return digits


class AgiSession:
    """Typed commands over one FastAGI connection (see the module docstring)."""

    def __init__(
        self,
        environment: AgiEnvironment,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: AgiParser,
        limits: SessionLimits | None = None,
    ) -> None:
        self.environment = environment
        self._reader = reader
        self._writer = writer
        self._parser = parser
        self.limits = limits or SessionLimits()
        self.hung_up = False
        self.step = "start"  # where the flow is: recorded when the caller hangs up
        self.pending_command: str | None = None  # the command awaiting its result
        self.invalid_inputs = 0  # invalid or missing answers so far (read_digits)
        self.started = time.time()

    # ------------------------------------------------------------------ wire

    async def command(
        self, command: str, *arguments: str | int, limit: float | None = None
    ) -> CommandResult:
        """Send one command and return its result; raise on hangup, timeout, 510/520."""
        result = await self._exchange(command, arguments, limit)
        if result.code == 200 and result.result == "-1" and command != "CHANNEL STATUS":
            if self.hung_up:
                raise AgiHangup(f"caller hung up during {command}")
            await self._exchange("CHANNEL STATUS", (), None)  # raises AgiHangup if gone
            log.warning("AGI %s %s failed (result=-1) on a live channel", command, arguments)
        return result

    async def _exchange(
        self, command: str, arguments: Sequence[str | int], limit: float | None
    ) -> CommandResult:
        if self.hung_up:
            raise AgiHangup(f"caller already hung up; not sending {command}")
        line = encode_command(command, *arguments)
        try:
            self._writer.write(line)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.hung_up = True
            raise AgiHangup(f"connection lost sending {command}") from exc
        seconds = self.limits.command_timeout if limit is None else limit
        self.pending_command = command
        try:
            async with asyncio.timeout(seconds):
                result = await self._read_result()
        except TimeoutError as exc:
            raise AgiCommandTimeout(f"no answer to {command} within {seconds:.1f}s") from exc
        finally:
            self.pending_command = None
        if result.code == 511:
            self.hung_up = True
            raise AgiHangup(f"dead channel: {command} not permitted")
        if result.code != 200:
            raise AgiCommandError(result)
        return result

    async def _read_result(self) -> CommandResult:
        while True:
            event = self._parser.next_event()
            if isinstance(event, CommandResult):
                return event
            if isinstance(event, HangupNotice):
                self.hung_up = True
                continue
            if event is not None:
                raise AgiProtocolError(f"unexpected {event!r} after the environment")
            try:
                data = await self._reader.read(READ_CHUNK)
            except (ConnectionError, OSError) as exc:
                self.hung_up = True
                raise AgiHangup("connection lost") from exc
            if not data:
                self.hung_up = True
                raise AgiHangup("connection closed by Asterisk")
            self._parser.receive_data(data)

    # ------------------------------------------------------------------ API

    async def answer(self) -> None:
        await self.command("ANSWER")

    async def hangup(self) -> None:
        await self.command("HANGUP")

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command("VERBOSE", message, level)

    async def set_variable(self, name: str, value: str) -> None:
        await self.command("SET VARIABLE", name, value)

    async def get_variable(self, name: str) -> str | None:
        """The value, or None when the variable is not set."""
        result = await self.command("GET VARIABLE", name)
        return result.data if result.result == "1" else None

    async def set_language(self, language: str) -> None:
        await self.set_variable("CHANNEL(language)", language)

    async def exec(self, application: str, arguments: str = "", limit: float | None = None) -> int:
        """Run a dialplan application; its return code (-2: no such application)."""
        result = await self.command(
            "EXEC", application, arguments, limit=limit or self.limits.media_timeout
        )
        return result.value

    async def user_event(self, name: str, fields: dict[str, str]) -> None:
        """AMI ``UserEvent`` (``UserEvent: name`` plus the headers)."""
        body = ",".join([name, *(f"{key}: {value}" for key, value in fields.items())])
        await self.exec("UserEvent", body, limit=self.limits.command_timeout)

    async def stream_file(self, name: str, escape_digits: str = "") -> str | None:
        """Play one sound; the escape digit that interrupted it, else None."""
        _check_escape_digits(escape_digits)
        result = await self.command(
            "STREAM FILE", name, escape_digits, limit=self.limits.media_timeout
        )
        return _digit(result)

    async def play(self, names: Sequence[str], escape_digits: str = "") -> str | None:
        """Play sounds in turn, stopping at the first escape digit."""
        for name in names:
            digit = await self.stream_file(name, escape_digits)
            if digit is not None:
                return digit
        return None

    async def say_number(self, number: int, escape_digits: str = "") -> str | None:
        _check_escape_digits(escape_digits)
        result = await self.command(
            "SAY NUMBER", number, escape_digits, limit=self.limits.media_timeout
        )
        return _digit(result)

    async def say_digits(self, digits: str, escape_digits: str = "") -> str | None:
        if not digits.isdigit():
            raise ValueError(f"SAY DIGITS takes digits: {digits!r}")
        _check_escape_digits(escape_digits)
        result = await self.command(
            "SAY DIGITS", digits, escape_digits, limit=self.limits.media_timeout
        )
        return _digit(result)

    async def get_data(
        self, prompt: str, digit_timeout: float, max_digits: int
    ) -> tuple[str, bool]:
        """GET DATA: (digits, timed_out). ``#`` ends input early."""
        if not 1 <= max_digits <= 64:
            raise ValueError("max_digits must be within 1..64")
        limit = (
            digit_timeout * (max_digits + 1) + self.limits.input_margin + self.limits.media_timeout
        )
        result = await self.command(
            "GET DATA", prompt, int(digit_timeout * 1000), max_digits, limit=limit
        )
        return result.result or "", result.data == "timeout"

    async def read_digits(
        self,
        prompts: str | Sequence[str],
        *,
        max_digits: int,
        digit_timeout: float = 5.0,
        retries: int = 2,
        valid: Collection[str] | None = None,
        invalid_prompt: str | None = "pm-invalid-option",
        min_digits: int = 1,
    ) -> str | None:
        """Ask until the caller keys a valid answer; None after ``retries`` retries.

        All prompts but the last play with every digit as escape digit (the caller
        may answer early); the last one is GET DATA's prompt. Valid means
        ``min_digits`` to ``max_digits`` digits (``#`` ends input) and, when
        ``valid`` is given, one of its entries. Invalid or no input plays
        ``invalid_prompt`` between tries.
        """
        names = [prompts] if isinstance(prompts, str) else list(prompts)
        if not names:
            raise ValueError("read_digits needs at least one prompt")
        for attempt in range(retries + 1):
            first = await self.play(names[:-1], ALL_DIGITS)
            if first is None:
                digits, _ = await self.get_data(names[-1], digit_timeout, max_digits)
            elif first == "#":
                digits = ""
            elif max_digits == 1:
                digits = first
            else:
                rest, _ = await self.get_data("", digit_timeout, max_digits - 1)
                digits = first + rest
            if min_digits <= len(digits) <= max_digits and (valid is None or digits in valid):
                return digits
            self.invalid_inputs += 1
            log.info(
                "IVR %s: invalid or no input at %s (attempt %d)",
                self.environment.uniqueid,
                self.step,
                attempt + 1,
            )
            if invalid_prompt and attempt < retries:
                await self.stream_file(invalid_prompt)
        return None


def _digit(result: CommandResult) -> str | None:
    code = result.value
    if code <= 0:
        return None
    if code > 255:
        raise AgiProtocolError(f"digit out of range: {result.text!r}")
    return chr(code)
