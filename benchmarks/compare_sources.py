"""Compare copies of the package (before/after a change) on benchmark scenarios.

Not a test. Each variant is a directory holding an ``async_batch_llm`` package; it is put first on
``PYTHONPATH`` of a fresh interpreter running ``scenarios.py --impl ours``. The baseline runs
alongside, every variant interleaved with the others in a rotating order, and the medians are
printed as a Markdown table of µs per item (wall) with the ratio to the baseline::

    .venv/bin/python benchmarks/compare_sources.py \\
        --variant before=/tmp/before --variant after=src \\
        --scenarios overhead,hooks --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(scenario: str, impl: str, source: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if source is not None:
        env["PYTHONPATH"] = str(Path(source).resolve())
    cmd = [sys.executable, str(HERE / "scenarios.py"), "--scenario", scenario, "--impl", impl]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")
    if done.returncode != 0:
        raise SystemExit(f"{scenario}/{impl} ({source}) failed:\n{done.stderr[-2000:]}")
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if source is not None and not record["package"].startswith(str(Path(source).resolve())):
        raise SystemExit(f"{source} was not imported (got {record['package']})")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--scenarios", default="overhead,hooks")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    variants: dict[str, str | None] = {"baseline": None}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        variants[name] = path
    names = list(variants)
    scenarios = args.scenarios.split(",")
    header = "| scenario | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 1)]
    for scenario in scenarios:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for rep in range(args.repeats):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                impl = "baseline" if name == "baseline" else "ours"
                runs[name].append(run(scenario, impl, variants[name]))
        base = statistics.median(r["us_per_item"] for r in runs["baseline"])
        base_cpu = statistics.median(r["cpu_s"] for r in runs["baseline"])
        cells = []
        for name in names:
            us = statistics.median(r["us_per_item"] for r in runs[name])
            cpu = statistics.median(r["cpu_s"] for r in runs[name])
            cells.append(f"{us:.2f} ({us / base:.2f}×, CPU {cpu / base_cpu:.2f}×)")
            print(f"{scenario:<14} {name:<12} {us:8.2f} us/item  {us / base:5.2f}x", flush=True)
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
