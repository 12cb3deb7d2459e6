"""Writing the CLI's output: one line per result in the OpenAI batch output format.

A success::

    {"id": "batch_req_…", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "…", "body": {chat.completion}},
     "error": null}

A failure (the request got no usable answer after every retry)::

    {"id": "batch_req_…", "custom_id": "r1", "response": null,
     "error": {"code": "<error category>", "message": "<error>"}}

The ``body`` is what the run stored for the item: a ``chat.completion`` object built from the
reply text and token usage (see :func:`completion_body`). Lines made from a live result and
lines exported later from the store's record of it are identical.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from async_batch_llm._internal.artifacts.records import ArtifactRecord, decode_output
from async_batch_llm._types import TokenUsage, WorkItemResult

__all__ = ["completion_body", "output_line", "record_output_line", "result_output_line"]

_DUMPS: dict[str, Any] = {"ensure_ascii": False, "separators": (",", ":")}


def completion_body(text: str, usage: TokenUsage | Mapping[str, int], model: str) -> dict[str, Any]:
    """A ``chat.completion`` object holding one reply.

    Args:
        text: the reply text.
        usage: the attempt's token usage (``input_tokens``, ``output_tokens``,
            ``total_tokens``, ``cached_input_tokens``).
        model: the model that answered.

    Returns:
        ``id``, ``object``, ``created``, ``model``, one ``choices`` entry (``finish_reason``
        ``"stop"``: the provider's own reason is not kept) and ``usage`` in OpenAI's names.
    """
    prompt_tokens = int(usage.get("input_tokens", 0))
    completion_tokens = int(usage.get("output_tokens", 0))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": int(usage.get("total_tokens", prompt_tokens + completion_tokens)),
            "prompt_tokens_details": {"cached_tokens": int(usage.get("cached_input_tokens", 0))},
        },
    }


def _line_id(custom_id: str, what: object) -> str:
    digest = hashlib.blake2b(
        json.dumps([custom_id, what], sort_keys=True, default=repr).encode(), digest_size=12
    )
    return f"batch_req_{digest.hexdigest()}"


def output_line(
    custom_id: str,
    *,
    success: bool,
    output: object,
    error: str | None,
    error_category: str | None,
    usage: TokenUsage | Mapping[str, int],
) -> str:
    """One output line (without the newline) for one item's result.

    Args:
        custom_id: the item id.
        success: whether the item succeeded.
        output: the stored output: a ``chat.completion`` dict, or a plain text (from a store
            written by library code), which is wrapped in one.
        error: the error message of a failure.
        error_category: the failure's category, the ``error.code`` (``"request_failed"``
            when unknown).
        usage: the item's token usage (used when ``output`` is plain text).
    """
    if success:
        body = output if isinstance(output, dict) else completion_body(str(output), usage, "")
        request_id = f"req_{str(body.get('id', ''))[-24:]}"
        line: dict[str, Any] = {
            "id": _line_id(custom_id, body.get("id")),
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body},
            "error": None,
        }
    else:
        message = error or "failed"
        line = {
            "id": _line_id(custom_id, message),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": error_category or "request_failed", "message": message},
        }
    return json.dumps(line, **_DUMPS)


def result_output_line(result: WorkItemResult[Any, Any]) -> str:
    """:func:`output_line` of a result the processor published."""
    return output_line(
        result.item_id,
        success=result.success,
        output=result.output,
        error=result.error,
        error_category=getattr(result, "error_category", None),
        usage=result.token_usage,
    )


def record_output_line(record: ArtifactRecord) -> str:
    """:func:`output_line` of a record of the store (what ``export`` writes)."""
    if record.output_kind == "model":  # a model record of library code: its JSON is enough
        output: object = json.loads(record.output or "null")
    else:
        output = decode_output(record.output_kind, record.output, None)
    return output_line(
        record.item_id,
        success=record.success,
        output=output,
        error=record.error,
        error_category=record.error_category,
        usage=record.token_usage,
    )
