"""The authors' workload: their full ViT ladder at 224 px (bench/authors_ladder.yaml), 4 and 8
participants, in fp32 and bf16 (training.precision), each run in a fresh process on a fresh
local Ray, as launch.py runs it.

Printed per run: the training round's wall time (the mean over rounds 2.., round 1 also
pre-trains, runs the local stage and, with the reference-code protocol, averages the
intermediate model), the peak memory of every process Ray started (PSS, shared pages split
between the processes that share them, sampled every second; bench/overhead.py), and the bytes
each participant uploads per round (rounds 2..: Global-LiGO only).

    python bench/authors_ladder.py [--participants 4 8] [--precisions fp32 bf16] [--rounds 3]
                                   [--set KEY=VALUE ...]

`--set` changes the scenario as launch.py's does (e.g. `training.micro_batch_size=16`: the same
batches and steps, run in slices whose gradients are accumulated).

Last line: round_s=<4 participants, the faster precision> peak_gib=<that run's peak>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HERE = Path(__file__).resolve().parent


def measure(participants: int, precision: str, rounds: int, cache: str, overrides: list[str]) -> dict:
    """One run in this process (the --one mode)."""
    from fedgrow_ray.config import load_scenario
    from fedgrow_ray.experiment import prepare_scenario_data
    from overhead import simulate_on_local_ray

    scenario = load_scenario(HERE / "authors_ladder.yaml", [
        f"participants={participants}", f"data.train_size={128 * participants}",
        f"data.test_size={200 * participants}", f"training.precision={precision}", f"rounds={rounds}", *overrides])
    prepare_scenario_data(scenario, cache)
    folder, peak = simulate_on_local_ray(scenario, cache, Path(cache) / f"run-{participants}-{precision}")
    rows = [r for r in folder.metrics() if r["round"] >= 2]
    return {"participants": participants, "precision": precision,
            "round_s": statistics.mean(r["wall_s"] for r in rows),
            "upload_bytes": statistics.mean(r["bytes_up"] / r["completed"] for r in rows),
            "accuracy": rows[-1]["eval_accuracy"], "peak_gib": peak / 2**30}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a scenario override, as launch.py's --set (repeatable)")
    parser.add_argument("--one", nargs=3, metavar=("PARTICIPANTS", "PRECISION", "CACHE"),
                        help=argparse.SUPPRESS)  # internal: one run, printed as JSON
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 does the setup and is left out)")
    if not args.one:  # a bad --set is one line, before any run starts
        from fedgrow_ray.config import ScenarioError, load_scenario

        try:
            load_scenario(HERE / "authors_ladder.yaml", args.set)
        except ScenarioError as err:
            parser.error(str(err))
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.rounds, args.one[2], args.set)))
        return
    cache = tempfile.mkdtemp(prefix="fedgrow-ladder-")
    print(f"{'participants':>12} {'precision':>9} {'round s':>8} {'peak GiB':>8} {'upload MB/participant/round':>27} "
          f"{'accuracy':>8}", flush=True)
    results = []
    for participants in args.participants:
        for precision in args.precisions:
            run = subprocess.run([sys.executable, __file__, "--rounds", str(args.rounds), "--one",
                                  str(participants), precision, cache] + [a for o in args.set for a in ("--set", o)],
                                 stdout=subprocess.PIPE, text=True, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{participants:>12} {precision:>9} {r['round_s']:>8.1f} {r['peak_gib']:>8.2f} "
                  f"{r['upload_bytes'] / 1e6:>27.2f} {r['accuracy']:>8.3f}", flush=True)
    smallest = min(args.participants)
    best = min((r for r in results if r["participants"] == smallest), key=lambda r: r["round_s"])
    print(f"round_s={best['round_s']:.1f} peak_gib={best['peak_gib']:.2f}")


if __name__ == "__main__":
    main()
