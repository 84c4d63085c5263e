"""How a step is taken (fedgrow_ray.training): micro-batches, activation checkpointing, mixed
precision, inference-mode evaluation, and the memory plans the device model builds from them."""

import math
from pathlib import Path

import pytest
import torch

from conftest import tiny, toy_batch
from fedgrow_ray.devices import MemoryPlan, format_mib, plan_training_memory
from fedgrow_ray.dual_ligo import DualLiGO, run_grown
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.methods import get_method
from fedgrow_ray.models import Shape
from fedgrow_ray.participant import ParticipantHost
from fedgrow_ray.rounds import LocalExecutor, MethodRun
from fedgrow_ray.training import precision_problem, predict, train_steps

ROOT = Path(__file__).resolve().parent.parent


def one_round(method, cache, *overrides, log=None):
    """Round 1 of `method` on the tiny scenario in this process: (its metrics row, the MethodRun)."""
    scenario = tiny(f"methods=[{method}]", "rounds=1", *overrides)
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    executor = LocalExecutor(scenario, str(experiment.data.path))
    run = MethodRun(experiment, method, executor, lambda row: None, log or (lambda message: None))
    return run.run_round(1, 1), run


def local_updates(method, cache, *overrides):
    """{participant: (update it would send in round 1, its training loss)} on the tiny scenario,
    setup (pre-training, local stage) included, before any aggregation."""
    scenario = tiny(f"methods=[{method}]", "rounds=1", *overrides)
    host = ParticipantHost(scenario, str(prepare_scenario_data(scenario, cache)))
    chosen = get_method(method, host.experiment)
    shared = chosen.initial_shared()
    updates = {}
    for pid in range(scenario["participants"]):
        if chosen.memory_plan(pid)[0] is None:  # excluded: never asked to train
            continue
        participant = host.participant(pid)
        updates[pid] = chosen.train(participant, chosen.setup(participant), shared, 1)
    return updates


@pytest.mark.parametrize("method", ["fedgrow", "fedavg_scratch"])
def test_micro_batches_give_the_full_batch_step(method, cache):
    """Guards against gradient accumulation that is not the full batch's gradient (a missing
    share weight on unequal slices, gradients zeroed between slices, a grown model rebuilt or
    pushed back once per slice): 8 samples in slices of 3, 3, 2 must train every participant
    (pre-training and local stage included) to the same weights up to float rounding."""
    whole = local_updates(method, cache)
    micro = local_updates(method, cache, "training.micro_batch_size=3")
    assert len(whole) == 6
    for pid in whole:
        (a, loss_a), (b, loss_b) = whole[pid], micro[pid]
        assert loss_b == pytest.approx(loss_a, rel=1e-5) and a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=f"participant {pid} {name}")


