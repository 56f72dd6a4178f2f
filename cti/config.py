"""Settings: a TOML file (``--config``) with environment variables overriding it.

Every value is validated once, here; the rest of the server receives frozen
dataclasses. Secrets (AMI/SMPP passwords, the bootstrap admin password, the
token key) never appear in ``repr()`` and so never in logs.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import phonenumbers

from cti.logs import LOG_FORMATS, LOG_LEVELS
from sms_gateway.esme import SmppConfig, SmppConfigError


class ConfigError(ValueError):
    """The configuration is invalid; the message names the setting."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AmiServer:
    name: str
    host: str
    port: int
    username: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SmppLink:
    name: str
    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    # The whole URL, query options included (source_addr, window, tps, max_parts...).
    url: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class ModemLink:
    """A GSM modem on a serial port (``[[modem]]`` in the config file)."""

    name: str
    port: str
    baudrate: int = 115200
    pin: str | None = field(default=None, repr=False)
    indication: str = "cmti"  # +CMTI (stored on the SIM, read back) or +CMT (routed direct)


@dataclass(frozen=True, slots=True)
class SmsRouteSetting:
    """``[[sms_route]]``: which gateway serves which destinations / sender ids."""

    gateway: str
    prefixes: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BootstrapAdmin:
    login: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    http_listen: HostPort = HostPort("127.0.0.1", 8080)
    db_url: str = field(default="", repr=False)
    data_dir: Path = Path("var")
    ami: tuple[AmiServer, ...] = ()
    agi_listen: HostPort | None = None
    smpp: tuple[SmppLink, ...] = ()
    modems: tuple[ModemLink, ...] = ()
    sms_routes: tuple[SmsRouteSetting, ...] = ()
    redis_url: str | None = field(default=None, repr=False)
    default_region: str = "RU"
    bootstrap_admin: BootstrapAdmin | None = None
    secret_key: str = field(default="", repr=False)
    token_ttl: float = 12 * 3600.0
    max_text_conversations: int = 3
    max_body_bytes: int = 256 * 1024
    replay_buffer: int = 500
    socket_queue: int = 256
    history_batch: int = 500
    history_flush_interval: float = 0.05
    # Base URL customers reach (links in SMS); "" = derived from http_listen.
    public_url: str = ""
    chat_token_ttl: float = 24 * 3600.0
    callback_attempts: int = 3
    callback_retry_delay: float = 120.0
    # What the customer's phone shows on a callback ("" = the agent leg's caller ID).
    callback_caller_id: str = ""
    # IVR: seconds to wait for a key after a prompt, and repeats before the default route.
    ivr_digit_timeout: float = 5.0
    ivr_retries: int = 2
    # First-reply target of an SMS conversation (wallboard SLA; chat is 60 s).
    sms_first_reply_sla: float = 900.0
    # A gateway down this long gives its queued messages to another one (docs/sms-wiring.md).
    sms_failover_after: float = 30.0
    # Reports: answer-time target (s) of the service level, per queue overrides, FCR window.
    report_service_level: float = 20.0
    report_service_level_by_queue: tuple[tuple[str, float], ...] = ()
    fcr_days: int = 3
    # This node's name in a cluster (leases, bus, health); default hostname-pid.
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Logs on stderr: "text" or "json" (one object per line), and the level.
    log_format: str = "text"
    log_level: str = "INFO"

    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'cti.sqlite3').as_posix()}"

    def base_url(self) -> str:
        """Where customers' browsers reach this server (no trailing slash)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.http_listen.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http_listen.port}"


def parse_host_port(value: str, name: str) -> HostPort:
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{name}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: port {port} out of range")
    return HostPort(host, port)


def _split_url(value: str, scheme: str, name: str, default_port: int) -> tuple[str, int, str, str]:
    parts = urlsplit(value.strip())
    if parts.scheme != scheme:
        raise ConfigError(f"{name}: expected a {scheme}://user:secret@host:port URL")
    if not parts.hostname:
        raise ConfigError(f"{name}: the URL has no host")
    if parts.username is None or parts.password is None:
        raise ConfigError(f"{name}: the URL needs user and secret (user:secret@host)")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"{name}: the URL port is invalid") from None
    return parts.hostname, port, unquote(parts.username), unquote(parts.password)


def parse_ami_url(value: str, name: str = "CTI_AMI_URL", pbx: str = "pbx1") -> AmiServer:
    host, port, user, secret = _split_url(value, "ami", name, 5038)
    return AmiServer(name=pbx, host=host, port=port, username=user, secret=secret)


def parse_smpp_url(value: str, name: str = "CTI_SMPP_URL", link: str = "smpp1") -> SmppLink:
    host, port, user, secret = _split_url(value, "smpp", name, 2775)
    try:
        SmppConfig.from_url(value, name=link)
    except (SmppConfigError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return SmppLink(name=link, host=host, port=port, system_id=user, password=secret, url=value)


def parse_bootstrap_admin(value: str) -> BootstrapAdmin:
    login, sep, password = value.partition(":")
    if not sep or not login.strip() or not password:
        raise ConfigError("CTI_BOOTSTRAP_ADMIN: expected login:password")
    return BootstrapAdmin(login.strip(), password)


def parse_public_url(value: str, name: str = "CTI_PUBLIC_URL") -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: expected an http(s)://host[:port][/path] URL")
    return value.strip().rstrip("/")


def parse_node_id(value: str, name: str = "CTI_NODE_ID") -> str:
    node = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", node):
        raise ConfigError(f"{name}: 1-64 characters among letters, digits, '.', '_', '-'")
    return node


def parse_region(value: str, name: str = "CTI_DEFAULT_REGION") -> str:
    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"{name}: {value!r} is not a region code such as RU or GB")
    return region


def _str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string")
    return value


def _number(table: Mapping[str, Any], key: str, where: str, lo: float, hi: float) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: expected a number")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}.{key}: {value} is outside {lo}..{hi}")
    return float(value)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    values: dict[str, Any] = {}
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError("[server] must be a table")
    if (v := _str(server, "http_listen", "server")) is not None:
        values["http_listen"] = parse_host_port(v, "server.http_listen")
    if (v := _str(server, "db_url", "server")) is not None:
        values["db_url"] = v
    if (v := _str(server, "data_dir", "server")) is not None:
        values["data_dir"] = Path(v)
    if (v := _str(server, "agi_listen", "server")) is not None:
        values["agi_listen"] = parse_host_port(v, "server.agi_listen")
    if (v := _str(server, "redis_url", "server")) is not None:
        values["redis_url"] = v
    if (v := _str(server, "node_id", "server")) is not None:
        values["node_id"] = parse_node_id(v, "server.node_id")
    if (v := _str(server, "default_region", "server")) is not None:
        values["default_region"] = parse_region(v, "server.default_region")
    if (v := _str(server, "bootstrap_admin", "server")) is not None:
        values["bootstrap_admin"] = parse_bootstrap_admin(v)
    if (v := _str(server, "secret_key", "server")) is not None:
        values["secret_key"] = v
    if (n := _number(server, "token_ttl", "server", 60, 30 * 86400)) is not None:
        values["token_ttl"] = n
    if (n := _number(server, "max_text_conversations", "server", 0, 100)) is not None:
        values["max_text_conversations"] = int(n)
    if (n := _number(server, "max_body_bytes", "server", 1024, 64 * 1024 * 1024)) is not None:
        values["max_body_bytes"] = int(n)
    if (v := _str(server, "public_url", "server")) is not None:
        values["public_url"] = parse_public_url(v, "server.public_url")
    if (n := _number(server, "chat_token_ttl", "server", 60, 30 * 86400)) is not None:
        values["chat_token_ttl"] = n
    if (n := _number(server, "sms_first_reply_sla", "server", 1, 7 * 86400)) is not None:
        values["sms_first_reply_sla"] = n
    if (n := _number(server, "sms_failover_after", "server", 1, 86400)) is not None:
        values["sms_failover_after"] = n
    callbacks = data.get("callbacks", {})
    if not isinstance(callbacks, dict):
        raise ConfigError("[callbacks] must be a table")
    if (n := _number(callbacks, "attempts", "callbacks", 1, 20)) is not None:
        values["callback_attempts"] = int(n)
    if (n := _number(callbacks, "retry_delay", "callbacks", 1, 86400)) is not None:
        values["callback_retry_delay"] = n
    if (v := _str(callbacks, "caller_id", "callbacks")) is not None:
        if not re.fullmatch(r'(?:"[^"\r\n<>;]{0,40}" )?<?\+?[0-9]{2,15}>?', v.strip()):
            raise ConfigError('callbacks.caller_id: expected "Name" <+number> or a number')
        values["callback_caller_id"] = v.strip()
    reports = data.get("reports", {})
    if not isinstance(reports, dict):
        raise ConfigError("[reports] must be a table")
    if (n := _number(reports, "service_level", "reports", 1, 3600)) is not None:
        values["report_service_level"] = n
    if (n := _number(reports, "fcr_days", "reports", 1, 90)) is not None:
        values["fcr_days"] = int(n)
    per_queue = reports.get("service_level_by_queue", {})
    if not isinstance(per_queue, dict) or len(per_queue) > 1000:
        raise ConfigError("[reports.service_level_by_queue] must be a table of queue = seconds")
    values["report_service_level_by_queue"] = tuple(
        (str(q)[:64], float(_number(per_queue, q, "reports.service_level_by_queue", 1, 3600) or 0))
        for q in per_queue
    )
    ivr = data.get("ivr", {})
    if not isinstance(ivr, dict):
        raise ConfigError("[ivr] must be a table")
    if (n := _number(ivr, "digit_timeout", "ivr", 0.5, 60)) is not None:
        values["ivr_digit_timeout"] = n
    if (n := _number(ivr, "retries", "ivr", 0, 5)) is not None:
        values["ivr_retries"] = int(n)
    values.update(_logging(data))
    values["ami"] = _list_of_links(data, "pbx", parse_ami_url, "ami_url")
    values["smpp"] = _list_of_links(data, "smpp", parse_smpp_url, "smpp_url")
    values["modems"] = _modems(data)
    values["sms_routes"] = _sms_routes(data)
    return values


def parse_log_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    v = value.strip().upper() if choices is LOG_LEVELS else value.strip().lower()
    if v not in choices:
        raise ConfigError(f"{name}: one of {', '.join(choices)}")
    return v


def _logging(data: Mapping[str, Any]) -> dict[str, Any]:
    section = data.get("logging", {})
    if not isinstance(section, dict):
        raise ConfigError("[logging] must be a table")
    values: dict[str, Any] = {}
    if (v := _str(section, "format", "logging")) is not None:
        values["log_format"] = parse_log_choice(v, LOG_FORMATS, "logging.format")
    if (v := _str(section, "level", "logging")) is not None:
        values["log_level"] = parse_log_choice(v, LOG_LEVELS, "logging.level")
    return values


def _tables(data: Mapping[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise ConfigError(f"[[{key}]] must be an array of tables")
    out: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}[{index}]: expected a table")
        out.append((f"{key}[{index}]", entry))
    return out


def _modems(data: Mapping[str, Any]) -> tuple[ModemLink, ...]:
    out: list[ModemLink] = []
    for where, entry in _tables(data, "modem"):
        unknown = set(entry) - {"name", "port", "baudrate", "pin", "indication"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        port = _str(entry, "port", where)
        if not port or not port.startswith("/"):
            raise ConfigError(f"{where}.port: expected a device path such as /dev/ttyUSB0")
        baud = _number(entry, "baudrate", where, 1200, 4_000_000)
        pin = _str(entry, "pin", where)
        if pin is not None and not (pin.isdigit() and 4 <= len(pin) <= 8):
            raise ConfigError(f"{where}.pin: expected 4 to 8 digits")
        indication = _str(entry, "indication", where) or "cmti"
        if indication not in ("cmti", "cmt"):
            raise ConfigError(f"{where}.indication: expected \"cmti\" or \"cmt\"")
        out.append(ModemLink(name=_str(entry, "name", where) or f"modem{len(out) + 1}",
                             port=port, baudrate=int(baud or 115200), pin=pin,
                             indication=indication))
    return tuple(out)


def _strings(entry: Mapping[str, Any], key: str, where: str, pattern: str) -> tuple[str, ...]:
    values = entry.get(key, [])
    if not isinstance(values, list) or not all(
        isinstance(v, str) and re.fullmatch(pattern, v) for v in values
    ):
        raise ConfigError(f"{where}.{key}: expected a list of strings matching {pattern}")
    return tuple(values)


def _sms_routes(data: Mapping[str, Any]) -> tuple[SmsRouteSetting, ...]:
    out = []
    for where, entry in _tables(data, "sms_route"):
        gateway = _str(entry, "gateway", where)
        if not gateway:
            raise ConfigError(f"{where}.gateway is required (an [[smpp]] or [[modem]] name)")
        out.append(SmsRouteSetting(
            gateway=gateway,
            prefixes=_strings(entry, "prefixes", where, r"\+?[0-9]{1,15}"),
            senders=_strings(entry, "senders", where, r"[A-Za-z0-9 +._-]{1,20}"),
        ))
    return tuple(out)


def _list_of_links(data: Mapping[str, Any], key: str, parse: Any, url_key: str) -> tuple[Any, ...]:
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise ConfigError(f"[[{key}]] must be an array of tables")
    out = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table")
        url = _str(entry, "url", where)
        if url is None:
            raise ConfigError(f"{where}.url is required ({url_key} form)")
        name = _str(entry, "name", where) or f"{key}{index + 1}"
        out.append(parse(url, f"{where}.url", name))
    names = [item.name for item in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"[[{key}]] names must be unique")
    return tuple(out)


def _env_number(value: str, name: str, lo: float, hi: float) -> float:
    try:
        n = float(value)
    except ValueError:
        n = lo - 1
    if not lo <= n <= hi:
        raise ConfigError(f"{name}: a number, {lo:g}..{hi:g}")
    return n


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from an optional TOML file, then the environment."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = _from_file(path) if path is not None else {}
    if v := env.get("CTI_HTTP_LISTEN"):
        values["http_listen"] = parse_host_port(v, "CTI_HTTP_LISTEN")
    if v := env.get("CTI_DB_URL"):
        values["db_url"] = v
    if v := env.get("CTI_DATA_DIR"):
        values["data_dir"] = Path(v)
    if v := env.get("CTI_AMI_URL"):
        values["ami"] = (parse_ami_url(v),)
    if v := env.get("CTI_AGI_LISTEN"):
        values["agi_listen"] = parse_host_port(v, "CTI_AGI_LISTEN")
    if v := env.get("CTI_SMPP_URL"):
        values["smpp"] = (parse_smpp_url(v),)
    if v := env.get("CTI_REDIS_URL"):
        values["redis_url"] = v
    if v := env.get("CTI_NODE_ID"):
        values["node_id"] = parse_node_id(v)
    if v := env.get("CTI_DEFAULT_REGION"):
        values["default_region"] = parse_region(v)
    if v := env.get("CTI_BOOTSTRAP_ADMIN"):
        values["bootstrap_admin"] = parse_bootstrap_admin(v)
    if v := env.get("CTI_SECRET_KEY"):
        values["secret_key"] = v
    if v := env.get("CTI_PUBLIC_URL"):
        values["public_url"] = parse_public_url(v)
    if v := env.get("CTI_SMS_FIRST_REPLY_SLA"):
        try:
            sla = float(v)
        except ValueError:
            sla = -1.0
        if not 1 <= sla <= 7 * 86400:
            raise ConfigError("CTI_SMS_FIRST_REPLY_SLA: seconds, 1..604800")
        values["sms_first_reply_sla"] = sla
    if v := env.get("CTI_SMS_FAILOVER_AFTER"):
        values["sms_failover_after"] = _env_number(v, "CTI_SMS_FAILOVER_AFTER", 1, 86400)
    if v := env.get("CTI_REPORT_SERVICE_LEVEL"):
        values["report_service_level"] = _env_number(v, "CTI_REPORT_SERVICE_LEVEL", 1, 3600)
    if v := env.get("CTI_FCR_DAYS"):
        values["fcr_days"] = int(_env_number(v, "CTI_FCR_DAYS", 1, 90))
    if v := env.get("CTI_IVR_DIGIT_TIMEOUT"):
        values["ivr_digit_timeout"] = _env_number(v, "CTI_IVR_DIGIT_TIMEOUT", 0.5, 60)
    if v := env.get("CTI_IVR_RETRIES"):
        values["ivr_retries"] = int(_env_number(v, "CTI_IVR_RETRIES", 0, 5))
    if v := env.get("CTI_LOG_FORMAT"):
        values["log_format"] = parse_log_choice(v, LOG_FORMATS, "CTI_LOG_FORMAT")
    if v := env.get("CTI_LOG_LEVEL"):
        values["log_level"] = parse_log_choice(v, LOG_LEVELS, "CTI_LOG_LEVEL")
    settings = Settings(**values)
    _check_gateways(settings)
    return settings


def _check_gateways(settings: Settings) -> None:
    names = [link.name for link in settings.smpp] + [modem.name for modem in settings.modems]
    if len(set(names)) != len(names):
        raise ConfigError("SMS gateway names ([[smpp]] and [[modem]]) must be unique")
    for route in settings.sms_routes:
        if route.gateway not in names:
            raise ConfigError(f"[[sms_route]] names an unknown gateway {route.gateway!r}")
