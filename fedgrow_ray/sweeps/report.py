"""What a sweep shows a reader: sweep.md (Markdown tables to paste as they are), one figure
of accuracy against round, bytes and FLOPs per setting, with 95% bands over seeds, and the same
accuracy curves as TensorBoard events."""

from __future__ import annotations

import io

import yaml
from pathlib import Path

from ..outputs import atomic_write
from ..tracking import write_sweep_events
from .stats import REFERENCE_METHOD, t_interval

ACCURACY = ".3f"


def _interval(mean, interval, fmt=lambda v: format(v, ACCURACY)) -> str:
    if mean is None:
        return "–"
    if interval is None:
        return f"{fmt(mean)} [n/a]"
    return f"{fmt(mean)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def _scaled(entry: dict, name: str, units: tuple) -> str:
    """A mean and its interval in one unit chosen by the mean's size: 3.41 [3.39, 3.43] TFLOP."""
    mean, interval = entry[f"{name}_mean"], entry[f"{name}_ci95"]
    if mean is None:
        return "–"
    label, scale = next(((label, scale) for label, scale in units if abs(mean) >= scale), units[-1])
    text = _interval(mean / scale, None if interval is None else [v / scale for v in interval],
                     lambda v: f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}")
    return f"{text} {label}".strip()


FLOP_UNITS = (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("FLOP", 1))
MIB = (("MiB", 2**20),)
PLAIN = (("", 1),)


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def _signed(value) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _paired_interval(interval) -> str:
    return "n/a" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def _difference(entry: dict | None) -> str:
    """A paired difference and its interval: +0.012 [-0.004, +0.028]."""
    if not entry or entry.get("diff_mean") is None:
        return "–"
    return f"{_signed(entry['diff_mean'])} {_paired_interval(entry['diff_ci95'])}"


def faulty_runs(document: dict) -> list[dict]:
    """The completed runs of a sweep in which participants failed (sweep.json runs[].participant_failures)."""
    return [r for r in document["runs"] if r.get("status") == "completed" and r.get("participant_failures")]


def sweep_markdown(document: dict) -> str:
    """sweep.md from sweep.json's content."""
    seeds = document["seeds"]
    has_global = any(r["global_accuracy_mean"] is not None for r in document["results"])
    lines = [f"## Sweep: {document['scenario']['name']} ({len(seeds)} seed{'s' * (len(seeds) != 1)}: "
             f"{', '.join(map(str, seeds))})", ""]
    for setting in document["settings"]:
        rows = [r for r in document["results"] if r["setting"] == setting["name"]]
        values = ", ".join(f"`{k}={_yaml(v)}`" for k, v in setting["values"].items())
        lines += [f"### Setting {setting['name']}" + (f" ({values})" if values else ""), ""]
        if not rows:
            lines += ["No run of this setting completed.", ""]
            continue
        lines += [
            "| method | seeds | accuracy | macro precision | spread across participants "
            + ("| global accuracy " if has_global else "")
            + "| majority-class ref. | sent (up + down) | FLOPs | rounds | simulated time (s) |",
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if has_global else "")]
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['seeds']} | {_interval(r['accuracy_mean'], r['accuracy_ci95'])} "
                f"| {_interval(r['macro_precision_mean'], r['macro_precision_ci95'])} "
                f"| {_interval(r['accuracy_std_mean'], r['accuracy_std_ci95'])} "
                + (f"| {_interval(r['global_accuracy_mean'], r['global_accuracy_ci95'])} " if has_global else "")
                + f"| {_interval(r['majority_accuracy_mean'], r['majority_accuracy_ci95'])} "
                f"| {_scaled(r, 'bytes', MIB)} | {_scaled(r, 'flops', FLOP_UNITS)} "
                f"| {_scaled(r, 'rounds', PLAIN)} | {_scaled(r, 'sim_time_s', PLAIN)} |")
        lines.append("")
    if document["paired"]:
        lines += [f"### Paired differences: {REFERENCE_METHOD} minus each baseline", "",
                  f"| setting | baseline | accuracy [95% interval] | seeds | {REFERENCE_METHOD} ahead "
                  f"| macro precision | spread across participants |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['setting']} | {p['baseline']} | {_difference(p)} | {p['seeds']} "
                  f"| {p['wins']} of {p['seeds']} | {_difference(p.get('macro_precision'))} "
                  f"| {_difference(p.get('accuracy_std'))} |"
                  for p in document["paired"]]
        lines.append("")
    if document.get("paired_settings"):
        reference = document["paired_settings"][0]["reference_setting"]
        lines += [f"### Paired differences: each setting minus {reference} (same method)", "",
                  "| setting | method | accuracy [95% interval] | seeds | ahead | macro precision "
                  "| spread across participants |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['setting']} | {p['method']} | {_difference(p)} | {p['seeds']} "
                  f"| {p['wins']} of {p['seeds']} | {_difference(p.get('macro_precision'))} "
                  f"| {_difference(p.get('accuracy_std'))} |"
                  for p in document["paired_settings"]]
        lines.append("")
    lines.append(
        "Each cell: mean over seeds [95% t-interval over seeds]; n/a with one seed. Accuracy and macro "
        "precision: mean over participants, each on its own test split, after the last round; spread "
        "across participants: their standard deviation. "
        + ("Global accuracy: each participant's model on the shared global test set. " if has_global else "")
        + "Majority-class ref.: each participant always predicting its training split's most frequent "
        "label. Sent: uploads plus downloads of every participant. Paired differences: per seed, the mean "
        "over participants scored in both of (first - second), then mean and 95% t-interval over seeds "
        "(the spread: per seed, the difference of the two standard deviations; negative = less spread); "
        "ahead: seeds with a positive accuracy difference.")
    faulty = faulty_runs(document)
    if faulty:
        lines += ["", "Runs in these tables in which participants failed (injected faults, a host lost "
                  "for good, or no answer within hosts.round_timeout_s; each run's events.log says which): "
                  + "; ".join(f"{r['path']} ({r['participant_failures']})" for r in faulty)
                  + ". Their figures are of a run with faults."]
    failed = [r for r in document["runs"] if r.get("status") != "completed"]
    if failed:
        lines += ["", "Runs not in these tables: " + "; ".join(
            f"{r['path']} {r.get('status')}" + (f" ({r['error']})" if r.get("error") else "") for r in failed)]
    commit = document.get("commit")
    lines += ["", f"Made by `{document['command']}` with fedgrow-ray at commit "
              f"{commit[:12] if commit else 'unknown'}" + (" (with uncommitted changes)" if document.get("dirty")
                                                            else "") + ".", ""]
    return "\n".join(lines)


