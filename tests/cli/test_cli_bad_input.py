"""Bad input to the console script: a clear message, exit code 2, and no bogus output.

The cases of the issue (missing input, malformed line, repeated custom_id, unknown provider or
model, ``--resume`` on the store of another input) run the real script in child processes, all
at once against one OpenAI emulator; the other cases call the same ``main()`` in this process,
which is quicker (a child spends a second importing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from async_batch_llm._cli import main
from async_batch_llm.testing.servers import OpenAIServer
from tests.test_optional_dependencies import SRC, required_only

from ._support import MODEL, Outcome, batch_line, child_env, cli, threaded, write_input

pytestmark = pytest.mark.timeout(90)


@dataclass
class Case:
    """One refused invocation: how to set it up and what it must say."""

    args: Callable[[Path, str], list[str]]
    says: list[str]
    setup: Callable[[Path], None] = lambda tmp: None
    env: dict[str, str] = field(default_factory=lambda: {"OPENAI_API_KEY": "test"})


def run_args(
    *extra: str, source: str = "in.jsonl", store: str | None = None
) -> Callable[[Path, str], list[str]]:
    def build(tmp: Path, url: str) -> list[str]:
        args = [
            "run",
            str(tmp / source),
            "--provider",
            "openai",
            "--model",
            MODEL,
            "--base-url",
            url,
            "--out",
            str(tmp / "out.jsonl"),
        ]
        if store is not None:
            args += ["--store", str(tmp / store)]
        return [*args, *extra]

    return build


def good_input(tmp: Path, count: int = 3) -> None:
    write_input(tmp / "in.jsonl", count)


def with_lines(*lines: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    return setup


def store_of(count: int, prefix: str, prompt: str = "question") -> Callable[[Path], None]:
    """A store holding the results of another input (written through the library)."""

    def setup(tmp: Path) -> None:
        from async_batch_llm._cli.providers import RequestStrategy
        from async_batch_llm._internal.artifacts.records import (
            ArtifactRecord,
            item_fingerprint,
            strategy_identity,
        )
        from async_batch_llm.artifacts import SqliteArtifactStore

        identity = strategy_identity(RequestStrategy("openai", MODEL, None))
        with SqliteArtifactStore(tmp / "run.db") as store:
            records = []
            for i in range(count):
                payload = {
                    "messages": [{"role": "user", "content": f"{prompt} {i}"}],
                    "params": {},
                }
                records.append(
                    ArtifactRecord(
                        f"{prefix}{i:04d}",
                        item_fingerprint(payload, identity, None),
                        True,
                        "str",
                        "stored",
                        None,
                        {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
                    )
                )
            store.write(records)
        good_input(tmp)

    return setup


def not_utf8(tmp: Path) -> None:
    (tmp / "in.jsonl").write_bytes(batch_line("a", "hi").encode() + b"\n\xff\xfe{}\n")


def not_a_store(tmp: Path) -> None:
    good_input(tmp)
    (tmp / "notes.txt").write_text("hello " * 500, encoding="utf-8")


GOOD = batch_line("r0000", "question 0")
CASES: dict[str, Case] = {
    "missing input file": Case(run_args(source="nope.jsonl"), ["nope.jsonl does not exist"]),
    "input is a directory": Case(
        run_args(source="adir"), ["is a directory"], lambda tmp: (tmp / "adir").mkdir()
    ),
    "input not utf-8": Case(run_args(), ["is not UTF-8"], not_utf8),
    "malformed line with --strict": Case(
        run_args("--strict"),
        ["in.jsonl:2: not valid JSON", "1 malformed line(s)", "nothing was run (--strict)"],
        with_lines(GOOD, "{oops", batch_line("r0002", "question 2")),
    ),
    "line without messages": Case(
        run_args("--strict"),
        ["in.jsonl:1: body.messages must be a non-empty list, got null"],
        with_lines(json.dumps({"custom_id": "a", "body": {"model": MODEL}})),
    ),
    "wrong endpoint": Case(
        run_args("--strict"),
        ["in.jsonl:1: url must be '/v1/chat/completions'"],
        with_lines(json.dumps({"custom_id": "a", "url": "/v1/embeddings", "body": {}})),
    ),
    "duplicate custom_id": Case(
        run_args(),
        ["in.jsonl:3: custom_id 'r0000' repeats line 1", "custom_id values must be unique"],
        with_lines(GOOD, batch_line("r0001", "q"), GOOD),
    ),
    "empty input": Case(run_args(), ["holds no request to run"], with_lines("", "  ")),
    "unknown provider": Case(
        lambda tmp, url: [
            "run",
            str(tmp / "in.jsonl"),
            "--provider",
            "mistral",
            "--model",
            "m",
            "--out",
            str(tmp / "out.jsonl"),
        ],
        ["Invalid value for '--provider'", "'mistral' is not one of", "'openai'", "'anthropic'"],
        good_input,
    ),
    "unknown model": Case(
        lambda tmp, url: [
            "run",
            str(tmp / "in.jsonl"),
            "--provider",
            "openai",
            "--model",
            "gpt-nope",
            "--base-url",
            url,
            "--out",
            str(tmp / "out.jsonl"),
            "--store",
            str(tmp / "run.db"),
        ],
        ["unknown model 'gpt-nope' for --provider openai", "the server knows:", "gpt-4o-mini"],
        good_input,
    ),
    "missing --model": Case(
        lambda tmp, url: [
            "run",
            str(tmp / "in.jsonl"),
            "--provider",
            "openai",
            "--out",
            str(tmp / "out.jsonl"),
        ],
        ["Missing option '--model'"],
        good_input,
    ),
    "zero workers": Case(
        run_args("--workers", "0"), ["Invalid value for '--workers'", "x>=1"], good_input
    ),
    "no api key": Case(
        lambda tmp, url: [
            "run",
            str(tmp / "in.jsonl"),
            "--provider",
            "openai",
            "--model",
            MODEL,
            "--out",
            str(tmp / "out.jsonl"),
        ],
        ["no API key: set OPENAI_API_KEY"],
        good_input,
        env={},
    ),
    "resume without store": Case(
        run_args("--resume"), ["--resume needs --store RUN.db"], good_input
    ),
    "resume on the store of another input": Case(
        run_args("--resume", store="run.db"),
        ["holds 5 result(s), none for a custom_id of this input", "store of another input"],
        store_of(5, prefix="other"),
    ),
    "resume on a store of other requests": Case(
        run_args("--resume", store="run.db"),
        ["has results for 3 custom_id(s) of this input, but for other requests"],
        store_of(3, prefix="r", prompt="another question"),
    ),
    "store is not a store": Case(
        run_args(store="notes.txt"),
        ["cannot open artifact store", "notes.txt"],
        not_a_store,
    ),
    "output directory missing": Case(
        lambda tmp, url: [
            "run",
            str(tmp / "in.jsonl"),
            "--provider",
            "openai",
            "--model",
            MODEL,
            "--base-url",
            url,
            "--out",
            str(tmp / "no" / "out.jsonl"),
        ],
        ["directory", "does not exist"],
        good_input,
    ),
    "status of a missing store": Case(
        lambda tmp, url: ["status", str(tmp / "missing.db")], ["missing.db does not exist"]
    ),
    "export of a file that is not a store": Case(
        lambda tmp, url: ["export", str(tmp / "in.jsonl"), "--out", str(tmp / "out.jsonl")],
        ["cannot open artifact store"],
        good_input,
    ),
}


IN_CHILD = {
    "missing input file",
    "malformed line with --strict",
    "duplicate custom_id",
    "unknown provider",
    "unknown model",
    "resume on the store of another input",
}


@dataclass
class Result:
    outcome: Outcome
    tmp: Path


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    with threaded(OpenAIServer()) as server:

        def one(name: str) -> Result:
            case = CASES[name]
            tmp = tmp_path_factory.mktemp("case")
            case.setup(tmp)
            outcome = cli(case.args(tmp, server.base_url), env=child_env(**case.env))
            return Result(outcome, tmp)

        names = sorted(IN_CHILD)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            done = dict(zip(names, pool.map(one, names), strict=True))
        calls = server.counts["chat_completions"]
        yield done
    assert calls == 0  # no refused run called the model


def in_process(
    name: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Result:
    case = CASES[name]
    case.setup(tmp)
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in case.env.items():
        monkeypatch.setenv(var, value)
    # No case in this process reaches the network: the URL is never dialled.
    code = main(case.args(tmp, "http://127.0.0.1:9/v1"))
    captured = capsys.readouterr()
    return Result(Outcome(code, captured.out, captured.err), tmp)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_with_exit_code_2_and_no_output(
    name: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if name in IN_CHILD:
        result = request.getfixturevalue("results")[name]
    else:
        result = in_process(name, tmp_path, monkeypatch, capsys)
    outcome = result.outcome
    assert outcome.code == 2, (outcome.stdout, outcome.stderr)
    for text in CASES[name].says:
        assert text in outcome.stderr, outcome.stderr
    assert "Traceback" not in outcome.stderr
    if not name.startswith("export"):
        assert not (result.tmp / "out.jsonl").exists()


def test_a_refused_run_leaves_no_new_store(results: dict[str, Result]) -> None:
    assert not (results["unknown model"].tmp / "run.db").exists()


def test_without_the_cli_extra_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    site = required_only(tmp_path)
    code = (
        f"import sys; sys.path[:0] = [{str(site)!r}, {str(SRC)!r}]; "
        "from async_batch_llm._cli import main; sys.exit(main(['run', '--help']))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-E", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "pip install 'async-batch-llm[cli]'" in done.stderr
