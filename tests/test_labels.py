"""minift.core.labels: tag schemes and entities against seqeval, the label vocabulary, and the
errors for bad tags. (The sub-word aligner and windows are tested in test_align.py.)"""

import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Tokens
from tag_strategies import TYPES, iob2_tags
from transformers import BertConfig

from minift.core.labels import LabelVocab, TagError, entities, iob1_to_iob2, validate_tags
from minift.data.readers import DataError, Example, encode_labels
from minift.data.tokenizer import Tokenizer

ANY_TAGS = st.lists(st.sampled_from(["O"] + [f"{p}-{t}" for t in TYPES[:3] for p in "BI"]))


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


def seqeval_entities(tags: list[str], mode: str) -> list[tuple[str, int, int]]:
    """seqeval's reading of one sentence, `end` made exclusive."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "default":
            return [(t, start, end + 1) for t, start, end in get_entities(list(tags))]
        return [(e.tag, e.start, e.end) for e in Tokens(list(tags), IOB2).entities]


# ---------------------------------------------------------------------------------------------
# Tag schemes and entities
# ---------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(ANY_TAGS, st.sampled_from(["default", "strict"]))
def test_entities_equal_seqeval(tags, mode):
    assert entities(tags, mode=mode) == seqeval_entities(tags, mode)


@settings(deadline=None, max_examples=300)
@given(ANY_TAGS)
def test_iob1_to_iob2_keeps_the_entities_and_is_strict_iob2(tags):
    """Any tag sequence (IOB1 or not) converts to valid strict IOB2 with the entities seqeval's
    default mode reads in it; strict and lenient readings then agree; IOB2 is a fixed point."""
    converted = iob1_to_iob2(tags)
    validate_tags(converted, scheme="iob2")
    assert seqeval_entities(converted, "default") == seqeval_entities(tags, "default")
    assert seqeval_entities(converted, "strict") == seqeval_entities(tags, "default")
    assert iob1_to_iob2(converted) == converted


@settings(deadline=None, max_examples=150)
@given(st.data())
def test_a_bad_i_tag_is_reported_at_its_position(data):
    """Put an I-X that opens an entity at a random place of a valid IOB2 sequence: the error
    names that position, with the file:line given for it."""
    n = data.draw(st.integers(1, 15))
    tags = data.draw(iob2_tags(n))
    validate_tags(tags)
    i = data.draw(st.integers(0, n - 1))
    before = tags[i - 1][2:] if i > 0 and tags[i - 1] != "O" else None
    tags[i] = "I-" + data.draw(st.sampled_from([t for t in TYPES if t != before]))
    lines = [f"train.txt:{100 + k}" for k in range(n)]
    with pytest.raises(TagError, match=rf"^tag {i}: '{tags[i]}' after .* starts an entity"):
        validate_tags(tags)
    with pytest.raises(TagError, match=rf"^train.txt:{100 + i}: '{tags[i]}'"):
        validate_tags(tags, where=lines)
    with pytest.raises(TagError, match=rf"^sentence 7: tag {i}: "):
        validate_tags(tags, where="sentence 7")
    validate_tags(tags, scheme="iob1")  # IOB1 allows it
    validate_tags(iob1_to_iob2(tags))


@pytest.mark.parametrize("bad", ["B-", "X-PER", "b-per", "", "B-NEW YORK", "I--PER", None, 3])
def test_malformed_tags_are_named(bad):
    tags = ["O", "B-PER", bad]
    for call in (validate_tags, iob1_to_iob2, entities):
        with pytest.raises(TagError, match=r"^f.txt:3: expected 'O', 'B-<type>' or 'I-<type>'"):
            call(tags, where=["f.txt:1", "f.txt:2", "f.txt:3"])


def test_validate_tags_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match="scheme must be one of"):
        validate_tags(["O"], scheme="bioes")
    with pytest.raises(ValueError, match="where has 1 entries for 2 tags"):
        validate_tags(["O", "I-PER"], where=["f:1"])


# ---------------------------------------------------------------------------------------------
# LabelVocab
# ---------------------------------------------------------------------------------------------


def test_label_set_order_ids_and_config_round_trip():
    tags = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "B-MISC"], []]
    labels = LabelVocab.from_sequences(tags)
    assert labels.labels == ["O", "B-LOC", "B-MISC", "B-PER", "I-PER"]
    assert labels.b_to_i() == {3: 4}  # B-LOC and B-MISC have no I- tag among the training tags
    assert labels.decode(labels.encode(tags[0])) == tags[0]
    assert LabelVocab.from_dict(labels.to_dict()) == labels
    pos = LabelVocab.from_sequences([["NNP", "VBZ", "DT", "NN"]])  # any tags: POS has no "O"
    assert pos.labels == ["DT", "NN", "NNP", "VBZ"] and pos.b_to_i() == {}


def test_label_set_errors_name_the_tag_and_the_place():
    labels = LabelVocab(["O", "B-PER", "I-PER"])
    with pytest.raises(TagError, match=r"^dev.txt:57: found the tag 'B-LOC', which the training"):
        labels.encode_tag("B-LOC", where="dev.txt:57")
    with pytest.raises(TagError, match=r"^dev.txt:9: found the tag 'I-ORG'"):
        labels.encode(["O", "I-ORG"], where=["dev.txt:8", "dev.txt:9"])
    with pytest.raises(ValueError, match=r"position 1: expected a tag id in 0..2, found 3"):
        labels.decode([0, 3])
    with pytest.raises(ValueError, match="distinct"):
        LabelVocab(["O", "O"])
    with pytest.raises(TagError, match="no tags"):
        LabelVocab.from_sequences([[], []])


# ---------------------------------------------------------------------------------------------
# Label vocabularies of classification sets
# ---------------------------------------------------------------------------------------------


def _examples(labels, path="train.tsv"):
    return [Example(f"t{i}", None, lab, i + 2, path) for i, lab in enumerate(labels)]


def test_label_vocab_order():
    assert LabelVocab.from_examples(_examples(["1", "0", "1"])).labels == ["0", "1"]
    assert LabelVocab.from_examples(_examples(["10", "2", "-1", "2"])).labels == ["-1", "2", "10"]
    assert LabelVocab.from_examples(_examples(["neutral", "negative", "positive"])).labels == [
        "negative",
        "neutral",
        "positive",
    ]
    # Mixed integers and words: plain string order.
    assert LabelVocab.from_examples(_examples(["b", "10", "2"])).labels == ["10", "2", "b"]


def test_label_vocab_encode_decode_and_unknown():
    vocab = LabelVocab.from_examples(_examples(["pos", "neg"]))
    assert len(vocab) == 2 and [vocab.encode(x) for x in ("neg", "pos")] == [0, 1]
    assert [vocab.decode(i) for i in (0, torch.tensor(1))] == ["neg", "pos"]
    with pytest.raises(DataError) as info:
        vocab.encode("neutral", where="dev.tsv:7")
    assert "dev.tsv:7:" in str(info.value) and "'neutral'" in str(info.value)
    assert "'neg', 'pos'" in str(info.value)
    with pytest.raises(ValueError):
        vocab.decode(2)
    with pytest.raises(DataError, match="train.tsv:3: expected a label"):
        LabelVocab.from_examples(_examples(["pos", None]))


def test_encode_labels_reports_first_bad_row():
    vocab = LabelVocab(["neg", "pos"])
    dev = _examples(["pos", "neg", "neutral", "pos", "mixed", "neutral"], path="dev.tsv")
    with pytest.raises(DataError) as info:
        encode_labels(dev, vocab)
    message = str(info.value)
    assert message.startswith("dev.tsv:4:") and "'neutral'" in message
    assert "3 rows" in message and "'mixed'" in message
    assert encode_labels(dev[:2], vocab) == [1, 0]


def test_label_vocab_dict_round_trip_through_hf_config(tmp_path):
    vocab = LabelVocab(["entailment", "not_entailment"])
    BertConfig(**vocab.to_dict()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert LabelVocab.from_dict(config) == vocab
    assert BertConfig.from_pretrained(tmp_path).id2label == {0: "entailment", 1: "not_entailment"}
    with pytest.raises(ValueError, match="0..n-1"):
        LabelVocab.from_dict({"id2label": {"0": "a", "2": "b"}})
    with pytest.raises(ValueError, match="invert"):
        LabelVocab.from_dict({"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 1, "b": 0}})
    with pytest.raises(ValueError, match="distinct"):
        LabelVocab(["a", "a"])
