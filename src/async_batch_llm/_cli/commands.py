"""The ``async-batch-llm`` command line: ``run``, ``status`` and ``export``, built with click.

click is imported inside :func:`build_cli`, so this module imports without the ``cli`` extra
(the package's modules must all import with only the required dependencies).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from async_batch_llm._cli.providers import PROVIDERS
from async_batch_llm._cli.run import EXIT_FAILED, EXIT_OK, EXIT_USAGE, RunOptions, run

if TYPE_CHECKING:
    import click

__all__ = ["build_cli", "export_store", "store_status"]

_MAIN_HELP = """Run a JSON Lines file of LLM requests through a provider, from the shell.

\b
  async-batch-llm run requests.jsonl --provider openai --model gpt-4o-mini \\
      --out results.jsonl --store run.db
  async-batch-llm run requests.jsonl ... --store run.db --resume   # after a crash
  async-batch-llm run requests.jsonl ... --dry-run                 # estimate the cost
  async-batch-llm run requests.jsonl ... --mode batch              # batch API, half price
  async-batch-llm status run.db
  async-batch-llm export run.db --out results.jsonl

API keys come from OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY (or GOOGLE_API_KEY).
Exit codes: 0 every request succeeded, 1 some failed, 2 bad usage or bad input.
"""

_RUN_HELP = """Send every request of INPUT.jsonl; write one result line per request to --out.

\b
INPUT is JSON Lines, one request per line, either
  OpenAI batch lines: {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "...", "messages": [...], "temperature": 0}}
  or short lines:     {"id": "r1", "prompt": "Summarise ...", "system": "optional"}

Results follow the OpenAI batch output format ({"id", "custom_id", "response":
{"status_code", "body"}, "error"}), in completion order. The input is read lazily.
Malformed lines are reported with their line number and skipped (the run then exits 2);
--strict refuses the whole input instead. Repeated custom_ids are always refused.

With --store every result is committed to an SQLite file before it is written out; after a
crash or Ctrl-C, the same command with --resume reuses every committed success and calls only
the rest.

