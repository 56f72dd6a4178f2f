"""The lab PBX: a private Asterisk rendered from asterisk-conf/ into a run dir.

``LabPbx`` renders the Jinja2 templates of asterisk-conf/ into ``run_dir/etc``,
starts ``asterisk -C run_dir/etc/asterisk.conf -f`` as a child process, waits
until AMI reports FullyBooted and stops it by PID. Every directory Asterisk
writes lives under the run dir, so several instances run side by side on
different ports. ``cti lab start|stop|status`` drives it from the shell; the
state file ``run_dir/lab.json`` lets ``stop``/``status`` find the PID again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "asterisk-conf"
SYSTEM_DATA_DIR = Path("/usr/share/asterisk")
SYSTEM_MODULE_DIR = Path("/usr/lib/asterisk/modules")
STATE_FILE = "lab.json"
DEFAULT_RUN_DIR = Path("var/lab")
# AF_UNIX paths are limited to 108 bytes on Linux (sun_path), NUL included.
MAX_CTL_PATH = 107
MAX_AMI_MESSAGE = 64 * 1024
# Classes the CTI needs; asterisk-conf/README.md explains each one.
AMI_READ = "system,call,agent,user,dtmf"
AMI_WRITE = "call,originate,agent,user,reporting"
AMI_EVENTFILTERS = ("!Event: VarSet", "!Event: Newexten")


class LabPbxError(RuntimeError):
    """The lab PBX could not be rendered, started or stopped."""


class PortTaken(LabPbxError):
    """Another process holds a port Asterisk was configured to bind."""

    def __init__(self, kind: str, port: int) -> None:
        super().__init__(f"{kind} port {port} is held by another process")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class LabAgent:
    name: str
    secret: str
    exten: str
    display_name: str


@dataclass(frozen=True, slots=True)
class LabQueue:
    """One queue. ``None`` settings take the shared defaults (``queue_*`` parameters)."""

    name: str
    number: str
    members: tuple[str, ...]
    strategy: str | None = None
    timeout: int | None = None
    retry: int | None = None
    wrapuptime: int | None = None
    servicelevel: int | None = None
    weight: int | None = None
    maxlen: int | None = None
    announce_frequency: int | None = None
    periodic_announce_frequency: int | None = None
    # Keys the waiting caller is offered: "1" SMS / web chat, "2" callback ("" = none).
    offers: str = "12"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` at the time of the call."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
        except OSError:
            continue
        return port
    raise LabPbxError(f"no free port on {host}")


def find_asterisk() -> str:
    found = shutil.which("asterisk") or shutil.which("asterisk", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise LabPbxError(
            "the asterisk binary is missing: install Asterisk 16+ (package 'asterisk', "
            "see README.md) so that /usr/sbin/asterisk exists"
        )
    return found


def render_templates(
    params: Mapping[str, object], target_dir: Path, template_dir: Path = TEMPLATE_DIR
) -> list[Path]:
    """Render every ``*.conf.j2`` of ``template_dir`` into ``target_dir``.

    StrictUndefined turns a missing parameter into an error; Asterisk's own
    ``${VAR}`` syntax is plain text to Jinja2 and passes through untouched.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    target_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for template_path in sorted(template_dir.glob("*.conf.j2")):
        try:
            text = env.get_template(template_path.name).render(**params)
        except jinja2.TemplateError as exc:
            raise LabPbxError(f"cannot render {template_path.name}: {exc}") from exc
        out = target_dir / template_path.name.removesuffix(".j2")
        out.write_text(text, encoding="utf-8")
        written.append(out)
    return written


def default_agents(count: int) -> dict[str, str]:
    return {f"agent{i}": secrets.token_urlsafe(9) for i in range(1, count + 1)}


