"""Synchronous rounds against buffered asynchronous aggregation on scenarios/stragglers.yaml:
accuracy (mean over the evaluated participants' test splits) against simulated time. Both run
in this process (LocalExecutor: the same results as on Ray). Sync: 10 asked per round, those
past the deadline dropped. Async (server.mode: async): 10 training at once, aggregate every 5
arrivals (so two aggregations use as many updates as one full round), staleness above
server.max_staleness dropped, polynomial staleness weight.

    python bench/async_vs_sync.py [--rounds 12]

Prints one row per evaluation of each mode, then the accuracy each reached by the simulated
time the synchronous run ended. Last line: sync_accuracy=<..> async_accuracy=<..> at_sim_s=<..>.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedgrow_ray.config import load_scenario  # noqa: E402
from fedgrow_ray.experiment import Experiment, prepare_scenario_data  # noqa: E402
from fedgrow_ray.rounds import LocalExecutor, run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ASYNC = ["server.mode=async", "deadline_s=null", "sampling.count=null"]


def run(overrides: list[str], cache: str) -> list[dict]:
    scenario = load_scenario(ROOT / "scenarios" / "stragglers.yaml", overrides)
    data = prepare_scenario_data(scenario, cache)
    rows = []
    run_experiment(Experiment(scenario, data), LocalExecutor(scenario, str(data)), rows.append, lambda m: None)
    return rows


def accuracy_at(rows: list[dict], sim_s: float) -> float | None:
    """The last evaluated accuracy at or before `sim_s` on the simulated clock."""
    seen = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r and r["sim_clock_s"] <= sim_s + 1e-9]
    return seen[-1] if seen else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="synchronous rounds; async runs twice as many aggregations")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="fedgrow-async-")
    modes = {"sync": run([f"rounds={args.rounds}"], cache),
             "async": run([f"rounds={2 * args.rounds}", *ASYNC], cache)}
    print(f"{'mode':>5} {'round':>5} {'sim clock s':>11} {'accuracy':>8} {'used':>4} {'dropped':>7}")
    for mode, rows in modes.items():
        for r in rows:
            dropped = r.get("dropped_deadline", r.get("dropped_stale"))
            print(f"{mode:>5} {r['round']:>5} {r['sim_clock_s']:>11.1f} {r.get('eval_accuracy', float('nan')):>8.3f} "
                  f"{r['aggregated']:>4} {dropped:>7}")
    end = modes["sync"][-1]["sim_clock_s"]
    sync, async_ = accuracy_at(modes["sync"], end), accuracy_at(modes["async"], end)
    print(f"async reached {modes['async'][-1]['sim_clock_s']:.1f} s for {2 * args.rounds} aggregations; "
          f"sync {end:.1f} s for {args.rounds} rounds")
    print(f"sync_accuracy={sync:.3f} async_accuracy={async_ if async_ is None else round(async_, 3)} at_sim_s={end:.1f}")


if __name__ == "__main__":
    main()
