"""Every example in ``examples/`` runs offline, and docs/providers.md says what is true.

Each example is run the way a user runs it, ``python examples/NAME.py``, in a subprocess whose
environment has no provider API key and no ``*_BASE_URL`` variable, so it starts its local
provider emulator (offline mode). The tests check the exit code, that nothing went to stderr
that should not (tracebacks, unclosed-socket warnings; the interpreter runs with ``-W error``),
and the lines that carry each example's point.

The code blocks of docs/providers.md marked ``<!-- run-by: tests/test_examples.py NAME -->`` run
here too, and its error-classification table is checked against the real SDKs' exceptions.

The subprocesses run one after another (importing the provider SDKs dominates their run time).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types
from pydantic import BaseModel, ValidationError

from async_batch_llm import (
    DefaultErrorClassifier,
    ErrorClassifier,
    GeminiCachedStrategy,
    GeminiErrorClassifier,
    LLMWorkItem,
    ParallelBatchProcessor,
    ProcessorConfig,
    RetryConfig,
)
from async_batch_llm.testing.servers import (
    AnthropicServer,
    Disconnect,
    ErrorResponse,
    Fault,
    GeminiServer,
    Hang,
    OpenAIServer,
    RateLimited,
    ServerError,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PROVIDERS_DOC = ROOT / "docs" / "providers.md"

# Removed from the examples' environment: with any of these set they would leave offline mode.
PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
)

DEMOS = ("demo.py", "example_retries_and_quota.py")  # they print no "mode:" line

TOKENS = re.compile(r"tokens: (\d+) input(?: \((\d+) cached\))?, (\d+) output")


def run_example(script: str, *args: str) -> str:
    """Run ``examples/<script>`` offline; return its stdout after checking it went well."""
    env = {name: value for name, value in os.environ.items() if name not in PROVIDER_ENV}
    # The emulators listen on 127.0.0.1: never through a proxy.
    env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1,localhost"]))
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    report = (
        f"{script} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report
    assert "Warning" not in done.stderr.replace("warning", ""), report  # e.g. ResourceWarning
    assert done.stdout.startswith("mode: offline") or script in DEMOS, report
    return done.stdout


def token_totals(output: str) -> tuple[int, int, int]:
    """``(input, cached, output)`` from the last "tokens: ..." line."""
    found = TOKENS.findall(output)
    assert found, output
    inp, cached, out = found[-1]
    return int(inp), int(cached or 0), int(out)


# ----------------------------------------------------------------------------------- examples


def test_every_example_file_is_tested() -> None:
    tested = {
        "example_llm_strategies.py",
        "example_openai.py",
        "example_anthropic.py",
        "example_langchain.py",
        "example_gemini_direct.py",
        "example_gemini_smart_retry.py",
        "example_smart_model_escalation.py",
        "example_context_manager.py",
        "example_retries_and_quota.py",
        "demo.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} == tested


def test_llm_strategies_example_runs_all_four_strategies() -> None:
    out = run_example("example_llm_strategies.py")
    assert "q1       name='France' capital='Paris'" in out
    assert "w3       CHARLIE" in out
    assert "c1       The warranty of model K7 is 2 years." in out
    assert "ad1      model='K3' price_euros=28" in out
    assert [line.split(";")[0].strip() for line in out.splitlines() if "succeeded;" in line] == [
        "4/4 succeeded",
        "3/3 succeeded",
        "3/3 succeeded",
        "2/2 succeeded",
    ]
    cached_line = next(
        line for line in out.splitlines() if "3/3 succeeded" in line and "(0" not in line
    )
    assert int(re.findall(r"\((\d+) cached\)", cached_line)[0]) > 4000  # 3 x the catalogue
    assert "after delete_cache(): None" in out
    assert "'cache_create': 1" in out
    assert "'cache_delete': 1" in out


def test_openai_example_retries_a_429_and_a_malformed_reply() -> None:
    out = run_example("example_openai.py")
    assert "429, Retry-After 0.5s; every worker pauses" in out
    assert "reply is not a valid ReviewAnalysis; retrying" in out
    assert "review-2  negative  1/5" in out
    assert "6/6 succeeded" in out
    inp, _, output = token_totals(out)
    assert inp > 0
    assert output > 0
    assert "server saw 8 requests, statuses {200: 7, 429: 1}" in out


def test_anthropic_example_retries_a_529_a_429_and_an_unusable_answer() -> None:
    out = run_example("example_anthropic.py")
    assert "HTTP 529; retrying with backoff" in out
    assert "429, retry-after 0.5s; every worker pauses" in out
    assert "the answer is not a valid Triage; asking again" in out
    assert "ticket-2  bug" in out
    assert "5/5 succeeded" in out
    assert token_totals(out)[0] > 0
    assert "statuses {200: 6, 429: 1, 529: 1}" in out


def test_langchain_example_answers_from_retrieved_passages() -> None:
    out = run_example("example_langchain.py")
    assert "t1  Bonjour" in out
    assert "(sources: p1, p2)" in out  # retrieval ranked the returns passage first
    assert "OpenAIRateLimitError; retrying after the cooldown" in out
    assert "6/6 succeeded" in out
    assert token_totals(out)[0] > 0
    assert "statuses {200: 6, 429: 1}" in out


def test_gemini_direct_example_waits_out_the_retry_delay() -> None:
    out = run_example("example_gemini_direct.py")
    assert "429 RESOURCE_EXHAUSTED" in out
    assert "every worker pauses for 0.5s" in out  # the RetryInfo delay, not the 0.2 s configured
    assert "mail-3  2025-10-07 16:15" in out
    assert "4/4 succeeded" in out
    assert "rate limits hit: 1" in out
    assert "statuses {200: 5, 429: 1}" in out  # one 429, one malformed reply retried


def test_smart_retry_example_warms_up_only_after_validation_errors() -> None:
    out = run_example("example_gemini_smart_retry.py")
    assert out.count("next: temperature 0.4 with a correction note") == 2
    assert out.count("next: temperature 0.8 with a correction note") == 1
    assert "inv-4  #1044 Polar Freight" in out
    assert "4/4 succeeded" in out
    assert "temperatures [" in out
    assert "0.8]" in out or "0.8," in out


def test_escalation_example_escalates_only_on_validation_errors() -> None:
    out = run_example("example_smart_model_escalation.py")
    assert "ClientError 429 -> same model again" in out
    assert "escalate to gemini-2.5-flash" in out
    assert "escalate to gemini-2.5-pro" in out
    assert "h6  politics  answered by gemini-2.5-pro" in out
    assert "h1  politics  answered by gemini-2.5-flash-lite" in out
    assert "8/8 succeeded" in out
    saved = re.search(r"saved: (\d+)%", out)
    assert saved is not None
    assert int(saved.group(1)) > 50


def test_context_manager_example_prepares_and_cleans_up_once() -> None:
    out = run_example("example_context_manager.py")
    part1 = out[out.index("1. async with") : out.index("2. explicit")]
    assert part1.index("prepare() called") < part1.index("block still open")
    assert part1.index("block still open") < part1.index("cleanup() called")
    assert part1.index("cleanup() called") < part1.index("block exited")
    assert part1.count("prepare() called") == part1.count("cleanup() called") == 1
    part2 = out[out.index("2. explicit") : out.index("3. GeminiCachedStrategy")]
    assert part2.count("prepare() called") == part2.count("cleanup() called") == 1
    assert "c2-2: The price of model K13 is 58 euros." in out
    assert out.count("caches alive on the server: 1") == 2  # survived the first processor
    assert "after delete_cache(): cache None; caches alive on the server: 0" in out
    assert "server saw 1 cache create, 1 cache delete" in out


def test_demo_runs_the_cli_then_resumes_at_no_cost(tmp_path: Path) -> None:
    """``make demo``: the console script on examples/demo_requests.jsonl, then ``--resume``."""
    out = run_example("demo.py", "--keep", str(tmp_path))
    requests = (EXAMPLES / "demo_requests.jsonl").read_text(encoding="utf-8").splitlines()
    assert 40 <= len(requests) <= 60
    n = len(requests)
    run = "$ async-batch-llm run examples/demo_requests.jsonl --provider openai --model gpt-4o-mini"
    assert out.count(run) == 2, out
    assert re.search(rf"^{n} succeeded, 0 failed \({n} called, 0 reused from ", out, re.M), out
    resumed = out.split("--resume\n", 1)[1]
    assert re.match(rf"{n} succeeded, 0 failed \(0 called, {n} reused from ", resumed), out
    assert "cost: $0.000000 (gpt-4o-mini list prices" in resumed
    assert re.search(r"first run : \d+ completions \(\d+ lines \+ 3 retries\)", out), out
    assert "(429s: 0)" in out
    assert "resume    : 0 completions" in out
    assert f"succeeded:  {n}\n" in out  # status
    assert out.count("[ok] ") == 4
    assert "FAILED" not in out
    # What the demo left behind, checked here rather than trusted from its own checks.
    answered = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in answered) == sorted(
        json.loads(line)["custom_id"] for line in requests
    )
    assert all(line["error"] is None for line in answered)
    assert all(line["response"]["status_code"] == 200 for line in answered)
    status = subprocess.run(
        [
            str(Path(sys.executable).parent / "async-batch-llm"),
            "status",
            str(tmp_path / "run.db"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(status.stdout)["succeeded"] == n


def test_retries_and_quota_example_pauses_every_worker_for_retry_after() -> None:
    out = run_example("example_retries_and_quota.py", "--items", "60", "--quota-items", "30")
    out, part2 = out.split("\nPart 2: staying under a token quota.", 1)
    assert "openai SDK over HTTP to a local OpenAI emulator" in out
    assert re.search(r"429     doc-\d+ on worker \d \(Retry-After 1\.\d+s\)", out), out
    assert re.search(r"PAUSE   every worker for 1\.[45]\ds: the server's Retry-After", out), out
    assert "RESUME  after 1.5" in out
    assert "SLOW    item  1/16" in out
    assert "succeeded / failed : 60 / 0 of 60" in out
    requests = re.search(r"provider requests  : (\d+) seen by the server \((.*)\)", out)
    assert requests is not None, out
    statuses = dict(pair.split(": ") for pair in requests.group(2).split(", "))
    assert int(statuses["429"]) >= 1
    assert int(statuses["200"]) == 60
    assert int(requests.group(1)) == sum(int(n) for n in statuses.values())
    assert "calls started while paused: 0" in out
    cached = re.search(r"cache hit rate     : ([\d.]+)%", out)
    assert cached is not None
    assert float(cached.group(1)) > 80
    assert re.search(r"wall time          : [\d.]+s", out)
    assert "async_batch_llm_items_processed 60" in out
    assert "async_batch_llm_rate_limits_hit " in out

    # Part 2: a TPM-bound batch paced by the gate against an emulator enforcing the same limit.
    assert "succeeded / failed : 30 / 0 of 30" in part2
    assert "provider requests  : 30 seen by the server (200: 30)" in part2
    assert "429 responses      : 0" in part2
    gate_lines = re.findall(r"GATE    tokens/min +([\d,]+) of 90,000 .*429s so far: 0", part2)
    assert gate_lines, part2
    used = re.search(r"tokens per minute  : ([\d,]+) used, limit 90,000", part2)
    assert used is not None, part2
    assert 0 < int(used.group(1).replace(",", "")) <= 90_000
    assert re.search(r"requests per minute: [\d,]+ used, limit 1,200", part2), part2
    charged = re.search(r"tokens             : ([\d,]+) .*the server charged ([\d,]+)", part2)
    assert charged is not None, part2
    assert charged.group(1) == charged.group(2)  # the usage the gate reconciled is the server's
    assert 'async_batch_llm_quota_limit_per_minute{quota_scope="openai:gpt-4o-mini",' in part2


@pytest.mark.parametrize(
    ("key", "mode"),
    [
        ("sk-from-env", "mode: real — OPENAI_API_KEY is set; calling the OpenAI API via "),
        (None, "mode: endpoint — "),
    ],
    ids=["key-and-base-url", "base-url-only"],
)
async def test_examples_leave_the_sdk_environment_to_the_sdk(
    key: str | None, mode: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``OPENAI_BASE_URL`` set, an example runs against it, with the key from the environment.

    In-process (the SDKs are already imported here): the example's ``main()`` runs on this
    test's event loop, next to the server standing in for the endpoint.
    """
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    main = runpy.run_path(str(EXAMPLES / "example_openai.py"), run_name="example_openai")["main"]
    async with OpenAIServer(api_key=key) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        if key is not None:
            monkeypatch.setenv("OPENAI_API_KEY", key)  # the server refuses any other key
        await main()
    out = capsys.readouterr().out
    assert out.startswith(mode + f"OPENAI_BASE_URL={server.base_url}"), out
    assert "6/6 succeeded" in out
    assert server.status_counts == {200: 6}  # no scripted faults outside offline mode


