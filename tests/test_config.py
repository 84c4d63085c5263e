"""Scenario validation: defaults, overrides, and a clear error naming the key for bad input."""

from pathlib import Path

import pytest
import yaml

from fedgrow_ray.config import ScenarioError, load_scenario, resolve_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def test_every_shipped_scenario_is_valid():
    for path in sorted(SCENARIOS.glob("*.yaml")):
        scenario = load_scenario(path)
        assert scenario["name"] == path.stem


def test_defaults_are_filled_and_overrides_reach_nested_keys():
    s = resolve_scenario({}, ["rounds=7", "training.lr=3e-4", "methods=[fedgrow, local_small]",
                             "model.target={width: 128, layers: 4, heads: 4}"])
    assert s["rounds"] == 7 and s["training"]["lr"] == 3e-4
    assert s["methods"] == ["fedgrow", "local_small"]
    assert s["model"]["target"] == {"width": 128, "layers": 4, "heads": 4, "ffn": 512}
    assert s["participants"] == 8 and s["data"]["source"] == "synthetic_text"


BAD = [
    ({"rounds": 0}, "scenario key 'rounds': 0 is not allowed; expected an integer >= 1"),
    ({"rounds": "ten"}, "scenario key 'rounds': 'ten' is not allowed"),
    ({"participant": 4}, "scenario key 'participant' is unknown (did you mean 'participants'?)"),
    ({"methods": ["fedgrow", "fedprox"]}, "scenario key 'methods[1]': 'fedprox' is not allowed; allowed:"),
    ({"methods": []}, "scenario key 'methods': [] is not allowed"),
    ({"training": {"lr": -1}}, "scenario key 'training.lr': -1 is not allowed; expected a number > 0"),
    ({"training": {"local_step": 3}}, "scenario key 'training.local_step' is unknown (did you mean 'training.local_steps'?)"),
    ({"model": {"family": "audio"}}, "scenario key 'model.family': 'audio' is not allowed; allowed: ['text', 'image']"),
    ({"model": {"target": {"width": 30, "layers": 2, "heads": 4}}}, "heads=4 does not divide width=30"),
    ({"model": {"target": {"width": 96, "layers": 1, "heads": 4}}},
     "'model.target': layers=1 is smaller than model.intermediate layers=2"),
    ({"model": {"small_shapes": [{"width": 128, "layers": 1, "heads": 4}]}},
     "'model.small_shapes[0]': width=128 is larger than model.intermediate width=64"),
    ({"sampling": {"fraction": 0.5, "count": 3}}, "'sampling.fraction' and 'sampling.count' are both set"),
    ({"sampling": {"fraction": 1.5}}, "scenario key 'sampling.fraction': 1.5 is not allowed"),
    ({"sampling": {"count": 20}}, "'sampling.count': 20 is more than participants=8"),
    ({"hosts": {"num_gpus": 1.5}}, "'hosts.num_gpus': 1.5 is not allowed"),
    ({"server": {"aggregator": "krum"}}, "'server.aggregator': 'krum' is not allowed"),
    ({"data": {"source": "synthetic_image"}}, "'data.source': 'synthetic_image' holds image data but model.family is 'text'"),
    ({"data": {"source": "mnistt"}}, "data.source: 'mnistt' is unknown"),
    ({"devices": {"availability": 1.5}}, "devices.availability"),
    ({"model": "big"}, "scenario key 'model': expected a mapping"),
]


@pytest.mark.parametrize("raw, message", BAD)
def test_bad_scenarios_name_the_key(raw, message):
    with pytest.raises(ScenarioError) as err:
        resolve_scenario(raw)
    assert message in str(err.value)


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(ScenarioError, match="expected key=value"):
        resolve_scenario({}, ["rounds"])
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rounds: [1,\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(broken)
    listed = tmp_path / "listed.yaml"
    listed.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ScenarioError, match="expected a mapping"):
        load_scenario(listed)
