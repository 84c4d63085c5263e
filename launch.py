#!/usr/bin/env python
"""Run a Fed-Grow experiment described by a scenario file.

    python launch.py [SCENARIO] [--set key=value ...] [--out DIR] [--address ADDR]
    python launch.py --resume RUN_DIR [--address ADDR]

Without --address a local Ray is started on 127.0.0.1 and stopped at the end; with --address
(auto or HOST:PORT) the run joins an existing cluster. --executor local runs every participant
in this process with no Ray at all (for debugging, and the baseline of bench/overhead.py).
Exit status: 0 done, 1 the run failed (the run folder says why), 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from fedgrow_ray.config import ScenarioError, load_scenario, resolve_scenario
from fedgrow_ray.data import DatasetUnavailable
from fedgrow_ray.experiment import DEFAULT_CACHE, prepare_scenario_data
from fedgrow_ray.outputs import ResumeError, RunFolder, results_table

ROOT = Path(__file__).resolve().parent


class Progress:
    """A one-line progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty = stream, stream.isatty()
        self.width = 0
        self.reported: set = set()

    def message(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def update(self, event: dict) -> None:
        if not event:
            return
        accuracy = event.get("accuracy")
        acc = f"accuracy {accuracy:.3f}" if accuracy is not None else "accuracy –"
        head = f"{event['method']} round {event['round']}/{event['rounds']}"
        if self.tty:
            filled = int(20 * (event["round"] - 1 + (event["done"] / event["running"] if event["running"] else 1))
                         / event["rounds"])
            line = (f"{head} [{'#' * filled}{'.' * (20 - filled)}] participants "
                    f"{event['done']}/{event['running']}  {acc}")
            self._clear()
            self.stream.write(line)
            self.stream.flush()
            self.width = len(line)
        elif (event["method"], event["round"], event.get("phase")) in self.reported:
            return  # a poll may repeat the latest event
        elif event.get("phase") == "start" and event["round"] == 1:  # the first round is the long one
            self.reported.add((event["method"], event["round"], "start"))
            print(f"{head}: {event['running']} participants set up and training ...",
                  file=self.stream, flush=True)
        elif event.get("phase") == "end":
            self.reported.add((event["method"], event["round"], "end"))
            print(f"{head}: {event['done']}/{event['running']} participants done, {acc}",
                  file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", nargs="?",
                        help="scenario YAML (default: scenarios/quickstart.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key, e.g. --set rounds=20 --set training.lr=3e-4")
    parser.add_argument("--out", help="run folder (default: runs/<scenario>-<timestamp>)")
    parser.add_argument("--address", help="join an existing Ray cluster: auto or HOST:PORT")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="ray (default) or local: every participant in this process, no Ray")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE),
                        help=f"where prepared data is kept (default: {DEFAULT_CACHE})")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run from its last checkpoint")
    args = parser.parse_args(argv)
    if args.resume and (args.set or args.out or args.scenario):
        parser.error("--resume takes the run folder only: its config.yaml is the scenario")
    return args


def start_ray(address: str | None):
    if not address:
        # Keep a local Ray on the loopback interface (Ray otherwise binds the machine's address;
        # it reads this when it is first imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if address:
        runtime_env = {"working_dir": str(ROOT),
                       "excludes": ["runs/", ".venv/", ".git/", "*.pyc", "__pycache__/"]}
        # Run as a Ray job that ships the code itself (ray job submit --working-dir, a RayJob's
        # runtimeEnvYAML): its workers already get that working_dir, and a second one is refused.
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        if (job.get("runtime_env") or {}).get("working_dir"):
            runtime_env = None
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:  # a new local instance, never a cluster someone else started on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    return ray


def run_with_ray(ray, scenario, cache, folder, progress, resume: bool = False) -> dict:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from actors.driver import DriverActor

    here = ray.get_runtime_context().get_node_id()
    run_id = uuid.uuid4().hex[:8]  # names the run's actors: fedgrow-driver-<id>, fedgrow-host-<id>-<i>
    driver = DriverActor.options(  # on this node, so it writes the run folder launch.py shows
        name=f"fedgrow-driver-{run_id}",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(scenario, cache, str(folder.path.resolve()), resume, run_id)
    done = driver.run.remote()
    while True:
        ready, _ = ray.wait([done], timeout=0.5)
        events, messages = ray.get(driver.poll.remote())
        for message in messages:
            if "\n" not in message:  # tracebacks stay in events.log
                progress.message(message)
        for event in events:
            progress.update(event)
        if ready:
            return ray.get(done)


def run_locally(scenario, data_path, folder, progress, resume: bool = False) -> dict:
    from fedgrow_ray.rounds import LocalExecutor, run_in_folder

    def log(message):
        folder.log(message)
        progress.message(message)

    return run_in_folder(scenario, data_path, folder,
                         lambda location: LocalExecutor(scenario, str(data_path), state_dir=location),
                         log, progress.update, resume)


def main(argv=None) -> int:
    args = parse_args(argv)
    progress = Progress()
    try:
        if args.resume:
            folder, raw, _ = RunFolder.for_resume(args.resume)
            scenario = resolve_scenario(raw)
        else:
            scenario = load_scenario(args.scenario or ROOT / "scenarios" / "quickstart.yaml", args.set)
        progress.message(f"preparing data ({scenario['data']['source']}) ...")
        args.cache = str(Path(args.cache).expanduser().resolve())  # actors run elsewhere
        data_path = prepare_scenario_data(scenario, args.cache)
        if not args.resume:
            out = Path(args.out or ROOT / "runs" / f"{scenario['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
            folder = RunFolder.create(out, scenario)
    except (ScenarioError, ResumeError, DatasetUnavailable, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.resume:
        folder.set_status("running")
    progress.message(f"run folder: {folder.path}")
    ray = None
    try:
        if args.executor == "local":
            summary = run_locally(scenario, data_path, folder, progress, bool(args.resume))
        else:
            ray = start_ray(args.address)
            summary = run_with_ray(ray, scenario, args.cache, folder, progress, bool(args.resume))
    except KeyboardInterrupt:
        folder.fail("interrupted")
        progress.message(f"interrupted; resume with: python launch.py --resume {folder.path}")
        return 1
    except Exception as err:
        if "RayActorError" in type(err).__name__ or "ActorDied" in type(err).__name__:
            folder.fail(f"the driver actor died: {str(err).splitlines()[0]}")
            progress.message(f"the driver actor died ({str(err).splitlines()[0]}); the run folder keeps "
                             f"its last checkpoint: python launch.py --resume {folder.path}")
            return 1
        if '"failed"' not in (folder.path / "status.json").read_text():
            folder.fail(f"{type(err).__name__}: {err}")
        progress.message(f"run failed: {err}\n(see {folder.path / 'events.log'}; resume with "
                         f"python launch.py --resume {folder.path})")
        return 1
    finally:
        if ray is not None and not args.address:
            ray.shutdown()
    progress.message("")
    print(results_table(summary, folder.metrics()))
    print(f"run folder: {folder.path}  (summary.json, metrics.jsonl, results.md, curves.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
