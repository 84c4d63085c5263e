"""Scenario files: the schema, defaults and validation of everything that changes a result.

A scenario is a YAML mapping. `load_scenario(path, overrides)` returns the fully resolved
scenario (every default filled in) or raises ScenarioError naming the key, the value and what is
allowed, in one line. The keys a user changes most sit at the top level (seed, rounds,
participants, methods) so `--set rounds=20` reaches them plainly.

Scenario files, `--set` values and a run folder's config.yaml are all read with `read_yaml`,
which resolves numbers as YAML 1.2 does: `1e-3` is the float 0.001 (PyYAML follows YAML 1.1,
where a float needs a dot and `1e-3` is a string).

A scenario may also carry a `sweep:` section (seeds, a grid of other keys' values, named
variants) that makes launch.py run it as a sweep. The section is validated here with everything
else but is not part of a run: `load_sweep` returns it beside the run scenario, and
`resolve_scenario` leaves it out, so a run's config.yaml never holds one.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path

import yaml

from .models import FAMILIES, Shape, family_class, get_family
from .plugins import is_import_path, load


class ScenarioError(ValueError):
    """A scenario (or an override) is invalid; the message names the key."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax (an exponent needs no dot)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
    [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
  | [-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
  | [-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
  | [-+]?\.(?:inf|Inf|INF)
  | \.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def read_yaml(text: str, where: str):
    """Parse YAML text (a scenario, a --set value, a run folder's config.yaml) with YAML 1.2
    floats; a syntax error is a one-line ScenarioError naming `where`, the line and column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ScenarioError(f"{where} is not valid YAML{at}: "
                            f"{problem}{f' ({context})' if context else ''}") from None


METHODS = ("fedgrow", "fedavg_scratch", "independent_growth", "local_small", "centralized")
BUDGETS = ("bytes", "flops", "sim_time_s")  # budget.* keys; `rounds` is always the cap
AGGREGATORS = ("fedavg", "median", "trimmed_mean")
BAD_UPDATES = ("nan", "inf", "shape", "name", "huge")  # faults.bad_update kinds
EXPORT_AUTO_MAX = 16  # export: null exports every participant's model up to this many participants


# ---- field validators: each takes (key, value) and returns the checked value -------------------
def _fail(key, value, allowed):
    raise ScenarioError(f"scenario key '{key}': {value!r} is not allowed; {allowed}")


def integer(minimum=None, maximum=None, optional=False):
    def check(key, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, value, "expected an integer" + _range(minimum, maximum))
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            _fail(key, value, "expected an integer" + _range(minimum, maximum))
        return value
    return check


def number(minimum=None, maximum=None, optional=False, above=None):
    def check(key, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            _fail(key, value, "expected a number" + _range(minimum, maximum, above))
        if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
                or (above is not None and value <= above)):
            _fail(key, value, "expected a number" + _range(minimum, maximum, above))
        return float(value)
    return check


def _range(minimum, maximum, above=None):
    parts = []
    if above is not None:
        parts.append(f"> {above}")
    if minimum is not None:
        parts.append(f">= {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    return (" " + " and ".join(parts)) if parts else ""


def choice(options, optional=False):
    def check(key, value):
        if value is None and optional:
            return None
        if value not in options:
            _fail(key, value, f"allowed: {list(options)}")
        return value
    return check


def boolean():
    def check(key, value):
        if not isinstance(value, bool):
            _fail(key, value, "expected true or false")
        return value
    return check


def text(optional=True):
    def check(key, value):
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            _fail(key, value, "expected a non-empty string")
        return value
    return check


def optional(check):
    def wrapped(key, value):
        return None if value is None else check(key, value)
    return wrapped


def _check_swept_key(where: str, dotted, value) -> None:
    """A key a sweep may vary (sweep.grid, sweep.variants): a dotted scenario key, not the seed,
    the name or the sweep section itself."""
    if not isinstance(dotted, str) or not dotted or any(not p for p in dotted.split(".")):
        _fail(where, dotted, "expected a dotted scenario key such as training.lr")
    if dotted == "seed" or dotted.split(".")[0] in ("sweep", "name"):
        _fail(where, value, "seeds are --seeds or sweep.seeds; name and sweep cannot vary")


def grid():
    """sweep.grid: {dotted scenario key: [values, ...]}; the keys and values themselves are
    checked when each setting is resolved (fedgrow_ray.sweeps), like any other override."""
    def check(key, value):
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(key, value, "expected a mapping {scenario key: [values, ...]}")
        for name, values in value.items():
            _check_swept_key(f"{key}.{name}", name, values)
            if not isinstance(values, list) or not values:
                _fail(f"{key}.{name}", values, "expected a non-empty list of values")
            if len(set(map(repr, values))) != len(values):
                _fail(f"{key}.{name}", values, "values must not repeat")
        return {name: list(values) for name, values in value.items()}
    return check


def variants():
    """sweep.variants: {name: {dotted scenario key: value, ...}}, named settings of their own (a
    mapping may be empty: the scenario as it is). Each variant is crossed with the grid; its keys
    and values are checked when each setting is resolved, like any other override."""
    def check(key, value):
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(key, value, "expected a mapping {variant name: {scenario key: value, ...}}")
        for name, overrides in value.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
                _fail(f"{key}.{name}", name, "a variant name is letters, digits and . _ + - (it names a folder)")
            if overrides is None:
                overrides = value[name] = {}
            if not isinstance(overrides, dict):
                _fail(f"{key}.{name}", overrides, "expected a mapping {scenario key: value}")
            for dotted in overrides:
                _check_swept_key(f"{key}.{name}.{dotted}", dotted, overrides[dotted])
        return {name: dict(overrides or {}) for name, overrides in value.items()}
    return check


def location():
    """A storage location: null, an absolute path, or a URI that pyarrow.fs opens
    (file:///..., s3://..., gs://..., hdfs://...)."""
    def check(key, value):
        if value is None:
            return None
        if not isinstance(value, str) or not (value.startswith("/") or re.match(r"^[a-z][a-z0-9+.-]*://.", value)):
            _fail(key, value, "expected null, an absolute path or a URI such as file:///shared/state "
                              "or s3://bucket/prefix (every node must reach it)")
        return value
    return check


def list_of(item, min_length=1, unique=False):
    def check(key, value):
        if not isinstance(value, list) or len(value) < min_length:
            _fail(key, value, f"expected a list of at least {min_length} item(s)")
        out = [item(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if unique and len(set(map(repr, out))) != len(out):
            _fail(key, value, "items must not repeat")
        return out
    return check


def mapping(schema: dict):
    """A mapping with its own keys (for list items such as faults.kill_host[0])."""
    def check(key, value):
        return _resolve(schema, value, f"{key}.")
    return check


def builtin_or_plugin(options, what: str, base=None, optional=False):
    """One of the built-in `options`, or an import path to a plug-in (fedgrow_ray.plugins),
    imported here so that a wrong one is bad input before anything runs."""
    def check(key, value):
        if value is None and optional:
            return None
        if is_import_path(value):
            try:
                if what == "model family":
                    family_class(value)
                else:
                    load(value, what, base() if base else None)
            except ValueError as err:
                raise ScenarioError(f"scenario key '{key}': {err}") from None
            return value
        if value not in options:
            _fail(key, value, f"allowed: {list(options)} or an import path module:Class to a {what}")
        return value
    return check


def _method_base():
    from .methods import Method
    return Method


def method_name(optional=False):
    return builtin_or_plugin(METHODS, "method", _method_base, optional)


def export_choice():
    """export: null (the default: all when there are at most EXPORT_AUTO_MAX participants, else
    none), all, none, or a list of participant ids; resolved in _check_together."""
    def check(key, value):
        if value is None or value in ("all", "none"):
            return value
        if isinstance(value, list) and value:
            return list_of(integer(0), unique=True)(key, value)
        _fail(key, value, "expected all, none, null (all up to 16 participants, none above) or a "
                          "list of participant ids")
    return check


def shape():
    def check(key, value):
        try:
            return Shape.parse(value, f"scenario key '{key}'").as_dict()
        except ValueError as err:
            raise ScenarioError(str(err)) from None
    return check


def external(validate, prefix):
    """A section validated by its own module (data, devices); their errors already name keys."""
    def check(key, value):
        try:
            return validate(value)
        except ValueError as err:
            message = str(err)
            raise ScenarioError(message if message.startswith(("scenario", prefix))
                                else f"scenario key '{key}': {message}") from None
    return check


def _data_spec(value):
    from .data import check_data_spec
    return check_data_spec(value)


def _devices_spec(value):
    from .devices import check_devices_spec
    return check_devices_spec(value)


def _privacy_spec(value):
    from .privacy import check_privacy_spec
    return check_privacy_spec(value)


# ---- the schema: key -> (validator, default); a nested dict is a section ----------------------
SCHEMA = {
    "name": (text(), None),
    "seed": (integer(0), 0),
    "rounds": (integer(1), 5),
    "participants": (integer(1), 8),
    "methods": (list_of(method_name(), unique=True), ["fedgrow"]),
    "protocol": (choice(("paper", "reference-code")), "paper"),
    "deadline_s": (number(above=0, optional=True), None),
    "checkpoint_every": (integer(0), 1),
    # where the metrics rows also go, besides TensorBoard (fedgrow_ray.tracking); never a result
    "trackers": (list_of(choice(("mlflow", "wandb")), min_length=0, unique=True), []),
    # which participants' grown fedgrow models the run folder's export/ holds (fedgrow_ray.export)
    "export": (export_choice(), None),
    "server": {
        "aggregator": (builtin_or_plugin(AGGREGATORS, "aggregator"), "fedavg"),
        "trim_fraction": (number(0.0, 0.49), 0.1),
        "max_update_norm": (number(above=0, optional=True), None),
        # sync: rounds; async: buffered asynchronous aggregation (fedgrow_ray.buffered, FedBuff)
        "mode": (choice(("sync", "async")), "sync"),
        "concurrency": (integer(1), 10),        # async: participants training at once
        "buffer_size": (integer(1), 5),         # async: aggregate every K arrivals
        "max_staleness": (integer(0), 10),      # async: older updates are dropped and counted
        "staleness_weight": (choice(("constant", "polynomial")), "polynomial"),
        "staleness_exponent": (number(0.0), 0.5),  # async, polynomial: (1 + staleness)^-a
    },
    "model": {
        "family": (builtin_or_plugin(tuple(FAMILIES), "model family"), "text"),
        "vocab_size": (integer(8), 4000),
        "max_positions": (integer(4), 64),
        "image_size": (integer(4), 32),
        "patch_size": (integer(1), 4),
        "channels": (integer(1), 3),
        "dropout": (number(0.0, 0.9), 0.1),
        "small_shapes": (list_of(shape()), [{"width": 32, "layers": 1, "heads": 2},
                                            {"width": 48, "layers": 2, "heads": 4}]),
        "assign_shapes": (choice(("cycle", "random")), "cycle"),
        "intermediate": (shape(), {"width": 64, "layers": 2, "heads": 4}),
        "target": (shape(), {"width": 96, "layers": 3, "heads": 4}),
        "checkpoints": (text(), None),
    },
    "ligo": {
        "width_init": (choice(("identity-plus", "xavier")), "identity-plus"),
        "depth_init": (choice(("stack", "uniform")), "stack"),
        "init_noise": (number(0.0, 1.0), 0.01),
    },
    "training": {
        "batch_size": (integer(1), 16),
        "local_steps": (integer(1), 10),
        "lr": (number(above=0), 1e-3),
        "weight_decay": (number(0.0), 0.05),
        "pretrain_steps": (integer(0), 100),
        "pretrain_lr": (number(above=0), 1e-3),
        "local_stage_steps": (integer(0), 20),
        # false: the paper's protocol (Local-LiGO frozen after the local stage while Global-LiGO
        # is federated). true: this project's option, Local-LiGO keeps training beside the shared
        # Global-LiGO in the rounds (independent_growth mirrors whichever is set).
        "joint_local": (boolean(), False),
        # fresh: AdamW state of the shared parameters (Global-LiGO; fedavg_scratch's model) is
        # dropped at the start of each round, as in ordinary FedAvg and the authors' code, since
        # the server overwrites those weights; private parameters keep theirs. keep: moments
        # persist across rounds.
        "shared_optimiser": (choice(("fresh", "keep")), "fresh"),
        "finetune_steps": (integer(0), 0),
        "max_grad_norm": (number(above=0, optional=True), 1.0),
        # null: whole batches; n: gradients accumulated over slices of n samples (the same step
        # up to float rounding, less activation memory)
        "micro_batch_size": (integer(1, optional=True), None),
        # fp32: exact. bf16 / fp16: autocast over fp32 master weights (fp16 with a loss scaler)
        "precision": (choice(("fp32", "bf16", "fp16")), "fp32"),
    },
    "budget": {  # stop each method at the last round that fits (at most one set; rounds is the cap)
        "bytes": (number(above=0, optional=True), None),       # uploads + downloads, all participants
        "flops": (number(above=0, optional=True), None),       # everything participants compute
        "sim_time_s": (number(above=0, optional=True), None),  # the simulated clock, setup included
    },
    "sampling": {
        "fraction": (number(above=0, maximum=1.0, optional=True), None),
        "count": (integer(1, optional=True), None),
        "over_selection": (number(1.0), 1.0),
    },
    "eval": {
        "every": (integer(1), 1),
        "participants": (integer(1, optional=True), None),
        "batch_size": (integer(1), 64),
        # also score each evaluated model on the shared global test set (data.global_test_size)
        "global": (boolean(), False),
    },
    "hosts": {
        "actors": (integer(1, optional=True), None),
        "num_cpus": (number(above=0), 1.0),
        "num_gpus": (number(0.0), 0.0),
        "memory_mb": (number(above=0, optional=True), None),
        "max_resident": (integer(1, optional=True), None),
        "placement": (choice(("spread", "pack")), "spread"),
        # the hosts' placement group: how long to wait for it, and whether nodes may still come
        # (an autoscaling cluster: the pool is not checked against the nodes there now)
        "reserve_timeout_s": (number(above=0), 60.0),
        "autoscaling": (boolean(), False),
        "round_timeout_s": (number(above=0), 600.0),
        "sleep": (boolean(), False),
        # FedAvg-family methods: each host sends one weighted partial sum of its participants'
        # screened updates instead of every update (fedgrow_ray.reduction); same results
        "reduce": (boolean(), True),
        # where participants' private state lives (see fedgrow_ray.participant.state_location)
        "state_uri": (location(), None),
    },
    "faults": {
        "kill_host": (list_of(mapping({"host": (integer(0), None), "round": (integer(1), None),
                                       "method": (method_name(optional=True), None)}),
                              min_length=0), []),
        "drop_upload": (number(0.0, 1.0), 0.0),
        "bad_update": (list_of(mapping({"participant": (integer(0), None), "round": (integer(1), None),
                                        "kind": (choice(BAD_UPDATES), None),
                                        "method": (method_name(optional=True), None)}),
                               min_length=0), []),
    },
    "data": (external(_data_spec, "data"), {"source": "synthetic_text"}),
    "devices": (external(_devices_spec, "devices"), {}),
    "privacy": (external(_privacy_spec, "privacy"), {}),  # see fedgrow_ray/privacy/__init__.py
    # Not part of a run: what launch.py sweeps over (see load_sweep and fedgrow_ray.sweeps).
    "sweep": {
        "seeds": (optional(list_of(integer(0), unique=True)), None),  # null: [seed]
        "grid": (grid(), {}),
        "variants": (variants(), {}),
    },
}


def _resolve(schema: dict, raw, prefix: str) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario key '{prefix.rstrip('.') or '(top level)'}': expected a "
                            f"mapping, got {raw!r}")
    unknown = [k for k in raw if k not in schema]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(schema), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ScenarioError(f"scenario key '{prefix}{key}' is unknown{hint}; allowed here: {sorted(schema)}")
    resolved = {}
    for key, rule in schema.items():
        if isinstance(rule, dict):
            resolved[key] = _resolve(rule, raw.get(key), f"{prefix}{key}.")
        else:
            validate, default = rule
            value = raw[key] if key in raw else copy.deepcopy(default)
            resolved[key] = validate(f"{prefix}{key}", value)
    return resolved


def _check_together(s: dict) -> None:
    """Rules that involve more than one key."""
    model = s["model"]
    if s["sampling"]["fraction"] is not None and s["sampling"]["count"] is not None:
        raise ScenarioError("scenario keys 'sampling.fraction' and 'sampling.count' are both set; "
                            "set at most one")
    budgets = [key for key in BUDGETS if s["budget"][key] is not None]
    if len(budgets) > 1:
        raise ScenarioError(f"scenario keys {' and '.join(repr(f'budget.{k}') for k in budgets)} are "
                            f"all set; set at most one budget (rounds stays the cap)")
    if s["sampling"]["count"] is not None and s["sampling"]["count"] > s["participants"]:
        raise ScenarioError(f"scenario key 'sampling.count': {s['sampling']['count']} is more than "
                            f"participants={s['participants']}")
    try:
        family_of_scenario(s)
    except ValueError as err:
        raise ScenarioError(f"scenario key 'model': {err}") from None
    from .data.spec import spec_family
    if spec_family(s["data"]) != family_class(model["family"]).name:
        raise ScenarioError(f"scenario key 'data.source': {s['data']['source']!r} holds "
                            f"{spec_family(s['data'])} data but model.family is {model['family']!r}")
    intermediate, target = Shape(**model["intermediate"]), Shape(**model["target"])
    for key in ("width", "layers", "ffn"):
        if getattr(target, key) < getattr(intermediate, key):
            raise ScenarioError(f"scenario key 'model.target': {key}={getattr(target, key)} is smaller "
                                f"than model.intermediate {key}={getattr(intermediate, key)}")
    for i, small in enumerate(model["small_shapes"]):
        for key in ("width", "layers", "ffn"):
            if small[key] > getattr(intermediate, key):
                raise ScenarioError(
                    f"scenario key 'model.small_shapes[{i}]': {key}={small[key]} is larger than "
                    f"model.intermediate {key}={getattr(intermediate, key)}; small models grow into it")
    _check_faults(s)
    _check_async(s)
    from .privacy import check_privacy_scenario
    problem = check_privacy_scenario(s)
    if problem:
        raise ScenarioError(problem)
    _resolve_export(s)
    from .tracking import missing_tracker
    for name in s["trackers"]:
        if missing_tracker(name):
            raise ScenarioError(f"scenario key 'trackers': {missing_tracker(name)}")
    template = model["checkpoints"]
    if s["data"].get("tokenizer") == "from_checkpoint" and template is None:
        raise ScenarioError("scenario key 'data.tokenizer': 'from_checkpoint' is not allowed without "
                            "model.checkpoints (the folders holding each participant's model and tokenizer)")
    if template is not None:
        try:
            template.format(id=0)
        except (KeyError, IndexError, ValueError) as err:
            raise ScenarioError(f"scenario key 'model.checkpoints': {template!r} is not a folder template "
                                f"({type(err).__name__}: {err}); use {{id}} for the participant's id, "
                                f"e.g. 'ckpt/participant_{{id}}'") from None
    _check_training(s)
    if s["hosts"]["num_gpus"] > 1 and s["hosts"]["num_gpus"] != int(s["hosts"]["num_gpus"]):
        raise ScenarioError(f"scenario key 'hosts.num_gpus': {s['hosts']['num_gpus']} is not allowed; "
                            "a fraction below 1 or a whole number of GPUs")


def _check_training(s: dict) -> None:
    """A micro-batch no larger than the batch; a precision torch can run on CPU hosts."""
    training = s["training"]
    micro = training["micro_batch_size"]
    if micro is not None and micro > training["batch_size"]:
        raise ScenarioError(f"scenario key 'training.micro_batch_size': {micro} is not allowed; at most "
                            f"training.batch_size={training['batch_size']} (or null for whole batches)")
    if s["hosts"]["num_gpus"] == 0 and training["precision"] != "fp32":
        from .training import precision_problem
        problem = precision_problem(training["precision"], "cpu")
        if problem:
            raise ScenarioError(f"scenario key 'training.precision': {training['precision']} is not allowed "
                                f"on CPU hosts (hosts.num_gpus=0): {problem}; use fp32 or bf16")


def _check_async(s: dict) -> None:
    """server.mode: async replaces the round's sampling, deadline and budget with its own
    concurrency, buffer and staleness bound, and aggregates individual updates."""
    server = s["server"]
    if server["mode"] != "async":
        return
    if server["concurrency"] > s["participants"]:
        raise ScenarioError(f"scenario key 'server.concurrency': {server['concurrency']} is more than "
                            f"participants={s['participants']}")
    if server["buffer_size"] > server["concurrency"]:
        raise ScenarioError(f"scenario key 'server.buffer_size': {server['buffer_size']} is more than "
                            f"server.concurrency={server['concurrency']}; at most that many can arrive")
    for key, value, default in (("deadline_s", s["deadline_s"], None),
                                ("sampling.fraction", s["sampling"]["fraction"], None),
                                ("sampling.count", s["sampling"]["count"], None),
                                ("sampling.over_selection", s["sampling"]["over_selection"], 1.0),
                                ("server.aggregator", server["aggregator"], "fedavg")):
        if value != default:
            raise ScenarioError(f"scenario key '{key}': {value!r} is not allowed with server.mode: async; "
                                f"allowed: {default!r} (async draws participants as others arrive and "
                                f"bounds lateness with server.max_staleness)")
    budgets = [key for key in BUDGETS if s["budget"][key] is not None]
    if budgets:
        raise ScenarioError(f"scenario key 'budget.{budgets[0]}': not allowed with server.mode: async; "
                            f"rounds (aggregations) is the cap")
    for key in ("dp", "secure_aggregation"):
        if s["privacy"].get(key) is not None:
            raise ScenarioError(f"scenario key 'privacy.{key}': not allowed with server.mode: async "
                                f"(it needs a synchronous cohort)")
    not_shared = [m for m in s["methods"] if m in ("independent_growth", "local_small", "centralized")]
    if not_shared:
        raise ScenarioError(f"scenario key 'methods': {not_shared[0]!r} is not allowed with server.mode: "
                            f"async (it shares nothing to aggregate); allowed: fedgrow, fedavg_scratch")


def _check_faults(s: dict) -> None:
    """Injected faults must name a participant, host, round and method this scenario has: a
    fault that can never fire is a mistake, not a no-op."""
    actors = s["hosts"]["actors"]
    hosts = min(actors, s["participants"]) if actors is not None else None  # see actors.pool
    for kind, who in (("kill_host", "host"), ("bad_update", "participant")):
        for i, fault in enumerate(s["faults"][kind]):
            key = f"scenario key 'faults.{kind}[{i}]"
            if fault["round"] > s["rounds"]:
                raise ScenarioError(f"{key}.round': {fault['round']} is after the last round "
                                    f"({s['rounds']})")
            if fault["method"] is not None and fault["method"] not in s["methods"]:
                raise ScenarioError(f"{key}.method': {fault['method']!r} is not allowed; it is not one "
                                    f"of the scenario's methods {s['methods']}")
            if who == "participant" and fault[who] >= s["participants"]:
                raise ScenarioError(f"{key}.participant': {fault[who]} does not exist; participants "
                                    f"are numbered 0 to {s['participants'] - 1}")
            if who == "host" and hosts is not None and fault[who] >= hosts:
                raise ScenarioError(f"{key}.host': {fault[who]} does not exist; hosts are numbered 0 "
                                    f"to {hosts - 1} (hosts.actors={actors}, participants="
                                    f"{s['participants']})")


def _resolve_export(s: dict) -> None:
    """export: null becomes all or none (by the number of participants); an explicit choice
    needs fedgrow among the methods and ids of existing participants."""
    export = s["export"]
    if export is None:
        s["export"] = "all" if s["participants"] <= EXPORT_AUTO_MAX and "fedgrow" in s["methods"] else "none"
        return
    if export != "none" and "fedgrow" not in s["methods"]:
        raise ScenarioError(f"scenario key 'export': {export!r} is not allowed; it exports fedgrow's grown "
                            f"models and methods {s['methods']} has no fedgrow (use none)")
    if isinstance(export, list):
        for i, pid in enumerate(export):
            if pid >= s["participants"]:
                raise ScenarioError(f"scenario key 'export[{i}]': {pid} does not exist; participants are "
                                    f"numbered 0 to {s['participants'] - 1}")


def family_of_scenario(s: dict, num_classes: int | None = None, vocab_size: int | None = None,
                       max_positions: int | None = None):
    """The model family a resolved scenario describes (sizes the data or the checkpoints decide
    may be passed)."""
    model = s["model"]
    classes = num_classes or 2
    if family_class(model["family"]).name == "text":
        return get_family(model["family"], vocab_size=vocab_size or model["vocab_size"],
                          max_positions=max_positions or model["max_positions"], num_classes=classes,
                          dropout=model["dropout"])
    return get_family(model["family"], image_size=model["image_size"], patch_size=model["patch_size"],
                      channels=model["channels"], num_classes=classes, dropout=model["dropout"])


def parse_override(text_: str) -> tuple[list[str], object]:
    """'training.lr=3e-4' -> (['training', 'lr'], 3e-4); the value is read as YAML."""
    if "=" not in text_:
        raise ScenarioError(f"--set {text_!r}: expected key=value, e.g. --set rounds=20")
    key, _, value = text_.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ScenarioError(f"--set {text_!r}: expected key=value, e.g. --set rounds=20")
    try:
        parsed = read_yaml(value, f"--set {text_!r}") if value.strip() else None
    except ScenarioError:
        parsed = value  # not YAML (e.g. an unbalanced bracket): the plain string, checked as such
    return key.split("."), parsed


def set_key(raw: dict, path: list[str], value, origin: str) -> None:
    """raw[a][b][c] = value for path [a, b, c], making sections as needed (in place)."""
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ScenarioError(f"{origin}: '{part}' is not a section")
    node[path[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        set_key(raw, path, value, f"--set {item!r}")
    return raw


def load_sweep(raw: dict, overrides: list[str] = ()) -> tuple[dict, dict]:
    """Validate a raw scenario (plus overrides): (the run scenario, every default filled in and
    no sweep section; the sweep section {seeds, grid})."""
    resolved = _resolve(SCHEMA, apply_overrides(raw or {}, list(overrides)), "")
    sweep = resolved.pop("sweep")
    _check_together(resolved)
    return _absolute_data_paths(resolved), sweep


def resolve_grid(value: dict) -> dict:
    """A sweep grid checked as sweep.grid is (the form; each setting's keys and values are
    checked when it is resolved)."""
    return grid()("sweep.grid", value)


def resolve_variants(value: dict) -> dict:
    """Sweep variants checked as sweep.variants are."""
    return variants()("sweep.variants", value)


def resolve_scenario(raw: dict, overrides: list[str] = ()) -> dict:
    """Validate a raw scenario mapping (plus `key=value` overrides) and fill every default; a
    sweep section is validated and left out (see load_sweep)."""
    return load_sweep(raw, overrides)[0]


def read_scenario_file(path: str | Path) -> dict:
    """The raw mapping of a scenario file, named after the file unless it names itself."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file {str(path)!r} does not exist")
    raw = read_yaml(path.read_text(), f"scenario file {str(path)!r}") or {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario file {str(path)!r}: expected a mapping of keys at the top level")
    raw.setdefault("name", path.stem)
    return raw


def load_scenario(path: str | Path, overrides: list[str] = ()) -> dict:
    return resolve_scenario(read_scenario_file(path), overrides)


def _absolute_data_paths(s: dict) -> dict:
    """A scenario's relative `data.files` paths name files in the folder launch.py runs in; they
    are made absolute when the scenario is resolved, since Ray workers, a cluster's copy of the
    code and a sweep's runs each work in folders of their own."""
    files = s["data"].get("files")
    for key in ("train", "test"):
        if files and files[key]:
            files[key] = str(Path.cwd() / Path(files[key]).expanduser())
    return s
