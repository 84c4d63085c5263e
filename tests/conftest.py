import os

# Nothing in the tests may reach a hub: fail fast instead of hanging on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import launch

from fedgrow_ray.config import resolve_scenario
from fedgrow_ray.models import get_family
from fedgrow_ray.outputs import RunFolder


@pytest.fixture
def text_family():
    return get_family("text", vocab_size=64, max_positions=16, num_classes=4, dropout=0.0)


@pytest.fixture
def image_family():
    return get_family("image", image_size=16, patch_size=4, num_classes=4, dropout=0.0)


@pytest.fixture(params=["text", "image"])
def family(request, text_family, image_family):
    return {"text": text_family, "image": image_family}[request.param]


def toy_batch(family, n, generator):
    """A small learnable task for either family: the label is written into the input (a marker
    token at a quarter of the positions; a bright quadrant in a noisy image) for a model to find."""
    labels = torch.randint(0, family.num_classes, (n,), generator=generator)
    if family.name == "text":
        length = family.max_positions
        ids = torch.randint(family.num_classes + 1, family.vocab_size, (n, length), generator=generator)
        marked = torch.rand(n, length, generator=generator) < 0.25
        ids = torch.where(marked, (labels + 1).unsqueeze(1), ids)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    size, half = family.image_size, family.image_size // 2
    pixels = torch.randn(n, family.channels, size, size, generator=generator) * 0.5
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label % 4, 2)
        pixels[i, :, r * half:(r + 1) * half, c * half:(c + 1) * half] += 1.5
    return {"pixel_values": pixels, "labels": labels}


# A scenario small enough to run a whole simulation in seconds.
TINY = {
    "name": "tiny", "seed": 3, "rounds": 2, "participants": 6, "methods": ["fedgrow"],
    "model": {"family": "text", "vocab_size": 300, "max_positions": 16, "dropout": 0.0,
              "small_shapes": [{"width": 16, "layers": 1, "heads": 2, "ffn": 32},
                               {"width": 24, "layers": 2, "heads": 2, "ffn": 48}],
              "intermediate": {"width": 24, "layers": 2, "heads": 2, "ffn": 48},
              "target": {"width": 32, "layers": 3, "heads": 2, "ffn": 64}},
    "training": {"batch_size": 8, "local_steps": 3, "pretrain_steps": 10, "local_stage_steps": 3},
    "data": {"source": "synthetic_text", "train_size": 600, "test_size": 200,
             "test_per_participant": 20, "partition": {"scheme": "iid"}},
    "hosts": {"actors": 2},
}


def tiny(*overrides):
    return resolve_scenario(TINY, list(overrides))


# Row keys that measure the run or depend on how participants were hosted, not results.
MEASURED = {"wall_s", "host_rss_mb_max", "host_gpu_mb_max", "host_gpu_held_mb_max", "resident_max",
            "alive_max", "spilled", "reloaded", "restarts", "driver_bytes_in"}


@pytest.fixture(scope="session")
def ray_session():
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback; read at import
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def kill_all(find, attempts: int) -> None:
    """SIGKILL every process `find()` returns, again until none is left (a dying Ray session
    can still spawn a worker), at most `attempts` times."""
    import psutil
    for _ in range(attempts):
        procs = find()
        if not procs:
            return
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)


def simulate(ray, scenario, cache, out):
    folder = RunFolder.create(out, scenario)
    summary = launch.run_with_ray(ray, scenario, cache, folder, launch.Progress(open(os.devnull, "w")))
    return summary, folder.metrics(), folder
