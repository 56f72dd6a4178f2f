"""An AT modem on a PTY following 3GPP TS 27.005 / 27.007, with the quirks of real modems.

Theory of operation
-------------------
`os.openpty()` gives a master and a slave; the driver opens the slave through a
stable symlink (`link`), as it would open /dev/serial/by-id/... for a USB modem.
One thread owns the master fd: it reads command lines (terminated by CR, V.250),
answers them, and flushes an output buffer when the fd is writable. Tests drive
the network side through thread-safe methods (deliver an SMS, ring, emit a
status report, unplug...), which only queue work for that thread.

After "AT+CMGS=<n>" the modem waits `prompt_delay` seconds, sends "\\r\\n> "
(no line end), then reads hex until Ctrl-Z (send) or ESC (cancel).

Unplug closes both PTY fds and removes the symlink: the driver sees EIO/EOF and
cannot reopen the port. Replug makes a new PTY behind the same symlink and, like
a power-cycled modem, resets the volatile settings (echo back on, +CNMI off,
SIM locked again if it has a PIN); SIM storage survives.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from sms_gateway.encoding import choose_coding, split_text

from .pdu import (
    PduDecodeError,
    ReceivedSubmit,
    build_deliver,
    build_status_report,
    concat_udh,
    parse_submit,
)

MAX_COMMAND_LINE = 1024
STORAGE_SIZE = 30


@dataclass
class _Settings:
    echo: bool = True
    cmee: int = 0
    cmgf: int = 0
    cnmi: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    csms: int = 0
    clip: bool = False
    creg_n: int = 0
    cscs: str = "IRA"


@dataclass
class _Failure:
    result: str
    command: str | None


@dataclass
class ModemEmulator:
    link: Path
    pin: str | None = None
    puk: str = "12345678"
    prompt_delay: float = 0.0
    force_echo: bool = False
    rssi: int = 20
    ber: int = 99
    registration: int = 1
    operator: str = "EmuTel"
    # a fast network: the status report (this TP-ST) follows the +CMGS answer in one write
    auto_status_report: int | None = None
    # +CNMI <ds> values this modem accepts (some only store status reports: {0, 2})
    supported_ds: frozenset[int] = frozenset({0, 1, 2})
    csms: int = 0  # power-on +CSMS service; 1 = phase 2+, +CMT/+CDS must be acknowledged
    ussd_replies: dict[str, tuple[str, int]] = field(default_factory=dict)

    submits: list[ReceivedSubmit] = field(default_factory=list, init=False)
    commands: list[str] = field(default_factory=list, init=False)
    acks: int = field(default=0, init=False)
    # unplug instead of sending the prompt of the N-th +CMGS from now (1 = the next one)
    unplug_at_prompt: int | None = field(default=None, init=False)
    urc_in_next_response: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._settings = _Settings(csms=self.csms)
        self._sim_state = "SIM PIN" if self.pin else "READY"
        self._pin_attempts = 3
        self._storage: dict[int, tuple[str, str, int]] = {}  # index -> (stat, pdu, length)
        self._mr = itertools.count(1)
        self._concat_ref = itertools.count(1)
        self._failures: list[_Failure] = []
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._timer_seq = itertools.count()
        self._master: int | None = None
        self._generation = 0
        self._slave: int | None = None
        self._out = bytearray()
        self._in = bytearray()
        self._pdu_length: int | None = None
        self._cmgs_token: object | None = None
        self._waiting_pdu = False
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ModemEmulator:
        self._plug()
        self._thread = threading.Thread(target=self._run, name="modem-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._close_pty()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> ModemEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)
        self._master, self._slave = master, slave
        self._generation += 1

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self._out.clear()
        self._in.clear()
        self._waiting_pdu = False
        self._pdu_length = self._cmgs_token = None
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()

    # -- control API (any thread) ----------------------------------------------------

    def unplug(self) -> None:
        self._call(self._unplug)

    def replug(self) -> None:
        def go() -> None:
            self._settings = _Settings(csms=self.csms)
            if self.pin:
                self._sim_state = "SIM PIN"
            self._plug()

        self._call(go)

    def unplug_at_prompt_number(self, n: int = 1) -> None:
        """Unplug instead of sending the "> " prompt of the n-th +CMGS from now."""
        with self._lock:
            self.unplug_at_prompt = n

    def inject_urc_in_next_response(self, line: str) -> None:
        """Write `line` between the first information line and the final result code of
        the next answer (what modems without URC buffering do)."""
        with self._lock:
            self.urc_in_next_response = line

    def fail_next(self, result: str = "ERROR", *, command: str | None = None) -> None:
        """Answer the next command (or the next one starting with `command`, e.g.
        "AT+CMGS") with `result` instead of its normal answer."""
        with self._lock:
            self._failures.append(_Failure(result, command.upper() if command else None))

    def set_signal(self, rssi: int, ber: int = 99) -> None:
        with self._lock:
            self.rssi, self.ber = rssi, ber

    def set_registration(self, stat: int) -> None:
        def go() -> None:
            self.registration = stat
            if self._settings.creg_n:
                self._urc(f"+CREG: {stat}")

        self._call(go)

    def ring(self, number: str | None, times: int = 1) -> None:
        def go() -> None:
            for _ in range(times):
                self._urc("RING")
                if self._settings.clip:
                    if number:
                        toa = 145 if number.startswith("+") else 129
                        self._urc(f'+CLIP: "{number}",{toa},,,,0')
                    else:
                        self._urc('+CLIP: "",128,,,,1')

        self._call(go)

    def deliver_sms(
        self,
        sender: str,
        text: str,
        *,
        order: list[int] | None = None,
        ucs2: bool | None = None,
        ref16: bool = False,
        drop: frozenset[int] = frozenset(),
    ) -> list[str]:
        """Deliver an MO SMS (split into parts with concatenation UDH when long), parts sent
        in `order` (0-based indexes), parts in `drop` never sent. Returns the PDUs."""
        use_ucs2 = choose_coding(text) == "ucs2" if ucs2 is None else ucs2
        parts = split_text(text, max_parts=255, coding="ucs2" if use_ucs2 else "gsm7")
        ref = next(self._concat_ref) & (0xFFFF if ref16 else 0xFF)
        pdus = [
            build_deliver(
                sender,
                part,
                ucs2=use_ucs2,
                udh=concat_udh(ref, len(parts), i + 1, ref16) if len(parts) > 1 else b"",
            )
            for i, part in enumerate(parts)
        ]
        sequence = order if order is not None else list(range(len(pdus)))
        if sorted(sequence) != list(range(len(pdus))):
            raise ValueError(f"order {sequence} is not a permutation of {len(pdus)} parts")
        def go() -> None:
            for i in sequence:
                if i not in drop:
                    self._route_deliver(pdus[i])

        self._call(go)
        return pdus

    def status_report(self, reference: int, recipient: str, status: int = 0) -> None:
        self._call(lambda: self._route_status_report(reference, recipient, status))

    def stored(self) -> dict[int, str]:
        with self._lock:
            return {i: pdu for i, (_, pdu, _) in self._storage.items()}

    # -- internals: thread ---------------------------------------------------------------

    def _call(self, fn: Callable[[], object]) -> None:
        self._at(0.0, fn)

    def _at(self, delay: float, fn: Callable[[], object]) -> None:
        with self._lock:
            entry: tuple[float, int, Callable[[], object]] = (
                time.monotonic() + delay, next(self._timer_seq), fn
            )
            heapq.heappush(self._timers, entry)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        registered: int | None = None
        registered_generation = -1
        while not self._stop:
            with self._lock:
                master = self._master
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
                # a new PTY may reuse the old fd number: compare generations, not numbers
                if registered is not None and (
                    registered != master or registered_generation != self._generation
                ):
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        sel.unregister(registered)
                    registered = None
                if master is not None:
                    registered_generation = self._generation
                    if registered is None:
                        sel.register(master, want)
                        registered = master
                    else:
                        sel.modify(master, want)
                timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 1.0
            for key, mask in sel.select(timeout):
                if key.fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                with self._lock:
                    if key.fd != self._master:
                        continue
                    if mask & selectors.EVENT_READ:
                        try:
                            data = os.read(key.fd, 4096)
                        except (BlockingIOError, OSError):
                            data = b""
                        if data:
                            self._receive(data)
                    if mask & selectors.EVENT_WRITE and self._master is not None:
                        self._flush()
            self._run_timers()
        sel.close()

    def _run_timers(self) -> None:
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > time.monotonic():
                    return
                _, _, fn = heapq.heappop(self._timers)
                fn()
                if self._master is not None:
                    self._flush()

    def _flush(self) -> None:
        if self._master is None or not self._out:
            return
        try:
            n = os.write(self._master, self._out)
        except BlockingIOError:
            return
        except OSError:
            self._out.clear()
            return
        del self._out[:n]

    def _write(self, text: str) -> None:
        if self._master is not None:
            self._out += text.encode("latin-1")

    def _unplug(self) -> None:
        self._close_pty()

    # -- command interpreter --------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        for byte in data:
            if self._master is None:
                return
            if self._waiting_pdu:
                if self._settings.echo:
                    self._out.append(byte)
                if byte == 0x1A:
                    self._waiting_pdu = False
                    pdu = self._in.decode("latin-1").strip()
                    self._in.clear()
                    self._finish_cmgs(pdu)
                elif byte == 0x1B:
                    self._waiting_pdu = False
                    self._pdu_length = None
                    self._in.clear()
                    self._write("\r\nOK\r\n")
                elif byte not in (0x0D, 0x0A) and len(self._in) < 1024:
                    self._in.append(byte)
                continue
            if self._settings.echo:
                self._out.append(byte)
            if byte == 0x0D:
                line = self._in.decode("latin-1").strip()
                self._in.clear()
                if line:
                    self._command(line)
            elif byte == 0x0A:
                continue
            elif byte == 0x1B and self._pdu_length is not None:
                # ESC before the (slow) prompt came: the +CMGS is abandoned, no prompt follows
                self._pdu_length = self._cmgs_token = None
                self._in.clear()
                self._write("\r\nOK\r\n")
            elif len(self._in) < MAX_COMMAND_LINE:
                self._in.append(byte)

    def _final(self, result: str) -> None:
        self._write(f"\r\n{result}\r\n")

    def _respond(self, lines: list[str], result: str = "OK") -> None:
        for i, line in enumerate(lines):
            self._write(f"\r\n{line}\r\n")
            if i == 0 and self.urc_in_next_response is not None:
                self._write(f"\r\n{self.urc_in_next_response}\r\n")
                self.urc_in_next_response = None
        if not lines and self.urc_in_next_response is not None:
            self._write(f"\r\n{self.urc_in_next_response}\r\n")
            self.urc_in_next_response = None
        self._final(result)

    def _urc(self, line: str, pdu: str | None = None) -> None:
        self._write(f"\r\n{line}\r\n" + (f"{pdu}\r\n" if pdu is not None else ""))

    def _cme(self, code: int) -> str:
        return f"+CME ERROR: {code}" if self._settings.cmee else "ERROR"

    def _cms(self, code: int) -> str:
        return f"+CMS ERROR: {code}" if self._settings.cmee else "ERROR"

    def _take_failure(self, upper: str) -> str | None:
        for i, failure in enumerate(self._failures):
            if failure.command is None or upper.startswith(failure.command):
                del self._failures[i]
                return failure.result
        return None

    def _command(self, line: str) -> None:
        upper = line.upper()
        self.commands.append("AT+CPIN=<redacted>" if upper.startswith("AT+CPIN=") else line)
        if not upper.startswith("AT"):
            self._final("ERROR")
            return
        if not upper.startswith("AT+CMGS"):
            failure = self._take_failure(upper)
            if failure is not None:
                self._final(failure)
                return
        body = line[2:]
        ubody = body.upper()
        if ubody in ("", "Z"):
            if ubody == "Z":
                self._settings = _Settings(echo=self._settings.echo, csms=self.csms)
            self._final("OK")
        elif ubody in ("E0", "E1", "E"):
            self._settings.echo = ubody == "E1" or self.force_echo
            self._final("OK")
        elif ubody in ("I", "+CGMI", "+GMI"):
            self._respond(["EMULATOR", "Revision: 27.005/27.007"])
        elif ubody in ("+CGMM", "+GMM"):
            self._respond(["PTY-GSM"])
        elif ubody in ("H", "+CHUP"):
            self._final("OK")
        elif ubody.startswith("+"):
            name, _, args = ubody.partition("=")
            query = name.endswith("?")
            self._extended(name.rstrip("?"), query, body.partition("=")[2] if args else None)
        else:
            self._final("ERROR")

    def _setting(self, args: str | None, valid: range) -> int | None:
        try:
            value = int(args or "")
        except ValueError:
            return None
        return value if value in valid else None

    def _extended(self, name: str, query: bool, args: str | None) -> None:
        s = self._settings
        sim_ready = self._sim_state == "READY"
        if name == "+CMEE":
            value = self._setting(args, range(3))
            if query:
                self._respond([f"+CMEE: {s.cmee}"])
            elif value is None:
                self._final("ERROR")
            else:
                s.cmee = value
                self._final("OK")
        elif name == "+CPIN":
            if query:
                self._respond([f"+CPIN: {self._sim_state}"])
            else:
                self._enter_pin(args or "")
        elif name == "+CSQ":
            self._respond([f"+CSQ: {self.rssi},{self.ber}"])
        elif name == "+CREG":
            if query:
                self._respond([f"+CREG: {s.creg_n},{self.registration}"])
            else:
                value = self._setting(args, range(3))
                if value is None:
                    self._final("ERROR")
                else:
                    s.creg_n = value
                    self._final("OK")
        elif name == "+COPS":
            if query:
                if self.registration in (1, 5):
                    self._respond([f'+COPS: 0,0,"{self.operator}"'])
                else:
                    self._respond(["+COPS: 0"])
            else:
                self._final("OK")
        elif name == "+CLIP":
            if query:
                self._respond([f"+CLIP: {int(s.clip)},1"])
            else:
                s.clip = args == "1"
                self._final("OK")
        elif name == "+CSCS":
            if query:
                self._respond([f'+CSCS: "{s.cscs}"'])
            elif args and args.strip('"') in ("GSM", "IRA", "UCS2"):
                s.cscs = args.strip('"')
                self._final("OK")
            else:
                self._final(self._cme(4))
        elif not sim_ready and name in ("+CMGF", "+CNMI", "+CSMS", "+CMGS", "+CMGR", "+CMGL",
                                        "+CMGD", "+CNMA", "+CUSD", "+CPMS"):
            self._final(self._cms(311) if name != "+CUSD" else self._cme(11))
        elif name == "+CMGF":
            if query:
                self._respond([f"+CMGF: {s.cmgf}"])
            else:
                value = self._setting(args, range(2))
                if value is None:
                    self._final("ERROR")
                else:
                    s.cmgf = value
                    self._final("OK")
        elif name == "+CSMS":
            if query:
                self._respond([f"+CSMS: {s.csms},1,1,1"])
            else:
                value = self._setting(args, range(2))
                if value is None:
                    self._final("ERROR")
                else:
                    s.csms = value
                    self._respond(["+CSMS: 1,1,1"])
        elif name == "+CPMS":
            used = len(self._storage)
            self._respond([f'+CPMS: "SM",{used},{STORAGE_SIZE},"SM",{used},{STORAGE_SIZE}'])
        elif name == "+CNMI":
            if query:
                self._respond(["+CNMI: " + ",".join(map(str, s.cnmi))])
                return
            try:
                values = [int(v) if v else 0 for v in (args or "").split(",")]
            except ValueError:
                self._final(self._cms(304))
                return
            values += [0] * (5 - len(values))
            if len(values) > 5 or values[1] > 3 or values[3] not in self.supported_ds:
                self._final(self._cms(303))
                return
            s.cnmi = (values[0], values[1], values[2], values[3], values[4])
            self._final("OK")
        elif name == "+CMGS":
            self._start_cmgs(args)
        elif name == "+CMGR":
            self._cmgr(args)
        elif name == "+CMGL":
            self._cmgl(args)
        elif name == "+CMGD":
            self._cmgd(args)
        elif name == "+CNMA":
            self.acks += 1
            self._final("OK" if s.csms == 1 else self._cms(340))
        elif name == "+CUSD":
            self._cusd(args)
        else:
            self._final(self._cme(4) if s.cmee else "ERROR")

    def _enter_pin(self, args: str) -> None:
        values = [v.strip().strip('"') for v in args.split(",")]
        if self._sim_state == "READY":
            self._final(self._cme(3))
        elif self._sim_state == "SIM PIN" and values[0] == self.pin:
            self._sim_state = "READY"
            self._pin_attempts = 3
            self._final("OK")
            self._at(0.05, lambda: self._urc("+CPIN: READY"))
        elif self._sim_state == "SIM PUK" and values[0] == self.puk and len(values) == 2:
            self.pin = values[1]
            self._sim_state = "READY"
            self._final("OK")
        else:
            self._pin_attempts -= 1
            if self._pin_attempts <= 0:
                self._sim_state = "SIM PUK"
            self._final(self._cme(16))

    # -- SMS ---------------------------------------------------------------------------------

    def _start_cmgs(self, args: str | None) -> None:
        if self._settings.cmgf != 0:
            self._final(self._cms(305))
            return
        length = self._setting(args, range(1, 177))
        if length is None:
            self._final(self._cms(304))
            return
        self._pdu_length = length
        token = self._cmgs_token = object()

        def prompt() -> None:
            if self._cmgs_token is not token:
                return  # cancelled by ESC, or the PTY was replaced meanwhile
            if self.unplug_at_prompt is not None:
                self.unplug_at_prompt -= 1
                if self.unplug_at_prompt <= 0:
                    self.unplug_at_prompt = None
                    self._unplug()
                    return
            if self._master is not None:
                self._write("\r\n> ")
                self._waiting_pdu = True

        if self.prompt_delay:
            self._at(self.prompt_delay, prompt)
        else:
            prompt()

    def _finish_cmgs(self, pdu: str) -> None:
        expected, self._pdu_length = self._pdu_length, None
        failure = self._take_failure("AT+CMGS")
        if failure is not None:
            self._final(failure)
            return
        try:
            sca_octets = int(pdu[:2], 16) + 1
            if len(pdu) // 2 - sca_octets != expected:
                raise PduDecodeError(f"length {expected} does not match the PDU")
            mr = next(self._mr) % 256
            submit = parse_submit(pdu, mr)
        except (PduDecodeError, ValueError):
            self._final(self._cms(304))
            return
        self.submits.append(submit)
        self._respond([f"+CMGS: {mr}"])
        if self.auto_status_report is not None and submit.status_report:
            self._route_status_report(mr, submit.destination, self.auto_status_report)

    def _store(self, stat: str, pdu: str) -> int | None:
        for index in range(1, STORAGE_SIZE + 1):
            if index not in self._storage:
                self._storage[index] = (stat, pdu, len(pdu) // 2 - int(pdu[:2], 16) - 1)
                return index
        return None

    def _route_deliver(self, pdu: str) -> None:
        mode, mt = self._settings.cnmi[0], self._settings.cnmi[1]
        length = len(pdu) // 2 - int(pdu[:2], 16) - 1
        if mode and mt in (2, 3) and self._settings.cmgf == 0:
            self._urc(f"+CMT: ,{length}", pdu)
            return
        index = self._store("REC UNREAD", pdu)
        if index is None:
            return
        if mode and mt == 1:
            self._urc(f'+CMTI: "SM",{index}')

    def _route_status_report(self, reference: int, recipient: str, status: int) -> None:
        pdu, length = build_status_report(reference, recipient, status)
        mode, ds = self._settings.cnmi[0], self._settings.cnmi[3]
        if mode and ds == 1:
            self._urc(f"+CDS: {length}", pdu)
        elif mode and ds == 2:
            index = self._store("REC UNREAD", pdu)
            if index is not None:
                self._urc(f'+CDSI: "SM",{index}')

    _STATS: ClassVar[dict[str, int]] = {
        "REC UNREAD": 0, "REC READ": 1, "STO UNSENT": 2, "STO SENT": 3,
    }

    def _cmgr(self, args: str | None) -> None:
        index = self._setting(args, range(1, STORAGE_SIZE + 1))
        if index is None:
            self._final(self._cms(321))
            return
        entry = self._storage.get(index)
        if entry is None:
            self._respond([])  # an empty slot answers plain OK (27.005 is silent; most do)
            return
        stat, pdu, length = entry
        self._storage[index] = ("REC READ", pdu, length)
        self._respond([f"+CMGR: {self._STATS[stat]},,{length}", pdu])

    def _cmgl(self, args: str | None) -> None:
        wanted = self._setting(args, range(5))
        if wanted is None:
            self._final(self._cms(304))
            return
        lines: list[str] = []
        for index, (stat, pdu, length) in sorted(self._storage.items()):
            if wanted == 4 or self._STATS[stat] == wanted:
                lines += [f"+CMGL: {index},{self._STATS[stat]},,{length}", pdu]
                if stat == "REC UNREAD":
                    self._storage[index] = ("REC READ", pdu, length)
        self._respond(lines)

    def _cmgd(self, args: str | None) -> None:
        index_text, _, flag = (args or "").partition(",")
        index = self._setting(index_text, range(0, STORAGE_SIZE + 1))
        if index is None:
            self._final(self._cms(321))
            return
        if flag.strip() == "4":
            self._storage.clear()
        else:
            self._storage.pop(index, None)
        self._final("OK")

    def _cusd(self, args: str | None) -> None:
        parts = [p.strip() for p in (args or "").split(",")]
        if not parts or parts[0] not in ("0", "1", "2"):
            self._final(self._cme(4))
            return
        if len(parts) < 2:
            self._final("OK")
            return
        code = parts[1].strip('"')
        self._final("OK")
        reply = self.ussd_replies.get(code)
        if reply is None:
            self._at(0.05, lambda: self._urc("+CUSD: 4"))
            return
        text, dcs = reply
        encoded = text.encode("utf-16-be").hex().upper() if dcs == 72 else text
        self._at(0.1, lambda: self._urc(f'+CUSD: 0,"{encoded}",{dcs}'))
