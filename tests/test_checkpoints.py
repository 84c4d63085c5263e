"""Real pre-trained small models: each participant's Hugging Face checkpoint loaded with its own
config and tokenizer (data.tokenizer: from_checkpoint), checkpoints of different depth and width
grown to one target, texts encoded with the checkpoints' WordPiece tokenizer."""

import io

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, BertTokenizerFast)

import launch
from conftest import TINY, tiny
from fedgrow_ray.data import PreparedData, check_data_spec
from fedgrow_ray.data.sources import column, load_source
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.participant import ParticipantHost

SHAPES = [(16, 1, 2, 32), (24, 2, 2, 48), (16, 2, 2, 32)]  # width, layers, heads, ffn


def wordpiece(texts, vocab_size):
    """A BERT-style WordPiece tokenizer trained on `texts`, as a transformers tokenizer."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", backend.token_to_id("[CLS]")),
                                                 ("[SEP]", backend.token_to_id("[SEP]"))])
    return BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three small BERTs of different shapes, each saved with the same WordPiece tokenizer."""
    root = tmp_path_factory.mktemp("checkpoints")
    texts = column(load_source(check_data_spec(TINY["data"]), TINY["seed"]).train, "text")
    tokenizer = wordpiece(texts, 200)
    for pid, (width, layers, heads, ffn) in enumerate(SHAPES):
        torch.manual_seed(pid)
        model = BertForSequenceClassification(BertConfig(
            # a position table longer than the 16 tokens texts are encoded to (as BERT miniatures' 512)
            vocab_size=len(tokenizer), max_position_embeddings=32, hidden_size=width,
            num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn, num_labels=4))
        model.save_pretrained(root / f"participant_{pid}")
        tokenizer.save_pretrained(root / f"participant_{pid}")
    return root, tokenizer, texts


def scenario_of(root):
    return tiny("participants=3", "rounds=1", "data.tokenizer=from_checkpoint",
                f"model.checkpoints={root}/participant_{{id}}")


def test_checkpoints_of_different_shapes_with_their_own_tokenizer_grow_to_one_target(checkpoints, cache, tmp_path):
    """Guards against checkpoints being rebuilt or re-initialised instead of loaded, texts encoded
    with the project's word-level tokenizer instead of the checkpoints' WordPiece one, or a grown
    model that does not leave with that tokenizer."""
    root, tokenizer, texts = checkpoints
    scenario = scenario_of(root)
    data = prepare_scenario_data(scenario, cache)
    prepared = PreparedData.open(data)
    assert prepared.vocab_size == len(tokenizer)
    expected = tokenizer(texts[:20], padding="max_length", truncation=True, max_length=16)["input_ids"]
    assert np.array_equal(prepared.train.inputs[:20], np.asarray(expected))

    host = ParticipantHost(scenario, str(data))
    for pid, (width, layers, heads, ffn) in enumerate(SHAPES):
        assert tuple(Experiment(scenario, data).small_shape(pid)[0].as_dict().values()) == (width, layers, heads, ffn)
        saved = AutoModelForSequenceClassification.from_pretrained(root / f"participant_{pid}").state_dict()
        loaded = host.participant(pid).small_model.state_dict()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    out = tmp_path / "run"
    summary = launch.run(scenario, out=out, executor="local", cache=cache, progress=launch.Progress(io.StringIO()))
    exported = out / "export" / "participant_1"
    grown = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    assert (grown.config.hidden_size, grown.config.num_hidden_layers, grown.config.max_position_embeddings) == (32, 3, 32)
    assert AutoTokenizer.from_pretrained(exported).get_vocab() == tokenizer.get_vocab()
    rows = prepared.participant(1).test.indices
    test_texts = column(load_source(check_data_spec(scenario["data"]), scenario["seed"]).test, "text")
    batch = AutoTokenizer.from_pretrained(exported)([test_texts[i] for i in rows], padding="max_length",
                                                    truncation=True, return_tensors="pt")
    with torch.no_grad():
        predictions = grown(**batch).logits.argmax(-1).numpy()
    assert float((predictions == prepared.test.labels[rows]).mean()) == \
        summary["methods"]["fedgrow"]["per_participant_accuracy"]["1"]


def test_checkpoints_with_different_tokenizers_are_bad_input(checkpoints, tmp_path):
    """Guards against participants whose checkpoints hold different tokenizers being encoded
    with one of them (their token ids would mean other words)."""
    root, _, texts = checkpoints
    mixed = tmp_path / "mixed"
    for pid in range(3):
        source = root / f"participant_{pid}"
        (mixed / f"participant_{pid}").mkdir(parents=True)
        for f in source.iterdir():
            (mixed / f"participant_{pid}" / f.name).write_bytes(f.read_bytes())
    wordpiece(texts, 120).save_pretrained(mixed / "participant_2")
    with pytest.raises(ValueError, match=r"'data.tokenizer': from_checkpoint: participant 2's checkpoint .* "
                                         r"holds another tokenizer"):
        prepare_scenario_data(scenario_of(mixed), str(tmp_path / "cache"))
