"""Deterministic example values for JSON schemas: what the emulators answer by default.

Split from ``_core`` (the servers' shared machinery): a pure function of a schema and a text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["example_for_schema"]


def example_for_schema(schema: Mapping[str, Any], text: str = "") -> Any:
    """Build a deterministic value that satisfies a (reasonable) JSON schema.

    Strings become ``text`` (respecting ``enum``/``const``/``format`` and
    length bounds), numbers their minimum or 0, booleans ``False``, arrays one
    item (or ``minItems``), objects their required properties.  ``$ref`` into
    ``$defs``/``definitions``, ``anyOf``/``oneOf``/``allOf`` and Gemini's
    upper-case type names are understood.
    """
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        value = schema.get(key)
        if isinstance(value, Mapping):
            defs.update(value)
    return _example(schema, text, defs, 0)


def _example(schema: Any, text: str, defs: Mapping[str, Any], depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > 12:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1])
        return _example(target, text, defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "any_of"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [
                o for o in options if not (isinstance(o, Mapping) and _type_of(o) == "null")
            ]
            return _example((non_null or options)[0], text, defs, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {}
        for part in all_of:
            if isinstance(part, Mapping):
                merged.update(part)
        return _example(merged, text, defs, depth + 1)
    kind = _type_of(schema)
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        required = schema.get("required")
        names = required if isinstance(required, list) else []
        return {
            name: _example(properties.get(name, {}), text, defs, depth + 1)
            for name in names
            if isinstance(name, str)
        }
    if kind == "array":
        min_items = _int(schema.get("minItems", schema.get("min_items")), 0)
        max_items = _int(schema.get("maxItems", schema.get("max_items")), -1)
        count = max(min_items, 1)
        if max_items >= 0:
            count = min(count, max_items)
        items = schema.get("items", {})
        return [_example(items, text, defs, depth + 1) for _ in range(count)]
    if kind == "integer":
        return _number(schema, integer=True)
    if kind == "number":
        return float(_number(schema, integer=False))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    if kind == "string" or kind is None:
        return _string(schema, text)
    return None


def _type_of(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if isinstance(k, str) and k.lower() != "null"]
        kind = non_null[0] if non_null else "null"
    if isinstance(kind, str):
        return kind.lower()
    return None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum")
    exclusive = schema.get("exclusiveMinimum")
    value: int | float = 0
    if isinstance(low, int | float):
        value = low
    if isinstance(exclusive, int | float):
        value = exclusive + 1 if integer else exclusive + 0.5
    high = schema.get("maximum")
    if isinstance(high, int | float) and value > high:
        value = high
    return int(value) if integer else value


_FORMAT_EXAMPLES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "urn:example",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _string(schema: Mapping[str, Any], text: str) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMAT_EXAMPLES:
        return _FORMAT_EXAMPLES[fmt]
    value = text
    min_length = _int(schema.get("minLength", schema.get("min_length")), 0)
    max_length = _int(schema.get("maxLength", schema.get("max_length")), -1)
    if len(value) < min_length:
        value = value + "x" * (min_length - len(value))
    if max_length >= 0:
        value = value[:max_length]
    return value
