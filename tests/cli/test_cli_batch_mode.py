"""``run --mode batch``: the real console script against the emulators' batch APIs (OpenAI's
Batch API; Gemini's batch jobs, and Anthropic's Message Batches through ``main``).

The emulator runs its jobs on a fast time scale (a job's simulated half minute passes in
milliseconds), so a run takes about one poll interval of the batch backend (5 s) of real time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from async_batch_llm import PriceTable
from async_batch_llm._cli import main
from async_batch_llm._cli.commands import store_status
from async_batch_llm._cli.costs import format_dollars
from async_batch_llm.testing.servers import AnthropicServer, BatchTiming, GeminiServer, OpenAIServer

from ._support import MODEL, SCRIPT, batch_line, child_env, cli, read_lines, threaded, write_input

pytestmark = pytest.mark.timeout(120)

PRICE = PriceTable.default().prices(MODEL)
AS_OF = PriceTable.default().as_of

FAST = BatchTiming(time_scale=3600.0)
"""Jobs of the emulator: 10 s validating, 1 s a line, 10 s finalizing, an hour a second."""


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with threaded(OpenAIServer(batch_timing=FAST, prompt_caching=False)) as running:
        yield running


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


def test_batch_mode_answers_every_line_through_one_job_at_half_the_online_cost(
    tmp_path: Path, server: OpenAIServer
) -> None:
    source = write_input(tmp_path / "in.jsonl", 6)
    online_out, batch_out = tmp_path / "online.jsonl", tmp_path / "batch.jsonl"
    online_db, batch_db = tmp_path / "online.db", tmp_path / "batch.db"

    online = cli(run_args(source, online_out, server.base_url, "--store", str(online_db)))
    assert online.code == 0, online.stderr
    assert server.counts["chat_completions"] == 6
    assert not server.batch_jobs

    batch = cli(
        run_args(source, batch_out, server.base_url, "--store", str(batch_db), "--mode", "batch")
    )
    assert batch.code == 0, batch.stderr
    assert server.counts["chat_completions"] == 6  # no line was called online
    assert len(server.batch_jobs) == 1
    submissions = server.batch_line_submissions  # by the processor's own line ids
    assert sorted(submissions.values()) == [1] * 6

    lines = read_lines(batch_out)
    assert sorted(line["custom_id"] for line in lines) == [f"r{i:04d}" for i in range(6)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert all(line["error"] is None for line in lines)
    by_id = {line["custom_id"]: line["response"]["body"] for line in read_lines(online_out)}
    for line in lines:  # the same answers and usage as online
        body = line["response"]["body"]
        online_body = by_id[line["custom_id"]]
        assert body["choices"][0]["message"] == online_body["choices"][0]["message"]
        assert body["usage"] == online_body["usage"]

    online_cost = store_status(online_db)["cost"]
    batch_cost = store_status(batch_db)["cost"]
    assert online_cost is not None
    assert online_cost > 0
    assert batch_cost == pytest.approx(online_cost / 2)
    assert f"cost: {format_dollars(batch_cost)} ({MODEL} batch prices" in batch.stdout
    assert "6 succeeded, 0 failed (6 called" in batch.stdout


def test_resume_polls_the_job_of_a_killed_run_instead_of_submitting_again(
    tmp_path: Path,
) -> None:
    # Jobs finish 3 s after creation (real time); the script is killed as soon as its job
    # exists, well before its first status read (5 s after submission).
    slow = BatchTiming(validating_seconds=0.0, seconds_per_line=0.0, finalizing_seconds=3.0)
    source = write_input(tmp_path / "in.jsonl", 4)
    out, db = tmp_path / "out.jsonl", tmp_path / "run.db"
    args = run_args(source, out, "", "--store", str(db), "--mode", "batch")
    with threaded(OpenAIServer(batch_timing=slow, prompt_caching=False)) as server:
        args[args.index("--base-url") + 1] = server.base_url
        child = subprocess.Popen(
            [str(SCRIPT), *args],
            env=child_env(OPENAI_API_KEY="test"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not server.batch_jobs and child.poll() is None:
                assert time.monotonic() < deadline, "no batch job was submitted"
                time.sleep(0.02)
        finally:
            child.kill()
            child.wait(timeout=10)
        assert len(server.batch_jobs) == 1

        resumed = cli([*args, "--resume"])
        assert resumed.code == 0, resumed.stderr
        assert len(server.batch_jobs) == 1  # the killed run's job, polled, not a new one
        assert sorted(server.batch_line_submissions.values()) == [1] * 4
        assert server.counts["chat_completions"] == 0
    lines = read_lines(out)
    assert sorted(line["custom_id"] for line in lines) == [f"r{i:04d}" for i in range(4)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert store_status(db)["succeeded"] == 4


def test_ctrl_c_cancels_the_provider_job_and_resume_finishes_every_line(tmp_path: Path) -> None:
    # A job's lines take a minute each: the run is still polling it when Ctrl-C comes.
    slow = BatchTiming(validating_seconds=0.0, seconds_per_line=60.0, finalizing_seconds=0.0)
    source = write_input(tmp_path / "in.jsonl", 4)
    out, db = tmp_path / "out.jsonl", tmp_path / "run.db"
    with threaded(OpenAIServer(batch_timing=slow, prompt_caching=False)) as server:
        args = run_args(source, out, server.base_url, "--store", str(db), "--mode", "batch")
        child = subprocess.Popen(
            [str(SCRIPT), *args],
            env=child_env(OPENAI_API_KEY="test"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Its first status read (5 s after submitting) shows the run holds the job's id.
            deadline = time.monotonic() + 40
            while server.counts["batches_retrieve"] == 0 and child.poll() is None:
                assert time.monotonic() < deadline, "the batch job was never polled"
                time.sleep(0.02)
            child.send_signal(signal.SIGINT)
            _, stderr = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
        assert child.returncode == 130, stderr
        assert f"run again with --resume --store {db}" in stderr
        (first,) = server.batch_jobs.values()
        assert server.counts["batches_cancel"] == 1  # the provider was asked to cancel it
        assert first.state in ("cancelling", "cancelled")

        server.batch_timing = FAST  # later jobs finish at once
        resumed = cli([*args, "--resume"])
        assert resumed.code == 0, resumed.stderr
        assert first.state == "cancelled"  # polled by the resumed run, not submitted again
        assert len(first.answers) == 0
        jobs = list(server.batch_jobs.values())
        assert len(jobs) == 2  # the lines the cancelled job never ran, in a new job
        assert len(jobs[1].lines) == 4
        assert server.counts["chat_completions"] == 0
    lines = read_lines(out)
    assert sorted(line["custom_id"] for line in lines) == [f"r{i:04d}" for i in range(4)]
    assert all(line["response"]["status_code"] == 200 for line in lines)


GEMINI = "gemini-2.5-flash"


def gemini_input(path: Path, count: int) -> Path:
    """``count`` plain lines, then one with a system message and generation parameters."""
    lines = [batch_line(f"g{i:04d}", f"question {i}") for i in range(count)]
    tuned = {
        "custom_id": "tuned",
        "body": {
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "the tuned one"},
            ],
            "max_tokens": 40,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "x",
        },
    }
    path.write_text("\n".join([*lines, json.dumps(tuned)]) + "\n", encoding="utf-8")
    return path


def gemini_args(source: Path, out: Path, url: str, *extra: str) -> list[str]:
    args = run_args(source, out, url, *extra)
    args[args.index("openai")] = "gemini"
    args[args.index(MODEL)] = GEMINI
    return args


def test_gemini_batch_mode_answers_every_line_through_one_job_at_half_the_online_cost(
    tmp_path: Path,
) -> None:
    source = gemini_input(tmp_path / "in.jsonl", 5)
    online_out, batch_out = tmp_path / "online.jsonl", tmp_path / "batch.jsonl"
    online_db, batch_db = tmp_path / "online.db", tmp_path / "batch.db"
    env = child_env(GEMINI_API_KEY="test")
    with threaded(GeminiServer(batch_timing=FAST)) as server:
        online_args = gemini_args(source, online_out, server.url, "--store", str(online_db))
        online = cli(online_args, env=env)
        assert online.code == 0, online.stderr
        assert server.counts["generate_content"] == 6
        online_sent = {r.prompt: r.body for r in server.requests if r.kind == "generate_content"}
        assert not server.batch_jobs

        batch_args = gemini_args(source, batch_out, server.url, "--store", str(batch_db))
        batch = cli([*batch_args, "--mode", "batch"], env=env)
        assert batch.code == 0, batch.stderr
        assert server.counts["generate_content"] == 6  # no line was called online
        (job,) = server.batch_jobs.values()
        assert job.state == "completed"
        assert job.extra["model"] == f"models/{GEMINI}"
        assert sorted(server.batch_line_submissions.values()) == [1] * 6

        # Each inline request is the request the online run sent for the same line.
        sent = {body["contents"][0]["parts"][0]["text"]: body for _, body in job.lines}
        assert sent == online_sent
        tuned = sent["the tuned one"]
        assert tuned["systemInstruction"]["parts"][0]["text"] == "Be brief"
        assert tuned["generationConfig"] == {
            "temperature": 0.5,
            "topP": 0.9,
            "maxOutputTokens": 40,
            "stopSequences": ["x"],
        }

        # Running it again with --resume reuses every result: nothing is submitted again.
        again = cli([*batch_args, "--mode", "batch", "--resume"], env=env)
        assert again.code == 0, again.stderr
        assert "6 succeeded, 0 failed (0 called, 6 reused from " in again.stdout
        assert len(server.batch_jobs) == 1
        assert server.counts["batches_create"] == 1

    lines = read_lines(batch_out)
    assert sorted(line["custom_id"] for line in lines) == [
        *(f"g{i:04d}" for i in range(5)),
        "tuned",
    ]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    by_id = {line["custom_id"]: line["response"]["body"] for line in read_lines(online_out)}
    for line in lines:  # the same answers and usage as online
        body = line["response"]["body"]
        assert body["model"] == GEMINI
        assert body["choices"][0]["message"] == by_id[line["custom_id"]]["choices"][0]["message"]
        assert body["usage"] == by_id[line["custom_id"]]["usage"]
    online_cost = store_status(online_db)["cost"]
    batch_cost = store_status(batch_db)["cost"]
    assert online_cost is not None
    assert online_cost > 0
    assert batch_cost == pytest.approx(online_cost / 2)
    assert f"cost: {format_dollars(batch_cost)} ({GEMINI} batch prices" in batch.stdout
    assert "6 succeeded, 0 failed (6 called" in batch.stdout


def test_gemini_resume_polls_the_job_of_a_killed_run_instead_of_submitting_again(
    tmp_path: Path,
) -> None:
    # As for OpenAI: the job finishes 3 s after creation, the script is killed as soon as it
    # exists (before its first status read, 5 s after submission).
    slow = BatchTiming(validating_seconds=0.0, seconds_per_line=0.0, finalizing_seconds=3.0)
    source = gemini_input(tmp_path / "in.jsonl", 3)
    out, db = tmp_path / "out.jsonl", tmp_path / "run.db"
    env = child_env(GEMINI_API_KEY="test")
    with threaded(GeminiServer(batch_timing=slow)) as server:
        args = gemini_args(source, out, server.url, "--store", str(db), "--mode", "batch")
        child = subprocess.Popen(
            [str(SCRIPT), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not server.batch_jobs and child.poll() is None:
                assert time.monotonic() < deadline, "no batch job was submitted"
                time.sleep(0.02)
        finally:
            child.kill()
            child.wait(timeout=10)
        assert len(server.batch_jobs) == 1
        assert server.counts["batches_get"] == 0  # killed before its first status read

        resumed = cli([*args, "--resume"], env=env)
        assert resumed.code == 0, resumed.stderr
        assert len(server.batch_jobs) == 1  # the killed run's job, polled, not a new one
        assert server.counts["batches_create"] == 1
        assert server.counts["batches_get"] >= 1
        assert sorted(server.batch_line_submissions.values()) == [1] * 4
        assert server.counts["generate_content"] == 0
    lines = read_lines(out)
    assert sorted(line["custom_id"] for line in lines) == ["g0000", "g0001", "g0002", "tuned"]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert store_status(db)["succeeded"] == 4


def test_dry_run_in_batch_mode_prices_at_the_batch_price(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    # Each line: 40 characters of message text ("user" + 36) -> 10 tokens, max_tokens=500.
    lines = [batch_line(f"l{i}", "x" * 36, max_tokens=500) for i in range(20)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    usage = {"input_tokens": 200, "output_tokens": 10_000, "total_tokens": 10_200}
    online_price = PRICE.cost(usage)  # type: ignore[arg-type]
    batch_price = PRICE.cost(usage, batch=True)  # type: ignore[arg-type]
    assert batch_price == pytest.approx(online_price / 2)
    assert format_dollars(batch_price) != format_dollars(online_price)
    assert AS_OF is not None

    base = ["run", str(source), "--provider", "openai", "--model", MODEL, "--dry-run"]
    base += ["--out", str(tmp_path / "o.jsonl")]
    online = cli(base, env=child_env())
    batch = cli([*base, "--mode", "batch"], env=child_env())
    assert online.code == 0, online.stderr
    assert batch.code == 0, batch.stderr
    assert (
        f"estimated cost: {format_dollars(online_price)} for {MODEL} "
        f"(list prices as of {AS_OF.isoformat()})"
    ) in online.stdout.splitlines()
    assert (
        f"estimated cost: {format_dollars(batch_price)} for {MODEL} "
        f"(batch prices as of {AS_OF.isoformat()})"
    ) in batch.stdout.splitlines()


def test_the_mode_option_is_in_the_help_and_refuses_other_values(tmp_path: Path) -> None:
    assert "--mode [online|batch]" in cli(["run", "--help"]).stdout
    source = write_input(tmp_path / "in.jsonl", 1)
    outcome = cli(
        [
            *("run", str(source), "--provider", "openai", "--model", MODEL),
            *("--out", str(tmp_path / "o.jsonl"), "--mode", "offline"),
        ]
    )
    assert outcome.code == 2
    assert "'offline' is not one of 'online', 'batch'" in outcome.stderr


def test_anthropic_batch_lines_carry_the_system_and_the_line_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}]}},
        {
            "custom_id": "b",
            "body": {
                "messages": [
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "second one"},
                ],
                "max_tokens": 50,
                "stop": "x",
            },
        },
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    with threaded(AnthropicServer(batch_timing=FAST, prompt_caching=False)) as server:
        args = run_args(source, out, server.base_url, "--mode", "batch")
        args[args.index("openai")] = "anthropic"
        args[args.index(MODEL)] = "claude-sonnet-5"
        assert main(args) == 0
        assert server.counts["messages"] == 0
        (job,) = server.batch_jobs.values()
    sent = {body["messages"][-1]["content"]: body for _, body in job.lines}
    assert "system" not in sent["hi"]
    assert sent["hi"]["max_tokens"] == 1024
    assert sent["second one"]["system"] == "Be brief"
    assert sent["second one"]["max_tokens"] == 50
    assert sent["second one"]["stop_sequences"] == ["x"]
    assert [m["role"] for m in sent["second one"]["messages"]] == ["user"]
    answers = {line["custom_id"]: line for line in read_lines(out)}
    assert answers["b"]["response"]["body"]["model"] == "claude-sonnet-5"
    content = answers["b"]["response"]["body"]["choices"][0]["message"]["content"]
    assert content == "echo: second one"


def test_the_served_emulator_takes_a_batch_time_scale(capsys: pytest.CaptureFixture[str]) -> None:
    from async_batch_llm.testing.servers.__main__ import _parse, build_server

    openai_server = build_server(_parse(["openai", "--batch-time-scale", "3600"]))
    assert isinstance(openai_server, OpenAIServer)
    assert openai_server.batch_timing.time_scale == 3600.0
    anthropic_server = build_server(_parse(["anthropic", "--batch-time-scale", "60"]))
    assert isinstance(anthropic_server, AnthropicServer)
    assert anthropic_server.batch_timing.time_scale == 60.0
    default = build_server(_parse(["openai"]))
    assert isinstance(default, OpenAIServer)
    assert default.batch_timing == BatchTiming()
    gemini_server = build_server(_parse(["gemini", "--batch-time-scale", "10"]))
    assert isinstance(gemini_server, GeminiServer)
    assert gemini_server.batch_timing.time_scale == 10.0
    with pytest.raises(SystemExit) as exited:
        _parse(["openai", "--batch-time-scale", "0"])
    assert exited.value.code == 2
    errors = capsys.readouterr().err
    assert "'0' must be a positive number" in errors
