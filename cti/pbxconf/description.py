"""Load, validate and check a PBX description; turn it into template parameters.

A description is YAML checked against schema.json. Errors name the file, the
line (from the YAML node tree, which keeps start marks) and what is wrong.
Semantic checks (undefined members, duplicate extensions, AMI classes, weak
secrets, FastAGI reachability) come back as ``Finding``s with a severity.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml  # type: ignore[import-untyped]

from cti.lab import AMI_READ, AMI_WRITE, LabAgent, LabQueue

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
MAX_DESCRIPTION_BYTES = 1024 * 1024
MIN_SECRET_LENGTH = 12
MIN_SECRET_BITS = 60.0
# Section names the templates use themselves: an agent or queue cannot take them.
RESERVED_NAMES = frozenset({"global", "general", "globals", "transport-udp", "trunk",
                            "trunk-identify", "carrier", "carrier-auth", "carrier-reg",
                            "default"})
# Per-queue keys that override queue_settings (same names in the description,
# LabQueue and queues.conf.j2).
QUEUE_OVERRIDES = ("strategy", "timeout", "retry", "wrapuptime", "servicelevel", "weight",
                   "maxlen", "announce_frequency", "periodic_announce_frequency")
REGISTRATION_DEFAULTS = {"expiration": 300, "retry_interval": 30}
# The IVR's offers to waiting callers and their keys (ivr/flows.py OFFER_KEYS).
OFFER_KEYS = {"sms_chat": "1", "callback": "2"}
REQUIRED_READ = frozenset(AMI_READ.split(","))
REQUIRED_WRITE = frozenset(AMI_WRITE.split(","))
DANGEROUS_WRITE = frozenset({"command", "system", "config"})


class DescriptionError(ValueError):
    """The description cannot be used; ``findings`` says where and why."""

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__("\n".join(str(f) for f in findings))
        self.findings = findings


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str  # "error" or "warning"
    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.severity}: {self.message}"


@dataclass(frozen=True, slots=True)
class Description:
    data: dict[str, Any]
    source: str
    lines: dict[tuple[str | int, ...], int]

    def line_of(self, *path: str | int) -> int | None:
        for cut in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:cut]))
            if found is not None:
                return found
        return None


def _node_lines(node: yaml.Node, path: tuple[str | int, ...],
                out: dict[tuple[str | int, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            out[(*path, key)] = key_node.start_mark.line + 1
            _node_lines(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*path, index), out)


def parse_description(text: str, source: str = "<description>") -> Description:
    """Parse and schema-validate; raise DescriptionError with file:line messages."""
    if len(text.encode("utf-8")) > MAX_DESCRIPTION_BYTES:
        raise DescriptionError([Finding("error", source, None, "description larger than 1 MiB")])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise DescriptionError([Finding("error", source, line, f"invalid YAML: {problem}")]) \
            from exc
    lines: dict[tuple[str | int, ...], int] = {}
    if root is not None:
        _node_lines(root, (), lines)
    desc = Description(data if isinstance(data, dict) else {}, source, lines)
    if not isinstance(data, dict):
        raise DescriptionError([Finding("error", source, 1, "the description must be a mapping")])
    validator = jsonschema.Draft202012Validator(load_schema())
    findings = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path))):
        path = tuple(err.absolute_path)
        where = "/".join(str(p) for p in path) or "(top level)"
        findings.append(Finding("error", source, desc.line_of(*path), f"{where}: {err.message}"))
    if findings:
        raise DescriptionError(findings)
    return desc


def load_description(path: Path) -> Description:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DescriptionError([Finding("error", str(path), None, f"cannot read: {exc}")]) \
            from exc
    return parse_description(text, str(path))


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def secret_bits(secret: str) -> float:
    """Entropy estimate: length x log2(size of the character classes used)."""
    pool = 0
    if any(c.islower() for c in secret):
        pool += 26
    if any(c.isupper() for c in secret):
        pool += 26
    if any(c.isdigit() for c in secret):
        pool += 10
    if any(not c.isalnum() for c in secret):
        pool += 32
    distinct = len(set(secret))
    return min(len(secret), distinct * 2) * math.log2(max(pool, 2))


def semantic_findings(desc: Description, *, probe_fastagi: bool = True,
                      probe_timeout: float = 1.0) -> list[Finding]:
    d = desc.data
    out: list[Finding] = []

    def add(severity: str, message: str, *path: str | int) -> None:
        out.append(Finding(severity, desc.source, desc.line_of(*path), message))

    agent_names: set[str] = set()
    numbers: dict[str, tuple[str | int, ...]] = {}
    for i, agent in enumerate(d["agents"]):
        name = agent["name"]
        if name in agent_names:
            add("error", f"agent {name!r} is defined twice", "agents", i, "name")
        if name in RESERVED_NAMES:
            add("error", f"agent name {name!r} is reserved by the templates", "agents", i, "name")
        agent_names.add(name)
        _number(add, numbers, agent["extension"], f"agent {name}", ("agents", i, "extension"))
        _secret(add, agent["secret"], f"agent {name}", ("agents", i, "secret"))
    queue_names: set[str] = set()
    for i, queue in enumerate(d["queues"]):
        name = queue["name"]
        if name in queue_names:
            add("error", f"queue {name!r} is defined twice", "queues", i, "name")
        if name in RESERVED_NAMES:
            add("error", f"queue name {name!r} is reserved by the templates", "queues", i, "name")
        queue_names.add(name)
        _number(add, numbers, queue["number"], f"queue {name}", ("queues", i, "number"))
        seen: set[str] = set()
        for j, member in enumerate(queue["members"]):
            if member not in agent_names:
                add("error", f"queue {name!r}: member {member!r} is not a defined agent",
                    "queues", i, "members", j)
            if member in seen:
                add("error", f"queue {name!r}: member {member!r} listed twice",
                    "queues", i, "members", j)
            seen.add(member)
        if not queue["members"]:
            add("warning", f"queue {name!r} has no members", "queues", i, "members")
    if d["ivr"]["default_queue"] not in queue_names:
        add("error", f"ivr.default_queue {d['ivr']['default_queue']!r} is not a defined queue",
            "ivr", "default_queue")
    if d["system"]["rtp_start"] >= d["system"]["rtp_end"]:
        add("error", "system.rtp_start must be below system.rtp_end", "system", "rtp_start")
    if d["bind"]["sip_port"] == d["bind"]["ami_port"]:
        add("error", "bind.sip_port and bind.ami_port are the same", "bind", "ami_port")
    ami = d["ami"]
    missing_read = sorted(REQUIRED_READ - set(ami["read"]))
    if missing_read:
        add("error", f"AMI user {ami['user']!r} lacks read class(es) {', '.join(missing_read)} "
            "the CTI server needs", "ami", "read")
    missing_write = sorted(REQUIRED_WRITE - set(ami["write"]))
    if missing_write:
        add("error", f"AMI user {ami['user']!r} lacks write class(es) "
            f"{', '.join(missing_write)} the CTI server needs", "ami", "write")
    extra = sorted(DANGEROUS_WRITE & set(ami["write"]))
    if extra:
        add("warning", f"AMI user {ami['user']!r} has write class(es) {', '.join(extra)}: "
            "more than the CTI server needs", "ami", "write")
    if "dialplan" in ami["read"] and "!Event: VarSet" not in ami["eventfilters"]:
        add("warning", "read class dialplan without 'eventfilter=!Event: VarSet' floods the "
            "CTI with VarSet events", "ami", "eventfilters")
    _secret(add, ami["secret"], f"AMI user {ami['user']}", ("ami", "secret"))
    registration = d["trunks"]["outbound"].get("registration")
    if registration is not None:
        _secret(add, registration["secret"], "trunk registration",
                ("trunks", "outbound", "registration", "secret"))
    for i, queue in enumerate(d["queues"]):
        timeout = queue.get("timeout", d["queue_settings"]["timeout"])
        every = queue.get("announce_frequency", d["queue_settings"]["announce_frequency"])
        if every and every < timeout:
            add("warning", f"queue {queue['name']!r}: announce_frequency {every}s is shorter "
                f"than the ring timeout {timeout}s", "queues", i)
    if probe_fastagi:
        host, port = d["ivr"]["fastagi"]["host"], d["ivr"]["fastagi"]["port"]
        try:
            with socket.create_connection((host, port), timeout=probe_timeout):
                pass
        except OSError as exc:
            add("warning", f"FastAGI {host}:{port} is not reachable now ({exc}): calls will "
                "queue without the IVR until the CTI server listens", "ivr", "fastagi")
    return out


def _number(add: Any, numbers: dict[str, tuple[str | int, ...]], number: str, what: str,
            path: tuple[str | int, ...]) -> None:
    if number in numbers:
        add("error", f"duplicate extension {number} ({what}; also used at "
            f"{'/'.join(map(str, numbers[number]))})", *path)
    else:
        numbers[number] = path


def _secret(add: Any, secret: str, what: str, path: tuple[str | int, ...]) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        add("error", f"{what}: secret too short ({len(secret)} characters, at least "
            f"{MIN_SECRET_LENGTH})", *path)
    elif secret_bits(secret) < MIN_SECRET_BITS:
        add("error", f"{what}: secret too weak (about {secret_bits(secret):.0f} bits, at least "
            f"{MIN_SECRET_BITS:.0f})", *path)


def template_params(data: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters asterisk-conf/*.conf.j2 take (the same names cti.lab uses)."""
    qs = data["queue_settings"]
    return {
        "run_dir": data["paths"]["run_dir"],
        "module_dir": data["paths"]["module_dir"],
        "moh_dir": data["paths"]["moh_dir"],
        "verbose": data["system"]["verbose"],
        "language": data["system"]["language"],
        "tone_country": data["system"]["tone_country"],
        "bind_address": data["bind"]["address"],
        "sip_port": data["bind"]["sip_port"],
        "trunk_match": list(data["trunks"]["inbound"]["match"]),
        "carrier_host": data["trunks"]["outbound"]["host"],
        "carrier_port": data["trunks"]["outbound"]["port"],
        "carrier_registration": _registration(data["trunks"]["outbound"].get("registration")),
        "agents": [LabAgent(a["name"], a["secret"], a["extension"], a["display_name"])
                   for a in data["agents"]],
        "queues": [LabQueue(q["name"], q["number"], tuple(q["members"]),
                            **{k: q[k] for k in QUEUE_OVERRIDES if k in q},
                            offers=offer_keys(q.get("offers", list(OFFER_KEYS))))
                   for q in data["queues"]],
        "default_queue": data["ivr"]["default_queue"],
        "queue_strategy": qs["strategy"],
        "queue_timeout": qs["timeout"],
        "queue_retry": qs["retry"],
        "announce_frequency": qs["announce_frequency"],
        "periodic_announce_frequency": qs["periodic_announce_frequency"],
        "queue_wrapuptime": qs.get("wrapuptime", 0),
        "queue_servicelevel": qs.get("servicelevel", 20),
        "ami_port": data["bind"]["ami_port"],
        "ami_user": data["ami"]["user"],
        "ami_secret": data["ami"]["secret"],
        "ami_permit": list(data["ami"]["permit"]),
        "ami_read": ",".join(data["ami"]["read"]),
        "ami_write": ",".join(data["ami"]["write"]),
        "ami_eventfilters": list(data["ami"]["eventfilters"]),
        "ami_writetimeout": data["ami"]["writetimeout"],
        "agi_host": data["ivr"]["fastagi"]["host"],
        "agi_port": data["ivr"]["fastagi"]["port"],
        "rtp_start": data["system"]["rtp_start"],
        "rtp_end": data["system"]["rtp_end"],
    }


def offer_keys(offers: list[str]) -> str:
    return "".join(key for name, key in OFFER_KEYS.items() if name in offers)


def _registration(reg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if reg is None:
        return None
    return {**REGISTRATION_DEFAULTS, **reg}


def dump_description(data: Mapping[str, Any]) -> str:
    text: str = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100)
    return text
