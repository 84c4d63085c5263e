"""Real pre-trained small models: each participant's Hugging Face checkpoint loaded with its own
config and tokenizer (data.tokenizer: from_checkpoint), checkpoints of different depth and width
grown to one target, texts encoded with the checkpoints' WordPiece tokenizer."""

import io
import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, BertTokenizerFast,
                          PreTrainedTokenizerFast)

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


def bpe(texts, vocab_size):
    """A byte-level BPE tokenizer trained on `texts` (GPT-2 style; padding id 1, not 0)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="module")
def mixed(checkpoints, tmp_path_factory):
    """Participants 0 and 1 as above (WordPiece, 200 entries); participant 2 a BERT of its own
    shape whose checkpoint holds a byte-level BPE tokenizer with another vocabulary."""
    root, wordpieces, texts = checkpoints
    mixed = tmp_path_factory.mktemp("mixed")
    for pid in range(2):
        (mixed / f"participant_{pid}").symlink_to(root / f"participant_{pid}")
    tokenizer = bpe(texts, 400)
    torch.manual_seed(2)
    width, layers, heads, ffn = SHAPES[2]
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=32, hidden_size=width, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, num_labels=4, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(mixed / "participant_2")
    tokenizer.save_pretrained(mixed / "participant_2")
    return mixed, wordpieces, tokenizer


def test_participants_with_different_tokenizers_each_use_their_own(mixed, cache, tmp_path):
    """Guards against a participant's texts being encoded with another participant's tokenizer
    (token ids meaning other words), its model given another vocabulary, or its exported model
    leaving with the wrong tokenizer, when the checkpoints' tokenizers differ (WordPiece and BPE)."""
    root, wordpieces, bpes = mixed
    scenario = tiny("participants=3", "rounds=2", "data.tokenizer=from_checkpoint",
                    f"model.checkpoints={root}/participant_{{id}}", "export=all",
                    "methods=[fedgrow, independent_growth, local_small]")
    data = prepare_scenario_data(scenario, cache)
    exp = Experiment(scenario, data)
    assert [exp.encoding_of(p) for p in range(3)] == [0, 0, 1]
    assert [exp.family_of(p).vocab_size for p in range(3)] == [len(wordpieces)] * 2 + [len(bpes)]
    assert len(wordpieces) != len(bpes)
    train_texts = column(load_source(check_data_spec(scenario["data"]), scenario["seed"]).train, "text")
    for pid, tokenizer in ((0, wordpieces), (2, bpes)):
        shard = exp.participant_data(pid).train
        expected = tokenizer([train_texts[i] for i in shard.indices[:10]], padding="max_length",
                             truncation=True, max_length=16)
        batch = shard.batch(np.arange(10))
        assert np.array_equal(batch["input_ids"].numpy(), np.asarray(expected["input_ids"]))
        assert np.array_equal(batch["attention_mask"].numpy(), np.asarray(expected["attention_mask"]))
    # the same rows for every encoding: one partition
    assert np.array_equal(exp.participant_data(2).train.indices, PreparedData.open(data).participant(2).train.indices)
    # a participant's costs count its own vocabulary's embedding table
    assert exp.params(exp.target, 2) - exp.params(exp.target, 0) == \
        (len(bpes) - len(wordpieces)) * exp.target.width

    host = ParticipantHost(scenario, str(data))
    saved = AutoModelForSequenceClassification.from_pretrained(root / "participant_2").state_dict()
    loaded = host.participant(2).small_model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    out = tmp_path / "run"
    summary = launch.run(scenario, out=out, executor="local", cache=cache, progress=launch.Progress(io.StringIO()))
    test_texts = column(load_source(check_data_spec(scenario["data"]), scenario["seed"]).test, "text")
    for pid, tokenizer in ((0, wordpieces), (2, bpes)):
        exported = out / "export" / f"participant_{pid}"
        grown = AutoModelForSequenceClassification.from_pretrained(exported).eval()
        assert grown.config.vocab_size == len(tokenizer) and grown.config.hidden_size == 32
        loaded_tokenizer = AutoTokenizer.from_pretrained(exported)
        assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
        rows = exp.participant_data(pid).test.indices
        batch = loaded_tokenizer([test_texts[i] for i in rows], padding="max_length", truncation=True,
                                 max_length=16, return_tensors="pt")
        with torch.no_grad():
            predictions = grown(**batch).logits.argmax(-1).numpy()
        assert float((predictions == exp.participant_data(pid).test.labels).mean()) == \
            summary["methods"]["fedgrow"]["per_participant_accuracy"][str(pid)]
    # one Global-LiGO for all three: every round aggregated the three uploads, WordPiece and BPE
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["aggregated"] for r in rows if r["method"] == "fedgrow" and r["round"] >= 1] == [3, 3]


@pytest.mark.parametrize("override, named", [("methods=[fedgrow, fedavg_scratch]", "'fedavg_scratch'"),
                                             ("methods=[centralized]", "'centralized'"),
                                             ("protocol=reference-code", "'fedgrow' with protocol 'reference-code'")])
def test_whole_model_methods_with_different_tokenizers_are_bad_input(mixed, cache, tmp_path, override, named):
    """Guards against averaging or pooling whole models (embedding tables) across participants
    whose token ids mean different words."""
    root = mixed[0]
    scenario = tiny("participants=3", "rounds=1", "data.tokenizer=from_checkpoint",
                    f"model.checkpoints={root}/participant_{{id}}", override)
    out = tmp_path / "run"
    with pytest.raises(launch.LaunchError, match=rf"^error: scenario key 'methods': {named} shares or pools whole models, "
                                         rf"which needs one vocabulary, but the participants' checkpoints "
                                         rf"hold 2 different tokenizers"):
        launch.run(scenario, out=out, executor="local", cache=cache, progress=launch.Progress(io.StringIO()))
    assert not out.exists()
