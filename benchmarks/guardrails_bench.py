"""The guardrail targets of issue #10 (BEYOND.md N3), measured against the local OpenAI emulator.

Not a test. Every case starts its own :class:`~async_batch_llm.testing.servers.OpenAIServer` on
loopback and sends its traffic through the real ``openai`` SDK (``AsyncOpenAI(max_retries=0)``)
with the built-in :class:`~async_batch_llm.llm_strategies.OpenAIStrategy`:

1. **cost cap**: ``COST_ITEMS`` prompts of mixed sizes asking for answers of mixed lengths
   (the quota benchmark's job), ``COST_WORKERS`` workers, ``max_total_cost`` set to
   ``COST_CAP_SHARE`` of what the whole job would cost, priced by
   ``PriceTable.default().cost`` for ``COST_MODEL``, the default (learning) estimator. The money
   spent is priced from the emulator's own :attr:`~OpenAIServer.usage_log` (what it billed),
   and compared with the cap plus the documented bound: the sum, over the attempts in flight
   when the last attempt was admitted, of what each cost above its reservation (recorded by
   wrapping the processor's ledger in this process). The same job then runs through a
   check-after-call cap, the way other runners do it: a plain-asyncio pool of
   ``COST_WORKERS`` workers, each checking ``spent >= cap`` before its call and adding the
   call's price after it.
2. **batch timeout**: ``batch_timeout=TIMEOUT_S`` over a job of ``TIMEOUT_ITEMS`` calls of
   ``TIMEOUT_LATENCY`` s on ``TIMEOUT_WORKERS`` workers (about ``TIMEOUT_JOB_S`` s of work):
   how long ``process_all()`` takes, whether every item has a result, and when the last request
   reached the emulator (its request log's ``received_at``).
3. **fail-fast**: the emulator answers every call ``429 insufficient_quota``; ``FAIL_ITEMS``
   items, ``FAIL_WORKERS`` workers, every other setting at its default: calls made, time of
   ``process_all()``, ``termination.kind`` and the ``COOLDOWN_STARTED`` events seen.

    .venv/bin/python benchmarks/guardrails_bench.py            # print the figures
    .venv/bin/python benchmarks/guardrails_bench.py --record   # and write docs/benchmarks.md

``run_all.py --only guardrails`` (and a plain ``make bench``) runs this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = HERE / "results" / "guardrails-latest.json"
GUARDRAILS_START = "<!-- bench-guardrails:start -->"
GUARDRAILS_END = "<!-- bench-guardrails:end -->"

sys.path.insert(0, str(HERE))
from quota_bench import _answer_words, make_job  # noqa: E402 - needs the path above

COST_ITEMS = 3_000
COST_WORKERS = 100
COST_MODEL = "gpt-4o-mini"
COST_CAP_SHARE = 0.4
"""The cap, as a share of what the whole job costs: reached mid-run."""
COST_BASE_LATENCY = 0.05
COST_PER_TOKEN_LATENCY = 0.0004
"""Answer latency: ``COST_BASE_LATENCY`` plus this per output token (600 words: 0.29 s)."""
COST_RATIO_TARGET = 1.02

TIMEOUT_S = 2.0
TIMEOUT_SLACK_S = 0.5
TIMEOUT_WORKERS = 50
TIMEOUT_LATENCY = 0.6
TIMEOUT_ITEMS = 834
TIMEOUT_JOB_S = TIMEOUT_ITEMS / TIMEOUT_WORKERS * TIMEOUT_LATENCY

FAIL_ITEMS = 10_000
FAIL_WORKERS = 50
FAIL_TARGET_S = 1.0


# ----------------------------------------------------------------------------- cost cap


def _price(usage_log: list[dict[str, Any]]) -> float:
    """Dollars the emulator billed: every answered call's usage at list price."""
    from async_batch_llm import PriceTable

    prices = PriceTable.default()
    return sum(
        prices.cost(
            entry["model"],
            {
                "input_tokens": entry["prompt_tokens"],
                "cached_input_tokens": entry["cached_tokens"],
                "output_tokens": entry["completion_tokens"],
                "total_tokens": entry["prompt_tokens"] + entry["completion_tokens"],
            },
        )
        for entry in usage_log
    )


