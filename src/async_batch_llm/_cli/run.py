"""``async-batch-llm run``: check everything that can be checked, then stream the input through.

Order matters: every check that can refuse the run (the input, the key, the store, the model)
happens before the output file is opened, so a refused run writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from async_batch_llm._cli.costs import (
    ModelPriceError,
    dry_run_report,
    estimate_requests,
    format_dollars,
    model_cost_function,
    price_table,
    stop_message,
)
from async_batch_llm._cli.inputs import (
    InputFileError,
    Request,
    ScanReport,
    iter_requests,
    scan_input,
)
from async_batch_llm._cli.output import output_line, result_output_line
from async_batch_llm._cli.providers import (
    PROVIDERS,
    ModelCheckError,
    RequestStrategy,
    api_key_for,
    build_client,
    build_strategy,
    check_model,
    close_client,
    error_classifier,
    line_checker,
    sdk_installed,
)
from async_batch_llm._internal.artifacts.records import (
    ArtifactStoreError,
    item_fingerprint,
    strategy_identity,
)
from async_batch_llm._types import BatchTermination
from async_batch_llm.core.config import ProcessorConfig
from async_batch_llm.core.guardrails import GuardrailConfig

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "RunOptions", "UsageError", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_FLUSH_EVERY = 0.5
"""Seconds between flushes of the output file."""


class UsageError(Exception):
    """The run is refused before any call: bad input, options, key, store or model."""


@dataclass(frozen=True)
class RunOptions:
    """Everything ``run`` was given. See ``async-batch-llm run --help`` for each.

    A new option adds a field here, its click option in ``commands.py``, and its effect in
    :func:`processor_config` (or, like ``--dry-run``, a branch in ``_run`` after the checks).
    """

    input: Path
    provider: str
    model: str
    out: Path
    base_url: str | None = None
    store: Path | None = None
    resume: bool = False
    workers: int = 8
    rpm: int | None = None
    tpm: int | None = None
    strict: bool = False
    progress: str = "auto"
    check_model: bool = True
    max_cost: float | None = None
    mode: Literal["online", "batch"] = "online"
    dry_run: bool = False


def say(message: str) -> None:
    """A diagnostic line on stderr."""
    print(message, file=sys.stderr, flush=True)


def processor_config(options: RunOptions) -> ProcessorConfig:
    """The processor configuration of a run (new run options add their fields here).

    Calls are priced at ``--model``'s list price when the price table knows it (results and
    the store then carry ``cost``, the panel shows the spend); ``--max-cost`` caps the total.
    ``--mode batch`` sends the lines through the provider's batch API, priced at the batch
    price.

    Raises:
        ModelPriceError: ``--max-cost`` with a model the price table does not know.
    """
    cost_function = model_cost_function(options.model, required=options.max_cost is not None)
    guardrails = (
        GuardrailConfig(max_total_cost=options.max_cost, cost_function=cost_function)
        if cost_function is not None
        else GuardrailConfig()
    )
    return ProcessorConfig(
        max_workers=options.workers,
        max_requests_per_minute=options.rpm,
        max_tokens_per_minute=options.tpm,
        guardrails=guardrails,
        mode=options.mode,
    )


def _check_paths(options: RunOptions) -> None:
    out = options.out
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a directory; give the path of a file")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")
    try:
        same = out.exists() and options.input.exists() and out.samefile(options.input)
    except OSError:
        same = False
    if same:
        raise UsageError(f"--out {out} is the input file; choose another output path")
    if options.resume and options.store is None:
        raise UsageError("--resume needs --store RUN.db: the store is what a run resumes from")
    if options.store is not None and options.store.exists():
        try:
            same_store = options.store.samefile(options.input) or (
                out.exists() and options.store.samefile(out)
            )
        except OSError:
            same_store = False
        if same_store:
            raise UsageError(f"--store {options.store} is the input or the output file")


def _report_scan(options: RunOptions, report: ScanReport) -> None:
    for line, message in report.errors:
        say(f"{options.input}:{line}: {message}")
    if report.error_count > len(report.errors):
        say(f"... and {report.error_count - len(report.errors)} more malformed line(s)")
    if report.duplicates:
        for custom_id, first, again in report.duplicates:
            say(f"{options.input}:{again}: custom_id {custom_id!r} repeats line {first}")
        raise UsageError(
            "custom_id values must be unique (each one names one result); "
            "fix the repeated ids and run again"
        )
    if report.error_count and options.strict:
        raise UsageError(
            f"{report.error_count} malformed line(s) in {options.input}; nothing was run "
            "(--strict). Fix them, or run without --strict to run the other lines"
        )
    if report.valid == 0:
        raise UsageError(f"{options.input} holds no request to run")
    others = sorted(report.models - {options.model})
    if others:
        say(
            f"note: lines name body.model {', '.join(others)}; every line is sent to "
            f"--model {options.model}"
        )


def _resume_check(store: Any, strategy: RequestStrategy, requests: Iterator[Request]) -> None:
    """Refuse ``--resume`` on a store that holds nothing of this input.

    Stops at the first record whose item and fingerprint match (the usual case: a quick
    check); reads the whole input only when nothing matches.
    """
    total = store.count()
    if total == 0:
        return
    identity = strategy_identity(strategy)
    matched_ids = 0
    for request in requests:
        record = store.lookup(request.custom_id)
        if record is None:
            continue
        matched_ids += 1
        if record.fingerprint == item_fingerprint(request.payload(), identity, store.version):
            return
    if matched_ids == 0:
        raise UsageError(
            f"--resume: {store.path} holds {total} result(s), none for a custom_id of this "
            "input: it is the store of another input. Use a new --store for this input"
        )
    raise UsageError(
        f"--resume: {store.path} has results for {matched_ids} custom_id(s) of this input, but "
        "for other requests or another provider/model, so none would be reused. Use a new "
        "--store, or drop --resume to call everything again and record it in this store"
    )


def _open_store(options: RunOptions, check: Callable[[Request], None]) -> Any:
    """Open ``--store`` (``None`` without one) and, with ``--resume``, check it is this input's."""
    if options.store is None:
        return None
    from async_batch_llm._internal.artifacts.sqlite import SqliteArtifactStore

    try:
        store = SqliteArtifactStore(options.store)
    except ArtifactStoreError as exc:
        raise UsageError(str(exc)) from None
    try:
        if options.resume:
            # Only the identity matters here: provider and model, no client needed.
            identity = build_strategy(options.provider, options.model, None)
            _resume_check(store, identity, iter_requests(options.input, check))
        elif (held := store.count()) > 0:
            say(
                f"note: {options.store} already holds {held} result(s); they are kept, "
                "and --resume would reuse them"
            )
    except BaseException:
        store.close()
        raise
    return store


