"""The Ray simulator end to end on a real local Ray: privacy boundary, determinism, stragglers,
many participants on few actors, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MEASURED, simulate, tiny
from fedgrow_ray.dual_ligo import state_sha256
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.ligo import LiGO
from fedgrow_ray.methods import get_method
from fedgrow_ray.participant import ParticipantHost
from fedgrow_ray.rounds import LocalExecutor, run_experiment

ROOT = Path(__file__).resolve().parent.parent

def test_the_library_never_imports_ray():
    """fedgrow_ray runs a whole experiment in one process with no Ray loaded."""
    modules = sorted(f"fedgrow_ray.{'.'.join(path.relative_to(ROOT / 'fedgrow_ray').with_suffix('').parts)}"
                     .removesuffix(".__init__") for path in (ROOT / "fedgrow_ray").rglob("*.py"))
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert len(modules) > 20 and run.stdout.strip() == "[]", run.stdout


def test_only_global_ligo_leaves_a_participant(ray_session, cache, tmp_path):
    from actors.participant import ParticipantActor

    scenario = tiny()
    summary, rows, folder = simulate(ray_session, scenario, cache, tmp_path / "run")
    assert summary["shared_tensor_names"]
    assert all(name.startswith("global_ligo.") for name in summary["shared_tensor_names"])
    assert json.loads((folder.path / "summary.json").read_text())["shared_tensor_names"] == \
        summary["shared_tensor_names"]

    # What really crosses the actor boundary: call a participant actor and walk every tensor it
    # returns; compare with participant 0's private state, rebuilt here (it is deterministic).
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    shared = get_method("fedgrow", experiment).initial_shared()
    actor = ParticipantActor.options(num_cpus=1).remote(scenario, cache, str(tmp_path / "state"), 0, False)
    returned = ray_session.get(actor.train.remote("fedgrow", 1, [0], [ray_session.put(shared)]))
    tensors = []

    def walk(value, path):
        if isinstance(value, torch.Tensor):
            tensors.append((path, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + [k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, path + [i])

    walk(returned, [])
    assert [p[:2] for p, _ in tensors] == [[0, "update"]] * len(tensors)
    assert all(p[2].startswith("global_ligo.") for p, _ in tensors)
    assert sum(t.numel() for _, t in tensors) == LiGO.parameter_count(experiment.intermediate, experiment.target)
    host = ParticipantHost(scenario, str(prepare_scenario_data(scenario, cache)))
    host.train("fedgrow", 1, [0], shared)
    private = host.participant(0).method_state["fedgrow"].dual
    for name, secret in private.named_parameters():
        if name.startswith("global_ligo."):
            continue
        for _, sent in tensors:
            assert sent.shape != secret.shape or not torch.equal(sent, secret), name


def test_same_seed_same_results_on_ray_and_in_process(ray_session, cache, tmp_path):
    # Dropout on: every random draw, not only the data order, must be the same in every process.
    scenario = tiny("model.dropout=0.1")
    summary, rows, _ = simulate(ray_session, scenario, cache, tmp_path / "ray")
    data = prepare_scenario_data(scenario, cache)
    local_rows = []
    local = run_experiment(Experiment(scenario, data), LocalExecutor(scenario, str(data)),
                           local_rows.append, lambda m: None)
    assert local["global_ligo_sha256"] == summary["global_ligo_sha256"]
    for a, b in zip(rows, local_rows, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - MEASURED:
            expected = pytest.approx(b[key], rel=1e-6, abs=1e-9) if isinstance(b[key], float) else b[key]
            assert a[key] == expected, key


def test_stragglers_miss_the_deadline_and_the_rest_aggregate(ray_session, cache, tmp_path):
    trace = tmp_path / "devices.csv"
    trace.write_text("compute_speed\n1.0\n1.0\n0.001\n1.0\n0.001\n1.0\n")
    scenario = tiny(f"devices.trace={trace}", "devices.reference_gflops=1")
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    fast = get_method("fedgrow", experiment).round_flops(experiment.ladder[0]) / 1e9  # seconds at speed 1
    scenario = tiny(f"devices.trace={trace}", "devices.reference_gflops=1", f"deadline_s={fast * 10}")
    summary, rows, _ = simulate(ray_session, scenario, cache, tmp_path / "run")
    for row in rows:
        assert (row["sampled"], row["completed"], row["dropped_deadline"], row["aggregated"]) == (6, 4, 2, 4)
        assert row["sim_time_s"] == pytest.approx(fast * 10)  # the server waited until the deadline
    assert summary["methods"]["fedgrow"]["bytes_up_total"] == 2 * 4 * LiGO.parameter_count(
        experiment.intermediate, experiment.target) * 4


def test_a_round_nobody_finishes_in_time_keeps_global_ligo(ray_session, cache, tmp_path):
    scenario = tiny("deadline_s=1e-9", "rounds=1")
    initial = get_method("fedgrow", Experiment(scenario, prepare_scenario_data(scenario, cache))).initial_shared()
    summary, rows, folder = simulate(ray_session, scenario, cache, tmp_path / "run")
    assert (rows[0]["completed"], rows[0]["dropped_deadline"], rows[0]["aggregated"]) == (0, 6, 0)
    assert summary["global_ligo_sha256"] == state_sha256(initial)
    assert "no update arrived in time; the shared state is unchanged" in (folder.path / "events.log").read_text()


def test_two_hundred_participants_on_two_actors(ray_session, cache, tmp_path):
    scenario = tiny("participants=200", "rounds=1", "training.pretrain_steps=2",
                    "training.local_stage_steps=1", "training.local_steps=1", "eval.participants=10",
                    "data.train_size=2000", "data.test_per_participant=5")
    summary, rows, _ = simulate(ray_session, scenario, cache, tmp_path / "run")
    assert (rows[0]["sampled"], rows[0]["completed"], rows[0]["aggregated"]) == (200, 200, 200)
    assert summary["methods"]["fedgrow"]["accuracy_mean"] is not None


def test_quickstart_runs_end_to_end_and_the_grown_models_beat_the_majority_reference(tmp_path):
    """The README's main job, shortened to 4 rounds and to fedgrow, on a local Ray that
    launch.py starts and stops itself; asking for half a GPU on a machine without one falls back
    to CPU, no hang."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--set", "rounds=4", "--set", "hosts.num_gpus=0.5",
         "--set", "methods=[fedgrow]", "--out", str(out), "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["eval_accuracy"] for r in rows]
    assert len(rows) == 4 and all(r["completed"] == 8 for r in rows)
    # 4 classes: chance 0.25; label skew lifts the majority-class reference far above it
    majority = rows[-1]["eval_majority_accuracy"]
    assert 0.25 < majority < accuracy[-1] - 0.03 and accuracy[-1] > 0.5, (accuracy, majority)
    summary = json.loads((out / "summary.json").read_text())
    fedgrow = summary["methods"]["fedgrow"]
    assert fedgrow["accuracy_mean"] == pytest.approx(accuracy[-1])
    assert fedgrow["bytes_up_total"] == sum(r["bytes_up"] for r in rows) > 0
    assert summary["nodes_used"] == 1 and summary["scenario"] == "quickstart"
    assert "no GPU: participants run on CPU" in (out / "events.log").read_text()
    assert (out / "curves.png").stat().st_size > 10_000 and "| fedgrow |" in (out / "results.md").read_text()
    assert "fedgrow round 4/4" in done.stderr