# ------------------------------------------------------------------------- docs/providers.md

# Marked "run-by" rather than "snippet": these blocks define tests and classes, they print
# nothing, so tests/test_docs_snippets.py (which checks printed output) leaves them to us.
_SNIPPET = re.compile(
    r"<!-- run-by: tests/test_examples.py ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL
)


def doc_snippets() -> dict[str, str]:
    return dict(_SNIPPET.findall(PROVIDERS_DOC.read_text(encoding="utf-8")))


def exec_snippet(name: str) -> dict[str, Any]:
    scope: dict[str, Any] = {"__name__": f"providers_{name.replace('-', '_')}"}
    exec(compile(doc_snippets()[name], f"providers.md[{name}]", "exec"), scope)
    return scope


def test_every_providers_code_block_is_covered() -> None:
    text = PROVIDERS_DOC.read_text(encoding="utf-8")
    fences = re.findall(r"^```(\w*)$", text, re.MULTILINE)
    # One bash block of commands (checked below), then one python block per marked snippet:
    # "run-by" blocks run here, "snippet" blocks (which print) in tests/test_docs_snippets.py.
    printing = len(re.findall(r"^<!-- snippet: [\w-]+ -->\n```python$", text, re.MULTILINE))
    assert printing == 1
    assert fences.count("bash") == 1
    assert fences.count("python") == len(doc_snippets()) + printing
    assert set(doc_snippets()) == {
        "fail-fast-classifier",
        "retrying-gemini-classifier",
        "openai-server-test",
        "anthropic-server-test",
        "gemini-server-test",
    }


