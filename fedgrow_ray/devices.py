"""Simulated devices: each participant's profile, the virtual clock that decides who is late,
availability per round, memory budgets, and round selection with over-selection.

Everything here is a pure, seeded function of (seed, participant id[, round]). Simulated time,
never measured wall time, decides who is late, so a seed reproduces a run no matter how many
workers there are or in which order they finish (FedScale-style virtual clock).

Scenario keys (the mapping under `devices:`; every key is optional):

    devices:
      reference_gflops: 50      # sustained GFLOP/s of the reference device (compute_speed 1.0)
      compute_speed: 1.0        # relative to the reference device (0.25 = 4x slower)
      upload_mbps: 20           # megabits (10^6 bits) per second
      download_mbps: 100
      availability: 1.0         # probability of being reachable in a given round, in [0, 1]
      memory_mb: .inf           # training memory budget in MiB; .inf or "inf" = unlimited
      trace: null               # CSV or Parquet file: one row per participant (see below)

Each of the five device fields is a number (a constant) or a named distribution:

    {dist: constant, value: 2.0}
    {dist: lognormal, median: 1.0, sigma: 0.5}     # exp(log(median) + sigma * N(0, 1))
    {dist: uniform, low: 0.5, high: 2.0}
    {dist: choice, values: [0.25, 1, 4], weights: [1, 2, 1]}   # weights optional (equal)

compute_speed, upload_mbps, download_mbps and memory_mb must be > 0 (inf allowed where a value
is listed, not for uniform bounds or a lognormal median); availability must lie in [0, 1], and
draws from a lognormal availability are clipped to [0, 1].

A trace has columns named after the five fields (any subset; other column names are an error
so that a typo never silently falls back). Row i goes to participant i, cycling when there are
fewer rows than participants; a field without a column is drawn from its distribution. Empty
cells are an error. A relative trace path is resolved against `base_dir` (the scenario's
folder) when given, otherwise against the working directory.

Determinism: the draw for one field of participant p uses its own numpy Generator seeded by
SeedSequence([seed, p, stream tag, field tag]), so a profile depends only on (seed, p) and the
spec; never on how many participants exist or the order in which profiles are asked for.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEVICE_FIELDS = ("compute_speed", "upload_mbps", "download_mbps", "availability", "memory_mb")

DEFAULTS = {
    "reference_gflops": 50.0,
    "compute_speed": 1.0,
    "upload_mbps": 20.0,
    "download_mbps": 100.0,
    "availability": 1.0,
    "memory_mb": math.inf,
    "trace": None,
}

# Keys of each distribution mapping besides `dist`, and which of them may be left out.
DISTRIBUTIONS = {
    "constant": ("value",),
    "lognormal": ("median", "sigma"),
    "uniform": ("low", "high"),
    "choice": ("values", "weights"),
}
_OPTIONAL_KEYS = {"weights"}

TRACE_SUFFIXES = (".csv", ".parquet", ".pq")

# Fixed stream tags: changing them changes every seeded draw of every run.
_PROFILE_STREAM = 0xDE71CE
_AVAILABILITY_STREAM = 0xA7A11
_SAMPLING_STREAM = 0x5A3B1E
_FIELD_TAGS = {"compute_speed": 1, "upload_mbps": 2, "download_mbps": 3, "availability": 4,
               "memory_mb": 5}

# Bytes of training state per parameter (fp32): weights 4; gradient 4 + AdamW moments 8.
WEIGHT_BYTES = 4
TRAINABLE_EXTRA_BYTES = 12
ACTIVATION_BYTES = 4
MIB = 2 ** 20


# ---- profiles --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceProfile:
    """What one participant's device can do; see the module docstring for units."""

    compute_speed: float
    upload_mbps: float
    download_mbps: float
    availability: float
    memory_mb: float = math.inf

    def __post_init__(self):
        for name in DEVICE_FIELDS:
            problem = _field_problem(name, getattr(self, name))
            if problem:
                raise ValueError(f"DeviceProfile: {name}={getattr(self, name)!r} {problem}")


