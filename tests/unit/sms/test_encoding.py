"""GSM 03.38 / UCS-2 encoding, splitting and UDH: exhaustive and seeded-random checks."""

from __future__ import annotations

import random

import pytest

from sms_gateway.encoding import (
    GSM7_MULTI,
    UCS2_MULTI,
    ConcatInfo,
    EmptyMessageError,
    Gsm7DecodeError,
    InformationElement,
    MessageTooLongError,
    UdhError,
    build_concat_udh,
    choose_coding,
    concat_info,
    count_segments,
    encode_text,
    gsm7_decode,
    gsm7_encode,
    gsm7_length,
    pack_septets,
    split_text,
    split_udh,
    ucs2_decode,
    udh_fill_bits,
    unpack_septets,
)

BASIC_CHARS = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXT_CHARS = "\f^{}\\[~]|€"


def test_every_basic_septet_round_trips() -> None:
    assert len(BASIC_CHARS) == 127
    for value in range(128):
        if value == 0x1B:
            continue
        text = gsm7_decode(bytes([value]))
        assert len(text) == 1
        assert gsm7_encode(text) == bytes([value])
    assert set(BASIC_CHARS) == {gsm7_decode(bytes([v])) for v in range(128) if v != 0x1B}


def test_extension_table() -> None:
    expected = {
        "\f": 0x0A,
        "^": 0x14,
        "{": 0x28,
        "}": 0x29,
        "\\": 0x2F,
        "[": 0x3C,
        "~": 0x3D,
        "]": 0x3E,
        "|": 0x40,
        "€": 0x65,
    }
    for ch, code in expected.items():
        assert gsm7_encode(ch) == bytes([0x1B, code])
        assert gsm7_decode(bytes([0x1B, code])) == ch
        assert gsm7_length(ch) == 2


def test_decode_unknown_escape_and_dangling_escape() -> None:
    assert gsm7_decode(b"\x1bA") == "A"
    assert gsm7_decode(b"A\x1b") == "A"
    assert gsm7_decode(b"\x1b\x1b") == " "
    with pytest.raises(Gsm7DecodeError):
        gsm7_decode(b"\x80")


def test_not_representable() -> None:
    assert gsm7_encode("Привет") is None
    assert gsm7_encode("a`b") is None
    assert gsm7_length("😀") is None
    assert choose_coding("hello {x}") == "gsm7"
    assert choose_coding("héllo") == "gsm7"
    assert choose_coding("hêllo") == "ucs2"


def test_pack_known_vector() -> None:
    # "hellohello" from 3GPP 23.040 examples: E8329BFD4697D9EC37
    septets = gsm7_encode("hellohello")
    assert septets is not None
    assert pack_septets(septets).hex().upper() == "E8329BFD4697D9EC37"
    assert unpack_septets(bytes.fromhex("E8329BFD4697D9EC37"), 10) == septets


def test_pack_with_fill_bits_after_udh() -> None:
    udh = build_concat_udh(0x42, 2, 1)
    fill = udh_fill_bits(len(udh))
    assert fill == 1  # 6 octets = 48 bits -> 49 = 7 septets
    assert udh_fill_bits(len(build_concat_udh(1, 2, 1, ref16=True))) == 0  # 56 bits
    septets = gsm7_encode("Hi")
    assert septets is not None
    packed = pack_septets(septets, fill)
    assert packed[0] & 1 == 0
    assert unpack_septets(packed, 2, fill) == septets


def test_pack_unpack_random_round_trip() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        n = rng.randrange(0, 200)
        septets = bytes(rng.randrange(128) for _ in range(n))
        fill = rng.randrange(7)
        packed = pack_septets(septets, fill)
        assert len(packed) == (fill + 7 * n + 7) // 8
        assert unpack_septets(packed, n, fill) == septets


def test_pack_limits() -> None:
    with pytest.raises(ValueError):
        pack_septets(b"\x80")
    with pytest.raises(ValueError):
        pack_septets(b"a", 7)
    with pytest.raises(ValueError):
        unpack_septets(b"\x00", 2)


def test_single_part_limits() -> None:
    assert split_text("a" * 160, max_parts=5) == ["a" * 160]
    assert len(split_text("a" * 161, max_parts=5)) == 2
    assert split_text("я" * 70, max_parts=5) == ["я" * 70]
    assert len(split_text("я" * 71, max_parts=5)) == 2
    # 80 escape chars = 160 septets: still one part
    assert split_text("€" * 80, max_parts=5) == ["€" * 80]
    assert len(split_text("€" * 80 + "a", max_parts=5)) == 2


