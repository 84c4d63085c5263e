"""Privacy mechanisms (fedgrow_ray/privacy): DP clipping, noise and accounting, simulated secure
aggregation, and their place in a run (metrics, summary, checkpoint and resume)."""

import json
import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp

import launch
from conftest import MEASURED, tiny, toy_batch
from fedgrow_ray.config import ScenarioError
from fedgrow_ray.experiment import prepare_scenario_data
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.models import Shape
from fedgrow_ray.privacy import secure_aggregation as sa
from fedgrow_ray.privacy.attacks import KEYS as MIA_KEYS, roc, sample_losses
from fedgrow_ray.privacy.accountant import central_epsilon, local_epsilon, noise_for_epsilon
from fedgrow_ray.privacy.dp import global_norm
from fedgrow_ray.privacy.mechanisms import ParticipantPrivacy, ServerPrivacy

QUIET = launch.Progress(open("/dev/null", "w"))


def random_state(generator, scale=1.0):
    return {"global_ligo.a": torch.randn(7, 5, generator=generator) * scale,
            "global_ligo.b": torch.randn(13, generator=generator) * scale}


# ---- differential privacy ---------------------------------------------------------------------
def test_clipping_bounds_every_contribution():
    """A participant whose update delta is not scaled to L2 norm <= C (or a small one that is
    changed) breaks this: every contribution the server sums is bounded."""
    scenario = tiny("privacy.dp={noise_multiplier: 1.0, clip: 0.5}")
    participant = ParticipantPrivacy(scenario)
    generator = torch.Generator().manual_seed(0)
    received = random_state(generator)
    for scale in (1e-3, 0.01, 0.1, 1.0, 10.0, 100.0):
        trained = {k: v + d for (k, v), d in zip(received.items(), random_state(generator, scale).values())}
        sent = participant.leaving(1, "fedgrow", 1, trained, received, None)
        delta = {k: sent[k].double() - received[k].double() for k in received}
        before = global_norm({k: trained[k].double() - received[k].double() for k in received})
        assert global_norm(delta) <= 0.5 * (1 + 1e-5)
        if before < 0.5:  # below the bound: sent as it was
            assert all(torch.equal(sent[k], trained[k]) for k in received)
    server = ServerPrivacy(tiny("privacy.dp={noise_multiplier: 1e-9, clip: 0.5}"), "fedgrow")
    huge = [(pid, {k: v + 100 for k, v in received.items()}) for pid in range(6)]
    new, _ = server.aggregate(received, huge, 1, 6, list(range(6)), list(range(6)))
    assert global_norm({k: new[k].double() - received[k].double() for k in received}) <= 0.5 * (1 + 1e-5)


@pytest.mark.parametrize("noise", ["central", "local", "distributed"])
def test_noise_std_of_the_aggregate_is_sigma_c_over_expected_count(noise):
    """Noise of the wrong scale (not sigma*C on the sum, or not divided by the expected count;
    distributed shares that do not add up to sigma*C) breaks this: the empirical std over many
    draws matches the mechanism's."""
    sigma, clip, count = 1.5, 0.5, 4
    scenario = tiny("participants=8", f"sampling.count={count}",
                    f"privacy.dp={{noise_multiplier: {sigma}, clip: {clip}, noise: {noise}}}",
                    *(["privacy.secure_aggregation={}"] if noise == "distributed" else []))
    participant, server = ParticipantPrivacy(scenario), ServerPrivacy(scenario, "fedgrow")
    received = {"global_ligo.w": torch.zeros(250, dtype=torch.float64)}
    draws = []
    for round_number in range(1, 41):
        arrivals = [(pid, participant.leaving(pid, "fedgrow", round_number, received, received, list(range(count))))
                    for pid in range(count)]
        new, _ = server.aggregate(received, arrivals, round_number, count, list(range(count)), list(range(count)))
        draws.append(new["global_ligo.w"])
    draws = torch.cat(draws)
    expected = sigma * clip / count * (math.sqrt(count) if noise == "local" else 1.0)
    # 10,000 draws: the std estimate's relative error is ~0.7%
    assert float(draws.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(draws.mean())) < 4 * expected / math.sqrt(draws.numel())


