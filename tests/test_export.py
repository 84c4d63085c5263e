"""Export: a run's grown models leave as Hugging Face folders that plain transformers code loads,
with their tokenizer, reproducing the participant's final accuracy; Global-LiGO leaves with the
shapes it maps between."""

import io

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import launch
from conftest import TINY, tiny
from fedgrow_ray.config import ScenarioError
from fedgrow_ray.data import PreparedData, check_data_spec
from fedgrow_ray.data.sources import column, load_source
from fedgrow_ray.dual_ligo import state_sha256
from fedgrow_ray.experiment import prepare_scenario_data
from fedgrow_ray.export import load_global_ligo
from fedgrow_ray.models import Shape


def test_an_exported_model_loaded_by_plain_transformers_reproduces_the_final_accuracy(cache, tmp_path):
    """Guards against an export that is not the model the participant was scored with (before or
    without its fine-tune, another participant's, a wrong tokenizer or mask), that plain Auto
    classes cannot load, or that holds participants the `export` key did not name. (Through Ray,
    where each host writes its own participants': test_plugins.py, slow.)"""
    overrides = ["rounds=1", "participants=4", "training.finetune_steps=2", "export=[1, 2]"]
    scenario = tiny(*overrides)
    summary = launch.run(dict(TINY), overrides=overrides, out=tmp_path / "run", executor="local", cache=cache,
                         progress=launch.Progress(io.StringIO()))
    summary["methods"]["fedgrow"]["per_participant_accuracy"] = {
        int(k): v for k, v in summary["methods"]["fedgrow"]["per_participant_accuracy"].items()}
    export = tmp_path / "run" / "export"
    assert sorted(p.name for p in export.iterdir()) == ["global_ligo.safetensors", "participant_1",
                                                          "participant_2"]

    prepared = PreparedData.open(prepare_scenario_data(scenario, cache))
    raw_test = column(load_source(check_data_spec(scenario["data"]), scenario["seed"]).test, "text")
    target = Shape(**scenario["model"]["target"])
    per_participant = summary["methods"]["fedgrow"]["per_participant_accuracy"]
    for pid in (1, 2):
        model = AutoModelForSequenceClassification.from_pretrained(export / f"participant_{pid}").eval()
        tokenizer = AutoTokenizer.from_pretrained(export / f"participant_{pid}")
        assert (model.config.hidden_size, model.config.num_hidden_layers) == (target.width, target.layers)
        rows = prepared.participant(pid).test.indices
        batch = tokenizer([raw_test[i] for i in rows], padding="max_length", truncation=True,
                          return_tensors="pt")
        assert torch.equal(batch["input_ids"], torch.from_numpy(prepared.test.inputs[rows].astype(np.int64)))
        with torch.no_grad():
            predictions = model(**batch).logits.argmax(-1).numpy()
        assert float((predictions == prepared.test.labels[rows]).mean()) == per_participant[pid]

    tensors, intermediate, grown_to = load_global_ligo(export / "global_ligo.safetensors")
    assert state_sha256(tensors) == summary["global_ligo_sha256"]
    assert (intermediate, grown_to) == (Shape(**scenario["model"]["intermediate"]), target)


def test_the_export_key_defaults_by_participants_and_checks_its_ids():
    """Guards against the default exporting thousands of models, or an export naming a
    participant the scenario does not have (or a run without fedgrow) being accepted."""
    assert tiny()["export"] == "all"                      # 6 participants
    assert tiny("participants=17")["export"] == "none"
    assert tiny("methods=[local_small]")["export"] == "none"
    assert tiny("participants=40", "export=all")["export"] == "all"
    with pytest.raises(ScenarioError, match=r"export\[1\]': 6 does not exist"):
        tiny("export=[0, 6]")
    with pytest.raises(ScenarioError, match="'export'.*no fedgrow"):
        tiny("methods=[local_small]", "export=all")
    with pytest.raises(ScenarioError, match="'export'"):
        tiny("export=some")


def test_an_exported_image_model_and_its_image_processor_reproduce_the_final_accuracy(cache, tmp_path):
    """Guards against an image export whose processor config (size, rescale, normalisation) does
    not turn raw images into the pixels the model was trained and scored on."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from fedgrow_ray.data.encode import normalise_pixels

    overrides = ["rounds=1", "participants=3", "model.family=image", "model.image_size=16", "model.patch_size=4",
                 "data={source: synthetic_image, train_size: 300, test_size: 120, test_per_participant: 20, "
                 "partition: {scheme: iid}}"]
    scenario = tiny(*overrides)
    summary = launch.run(dict(TINY), overrides=overrides, out=tmp_path / "run", executor="local", cache=cache,
                         progress=launch.Progress(io.StringIO()))
    prepared = PreparedData.open(prepare_scenario_data(scenario, cache))
    raw_test = load_source(check_data_spec(scenario["data"]), scenario["seed"]).test
    for pid in range(3):
        folder = tmp_path / "run" / "export" / f"participant_{pid}"
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        processor = AutoImageProcessor.from_pretrained(folder)
        rows = prepared.participant(pid).test.indices
        images = [Image.fromarray(np.asarray(raw_test[int(i)]["image"], dtype=np.uint8).squeeze()).convert("RGB")
                  for i in rows]
        batch = processor(images, return_tensors="pt")
        assert torch.equal(batch["pixel_values"], normalise_pixels(prepared.test.inputs[rows]))
        with torch.no_grad():
            predictions = model(**batch).logits.argmax(-1).numpy()
        assert float((predictions == prepared.test.labels[rows]).mean()) == \
            summary["methods"]["fedgrow"]["per_participant_accuracy"][str(pid)]