def _progress_observer(options: RunOptions, total: int) -> Any:
    if options.progress == "none":
        return None
    from async_batch_llm.observers.progress import RichProgressObserver

    modes: dict[str, Literal["auto", "live", "lines"]] = {
        "auto": "auto",
        "panel": "live",
        "lines": "lines",
    }
    mode = modes[options.progress]
    return RichProgressObserver(
        total=total,
        max_requests_per_minute=options.rpm,
        max_tokens_per_minute=options.tpm,
        mode=mode,
        title=f"{options.provider}:{options.model}",
    )


@dataclass
class _Tally:
    succeeded: int = 0
    failed: int = 0
    replayed: int = 0
    not_run: int = 0  # lines the batch stopped before calling
    cost: float | None = None  # dollars of this run's calls, when priced
    termination: BatchTermination | None = None  # why the batch stopped early, if it did

    def count(self, result: Any) -> None:
        if result.success:
            self.succeeded += 1
        else:
            self.failed += 1
        self.replayed += result.replayed_from_artifact
        if (
            not result.success
            and result.error_category in _STOP_CATEGORIES
            and not result.token_usage.get("total_tokens")
        ):
            self.not_run += 1  # the batch stopped before calling it
        if result.cost is not None and not result.replayed_from_artifact:
            self.cost = (self.cost or 0.0) + result.cost


