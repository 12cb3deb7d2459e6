"""The live panel, drawn by the real console script in a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pexpect
import pytest

from async_batch_llm import PriceTable
from async_batch_llm._internal.progress import format_cost
from async_batch_llm.testing.servers import OpenAIServer, ProviderRequest

from ._support import MODEL, SCRIPT, child_env, read_lines, threaded, write_input

pytestmark = pytest.mark.timeout(60)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def slow_echo(request: ProviderRequest) -> str:
    await asyncio.sleep(0.1)
    return f"echo: {request.prompt}"


def frames(screen: str) -> list[str]:
    """Every drawing of the panel, control codes removed, one string each."""
    text = ANSI.sub("", screen).replace("\r", "")
    return [part for part in text.split("╭")[1:] if "╰" in part]


def row(frame: str, label: str) -> str:
    """The value of one row of a frame (``"Items"`` → ``"12/30  (40%)"``)."""
    match = re.search(rf"│ {re.escape(label)}\s{{2,}}(.*?)\s*│", frame)
    assert match is not None, f"no {label!r} row in:\n{frame}"
    return match.group(1)


def test_the_live_panel_shows_items_rates_cost_and_eta_in_a_terminal(tmp_path: Path) -> None:
    total = 30
    source = write_input(tmp_path / "in.jsonl", total)
    out = tmp_path / "out.jsonl"
    with threaded(OpenAIServer(respond=slow_echo, prompt_caching=False)) as server:
        child = pexpect.spawn(
            str(SCRIPT),
            [
                "run",
                str(source),
                "--provider",
                "openai",
                "--model",
                MODEL,
                "--base-url",
                server.base_url,
                "--out",
                str(out),
                "--workers",
                "2",
                "--rpm",
                "6000",
                "--tpm",
                "100000",
            ],
            env={**child_env(OPENAI_API_KEY="test"), "TERM": "xterm-256color", "COLUMNS": "100"},
            dimensions=(40, 100),
            encoding="utf-8",
            timeout=45,
        )
        child.expect(pexpect.EOF)
        screen = str(child.before)
        child.close()
    assert child.exitstatus == 0, screen
    drawn = frames(screen)
    assert len(drawn) >= 3, screen  # redrawn while running, not printed once

    running = [f for f in drawn if f"/{total}" in row(f, "Items") and row(f, "ETA") != "done"]
    assert running, "no frame drawn while items were left"
    middle = [f for f in running if 0 < int(row(f, "Items").split("/")[0]) < total]
    assert middle, "no frame between the first and the last item"
    sample = middle[-1]
    assert re.fullmatch(r"\d+s|\d+m\d\ds", row(sample, "ETA")), row(sample, "ETA")
    assert re.fullmatch(r"[\d.]+ items/s", row(sample, "Throughput"))
    assert re.fullmatch(r"[\d,]+/6,000", row(sample, "Requests/min"))
    assert re.fullmatch(r"[\d,]+/100,000", row(sample, "Tokens/min"))
    assert row(sample, "Cooldown") == "—"
    spend, projected = (
        float(part.lstrip("$")) for part in row(sample, "Spend / projected").split(" / ")
    )
    assert 0 < spend < projected  # items were left: the projection is above the spend so far

    final = drawn[-1]
    assert row(final, "Items") == f"{total}/{total}  (100%)"
    assert row(final, "Succeeded / failed") == f"{total} / 0"
    assert row(final, "ETA") == "done"
    # The emulator counts words: 2 input and 3 output tokens a line, at the list price.
    price = PriceTable.default().prices(MODEL)
    cost = total * price.cost({"input_tokens": 2, "output_tokens": 3, "total_tokens": 5})
    assert row(final, "Spend / projected") == f"{format_cost(cost)} / {format_cost(cost)}"
    assert len(read_lines(out)) == total