@pytest.mark.parametrize("family_name", ["text_family", "image_family"])
def test_checkpointed_layers_recompute_with_the_generated_weights(family_name, request):
    """Guards against activation checkpointing of the grown model that recomputes a layer with
    the skeleton's own (unused) weights, or not at all: LiGO's gradients must be those of the
    plain backward and each layer must run twice."""
    family = request.getfixturevalue(family_name)
    small = family.build(Shape(16, 1, 2, 32), seed=1)
    dual = DualLiGO(small, Shape(24, 2, 2, 48), Shape(32, 3, 2, 64), family=family, seed=2).train()
    batch = toy_batch(family, 6, torch.Generator().manual_seed(0))
    calls = []
    layer = [m for m in family.skeleton(dual.target_shape, True).modules() if type(m).__name__.endswith("Layer")][0]
    hook = layer.attention.register_forward_hook(lambda *args: calls.append(1))  # inside the replayed forward
    gradients = []
    for checkpointing in (False, True):
        dual.zero_grad()
        run_grown(family, dual.target_shape, dual.target_parameters(), batch, checkpointing=checkpointing).loss.backward()
        gradients.append({n: p.grad.clone() for n, p in dual.named_parameters() if p.grad is not None})
    hook.remove()
    assert len(calls) == 2  # forward, then recomputed in the backward pass
    assert gradients[0].keys() == gradients[1].keys() and len(gradients[0]) > 10
    for name in gradients[0]:
        torch.testing.assert_close(gradients[1][name], gradients[0][name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().sum() > 0 for g in gradients[0].values())


def test_memory_plan_checkpoints_then_halves_micro_batches_then_excludes():
    """Guards against a budget plan that excludes a participant who could train in smaller
    slices, or lets one in whose budget cannot hold the model."""
    def need(samples, checkpointing):  # 100 MiB of model; 10 MiB a sample, 2 checkpointed
        return 100 + samples * (2 if checkpointing else 10)

    assert plan_training_memory(math.inf, need, 16) == (MemoryPlan(None, False, 260), plan_training_memory(math.inf, need, 16)[1])
    assert plan_training_memory(200, need, 16, micro_batch_size=8)[0] == MemoryPlan(8, False, 180)
    assert plan_training_memory(140, need, 16)[0] == MemoryPlan(None, True, 132)
    plan, reason = plan_training_memory(110, need, 16)
    assert plan == MemoryPlan(4, True, 108)
    assert reason == ("memory budget 110 MiB < 260 MiB needed for a batch of 16: trains in micro-batches of 4 "
                      "with activation checkpointing (108 MiB)")
    assert plan_training_memory(101, need, 16)[0] is None
    assert plan_training_memory(101, need, 16)[1] == ("memory budget 101 MiB < 102 MiB needed for the model "
                                                      "(100 MiB) and one sample's activations with checkpointing")
    assert plan_training_memory(99, need, 16) == (None, "memory budget 99 MiB < 100 MiB needed to hold the "
                                                        "model (weights, gradients, optimiser state)")


def test_a_budget_below_the_batch_trains_micro_batched_and_slower(cache, tmp_path):
    """Guards against a participant whose budget holds the model but not a full batch being
    excluded (or trained differently, or counted as fast), and against one whose budget cannot
    hold the model taking part."""
    free_run = one_round("fedgrow", cache)[1]
    experiment, method = free_run.exp, free_run.method
    shape = experiment.small_shape(0)[0]  # participants 0 and 2 hold the smallest rung
    assert shape == experiment.small_shape(2)[0] == min(experiment.ladder, key=experiment.params)
    pretrain_mb = experiment.training_memory_mb(shape, experiment.params(shape))
    model_mb = method.memory_mb(shape, 0, True)
    per_sample = method.memory_mb(shape, 1, True) - model_mb  # checkpointed activations of one sample
    assert pretrain_mb < model_mb  # both budgets below hold the small model: fedgrow decides
    budgets = [model_mb + 4.5 * per_sample, 1e6, (pretrain_mb + model_mb) / 2, 1e6, 1e6, 1e6]  # 4 of 8 fit
    trace = tmp_path / "memory.csv"
    trace.write_text("memory_mb\n" + "\n".join(str(b) for b in budgets) + "\n")
    messages = []
    row, run = one_round("fedgrow", cache, f"devices.trace={trace}", log=messages.append)
    plan = run.plan(1)
    assert plan["excluded"] == [2] and 0 in plan["kept"] 
    memory = run.method.memory_plan(0)[0]
    assert memory.checkpointing and memory.micro_batch_size == 4 and memory.need_mb <= budgets[0]
    assert budgets[0] < method.memory_mb(shape, None, True) < method.memory_mb(shape)
    # slower on the virtual clock by one more forward of the target per step; the rest unchanged
    extra = experiment.training["local_steps"] * experiment.step_flops(experiment.target) / 3
    assert plan["flops_each"][0] == pytest.approx(free_run.plan(1)["flops_each"][0] + extra)
    assert plan["times"][0].compute_s > free_run.plan(1)["times"][0].compute_s
    assert plan["flops_each"][1] == pytest.approx(free_run.plan(1)["flops_each"][1])
    assert row["aggregated"] == 5
    # and it trains: the update it sends is the one it sends without a budget, up to float rounding
    free_update = local_updates("fedgrow", cache)[0][0]
    update = local_updates("fedgrow", cache, f"devices.trace={trace}")[0][0]
    for name in free_update:
        torch.testing.assert_close(update[name], free_update[name], rtol=1e-4, atol=1e-5, msg=name)
    log = "\n".join(messages)
    assert "participant 0 (fedgrow): memory budget" in log and "micro-batches of 4 with activation checkpointing" in log
    assert (f"participant 2 excluded from fedgrow: memory budget {format_mib(budgets[2])} MiB < {format_mib(model_mb)} MiB "
            f"needed to hold the model") in log


def test_bf16_autocast_trains_fp32_master_weights(text_family):
    """Guards against mixed precision that casts the trained parameters (or their gradients and
    AdamW state) to bf16 instead of autocasting the computation, or that does not autocast."""
    model = text_family.build(Shape(32, 2, 2, 64), seed=0)
    seen = []
    model.classifier.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter([toy_batch(text_family, 8, torch.Generator().manual_seed(i)) for i in range(3)])
    loss = train_steps(lambda b: model(**b).loss, optimiser, batches, 3, precision="bf16")
    assert seen == [torch.bfloat16] * 3 and math.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimiser.state.values())


