"""Customer web chat: signed links, the chat page, the customer WebSocket.

``chat_link(services, conversation_id)`` is what the IVR deflection sends by
SMS; ``setup_webchat(app)`` (in ``cti.webchat.routes``) serves it.
"""

from __future__ import annotations

from cti.services import Services
from cti.webchat.tokens import ChatTokenSigner


def chat_signer(services: Services) -> ChatTokenSigner:
    settings = services.settings
    return ChatTokenSigner(settings.secret_key, settings.chat_token_ttl)


def chat_link(services: Services, conversation_id: int, now: float | None = None) -> str:
    """The absolute short URL a customer opens to chat in this conversation."""
    token = chat_signer(services).issue(conversation_id, now)
    return f"{services.settings.base_url()}/c/{token}"


__all__ = ["chat_link", "chat_signer"]
