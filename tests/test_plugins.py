"""Plug-ins without editing the package: a method, an aggregator and a model family defined in a
test module (tests/plugin_lab.py), named by import path in a scenario and run through Ray."""

import json

import pytest

from conftest import simulate, tiny
from fedgrow_ray.config import ScenarioError
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.models import Shape
from fedgrow_ray.rounds import LocalExecutor, run_experiment


PLUGGED = ["methods=[fedgrow, 'tests.plugin_lab:FedProxGrow']", "server.aggregator=tests.plugin_lab:unweighted_mean",
           "model.family=tests.plugin_lab:ReluText"]
COMMON = ["rounds=1", "participants=4", "data.partition={scheme: quantity_skew}", "export=[0]"]


def run_in_process(cache, *overrides):
    s = tiny(*COMMON, *overrides)
    data = prepare_scenario_data(s, cache)
    rows = []
    return run_experiment(Experiment(s, data), LocalExecutor(s, str(data)), rows.append, lambda text: None), rows


def test_a_plugged_in_method_aggregator_and_family_are_the_ones_that_run(cache):
    """Guards against a plug-in named by import path being ignored (a built-in silently used in
    its place) or its results being misnamed."""
    summary, rows = run_in_process(cache, *PLUGGED)
    methods = summary["methods"]
    assert list(methods) == ["fedgrow", "tests.plugin_lab:FedProxGrow"]
    assert [r["round"] for r in rows if r["method"] == "tests.plugin_lab:FedProxGrow"] == [1]
    # The method: the proximal term changes what it learns (it draws fedgrow's random streams).
    assert methods["tests.plugin_lab:FedProxGrow"]["shared_sha256"] != methods["fedgrow"]["shared_sha256"]
    # The aggregator: the built-in fedavg ends elsewhere (the participants hold different numbers
    # of samples).
    builtin, _ = run_in_process(cache, "model.family=tests.plugin_lab:ReluText")
    assert builtin["global_ligo_sha256"] != summary["global_ligo_sha256"]
    # The family: its models are the plug-in's.
    scenario = tiny(*COMMON, *PLUGGED)
    family = Experiment(scenario, prepare_scenario_data(scenario, cache)).family
    assert type(family).__name__ == "ReluText"
    assert family.build(Shape(**scenario["model"]["target"])).config.hidden_act == "relu"


@pytest.mark.slow  # a minute on the busy 2-CPU machine (Ray's actors start and import torch)
def test_plug_ins_reach_rays_processes_and_run_there_as_in_process(ray_session, cache, tmp_path):
    """Guards against a plug-in that works in process but does not reach Ray's driver and host
    processes, or runs differently there."""
    summary, _, folder = simulate(ray_session, tiny(*COMMON, *PLUGGED), cache, tmp_path / "plugged")
    local, _ = run_in_process(cache, *PLUGGED)
    assert {m: s["shared_sha256"] for m, s in summary["methods"].items()} == \
        {m: s["shared_sha256"] for m, s in local["methods"].items()}
    assert json.loads((folder.path / "export/participant_0/config.json").read_text())["hidden_act"] == "relu"


@pytest.mark.parametrize("override, message", [
    ("methods=[no_such_module:Method]", "'methods[0]': method 'no_such_module:Method': module 'no_such_module' cannot be imported"),
    ("methods=[tests.plugin_lab:unweighted_mean]", "is not a subclass of fedgrow_ray.methods.base.Method"),
    ("server.aggregator=tests.plugin_lab:missing", "module 'tests.plugin_lab' has no 'missing'"),
    ("model.family=tests.plugin_lab:FedProxGrow", "'model.family': model family 'tests.plugin_lab:FedProxGrow' is not a subclass"),
    ("methods=[fedprox]", "or an import path module:Class to a method"),
])
def test_a_wrong_plugin_is_one_line_of_bad_input(override, message):
    """Guards against a plug-in path that cannot work being accepted (failing later, inside Ray)
    or reported with a traceback instead of one line naming the key."""
    with pytest.raises(ScenarioError) as caught:
        tiny(override)
    assert message in str(caught.value) and "\n" not in str(caught.value)
