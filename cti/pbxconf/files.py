"""Render a description into Asterisk files, read them back (import), diff them."""

from __future__ import annotations

import difflib
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cti.lab import render_templates
from cti.pbxconf.description import OFFER_KEYS, template_params

MAX_CONF_BYTES = 4 * 1024 * 1024
# Which reload makes Asterisk read each file; None: only a restart does.
RELOADS: dict[str, str | None] = {
    "pjsip.conf": "module reload res_pjsip.so",
    "queues.conf": "module reload app_queue.so",
    "extensions.conf": "dialplan reload",
    "extensions_ivr.conf": "dialplan reload",
    "manager.conf": "manager reload",
}
RELOAD_ORDER = ("module reload res_pjsip.so", "module reload app_queue.so", "dialplan reload",
                "manager reload")


class ConfImportError(ValueError):
    """An existing configuration is not in the asterisk-conf format."""


def render(data: Mapping[str, Any]) -> dict[str, str]:
    """Every file the templates produce, by name (rendered by cti.lab.render_templates)."""
    with tempfile.TemporaryDirectory(prefix="pbxconf-") as tmp:
        written = render_templates(template_params(data), Path(tmp))
        return {p.name: p.read_text(encoding="utf-8") for p in written}


def read_dir(etc: Path, names: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        path = etc / name
        if not path.exists():
            out[name] = None
            continue
        if path.stat().st_size > MAX_CONF_BYTES:
            raise ConfImportError(f"{path} is larger than 4 MiB")
        out[name] = path.read_text(encoding="utf-8", errors="replace")
    return out


def diff(current: Mapping[str, str | None], wanted: Mapping[str, str]) -> str:
    chunks: list[str] = []
    for name in sorted(wanted):
        old = current.get(name)
        chunks.extend(difflib.unified_diff(
            (old or "").splitlines(keepends=True), wanted[name].splitlines(keepends=True),
            fromfile=f"a/{name}" if old is not None else "/dev/null", tofile=f"b/{name}"))
    return "".join(chunks)


def changed_files(current: Mapping[str, str | None], wanted: Mapping[str, str]) -> list[str]:
    return sorted(name for name, text in wanted.items() if current.get(name) != text)


# ------------------------------------------------------------------- import
Section = tuple[str, list[tuple[str, str]]]


def parse_conf(text: str) -> list[Section]:
    """Asterisk config text -> sections in order, keys in order (duplicates kept)."""
    sections: list[Section] = []
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(?<!\\);.*", "", raw).strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            end = line.find("]")
            if end < 0:
                raise ConfImportError(f"line {number}: section header without ']'")
            current = []
            sections.append((line[1:end].strip(), current))
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ConfImportError(f"line {number}: not 'key = value' inside a section: {raw!r}")
        current.append((key.strip(), value.removeprefix(">").strip()))
    return sections


def _first(items: list[tuple[str, str]], key: str) -> str:
    for k, v in items:
        if k == key:
            return v
    raise ConfImportError(f"missing {key!r}")


def _all(items: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in items if k == key]


def _section(sections: list[Section], name: str, type_: str | None = None) -> list[tuple[str, str]]:
    for sec_name, items in sections:
        if sec_name == name and (type_ is None or ("type", type_) in items):
            return items
    raise ConfImportError(f"no section [{name}]" + (f" of type {type_}" if type_ else ""))


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


# queues.conf option -> description key; the shared defaults the templates use
# when a description leaves wrapuptime / servicelevel out.
QUEUE_KEYS = {"strategy": "strategy", "timeout": "timeout", "retry": "retry",
              "wrapuptime": "wrapuptime", "servicelevel": "servicelevel", "weight": "weight",
              "maxlen": "maxlen", "announce-frequency": "announce_frequency",
              "periodic-announce-frequency": "periodic_announce_frequency"}
SHARED_DEFAULTS = {"wrapuptime": 0, "servicelevel": 20}


