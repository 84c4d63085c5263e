"""What every process of a run derives from the resolved scenario and the prepared data: the
model family, the shapes, each participant's device profile and small shape, cost estimates.

The driver and every participant host build their own `Experiment` from the same two inputs,
so they agree on everything without sending it around.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from .config import family_of_scenario
from .models import family_class
from .data import ParticipantData, PreparedData, prepare_data
from .data.store import tokenizer_fingerprint
from .devices import (DeviceProfile, activation_values_per_sample, device_profile, fit_shape,
                      step_flops, training_memory_mb)
from .dual_ligo import count_parameters
from .ligo import LiGO
from .models import Shape
from .training import derive_seed


DEFAULT_CACHE = Path("~/.cache/fedgrow_ray/data")
# The centralized baseline's single trainer: all participants' training data pooled in one
# place, the largest small shape, a reference device without limits.
CENTER = -1


def prepare_scenario_data(scenario: dict, cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """The prepared data folder for a resolved scenario, built once per machine and cache."""
    model = scenario["model"]
    return prepare_data(scenario["data"], family_class(model["family"]).name, scenario["participants"],
                        scenario["seed"],
                        cache_dir, max_positions=model["max_positions"],
                        vocab_size=model["vocab_size"], image_size=model["image_size"],
                        channels=model["channels"], tokenizer_dirs=checkpoint_tokenizers(scenario))


def checkpoint_tokenizers(scenario: dict) -> list[str] | None:
    """With data.tokenizer: from_checkpoint, one checkpoint folder per distinct tokenizer among
    the participants' checkpoints, in the order participants first use them (participant 0's
    first): the texts are encoded once with each. A ValueError names a folder without one."""
    if scenario["data"].get("tokenizer") != "from_checkpoint":
        return None
    template = scenario["model"]["checkpoints"]
    folders: dict[str, str] = {}
    for pid in range(scenario["participants"]):
        folder = Path(template.format(id=pid))
        try:
            folders.setdefault(tokenizer_fingerprint(folder), str(folder.resolve()))
        except (OSError, ValueError) as err:
            raise ValueError(f"scenario key 'data.tokenizer': from_checkpoint: participant {pid}'s "
                             f"checkpoint: {err}") from None
    return list(folders.values())


class Experiment:
    def __init__(self, scenario: dict, data_path: str | Path):
        self.scenario = scenario
        self.seed = scenario["seed"]
        self.data = PreparedData.open(data_path)  # encoding 0: participant 0's tokenizer
        positions = None
        if scenario["data"].get("tokenizer") == "from_checkpoint":
            # The checkpoints' position table (BERT miniatures: 512), which model.max_positions,
            # the length texts are encoded to, may leave partly unused.
            config = json.loads((self.checkpoint_path(0) / "config.json").read_text())
            positions = config.get("max_position_embeddings")
        self.family = family_of_scenario(scenario, num_classes=self.data.num_classes,
                                         vocab_size=self.data.vocab_size, max_positions=positions)
        # With several checkpoint tokenizers, one data view and one family (its vocabulary) per
        # encoding; participant 0's is encoding 0, the one above.
        self._encodings = [self.data] + [PreparedData.open(data_path, k) for k in range(1, len(self.data.encodings))]
        self._encoding_of: dict[int, int] = {}  # only with several tokenizers (checkpoint participants)
        self._families = [self.family] + [dataclasses.replace(self.family, vocab_size=d.vocab_size)
                                          for d in self._encodings[1:]]
        model = scenario["model"]
        self.ladder = [Shape(**s) for s in model["small_shapes"]]
        self.intermediate = Shape(**model["intermediate"])
        self.target = Shape(**model["target"])
        self.ligo_options = dict(scenario["ligo"])
        self.training = scenario["training"]

    # ---- participants -----------------------------------------------------------------------
    @property
    def participant_ids(self) -> range:
        """Every registered participant: a range, so a million cost nothing until sampled."""
        return range(self.scenario["participants"])

    @functools.lru_cache(maxsize=None)
    def profile(self, pid: int) -> DeviceProfile:
        if pid == CENTER:
            return DeviceProfile(1.0, float("inf"), float("inf"), 1.0)
        return device_profile(self.scenario["devices"], pid, self.seed)

    @property
    def one_vocabulary(self) -> bool:
        """Whether every participant encodes its texts with one tokenizer (always for images and
        the trained word-level tokenizer)."""
        return len(self._encodings) == 1

    def encoding_of(self, pid: int) -> int:
        """Which of the prepared data's encodings holds this participant's texts: the one by its
        checkpoint's tokenizer (data.tokenizer: from_checkpoint), else the only one."""
        if self.one_vocabulary or pid == CENTER:
            return 0
        if pid not in self._encoding_of:  # read the tokenizer files once, not per cost query
            self._encoding_of[pid] = self.data.encodings.index(tokenizer_fingerprint(self.checkpoint_path(pid)))
        return self._encoding_of[pid]

    def data_of(self, pid: int) -> PreparedData:
        """The prepared data as this participant sees it: its encoding of the texts."""
        return self._encodings[self.encoding_of(pid)]

    def family_of(self, pid: int | None = None):
        """The model family of a participant's models: the scenario's, with the vocabulary of its
        tokenizer; the scenario's for None (shapes, Global-LiGO, the pooled trainer)."""
        return self.family if pid is None else self._families[self.encoding_of(pid)]

    def participant_data(self, pid: int) -> ParticipantData:
        if pid == CENTER:
            return ParticipantData(self.data.pooled_train, self.data.global_test)
        return self.data_of(pid).participant(pid)

    def global_test(self, pid: int):
        """The shared test set, encoded as this participant's tokenizer encodes it."""
        return self.data_of(pid).global_test

    @property
    def trainers_per_round(self) -> int:
        """How many participants a round asks to train (before over-selection)."""
        sampling, n = self.scenario["sampling"], self.scenario["participants"]
        if sampling["count"]:
            return sampling["count"]
        if sampling["fraction"]:
            return max(1, int(sampling["fraction"] * n + 0.5))
        return n

    def preferred_shape(self, pid: int) -> Shape:
        """The ladder rung a participant is given before its memory budget is considered."""
        checkpoint = self.checkpoint_path(pid)
        if checkpoint is not None:
            config = json.loads((checkpoint / "config.json").read_text())
            return Shape(config["hidden_size"], config["num_hidden_layers"],
                         config["num_attention_heads"], config["intermediate_size"])
        if self.scenario["model"]["assign_shapes"] == "cycle":
            return self.ladder[pid % len(self.ladder)]
        return self.ladder[derive_seed(self.seed, pid, "small-shape") % len(self.ladder)]

    @functools.lru_cache(maxsize=None)
    def small_shape(self, pid: int) -> tuple[Shape | None, str]:
        """The participant's small shape: its preferred rung, or a smaller rung that fits its
        memory budget; (None, reason) when none fits."""
        if pid == CENTER:
            return max(self.ladder, key=self.params), "the centralized trainer takes the largest rung"
        preferred = self.preferred_shape(pid)
        if self.checkpoint_path(pid) is not None:
            candidates = [preferred]
        else:
            smaller = [s for s in self.ladder if s != preferred and self.params(s, pid) < self.params(preferred, pid)]
            candidates = [preferred] + sorted(set(smaller), key=lambda s: self.params(s, pid), reverse=True)
        needs = [(s, self.training_memory_mb(s, self.params(s, pid), pid=pid)) for s in candidates]
        chosen, reason = fit_shape(self.profile(pid), [(str(s), mb) for s, mb in needs])
        if chosen is None:
            return None, reason
        shape = next(s for s, _ in needs if str(s) == chosen)
        if shape != preferred:
            reason = f"given {shape} instead of {preferred}: {reason}"
        return shape, reason

    def checkpoint_path(self, pid: int) -> Path | None:
        template = self.scenario["model"]["checkpoints"]
        if template is None or pid == CENTER:  # the pooled trainer pre-trains its own
            return None
        path = Path(template.format(id=pid))
        if not (path / "config.json").is_file():
            raise ValueError(f"scenario key 'model.checkpoints': participant {pid}'s checkpoint "
                             f"folder {str(path)!r} has no config.json")
        return path

    def check_inputs(self) -> None:
        """Before a run starts: every model.checkpoints folder holds a checkpoint this scenario
        can grow (this family, this data's fixed sizes, a shape within model.intermediate),
        read from its config.json only; with several tokenizers among them, no method that
        shares or pools whole models (Method.one_vocabulary). A ValueError names the first
        that does not."""
        if self.scenario["model"]["checkpoints"] is None:
            return
        if not self.one_vocabulary:
            from .methods import get_method  # methods build on this module

            for name in self.scenario["methods"]:
                if get_method(name, self).one_vocabulary:
                    protocol = (f" with protocol {self.scenario['protocol']!r}"
                                if self.scenario["protocol"] != "paper" else "")
                    raise ValueError(
                        f"scenario key 'methods': {name!r}{protocol} shares or pools whole models, "
                        f"which needs one vocabulary, but the participants' checkpoints hold "
                        f"{len(self._encodings)} different tokenizers (data.tokenizer: "
                        f"from_checkpoint); allowed with different tokenizers: methods that share "
                        f"only Global-LiGO or nothing (fedgrow and independent_growth with "
                        f"protocol paper, local_small)")
        sizes = [f.name for f in dataclasses.fields(self.family) if f.name not in ("dropout", "num_classes")]
        for pid in self.participant_ids:
            path = self.checkpoint_path(pid)
            where = f"scenario key 'model.checkpoints': participant {pid}'s checkpoint {str(path)!r}"
            try:
                config = self.family.model_class.config_class.from_json_file(str(path / "config.json"))
                found = type(self.family).from_config(config)
                shape = self.preferred_shape(pid)
            except (OSError, ValueError, KeyError, AttributeError) as err:
                raise ValueError(f"{where} has an unreadable config.json ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''})") from None
            expected = self.family.model_class.config_class.model_type
            if getattr(config, "model_type", expected) != expected:
                raise ValueError(f"{where} is a {config.model_type!r} model; model.family "
                                 f"{self.family.name!r} needs {expected!r}")
            family = self.family_of(pid)  # its tokenizer's vocabulary
            for name in sizes:
                if getattr(found, name) != getattr(family, name):
                    raise ValueError(f"{where} has {name}={getattr(found, name)}; this scenario's "
                                     f"data and model need {name}={getattr(family, name)}")
            length = self.scenario["model"]["max_positions"]
            if self.family.name == "text" and length > found.max_positions:
                raise ValueError(f"{where} has max_positions={found.max_positions}, fewer than "
                                 f"model.max_positions={length}, the length texts are encoded to")
            for key in ("width", "layers", "ffn"):
                if getattr(shape, key) > getattr(self.intermediate, key):
                    raise ValueError(f"{where} has {key}={getattr(shape, key)}, larger than "
                                     f"model.intermediate {key}={getattr(self.intermediate, key)}; "
                                     f"small models grow into it")

    # ---- costs --------------------------------------------------------------------------------
    # A participant's costs depend on its family (its vocabulary's embedding rows); `pid` None
    # is the scenario's family. The caches are keyed by family, never by participant.
    def params(self, shape: Shape, pid: int | None = None) -> int:
        return _params(self.family_of(pid), shape)

    def generation_flops(self, source: Shape, target: Shape, pid: int | None = None) -> float:
        """One forward growth source -> target (LiGO.generation_flops)."""
        return _generation_flops(self.family_of(pid), source, target)

    def pretrain_steps(self, pid: int) -> int:
        """Steps of small-model pre-training: training.pretrain_steps; none for a model loaded
        from model.checkpoints. The pooled trainer (CENTER) gets the federation's total: the
        pre-training FLOPs of every participant that holds a small shape, divided by its own
        step's FLOPs, rounded."""
        if pid == CENTER:
            total = sum(self.pretrain_steps(p) * self.step_flops(self.small_shape(p)[0], p)
                        for p in self._growing())
            return round(total / self.step_flops(self.small_shape(CENTER)[0]))
        return 0 if self.checkpoint_path(pid) is not None else self.training["pretrain_steps"]

    def local_stage_step_flops(self, shape: Shape, pid: int | None = None) -> float:
        """One local-stage step: the intermediate model's step plus growing it (3 x: forward
        and backward through Local-LiGO)."""
        return (self.step_flops(self.intermediate, pid)
                + 3 * self.generation_flops(shape, self.intermediate, pid))

    def local_stage_steps(self, pid: int) -> int:
        """Steps of the local stage: training.local_stage_steps; the pooled trainer (CENTER)
        gets the federation's total local-stage FLOPs divided by its own step's, rounded."""
        if pid == CENTER:
            total = sum(self.training["local_stage_steps"] * self.local_stage_step_flops(self.small_shape(p)[0], p)
                        for p in self._growing())
            return round(total / self.local_stage_step_flops(self.small_shape(CENTER)[0]))
        return self.training["local_stage_steps"]

    def pretrain_flops(self, pid: int) -> float:
        return self.pretrain_steps(pid) * self.step_flops(self.small_shape(pid)[0], pid)

    def local_stage_flops(self, pid: int) -> float:
        return self.local_stage_steps(pid) * self.local_stage_step_flops(self.small_shape(pid)[0], pid)

    def _growing(self) -> list[int]:
        """The participants that can hold a small shape (whose setup the federation pays)."""
        return [p for p in self.participant_ids if self.small_shape(p)[0] is not None]

    def global_ligo_params(self) -> int:
        return LiGO.parameter_count(self.intermediate, self.target)

    @property
    def tokens_per_sample(self) -> int:
        if self.family.name == "text":
            return self.scenario["model"]["max_positions"]  # the length texts are encoded to
        return (self.family.image_size // self.family.patch_size) ** 2 + 1

    def step_flops(self, shape: Shape, pid: int | None = None) -> float:
        """One training step (forward and backward) of a `shape` model on one batch."""
        return step_flops(self.params(shape, pid), self.tokens_per_sample, self.training["batch_size"],
                          shape.width, shape.layers, self.tokens_per_sample)

    def training_memory_mb(self, shape: Shape, trainable: int, samples: int | None = None,
                           checkpointing: bool = False, pid: int | None = None) -> float:
        """Memory to train `trainable` parameters through a `shape` model (AdamW, fp32) with
        the activations of `samples` samples alive (by default training.batch_size), its
        layers checkpointed or not."""
        activations = activation_values_per_sample(shape.width, shape.layers, shape.heads,
                                                   self.tokens_per_sample, shape.ffn, checkpointing)
        return training_memory_mb(self.params(shape, pid), trainable, activations,
                                  self.training["batch_size"] if samples is None else samples)


@functools.lru_cache(maxsize=None)
def _params(family, shape: Shape) -> int:
    return count_parameters(family.skeleton(shape))


@functools.lru_cache(maxsize=None)
def _generation_flops(family, source: Shape, target: Shape) -> float:
    return LiGO.generation_flops(family, source, target)
