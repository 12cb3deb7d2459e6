"""Run every benchmark scenario against every implementation and print the table with ratios.

Not a test. ``make bench`` runs this file. Each measurement is a fresh interpreter running
``scenarios.py`` (so peak RSS belongs to one scenario), and the implementations of a scenario
are run interleaved, repeat after repeat, so they share the machine's current noise: read the
ratios to the plain-asyncio baseline, not the absolute times.

    .venv/bin/python benchmarks/run_all.py                      # everything (about 5-8 minutes)
    .venv/bin/python benchmarks/run_all.py --quick              # small sizes, one repeat
    .venv/bin/python benchmarks/run_all.py --only overhead,hooks --repeats 9
    .venv/bin/python benchmarks/run_all.py --skip-published     # no throwaway venv for 0.6.0
    .venv/bin/python benchmarks/run_all.py --record             # also rewrite docs/benchmarks.*

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS_PY = HERE / "scenarios.py"
PUBLISHED_VENV = HERE / ".venv-published"
PUBLISHED_VERSION = "0.6.0"
RESULTS_DIR = HERE / "results"
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
DOC_START = "<!-- bench-results:start -->"
DOC_END = "<!-- bench-results:end -->"

sys.path.insert(0, str(HERE))
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
]
IMPLS = ["baseline", "pool", "ours", "published"]
IMPL_LABELS = {
    "baseline": "plain asyncio (semaphore + gather)",
    "pool": "bare worker pool (floor)",
    "ours": "async-batch-llm (this repo)",
    "published": f"async-batch-llm {PUBLISHED_VERSION} (PyPI)",
}
DEFAULT_REPEATS = {"scale-100k": 3, "scale-1m": 1, "storm": 1}
QUICK_ITEMS = {
    "overhead": 5_000,
    "overhead-sync": 5_000,
    "hooks": 5_000,
    "latency": 2_000,
    "scale-100k": 20_000,
    "retries": 2_000,
    "storm": 400,
}
# Retained bytes per item come from a separate tracemalloc run; too slow for these two, which
# report the RSS growth per item instead.
NO_TRACEMALLOC = {"scale-1m", "storm"}


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
                print(
                    f"   {name:<10} {impl:<9} #{rep + 1}: {record['us_per_item']:8.2f} us/item "
                    f"(cpu {record['cpu_s'] / record['items'] * 1e6:6.2f})  "
                    f"[{time.perf_counter() - started:5.1f}s]",
                    flush=True,
                )
    if memory and name not in NO_TRACEMALLOC:
        for impl in order:
            record = run_one(impls[impl], name, impl, items, memory=True)
            if record is not None:
                cells[impl].memory = record
                print(f"   {name:<10} {impl:<9} retained: {record['bytes_per_item']:7.0f} B/item")
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
    if row["failed"] or row["succeeded"] != row["items"]:
        parts.append(f"{row['succeeded']}/{row['items']} succeeded")
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
        out.append(
            (
                "latency: efficiency >= 1.2x baseline's",
                latency["efficiency_ratio"] >= 1.2,
                f"{latency['efficiency']:.2f} vs baseline "
                f"{latency['efficiency'] / latency['efficiency_ratio']:.2f} "
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
    if quick:
        out = [(name, None, figures + " (quick run: sizes differ)") for name, _, figures in out]
    return out


def draw_chart(rows: list[dict[str, Any]], info: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("!! matplotlib is not installed: no chart")
        return False
    scenarios = [s for s in ORDER if any(r["scenario"] == s for r in rows)]
    impls = [i for i in IMPLS if any(r["impl"] == i for r in rows)]
    colors = {"baseline": "#888888", "pool": "#bbbbbb", "ours": "#1f77b4", "published": "#d62728"}
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


def record_docs(
    rows: list[dict[str, Any]], targets: list[tuple[str, bool | None, str]], info: dict[str, Any]
) -> None:
    lines = [
        DOC_START,
        "",
        f"Recorded {info['date']} by `make bench` (`benchmarks/run_all.py --record`) on "
        f"{info['cores']} cores of an {info['cpu']}, {info['memory_gib']} GiB RAM, "
        f"{info['os']}, Python {info['python']}; load average {info['loadavg_start']:.1f} at "
        f"the start and {info['loadavg_end']:.1f} at the end of the run (the machine was shared, "
        "so absolute times are noisy; the ratios compare runs made side by side).",
        "",
        *table_lines(rows, markdown=True),
        "",
        "Targets of issue #4, evaluated on this run:",
        "",
        "| target | held | measured |",
        "|---|---|---|",
    ]
    for name, held, figures in targets:
        mark = "–" if held is None else ("yes" if held else "**no**")
        lines.append(f"| {name} | {mark} | {figures} |")
    lines += ["", "![items/s and µs/item per implementation](benchmarks.png)", "", DOC_END]
    text = DOC.read_text() if DOC.exists() else ""
    if DOC_START in text and DOC_END in text:
        head, rest = text.split(DOC_START, 1)
        _, tail = rest.split(DOC_END, 1)
        text = head + "\n".join(lines) + tail
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    DOC.write_text(text)


# ------------------------------------------------------------------------------- main


def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(ORDER)
    chosen = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in SCENARIOS:
                raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(ORDER)}")
            chosen.append(name)
    return [s for s in ORDER if s in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat, no 1M")
    parser.add_argument(
        "--only", action="append", metavar="SCENARIO", help=f"comma list of: {', '.join(ORDER)}"
    )
    parser.add_argument("--skip-published", action="store_true", help=f"skip {PUBLISHED_VERSION}")
    parser.add_argument("--skip-pool", action="store_true", help="skip the bare worker pool")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument(
        "--record", action="store_true", help="rewrite the results in docs/benchmarks.md and .png"
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
            draw_chart(saved["rows"], saved["machine"], CHART)
            record_docs(saved["rows"], targets, saved["machine"])
            print(f"recorded into {DOC.relative_to(ROOT)} and {CHART.relative_to(ROOT)}")
        return 0

    scenarios = parse_only(args.only)
    if args.quick and not args.only:
        scenarios = [s for s in scenarios if s != "scale-1m"]
    impls: dict[str, Path] = {
        "baseline": Path(sys.executable),
        "pool": Path(sys.executable),
        "ours": Path(sys.executable),
    }
    if args.skip_pool:
        del impls["pool"]
    if not args.skip_published:
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
        results[name] = run_scenario(name, impls, repeats, items, memory=not args.no_memory)
    info["loadavg_end"] = os.getloadavg()[0]

    rows = summarize(results)
    print()
    print("\n".join(table_lines(rows, markdown=False)))
    targets = check_targets(rows, args.quick)
    if targets:
        print("\ntargets (issue #4):")
        for name, held, figures in targets:
            mark = "  --  " if held is None else (" PASS " if held else " FAIL ")
            print(f"  [{mark}] {name}: {figures}")

    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {
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
        if draw_chart(rows, info, CHART):
            print(f"chart: {CHART.relative_to(ROOT)}")
        record_docs(rows, targets, info)
        print(f"table: {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