def _queue_values(items: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for option, key in QUEUE_KEYS.items():
        values = _all(items, option)
        if values:
            out[key] = values[0] if key == "strategy" else int(values[0])
    return out


def _queue_settings(first: list[tuple[str, str]]) -> dict[str, Any]:
    """The first queue's settings are the shared ones (weight/maxlen stay per queue)."""
    values = _queue_values(first)
    settings = {key: values[key] for key in ("strategy", "timeout", "retry",
                                             "announce_frequency",
                                             "periodic_announce_frequency")}
    for key, default in SHARED_DEFAULTS.items():
        if key in values and values[key] != default:
            settings[key] = values[key]
    return settings


def _queue_overrides(items: list[tuple[str, str]], shared: dict[str, Any]) -> dict[str, Any]:
    effective = {**SHARED_DEFAULTS, **shared}
    return {key: value for key, value in _queue_values(items).items()
            if key in ("weight", "maxlen") or value != effective.get(key)}


def _queue_offers(ivr: list[Section], items: list[tuple[str, str]]) -> list[str]:
    contexts = _all(items, "context")
    if not contexts:
        return []
    keys = {key for name, entries in ivr if name == contexts[0]
            for kind, value in entries if kind == "exten" for key in [value.split(",")[0]]}
    return [name for name, key in OFFER_KEYS.items() if key in keys]


def _registration(pjsip: list[Section]) -> dict[str, Any]:
    regs = [items for name, items in pjsip if name == "carrier-reg"]
    if not regs:
        return {}
    reg = regs[0]
    auth = _section(pjsip, "carrier-auth", "auth")
    return {"registration": {"username": _first(auth, "username"),
                             "secret": _first(auth, "password"),
                             "contact_user": _first(reg, "contact_user"),
                             "expiration": int(_first(reg, "expiration")),
                             "retry_interval": int(_first(reg, "retry_interval"))}}


def import_dir(etc: Path) -> dict[str, Any]:
    """Read the files rendered from asterisk-conf/ back into a description."""
    texts = read_dir(etc, ["asterisk.conf", "indications.conf", "rtp.conf", "musiconhold.conf",
                           "pjsip.conf", "queues.conf", "manager.conf", "extensions.conf",
                           "extensions_ivr.conf"])
    missing = [name for name, text in texts.items() if text is None]
    if missing:
        raise ConfImportError(f"{etc}: missing {', '.join(missing)}")
    conf: dict[str, list[Section]] = {}
    for name, text in texts.items():
        try:
            conf[name] = parse_conf(text or "")
        except ConfImportError as exc:
            raise ConfImportError(f"{etc / name}: {exc}") from exc
    try:
        return _build(conf)
    except (ConfImportError, ValueError, IndexError) as exc:
        raise ConfImportError(f"{etc}: not in the asterisk-conf format: {exc}") from exc


def _build(conf: dict[str, list[Section]]) -> dict[str, Any]:
    dirs = _section(conf["asterisk.conf"], "directories")
    options = _section(conf["asterisk.conf"], "options")
    pjsip = conf["pjsip.conf"]
    bind_host, sip_port = _hostport(_first(_section(pjsip, "transport-udp"), "bind"))
    carrier_contact = _first(_section(pjsip, "carrier", "aor"), "contact")
    carrier_host, carrier_port = _hostport(carrier_contact.removeprefix("sip:"))
    secrets: dict[str, str] = {}
    for name, items in pjsip:
        if ("type", "auth") in items:
            secrets[name] = _first(items, "password")
    agents = []
    for name, items in pjsip:
        if ("type", "endpoint") in items and ("context", "from-agents") in items:
            match = re.fullmatch(r'"(.*)"\s*<(\d+)>', _first(items, "callerid"))
            if match is None:
                raise ConfImportError(f"[{name}] callerid is not '\"Name\" <exten>'")
            agents.append({"name": name, "secret": secrets[name], "extension": match.group(2),
                           "display_name": match.group(1)})
    queue_sections = [(n, items) for n, items in conf["queues.conf"] if n != "general"]
    numbers: dict[str, str] = {}
    default_queue = None
    for name, items in conf["extensions.conf"]:
        if name != "from-trunk":
            continue
        for key, value in items:
            m = re.fullmatch(r"([^,]+),1,Set\(__CTI_QUEUE=([^)]+)\)", value)
            if key == "exten" and m:
                if m.group(1) == "s":
                    default_queue = m.group(2)
                elif re.fullmatch(r"\d+", m.group(1)):
                    numbers[m.group(2)] = m.group(1)
    if default_queue is None:
        raise ConfImportError("extensions.conf [from-trunk] has no 's' entry")
    if not queue_sections:
        raise ConfImportError("queues.conf has no queue")
    queue_settings = _queue_settings(queue_sections[0][1])
    queues = []
    for name, items in queue_sections:
        members = [v.split(",")[2] for v in _all(items, "member")]
        queue: dict[str, Any] = {"name": name, "number": numbers[name], "members": members}
        queue.update(_queue_overrides(items, queue_settings))
        offers = _queue_offers(conf["extensions_ivr.conf"], items)
        if offers != list(OFFER_KEYS):
            queue["offers"] = offers
        queues.append(queue)
    agi = None
    for key, value in _section(conf["extensions_ivr.conf"], "cti-inbound"):
        m = re.search(r"AGI\(agi://([^:/]+):(\d+)/inbound\)", value)
        if key == "same" and m:
            agi = {"host": m.group(1), "port": int(m.group(2))}
    if agi is None:
        raise ConfImportError("extensions_ivr.conf [cti-inbound] has no AGI(agi://.../inbound)")
    manager = conf["manager.conf"]
    general = _section(manager, "general")
    users = [(n, items) for n, items in manager if n != "general"]
    if len(users) != 1:
        raise ConfImportError(f"manager.conf must hold one user, found {len(users)}")
    user, uitems = users[0]
    return {
        "version": 1,
        "paths": {"run_dir": _first(dirs, "astetcdir").removesuffix("/etc"),
                  "module_dir": _first(dirs, "astmoddir"),
                  "moh_dir": _first(_section(conf["musiconhold.conf"], "default"), "directory")},
        "system": {"verbose": int(_first(options, "verbose")),
                   "language": _first(options, "defaultlanguage"),
                   "tone_country": _first(_section(conf["indications.conf"], "general"),
                                          "country"),
                   "rtp_start": int(_first(_section(conf["rtp.conf"], "general"), "rtpstart")),
                   "rtp_end": int(_first(_section(conf["rtp.conf"], "general"), "rtpend"))},
        "bind": {"address": bind_host, "sip_port": sip_port,
                 "ami_port": int(_first(general, "port"))},
        "trunks": {"inbound": {"match": _all(_section(pjsip, "trunk-identify"), "match")},
                   "outbound": {"host": carrier_host, "port": carrier_port,
                                **_registration(pjsip)}},
        "agents": agents,
        "queues": queues,
        "queue_settings": queue_settings,
        "ivr": {"default_queue": default_queue, "fastagi": agi},
        "ami": {"user": user, "secret": _first(uitems, "secret"),
                "permit": _all(uitems, "permit"),
                "read": _first(uitems, "read").split(","),
                "write": _first(uitems, "write").split(","),
                "eventfilters": _all(uitems, "eventfilter"),
                "writetimeout": int(_first(uitems, "writetimeout"))},
    }