def test_epsilon_is_the_accountant_librarys_answer():
    """A hand-written formula, the wrong sampling event or a sigma not halved for replace-one
    sensitivity breaks this: epsilon equals dp-accounting's own for the same mechanism."""
    sigma, delta = 1.1, 1e-5
    scenario = tiny("participants=6", "sampling.count=3", f"privacy.dp={{noise_multiplier: {sigma}, delta: {delta}}}")
    server = ServerPrivacy(scenario, "fedgrow")
    received = {"global_ligo.w": torch.zeros(4)}
    for round_number in range(1, 6):
        server.aggregate(received, [(p, received) for p in range(3)], round_number, 3, [0, 1, 2], [0, 1, 2])
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(6, 3, dp_accounting.GaussianDpEvent(sigma / 2)), 5)
    assert server.epsilon() == accountant.get_epsilon(delta)
    full = rdp.RdpAccountant()  # every participant each round: the Gaussian mechanism, composed
    full.compose(dp_accounting.GaussianDpEvent(sigma / 2), 5)
    assert central_epsilon([(6, sigma)] * 5, 6, delta) == full.get_epsilon(delta)
    assert local_epsilon(5, sigma, delta) == full.get_epsilon(delta)
    # Calibration: the computed sigma spends the target, and a little less noise spends more.
    for local, sample in ((False, 6), (True, 6), (False, 3)):
        found = noise_for_epsilon(3.0, delta, 5, 6, sample, local)
        spent = local_epsilon(5, found, delta) if local else central_epsilon([(sample, found)] * 5, 6, delta)
        assert spent == pytest.approx(3.0, rel=1e-3)
        less = local_epsilon(5, found * 0.95, delta) if local else central_epsilon([(sample, found * 0.95)] * 5, 6, delta)
        assert less > 3.0


# ---- secure aggregation -----------------------------------------------------------------------
def masked_inputs(vectors, cohort, seed=0, bits=16):
    return {pid: sa.mask(vectors[pid], pid, cohort, seed, 1, "fedgrow", bits) for pid in cohort}


@pytest.mark.parametrize("dropped", [[], [2], [0, 4]])
def test_unmasked_sum_equals_the_plain_sum_within_quantisation(dropped):
    """Masks that do not cancel, or dropouts whose pairwise masks are not removed, break this:
    the unmasked sum of the survivors equals their plain sum within the rounding bound."""
    cohort, bits = [0, 1, 2, 3, 4, 5], 16
    generator = torch.Generator().manual_seed(7)
    vectors = {pid: torch.randn(300, generator=generator, dtype=torch.float64) for pid in cohort}
    masked = masked_inputs(vectors, cohort, bits=bits)
    survivors = [p for p in cohort if p not in dropped]
    total, revealed = sa.unmask({p: masked[p] for p in survivors}, cohort, 0, 1, "fedgrow",
                                sa.threshold_of(len(cohort), 0.5))
    plain = sum(vectors[p] for p in survivors)
    error = (sa.decode(total, bits) - plain).abs().max()
    assert float(error) <= len(survivors) * 2 ** -(bits + 1) + 1e-12
    assert revealed == {"self_seeds": survivors, "dh_secrets": dropped}  # never both for one participant
    with pytest.raises(sa.TooFewSurvivors):
        sa.unmask({p: masked[p] for p in survivors[:2]}, cohort, 0, 1, "fedgrow", 3)


