"""Sweeps: seeds x settings as concurrent Ray Tune trials, their statistics, resume, bad input."""

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

import launch
from conftest import TINY
from fedgrow_ray.config import resolve_scenario
from fedgrow_ray.sweeps import SweepFolder, SweepPlan, paired, summarise, sweep_markdown, t_interval
from fedgrow_ray.sweeps.plan import read_status

T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824}  # Student t quantiles from a printed table


def scenario_file(tmp_path, **changes) -> str:
    raw = {**TINY, **changes}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- statistics, by hand -----------------------------------------------------------------------
def test_t_interval_matches_the_textbook_formula():
    """Guards the interval: mean ± t(0.975, n-1)·s/√n over seeds, and no interval from one seed."""
    mean, (low, high) = t_interval([0.1, 0.2, 0.3])
    half = T_975[2] * 0.1 / math.sqrt(3)  # s = 0.1
    assert mean == pytest.approx(0.2)
    assert low == pytest.approx(0.2 - half, abs=1e-4) and high == pytest.approx(0.2 + half, abs=1e-4)
    mean, (low, high) = t_interval([0.5, 0.7])
    assert (low, high) == pytest.approx((0.6 - T_975[1] * 0.1, 0.6 + T_975[1] * 0.1), abs=1e-4)
    assert t_interval([0.42]) == (0.42, None)
    assert t_interval([None, 0.42, None]) == (0.42, None)
    assert t_interval([]) == (None, None)
    assert t_interval([3.0, 3.0, 3.0]) == (3.0, [3.0, 3.0])


def test_paired_differences_pair_by_seed_and_participant():
    """Guards the pairing: per seed the mean of fedgrow_i - baseline_i over participants both
    have (a participant missing on one side is left out), then a t-interval over seeds."""
    fedgrow = {0: {"0": 0.8, "1": 0.6, "2": 0.7}, 1: {"0": 0.9, "1": 0.5, "2": 0.6}, 2: {"0": 0.7, "1": 0.7},
               3: {"0": 0.5}}
    baseline = {0: {"0": 0.7, "1": 0.65}, 1: {"0": 0.8, "1": 0.5, "2": 0.4}, 2: {"0": 0.75, "1": 0.55, "2": 0.9}}
    result = paired(fedgrow, baseline)  # seed 3 has no baseline: not a pair
    diffs = [(0.1 - 0.05) / 2, (0.1 + 0.0 + 0.2) / 3, (-0.05 + 0.15) / 2]
    mean = sum(diffs) / 3
    s = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert result["seeds"] == 3 and result["wins"] == 3
    assert [p["participants"] for p in result["per_seed"]] == [2, 3, 2]
    assert [p["diff"] for p in result["per_seed"]] == pytest.approx(diffs)
    assert result["diff_mean"] == pytest.approx(mean)
    assert result["diff_ci95"] == pytest.approx([mean - T_975[2] * s / math.sqrt(3),
                                                 mean + T_975[2] * s / math.sqrt(3)], abs=1e-4)
    # Unpaired means would give another figure: the pairing is what is computed.
    unpaired = (sum(sum(v.values()) / len(v) for v in list(fedgrow.values())[:3])
                - sum(sum(v.values()) / len(v) for v in baseline.values())) / 3
    assert abs(unpaired - mean) > 0.01
    one = paired({5: {"0": 0.6, "1": 0.4}}, {5: {"0": 0.5, "1": 0.5}})
    assert one["diff_mean"] == pytest.approx(0.0) and one["diff_ci95"] is None and one["wins"] == 0


def test_paired_entries_carry_precision_global_accuracy_and_the_spread():
    """Guards the extra paired metrics: macro precision and global accuracy paired by participant,
    the spread across participants (accuracy_std) paired by seed, each with its own interval."""
    def method(acc, prec, spread):
        return {"accuracy_mean": 0.5, "accuracy_std": spread, "per_participant_accuracy": acc,
                "bytes_up_total": 0, "bytes_down_total": 0,
                "per_participant_macro_precision": prec, "per_participant_global_accuracy": None}
    runs = [{"setting": "s", "seed": seed, "summary": {"methods": {
        "fedgrow": method({"0": 0.8, "1": 0.6}, {"0": 0.5, "1": 0.7}, spread),
        "local_small": method({"0": 0.7, "1": 0.6}, {"0": 0.4 + d, "1": 0.4}, 0.2)}}}
        for seed, spread, d in ((0, 0.1, 0.0), (1, 0.05, 0.1), (2, 0.15, 0.2))]
    entry = summarise(runs, ["s"])["paired"][0]
    assert entry["baseline"] == "local_small" and entry["diff_mean"] == pytest.approx(0.05)
    precision = [(0.1 + 0.3) / 2, (0.0 + 0.3) / 2, (-0.1 + 0.3) / 2]
    assert entry["macro_precision"]["diff_mean"] == pytest.approx(sum(precision) / 3)
    assert entry["macro_precision"]["diff_ci95"] == pytest.approx(
        [0.15 - T_975[2] * 0.05 / math.sqrt(3), 0.15 + T_975[2] * 0.05 / math.sqrt(3)], abs=1e-4)
    assert entry["accuracy_std"]["diff_mean"] == pytest.approx(-0.1) and entry["accuracy_std"]["wins"] == 0
    assert entry["global_accuracy"] is None


