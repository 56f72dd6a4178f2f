"""Signed customer chat tokens: short enough for an SMS link.

A token is ``base64url(claims || mac)`` with 16 bytes of binary claims
(version, conversation id, expiry, random nonce) and the first 16 bytes of
HMAC-SHA256 over them: 43 characters. The key is derived from the server's
secret key with a purpose prefix of its own, so an agent bearer token can
never pass as a chat token (nor the reverse). Without a secret key a random
key is drawn once per process (links then die with the process, as agent
tokens do). A token names exactly one conversation; whether that
conversation is still open is checked by the caller against the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time

from cti.errors import Forbidden

VERSION = 1
_CLAIMS = struct.Struct(">B6sI5s")  # version, conversation id (48 bit), exp, nonce
MAC_BYTES = 16
TOKEN_CHARS = 43
MAX_CONVERSATION_ID = (1 << 48) - 1
_PROCESS_KEY = secrets.token_hex(32)


class ChatTokenInvalid(Forbidden):
    code = "chat_token_invalid"


class ChatTokenExpired(Forbidden):
    code = "chat_token_expired"


class ChatClosed(Forbidden):
    code = "chat_closed"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ChatTokenSigner:
    def __init__(self, secret_key: str, ttl: float) -> None:
        material = "cti-chat-token:" + (secret_key or _PROCESS_KEY)
        self._key = hashlib.sha256(material.encode()).digest()
        self._ttl = ttl

    def __repr__(self) -> str:
        return "ChatTokenSigner(<key hidden>)"

    def _mac(self, claims: bytes) -> bytes:
        return hmac.new(self._key, claims, hashlib.sha256).digest()[:MAC_BYTES]

    def issue(self, conversation_id: int, now: float | None = None) -> str:
        if not 0 < conversation_id <= MAX_CONVERSATION_ID:
            raise ValueError(f"conversation id out of range: {conversation_id}")
        exp = int((time.time() if now is None else now) + self._ttl)
        claims = _CLAIMS.pack(
            VERSION, conversation_id.to_bytes(6, "big"), exp, secrets.token_bytes(5)
        )
        return _b64(claims + self._mac(claims))

    def verify(self, token: str, now: float | None = None) -> int:
        """The conversation id the token was issued for; 403 otherwise."""
        if len(token) != TOKEN_CHARS or not token.isascii():
            raise ChatTokenInvalid("this chat link is not valid")
        try:
            raw = base64.urlsafe_b64decode(token + "=")
        except (binascii.Error, ValueError):
            raise ChatTokenInvalid("this chat link is not valid") from None
        if _b64(raw) != token:  # only the canonical spelling of each token
            raise ChatTokenInvalid("this chat link is not valid")
        claims, mac = raw[: _CLAIMS.size], raw[_CLAIMS.size :]
        if len(mac) != MAC_BYTES or not hmac.compare_digest(self._mac(claims), mac):
            raise ChatTokenInvalid("this chat link is not valid")
        version, conv_raw, exp, _nonce = _CLAIMS.unpack(claims)
        if version != VERSION:
            raise ChatTokenInvalid("this chat link is not valid")
        if exp <= (time.time() if now is None else now):
            raise ChatTokenExpired("this chat link has expired")
        return int.from_bytes(conv_raw, "big")
