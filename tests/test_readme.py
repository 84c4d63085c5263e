"""The README's Python API example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["large"].config.hidden_size == 128
    assert (tmp_path / "grown-model" / "config.json").is_file()
    assert all(name.startswith("global_ligo.") for name in namespace["dual"].global_state())


def test_the_quickstart_duration_is_stated_alike_in_readme_and_scenario():
    """Guards against the README and quickstart.yaml promising different run times."""
    scenario = (README.parent / "scenarios" / "quickstart.yaml").read_text()
    low, high = re.search(r"About (\d+) to (\d+) minutes", scenario).groups()
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    table_row = next(line for line in README.read_text().splitlines() if line.startswith("| `quickstart.yaml`"))
    assert f"about {low} to {high} minutes" in " ".join(quick_start.split())
    assert f"{low} to {high} minutes" in table_row


def test_the_ray_floor_has_token_authentication():
    """Guards against pyproject allowing a Ray older than 2.52, the first with the token
    authentication (RAY_AUTH_MODE=token) the README's cluster commands rely on."""
    import tomllib

    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    ray = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    assert re.search(r">=\s*2\.52\b", ray), ray