def test_providers_commands_are_the_tested_examples() -> None:
    text = PROVIDERS_DOC.read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = block.strip().splitlines()
    assert all(line.startswith("python examples/") for line in commands)
    scripts = {line.split()[1].removeprefix("examples/") for line in commands}
    assert {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")} == scripts
    # the command of the example's test
    assert "python examples/example_retries_and_quota.py --items 60 --quota-items 30" in commands


@pytest.mark.parametrize(
    ("snippet", "test_name"),
    [
        ("openai-server-test", "test_batch_survives_a_429_and_a_503"),
        ("anthropic-server-test", "test_sentiment_batch_offline"),
        ("gemini-server-test", "test_gemini_batch_waits_out_the_retry_delay"),
    ],
    ids=["openai", "anthropic", "gemini"],
)
def test_providers_server_snippets_pass(snippet: str, test_name: str) -> None:
    test: Callable[[], Coroutine[Any, Any, None]] = exec_snippet(snippet)[test_name]
    asyncio.run(test())


# What docs/providers.md's table says, per (SDK, fault): (Default retries?, Gemini retries?,
# is a rate limit?).
FAULTS: dict[str, Fault] = {
    "429": RateLimited(retry_after=1.0),
    "500": ServerError(500),
    "503": ServerError(503),
    "504": ServerError(504),
    "529": ServerError(529),
    "400": ErrorResponse(400),
    "401": ErrorResponse(401),
    "403": ErrorResponse(403),
    "404": ErrorResponse(404),
}
TRANSPORT: dict[str, Fault] = {"disconnect": Disconnect(), "hang": Hang()}
TABLE: dict[tuple[str, str], tuple[bool, bool, bool]] = {
    **{(sdk, "429"): (True, False, True) for sdk in ("openai", "anthropic", "gemini")},
    **{
        (sdk, code): (True, True, False)
        for sdk in ("openai", "anthropic")
        for code in ("500", "503", "529")
    },
    **{("gemini", code): (True, False, False) for code in ("500", "503")},
    **{(sdk, "504"): (True, True, False) for sdk in ("openai", "anthropic", "gemini")},
    **{
        (sdk, code): (True, True, False)
        for sdk in ("openai", "anthropic", "gemini")
        for code in ("400", "401", "403", "404")
    },
    **{
        (sdk, name): (True, True, False)
        for sdk in ("openai", "anthropic", "gemini")
        for name in TRANSPORT
    },
}


CLIENT_TIMEOUT = 0.3  # seconds; ends the requests the server leaves hanging


async def sdk_errors(sdk: str, faults: dict[str, Fault]) -> dict[str, Exception]:
    """The exception the SDK raises for each fault, from a real request to a local server."""
    raised: dict[str, Exception] = {}
    if sdk == "openai":
        async with OpenAIServer() as server:
            client = openai.AsyncOpenAI(
                base_url=server.base_url, api_key="k", max_retries=0, timeout=CLIENT_TIMEOUT
            )
            try:
                for name, fault in faults.items():
                    server.script(fault)
                    try:
                        await client.chat.completions.create(
                            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                        )
                    except Exception as exc:
                        raised[name] = exc
            finally:
                await client.close()
    elif sdk == "anthropic":
        async with AnthropicServer() as server:
            claude = anthropic.AsyncAnthropic(
                base_url=server.url, api_key="k", max_retries=0, timeout=CLIENT_TIMEOUT
            )
            try:
                for name, fault in faults.items():
                    server.script(fault)
                    try:
                        await claude.messages.create(
                            model="claude-haiku-4-5",
                            max_tokens=5,
                            messages=[{"role": "user", "content": "x"}],
                        )
                    except Exception as exc:
                        raised[name] = exc
            finally:
                await claude.close()
    else:
        async with GeminiServer() as server:
            options = types.HttpOptions(base_url=server.url, timeout=int(CLIENT_TIMEOUT * 1000))
            gemini = genai.Client(api_key="k", http_options=options)
            try:
                for name, fault in faults.items():
                    server.script(fault)
                    try:
                        await gemini.aio.models.generate_content(
                            model="gemini-2.5-flash", contents="x"
                        )
                    except Exception as exc:
                        raised[name] = exc
            finally:
                await gemini.aio.aclose()
    return raised


@pytest.mark.parametrize("sdk", ["openai", "anthropic", "gemini"])
def test_providers_classification_table_holds(sdk: str) -> None:
    known = {**FAULTS, **TRANSPORT}
    faults = {code: known[code] for (name, code) in TABLE if name == sdk}
    raised = asyncio.run(sdk_errors(sdk, faults))
    assert set(raised) == set(faults)
    default, gemini = DefaultErrorClassifier(), GeminiErrorClassifier()
    for code, exc in raised.items():
        default_retries, gemini_retries, rate_limit = TABLE[(sdk, code)]
        assert default.classify(exc).is_retryable is default_retries, (code, exc)
        assert gemini.classify(exc).is_retryable is gemini_retries, (code, exc)
        assert default.classify(exc).is_rate_limit is rate_limit, (code, exc)
        assert gemini.classify(exc).is_rate_limit is rate_limit, (code, exc)


def test_providers_classification_of_validation_and_value_errors() -> None:
    class Reply(BaseModel):
        answer: int

    try:
        Reply.model_validate_json("not json")
    except ValidationError as exc:
        invalid: Exception = exc
    blocked = ValueError("Empty response from model (likely blocked by safety filter).")
    for classifier in (DefaultErrorClassifier(), GeminiErrorClassifier()):
        assert classifier.classify(invalid).is_retryable
        assert not classifier.classify(blocked).is_retryable


def test_fail_fast_classifier_snippet() -> None:
    classifier: ErrorClassifier = exec_snippet("fail-fast-classifier")["FailFastOnClientErrors"]()
    for sdk in ("openai", "anthropic", "gemini"):
        raised = asyncio.run(sdk_errors(sdk, FAULTS))
        for code, exc in raised.items():
            info = classifier.classify(exc)
            expected = not code.startswith("4") or code == "429"
            assert info.is_retryable is expected, (sdk, code)
            assert info.is_rate_limit is (code == "429"), (sdk, code)


def test_retrying_gemini_classifier_snippet() -> None:
    classifier: ErrorClassifier = exec_snippet("retrying-gemini-classifier")[
        "RetryingGeminiClassifier"
    ]()
    raised = asyncio.run(sdk_errors("gemini", FAULTS))
    for code in ("429", "500", "503", "504", "400"):
        assert classifier.classify(raised[code]).is_retryable, code
    assert classifier.classify(raised["429"]).is_rate_limit


def test_gemini_cache_deleted_elsewhere_is_recreated_on_the_retry() -> None:
    """docs/providers.md, "A cache that disappears early": the 403 costs one attempt, no item."""

    async def scenario() -> tuple[list[bool], int, int, str | None, str | None]:
        async with GeminiServer() as server:
            client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=server.url))
            strategy = GeminiCachedStrategy(
                "gemini-2.5-flash",
                client,
                [types.Content(role="user", parts=[types.Part(text="a large context")])],
            )
            config = ProcessorConfig(retry=RetryConfig(max_attempts=2, initial_wait=0.01))
            try:
                async with ParallelBatchProcessor[str, str, None](config=config) as processor:
                    await processor.add_work(
                        LLMWorkItem(item_id="a", strategy=strategy, prompt="q")
                    )
                    first = await processor.process_all()
                assert first.succeeded == 1
                dead = strategy.model.cache_name
                assert dead is not None
                await client.aio.caches.delete(name=dead)  # "another program" deletes it
                async with ParallelBatchProcessor[str, str, None](config=config) as processor:
                    await processor.add_work(
                        LLMWorkItem(item_id="b", strategy=strategy, prompt="q")
                    )
                    second = await processor.process_all()
                return (
                    [r.success for r in second.results],
                    server.status_counts[403],
                    server.counts["cache_create"],
                    dead,
                    strategy.model.cache_name,
                )
            finally:
                await client.aio.aclose()

    successes, forbidden, creates, dead, live = asyncio.run(scenario())
    assert successes == [True]
    assert forbidden == 1  # only the first attempt used the dead name
    assert creates == 2  # the retry created a fresh cache
    assert live is not None
    assert live != dead
