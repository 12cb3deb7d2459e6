"""Every Python snippet of README.md runs as written.

Snippets are marked ``<!-- snippet: NAME -->`` right before their code fence. Where the README uses
a stand-in for the user's own client (``client`` in the advanced patterns), the test supplies a
fake one and drives the snippet's classes through a real processor.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
)
from async_batch_llm.core import RateLimitConfig
from async_batch_llm.testing.servers import GeminiServer, OpenAIServer, ProviderServer

README = Path(__file__).resolve().parents[1] / "README.md"
_SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL)


def snippets() -> dict[str, str]:
    found = dict(_SNIPPET.findall(README.read_text(encoding="utf-8")))
    assert found, "README.md has no marked snippets"
    return found


def run_snippet(name: str, namespace: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """Execute one snippet as a script; return its globals and what it printed."""
    code = snippets()[name]
    scope: dict[str, Any] = {"__name__": f"readme_{name.replace('-', '_')}"}
    if namespace:
        scope.update(namespace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md[{name}]", "exec", dont_inherit=True), scope)
    return scope, out.getvalue()


def test_every_marked_snippet_is_covered_by_a_test() -> None:
    covered = {
        "basic",
        "custom-strategy",
        "retry-config",
        "rate-limit-config",
        "tokens",
        "gemini-cached",
        "observers",
        "post-processor",
        "progressive-temperature",
        "model-escalation",
        "partial-recovery",
        "dry-run",
        "config-reference",
        "resumable",
        "quota",
        "budgets",
        "batch-mode",
        "scale-out",
        "scale-out-ray",  # starts Ray: run by tests/ray_data/test_docs_ray.py (make test-ray)
    }
    assert set(snippets()) == covered


def test_batch_mode_snippet_prices_the_batch_at_half_the_online_cost() -> None:
    _, printed = run_snippet("batch-mode")
    assert printed.splitlines() == ["50/50 succeeded, cost $0.000109"]


def test_scale_out_snippet_configures_a_shared_quota_without_connecting() -> None:
    scope, printed = run_snippet("scale-out")
    backend = scope["config"].quota_backend
    assert type(backend).__name__ == "RedisQuotaBackend"
    assert backend.namespace == "team-openai-key"
    assert printed == (
        "RedisQuotaBackend('redis://127.0.0.1:6379/0', namespace='team-openai-key')\n"
    )


def test_budgets_snippet_stops_at_the_cost_cap() -> None:
    _, printed = run_snippet("budgets")
    assert printed.splitlines() == ["budget_exceeded", "True", "True"]


def test_basic_example_prints_success_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    with serving_from_a_thread(OpenAIServer()) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-readme")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # AsyncOpenAI() reads both
        _, printed = run_snippet("basic")
    # The emulator counts words: 4 prompt tokens per document ("Summarize: Document 1
    # text..."); its reply, the Summary JSON filled in with the prompt, is 10 words.
    assert printed.splitlines() == ["Succeeded: 2/2", "Tokens used: 28"]
    assert server.counts == {"chat_completions": 2}
    sent = {request.body["response_format"]["json_schema"]["name"] for request in server.requests}
    assert sent == {"Summary"}  # structured output, validated into Summary


def test_quota_snippet_runs_under_the_limit_without_a_429() -> None:
    _, printed = run_snippet("quota")
    lines = printed.splitlines()
    assert lines[:2] == ["20/20 succeeded, 429s: 0", "tokens: 1300"]
    rate = re.fullmatch(r"tokens/min ([\d,]+) of 40,000", lines[2])
    assert rate is not None, printed
    assert 0 < int(rate.group(1).replace(",", "")) <= 40_000
    assert len(lines) == 3


def test_retry_config_snippet() -> None:
    scope, _ = run_snippet("retry-config")
    config = scope["config"]
    assert isinstance(config, ProcessorConfig)
    assert config.retry == RetryConfig(
        max_attempts=3, initial_wait=1.0, max_wait=60.0, exponential_base=2.0, jitter=True
    )
    assert config.timeout_per_item == 30.0


def test_rate_limit_config_snippet() -> None:
    scope, _ = run_snippet("rate-limit-config")
    config = scope["config"]
    assert config.rate_limit == RateLimitConfig(
        cooldown_seconds=60.0,
        slow_start_items=50,
        slow_start_initial_delay=2.0,
        slow_start_final_delay=0.1,
        backoff_multiplier=2.0,
    )
    assert config.max_requests_per_minute == 600


def test_config_reference_snippet_matches_defaults() -> None:
    scope, _ = run_snippet("config-reference")
    assert scope["config"] == ProcessorConfig()


def test_tokens_snippet_prints_documented_values() -> None:
    _, printed = run_snippet("tokens")
    assert printed.splitlines() == [
        "Input tokens: 5000",
        "Cached tokens: 4500",
        "Cache hit rate: 90.0%",
        "Effective cost: 950 tokens",
    ]


def test_observers_snippet_counts_and_exports() -> None:
    _, printed = run_snippet("observers")
    lines = printed.splitlines()
    assert lines[0] == "10 10"
    assert "async_batch_llm_items_processed 10" in lines


def test_post_processor_snippet_saves_by_context() -> None:
    scope, printed = run_snippet("post-processor")
    assert printed.strip() == "['doc_123']"
    assert scope["saved"]["doc_123"] == {"response": "Mock response to: Summarize..."}


def test_dry_run_snippet_never_calls_execute() -> None:
    _, printed = run_snippet("dry-run")
    assert printed.strip() == "[DRY-RUN] Mock output for prompt: hello..."


# --------------------------------------------------------------------------- advanced patterns


class Reply(BaseModel):
    answer: int


class FakeClient:
    """Stands in for the README's provider client: records calls, replays scripted texts."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.calls: list[dict[str, Any]] = []

    async def generate(self, prompt: str, **kwargs: Any) -> SimpleNamespace:
        self.calls.append({"prompt": prompt, **kwargs})
        return SimpleNamespace(text=self.texts.pop(0), input_tokens=10, output_tokens=5)


