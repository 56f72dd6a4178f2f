"""GSM modems on serial ports (AT commands, PDU mode). See docs/modem.md."""

from sms_gateway.modem.driver import GsmModem, ModemConfig, SendFailed
from sms_gateway.modem.errors import CmeError, CmsError, ModemError
from sms_gateway.modem.events import (
    DeliveryReport,
    HealthChanged,
    IncomingCall,
    ModemEvent,
    ModemHealth,
    SendResult,
    SmsReceived,
    UssdReceived,
)

__all__ = [
    "CmeError",
    "CmsError",
    "DeliveryReport",
    "GsmModem",
    "HealthChanged",
    "IncomingCall",
    "ModemConfig",
    "ModemError",
    "ModemEvent",
    "ModemHealth",
    "SendFailed",
    "SendResult",
    "SmsReceived",
    "UssdReceived",
]