def _summary(accuracy: dict, sent: int, **extra) -> dict:
    values = list(accuracy.values())
    return {"accuracy_mean": sum(values) / len(values), "accuracy_std": 0.1, "macro_precision_mean": 0.5,
            "global_accuracy_mean": None, "majority_accuracy_mean": 0.3, "bytes_up_total": sent,
            "bytes_down_total": sent, "flops_total": 1e9, "rounds": 2, "sim_time_s": 10.0,
            "per_participant_accuracy": accuracy, **extra}


def test_results_and_sweep_md_say_na_for_one_seed():
    """Guards the tables: one seed gives means with null intervals (n/a in sweep.md), paired
    entries for fedgrow against each baseline, and settings compared with the first one."""
    runs = [{"setting": setting, "seed": 0, "summary": {"methods": {
        "fedgrow": _summary({"0": 0.6 + shift, "1": 0.8}, 100),
        "local_small": _summary({"0": 0.5, "1": 0.7}, 0)}}} for setting, shift in (("a", 0.0), ("b", 0.1))]
    stats = summarise(runs, ["a", "b"])
    first = stats["results"][0]
    assert (first["setting"], first["method"], first["seeds"]) == ("a", "fedgrow", 1)
    assert first["accuracy_mean"] == pytest.approx(0.7) and first["accuracy_ci95"] is None
    assert first["bytes_mean"] == 200 and first["global_accuracy_mean"] is None
    assert [(p["setting"], p["baseline"]) for p in stats["paired"]] == [("a", "local_small"), ("b", "local_small")]
    assert stats["paired"][1]["diff_mean"] == pytest.approx(0.15) and stats["paired"][1]["diff_ci95"] is None
    settings = {(p["setting"], p["method"]): p for p in stats["paired_settings"]}
    assert settings[("b", "fedgrow")]["diff_mean"] == pytest.approx(0.05)
    assert settings[("b", "local_small")]["diff_mean"] == pytest.approx(0.0)
    document = {"scenario": {"name": "tiny"}, "seeds": [0], "command": "python launch.py x", "commit": None,
                "settings": [{"name": "a", "values": {}}, {"name": "b", "values": {}}],
                "runs": [{"path": "a/seed-0", "status": "completed"}], **stats}
    text = sweep_markdown(document)
    assert "| fedgrow | 1 | 0.700 [n/a] |" in text and "| a | local_small | +0.100 n/a | 1 | 1 of 1 |" in text


# ---- variants ------------------------------------------------------------------------------------
def test_variants_are_named_settings_crossed_with_the_grid():
    """Guards sweep.variants: each variant's overrides reach its runs' scenarios (and only its),
    crossed with the grid, named after the variant, and part of the sweep's identity."""
    variants = {"paper": {}, "joint": {"training.joint_local": True, "methods": ["fedgrow", "independent_growth"]}}
    plan = SweepPlan(resolve_scenario(TINY), {"rounds": [1, 2]}, [0, 1], variants)
    assert [s.name for s in plan.settings] == ["paper,rounds=1", "paper,rounds=2", "joint,rounds=1", "joint,rounds=2"]
    by_path = {r.path: r.scenario for r in plan.runs}
    assert len(by_path) == 8
    assert by_path["paper,rounds=2/seed-1"]["training"]["joint_local"] is False
    assert by_path["paper,rounds=2/seed-1"]["methods"] == ["fedgrow"] and by_path["paper,rounds=2/seed-1"]["rounds"] == 2
    joint = by_path["joint,rounds=1/seed-1"]
    assert joint["training"]["joint_local"] is True and joint["rounds"] == 1 and joint["seed"] == 1
    assert joint["methods"] == ["fedgrow", "independent_growth"]
    assert plan.identity()["variants"] == variants
    assert SweepPlan(resolve_scenario(TINY), {}, [0], {"only": {"rounds": 3}}).settings[0].name == "only"


