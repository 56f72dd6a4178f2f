"""Passwords (argon2id via argon2-cffi) and bearer tokens.

Tokens are ``base64url(json claims) "." base64url(HMAC-SHA256(key, claims))``,
checked with ``hmac.compare_digest``. We sign with the stdlib rather than add a
JWT library: the server is the only issuer and the only verifier, so one
algorithm and three claims (sub, role, exp) are all we need, and there is no
algorithm negotiation to get wrong. The key comes from the settings; without
one a random key is drawn at start (tokens then die with the process).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cti.errors import Unauthorized

MAX_TOKEN_LENGTH = 1024


class Role(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


RANK = {Role.AGENT: 0, Role.SUPERVISOR: 1, Role.ADMIN: 2}

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: a full-cost hash is 0.25-1.2 s that
    # every `cti` process (lab, pbx, reports...) would pay for nothing.
    return _hasher.hash("not a password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the login exists."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    agent_id: int
    role: Role

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, key: str, ttl: float) -> None:
        material = "cti-token:" + (key or secrets.token_hex(32))
        self._key = hashlib.sha256(material.encode()).digest()
        self._ttl = ttl

    def __repr__(self) -> str:
        return "TokenSigner(<key hidden>)"

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def issue(self, principal: Principal, now: float | None = None) -> str:
        exp = int((time.time() if now is None else now) + self._ttl)
        claims = {"sub": principal.agent_id, "role": str(principal.role), "exp": exp}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, now: float | None = None) -> Principal:
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise Unauthorized("malformed token")
        body, mac = token.split(".")
        if not hmac.compare_digest(self._mac(body), mac):
            raise Unauthorized("bad token signature")
        try:
            claims = json.loads(_unb64(body))
            agent_id, role, exp = int(claims["sub"]), Role(claims["role"]), float(claims["exp"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise Unauthorized("malformed token") from None
        if exp <= (time.time() if now is None else now):
            raise Unauthorized("token expired")
        return Principal(agent_id, role)
