"""AMI actions the server sends, their typed errors, and the AMI URL: pure code, no I/O.

Every header value is checked: a CR or LF in a value (a customer's name in a
caller ID, say) would let the value inject headers or whole actions, so it is
refused with :class:`BadActionArgument` before anything is sent.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pbx.framing import AmiMessage

Action = dict[str, str | list[str]]

CORRELATION_VARIABLE = "CTI_CORRELATION_ID"
_MAX_VALUE = 1024


class PbxError(Exception):
    """Base of every error the pbx package raises to its callers."""


class BadActionArgument(PbxError, ValueError):
    """An action argument is unsafe or malformed; nothing was sent."""


class PbxUnavailable(PbxError):
    """The AMI link is down: the action was NOT sent."""


class AmiAuthError(PbxError):
    """The PBX refused the AMI login (user or secret wrong, or not permitted)."""


class AmiActionError(PbxError):
    """The PBX answered the action with an error; ``pbx_message`` is its text."""

    def __init__(self, action: str, pbx_message: str, response: AmiMessage | None = None) -> None:
        super().__init__(f"AMI {action} failed: {pbx_message}")
        self.action = action
        self.pbx_message = pbx_message
        self.response = response


class OriginateFailed(AmiActionError):
    """The originated channel was never answered (``reason`` is Asterisk's code)."""

    def __init__(self, pbx_message: str, reason: int, response: AmiMessage | None) -> None:
        super().__init__("Originate", pbx_message, response)
        self.reason = reason


class UnknownOutcome(PbxError):
    """The action was sent but no answer came (link lost or timeout).

    It may or may not have run on the PBX; it is NEVER re-sent. For an
    Originate, look for ``channel_id`` among the calls after the resync.
    """

    def __init__(self, action: str, action_id: str, why: str, channel_id: str | None = None):
        super().__init__(f"AMI {action} ({action_id}): outcome unknown, {why}")
        self.action = action
        self.action_id = action_id
        self.channel_id = channel_id


class DuplicateAction(PbxError):
    """An action with this correlation id was already sent on this link."""


@dataclass(frozen=True, slots=True)
class AmiEndpoint:
    host: str
    port: int
    username: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return f"ami://{self.username}@{self.host}:{self.port}"


def parse_ami_url(url: str) -> AmiEndpoint:
    """``ami://user:secret@host:port`` (port 5038 by default)."""
    parts = urlsplit(url)
    if parts.scheme != "ami":
        raise BadActionArgument("AMI URL must start with ami://")
    if not parts.username or parts.password is None or not parts.hostname:
        raise BadActionArgument("AMI URL needs user, secret and host: ami://user:secret@host:port")
    try:
        port = parts.port or 5038
    except ValueError:
        raise BadActionArgument("AMI URL has a bad port") from None
    return AmiEndpoint(parts.hostname, port, unquote(parts.username), unquote(parts.password))


def _value(name: str, value: object) -> str:
    text = str(value)
    if "\r" in text or "\n" in text:
        raise BadActionArgument(f"{name} must not contain CR or LF")
    if len(text) > _MAX_VALUE:
        raise BadActionArgument(f"{name} is longer than {_MAX_VALUE} characters")
    return text


_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,80}$")


def _name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise BadActionArgument(f"{what} must match {_NAME.pattern}")
    return value


def _variables(variables: dict[str, str]) -> list[str]:
    return [f"{_name('variable name', k)}={_value(k, v)}" for k, v in variables.items()]


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def login(endpoint: AmiEndpoint) -> Action:
    return {"Action": "Login", "Username": _value("username", endpoint.username),
            "Secret": _value("secret", endpoint.secret), "Events": "on"}


