#!/usr/bin/env python
"""Run a Fed-Grow experiment described by a scenario file, or a sweep of it.

    python launch.py [SCENARIO] [--set key=value ...] [--out DIR] [--address ADDR]
    python launch.py SCENARIO --seeds N [--grid KEY=V1,V2 ...] [--set ...] --out DIR [--address ADDR]
    python launch.py --resume RUN_DIR|SWEEP_DIR [--address ADDR]

Without --address a local Ray is started on 127.0.0.1 and stopped at the end; with --address
(auto or HOST:PORT) the run joins an existing cluster. --executor local runs every participant
in this process with no Ray at all (for debugging, and the baseline of bench/overhead.py).
--seeds / --grid / --variants (or a `sweep:` section in the scenario) run a sweep: every
(setting, seed) as a concurrent run on Ray (actors/sweep.py), then the statistics
(fedgrow_ray/sweeps).
Exit status: 0 done, 1 a run failed or was interrupted (its folder says why), 2 bad input
(nothing written: the scenario or run folder, the data, model checkpoints, --address and the
cluster's resources are all checked before a run or sweep folder is created).

`run(...)` below is the one entry point: this command line, the `fedgrow` console script
(pyproject [project.scripts]) and Python code (a notebook: `launch.run(scenario, ...)`) all
call it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The library (torch, transformers: seconds to import on a small machine) is imported where it is
# used, not here, so that the command line can start Ray while it imports (main).
LIBRARY = ("fedgrow_ray.config", "fedgrow_ray.data", "fedgrow_ray.experiment", "fedgrow_ray.outputs",
           "fedgrow_ray.sweeps", "actors.driver", "actors.placement", "actors.sweep")
DEFAULT_CACHE = "~/.cache/fedgrow_ray/data"  # fedgrow_ray.experiment.DEFAULT_CACHE, as text

ROOT = Path(__file__).resolve().parent


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """A one-line progress bar on a terminal; plain log lines otherwise. Each method's lines say
    how long it has run and, from the rounds done so far, about how long it has left (the first
    round, which also sets participants up, makes the first estimates high)."""

    def __init__(self, stream=None, clock=time.monotonic):
        stream = stream or sys.stderr  # the one at call time (a test may have replaced it)
        self.stream, self.tty = stream, stream.isatty()
        self.width = 0
        self.reported: set = set()
        self.clock = clock
        self.started: dict[str, tuple[float, float]] = {}  # method -> (time, rounds done) when first seen

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

    @staticmethod
    def _rounds_done(event: dict) -> float:
        if event.get("phase") == "end":
            return event["round"]
        return event["round"] - 1 + (event["done"] / event["running"] if event["running"] else 0)

    def timing(self, event: dict) -> str:
        """'elapsed T, about R left' for the event's method, timed from the first event of it
        this display saw (R once some of a round is done since then)."""
        done, now = self._rounds_done(event), self.clock()
        start, done_at_start = self.started.setdefault(event["method"], (now, done))
        elapsed, progressed = now - start, done - done_at_start
        text = f"elapsed {_duration(elapsed)}"
        if progressed > 0 and elapsed > 0:
            text += f", about {_duration(elapsed / progressed * max(0.0, event['rounds'] - done))} left"
        return text

    def update(self, event: dict) -> None:
        if not event:
            return
        self.started.setdefault(event["method"], (self.clock(), self._rounds_done(event)))
        accuracy = event.get("accuracy")
        acc = f"accuracy {accuracy:.3f}" if accuracy is not None else "accuracy –"
        head = f"{event['method']} round {event['round']}/{event['rounds']}"
        if self.tty:
            filled = int(20 * (event["round"] - 1 + (event["done"] / event["running"] if event["running"] else 1))
                         / event["rounds"])
            line = (f"{head} [{'#' * filled}{'.' * (20 - filled)}] participants "
                    f"{event['done']}/{event['running']}  {acc}  {self.timing(event)}")
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
            print(f"{head}: {event['done']}/{event['running']} participants done, {acc}, {self.timing(event)}",
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
    parser.add_argument("--out", help="run or sweep folder (default: runs/<scenario>-<timestamp> in the "
                                      "current folder)")
    parser.add_argument("--seeds", metavar="N",
                        help="sweep: run seeds 0..N-1 (default: the scenario's sweep.seeds)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep: one run per value (values read as YAML), crossed with other "
                             "--grid keys, e.g. --grid protocol=paper,reference-code")
    parser.add_argument("--variants", metavar="NAME,NAME",
                        help="sweep: run only these of the scenario's sweep.variants (default: all)")
    parser.add_argument("--address", help="join an existing Ray cluster: auto or HOST:PORT")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="ray (default) or local: every participant in this process, no Ray")
    parser.add_argument("--cache", default=DEFAULT_CACHE,
                        help=f"where prepared data is kept (default: {DEFAULT_CACHE})")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run from its last checkpoint, or a sweep")
    args = parser.parse_args(argv)
    if args.resume and (args.set or args.out or args.scenario or args.seeds or args.grid
                        or args.variants):
        parser.error("--resume takes the run folder only, or a sweep folder: it holds the scenario")
    return args


def run_with_ray(ray, scenario, cache, folder, progress, resume: bool = False) -> dict:
    from actors.driver import run_on_ray
    from actors.placement import ClusterPlacement

    def message(text):
        if "\n" not in text:  # tracebacks stay in events.log
            progress.message(text)

    # The driver on this node, so it writes the run folder launch.py shows.
    return run_on_ray(scenario, cache, folder, resume, ClusterPlacement.here(),
                      progress.update, message)


def run_locally(scenario, data_path, folder, progress, resume: bool = False) -> dict:
    from fedgrow_ray.rounds import LocalExecutor, run_in_folder

    def log(message):
        folder.log(message)
        progress.message(message)

    return run_in_folder(scenario, data_path, folder,
                         lambda location: LocalExecutor(scenario, str(data_path), state_dir=location),
                         log, progress.update, resume)


def pick_variants(variants: dict, names: str | None) -> dict:
    """The scenario's named variants, or only those --variants names (in the scenario's order)."""
    from fedgrow_ray.config import ScenarioError

    if not names:
        return variants
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in variants]
    if unknown or not wanted:
        allowed = ", ".join(variants) or "none: the scenario has no sweep.variants"
        raise ScenarioError(f"--variants {names}: {', '.join(unknown) or 'no name given'} is not one of "
                            f"the scenario's sweep.variants ({allowed})")
    return {n: v for n, v in variants.items() if n in wanted}


def parse_seeds(text: str) -> list[int]:
    from fedgrow_ray.config import ScenarioError

    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ScenarioError(f"--seeds {text}: expected a number of seeds >= 1 (seeds 0..N-1)")
    return list(range(count))


def parse_grid(items: list[str]) -> dict:
    """--grid KEY=V1,V2 ... -> {KEY: [V1, V2]}, each value read as YAML like --set's."""
    from fedgrow_ray.config import ScenarioError, read_yaml

    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        try:  # YAML 1.2 numbers, like --set's: 1e-3 is a float
            parsed = read_yaml(f"[{values}]", f"--grid {item!r}") if values.strip() else []
        except ScenarioError:
            parsed = None
        if not key.strip() or "=" not in item or not parsed or any(v is None for v in parsed):
            raise ScenarioError(f"--grid {item!r}: expected KEY=V1,V2,... with at least one value, "
                                f"e.g. --grid protocol=paper,reference-code")
        grid[key.strip()] = parsed
    return grid