def test_a_single_masked_update_carries_no_information():
    """A mask that is missing, weak or reused breaks this: over many seeds a masked update is
    uncorrelated with the true one (the encoded update without masks is, perfectly)."""
    xs, ys, plain = [], [], []
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        vectors = {pid: torch.randn(50, generator=generator, dtype=torch.float64) for pid in range(3)}
        xs.append(vectors[1])
        ys.append(sa.mask(vectors[1], 1, [0, 1, 2], seed, 1, "fedgrow", 16).double())
        plain.append(sa.decode(sa.encode(vectors[1], 16), 16))
    x, y = torch.cat(xs).numpy(), torch.cat(ys).numpy()
    assert abs(np.corrcoef(x, y)[0, 1]) < 4 / math.sqrt(len(x))
    assert np.corrcoef(x, torch.cat(plain).numpy())[0, 1] > 0.999
    assert y.min() >= 0 and y.max() < sa.RING and y.std() > 0.25 * sa.RING  # uniform on the ring


def test_secure_aggregation_is_refused_where_it_cannot_work():
    """A median of masked vectors (meaningless), a norm check the server cannot do, or distributed
    noise without masking must be refused with a one-line error naming the key."""
    cases = {("server.aggregator=median", "privacy.secure_aggregation={}"): "'server.aggregator': 'median'",
             ("server.aggregator=trimmed_mean", "privacy.secure_aggregation={}"): "'server.aggregator': 'trimmed_mean'",
             ("server.max_update_norm=5", "privacy.secure_aggregation={}"): "'server.max_update_norm'",
             ("privacy.dp={noise_multiplier: 1, noise: distributed}",): "'privacy.dp.noise'",
             ("privacy.dp={clip: 1}",): "'privacy.dp'",
             ("privacy.dp={noise_multiplier: 1, target_epsilon: 2}",): "'privacy.dp'",
             ("privacy.secure_aggregation={bits: 3}",): "'privacy.secure_aggregation.bits' is unknown"}
    for overrides, message in cases.items():
        with pytest.raises(ScenarioError, match=message.replace("(", r"\(")) as info:
            tiny(*overrides)
        assert "\n" not in str(info.value)


# ---- in a run ---------------------------------------------------------------------------------
def local_run(scenario, cache, out, stop_after=None):
    """A whole run in this process; with `stop_after` (method, round), interrupted right after
    that round's row, then resumed from its checkpoint."""
    folder = RunFolder.create(out, scenario)
    data = prepare_scenario_data(scenario, cache)
    if stop_after is None:
        return launch.run_locally(scenario, data, folder, QUIET), folder.metrics(), folder
    record = folder.record

    def interrupting(row):
        record(row)
        if (row["method"], row["round"]) == stop_after:
            raise KeyboardInterrupt
    folder.record = interrupting
    with pytest.raises(KeyboardInterrupt):
        launch.run_locally(scenario, data, folder, QUIET)
    folder, _, _ = RunFolder.for_resume(out)
    return launch.run_locally(scenario, data, folder, QUIET, resume=True), folder.metrics(), folder


PRIVATE = ("methods=[fedgrow,fedavg_scratch,local_small]", "rounds=2", "participants=6", "sampling.count=4",
           "privacy.dp={target_epsilon: 8, noise: distributed, clip: 0.5}", "privacy.secure_aggregation={}",
           "faults.drop_upload=0.2", "privacy.attack={samples: 16, reference_steps: 5, proxy_steps: 5}")


@pytest.fixture(scope="module")
def private_run(cache, tmp_path_factory):
    return local_run(tiny(*PRIVATE), cache, tmp_path_factory.mktemp("private") / "run")


def test_epsilon_in_every_row_and_in_the_summary(private_run):
    """dp_epsilon missing from a row, not growing with the rounds, or summary.json disagreeing
    with the last row breaks this; methods that send nothing spend nothing."""
    summary, rows, folder = private_run
    written = json.loads((folder.path / "summary.json").read_text())["methods"]
    for method in ("fedgrow", "fedavg_scratch"):
        eps = [r["dp_epsilon"] for r in rows if r["method"] == method]
        assert len(eps) == 2 and all(0 < a < b for a, b in zip(eps, eps[1:]))
        assert written[method]["dp_epsilon"] == eps[-1] and written[method]["dp_delta"] == 1e-5
    assert {r["dp_epsilon"] for r in rows if r["method"] == "local_small"} == {0.0}
    masked = [r for r in rows if r["method"] != "local_small"]
    assert all(r["secagg_s"] > 0 and r["bytes_up"] > 0 for r in masked)
    assert sum(r["failed"] for r in masked) > 0  # dropouts after masking happened, and were recovered
    assert all(r["aggregated"] == r["completed"] for r in masked)