def run_batch(strategy: Any, attempts: int = 3) -> Any:
    async def go() -> Any:
        config = ProcessorConfig(
            max_workers=1, retry=RetryConfig(max_attempts=attempts, initial_wait=0.001)
        )
        async with ParallelBatchProcessor[str, Any, None](config=config) as processor:
            await processor.add_work(LLMWorkItem(item_id="x", strategy=strategy, prompt="p"))
            return await processor.process_all()

    return asyncio.run(go())


def _validated(cls: type) -> type:
    """Subclass a README strategy so that its text output must parse as ``Reply``."""

    class Validated(cls):  # type: ignore[misc]  # subclassing a class only known at run time
        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            text, tokens = await super().execute(*args, **kwargs)
            try:
                return Reply.model_validate_json(text), tokens
            except ValidationError as exc:
                exc.__dict__["_failed_token_usage"] = tokens
                raise

    return Validated


def test_progressive_temperature_raises_temperature_after_validation_failures() -> None:
    scope, _ = run_snippet("progressive-temperature")
    client = FakeClient(["not json", "still not json", '{"answer": 42}'])
    strategy = _validated(scope["ProgressiveTempStrategy"])(client)
    result = run_batch(strategy)
    assert [call["temperature"] for call in client.calls] == [0.0, 0.5, 1.0]
    assert result.results[0].output == Reply(answer=42)
    assert result.total_input_tokens == 30  # every attempt counted


def test_model_escalation_escalates_only_on_validation_errors() -> None:
    scope, _ = run_snippet("model-escalation")
    client = FakeClient(["oops", '{"answer": 1}'])
    strategy = _validated(scope["SmartModelEscalationStrategy"])(client)
    result = run_batch(strategy)
    assert [call["model"] for call in client.calls] == ["gemini-2.5-flash-lite", "gemini-2.5-flash"]
    assert result.succeeded == 1


