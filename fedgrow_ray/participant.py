"""Where a participant's private state is kept: its data shard, its pre-trained small model and
each method's private state (Local-LiGO, optimiser, ...). A `ParticipantHost` keeps many
participants in one process and runs the work the driver asks of them; only shared-state
updates (Global-LiGO for Fed-Grow), sample counts and metrics ever leave it.

Participants are created on first use. A host keeps at most `hosts.max_resident` of them in
memory and spills the least recently used to its own disk, reloading them exactly when they
are needed again; at the driver's checkpoints it writes every participant that changed since
the last one (versioned by tick), so a restarted host, or a resumed run, restores them.

On a GPU host a participant's state waits in CPU memory and is on the GPU only while it works:
GPU memory holds one participant at a time, however many the host keeps, and the caching
allocator's blocks are handed back after each one, so a long run does not creep toward
out-of-memory. The peak GPU memory of each participant's work is measured and reported.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch
from torch import nn

from .experiment import Experiment
from .methods import Method, get_method
from .metrics import accuracy, macro_precision
from .training import batch_stream, derive_seed, make_optimiser, predict, train_steps


def _scores(labels_predictions) -> dict:
    labels, predictions = labels_predictions
    return {"accuracy": accuracy(labels, predictions), "macro_precision": macro_precision(labels, predictions),
            "test_samples": len(labels)}


class Participant:
    """One participant's private state, created where it lives and never sent anywhere."""

    def __init__(self, experiment: Experiment, pid: int, device):
        shape, reason = experiment.small_shape(pid)
        if shape is None:
            raise ValueError(f"participant {pid} cannot hold any small shape: {reason}")
        self.id, self.shape, self.device = pid, shape, torch.device(device)
        self.experiment = experiment
        self.data = experiment.participant_data(pid)
        self.method_state: dict[str, object] = {}
        self._small_model = None

    def generator(self, *purpose) -> torch.Generator:
        """This participant's own random stream for one purpose (and round)."""
        return torch.Generator().manual_seed(derive_seed(self.experiment.seed, self.id, *purpose))

    def seed_torch(self, *purpose) -> None:
        """Seed the global torch RNG (dropout) for this participant's next unit of work."""
        torch.manual_seed(derive_seed(self.experiment.seed, self.id, "torch", *purpose))

    @property
    def small_model(self):
        """The pre-trained small model: loaded from its checkpoint folder, or built and
        pre-trained on this participant's own data for its budget (Experiment.pretrain_steps)."""
        if self._small_model is None:
            exp = self.experiment
            checkpoint = exp.checkpoint_path(self.id)
            if checkpoint is not None:
                model, _ = exp.family.load(str(checkpoint))
            else:
                model = exp.family.build(self.shape, seed=derive_seed(exp.seed, self.id, "small-init"))
            model.to(self.device).train()
            steps = exp.pretrain_steps(self.id)
            if steps:
                # Pre-training happens inside whichever method first needs the small model; it
                # must not move that method's random stream (dropout), or a method would draw
                # differently depending on which ran before it on this host.
                devices = [self.device] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    self.seed_torch("pretrain")
                    optimiser = make_optimiser(model.parameters(), exp.training["pretrain_lr"],
                                               exp.training["weight_decay"])
                    batches = batch_stream(self.data.train, exp.training["batch_size"],
                                           self.generator("pretrain"))
                    train_steps(lambda b: model(**b).loss, optimiser, batches, steps, self.device,
                                exp.training["max_grad_norm"])
            self._small_model = model.eval().requires_grad_(False)
        return self._small_model

    def num_samples(self) -> int:
        return len(self.data.train)

    def to(self, device) -> None:
        """Move all private state (models, optimiser moments) to `device`, in place."""
        self.device = torch.device(device)
        if self._small_model is not None:
            self._small_model.to(self.device)
        for state in self.method_state.values():
            for value in vars(state).values():
                if isinstance(value, nn.Module):
                    value.to(self.device)
                elif isinstance(value, torch.optim.Optimizer):
                    for slot in value.state.values():
                        for key, tensor in slot.items():
                            if torch.is_tensor(tensor) and key != "step":  # AdamW keeps step on CPU
                                slot[key] = tensor.to(self.device)

    # ---- persistence ---------------------------------------------------------------------------
    def state_dict(self, methods: dict[str, Method]) -> dict:
        """Everything private, as tensors and plain values (what spilling and checkpoints keep)."""
        return {"small_model": None if self._small_model is None else self._small_model.state_dict(),
                "methods": {name: methods[name].state_dict(state)
                            for name, state in self.method_state.items()}}

    def load_state_dict(self, saved: dict, methods: dict[str, Method]) -> None:
        if saved["small_model"] is not None:
            model = self.experiment.family.build(self.shape)
            model.load_state_dict(saved["small_model"])
            self._small_model = model.to(self.device).eval().requires_grad_(False)
        for name, state in saved["methods"].items():
            if name in methods:
                self.method_state[name] = methods[name].load_state(self, state)


