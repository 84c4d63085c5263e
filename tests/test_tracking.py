"""Tracking: every run's metrics rows reach TensorBoard by method and round (read back with
TensorBoard's own EventAccumulator), a resume leaves no stale rounds there, a sweep's aggregate
curves are written too, and a tracker named but not installed is one line of bad input."""

import importlib.util
import io

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import launch
from conftest import TINY, tiny
from fedgrow_ray.config import ScenarioError
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.sweeps.report import sweep_curves
from fedgrow_ray.sweeps.stats import t_interval
from fedgrow_ray.tracking import write_sweep_events


def events(folder):
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def run(tmp_path, cache, name, *overrides):
    out = tmp_path / name
    launch.run(dict(TINY), overrides=["rounds=2", "participants=4", *overrides], out=out, executor="local",
               cache=cache, progress=launch.Progress(io.StringIO()))
    return RunFolder(out)


def test_every_round_of_every_method_reaches_tensorboard_and_a_resume_rebuilds_it(cache, tmp_path):
    """Guards against rows missing from TensorBoard (a method, a round, a field), values that
    differ from metrics.jsonl, or a resume leaving the rounds it re-runs there twice."""
    folder = run(tmp_path, cache, "run", "methods=[fedgrow, local_small]")
    rows = folder.metrics()
    for method in ("fedgrow", "local_small"):
        scalars = events(folder.path / "tensorboard" / method)
        mine = [r for r in rows if r["method"] == method]
        for key in ("eval_accuracy", "bytes_up", "flops_total", "train_loss"):
            assert [step for step, _ in scalars[key]] == [r["round"] for r in mine]
            assert [value for _, value in scalars[key]] == pytest.approx([r[key] for r in mine], rel=1e-6)

    folder.continue_from({"metrics_rows": 1})  # as --resume from a checkpoint after fedgrow's round 1
    assert [step for step, _ in events(folder.path / "tensorboard" / "fedgrow")["eval_accuracy"]] == [1]
    assert not (folder.path / "tensorboard" / "local_small").exists()


def test_a_sweeps_aggregate_curves_reach_tensorboard(cache, tmp_path):
    """Guards against the sweep's TensorBoard curves not being the mean over seeds and its 95%
    interval of each round's accuracy."""
    runs = [{"setting": "default", "rows": run(tmp_path, cache, f"seed{seed}", f"seed={seed}").metrics(),
             "summary": {"methods": {"fedgrow": {}}}} for seed in (1, 2)]
    write_sweep_events(tmp_path, sweep_curves({"settings": [{"name": "default"}]}, runs))
    scalars = events(tmp_path / "tensorboard" / "default" / "fedgrow")
    for round_number in (1, 2):
        accuracies = [r["eval_accuracy"] for run_ in runs for r in run_["rows"] if r["round"] == round_number]
        mean, interval = t_interval(accuracies)
        assert dict(scalars["accuracy_mean"])[round_number] == pytest.approx(mean, rel=1e-6)
        assert dict(scalars["accuracy_ci95_low"])[round_number] == pytest.approx(interval[0], rel=1e-6)
        assert dict(scalars["accuracy_ci95_high"])[round_number] == pytest.approx(interval[1], rel=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_a_tracker_named_but_not_installed_is_bad_input():
    """Guards against a run starting (and failing later, or tracking nothing) when the scenario
    names MLflow and it is not installed."""
    with pytest.raises(ScenarioError, match=r"'trackers': 'mlflow' is named but the mlflow package is "
                                            r"not installed; pip install -e '\.\[mlflow\]'"):
        tiny("trackers=[mlflow]")
