"""Phone number and metadata validation, done before anything reaches the network."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

import phonenumbers

from orchestrator import exceptions

# The seed's rule: "+", then 10 to 15 digits in all (country code included), no separators.
_E164 = re.compile(r"\+[1-9][0-9]{9,14}")

Scalar = str | int | float | bool | None


def validate_number(number: object, *, field: str = "to") -> str:
    """Return ``number`` if it is a valid, dialable E.164 number, else raise InvalidNumber.

    The format must already be canonical (``+14155551234``): we never guess at a number a person
    typed with spaces, because a wrong guess rings a stranger.
    """
    if not isinstance(number, str):
        raise exceptions.InvalidNumber(f"'{field}' must be a string in E.164 format")
    if not _E164.fullmatch(number):
        raise exceptions.InvalidNumber(
            f"'{field}' must be E.164: '+', country code, 10 to 15 digits in all (got {number!r})"
        )
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise exceptions.InvalidNumber(f"'{field}' is not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise exceptions.InvalidNumber(f"'{field}' is not a valid, dialable number: {number}")
    canonical = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if canonical != number:
        # E.g. +310100000000: a national trunk prefix kept after the country code. The number
        # meant is probably the canonical one, but two spellings of one person would defeat
        # "never two live calls to one number", so only the canonical form is accepted.
        raise exceptions.InvalidNumber(
            f"'{field}' is not in canonical E.164 form: {number} (did you mean {canonical}?)"
        )
    return number


#: Metadata limits: it is copied into every event and every delivery of the call, so a
#: caller must not be able to make each of them huge.
MAX_METADATA_KEYS = 100
MAX_METADATA_KEY_LENGTH = 100
MAX_METADATA_BYTES = 16 * 1024


def validate_metadata(
    metadata: object,
    *,
    reserved_prefix: str | tuple[str, ...] | None = None,
    limits: bool = True,
) -> dict[str, Scalar]:
    """Return a copy of ``metadata`` if it is a flat JSON object of scalars within the limits
    (:data:`MAX_METADATA_KEYS` keys of at most :data:`MAX_METADATA_KEY_LENGTH` characters,
    :data:`MAX_METADATA_BYTES` as JSON), else raise naming the limit.

    Nested values are refused because the provider only promises to echo a flat object.
    ``reserved_prefix`` names keys that belong to the orchestrator (its correlation key).
    ``limits=False`` skips the size limits (a request the daemon builds: what the caller gave
    was checked on the way in, and the daemon adds its own key).
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise exceptions.InvalidMetadata("metadata must be a JSON object")
    if limits and len(metadata) > MAX_METADATA_KEYS:
        raise exceptions.InvalidMetadata(
            f"metadata has {len(metadata)} keys: at most {MAX_METADATA_KEYS}"
        )
    clean: dict[str, Scalar] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise exceptions.InvalidMetadata(f"metadata keys must be non-empty strings: {key!r}")
        if reserved_prefix and key.startswith(reserved_prefix):
            raise exceptions.InvalidMetadata(
                f"metadata key {key!r} is reserved for the orchestrator"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise exceptions.InvalidMetadata(f"metadata[{key!r}] must be a finite number")
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise exceptions.InvalidMetadata(
                f"metadata[{key!r}] must be a string, number, boolean or null, "
                f"not {type(value).__name__}"
            )
        if limits and len(key) > MAX_METADATA_KEY_LENGTH:
            raise exceptions.InvalidMetadata(
                f"metadata key {key[:40]!r}... is {len(key)} characters: at most "
                f"{MAX_METADATA_KEY_LENGTH}"
            )
        clean[key] = value
    size = len(json.dumps(clean, ensure_ascii=False).encode("utf-8")) if limits else 0
    if size > MAX_METADATA_BYTES:
        raise exceptions.InvalidMetadata(
            f"metadata is {size} bytes as JSON: at most {MAX_METADATA_BYTES}"
        )
    return clean
