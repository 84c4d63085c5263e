"""The README's Results, made from sweep folders: each claim of the paper against what the sweeps
measured, with its interval and a verdict, then each sweep's tables. Regenerated, never edited by
hand:

    python -m fedgrow_ray.sweeps.claims --readme README.md text=DIR image=DIR digits=DIR

A label given more than once (text=DIR text=DIR2) combines sweep folders of the same dataset
made at different times, e.g. the paper setting and, later, the equal budgets: their settings
must not overlap, and each folder's command and commit are named.

writes the section between the README's `<!-- results:begin -->` and `<!-- results:end -->`
lines (or prints it without --readme). Each DIR is a sweep folder (sweep.json) whose settings
include `paper`; the settings `joint`, `reference-code`, `authors-init`, `equal-bytes` and
`equal-flops` are reported where present (see scenarios/replicate_*_offline.yaml).

Verdicts follow one rule, printed with the table: a claimed improvement "holds" when the 95%
interval of the paired difference lies entirely on the claimed side, "does not hold" when it lies
entirely on the other side, and is "inconclusive" when it covers 0 (or there is no interval). A
written-by-hand table would be the one thing here a reader could not check; this module is small
because the sweep's statistics (fedgrow_ray.sweeps.stats) already did the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..outputs import atomic_write
from .report import FLOP_UNITS, MIB, PLAIN, _difference, _interval, _scaled, faulty_runs

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PAPER = "paper"
# The methods the paper's claims are against (growing alone, the small models, FedAvg of the full
# model); `centralized` pools everyone's data, a reference no federated method is claimed to beat,
# so it is in the tables and not in the claims.
BASELINES = ("independent_growth", "local_small", "fedavg_scratch")
PAPER_TRAINABLE_REDUCTION = 0.5925   # journal abstract: trainable parameters reduced by 59.25%
PAPER_COMMUNICATION_REDUCTION = 0.7301  # journal abstract: communication reduced by 73.01%


def verdict(entry: dict | None, direction: int = +1) -> str:
    """holds / does not hold / inconclusive for a paired difference whose claimed sign is
    `direction` (+1: fedgrow higher is the claim; -1: lower)."""
    if not entry or entry.get("diff_ci95") is None:
        return "inconclusive (no interval)"
    low, high = (direction * v for v in entry["diff_ci95"])
    low, high = min(low, high), max(low, high)
    if low > 0:
        return "holds"
    if high < 0:
        return "does not hold"
    return "inconclusive"


def load(folder: str | Path) -> dict:
    document = json.loads((Path(folder) / "sweep.json").read_text())
    document["folder"] = str(folder)
    return document


def combine(documents: list[dict]) -> dict:
    """Sweep documents of one dataset as one: the settings, results and runs of each (their
    settings must not overlap, and the scenario they vary must be the same one as _describe
    reports it); `made_by` keeps each folder's command, commit and settings."""
    if len(documents) == 1:
        return documents[0]
    first, seen = documents[0], {}
    for doc in documents:
        if _describe(doc) != _describe(first):
            raise ValueError(f"{doc['folder']} sweeps another scenario than {first['folder']}: "
                             f"{_describe(doc)!r} vs {_describe(first)!r}")
        for name in _settings(doc):
            if name in seen:
                raise ValueError(f"setting {name!r} is in both {seen[name]} and {doc['folder']}")
            seen[name] = doc["folder"]
    combined = {**first, "seeds": sorted({seed for doc in documents for seed in doc["seeds"]}),
                "folder": " + ".join(doc["folder"] for doc in documents),
                "made_by": [{"command": doc["command"], "commit": doc.get("commit"), "dirty": doc.get("dirty"),
                             "settings": _settings(doc)} for doc in documents]}
    for key in ("settings", "results", "paired", "paired_settings", "runs"):
        combined[key] = [item for doc in documents for item in doc.get(key, [])]
    return combined


