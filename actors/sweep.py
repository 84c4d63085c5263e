"""A sweep's runs as concurrent experiments on Ray, with Ray Tune.

Why Tune: a sweep is what a Tuner is for. Each trial (here: one run, a setting and a seed) asks
for its own resources as a placement group; Tune queues the trials, starts as many as the local
machine or the cluster can hold side by side, and calls back as each starts and ends. A trial's
function starts the run's DriverActor inside the trial's placement group, and the driver its
participant hosts (actors/placement.py: TrialPlacement, one bundle per host, the trial's own
process and the driver in an empty first bundle), through the same `run_on_ray` as a run alone.

What Tune does not do here: search (the grid is fixed: fedgrow_ray.sweeps plans settings x seeds),
stop trials early, or keep results and checkpoints. A run's own folder is its record (status.json,
checkpoint.pt, summary.json), so resuming a sweep means deciding per run folder to reuse, resume
or start it (fedgrow_ray.sweeps.plan) and giving Tune only the runs left; Tuner.restore would
replay Tune's trial state, which knows nothing of those checkpoints. Tune's experiment state sits
in DIR/.tune and is made afresh by each invocation.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.sweeps import TUNE_DIR, SweepFolder, SweepPlan

from .driver import record_failure, run_on_ray
from .placement import TrialPlacement, trial_bundles


def _stopped(group) -> bool:
    """Tune stopped this trial (the sweep was interrupted): it removed the trial's placement group
    under the running run, whose actors then die or cannot be placed."""
    return group is not None and ray.util.placement_group_table(group).get("state") == "REMOVED"


def _trial(config: dict, runs: dict, cache_dir: str, sweep_dir: str, cluster_gpus: float) -> None:
    """One run, in the trial's placement group; reports its outcome once, at the end."""
    spec = runs[config["run"]]
    run_dir = Path(sweep_dir) / spec["path"]
    started, folder = time.time(), None
    group = ray.util.get_current_placement_group()
    try:
        if spec["action"] == "resume":
            folder = RunFolder.for_resume(run_dir)[0]
            folder.set_status("running")
        else:
            folder = RunFolder.create(run_dir, spec["scenario"])
        summary = run_on_ray(spec["scenario"], cache_dir, folder, spec["action"] == "resume",
                             TrialPlacement(group, cluster_gpus))
        outcome = {"status": "completed",
                   "accuracy": {m: s["accuracy_mean"] for m, s in summary["methods"].items()}}
    except Exception as err:  # the sweep goes on; the run folder and sweep.json say why
        if _stopped(group):  # Ctrl-C: whatever failed, failed because Tune took the resources back
            cause = "interrupted"
            if folder:
                folder.fail(cause)
        else:
            cause = record_failure(folder, err) if folder else f"{type(err).__name__}: {err}"
        outcome = {"status": "failed", "error": cause}
    tune.report({**outcome, "started": started, "ended": time.time()})


class _Progress(tune.Callback):
    """One line when a run starts and when it ends; each run's start and end times go to the plan
    (sweep.json)."""

    def __init__(self, plan: SweepPlan, say):
        self.runs = {r.path: r for r in plan.runs}
        self.total, self.say = len(plan.runs), say
        self.done = sum(r.action == "reuse" for r in plan.runs)
        self.running = 0

    def __getstate__(self):
        # Tune pickles its run config (for Tuner.restore, which sweeps do not use); the terminal
        # this prints to does not travel.
        return {**self.__dict__, "say": print}

    def _name(self, trial) -> str:
        run = self.runs[trial.config["run"]]
        return f"{run.setting} seed {run.seed}"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        action = "resume" if self.runs[trial.config["run"]].action == "resume" else "start"
        self.say(f"{action:7s}{self._name(trial)}  ({self.running} running, {self.done} of {self.total} done)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running -= 1
        self.done += 1
        result = trial.last_result or {}
        took = ""
        if "ended" in result:
            took = f"in {result['ended'] - result['started']:.0f} s"
            self.runs[trial.config["run"]].info.update(
                started=result["started"], ended=result["ended"], wall_s=result["ended"] - result["started"])
        if result.get("status") == "completed":
            scores = ", ".join(f"{m} {a:.3f}" if a is not None else f"{m} –"
                               for m, a in result["accuracy"].items())
            self.say(f"done   {self._name(trial)}  accuracy {scores}  {took}  ({self.done} of {self.total} done)")
        else:
            self.say(f"failed {self._name(trial)}  {result.get('error', 'no result')}  {took}  "
                     f"({self.done} of {self.total} done)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running -= 1
        self.done += 1
        self.say(f"failed {self._name(trial)}  (the trial itself failed; see {TUNE_DIR})  "
                 f"({self.done} of {self.total} done)")


def check_resources(plan: SweepPlan) -> None:
    """Every run's placement group must fit the cluster, or Tune would wait for it forever."""
    resources = ray.cluster_resources()
    for run in plan.runs:
        bundles, _ = trial_bundles(run.scenario, resources.get("GPU", 0))
        for resource in ("CPU", "GPU", "memory"):
            need = sum(b.get(resource, 0) for b in bundles)
            if need > resources.get(resource, 0) + 1e-9:
                unit = 2**20 if resource == "memory" else 1
                raise ValueError(f"the run {run.path} needs {need / unit:g} {resource} ({len(bundles) - 1} "
                                 f"participant hosts, hosts.actors) but the cluster has "
                                 f"{resources.get(resource, 0) / unit:g}; lower hosts.actors or hosts.num_cpus")


def run_sweep(plan: SweepPlan, folder: SweepFolder, cache_dir: str, say) -> int:
    """Run every planned run that is not reused, as Tune trials, and note each one's start and
    end times in the plan. Returns how many ended without a result (interrupted)."""
    todo = {r.path: r for r in plan.runs if r.action != "reuse"}
    if not todo:
        return 0
    # Tune's console tables and its CSV/TensorBoard loggers: the run folders and the lines below
    # say it all (its JSON logger stays, for the results Tune reads back into its ResultGrid).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    gpus = ray.cluster_resources().get("GPU", 0)
    specs = {path: {"path": path, "scenario": r.scenario, "action": r.action} for path, r in todo.items()}

    def resources(config):
        bundles, strategy = trial_bundles(specs[config["run"]]["scenario"], gpus)
        return tune.PlacementGroupFactory(bundles, strategy=strategy)

    def trial_name(trial):
        return trial.config["run"].replace("/", "_")

    trainable = tune.with_resources(
        tune.with_parameters(_trial, runs=specs, cache_dir=cache_dir, sweep_dir=str(folder.path.resolve()),
                             cluster_gpus=gpus), resources)
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(list(specs))},
        # reuse_actors: a trial process (and its placement group) of the same shape takes the next
        # run instead of a new process being started for it.
        tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(folder.path.resolve()), verbose=0,
                                  callbacks=[_Progress(plan, say), JsonLoggerCallback()],
                                  failure_config=tune.FailureConfig(max_failures=0)))
    # Tune's warnings on Ctrl-C point to Tuner.restore and to trials with no result yet; a sweep
    # resumes from its run folders instead (launch.py says how). Its errors still show.
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.ERROR)
    try:
        tuner.fit()
    finally:
        tune_logger.setLevel(level)
    return sum("ended" not in run.info for run in todo.values())
