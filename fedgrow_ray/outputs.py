"""The run folder: what a run leaves for a person to read and plot.

    config.yaml     the fully resolved scenario
    status.json     running / completed / failed (with the error)
    checkpoint.pt   the driver's state at its last checkpoint (shared state, round, totals)
    participant_state/  participants' private state (versions named by the driver's checkpoint,
                    and spill files), written by their hosts, never by the driver; elsewhere
                    with hosts.state_uri
    metrics.jsonl   one JSON object per round per method, appended as rounds finish
    tensorboard/    the same rows as TensorBoard events, a folder per method (fedgrow_ray.tracking)
    events.log      notices: exclusions, failures, rejected updates, empty rounds
    summary.json    per-method results (written when the run completes)
    results.md      a table of the summary
    curves.png      accuracy against round, bytes sent and FLOPs, one line per method

Every file but the append-only logs (metrics.jsonl, events.log, and tensorboard/'s events, which
a resume rebuilds from the rows it keeps) is written to a temporary name and renamed, so none is
ever half-written; a run that fails says so in status.json and keeps what it finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from pathlib import Path

import torch
import yaml

from .config import ScenarioError, read_yaml
from .tracking import RunTracker


def atomic_write(path: Path, data: str | bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResumeError(ValueError):
    """A run folder cannot be resumed; the message says why."""


class RunFolder:
    CHECKPOINT = "checkpoint.pt"
    # The layout of checkpoint.pt; a checkpoint of another layout is refused on --resume, never
    # half-read. Raise it whenever what save_checkpoint writes or resume reads changes.
    CHECKPOINT_FORMAT = 2  # 2: participant state by version (state_id, versions)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows: int | None = None
        self._tracker: RunTracker | None = None  # opened by the first row recorded
        # Names this run's folder under hosts.state_uri; kept by the checkpoints, so that a
        # resumed run finds the same participant state.
        self.state_id = uuid.uuid4().hex[:12]

    @property
    def state_dir(self) -> Path:
        return self.path / "participant_state"

    def scenario_sha256(self) -> str:
        return hashlib.sha256((self.path / "config.yaml").read_bytes()).hexdigest()

    @staticmethod
    def config_text(scenario: dict) -> str:
        """config.yaml of a run of this scenario."""
        return yaml.safe_dump(scenario, sort_keys=False)

    @staticmethod
    def check_new(path: str | Path) -> None:
        """Raise FileExistsError unless `path` can become a new run folder (absent or empty)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"--out {str(path)!r} exists and is not empty; choose another folder")

    @classmethod
    def create(cls, path: str | Path, scenario: dict) -> "RunFolder":
        path = Path(path)
        cls.check_new(path)
        path.mkdir(parents=True, exist_ok=True)
        folder = cls(path)
        atomic_write(path / "config.yaml", cls.config_text(scenario))
        folder.set_status("running")
        return folder

    def set_status(self, status: str, **extra) -> None:
        atomic_write(self.path / "status.json",
                     json.dumps({"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra},
                                indent=2))

    def _append(self, name: str, line: str) -> None:
        with open(self.path / name, "a") as f:
            f.write(line + "\n")
            f.flush()

    def record(self, row: dict) -> None:
        if self._rows is None:
            self._rows = len(self.metrics())
        self._append("metrics.jsonl", json.dumps(_plain(row)))
        self._rows += 1
        if self._tracker is None:
            scenario = read_yaml((self.path / "config.yaml").read_text(), "config.yaml")
            self._tracker = RunTracker(self.path, {"trackers": [], **scenario})
        self._tracker.log(_plain(row))

    def _close_tracker(self, status: str) -> None:
        if self._tracker is not None:
            self._tracker.close(status)
            self._tracker = None

    # ---- checkpoints and resume ----------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """The driver's state after a round, with how many metrics rows it covers."""
        if self._rows is None:
            self._rows = len(self.metrics())
        state = {**state, "metrics_rows": self._rows, "scenario_sha256": self.scenario_sha256(),
                 "state_id": self.state_id, "checkpoint_format": self.CHECKPOINT_FORMAT}
        tmp = self.path / f".{self.CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path / self.CHECKPOINT)

    def has_checkpoint(self) -> bool:
        return (self.path / self.CHECKPOINT).is_file()

    def load_checkpoint(self) -> dict:
        path = self.path / self.CHECKPOINT
        if not path.is_file():
            raise ResumeError(f"{self.path} has no {self.CHECKPOINT}: the run stopped before its first "
                              f"checkpoint (or checkpoint_every is 0); start it again instead")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            reason = (str(err).splitlines() or [""])[0]
            raise ResumeError(f"{path} is unreadable ({type(err).__name__}: {reason}); the run cannot "
                              f"be resumed from it") from None
        if not isinstance(state, dict) or "scenario_sha256" not in state:
            raise ResumeError(f"{path} is not a fedgrow-ray checkpoint")
        if state.get("checkpoint_format") != self.CHECKPOINT_FORMAT:
            raise ResumeError(f"{path} has checkpoint format {state.get('checkpoint_format')!r}, written by "
                              f"another version of fedgrow-ray; this version reads format "
                              f"{self.CHECKPOINT_FORMAT}: resume it with the version that wrote it")
        if state["scenario_sha256"] != self.scenario_sha256():
            raise ResumeError(f"{path} was written for a different scenario: {self.path / 'config.yaml'} "
                              f"has changed since; restore it or start a new run")
        self.state_id = state["state_id"]
        return state

    @classmethod
    def open_for_resume(cls, path: str | Path) -> tuple["RunFolder", dict, dict | None]:
        """Read a run folder to continue it, writing nothing: (folder, scenario as written,
        checkpoint, or None when the run stopped before its first checkpoint: it starts again
        from the beginning). A ResumeError says why it cannot be resumed."""
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise ResumeError(f"--resume {str(path)!r} is not a run folder (no config.yaml)")
        folder = cls(path)
        try:
            status = json.loads((path / "status.json").read_text()).get("status") \
                if (path / "status.json").is_file() else None
        except (ValueError, AttributeError):
            raise ResumeError(f"{path / 'status.json'} is not readable JSON status; the run folder "
                              f"is damaged") from None
        if status == "completed":
            raise ResumeError(f"{path} is a completed run; there is nothing to resume")
        try:
            scenario = read_yaml((path / "config.yaml").read_text(), str(path / "config.yaml"))
        except ScenarioError as err:
            raise ResumeError(str(err)) from None
        if not isinstance(scenario, dict):
            raise ResumeError(f"{path / 'config.yaml'} is not a scenario (expected a mapping of keys)")
        state = folder.load_checkpoint() if folder.has_checkpoint() else None
        rows = folder.metrics()
        if state and len(rows) < state["metrics_rows"]:
            raise ResumeError(f"{path / 'metrics.jsonl'} has {len(rows)} rows but {cls.CHECKPOINT} "
                              f"covers {state['metrics_rows']}; the run folder is damaged")
        return folder, scenario, state

    def continue_from(self, state: dict | None) -> None:
        """Start continuing from a checkpoint (None: from the beginning): the metrics after it
        are dropped (those rounds run again) and the status is running again."""
        rows = self.metrics()[:state["metrics_rows"]] if state else []
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        RunTracker.rebuild(self.path, rows)
        self._rows = len(rows)
        self.set_status("running")

    @classmethod
    def for_resume(cls, path: str | Path) -> tuple["RunFolder", dict, dict | None]:
        """open_for_resume, then continue_from its checkpoint."""
        folder, scenario, state = cls.open_for_resume(path)
        folder.continue_from(state)
        return folder, scenario, state

    def log(self, message: str) -> None:
        self._append("events.log", f"{time.strftime('%H:%M:%S')} {message}")

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and not text.endswith("\n"):  # a run killed mid-write leaves a partial last line
            lines = lines[:-1]
        try:
            return [json.loads(line) for line in lines]
        except ValueError as err:
            raise ResumeError(f"{path} has a line that is not JSON ({err}); the run folder is "
                              f"damaged") from None

    def finish(self, summary: dict) -> None:
        """Write summary.json, results.md and curves.png, then mark the run completed."""
        rows = self.metrics()
        atomic_write(self.path / "summary.json", json.dumps(_plain(summary), indent=2))
        atomic_write(self.path / "results.md", results_table(summary, rows))
        plot_curves(rows, self.path / "curves.png")
        self._close_tracker("completed")
        self.set_status("completed")

    def fail(self, error: str) -> None:
        self._close_tracker("failed")
        self.log(f"run failed: {error}")
        self.set_status("failed", error=error)


def _plain(value):
    """JSON-safe: NaN/inf become null, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, spec: str = ".3f", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def _reduction(value, baseline) -> str:
    if value is None or not baseline:
        return ""
    return f" (-{100 * (1 - value / baseline):.1f}%)" if value <= baseline else \
        f" (+{100 * (value / baseline - 1):.1f}%)"


def format_flops(value) -> str:
    """FLOPs with an SI prefix: 3.41 TFLOP."""
    if value is None:
        return "–"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOP"
    return f"{value:.3g} FLOP"


def _budget(kind: str, value) -> str:
    if kind == "bytes":
        return f"{value / 2**20:,.2f} MiB"
    if kind == "flops":
        return format_flops(value)
    if kind == "sim_time_s":
        return f"{value:,.1f} s"
    return f"{value}"


def results_table(summary: dict, rows: list[dict]) -> str:
    """A Markdown table of every method, with changes against fedavg_scratch if it ran."""
    methods = summary["methods"]
    base = methods.get("fedavg_scratch", {})
    base_sent = base.get("bytes_up_total", 0) + base.get("bytes_down_total", 0) if base else None
    has_global = any(m.get("global_accuracy_mean") is not None for m in methods.values())
    lines = [
        f"# {summary['scenario']} (seed {summary['seed']})", "",
        "| method | rounds | accuracy (mean ± std) | majority-class ref. | macro precision "
        + ("| global accuracy " if has_global else "")
        + "| trainable params / participant | bytes sent | FLOPs | simulated time (s) | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if has_global else ""),
    ]
    for name, m in methods.items():
        sent = m["bytes_up_total"] + m["bytes_down_total"]
        trainable = m["trainable_params_per_participant"]
        against = {} if name == "fedavg_scratch" else base
        accuracy = _fmt(m["accuracy_mean"]) + ("" if m["accuracy_std"] is None else f" ± {m['accuracy_std']:.3f}")
        lines.append(
            f"| {name} | {m['rounds']} | {accuracy} | {_fmt(m.get('majority_accuracy_mean'))} "
            f"| {_fmt(m['macro_precision_mean'])} "
            + (f"| {_fmt(m.get('global_accuracy_mean'))} " if has_global else "")
            + f"| {_fmt(trainable, ',.0f')}{_reduction(trainable, against.get('trainable_params_per_participant'))} "
            f"| {sent / 2**20:,.1f} MiB{_reduction(sent, base_sent if against else None)} "
            f"| {format_flops(m.get('flops_total'))} "
            f"| {m['sim_time_s']:,.1f} | {m['wall_s']:.1f} |")
    lines += ["", "Accuracy and macro precision: mean over participants, each on its own test split "
              "(its label distribution), after the last round; ± is the spread across participants, "
              "not an interval. Majority-class ref.: each participant always predicting its training "
              "split's most frequent label, on the same splits."
              + (" Global accuracy: each participant's model on the shared global test set (the "
                 "centralized trainer's one model there)." if has_global else "")
              + " Bytes sent: uploads plus downloads of every participant. FLOPs and simulated time "
              "include pre-training, the local stage, LiGO generation and any fine-tuning."
              + (" (±x%): change against fedavg_scratch." if base else ""), ""]
    budgets = {name: m["budget"] for name, m in methods.items() if m.get("budget")}
    kinds = {b["kind"] for b in budgets.values()}
    if kinds and kinds != {"rounds"}:
        kind = kinds.pop()
        limit = next(iter(budgets.values()))["limit"]
        lines.append(f"Budget: {kind} {_budget(kind, limit)} per method (and at most the scenario's "
                     f"rounds); each method stopped at the last round within it. "
                     "Spent: " + ", ".join(f"{name} {_budget(kind, b['spent'])}" for name, b in budgets.items()))
        lines.append("")
    dropped = {k: sum(r.get(k, 0) for r in rows) for k in
               ("dropped_deadline", "unavailable", "excluded_memory", "failed", "rejected")}
    if any(dropped.values()):
        lines.append("Participant-rounds set aside over the run (all methods): " +
                     ", ".join(f"{k} {v}" for k, v in dropped.items()))
        lines.append("")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Accuracy against round, cumulative bytes sent and cumulative FLOPs, one line per method."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_round, by_bytes, by_flops) = plt.subplots(1, 3, figsize=(15, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        sent, xs, bs, fs, ys = 0, [], [], [], []
        for r in rows:
            if r["method"] != method:
                continue
            sent += r["bytes_up"] + r["bytes_down"]
            if r.get("eval_accuracy") is not None:
                xs.append(r["round"])
                bs.append(sent / 2**20)
                fs.append(r.get("flops_total", 0.0))
                ys.append(r["eval_accuracy"])
        by_round.plot(xs, ys, marker="o", label=method)
        by_bytes.plot(bs, ys, marker="o", label=method)
        by_flops.plot(fs, ys, marker="o", label=method)
    by_round.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    by_round.set(xlabel="round", ylabel="accuracy (mean over participants)", title="accuracy by round")
    by_bytes.set(xlabel="MiB sent (up + down, all participants)", ylabel="accuracy",
                 title="accuracy by communication")
    by_flops.set(xlabel="FLOPs (all participants, setup included)", ylabel="accuracy",
                 title="accuracy by compute")
    for ax in (by_round, by_bytes, by_flops):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
