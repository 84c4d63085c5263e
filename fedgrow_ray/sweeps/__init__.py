"""Sweeps: one scenario over several seeds and a grid of settings, each (setting, seed) an
ordinary run folder inside the sweep folder, and the statistics that compare them.

    plan     the settings and runs, the sweep folder (sweep.json), what to reuse / resume / start
    stats    means over seeds with 95% t-intervals; paired differences by seed and participant
    report   sweep.md and the curves with bands over seeds

No Ray here: actors/sweep.py runs the planned runs as Ray Tune trials.
"""

from .plan import SWEEP_FILE, TUNE_DIR, PlannedRun, Setting, SweepError, SweepFolder, SweepPlan
from .report import sweep_markdown, write_report
from .stats import paired, summarise, t_interval

__all__ = ["SWEEP_FILE", "TUNE_DIR", "PlannedRun", "Setting", "SweepError", "SweepFolder", "SweepPlan",
           "paired", "summarise", "sweep_markdown", "t_interval", "write_report"]
