"""Heads against transformers' BertForSequenceClassification / BertForTokenClassification.

Tolerances: fp32, dropout off; logits and losses atol 1e-5; parameters after one AdamW step 1e-5.
"""

import json
import shutil
import tempfile

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_heads import TINY, hf_to_minift, random_batch, randomize_

from minift.core.freeze import freeze
from minift.core.model import BertModel
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import FastBertModel, speed_up
from minift.hf import checkpoint
from minift.hf.checkpoint import split_hf_state_dict
from minift.hf.safetensors import CheckpointError
from minift.tasks.classify import (
    POOLINGS,
    ClassificationDataset,
    FeatureRows,
    SequenceClassifier,
    encode_features,
)
from minift.tasks.mlm import MaskedLM
from minift.tasks.tag import TokenClassifier

PAIRS = [
    (SequenceClassifier, transformers.BertForSequenceClassification),
    (TokenClassifier, transformers.BertForTokenClassification),
]


@settings(deadline=None, max_examples=15)
@given(pair=st.sampled_from(PAIRS), num_labels=st.integers(2, 5), seed=st.integers(0, 2**31),
       batch=st.integers(1, 4), seq=st.integers(2, 10))
def test_logits_and_loss_match_transformers_both_ways(pair, num_labels, seed, batch, seq):
    ours_cls, hf_cls = pair
    # every weight random, the head's bias and the norms too (transformers starts them at 0 and 1,
    # where a bias that is never loaded, or a swapped pair, would not show)
    hf = randomize_(hf_cls(transformers.BertConfig(**TINY, num_labels=num_labels)), seed)
    data = random_batch(torch.Generator().manual_seed(seed), batch, seq, num_labels,
                        ours_cls is TokenClassifier)
    ref = hf(**data)

    ours = hf_to_minift(hf, ours_cls)  # transformers -> minift
    out = ours(**data)
    real = data["attention_mask"].bool() if ours_cls is TokenClassifier else slice(None)
    torch.testing.assert_close(out.logits[real], ref.logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=0)

    with tempfile.TemporaryDirectory() as tmp:  # minift -> transformers
        ours.save_pretrained(tmp)
        back = hf_cls.from_pretrained(tmp).eval()
    torch.testing.assert_close(back(**data).logits[real], ours(**data).logits[real], atol=1e-6,
                               rtol=0)
    assert back.config.id2label == ours.id2label


