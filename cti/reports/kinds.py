"""Every history ``kind`` the reports read, in one place.

Several producers write these: cti/calls.py (voice), cti/conversations.py and
cti/messaging.py (text and closing), the IVR (deflection and callbacks), the
Asterisk record importers (cti/reports/importers.py). Aliases cover names that
different producers use for the same thing.
"""

from __future__ import annotations

CALL_STARTED = "call_started"
CALL_QUEUED = "call_queued"
CALL_OFFERED = "call_offered"
CALL_ANSWERED = "call_answered"
CALL_ABANDONED = "call_abandoned"
CALL_ENDED = "call_ended"
CALL_DEFLECTED = "call_deflected"
DEFLECTED = "deflected"  # written on the new text conversation (cti/messaging.py)
CALLBACK_BOOKED = "callback_booked"
CALLBACK_CONNECTED = "callback_connected"
CLOSED = "closed"
MARKED = "marked"  # one per tag when an agent marks a conversation (cti/reports/marking.py)

INBOUND_TEXT = ("message_in", "chat_in", "sms_in")
OUTBOUND_TEXT = ("message_out", "chat_out", "sms_out")

TEXT_CHANNELS = ("sms", "chat", "social")
SENTIMENTS = ("positive", "negative", "neutral")