def test_variants_flag_runs_only_the_named_variants():
    """Guards --variants: the named subset, in the scenario's order, with each its own overrides."""
    variants = {"paper": {}, "joint": {"training.joint_local": True}, "short": {"rounds": 1}}
    assert launch.pick_variants(variants, None) == variants
    assert launch.pick_variants(variants, "short,paper") == {"paper": {}, "short": {"rounds": 1}}


@pytest.mark.parametrize("variants, message", [
    ({"bad name!": {}}, "scenario key 'sweep.variants.bad name!'"),
    ({"joint": {"seed": 3}}, "scenario key 'sweep.variants.joint.seed'"),
    ({"joint": {"training.lrr": 1}}, "scenario key 'training.lrr' is unknown"),
    ({"joint": [1, 2]}, "expected a mapping {scenario key: value}"),
])
def test_bad_variants_are_one_line_and_exit_2(tmp_path, capsys, variants, message):
    """Guards sweep.variants validation: a bad name, key or value is one line, exit 2, nothing written."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "sweep": {"variants": variants}}))
    assert launch.main([str(path), "--out", str(tmp_path / "sweep"), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sweep").exists()


# ---- bad input -----------------------------------------------------------------------------------
def _other_sweep(tmp_path) -> Path:
    """A sweep folder of another grid, as launch.py leaves it before its runs start."""
    out = tmp_path / "other"
    plan = SweepPlan(resolve_scenario(TINY), {"rounds": [1, 2]}, [0])
    folder = SweepFolder(out)
    folder.check(plan)
    folder.begin(plan, {"command": "python launch.py tiny.yaml --grid rounds=1,2", "commit": None})
    return out


BAD_SWEEPS = [
    ("unknown grid key", lambda t: ["--seeds", "2", "--grid", "training.lrr=1,2"],
     "scenario key 'training.lrr' is unknown (did you mean 'training.lr'?)"),
    ("bad grid value", lambda t: ["--seeds", "2", "--grid", "rounds=2,0"],
     "scenario key 'rounds': 0 is not allowed; expected an integer >= 1 (in the sweep setting rounds=0)"),
    ("empty value list", lambda t: ["--grid", "rounds="], "--grid 'rounds=': expected KEY=V1,V2,..."),
    ("no seeds", lambda t: ["--seeds", "0"], "--seeds 0: expected a number of seeds >= 1"),
    ("grid over the seed", lambda t: ["--set", "sweep.grid={seed: [1, 2]}"], "scenario key 'sweep.grid.seed'"),
    ("grid over the seed on the command line", lambda t: ["--grid", "seed=1,2"], "scenario key 'sweep.grid.seed'"),
    ("empty list in the scenario", lambda t: ["--set", "sweep.grid={rounds: []}"],
     "scenario key 'sweep.grid.rounds': [] is not allowed; expected a non-empty list of values"),
    ("negative seed in the scenario", lambda t: ["--set", "sweep.seeds=[0, -1]"],
     "scenario key 'sweep.seeds[1]': -1 is not allowed"),
    ("a local sweep", lambda t: ["--seeds", "2", "--executor", "local"], "a sweep runs on Ray"),
    ("an unknown variant", lambda t: ["--set", "sweep.variants={a: {}, b: {rounds: 2}}", "--variants", "a,c"],
     "--variants a,c: c is not one of the scenario's sweep.variants (a, b)"),
    ("variants the scenario lacks", lambda t: ["--seeds", "2", "--variants", "a"],
     "--variants a: a is not one of the scenario's sweep.variants (none: the scenario has no sweep.variants)"),
]


@pytest.mark.parametrize("name, make_args, message", BAD_SWEEPS, ids=[b[0] for b in BAD_SWEEPS])
def test_bad_sweep_input_is_one_line_and_exit_2(tmp_path, capsys, name, make_args, message):
    """Guards bad sweep input: one line naming the problem, exit 2, no sweep folder written."""
    args = [scenario_file(tmp_path)] + make_args(tmp_path) + ["--out", str(tmp_path / "sweep"),
                                                              "--cache", str(tmp_path / "cache")]
    assert launch.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sweep").exists()


def test_an_out_folder_of_another_sweep_is_refused(tmp_path, capsys):
    """Guards against mixing sweeps: another sweep's folder (or any non-empty folder that is not
    a sweep) is refused in one line, exit 2, and left exactly as it was."""
    other = _other_sweep(tmp_path)
    before = snapshot(other)
    capsys.readouterr()
    args = [scenario_file(tmp_path), "--seeds", "2", "--grid", "training.joint_local=false,true",
            "--cache", str(tmp_path / "cache")]
    assert launch.main(args + ["--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{other} holds another sweep" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(other) == before
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert launch.main(args + ["--out", str(stranger)]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]


def test_a_sweep_written_before_a_key_was_added_still_resumes(tmp_path):
    """Guards resuming across versions: a sweep folder (and its run folders) written by code that
    did not yet know a key (here `privacy`, whose default keeps the earlier behaviour) is the same
    sweep, and its runs are reused; a run whose config differs in a value is still refused."""
    from fedgrow_ray.outputs import RunFolder
    from fedgrow_ray.sweeps.plan import SweepError

    def older(scenario: dict) -> dict:
        return {k: v for k, v in scenario.items() if k != "privacy"}

    out = tmp_path / "sweep"
    plan = SweepPlan(resolve_scenario(TINY), {"rounds": [1, 2]}, [0])
    folder = SweepFolder(out)
    folder.check(plan)
    folder.begin(plan, {"command": "python launch.py tiny.yaml --grid rounds=1,2", "commit": None})
    held = json.loads(folder.sweep_file.read_text())
    assert "privacy" in held["identity"]["scenario"]
    held["identity"]["scenario"], held["scenario"] = older(held["identity"]["scenario"]), older(held["scenario"])
    folder.sweep_file.write_text(json.dumps(held))
    run = plan.runs[0]
    (out / run.path).mkdir(parents=True, exist_ok=True)
    (out / run.path / "config.yaml").write_text(RunFolder.config_text(older(run.scenario)))
    (out / run.path / "status.json").write_text(json.dumps({"status": "completed"}))
    (out / run.path / "summary.json").write_text("{}")

    again = SweepPlan(resolve_scenario(held["scenario"]), held["grid"], held["seeds"])
    folder.check(again)
    assert [r.action for r in again.runs] == ["reuse", "start"]

    changed = {**older(run.scenario), "training": {**run.scenario["training"], "lr": 0.5}}
    (out / run.path / "config.yaml").write_text(RunFolder.config_text(changed))
    with pytest.raises(SweepError, match="its config.yaml differs"):
        folder.check(SweepPlan(resolve_scenario(held["scenario"]), held["grid"], held["seeds"]))


# ---- on Ray --------------------------------------------------------------------------------------
@pytest.mark.slow  # 8 runs as Tune trials: about 2 minutes alone, 5 on a busy machine
def test_a_sweep_runs_concurrently_and_each_run_equals_the_run_alone(ray_session, cache, tmp_path):
    """Guards the sweep end to end: 2 settings x 2 seeds as concurrent Tune trials on a local Ray,
    sweep.json with intervals and paired differences that follow from the run folders, and every
    run inside the sweep giving exactly the results of the same config.yaml launched alone."""
    out = tmp_path / "sweep"
    args = [scenario_file(tmp_path), "--seeds", "2", "--grid", "training.joint_local=false,true",
            "--set", "methods=[fedgrow, local_small]", "--set", "hosts.actors=1",
            "--out", str(out), "--cache", cache]
    assert launch.main(args) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [(r["path"], r["status"]) for r in sweep["runs"]] == [
        (f"joint_local={j}/seed-{s}", "completed") for j in ("false", "true") for s in (0, 1)]
    # Concurrent: with one host (one CPU) per run on two CPUs, two runs were under way at once.
    spans = sorted((r["started"], r["ended"]) for r in sweep["runs"])
    assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), spans

    summaries = {r["path"]: json.loads((out / r["path"] / "summary.json").read_text()) for r in sweep["runs"]}
    for entry in sweep["results"]:
        accuracies = [summaries[f"{entry['setting']}/seed-{s}"]["methods"][entry["method"]]["accuracy_mean"]
                      for s in (0, 1)]
        assert entry["seeds"] == 2 and entry["accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
        low, high = entry["accuracy_ci95"]
        assert low <= entry["accuracy_mean"] <= high
    assert [(p["setting"], p["method"], p["baseline"], p["seeds"]) for p in sweep["paired"]] == [
        ("joint_local=false", "fedgrow", "local_small", 2), ("joint_local=true", "fedgrow", "local_small", 2)]
    assert all(len(p["diff_ci95"]) == 2 for p in sweep["paired"])
    assert {(p["setting"], p["method"]) for p in sweep["paired_settings"]} == {
        ("joint_local=true", "fedgrow"), ("joint_local=true", "local_small")}
    assert sweep["command"].startswith("python launch.py ") and "commit" in sweep
    text = (out / "sweep.md").read_text()
    assert "### Paired differences: fedgrow minus each baseline" in text and sweep["command"] in text
    assert (out / "curves-joint_local=false.png").stat().st_size > 0

    # Resumed when complete: every run is reused as it is, and the statistics come out the same.
    runs_before = {r["path"]: snapshot(out / r["path"]) for r in sweep["runs"]}
    assert launch.main(["--resume", str(out)]) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert again["results"] == sweep["results"] and again["paired"] == sweep["paired"]
    assert {r["path"]: snapshot(out / r["path"]) for r in sweep["runs"]} == runs_before

    for run in sweep["runs"]:
        config = yaml.safe_load((out / run["path"] / "config.yaml").read_text())
        assert "sweep" not in config and config["seed"] == run["seed"]
        assert config["training"]["joint_local"] == run["path"].startswith("joint_local=true")
        alone = tmp_path / "alone" / run["path"]
        assert launch.main([str(out / run["path"] / "config.yaml"), "--out", str(alone), "--cache", cache]) == 0
        expected = json.loads((alone / "summary.json").read_text())
        got = summaries[run["path"]]
        assert got["global_ligo_sha256"] == expected["global_ligo_sha256"]
        for method in ("fedgrow", "local_small"):
            for key in ("accuracy_mean", "per_participant_accuracy", "bytes_up_total", "flops_total"):
                assert got["methods"][method][key] == expected["methods"][method][key], (run["path"], key)


@pytest.mark.slow  # five runs one after another and two sweeps: over the default run's time budget
def test_an_interrupted_sweep_continues_and_reuses_what_completed(ray_session, cache, tmp_path):
    """Guards resume: after one run's driver died and Ctrl-C stopped the sweep, the same sweep
    reuses the completed run (its files untouched), resumes the failed one from its checkpoint
    and starts the one that was interrupted before its first checkpoint."""
    out = tmp_path / "sweep"
    # One host of two CPUs per run: the runs go one after another. Each participant sleeps its
    # simulated time, about 13 s a round on devices 500 times slower than the default: Tune
    # stops a trial up to ~10 s after a Ctrl-C (it waits 5 s for the trial to stop itself), and
    # seed 2 must still be in its first round then.
    args = [scenario_file(tmp_path), "--seeds", "3", "--set", "rounds=2", "--set", "hosts.actors=1",
            "--set", "hosts.num_cpus=2", "--set", "hosts.sleep=true", "--set", "devices.reference_gflops=0.1",
            "--out", str(out), "--cache", cache]
    runs = [out / "default" / f"seed-{s}" for s in range(3)]

    def wait_for(condition):
        end = time.monotonic() + 900
        while not condition():
            assert time.monotonic() < end
            time.sleep(0.05)

    def interrupt():
        wait_for(lambda: read_status(runs[0]).get("status") == "completed" and (runs[1] / "checkpoint.pt").is_file())
        drivers = [a["name"] for a in ray_session.util.list_named_actors(all_namespaces=True)
                   if a["name"].startswith("fedgrow-driver-")]
        ray_session.kill(ray_session.get_actor(drivers[0]))  # seed 1's driver dies after a checkpoint
        wait_for(lambda: (runs[2] / "status.json").is_file())
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as seed 2 starts: Tune stops its trial

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    assert launch.main(args) == 1
    watcher.join()
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in sweep["runs"]] == ["completed", "failed", "failed"]
    assert sweep["runs"][1]["error"].startswith("the driver actor died") and sweep["runs"][2]["error"] == "interrupted"
    assert not (runs[2] / "checkpoint.pt").exists()
    kept = snapshot(runs[0])

    assert launch.main(args) == 0  # the same command again
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in sweep["runs"]] == ["completed"] * 3
    assert snapshot(runs[0]) == kept
    assert "resuming after fedgrow round" in (runs[1] / "events.log").read_text()
    assert "resuming" not in (runs[2] / "events.log").read_text()
    assert sweep["results"][0]["seeds"] == 3
