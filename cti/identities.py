"""Normalising contact identities (pure, no I/O).

Phones become E.164 with ``phonenumbers`` and the configured default region, so
"8 (916) 123-45-67" and "+7 916 1234567" are one identity under region RU.
A phone that does not parse or is not a valid number is kept: its value is
the raw digits (and a leading "+") and ``valid`` is False. Nothing here raises
on customer input except for an unknown kind or an oversize/empty value.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers


class IdentityKind(StrEnum):
    PHONE = "phone"
    EMAIL = "email"
    WEBCHAT = "webchat"
    TELEGRAM = "telegram"
    VIBER = "viber"
    WHATSAPP = "whatsapp"
    OTHER = "other"


MAX_IDENTITY_LENGTH = 256
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NON_DIGIT = re.compile(r"[^0-9]")


class IdentityError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class NormalisedIdentity:
    kind: IdentityKind
    value: str
    raw: str
    valid: bool


def parse_kind(kind: str) -> IdentityKind:
    try:
        return IdentityKind(kind)
    except ValueError:
        raise IdentityError(f"unknown identity kind {kind!r}") from None


def normalise_phone(raw: str, region: str) -> NormalisedIdentity:
    text = unicodedata.normalize("NFKC", raw).strip()
    if not text or len(text) > MAX_IDENTITY_LENGTH:
        raise IdentityError("a phone number must have 1..256 characters")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_valid_number(number):
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return NormalisedIdentity(IdentityKind.PHONE, e164, raw, True)
    digits = _NON_DIGIT.sub("", text)
    kept = ("+" if text.startswith("+") else "") + digits if digits else text
    return NormalisedIdentity(IdentityKind.PHONE, kept, raw, False)


def normalise(kind: IdentityKind | str, raw: str, region: str) -> NormalisedIdentity:
    kind = parse_kind(kind) if isinstance(kind, str) else kind
    if not isinstance(raw, str):
        raise IdentityError("an identity value must be a string")
    if kind is IdentityKind.PHONE:
        return normalise_phone(raw, region)
    text = unicodedata.normalize("NFKC", raw).strip()
    if not text or len(text) > MAX_IDENTITY_LENGTH:
        raise IdentityError(f"a {kind} identity must have 1..256 characters")
    if kind is IdentityKind.EMAIL:
        value = text.lower()
        return NormalisedIdentity(kind, value, raw, bool(_EMAIL.match(value)))
    if kind is IdentityKind.TELEGRAM:
        return NormalisedIdentity(kind, text.lstrip("@").lower(), raw, True)
    return NormalisedIdentity(kind, text, raw, True)
