"""Profile one benchmark scenario of this repository's processor with cProfile.

Not a test. Prints the functions with the most own time, per item, so the remaining per-item
cost of the framework can be read off directly::

    .venv/bin/python benchmarks/profile_processor.py                 # overhead scenario
    .venv/bin/python benchmarks/profile_processor.py --scenario hooks --top 30
    .venv/bin/python benchmarks/profile_processor.py --impl ours-store   # with the journal

With ``--impl ours-store`` only the event-loop thread is profiled: the artifact writer's thread
(row encoding, SQLite) is not, though it competes for the interpreter lock.

cProfile adds roughly a constant cost to every Python-level call, so the absolute figures are
inflated (about 2-3x); the shares between functions are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="overhead", choices=sorted(scenarios.SCENARIOS))
    parser.add_argument("--items", type=int, default=None, help="override the item count")
    parser.add_argument("--impl", default="ours", choices=["ours", "ours-store"])
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument("--output", default=None, help="also save the raw profile here")
    args = parser.parse_args()

    # Import costs stay out of the profile.
    import async_batch_llm.artifacts  # noqa: F401

    scenario = scenarios.SCENARIOS[args.scenario]
    if args.items is not None:
        scenario = scenarios.Scenario(**{**scenario.__dict__, "items": args.items})
    prompts = scenarios.make_prompts(scenario)
    # One unprofiled warm-up run, so one-time costs (first use of code paths) stay out.
    asyncio.run(scenarios._timed(scenario, args.impl, prompts[: scenario.workers * 2]))

    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(scenarios._timed(scenario, args.impl, prompts))
    profiler.disable()
    if args.output:
        profiler.dump_stats(args.output)

    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]  # present on every pstats.Stats
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tottime, ncalls, cumtime, f"{Path(filename).name}:{line}({name})"))
    rows.sort(reverse=True)
    n = scenario.items
    print(f"scenario {scenario.name} ({args.impl}): {n} items, profiled total {total:.3f}s")
    print(f"{'own us/item':>11} {'share':>6} {'calls/item':>10} {'cum us/item':>11}  function")
    for tottime, ncalls, cumtime, where in rows[: args.top]:
        print(
            f"{tottime / n * 1e6:11.3f} {tottime / total:6.1%} {ncalls / n:10.2f} "
            f"{cumtime / n * 1e6:11.3f}  {where}"
        )


if __name__ == "__main__":
    main()