def _answer_the_rest(
    options: RunOptions,
    check: Callable[[Request], None],
    out: TextIO,
    termination: BatchTermination,
    read: int,
    pending: set[str],
) -> int:
    """After an early stop: a failure line for every request that got no result.

    ``read`` requests were handed to the batch (those still in ``pending`` got no result);
    the rest of the input was never read. Returns the lines written.
    """
    from async_batch_llm._internal.guardrails import Guard

    error, category = Guard.failure(termination)
    written = 0
    for index, request in enumerate(iter_requests(options.input, check)):
        if index < read and request.custom_id not in pending:
            continue
        out.write(
            output_line(
                request.custom_id,
                success=False,
                output=None,
                error=error,
                error_category=category,
                usage={},
            )
        )
        out.write("\n")
        written += 1
    return written


async def _stream(
    options: RunOptions,
    strategy: RequestStrategy,
    store: Any,
    check: Callable[[Request], None],
    out: TextIO,
    observer: Any,
) -> _Tally:
    from async_batch_llm._internal.artifacts.records import ResumePolicy
    from async_batch_llm._internal.streaming import process_stream

    read = 0
    pending: set[str] = set()  # handed to the batch, no result yet (bounded by the queue)

    def prompts() -> Iterator[tuple[str, dict[str, Any]]]:
        nonlocal read
        for request in iter_requests(options.input, check):
            read += 1
            pending.add(request.custom_id)
            yield request.custom_id, request.payload()

    config = processor_config(options)
    # Priced: the summary says what this run's calls cost, $0 when every line was reused.
    tally = _Tally(cost=0.0 if config.guardrails.cost_function is not None else None)
    last_flush = time.monotonic()
    stream = process_stream(
        strategy,
        prompts(),
        config=config,
        artifact_store=store,
        resume=ResumePolicy.REUSE_SUCCESSES if options.resume else ResumePolicy.NONE,
        error_classifier=error_classifier(options.provider),
        observers=[observer] if observer is not None else [],
    )
    async with stream:
        async for result in stream:
            out.write(result_output_line(result))
            out.write("\n")
            pending.discard(result.item_id)
            tally.count(result)
            now = time.monotonic()
            if now - last_flush >= _FLUSH_EVERY:
                out.flush()
                last_flush = now
    termination = stream.processor._termination()
    if termination.kind != "completed":
        tally.termination = termination
        filled = _answer_the_rest(options, check, out, termination, read, pending)
        tally.failed += filled
        tally.not_run += filled
    return tally


_STOP_CATEGORIES = frozenset({"budget_exceeded", "batch_timeout", "fail_fast", "cancelled"})
"""Categories of lines the batch failed because it stopped (no call made when no tokens)."""


