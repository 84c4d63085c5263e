#!/usr/bin/env python
"""Run a Fed-Grow experiment described by a scenario file.

    python launch.py [SCENARIO] [--set key=value ...] [--out DIR] [--address ADDR]
    python launch.py --resume RUN_DIR [--address ADDR]

Without --address a local Ray is started on 127.0.0.1 and stopped at the end; with --address
(auto or HOST:PORT) the run joins an existing cluster. --executor local runs every participant
in this process with no Ray at all (for debugging, and the baseline of bench/overhead.py).
Exit status: 0 done, 1 the run failed (the run folder says why), 2 bad input (nothing written:
the scenario or run folder, the data, model checkpoints, --address and the cluster's resources
are all checked before the run folder is created).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from fedgrow_ray.config import ScenarioError, load_scenario, resolve_scenario
from fedgrow_ray.data import DatasetUnavailable
from fedgrow_ray.experiment import DEFAULT_CACHE, Experiment, prepare_scenario_data
from fedgrow_ray.outputs import ResumeError, RunFolder, results_table
from fedgrow_ray.participant import StateStore

ROOT = Path(__file__).resolve().parent


class Progress:
    """A one-line progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, stream=None):
        stream = stream or sys.stderr  # the one at call time (a test may have replaced it)
        self.stream, self.tty = stream, stream.isatty()
        self.width = 0
        self.reported: set = set()

    def message(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def status(self, text: str) -> None:
        """What is happening before the run starts: a transient line on a terminal (the next
        message replaces it, so bad input still ends in one line), nothing in a log."""
        if self.tty:
            self._clear()
            self.stream.write(text)
            self.stream.flush()
            self.width = len(text)

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
    from fedgrow_ray.rounds import LocalExecutor, run_experiment

    def log(message):
        folder.log(message)
        progress.message(message)

    checkpoint = None
    if resume:
        checkpoint = folder.load_checkpoint()
        StateStore.discard_after(folder.state_dir, checkpoint["tick"])
        log(f"resuming after {checkpoint['method']} round {checkpoint['round']}")
    executor = LocalExecutor(scenario, str(data_path), state_dir=str(folder.state_dir))
    summary = run_experiment(Experiment(scenario, data_path), executor, folder.record, log,
                             progress.update, folder.save_checkpoint, checkpoint)
    folder.finish(summary)
    return summary


def prepare(args, progress):
    """Everything a run needs, checked before anything is written: the scenario (or the run
    folder to resume), the data, model checkpoints, and Ray with the resources the scenario
    asks for. Returns (scenario, data path, ray or None, run folder: the RunFolder to resume,
    or the path of the one to create, and the checkpoint to resume from or None). Bad input
    raises; nothing has been written then."""
    checkpoint = None
    if args.resume:
        folder, raw, checkpoint = RunFolder.open_for_resume(args.resume)
        scenario = resolve_scenario(raw)
    else:
        scenario = load_scenario(args.scenario or ROOT / "scenarios" / "quickstart.yaml", args.set)
        folder = Path(args.out or ROOT / "runs" / f"{scenario['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        RunFolder.check_new(folder)
    from actors import cluster  # imports no Ray until start_or_join
    if args.executor == "ray" and args.address:
        cluster.probe(args.address)
    progress.status(f"preparing data ({scenario['data']['source']}) ...")
    args.cache = str(Path(args.cache).expanduser().resolve())  # actors run elsewhere
    data_path = prepare_scenario_data(scenario, args.cache)
    Experiment(scenario, data_path).check_inputs()
    ray = None
    if args.executor == "ray":
        progress.status(f"joining the Ray cluster at {args.address} ..." if args.address else "starting Ray ...")
        ray = cluster.start_or_join(args.address, ROOT)
        try:
            cluster.check_resources(scenario, ray.cluster_resources())
        except cluster.ClusterError:
            if not args.address:
                ray.shutdown()
            raise
    return scenario, data_path, ray, folder, checkpoint


def main(argv=None) -> int:
    args = parse_args(argv)
    progress = Progress()
    ray = None
    try:
        try:
            scenario, data_path, ray, folder, checkpoint = prepare(args, progress)
            if checkpoint is not None:
                folder.continue_from(checkpoint)
            else:
                folder = RunFolder.create(folder, scenario)
        except (ScenarioError, ResumeError, DatasetUnavailable, ValueError, FileExistsError) as err:
            progress.message(f"error: {err}")
            return 2
        except KeyboardInterrupt:
            progress.message("interrupted before the run started; nothing was written")
            return 1
        progress.message(f"run folder: {folder.path}")
        try:
            if args.executor == "local":
                summary = run_locally(scenario, data_path, folder, progress, bool(args.resume))
            else:
                summary = run_with_ray(ray, scenario, args.cache, folder, progress, bool(args.resume))
        except KeyboardInterrupt:
            folder.fail("interrupted")
            progress.message(f"interrupted; resume with: python launch.py --resume {folder.path}")
            return 1
        except Exception as err:
            if "RayActorError" in type(err).__name__ or "ActorDied" in type(err).__name__:
                folder.fail(f"the driver actor died: {str(err).splitlines()[0]}")
                progress.message(f"the driver actor died ({str(err).splitlines()[0]}); the run folder "
                                 f"keeps its last checkpoint: python launch.py --resume {folder.path}")
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
