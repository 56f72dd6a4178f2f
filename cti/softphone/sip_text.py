"""Pure parsing of the SIP text pjsua2 hands us (an INVITE's ``wholeMsg``).

No I/O. Only what the softphone needs: the request line, the headers (with
folding and compact names), and the display name / user part of a name-addr.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

MAX_MESSAGE_CHARS = 65_536
MAX_HEADERS = 200
MAX_HEADER_CHARS = 8_192

_COMPACT = {
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "v": "via",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
}


class SipTextError(ValueError):
    """The text is not a SIP message we can read."""


@dataclass(frozen=True, slots=True)
class SipHead:
    """Request line and headers of one SIP message (headers in arrival order)."""

    method: str
    request_uri: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive, compact forms accepted)."""
        key = _canonical(name)
        for hname, value in self.headers:
            if _canonical(hname) == key:
                return value
        return None


@dataclass(frozen=True, slots=True)
class NameAddr:
    display_name: str
    uri: str

    @property
    def user(self) -> str:
        return uri_user(self.uri)


def _canonical(name: str) -> str:
    low = name.strip().lower()
    return _COMPACT.get(low, low)


def parse_head(text: str) -> SipHead:
    """Parse the request line and headers of ``text`` (the body is ignored)."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise SipTextError(f"SIP message longer than {MAX_MESSAGE_CHARS} characters")
    head = re.split(r"\r?\n\r?\n", text, maxsplit=1)[0]
    lines = re.split(r"\r?\n", head)
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("SIP/"):
        raise SipTextError(f"not a SIP request line: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
        elif line:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise SipTextError(f"malformed header line: {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        else:
            continue
        if len(headers) > MAX_HEADERS:
            raise SipTextError(f"more than {MAX_HEADERS} headers")
        if len(headers[-1][1]) > MAX_HEADER_CHARS:
            raise SipTextError(f"header {headers[-1][0]!r} longer than {MAX_HEADER_CHARS}")
    return SipHead(method=parts[0], request_uri=parts[1], headers=tuple(headers))


def parse_name_addr(value: str) -> NameAddr:
    """``"Name" <sip:user@host>;tag=x`` -> NameAddr("Name", "sip:user@host")."""
    text = value.strip()
    display = ""
    if text.startswith('"'):
        chars: list[str] = []
        i = 1
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                chars.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                break
            chars.append(ch)
            i += 1
        else:
            raise SipTextError("unterminated quoted display name")
        display = "".join(chars)
        text = text[i + 1 :].strip()
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipTextError("name-addr without closing '>'")
        if not display:
            display = text[:lt].strip()
        uri = text[lt + 1 : gt].strip()
    else:
        uri = text.split(";", 1)[0].strip()
    return NameAddr(display_name=display, uri=uri)


def uri_user(uri: str) -> str:
    """User part of a SIP URI, percent-decoded (``sip:%2B7916@h`` -> ``+7916``)."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    if "@" not in rest:
        return ""
    user = rest.split("@", 1)[0].split(";", 1)[0].split(":", 1)[0]
    return unquote(user, errors="replace")


def uri_port(uri: str) -> int | None:
    """Explicit port of a SIP URI host part, or None."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    hostport = rest.split("@", 1)[-1].split(";", 1)[0].split("?", 1)[0]
    if hostport.startswith("["):
        _, _, after = hostport.partition("]")
        port = after[1:] if after.startswith(":") else ""
    else:
        port = hostport.rpartition(":")[2] if ":" in hostport else ""
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else None