def check_devices_spec(raw: dict | None, base_dir: str | os.PathLike | None = None) -> dict:
    """Validate the `devices:` mapping and fill defaults.

    Returns a new dict with every key present: `reference_gflops` a float, each device field as
    a distribution mapping ({dist: constant, value: x} for a plain number) and `trace` an
    absolute path string or None. Checking a checked spec again returns it unchanged. Raises
    ValueError naming the full key path ("devices.compute_speed.sigma"), the bad value and what
    is allowed."""
    return _check(raw, base_dir)[0]


def device_profiles(spec: dict, num_participants: int, seed: int) -> list[DeviceProfile]:
    """The profiles of participants 0 .. num_participants - 1 (see `device_profile`)."""
    if isinstance(num_participants, bool) or not isinstance(num_participants, int) \
            or num_participants < 0:
        raise ValueError(f"num_participants={num_participants!r} must be an integer >= 0")
    spec, trace = _check(spec)
    return [_profile(spec, trace, pid, seed) for pid in range(num_participants)]


def device_profile(spec: dict, participant_id: int, seed: int) -> DeviceProfile:
    """The profile of one participant; identical to its entry in `device_profiles`, so an actor
    can build only the profiles of the participants it hosts."""
    spec, trace = _check(spec)
    return _profile(spec, trace, participant_id, seed)


def is_available(profile: DeviceProfile, participant_id: int, round_number: int, seed: int) -> bool:
    """Whether the participant is reachable in this round: a Bernoulli(availability) draw that
    depends only on (seed, participant id, round)."""
    if profile.availability >= 1.0:
        return True
    if profile.availability <= 0.0:
        return False
    entropy = [_seed_int("seed", seed), _seed_int("participant_id", participant_id),
               _seed_int("round_number", round_number), _AVAILABILITY_STREAM]
    return bool(_generator(entropy).random() < profile.availability)


# ---- virtual clock ---------------------------------------------------------------------------

def step_flops(shape_params: int, tokens_per_sample: int, batch_size: int, width: int,
               layers: int, seq_len: int) -> float:
    """Floating-point operations of one training step (forward + backward) on one batch.

        tokens = tokens_per_sample * batch_size
        flops  = 6 * shape_params * tokens                  # matmuls with the weights
               + 12 * layers * seq_len * width * tokens     # attention scores and mixing

    The weight term counts a multiply-add as 2 FLOPs, times 3 for forward + backward (input
    and weight gradients). The attention term is Q K^T and softmax(.) V per token per layer,
    2 * 2 * seq_len * width FLOPs forward, times 3 (the PaLM appendix B estimate). Embedding
    look-ups are counted in shape_params, which slightly overestimates; it is a cost model,
    not a profiler."""
    for name, value in (("shape_params", shape_params), ("tokens_per_sample", tokens_per_sample),
                        ("batch_size", batch_size), ("width", width), ("layers", layers),
                        ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"step_flops: {name}={value!r} must be an integer >= 0")
    tokens = tokens_per_sample * batch_size
    return float(6 * shape_params * tokens + 12 * layers * seq_len * width * tokens)


@dataclass(frozen=True)
class SimulatedTime:
    """Seconds on the virtual clock for one participant's round: download the global state,
    compute the local steps, upload the update (in that order)."""

    download_s: float
    compute_s: float
    upload_s: float

    @property
    def total_s(self) -> float:
        return self.download_s + self.compute_s + self.upload_s


