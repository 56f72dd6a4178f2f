"""The ``server`` fixture (tests/integration/ivr_cti/support.py) for the cti IVR tests."""

from tests.integration.ivr_cti.support import server

__all__ = ["server"]
