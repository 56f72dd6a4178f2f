"""Test bed: every peer is real, on loopback, on free ports, stopped by its PID.

Fixtures live in tests/peers/, one module per peer. A peer that cannot start
fails the test with a message naming what is missing; nothing is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher

import cti.auth

pytest_plugins = [
    "tests.peers.asterisk",
    "tests.peers.sipp",
    "tests.peers.phones",
    "tests.peers.smsc",
    "tests.peers.databases",
    "tests.peers.browser",
]

UNIT_TESTS = Path(__file__).resolve().parent / "unit"
# Still argon2id, with the smallest costs: the production costs (64 MiB, 3
# passes) take 0.1-0.2 s per hash on an idle 2-core machine and over 1 s on a
# loaded one, and the functional and integration tests create and log in
# agents hundreds of times. tests/unit keeps the production costs.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    if UNIT_TESTS not in Path(str(request.node.path)).parents:
        monkeypatch.setattr(cti.auth, "_hasher", CHEAP_HASHER)