def simulated_time(profile: DeviceProfile, flops: float, bytes_up: int, bytes_down: int,
                   reference_gflops: float) -> SimulatedTime:
    """Virtual time of one round on `profile`:

        compute_s  = flops / (compute_speed * reference_gflops * 1e9)
        upload_s   = bytes_up * 8 / (upload_mbps * 1e6)
        download_s = bytes_down * 8 / (download_mbps * 1e6)
    """
    for name, value in (("flops", flops), ("bytes_up", bytes_up), ("bytes_down", bytes_down)):
        if not _is_number(value) or not value >= 0 or math.isinf(value):
            raise ValueError(f"simulated_time: {name}={value!r} must be a finite number >= 0")
    if not _is_number(reference_gflops) or not 0 < reference_gflops < math.inf:
        raise ValueError(f"simulated_time: reference_gflops={reference_gflops!r} must be a "
                         f"finite number > 0")
    return SimulatedTime(
        download_s=bytes_down * 8 / (profile.download_mbps * 1e6),
        compute_s=flops / (profile.compute_speed * reference_gflops * 1e9),
        upload_s=bytes_up * 8 / (profile.upload_mbps * 1e6),
    )


# ---- memory ----------------------------------------------------------------------------------

def training_memory_mb(params: int, trainable_params: int, activations_per_sample: float,
                       batch_size: int) -> float:
    """Estimated MiB needed to train with AdamW in fp32:

        bytes = 4 * params                                  # weights
              + 12 * trainable_params                       # gradient 4 + two AdamW moments 8
              + 4 * activations_per_sample * batch_size     # activations kept for backward

    `activations_per_sample` counts fp32 values (see `activation_values_per_sample`). Framework
    overhead, the CUDA context and allocator fragmentation are not included."""
    for name, value in (("params", params), ("trainable_params", trainable_params),
                        ("activations_per_sample", activations_per_sample),
                        ("batch_size", batch_size)):
        if not _is_number(value) or not 0 <= value < math.inf:
            raise ValueError(f"training_memory_mb: {name}={value!r} must be a finite number >= 0")
    if trainable_params > params:
        raise ValueError(f"training_memory_mb: trainable_params={trainable_params} exceeds "
                         f"params={params}")
    total = (WEIGHT_BYTES * params + TRAINABLE_EXTRA_BYTES * trainable_params
             + ACTIVATION_BYTES * activations_per_sample * batch_size)
    return total / MIB


def activation_values_per_sample(width: int, layers: int, heads: int, seq_len: int,
                                 ffn: int | None = None, checkpointing: bool = False) -> float:
    """A rough count of activation values one sample keeps for the backward pass of a
    transformer encoder:

        layers * (seq_len * (8 * width + 2 * ffn) + 2 * heads * seq_len ** 2)

    per layer and token: the layer input, LayerNorm-1 output, Q, K, V, attention output,
    LayerNorm-2 input and output (8 * width), FFN hidden before and after GELU (2 * ffn); per
    head: attention scores and probabilities (2 * seq_len^2). Dropout masks, embeddings and the
    head are left out. `ffn` defaults to 4 * width.

    With activation checkpointing each layer keeps only its input (seq_len * width) and one
    layer's activations are rebuilt at a time during the backward pass:

        layers * seq_len * width + (seq_len * (8 * width + 2 * ffn) + 2 * heads * seq_len ** 2)"""
    ffn = 4 * width if ffn is None else ffn
    per_layer = seq_len * (8 * width + 2 * ffn) + 2 * heads * seq_len ** 2
    if checkpointing:
        return float(layers * seq_len * width + per_layer)
    return float(layers * per_layer)


@dataclass(frozen=True)
class MemoryPlan:
    """How a participant trains within its memory budget: the micro-batch size (None: the
    whole batch at once), whether the grown model's layers are checkpointed (recomputed in the
    backward pass: one more forward per step on the virtual clock), and the MiB it needs."""

    micro_batch_size: int | None
    checkpointing: bool
    need_mb: float


