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


# ---- YAML 1.2 numbers: 1e-3 is a float in every number key, from a file and from --set -------
from fedgrow_ray.config import SCHEMA  # noqa: E402


def schema_number_keys(schema=SCHEMA, prefix=""):
    """Every key of the scenario schema validated as a number (config.number)."""
    for key, rule in schema.items():
        if isinstance(rule, dict):
            yield from schema_number_keys(rule, f"{prefix}{key}.")
        elif rule[0].__qualname__ == "number.<locals>.check":
            yield f"{prefix}{key}"


# Number keys of the sections validated by their own modules, with the setting that enables them.
SECTION_NUMBER_KEYS = [
    ("data.label_noise", {"data": {"source": "synthetic_text"}}),
    ("data.partition.alpha", {"data": {"source": "synthetic_text"}}),
    ("data.partition.sigma", {"data": {"source": "synthetic_text", "partition": {"scheme": "quantity_skew"}}}),
    ("data.files.test_fraction", {"data": {"source": "files", "files": {"train": "t.csv", "text_column": "text"}}}),
    ("devices.reference_gflops", {}),
    *((f"devices.{field}", {}) for field in
      ("compute_speed", "upload_mbps", "download_mbps", "availability", "memory_mb")),
    *((f"devices.compute_speed.{key}", {"devices": {"compute_speed": {"dist": dist, **others}}})
      for dist, key, others in (("constant", "value", {}), ("lognormal", "median", {"sigma": 0.5}),
                                ("lognormal", "sigma", {"median": 1.0}), ("uniform", "low", {"high": 4.0}),
                                ("uniform", "high", {"low": 1e-4}), ("choice", "values", {}),
                                ("choice", "weights", {"values": [1.0]}))),
    *((f"privacy.dp.{key}", {"privacy": {"dp": {} if key == "noise_multiplier" else {"noise_multiplier": 1.0}}})
      for key in ("clip", "delta", "noise_multiplier")),
    ("privacy.dp.target_epsilon", {"privacy": {"dp": {}}}),
    ("privacy.secure_aggregation.threshold", {"privacy": {"secure_aggregation": {}}}),
]
NUMBER_KEYS = [(key, {}) for key in schema_number_keys()] + SECTION_NUMBER_KEYS


def nested(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def merged(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def lookup(scenario: dict, key: str):
    for part in key.split("."):
        scenario = scenario[part]
    return scenario


def test_the_schema_has_the_number_keys_this_test_expects():
    """Guards against the 1e-3 test below silently covering fewer keys (a renamed validator)."""
    keys = set(schema_number_keys())
    assert {"deadline_s", "server.trim_fraction", "training.lr", "hosts.num_cpus", "hosts.memory_mb",
            "faults.drop_upload", "sampling.fraction", "budget.flops", "model.dropout"} <= keys
    assert len(keys) >= 19


@pytest.mark.parametrize("key, setting", NUMBER_KEYS, ids=[k for k, _ in NUMBER_KEYS])
@pytest.mark.parametrize("how", ["file", "--set"])
def test_exponent_notation_is_a_number_in_every_number_key(tmp_path, key, setting, how):
    """Guards against YAML 1.1's reading of 1e-3 as the string '1e-3' (a dot is needed there),
    which refuses or mangles an ordinary value such as training.lr: 1e-3."""
    accepted = 0
    for text in ("1e-3", "2E0", "-5e+1"):
        value = float(text)
        listed = key.endswith((".values", ".weights"))
        if how == "file":
            literal = f"[{text}]" if listed else text
            document = yaml.safe_dump(merged(setting, nested(key, "@@")), sort_keys=False)
            path = tmp_path / "scenario.yaml"
            path.write_text(document.replace("'@@'", literal))
            load = lambda: load_scenario(path)  # noqa: E731
        else:
            base = tmp_path / "base.yaml"
            base.write_text(yaml.safe_dump(setting or {"seed": 0}))
            load = lambda: load_scenario(base, [f"{key}={f'[{text}]' if listed else text}"])  # noqa: E731
        try:
            scenario = load()
        except ScenarioError as err:  # out of range for this key: it was read as a number
            assert repr(text) not in str(err) and f"{value!r}" in str(err).replace("[", "").replace("]", ""), str(err)
            continue
        got = lookup(scenario, key)
        if isinstance(got, dict):  # a device field as a number becomes a constant distribution
            got = got["value"]
        got = got[0] if listed else got
        assert got == value and isinstance(got, float), (key, text, got)
        accepted += 1
    assert accepted, f"{key} accepted none of 1e-3, 2E0, -5e+1"
