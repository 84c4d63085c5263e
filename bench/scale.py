"""Scale: does the simulator's cost follow the participants it runs, not the participants it
registers? The stress scenario (tiny shapes, stragglers on, hosts keeping at most
hosts.max_resident participants and spilling the rest to disk) with 100, 1,000 and 10,000
registered participants and 100 sampled per round, on a local Ray with the default pool.

Data: each participant draws 40 training rows of a 40,000-row set when first used
(`data.partition: {scheme: sampled}`, a pure function of the seed and its id), so that no size
stores anything per registered participant; up to 10,000 the earlier benchmark used an iid
partition of 40 x registered rows instead.

Pre-training and the Local-LiGO stage are switched off here (they run once per participant, on
its first round, and at 10,000 registered nearly every sampled participant is new), so every
participant-round is the same work: create or reload the participant, then local_steps
Dual-LiGO steps. Time per participant-step is a training round's wall time divided by the
participant-steps it completed, the median over the training rounds (the last round, which
also evaluates, is left out), and the fastest of --repeats runs of each size, each
in a fresh process with a fresh local Ray (two shared cores make single runs noisy). Peak memory
is the PSS of every process Ray started for the run (GCS, raylet, driver and participant
actors), sampled every second.

Start-up is the time from launch (data preparation included) to the start of round 1: when
the first round's row appears, less that round's wall time.

    python bench/scale.py [--registered 100 1000 10000 100000 1000000] [--rounds 6] [--repeats 2]

Last line: flatness=<largest / smallest time per participant-step> peak_gib=<peak memory at
the largest registered count> registered_max=<largest size run> startup_s=<start-up at that size>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedgrow_ray.config import load_scenario  # noqa: E402
from fedgrow_ray.experiment import prepare_scenario_data  # noqa: E402
from overhead import simulate_on_local_ray  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLED = 100


def workload(registered: int, rounds: int) -> dict:
    return load_scenario(ROOT / "scenarios" / "stress.yaml", [
        f"participants={registered}", f"rounds={rounds}", f"sampling.count={SAMPLED}",
        "sampling.fraction=null", "sampling.over_selection=1.0",
        "training.pretrain_steps=0", "training.local_stage_steps=0",
        "data.train_size=40000", "data.partition={scheme: sampled, samples: 40}",
        f"eval.every={rounds}", "eval.participants=20"])


def measure(registered: int, rounds: int, cache: str, repeat: int) -> dict:
    """One run, in this process (the --one mode: every run gets a fresh process and Ray)."""
    scenario = workload(registered, rounds)
    start = time.perf_counter()
    prepare_scenario_data(scenario, cache)
    prepare_s = time.perf_counter() - start
    out = Path(cache) / f"run-{registered}-{repeat}"
    first_row = {}

    def watch():  # when round 1's row is written
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
            time.sleep(0.1)
        first_row["at"] = time.perf_counter()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    folder, peak = simulate_on_local_ray(scenario, cache, out)
    watcher.join()
    startup_s = first_row["at"] - start - folder.metrics()[0]["wall_s"]
    rows = [r for r in folder.metrics() if r["round"] < rounds]
    steps = scenario["training"]["local_steps"]
    return {"registered": registered, "prepare_s": prepare_s,
            "round_s": statistics.mean(r["wall_s"] for r in rows),
            "completed": statistics.mean(r["completed"] for r in rows),
            "step_ms": 1000 * statistics.median(r["wall_s"] / (r["completed"] * steps) for r in rows),
            "spilled": sum(r["spilled"] for r in rows), "reloaded": sum(r["reloaded"] for r in rows),
            "host_rss_mb": max(r["host_rss_mb_max"] for r in rows), "peak_gib": peak / 2**30,
            "startup_s": startup_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registered", type=int, nargs="+", default=[100, 1000, 10000, 100000, 1000000])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per size; the fastest counts (this machine's noise is other tenants)")
    parser.add_argument("--one", nargs=3, metavar=("REGISTERED", "CACHE", "REPEAT"),
                        help=argparse.SUPPRESS)  # internal: one run, printed as JSON
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the last round evaluates and is left out)")
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.rounds, args.one[1], int(args.one[2]))))
        return

    cache = tempfile.mkdtemp(prefix="fedgrow-scale-")
    print(f"{'registered':>10} {'data prep s':>11} {'round s':>8} {'completed':>9} "
          f"{'ms/participant-step':>19} {'spilled':>7} {'reloaded':>8} {'host RSS MiB':>12} "
          f"{'peak GiB':>8} {'start-up s':>10}", flush=True)
    best = {}
    for repeat in range(args.repeats):  # forward, then backward: drift hits every size alike
        for registered in (args.registered if repeat % 2 == 0 else args.registered[::-1]):
            run = subprocess.run([sys.executable, __file__, "--rounds", str(args.rounds), "--one",
                                  str(registered), cache, str(repeat)],
                                 stdout=subprocess.PIPE, text=True, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{r['registered']:>10} {r['prepare_s']:>11.1f} {r['round_s']:>8.2f} {r['completed']:>9.1f} "
                  f"{r['step_ms']:>19.2f} {r['spilled']:>7} {r['reloaded']:>8} {r['host_rss_mb']:>12.0f} "
                  f"{r['peak_gib']:>8.2f} {r['startup_s']:>10.1f}", flush=True)
            kept = best.setdefault(registered, r)
            kept["step_ms"] = min(kept["step_ms"], r["step_ms"])
            kept["peak_gib"] = max(kept["peak_gib"], r["peak_gib"])
            kept["startup_s"] = min(kept["startup_s"], r["startup_s"])
    print("best of repeats (time) and worst (memory):")
    for registered in args.registered:
        print(f"{registered:>10} {best[registered]['step_ms']:>8.2f} ms/participant-step "
              f"{best[registered]['peak_gib']:>6.2f} GiB peak")
    times = [best[n]["step_ms"] for n in args.registered]
    largest = max(args.registered)
    print(f"flatness={max(times) / min(times):.3f} peak_gib={best[largest]['peak_gib']:.2f} "
          f"registered_max={largest} startup_s={best[largest]['startup_s']:.1f}")


if __name__ == "__main__":
    main()
