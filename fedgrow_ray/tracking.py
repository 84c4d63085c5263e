"""Tracking: a run's metrics rows, as the driver records them, to TensorBoard (always), and to
MLflow or Weights & Biases when the scenario's `trackers` names them; a sweep's aggregate
curves to TensorBoard.

    <run folder>/tensorboard/<method>/     one event stream per method: every numeric field of
                                           its metrics rows (metrics.jsonl), by round
    <sweep folder>/tensorboard/<setting>/<method>/   accuracy over seeds by round: its mean and
                                           its 95% t-interval's ends

`tensorboard --logdir RUN_OR_SWEEP_FOLDER` shows them (a sweep folder's also holds every run's).
The libraries' own writers do the work (torch.utils.tensorboard's SummaryWriter, MLflow's
client, wandb's run); nothing here formats events. Ray Tune's logger callbacks are not the fit:
a sweep's trials report to Tune once, at their end (actors/sweep.py), while the rows come from
each run's driver round by round, and a run alone is no Tune trial at all. A resumed run's TensorBoard folder is
rebuilt from the rows it keeps, so it always shows metrics.jsonl; MLflow and W&B continue the
same run (its id is kept in tracking.json) and receive the re-run rounds again.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "tracking.json"
TRACKERS = {"mlflow": "mlflow", "wandb": "wandb"}  # scenario name -> the package it needs


def missing_tracker(name: str) -> str | None:
    """Why tracker `name` cannot be used here (its package is not installed), or None."""
    if importlib.util.find_spec(TRACKERS[name]) is None:
        return (f"{name!r} is named but the {TRACKERS[name]} package is not installed; "
                f"pip install -e '.[{name}]' (or pip install {TRACKERS[name]})")
    return None


def _safe(name: str) -> str:
    """A method name (possibly an import path) as a folder or metric name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _scalars(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in ("method", "round") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def write_events(directory: Path, rows: list[dict]) -> None:
    """Rows (each with method, round and scalars) to TensorBoard event files, a folder per method."""
    from torch.utils.tensorboard import SummaryWriter

    writers = {}
    try:
        for row in rows:
            method = row["method"]
            if method not in writers:
                writers[method] = SummaryWriter(str(directory / _safe(method)))
            for key, value in _scalars(row).items():
                writers[method].add_scalar(key, value, global_step=row["round"])
    finally:
        for writer in writers.values():
            writer.close()


class RunTracker:
    """The trackers of one run folder, fed each metrics row as it is recorded."""

    def __init__(self, folder: Path, scenario: dict):
        self.folder = Path(folder)
        self.writers: dict = {}
        state_path = self.folder / STATE_FILE
        self.state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.external = [_EXTERNAL[name](self.folder, scenario, self.state) for name in scenario["trackers"]]
        if self.external:
            from .outputs import atomic_write
            atomic_write(state_path, json.dumps(self.state, indent=2))

    def log(self, row: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        method = row["method"]
        if method not in self.writers:
            self.writers[method] = SummaryWriter(str(self.folder / TENSORBOARD_DIR / _safe(method)))
        scalars = _scalars(row)
        for key, value in scalars.items():
            self.writers[method].add_scalar(key, value, global_step=row["round"])
        self.writers[method].flush()
        for tracker in self.external:
            tracker.log(_safe(method), row["round"], scalars)

    def close(self, status: str) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
        for tracker in self.external:
            tracker.close(status)
        self.external = []

    @staticmethod
    def rebuild(folder: Path, rows: list[dict]) -> None:
        """The run folder's TensorBoard events made again from `rows` alone (a resume keeps the
        rows before its checkpoint; the rounds after it run again)."""
        final = Path(folder) / TENSORBOARD_DIR
        scratch = Path(tempfile.mkdtemp(prefix=f".{TENSORBOARD_DIR}.", dir=folder))
        try:
            write_events(scratch, rows)
            if final.exists():
                shutil.rmtree(final)
            os.rename(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _flat(value, prefix="") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(value) if isinstance(value, (list, type(None))) else value}


class _Mlflow:
    """An MLflow run (experiment `fedgrow-ray`, or MLFLOW_EXPERIMENT_NAME; MLFLOW_TRACKING_URI
    says where): the scenario as parameters, every row's scalars as `<method>/<field>` by round."""

    def __init__(self, folder: Path, scenario: dict, state: dict):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.run_id = state.get("mlflow_run_id")
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fedgrow-ray")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=folder.name)
            self.run_id = state["mlflow_run_id"] = run.info.run_id
            for key, value in _flat(scenario).items():
                self.client.log_param(self.run_id, key, value)

    def log(self, method: str, round_number: int, scalars: dict) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{method}/{k}", v, now, round_number)
                                                    for k, v in scalars.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")


class _Wandb:
    """A Weights & Biases run (project `fedgrow-ray`, or WANDB_PROJECT): the scenario as its
    config, every row's scalars as `<method>/<field>` against `<method>/round`."""

    def __init__(self, folder: Path, scenario: dict, state: dict):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fedgrow-ray"), name=folder.name,
                              id=state.get("wandb_id"), resume="allow", config=scenario, dir=str(folder))
        state["wandb_id"] = self.run.id
        self.defined: set[str] = set()

    def log(self, method: str, round_number: int, scalars: dict) -> None:
        if method not in self.defined:  # each method has its own round axis
            self.run.define_metric(f"{method}/round")
            self.run.define_metric(f"{method}/*", step_metric=f"{method}/round")
            self.defined.add(method)
        self.run.log({f"{method}/round": round_number, **{f"{method}/{k}": v for k, v in scalars.items()}})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)


_EXTERNAL = {"mlflow": _Mlflow, "wandb": _Wandb}


def write_sweep_events(folder: Path, curves: dict[str, dict[str, list[tuple[int, float, list | None]]]]) -> None:
    """A sweep's aggregate: {setting: {method: [(round, mean accuracy, 95% interval or None)]}}
    to <folder>/tensorboard/<setting>/<method>/ (accuracy_mean, accuracy_ci95_low,
    accuracy_ci95_high by round), made afresh each time the sweep concludes."""
    from torch.utils.tensorboard import SummaryWriter

    final = Path(folder) / TENSORBOARD_DIR
    scratch = Path(tempfile.mkdtemp(prefix=f".{TENSORBOARD_DIR}.", dir=folder))
    try:
        for setting, methods in curves.items():
            for method, points in methods.items():
                with SummaryWriter(str(scratch / _safe(setting) / _safe(method))) as writer:
                    for round_number, mean, interval in points:
                        writer.add_scalar("accuracy_mean", mean, global_step=round_number)
                        if interval:
                            writer.add_scalar("accuracy_ci95_low", interval[0], global_step=round_number)
                            writer.add_scalar("accuracy_ci95_high", interval[1], global_step=round_number)
        if final.exists():
            shutil.rmtree(final)
        os.rename(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
