"""Run every benchmark scenario against every implementation and print the table with ratios.

Not a test. ``make bench`` runs this file. Each measurement is a fresh interpreter running
``scenarios.py`` (so peak RSS belongs to one scenario), and the implementations of a scenario
are run interleaved, repeat after repeat, so they share the machine's current noise: read the
ratios to the plain-asyncio baseline, not the absolute times.

    .venv/bin/python benchmarks/run_all.py                      # everything (about 10-15 minutes)
    .venv/bin/python benchmarks/run_all.py --quick              # small sizes, one repeat
    .venv/bin/python benchmarks/run_all.py --only overhead,hooks --repeats 9
    .venv/bin/python benchmarks/run_all.py --skip-published     # no throwaway venv for 0.6.0
    .venv/bin/python benchmarks/run_all.py --record             # also rewrite docs/benchmarks.*
    .venv/bin/python benchmarks/run_all.py --only overhead overhead-store stream-memory resume \
        --skip-published --skip-pool --record                  # the durable/streaming targets
    .venv/bin/python benchmarks/run_all.py --only quota --skip-published --record  # quota gate
    .venv/bin/python benchmarks/run_all.py --only guardrails --record  # budgets, deadlines

``--only guardrails`` (and a run without ``--only``) also runs ``guardrails_bench.py`` (the
targets of issue #10) in its own interpreter, passing ``--record`` on.

``--record`` rewrites the main results of ``docs/benchmarks.md`` (and the chart) only when the
run covered every classic scenario, and the durable/streaming and quota sections only when the
run measured them, so a partial run never drops figures recorded by another.

The published async-batch-llm 0.6.0 is installed from the package index into
``benchmarks/.venv-published/`` (git-ignored) with ``uv`` the first time it is needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS_PY = HERE / "scenarios.py"
GUARDRAILS_PY = HERE / "guardrails_bench.py"
PUBLISHED_VENV = HERE / ".venv-published"
PUBLISHED_VERSION = "0.6.0"
RESULTS_DIR = HERE / "results"
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
DOC_START = "<!-- bench-results:start -->"
DOC_END = "<!-- bench-results:end -->"
DURABLE_START = "<!-- bench-durable:start -->"
DURABLE_END = "<!-- bench-durable:end -->"
QUOTA_START = "<!-- bench-quota:start -->"
QUOTA_END = "<!-- bench-quota:end -->"

sys.path.insert(0, str(HERE))
from quota_bench import QUOTA_IMPLS  # noqa: E402 - needs the path above
from scenarios import SCENARIOS  # noqa: E402 - needs the path above

ORDER = [
    "overhead",
    "overhead-sync",
    "hooks",
    "latency",
    "scale-100k",
    "scale-1m",
    "retries",
    "storm",
    "stream-100k",
    "stream-1m",
    "resume-stream",
    "resume-batch",
    "quota-overhead",
    "quota-tpm",
]
CLASSIC = ORDER[: ORDER.index("storm") + 1]
"""The scenarios of the main results table (and the chart)."""
DURABLE = ["overhead", "stream-100k", "stream-1m", "resume-stream", "resume-batch"]
"""The scenarios of the durable/streaming section (``overhead`` for its ``ours-store`` row)."""
ALIASES = {
    "overhead-store": ["overhead"],
    "stream-memory": ["stream-100k", "stream-1m"],
    "resume": ["resume-stream", "resume-batch"],
    "quota": ["quota-overhead", "quota-tpm"],
}
"""Names ``--only`` accepts besides the scenarios'."""
IMPLS = ["baseline", "pool", "ours", "ours-store", "published", *QUOTA_IMPLS]
IMPL_LABELS = {
    "baseline": "plain asyncio (semaphore + gather)",
    "pool": "bare worker pool (floor)",
    "ours": "async-batch-llm (this repo)",
    "ours-store": "async-batch-llm + SqliteArtifactStore",
    "published": f"async-batch-llm {PUBLISHED_VERSION} (PyPI)",
    "declared": "async-batch-llm, max_tokens_per_minute declared",
    "learned": "async-batch-llm, limits learned from the headers",
    "unlimited": "async-batch-llm, no token limit (0.6.0 behaviour)",
}
STORE_SCENARIOS = {"overhead"}
"""Scenarios also run by ``ours-store`` (the processor journaling to a fresh SQLite store)."""
OURS_ONLY = {"stream-100k", "stream-1m", "resume-stream", "resume-batch"}
"""Scenarios of APIs only this repository has: run by ``ours`` alone."""
QUOTA_SCENARIOS = {"quota-overhead", "quota-tpm"}
"""The scenarios of the quota section; 0.6.0 has no token limits, so neither runs it."""
DEFAULT_REPEATS = {
    "scale-100k": 3,
    "scale-1m": 1,
    "storm": 1,
    "stream-100k": 3,
    "stream-1m": 3,
    "resume-stream": 3,
    "resume-batch": 3,
    "quota-overhead": 9,
    "quota-tpm": 1,
}
QUICK_ITEMS = {
    "overhead": 5_000,
    "overhead-sync": 5_000,
    "hooks": 5_000,
    "latency": 2_000,
    "scale-100k": 20_000,
    "retries": 2_000,
    "storm": 400,
    "stream-100k": 10_000,
    "stream-1m": 100_000,
    "resume-stream": 100_000,
    "resume-batch": 100_000,
    "quota-overhead": 5_000,
    "quota-tpm": 400,
}
# Retained bytes per item come from a separate tracemalloc run; too slow for these two, which
# report the RSS growth per item instead. The streams keep no results, and a resumed run's
# results are the point of no target.
NO_TRACEMALLOC = {"scale-1m", "storm", *OURS_ONLY, *QUOTA_SCENARIOS}


