"""The shell sessions of docs/cli.md run as written and print what the page shows.

Each block marked ``<!-- cli: NAME -->`` is a ``console`` session: lines starting with ``$ `` are
commands (a here-document continues to its ``EOF``), the other lines are their output
(stdout and stderr together). In an expected line ``…`` stands for any text; a line that is
only ``…`` stands for any number of lines. The blocks run in page order in one directory,
against the OpenAI emulator, whose address replaces the page's ``http://127.0.0.1:8765``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from async_batch_llm.testing.servers import BatchTiming, OpenAIServer

from ._support import child_env, threaded

pytestmark = pytest.mark.timeout(120)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
_BLOCK = re.compile(r"<!-- cli: ([\w-]+) -->\n```console\n(.*?)```", re.DOTALL)
_DOC_URL = "http://127.0.0.1:8765"


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


def sessions() -> list[tuple[str, list[Command]]]:
    found: list[tuple[str, list[Command]]] = []
    for name, body in _BLOCK.findall(PAGE.read_text(encoding="utf-8")):
        commands: list[Command] = []
        lines = iter(body.splitlines())
        for line in lines:
            if line.startswith("$ "):
                text = line[2:]
                if "<<'EOF'" in text:
                    for more in lines:
                        text += "\n" + more
                        if more == "EOF":
                            break
                commands.append(Command(text))
            else:
                assert commands, f"{name}: output before any command"
                commands[-1].expected.append(line)
        found.append((name, commands))
    return found


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` fits ``expected`` (``…`` wildcards, a lone ``…`` spans lines)."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head == "…":
        return any(matches(rest, actual[i:]) for i in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("…"))
    return re.fullmatch(pattern, actual[0]) is not None and matches(rest, actual[1:])


def test_the_page_has_sessions() -> None:
    names = [name for name, _ in sessions()]
    assert names == [
        "run", "output", "resume", "status", "dry-run", "budget", "batch", "malformed"
    ]  # fmt: skip


def test_every_session_of_the_cli_page_prints_what_it_shows(tmp_path: Path) -> None:
    env = child_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # As the page starts it: --batch-time-scale 3600.
    fast = BatchTiming(time_scale=3600.0)
    with threaded(OpenAIServer(prompt_caching=False, batch_timing=fast)) as server:
        for name, commands in sessions():
            for command in commands:
                text = command.text.replace(_DOC_URL, server.url)
                done = subprocess.run(
                    ["bash", "-c", text],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=60,
                    check=False,
                )
                actual = done.stdout.splitlines()
                assert matches(command.expected, actual), (
                    f"[{name}] $ {command.text}\n--- expected\n"
                    + "\n".join(command.expected)
                    + "\n--- got\n"
                    + done.stdout
                )
        calls = server.counts["chat_completions"]
        jobs = len(server.batch_jobs)
    # run: 3 calls; resume: none; dry runs: none; the budget run: one per answered line (and
    # not every line: the budget stopped it); the batch run: one job, no call; the non-strict
    # run of bad.jsonl: 1 (its good line).
    budget = [
        json.loads(line)
        for line in (tmp_path / "many-results.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    paid = sum(line["error"] is None for line in budget)
    assert len(budget) == 200
    assert 0 < paid < 200
    assert calls == 3 + paid + 1
    assert jobs == 1
    answered = (tmp_path / "bad-results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["custom_id"] for line in answered] == ["a"]