def job_cost(prompts: list[str]) -> float:
    """What the whole job costs at list price (the emulator counts one token per word)."""
    return _price(
        [
            {
                "model": COST_MODEL,
                "prompt_tokens": len(p.split()),
                "cached_tokens": 0,
                "completion_tokens": _answer_words(p),
            }
            for p in prompts
        ]
    )


async def _respond(request: Any) -> Any:
    """The requested number of words, after a delay growing with the answer's length."""
    from async_batch_llm.testing.servers import Reply

    words = _answer_words(request.prompt)
    await asyncio.sleep(COST_BASE_LATENCY + COST_PER_TOKEN_LATENCY * words)
    return Reply(text=" ".join(["lorem"] * words))


class LedgerLog:
    """Wraps the processor's ledger (in this process only) to record each attempt's reservation
    and real cost, in order, so the documented bound can be computed after the run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, float]] = []
        self._undo: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> LedgerLog:
        from async_batch_llm._internal.guardrails import Ledger

        reserve, settle, release = Ledger.reserve, Ledger.settle, Ledger.release
        log = self.events

        async def logged_reserve(ledger: Any, *args: Any, **kwargs: Any) -> Any:
            charge = await reserve(ledger, *args, **kwargs)
            log.append(("reserve", charge, charge.cost))
            return charge

        def logged_settle(ledger: Any, charge: Any, usage: Any, *, ran: bool) -> float:
            cost = settle(ledger, charge, usage, ran=ran)
            log.append(("settle", charge, cost))
            return cost

        def logged_release(ledger: Any, charge: Any) -> None:
            release(ledger, charge)
            log.append(("settle", charge, 0.0))

        for name, wrapper, original in (
            ("reserve", logged_reserve, reserve),
            ("settle", logged_settle, settle),
            ("release", logged_release, release),
        ):
            setattr(Ledger, name, wrapper)
            self._undo.append((Ledger, name, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in self._undo:
            setattr(owner, name, original)

    def bound(self) -> tuple[float, int]:
        """The documented bound and the attempts in flight at the last admission."""
        real = {id(charge): cost for kind, charge, cost in self.events if kind == "settle"}
        in_flight: dict[int, Any] = {}
        at_last: list[Any] = []
        for kind, charge, _ in self.events:
            if kind == "reserve":
                in_flight[id(charge)] = charge
                at_last = list(in_flight.values())
            else:
                in_flight.pop(id(charge), None)
        over = sum(max(0.0, real.get(id(c), c.cost) - c.cost) for c in at_last)
        return over, len(at_last)


async def cost_cap_reserved(prompts: list[str], cap: float) -> dict[str, Any]:
    """The processor with ``max_total_cost=cap``: reserve before each call."""
    import openai

    import async_batch_llm as abl
    from async_batch_llm.llm_strategies import OpenAIStrategy
    from async_batch_llm.testing.servers import OpenAIServer

    async with OpenAIServer(respond=_respond) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        strategy = OpenAIStrategy(client, COST_MODEL)
        config = abl.ProcessorConfig(
            max_workers=COST_WORKERS,
            guardrails=abl.GuardrailConfig(
                max_total_cost=cap, cost_function=abl.PriceTable.default().cost
            ),
        )
        try:
            with LedgerLog() as ledger:
                started = time.perf_counter()
                async with abl.ParallelBatchProcessor(config=config) as processor:
                    for i, prompt in enumerate(prompts):
                        await processor.add_work(
                            abl.LLMWorkItem(item_id=f"c{i}", strategy=strategy, prompt=prompt)
                        )
                    batch = await processor.process_all()
                wall = time.perf_counter() - started
        finally:
            await client.close()
        spent = _price(server.usage_log)
        bound, in_flight = ledger.bound()
        return {
            "wall_s": wall,
            "results": len(batch.results),
            "calls": len(server.usage_log),
            "spent": spent,
            "reported_total_cost": batch.total_cost,
            "termination": batch.termination.kind,
            "bound": bound,
            "in_flight_at_last_admission": in_flight,
            "max_in_flight": server.max_in_flight,
        }


async def cost_cap_after_call(prompts: list[str], cap: float) -> dict[str, Any]:
    """What other runners do: each worker checks ``spent >= cap`` before its call and adds the
    call's price after it (check-then-increment), ``COST_WORKERS`` workers in plain asyncio."""
    import openai

    from async_batch_llm import PriceTable
    from async_batch_llm.testing.servers import OpenAIServer

    price = PriceTable.default().cost
    async with OpenAIServer(respond=_respond) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for prompt in prompts:
            queue.put_nowait(prompt)
        spent = 0.0

        async def worker() -> None:
            nonlocal spent
            while not queue.empty() and spent < cap:
                prompt = queue.get_nowait()
                completion = await client.chat.completions.create(
                    model=COST_MODEL, messages=[{"role": "user", "content": prompt}]
                )
                usage = completion.usage
                assert usage is not None
                spent += price(
                    COST_MODEL,
                    {
                        "input_tokens": usage.prompt_tokens,
                        "output_tokens": usage.completion_tokens,
                        "total_tokens": usage.total_tokens,
                    },
                )

        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(COST_WORKERS)))
        finally:
            await client.close()
        wall = time.perf_counter() - started
        return {
            "wall_s": wall,
            "calls": len(server.usage_log),
            "spent": _price(server.usage_log),
            "max_in_flight": server.max_in_flight,
        }