# ------------------------------------------------------------------------------- environment


def _uv_command() -> list[str] | None:
    found = shutil.which("uv")
    if found:
        return [found]
    for candidate in ([sys.executable, "-m", "uv"], [str(ROOT / ".uv-bootstrap" / "bin" / "uv")]):
        try:
            subprocess.run([*candidate, "--version"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return candidate
    return None


def published_python() -> Path | None:
    """The interpreter of the throwaway 0.6.0 venv, created on first use; None if impossible."""
    python = PUBLISHED_VENV / "bin" / "python"
    probe = "import importlib.metadata as m; print(m.version('async-batch-llm'))"
    if python.exists():
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == PUBLISHED_VERSION:
            return python
    uv = _uv_command()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    print(
        f">> creating {PUBLISHED_VENV.relative_to(ROOT)} with async-batch-llm=={PUBLISHED_VERSION}"
    )
    try:
        if uv is not None:
            subprocess.run(
                [*uv, "venv", "--quiet", "--python", sys.executable, str(PUBLISHED_VENV)],
                check=True,
                env=env,
            )
            subprocess.run(
                [
                    *uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    str(python),
                    f"async-batch-llm=={PUBLISHED_VERSION}",
                ],
                check=True,
                env=env,
            )
        else:  # no uv anywhere: the standard library's venv and pip do the same job
            subprocess.run([sys.executable, "-m", "venv", str(PUBLISHED_VENV)], check=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    f"async-batch-llm=={PUBLISHED_VERSION}",
                ],
                check=True,
            )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"!! could not install async-batch-llm {PUBLISHED_VERSION}: {exc}; skipping it")
        return None
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if done.returncode != 0 or done.stdout.strip() != PUBLISHED_VERSION:
        print(f"!! the published venv does not import async-batch-llm {PUBLISHED_VERSION}")
        return None
    return python


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg()[0],
    }


# ------------------------------------------------------------------------------- running


@dataclass
class Cell:
    """Every measurement of one implementation in one scenario."""

    scenario: str
    impl: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] | None = None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    def last(self, key: str) -> Any:
        return self.runs[-1].get(key) if self.runs else None

    def bytes_per_item(self) -> tuple[float | None, str]:
        if self.memory is not None:
            return self.memory["bytes_per_item"], "tracemalloc"
        return self.median("rss_retained_per_item"), "RSS"


def run_one(
    python: Path, scenario: str, impl: str, items: int | None, memory: bool
) -> dict[str, Any] | None:
    cmd = [str(python), str(SCENARIOS_PY), "--scenario", scenario, "--impl", impl]
    if items is not None:
        cmd += ["--items", str(items)]
    if memory:
        cmd.append("--memory")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        print(f"!! {scenario}/{impl} failed (exit {done.returncode}):\n{tail}")
        return None
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def run_scenario(
    name: str,
    impls: dict[str, Path],
    repeats: int,
    items: int | None,
    memory: bool,
) -> dict[str, Cell]:
    cells = {impl: Cell(name, impl) for impl in impls}
    order = list(impls)
    for rep in range(repeats):
        # Rotate the order each repeat so no implementation always runs first or last.
        shift = rep % len(order)
        for impl in order[shift:] + order[:shift]:
            started = time.perf_counter()
            record = run_one(impls[impl], name, impl, items, memory=False)
            if record is not None:
                cells[impl].runs.append(record)
                more = ""
                if record.get("first_call_s") is not None:
                    added = record.get("added_s")
                    more = (
                        f"  first call {record['first_call_s']:.3f}s"
                        + ("" if added is None else f" (items added by {added:.3f}s)")
                        + ", "
                        f"{record['replayed']:,} replayed, {record['calls_made']} call(s)"
                    )
                elif name.startswith("stream"):
                    more = f"  peak RSS {record['peak_rss'] / 2**20:.0f} MiB"
                elif record.get("wall_vs_ideal") is not None:
                    more = (
                        f"  {record['wall_s']:.2f}s = {record['wall_vs_ideal']:.3f}x ideal "
                        f"({record['ideal_s']:.2f}s), {record['http_429']} x 429"
                    )
                print(
                    f"   {name:<10} {impl:<10} #{rep + 1}: {record['us_per_item']:8.2f} us/item "
                    f"(cpu {record['cpu_s'] / record['results'] * 1e6:6.2f})  "
                    f"[{time.perf_counter() - started:5.1f}s]{more}",
                    flush=True,
                )
    if memory and name not in NO_TRACEMALLOC:
        for impl in order:
            record = run_one(impls[impl], name, impl, items, memory=True)
            if record is not None:
                cells[impl].memory = record
                print(f"   {name:<10} {impl:<10} retained: {record['bytes_per_item']:7.0f} B/item")
    return cells