class StateStore:
    """A host's participant files on its own node's disk.

    spill/host<index>-<process id>/p<id>.pt   state evicted from memory; belongs to this process
                                              only (a restarted host starts without it)
    checkpoints/p<id>-t<tick>.pt              state at a driver checkpoint (the two newest kept);
                                              the newest is what a restarted host or a resumed
                                              run loads, after a resume has discarded versions
                                              newer than the driver's checkpoint
    """

    _CHECKPOINT = re.compile(r"^p(\d+)-t(\d+)\.pt$")

    def __init__(self, root: Path, host_index: int):
        self.root = Path(root)
        spill_root = self.root / "spill"
        for stale in spill_root.glob(f"host{host_index}-*"):  # left by a dead incarnation
            shutil.rmtree(stale, ignore_errors=True)
        self.spill_dir = spill_root / f"host{host_index}-{os.getpid()}"
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.root / "checkpoints"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.versions: dict[int, list[int]] = {}
        for pid, tick, _ in self.checkpoint_files(self.root):
            self.versions.setdefault(pid, []).append(tick)

    @classmethod
    def checkpoint_files(cls, root: Path):
        folder = Path(root) / "checkpoints"
        for path in (folder.iterdir() if folder.is_dir() else []):
            found = cls._CHECKPOINT.match(path.name)
            if found:
                yield int(found.group(1)), int(found.group(2)), path

    @classmethod
    def discard_after(cls, root: Path, tick: int) -> int:
        """Before a resume from the driver's checkpoint at `tick`: remove participant files a
        failed run wrote later (they do not match the driver's state). Returns how many."""
        stale = [path for _, t, path in cls.checkpoint_files(root) if t > tick]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    @staticmethod
    def _write(path: Path, saved: dict) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(saved, tmp)
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    def spill(self, pid: int, saved: dict) -> None:
        self._write(self.spill_dir / f"p{pid}.pt", saved)

    def unspill(self, pid: int) -> dict | None:
        path = self.spill_dir / f"p{pid}.pt"
        if not path.exists():
            return None
        saved = self._read(path)
        path.unlink()
        return saved

    def checkpoint(self, pid: int, tick: int, saved: dict | None) -> None:
        """Write a participant's state (`saved`, or its spill file when None) for `tick`."""
        path = self.checkpoint_dir / f"p{pid}-t{tick}.pt"
        if saved is None:
            tmp = path.with_name(f".{path.name}.tmp")
            shutil.copyfile(self.spill_dir / f"p{pid}.pt", tmp)
            os.replace(tmp, path)
        else:
            self._write(path, saved)
        versions = self.versions.setdefault(pid, [])
        versions.append(tick)
        # Keep the previous version too: until the driver commits its checkpoint for `tick`, a
        # resume goes back to the driver's previous checkpoint, which needs that version.
        for old in sorted(versions)[:-2]:
            (self.checkpoint_dir / f"p{pid}-t{old}.pt").unlink(missing_ok=True)
            versions.remove(old)

    def restore(self, pid: int) -> dict | None:
        versions = self.versions.get(pid)
        return self._read(self.checkpoint_dir / f"p{pid}-t{max(versions)}.pt") if versions else None


