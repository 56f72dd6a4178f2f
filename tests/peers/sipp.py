"""SIPp as a real SIP peer: customers calling the lab PBX trunk, agent registrations.

A ``SippCaller`` renders tests/sipp/caller.xml for one call (caller ID number
and UTF-8 display name, in-call steps: pauses and RFC 2833 DTMF played from
the pcaps of the sip-tester package, then hang up after N seconds or wait for
the PBX's BYE), runs ``sipp`` in the background and is stopped by its PID.
``result()`` gives the exit status and the call counters from SIPp's stat file.

SIPp exit codes: 0 all calls succeeded, 1 at least one failed, 97 stopped by
an internal command, 99 ended before any call, 255/-1 fatal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cti.lab import LabPbx
from tests.peers.asterisk import ARTIFACTS, failed_key
from tests.peers.ports import free_port

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "sipp"
DTMF_PCAP_DIR = Path("/usr/share/sip-tester")
DTMF_PCAP_NAMES = {**{str(d): f"dtmf_2833_{d}.pcap" for d in range(10)},
                   "*": "dtmf_2833_star.pcap", "#": "dtmf_2833_pound.pcap"}
MAX_NAME_LENGTH = 80
NUMBER_RE = re.compile(r"^[+0-9A-Za-z*#._-]{1,32}$")
# Characters that would break the SIP quoted-string or SIPp's [keyword] syntax.
FORBIDDEN_NAME_CHARS = set('"\\[]<>') | {chr(c) for c in range(32)} | {"\x7f"}


class SippError(RuntimeError):
    """SIPp is missing, got bad input, or did not finish in time."""


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Dtmf:
    """RFC 2833 digits played one after another, ``gap`` seconds apart."""

    digits: str
    gap: float = 0.6


Step = Pause | Dtmf


@dataclass(frozen=True, slots=True)
class SippResult:
    returncode: int
    successful_calls: int
    failed_calls: int
    errors: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed_calls == 0 and self.successful_calls > 0


def find_sipp() -> str:
    found = shutil.which("sipp")
    if found is None:
        raise SippError("the sipp binary is missing: install the Debian package sip-tester")
    return found


def _check_caller(number: str, name: str) -> None:
    if not NUMBER_RE.fullmatch(number):
        raise SippError(f"caller number not usable in a SIP URI: {number!r}")
    if len(name) > MAX_NAME_LENGTH or FORBIDDEN_NAME_CHARS.intersection(name):
        raise SippError(f"caller name must be <= {MAX_NAME_LENGTH} chars without \"\\[]<> "
                        f"or control characters: {name!r}")


def _render_steps(steps: Sequence[Step]) -> str:
    """Steps as scenario XML; every pause also accepts the PBX's BYE.

    Theory of operation: SIPp aborts a call on a BYE that arrives during a
    plain <pause>, so each pause is a <recv request="BYE"> with a timeout: on
    timeout it continues at the next label, on a BYE it jumps to label 3, the
    200 OK that ends the call normally.
    """
    parts: list[str] = []
    label = 100

    def pause(seconds: float) -> None:
        nonlocal label
        ms = round(seconds * 1000)
        if ms <= 0:
            return
        label += 1
        parts.append(f'  <recv request="BYE" timeout="{ms}" ontimeout="{label}" next="3"/>')
        parts.append(f'  <label id="{label}"/>')

    for step in steps:
        if isinstance(step, Pause):
            pause(step.seconds)
            continue
        for digit in step.digits:
            if digit not in DTMF_PCAP_NAMES:
                raise SippError(f"no RFC 2833 pcap for DTMF digit {digit!r}")
            pcap = DTMF_PCAP_DIR / DTMF_PCAP_NAMES[digit]
            parts.append(f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>')
            pause(step.gap)
    return "\n".join(parts)


class SippProcess:
    """One SIPp run in the background, stoppable by PID."""

    def __init__(self, name: str, workdir: Path, args: list[str], timeout: float) -> None:
        self.name = name
        self.workdir = workdir
        self.stat_file = workdir / f"{name}.csv"
        self.error_file = workdir / f"{name}_errors.log"
        self.message_file = workdir / f"{name}_messages.log"
        self.timeout = timeout
        self._args = [
            *args,
            "-nostdin", "-m", "1", "-l", "1",
            "-timeout", f"{max(1, round(timeout))}s", "-timeout_error",
            "-trace_stat", "-stf", str(self.stat_file), "-fd", "1",
            "-trace_err", "-error_file", str(self.error_file),
            "-trace_msg", "-message_file", str(self.message_file),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        with (self.workdir / f"{self.name}_output.log").open("ab") as out:
            self._process = subprocess.Popen(
                [find_sipp(), *self._args], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
            )

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        if self._process is None:
            raise SippError(f"{self.name} was never started")
        limit = self.timeout + 15.0 if timeout is None else timeout
        try:
            self._process.wait(limit)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise SippError(f"{self.name} still running after {limit:.0f} s") from exc
        return self.result()

    async def wait_async(self, within: float | None = None) -> SippResult:
        """``wait()`` off the event loop; ``within`` seconds (default: timeout + 15)."""
        return await asyncio.to_thread(self.wait, within)

    def stop(self) -> SippResult | None:
        """SIGTERM, then SIGKILL; the result of the run, if it was started."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(5.0)
            except subprocess.TimeoutExpired:
                os.kill(self._process.pid, signal.SIGKILL)
                self._process.wait(5.0)
        return self.result()

    def result(self) -> SippResult:
        if self._process is None or self._process.returncode is None:
            raise SippError(f"{self.name} has not finished")
        successful, failed = self._counters()
        errors = ""
        if self.error_file.exists():
            errors = self.error_file.read_text(encoding="utf-8", errors="replace")[-4000:]
        return SippResult(self._process.returncode, successful, failed, errors)

    def _counters(self) -> tuple[int, int]:
        if not self.stat_file.exists():
            return 0, 0
        with self.stat_file.open(encoding="utf-8", errors="replace", newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
        if len(rows) < 2:
            return 0, 0
        header, last = rows[0], rows[-1]
        values = dict(zip(header, last, strict=False))
        return int(values.get("SuccessfulCall(C)", 0)), int(values.get("FailedCall(C)", 0))


def free_media_port() -> int:
    """An even UDP port with the next three free too (SIPp binds RTP, RTCP and video)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM, "127.0.0.1") & ~1
        if port < 1024:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for offset in range(4):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise SippError("no free RTP port block on loopback")


def sipp_target(pbx: LabPbx) -> str:
    return f"{pbx.host}:{pbx.sip_port}"


def caller_call(
    pbx: LabPbx,
    workdir: Path,
    *,
    number: str = "100",
    caller_number: str = "+79161234567",
    caller_name: str = "Иван Петров",
    steps: Sequence[Step] = (),
    hangup_after: float | None = 30.0,
    timeout: float = 120.0,
    name: str = "caller",
) -> SippProcess:
    """A started SIPp caller dialling ``number`` on the PBX trunk.

    After ACK it runs ``steps``, then waits for the PBX's BYE for at most
    ``hangup_after`` seconds (``None``: until ``timeout``) and hangs up itself.
    """
    _check_caller(caller_number, caller_name)
    if not NUMBER_RE.fullmatch(number):
        raise SippError(f"dialled number not usable in a SIP URI: {number!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    text = (SCENARIO_DIR / "caller.xml").read_text(encoding="utf-8")
    bye_timeout = ""
    if hangup_after is not None:
        bye_timeout = f'timeout="{round(hangup_after * 1000)}" ontimeout="1"'
    text = (text.replace("@@CALLER_NAME@@", caller_name)
                .replace("@@CALLER_NUMBER@@", caller_number)
                .replace("<!-- @@IN_CALL_STEPS@@ -->", _render_steps(steps))
                .replace("@@BYE_TIMEOUT@@", bye_timeout))
    scenario = workdir / f"{name}.xml"
    scenario.write_text(text, encoding="utf-8")
    args = [sipp_target(pbx), "-sf", str(scenario), "-s", number,
            "-i", "127.0.0.1", "-p", str(free_port(host="127.0.0.1")),
            "-mp", str(free_media_port()), "-aa"]
    proc = SippProcess(name, workdir, args, timeout)
    proc.start()
    return proc


def register_agent(
    pbx: LabPbx,
    workdir: Path,
    agent: str,
    *,
    local_port: int | None = None,
    hold: float | None = 0.5,
    timeout: float = 30.0,
    name: str | None = None,
    password: str | None = None,
) -> SippProcess:
    """A started SIPp REGISTER for lab agent ``agent`` (digest auth).

    With ``hold`` seconds it unregisters after that time; with ``None`` it
    leaves the contact registered at ``local_port`` (for a UAS run later).
    ``password`` overrides the agent's secret (to test a refused REGISTER).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    text = (SCENARIO_DIR / "register.xml").read_text(encoding="utf-8")
    if hold is None:
        text = text[: text.index("<!-- @@UNREGISTER_BELOW@@ -->")] + "</scenario>\n"
    else:
        text = text.replace("@@HOLD_MS@@", str(round(hold * 1000)))
    label = name or f"register-{agent}"
    scenario = workdir / f"{label}.xml"
    scenario.write_text(text, encoding="utf-8")
    args = [sipp_target(pbx), "-sf", str(scenario), "-s", agent,
            "-au", agent, "-ap", pbx.agents[agent] if password is None else password,
            "-i", "127.0.0.1", "-p", str(local_port or free_port(host="127.0.0.1"))]
    proc = SippProcess(label, workdir, args, timeout)
    proc.start()
    return proc


def agent_answering(
    pbx: LabPbx, workdir: Path, agent: str, *, ring: float = 1.0, timeout: float = 120.0
) -> SippProcess:
    """A SIPp agent phone: registers ``agent``, answers one call, waits for BYE."""
    port = free_port(host="127.0.0.1")
    reg = register_agent(pbx, workdir, agent, local_port=port, hold=None,
                         name=f"register-{agent}-uas")
    result = reg.wait(30.0)
    if not result.ok:
        raise SippError(f"SIPp could not register {agent}: rc {result.returncode} {result.errors}")
    text = (SCENARIO_DIR / "agent_uas.xml").read_text(encoding="utf-8")
    scenario = workdir / f"agent-{agent}.xml"
    scenario.write_text(text.replace("@@RING_MS@@", str(round(ring * 1000))), encoding="utf-8")
    args = [sipp_target(pbx), "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
            "-mp", str(free_media_port()), "-aa"]
    proc = SippProcess(f"agent-{agent}", workdir, args, timeout)
    proc.start()
    return proc


SippFactory = Callable[..., SippProcess]


def _fail_on_sipp_error(make: Callable[..., SippProcess]) -> SippFactory:
    def wrapped(*args: Any, **kwargs: Any) -> SippProcess:
        try:
            return make(*args, **kwargs)
        except SippError as exc:
            pytest.fail(str(exc), pytrace=False)
    return wrapped


@pytest.fixture
def sipp_caller(
    lab_pbx: LabPbx, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SippFactory]:
    """``sipp_caller(number=..., caller_number=..., caller_name=..., steps=...,
    hangup_after=...)`` starts a SIPp caller against the session lab PBX; every
    caller still running at teardown is stopped by PID."""
    started: list[SippProcess] = []
    counter = 0

    def factory(**kwargs: Any) -> SippProcess:
        nonlocal counter
        counter += 1
        kwargs.setdefault("name", f"caller{counter}")
        pbx = kwargs.pop("pbx", lab_pbx)
        proc = caller_call(pbx, tmp_path / "sipp", **kwargs)
        started.append(proc)
        return proc

    try:
        yield _fail_on_sipp_error(factory)
    finally:
        for proc in started:
            proc.stop()
        if started and request.node.stash.get(failed_key, False):
            label = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            shutil.copytree(tmp_path / "sipp", ARTIFACTS / f"sipp-{label}", dirs_exist_ok=True)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