# ------------------------------------------------------------------------ batch timeout


async def batch_timeout_case() -> dict[str, Any]:
    import openai

    import async_batch_llm as abl
    from async_batch_llm.llm_strategies import OpenAIStrategy
    from async_batch_llm.testing.servers import OpenAIServer

    async with OpenAIServer(latency=TIMEOUT_LATENCY) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        strategy = OpenAIStrategy(client, COST_MODEL)
        config = abl.ProcessorConfig(
            max_workers=TIMEOUT_WORKERS, guardrails=abl.GuardrailConfig(batch_timeout=TIMEOUT_S)
        )
        try:
            async with abl.ParallelBatchProcessor(config=config) as processor:
                for i in range(TIMEOUT_ITEMS):
                    await processor.add_work(
                        abl.LLMWorkItem(item_id=f"t{i}", strategy=strategy, prompt=f"item {i}")
                    )
                started_wall = time.time()  # the emulator's clock
                started = time.perf_counter()
                batch = await processor.process_all()
                elapsed = time.perf_counter() - started
        finally:
            await client.close()
        arrivals = [r.received_at - started_wall for r in server.requests]
        results = batch.results
        return {
            "elapsed_s": elapsed,
            "items": TIMEOUT_ITEMS,
            "results": len(results),
            "distinct_results": len({r.item_id for r in results}),
            "succeeded": sum(1 for r in results if r.success),
            "termination": batch.termination.kind,
            "failed_categories": sorted({r.error_category or "" for r in results if not r.success}),
            "calls": server.request_count,
            "last_arrival_s": max(arrivals, default=0.0),
        }


# ---------------------------------------------------------------------------- fail-fast


