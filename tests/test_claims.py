"""The README's Results generator: verdicts by the stated rule, tables from sweep statistics, and
the README section replaced between its markers only."""

import pytest

from conftest import TINY
from fedgrow_ray.config import resolve_scenario
from fedgrow_ray.sweeps import summarise
from fedgrow_ray.sweeps.claims import BEGIN, END, _wall, claims_table, main, results_section, update_readme, verdict


def test_verdict_follows_the_interval():
    """Guards the verdict rule: holds only with the whole interval on the claimed side."""
    assert verdict({"diff_mean": 0.02, "diff_ci95": [0.01, 0.03]}) == "holds"
    assert verdict({"diff_mean": -0.02, "diff_ci95": [-0.03, -0.01]}) == "does not hold"
    assert verdict({"diff_mean": 0.01, "diff_ci95": [-0.01, 0.03]}) == "inconclusive"
    assert verdict({"diff_mean": -0.02, "diff_ci95": [-0.03, -0.01]}, direction=-1) == "holds"
    assert verdict({"diff_mean": 0.02, "diff_ci95": None}).startswith("inconclusive")
    assert verdict(None).startswith("inconclusive")


def _method(accuracy: dict, trainable: int, sent: int, spread: float) -> dict:
    return {"accuracy_mean": sum(accuracy.values()) / len(accuracy), "accuracy_std": spread,
            "macro_precision_mean": 0.5, "global_accuracy_mean": None, "majority_accuracy_mean": 0.4,
            "bytes_up_total": sent, "bytes_down_total": sent, "flops_total": 1e12, "rounds": 10,
            "sim_time_s": 5.0, "trainable_params_per_participant": trainable, "shared_params": 10,
            "per_participant_accuracy": accuracy, "per_participant_macro_precision": accuracy}


def _document() -> dict:
    runs = []
    for seed, lift in enumerate((0.02, 0.03, 0.025)):
        runs.append({"setting": "paper", "seed": seed, "summary": {"methods": {
            "fedgrow": _method({"0": 0.7 + lift, "1": 0.6 + lift}, 200, 100, 0.05),
            "fedavg_scratch": _method({"0": 0.7, "1": 0.6}, 400, 300, 0.05 + lift),
            "independent_growth": _method({"0": 0.7 + lift, "1": 0.6 + lift - 0.01 * seed}, 200, 0, 0.05)}}})
        runs.append({"setting": "equal-flops", "seed": seed, "summary": {"methods": {
            "fedgrow": _method({"0": 0.7, "1": 0.6}, 200, 100, 0.05),
            "local_small": _method({"0": 0.7 + lift, "1": 0.6 + lift}, 100, 0, 0.05)}}})
        if seed < 2:  # a setting with fewer seeds done (a sweep stopped early)
            runs.append({"setting": "joint", "seed": seed, "summary": {"methods": {
                "fedgrow": _method({"0": 0.6, "1": 0.5}, 250, 100, 0.05),
                "independent_growth": _method({"0": 0.65, "1": 0.55}, 250, 0, 0.05)}}})
        runs.append({"setting": "equal-bytes", "seed": seed, "summary": {"methods": {
            "fedgrow": _method({"0": 0.7, "1": 0.6}, 200, 300, 0.05),
            "fedavg_scratch": _method({"0": 0.7 + lift, "1": 0.6 + lift}, 400, 300, 0.05)}}})
    scenario = resolve_scenario(TINY)
    return {"command": "python launch.py tiny.yaml", "commit": "0" * 40, "dirty": False, "seeds": [0, 1, 2],
            "scenario": scenario, "settings": [{"name": "paper", "values": {}},
                                               {"name": "joint", "values": {"training.joint_local": True}},
                                               {"name": "equal-bytes", "values": {"budget.bytes": 6e8}},
                                               {"name": "equal-flops", "values": {"budget.flops": 1e12}}],
            "runs": [{"path": f"{r['setting']}/seed-{r['seed']}", "status": "completed", "started": 0.0,
                      "ended": 3600.0} for r in runs],
            **summarise(runs, ["paper", "joint", "equal-bytes", "equal-flops"])}


def test_wall_time_counts_overlapping_runs_once_and_leaves_out_a_pause():
    """Guards the sweep's stated wall time: two runs side by side count once, and the hours
    between a stop and a resume are not counted."""
    runs = [{"started": 0, "ended": 3600}, {"started": 1800, "ended": 5400},   # 1.5 h side by side
            {"started": 36000, "ended": 37800}, {"pending": True}]          # resumed 8.5 h later
    assert _wall({"runs": runs}) == "2.0 h"
    assert _wall({"runs": [{"status": "pending"}]}) == "–"