class ParticipantHost:
    """Hosts many participants of one experiment in one process (a Ray actor, or the plain
    in-process executor)."""

    def __init__(self, scenario: dict, data_path: str, device: str = "cpu",
                 state_dir: str | None = None, index: int = 0):
        # As many compute threads as the host's CPU share, in every executor: float results
        # depend on the thread count, and must not depend on where a participant is hosted.
        torch.set_num_threads(max(1, int(scenario["hosts"]["num_cpus"])))
        self.experiment = Experiment(scenario, data_path)
        self.device = torch.device(device)
        self.store = StateStore(Path(state_dir), index) if state_dir else None
        self.max_resident = scenario["hosts"]["max_resident"] if self.store else None
        self.participants: OrderedDict[int, Participant] = OrderedDict()  # resident, LRU first
        self.methods: dict[str, Method] = {}
        self.dirty: set[int] = set()  # changed since their last checkpoint
        self.restored: set[int] = set()  # loaded from a checkpoint, not yet reported
        self.stats = {"spilled": 0, "reloaded": 0, "restored": 0}

    def participant(self, pid: int) -> Participant:
        if pid in self.participants:
            self.participants.move_to_end(pid)
            return self.participants[pid]
        participant = Participant(self.experiment, pid, "cpu")  # moved to the host's device to work
        if self.store is not None:
            saved = self.store.unspill(pid)
            if saved is not None:
                self.stats["reloaded"] += 1
            else:
                saved = self.store.restore(pid)
                if saved is not None:
                    self.stats["restored"] += 1
                    self.restored.add(pid)
            if saved is not None:
                participant.load_state_dict(saved, self.methods)
        self.participants[pid] = participant
        while self.max_resident is not None and len(self.participants) > self.max_resident:
            old_pid, old = self.participants.popitem(last=False)
            self.store.spill(old_pid, old.state_dict(self.methods))
            self.stats["spilled"] += 1
        return participant

    @contextmanager
    def working(self, participant: Participant):
        """The participant on the host's device for one unit of work (see the module notes)."""
        if self.device.type != "cuda":
            yield participant
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        participant.to(self.device)
        try:
            yield participant
        finally:
            participant.to("cpu")
            torch.cuda.empty_cache()

    def method(self, name: str) -> Method:
        if name not in self.methods:
            self.methods[name] = get_method(name, self.experiment)
        return self.methods[name]

    def _state(self, method: Method, participant: Participant):
        if method.name not in participant.method_state:
            participant.seed_torch(method.stream, "setup")
            participant.method_state[method.name] = method.setup(participant)
            self.dirty.add(participant.id)
        return participant.method_state[method.name]

    def train(self, method_name: str, round_number: int, pids: list[int], shared: dict | None,
              sleep_s: dict[int, float] | None = None) -> list[dict]:
        """Run each participant's local training for this round, one after another. Returns,
        per participant: its id, its update (shared tensors only), sample count, mean training
        loss and measured wall time."""
        method = self.method(method_name)
        results = []
        for pid in pids:
            start, before = time.perf_counter(), dict(self.stats)
            participant = self.participant(pid)
            with self.working(participant):
                state = self._state(method, participant)
                participant.seed_torch(method.stream, "round", round_number)
                update, loss = method.train(participant, state, shared, round_number)
                if update is not None:  # what leaves the host is always in CPU memory
                    update = {name: tensor.cpu() for name, tensor in update.items()}
            self.dirty.add(pid)
            if sleep_s and sleep_s.get(pid):
                time.sleep(sleep_s[pid])
            results.append({"id": pid, "update": update, "samples": participant.num_samples(),
                            "train_loss": loss, "wall_s": time.perf_counter() - start,
                            "host_memory": self.memory(), "restored": pid in self.restored,
                            "resident": len(self.participants),
                            **{key: self.stats[key] - before[key] for key in ("spilled", "reloaded")}})
            self.restored.discard(pid)
        return results

    def memory(self) -> dict:
        """What this host really uses (Ray's resource fractions are only logical): resident
        memory; on a GPU, the peak allocated during the last participant's work and what the
        process still holds on the GPU after it."""
        memory = {"rss_mb": psutil.Process().memory_info().rss / 2**20, "gpu_mb": 0.0, "gpu_held_mb": 0.0}
        if self.device.type == "cuda":
            memory["gpu_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            memory["gpu_held_mb"] = torch.cuda.memory_reserved(self.device) / 2**20
        return memory

    def evaluate(self, method_name: str, pids: list[int], shared: dict | None,
                 final: bool = False, subject: int | None = None) -> list[dict]:
        """Each participant's accuracy and macro precision on its own test split with the
        current shared state and its own model (and, with eval.global, the same model's accuracy
        on the shared global test set); `final` first applies the method's end-of-run step (e.g.
        local fine-tuning of the grown model), once per model. With `subject` (the pooled
        trainer of `centralized`), that one model is scored on the global test set, and on each
        participant's split after a personal fine-tune of a copy (Method.personal_model)."""
        method = self.method(method_name)
        batch_size = self.experiment.scenario["eval"]["batch_size"]
        if subject is not None:
            return self._evaluate_pooled(method, pids, shared, final, subject, batch_size)
        global_test = self.experiment.data.global_test if self.experiment.scenario["eval"]["global"] else None
        results = []
        for pid in pids:
            owner = self.participant(pid)
            with self.working(owner):
                state = self._state(method, owner)
                trainable = method.trainable_params(owner, state)
                if final:
                    owner.seed_torch(method.stream, "finish")
                    state = owner.method_state[method.name] = method.finish(owner, state, shared)
                    self.dirty.add(owner.id)
                result = {"id": pid, **_scores(method.predict(owner, state, shared, owner.data.test, batch_size)),
                          "trainable_params": trainable}
                if global_test is not None:
                    labels, predictions = method.predict(owner, state, shared, global_test, batch_size)
                    result["global_accuracy"] = accuracy(labels, predictions)
            results.append(result)
        return results

    def _evaluate_pooled(self, method, pids, shared, final, subject, batch_size) -> list[dict]:
        owner = self.participant(subject)
        results = []
        with self.working(owner):
            state = self._state(method, owner)
            trainable = method.trainable_params(owner, state)
            if final:
                owner.seed_torch(method.stream, "finish")
                state = owner.method_state[method.name] = method.finish(owner, state, shared)
                self.dirty.add(owner.id)
            labels, predictions = method.predict(owner, state, shared, owner.data.test, batch_size)
            global_accuracy = accuracy(labels, predictions)
            base = method.standalone_model(owner, state, shared)
            for pid in pids:
                data = self.experiment.participant_data(pid)
                model = method.personal_model(owner, base, data.train, pid)
                scores = _scores(predict(lambda b: model(**b).logits, data.test, batch_size, owner.device))
                results.append({"id": pid, **scores, "global_accuracy": global_accuracy,
                                "trainable_params": trainable})
        return results

    def checkpoint(self, tick: int) -> int:
        """Write every participant changed since the last checkpoint; returns how many."""
        if self.store is None:
            return 0
        for pid in sorted(self.dirty):
            resident = self.participants.get(pid)
            self.store.checkpoint(pid, tick, resident.state_dict(self.methods) if resident else None)
        written, self.dirty = len(self.dirty), set()
        return written

    def release(self, method_name: str) -> None:
        """Drop every participant's private state for a finished method."""
        for participant in self.participants.values():
            participant.method_state.pop(method_name, None)
        self.methods.pop(method_name, None)