def _made_by(doc: dict) -> str:
    """`command` at commit C, for each folder the document was made from."""
    def one(part: dict) -> str:
        commit = (part.get("commit") or "unknown")[:12] + (" (with uncommitted changes)" if part.get("dirty") else "")
        return f"`{part['command']}` at commit {commit}"
    parts = doc.get("made_by")
    if not parts:
        return f"Made by {one(doc)}"
    return "Made by " + "; and ".join(f"{one(p)} (settings {', '.join(p['settings'])})" for p in parts)


def _result(document: dict, setting: str, method: str) -> dict | None:
    return next((r for r in document["results"] if r["setting"] == setting and r["method"] == method), None)


def _paired(document: dict, setting: str, baseline: str) -> dict | None:
    return next((p for p in document["paired"] if p["setting"] == setting and p["baseline"] == baseline), None)


def _settings(document: dict) -> list[str]:
    return [s["name"] for s in document["settings"]]


def _describe(document: dict) -> str:
    s = document["scenario"]
    model, data, training = s["model"], s["data"], s["training"]
    smalls = sorted({(m["width"], m["layers"]) for m in model["small_shapes"]})
    widths = sorted({w for w, _ in smalls})
    small = (f"{'/'.join(map(str, widths))} x {{{','.join(str(l) for _, l in smalls)}}} layers"
             if len(widths) == 1 else ", ".join(f"{w} x {l}" for w, l in smalls))
    partition = data["partition"]
    skew = (f"Dirichlet label skew alpha = {partition['alpha']:g}" if partition["scheme"] == "dirichlet"
            else f"partition {partition['scheme']}")
    # a files source by its folder and name (the sweep recorded it absolute, on the machine that ran it)
    source = data["source"] if data["source"] != "files" else \
        f"files: {'/'.join(Path(data['files']['train']).parts[-2:])}"
    inter, target = model["intermediate"], model["target"]
    return (f"{model['family']} data `{source}`; {s['participants']} participants, {skew}; small "
            f"{small}, intermediate {inter['width']} x {inter['layers']}, target {target['width']} x "
            f"{target['layers']}; {s['rounds']} rounds of {training['local_steps']} local steps, "
            f"{training['pretrain_steps']} pre-training and {training['local_stage_steps']} local-stage steps")


def _wall(document: dict) -> str:
    """Wall time during which some run of the sweep was running: the union of the runs'
    [started, ended] intervals, so that a sweep stopped and resumed later does not count the gap
    (a resumed run counts from its resume: its time before the stop is left out)."""
    spans = sorted((r["started"], r["ended"]) for r in document["runs"]
                   if r.get("started") is not None and r.get("ended") is not None)
    if not spans:
        return "–"
    total, (low, high) = 0.0, spans[0]
    for start, end in spans[1:]:
        if start > high:
            total, low = total + high - low, start
        high = max(high, end)
    return f"{(total + high - low) / 3600:.1f} h"


