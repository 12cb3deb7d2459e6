"""Crash-resume soak: kill -9 a resumable run several times, resume it, count what was paid.

``python -m tests.soak.soak_kill [--items 20000] [--workers 32] [--kills 5]
[--store-kind sqlite|jsonl|both] [--seed S]``

For each store kind, a child process (``kill_child.py``) runs ``--items`` prompts through the
real ``openai`` SDK against a local OpenAI emulator (:class:`OpenAIServer`, loopback only, run
by this process on its own event loop) with an artifact store and
``resume=ResumePolicy.REUSE_SUCCESSES``. The child is killed with SIGKILL ``--kills`` times and
started again after each kill; the last start runs to completion. Then:

- the final run returns exactly one result per item, every one a success with the right answer
  (the emulator answers ``"answer to: <prompt>"``): 0 lost, 0 duplicated, 0 wrong;
- the final run called exactly the items it did not replay (one answered call each);
- no committed success was called again: the store holds one record per item;
- "never pay twice": the emulator's answered calls (HTTP 200) exceed the number of items by at
  most ``kills * workers`` (only calls in flight at a kill may be paid twice). Each kill's
  re-paid calls are split, through the child's calls log, into calls still in flight (at most
  ``workers``, always enforced) and calls that had returned but whose record was waiting for
  the writer's group commit; ``--lenient-commit-window`` allows the latter on top of the bound;
- SQLite: ``PRAGMA integrity_check`` is ``ok``. JSONL: every line of the file parses, except a
  torn last line left by a kill (exactly as it was at the kill) that the store handled.

When a kill lands: each killed run is given a random target, a number of new answered calls
drawn uniformly from 2 %..30 % of the items still unanswered, and is killed a random
0..20 ms after the emulator has answered that many calls in that run. So every kill lands
mid-flight, with work remaining, at a moment independent of the writer's group commits.

Every wait is bounded (``--child-timeout`` per child run). Exits 1 on any violation and keeps
the working directory (store, results, child logs) for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from async_batch_llm import BatchResult
from async_batch_llm.artifacts import ArtifactStore
from async_batch_llm.testing.servers import OpenAIServer, ProviderRequest
from tests.soak.kill_child import item_id, open_store, prompt_of

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
KILL_TARGET_RANGE = (0.02, 0.30)
"""A killed run's target of new answered calls, as a fraction of the items still unanswered."""
KILL_JITTER = 0.020
"""Seconds, at most, between reaching the target and the SIGKILL."""
DRAIN_LIMIT = 10.0
"""Seconds the emulator may take to finish the requests a killed child left behind."""
POLL = 0.002


def expected_answer(prompt: str) -> str:
    """What the emulator answers to ``prompt`` (and so the correct output of its item)."""
    return f"answer to: {prompt}"


@dataclass
class Phase:
    """One start of the child: killed, or the final run to completion."""

    number: int
    killed: bool = False
    target: int = 0
    """New answered calls this run had to reach before the kill."""
    duration: float = 0.0
    """Seconds from the start of the child to its kill (or its exit)."""
    answered_at_kill: int = 0
    """Answered calls (HTTP 200) of this run when the SIGKILL was sent."""
    answered_total_at_kill: int = 0
    """Answered calls of every run of this store so far when the SIGKILL was sent."""
    committed: set[str] = field(default_factory=set)
    """Prompts of the items with a committed success once this run was gone (all runs so far)."""
    returned: set[str] = field(default_factory=set)
    """Prompts whose call had returned its answer to the child (the child's calls log)."""
    answers: Counter[str] = field(default_factory=Counter)
    """Answered calls of this run per prompt (including answers sent after the kill)."""
    other_statuses: Counter[int] = field(default_factory=Counter)
    torn_tail: bytes | None = None
    """JSONL only: the torn last line the kill left in the file, if any."""
    torn_offset: int = -1
    warned_torn: bool = False
    """JSONL only: this run's log holds the store's warning that it dropped an incomplete line."""
    summary: dict[str, object] = field(default_factory=dict)