def default_queues(agent_names: Sequence[str]) -> tuple[LabQueue, ...]:
    """support (100) gets the first half of the agents, sales (200) the rest."""
    names = list(agent_names)
    half = max(1, (len(names) + 1) // 2)
    support = tuple(names[:half])
    sales = tuple(names[half:]) or support
    return (LabQueue("support", "100", support), LabQueue("sales", "200", sales))


def write_moh_tone(path: Path, seconds: float = 4.0) -> None:
    """A quiet two-tone chime as 8 kHz signed-linear audio for music on hold."""
    if path.exists():
        return
    rate = 8000
    frames = bytearray()
    for n in range(int(rate * seconds)):
        t = n / rate
        envelope = math.exp(-3.0 * (t % 1.0))
        sample = 2500.0 * envelope * (math.sin(2 * math.pi * 523.25 * t)
                                       + math.sin(2 * math.pi * 659.25 * t))
        frames += struct.pack("<h", int(sample))
    path.write_bytes(bytes(frames))


def _split_ami(buffer: bytearray) -> list[dict[str, str]]:
    """Pop complete AMI messages (split on bytes first, then decode)."""
    messages: list[dict[str, str]] = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_AMI_MESSAGE:
                raise LabPbxError("AMI message larger than 64 KiB")
            return messages
        raw = bytes(buffer[:end])
        del buffer[: end + 4]
        fields: dict[str, str] = {}
        for line in raw.decode("utf-8", errors="replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        messages.append(fields)


class LabPbx:
    """A private Asterisk instance for the demo and the tests."""

    def __init__(
        self,
        run_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        sip_port: int | None = None,
        ami_port: int | None = None,
        ami_user: str = "cti",
        ami_secret: str | None = None,
        agi_host: str = "127.0.0.1",
        agi_port: int | None = None,
        carrier_host: str = "127.0.0.1",
        carrier_port: int | None = None,
        agents: int | Mapping[str, str] = 4,
        queues: Sequence[LabQueue] | None = None,
        queue_strategy: str = "linear",
        ami_read: str = AMI_READ,
        ami_write: str = AMI_WRITE,
        ami_eventfilters: Sequence[str] = AMI_EVENTFILTERS,
        rtp_ports: tuple[int, int] = (20000, 29999),
        verbose: int = 3,
        boot_timeout: float = 60.0,
        asterisk_binary: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.host = host
        self.sip_port = sip_port or free_port(host)
        self.ami_port = ami_port or free_port(host)
        # Ports picked here may be grabbed by another process before Asterisk
        # binds them; start() then picks new ones, but only once, before the
        # first successful boot (restart tests need the same ports).
        self._auto_ports = {"SIP": sip_port is None, "AMI": ami_port is None}
        self.ami_user = ami_user
        self.ami_secret = ami_secret or secrets.token_urlsafe(12)
        self.agi_host = agi_host
        self.agi_port = agi_port or free_port(agi_host)
        self.carrier_host = carrier_host
        self.carrier_port = carrier_port or free_port(carrier_host)
        self.agents: dict[str, str] = (
            default_agents(agents) if isinstance(agents, int) else dict(agents)
        )
        self.queues = tuple(queues) if queues is not None else default_queues(list(self.agents))
        self.queue_strategy = queue_strategy
        self.ami_read = ami_read
        self.ami_write = ami_write
        self.ami_eventfilters = tuple(ami_eventfilters)
        self.rtp_ports = rtp_ports
        self.verbose = verbose
        self.boot_timeout = boot_timeout
        self.asterisk_binary = asterisk_binary
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------- paths
    @property
    def etc_dir(self) -> Path:
        return self.run_dir / "etc"

    @property
    def config_file(self) -> Path:
        return self.etc_dir / "asterisk.conf"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "log"

    @property
    def messages_log(self) -> Path:
        return self.log_dir / "messages"

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def ami_url(self) -> str:
        return f"ami://{self.ami_user}:{self.ami_secret}@{self.host}:{self.ami_port}"

    def agent_list(self) -> list[LabAgent]:
        return [
            LabAgent(name, secret, str(1000 + index), f"Agent {index}")
            for index, (name, secret) in enumerate(self.agents.items(), start=1)
        ]

    def agent_exten(self, name: str) -> str:
        for agent in self.agent_list():
            if agent.name == name:
                return agent.exten
        raise KeyError(name)

    # ------------------------------------------------------------ rendering
    def template_params(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "module_dir": str(SYSTEM_MODULE_DIR),
            "moh_dir": str(self.run_dir / "moh"),
            "verbose": self.verbose,
            "language": "en",
            "tone_country": "us",
            "bind_address": self.host,
            "sip_port": self.sip_port,
            "trunk_match": ["127.0.0.1"],
            "carrier_host": self.carrier_host,
            "carrier_port": self.carrier_port,
            "carrier_registration": None,
            "agents": self.agent_list(),
            "queues": list(self.queues),
            "default_queue": self.queues[0].name,
            "queue_strategy": self.queue_strategy,
            "queue_timeout": 15,
            "queue_retry": 2,
            "announce_frequency": 30,
            "periodic_announce_frequency": 45,
            "queue_wrapuptime": 0,
            "queue_servicelevel": 20,
            "ami_port": self.ami_port,
            "ami_user": self.ami_user,
            "ami_secret": self.ami_secret,
            "ami_permit": ["127.0.0.1/255.255.255.255"],
            "ami_read": self.ami_read,
            "ami_write": self.ami_write,
            "ami_eventfilters": list(self.ami_eventfilters),
            "ami_writetimeout": 1000,
            "agi_host": self.agi_host,
            "agi_port": self.agi_port,
            "rtp_start": self.rtp_ports[0],
            "rtp_end": self.rtp_ports[1],
        }

    def render(self) -> None:
        """Render the configuration and lay out the run dir (idempotent)."""
        ctl = self.run_dir / "run" / "asterisk.ctl"
        if len(str(ctl).encode()) > MAX_CTL_PATH:
            raise LabPbxError(f"run dir too long for Asterisk's control socket: {ctl}")
        for sub in ("etc", "lib", "data", "agi-bin", "spool", "run", "log", "log/cdr-csv", "moh"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        for name in ("sounds", "documentation"):
            link = self.run_dir / "data" / name
            if not link.is_symlink() and not link.exists():
                link.symlink_to(SYSTEM_DATA_DIR / name)
        write_moh_tone(self.run_dir / "moh" / "lab-chime.sln")
        self.etc_dir.chmod(0o700)  # the rendered files hold the AMI and SIP secrets
        render_templates(self.template_params(), self.etc_dir)

    # -------------------------------------------------------------- process
    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self.pid is not None and _pid_is_our_asterisk(self.pid, self.config_file)

    def start(self) -> None:
        """Render, start Asterisk and return once AMI reports FullyBooted."""
        if self.is_running():
            raise LabPbxError(f"lab PBX in {self.run_dir} is already running (pid {self.pid})")
        binary = self.asterisk_binary or find_asterisk()
        for attempt in range(1, 4):
            self.render()
            self._spawn(binary)
            booted = False
            try:
                self._wait_fully_booted(time.monotonic() + self.boot_timeout)
                booted = True
            except PortTaken as exc:
                if attempt == 3 or not self._auto_ports[exc.kind]:
                    raise
            finally:
                if not booted:
                    self.stop()
            if booted:
                break
            self.sip_port = free_port(self.host) if self._auto_ports["SIP"] else self.sip_port
            self.ami_port = free_port(self.host) if self._auto_ports["AMI"] else self.ami_port
        self._auto_ports = {"SIP": False, "AMI": False}
        self.save_state()

    def _spawn(self, binary: str) -> None:
        with self.console_log.open("ab") as console:
            try:
                self._process = subprocess.Popen(
                    [binary, "-C", str(self.config_file), "-f", "-n"],
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.run_dir,
                )
            except OSError as exc:
                raise LabPbxError(f"cannot run {binary}: {exc}") from exc
        self.pid = self._process.pid

    def _wait_fully_booted(self, deadline: float) -> None:
        """Log in to AMI once our Asterisk listens on the AMI port, then check SIP.

        Ownership is read from /proc (the listening socket's inode among the
        process's descriptors) so that a port grabbed by someone else is never
        mistaken for ours, nor is another Asterisk's AMI logged into.
        """
        last_error = "AMI never answered"
        spawned = time.monotonic()
        while self.pid is not None and time.monotonic() < deadline:
            if not self.is_running():
                raise LabPbxError(
                    f"asterisk exited during boot (rc {self._returncode()}):\n{self.log_tail()}"
                )
            ours = _bound_ports(self.pid, "tcp", listening=True)
            if self.ami_port not in ours:
                if (time.monotonic() - spawned > 5.0
                        and self.ami_port in _bound_ports(None, "tcp", listening=True)):
                    raise PortTaken("AMI", self.ami_port)
                time.sleep(0.05)
                continue
            try:
                if self._ami_fully_booted(deadline):
                    if self.sip_port not in _bound_ports(self.pid, "udp", listening=False):
                        raise PortTaken("SIP", self.sip_port)
                    return
                last_error = "AMI login succeeded but FullyBooted did not arrive"
            except OSError as exc:
                last_error = f"AMI at {self.host}:{self.ami_port}: {exc}"
            time.sleep(0.1)
        raise LabPbxError(
            f"asterisk did not report FullyBooted within {self.boot_timeout:.0f} s "
            f"({last_error}):\n{self.log_tail()}"
        )

    def _ami_fully_booted(self, deadline: float) -> bool:
        """Log in to AMI and wait for FullyBooted (sent on login once booted)."""
        with socket.create_connection((self.host, self.ami_port), timeout=2.0) as sock:
            buffer = bytearray()
            login = (
                f"Action: Login\r\nActionID: lab-boot\r\nUsername: {self.ami_user}\r\n"
                f"Secret: {self.ami_secret}\r\nEvents: system\r\n\r\n"
            )
            sock.sendall(login.encode())
            banner_seen = False
            while time.monotonic() < deadline:
                sock.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return False
                buffer += chunk
                if not banner_seen:
                    eol = buffer.find(b"\r\n")
                    if eol < 0:
                        continue
                    del buffer[: eol + 2]
                    banner_seen = True
                for message in _split_ami(buffer):
                    if message.get("Response") == "Error":
                        raise LabPbxError(f"AMI login refused: {message.get('Message', '')}")
                    if message.get("Event") == "FullyBooted":
                        with contextlib.suppress(OSError):
                            sock.sendall(b"Action: Logoff\r\n\r\n")
                        return True
        return False

    def _returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self._signal_and_wait(signal.SIGTERM, timeout)
        if self.is_running():
            self._signal_and_wait(signal.SIGKILL, 10.0)
        self._forget_process()

    def kill9(self) -> None:
        """Kill Asterisk abruptly (SIGKILL): ports and run dir stay for start()."""
        self._signal_and_wait(signal.SIGKILL, 10.0)
        self._forget_process()

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        if self.pid is None or not self.is_running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_running():
            time.sleep(0.05)

    def _forget_process(self) -> None:
        if self.is_running():
            raise LabPbxError(f"asterisk pid {self.pid} survived SIGKILL")
        self.pid = None
        self._process = None
        if self.state_file.exists():
            self.save_state()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def cli(self, command: str, timeout: float = 30.0) -> str:
        """Run one CLI command through the control socket (``asterisk -rx``)."""
        binary = self.asterisk_binary or find_asterisk()
        try:
            result = subprocess.run(
                [binary, "-C", str(self.config_file), "-rx", command],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LabPbxError(f"asterisk -rx {command!r}: {exc}") from exc
        if result.returncode != 0:
            raise LabPbxError(
                f"asterisk -rx {command!r} failed (rc {result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        parts: list[str] = []
        for path in (self.console_log, self.messages_log):
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                parts.append(f"--- {path}\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(no Asterisk log written)"

    # ----------------------------------------------------------------- state
    def save_state(self) -> None:
        state = {
            "pid": self.pid,
            "host": self.host,
            "sip_port": self.sip_port,
            "ami_port": self.ami_port,
            "ami_user": self.ami_user,
            "ami_secret": self.ami_secret,
            "agi_host": self.agi_host,
            "agi_port": self.agi_port,
            "carrier_host": self.carrier_host,
            "carrier_port": self.carrier_port,
            "agents": self.agents,
            "queue_strategy": self.queue_strategy,
            "rtp_ports": list(self.rtp_ports),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(self.state_file)

    @classmethod
    def from_state(cls, run_dir: Path | str) -> LabPbx:
        path = Path(run_dir) / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            pbx = cls(
                run_dir,
                host=str(state["host"]),
                sip_port=int(state["sip_port"]),
                ami_port=int(state["ami_port"]),
                ami_user=str(state["ami_user"]),
                ami_secret=str(state["ami_secret"]),
                agi_host=str(state["agi_host"]),
                agi_port=int(state["agi_port"]),
                carrier_host=str(state["carrier_host"]),
                carrier_port=int(state["carrier_port"]),
                agents={str(k): str(v) for k, v in dict(state["agents"]).items()},
                queue_strategy=str(state["queue_strategy"]),
                rtp_ports=(int(state["rtp_ports"][0]), int(state["rtp_ports"][1])),
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise LabPbxError(f"cannot read lab state {path}: {exc}") from exc
        pid = state.get("pid")
        pbx.pid = int(pid) if isinstance(pid, int) else None
        return pbx


def _bound_ports(pid: int | None, table: str, *, listening: bool) -> set[int]:
    """Local ports of ``table`` (tcp/udp) sockets, owned by ``pid`` (None: anyone)."""
    inodes: set[str] | None = None
    if pid is not None:
        inodes = set()
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            return set()
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    source = f"/proc/{pid}/net/{table}" if pid is not None else f"/proc/net/{table}"
    try:
        lines = Path(source).read_text().splitlines()[1:]
    except OSError:
        return ports
    for line in lines:
        fields = line.split()
        if len(fields) < 10:
            continue
        if listening and fields[3] != "0A":
            continue
        if inodes is None or fields[9] in inodes:
            ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def _pid_is_our_asterisk(pid: int, config_file: Path) -> bool:
    """True when ``pid`` is alive and is the asterisk started with ``config_file``."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    args = raw.split(b"\0")
    return str(config_file).encode() in args


# ------------------------------------------------------------------ command
def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", required=True)
    for name, help_text in (
        ("start", "render asterisk-conf/ and start the lab Asterisk"),
        ("stop", "stop the lab Asterisk (SIGTERM, then SIGKILL)"),
        ("status", "say whether the lab Asterisk runs (exit 3 when it does not)"),
    ):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="private run directory (default: ./var/lab)")
        if name == "start":
            sp.add_argument("--host", default="127.0.0.1", help="bind address for SIP and AMI")
            sp.add_argument("--sip-port", type=int, default=None)
            sp.add_argument("--ami-port", type=int, default=None)
            sp.add_argument("--agi-port", type=int, default=None,
                            help="FastAGI port of the CTI server the dialplan calls")
            sp.add_argument("--carrier-port", type=int, default=None,
                            help="UDP port of the outbound carrier (customer phone)")
            sp.add_argument("--agents", type=int, default=4)


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    try:
        if args.lab_command == "start":
            return _cmd_start(args, run_dir)
        if args.lab_command == "stop":
            return _cmd_stop(run_dir)
        return _cmd_status(run_dir)
    except LabPbxError as exc:
        print(f"cti lab: {exc}")
        return 1


def _cmd_start(args: argparse.Namespace, run_dir: Path) -> int:
    if (run_dir / STATE_FILE).exists():
        pbx = LabPbx.from_state(run_dir)
        if pbx.is_running():
            print(f"lab PBX already running (pid {pbx.pid})")
            _print_summary(pbx)
            return 0
        # Same ports and secrets as last time, so configured clients keep working.
        for attr in ("sip_port", "ami_port", "agi_port", "carrier_port"):
            given = getattr(args, attr)
            if given:
                setattr(pbx, attr, given)
    else:
        pbx = LabPbx(run_dir, host=args.host, sip_port=args.sip_port, ami_port=args.ami_port,
                     agi_port=args.agi_port, carrier_port=args.carrier_port, agents=args.agents)
    started = time.monotonic()
    pbx.start()
    print(f"lab PBX started in {time.monotonic() - started:.1f} s (pid {pbx.pid})")
    _print_summary(pbx)
    return 0


def _print_summary(pbx: LabPbx) -> None:
    print(f"  run dir : {pbx.run_dir}")
    print(f"  AMI     : {pbx.host}:{pbx.ami_port}  user {pbx.ami_user}  secret {pbx.ami_secret}")
    print(f"  AMI URL : {pbx.ami_url}")
    print(f"  SIP     : udp {pbx.host}:{pbx.sip_port} (trunk: calls from 127.0.0.1)")
    print(f"  FastAGI : the dialplan calls agi://{pbx.agi_host}:{pbx.agi_port}/")
    print(f"  carrier : outbound calls go to sip:NUMBER@{pbx.carrier_host}:{pbx.carrier_port}")
    for queue in pbx.queues:
        print(f"  queue   : {queue.name} (dial {queue.number}) members {', '.join(queue.members)}")
    for agent in pbx.agent_list():
        print(f"  agent   : {agent.name} / {agent.secret}  extension {agent.exten}  "
              f"sip:{agent.name}@{pbx.host}:{pbx.sip_port}")


def _cmd_stop(run_dir: Path) -> int:
    if not (run_dir / STATE_FILE).exists():
        print(f"no lab PBX state in {run_dir}")
        return 0
    pbx = LabPbx.from_state(run_dir)
    if not pbx.is_running():
        print("lab PBX is not running")
        pbx.pid = None
        pbx.save_state()
        return 0
    pid = pbx.pid
    pbx.stop()
    print(f"lab PBX stopped (pid {pid})")
    return 0


def _cmd_status(run_dir: Path) -> int:
    if not (run_dir / STATE_FILE).exists():
        print(f"lab PBX not running (no state in {run_dir})")
        return 3
    pbx = LabPbx.from_state(run_dir)
    if not pbx.is_running():
        print("lab PBX not running")
        return 3
    print(f"lab PBX running (pid {pbx.pid})")
    _print_summary(pbx)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cti.lab start|stop|status`` (the same as ``cti lab``)."""
    parser = argparse.ArgumentParser(prog="cti lab", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
