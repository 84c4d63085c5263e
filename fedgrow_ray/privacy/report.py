"""privacy.md and privacy.png of a sweep whose runs measure privacy (privacy.dp, privacy.attack,
privacy.secure_aggregation): per setting and method the epsilon spent, the accuracy, the
membership-inference AUCs (on the deployed models and on what the server holds) and what was
sent; and the figure of accuracy against epsilon for the methods that share."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..outputs import atomic_write
from ..sweeps.stats import t_interval

COLUMNS = (("epsilon", "dp_epsilon"), ("accuracy", "accuracy_mean"), ("MIA AUC (loss)", "mia_auc"),
           ("MIA AUC (calibrated)", "mia_calibrated_auc"), ("TPR @ 1% FPR", "mia_tpr_at_1fpr"),
           ("server MIA AUC", "server_mia_auc"), ("server MIA AUC (calibrated)", "server_mia_calibrated_auc"))


def _cell(values) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    mean, interval = t_interval(values)
    text = f"{mean:.3g}" if abs(mean) >= 10 else f"{mean:.3f}"
    return text if interval is None else f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _measures_privacy(runs: list[dict]) -> bool:
    return any(m.get("dp_epsilon") is not None or m.get("mia_auc") is not None
               for run in runs for m in run["summary"]["methods"].values())


def privacy_table(runs: list[dict]) -> str:
    """The Markdown table (mean over seeds [95% t-interval])."""
    settings = list(dict.fromkeys(run["setting"] for run in runs))
    head = ["setting", "method", "seeds", *[c for c, _ in COLUMNS], "sent", "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in settings:
        of_setting = [r for r in runs if r["setting"] == setting]
        methods = list(dict.fromkeys(m for r in of_setting for m in r["summary"]["methods"]))
        for method in methods:
            summaries = [r["summary"]["methods"][method] for r in of_setting if method in r["summary"]["methods"]]
            sent = [(m["bytes_up_total"] + m["bytes_down_total"]) / 2**20 for m in summaries]
            cells = [setting, method, str(len(summaries)), *[_cell([m.get(k) for m in summaries]) for _, k in COLUMNS],
                     f"{np.mean(sent):.1f} MiB", f"{np.mean([m['wall_s'] for m in summaries]):.0f} s"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    """Accuracy against epsilon (no DP drawn at the right, as infinity) per sharing method, and
    the membership AUCs per setting and method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = list(dict.fromkeys(m for r in runs for m in r["summary"]["methods"]))
    finite = [m["dp_epsilon"] for r in runs for m in r["summary"]["methods"].values() if m.get("dp_epsilon")]
    infinity = 10 ** math.ceil(math.log10(max(finite) * 3)) if finite else 1.0
    for method in methods:
        points = {}
        for run in runs:
            m = run["summary"]["methods"].get(method)
            if m is None or m.get("accuracy_mean") is None or (m.get("dp_epsilon") == 0.0):
                continue
            eps = m.get("dp_epsilon") or infinity
            points.setdefault(eps, []).append(m["accuracy_mean"])
        if len(points) > 1:
            xs = sorted(points)
            left.plot(xs, [np.mean(points[x]) for x in xs], marker="o", label=method)
    left.set_xscale("log")
    left.set_xlabel(f"epsilon spent (no DP drawn at {infinity:g}; settings at one epsilon averaged)")
    left.set_ylabel("accuracy (mean over participants)")
    left.set_title("privacy-utility")
    left.legend()
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    labels, deployed, server = [], [], []
    for setting in settings:
        for method in methods:
            ms = [r["summary"]["methods"][method] for r in runs
                  if r["setting"] == setting and method in r["summary"]["methods"]]
            values = [m.get("mia_calibrated_auc") for m in ms if m.get("mia_calibrated_auc") is not None]
            if values:
                labels.append(f"{setting}\n{method}")
                deployed.append(np.mean(values))
                served = [m.get("server_mia_calibrated_auc") for m in ms if m.get("server_mia_calibrated_auc") is not None]
                server.append(np.mean(served) if served else np.nan)
    x = np.arange(len(labels))
    right.bar(x - 0.2, deployed, 0.4, label="deployed model")
    right.bar(x + 0.2, server, 0.4, label="what the server holds")
    right.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    right.set_xticks(x, labels, rotation=90, fontsize=7)
    right.set_ylabel("calibrated membership-inference AUC")
    right.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_privacy_report(folder: Path, runs: list[dict]) -> str:
    """privacy.md and privacy.png in a sweep folder when its runs measure privacy; returns the
    Markdown section ("" otherwise)."""
    if not runs or not _measures_privacy(runs):
        return ""
    text = ("## Privacy\n\nPer setting and method, mean over seeds [95% t-interval]. Epsilon at each run's "
            "privacy.dp.delta (0: the method sends nothing; –: no DP). MIA: membership inference, members "
            "= a participant's training samples, non-members = its held-out test split; 0.5 is chance.\n\n"
            + privacy_table(runs) + "\n")
    atomic_write(folder / "privacy.md", text)
    plot(runs, folder / "privacy.png")
    return text