def test_claims_table_states_what_was_measured_and_the_verdict():
    """Guards the claims table: each row's figure comes from the sweep's paired statistics and its
    verdict from the rule; counted reductions are compared with the paper's figures."""
    table = "\n".join(claims_table({"toy": _document()}))
    assert "| higher accuracy than fedavg_scratch | toy | +0.025 [" in table
    assert table.count("| higher accuracy than fedavg_scratch | toy |") == 1
    row = next(line for line in table.splitlines() if line.startswith("| higher accuracy than fedavg_scratch"))
    assert row.endswith("| holds |")
    spread = next(line for line in table.splitlines() if line.startswith("| less spread across participants than fedavg_scratch"))
    assert spread.endswith("| holds |")  # fedgrow's spread is lower in every seed
    assert "50.0% fewer than fedavg_scratch's full model" in table and "fewer, by less than claimed" in table
    assert "66.7% fewer bytes than fedavg_scratch" in table and "less, by less than claimed" in table
    equal = next(line for line in table.splitlines() if line.startswith("| comparable accuracy under the same"))
    assert "-0.025 [" in equal and "does not hold" in equal
    compute = next(line for line in table.splitlines() if "at the same compute" in line)
    assert "as accurate as local_small" in compute and "fedgrow - local_small: -0.025 [" in compute
    assert compute.endswith("| does not hold |")


def test_the_readme_section_is_replaced_between_its_markers_only(tmp_path):
    """Guards the README update: only the text between the markers changes; no markers, no write."""
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n## Results\n\n{BEGIN}\nstale table\n{END}\n\n## After\nkept\n")
    section = results_section({"toy": _document()})
    update_readme(readme, section)
    text = readme.read_text()
    assert text.startswith("# top\n\n## Results\n\n" + BEGIN) and text.endswith(f"{END}\n\n## After\nkept\n")
    assert "stale table" not in text and "### toy" in text and "Made by `python launch.py tiny.yaml` at commit 000000000000" in text
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="no '<!-- results:begin -->'"):
        update_readme(bare, section)
    assert bare.read_text() == "no markers\n"


def test_each_setting_says_how_many_seeds_it_has_and_budgets_read_plainly():
    """Guards the per-dataset tables: a setting with fewer seeds done than the sweep's says so in
    its row, its paired difference against its twin is there, and a budget is written as a
    number a person reads (6e+08, not 600000000.0)."""
    section = results_section({"toy": _document()})
    joint = next(line for line in section.splitlines() if line.startswith("| joint |"))
    assert joint.startswith("| joint | 2 | 0.550 [") and "| -0.050 [" in joint
    assert "| paper | 3 |" in section
    assert "**Equal communication** (`budget.bytes: 6e+08`;" in section