@dataclass
class Verdict:
    """Figures and violations of one store's soak."""

    kind: str
    phases: list[Phase] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    wall: float = 0.0

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(f"  {line}", flush=True)


class Emulator:
    """The OpenAI emulator with deterministic answers after a random 1..5 ms latency."""

    def __init__(self, rng: random.Random, latency: tuple[float, float]) -> None:
        self._rng = rng
        self._latency = latency
        self.server = OpenAIServer(respond=self._respond, host=LOOPBACK, prompt_caching=False)

    async def _respond(self, request: ProviderRequest) -> str:
        low, high = self._latency
        if high > 0:
            await asyncio.sleep(self._rng.uniform(low, high))
        return expected_answer(request.prompt)

    @property
    def answered(self) -> int:
        """Answered calls (HTTP 200) since the last :meth:`harvest`."""
        return self.server.status_counts[200]

    async def harvest(self, phase: Phase) -> None:
        """Wait for the requests still being served, then move the run's counts into ``phase``."""
        for _ in range(int(DRAIN_LIMIT / 0.01)):
            if not self.server.in_flight:
                break
            await asyncio.sleep(0.01)
        for exchange in self.server.exchanges:
            if exchange.status == 200 and exchange.request.kind == "chat_completions":
                phase.answers[exchange.request.prompt] += 1
            else:
                phase.other_statuses[exchange.status or 0] += 1
        self.server.reset_stats()