def test_cyrillic_200_is_three_parts_of_67() -> None:
    text = ("Здравствуйте! " * 20)[:200]
    parts = split_text(text, max_parts=10)
    assert [len(p) for p in parts] == [67, 67, 66]
    assert "".join(parts) == text


def test_escape_pair_never_split() -> None:
    text = "a" * 152 + "€" + "b" * 10
    parts = split_text(text, max_parts=5)
    assert parts[0] == "a" * 152
    assert parts[1].startswith("€")
    for part in parts:
        septets = encode_text(part, "gsm7")
        assert len(septets) <= GSM7_MULTI
        assert not septets.endswith(b"\x1b")


def test_surrogate_pair_never_split() -> None:
    text = "я" * 66 + "😀" + "я" * 10
    parts = split_text(text, max_parts=5)
    assert parts[0] == "я" * 66
    assert parts[1].startswith("😀")
    assert ucs2_decode(encode_text(parts[1], "ucs2")) == parts[1]


def test_random_splits_respect_limits_and_rejoin() -> None:
    rng = random.Random(99)
    alphabet_gsm = BASIC_CHARS + EXT_CHARS * 3
    alphabet_ucs = "абвгдеёжз xyz€😀👍🏽\u00e9"
    for _ in range(300):
        source = alphabet_gsm if rng.random() < 0.5 else alphabet_ucs
        text = "".join(rng.choice(source) for _ in range(rng.randrange(1, 700)))
        parts = split_text(text, max_parts=255)
        coding = choose_coding(text)
        assert "".join(parts) == text
        limit = GSM7_MULTI if coding == "gsm7" else UCS2_MULTI
        if len(parts) > 1:
            for part in parts:
                payload = encode_text(part, coding)
                units = len(payload) if coding == "gsm7" else len(payload) // 2
                assert 0 < units <= limit
                if coding == "ucs2":
                    assert part.encode("utf-16-be", "strict")  # no lone surrogate
        assert count_segments(text).parts == len(parts)


def test_too_long_and_empty() -> None:
    with pytest.raises(MessageTooLongError) as err:
        split_text("я" * 300, max_parts=3)
    assert err.value.max_parts == 3
    assert err.value.parts_needed == 5
    assert err.value.coding == "ucs2"
    with pytest.raises(EmptyMessageError):
        split_text("", max_parts=3)
    with pytest.raises(ValueError):
        split_text("a", max_parts=0)


def test_forced_coding() -> None:
    assert split_text("hello", max_parts=1, coding="ucs2") == ["hello"]
    assert len(split_text("a" * 71, max_parts=2, coding="ucs2")) == 2


def test_count_segments() -> None:
    assert count_segments("").parts == 0
    c = count_segments("hello")
    assert (c.coding, c.parts, c.units, c.remaining_in_part) == ("gsm7", 1, 5, 155)
    c = count_segments("a" * 161)
    assert (c.parts, c.units_per_part, c.remaining_in_part) == (2, 153, 145)
    c = count_segments("я" * 71)
    assert (c.coding, c.parts, c.remaining_in_part) == ("ucs2", 2, 63)


def test_udh_build_and_parse() -> None:
    udh8 = build_concat_udh(0xAB, 3, 2)
    assert udh8 == bytes.fromhex("050003AB0302")
    udh16 = build_concat_udh(0x1234, 3, 3, ref16=True)
    assert udh16 == bytes.fromhex("0608041234 0303".replace(" ", ""))
    for udh, ref in ((udh8, 0xAB), (udh16, 0x1234)):
        elements, rest = split_udh(udh + b"payload")
        assert rest == b"payload"
        info = concat_info(elements)
        assert info is not None and info.reference == ref
    assert concat_info(split_udh(udh8)[0]) == ConcatInfo(0xAB, 3, 2)
    with pytest.raises(ValueError):
        build_concat_udh(256, 2, 1)
    with pytest.raises(ValueError):
        build_concat_udh(1, 2, 3)


def test_udh_with_other_elements_and_bad_ones() -> None:
    # port addressing IE (0x05) before the concat IE
    data = bytes.fromhex("0B05040B8423F00003070201") + b"x"
    elements, rest = split_udh(data)
    assert elements[0] == InformationElement(0x05, bytes.fromhex("0B8423F0"))
    assert concat_info(elements) == ConcatInfo(7, 2, 1)
    assert rest == b"x"
    assert concat_info([InformationElement(0, b"\x01\x00\x00")]) is None  # total 0
    assert concat_info([InformationElement(0, b"\x01\x02\x03")]) is None  # seq > total
    for bad in (b"", b"\x05\x00\x03", b"\x03\x00\x05\x01", b"\x01\x00"):
        with pytest.raises(UdhError):
            split_udh(bad)