def plan_training_memory(budget_mb: float, need_mb, batch_size: int,
                         micro_batch_size: int | None = None) -> tuple[MemoryPlan | None, str]:
    """The least costly way to train a batch of `batch_size` within `budget_mb`, with a reason;
    (None, reason with the numbers) when the budget cannot hold even one sample with
    checkpointing. `need_mb(samples, checkpointing)` is the MiB needed with `samples` samples'
    activations alive; need_mb(0, True) is the model itself (weights, gradients, optimiser).

    Tried in order: as configured (training.micro_batch_size, or the full batch); the same
    with activation checkpointing; checkpointing with micro-batches halved down to 1 sample."""
    size = batch_size if micro_batch_size is None else min(micro_batch_size, batch_size)
    configured = None if size >= batch_size else size
    candidates = [(configured, False), (configured, True)]
    while size > 1:
        size = (size + 1) // 2
        candidates.append((size, True))
    for micro, checkpointing in candidates:
        need = need_mb(micro or batch_size, checkpointing)
        if need <= budget_mb:
            plan = MemoryPlan(micro, checkpointing, need)
            if (micro, checkpointing) == candidates[0]:
                return plan, f"{format_mib(need)} MiB needed fits the memory budget {format_mib(budget_mb)} MiB"
            full = need_mb(batch_size, False)
            how = f"micro-batches of {micro}" if micro else "full batches"
            return plan, (f"memory budget {format_mib(budget_mb)} MiB < {format_mib(full)} MiB needed for a "
                          f"batch of {batch_size}: trains in {how} with activation checkpointing "
                          f"({format_mib(need)} MiB)")
    model, one = need_mb(0, True), need_mb(1, True)
    if model > budget_mb:
        return None, (f"memory budget {format_mib(budget_mb)} MiB < {format_mib(model)} MiB needed to hold "
                      f"the model (weights, gradients, optimiser state)")
    return None, (f"memory budget {format_mib(budget_mb)} MiB < {format_mib(one)} MiB needed for the model "
                  f"({format_mib(model)} MiB) and one sample's activations with checkpointing")


def fit_shape(profile: DeviceProfile, candidates: list[tuple[str, float]]) -> tuple[str | None, str]:
    """The first candidate (ordered from preferred, largest, to smallest) whose memory need
    fits the profile's budget, with a reason; (None, reason) when none fits."""
    if not candidates:
        raise ValueError("fit_shape: no candidate shapes given")
    budget = profile.memory_mb
    for name, needed_mb in candidates:
        if not _is_number(needed_mb) or not needed_mb >= 0:
            raise ValueError(f"fit_shape: shape {name}: needed_mb={needed_mb!r} must be a number >= 0")
        if needed_mb <= budget:
            return name, (f"{format_mib(needed_mb)} MiB needed by shape {name} fits the memory budget "
                          f"{format_mib(budget)} MiB")
    name, needed_mb = candidates[-1]
    return None, (f"memory budget {format_mib(budget)} MiB < {format_mib(needed_mb)} MiB needed by the "
                  f"smallest shape {name}")


# ---- round selection and deadline -------------------------------------------------------------