def child_env() -> dict[str, str]:
    """The child's environment: no HTTP proxy, so loopback traffic stays on loopback."""
    proxies = {"http_proxy", "https_proxy", "all_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
    env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def start_child(
    args: argparse.Namespace,
    base_url: str,
    kind: str,
    store: Path,
    out: Path,
    log: Path,
    calls: Path,
) -> asyncio.subprocess.Process:
    command = [
        sys.executable,
        "-m",
        "tests.soak.kill_child",
        "--base-url",
        base_url,
        "--store-kind",
        kind,
        "--store",
        str(store),
        "--items",
        str(args.items),
        "--workers",
        str(args.workers),
        "--out",
        str(out),
        "--calls-log",
        str(calls),
    ]
    with log.open("wb") as log_file:
        return await asyncio.create_subprocess_exec(
            *command,
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )


async def stop(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` if it still runs and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 30)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join("    | " + line for line in text.splitlines()[-lines:])


def committed_items(kind: str, path: Path) -> set[str]:
    """Items with a success record in the store file, read without opening it as a store.

    SQLite is opened read-only (no recovery, no checkpoint: the next run finds the file exactly
    as the kill left it); a JSONL file is only read (a torn line is skipped, not repaired).
    """
    ids: set[str] = set()
    if not path.exists():
        return ids
    if kind == "sqlite":
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            query = "SELECT DISTINCT item_id FROM records WHERE success = 1"
            ids.update(str(row[0]) for row in connection.execute(query))
        finally:
            connection.close()
        return {prompt_of(int(key[1:])) for key in ids}
    with path.open("rb") as file:
        for raw in file:
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict) and record.get("success") is True:
                    ids.add(str(record.get("item_id")))
    return {prompt_of(int(key[1:])) for key in ids}


def torn_tail(path: Path) -> tuple[int, bytes] | None:
    """The offset and bytes of the last line of a JSON Lines file if it is torn, else ``None``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data:
        return None
    start = data.rfind(b"\n", 0, len(data) - 1) + 1
    last = data[start:]
    if last.endswith(b"\n"):
        try:
            json.loads(last)
        except ValueError:
            return start, last
        return None
    return start, last


async def run_phase(
    args: argparse.Namespace,
    rng: random.Random,
    emulator: Emulator,
    verdict: Verdict,
    workdir: Path,
    store: Path,
    out: Path,
    kill: bool,
) -> Phase | None:
    """Start the child once; kill it at a random moment or let it finish. ``None``: aborted."""
    phase = Phase(number=len(verdict.phases) + 1, killed=kill)
    log = workdir / f"{verdict.kind}-run{phase.number}.log"
    calls = workdir / f"{verdict.kind}-run{phase.number}.calls"
    answered_before = sum(sum(p.answers.values()) for p in verdict.phases)
    seen = set().union(*(p.answers for p in verdict.phases)) if verdict.phases else set()
    unanswered = args.items - len(seen)
    if kill:
        low, high = KILL_TARGET_RANGE
        phase.target = rng.randint(max(1, int(unanswered * low)), max(1, int(unanswered * high)))
    process = await start_child(
        args, emulator.server.base_url, verdict.kind, store, out, log, calls
    )
    started = time.monotonic()
    deadline = started + args.child_timeout
    try:
        if kill:
            while emulator.answered < phase.target:
                if process.returncode is not None:
                    verdict.fail(
                        f"run {phase.number} exited (rc {process.returncode}) before its kill "
                        f"at {phase.target} answers:\n{tail(log)}"
                    )
                    return None
                if time.monotonic() > deadline:
                    verdict.fail(
                        f"run {phase.number} reached only {emulator.answered} of "
                        f"{phase.target} answers in {args.child_timeout:g} s:\n{tail(log)}"
                    )
                    return None
                await asyncio.sleep(POLL)
            await asyncio.sleep(rng.uniform(0.0, KILL_JITTER))
            phase.answered_at_kill = emulator.answered
            phase.answered_total_at_kill = answered_before + phase.answered_at_kill
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            phase.duration = time.monotonic() - started
            returncode = await asyncio.wait_for(process.wait(), 30)
            if returncode != -signal.SIGKILL:
                verdict.fail(f"run {phase.number} ended with rc {returncode} before the SIGKILL")
        else:
            try:
                returncode = await asyncio.wait_for(process.wait(), args.child_timeout)
            except TimeoutError:
                verdict.fail(f"final run did not finish in {args.child_timeout:g} s:\n{tail(log)}")
                return None
            phase.duration = time.monotonic() - started
            if returncode != 0:
                verdict.fail(f"final run exited with rc {returncode}:\n{tail(log)}")
                return None
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
            summaries = [line for line in lines if line.startswith("{")]
            if not summaries:
                verdict.fail(f"final run printed no summary:\n{tail(log)}")
                return None
            phase.summary = json.loads(summaries[-1])
    finally:
        await stop(process)
        await emulator.harvest(phase)
    text = log.read_text(encoding="utf-8", errors="replace").lower()
    phase.warned_torn = "artifactstorewarning" in text and "incomplete" in text
    phase.committed = committed_items(verdict.kind, store)
    with contextlib.suppress(FileNotFoundError):
        phase.returned = set(calls.read_text(encoding="utf-8").splitlines())
    if kill and verdict.kind == "jsonl":
        torn = torn_tail(store)
        if torn is not None:
            phase.torn_offset, phase.torn_tail = torn
    verdict.phases.append(phase)
    return phase


def check_results(args: argparse.Namespace, verdict: Verdict, out: Path) -> None:
    """The final run's results: one per item, all successes, all correct."""
    final = verdict.phases[-1]
    results = BatchResult.from_jsonl(out).results
    ids = Counter(r.item_id for r in results)
    expected = {item_id(i): prompt_of(i) for i in range(args.items)}
    duplicated = sum(count - 1 for count in ids.values() if count > 1)
    lost = sum(1 for key in expected if key not in ids)
    unknown = sum(1 for key in ids if key not in expected)
    failed = [r for r in results if not r.success]
    wrong = [
        r
        for r in results
        if r.success and r.item_id in expected and r.output != expected_answer(expected[r.item_id])
    ]
    verdict.say(
        f"results: {len(results)} for {args.items} items; lost {lost}, duplicated {duplicated}, "
        f"unknown {unknown}, failed {len(failed)}, wrong outputs {len(wrong)}"
    )
    if len(results) != args.items or lost or duplicated or unknown:
        verdict.fail(
            f"{len(results)} results for {args.items} items: lost {lost}, duplicated "
            f"{duplicated}, unknown ids {unknown}"
        )
    if failed:
        verdict.fail(f"{len(failed)} failed results, e.g. {failed[0].item_id}: {failed[0].error}")
    if wrong:
        verdict.fail(f"{len(wrong)} wrong outputs, e.g. {wrong[0].item_id}: {wrong[0].output!r}")

    summary = final.summary
    replayed = sum(1 for r in results if r.replayed_from_artifact)
    called_final = sum(final.answers.values())
    verdict.say(
        f"final run: replayed {replayed}, called {args.items - replayed}, answered calls "
        f"{called_final}; child summary {json.dumps(summary)}"
    )
    if summary.get("succeeded") != args.items or summary.get("failed") != 0:
        verdict.fail(f"child summary disagrees: {summary}")
    if called_final != args.items - replayed or any(c > 1 for c in final.answers.values()):
        verdict.fail(
            f"final run made {called_final} answered calls for {args.items - replayed} "
            "non-replayed items (each must be called exactly once, replayed ones never)"
        )
    answered_final = set(final.answers)
    replayed_prompts = {expected[r.item_id] for r in results if r.replayed_from_artifact}
    if replayed_prompts & answered_final:
        verdict.fail(
            f"{len(replayed_prompts & answered_final)} items were both replayed and called "
            "in the final run"
        )


def check_payments(args: argparse.Namespace, verdict: Verdict) -> None:
    """Answered calls against items: only calls in flight at a kill may be paid twice.

    For each kill, the calls the emulator answered in that run split into: committed (the
    item's success reached the store), in flight (answered, but the call had not returned in
    the child: the SDK was still reading or parsing the answer) and waiting for commit (the call
    had returned and its record was queued for the writer's next group commit). Both of the
    last two are paid again by the next run.
    """
    per_prompt: Counter[str] = Counter()
    for phase in verdict.phases:
        per_prompt.update(phase.answers)
        if phase.other_statuses:
            verdict.fail(f"run {phase.number} got non-200 answers: {dict(phase.other_statuses)}")
    answered = sum(per_prompt.values())
    kills = sum(1 for p in verdict.phases if p.killed)
    paid_twice = answered - args.items
    never = sum(1 for i in range(args.items) if per_prompt[prompt_of(i)] == 0)
    most = max(per_prompt.values(), default=0)
    committed_before: set[str] = set()
    waiting_total = 0
    for index, phase in enumerate(verdict.phases):
        committed = phase.committed - committed_before
        committed_before = phase.committed
        if not phase.killed:
            continue
        later: set[str] = set().union(*(p.answers for p in verdict.phases[index + 1 :]))
        answers = set(phase.answers)
        repaid = len(answers & later)
        after = sum(phase.answers.values()) - phase.answered_at_kill
        in_flight = answers - phase.returned - committed
        waiting = (answers & phase.returned) - committed
        waiting_total += len(waiting)
        verdict.say(
            f"kill {phase.number}: answered {len(answers)} ({after} after the SIGKILL), "
            f"committed {len(committed)}; paid again later {repaid} = in flight "
            f"{len(in_flight)} + returned but waiting for the group commit {len(waiting)}"
        )
        if repaid != len(answers - committed) or not committed <= answers:
            verdict.fail(
                f"run {phase.number}: {repaid} answers were paid again, but "
                f"{len(answers - committed)} were answered and not committed "
                f"({len(committed - answers)} committed without an answer)"
            )
        if len(in_flight) > args.workers:
            verdict.fail(
                f"run {phase.number}: {len(in_flight)} calls in flight at the kill > "
                f"{args.workers} workers"
            )
    bound = kills * args.workers
    allowed = bound + waiting_total if args.lenient_commit_window else bound
    verdict.say(
        f"answered calls total: {answered}; paid twice = answered - items = {paid_twice}; "
        f"bound kills x workers = {kills} x {args.workers} = {bound}"
        + (f" (+ {waiting_total} waiting for commit allowed)" if args.lenient_commit_window else "")
        + f"; most calls for one item: {most}"
    )
    if paid_twice > allowed:
        verdict.fail(
            f"paid twice {paid_twice} > kills x workers = {bound}: {waiting_total} of them are "
            "calls that had returned and were waiting for their group commit at a kill"
        )
    if paid_twice < 0 or never:
        verdict.fail(f"{never} items were never called, yet have results")


def check_sqlite(args: argparse.Namespace, verdict: Verdict, store: Path) -> None:
    """``PRAGMA integrity_check`` and one record per item (no committed success called again)."""
    connection = sqlite3.connect(store)
    try:
        integrity = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        rows = connection.execute(
            "SELECT COUNT(*), COUNT(DISTINCT item_id) FROM records"
        ).fetchone()
        recalled = connection.execute(
            "SELECT COUNT(*) FROM (SELECT item_id FROM records WHERE success = 1 "
            "GROUP BY item_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    finally:
        connection.close()
    verdict.say(
        f"integrity_check: {', '.join(integrity)}; records {rows[0]}, distinct items {rows[1]}, "
        f"items with more than one success record {recalled}"
    )
    if integrity != ["ok"]:
        verdict.fail(f"PRAGMA integrity_check: {integrity[:5]}")
    if rows[1] != args.items or recalled:
        verdict.fail(
            f"store holds {rows[1]} distinct items for {args.items}; {recalled} items were "
            "called again after their success was committed"
        )


def check_jsonl(args: argparse.Namespace, verdict: Verdict, store: Path) -> None:
    """Every line parses, bar torn last lines left by kills; one success record per item."""
    torn = {p.torn_offset: p.torn_tail for p in verdict.phases if p.torn_tail is not None}
    successes: Counter[str] = Counter()
    bad: list[tuple[int, bytes]] = []
    kept_torn = 0
    offset = 0
    lines = 0
    with store.open("rb") as file:
        for raw in file:
            lines += 1
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError:
                if torn.get(offset) is not None and raw.rstrip(b"\n") == torn[offset].rstrip(b"\n"):
                    kept_torn += 1
                else:
                    bad.append((offset, raw[:120]))
            else:
                if record.get("success") is True and isinstance(record.get("item_id"), str):
                    successes[record["item_id"]] += 1
            offset += len(raw)
    recalled = sum(1 for count in successes.values() if count > 1)
    torn_kills = [p.number for p in verdict.phases if p.torn_tail is not None]
    unwarned = [
        p.number + 1
        for p in verdict.phases[:-1]
        if p.torn_tail is not None and not verdict.phases[p.number].warned_torn
    ]
    verdict.say(
        f"file: {lines} lines; unparsable {len(bad)}; torn last lines left by kills "
        f"{len(torn_kills)} (after runs {torn_kills}), still in the file {kept_torn}; "
        f"items with a success record {len(successes)}, with more than one {recalled}"
    )
    if bad:
        verdict.fail(f"{len(bad)} lines do not parse, e.g. at byte {bad[0][0]}: {bad[0][1]!r}")
    if len(successes) != args.items or recalled:
        verdict.fail(
            f"file holds successes for {len(successes)} items of {args.items}; {recalled} items "
            "were called again after their success was committed"
        )
    if unwarned:
        verdict.fail(f"runs {unwarned} reopened a torn file without a warning mentioning it")


def check_store_api(args: argparse.Namespace, verdict: Verdict, store: Path) -> None:
    """The store read back through its own API: one correct success per item."""
    opened: ArtifactStore = open_store(verdict.kind, str(store))
    with opened:
        count = opened.count()
        latest = list(opened.iter_latest())
    wrong = [
        r.item_id
        for r in latest
        if not r.success or r.output != expected_answer(prompt_of(int(r.item_id[1:])))
    ]
    verdict.say(
        f"store API: count() {count}, latest records {len(latest)}, not correct {len(wrong)}"
    )
    if count != args.items or len(latest) != args.items or wrong:
        verdict.fail(
            f"store API: count() {count}, {len(latest)} latest records, {len(wrong)} not a "
            f"correct success (e.g. {wrong[:3]})"
        )


async def soak_store(
    args: argparse.Namespace, kind: str, rng: random.Random, emulator: Emulator, workdir: Path
) -> Verdict:
    verdict = Verdict(kind=kind)
    store = workdir / f"store-{kind}.{'db' if kind == 'sqlite' else 'jsonl'}"
    out = workdir / f"results-{kind}.jsonl"
    print(
        f"== {kind} store: {args.items} items, {args.workers} workers, {args.kills} kills ==",
        flush=True,
    )
    started = time.monotonic()
    for number in range(args.kills + 1):
        kill = number < args.kills
        phase = await run_phase(args, rng, emulator, verdict, workdir, store, out, kill)
        if phase is None:
            verdict.wall = time.monotonic() - started
            return verdict
        if kill:
            torn = f"; torn last line ({len(phase.torn_tail)} bytes)" if phase.torn_tail else ""
            verdict.say(
                f"run {phase.number}: SIGKILL at {phase.duration:.2f} s (target "
                f"{phase.target} new answers; {phase.answered_at_kill} answered in this run, "
                f"{phase.answered_total_at_kill} in all runs so far){torn}"
            )
        else:
            verdict.say(f"run {phase.number}: completed in {phase.duration:.2f} s")
    verdict.wall = time.monotonic() - started
    check_results(args, verdict, out)
    check_payments(args, verdict)
    if kind == "sqlite":
        check_sqlite(args, verdict, store)
    else:
        check_jsonl(args, verdict, store)
    check_store_api(args, verdict, store)
    verdict.say(f"wall time: {verdict.wall:.1f} s")
    return verdict


async def soak(args: argparse.Namespace, workdir: Path) -> list[Verdict]:
    rng = random.Random(args.seed)
    kinds = ["sqlite", "jsonl"] if args.store_kind == "both" else [args.store_kind]
    emulator = Emulator(rng, (args.latency_min, args.latency_max))
    verdicts = []
    async with emulator.server:
        if not emulator.server.base_url.startswith(f"http://{LOOPBACK}:"):
            raise RuntimeError(f"emulator is not on loopback: {emulator.server.base_url}")
        for kind in kinds:
            verdicts.append(await soak_store(args, kind, rng, emulator, workdir))
    return verdicts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak.soak_kill",
        description="Kill -9 a resumable run several times, resume it, check nothing was lost "
        "or paid twice.",
    )
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--store-kind", choices=("sqlite", "jsonl", "both"), default="both")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--latency-min", type=float, default=0.001, help="seconds per call, min")
    parser.add_argument("--latency-max", type=float, default=0.005, help="seconds per call, max")
    parser.add_argument(
        "--child-timeout", type=float, default=600.0, help="seconds allowed per child run"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    parser.add_argument(
        "--lenient-commit-window",
        action="store_true",
        help="also allow, beyond kills x workers, the calls that had returned and were waiting "
        "for their group commit at a kill",
    )
    args = parser.parse_args(argv)
    if args.items < 1 or args.workers < 1 or args.kills < 0:
        parser.error("--items and --workers must be >= 1, --kills >= 0")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="soak-kill-"))
    print(f"soak-kill: seed {args.seed}, working directory {workdir}", flush=True)
    started = time.monotonic()
    verdicts = asyncio.run(soak(args, workdir))
    failures = [(v.kind, message) for v in verdicts for message in v.failures]
    print(f"== total wall time {time.monotonic() - started:.1f} s ==")
    if failures:
        for kind, message in failures:
            print(f"FAIL [{kind}] {message}")
        print(f"files kept in {workdir}; --seed {args.seed} repeats the kill targets and latencies")
        return 1
    print("OK: " + "; ".join(f"{v.kind}: nothing lost, duplicated or wrong" for v in verdicts))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
