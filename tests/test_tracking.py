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


def test_mlflow_receives_every_row_when_named(cache, tmp_path, monkeypatch):
    """Guards the MLflow path (pip install -e '.[mlflow]'): the run's scenario as parameters and
    every row's scalars by method and round reach a local MLflow store, and the run is closed
    as finished. Skipped where mlflow is not installed (CI), run where it is."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store without a database server
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fedgrow-test")
    folder = run(tmp_path, cache, "run", "methods=[fedgrow, local_small]", "trackers=[mlflow]")
    client = MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("fedgrow-test").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["rounds"] == "2" and found.data.params["participants"] == "4"
    for row in folder.metrics():
        history = client.get_metric_history(found.info.run_id, f"{row['method']}/eval_accuracy")
        assert dict((m.step, m.value) for m in history)[row["round"]] == pytest.approx(row["eval_accuracy"])


def wandb_history(path) -> list[dict]:
    """The history records of an offline W&B run file (run-<id>.wandb), read with wandb's own
    protobuf messages. The file is a LevelDB-style log (a 7-byte W&B header, then 32 KiB blocks
    of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST); wandb no longer ships a Python reader
    for it (its Go core writes it), hence these few lines, in a test only."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, pending, history = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
    return history


def test_wandb_receives_every_row_when_named(cache, tmp_path, monkeypatch):
    """Guards the Weights & Biases path (pip install -e '.[wandb]'), offline: every row's scalars,
    by method and against the method's own round, reach the run's W&B file in the run folder.
    Skipped where wandb is not installed (CI), run where it is."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = run(tmp_path, cache, "run", "methods=[fedgrow, local_small]", "trackers=[wandb]")
    (log,) = (folder.path / "wandb").glob("offline-run-*/run-*.wandb")
    logged = {(method, entry[f"{method}/round"]): entry for entry in wandb_history(log)
              for method in ("fedgrow", "local_small") if f"{method}/round" in entry}
    rows = folder.metrics()
    assert sorted(logged) == sorted((r["method"], r["round"]) for r in rows)
    for row in rows:
        entry = logged[(row["method"], row["round"])]
        assert entry[f"{row['method']}/eval_accuracy"] == pytest.approx(row["eval_accuracy"])
        assert entry[f"{row['method']}/bytes_up"] == row["bytes_up"]