def test_only_global_ligo_leaves_a_participant_under_dp_and_secure_aggregation(cache, tmp_path):
    """A privacy mechanism that made a participant send anything but Global-LiGO (its mask
    material named after private tensors, a clipped full state) breaks this boundary check."""
    summary, _, _ = local_run(tiny("methods=[fedgrow]", "rounds=1", *PRIVATE[3:6]), cache, tmp_path / "run")
    names = summary["shared_tensor_names"]
    assert names and all(name.startswith("global_ligo.") for name in names)


def test_driver_holds_only_masked_updates(cache):
    """A host that returned its clipped update unmasked (or a driver that did not check) breaks
    this: what arrives at the driver is ring elements, uncorrelated with the plain update of the
    same round, and a float update arriving is refused."""
    from fedgrow_ray.experiment import Experiment
    from fedgrow_ray.rounds import LocalExecutor, MethodRun
    arrived, runs = {}, {}
    for label, overrides in (("masked", ("privacy.secure_aggregation={}",)), ("plain", ("hosts.reduce=false",))):
        scenario = tiny("rounds=1", *overrides)
        experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
        executor = LocalExecutor(scenario, str(experiment.data.path))
        train = executor.train

        def capture(*args, label=label, **kwargs):
            results, failures = train(*args, **kwargs)
            arrived[label] = {r["id"]: r["update"] for r in results}
            return results, failures
        executor.train = capture
        run = runs[label] = MethodRun(experiment, "fedgrow", executor, lambda row: None, lambda m: None)
        initial = dict(run.shared)
        run.run()
    for pid, masked in arrived["masked"].items():
        assert all(t.dtype == torch.int64 for t in masked.values())
        plain = torch.cat([(arrived["plain"][pid][k].double() - initial[k].double()).reshape(-1) for k in sorted(masked)])
        ring = torch.cat([masked[k].reshape(-1) for k in sorted(masked)]).double()
        assert abs(np.corrcoef(plain.numpy(), ring.numpy())[0, 1]) < 0.05
    with pytest.raises(RuntimeError, match="unmasked update reached the driver"):
        runs["masked"].privacy.check_arrival(arrived["plain"][0])


@pytest.mark.slow
def test_private_run_is_deterministic_and_resumes_exactly(private_run, cache, tmp_path):
    """Noise, masks or the accountant's history not restored from the checkpoint (or drawn
    from anything but the seed) breaks this: interrupted after fedavg_scratch's round 1 and
    resumed, every row and the shared state equal the uninterrupted run's."""
    reference, reference_rows, _ = private_run
    summary, rows, _ = local_run(tiny(*PRIVATE), cache, tmp_path / "run", stop_after=("fedavg_scratch", 1))
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    for name, method in reference["methods"].items():
        assert summary["methods"][name]["shared_sha256"] == method["shared_sha256"]
        assert summary["methods"][name]["dp_epsilon"] == method["dp_epsilon"]
    assert len(rows) == len(reference_rows)
    for row, expected in zip(rows, reference_rows):
        keys = (row.keys() | expected.keys()) - MEASURED - {"secagg_s"}
        assert {k: row.get(k) for k in keys} == {k: expected.get(k) for k in keys}


# ---- membership inference ---------------------------------------------------------------------
def memorising_task(family, n, seed):
    """Inputs with labels drawn independently of them: only memorising can fit them."""
    generator = torch.Generator().manual_seed(seed)
    batch = toy_batch(family, n, generator)
    batch["labels"] = torch.randint(0, family.num_classes, (n,), generator=generator)
    return batch