async def _run(options: RunOptions) -> int:
    spec = PROVIDERS[options.provider]
    if not sdk_installed(spec):
        raise UsageError(
            f"--provider {options.provider} needs its SDK: "
            f"pip install 'async-batch-llm[cli,{spec.extra}]'"
        )
    _check_paths(options)
    check = line_checker(options.provider)
    try:
        report = scan_input(options.input, check)
    except InputFileError as exc:
        raise UsageError(str(exc)) from None
    _report_scan(options, report)
    if options.dry_run:  # prices the input; needs no key, opens nothing, calls nothing
        return _dry_run(options, check)
    if options.max_cost is not None:
        try:
            model_cost_function(options.model, required=True)
        except ModelPriceError as exc:
            raise UsageError(
                f"--max-cost needs the price of --model {options.model}: {exc}"
            ) from None
    key = api_key_for(spec)
    if key is None:
        if options.base_url is None:
            raise UsageError(
                f"no API key: set {' or '.join(spec.key_vars)} (or --base-url for a server "
                "that needs none)"
            )
        key = "unused"
    new_store = options.store is not None and not options.store.exists()
    store = _open_store(options, check)
    client = None
    try:
        # The SDK is imported only now: every check above is quick and needs no network.
        client = build_client(options.provider, key, options.base_url)
        strategy = build_strategy(options.provider, options.model, client)
        if options.check_model:
            try:
                warning = await check_model(options.provider, options.model, client, spec.key_vars)
            except ModelCheckError as exc:
                raise UsageError(str(exc)) from None
            if warning:
                say(f"note: {warning}")
    except UsageError:
        await close_client(client)
        if store is not None:
            store.close()
            if new_store:  # refused before any call: leave no empty store behind
                _remove_store(options.store)
        raise
    except BaseException:
        await close_client(client)
        if store is not None:
            store.close()
        raise
    try:
        return await _execute(options, strategy, store, check, report)
    finally:
        if store is not None:
            store.close()
        await close_client(client)


def _dry_run(options: RunOptions, check: Callable[[Request], None]) -> int:
    table = price_table()
    batch = options.mode == "batch"
    try:
        estimate = estimate_requests(
            iter_requests(options.input, check), options.model, table, batch=batch
        )
    except ModelPriceError as exc:
        raise UsageError(f"--dry-run cannot price --model {options.model}: {exc}") from None
    report = dry_run_report(estimate, options.model, table, options.max_cost, batch=batch)
    for line in report:
        print(line, flush=True)
    return EXIT_OK


def _remove_store(path: Path | None) -> None:
    if path is None:
        return
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(f"{path}{suffix}").unlink()


async def _execute(
    options: RunOptions,
    strategy: RequestStrategy,
    store: Any,
    check: Callable[[Request], None],
    report: ScanReport,
) -> int:
    observer = _progress_observer(options, report.valid)
    started = time.monotonic()
    try:
        with options.out.open("w", encoding="utf-8", newline="\n") as out:
            tally = await _stream(options, strategy, store, check, out, observer)
    finally:
        if observer is not None:
            observer.close()
    elapsed = time.monotonic() - started
    called = tally.succeeded + tally.failed - tally.replayed - tally.not_run
    reused = f", {tally.replayed} reused from {options.store}" if options.store else ""
    not_run = f", {tally.not_run} not run" if tally.termination is not None else ""
    print(
        f"{tally.succeeded} succeeded, {tally.failed} failed ({called} called{reused}"
        f"{not_run}) in {elapsed:.1f}s; results in {options.out}",
        flush=True,
    )
    if tally.cost is not None:
        table = price_table()
        dated = f" as of {table.as_of.isoformat()}" if table.as_of is not None else ""
        prices = "batch prices" if options.mode == "batch" else "list prices"
        print(
            f"cost: {format_dollars(tally.cost)} ({options.model} {prices}{dated})",
            flush=True,
        )
    if tally.termination is not None:
        say(stop_message(tally.termination, options.max_cost, tally.not_run))
    if report.error_count:
        say(f"{report.error_count} malformed line(s) of {options.input} were not run (see above)")
        return EXIT_USAGE
    return EXIT_FAILED if tally.failed else EXIT_OK


def run(options: RunOptions) -> int:
    """Run the batch and return the exit code (0, 1 or 2; 130 when interrupted)."""
    try:
        return asyncio.run(_run(options))
    except UsageError as exc:
        say(f"error: {exc}")
        return EXIT_USAGE
    except ArtifactStoreError as exc:
        say(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        where = f"; run again with --resume --store {options.store}" if options.store else ""
        say(f"interrupted: the results so far are in {options.out}{where}")
        return EXIT_INTERRUPTED


def input_path(value: str) -> Path:
    """``value`` as a path (``~`` expanded)."""
    return Path(os.path.expanduser(value))