def sample_participants(participant_ids: list[int] | range, round_number: int, seed: int,
                        fraction: float | None = None, count: int | None = None,
                        over_selection: float = 1.0) -> list[int]:
    """The participants asked to train in this round, sorted by id. `participant_ids` may be a
    range (already sorted, no duplicates): then no list of every participant is built, and
    numpy's draw without replacement of a few among many keeps a set of the drawn only.

    The target k is `count`, or `fraction` of the candidates rounded half up (at least 1), or
    all of them when both are None; `over_selection` >= 1 asks ceil(k * over_selection) (capped
    at all candidates) so that the driver can keep the first k arrivals (FedScale's
    over-commitment). The draw depends only on (seed, round) and the set of candidates, not on
    their order."""
    if isinstance(participant_ids, range) and participant_ids.step == 1:
        ids = participant_ids
    else:
        ids = sorted(participant_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("sample_participants: participant_ids contains duplicates")
    if fraction is not None and count is not None:
        raise ValueError(f"sample_participants: give fraction ({fraction}) or count ({count}), "
                         f"not both")
    if not _is_number(over_selection) or not 1.0 <= over_selection < math.inf:
        raise ValueError(f"sample_participants: over_selection={over_selection!r} must be a "
                         f"finite number >= 1.0")
    n = len(ids)
    if fraction is not None:
        if not _is_number(fraction) or not 0 < fraction <= 1:
            raise ValueError(f"sample_participants: fraction={fraction!r} must be in (0, 1]")
        k = max(1, math.floor(fraction * n + 0.5))
    elif count is not None:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"sample_participants: count={count!r} must be an integer >= 1")
        k = int(count)
    else:
        k = n
    # round() first so that 10 * 1.3 = 13.000000000000002 asks 13, not 14.
    asked = min(n, math.ceil(round(k * over_selection, 9)))
    if asked >= n:
        return list(ids)
    entropy = [_seed_int("seed", seed), _seed_int("round_number", round_number), _SAMPLING_STREAM]
    chosen = _generator(entropy).choice(n, size=asked, replace=False)
    return sorted(ids[i] for i in chosen)


def apply_deadline(times: dict[int, SimulatedTime], deadline_s: float | None,
                   keep_first: int | None = None) -> tuple[list[int], list[int], float]:
    """Which updates the server uses, on the virtual clock.

    Returns (kept, late, round_time_s), kept and late sorted by participant id:
      - a participant whose total_s > deadline_s is late (arriving exactly at it is in time);
      - with keep_first=K (over-selection) the server keeps the K earliest arrivals in time
        (ties broken by participant id) and stops waiting; those arriving after them are late
        too, since their updates are not used;
      - round_time_s is when the server stops waiting: the last kept arrival, or the deadline
        when someone was late for it or nobody arrived in time; 0.0 when nobody was asked.
    `deadline_s` None means no deadline."""
    if deadline_s is not None and (not _is_number(deadline_s) or not deadline_s >= 0):
        raise ValueError(f"apply_deadline: deadline_s={deadline_s!r} must be a number >= 0 or None")
    if keep_first is not None and (isinstance(keep_first, bool)
                                   or not isinstance(keep_first, (int, np.integer))
                                   or keep_first < 1):
        raise ValueError(f"apply_deadline: keep_first={keep_first!r} must be an integer >= 1 or None")
    arrivals = sorted((t.total_s, pid) for pid, t in times.items())
    in_time = [(s, pid) for s, pid in arrivals
               if deadline_s is None or s <= deadline_s]
    missed_deadline = len(in_time) < len(arrivals)
    kept = in_time if keep_first is None else in_time[:keep_first]
    kept_ids = {pid for _, pid in kept}
    late = sorted(pid for pid in times if pid not in kept_ids)
    if keep_first is not None and len(kept) == keep_first:
        round_time = kept[-1][0]              # the K-th arrival: stop waiting for the rest
    elif missed_deadline:
        round_time = float(deadline_s)
    elif kept:
        round_time = kept[-1][0]
    else:
        round_time = 0.0
    return sorted(kept_ids), late, float(round_time)


# ---- internals -------------------------------------------------------------------------------