def trained(family, batch, steps, seed):
    torch.manual_seed(seed)
    model = family.build(Shape(32, 2, 2), seed=seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def test_attacks_fail_on_an_unseen_model_and_succeed_on_an_overfitted_one(text_family):
    """An attack that always reports success (or never can) breaks this: its AUC is ~0.5 on a
    model that never saw the members and clearly above 0.5 on one that memorised them, for the
    loss attack and the calibrated one; AUC and TPR agree with scikit-learn's ROC."""
    from sklearn.metrics import roc_auc_score, roc_curve
    members, others = memorising_task(text_family, 64, 1), memorising_task(text_family, 64, 2)
    reference = trained(text_family, memorising_task(text_family, 64, 3), 150, 3)
    logits = lambda model: (lambda b: model(**b).logits)  # noqa: E731
    ref_in, ref_out = sample_losses(logits(reference), [members]), sample_losses(logits(reference), [others])
    for label, model, lower, upper in (("unseen", trained(text_family, memorising_task(text_family, 64, 4), 150, 4), 0.35, 0.65),
                                       ("overfitted", trained(text_family, members, 150, 5), 0.7, 1.0)):
        loss_in, loss_out = sample_losses(logits(model), [members]), sample_losses(logits(model), [others])
        for scores_in, scores_out in ((-loss_in, -loss_out), (ref_in - loss_in, ref_out - loss_out)):
            auc, tpr = roc(scores_in, scores_out)
            assert lower <= auc <= upper, (label, auc)
            truth, scores = np.r_[np.ones(64), np.zeros(64)], np.r_[scores_in, scores_out]
            assert auc == pytest.approx(roc_auc_score(truth, scores))
            fpr, tprs, _ = roc_curve(truth, scores)
            assert tpr == pytest.approx(tprs[fpr <= 0.01].max())


def test_attacks_reported_per_method(private_run):
    """The membership numbers missing from summary.json, or a server-side number for a method
    that sends nothing, breaks this."""
    summary, rows, _ = private_run
    methods = summary["methods"]
    for name in ("fedgrow", "fedavg_scratch", "local_small"):
        for key in ("mia_auc", "mia_tpr_at_1fpr", "mia_calibrated_auc"):
            assert 0.0 <= methods[name][key] <= 1.0, (name, key)
    for name in ("fedgrow", "fedavg_scratch"):
        assert 0.0 <= methods[name]["server_mia_auc"] <= 1.0 and 0.0 <= methods[name]["server_mia_calibrated_auc"] <= 1.0
    assert methods["local_small"]["server_mia_auc"] is None
    final = [r for r in rows if r["method"] == "fedgrow"][-1]
    assert set(f"eval_{k}" for k in MIA_KEYS) <= set(final)


def test_privacy_report_only_when_privacy_is_measured(tmp_path):
    """A sweep without privacy getting a privacy.md (or one with it getting none, or a table
    missing a setting's epsilon) breaks this."""
    from fedgrow_ray.privacy.report import write_privacy_report

    def run(setting, seed, eps, auc):
        method = {"accuracy_mean": 0.5 + seed / 100, "dp_epsilon": eps, "mia_auc": auc, "mia_calibrated_auc": auc,
                  "server_mia_calibrated_auc": auc, "bytes_up_total": 2**20, "bytes_down_total": 0, "wall_s": 3.0}
        return {"setting": setting, "seed": seed, "summary": {"methods": {"fedgrow": method}}}
    plain = [run("none", s, None, None) for s in (0, 1)]
    assert write_privacy_report(tmp_path, plain) == "" and not (tmp_path / "privacy.md").exists()
    measured = plain + [run("eps-10", s, 9.5, 0.6) for s in (0, 1)]
    text = write_privacy_report(tmp_path, measured)
    assert "| eps-10 | fedgrow | 2 | 9.500" in text and "| none | fedgrow | 2 | – |" in text
    assert (tmp_path / "privacy.md").read_text() == text and (tmp_path / "privacy.png").stat().st_size > 0
