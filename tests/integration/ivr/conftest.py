"""The ``lab`` fixture (tests/integration/ivr/support.py) for every IVR lab test."""

from tests.integration.ivr.support import lab

__all__ = ["lab"]