def test_fp16_uses_a_loss_scaler_and_cpu_precisions_are_checked(text_family):
    """Guards against fp16 steps without loss scaling (the scaler's scale must be in use) and
    against the scenario check refusing a precision this torch can run on CPU."""
    assert precision_problem("bf16", "cpu") is None and precision_problem("fp32", "cpu") is None
    if precision_problem("fp16", "cpu") is not None:
        pytest.skip(precision_problem("fp16", "cpu"))
    model = text_family.build(Shape(32, 2, 2, 64), seed=0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    batches = iter([toy_batch(text_family, 8, torch.Generator().manual_seed(i)) for i in range(3)])
    loss = train_steps(lambda b: model(**b).loss, optimiser, batches, 3, precision="fp16")
    assert math.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_evaluation_runs_in_inference_mode(text_family):
    """Guards against evaluation that records autograd state (no inference mode)."""
    model = text_family.build(Shape(32, 2, 2, 64), seed=0).eval()
    modes = []

    class Shard:
        def batches(self, size, generator, shuffle=True):
            yield toy_batch(text_family, size, torch.Generator().manual_seed(0))

    def logits(batch):
        modes.append(torch.is_inference_mode_enabled())
        return model(**batch).logits

    labels, predictions = predict(logits, Shard(), 5)
    assert modes == [True] and labels.shape == predictions.shape == (5,)


@pytest.mark.parametrize("family_name", ["text_family", "image_family"])
def test_grown_models_use_fused_attention(family_name, request):
    """Guards against the grown model falling back to eager attention (or sdpa computing other
    attention than eager): the skeleton is sdpa and matches an eager model on the same weights."""
    family = request.getfixturevalue(family_name)
    shape = Shape(32, 2, 4, 64)
    skeleton = family.skeleton(shape)
    assert skeleton.config._attn_implementation == "sdpa"
    eager = family.build(shape, seed=5)
    eager.config._attn_implementation = "eager"
    params = {k: v.detach() for k, v in eager.named_parameters()}
    batch = toy_batch(family, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = run_grown(family, shape, params, batch, training=False).logits
        reference = eager.eval()(**batch).logits
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bf16_quickstart_is_within_two_points_of_fp32(cache):
    """Guards against mixed precision that changes what is learned (bf16 master weights, a
    loss or LiGO generation left in low precision where it diverges): the quickstart's final
    accuracy of every method in bf16 is within 0.02 of fp32's."""
    from fedgrow_ray.config import load_scenario
    from fedgrow_ray.rounds import run_experiment

    final = {}
    for precision in ("fp32", "bf16"):
        scenario = load_scenario(ROOT / "scenarios" / "quickstart.yaml", [f"training.precision={precision}"])
        experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
        rows = []
        run_experiment(experiment, LocalExecutor(scenario, str(experiment.data.path)), rows.append, lambda m: None)
        final[precision] = {row["method"]: row["eval_accuracy"] for row in rows if row["round"] == scenario["rounds"]}
    assert final["fp32"].keys() == final["bf16"].keys() == {"fedgrow", "independent_growth"}
    for method, accuracy in final["fp32"].items():
        assert abs(final["bf16"][method] - accuracy) <= 0.02, (method, final)
