"""Statistics of a sweep: means over seeds with 95% intervals, and paired differences.

Intervals are Student-t intervals over seeds (scipy.stats.t): mean ± t(0.975, n-1) · s / √n, with
s the sample standard deviation (n-1) of the per-seed values. The seeds are the independent
replications (each draws its own data partition, models, device profiles and sampling); the
participants of one seed share that run (one partition, one Global-LiGO) and are correlated, so
they are first averaged within the seed and never counted as replications. One seed gives no
interval: null in sweep.json, "n/a" in sweep.md.

Paired differences compare like with like: for fedgrow against a baseline in the same setting,
per seed the mean over participants of (fedgrow_i - baseline_i), from each run's
summary.json `per_participant_accuracy`, over the participants both were scored on; then the
mean and t-interval of those per-seed differences, the number of seeds, and in how many seeds
fedgrow was ahead; and beside it, the same for macro precision and global accuracy (per
participant) and for the spread across participants (accuracy_std, one value per seed).
`paired_settings` does the same for one method between a setting and the
sweep's first setting (e.g. joint_local=true against false). That pairing by seed and
participant id is meaningful when the grid leaves the data partition alone (a grid over
`participants` or `data.*` gives other participants the same ids).
"""

from __future__ import annotations

import math
import statistics

from scipy import stats as scipy_stats

REFERENCE_METHOD = "fedgrow"


def _sent(m: dict):
    return m["bytes_up_total"] + m["bytes_down_total"]


# name in sweep.json -> its value in a method's summary (summary.json "methods" entry)
METRICS = {
    "accuracy": lambda m: m.get("accuracy_mean"),
    "macro_precision": lambda m: m.get("macro_precision_mean"),
    "accuracy_std": lambda m: m.get("accuracy_std"),  # the spread across participants
    "global_accuracy": lambda m: m.get("global_accuracy_mean"),
    "majority_accuracy": lambda m: m.get("majority_accuracy_mean"),
    "bytes": _sent,  # uploads + downloads of every participant
    "flops": lambda m: m.get("flops_total"),
    "rounds": lambda m: m.get("rounds"),
    "sim_time_s": lambda m: m.get("sim_time_s"),
    "trainable_params": lambda m: m.get("trainable_params_per_participant"),
    "shared_params": lambda m: m.get("shared_params"),
}


def t_interval(values, confidence: float = 0.95) -> tuple[float | None, list[float] | None]:
    """(mean, [low, high]) of the values that are not None; the interval is None below two."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, [mean - half, mean + half]


def paired(left: dict, right: dict) -> dict:
    """Paired difference left - right from {seed: {participant: accuracy}} on each side."""
    per_seed = []
    for seed in sorted(set(left) & set(right)):
        a, b = left[seed] or {}, right[seed] or {}
        common = sorted((p for p in a if p in b and a[p] is not None and b[p] is not None), key=str)
        if common:
            per_seed.append({"seed": seed, "participants": len(common),
                             "diff": statistics.fmean(a[p] - b[p] for p in common)})
    mean, interval = t_interval([s["diff"] for s in per_seed])
    return {"diff_mean": mean, "diff_ci95": interval, "seeds": len(per_seed),
            "wins": sum(s["diff"] > 0 for s in per_seed), "per_seed": per_seed}


# Paired differences beyond accuracy (sweep.json: each `paired` / `paired_settings` entry carries
# one sub-entry per name): per participant where a per-participant value exists, else the
# per-seed value itself (the spread across participants is one number per run).
PAIRED_EXTRA = {
    "macro_precision": lambda m: m.get("per_participant_macro_precision"),
    "global_accuracy": lambda m: m.get("per_participant_global_accuracy"),
    "accuracy_std": lambda m: None if m.get("accuracy_std") is None else {"run": m["accuracy_std"]},
}


def _brief(result: dict) -> dict:
    return {k: result[k] for k in ("diff_mean", "diff_ci95", "seeds", "wins")}


def summarise(runs: list[dict], settings: list[str]) -> dict:
    """`results`, `paired` and `paired_settings` of completed runs ({setting, seed, summary}),
    settings in the sweep's order (the first is the reference of paired_settings)."""
    methods: dict[str, list[str]] = {s: [] for s in settings}
    by = {}  # (setting, method) -> {seed: that method's summary}
    for run in runs:
        for method, m in run["summary"]["methods"].items():
            if method not in methods[run["setting"]]:
                methods[run["setting"]].append(method)
            by.setdefault((run["setting"], method), {})[run["seed"]] = m

    results = []
    for setting in settings:
        for method in methods[setting]:
            seeds = by[(setting, method)]
            entry = {"setting": setting, "method": method,
                     "seeds": sum(METRICS["accuracy"](m) is not None for m in seeds.values()),
                     "seed_list": sorted(seeds)}
            for name, read in METRICS.items():
                entry[f"{name}_mean"], entry[f"{name}_ci95"] = t_interval(read(m) for m in seeds.values())
            results.append(entry)

    def accuracies(setting, method, read=lambda m: m.get("per_participant_accuracy")):
        return {seed: read(m) for seed, m in by.get((setting, method), {}).items()}

    def compare(left, right) -> dict:
        """Accuracy's paired difference at the top level, the other metrics' beside it."""
        entry = paired(accuracies(*left), accuracies(*right))
        for name, read in PAIRED_EXTRA.items():
            extra = paired(accuracies(*left, read), accuracies(*right, read))
            entry[name] = _brief(extra) if extra["seeds"] else None
        return entry

    paired_methods = []
    for setting in settings:
        if REFERENCE_METHOD not in methods[setting]:
            continue
        for baseline in methods[setting]:
            if baseline != REFERENCE_METHOD:
                paired_methods.append({"setting": setting, "method": REFERENCE_METHOD, "baseline": baseline,
                                       **compare((setting, REFERENCE_METHOD), (setting, baseline))})
    paired_settings = []
    for setting in settings[1:]:
        for method in methods[setting]:
            if method in methods[settings[0]]:
                paired_settings.append({"setting": setting, "reference_setting": settings[0], "method": method,
                                        **compare((setting, method), (settings[0], method))})
    return {"results": results, "paired": paired_methods, "paired_settings": paired_settings}
