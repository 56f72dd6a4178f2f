"""Test bed: every peer is real, on loopback, on free ports, stopped by its PID.

Fixtures live in tests/peers/, one module per peer. A peer that cannot start
fails the test with a message naming what is missing; nothing is skipped.
"""

pytest_plugins = [
    "tests.peers.asterisk",
    "tests.peers.sipp",
    "tests.peers.phones",
    "tests.peers.smsc",
    "tests.peers.databases",
    "tests.peers.browser",
]