def originate_click_to_dial(
    agent_interface: str, number: str, *, context: str, correlation_id: str,
    caller_id: str = "", timeout: float = 30.0, variables: dict[str, str] | None = None,
) -> Action:
    """Ring the agent's phone first; once answered, dial ``number`` from ``context``.

    ``ChannelId`` makes the agent leg's Uniqueid ``cti-<correlation_id>``: after a
    reconnect the resync shows whether the call exists (idempotency).
    """
    if not re.fullmatch(r"\+?[0-9*#]{1,32}", number):
        raise BadActionArgument("number must be digits (optionally +, * or #)")
    action: Action = {
        "Action": "Originate",
        "Channel": _value("agent interface", agent_interface),
        "Context": _name("context", context),
        "Exten": number,
        "Priority": "1",
        "Timeout": str(int(timeout * 1000)),
        "Async": "true",
        "ChannelId": f"cti-{_name('correlation id', correlation_id)}",
        "Variable": _variables({CORRELATION_VARIABLE: correlation_id, **(variables or {})}),
    }
    if caller_id:
        action["CallerID"] = _value("caller id", caller_id)
    return action


def hangup(channel: str, cause: int = 16) -> Action:
    return {"Action": "Hangup", "Channel": _value("channel", channel), "Cause": str(int(cause))}


def redirect(channel: str, context: str, exten: str, priority: int = 1) -> Action:
    return {"Action": "Redirect", "Channel": _value("channel", channel),
            "Context": _name("context", context), "Exten": _value("exten", exten),
            "Priority": str(int(priority))}


def atxfer(channel: str, exten: str, context: str) -> Action:
    return {"Action": "Atxfer", "Channel": _value("channel", channel),
            "Exten": _value("exten", exten), "Context": _name("context", context)}


def cancel_atxfer(channel: str) -> Action:
    return {"Action": "CancelAtxfer", "Channel": _value("channel", channel)}


def queue_pause(interface: str, paused: bool, queue: str | None = None,
                reason: str = "") -> Action:
    action: Action = {"Action": "QueuePause", "Interface": _value("interface", interface),
                      "Paused": "true" if paused else "false"}
    if queue:
        action["Queue"] = _value("queue", queue)
    if reason:
        action["Reason"] = _value("reason", reason)
    return action


def queue_add(queue: str, interface: str, member_name: str = "", penalty: int = 0,
              paused: bool = False, state_interface: str = "") -> Action:
    action: Action = {"Action": "QueueAdd", "Queue": _value("queue", queue),
                      "Interface": _value("interface", interface), "Penalty": str(int(penalty)),
                      "Paused": "true" if paused else "false"}
    if member_name:
        action["MemberName"] = _value("member name", member_name)
    if state_interface:
        action["StateInterface"] = _value("state interface", state_interface)
    return action


def queue_remove(queue: str, interface: str) -> Action:
    return {"Action": "QueueRemove", "Queue": _value("queue", queue),
            "Interface": _value("interface", interface)}


def play_dtmf(channel: str, digit: str, duration_ms: int = 250, receive: bool = False) -> Action:
    if not re.fullmatch(r"[0-9A-Da-d*#]", digit):
        raise BadActionArgument("digit must be one of 0-9 A-D * #")
    action: Action = {"Action": "PlayDTMF", "Channel": _value("channel", channel),
                      "Digit": digit, "Duration": str(int(duration_ms))}
    if receive:
        action["Receive"] = "true"
    return action


def setvar(variable: str, value: str, channel: str | None = None) -> Action:
    action: Action = {"Action": "Setvar", "Variable": _name("variable", variable),
                      "Value": _value("value", value)}
    if channel:
        action["Channel"] = _value("channel", channel)
    return action


def getvar(variable: str, channel: str | None = None) -> Action:
    action: Action = {"Action": "Getvar", "Variable": _name("variable", variable)}
    if channel:
        action["Channel"] = _value("channel", channel)
    return action


def user_event(name: str, headers: dict[str, str] | None = None) -> Action:
    action: Action = {"Action": "UserEvent", "UserEvent": _name("user event", name)}
    for key, value in (headers or {}).items():
        if key.lower() in ("action", "actionid", "userevent"):
            raise BadActionArgument(f"user event header {key!r} is reserved")
        action[_name("header", key)] = _value(key, value)
    return action


def check_response(action: str, response: AmiMessage) -> AmiMessage:
    """Raise :class:`AmiActionError` with the PBX's message unless the response is a success."""
    if (response.response or "").lower() in ("success", "follows", "goodbye"):
        return response
    raise AmiActionError(action, response.get("Message") or "(no message)", response)