def _check(raw, base_dir=None) -> tuple[dict, dict[str, tuple[float, ...]] | None]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"devices: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(DEFAULTS), key=str)
    if unknown:
        raise ValueError(f"devices: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    spec = {}
    gflops = raw.get("reference_gflops", DEFAULTS["reference_gflops"])
    if not _is_number(gflops) or not 0 < gflops < math.inf:
        raise ValueError(f"devices.reference_gflops={gflops!r}: must be a finite number > 0 "
                         f"(sustained GFLOP/s of the reference device)")
    spec["reference_gflops"] = float(gflops)
    for name in DEVICE_FIELDS:
        spec[name] = _check_distribution(f"devices.{name}", name, raw.get(name, DEFAULTS[name]))
    trace_path, trace = _check_trace(raw.get("trace"), base_dir)
    spec["trace"] = trace_path
    return spec, trace


def _check_distribution(path: str, field: str, value) -> dict:
    if not isinstance(value, dict):
        return {"dist": "constant", "value": _check_value(path, field, value)}
    if "dist" not in value:
        raise ValueError(f"{path}: a distribution mapping needs `dist`; allowed: "
                         f"{sorted(DISTRIBUTIONS)}")
    dist = value["dist"]
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"{path}.dist={dist!r}: unknown distribution; allowed: "
                         f"{sorted(DISTRIBUTIONS)}")
    keys = DISTRIBUTIONS[dist]
    unknown = sorted(set(value) - set(keys) - {"dist"}, key=str)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} for dist {dist}; allowed: "
                         f"{['dist', *keys]}")
    missing = [k for k in keys if k not in value and k not in _OPTIONAL_KEYS]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} for dist {dist}")

    if dist == "constant":
        return {"dist": dist, "value": _check_value(f"{path}.value", field, value["value"])}
    if dist == "lognormal":
        median, sigma = value["median"], value["sigma"]
        if not _is_number(median) or not 0 < median < math.inf:
            raise ValueError(f"{path}.median={median!r}: must be a finite number > 0")
        if not _is_number(sigma) or not 0 <= sigma < math.inf:
            raise ValueError(f"{path}.sigma={sigma!r}: must be a finite number >= 0")
        return {"dist": dist, "median": float(median), "sigma": float(sigma)}
    if dist == "uniform":
        low = _check_value(f"{path}.low", field, value["low"])
        high = _check_value(f"{path}.high", field, value["high"])
        for key, bound in (("low", low), ("high", high)):
            if math.isinf(bound):
                raise ValueError(f"{path}.{key}={bound!r}: uniform bounds must be finite")
        if low > high:
            raise ValueError(f"{path}: low={low} > high={high}; need low <= high")
        return {"dist": dist, "low": low, "high": high}
    # choice
    values = value["values"]
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{path}.values={values!r}: must be a non-empty list")
    values = [_check_value(f"{path}.values[{i}]", field, v) for i, v in enumerate(values)]
    weights = value.get("weights")
    if weights is None:
        weights = [1.0] * len(values)
    if not isinstance(weights, (list, tuple)) or len(weights) != len(values):
        raise ValueError(f"{path}.weights={weights!r}: must be a list as long as values "
                         f"({len(values)})")
    for i, w in enumerate(weights):
        if not _is_number(w) or not 0 <= w < math.inf:
            raise ValueError(f"{path}.weights[{i}]={w!r}: must be a finite number >= 0")
    if sum(weights) <= 0:
        raise ValueError(f"{path}.weights={list(weights)!r}: must not sum to 0")
    return {"dist": dist, "values": values, "weights": [float(w) for w in weights]}


def _check_value(path: str, field: str, value) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity", "+inf"):
        value = math.inf
    if not _is_number(value):
        raise ValueError(f"{path}={value!r}: must be a number; {_ALLOWED[field]}")
    problem = _field_problem(field, value)
    if problem:
        raise ValueError(f"{path}={value!r}: {problem}")
    return float(value)


_ALLOWED = {
    "compute_speed": "allowed: > 0 (1.0 = the reference device)",
    "upload_mbps": "allowed: > 0 megabits per second",
    "download_mbps": "allowed: > 0 megabits per second",
    "availability": "allowed: a probability in [0, 1]",
    "memory_mb": "allowed: > 0 MiB, or inf for unlimited",
}


def _field_problem(field: str, value) -> str | None:
    if not _is_number(value) or math.isnan(value):
        return f"must be a number; {_ALLOWED[field]}"
    if field == "availability":
        return None if 0.0 <= value <= 1.0 else f"out of range; {_ALLOWED[field]}"
    return None if value > 0 else f"out of range; {_ALLOWED[field]}"