def test_a_missing_sweep_folder_is_one_line_and_exit_2(tmp_path, capsys):
    """Guards the command line: a folder without sweep.json is one line, exit 2."""
    assert main([f"text={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "sweep.json" in err and len(err.strip().splitlines()) == 1


def test_runs_in_which_participants_failed_are_named(tmp_path):
    """Guards against a table whose runs lost participants to faults (a round timeout under load,
    say) reading as the clean setting: the count comes from the run's events.log, and both the
    README section and sweep.md name the run."""
    from fedgrow_ray.sweeps.plan import participant_failures
    from fedgrow_ray.sweeps.report import sweep_markdown

    folder = tmp_path / "paper" / "seed-1"
    folder.mkdir(parents=True)
    assert participant_failures(folder) == 0  # no log yet
    (folder / "events.log").write_text(
        "10:00:00 fedgrow round 1: participant 2 failed: no answer within hosts.round_timeout_s=600 s\n"
        "10:00:01 centralized evaluation: participant 0 failed: no answer within hosts.round_timeout_s=600 s\n"
        "10:00:02 fedgrow round 2: 10 participants, participant 3 was late\n")
    assert participant_failures(folder) == 2
    document = _document()
    clean = results_section({"toy": document})
    assert "participants failed" not in clean and "participants failed" not in sweep_markdown(document)
    document["runs"][0]["participant_failures"] = participant_failures(folder)
    flagged = results_section({"toy": document})
    assert "In 1 of these runs participants failed (paper/seed-0: 2;" in flagged
    assert "paper/seed-0 (2)" in sweep_markdown(document)


def _split(document: dict, settings: set, folder: str, command: str) -> dict:
    """The part of a sweep document with only `settings`, as if swept on its own."""
    part = {**document, "folder": folder, "command": command,
            "settings": [s for s in document["settings"] if s["name"] in settings]}
    for key in ("results", "paired", "paired_settings"):
        part[key] = [item for item in document.get(key, []) if item["setting"] in settings]
    part["runs"] = [r for r in document["runs"] if r["path"].split("/")[0] in settings]
    return part


def test_one_dataset_from_two_sweep_folders_reads_as_one(tmp_path):
    """Guards the Results made from two sweeps of one dataset (the paper setting, and the equal
    budgets run later): given as text=A text=B, the section equals the one made from a single
    sweep of all the settings, except that it names both commands; overlapping settings or two
    different scenarios are one line and exit 2, never a silent mix."""
    import json

    from fedgrow_ray.sweeps.claims import combine, load

    whole = {**_document(), "folder": "whole"}
    first = _split(whole, {"paper", "joint"}, "a", "python launch.py tiny.yaml --variants paper,joint")
    later = _split(whole, {"equal-bytes", "equal-flops"}, "b", "python launch.py tiny.yaml --variants equal-bytes,equal-flops")
    together = results_section({"toy": combine([first, later])})
    alone = results_section({"toy": whole})
    named = ("Made by `python launch.py tiny.yaml --variants paper,joint` at commit 000000000000 (settings paper, "
             "joint); and `python launch.py tiny.yaml --variants equal-bytes,equal-flops` at commit 000000000000 "
             "(settings equal-bytes, equal-flops)")
    assert named in together
    assert together.replace(named, "Made by `python launch.py tiny.yaml` at commit 000000000000") == alone
    for name, doc in (("a", first), ("b", later), ("c", first)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sweep.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "folder"}))
    assert load(tmp_path / "a")["folder"] == str(tmp_path / "a")
    assert main([f"toy={tmp_path / 'a'}", f"toy={tmp_path / 'c'}"]) == 2  # paper twice
    other = {**later, "scenario": {**later["scenario"], "participants": later["scenario"]["participants"] + 1}}
    with pytest.raises(ValueError, match="another scenario"):
        combine([first, other])


def test_a_setting_swept_without_the_paper_setting_is_not_paired_with_it():
    """Guards the protocol table's `setting - paper` columns: a sweep pairs each setting with its
    own first setting, so a sweep of `joint` alone (first: joint) or of joint beside another
    setting must not show that difference as `joint - paper`; the same settings swept beside
    paper do show it."""
    from fedgrow_ray.sweeps.claims import combine

    runs = []
    for seed in range(3):
        runs.append({"setting": "paper", "seed": seed, "summary": {"methods": {
            "fedgrow": _method({"0": 0.7, "1": 0.6}, 200, 100, 0.05),
            "independent_growth": _method({"0": 0.7, "1": 0.6}, 200, 0, 0.05)}}})
        for setting, accuracy in (("joint", 0.5), ("authors-init", 0.3 + 0.01 * seed)):
            runs.append({"setting": setting, "seed": seed, "summary": {"methods": {
                "fedgrow": _method({"0": accuracy, "1": accuracy}, 250, 100, 0.05),
                "independent_growth": _method({"0": accuracy, "1": accuracy}, 250, 0, 0.05)}}})
    whole = _document()
    base = {k: v for k, v in whole.items() if k not in ("results", "paired", "paired_settings")}
    settings = [{"name": "paper", "values": {}}, {"name": "joint", "values": {"training.joint_local": True}},
                {"name": "authors-init", "values": {"ligo.init": "authors"}}]

    def sweep(names, folder):
        part = [r for r in runs if r["setting"] in names]
        return {**base, "folder": folder, "settings": [s for s in settings if s["name"] in names],
                "runs": [{"path": f"{r['setting']}/seed-{r['seed']}", "status": "completed", "started": 0.0,
                          "ended": 60.0} for r in part], **summarise(part, names)}

    apart = results_section({"toy": combine([sweep(["paper"], "a"), sweep(["joint", "authors-init"], "b")])})
    row = next(line for line in apart.splitlines() if line.startswith("| authors-init |"))
    assert row.endswith("| not paired (swept apart) | not paired (swept apart) |")
    together = results_section({"toy": sweep(["paper", "joint", "authors-init"], "c")})
    row = next(line for line in together.splitlines() if line.startswith("| authors-init |"))
    assert "-0.340 [" in row and "not paired" not in row  # 0.31 - 0.65 (mean of 0.7, 0.6)
