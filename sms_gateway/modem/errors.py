"""Typed modem errors with the meaning given by 3GPP TS 27.005 / 27.007."""

from __future__ import annotations

# 3GPP TS 27.005 section 3.2.5 (+CMS ERROR). 0..127 are GSM 04.11 RP causes,
# 128..255 are GSM 03.40 TP-FCS values, 300.. are ME/TA errors.
CMS_ERRORS: dict[int, str] = {
    1: "unassigned (unallocated) number",
    8: "operator determined barring",
    10: "call barred",
    21: "short message transfer rejected",
    27: "destination out of service",
    28: "unidentified subscriber",
    29: "facility rejected",
    30: "unknown subscriber",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    47: "resources unavailable, unspecified",
    50: "requested facility not subscribed",
    69: "requested facility not implemented",
    81: "invalid short message transfer reference value",
    95: "invalid message, unspecified",
    96: "invalid mandatory information",
    97: "message type non-existent or not implemented",
    98: "message not compatible with short message protocol state",
    99: "information element non-existent or not implemented",
    111: "protocol error, unspecified",
    127: "interworking, unspecified",
    128: "telematic interworking not supported",
    129: "short message type 0 not supported",
    130: "cannot replace short message",
    143: "unspecified TP-PID error",
    144: "data coding scheme (alphabet) not supported",
    145: "message class not supported",
    159: "unspecified TP-DCS error",
    160: "command cannot be actioned",
    161: "command unsupported",
    175: "unspecified TP-Command error",
    176: "TPDU not supported",
    192: "SC busy",
    193: "no SC subscription",
    194: "SC system failure",
    195: "invalid SME address",
    196: "destination SME barred",
    197: "SM rejected-duplicate SM",
    208: "SIM SMS storage full",
    209: "no SMS storage capability in SIM",
    210: "error in MS",
    211: "memory capacity exceeded",
    255: "unspecified error cause",
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    312: "PH-SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    315: "SIM wrong",
    316: "SIM PUK required",
    317: "SIM PIN2 required",
    318: "SIM PUK2 required",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    340: "no +CNMA acknowledgement expected",
    500: "unknown error",
}

# Errors that say "try again later" rather than "this message is wrong".
TRANSIENT_CMS_ERRORS: frozenset[int] = frozenset(
    {38, 41, 42, 47, 192, 300, 314, 331, 332, 500}
)

# 3GPP TS 27.007 section 9.2 (+CME ERROR).
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    100: "unknown",
}

TRANSIENT_CME_ERRORS: frozenset[int] = frozenset({14, 30, 31, 100})


class ModemError(Exception):
    """Base class of every error raised by the modem driver."""


class ModemTimeout(ModemError):
    """The modem did not answer in time (final result or "> " prompt)."""


class ModemDisconnected(ModemError):
    """The serial port went away (modem unplugged, EOF, I/O error)."""


class ModemProtocolError(ModemError):
    """The modem sent something the AT layer cannot accept (too long, unparsable)."""


class CommandError(ModemError):
    """A command ended in a final error result code."""

    transient: bool = False

    def __init__(self, command: str, message: str) -> None:
        super().__init__(f"{command}: {message}")
        self.command = command


class PlainError(CommandError):
    """Plain `ERROR` (no +CMEE detail)."""

    def __init__(self, command: str) -> None:
        super().__init__(command, "ERROR")


class CmeError(CommandError):
    """`+CME ERROR: <n>` (27.007 equipment error)."""

    def __init__(self, command: str, code: int | None, text: str) -> None:
        meaning = CME_ERRORS.get(code, text) if code is not None else text
        super().__init__(command, f"+CME ERROR {code if code is not None else text}: {meaning}")
        self.code = code
        self.meaning = meaning
        self.transient = code in TRANSIENT_CME_ERRORS


class CmsError(CommandError):
    """`+CMS ERROR: <n>` (27.005 message service error)."""

    def __init__(self, command: str, code: int | None, text: str) -> None:
        meaning = CMS_ERRORS.get(code, text) if code is not None else text
        super().__init__(command, f"+CMS ERROR {code if code is not None else text}: {meaning}")
        self.code = code
        self.meaning = meaning
        self.transient = code in TRANSIENT_CMS_ERRORS


class SimPinError(ModemError):
    """The SIM needs a PIN we do not have, the PIN was refused, or the SIM wants a PUK."""


class TpduError(ModemError):
    """A PDU could not be encoded or decoded."""