def _check_trace(value, base_dir) -> tuple[str | None, dict[str, tuple[float, ...]] | None]:
    if value is None:
        return None, None
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"devices.trace={value!r}: must be a path to a CSV or Parquet file, or null")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or ".") / path
    path = path.resolve()
    if path.suffix.lower() not in TRACE_SUFFIXES:
        raise ValueError(f"devices.trace={str(value)!r}: unsupported file type {path.suffix!r}; "
                         f"allowed: {list(TRACE_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"devices.trace={str(value)!r}: file not found (looked at {path})")
    stat = path.stat()
    return str(path), _read_trace(str(value), str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_trace(shown: str, path: str, mtime_ns: int, size: int) -> dict[str, tuple[float, ...]]:
    # Cached on (path, modification time, size): an actor building its participants' profiles
    # one by one reads the file once.
    where = f"devices.trace={shown!r}"
    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv
            table = pacsv.read_csv(path)
        else:
            import pyarrow.parquet as pq
            table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes a message naming the key
        raise ValueError(f"{where}: cannot be read ({type(err).__name__}: {err})") from None
    columns = table.column_names
    unknown = [c for c in columns if c not in DEVICE_FIELDS]
    if unknown:
        raise ValueError(f"{where}: unknown column(s) {unknown}; allowed: {list(DEVICE_FIELDS)} "
                         f"(any subset)")
    if not columns:
        raise ValueError(f"{where}: no columns; expected any of {list(DEVICE_FIELDS)}")
    if table.num_rows == 0:
        raise ValueError(f"{where}: has no rows; expected one row per participant")
    trace = {}
    for name in columns:
        values = []
        for row, cell in enumerate(table.column(name).to_pylist()):
            if cell is None or (isinstance(cell, str) and not cell.strip()):
                raise ValueError(f"{where}: column {name!r} row {row} is empty")
            if isinstance(cell, str):
                try:
                    cell = float(cell)
                except ValueError:
                    raise ValueError(f"{where}: column {name!r} row {row}: {cell!r} is not a "
                                     f"number; {_ALLOWED[name]}") from None
            problem = _field_problem(name, cell)
            if problem:
                raise ValueError(f"{where}: column {name!r} row {row}: {cell!r} {problem}")
            values.append(float(cell))
        trace[name] = tuple(values)
    return trace


def _profile(spec: dict, trace, participant_id: int, seed: int) -> DeviceProfile:
    entropy = [_seed_int("seed", seed), _seed_int("participant_id", participant_id), _PROFILE_STREAM]
    values = {}
    for name in DEVICE_FIELDS:
        if trace is not None and name in trace:
            column = trace[name]
            values[name] = column[participant_id % len(column)]
        else:
            values[name] = _draw(spec[name], entropy + [_FIELD_TAGS[name]], name)
    return DeviceProfile(**values)


def _draw(dist: dict, entropy: list[int], field: str) -> float:
    kind = dist["dist"]
    if kind == "constant":
        return float(dist["value"])
    rng = _generator(entropy)
    if kind == "lognormal":
        value = float(math.exp(math.log(dist["median"]) + dist["sigma"] * rng.standard_normal()))
    elif kind == "uniform":
        value = float(rng.uniform(dist["low"], dist["high"]))
    else:
        weights = np.asarray(dist["weights"], dtype=float)
        value = float(dist["values"][rng.choice(len(weights), p=weights / weights.sum())])
    if field == "availability":
        value = min(1.0, max(0.0, value))
    elif value <= 0:  # a lognormal underflow; keep the profile valid
        value = float(np.nextafter(0.0, 1.0))
    return value


def _generator(entropy: list[int]) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _seed_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0")
    return int(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def format_mib(value: float) -> str:
    if math.isinf(value):
        return "unlimited" if value > 0 else str(value)
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"  # small budgets keep 3 digits
