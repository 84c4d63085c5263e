"""Simulator overhead: the same Fed-Grow workload run by the Ray simulator (local Ray, default
placement) and by a plain single-process loop over the same library code (LocalExecutor).

Workload: 50 participants, tiny shapes, 5 local steps, 4 rounds, evaluation only in round 4.
Round 1 includes every participant's setup (small-model pre-training, local stage), so the
ratio is taken over the pure training rounds 2 and 3. The plain loop runs twice, with one
torch thread (what each participant actor uses) and with all cores, and the ratio is against
the faster of the two. Peak memory is the proportional set size (PSS, shared pages split
among the processes that map them) of every process Ray started for the run (GCS, raylet,
driver actor, participant actors), sampled every second; this benchmark process, which also
ran the plain loops, is left out.

    python bench/overhead.py [--participants 50] [--rounds 4]

Last line: ratio=<simulator round time / plain-loop round time>.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import launch  # noqa: E402
from fedgrow_ray.config import resolve_scenario  # noqa: E402
from fedgrow_ray.experiment import Experiment, prepare_scenario_data  # noqa: E402
from fedgrow_ray.outputs import RunFolder  # noqa: E402
from fedgrow_ray.rounds import LocalExecutor, run_experiment  # noqa: E402


def workload(participants: int, rounds: int, num_cpus: float = 1.0) -> dict:
    return resolve_scenario({
        "name": "overhead", "seed": 0, "rounds": rounds, "participants": participants,
        "model": {"family": "text", "vocab_size": 500, "max_positions": 32, "dropout": 0.0,
                  "small_shapes": [{"width": 32, "layers": 1, "heads": 2, "ffn": 64},
                                   {"width": 48, "layers": 2, "heads": 4, "ffn": 96}],
                  "intermediate": {"width": 48, "layers": 2, "heads": 4, "ffn": 96},
                  "target": {"width": 64, "layers": 3, "heads": 4, "ffn": 128}},
        "training": {"batch_size": 16, "local_steps": 5, "pretrain_steps": 10, "local_stage_steps": 5},
        "data": {"source": "synthetic_text", "train_size": 4000, "test_size": 500,
                 "test_per_participant": 20, "partition": {"scheme": "iid"}},
        "eval": {"every": rounds, "participants": 10},
        "hosts": {"num_cpus": num_cpus},
    })


class PeakMemory(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self):
        me = psutil.Process()
        while not self.stop.wait(1.0):
            total = 0
            for proc in me.children(recursive=True):
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)


def simulate_on_local_ray(scenario: dict, cache: str, out: Path) -> tuple[RunFolder, int]:
    """Run a scenario on a new local Ray, as launch.py does; returns the run folder and the peak
    memory (bytes, PSS) of every process Ray started."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback; read at import
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    memory = PeakMemory()
    memory.start()
    try:
        folder = RunFolder.create(out, scenario)
        launch.run_with_ray(ray, scenario, cache, folder, launch.Progress(open(os.devnull, "w")))
    finally:
        memory.stop.set()
        memory.join()
        ray.shutdown()
    return folder, memory.peak


def training_round_s(rows: list[dict], rounds: int) -> float:
    return statistics.mean(r["wall_s"] for r in rows if 1 < r["round"] < rounds)


def plain_loop(scenario, cache) -> list[dict]:
    data = prepare_scenario_data(scenario, cache)
    rows = []
    run_experiment(Experiment(scenario, data), LocalExecutor(scenario, str(data)), rows.append, lambda m: None)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (round 1 is setup, the last evaluates)")
    cache = tempfile.mkdtemp(prefix="fedgrow-bench-")
    scenario = workload(args.participants, args.rounds)

    plain = {}
    for label, cpus in (("1 thread", 1.0), (f"{os.cpu_count()} threads", float(os.cpu_count()))):
        rows = plain_loop(workload(args.participants, args.rounds, cpus), cache)
        plain[label] = training_round_s(rows, args.rounds)
        print(f"plain loop ({label}): round 1 {rows[0]['wall_s']:.2f}s, training rounds "
              f"{plain[label]:.3f}s, last (with eval) {rows[-1]['wall_s']:.2f}s", flush=True)

    folder, peak = simulate_on_local_ray(scenario, cache, Path(cache) / "run")
    rows = folder.metrics()
    simulated = training_round_s(rows, args.rounds)
    print(f"simulator (Ray, {ray_hosts(folder)}): round 1 {rows[0]['wall_s']:.2f}s, training rounds "
          f"{simulated:.3f}s, last (with eval) {rows[-1]['wall_s']:.2f}s")
    print(f"peak memory of all Ray processes (PSS): {peak / 2**30:.2f} GiB")
    best = min(plain.values())
    print(f"ratio={simulated / best:.3f}")


def ray_hosts(folder: RunFolder) -> str:
    found = re.search(r"(\d+) participant hosts started", (folder.path / "events.log").read_text())
    return f"{found.group(1)} participant actors"


if __name__ == "__main__":
    main()
