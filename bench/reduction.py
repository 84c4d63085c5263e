"""Reduction on the hosts: what the driver receives and how long a round takes, with every
update sent to the driver (hosts.reduce=false) and with one partial sum per host
(hosts.reduce=true, fedgrow_ray.reduction). fedavg_scratch (the whole target model crosses the
wire), 200 participants all sampled, on a local Ray with the default pool; each setting runs
in a fresh local Ray. Round time is the mean wall time of the training rounds (the last round,
which also evaluates, is left out).

    python bench/reduction.py [--participants 200] [--rounds 3]

Last line: driver_in_ratio=<bytes in, per participant / per host> round_ratio=<round time,
per participant / per host>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedgrow_ray.config import resolve_scenario  # noqa: E402
from overhead import ray_hosts, simulate_on_local_ray, workload  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the last round evaluates and is left out)")
    cache = tempfile.mkdtemp(prefix="fedgrow-reduction-")
    figures = {}
    for reduce in (False, True):
        base = workload(args.participants, args.rounds)
        raw = {k: v for k, v in base.items() if k != "sweep"}
        raw["methods"] = ["fedavg_scratch"]
        raw["hosts"] = {**raw["hosts"], "reduce": reduce}
        scenario = resolve_scenario(raw)
        folder, _ = simulate_on_local_ray(scenario, cache, Path(cache) / f"reduce-{reduce}")
        rows = [r for r in folder.metrics() if r["round"] < args.rounds]
        figures[reduce] = {"bytes_in": statistics.mean(r["driver_bytes_in"] for r in rows),
                           "round_s": statistics.mean(r["wall_s"] for r in rows),
                           "bytes_up": statistics.mean(r["bytes_up"] for r in rows),
                           "sha": json.loads((folder.path / "summary.json").read_text())
                           ["methods"]["fedavg_scratch"]["shared_sha256"]}
        f = figures[reduce]
        print(f"hosts.reduce={str(reduce).lower():5} ({ray_hosts(folder)}): driver received "
              f"{f['bytes_in'] / 2**20:8.2f} MiB per round (participants sent {f['bytes_up'] / 2**20:.2f} MiB), "
              f"round {f['round_s']:.2f} s", flush=True)
    print(f"same shared state: {figures[False]['sha'] == figures[True]['sha']}")
    print(f"driver_in_ratio={figures[False]['bytes_in'] / figures[True]['bytes_in']:.1f} "
          f"round_ratio={figures[False]['round_s'] / figures[True]['round_s']:.2f}")


if __name__ == "__main__":
    main()