# ------------------------------------------------------------------------------- reporting


def summarize(results: dict[str, dict[str, Cell]]) -> list[dict[str, Any]]:
    """One row per scenario and implementation, with the ratios to that scenario's baseline."""
    rows = []
    for name in ORDER:
        cells = results.get(name)
        if not cells:
            continue
        base = cells.get("baseline")
        base_us = base.median("us_per_item") if base else None
        base_cpu = base.median("cpu_s") if base else None
        base_eff = base.median("efficiency") if base else None
        for impl in IMPLS:
            cell = cells.get(impl)
            if cell is None or not cell.runs:
                continue
            us = cell.median("us_per_item")
            cpu = cell.median("cpu_s")
            bytes_item, bytes_how = cell.bytes_per_item()
            row: dict[str, Any] = {
                "scenario": name,
                "impl": impl,
                "items": cell.last("items"),
                "repeats": len(cell.runs),
                "items_per_s": cell.median("items_per_s"),
                "us_per_item": us,
                "cpu_us_per_item": cpu / cell.last("items") * 1e6 if cpu is not None else None,
                "wall_s": cell.median("wall_s"),
                "ratio": us / base_us if us and base_us else None,
                "cpu_ratio": cpu / base_cpu if cpu and base_cpu else None,
                "peak_rss_mib": max(r["peak_rss"] for r in cell.runs) / 2**20,
                "bytes_per_item": bytes_item,
                "bytes_how": bytes_how,
                "succeeded": min(r["succeeded"] for r in cell.runs),
                "results": min(r.get("results", r["items"]) for r in cell.runs),
                "failed": max(r["failed"] for r in cell.runs),
                "version": cell.last("version"),
            }
            if cell.median("efficiency") is not None:
                row["efficiency"] = cell.median("efficiency")
                if base_eff:
                    row["efficiency_ratio"] = row["efficiency"] / base_eff
            if cell.last("ideal_s") is not None:
                row["ideal_s"] = cell.last("ideal_s")
                row["wall_vs_ideal"] = row["wall_s"] / row["ideal_s"]
            if cell.last("http_429") is not None:
                row["http_429"] = cell.median("http_429")
            if cell.last("first_call_s") is not None or cell.last("replayed") is not None:
                firsts = [r["first_call_s"] for r in cell.runs if r.get("first_call_s") is not None]
                row["first_call_s"] = statistics.median(firsts) if firsts else None
                row["first_call_max_s"] = max(firsts) if firsts else None
                added = [r["added_s"] for r in cell.runs if r.get("added_s") is not None]
                row["added_s"] = statistics.median(added) if added else None
                row["replayed"] = min(r["replayed"] for r in cell.runs)
                row["calls_made"] = max(r["calls_made"] for r in cell.runs)
            if cell.last("tokens_charged") is not None:
                row["tokens_charged"] = cell.last("tokens_charged")
            if cell.last("records") is not None:
                row["records"] = min(r["records"] for r in cell.runs)
            if cell.last("commit_max_lag_s") is not None:
                row["commit_max_lag_s"] = max(r["commit_max_lag_s"] for r in cell.runs)
                row["commits"] = statistics.median(r["commits"] for r in cell.runs)
            row["peak_rss_median_mib"] = statistics.median(r["peak_rss"] for r in cell.runs) / 2**20
            rows.append(row)
    return rows


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def notes_for(row: dict[str, Any]) -> str:
    parts = []
    if "efficiency" in row:
        parts.append(f"efficiency {row['efficiency']:.2f}")
        if "efficiency_ratio" in row:
            parts.append(f"{row['efficiency_ratio']:.2f}x baseline's")
    if "wall_vs_ideal" in row:
        parts.append(f"{row['wall_s']:.2f}s = {row['wall_vs_ideal']:.2f}x ideal")
    if "http_429" in row:
        parts.append(f"{row['http_429']:.0f} x 429")
    if "tokens_charged" in row:
        parts.append(f"{row['tokens_charged']:,} tokens charged")
    if row.get("first_call_s") is not None:
        parts.append(f"first new call {row['first_call_s']:.3f}s after opening the store")
        if row.get("added_s") is not None:
            parts.append(f"of which {row['added_s']:.3f}s building and adding the work items")
    if "replayed" in row:
        parts.append(f"{row['replayed']:,} replayed, {row['calls_made']} call(s)")
    if "records" in row:
        parts.append(f"{row['records']:,} records committed")
    if "commit_max_lag_s" in row:
        parts.append(
            f"{row['commits']:,.0f} commits, commit lag <= {row['commit_max_lag_s'] * 1000:.0f} ms"
        )
    total = row.get("results", row["items"])
    if row["failed"] or row["succeeded"] != total:
        parts.append(f"{row['succeeded']}/{total} succeeded")
    return ", ".join(parts)