def claims_table(sweeps: dict[str, dict]) -> list[str]:
    """One row per claim and dataset: what was measured, with its interval, and the verdict."""
    lines = ["| the paper's claim | data | measured (fedgrow minus the other, paired, 95% interval, seeds) | verdict |",
             "|---|---|---|---|"]
    for label, doc in sweeps.items():
        for baseline in BASELINES:
            entry = _paired(doc, PAPER, baseline)
            if entry is None:
                continue
            for metric, name, direction in (("accuracy", "higher accuracy", +1),
                                            ("macro_precision", "higher macro precision", +1),
                                            ("accuracy_std", "less spread across participants", -1)):
                part = entry if metric == "accuracy" else entry.get(metric)
                lines.append(f"| {name} than {baseline} | {label} | {_difference(part)}, "
                             f"{(part or {}).get('seeds', 0)} seeds | {verdict(part, direction)} |")
    for label, doc in sweeps.items():
        grow, full = _result(doc, PAPER, "fedgrow"), _result(doc, PAPER, "fedavg_scratch")
        if grow and full and full["trainable_params_mean"]:
            cut = 1 - grow["trainable_params_mean"] / full["trainable_params_mean"]
            lines.append(f"| {PAPER_TRAINABLE_REDUCTION:.2%} fewer trainable parameters | {label} | "
                         f"{cut:.1%} fewer than fedavg_scratch's full model ({grow['trainable_params_mean']:,.0f} "
                         f"vs {full['trainable_params_mean']:,.0f} per participant; counted, no interval) | "
                         f"{'fewer, by less than claimed' if 0 < cut < PAPER_TRAINABLE_REDUCTION else 'holds' if cut > 0 else 'does not hold'} |")
        if grow and full and full["bytes_mean"]:
            cut = 1 - grow["bytes_mean"] / full["bytes_mean"]
            lines.append(f"| {PAPER_COMMUNICATION_REDUCTION:.2%} less communication | {label} | {cut:.1%} fewer "
                         f"bytes than fedavg_scratch over the same rounds (counted, no interval) | "
                         f"{'less, by less than claimed' if 0 < cut < PAPER_COMMUNICATION_REDUCTION else 'holds' if cut > 0 else 'does not hold'} |")
        bytes_entry = _paired(doc, "equal-bytes", "fedavg_scratch")
        if bytes_entry:
            lines.append(f"| comparable accuracy under the same communication | {label} | equal bytes, "
                         f"fedgrow - fedavg_scratch: {_difference(bytes_entry)}, {bytes_entry['seeds']} seeds | "
                         f"{verdict(bytes_entry)} (as 'at least as accurate') |")
        for baseline in BASELINES:  # not the paper's claim: what growing costs in compute
            flops_entry = _paired(doc, "equal-flops", baseline)
            if flops_entry:
                lines.append(f"| (not claimed by the paper) at least as accurate as {baseline} at the same "
                             f"compute | {label} | equal FLOPs, fedgrow - {baseline}: {_difference(flops_entry)}, "
                             f"{flops_entry['seeds']} seeds | {verdict(flops_entry)} |")
    return lines


def _setting_table(doc: dict, setting: str) -> list[str]:
    rows = [r for r in doc["results"] if r["setting"] == setting]
    has_global = any(r["global_accuracy_mean"] is not None for r in rows)
    lines = ["| method | seeds | accuracy | majority-class ref. | macro precision | spread across participants "
             + ("| global accuracy " if has_global else "") + "| rounds | sent | FLOPs |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if has_global else "")]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seeds']} | {_interval(r['accuracy_mean'], r['accuracy_ci95'])} "
                     f"| {_interval(r['majority_accuracy_mean'], r['majority_accuracy_ci95'])} "
                     f"| {_interval(r['macro_precision_mean'], r['macro_precision_ci95'])} "
                     f"| {_interval(r['accuracy_std_mean'], r['accuracy_std_ci95'])} "
                     + (f"| {_interval(r['global_accuracy_mean'], r['global_accuracy_ci95'])} " if has_global else "")
                     + f"| {_scaled(r, 'rounds', PLAIN)} | {_scaled(r, 'bytes', MIB)} | {_scaled(r, 'flops', FLOP_UNITS)} |")
    return lines


def _variants_table(doc: dict) -> list[str]:
    """fedgrow and independent_growth in every protocol / initialisation setting."""
    lines = ["| setting | seeds | fedgrow | independent_growth | fedgrow - independent_growth | fedgrow: setting - paper "
             "| independent_growth: setting - paper |", "|---|---|---|---|---|---|---|"]
    for setting in _settings(doc):
        if setting.startswith("equal-"):
            continue
        grow, alone = _result(doc, setting, "fedgrow"), _result(doc, setting, "independent_growth")
        if not grow or not alone:
            continue
        lines.append(f"| {setting} | {min(grow['seeds'], alone['seeds'])} "
                     f"| {_interval(grow['accuracy_mean'], grow['accuracy_ci95'])} "
                     f"| {_interval(alone['accuracy_mean'], alone['accuracy_ci95'])} "
                     f"| {_difference(_paired(doc, setting, 'independent_growth'))} "
                     f"| {_against_paper(doc, setting, 'fedgrow')} "
                     f"| {_against_paper(doc, setting, 'independent_growth')} |")
    return lines