def _curves(rows: list[dict], method: str) -> dict:
    """{round: (MiB sent so far, FLOPs so far, accuracy)} of one method in one run."""
    points, sent = {}, 0
    for r in rows:
        if r["method"] != method:
            continue
        sent += r["bytes_up"] + r["bytes_down"]
        if r.get("eval_accuracy") is not None:
            points[r["round"]] = (sent / 2**20, r.get("flops_total", 0.0), r["eval_accuracy"])
    return points


def _setting_series(runs: list[dict]) -> dict[str, dict[str, list]]:
    """Per method: by round, the mean over seeds of MiB sent, FLOPs and accuracy, and the
    accuracy's 95% t-interval (its ends equal the mean with one seed; `interval` None then)."""
    out = {}
    for method in dict.fromkeys(m for run in runs for m in run["summary"]["methods"]):
        per_seed = [_curves(run["rows"], method) for run in runs]
        series = {"round": [], "bytes": [], "flops": [], "mean": [], "low": [], "high": [], "interval": []}
        for r in sorted({r for points in per_seed for r in points}):
            at = [points[r] for points in per_seed if r in points]
            mean, interval = t_interval(p[2] for p in at)
            series["round"].append(r)
            series["bytes"].append(sum(p[0] for p in at) / len(at))
            series["flops"].append(sum(p[1] for p in at) / len(at))
            series["mean"].append(mean)
            series["low"].append(interval[0] if interval else mean)
            series["high"].append(interval[1] if interval else mean)
            series["interval"].append(interval)
        out[method] = series
    return out


def plot_setting(runs: list[dict], path: Path) -> None:
    """Accuracy against round, MiB sent and FLOPs, one line per method (the mean over seeds at
    each round, x too) and a band (the 95% t-interval over seeds, where there are two or more)."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, series in _setting_series(runs).items():
        for ax, x in zip(axes, ("round", "bytes", "flops")):
            line, = ax.plot(series[x], series["mean"], marker="o", label=method)
            ax.fill_between(series[x], series["low"], series["high"], color=line.get_color(), alpha=0.2)
    axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set(xlabel="round", ylabel="accuracy (mean over participants)", title="accuracy by round")
    axes[1].set(xlabel="MiB sent (up + down, all participants)", ylabel="accuracy",
                title="accuracy by communication")
    axes[2].set(xlabel="FLOPs (all participants, setup included)", ylabel="accuracy", title="accuracy by compute")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{path.stem.removeprefix('curves-')}: mean over {len(runs)} seed(s), band: 95% t-interval")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, image.getvalue())


def write_report(folder: Path, document: dict, runs: list[dict]) -> str:
    """sweep.md, curves-<setting>.png, the aggregate's TensorBoard events (fedgrow_ray.tracking)
    and, when measured, privacy.md and privacy.png in the sweep folder; returns the Markdown."""
    from ..privacy.report import write_privacy_report
    privacy = write_privacy_report(folder, runs)
    text = sweep_markdown(document) + (f"\n{privacy}" if privacy else "")
    atomic_write(folder / "sweep.md", text)
    for setting in document["settings"]:
        of_setting = [r for r in runs if r["setting"] == setting["name"]]
        if of_setting:
            plot_setting(of_setting, folder / f"curves-{setting['name']}.png")
    write_sweep_events(folder, sweep_curves(document, runs))
    return text


def sweep_curves(document: dict, runs: list[dict]) -> dict:
    """{setting: {method: [(round, mean accuracy over seeds, its 95% interval or None)]}}."""
    curves = {}
    for setting in document["settings"]:
        of_setting = [r for r in runs if r["setting"] == setting["name"]]
        if of_setting:
            curves[setting["name"]] = {
                method: list(zip(series["round"], series["mean"], series["interval"]))
                for method, series in _setting_series(of_setting).items()}
    return curves
