"""One entry point: launch.run runs a scenario given as a file or a mapping (with overrides) and
returns its summary; launch.py's command line and the `fedgrow` console script both call it."""

import io
import json
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml

import launch
from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


def quiet():
    return launch.Progress(io.StringIO())


def test_the_fedgrow_console_script_is_the_command_line():
    """Guards against the console script naming something that is not launch.main (or nothing)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    command = EntryPoint(name="fedgrow", value=scripts["fedgrow"], group="console_scripts").load()
    assert command is launch.main


def test_run_from_python_returns_the_summary_it_writes(cache, tmp_path):
    """Guards against launch.run not running a mapping or a file scenario with overrides, or
    returning something other than the run's summary.json."""
    out = tmp_path / "run"
    summary = launch.run(dict(TINY), overrides=["rounds=1", "participants=4"], out=out, executor="local",
                         cache=cache, progress=quiet())
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["methods"]["fedgrow"]["rounds"] == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["participants"] == 4

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    again = launch.run(path, overrides=["rounds=1", "participants=4"], out=tmp_path / "again", executor="local",
                       cache=cache, progress=quiet())
    assert again["global_ligo_sha256"] == summary["global_ligo_sha256"]


@pytest.mark.slow  # a minute on the busy 2-CPU machine (Ray's actors start and import torch)
def test_run_from_python_uses_the_ray_a_notebook_already_has(ray_session, cache, tmp_path):
    """Guards against launch.run starting (or stopping) a Ray of its own when the process is
    already connected to one, or giving other results on Ray than in process."""
    summary = launch.run(dict(TINY), overrides=["rounds=1", "participants=4"], out=tmp_path / "ray", cache=cache,
                         progress=quiet())
    assert ray_session.is_initialized()  # the caller's Ray is left as it was
    local = launch.run(dict(TINY), overrides=["rounds=1", "participants=4"], out=tmp_path / "local",
                       executor="local", cache=cache, progress=quiet())
    assert summary["global_ligo_sha256"] == local["global_ligo_sha256"]


def test_bad_input_from_python_raises_one_line_and_writes_nothing(cache, tmp_path):
    """Guards against launch.run printing and returning on bad input instead of raising
    LaunchError with the command line's exit status, or writing a run folder first."""
    out = tmp_path / "run"
    with pytest.raises(launch.LaunchError) as caught:
        launch.run(dict(TINY), overrides=["training.local_step=3"], out=out, executor="local", cache=cache,
                   progress=quiet())
    assert caught.value.status == 2
    assert "training.local_step" in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists()
    # The command line turns it into exit status 2.
    assert launch.main(["--set", "training.local_step=3", "--out", str(out), "--executor", "local"]) == 2
    assert not out.exists()


def test_progress_lines_show_elapsed_time_and_an_estimate_per_method():
    """Guards against progress lines without elapsed time or a remaining-time estimate, or an
    estimate that is not the time per round so far times the rounds left, per method."""
    stream, now = io.StringIO(), [0.0]
    progress = launch.Progress(stream, clock=lambda: now[0])

    def event(method, round_number, phase, at):
        now[0] = at
        progress.update({"method": method, "round": round_number, "rounds": 4, "phase": phase,
                         "running": 2, "done": 2 if phase == "end" else 0, "accuracy": 0.5})

    event("fedgrow", 1, "start", 100.0)
    event("fedgrow", 1, "end", 130.0)          # 30 s a round: 3 rounds left
    event("fedgrow", 2, "end", 160.0)
    event("local_small", 1, "start", 160.0)    # another method: its own clock
    event("local_small", 1, "end", 165.0)
    lines = stream.getvalue().splitlines()
    assert lines[1].endswith("elapsed 30 s, about 1 min 30 s left")
    assert lines[2].endswith("elapsed 1 min 00 s, about 1 min 00 s left")
    assert lines[4].endswith("elapsed 5 s, about 15 s left")


def test_the_command_line_imports_the_library_beside_ray_not_before_it():
    """Guards the quick start's overlap: `python launch.py` starts Ray while a second thread
    imports the library (actors.cluster.start_while_importing), which only helps while
    importing launch.py itself loads neither torch nor transformers (seconds each on 2 CPUs).
    Also that launch.py's stand-in for the data cache's default is the library's."""
    import subprocess
    import sys

    from fedgrow_ray.experiment import DEFAULT_CACHE

    code = ("import sys, launch; heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'fedgrow_ray.config') "
            "if m in sys.modules); print(','.join(heavy)); print(launch.DEFAULT_CACHE)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy, cache = done.stdout.splitlines()
    assert heavy == "", f"importing launch.py loaded {heavy}"
    assert cache == str(DEFAULT_CACHE)
    assert set(launch.LIBRARY) >= {"fedgrow_ray.config", "fedgrow_ray.experiment", "actors.driver"}