def table_lines(rows: list[dict[str, Any]], markdown: bool) -> list[str]:
    header = [
        "scenario",
        "implementation",
        "items",
        "items/s",
        "µs/item",
        "× baseline",
        "CPU × baseline",
        "peak RSS MiB",
        "bytes/item",
        "notes",
    ]
    body = []
    for row in rows:
        bytes_text = _fmt(row["bytes_per_item"], ",.0f")
        if row["bytes_how"] == "RSS" and row["bytes_per_item"] is not None:
            bytes_text += " (RSS)"
        body.append(
            [
                row["scenario"],
                row["impl"] if not markdown else IMPL_LABELS[row["impl"]],
                f"{row['items']:,}",
                _fmt(row["items_per_s"], ",.0f"),
                _fmt(row["us_per_item"], ".2f"),
                _fmt(row["ratio"], ".2f"),
                _fmt(row["cpu_ratio"], ".2f"),
                _fmt(row["peak_rss_mib"], ",.0f"),
                bytes_text,
                notes_for(row),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return lines
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    previous = None
    for cells in body:
        if previous is not None and cells[0] != previous:
            lines.append("")
        previous = cells[0]
        lines.append(fmt.format(*cells))
    return lines


def check_targets(rows: list[dict[str, Any]], quick: bool) -> list[tuple[str, bool | None, str]]:
    """The issue's targets, evaluated on this run's medians: (target, held?, figures)."""
    by = {(r["scenario"], r["impl"]): r for r in rows}
    out: list[tuple[str, bool | None, str]] = []

    def get(scenario: str, impl: str) -> dict[str, Any] | None:
        return by.get((scenario, impl))

    ours, pub = get("overhead", "ours"), get("overhead", "published")
    if ours and ours["ratio"] is not None:
        out.append(
            (
                "overhead: per-item wall time <= 0.5x baseline",
                ours["ratio"] <= 0.5,
                f"{ours['ratio']:.2f}x (CPU {ours['cpu_ratio']:.2f}x)",
            )
        )
    if ours and pub:
        speedup = pub["us_per_item"] / ours["us_per_item"]
        out.append(("overhead: >= 6x faster than 0.6.0", speedup >= 6, f"{speedup:.1f}x"))
    sync, sync_pub = get("overhead-sync", "ours"), get("overhead-sync", "published")
    if sync and sync["ratio"] is not None:
        out.append(
            (
                "overhead-sync (call never yields): per-item wall time <= 0.5x baseline",
                sync["ratio"] <= 0.5,
                f"{sync['ratio']:.2f}x (CPU {sync['cpu_ratio']:.2f}x)",
            )
        )
    if sync and sync_pub:
        speedup = sync_pub["us_per_item"] / sync["us_per_item"]
        out.append(("overhead-sync: >= 6x faster than 0.6.0", speedup >= 6, f"{speedup:.1f}x"))
    hooks = get("hooks", "ours")
    if hooks and hooks["ratio"] is not None:
        out.append(
            (
                "hooks (observer + post-processor + progress): <= 1.0x baseline",
                hooks["ratio"] <= 1.0,
                f"{hooks['ratio']:.2f}x (CPU {hooks['cpu_ratio']:.2f}x)",
            )
        )
    latency = get("latency", "ours")
    if latency and "efficiency_ratio" in latency:
        base_efficiency = latency["efficiency"] / latency["efficiency_ratio"]
        out.append(
            (
                f"latency: efficiency >= the baseline's and >= {LATENCY_EFFICIENCY}",
                latency["efficiency"] >= base_efficiency
                and latency["efficiency"] >= LATENCY_EFFICIENCY,
                f"{latency['efficiency']:.2f} vs baseline {base_efficiency:.2f} "
                f"= {latency['efficiency_ratio']:.2f}x",
            )
        )
    scale, scale_base = get("scale-100k", "ours"), get("scale-100k", "baseline")
    if scale and scale_base:
        speed = scale["items_per_s"] / scale_base["items_per_s"]
        out.append(("scale 100k: >= 2x baseline items/s", speed >= 2, f"{speed:.2f}x"))
    if scale and scale["bytes_per_item"] is not None:
        out.append(
            (
                "scale 100k: retained memory <= 600 bytes/item (results kept)",
                scale["bytes_per_item"] <= 600,
                f"{scale['bytes_per_item']:.0f} B/item ({scale['bytes_how']})",
            )
        )
    big = get("scale-1m", "ours")
    if big:
        out.append(
            (
                "scale 1M: completes, peak RSS < 1 GiB",
                big["succeeded"] == big["items"] and big["peak_rss_mib"] < 1024,
                f"{big['succeeded']:,}/{big['items']:,} succeeded, "
                f"peak RSS {big['peak_rss_mib']:.0f} MiB",
            )
        )
    retries = get("retries", "ours")
    if retries and retries["ratio"] is not None:
        out.append(
            (
                "retries: <= 1.0x baseline wall time, every item succeeded",
                retries["ratio"] <= 1.0 and retries["succeeded"] == retries["items"],
                f"{retries['ratio']:.2f}x, {retries['succeeded']:,}/{retries['items']:,}",
            )
        )
    storm = get("storm", "ours")
    if storm and "wall_vs_ideal" in storm:
        out.append(
            (
                "storm: wall <= 1.1x ideal, no item lost",
                storm["wall_vs_ideal"] <= 1.1 and storm["succeeded"] == storm["items"],
                f"{storm['wall_s']:.2f}s = {storm['wall_vs_ideal']:.3f}x ideal "
                f"({storm['ideal_s']:.0f}s), {storm['succeeded']:,}/{storm['items']:,}, "
                f"{storm.get('http_429', 0):.0f} x 429",
            )
        )
    out += durable_targets(get)
    out += quota_targets(get)
    if quick:
        out = [(name, None, figures + " (quick run: sizes differ)") for name, _, figures in out]
    return out


LATENCY_EFFICIENCY = 0.85
QUOTA_OVERHEAD_RATIO = 0.75
QUOTA_DECLARED_IDEAL = 1.05
QUOTA_LEARNED_IDEAL = 1.15
QUOTA_LEARNED_429 = 3


def quota_targets(
    get: Callable[[str, str], dict[str, Any] | None],
) -> list[tuple[str, bool | None, str]]:
    """The targets of quota admission (BEYOND.md N2, issue #9)."""
    out: list[tuple[str, bool | None, str]] = []
    overhead = get("quota-overhead", "ours")
    if overhead and overhead["ratio"] is not None:
        out.append(
            (
                "quota: admission on, limits never bind: per-item wall time "
                f"<= {QUOTA_OVERHEAD_RATIO}x baseline",
                overhead["ratio"] <= QUOTA_OVERHEAD_RATIO
                and overhead["succeeded"] == overhead["items"],
                f"{overhead['ratio']:.3f}x (CPU {overhead['cpu_ratio']:.3f}x), "
                f"{overhead['us_per_item']:.2f} µs/item",
            )
        )
    for impl, ratio, most in (
        ("declared", QUOTA_DECLARED_IDEAL, 0),
        ("learned", QUOTA_LEARNED_IDEAL, QUOTA_LEARNED_429),
        ("unlimited", None, None),
    ):
        row = get("quota-tpm", impl)
        if row is None or "wall_vs_ideal" not in row:
            continue
        figures = (
            f"{row['wall_s']:.2f}s = {row['wall_vs_ideal']:.3f}x ideal ({row['ideal_s']:.2f}s), "
            f"{row['http_429']:.0f} x 429, {row['succeeded']:,}/{row['items']:,} succeeded"
        )
        if ratio is None:
            out.append(
                ("quota TPM: no token limit (0.6.0 behaviour), for comparison", None, figures)
            )
            continue
        limit = "zero 429s" if most == 0 else f"<= {most} 429s"
        out.append(
            (
                f"quota TPM, {impl} limits: wall <= {ratio}x ideal, {limit}",
                row["wall_vs_ideal"] <= ratio
                and row["http_429"] <= most
                and row["succeeded"] == row["items"],
                figures,
            )
        )
    return out


STREAM_RSS_RATIO = 1.15
STREAM_RSS_MIB = 200
RESUME_FIRST_CALL_S = 2.0

STORE_COMMIT_INTERVAL = 0.05
"""``SqliteArtifactStore``'s default ``commit_interval``, which the benchmark uses."""

DURABLE_TARGET_PREFIXES = ("journal", "stream", "resume", "overhead: per-item")
"""Targets shown in the durable/streaming section (the plain overhead one is re-checked there)."""


def durable_targets(
    get: Callable[[str, str], dict[str, Any] | None],
) -> list[tuple[str, bool | None, str]]:
    """The targets of the artifact store and of streaming (BEYOND.md N1)."""
    out: list[tuple[str, bool | None, str]] = []
    store = get("overhead", "ours-store")
    if store and store["ratio"] is not None:
        committed = store.get("records") == store["items"]
        out.append(
            (
                "journal: overhead with a SqliteArtifactStore <= 1.0x baseline, all committed",
                store["ratio"] <= 1.0 and committed,
                f"{store['ratio']:.2f}x (CPU {store['cpu_ratio']:.2f}x), "
                f"{store['us_per_item']:.2f} µs/item, "
                f"{store.get('records', 0):,}/{store['items']:,} records",
            )
        )
    if store and store.get("commit_max_lag_s") is not None:
        lag = store["commit_max_lag_s"]
        out.append(
            (
                "journal: commit lag with the loop saturated <= 2 commit intervals (100 ms)",
                lag <= 2 * STORE_COMMIT_INTERVAL,
                f"longest {lag * 1000:.1f} ms over every repeat, "
                f"{store['commits']:,.0f} commits per run (median)",
            )
        )
    small, big = get("stream-100k", "ours"), get("stream-1m", "ours")
    if small and big:
        ratio = big["peak_rss_median_mib"] / small["peak_rss_median_mib"]
        out.append(
            (
                f"stream: peak RSS over 1M items <= {STREAM_RSS_RATIO}x that over 100k",
                ratio <= STREAM_RSS_RATIO and big["succeeded"] == big["results"],
                f"{big['peak_rss_median_mib']:.1f} / {small['peak_rss_median_mib']:.1f} MiB "
                f"= {ratio:.3f}x (medians)",
            )
        )
    if big:
        out.append(
            (
                f"stream: peak RSS over 1M items <= {STREAM_RSS_MIB} MiB",
                big["peak_rss_mib"] <= STREAM_RSS_MIB,
                f"{big['peak_rss_mib']:.1f} MiB (max of {big['repeats']}), "
                f"{big['succeeded']:,}/{big['results']:,} succeeded",
            )
        )
    for name, how in (("resume-stream", "process_stream"), ("resume-batch", "process_all")):
        row = get(name, "ours")
        if row is None or "replayed" not in row:
            continue
        first = row.get("first_call_s")
        added = row.get("added_s")
        # process_all() needs every item built and added first, with or without a store: that
        # part is the caller's batch, not the resume, so it is shown beside the resume's cost.
        own = None if first is None else first - (added or 0.0)
        exact = row["replayed"] == row["items"] and row["calls_made"] == 1
        out.append(
            (
                f"resume ({how}): first new call <= {RESUME_FIRST_CALL_S:.0f} s after opening "
                f"a store of {row['items']:,} records"
                + ("" if added is None else " (not counting building and adding the items)"),
                own is not None and own <= RESUME_FIRST_CALL_S and exact,
                "no new call"
                if first is None or own is None
                else (
                    f"{first:.3f} s (median; max {row['first_call_max_s']:.3f} s)"
                    if added is None
                    else f"{own:.3f} s; plus {added:.3f} s building the {row['items'] + 1:,} "
                    "LLMWorkItems and add_work() before process_all(), which a run without a "
                    f"store pays too ({first:.3f} s in all, median)"
                )
                + f"; {row['replayed']:,} replayed, {row['calls_made']} call(s)",
            )
        )
        out.append(
            (
                f"resume ({how}): whole resumed run, replay throughput (informational)",
                None,
                f"{row['wall_s']:.2f} s, {row['items_per_s']:,.0f} items/s",
            )
        )
    return out


def draw_chart(rows: list[dict[str, Any]], info: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("!! matplotlib is not installed: no chart")
        return False
    rows = [r for r in rows if r["scenario"] in CLASSIC]
    scenarios = [s for s in CLASSIC if any(r["scenario"] == s for r in rows)]
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    colors = {
        "baseline": "#888888",
        "pool": "#bbbbbb",
        "ours": "#1f77b4",
        "ours-store": "#17becf",
        "published": "#d62728",
    }
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.9 * len(scenarios) + 2.2))
    height = 0.8 / len(impls)
    for ax, key, title in (
        (axes[0], "items_per_s", "items/s (higher is better, log scale)"),
        (axes[1], "us_per_item", "µs per item, wall (lower is better, log scale)"),
    ):
        for k, impl in enumerate(impls):
            ys, xs = [], []
            for j, scenario in enumerate(scenarios):
                row = next(
                    (r for r in rows if r["scenario"] == scenario and r["impl"] == impl), None
                )
                if row and row[key]:
                    ys.append(j + (k - (len(impls) - 1) / 2) * height)
                    xs.append(row[key])
            ax.barh(ys, xs, height=height, color=colors[impl], label=IMPL_LABELS[impl])
        ax.set_yticks(range(len(scenarios)))
        ax.set_yticklabels(scenarios)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(impls), fontsize=8, frameon=False)
    fig.suptitle(
        f"async-batch-llm benchmarks, {info['date']}: {info['cores']} cores, {info['cpu']}, "
        f"Python {info['python']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _replace_block(text: str, start: str, end: str, lines: list[str], before: str) -> str:
    """Put ``lines`` between the markers; without them, insert the block before ``before``
    (a heading of the doc) or append it."""
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    if before in text:
        head, tail = text.split(before, 1)
        return head + block + "\n\n" + before + tail
    return text.rstrip() + "\n\n" + block + "\n"


def _machine_line(info: dict[str, Any], how: str) -> str:
    return (
        f"Recorded {info['date']} by {how} on "
        f"{info['cores']} cores of an {info['cpu']}, {info['memory_gib']} GiB RAM, "
        f"{info['os']}, Python {info['python']}; load average {info['loadavg_start']:.1f} at "
        f"the start and {info['loadavg_end']:.1f} at the end of the run (the machine was shared, "
        "so absolute times are noisy; the ratios compare runs made side by side)."
    )


def _target_lines(targets: list[tuple[str, bool | None, str]]) -> list[str]:
    lines = ["| target | held | measured |", "|---|---|---|"]
    for name, held, figures in targets:
        mark = "–" if held is None else ("yes" if held else "**no**")
        lines.append(f"| {name} | {mark} | {figures} |")
    return lines


def is_durable_target(name: str) -> bool:
    return name.startswith(DURABLE_TARGET_PREFIXES)


def is_quota_target(name: str) -> bool:
    return name.startswith("quota")


def has_quota(rows: list[dict[str, Any]]) -> bool:
    return any(r["scenario"] in QUOTA_SCENARIOS for r in rows)


def has_durable(rows: list[dict[str, Any]]) -> bool:
    return any(r["impl"] == "ours-store" or r["scenario"] in OURS_ONLY for r in rows)


def covers_classic(rows: list[dict[str, Any]]) -> bool:
    return all(any(r["scenario"] == name for r in rows) for name in CLASSIC)


def record_docs(
    rows: list[dict[str, Any]],
    targets: list[tuple[str, bool | None, str]],
    info: dict[str, Any],
    command: str,
) -> list[str]:
    """Rewrite the sections of ``docs/benchmarks.md`` this run measured; return their names.

    The main results (and the chart) are rewritten only by a run of every classic scenario, the
    durable/streaming section only by a run that measured it: a partial run leaves the other
    section's recorded figures alone.
    """
    text = DOC.read_text() if DOC.exists() else ""
    written = []
    if covers_classic(rows):
        classic_rows = [r for r in rows if r["scenario"] in CLASSIC]
        lines = [
            "",
            _machine_line(info, "`make bench` (`benchmarks/run_all.py --record`)"),
            "",
            *table_lines(classic_rows, markdown=True),
            "",
            "Targets of issue #4, evaluated on this run:",
            "",
            *_target_lines(
                [
                    t
                    for t in targets
                    if (not is_durable_target(t[0]) or t[0].startswith("overhead"))
                    and not is_quota_target(t[0])
                ]
            ),
            "",
            "![items/s and µs/item per implementation](benchmarks.png)",
            "",
        ]
        text = _replace_block(text, DOC_START, DOC_END, lines, "## Where the per-item time goes")
        written.append("results")
    if has_durable(rows):
        durable_rows = [
            r
            for r in rows
            if r["scenario"] in OURS_ONLY
            or (
                r["scenario"] in STORE_SCENARIOS and r["impl"] in ("baseline", "ours", "ours-store")
            )
        ]
        lines = [
            "",
            _machine_line(info, f"`{command}`"),
            "",
            *table_lines(durable_rows, markdown=True),
            "",
            "Targets of BEYOND.md N1, evaluated on this run:",
            "",
            *_target_lines([t for t in targets if is_durable_target(t[0])]),
            "",
        ]
        text = _replace_block(
            text, DURABLE_START, DURABLE_END, lines, "## Where the per-item time goes"
        )
        written.append("durable/streaming")
    if has_quota(rows):
        quota_rows = [r for r in rows if r["scenario"] in QUOTA_SCENARIOS]
        lines = [
            "",
            _machine_line(info, f"`{command}`"),
            "",
            *table_lines(quota_rows, markdown=True),
            "",
            "Targets of BEYOND.md N2 (issue #9), evaluated on this run:",
            "",
            *_target_lines([t for t in targets if is_quota_target(t[0])]),
            "",
        ]
        text = _replace_block(
            text, QUOTA_START, QUOTA_END, lines, "## Where the per-item time goes"
        )
        written.append("quota")
    if written:
        DOC.write_text(text)
    return written


# ------------------------------------------------------------------------------- main


def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(ORDER)
    chosen = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name in ALIASES:
                chosen += ALIASES[name]
            elif name in SCENARIOS:
                chosen.append(name)
            elif name:
                raise SystemExit(
                    f"unknown scenario {name!r}; choose from "
                    f"{', '.join([*ORDER, *ALIASES, 'guardrails'])}"
                )
    return [s for s in ORDER if s in chosen]


def run_guardrails(record: bool) -> int:
    """``guardrails_bench.py`` in a fresh interpreter; its exit status (1: a target failed)."""
    print("-- guardrails: budgets, batch timeout, fail-fast (issue #10)", flush=True)
    command = [sys.executable, str(GUARDRAILS_PY), *(["--record"] if record else [])]
    return subprocess.run(command, check=False).returncode


def impls_for(name: str, impls: dict[str, Path]) -> dict[str, Path]:
    """The implementations that run scenario ``name``."""
    if name in OURS_ONLY:
        return {"ours": impls["ours"]}
    if name == "quota-tpm":
        return dict.fromkeys(QUOTA_IMPLS, impls["ours"])
    return {
        impl: python
        for impl, python in impls.items()
        if (impl != "ours-store" or name in STORE_SCENARIOS)
        and (impl != "published" or name not in QUOTA_SCENARIOS)
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat, no 1M")
    parser.add_argument(
        "--only",
        action="extend",
        nargs="+",
        metavar="SCENARIO",
        help=(
            "scenarios (space or comma separated) among: "
            f"{', '.join([*ORDER, *ALIASES, 'guardrails'])}"
        ),
    )
    parser.add_argument("--skip-published", action="store_true", help=f"skip {PUBLISHED_VERSION}")
    parser.add_argument("--skip-pool", action="store_true", help="skip the bare worker pool")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument(
        "--record",
        action="store_true",
        help="rewrite the sections of docs/benchmarks.md (and the .png) this run measured",
    )
    parser.add_argument(
        "--from-json", metavar="PATH", help="run nothing: report (and --record) a saved run"
    )
    args = parser.parse_args()

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        targets = [(name, held, figures) for name, held, figures in saved["targets"]]
        print("\n".join(table_lines(saved["rows"], markdown=False)))
        if args.record:
            if covers_classic(saved["rows"]) and draw_chart(saved["rows"], saved["machine"], CHART):
                print(f"chart: {CHART.relative_to(ROOT)}")
            command = saved.get("command", "benchmarks/run_all.py")
            written = record_docs(saved["rows"], targets, saved["machine"], command)
            print(f"recorded into {DOC.relative_to(ROOT)}: {', '.join(written) or 'nothing'}")
        return 0

    names = [n.strip() for value in args.only or [] for n in value.split(",") if n.strip()]
    guardrails = not names or "guardrails" in names
    others = [n for n in names if n != "guardrails"]
    if names and not others:
        return run_guardrails(args.record)
    scenarios = parse_only(others)
    if args.quick and not args.only:
        scenarios = [s for s in scenarios if s != "scale-1m"]
    impls: dict[str, Path] = {
        "baseline": Path(sys.executable),
        "pool": Path(sys.executable),
        "ours": Path(sys.executable),
        "ours-store": Path(sys.executable),
    }
    if args.skip_pool:
        del impls["pool"]
    if not args.skip_published and not all(
        name in OURS_ONLY or name in QUOTA_SCENARIOS for name in scenarios
    ):
        python = published_python()
        if python is not None:
            impls["published"] = python

    info = machine()
    print(
        f"== {info['date']}: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        f"load {info['loadavg_start']:.1f}; implementations: {', '.join(impls)}"
    )
    results: dict[str, dict[str, Cell]] = {}
    for name in scenarios:
        repeats = args.repeats or (1 if args.quick else DEFAULT_REPEATS.get(name, 5))
        items = QUICK_ITEMS.get(name) if args.quick else None
        print(f"-- {name}: {SCENARIOS[name].description} ({repeats} repeat(s))", flush=True)
        results[name] = run_scenario(
            name, impls_for(name, impls), repeats, items, memory=not args.no_memory
        )
    info["loadavg_end"] = os.getloadavg()[0]

    rows = summarize(results)
    print()
    print("\n".join(table_lines(rows, markdown=False)))
    targets = check_targets(rows, args.quick)
    if targets:
        print("\ntargets (issue #4; BEYOND.md N1, N2):")
        for name, held, figures in targets:
            mark = "  --  " if held is None else (" PASS ✔" if held else " FAIL ✘")
            print(f"  [{mark}] {name}: {figures}")

    RESULTS_DIR.mkdir(exist_ok=True)
    command = " ".join([".venv/bin/python benchmarks/run_all.py", *sys.argv[1:]])
    payload = {
        "command": command,
        "machine": info,
        "rows": rows,
        "targets": targets,
        "runs": {
            name: {impl: {"runs": c.runs, "memory": c.memory} for impl, c in cells.items()}
            for name, cells in results.items()
        },
    }
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for path in (RESULTS_DIR / f"run-{stamp}.json", RESULTS_DIR / "latest.json"):
        path.write_text(json.dumps(payload, indent=1))
    print(f"\nraw results: {(RESULTS_DIR / 'latest.json').relative_to(ROOT)}")
    if args.record:
        if covers_classic(rows) and draw_chart(rows, info, CHART):
            print(f"chart: {CHART.relative_to(ROOT)}")
        written = record_docs(rows, targets, info, command)
        print(f"recorded into {DOC.relative_to(ROOT)}: {', '.join(written) or 'nothing'}")
    if guardrails:
        run_guardrails(args.record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
