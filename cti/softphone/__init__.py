"""The project's SIP softphone (pjsua2): agent phone for ``cti phone`` and test UA.

See docs/softphone.md. One pjsua2 engine per process (``engine``); each
``SoftPhone`` is one account on its own UDP port.
"""

from __future__ import annotations

from cti.softphone.cli import configure, run
from cti.softphone.engine import EngineError, shutdown_engine
from cti.softphone.phone import (
    STATES,
    CallFailed,
    IncomingCall,
    NoActiveCall,
    PhoneTimeout,
    PjsuaError,
    RegistrationError,
    SipError,
    SoftPhone,
    SoftPhoneError,
)

__all__ = [
    "STATES",
    "CallFailed",
    "EngineError",
    "IncomingCall",
    "NoActiveCall",
    "PhoneTimeout",
    "PjsuaError",
    "RegistrationError",
    "SipError",
    "SoftPhone",
    "SoftPhoneError",
    "configure",
    "run",
    "shutdown_engine",
]
