"""What a run leaves for use outside this project: the run folder's export/.

    export/participant_<id>/     that participant's grown fedgrow model (after its end-of-run
                                 step) as a Hugging Face folder: config.json (with the class
                                 names), model.safetensors, and the tokenizer (text) or the
                                 image processor config (image) that turns raw inputs into what
                                 the model was trained on
    export/global_ligo.safetensors   the shared Global-LiGO, with the shapes it maps between and
                                 the family in its metadata

Plain transformers code loads a participant's folder:

    model = AutoModelForSequenceClassification.from_pretrained("RUN/export/participant_3")
    tokenizer = AutoTokenizer.from_pretrained("RUN/export/participant_3")
    batch = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")

A participant's model is written by the host that keeps it (it is private; it never travels to
the driver), to the run folder's path on that host's node; Global-LiGO by the driver. Every
folder and file is written under a temporary name and renamed, so an export is whole or absent.
Which participants: the scenario's `export` key (config.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .models import Shape

EXPORT_DIR = "export"
GLOBAL_FILE = "global_ligo.safetensors"


def exported(scenario: dict) -> set[int]:
    """The participants whose grown models a run exports (the resolved `export` key)."""
    choice = scenario["export"]
    if choice == "all":
        return set(range(scenario["participants"]))
    if choice == "none" or choice is None:
        return set()
    return set(choice)


def participant_folder(export_dir: str | Path, pid: int) -> Path:
    return Path(export_dir) / f"participant_{pid}"


def _preprocessor(experiment, pid: int):
    """The tokenizer (text) or image processor (image) that makes participant `pid`'s inputs."""
    family = experiment.family
    data = experiment.data_of(pid)
    if family.name == "text" and (data.folder / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        # data.tokenizer: from_checkpoint: its checkpoint's own tokenizer, as the data used it.
        tokenizer = AutoTokenizer.from_pretrained(str(data.folder / "tokenizer"))
        tokenizer.model_max_length = experiment.scenario["model"]["max_positions"]
        return tokenizer
    if family.name == "text":
        from transformers import PreTrainedTokenizerFast

        # The word-level tokenizer the data was encoded with (fedgrow_ray.data.encode), with its
        # [CLS] ... [SEP] template; [PAD] is id 0, so attention masks agree with training's.
        return PreTrainedTokenizerFast(
            tokenizer_file=str(Path(experiment.data.path) / "tokenizer.json"),
            model_max_length=family.max_positions, pad_token="[PAD]", unk_token="[UNK]",
            cls_token="[CLS]", sep_token="[SEP]", model_input_names=["input_ids", "attention_mask"])
    from transformers import ViTImageProcessor

    # fedgrow_ray.data.encode: bilinear resize to image_size, then (x / 255 - 0.5) / 0.5.
    return ViTImageProcessor(do_resize=True, size={"height": family.image_size, "width": family.image_size},
                             resample=2, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                             image_mean=[0.5] * family.channels, image_std=[0.5] * family.channels)


def export_participant(model: torch.nn.Module, export_dir: str | Path, pid: int, experiment) -> Path:
    """Write participant `pid`'s final model as a Hugging Face folder (see the module notes);
    replaces an earlier export of it (a resumed run redoing its end)."""
    final = participant_folder(export_dir, pid)
    final.parent.mkdir(parents=True, exist_ok=True)
    names = experiment.data.class_names
    model.config.id2label = {i: str(name) for i, name in enumerate(names)}
    model.config.label2id = {str(name): i for i, name in enumerate(names)}
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        from transformers.utils import logging as hf_logging
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one shard per model: a bar per participant is noise
        try:
            model.save_pretrained(scratch, safe_serialization=True)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        _preprocessor(experiment, pid).save_pretrained(scratch)
        if final.exists():
            shutil.rmtree(final)
        os.rename(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def export_global_ligo(shared: dict[str, torch.Tensor], export_dir: str | Path, experiment) -> Path:
    """Write the shared Global-LiGO (tensors named as DualLiGO.global_state names them) with
    the shapes it maps between."""
    path = Path(export_dir) / GLOBAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"family": experiment.family.name,
                "intermediate": json.dumps(experiment.intermediate.as_dict()),
                "target": json.dumps(experiment.target.as_dict()),
                "ligo": json.dumps(experiment.ligo_options)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in shared.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_global_ligo(path: str | Path) -> tuple[dict[str, torch.Tensor], Shape, Shape]:
    """(the Global-LiGO tensors, for DualLiGO.load_global_state; the intermediate shape; the
    target shape) from an exported global_ligo.safetensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    return (load_file(str(path)), Shape(**json.loads(metadata["intermediate"])),
            Shape(**json.loads(metadata["target"])))
