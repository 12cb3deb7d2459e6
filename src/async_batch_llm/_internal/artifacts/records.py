"""The shape of one journaled result, how outputs are encoded, and how items are fingerprinted.

Everything here is pure: no I/O, no event loop. The stores (``sqlite.py``, ``jsonl.py``) persist
:class:`ArtifactRecord` values; the processor builds them with :func:`encode_output` and
:func:`item_fingerprint` and turns them back into outputs with :func:`decode_output`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from async_batch_llm._types import BatchResult

__all__ = [
    "OUTPUT_KINDS",
    "SCHEMA_VERSION",
    "ArtifactRecord",
    "ArtifactStoreError",
    "ArtifactStoreWarning",
    "OutputKind",
    "ResumePolicy",
    "UnstorableOutputError",
    "decode_output",
    "encode_output",
    "item_fingerprint",
    "record_from_json",
    "record_to_json_line",
    "strategy_identity",
]

SCHEMA_VERSION: int = 1
"""Version of the on-disk layout written by this release; stores refuse files from a newer one."""

OutputKind: TypeAlias = Literal["none", "str", "json", "model"]
OUTPUT_KINDS: frozenset[str] = frozenset({"none", "str", "json", "model"})

# Compact and deterministic. ASCII-only output keeps lone surrogates (which UTF-8 cannot carry)
# representable as escapes, so a payload can always be written to SQLite or a UTF-8 file.
_DUMPS: dict[str, Any] = {"separators": (",", ":"), "allow_nan": False}


class ArtifactStoreError(Exception):
    """An artifact store could not be opened, read or written.

    Raised for misuse (a path that is not a store of ours, a file from a newer release, a file
    another writer holds) and for I/O or database failures, which are chained as ``__cause__``.
    The message names the file, what went wrong and what to do about it.

    Attributes:
        partial_result: when a store failed during ``process_all()``, every result of the batch
            (committed or not, plus a ``NotStarted`` failure for each item never started).
    """

    partial_result: BatchResult[Any, Any] | None = None


class ArtifactStoreWarning(RuntimeWarning):
    """Something about a store was repaired on open (for example a torn last line was dropped)."""


class UnstorableOutputError(TypeError):
    """An item's output cannot be journaled; the message names its type.

    Storable outputs are ``None``, ``str``, JSON values (``dict`` with ``str`` keys, ``list``,
    ``int``, ``float``, ``bool`` nested arbitrarily) and instances of the store's
    ``output_type`` when that is a pydantic model class.
    """


class ResumePolicy(str, Enum):  # noqa: UP042  # the spec fixes a str-mixin Enum
    """What a run does with the records an artifact store already holds.

    Attributes:
        NONE: record results, replay nothing.
        REUSE_SUCCESSES: replay committed successes with a matching fingerprint; call the
            rest (failures included) again.
        REUSE_ALL: replay every committed record with a matching fingerprint, failures too.
    """

    NONE = "none"
    REUSE_SUCCESSES = "reuse_successes"
    REUSE_ALL = "reuse_all"


@dataclass(slots=True)
class ArtifactRecord:
    """One journaled result of one item (a value: treat it as read-only).

    Not frozen on purpose: a frozen dataclass sets each field through ``object.__setattr__``,
    which made building the record the largest cost of journaling a result.

    Attributes:
        item_id: the work item's id; a store keeps every record and answers with the latest.
        fingerprint: :func:`item_fingerprint` of the prompt, strategy identity and version.
        success: whether the item succeeded.
        output_kind: how ``output`` is encoded: ``"none"``, ``"str"`` (the text itself),
            ``"json"`` (JSON text of a JSON value) or ``"model"`` (JSON text of a pydantic model).
        output: the encoded payload, ``None`` exactly when ``output_kind`` is ``"none"``.
        error: the error message of a failed item, else ``None``.
        token_usage: token counts as reported (``input_tokens``, ``output_tokens``,
            ``total_tokens``, ``cached_input_tokens``; absent keys were not reported).
        error_category: classification of the error, when known.
        cost: cost of the item in the currency of the price table, when known.
        created_at: wall-clock time the record was made (``time.time()``, seconds).
    """

    item_id: str
    fingerprint: str
    success: bool
    output_kind: OutputKind
    output: str | None
    error: str | None
    token_usage: Mapping[str, int]
    error_category: str | None = None
    cost: float | None = None
    created_at: float = 0.0


RecordFields = tuple[
    str,
    str,
    bool,
    OutputKind,
    str | None,
    str | None,
    Mapping[str, int],
    str | None,
    float | None,
    float,
]
"""The values of an :class:`ArtifactRecord`, in field order."""


def fields_of(record: ArtifactRecord) -> RecordFields:
    """``record``'s values in field order (what :meth:`ArtifactStore._encode_fields` takes).

    Raises:
        AttributeError: ``record`` lacks a field.
    """
    return (
        record.item_id,
        record.fingerprint,
        record.success,
        record.output_kind,
        record.output,
        record.error,
        record.token_usage,
        record.error_category,
        record.cost,
        record.created_at,
    )


def _is_utf8_safe(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_output(output: object, output_type: type | None) -> tuple[OutputKind, str | None]:
    """Encode an item's output for a store.

    Args:
        output: the strategy's output.
        output_type: the store's ``output_type``; required to store pydantic models.

    Returns:
        ``(kind, payload)``: ``("none", None)`` for ``None``; ``("str", text)`` for a string;
        ``("json", text)`` for a JSON value (and for a string holding lone surrogates, which
        UTF-8 cannot carry as text); ``("model", text)`` for an instance of ``output_type``.

    Raises:
        UnstorableOutputError: the output (or a value nested in it) has no lossless encoding:
            bytes, sets, tuples, dataclasses, dicts with non-string keys, NaN or infinity, or a
            pydantic model that is not an instance of ``output_type``.
    """
    if type(output) is str:
        if _is_utf8_safe(output):
            return "str", output
        return "json", json.dumps(output)
    if output is None:
        return "none", None
    if isinstance(output, BaseModel):
        return "model", _encode_model(output, output_type)
    if isinstance(output, str):
        text = str(output)
        return ("str", text) if _is_utf8_safe(text) else ("json", json.dumps(text))
    if isinstance(output, dict | list | int | float):
        return "json", _encode_json_value(output)
    raise UnstorableOutputError(
        f"cannot store an output of type {_type_name(output)}: only None, str, JSON values "
        "(dict with str keys, list, int, float, bool) and pydantic models (with output_type=) "
        "are storable; convert it in the strategy or a post-processor"
    )


def _encode_model(output: BaseModel, output_type: type | None) -> str:
    cls_name = _type_name(output)
    if output_type is None:
        raise UnstorableOutputError(
            f"cannot store an output of type {cls_name} (a pydantic model) without knowing its "
            f"class on replay: pass output_type={type(output).__name__} to the store"
        )
    if not isinstance(output, output_type):
        raise UnstorableOutputError(
            f"cannot store an output of type {cls_name}: the store's output_type is "
            f"{output_type.__module__}.{output_type.__qualname__}; "
            f"pass output_type={type(output).__name__} to the store"
        )
    try:
        return output.model_dump_json()
    except Exception as exc:
        raise UnstorableOutputError(
            f"cannot store an output of type {cls_name}: model_dump_json() failed: {exc}"
        ) from exc


def _encode_json_value(output: object) -> str:
    try:
        text = json.dumps(output, **_DUMPS)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnstorableOutputError(
            f"cannot store an output of type {_type_name(output)}: {_describe_unstorable(output)}"
        ) from exc
    # json.dumps silently turns tuples into lists and non-string keys into strings; a value
    # that does not come back equal would not replay as the same output.
    if json.loads(text) != output:
        raise UnstorableOutputError(
            f"cannot store an output of type {_type_name(output)}: {_describe_unstorable(output)}"
        )
    return text


def _describe_unstorable(value: object, depth: int = 0) -> str:
    """Name the first nested value that has no lossless JSON form (error path only)."""
    if depth > 200:
        return "it is nested too deeply (or contains itself)"
    if value is None or type(value) in (str, bool, int):
        return ""
    if type(value) is float:
        return "" if math.isfinite(value) else f"it contains the float {value!r}"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"it contains a dict key of type {_type_name(key)} (JSON keys are strings)"
            found = _describe_unstorable(item, depth + 1)
            if found:
                return found
        return ""
    if isinstance(value, list):
        for item in value:
            found = _describe_unstorable(item, depth + 1)
            if found:
                return found
        return ""
    if isinstance(value, str | int | float):
        return ""
    if depth == 0:
        return "it does not round-trip through JSON"
    return f"it contains a value of type {_type_name(value)}"


def decode_output(kind: str, payload: str | None, output_type: type | None) -> object:
    """Turn a stored payload back into the output it was encoded from.

    Args:
        kind: the record's ``output_kind``.
        payload: the record's ``output``.
        output_type: the store's ``output_type``; required for ``"model"`` records.

    Returns:
        ``None``, the string, the JSON value, or an ``output_type`` instance.

    Raises:
        ArtifactStoreError: the kind is unknown, the payload does not match it, or a model
            record cannot be rebuilt (no ``output_type``, or the payload no longer validates).
    """
    if kind == "str":
        if payload is None:
            raise ArtifactStoreError("corrupt record: output_kind 'str' without a payload")
        return payload
    if kind == "none":
        return None
    if payload is None:
        raise ArtifactStoreError(f"corrupt record: output_kind {kind!r} without a payload")
    if kind == "json":
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise ArtifactStoreError(f"corrupt record: invalid JSON payload ({exc})") from exc
    if kind == "model":
        if not (isinstance(output_type, type) and issubclass(output_type, BaseModel)):
            raise ArtifactStoreError(
                "a stored output is a pydantic model, but the store has no pydantic "
                f"output_type (got {output_type!r}); pass output_type=<YourModel> to the store"
            )
        try:
            return output_type.model_validate_json(payload)
        except ValidationError as exc:
            raise ArtifactStoreError(
                f"a stored output no longer validates as {output_type.__qualname__}; if the "
                "model changed, give the store a new version= so the items are called again "
                f"({exc.error_count()} validation error(s))"
            ) from exc
    raise ArtifactStoreError(f"corrupt record: unknown output_kind {kind!r}")


def strategy_identity(strategy: object) -> str:
    """Identify a strategy for fingerprints: its class and what it declares.

    Args:
        strategy: the strategy instance. If it has a callable ``fingerprint()`` returning a
            mapping (model name, generation parameters ...), that mapping joins the identity as
            canonical JSON; values that are not JSON are taken by ``repr``.

    Returns:
        ``"module.QualName"`` or ``"module.QualName|{...canonical JSON...}"``.

    Raises:
        ArtifactStoreError: ``fingerprint()`` raised, returned something that is not a mapping,
            or returned keys that cannot be ordered.
    """
    cls = type(strategy)
    identity = f"{cls.__module__}.{cls.__qualname__}"
    hook = getattr(strategy, "fingerprint", None)
    if hook is None or not callable(hook):
        return identity
    try:
        declared = hook()
    except Exception as exc:
        raise ArtifactStoreError(
            f"{identity}.fingerprint() raised {type(exc).__name__}: {exc}; it must return a "
            "mapping of the model and generation parameters"
        ) from exc
    if not isinstance(declared, Mapping):
        raise ArtifactStoreError(
            f"{identity}.fingerprint() must return a mapping, got {_type_name(declared)}"
        )
    try:
        canonical = json.dumps(dict(declared), sort_keys=True, default=repr, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ArtifactStoreError(
            f"{identity}.fingerprint() returned a mapping that cannot be canonicalised "
            f"({exc}); use string keys"
        ) from exc
    return f"{identity}|{canonical}"


def item_fingerprint(prompt: object, identity: str, version: str | None) -> str:
    """Hash what decides an item's result, so a changed item is never replayed.

    Args:
        prompt: the item's prompt; a ``str`` is hashed as is, anything else (a list of parts,
            ...) as canonical JSON with ``repr`` for values that are not JSON.
        identity: :func:`strategy_identity` of the item's strategy.
        version: the store's user version string (``None`` and ``""`` are the same).

    Returns:
        32 hexadecimal characters (BLAKE2b, 16-byte digest).
    """
    if type(prompt) is str:
        text = prompt
    else:
        try:
            text = json.dumps(prompt, sort_keys=True, default=repr, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            text = repr(prompt)
    hasher = fingerprint_hasher(identity, version)
    hasher.update(text.encode("utf-8", "surrogatepass"))
    return hasher.hexdigest()


def fingerprint_hasher(identity: str, version: str | None) -> hashlib.blake2b:
    """A BLAKE2b hasher fed with everything of a fingerprint but the prompt.

    :func:`item_fingerprint` is this, updated with the prompt's text; a caller hashing many
    prompts of one strategy keeps the hasher and ``copy()``s it for each.
    """
    return hashlib.blake2b(
        f"{identity}\x00{version or ''}\x00".encode("utf-8", "surrogatepass"), digest_size=16
    )


def record_to_json_line(record: ArtifactRecord) -> str:
    """Serialise a record as one JSON Lines line (without the newline).

    The output is embedded decoded: a ``"str"`` output as a JSON string, ``"json"`` and
    ``"model"`` outputs as the JSON value itself. Keys: ``item_id``, ``fingerprint``,
    ``success``, ``output_kind``, ``output``, ``error``, ``error_category``, ``cost``,
    ``token_usage``, ``created_at``.
    """
    kind = record.output_kind
    output = embedded_output(kind, record.output)
    return (
        f'{{"item_id":{json.dumps(record.item_id)},'
        f'"fingerprint":{json.dumps(record.fingerprint)},'
        f'"success":{"true" if record.success else "false"},'
        f'"output_kind":{json.dumps(kind)},'
        f'"output":{output},'
        f'"error":{json.dumps(record.error)},'
        f'"error_category":{json.dumps(record.error_category)},'
        f'"cost":{json.dumps(record.cost)},'
        f'"token_usage":{json.dumps(dict(record.token_usage), separators=(",", ":"))},'
        f'"created_at":{json.dumps(record.created_at)}}}'
    )


def embedded_output(kind: str, payload: str | None) -> str:
    """The JSON text of an encoded output inside a JSON Lines line (the output as a JSON value)."""
    if kind in ("json", "model") and payload is not None:
        # The payload is already compact JSON text: splice it in instead of parsing it.
        return payload
    return json.dumps(payload)


def payload_from_json(kind: object, value: object) -> str | None:
    """The inverse of :func:`embedded_output`: the stored payload of a parsed output value.

    Raises:
        ValueError: the value does not fit the kind.
    """
    if kind == "none":
        if value is not None:
            raise ValueError("output_kind 'none' with a non-null output")
        return None
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError("output_kind 'str' with a non-string output")
        return value
    return json.dumps(value, separators=(",", ":"))


def record_from_json(obj: object) -> ArtifactRecord:
    """Rebuild a record from a parsed JSON Lines object (the inverse of the line format).

    Raises:
        ValueError: the object is not a record of ours; the message says which field is wrong.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_type_name(obj)}")
    try:
        item_id = obj["item_id"]
        fingerprint = obj["fingerprint"]
        success = obj["success"]
        kind = obj["output_kind"]
        value = obj["output"]
        error = obj["error"]
        token_usage = obj["token_usage"]
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    error_category = obj.get("error_category")
    cost = obj.get("cost")
    created_at = obj.get("created_at", 0.0)
    if not isinstance(item_id, str) or not isinstance(fingerprint, str):
        raise ValueError("item_id and fingerprint must be strings")
    if not isinstance(success, bool):
        raise ValueError("success must be a boolean")
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output_kind {kind!r}")
    if error is not None and not isinstance(error, str):
        raise ValueError("error must be a string or null")
    if error_category is not None and not isinstance(error_category, str):
        raise ValueError("error_category must be a string or null")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
        raise ValueError("cost must be a number or null")
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        raise ValueError("created_at must be a number")
    if not isinstance(token_usage, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in token_usage.items()
    ):
        raise ValueError("token_usage must map strings to integers")
    payload = payload_from_json(kind, value)
    return ArtifactRecord(
        item_id=item_id,
        fingerprint=fingerprint,
        success=success,
        output_kind=kind,
        output=payload,
        error=error,
        token_usage=token_usage,
        error_category=error_category,
        cost=None if cost is None else float(cost),
        created_at=float(created_at),
    )


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
