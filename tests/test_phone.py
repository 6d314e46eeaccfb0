"""Number and metadata validation: properties over generated input, with phonenumbers' own
example numbers as the independent oracle for what is dialable."""

from __future__ import annotations

import re
import string

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import exceptions, phone

EXAMPLES = sorted(
    {
        phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
        for region in phonenumbers.SUPPORTED_REGIONS
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
        if (n := phonenumbers.example_number_for_type(region, kind)) is not None
    }
)
LONG_ENOUGH = [n for n in EXAMPLES if 10 <= len(n) - 1 <= 15]


@given(st.sampled_from(LONG_ENOUGH))
def test_every_regions_example_number_is_accepted(number: str) -> None:
    assert phone.validate_number(number) == number


@given(st.sampled_from([n for n in EXAMPLES if len(n) - 1 < 10]))
def test_numbers_under_ten_digits_are_refused_even_if_valid(number: str) -> None:
    with pytest.raises(exceptions.InvalidNumber):
        phone.validate_number(number)


@given(
    st.sampled_from(LONG_ENOUGH),
    st.integers(min_value=1),
    st.sampled_from([" ", "-", "(", ".", "\u00a0", "\n"]),
)
def test_separators_are_never_guessed_away(number: str, position: int, sep: str) -> None:
    at = 1 + position % (len(number) - 1)
    with pytest.raises(exceptions.InvalidNumber):
        phone.validate_number(number[:at] + sep + number[at:])


@given(st.sampled_from(LONG_ENOUGH))
def test_a_missing_plus_is_refused(number: str) -> None:
    with pytest.raises(exceptions.InvalidNumber):
        phone.validate_number(number[1:])
    with pytest.raises(exceptions.InvalidNumber):
        phone.validate_number("00" + number[1:])


@given(st.text(alphabet=string.digits, min_size=1, max_size=20))
@settings(max_examples=500)
def test_accepted_digit_strings_are_valid_e164_of_the_right_length(digits: str) -> None:
    number = "+" + digits
    try:
        phone.validate_number(number)
    except exceptions.InvalidNumber as exc:
        assert exc.code == "INVALID_PHONE_NUMBER"
        return
    assert 10 <= len(digits) <= 15
    parsed = phonenumbers.parse(number, None)
    assert phonenumbers.is_valid_number(parsed)
    assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number


@given(st.one_of(st.text(max_size=30), st.integers(), st.none(), st.floats()))
def test_anything_else_is_refused_with_the_code(value: object) -> None:
    if isinstance(value, str) and value in LONG_ENOUGH:
        return
    try:
        phone.validate_number(value)
    except exceptions.InvalidNumber as exc:
        assert "INVALID_PHONE_NUMBER" in str(exc)
    else:
        assert isinstance(value, str)
        assert phonenumbers.is_valid_number(phonenumbers.parse(value, None))


def test_the_seed_examples_are_valid() -> None:
    assert phone.validate_number("+14155551234") == "+14155551234"
    assert phone.validate_number("+16045551234", field="from") == "+16045551234"


def test_the_error_names_the_field() -> None:
    with pytest.raises(exceptions.InvalidNumber, match="'from'"):
        phone.validate_number("+1555", field="from")


SCALARS = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(st.dictionaries(st.text(min_size=1, max_size=10), SCALARS, max_size=8))
def test_flat_metadata_is_accepted_unchanged(metadata: dict[str, object]) -> None:
    assert phone.validate_metadata(metadata) == metadata


@given(
    st.dictionaries(st.text(min_size=1, max_size=10), SCALARS, max_size=4),
    st.text(min_size=1, max_size=10),
    st.one_of(
        st.lists(SCALARS, max_size=2), st.dictionaries(st.text(max_size=3), SCALARS, max_size=2)
    ),
)
def test_nested_metadata_is_refused(base: dict[str, object], key: str, nested: object) -> None:
    with pytest.raises(exceptions.InvalidMetadata, match=re.escape(repr(key))):
        phone.validate_metadata({**base, key: nested})


@pytest.mark.parametrize("bad", [[1, 2], "text", 3, {"": 1}, {"x": float("nan")}, {1: "a"}])
def test_metadata_shapes_refused(bad: object) -> None:
    with pytest.raises(exceptions.InvalidMetadata):
        phone.validate_metadata(bad)


def test_reserved_keys_are_refused() -> None:
    with pytest.raises(exceptions.InvalidMetadata, match="reserved"):
        phone.validate_metadata({"_orchestrator_ref": "x"}, reserved_prefix="_orchestrator")


def test_non_canonical_spelling_is_refused_with_the_canonical_one() -> None:
    """A trunk prefix kept after the country code names a real number in another spelling;
    two spellings of one person would defeat "one live call per number"."""
    with pytest.raises(exceptions.InvalidNumber, match=r"did you mean \+31100000000"):
        phone.validate_number("+310100000000")
