"""Membership inference: does a model (or what the server holds) reveal whether a sample was
in a participant's training data? An evaluation, run beside the accuracy at the end of a run
(privacy.attack), not a mechanism.

For each evaluated participant: members are up to `samples` of its training samples,
non-members as many of its personal test split (drawn from the held-out test set with the
participant's own label mix, so the two sets differ only in membership). A score says how
member-like a sample looks; AUC and the TPR at 1% FPR summarise how well it separates them.

- Loss-threshold attack (Yeom et al., 2018): score = -loss of the model on the sample.
- Calibrated attack (difficulty calibration, Watson et al., ICLR 2022; the offline form of
  LiRA's reference models): score = loss of a reference model - loss of the attacked model. The
  reference model has the attacked model's architecture and is trained for `reference_steps`
  on population data that contains neither members nor non-members: the training data of the
  participants in the other half (participants are split into two folds by id parity).
  Samples that are hard for any model stop looking like non-members.

What is attacked:
- the deployed model of each participant (`mia_*`): fedgrow's and independent_growth's grown
  target model, local_small's small model, fedavg_scratch's global model (after fine-tuning
  when training.finetune_steps is set);
- what the server holds (`server_mia_*`): with fedavg_scratch, the global model itself; with
  fedgrow, only Global-LiGO. The strongest attack here on Global-LiGO: the server grows a proxy
  target model through the shared Global-LiGO from an intermediate model it trains itself on
  population data (the other fold's training data, `proxy_steps` steps, Global-LiGO frozen),
  then attacks the proxy; its calibrated form compares against the same proxy grown through the
  initial Global-LiGO the server broadcast before round 1, so only what the federation wrote
  into Global-LiGO can separate members. Methods that send nothing give the server nothing
  (None).

AUC and TPR at low FPR are computed here (a rank statistic and a walk down the ROC curve, a few
lines of numpy): scipy has no ROC curve and scikit-learn is not a dependency of the library.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import Shard
from ..dual_ligo import GLOBAL_PREFIX, run_grown, state_sha256, strip_prefix
from ..ligo import LiGO
from ..training import batch_stream, derive_seed, make_optimiser, to_device, train_steps

MODEL_PREFIX = "model."  # fedavg_scratch's shared model (methods/baselines.py)
KEYS = ("mia_auc", "mia_tpr_at_1fpr", "mia_calibrated_auc", "mia_calibrated_tpr_at_1fpr",
        "server_mia_auc", "server_mia_tpr_at_1fpr", "server_mia_calibrated_auc")


@torch.no_grad()
def sample_losses(logits_fn, batches, device="cpu") -> np.ndarray:
    """Cross-entropy of each sample, in order, over an iterable of batches (with labels)."""
    losses = []
    for batch in batches:
        batch = to_device(dict(batch), device)
        labels = batch.pop("labels")
        losses.append(F.cross_entropy(logits_fn(batch).float(), labels, reduction="none").cpu())
    return torch.cat(losses).double().numpy() if losses else np.zeros(0)


def roc(member_scores, nonmember_scores, fpr: float = 0.01) -> tuple[float, float]:
    """(AUC, TPR at false-positive rate <= fpr) of scores where higher means member. AUC is the
    probability that a member outscores a non-member, ties counting half."""
    members, others = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    scores = np.concatenate([members, others])
    ranks = _average_ranks(scores)
    n1, n0 = len(members), len(others)
    auc = (ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    tpr = 0.0
    for threshold in np.unique(scores)[::-1]:  # flag every sample scoring >= threshold
        if np.mean(others >= threshold) > fpr:
            break
        tpr = float(np.mean(members >= threshold))
    return float(auc), tpr


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _model_logits(model):
    model.eval()
    return lambda batch: model(**batch).logits


class MembershipAudit:
    """The attacks of one run on one host; reference models and proxies are built once per
    (architecture, fold, encoding) and reused, each from its own seed, so every host gets the
    same. With several checkpoint tokenizers, an attack on participant `pid` works in its
    encoding: the population's texts as its tokenizer encodes them, models of its vocabulary."""

    def __init__(self, experiment, device="cpu"):
        self.exp, self.device = experiment, torch.device(device)
        self.spec = experiment.scenario["privacy"]["attack"]
        self.batch_size = experiment.scenario["eval"]["batch_size"]
        self._references: dict = {}
        self._proxies: dict = {}

    # ---- data ---------------------------------------------------------------------------------
    def sets(self, pid: int):
        """(member batches, non-member batches) of participant `pid`: equal-sized seeded
        subsets of its training split and its personal test split."""
        data = self.exp.participant_data(pid)
        n = min(self.spec["samples"], len(data.train), len(data.test))
        rng = np.random.default_rng(derive_seed(self.exp.seed, pid, "mia-sets"))
        chosen = []
        for shard in (data.train, data.test):
            positions = np.sort(rng.choice(len(shard), n, replace=False))
            chosen.append([shard.batch(positions[i:i + self.batch_size])
                           for i in range(0, n, self.batch_size)])
        return chosen

    def population(self, pid: int):
        """Training data of the participants in the other fold than `pid` (never its own),
        encoded with `pid`'s tokenizer."""
        others = [p for p in self.exp.participant_ids if p % 2 != pid % 2] or \
                 [p for p in self.exp.participant_ids if p != pid]
        data = self.exp.data_of(pid)
        trains = [data.participant(p).train for p in others]
        return Shard(trains[0].split, np.concatenate([t.indices for t in trains]))

    def _train(self, loss_fn, parameters, pid: int, steps: int, *purpose) -> None:
        fold = pid % 2
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(derive_seed(self.exp.seed, "torch", fold, *purpose))
            optimiser = make_optimiser(parameters, self.exp.training["lr"], self.exp.training["weight_decay"])
            batches = batch_stream(self.population(pid), self.exp.training["batch_size"],
                                   torch.Generator().manual_seed(derive_seed(self.exp.seed, fold, *purpose)))
            train_steps(loss_fn, optimiser, batches, steps, self.device, self.exp.training["max_grad_norm"])

    def reference(self, shape, pid: int):
        """A `shape` model trained on the population data of `pid`'s other fold."""
        key = (shape, pid % 2, self.exp.encoding_of(pid))
        if key not in self._references:
            model = self.exp.family_of(pid).build(shape, seed=derive_seed(self.exp.seed, "mia-reference", str(shape)))
            model.to(self.device).train()
            self._train(lambda b: model(**b).loss, model.parameters(), pid, self.spec["reference_steps"],
                        "mia-reference", str(shape))
            self._references[key] = model.eval().requires_grad_(False)
        return self._references[key]

    def proxy(self, global_state: dict, pid: int):
        """The server's proxy: a target model grown through `global_state` (Global-LiGO,
        frozen) from an intermediate model trained on `pid`'s other fold's data; a logits
        function."""
        key = (state_sha256(global_state), pid % 2, self.exp.encoding_of(pid))
        if key not in self._proxies:
            exp, family = self.exp, self.exp.family_of(pid)
            ligo = LiGO(family, exp.intermediate, exp.target, **exp.ligo_options).to(self.device)
            ligo.load_state_dict(strip_prefix(global_state, GLOBAL_PREFIX))
            ligo.requires_grad_(False)
            intermediate = family.build(exp.intermediate, seed=derive_seed(exp.seed, "mia-proxy-init"))
            params = {k: v.detach().clone().to(self.device).requires_grad_(True)
                      for k, v in intermediate.named_parameters()}
            self._train(lambda b: run_grown(family, exp.target, ligo(params), b).loss,
                        list(params.values()), pid, self.spec["proxy_steps"], "mia-proxy")
            with torch.no_grad():
                grown = {k: v.detach() for k, v in ligo(params).items()}
            self._proxies[key] = lambda batch: run_grown(family, exp.target, grown, batch, training=False).logits
        return self._proxies[key]

    # ---- the attacks --------------------------------------------------------------------------
    def attack(self, logits_fn, reference_fn, pid: int) -> dict:
        """AUC and TPR at 1% FPR of the loss attack and of the calibrated attack."""
        members, others = self.sets(pid)
        loss_in, loss_out = (sample_losses(logits_fn, b, self.device) for b in (members, others))
        ref_in, ref_out = (sample_losses(reference_fn, b, self.device) for b in (members, others))
        auc, tpr = roc(-loss_in, -loss_out)
        calibrated_auc, calibrated_tpr = roc(ref_in - loss_in, ref_out - loss_out)
        return {"auc": auc, "tpr_at_1fpr": tpr, "calibrated_auc": calibrated_auc,
                "calibrated_tpr_at_1fpr": calibrated_tpr}

    def deployed(self, model, pid: int) -> dict:
        """The attacks on participant `pid`'s deployed (plain) model."""
        model = model.to(self.device).eval()
        shape = self.exp.family.shape_of(model)
        found = self.attack(_model_logits(model), _model_logits(self.reference(shape, pid)), pid)
        return {f"mia_{k}": v for k, v in found.items()}

    def server(self, shared: dict | None, initial_shared: dict | None, pid: int) -> dict:
        """The attacks on what the server holds, against participant `pid`'s members."""
        if not shared:
            return {"server_mia_auc": None, "server_mia_tpr_at_1fpr": None, "server_mia_calibrated_auc": None}
        if all(k.startswith(GLOBAL_PREFIX) for k in shared):  # Global-LiGO only: attack a proxy
            found = self.attack(self.proxy(shared, pid), self.proxy(initial_shared, pid), pid)
        else:  # the whole model
            model = self.exp.family.build(self.exp.target)
            model.load_state_dict(strip_prefix(shared, MODEL_PREFIX), strict=False)
            model.to(self.device)
            found = self.attack(_model_logits(model), _model_logits(self.reference(self.exp.target, pid)), pid)
        return {"server_mia_auc": found["auc"], "server_mia_tpr_at_1fpr": found["tpr_at_1fpr"],
                "server_mia_calibrated_auc": found["calibrated_auc"]}
