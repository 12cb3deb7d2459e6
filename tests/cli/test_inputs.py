"""Parsing and checking input lines (pure), and the two passes over an input file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from async_batch_llm._cli.inputs import (
    InputFileError,
    LineError,
    Request,
    iter_requests,
    parse_line,
    scan_input,
)
from async_batch_llm._cli.providers import line_checker


def batch(custom_id: object = "a", **overrides: object) -> str:
    line: dict[str, object] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(overrides)
    return json.dumps(line)


def body(**fields: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_a_batch_line_becomes_messages_and_parameters() -> None:
    request = parse_line(batch(body=body(temperature=0.2, max_tokens=5)))
    assert request == Request(
        "a", ({"role": "user", "content": "hi"},), {"temperature": 0.2, "max_tokens": 5}, "m"
    )
    assert request.payload() == {
        "messages": [{"role": "user", "content": "hi"}],
        "params": {"temperature": 0.2, "max_tokens": 5},
    }


def test_method_and_url_may_be_left_out() -> None:
    request = parse_line(json.dumps({"custom_id": "x", "body": body()}))
    assert request.custom_id == "x"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "q1", "prompt": "Hello"}', Request("q1", ({"role": "user", "content": "Hello"},))),
        ('{"id": 7, "prompt": "Hello"}', Request("7", ({"role": "user", "content": "Hello"},))),
        (
            '{"id": "q", "prompt": "Hello", "system": "Be brief", "meta": 1}',
            Request(
                "q",
                (
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Hello"},
                ),
            ),
        ),
    ],
    ids=["string id", "integer id", "system and ignored keys"],
)
def test_a_short_line_becomes_one_user_message(line: str, expected: Request) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON (Expecting property name enclosed in double quotes"),
        ("[1, 2]", "a line must be a JSON object, got list"),
        ('{"prompt": "x"}', "expected an OpenAI batch request line"),
        (batch(custom_id=""), "custom_id must be a non-empty string, got ''"),
        (batch(custom_id=3), "custom_id must be a non-empty string, got 3"),
        (batch(method="GET"), "method must be 'POST', got 'GET'"),
        (batch(url="/v1/embeddings"), "url must be '/v1/chat/completions'"),
        (batch(body=[]), "body must be an object, got list"),
        (batch(body={"model": "m"}), "body.messages must be a non-empty list, got null"),
        (batch(body=body(messages=[])), "body.messages must be a non-empty list, got list"),
        (batch(body=body(messages=["hi"])), "body.messages[0] must be an object, got str"),
        (
            batch(body=body(messages=[{"role": "bot", "content": "x"}])),
            "body.messages[0].role must be one of",
        ),
        (
            batch(body=body(messages=[{"role": "user", "content": 5}])),
            "body.messages[0].content must be a string or a list of parts, got int",
        ),
        (batch(body=body(model=4)), "body.model must be a string, got int"),
        (batch(body=body(stream=True)), "body.stream is not supported"),
        ('{"id": true, "prompt": "x"}', "id must be a string or an integer, got bool"),
        ('{"id": "", "prompt": "x"}', "id must not be empty"),
        ('{"id": "a", "prompt": ""}', "prompt must be a non-empty string, got ''"),
        ('{"id": "a", "prompt": "x", "system": 1}', "system must be a string, got int"),
    ],
    ids=lambda value: value if len(value) < 30 else None,
)
def test_a_malformed_line_says_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(line)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("provider", "fields", "message"),
    [
        ("anthropic", {"seed": 1}, "body parameter(s) ['seed'] not supported with --provider"),
        ("anthropic", {"n": 2}, "(supported: ['max_completion_tokens', 'max_tokens', 'stop',"),
        ("gemini", {"logprobs": True}, "not supported with --provider gemini"),
    ],
)
def test_providers_refuse_parameters_they_cannot_send(
    provider: str, fields: dict[str, object], message: str
) -> None:
    request = parse_line(batch(body=body(**fields)))
    with pytest.raises(LineError) as caught:
        line_checker(provider)(request)
    assert message in str(caught.value)
    line_checker("openai")(request)  # OpenAI takes whatever its SDK takes


def test_parameters_the_installed_sdk_does_not_take_are_refused() -> None:
    request = parse_line(batch(body=body(frobnicate=1, temperature=0)))
    with pytest.raises(LineError) as caught:
        line_checker("openai")(request)
    assert "body parameter(s) ['frobnicate'] not taken by the installed openai SDK (" in str(
        caught.value
    )


def test_gemini_takes_one_user_turn_and_text_only() -> None:
    check = line_checker("gemini")
    two_turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    with pytest.raises(LineError, match="exactly one user message"):
        check(parse_line(batch(body=body(messages=two_turns))))
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(LineError, match=r"content: only text is supported"):
        check(parse_line(batch(body=body(messages=image))))
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    check(parse_line(batch(body=body(messages=parts))))


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_scan_reports_line_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, batch("a"), "", "{bad", "   ", batch("b"), '{"id": "c"}')
    report = scan_input(path)
    assert report.valid == 2
    assert report.error_count == 2
    assert [line for line, _ in report.errors] == [3, 6]
    assert report.duplicates == []
    assert report.models == {"gpt-4o-mini"}
    assert [r.custom_id for r in iter_requests(path)] == ["a", "b"]


def test_scan_finds_repeated_custom_ids_with_both_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, batch("a"), batch("b"), '{"id": "a", "prompt": "p"}', batch("b"))
    assert scan_input(path).duplicates == [("a", 1, 3), ("b", 2, 4)]


def test_scan_keeps_the_first_twenty_errors_and_counts_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, *(["nope"] * 25), batch("a"))
    report = scan_input(path)
    assert (report.valid, report.error_count, len(report.errors)) == (1, 25, 20)


def test_a_check_can_mark_lines_malformed_in_both_passes(tmp_path: Path) -> None:
    def no_b(request: Request) -> None:
        if request.custom_id == "b":
            raise LineError("b is not allowed")

    path = write(tmp_path, batch("a"), batch("b"))
    assert scan_input(path, no_b).errors == [(2, "b is not allowed")]
    assert [r.custom_id for r in iter_requests(path, no_b)] == ["a"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.jsonl", "does not exist"),
        (lambda tmp: tmp, "is a directory"),
        (
            lambda tmp: (tmp / "bin.jsonl").write_bytes(b"\xff\xfe") and tmp / "bin.jsonl",
            "is not UTF-8",
        ),
    ],
    ids=["missing", "directory", "not utf-8"],
)
def test_an_unreadable_input_is_one_clear_error(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]  # the table's lambdas
    with pytest.raises(InputFileError, match=message):
        scan_input(path)


def test_a_repeated_id_on_a_line_the_check_refuses_is_not_a_duplicate(tmp_path: Path) -> None:
    def no_params(request: Request) -> None:
        if request.params:
            raise LineError("no parameters here")

    refused = batch("a", body=body(temperature=1))
    path = write(tmp_path, batch("a"), refused, batch("b"), batch("b"))
    report = scan_input(path, no_params)
    assert report.errors == [(2, "no parameters here")]
    assert report.duplicates == [("b", 3, 4)]
