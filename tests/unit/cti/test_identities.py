from __future__ import annotations

import pytest

from cti.identities import IdentityError, IdentityKind, normalise


@pytest.mark.parametrize(
    "raw",
    [
        "8 (916) 123-45-67",
        "+7 916 1234567",
        "89161234567",
        "+7(916)123-45-67",
        "８９１６１２３４５６７",
    ],
)
def test_russian_mobile_forms_are_one_identity(raw: str) -> None:
    ident = normalise("phone", raw, "RU")
    assert (ident.value, ident.valid, ident.raw) == ("+79161234567", True, raw)


def test_region_decides_national_numbers() -> None:
    assert normalise("phone", "020 7946 0123", "GB").value == "+442079460123"
    assert normalise("phone", "+44 20 7946 0123", "RU").value == "+442079460123"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("12345", "12345"),
        ("+999 12", "+99912"),
        ("anonymous", "anonymous"),
        ("<script>", "<script>"),
    ],
)
def test_invalid_phones_are_kept_and_flagged(raw: str, value: str) -> None:
    ident = normalise("phone", raw, "RU")
    assert ident.valid is False and ident.value == value and ident.raw == raw


def test_other_kinds() -> None:
    assert normalise("email", " Anna@Example.ORG ", "RU").value == "anna@example.org"
    assert normalise("email", "not-an-email", "RU").valid is False
    assert normalise(IdentityKind.TELEGRAM, "@Ivan_P", "RU").value == "ivan_p"


def test_limits_and_unknown_kind() -> None:
    with pytest.raises(IdentityError):
        normalise("phone", "   ", "RU")
    with pytest.raises(IdentityError):
        normalise("phone", "1" * 300, "RU")
    with pytest.raises(IdentityError, match="unknown identity kind"):
        normalise("fax", "123", "RU")


def test_garbage_never_crashes() -> None:
    samples = [
        "+",
        "++7",
        "8" * 250,
        "\x00\x01",
        "७९१६",
        "+7 916 123 45 67 ext. 5",
        "tel:+79161234567",
    ]
    for raw in samples:
        ident = normalise("phone", raw, "RU")
        assert ident.value
