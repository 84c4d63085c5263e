"""Where a participant's private state is kept: its data shard, its pre-trained small model and
each method's private state (Local-LiGO, optimiser, ...). A `ParticipantHost` keeps many
participants in one process and runs the work the driver asks of them; only shared-state
updates (Global-LiGO for Fed-Grow), sample counts and metrics ever leave it.

Participants are created on first use. Each unit of work that changes a participant (a round's
training, the end-of-run step) ends by writing its state, under the name of that work (its
*version*, `state_version`), to the run's state location (`StateStore`: a local folder, a
shared mount, s3://, gs://), before the result is returned. The driver keeps, for every
participant, the version of its last work it accepted, and sends it with each call: a host
holding that version in memory goes on from it; any other host (restarted after a crash, on
another node, in a resumed run) or a host whose copy is newer (work the driver wrote off, e.g.
after a timeout) loads exactly that version. So a lost host changes nothing: its participants
continue from the state the driver knows, and re-running lost work gives the same result. A
version that cannot be found is reported (`state: lost`), never silently replaced.

A host keeps at most `hosts.max_resident` participants in memory; the least recently used are
evicted (their state is on the store already; one never trained is spilled to a local,
process-private folder) and read back when needed.

On a GPU host a participant's state waits in CPU memory and is on the GPU only while it works:
GPU memory holds one participant at a time, however many the host keeps, and the caching
allocator's blocks are handed back after each one, so a long run does not creep toward
out-of-memory. The peak GPU memory of each participant's work is measured and reported.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import torch
from torch import nn

from .experiment import Experiment
from .export import export_participant
from .methods import Method, get_method
from .metrics import accuracy, macro_precision
from .privacy.attacks import MembershipAudit
from .privacy.mechanisms import ParticipantPrivacy
from .reduction import UpdateScreen, partial_sum, screen_on_host
from .training import Cancelled, batch_stream, derive_seed, make_optimiser, predict, train_steps

# `expected` version of a participant the caller does not know (a host used on its own, as in
# tests and benchmarks): whatever the host holds.
UNKNOWN = "?"


def state_location(state_uri: str | None, run_dir: str | Path, state_id: str) -> str:
    """Where a run's participant state lives: by default the run folder's participant_state/
    (each node's own disk, unless the run folder is on shared storage); with hosts.state_uri
    (a local path or a pyarrow.fs URI every node reaches), <state_uri>/<run folder name>-<state
    id>, one folder per run."""
    if not state_uri:
        return str(Path(run_dir).resolve() / "participant_state")
    return f"{state_uri.rstrip('/')}/{Path(run_dir).resolve().name}-{state_id}"


def state_version(method: str, round_number: int | None = None) -> str:
    """The name of a participant's private state after `method`'s round `round_number`, or
    after its end-of-run step (None)."""
    return f"{method}.r{round_number}" if round_number is not None else f"{method}.final"


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
        self.version: str | None = None  # the work its state is the result of (None: none yet)
        self.should_stop = lambda: False  # asked between training steps (see training.Cancelled)

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
                model, _ = exp.family_of(self.id).load(str(checkpoint))
            else:
                model = exp.family_of(self.id).build(self.shape, seed=derive_seed(exp.seed, self.id, "small-init"))
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
                                exp.training["max_grad_norm"], self.should_stop,
                                micro_batch_size=exp.training["micro_batch_size"],
                                precision=exp.training["precision"])
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
            model = self.experiment.family_of(self.id).build(self.shape)
            model.load_state_dict(saved["small_model"])
            self._small_model = model.to(self.device).eval().requires_grad_(False)
        for name, state in saved["methods"].items():
            if name in methods:
                self.method_state[name] = methods[name].load_state(self, state)


class StateStore:
    """A host's participant files.

    <location>/p<id>.<version>.pt    a participant's state after the work its version names,
                                     written through pyarrow.fs (a local folder, a shared
                                     mount, s3://, gs://, ...) to a temporary name, then moved
                                     into place, so a file is whole or absent
    spill/host<index>-<process id>/p<id>.pt   local disk (<location>/spill on a local
                                     location, the temp dir otherwise): a participant never
                                     trained yet, evicted from memory; this process's only

    A participant keeps at most three versions: the one just written, the one it was written
    from (needed again if the driver writes that work off) and the one the driver's last
    checkpoint names (needed by --resume). pyarrow.fs rather than hand-written cloud clients:
    one API for every storage a cluster may share.
    """

    _VERSION = re.compile(r"^p(-?\d+)\.(.+)\.pt$")

    def __init__(self, location: str, host_index: int):
        self.location = str(location)
        if "://" in self.location:
            self.fs, self.root = pafs.FileSystem.from_uri(self.location)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(self.location)
        self.fs.create_dir(self.root, recursive=True)
        self._tmp_tag = f".tmp-h{host_index}-"
        self.versions: dict[int, set[str]] = {}
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            found = self._VERSION.match(info.base_name)
            if self._tmp_tag in info.base_name:  # half-written by a dead incarnation of this host
                self.fs.delete_file(info.path)
            elif found:
                self.versions.setdefault(int(found.group(1)), set()).add(found.group(2))
        if isinstance(self.fs, pafs.LocalFileSystem):
            spill_root = Path(self.root) / "spill"
        else:
            digest = hashlib.sha256(self.location.encode()).hexdigest()[:12]
            spill_root = Path(tempfile.gettempdir()) / "fedgrow-spill" / digest
        for stale in spill_root.glob(f"host{host_index}-*"):  # left by a dead incarnation
            shutil.rmtree(stale, ignore_errors=True)
        self.spill_dir = spill_root / f"host{host_index}-{os.getpid()}"
        self.spill_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, pid: int, version: str) -> str:
        return f"{self.root}/p{pid}.{version}.pt"

    def write(self, pid: int, version: str, saved: dict, keep=()) -> None:
        """Store `saved` as `pid`'s `version`; remove its other versions except those in `keep`."""
        path = self._path(pid, version)
        tmp = f"{self.root}/.p{pid}.{version}.pt{self._tmp_tag}{os.getpid()}"
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(buffer.getbuffer())
        self.fs.move(tmp, path)
        versions = self.versions.setdefault(pid, set())
        versions.add(version)
        for old in versions - {version, *keep}:
            try:
                self.fs.delete_file(self._path(pid, old))
            except FileNotFoundError:
                pass
            versions.discard(old)

    def read(self, pid: int, version: str) -> tuple[dict | None, str]:
        """(`pid`'s state at `version`, "") or (None, why not)."""
        path = self._path(pid, version)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None, f"{path} does not exist"
        try:
            with self.fs.open_input_stream(path) as stream:
                data = stream.read()
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), ""
        except Exception as err:  # noqa: BLE001 - an unreadable file is reported, like a missing one
            return None, f"{path} is unreadable ({type(err).__name__}: {err})"

    def spill(self, pid: int, saved: dict) -> None:
        tmp, path = self.spill_dir / f".p{pid}.pt.tmp", self.spill_dir / f"p{pid}.pt"
        torch.save(saved, tmp)
        os.replace(tmp, path)

    def unspill(self, pid: int) -> dict | None:
        path = self.spill_dir / f"p{pid}.pt"
        if not path.exists():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        path.unlink()
        return saved


class ParticipantHost:
    """Hosts many participants of one experiment in one process (a Ray actor, or the plain
    in-process executor). `state_dir` is the run's state location (a local folder or a
    pyarrow.fs URI; None: nothing is written, nothing evicted); `should_stop` is asked between
    training steps and cancels the work in progress when it says so."""

    def __init__(self, scenario: dict, data_path: str, device: str = "cpu",
                 state_dir: str | None = None, index: int = 0, should_stop=None):
        # As many compute threads as the host's CPU share, in every executor: float results
        # depend on the thread count, and must not depend on where a participant is hosted.
        torch.set_num_threads(max(1, int(scenario["hosts"]["num_cpus"])))
        self.experiment = Experiment(scenario, data_path)
        self.device = torch.device(device)
        self.store = StateStore(state_dir, index) if state_dir else None
        self.max_resident = scenario["hosts"]["max_resident"] if self.store else None
        self.should_stop = should_stop or (lambda: False)
        self.participants: OrderedDict[int, Participant] = OrderedDict()  # resident, LRU first
        self.evicted: dict[int, str | None] = {}  # by this process: their version (None: spilled)
        self.methods: dict[str, Method] = {}
        self.privacy = ParticipantPrivacy(scenario)
        self._audit: MembershipAudit | None = None  # privacy.attack, built on first use
        self.stats = {"spilled": 0, "reloaded": 0, "restored": 0, "lost": 0}
        # Every participant this host built, as long as anything holds it (see `alive`).
        self._created: weakref.WeakSet[Participant] = weakref.WeakSet()
        # Screened, accepted updates kept for the driver's partial_sum: {(method, round): {pid: (update, samples)}}
        self.held_updates: dict[tuple[str, int], dict[int, tuple[dict, int]]] = {}

    def participant(self, pid: int) -> Participant:
        return self._take(pid)[0]

    def _take(self, pid: int, expected: str | None = UNKNOWN) -> tuple[Participant, dict]:
        """The participant with its state at version `expected`, and where that state came
        from: {"state": resident | reloaded (evicted earlier by this host) | restored (from
        the store, written by another process) | new (nothing to restore) | lost (a version was
        expected and is not there: built from scratch; "lost" says why)}."""
        resident = self.participants.get(pid)
        if resident is not None:
            if expected == UNKNOWN or resident.version == expected:
                self.participants.move_to_end(pid)
                return resident, {"state": "resident"}
            del self.participants[pid]  # it holds work the driver wrote off: roll it back
        if expected == UNKNOWN:
            expected = self.evicted.get(pid)
        participant = Participant(self.experiment, pid, "cpu")  # moved to the host's device to work
        self._created.add(participant)
        participant.should_stop = self.should_stop
        origin, saved = {"state": "new"}, None
        if expected is None:
            if pid in self.evicted and self.evicted[pid] is None:  # spilled by this host
                saved = self.store.unspill(pid)
                origin = {"state": "reloaded"}
        elif self.store is None:
            origin = {"state": "lost", "lost": f"version {expected!r} expected, but this host keeps no state"}
        else:
            saved, why = self.store.read(pid, expected)
            if saved is None:
                origin = {"state": "lost", "lost": f"version {expected!r}: {why}"}
            else:
                origin = {"state": "reloaded" if self.evicted.get(pid) == expected else "restored"}
        if saved is not None:
            participant.load_state_dict(saved, self.methods)
            participant.version = expected
        if origin["state"] in self.stats:
            self.stats[origin["state"]] += 1
        self.evicted.pop(pid, None)
        self.participants[pid] = participant
        while self.max_resident is not None and len(self.participants) > self.max_resident:
            old_pid, old = self.participants.popitem(last=False)
            if old.version is None:  # never trained: its state is on no store yet
                self.store.spill(old_pid, old.state_dict(self.methods))
            self.evicted[old_pid] = old.version
            self.stats["spilled"] += 1
        return participant, origin

    def _persist(self, participant: Participant, version: str, *keep) -> None:
        """Write through: the participant's state becomes `version`, on the store before the
        result leaves the host."""
        previous, participant.version = participant.version, version
        if self.store is not None:
            self.store.write(participant.id, version, participant.state_dict(self.methods),
                             keep=(previous, *keep))

    @contextmanager
    def _rolled_back_on_failure(self, pid: int):
        """Work that does not finish (cancelled, crashed) leaves no half-changed participant:
        its next use starts again from a stored version."""
        try:
            yield
        except BaseException:
            self.participants.pop(pid, None)
            raise

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.should_stop():
                raise Cancelled
            time.sleep(min(left, 0.1))

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
        return participant.method_state[method.name]

    def train(self, method_name: str, round_number: int, pids: list[int], shared: dict | None,
              sleep_s: dict[int, float] | None = None,
              expected: dict[int, tuple[str | None, str | None]] | None = None,
              cohort: list[int] | None = None) -> list[dict]:
        """Run each participant's local training for this round, one after another. `expected`
        gives, per participant, the version of its state to start from and the version the
        driver's last checkpoint names (kept on the store); without it, whatever the host holds.
        `cohort` is the round's participants (secure aggregation masks against each of them).
        Returns, per participant: its id, its update (shared tensors only, as privacy.mechanisms
        lets it leave: clipped, noised, masked), sample count, mean
        training loss, measured wall time, the version its state now is and where the state it
        started from came from (see _take)."""
        method = self.method(method_name)
        version = state_version(method_name, round_number)
        results = []
        for pid in pids:
            start, before = time.perf_counter(), dict(self.stats)
            base, checkpointed = expected[pid] if expected else (UNKNOWN, None)
            participant, origin = self._take(pid, base)
            with self._rolled_back_on_failure(pid):
                with self.working(participant):
                    state = self._state(method, participant)
                    participant.seed_torch(method.stream, "round", round_number)
                    update, loss = method.train(participant, state, shared, round_number)
                    if update is not None:  # what leaves the host is always in CPU memory
                        update = {name: tensor.cpu() for name, tensor in update.items()}
                        update = self.privacy.leaving(pid, method.stream, round_number, update,
                                                      shared, cohort)
                self._persist(participant, version, checkpointed)
                if sleep_s and sleep_s.get(pid):
                    self._sleep(sleep_s[pid])
            results.append({"id": pid, "update": update, "samples": participant.num_samples(),
                            "train_loss": loss, "wall_s": time.perf_counter() - start,
                            "host_memory": self.memory(), "resident": len(self.participants),
                            "alive": self.alive(),
                            "version": version, **origin,
                            **{key: self.stats[key] - before[key] for key in ("spilled", "reloaded")}})
        return results

    def train_held(self, method_name: str, round_number: int, pids: list[int], shared: dict,
                   sleep_s: dict[int, float] | None = None,
                   expected: dict[int, tuple[str | None, str | None]] | None = None) -> list[dict]:
        """`train`, then the host's side of the reduction (fedgrow_ray.reduction): the updates
        are screened here and the accepted ones stay on this host until the driver asks for
        the partial sum of those it accepted (`partial_sum`). Returns the per-participant
        metadata (no update). An earlier round's leftovers (work the driver wrote off) go."""
        key = (method_name, round_number)
        self.held_updates = {k: v for k, v in self.held_updates.items() if k == key}
        results = self.train(method_name, round_number, sorted(pids), shared, sleep_s, expected)
        answer, accepted = screen_on_host(results, self.screen(method_name), shared, round_number)
        self.held_updates.setdefault(key, {}).update(accepted)
        return answer

    def partial_sum(self, method_name: str, round_number: int, pids: list[int]) -> dict:
        """The weighted partial sum of the held updates of `pids` (the ones the driver accepted
        from this host), in participant order: {"partial": ... | None, "missing": []}; the round's
        held updates are then dropped. Updates this process does not hold (it was restarted
        since it trained them) are named in "missing" and nothing is dropped: the driver has them
        trained again, which gives the same updates, and asks again."""
        held = self.held_updates.get((method_name, round_number), {})
        missing = [pid for pid in pids if pid not in held]
        if missing:
            return {"partial": None, "missing": missing}
        self.held_updates.pop((method_name, round_number), None)
        return {"partial": partial_sum([held[pid] for pid in sorted(pids)]), "missing": []}

    def screen(self, method_name: str) -> UpdateScreen:
        """What this host does to a method's updates before summing them (fedgrow_ray.reduction)."""
        return UpdateScreen(self.experiment.scenario, self.experiment.seed, self.method(method_name))

    def alive(self) -> int:
        """How many participants this host built are still in memory: its resident ones, unless
        something still holds one it evicted (the count spilling must keep). A weak set, so the
        count costs nothing per participant and keeps none alive."""
        return len(self._created)

    def memory(self) -> dict:
        """What this host really uses (Ray's resource fractions are only logical): its process
        id (a restarted host answers from a new one), resident memory; on a GPU, the peak
        allocated during the last participant's work and what the process still holds after it."""
        memory = {"pid": os.getpid(), "rss_mb": psutil.Process().memory_info().rss / 2**20,
                  "gpu_mb": 0.0, "gpu_held_mb": 0.0}
        if self.device.type == "cuda":
            memory["gpu_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            memory["gpu_held_mb"] = torch.cuda.memory_reserved(self.device) / 2**20
        return memory

    def evaluate(self, method_name: str, pids: list[int], shared: dict | None,
                 final: bool = False, subject: int | None = None,
                 expected: dict[int, tuple[str | None, str | None]] | None = None,
                 export: dict | None = None) -> list[dict]:
        """Each participant's accuracy and macro precision on its own test split with the
        current shared state and its own model (and, with eval.global, the same model's accuracy
        on the shared global test set); `final` first applies the method's end-of-run step (e.g.
        local fine-tuning of the grown model), once per model, and stores the result as the
        participant's `state_version(method)`. With `subject` (the pooled trainer of
        `centralized`), that one model is scored on the global test set, and on each
        participant's split after a personal fine-tune of a copy (Method.personal_model).
        `expected` as for train (for the subject alone when there is one). With `final` and
        `export` ({"dir": the run's export folder, "participants": [ids]}), each of those
        participants' final model is written there as a Hugging Face folder (fedgrow_ray.export)
        by this host, which keeps it."""
        method = self.method(method_name)
        batch_size = self.experiment.scenario["eval"]["batch_size"]
        if subject is not None:
            return self._evaluate_pooled(method, pids, shared, final, subject, batch_size, expected)
        scores_global = self.experiment.scenario["eval"]["global"]
        results = []
        for pid in pids:
            base, checkpointed = expected[pid] if expected else (UNKNOWN, None)
            owner, origin = self._take(pid, base)
            with self._rolled_back_on_failure(pid):
                with self.working(owner):
                    trainable = method.trainable_params(owner, self._state(method, owner))
                    state, finished = self._final_state(method, owner, shared, final)
                    result = {"id": pid, **_scores(method.predict(owner, state, shared, owner.data.test, batch_size)),
                              "trainable_params": trainable, **origin}
                    if scores_global:  # encoded with this participant's tokenizer
                        labels, predictions = method.predict(owner, state, shared,
                                                             self.experiment.global_test(pid), batch_size)
                        result["global_accuracy"] = accuracy(labels, predictions)
                    attack = final and self.experiment.scenario["privacy"]["attack"] is not None
                    exported = final and export and pid in export["participants"]
                    if attack or exported:  # the deployed model, materialised once for both
                        deployed = method.standalone_model(owner, state, shared)
                    if attack:
                        result.update(self._membership(method, deployed, owner, shared))
                    if exported:
                        export_participant(deployed, export["dir"], pid, self.experiment)
                if finished:
                    self._persist(owner, state_version(method_name), checkpointed)
            results.append({**result, "version": owner.version})
        return results

    def _membership(self, method: Method, model: nn.Module, owner: Participant, shared) -> dict:
        """privacy.attack: membership inference against the participant's deployed `model` and
        against what the server holds (privacy/attacks.py); measurements only."""
        if self._audit is None:
            self._audit = MembershipAudit(self.experiment, self.device)
        return {**self._audit.deployed(model, owner.id),
                **self._audit.server(shared, method.initial_shared(), owner.id)}

    def _final_state(self, method: Method, owner: Participant, shared, final: bool):
        """The participant's state for `method`, after the end-of-run step when `final`; and
        whether that step changed it."""
        state = self._state(method, owner)
        if not final:
            return state, False
        owner.seed_torch(method.stream, "finish")
        finished = method.finish(owner, state, shared)
        owner.method_state[method.name] = finished
        return finished, finished is not state

    def _evaluate_pooled(self, method, pids, shared, final, subject, batch_size, expected) -> list[dict]:
        base, checkpointed = expected[subject] if expected else (UNKNOWN, None)
        owner, origin = self._take(subject, base)
        results = []
        with self._rolled_back_on_failure(subject):
            with self.working(owner):
                trainable = method.trainable_params(owner, self._state(method, owner))
                state, finished = self._final_state(method, owner, shared, final)
                labels, predictions = method.predict(owner, state, shared, owner.data.test, batch_size)
                global_accuracy = accuracy(labels, predictions)
                base_model = method.standalone_model(owner, state, shared)
                for pid in pids:
                    data = self.experiment.participant_data(pid)
                    model = method.personal_model(owner, base_model, data.train, pid)
                    scores = _scores(predict(lambda b: model(**b).logits, data.test, batch_size, owner.device,
                                             method.training["precision"]))
                    results.append({"id": pid, **scores, "global_accuracy": global_accuracy,
                                    "trainable_params": trainable})
            if finished:
                self._persist(owner, state_version(method.name), checkpointed)
        # The subject's own state: reported once, on the first result.
        if results:
            results[0].update({"subject": subject, "subject_version": owner.version, **origin})
        return results

    def release(self, method_name: str) -> None:
        """Drop every participant's private state for a finished method."""
        for participant in self.participants.values():
            participant.method_state.pop(method_name, None)
        self.methods.pop(method_name, None)
