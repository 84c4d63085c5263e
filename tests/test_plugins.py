"""Plug-ins without editing the package: a method, an aggregator and a model family defined in a
test module (tests/plugin_lab.py), named by import path in a scenario and run through Ray."""

import json

import pytest

from conftest import simulate, tiny
from fedgrow_ray.config import ScenarioError
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.rounds import LocalExecutor, run_experiment


PLUGGED = ["methods=[fedgrow, 'tests.plugin_lab:FedProxGrow']", "server.aggregator=tests.plugin_lab:unweighted_mean",
           "model.family=tests.plugin_lab:ReluText"]
COMMON = ["rounds=2", "participants=4", "data.partition={scheme: quantity_skew}", "export=[0]"]


def test_a_plugged_in_method_aggregator_and_family_run_through_ray(ray_session, cache, tmp_path):
    """Guards against a plug-in named by import path being ignored (a built-in silently used in
    its place) or failing to reach Ray's processes, and against its results being misnamed."""
    scenario = tiny(*COMMON, *PLUGGED)
    summary, rows, folder = simulate(ray_session, scenario, cache, tmp_path / "plugged")
    methods = summary["methods"]
    assert list(methods) == ["fedgrow", "tests.plugin_lab:FedProxGrow"]
    assert [r["round"] for r in rows if r["method"] == "tests.plugin_lab:FedProxGrow"] == [1, 2]
    # The proximal term changes what the plug-in method learns (same random streams as fedgrow).
    assert methods["tests.plugin_lab:FedProxGrow"]["shared_sha256"] != methods["fedgrow"]["shared_sha256"]
    # The family: the exported model is the plug-in's.
    assert json.loads((folder.path / "export/participant_0/config.json").read_text())["hidden_act"] == "relu"

    # The aggregator: fedgrow in process with the same family but the built-in fedavg ends
    # elsewhere (the participants hold different numbers of samples), with the plug-in where Ray did.
    def fedgrow_sha(*overrides):
        s = tiny(*COMMON, "model.family=tests.plugin_lab:ReluText", *overrides)
        data = prepare_scenario_data(s, cache)
        return run_experiment(Experiment(s, data), LocalExecutor(s, str(data)), lambda row: None,
                              lambda text: None)["global_ligo_sha256"]

    assert fedgrow_sha("server.aggregator=tests.plugin_lab:unweighted_mean") == summary["global_ligo_sha256"]
    assert fedgrow_sha() != summary["global_ligo_sha256"]


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