def _against_paper(doc: dict, setting: str, method: str) -> str:
    """`method` in `setting` minus the same method in the paper setting, paired by seed and
    participant: only from a sweep that ran both (a sweep pairs each setting with its first one,
    which in a sweep made without `paper` is another setting)."""
    if setting == PAPER:
        return "–"
    entry = next((p for p in doc.get("paired_settings", []) if p["setting"] == setting
                  and p["method"] == method and p.get("reference_setting") == PAPER), None)
    return _difference(entry) if entry else "not paired (swept apart)"


def _budget_table(doc: dict, setting: str) -> list[str]:
    rows = [r for r in doc["results"] if r["setting"] == setting]
    lines = ["| method | seeds | rounds | sent | FLOPs | accuracy | fedgrow - method |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "–" if r["method"] == "fedgrow" else _difference(_paired(doc, setting, r["method"]))
        lines.append(f"| {r['method']} | {r['seeds']} | {_scaled(r, 'rounds', PLAIN)} | {_scaled(r, 'bytes', MIB)} "
                     f"| {_scaled(r, 'flops', FLOP_UNITS)} | {_interval(r['accuracy_mean'], r['accuracy_ci95'])} | {diff} |")
    return lines


def _values(doc: dict, setting: str) -> str:
    values = next((s["values"] for s in doc["settings"] if s["name"] == setting), {})
    return ", ".join(f"`{k}: {v:g}`" if isinstance(v, float) else f"`{k}: {v}`"
                     for k, v in values.items() if k != "methods")


def _faults(doc: dict) -> str:
    """A sentence naming the runs in which participants failed (none: empty)."""
    faulty = faulty_runs(doc)
    if not faulty:
        return ""
    return (f" In {len(faulty)} of these runs participants failed ("
            + ", ".join(f"{r['path']}: {r['participant_failures']}" for r in faulty)
            + "; see their events.log): their figures are of runs with faults.")


def dataset_section(label: str, doc: dict) -> list[str]:
    seeds = doc["seeds"]
    lines = [f"### {label}", "",
             f"{_describe(doc)}. {len(seeds)} seeds ({', '.join(map(str, seeds))}). {_made_by(doc)}; "
             f"{sum(r.get('status') == 'completed' for r in doc['runs'])} runs, "
             f"{_wall(doc)} on this project's 2-CPU machine." + _faults(doc), "",
             "**The paper's protocol, every method, the same rounds:**", ""]
    lines += _setting_table(doc, PAPER) + [""]
    if any(r["setting"] != PAPER and not r["setting"].startswith("equal-") for r in doc["results"]):
        lines += ["**Protocols and initialisations** (fedgrow and its no-federation twin; `joint`: "
                  "Local-LiGO trained in the rounds, this project's option; `reference-code`: the authors' "
                  "code's protocol; `authors-init`: xavier width and uniform depth initialisation; "
                  "`setting - paper` is paired only where a sweep ran the setting beside the paper "
                  "setting, and says `not paired (swept apart)` where they were swept separately):", ""]
        lines += _variants_table(doc) + [""]
    for setting, title in (("equal-bytes", "Equal communication"), ("equal-flops", "Equal compute")):
        if _result(doc, setting, "fedgrow"):
            lines += [f"**{title}** ({_values(doc, setting)}; each method stops at the last round within "
                      f"the budget):", ""]
            lines += _budget_table(doc, setting) + [""]
    return lines


def ladder_ratios() -> list[str]:
    """What Global-LiGO weighs against the target model for the authors' full-size ladders (the
    saving per round of sending Global-LiGO instead of the model), computed, not run."""
    from ..dual_ligo import count_parameters
    from ..ligo import LiGO
    from ..models import Shape, get_family

    intermediate, target = Shape(320, 4, 8, 320), Shape(384, 6, 8, 384)
    shared = LiGO.parameter_count(intermediate, target)
    lines = ["| target model (384 x 6, the authors' ladder) | its parameters | Global-LiGO (320 x 4 -> 384 x 6) "
             "| saving per round |", "|---|---|---|---|"]
    for name, family in (("ViT, 224 x 224 images, patch 16, 10 classes",
                          get_family("image", image_size=224, patch_size=16, num_classes=10)),
                         ("BERT, 30,522-token vocabulary, 512 positions, 4 classes",
                          get_family("text", vocab_size=30522, max_positions=512, num_classes=4))):
        full = count_parameters(family.skeleton(target))
        lines.append(f"| {name} | {full:,} | {shared:,} | {1 - shared / full:.1%} |")
    return lines


def results_section(sweeps: dict[str, dict]) -> str:
    lines = [BEGIN, "",
             "<!-- Generated by fedgrow_ray/sweeps/claims.py from the sweep folders named below; "
             "regenerate, do not edit. -->", "",
             "Each claim of the paper (its abstract: accuracy, precision, variance across participants, trainable parameters, communication), "
             "against what the sweeps below measured. Differences are paired by seed and participant: per "
             "seed, the mean over participants of fedgrow's minus the other method's value on the same "
             "personal test split, then the mean and 95% t-interval over seeds. A claim **holds** when the "
             "interval lies on the claimed side of 0, **does not hold** when it lies on the other side, and "
             "is **inconclusive** when it covers 0.", ""]
    lines += claims_table(sweeps) + [""]
    lines += ["What sending Global-LiGO instead of the model saves per round depends on the model's "
              "embeddings and head, which Global-LiGO does not carry; for the authors' full-size ladder "
              "(computed with this project's counts; the paper does not say how its 73.01% was counted):", ""]
    lines += ladder_ratios() + [""]
    for label, doc in sweeps.items():
        lines += dataset_section(label, doc)
    lines += ["Accuracy, macro precision: mean over participants, each on its own test split (its own "
              "label mix), after the last round; every cell is the mean over seeds [95% t-interval over "
              "seeds]. Majority-class ref.: each participant always predicting its training split's most "
              "frequent label. Spread: the standard deviation across participants. Global accuracy: each "
              "participant's model on the shared balanced test set (centralized: its one model). Sent: "
              "uploads plus downloads of every participant. FLOPs: everything participants compute, "
              "pre-training and the local stage included. Curves with bands: `curves-<setting>.png` in each "
              "sweep folder.", "", END]
    return "\n".join(lines)


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no '{BEGIN}' ... '{END}' lines to replace")
    head, rest = text.split(BEGIN, 1)
    atomic_write(readme, head + section + rest.split(END, 1)[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The README's Results from sweep folders.")
    parser.add_argument("sweeps", nargs="+", metavar="LABEL=DIR", help="a sweep folder and its label")
    parser.add_argument("--readme", help="replace the section between the markers of this file")
    args = parser.parse_args(argv)
    try:
        folders: dict[str, list[dict]] = {}
        for item in args.sweeps:
            label, _, folder = item.partition("=")
            if not folder:
                raise ValueError(f"{item!r}: expected LABEL=DIR")
            folders.setdefault(label, []).append(load(folder))
        sweeps = {label: combine(documents) for label, documents in folders.items()}
        section = results_section(sweeps)
        if args.readme:
            update_readme(Path(args.readme), section)
        else:
            print(section)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
