from __future__ import annotations

import pytest

from cti.auth import Principal, Role, TokenSigner, hash_password, verify_password
from cti.errors import Unauthorized


def test_token_round_trip_and_expiry() -> None:
    signer = TokenSigner("k1", ttl=60)
    token = signer.issue(Principal(7, Role.SUPERVISOR), now=1000)
    assert signer.verify(token, now=1059) == Principal(7, Role.SUPERVISOR)
    with pytest.raises(Unauthorized, match="expired"):
        signer.verify(token, now=1061)


def test_forged_and_malformed_tokens() -> None:
    token = TokenSigner("k1", ttl=60).issue(Principal(7, Role.AGENT))
    with pytest.raises(Unauthorized, match="signature"):
        TokenSigner("other key", ttl=60).verify(token)
    body, mac = token.split(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    for bad in ("", "abc", "a.b.c", f"{forged_body}.{mac}", "x" * 5000):
        with pytest.raises(Unauthorized):
            TokenSigner("k1", ttl=60).verify(bad)
    assert "k1" not in repr(TokenSigner("k1", ttl=60))


def test_passwords() -> None:
    h = hash_password("correct horse")
    assert verify_password(h, "correct horse")
    assert not verify_password(h, "wrong")
    assert not verify_password(None, "anything")
    assert not verify_password("garbage", "x")