def code_version() -> tuple[str | None, bool | None]:
    """The git commit of this code, and whether it has uncommitted changes (None, None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


class LaunchError(Exception):
    """What stops a run or a sweep, in one line, with the exit status launch.py gives it: 2 for
    bad input (nothing was written), 1 for a run that failed or was interrupted (its folder says
    why and how to resume)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _bad_input(err: BaseException) -> LaunchError:
    return LaunchError(f"error: {err}", 2)


def run(scenario: str | Path | dict | None = None, *, overrides=(), out=None, address: str | None = None,
        executor: str = "ray", cache=DEFAULT_CACHE, resume=None, seeds: int | None = None, grid=(),
        variants: str | None = None, progress: "Progress | None" = None, command: str | None = None) -> dict:
    """Run a scenario, or a sweep of it, and return what it found: the one entry point behind
    launch.py and the `fedgrow` console script, and the way to run one from Python or a notebook:

        summary = launch.run("scenarios/quickstart.yaml", overrides=["rounds=3"])
        summary["methods"]["fedgrow"]["accuracy_mean"]

    `scenario` is a YAML file or a mapping of scenario keys (default scenarios/quickstart.yaml);
    `overrides` are `--set` items ("key=value"); `out`, `address`, `executor`, `cache`,
    `resume`, `seeds` (a count), `grid` ("KEY=V1,V2" items) and `variants` ("NAME,NAME") are
    the flags of the same names. Returns summary.json's content for a run, sweep.json's for a
    sweep. Raises LaunchError (status 2: bad input, nothing written; 1: a run failed or was
    interrupted) after saying so on `progress` (stderr by default). A Ray this process is
    already connected to (ray.init in a notebook) is used as it is; otherwise a local one is
    started and stopped, or the cluster at `address` joined."""
    from fedgrow_ray.config import ScenarioError, load_sweep, read_scenario_file
    from fedgrow_ray.sweeps import SWEEP_FILE

    progress = progress or Progress()
    if executor not in ("ray", "local"):
        raise _bad_input(f"executor {executor!r} is not allowed; allowed: ray, local")
    if isinstance(scenario, Path):
        scenario = str(scenario)
    args = argparse.Namespace(
        scenario=scenario if isinstance(scenario, str) else None, set=list(overrides), out=out and str(out),
        seeds=None if seeds is None else str(seeds), grid=list(grid), variants=variants, address=address,
        executor=executor, cache=str(cache), resume=resume and str(resume))
    if command is None:
        command = _python_call(scenario, args)
    try:
        if args.resume and (Path(args.resume) / SWEEP_FILE).is_file():
            return _sweep(args, command, progress)
        section = None
        if not args.resume:
            if isinstance(scenario, dict):
                raw = {"name": "scenario", **scenario}
            else:
                raw = read_scenario_file(args.scenario or ROOT / "scenarios" / "quickstart.yaml")
            resolved, section = load_sweep(raw, args.set)
            if (args.seeds is not None or args.grid or args.variants or section["seeds"] is not None
                    or section["grid"] or section["variants"]):
                return _sweep(args, command, progress, resolved, section)
            scenario = resolved
    except (ScenarioError, ValueError) as err:
        raise _bad_input(err) from None
    return _run(args, progress, scenario if isinstance(scenario, dict) else None)