@pytest.mark.parametrize("ours_cls, hf_cls", PAIRS)
def test_one_adamw_step_matches_transformers(ours_cls, hf_cls):
    """Same weights, same batch, dropout off: same loss and same parameters after one step."""
    torch.manual_seed(0)
    hf = hf_cls(transformers.BertConfig(**TINY, num_labels=3)).eval()
    ours = hf_to_minift(hf, ours_cls)
    data = random_batch(torch.Generator().manual_seed(1), 4, 9, 3, ours_cls is TokenClassifier)
    opt_ref = torch.optim.AdamW(hf.parameters(), lr=1e-3, weight_decay=0.01)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        loss_ref, loss_ours = hf(**data).loss, ours(**data).loss
        torch.testing.assert_close(loss_ours, loss_ref, atol=1e-5, rtol=0)
        for loss, opt in ((loss_ref, opt_ref), (loss_ours, opt_ours)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    ref_params = {name: p for name, p in hf.named_parameters()}
    encoder, heads, unknown = split_hf_state_dict(ref_params)
    assert not unknown
    for name, p in ours.bert.named_parameters():
        torch.testing.assert_close(p, encoder[name], atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(ours.classifier.weight, heads["classifier.weight"], atol=1e-5,
                               rtol=0)


def test_published_encoder_gets_fresh_head(minilm_dir):
    model = SequenceClassifier.from_pretrained(minilm_dir, num_labels=2)
    assert model.classifier.weight.shape == (2, 384)
    assert model.classifier.bias.abs().sum() == 0
    # N(0, 0.02), the config's initializer_range: 768 draws, so the sample std has a standard
    # error of 0.02 / sqrt(2 * 768) = 5.1e-4 and the mean 0.02 / sqrt(768) = 7.2e-4; the bounds
    # are 6 standard errors (a correct draw misses them about once in 1e8 runs)
    weight = model.classifier.weight
    assert abs(weight.std().item() - 0.02) < 3.1e-3 and abs(weight.mean().item()) < 4.3e-3


def test_head_with_wrong_label_count_is_refused(tmp_path):
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(
        transformers.BertConfig(**TINY, num_labels=3)).save_pretrained(tmp_path)
    assert SequenceClassifier.from_pretrained(tmp_path).num_labels == 3  # read from id2label
    with pytest.raises(CheckpointError, match="classifier.weight"):
        SequenceClassifier.from_pretrained(tmp_path, num_labels=5)


def test_sequence_classifier_loads_a_checkpoint_without_pooler(tmp_path):
    """An MLM checkpoint (e.g. `minift pretrain` output) has no pooler: it is initialised."""
    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(transformers.BertConfig(**TINY))
    mlm.save_pretrained(tmp_path)
    model = SequenceClassifier.from_pretrained(tmp_path, num_labels=2)
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight,
                               mlm.bert.embeddings.word_embeddings.weight)
    assert model.bert.pooler is not None
    assert model.bert.pooler.dense.bias.abs().sum() == 0  # BERT's initialisation


@pytest.mark.parametrize("cls,hf_cls", PAIRS)
def test_classifier_dropout_round_trips_through_transformers(tmp_path, cls, hf_cls):
    """transformers' `classifier_dropout` is read back, and written where minift set it."""
    hf_cls(transformers.BertConfig(**TINY, classifier_dropout=0.37)).save_pretrained(tmp_path / "a")
    ours = cls.from_pretrained(tmp_path / "a")
    assert ours.dropout.p == 0.37 and ours.classifier_dropout == 0.37
    ours.save_pretrained(tmp_path / "b")
    assert hf_cls.from_pretrained(tmp_path / "b").config.classifier_dropout == 0.37
    # Unset, the head's dropout follows the encoder's hidden_dropout_prob, in both libraries.
    hf_cls(transformers.BertConfig(**TINY, hidden_dropout_prob=0.2)).save_pretrained(tmp_path / "c")
    assert cls.from_pretrained(tmp_path / "c").dropout.p == 0.2


@pytest.mark.parametrize("cls", [SequenceClassifier, TokenClassifier, MaskedLM])
def test_from_pretrained_builds_the_encoder_once_and_reads_the_config_once(tmp_path,
                                                                          monkeypatch, cls):
    """One load, one encoder: config.json read once, the BertModel built once; and the model
    comes back as the textbook class; ``speed_up`` makes it fast, with the same weights."""
    torch.manual_seed(0)
    transformers.BertForMaskedLM(transformers.BertConfig(**TINY)).save_pretrained(tmp_path)
    reads, builds = [], []
    read_config_json, init = checkpoint.read_config_json, BertModel.__init__
    monkeypatch.setattr(checkpoint, "read_config_json",
                        lambda *a: reads.append(1) or read_config_json(*a))
    monkeypatch.setattr(BertModel, "__init__",
                        lambda self, *a, **k: builds.append(1) or init(self, *a, **k))
    torch.manual_seed(1)  # the same fresh head (and pooler) in both loads
    textbook = cls.from_pretrained(tmp_path)
    assert (len(reads), len(builds)) == (1, 1)
    assert type(textbook.bert) is BertModel
    torch.manual_seed(1)
    fast = speed_up(cls.from_pretrained(tmp_path))
    assert type(fast.bert) is FastBertModel and type(textbook.bert) is BertModel
    assert fast.state_dict().keys() == textbook.state_dict().keys()
    ids = torch.randint(1, TINY["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        got, want = fast.eval()(ids, mask).logits, textbook.eval()(ids, mask).logits
    real = mask.bool() if got.dim() == 3 else torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Question answering, next-sentence prediction, BERT's joint pretraining
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# from_config: the architecture without the pretrained weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ours_cls, hf_cls", PAIRS)
def test_from_config_is_random_and_round_trips_through_transformers(tmp_path, ours_cls, hf_cls):
    """from_config reads config.json only and draws every weight with BERT's initialisation
    (the distribution itself is test_model.py's init test); a random model saved by minift
    loads in transformers with exactly its keys, and its logits."""
    torch.manual_seed(0)
    hf_cls(transformers.BertConfig(**TINY, num_labels=3)).save_pretrained(tmp_path / "trained")
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text(
        (tmp_path / "trained" / "config.json").read_text())
    torch.manual_seed(7)
    ours = ours_cls.from_config(tmp_path / "config_only", num_labels=3).eval()
    torch.manual_seed(7)
    same_seed = ours_cls.from_config(tmp_path / "trained", num_labels=3)
    pretrained = ours_cls.from_pretrained(tmp_path / "trained", num_labels=3)
    for (name, p), q, r in zip(ours.named_parameters(), same_seed.parameters(),
                               pretrained.parameters(), strict=True):
        assert torch.equal(p, q), name
        if "norm" not in name and "bias" not in name:  # LayerNorms and biases start equal
            assert not torch.equal(p, r), name
    assert ours.classifier.bias.abs().sum() == 0

    ours.save_pretrained(tmp_path / "saved")
    hf, info = hf_cls.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf_keys = set(hf.state_dict())
    written = set(checkpoint.read_state_dict(tmp_path / "saved")[0])
    assert written == hf_keys
    gen = torch.Generator().manual_seed(0)
    batch = random_batch(gen, 3, 7, 3, token_level=ours_cls is TokenClassifier)
    real = batch["attention_mask"].bool() if ours_cls is TokenClassifier else slice(None)
    with torch.no_grad():  # padded positions of a token classifier are not compared
        torch.testing.assert_close(ours(**batch).logits[real], hf.eval()(**batch).logits[real],
                                   atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Pooling: what the linear layer reads (pooler, cls, mean)
# --------------------------------------------------------------------------------------------


def st_folder(path, mode: str):
    """A sentence-transformers folder layout around a tiny HF encoder: modules.json naming a
    Pooling module whose config sentence-transformers itself writes for ``mode``."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(path)
    (path / "1_Pooling").mkdir()
    Pooling(TINY["hidden_size"], pooling_mode=mode).save(str(path / "1_Pooling"))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    (path / "modules.json").write_text(json.dumps(modules))
    return path


def test_pooling_choices_are_the_options():
    from minift.run.options import POOLINGS as OPTION_CHOICES

    assert OPTION_CHOICES == POOLINGS


@settings(deadline=None, max_examples=15)
@given(mode=st.sampled_from(["cls", "mean"]), seed=st.integers(0, 2**31), batch=st.integers(1, 4),
       seq=st.integers(2, 10))
def test_cls_and_mean_features_equal_sentence_transformers_pooling(mode, seed, batch, seq):
    """``features`` of a ``cls`` / ``mean`` classifier equal sentence-transformers' Pooling of
    transformers' last hidden states (same weights, padding in the batch). fp32, atol 1e-5."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    torch.manual_seed(seed)
    hf = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    data = random_batch(torch.Generator().manual_seed(seed), batch, seq, 2, False)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = SequenceClassifier.from_pretrained(tmp, num_labels=2, pooling=mode).eval()
    assert ours.pooling == mode and ours.bert.pooler is None  # no pooler without its use
    inputs = {k: v for k, v in data.items() if k != "labels"}
    with torch.no_grad():
        hidden = hf(**inputs).last_hidden_state
        want = Pooling(TINY["hidden_size"], pooling_mode=mode)(
            {"token_embeddings": hidden, "attention_mask": inputs["attention_mask"]})
        got = ours.features(inputs["input_ids"], inputs["attention_mask"],
                            inputs["token_type_ids"])
    torch.testing.assert_close(got, want["sentence_embedding"], atol=1e-5, rtol=0)


def test_default_pooling_is_the_checkpoints_own(tmp_path, minilm_dir):
    """all-MiniLM-L6-v2's folder states mean pooling (its 1_Pooling/config.json): that is the
    default; a plain HF folder has none: BERT's pooler; a given pooling wins over both."""
    assert SequenceClassifier.from_pretrained(minilm_dir, num_labels=2).pooling == "mean"
    assert SequenceClassifier.from_config(minilm_dir, num_labels=2).pooling == "mean"
    assert SequenceClassifier.from_pretrained(minilm_dir, num_labels=2,
                                              pooling="pooler").bert.pooler is not None
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(tmp_path / "hf")
    assert SequenceClassifier.from_pretrained(tmp_path / "hf", num_labels=2).pooling == "pooler"
    folder = st_folder(tmp_path / "st", "cls")
    assert SequenceClassifier.from_pretrained(folder, num_labels=2).pooling == "cls"
    with pytest.raises(ValueError, match="pooling must be one of cls, mean, pooler"):
        SequenceClassifier.from_pretrained(folder, num_labels=2, pooling="max")


@pytest.mark.parametrize("mode", ["cls", "mean"])
def test_cls_and_mean_round_trip_in_minift_and_what_transformers_does(tmp_path, mode):
    """A ``cls`` / ``mean`` classifier records its pooling in config.json and reloads in minift
    with the same logits (atol 1e-6), even from a folder whose sentence-transformers files say
    otherwise. transformers keeps the key as an unknown attribute, finds no pooler weights
    (missing keys: it draws a fresh pooler) and classifies the pooler output: other logits."""
    folder = st_folder(tmp_path / "st", "mean" if mode == "cls" else "cls")
    torch.manual_seed(1)
    ours = SequenceClassifier.from_pretrained(folder, num_labels=3, pooling=mode).eval()
    ours.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["pooling"] == mode
    shutil.copy(folder / "modules.json", tmp_path / "saved")  # ST files stating another mode:
    shutil.copytree(folder / "1_Pooling", tmp_path / "saved" / "1_Pooling")  # the record wins
    data = random_batch(torch.Generator().manual_seed(2), 3, 8, 3, False)
    data.pop("labels")
    back = SequenceClassifier.from_pretrained(tmp_path / "saved").eval()
    assert back.pooling == mode
    with torch.no_grad():
        torch.testing.assert_close(back(**data).logits, ours(**data).logits, atol=1e-6, rtol=0)
    hf, info = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path / "saved", output_loading_info=True)
    assert hf.config.pooling == mode
    assert sorted(info["missing_keys"]) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    with torch.no_grad():
        assert not torch.allclose(hf.eval()(**data).logits, ours(**data).logits, atol=1e-3)


def test_a_frozen_encoder_stays_in_eval_mode(minilm_dir):
    """``train()`` on a classifier whose encoder is frozen leaves the encoder in eval mode
    (dropout off: fixed features) and the head in training mode; a trained encoder follows."""
    model = SequenceClassifier.from_pretrained(minilm_dir, num_labels=2)
    freeze(model, "head")
    model.train()
    assert model.training and model.dropout.training and not model.bert.training
    assert not any(m.training for m in model.bert.modules())
    freeze(model, "last-1")
    model.train()
    assert model.bert.training
    model.eval()
    assert not model.bert.training


@settings(deadline=None, max_examples=10)
@given(mode=st.sampled_from(POOLINGS), batch_size=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_encode_features_gives_each_example_its_features_in_order(tiny, mode, batch_size, seed):
    """``encode_features`` returns row i = ``features`` of example i alone (length-grouped
    batches put back in order; padding changes nothing beyond fp32 rounding, atol 1e-5), and
    ``FeatureRows`` hands out the same examples per batch as the dataset, with their labels."""
    tokenizer = Tokenizer.from_pretrained(tiny)
    texts = ["a", "the cat sat on the mat", "hello there", "one two three four five six", "ok",
             "a longer sentence with more words in it", "b c"]
    labels = [i % 2 for i in range(len(texts))]
    data = ClassificationDataset(texts, tokenizer, max_length=16, label_ids=labels)
    torch.manual_seed(0)
    model = SequenceClassifier.from_pretrained(tiny, num_labels=2, pooling=mode).train()
    features = encode_features(model, data, batch_size=batch_size, device="cpu")
    assert model.training  # left as found
    model.eval()
    with torch.no_grad():
        for i in range(len(texts)):
            one = data.batch([i])
            alone = model.features(one["input_ids"], one["attention_mask"], one["token_type_ids"])
            torch.testing.assert_close(features[i], alone[0], atol=1e-5, rtol=0)
    rows = FeatureRows(data, features)
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    for ours, tokens in zip(rows.batches(3, generator=gen()), data.batches(3, generator=gen()),
                            strict=True):
        assert torch.equal(ours["labels"], tokens["labels"])
        with torch.no_grad():  # the head on the features = the model on the tokens
            torch.testing.assert_close(model(**ours).logits, model(**tokens).logits, atol=1e-5,
                                       rtol=0)