async def fail_fast_case() -> dict[str, Any]:
    import openai

    import async_batch_llm as abl
    from async_batch_llm.llm_strategies import OpenAIStrategy
    from async_batch_llm.testing.servers import InsufficientQuota, OpenAIServer

    class Cooldowns(abl.BaseObserver):
        def __init__(self) -> None:
            self.count = 0

        async def on_event(self, event: abl.ProcessingEvent, data: dict[str, Any]) -> None:
            if event is abl.ProcessingEvent.COOLDOWN_STARTED:
                self.count += 1

    async with OpenAIServer(fault_fn=lambda request: InsufficientQuota()) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="bench", max_retries=0)
        strategy = OpenAIStrategy(client, COST_MODEL)
        cooldowns = Cooldowns()
        config = abl.ProcessorConfig(max_workers=FAIL_WORKERS)
        try:
            async with abl.ParallelBatchProcessor(config=config, observers=[cooldowns]) as proc:
                added = time.perf_counter()
                for i in range(FAIL_ITEMS):
                    await proc.add_work(
                        abl.LLMWorkItem(item_id=f"f{i}", strategy=strategy, prompt=f"item {i}")
                    )
                started = time.perf_counter()
                batch = await proc.process_all()
                elapsed = time.perf_counter() - started
        finally:
            await client.close()
        return {
            "add_s": started - added,
            "elapsed_s": elapsed,
            "items": FAIL_ITEMS,
            "results": len(batch.results),
            "calls": server.request_count,
            "termination": batch.termination.kind,
            "error_category": batch.termination.error_category,
            "cooldowns": cooldowns.count,
            "categories": sorted({r.error_category or "" for r in batch.results}),
        }


# ---------------------------------------------------------------------------------- main


def targets(m: dict[str, Any]) -> list[tuple[str, bool, str]]:
    cap = m["cap"]
    ours, naive = m["reserved"], m["after_call"]
    one_call = ours["spent"] / max(ours["calls"], 1)  # what an average call cost
    out = [
        (
            f"cost cap: {COST_WORKERS} workers, {COST_ITEMS:,} items, reserve before each call: "
            f"spent <= cap + documented bound and <= {COST_RATIO_TARGET}x cap",
            ours["spent"] <= cap + ours["bound"] + 1e-12
            and ours["spent"] <= COST_RATIO_TARGET * cap
            and ours["termination"] == "budget_exceeded"
            and ours["results"] == COST_ITEMS,
            f"spent ${ours['spent']:.5f} of a ${cap:.5f} cap = {ours['spent'] / cap:.4f}x "
            f"({ours['calls']:,} calls, priced from the emulator's usage log); bound "
            f"${ours['bound']:.5f} over {ours['in_flight_at_last_admission']} calls in flight "
            f"at the last admission; cap + bound = ${cap + ours['bound']:.5f}; "
            f"termination {ours['termination']}, {ours['results']:,} results; "
            f"processor's own total ${ours['reported_total_cost']:.5f}",
        ),
        (
            "cost cap, check-after-call (plain asyncio, for comparison): overshoots by about the "
            "calls in flight",
            naive["calls"] - ours["calls"] >= COST_WORKERS // 2,
            f"spent ${naive['spent']:.5f} = {naive['spent'] / cap:.4f}x cap in "
            f"{naive['calls']:,} calls: {naive['calls'] - ours['calls']} calls and "
            f"${naive['spent'] - ours['spent']:.5f} more than reserve-before-call "
            f"(overshoot ${naive['spent'] - cap:.5f} ~ {(naive['spent'] - cap) / one_call:.0f} "
            f"average calls); ratio check-after-call / reserved = "
            f"{naive['spent'] / ours['spent']:.3f}",
        ),
    ]
    t = m["timeout"]
    out.append(
        (
            f"batch_timeout={TIMEOUT_S:g} s over a {TIMEOUT_JOB_S:.0f} s job: returns within "
            f"{TIMEOUT_S + TIMEOUT_SLACK_S:g} s, every item has a result, no call starts after "
            "the deadline",
            t["elapsed_s"] <= TIMEOUT_S + TIMEOUT_SLACK_S
            and t["results"] == t["distinct_results"] == t["items"]
            and t["termination"] == "batch_timeout"
            and t["last_arrival_s"] < TIMEOUT_S,
            f"process_all() returned after {t['elapsed_s']:.3f} s; {t['results']}/{t['items']} "
            f"results ({t['succeeded']} succeeded, the rest {', '.join(t['failed_categories'])}); "
            f"termination {t['termination']}; {t['calls']} calls, the last reached the emulator "
            f"{t['last_arrival_s']:.3f} s after the start",
        )
    )
    f = m["fail_fast"]
    out.append(
        (
            f"insufficient_quota on every call, {FAIL_ITEMS:,} items, {FAIL_WORKERS} workers: "
            f"<= {FAIL_WORKERS} calls, < {FAIL_TARGET_S:g} s, fail_fast, zero cooldowns",
            f["calls"] <= FAIL_WORKERS
            and f["elapsed_s"] < FAIL_TARGET_S
            and f["termination"] == "fail_fast"
            and f["cooldowns"] == 0
            and f["results"] == f["items"],
            f"{f['calls']} calls, process_all() {f['elapsed_s']:.3f} s (adding the items "
            f"{f['add_s']:.3f} s); termination {f['termination']} ({f['error_category']}); "
            f"{f['cooldowns']} cooldowns; {f['results']:,} results "
            f"({', '.join(f['categories'])})",
        )
    )
    return out


