"""Fixed cost of a command: the time from `python launch.py` to the first round's work (the
progress line "<method> round 1/R: N participants set up and training ..."), and the whole
command's wall time minus the work of its rounds (metrics.jsonl's wall_s), on the quickstart
with a warm data cache (a first, uncounted run warms it when --warm is given).

    python bench/startup.py [--root CHECKOUT] [--repeats 2] [--warm] [--set KEY=VALUE ...]

`--root` measures another checkout's launch.py (e.g. an older commit's, for a before/after).
Last line: first_round_s=<fastest repeat> fixed_s=<that repeat's command time minus rounds>.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(root: Path, overrides: list[str], out: Path) -> dict:
    command = [sys.executable, str(root / "launch.py"), str(root / "scenarios" / "quickstart.yaml"),
               "--out", str(out)] + [a for item in overrides for a in ("--set", item)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    first = None
    with subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as process:
        for line in process.stderr:
            if first is None and " round 1/" in line and "set up and training" in line:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"launch.py exited with {process.returncode}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rounds = sum(row["wall_s"] for row in rows)
    return {"first_round_s": first, "total_s": total, "rounds_s": rounds, "fixed_s": total - rounds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warm", action="store_true", help="run once first, uncounted, to fill the data cache")
    parser.add_argument("--set", action="append", default=["rounds=1"], help="scenario overrides (default rounds=1)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fedgrow-startup-"))
    if args.warm:
        one_run(args.root.resolve(), args.set, scratch / "warm")
    print(f"{'repeat':>6} {'first round s':>13} {'command s':>9} {'rounds s':>8} {'fixed s':>7}", flush=True)
    results = []
    for repeat in range(args.repeats):
        r = one_run(args.root.resolve(), args.set, scratch / f"run-{repeat}")
        results.append(r)
        print(f"{repeat:>6} {r['first_round_s']:>13.1f} {r['total_s']:>9.1f} {r['rounds_s']:>8.1f} "
              f"{r['fixed_s']:>7.1f}", flush=True)
    best = min(results, key=lambda r: r["first_round_s"])
    print(f"first_round_s={best['first_round_s']:.1f} fixed_s={best['fixed_s']:.1f}")


if __name__ == "__main__":
    main()