With --mode batch the lines go through the provider's batch API (OpenAI Files + Batches,
Anthropic Message Batches, Gemini batch jobs) at the batch price; with --store the job ids
are committed first, so --resume polls the jobs already submitted instead of submitting them
again.
"""


def store_status(path: Path) -> dict[str, Any]:
    """Counts over the latest record of every item of a store (what ``status`` prints)."""
    from async_batch_llm._internal.artifacts.sqlite import SqliteArtifactStore

    items = succeeded = failed = 0
    tokens: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    cost: float | None = None
    last = 0.0
    with SqliteArtifactStore(path) as store:
        for record in store.iter_latest():
            items += 1
            if record.success:
                succeeded += 1
            else:
                failed += 1
                errors[record.error_category or "request_failed"] += 1
            for name in ("input_tokens", "output_tokens", "cached_input_tokens"):
                tokens[name] += int(record.token_usage.get(name, 0))
            if record.cost is not None:
                cost = (cost or 0.0) + record.cost
            last = max(last, record.created_at)
    return {
        "store": str(path),
        "items": items,
        "succeeded": succeeded,
        "failed": failed,
        "input_tokens": tokens["input_tokens"],
        "output_tokens": tokens["output_tokens"],
        "cached_input_tokens": tokens["cached_input_tokens"],
        "errors": dict(sorted(errors.items())),
        "cost": cost,
        "last_result_at": last or None,
    }


def export_store(path: Path, out: Path) -> int:
    """Write the latest record of every item as an output line; returns the lines written."""
    from async_batch_llm._cli.output import record_output_line
    from async_batch_llm._internal.artifacts.sqlite import SqliteArtifactStore

    written = 0
    with SqliteArtifactStore(path) as store, out.open("w", encoding="utf-8") as handle:
        for record in store.iter_latest():
            handle.write(record_output_line(record))
            handle.write("\n")
            written += 1
    return written


def _existing_store(value: str) -> Path:
    import click

    path = Path(value).expanduser()
    if not path.is_file():
        raise click.BadParameter(f"{value} does not exist (or is not a file)", param_hint="RUN.db")
    return path


def _finite(ctx: Any, param: Any, value: float | None) -> float | None:
    import math

    import click

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number of dollars")
    return value


def _format_status(status: dict[str, Any]) -> str:
    import datetime

    lines = [
        f"store:      {status['store']}",
        f"items:      {status['items']}",
        f"succeeded:  {status['succeeded']}",
        f"failed:     {status['failed']}",
        f"tokens:     {status['input_tokens']} in ({status['cached_input_tokens']} cached), "
        f"{status['output_tokens']} out",
    ]
    for category, count in status["errors"].items():
        lines.append(f"  {category}: {count}")
    if status["cost"] is not None:
        from async_batch_llm._cli.costs import format_dollars

        lines.append(f"cost:       {format_dollars(status['cost'])}")
    if status["last_result_at"]:
        when = datetime.datetime.fromtimestamp(status["last_result_at"], tz=datetime.UTC)
        lines.append(f"last result: {when:%Y-%m-%d %H:%M:%S} UTC")
    return "\n".join(lines)


def build_cli() -> click.Group:
    """The click command group (imports click)."""
    import click

    from async_batch_llm._internal.artifacts.records import ArtifactStoreError

    @click.group(help=_MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="async-batch-llm", prog_name="async-batch-llm")
    def cli() -> None:
        pass

    @cli.command("run", help=_RUN_HELP, short_help="Run every request of INPUT.jsonl.")
    @click.argument("input_path", metavar="INPUT.jsonl", type=click.Path(dir_okay=True))
    @click.option(
        "--provider",
        required=True,
        type=click.Choice(sorted(PROVIDERS)),
        help="Who answers the requests.",
    )
    @click.option("--model", required=True, help="Model called for every line, e.g. gpt-4o-mini.")
    @click.option(
        "--base-url",
        metavar="URL",
        help="API root of an OpenAI-compatible (or Anthropic/Gemini-compatible) server.",
    )
    @click.option(
        "--out",
        "out",
        required=True,
        metavar="OUT.jsonl",
        type=click.Path(),
        help="Where the result lines go (replaced).",
    )
    @click.option(
        "--store",
        metavar="RUN.db",
        type=click.Path(),
        help="SQLite file every result is committed to first (created if new).",
    )
    @click.option(
        "--resume", is_flag=True, help="Reuse the successes already in --store; call the rest."
    )
    @click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=8,
        show_default=True,
        metavar="N",
        help="Requests in flight at once.",
    )
    @click.option(
        "--rpm", type=click.IntRange(min=1), metavar="N", help="At most N requests per minute."
    )
    @click.option(
        "--tpm", type=click.IntRange(min=1), metavar="N", help="At most N tokens per minute."
    )
    @click.option("--strict", is_flag=True, help="Refuse the whole input if any line is bad.")
    @click.option(
        "--progress",
        type=click.Choice(["auto", "panel", "lines", "none"]),
        default="auto",
        show_default=True,
        help="Live panel on a terminal, periodic lines otherwise (on stderr).",
    )
    @click.option(
        "--no-model-check",
        is_flag=True,
        help="Do not ask the server whether it knows --model before the run.",
    )
    @click.option(
        "--max-cost",
        type=click.FloatRange(min=0, min_open=True),
        callback=_finite,
        metavar="USD",
        help="Stop starting calls before the run's cost at --model's list price would pass "
        "USD; the lines not run fail with error code budget_exceeded (exit code 1).",
    )
    @click.option(
        "--mode",
        type=click.Choice(["online", "batch"]),
        default="online",
        show_default=True,
        help="online: one API call per line; batch: every line through the provider's batch "
        "API (OpenAI, Anthropic, Gemini), cheaper and slower (jobs may take up to 24 h).",
    )
    @click.option(
        "--dry-run",
        is_flag=True,
        help="Estimate the tokens and the cost of the whole input and call nothing.",
    )
    def run_command(
        input_path: str,
        provider: str,
        model: str,
        base_url: str | None,
        out: str,
        store: str | None,
        resume: bool,
        workers: int,
        rpm: int | None,
        tpm: int | None,
        strict: bool,
        progress: str,
        no_model_check: bool,
        max_cost: float | None,
        mode: Literal["online", "batch"],
        dry_run: bool,
    ) -> None:
        options = RunOptions(
            input=Path(input_path).expanduser(),
            provider=provider,
            model=model,
            out=Path(out).expanduser(),
            base_url=base_url,
            store=None if store is None else Path(store).expanduser(),
            resume=resume,
            workers=workers,
            rpm=rpm,
            tpm=tpm,
            strict=strict,
            progress=progress,
            check_model=not no_model_check,
            max_cost=max_cost,
            mode=mode,
            dry_run=dry_run,
        )
        sys.exit(run(options))

    @cli.command("status")
    @click.argument("store", metavar="RUN.db", type=_existing_store)
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
    def status_command(store: Path, as_json: bool) -> None:
        """Show how many results RUN.db holds: succeeded, failed, tokens, cost."""
        try:
            status = store_status(store)
        except ArtifactStoreError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        click.echo(json.dumps(status) if as_json else _format_status(status))
        sys.exit(EXIT_OK)

    @cli.command("export")
    @click.argument("store", metavar="RUN.db", type=_existing_store)
    @click.option(
        "--out",
        required=True,
        metavar="OUT.jsonl",
        type=click.Path(dir_okay=False),
        help="Where the result lines go (replaced).",
    )
    def export_command(store: Path, out: str) -> None:
        """Write the latest result of every item of RUN.db as output lines."""
        target = Path(out).expanduser()
        if not target.parent.is_dir():
            click.echo(f"error: directory {target.parent} does not exist", err=True)
            sys.exit(EXIT_USAGE)
        try:
            written = export_store(store, target)
        except ArtifactStoreError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except OSError as exc:
            click.echo(f"error: cannot write {target}: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        click.echo(f"{written} result(s) written to {target}")
        sys.exit(EXIT_OK)

    return cli