def _python_call(scenario, args) -> str:
    """How a run started from Python is recorded (sweep.json's `command`)."""
    what = "<mapping>" if isinstance(scenario, dict) else repr(scenario)
    given = {k: v for k, v in (("overrides", args.set), ("seeds", args.seeds), ("grid", args.grid),
                               ("variants", args.variants), ("out", args.out)) if v}
    return f"launch.run({', '.join([what] + [f'{k}={v!r}' for k, v in given.items()])})"


def _sweep(args, command: str, progress, scenario=None, section=None) -> dict:
    """A sweep: plan and check everything (bad input: nothing written), then run the runs left
    as Tune trials and write the statistics. Returns sweep.json's document."""
    from fedgrow_ray.config import ScenarioError, resolve_scenario
    from fedgrow_ray.data import DatasetUnavailable
    from fedgrow_ray.experiment import Experiment, prepare_scenario_data
    from fedgrow_ray.sweeps import SweepError, SweepFolder, SweepPlan

    try:
        if args.executor == "local":
            raise ScenarioError("--executor local runs one run in this process; a sweep runs on Ray")
        args.cache = str(Path(args.cache).expanduser().resolve())
        if args.resume:
            folder = SweepFolder(args.resume)
            held = folder.load()
            scenario, grid, seeds = resolve_scenario(held["scenario"]), held["grid"], held["seeds"]
            variants = held.get("variants", {})
            about = {k: held.get(k) for k in ("command", "scenario_file", "overrides")}
        else:
            seeds = parse_seeds(args.seeds) if args.seeds is not None else (section["seeds"] or [scenario["seed"]])
            grid = {**section["grid"], **parse_grid(args.grid)}
            variants = pick_variants(section["variants"], args.variants)
            out = args.out or Path("runs") / f"{scenario['name']}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
            folder = SweepFolder(out)
            about = {"command": command, "scenario_file": args.scenario, "overrides": args.set}
        plan = SweepPlan(scenario, grid, seeds, variants)
        folder.check(plan)
        todo = [r for r in plan.runs if r.action != "reuse"]
        progress.message(f"sweep: {len(plan.runs)} runs ({len(plan.settings)} setting(s) x {len(seeds)} "
                         f"seed(s)), {len(plan.runs) - len(todo)} already complete; preparing data ...")
        for run_ in todo:
            data_path = prepare_scenario_data(run_.scenario, args.cache)
            if run_.seed == plan.seeds[0]:  # a setting's model checkpoints, once
                Experiment(run_.scenario, data_path).check_inputs()
    except (ScenarioError, SweepError, DatasetUnavailable, ValueError) as err:
        raise _bad_input(err) from None
    about["commit"], about["dirty"] = code_version()
    from actors import cluster  # imports no Ray until start_or_join
    try:
        if todo and args.address:
            cluster.probe(args.address)
    except cluster.ClusterError as err:
        raise _bad_input(err) from None
    ray, started = cluster.start_or_join(args.address, ROOT) if todo else (None, False)
    interrupted = 0
    try:
        if todo:
            from actors.sweep import check_resources, run_sweep
            try:
                check_resources(plan)
            except ValueError as err:
                raise _bad_input(err) from None
            folder.begin(plan, about)
            progress.message(f"sweep folder: {folder.path}")
            interrupted = run_sweep(plan, folder, args.cache, progress.message)
        else:
            folder.begin(plan, about)
    except KeyboardInterrupt:  # a second Ctrl-C (Tune takes the first and stops the trials)
        interrupted = 1
    finally:
        if started:
            ray.shutdown()
    document, text = folder.conclude(plan, about)
    print(text)
    print(f"sweep folder: {folder.path}  (sweep.json, sweep.md, curves-<setting>.png, <setting>/seed-<s>/)")
    unfinished = [r for r in document["runs"] if r["status"] != "completed"]
    if interrupted:
        raise LaunchError(f"interrupted; resume with: python launch.py --resume {folder.path}", 1)
    if unfinished:
        raise LaunchError(f"{len(unfinished)} run(s) failed (see sweep.json); run the same command again "
                          f"to resume them: python launch.py --resume {folder.path}", 1)
    return document