def test_partial_recovery_asks_only_for_missing_fields() -> None:
    scope, _ = run_snippet("partial-recovery")
    client = FakeClient(
        [
            json.dumps({"name": "Ada", "email": "ada@example.org"}),
            json.dumps({"phone": "123", "address": "1 Loop Rd"}),
        ]
    )
    result = run_batch(scope["PartialRecoveryStrategy"](client))
    assert result.succeeded == 1
    assert result.results[0].output == {
        "name": "Ada",
        "email": "ada@example.org",
        "phone": "123",
        "address": "1 Loop Rd",
    }
    assert "Now extract only: phone, address" in client.calls[1]["prompt"]
    assert result.results[0].token_usage["input_tokens"] == 20


# --------------------------------------------------------------------------- real SDKs


async def test_custom_strategy_snippet(monkeypatch: pytest.MonkeyPatch) -> None:
    async with OpenAIServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-readme")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # AsyncOpenAI() reads both
        scope, _ = run_snippet("custom-strategy")
        strategy = scope["strategy"]
        prompts = [f"summarise document number {i}" for i in range(6)]
        try:
            config = ProcessorConfig(max_workers=3, timeout_per_item=10.0)
            async with ParallelBatchProcessor[str, str, None](config=config) as processor:
                for prompt in prompts:
                    await processor.add_work(
                        LLMWorkItem(item_id=prompt, strategy=strategy, prompt=prompt)
                    )
                result = await processor.process_all()
        finally:
            await strategy.client.close()

    # The snippet's execute() has no `state` parameter (spec D2); every item still succeeds.
    assert (result.succeeded, result.failed) == (6, 0)
    for item in result.results:
        assert item.output == f"echo: {item.item_id}"
        # The server counts words: 4 in the prompt, 5 in "echo: <prompt>".
        assert item.token_usage == {"input_tokens": 4, "output_tokens": 5, "total_tokens": 9}
    assert (result.total_input_tokens, result.total_output_tokens) == (24, 30)
    assert server.request_count == 6
    assert server.counts == {"chat_completions": 6}
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer sk-readme"}
    assert {r.model for r in server.requests} == {"gpt-4o-mini"}


S = TypeVar("S", bound=ProviderServer)


@contextlib.contextmanager
def serving_from_a_thread(server: S) -> Iterator[S]:
    """Run ``server`` on its own event loop in a thread, for snippets that call asyncio.run()."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="provider-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_gemini_cached_snippet(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with serving_from_a_thread(GeminiServer()) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)  # genai.Client() reads it
        scope, printed = run_snippet("gemini-cached")
        scope["client"].close()

    # Three one-word questions over a three-word cached document: 3 of every 4 input tokens
    # were cached.
    assert printed == "Cache hit rate: 75.0%\n"
    assert server.counts == {
        "cache_list": 1,
        "cache_create": 1,  # one cache for the whole batch, shared by the five workers
        "generate_content": 3,
        "cache_delete": 1,  # strategy.delete_cache()
    }
    created = next(e for e in server.exchanges if e.request.kind == "cache_create")
    assert created.status == 200
    used = {r.cached_content for r in server.requests if r.kind == "generate_content"}
    assert len(used) == 1
    assert [r.cached_content for r in server.requests if r.kind == "cache_delete"] == list(used)
    assert server.caches == {}
    assert {r.model for r in server.requests if r.kind == "generate_content"} == {
        "gemini-2.0-flash"
    }


def test_resumable_snippet_replays_what_was_committed_and_pays_the_rest_once() -> None:
    _, printed = run_snippet("resumable")
    assert printed.splitlines() == [
        "100/100 succeeded, 60 replayed",
        "calls paid: 100",
        "label='99'",
    ]
