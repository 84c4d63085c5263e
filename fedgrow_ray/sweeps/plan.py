"""What a sweep is made of, and its folder.

A sweep runs one scenario over several seeds and over its settings: the cartesian product of a
grid of other keys' values, crossed with named variants (each a set of overrides of its own, e.g.
`joint: {training.joint_local: true, methods: [fedgrow, independent_growth]}`). Each (setting, seed) is an ordinary run whose own config.yaml is the
plain run scenario (seed and grid values applied, no sweep section), in its own run folder:

    DIR/sweep.json                  the plan and, when runs finish, the statistics (see record)
    DIR/<setting>/seed-<s>/         a run folder, exactly as launch.py writes one alone
    DIR/.tune/                      the engine's own bookkeeping (actors/sweep.py)

`SweepPlan` resolves every run's scenario (bad keys and values raise ScenarioError before anything
is written). `SweepFolder.check` decides, without writing, what to do with each run folder found
in DIR: reuse it (completed, same config.yaml), resume it from its checkpoint (same config.yaml),
or start it; a folder of another sweep, or a run folder whose config.yaml differs from the one the
sweep would write, is refused (SweepError).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ScenarioError, resolve_grid, resolve_scenario, resolve_variants, set_key
from ..outputs import RunFolder, atomic_write
from .report import write_report
from .stats import summarise

SWEEP_FILE = "sweep.json"
TUNE_DIR = ".tune"


def participant_failures(folder: Path) -> int:
    """How many times a participant's work failed in a run (its events.log: an injected fault,
    a host that died for good, or no answer within hosts.round_timeout_s). A run with failures
    is a run with faults, not the clean setting its config names; reports say so."""
    log = folder / "events.log"
    if not log.is_file():
        return 0
    return len(re.findall(r": participant \d+ failed: ", log.read_text(errors="replace")))


class SweepError(ValueError):
    """A sweep folder cannot take this sweep; the message says why in one line."""


@dataclass(frozen=True)
class Setting:
    name: str            # readable and filesystem-safe, "default" when there is no grid
    values: dict         # grid key -> value


@dataclass
class PlannedRun:
    setting: str
    seed: int
    path: str            # relative to the sweep folder: <setting>/seed-<seed>
    scenario: dict       # the plain run scenario (what its config.yaml holds)
    action: str = "start"   # start, resume or reuse (SweepFolder.check)
    info: dict = field(default_factory=dict)  # status, error, started, ended, wall_s


def _slug(value) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, dict)):
        text = yaml.safe_dump(value, default_flow_style=True).strip()
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def setting_names(grid: dict, variants: dict | None = None) -> list[tuple[str, dict]]:
    """Every variant (in the order given) crossed with every combination of the grid's values,
    each with a name: the variant's name, then the grid's keys' last parts (the full key when two
    grid keys end alike) and the values; "default" with neither."""
    if variants:
        named = []
        for variant, overrides in variants.items():
            for name, values in _grid_names(grid):
                named.append((variant if name == "default" else f"{variant},{name}", {**overrides, **values}))
        return named
    return _grid_names(grid)


def _grid_names(grid: dict) -> list[tuple[str, dict]]:
    if not grid:
        return [("default", {})]
    keys = list(grid)
    last = [k.split(".")[-1] for k in keys]
    labels = [k if last.count(k.split(".")[-1]) > 1 else k.split(".")[-1] for k in keys]
    named, seen = [], set()
    for combination in itertools.product(*(grid[k] for k in keys)):
        name = ",".join(f"{label}={_slug(v)}" for label, v in zip(labels, combination))
        base, n = name, 2
        while name in seen:  # two values that read the same once made safe for a folder name
            name, n = f"{base}~{n}", n + 1
        seen.add(name)
        named.append((name, dict(zip(keys, combination))))
    return named


def _scenario_for(base: dict, values: dict, seed: int) -> dict:
    raw = copy.deepcopy(base)
    for key, value in values.items():
        set_key(raw, key.split("."), copy.deepcopy(value), f"sweep grid key '{key}'")
    raw["seed"] = seed
    try:
        return resolve_scenario(raw)
    except ScenarioError as err:
        where = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise ScenarioError(f"{err} (in the sweep setting {where})" if values else str(err)) from None


def plain(value):
    """As it reads back from JSON (tuples are lists, keys strings)."""
    return json.loads(json.dumps(value))


class SweepPlan:
    """The settings and runs of a sweep over `seeds` and `grid`, from a resolved run scenario."""

    def __init__(self, base: dict, grid: dict, seeds: list[int], variants: dict | None = None):
        if not seeds:
            raise ScenarioError("a sweep needs at least one seed")
        self.base, self.seeds = base, list(seeds)
        self.grid = resolve_grid(grid)  # --grid flags merged into sweep.grid: checked again
        self.variants = resolve_variants(variants or {})
        self.settings = [Setting(name, values) for name, values in setting_names(self.grid, self.variants)]
        self.runs = [PlannedRun(s.name, seed, f"{s.name}/seed-{seed}", _scenario_for(base, s.values, seed))
                     for s in self.settings for seed in self.seeds]

    def identity(self) -> dict:
        """What makes two sweeps the same sweep: the scenario (its seed aside) and the grid.
        The seeds may differ: a sweep run again with more seeds reuses the ones it has."""
        return plain({"scenario": {k: v for k, v in self.base.items() if k != "seed"}, "grid": self.grid,
                      "variants": self.variants})


def _current(scenario, seed=None):
    """A scenario written by this or an earlier version of the code, as this version resolves it
    (keys added since take their defaults, which keep the earlier behaviour), seed aside when
    `seed` stands in for it; what cannot be resolved is compared as written."""
    if not isinstance(scenario, dict):
        return scenario
    try:
        resolved = plain(resolve_scenario({**scenario, "seed": scenario.get("seed", seed)}))
    except ScenarioError:
        return scenario
    if seed is not None and "seed" not in scenario:
        resolved.pop("seed")
    return resolved


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


class SweepFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def sweep_file(self) -> Path:
        return self.path / SWEEP_FILE

    def load(self) -> dict:
        try:
            return json.loads(self.sweep_file.read_text())
        except (OSError, ValueError) as err:
            raise SweepError(f"{self.sweep_file} is unreadable ({type(err).__name__}); it is not a "
                             f"sweep folder this code can continue") from None

    def check(self, plan: SweepPlan) -> None:
        """Decide each run's action (start, resume, reuse) without writing anything; SweepError
        if the folder holds something else than this sweep."""
        if self.path.exists() and not self.path.is_dir():
            raise SweepError(f"--out {str(self.path)!r} is a file; choose a folder")
        if self.sweep_file.is_file():
            held = self.load()
            identity = held.get("identity", {})
            if {"scenario": _current(identity.get("scenario"), plan.base["seed"]), "grid": identity.get("grid"),
                    "variants": identity.get("variants", {})} != plan.identity():
                raise SweepError(f"{self.path} holds another sweep (scenario "
                                 f"{held.get('scenario', {}).get('name')!r}, grid {held.get('grid')}); "
                                 f"resume it with --resume {self.path} or choose another --out")
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise SweepError(f"--out {str(self.path)!r} exists and is not a sweep folder (no {SWEEP_FILE}); "
                             f"choose another folder")
        for run in plan.runs:
            run.action, run.info = self._action(run), {}

    def _action(self, run: PlannedRun) -> str:
        folder = self.path / run.path
        if not folder.is_dir() or not any(folder.iterdir()):
            return "start"
        try:
            held = yaml.safe_load((folder / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            held = None
        if _current(held) != _current(yaml.safe_load(RunFolder.config_text(run.scenario))):
            raise SweepError(f"{folder} is not the run this sweep would write (its config.yaml differs); "
                             f"move it away or choose another --out")
        if read_status(folder).get("status") == "completed" and (folder / "summary.json").is_file():
            return "reuse"
        if (folder / "checkpoint.pt").is_file():
            return "resume"
        return "start"  # stopped before its first checkpoint: nothing to keep

    def begin(self, plan: SweepPlan, about: dict) -> None:
        """Write sweep.json with the plan; clear the runs that start over; drop the engine's state
        of an earlier attempt (the run folders, not the engine, say what is done)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for run in plan.runs:
            if run.action == "start" and (self.path / run.path).exists():
                shutil.rmtree(self.path / run.path)
            if run.action == "reuse":
                run.info = {"status": "completed", **self._earlier_times(run)}
            else:
                run.info = {"status": "pending"}
        shutil.rmtree(self.path / TUNE_DIR, ignore_errors=True)
        self.record(plan, about)

    def _earlier_times(self, run: PlannedRun) -> dict:
        if not self.sweep_file.is_file():
            return {}
        for entry in self.load().get("runs", []):
            if entry.get("path") == run.path:
                return {k: entry[k] for k in ("started", "ended", "wall_s") if entry.get(k) is not None}
        return {}

    def finish_runs(self, plan: SweepPlan) -> None:
        """After the engine: each run's status from its own folder. A run left `running` was
        interrupted (its trial was stopped); its folder says so, as a single run's would."""
        for run in plan.runs:
            folder = self.path / run.path
            status = read_status(folder)
            if status.get("status") == "running":
                RunFolder(folder).fail("interrupted")
                status = read_status(folder)
            if status.get("status") in ("completed", "failed"):
                run.info["status"] = status["status"]
                if status.get("error"):
                    run.info["error"] = status["error"]
                else:
                    run.info.pop("error", None)
                run.info["participant_failures"] = participant_failures(folder)

    def record(self, plan: SweepPlan, about: dict, statistics: dict | None = None) -> dict:
        """Write sweep.json: how it was made, the plan, each run's status and the statistics."""
        document = {
            **about,
            "scenario": plan.base, "grid": plan.grid, "variants": plan.variants, "seeds": plan.seeds,
            "identity": plan.identity(),
            "settings": [{"name": s.name, "values": s.values} for s in plan.settings],
            "runs": [{"path": r.path, "setting": r.setting, "seed": r.seed, **r.info} for r in plan.runs],
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(statistics or {}),
        }
        document = plain(document)
        atomic_write(self.sweep_file, json.dumps(document, indent=2))
        return document

    def conclude(self, plan: SweepPlan, about: dict) -> tuple[dict, str]:
        """After the engine: statuses from the run folders, the statistics of the completed runs,
        sweep.json, sweep.md and the curves. Returns sweep.json's content and sweep.md."""
        self.finish_runs(plan)
        runs = self.completed_runs(plan)
        document = self.record(plan, about, summarise(runs, [s.name for s in plan.settings]))
        return document, write_report(self.path, document, runs)

    def completed_runs(self, plan: SweepPlan) -> list[dict]:
        """Setting, seed, summary and metrics rows of every completed run, in plan order."""
        out = []
        for run in plan.runs:
            if run.info.get("status") != "completed":
                continue
            folder = RunFolder(self.path / run.path)
            out.append({"setting": run.setting, "seed": run.seed,
                        "summary": json.loads((folder.path / "summary.json").read_text()),
                        "rows": folder.metrics()})
        return out