async def measure() -> dict[str, Any]:
    prompts = make_job(COST_ITEMS)
    whole = job_cost(prompts)
    cap = round(whole * COST_CAP_SHARE, 4)
    print(f"-- cost cap: the whole job costs ${whole:.5f}; cap ${cap:.5f}", flush=True)
    await cost_cap_reserved(prompts[:200], cap / 10)  # warm-up: imports, first connections
    reserved = await cost_cap_reserved(prompts, cap)
    print(f"   reserve before call: {json.dumps(reserved)}", flush=True)
    after_call = await cost_cap_after_call(prompts, cap)
    print(f"   check after call:    {json.dumps(after_call)}", flush=True)
    print("-- batch timeout", flush=True)
    timeout = await batch_timeout_case()
    print(f"   {json.dumps(timeout)}", flush=True)
    print("-- fail-fast", flush=True)
    fail_fast = await fail_fast_case()
    print(f"   {json.dumps(fail_fast)}", flush=True)
    return {
        "job_cost": whole,
        "cap": cap,
        "reserved": reserved,
        "after_call": after_call,
        "timeout": timeout,
        "fail_fast": fail_fast,
    }


def record(measured: dict[str, Any], found: list[tuple[str, bool, str]], info: Any) -> None:
    from run_all import _machine_line, _replace_block, _target_lines

    lines = [
        "",
        _machine_line(info, "`.venv/bin/python benchmarks/guardrails_bench.py --record`"),
        "",
        f"The cost case's whole job would cost ${measured['job_cost']:.5f} at the list price of "
        f"`{COST_MODEL}`; the cap is {COST_CAP_SHARE:.0%} of it. Spend is priced from the "
        "emulator's own usage log (what it billed), not from what the processor reports.",
        "",
        *_target_lines([(name, held, figures) for name, held, figures in found]),
        "",
    ]
    text = DOC.read_text()
    DOC.write_text(_replace_block(text, GUARDRAILS_START, GUARDRAILS_END, lines, "## "))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    from run_all import machine

    info = machine()
    print(
        f"== {info['date']}: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"load {info['loadavg_start']:.1f}"
    )
    measured = asyncio.run(measure())
    info["loadavg_end"] = os.getloadavg()[0]
    found = targets(measured)
    print("\ntargets (issue #10; BEYOND.md N3):")
    for name, held, figures in found:
        print(f"  [{' PASS ✔' if held else ' FAIL ✘'}] {name}: {figures}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": info, "measured": measured}, indent=1))
    if args.record:
        record(measured, found, info)
        print(f"recorded into {DOC.relative_to(ROOT)}")
    return 0 if all(held for _, held, _ in found) else 1


if __name__ == "__main__":
    raise SystemExit(main())