def prepare(args, progress, scenario: dict | None = None):
    """Everything a run needs, checked before anything is written: the scenario (given, or the
    run folder's to resume), the data, model checkpoints, and Ray with the resources the
    scenario asks for. Returns (scenario, data path, ray or None, whether Ray was started here,
    run folder: the RunFolder to resume or the path of the one to create, and the checkpoint to
    resume from or None). Bad input raises; nothing has been written then."""
    from fedgrow_ray.config import resolve_scenario
    from fedgrow_ray.experiment import Experiment, prepare_scenario_data
    from fedgrow_ray.outputs import RunFolder

    checkpoint = None
    if args.resume:
        folder, raw, checkpoint = RunFolder.open_for_resume(args.resume)
        scenario = resolve_scenario(raw)
    else:
        folder = Path(args.out or Path("runs") / f"{scenario['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        RunFolder.check_new(folder)
    from actors import cluster  # imports no Ray until start_or_join
    if args.executor == "ray" and args.address:
        cluster.probe(args.address)
    args.cache = str(Path(args.cache).expanduser().resolve())  # actors run elsewhere

    def prepared_data():
        data_path = prepare_scenario_data(scenario, args.cache)
        Experiment(scenario, data_path).check_inputs()
        return data_path

    if args.executor != "ray":
        progress.status(f"preparing data ({scenario['data']['source']}) ...")
        return scenario, prepared_data(), None, False, folder, checkpoint
    # Ray starts (seconds of waiting on its processes) while another thread prepares and checks
    # the data; bad data still stops the command before anything is written, Ray shut down.
    progress.status(f"preparing data ({scenario['data']['source']}) and "
                    + (f"joining the Ray cluster at {args.address} ..." if args.address else "starting Ray ..."))
    with ThreadPoolExecutor(1) as pool:
        data = pool.submit(prepared_data)
        ray, started = cluster.start_or_join(args.address, ROOT)
        try:
            data_path = data.result()
            from actors.placement import alive_nodes
            cluster.check_resources(scenario, alive_nodes())
        except BaseException:
            if started:
                ray.shutdown()
            raise
    return scenario, data_path, ray, started, folder, checkpoint


def _run(args, progress, scenario: dict | None) -> dict:
    """One run (or the resume of one) into its run folder; returns the summary."""
    from fedgrow_ray.config import ScenarioError
    from fedgrow_ray.data import DatasetUnavailable
    from fedgrow_ray.outputs import ResumeError, RunFolder, results_table

    ray, started = None, False
    try:
        try:
            scenario, data_path, ray, started, folder, checkpoint = prepare(args, progress, scenario)
            if args.resume:
                folder.continue_from(checkpoint)
            else:
                folder = RunFolder.create(folder, scenario)
        except (ScenarioError, ResumeError, DatasetUnavailable, ValueError, FileExistsError) as err:
            raise _bad_input(err) from None
        except KeyboardInterrupt:
            raise LaunchError("interrupted before the run started; nothing was written", 1) from None
        progress.message(f"run folder: {folder.path}")
        try:
            if args.executor == "local":
                summary = run_locally(scenario, data_path, folder, progress, bool(args.resume))
            else:
                summary = run_with_ray(ray, scenario, args.cache, folder, progress, bool(args.resume))
        except KeyboardInterrupt:
            folder.fail("interrupted")
            raise LaunchError(f"interrupted; resume with: python launch.py --resume {folder.path}", 1) from None
        except Exception as err:
            from actors.driver import driver_died, record_failure

            cause = record_failure(folder, err)
            if driver_died(err):
                kept = ("the run folder keeps its last checkpoint" if (folder.path / "checkpoint.pt").is_file()
                        else "no checkpoint was written yet, so a resume starts the run again")
                raise LaunchError(f"{cause}; {kept}: python launch.py --resume {folder.path}", 1) from None
            raise LaunchError(f"run failed: {err}\n(see {folder.path / 'events.log'}; resume with "
                              f"python launch.py --resume {folder.path})", 1) from None
    finally:
        if started:
            ray.shutdown()
    progress.message("")
    print(results_table(summary, folder.metrics()))
    print(f"run folder: {folder.path}  (summary.json, metrics.jsonl, results.md, curves.png)")
    return json.loads((folder.path / "summary.json").read_text())  # as written: JSON keys and values


def main(argv=None) -> int:
    """The command line (launch.py, and the `fedgrow` console script): parse the flags and `run`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    progress = Progress()
    ray, started = None, False
    if args.executor == "ray" and not args.address:
        # A local Ray starts (seconds of its own processes) while another thread imports the
        # library (seconds of torch and transformers), instead of after it; `run` finds it
        # started. Bad input still ends in one line, only later by the difference.
        from actors import cluster

        progress.status("starting Ray ...")
        ray, started = cluster.start_while_importing(LIBRARY, ROOT)
    try:
        run(args.scenario, overrides=args.set, out=args.out, address=args.address, executor=args.executor,
            cache=args.cache, resume=args.resume, seeds=args.seeds, grid=args.grid, variants=args.variants,
            progress=progress, command="python launch.py " + shlex.join(argv))
    except LaunchError as err:
        progress.message(str(err))
        return err.status
    finally:
        if started:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
