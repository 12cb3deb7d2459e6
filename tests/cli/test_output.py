"""Output lines in the OpenAI batch output format, from live results and from store records."""

from __future__ import annotations

import json

from async_batch_llm import TokenUsage, WorkItemResult
from async_batch_llm._cli.output import (
    completion_body,
    record_output_line,
    result_output_line,
)
from async_batch_llm._internal.artifacts.records import ArtifactRecord, encode_output

USAGE: TokenUsage = {
    "input_tokens": 5,
    "output_tokens": 2,
    "total_tokens": 7,
    "cached_input_tokens": 3,
}


def test_a_completion_body_is_a_chat_completion() -> None:
    body = completion_body("hello", USAGE, "gpt-4o-mini")
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


def plain(usage: TokenUsage) -> dict[str, int]:
    return {name: count for name, count in usage.items() if isinstance(count, int)}


def record_of(result: WorkItemResult[object, None]) -> ArtifactRecord:
    kind, payload = encode_output(result.output, None)
    return ArtifactRecord(
        result.item_id,
        "f" * 32,
        result.success,
        kind,
        payload,
        result.error,
        plain(result.token_usage),
    )


def test_a_success_line_carries_the_body_and_matches_its_export() -> None:
    body = completion_body("hi", USAGE, "m")
    result: WorkItemResult[object, None] = WorkItemResult("r1", True, body, token_usage=USAGE)
    line = json.loads(result_output_line(result))
    assert line["custom_id"] == "r1"
    assert line["id"].startswith("batch_req_")
    assert line["error"] is None
    assert line["response"]["status_code"] == 200
    assert line["response"]["body"] == body
    assert record_output_line(record_of(result)) == result_output_line(result)


def test_a_failure_line_has_no_response_and_an_error() -> None:
    result: WorkItemResult[object, None] = WorkItemResult("r2", False, error="ValueError: no")
    line = json.loads(result_output_line(result))
    assert line["response"] is None
    assert line["error"] == {"code": "request_failed", "message": "ValueError: no"}
    assert record_output_line(record_of(result)) == result_output_line(result)


def test_a_plain_text_record_is_wrapped_in_a_body() -> None:
    record = ArtifactRecord("r3", "f" * 32, True, "str", "just text", None, plain(USAGE))
    line = json.loads(record_output_line(record))
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "just text"
    assert line["response"]["body"]["usage"]["total_tokens"] == 7


def test_lines_are_utf8_not_escaped() -> None:
    body = completion_body("café ☕", {}, "m")
    text = result_output_line(WorkItemResult("ü", True, body))
    assert "café ☕" in text
    assert json.loads(text)["custom_id"] == "ü"
