#!/usr/bin/env python
"""The mutation check: break the code on purpose, one change at a time, and see that the tests
meant to guard each change fail.

    python bench/mutations.py                 # every break; about 30 minutes on 2 CPUs
    python bench/mutations.py -k aggregator   # the breaks whose name contains a word
    python bench/mutations.py --list          # the breaks and the tests that should catch them

Each break is a text substitution in one source file, applied to a temporary copy of the
working tree (the checkout is never modified, even on Ctrl-C), after which only the tests
named for that break run, with that copy first on PYTHONPATH (Ray workers inherit it). A
break is caught when those tests fail (pytest exit status 1); a copy that does not even
compile, or a test run that errors otherwise, is reported as such and not counted as caught.
First the named tests run once on the unbroken copy (skip with --no-baseline): they must pass,
or every "catch" would mean nothing. One line per break, then `caught=<n> of <m>`.

Why a hand-written list and not a mutation tool (mutmut, cosmic-ray): those generate
thousands of generic operator flips over a module and run the whole suite for each; here the
breaks that matter are specific (an aggregator ignored, a restored host starting fresh,
spilled participants kept in memory, a check skipped) and each has a few tests that must catch
it, so a short list runs in minutes and every line of it says what the tests guard.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Break:
    name: str
    path: str     # relative to the repository root
    old: str      # must occur exactly once in the file
    new: str
    tests: tuple  # pytest node ids or files; "-k EXPR" selects within them
    note: str = ""


R = "tests/test_reliability.py"
F = "tests/test_features.py"
B = "tests/test_bad_input.py"

BREAKS = [
    # ---- aggregation --------------------------------------------------------------------------
    Break("aggregator forced to fedavg", "fedgrow_ray/methods/base.py",
          'return get_aggregator(server["aggregator"])(updates, **options)',
          'return get_aggregator("fedavg")(updates)',
          (f"{R}::test_robust_aggregators_run",)),
    Break("fedavg ignores sample counts", "fedgrow_ray/aggregation.py",
          "total.add_(update[name].to(torch.float64), alpha=int(samples))",
          "total.add_(update[name].to(torch.float64), alpha=1)",
          ("tests/test_aggregation.py",)),
    Break("median takes the lower middle value", "fedgrow_ray/aggregation.py",
          "middle = (ordered[n // 2 - 1] + ordered[n // 2]) / 2",
          "middle = ordered[n // 2 - 1]",
          ("tests/test_aggregation.py",)),
    Break("trimmed mean trims nothing", "fedgrow_ray/aggregation.py",
          "drop = math.floor(trim_fraction * n)", "drop = 0",
          ("tests/test_aggregation.py", f"{R}::test_robust_aggregators_run")),
    Break("non-finite updates accepted", "fedgrow_ray/aggregation.py",
          "if (got.is_floating_point() or got.is_complex()) and not bool(torch.isfinite(got).all()):",
          "if False:",
          ("tests/test_aggregation.py::test_check_update",)),
    Break("update norm never checked", "fedgrow_ray/aggregation.py",
          "        if norm > max_norm:", "        if False:",
          ("tests/test_aggregation.py::test_check_update",)),
    Break("a lost upload is aggregated anyway", "fedgrow_ray/rounds.py",
          "            results.remove(lost_upload)\n", "            pass\n",
          (f"{F}::test_dropped_uploads_are_seeded_counted_and_never_aggregated",
           f"{F}::test_every_upload_lost_leaves_global_ligo_as_it_started")),
    Break("a lost upload is not counted in bytes_up", "fedgrow_ray/rounds.py",
          'bytes_up = sum(state_bytes(r["update"]) for r in results + lost)',
          'bytes_up = sum(state_bytes(r["update"]) for r in results)',
          (f"{F}::test_dropped_uploads_are_seeded_counted_and_never_aggregated",)),
    Break("the averaged intermediate model drifts after round 1 (frozen check)", "fedgrow_ray/rounds.py",
          "self.shared = {**self.shared, **aggregated}",
          "self.shared = {**{k: v * 1.0001 for k, v in self.shared.items()}, **aggregated}",
          ("tests/test_methods.py::test_reference_code_protocol_shares_the_averaged_intermediate_model_once",)),
    Break("one method's summary lacks a field (field-set comparison)", "fedgrow_ray/rounds.py",
          '"shared_params": sum(t.numel() for t in (self.shared or {}).values()),',
          '**({} if self.method.name == "local_small" else {"shared_params": 0}),',
          ("tests/test_methods.py::test_every_method_reports_the_same_fields",)),
    # ---- restore and spilling -----------------------------------------------------------------
    Break("a restarted host discards what it restores and starts fresh", "fedgrow_ray/participant.py",
          '                origin = {"state": "reloaded" if self.evicted.get(pid) == expected else "restored"}\n',
          '                origin = {"state": "reloaded" if self.evicted.get(pid) == expected else "restored"}\n'
          '                if origin["state"] == "restored":\n'
          '                    saved = None\n',
          (f"{R}::test_a_killed_participant_actor_is_restarted_and_its_participants_return",
           f"{R}::test_ray_kill_of_a_participant_actor_from_outside"),
          note="caught once the kill tests compare with the fault-free run (issue 11)"),
    Break("spilled participants also kept in memory", "fedgrow_ray/participant.py",
          "            old_pid, old = self.participants.popitem(last=False)\n",
          "            old_pid, old = self.participants.popitem(last=False)\n"
          "            self.__dict__.setdefault('kept', []).append(old)\n",
          ("tests/test_scale.py::test_a_host_keeps_at_most_max_resident_participants_in_memory",
           "tests/test_scale.py::test_stress_scenario_memory_follows_the_pool_not_the_participants")),
    # A participant evicted after training is reloaded from its stored version; the spill file
    # only keeps one never trained (rebuilding that one gives the same state, only slower).
    Break("a spilled participant is rebuilt instead of reloaded", "fedgrow_ray/participant.py",
          "saved, why = self.store.read(pid, expected)", 'saved, why = None, "not read"',
          ("tests/test_scale.py::test_a_spilled_participant_continues_from_its_state",
           "tests/test_scale.py::test_spilling_does_not_change_results")),
    Break("optimiser state lost on reload", "fedgrow_ray/methods/base.py",
          '        state.optimiser.load_state_dict(saved["optimiser"])\n', "",
          ("tests/test_scale.py::test_a_spilled_participant_continues_from_its_state",)),
    Break("a fine-tuned model reloads untrained", "fedgrow_ray/methods/base.py",
          '            model.load_state_dict(saved["finetuned"])\n', "",
          (f"{F}::test_a_fine_tuned_model_survives_spilling_and_a_resume_exactly",)),
    Break("fine-tuning skipped at the end", "fedgrow_ray/methods/base.py",
          "        steps = self.training[\"finetune_steps\"]\n        if not steps:",
          "        steps = self.training[\"finetune_steps\"]\n        if True:",
          (f"{F}::test_fine_tuning_changes_the_final_models_and_costs_its_flops",)),
    # ---- boundaries: methods, checkpoints, evaluation, resume ---------------------------------
    Break("a resume re-runs a finished method", "fedgrow_ray/rounds.py",
          "        if name in summaries:\n            continue\n",
          "        if False:\n            continue\n",
          (f"{F}::test_resume_across_a_method_boundary_is_exact",)),
    Break("a resume hands one method's state to the next", "fedgrow_ray/rounds.py",
          'snapshot = resume if resume and resume["method"] == name else None',
          "snapshot = resume",
          (f"{F}::test_resume_across_a_method_boundary_is_exact",)),
    Break("no checkpoint after the last round", "fedgrow_ray/rounds.py",
          "if checkpoint and every and (round_number % every == 0 or self.stopped):",
          "if checkpoint and every and round_number % every == 0:",
          (f"{F}::test_checkpoint_every_writes_on_schedule_and_resume_goes_back_to_the_last",)),
    Break("the last round is not evaluated", "fedgrow_ray/rounds.py",
          'evaluate = final or round_number % self.scenario["eval"]["every"] == 0',
          'evaluate = round_number % self.scenario["eval"]["every"] == 0',
          (f"{F}::test_eval_every_evaluates_on_schedule_and_after_the_last_round",)),
    Break("a resume keeps the rows after its checkpoint", "fedgrow_ray/outputs.py",
          'rows = self.metrics()[:state["metrics_rows"]]', "rows = self.metrics()",
          (f"{F}::test_checkpoint_every_writes_on_schedule_and_resume_goes_back_to_the_last",
           f"{F}::test_a_half_written_last_row_is_dropped_on_resume")),
    Break("a half-written last row is read as a row", "fedgrow_ray/outputs.py",
          'if lines and not text.endswith("\\n"):', "if False:",
          (f"{F}::test_a_half_written_last_row_is_dropped_on_resume",)),
    # ---- validation and bad input -------------------------------------------------------------
    Break("YAML 1.1 numbers (1e-3 a string)", "fedgrow_ray/config.py",
          "return yaml.load(text, Loader=_Loader)", "return yaml.safe_load(text)",
          ("tests/test_config.py -k exponent",)),
    Break("a YAML error printed as PyYAML's several lines", "fedgrow_ray/config.py",
          'raise ScenarioError(f"{where} is not valid YAML{at}: "',
          'raise ScenarioError(f"{where} is not valid YAML: {err}"',
          (f"{B} -k YAML",)),
    Break("a bad update naming nobody is accepted", "fedgrow_ray/config.py",
          'if who == "participant" and fault[who] >= s["participants"]:', "if False:",
          (f"{B} -k 'bad and update and nobody'",)),
    Break("model checkpoints not checked before the run", "launch.py",
          "    Experiment(scenario, data_path).check_inputs()\n", "",
          (f"{B} -k checkpoint and not resume",)),
    Break("cluster resources not checked before the run folder", "launch.py",
          "            cluster.check_resources(scenario, alive_nodes())\n",
          "            pass\n",
          (f"{B} -k cluster",)),
    Break("the run folder is created before the checks", "launch.py",
          "        RunFolder.check_new(folder)\n", "        RunFolder.create(folder, scenario)\n",
          (f"{B} -k 'checkpoints or wide or cluster'",)),
    Break("a resume marks the folder running before its checks", "fedgrow_ray/outputs.py",
          "        folder = cls(path)\n        try:\n",
          "        folder = cls(path)\n        folder.set_status(\"running\")\n        try:\n",
          (f"{B} -k resume",)),
    Break("a checkpoint of another version is read", "fedgrow_ray/outputs.py",
          'if state.get("checkpoint_format") != self.CHECKPOINT_FORMAT:', "if False:",
          (f"{B} -k version",)),
    Break("--address not probed (Ray retries)", "launch.py",
          '    if args.executor == "ray" and args.address:\n        cluster.probe(args.address)\n',
          '    if args.executor == "ray" and args.address:\n        pass\n',
          (f"{B}::test_a_wrong_address_fails_at_once_from_the_command_line",)),
]


def copy_tree(into: Path) -> None:
    """The working tree as it is (tracked and untracked files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def pytest_args(tests: tuple) -> list[str]:
    args = []
    for spec in tests:
        target, _, select = spec.partition(" -k ")
        args.append(target)
        if select:
            args += ["-k", select.strip("'")]
    return args


def run_tests(tree: Path, tests: tuple, timeout_s: float) -> tuple[int, str]:
    """pytest on `tests` in `tree` (its own process group): (exit status, last line)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *pytest_args(tests)]
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return -1, f"timed out after {timeout_s:.0f} s"
    except BaseException:  # Ctrl-C: stop the tests (and the Ray they started) before leaving
        os.killpg(process.pid, signal.SIGKILL)
        raise
    lines = [line for line in output.splitlines() if line.strip()]
    return process.returncode, (lines[-1] if lines else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="word", help="only the breaks whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the breaks and their tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unbroken copy")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    args = parser.parse_args(argv)
    breaks = [b for b in BREAKS if not args.word or args.word in b.name]
    if args.list:
        for b in breaks:
            print(f"{b.name}  [{b.path}]  ->  {' '.join(b.tests)}" + (f"  ({b.note})" if b.note else ""))
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedgrow-mutations-") as scratch:
        tree = Path(scratch)
        copy_tree(tree)
        for b in breaks:  # a stale list is an error, not a silent miss
            if (tree / b.path).read_text().count(b.old) != 1:
                print(f"error: {b.name}: the text to break does not occur exactly once in {b.path}")
                return 2
        if not args.no_baseline:
            every = list(dict.fromkeys(spec for b in breaks for spec in b.tests))
            runs = [tuple(s for s in every if " -k " not in s)] + [(s,) for s in every if " -k " in s]
            for tests in filter(None, runs):
                status, last = run_tests(tree, tests, args.timeout)
                if status != 0:
                    print(f"error: without any break, {' '.join(tests)} gives: {last}")
                    return 2
            print(f"baseline: the {len(every)} test selections pass unbroken "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
        caught = 0
        for b in breaks:
            path = tree / b.path
            original = path.read_text()
            path.write_text(original.replace(b.old, b.new))
            try:
                py_compile.compile(str(path), doraise=True)
                began = time.monotonic()
                status, last = run_tests(tree, b.tests, args.timeout)
                verdict = {1: "caught"}.get(status, f"NOT CAUGHT ({last})" if status == 0 else f"ERROR ({last})")
            except py_compile.PyCompileError as err:
                verdict, began = f"ERROR (the break does not compile: {err.msg.splitlines()[-1]})", time.monotonic()
            finally:
                path.write_text(original)
            caught += verdict == "caught"
            print(f"{verdict:<12} {b.name} [{b.path}] ({time.monotonic() - began:.0f} s)"
                  + (f" -- {b.note}" if b.note and verdict != "caught" else ""), flush=True)
    print(f"wall time {time.monotonic() - started:.0f} s")
    print(f"caught={caught} of {len(breaks)}")
    return 0 if caught == len(breaks) else 1


if __name__ == "__main__":
    sys.exit(main())
