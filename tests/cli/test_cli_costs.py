"""What a CLI run costs: ``--dry-run``, ``--max-cost``, the cost summary and ``status``.

The dry run is checked in the real console script (it must not call the emulator at all); the
budget runs call the same ``main()`` in this process against a threaded OpenAI emulator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from async_batch_llm import PriceTable
from async_batch_llm._cli import main
from async_batch_llm._cli.commands import _format_status, store_status
from async_batch_llm._cli.costs import DEFAULT_OUTPUT_TOKENS, format_dollars
from async_batch_llm.testing.servers import OpenAIServer

from ._support import MODEL, Outcome, batch_line, child_env, cli, read_lines, threaded, write_input

pytestmark = pytest.mark.timeout(90)

PRICE = PriceTable.default().prices(MODEL)
AS_OF = PriceTable.default().as_of


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with threaded(OpenAIServer(prompt_caching=False)) as running:
        yield running


def run_here(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Outcome:
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    code = main(args)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def run_args(source: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        "run",
        str(source),
        "--provider",
        "openai",
        "--model",
        MODEL,
        "--base-url",
        url,
        "--out",
        str(out),
        "--progress",
        "none",
        *extra,
    ]


def spent(lines: list[dict[str, object]]) -> float:
    """Dollars of the answered lines: the emulator's usage at the list price."""
    total = 0.0
    for line in lines:
        response = line["response"]
        if isinstance(response, dict):
            usage = response["body"]["usage"]
            total += PRICE.cost(
                {
                    "input_tokens": usage["prompt_tokens"],
                    "output_tokens": usage["completion_tokens"],
                    "total_tokens": usage["total_tokens"],
                }
            )
    return total


# ------------------------------------------------------------------------------- --dry-run


