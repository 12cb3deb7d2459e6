"""What each provider is sent for a line, through the real SDKs and the local emulators.

These call the command's ``main()`` in this process (the child-process path is covered by the
OpenAI tests); the emulators record every request they get.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from async_batch_llm._cli import main
from async_batch_llm.testing.servers import (
    AnthropicServer,
    ErrorResponse,
    Fault,
    GeminiServer,
    OpenAIServer,
    ProviderRequest,
    ProviderServer,
)

from ._support import batch_line, read_lines, threaded

pytestmark = pytest.mark.timeout(30)

LINES = [
    batch_line("a", "hello there", max_tokens=50),
    json.dumps(
        {
            "custom_id": "b",
            "body": {
                "messages": [
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "second one"}]},
                ],
                "stop": ["x"],
            },
        }
    ),
    json.dumps({"id": 3, "prompt": "third"}),
]


def run(tmp: Path, provider: str, model: str, server: ProviderServer) -> tuple[int, Path]:
    source = tmp / "in.jsonl"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp / "out.jsonl"
    code = main(
        [
            "run", str(source), "--provider", provider, "--model", model,
            "--base-url", server.base_url, "--out", str(out), "--progress", "none",
        ]
    )  # fmt: skip
    return code, out


def by_prompt(requests: list[ProviderRequest]) -> dict[str, ProviderRequest]:
    return {r.prompt: r for r in requests if r.kind in ("messages", "generate_content")}


def check_output(out: Path, model: str) -> None:
    lines = {line["custom_id"]: line for line in read_lines(out)}
    assert set(lines) == {"a", "b", "3"}
    for custom_id, prompt in (("a", "hello there"), ("b", "second one"), ("3", "third")):
        body = lines[custom_id]["response"]["body"]
        assert body["model"] == model
        assert body["choices"][0]["message"]["content"] == f"echo: {prompt}"


def test_anthropic_gets_system_max_tokens_and_stop_sequences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    with threaded(AnthropicServer()) as server:
        code, out = run(tmp_path, "anthropic", "claude-sonnet-5", server)
        sent = by_prompt(server.requests)
    assert code == 0
    assert sent["hello there"].body["max_tokens"] == 50
    assert sent["second one"].body["system"] == "Be brief"
    assert sent["second one"].body["stop_sequences"] == ["x"]
    assert sent["second one"].body["max_tokens"] == 1024  # the strategy's default
    assert all(m["role"] != "system" for m in sent["second one"].body["messages"])
    check_output(out, "claude-sonnet-5")


def test_gemini_gets_the_system_instruction_and_generation_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "test")
    with threaded(GeminiServer()) as server:
        code, out = run(tmp_path, "gemini", "gemini-2.5-flash", server)
        sent = by_prompt(server.requests)
    assert code == 0
    assert sent["hello there"].body["generationConfig"]["maxOutputTokens"] == 50
    assert sent["second one"].system == "Be brief"
    assert sent["second one"].body["generationConfig"]["stopSequences"] == ["x"]
    check_output(out, "gemini-2.5-flash")


def test_openai_gets_the_body_parameters_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    with threaded(OpenAIServer(prompt_caching=False)) as server:
        code, out = run(tmp_path, "openai", "gpt-4o", server)
        sent = {r.prompt: r for r in server.requests if r.kind == "chat_completions"}
    assert code == 0
    assert sent["hello there"].body["max_tokens"] == 50
    assert sent["hello there"].body["model"] == "gpt-4o"  # --model wins over body.model
    assert sent["second one"].body["stop"] == ["x"]
    assert sent["second one"].body["messages"][0] == {"role": "system", "content": "Be brief"}
    check_output(out, "gpt-4o")


def test_a_request_that_fails_gets_an_error_line_and_exit_code_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_third(request: ProviderRequest) -> Fault | None:
        return (
            ErrorResponse(400, "This request is not allowed.")
            if request.prompt == "third"
            else None
        )

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    with threaded(OpenAIServer(fault_fn=refuse_third, prompt_caching=False)) as server:
        code, out = run(tmp_path, "openai", "gpt-4o-mini", server)
        calls = server.counts["chat_completions"]
    assert code == 1
    assert calls == 3  # a 400 is not retried
    lines = {line["custom_id"]: line for line in read_lines(out)}
    assert lines["a"]["error"] is None
    failed = lines["3"]
    assert failed["response"] is None
    assert failed["error"]["code"] == "bad_request"  # the result's error_category
    assert "This request is not allowed." in failed["error"]["message"]
