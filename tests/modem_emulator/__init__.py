"""A 3GPP 27.005/27.007 AT modem emulator on a PTY, for tests of the GSM modem driver."""

from .emulator import ModemEmulator
from .pdu import ReceivedSubmit

__all__ = ["ModemEmulator", "ReceivedSubmit"]