def test_dry_run_prices_the_whole_input_and_calls_nothing(
    tmp_path: Path, server: OpenAIServer
) -> None:
    source = tmp_path / "in.jsonl"
    # 40 characters of message text (10 tokens) with max_tokens=100; a short line of 8
    # characters ("user" + "hi there": 2 + 1 -> 3 tokens) with the default allowance.
    source.write_text(
        batch_line("a", "x" * 36, max_tokens=100)
        + "\n"
        + json.dumps({"id": "b", "prompt": "hi there"})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    before = sum(server.counts.values())
    outcome = cli(run_args(source, out, server.base_url, "--dry-run", "--max-cost", "5"))
    assert outcome.code == 0, outcome.stderr
    assert sum(server.counts.values()) == before  # not even the model list
    assert not out.exists()
    input_tokens = 10 + 3
    output_tokens = 100 + DEFAULT_OUTPUT_TOKENS
    cost = PRICE.cost(
        {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
    )
    assert AS_OF is not None
    assert outcome.stdout.splitlines() == [
        "dry run: 2 request(s) priced, nothing was called",
        f"input tokens:   ~{input_tokens} (estimated: 4 characters of the messages per token)",
        f"output tokens:  <={output_tokens} (1 line(s) at their max_tokens, 1 at 256)",
        f"estimated cost: {format_dollars(cost)} for {MODEL} "
        f"(list prices as of {AS_OF.isoformat()})",
        "--max-cost:     $5.00 (the estimate fits)",
    ]


def test_dry_run_needs_no_api_key(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", 3)
    args = ["run", str(source), "--provider", "openai", "--model", MODEL, "--dry-run"]
    outcome = cli([*args, "--out", str(tmp_path / "o.jsonl")], env=child_env())
    assert outcome.code == 0, outcome.stderr
    assert "dry run: 3 request(s) priced" in outcome.stdout


def test_dry_run_of_an_unknown_model_exits_2_with_the_price_tables_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_input(tmp_path / "in.jsonl", 2)
    args = run_args(source, tmp_path / "o.jsonl", "http://127.0.0.1:9/v1", "--dry-run")
    args[args.index(MODEL)] = "gtp-4o-mini"
    outcome = run_here(args, monkeypatch, capsys)
    assert outcome.code == 2
    assert "--dry-run cannot price --model gtp-4o-mini" in outcome.stderr
    assert "no price for model 'gtp-4o-mini'" in outcome.stderr
    assert "closest known: 'gpt-4o-mini'" in outcome.stderr
    assert outcome.stdout == ""


def test_dry_run_says_when_max_cost_is_below_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_input(tmp_path / "in.jsonl", 50)
    args = run_args(source, tmp_path / "o.jsonl", "http://127.0.0.1:9/v1", "--dry-run")
    outcome = run_here([*args, "--max-cost", "0.0001"], monkeypatch, capsys)
    assert outcome.code == 0
    assert "--max-cost:     $0.000100 (below the estimate: the run may stop" in outcome.stdout


# ------------------------------------------------------------------------------- --max-cost


def test_a_priced_run_reports_its_cost_and_status_totals_it(
    tmp_path: Path,
    server: OpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_input(tmp_path / "in.jsonl", 12)
    out, store = tmp_path / "out.jsonl", tmp_path / "run.db"
    outcome = run_here(
        run_args(source, out, server.base_url, "--store", str(store)), monkeypatch, capsys
    )
    assert outcome.code == 0, outcome.stderr
    lines = read_lines(out)
    expected = spent(lines)
    assert expected > 0
    assert f"cost: {format_dollars(expected)} ({MODEL} list prices as of" in outcome.stdout
    status = store_status(store)
    assert status["cost"] == pytest.approx(expected)
    assert f"cost:       {format_dollars(expected)}" in _format_status(status)


def test_max_cost_stops_the_run_and_every_line_still_gets_a_result(
    tmp_path: Path,
    server: OpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 200
    source = write_input(tmp_path / "in.jsonl", total)
    out = tmp_path / "out.jsonl"
    # "question <i>": 2 input + 3 output tokens at gpt-4o-mini prices, about $2.1e-6 a line:
    # a budget of $0.0003 pays for at most about 140 lines of the 200.
    cap = 0.0003
    before = server.counts["chat_completions"]
    outcome = run_here(
        run_args(source, out, server.base_url, "--max-cost", str(cap), "--workers", "4"),
        monkeypatch,
        capsys,
    )
    calls = server.counts["chat_completions"] - before
    assert outcome.code == 1, outcome.stderr
    assert "stopped: the --max-cost budget of $0.000300 was reached" in outcome.stderr
    lines = read_lines(out)
    ids = [line["custom_id"] for line in lines]
    assert sorted(ids) == [f"r{i:04d}" for i in range(total)]  # each line exactly once
    answered = [line for line in lines if line["error"] is None]
    stopped = [line for line in lines if line["error"] is not None]
    assert 0 < len(answered) < total
    assert len(answered) == calls
    assert {line["error"]["code"] for line in stopped} == {"budget_exceeded"}
    messages = {line["error"]["message"][:60] for line in stopped}
    # The line whose reservation was refused says BudgetExceededError, the others BudgetExceeded.
    assert all(re.match(r"BudgetExceeded(Error)?: max_total_cost=0.0003 ", m) for m in messages)
    assert spent(lines) <= cap
    summary = outcome.stdout.splitlines()[0]
    assert summary.startswith(
        f"{len(answered)} succeeded, {len(stopped)} failed ({calls} called, "
        f"{len(stopped)} not run) in "
    )


def test_max_cost_of_a_model_without_a_price_is_refused_before_any_call(
    tmp_path: Path,
    server: OpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    args = run_args(source, out, server.base_url, "--max-cost", "1", "--no-model-check")
    args[args.index(MODEL)] = "my-local-model"
    before = sum(server.counts.values())
    outcome = run_here(args, monkeypatch, capsys)
    assert outcome.code == 2
    assert "--max-cost needs the price of --model my-local-model" in outcome.stderr
    assert "PriceTable.default().with_prices" in outcome.stderr
    assert sum(server.counts.values()) == before
    assert not out.exists()


def test_a_model_without_a_price_runs_unpriced_without_max_cost(
    tmp_path: Path,
    server: OpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_input(tmp_path / "in.jsonl", 2)
    out, store = tmp_path / "out.jsonl", tmp_path / "run.db"
    args = run_args(source, out, server.base_url, "--no-model-check", "--store", str(store))
    args[args.index(MODEL)] = "my-local-model"
    outcome = run_here(args, monkeypatch, capsys)
    assert outcome.code == 0, outcome.stderr
    assert "cost:" not in outcome.stdout
    status = store_status(store)
    assert status["cost"] is None
    assert "cost:" not in _format_status(status)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_max_cost_must_be_a_positive_number(
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_input(tmp_path / "in.jsonl", 1)
    args = run_args(source, tmp_path / "o.jsonl", "http://127.0.0.1:9/v1", "--max-cost", value)
    outcome = run_here(args, monkeypatch, capsys)
    assert outcome.code == 2
    assert "--max-cost" in outcome.stderr
