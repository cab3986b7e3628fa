"""Token classification end to end: the CoNLL reader and its errors, windowed batches, and
`minift ner` (NER and POS) writing metrics and a model transformers loads with the same logits.

The end-to-end runs use a tiny random BERT with MiniLM's tokenizer (the wiring is under test, not
the accuracy; benchmarks/ner_conll.py measures that). Tolerance for the logits: atol 1e-5.
"""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import classification_report
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2

from minift.core.align import IGNORE_INDEX, tokens_per_word
from minift.core.labels import LabelVocab
from minift.data.readers import (
    DataError,
    TaggedSentence,
    apply_scheme,
    encode_tags,
    entity_label_set,
    is_bio,
    read_conll,
    write_conll,
)
from minift.data.tokenizer import Tokenizer
from minift.run.cli import main
from minift.tasks.tag import TokenClassificationDataset, TokenClassifier

TYPES = ["PER", "LOC", "ORG", "MISC"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_conll(path, **kwargs)
    return str(info.value)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def conll(data_dir):
    """The real CoNLL-2003 files, NER column."""
    folder = data_dir / "conll2003"
    return {name: read_conll(folder / f"{name}.txt", column=2) for name in ("train", "dev", "test")}


# ----------------------------------------------------------------------------------------------
# The reader


def test_reader_skips_docstart_and_keeps_each_words_line(tmp_path):
    path = _write(
        tmp_path / "a.txt",
        "-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects\tVBZ O\n\n\n-DOCSTART- -X- O\n"
        "Peter NNP B-PER\r\nBlackburn NNP I-PER  \n-DOCSTART- -X- O\nBRUSSELS NNP B-LOC",
    )
    ner = read_conll(path, column=2)
    assert [s.words for s in ner] == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [s.tags for s in ner] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [s.lines for s in ner] == [[3, 4], [8, 9], [11]]
    assert ner[1].where == [f"{path}:8", f"{path}:9"]
    pos = read_conll(path, column=1)
    assert [s.tags for s in pos] == [["NNP", "VBZ"], ["NNP", "NNP"], ["NNP"]]
    assert read_conll(path)[0].tags == ner[0].tags  # default: the last column
    assert read_conll(path, column=-2)[0].tags == pos[0].tags
    assert is_bio(ner) and not is_bio(pos)


def _manifest_counts(data_dir: Path) -> list[int]:
    row = next(
        line
        for line in (data_dir / "MANIFEST.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| CoNLL-2003")
    )
    rows = row.split("|")[4]  # "14,041 / 3,250 / 3,453 sentences; ... tokens; ... entities ..."
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", rows)][:9]


def test_real_conll_counts_match_the_manifest(data_dir, conll):
    counts = _manifest_counts(data_dir)
    for i, name in enumerate(("train", "dev", "test")):
        sentences = apply_scheme(conll[name], "iob2")  # the manifest says: strict IOB2
        assert len(sentences) == counts[i]
        assert sum(len(s.words) for s in sentences) == counts[3 + i]
        assert sum(len(get_entities(s.tags)) for s in sentences) == counts[6 + i]
    assert entity_label_set(conll["train"]).labels == ["O"] + [
        f"{p}-{t}" for p in "BI" for t in sorted(TYPES)
    ]


def test_a_malformed_line_is_named_by_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.txt", "EU NNP B-ORG\nrejects VBZ O\n\nPeter B-PER\n")
    message = _error(path, column=2)
    assert f"{path}:4: expected 3 columns" in message and "(as on line 1), found 2" in message
    assert "'Peter B-PER'" in message


def test_a_missing_column_or_an_empty_file_is_refused(tmp_path):
    path = _write(tmp_path / "a.txt", "-DOCSTART- -X- O\n\nEU NNP B-ORG\n")
    for column in (3, -4, 0, -3):
        message = _error(path, column=column)
        assert f"{path}:3: expected a tag column in 1..2" in message
        assert f"column={column}" in message
    assert "found none" in _error(_write(tmp_path / "b.txt", "\n-DOCSTART- -X- O\n\n"))
    with pytest.raises(DataError, match="no such file"):
        read_conll(tmp_path / "missing.txt")


def test_an_unknown_tag_is_named_by_file_and_line(tmp_path):
    train = read_conll(_write(tmp_path / "train.txt", "EU B-ORG\nsaid O\n\nPeter B-PER\n"))
    dev = read_conll(_write(tmp_path / "dev.txt", "Paris B-LOC\n\nJohn B-PER\nin O\nRome B-LOC\n"))
    labels = entity_label_set(train)
    assert labels.labels == ["O", "B-ORG", "B-PER", "I-ORG", "I-PER"]
    with pytest.raises(DataError) as info:
        encode_tags(dev, labels)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'dev.txt'}:1: found the tag 'B-LOC'")
    assert "2 tags in all" in message
    assert encode_tags(train, labels) == [[1, 0], [2]]


def test_strict_iob2_refuses_an_i_tag_that_starts_an_entity(tmp_path):
    path = _write(
        tmp_path / "iob1.txt",
        "The O\nEU I-ORG\n\nPeter I-PER\nBlackburn I-PER\nParis B-PER\nmet O\nRome I-LOC\n",
    )
    message = _error(path, scheme="iob2")
    assert message.startswith(f"{path}:2: 'I-ORG' after 'O' starts an entity")
    assert "--scheme iob1" in message
    converted = read_conll(path, scheme="iob1")  # IOB1: converted, entities unchanged
    assert [s.tags for s in converted] == [
        ["O", "B-ORG"],
        ["B-PER", "I-PER", "B-PER", "O", "B-LOC"],
    ]
    raw = read_conll(path)
    for old, new in zip(raw, converted, strict=True):
        assert get_entities(old.tags) == get_entities(new.tags)
    bad_type = _write(tmp_path / "types.txt", "EU B-ORG\nParis I-LOC\n")
    assert _error(bad_type, scheme="iob2").startswith(f"{bad_type}:2: 'I-LOC' after 'B-ORG'")


def test_a_tag_that_is_not_bio_is_named_when_reading_ner(tmp_path):
    path = _write(tmp_path / "pos.txt", "EU NNP\nrejects VBZ\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: expected 'O', 'B-<type>'")):
        read_conll(path, scheme="iob2")
    with pytest.raises(ValueError, match="scheme must be one of"):
        read_conll(path, scheme="bio")


# Any field without spaces or line breaks (a leading byte-order mark is dropped as UTF-8's).
FIELD = st.text(
    st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="\ufeff"
    ),
    min_size=1,
    max_size=8,
).filter(lambda f: f != "-DOCSTART-")


@settings(deadline=None, max_examples=40)
@given(
    st.lists(
        st.lists(st.tuples(FIELD, FIELD, FIELD), min_size=1, max_size=6), min_size=1, max_size=5
    )
)
def test_write_then_read_gives_back_the_sentences(tmp_path_factory, sentences):
    path = tmp_path_factory.mktemp("conll") / "round.txt"
    words = [[w for w, _, _ in s] for s in sentences]
    first = [[a for _, a, _ in s] for s in sentences]
    second = [[b for _, _, b in s] for s in sentences]
    write_conll(path, words, first, second)
    for column, tags in ((1, first), (2, second)):
        read = read_conll(path, column=column)
        assert [s.words for s in read] == words and [s.tags for s in read] == tags


# ----------------------------------------------------------------------------------------------
# Batches and windows


@settings(deadline=None, max_examples=25)
@given(
    st.lists(
        st.lists(
            st.sampled_from(
                ["EU", "Blackburn", "Donaudampfschifffahrt", ",", "1996-08-22", "Zürich", "x"]
            ),
            min_size=1,
            max_size=30,
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(11, 40),  # the longest word has 9 sub-words, plus [CLS] and [SEP]
    st.integers(0, 5),
    st.randoms(use_true_random=False),
)
def test_long_sentences_are_windowed_and_every_word_predicted(
    tokenizer, sentences, max_length, stride, rng
):
    """Perfect token predictions (the aligned labels) fold back into the word labels, windows
    or not; no window exceeds max_length and a sentence is windowed only when it must be."""
    labels = [[rng.randrange(9) for _ in words] for words in sentences]
    data = TokenClassificationDataset(
        sentences, tokenizer, max_length=max_length, label_ids=labels, stride_words=stride
    )
    whole = [
        len(tokenizer([s], is_split_into_words=True, truncation=False).input_ids[0])
        for s in sentences
    ]
    assert data.plan.num_windowed == sum(n > max_length for n in whole)
    assert len(data) == data.plan.num_windows and max(data.lengths) <= max_length
    token_predictions = [row.clamp(min=0) for row in data.labels]  # -100 -> any id
    assert data.word_predictions(token_predictions) == labels
    batch = data.batch(list(range(len(data))))
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_batches_equal_the_transformers_recipe(minilm_dir, tokenizer, conll):
    """On real sentences that fit: ids and labels of transformers' token-classification
    example (word_ids, first sub-word labelled), row for row."""
    hf = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    sentences = conll["dev"][:64]
    labels = entity_label_set(conll["train"])
    ids = encode_tags(sentences, labels)
    data = TokenClassificationDataset(
        [s.words for s in sentences], tokenizer, max_length=128, label_ids=ids
    )
    assert data.plan.num_windowed == 0
    batch = data.batch(list(range(len(sentences))))
    encoded = hf(
        [s.words for s in sentences],
        is_split_into_words=True,
        truncation=True,
        max_length=128,
        padding=True,
        return_tensors="pt",
    )
    expected = []
    for b in range(len(sentences)):
        previous, row = None, []
        for word in encoded.word_ids(b):
            row.append(IGNORE_INDEX if word is None or word == previous else ids[b][word])
            previous = word
        expected.append(row)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(batch[key], encoded[key])
    assert torch.equal(batch["labels"], torch.tensor(expected))


def test_dataset_refuses_bad_input(tokenizer):
    with pytest.raises(ValueError, match="sentence 0: 2 words but 1 label ids"):
        TokenClassificationDataset([["a", "b"]], tokenizer, max_length=8, label_ids=[[0]])
    with pytest.raises(ValueError, match="leaves no room for a word"):
        TokenClassificationDataset([["a"]], tokenizer, max_length=2)
    with pytest.raises(ValueError, match="sentence 0, word 1: has 9 sub-word tokens"):
        TokenClassificationDataset([["a", "Donaudampfschifffahrt"]], tokenizer, max_length=10)
    with pytest.raises(ValueError, match="sentence 1: expected a non-empty list of words"):
        TokenClassificationDataset([["a"], []], tokenizer, max_length=8)


def test_a_set_whose_words_all_tokenize_to_nothing_is_refused_naming_the_file(tmp_path, tokenizer):
    # U+200B (zero-width space) is dropped by the tokenizer: no word leaves a sub-word token,
    # so no label would reach the loss (issue 22: ner trained on zero targets and exited 0).
    path = _write(tmp_path / "train.txt", "\u200b O\n\u200b\u200b B-PER\n\n\u200b O\n")
    sentences = read_conll(path)
    labels = LabelVocab.from_sequences([s.tags for s in sentences])
    with pytest.raises(
        DataError, match="no word of the 2 sentences produced a sub-word token"
    ) as info:
        TokenClassificationDataset(
            [s.words for s in sentences],
            tokenizer,
            max_length=16,
            label_ids=encode_tags(sentences, labels),
            where=[s.where for s in sentences],
        )
    assert str(info.value).startswith(f"{path}:1: ")
    # one word that does tokenize is enough
    TokenClassificationDataset([["\u200b"], ["\u200b", "a"]], tokenizer, max_length=16)


def test_a_word_too_long_for_a_window_is_named_by_file_and_line(tmp_path, tokenizer):
    path = _write(tmp_path / "train.txt", "a O\n\nb O\nDonaudampfschifffahrt B-MISC\n")
    sentences = read_conll(path)
    words, where = [s.words for s in sentences], [s.where for s in sentences]
    with pytest.raises(ValueError) as info:
        TokenClassificationDataset(words, tokenizer, max_length=10, where=where)
    assert str(info.value).startswith(
        f"{path}:4, word 'Donaudampfschifffahrt': has 9 sub-word tokens, more than a window holds"
    )
    with pytest.raises(ValueError, match="one place per word"):
        TokenClassificationDataset(words, tokenizer, max_length=10, where=where[:1])


# ----------------------------------------------------------------------------------------------
# minift ner, end to end


@pytest.fixture(scope="module")
def tiny_model(minilm_dir, tmp_path_factory) -> Path:
    """A small random BERT with MiniLM's vocabulary and tokenizer, saved by transformers."""
    folder = tmp_path_factory.mktemp("tiny")
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, folder / name)
    return folder


def _sentences(path: Path, start: int, count: int) -> list[list[list[str]]]:
    """Sentences start..start+count of a CoNLL file, each a list of its lines' fields."""
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    return [
        [line.split(" ") for line in block.splitlines()] for block in blocks[start : start + count]
    ]


def _write_rows(path: Path, sentences: list[list[list[str]]]) -> Path:
    text = "-DOCSTART- -X- O\n\n" + "".join(
        "".join(" ".join(row) + "\n" for row in s) + "\n" for s in sentences
    )
    return _write(path, text)


@pytest.fixture(scope="module")
def small_files(data_dir, tmp_path_factory) -> dict[str, Path]:
    """40 training and 20 dev sentences of CoNLL-2003, the dev file with one sentence of about
    200 words (ten dev sentences run together) that no 32-token window holds."""
    folder = tmp_path_factory.mktemp("small")
    source = data_dir / "conll2003"
    dev = _sentences(source / "dev.txt", 0, 30)
    long = [row for s in dev[20:30] for row in s]
    return {
        "train": _write_rows(folder / "train.txt", _sentences(source / "train.txt", 0, 40)),
        "dev": _write_rows(folder / "dev.txt", dev[:20] + [long]),
        "test": _write_rows(folder / "test.txt", _sentences(source / "test.txt", 0, 20)),
    }


def _run(capsys, **options) -> tuple[int, str, str]:
    """`minift ner --no-progress` with `--name value` for each option (max_steps= ->
    --max-steps); returns the exit code, stdout and stderr."""
    options = {"batch_size": 8, "seed": 1, "max_length": 64, **options}
    args = [x for k, v in options.items() for x in ("--" + k.replace("_", "-"), str(v))]
    code = main(["ner", "--no-progress", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ner_end_to_end_writes_metrics_and_a_model_transformers_loads(
    tiny_model, small_files, tmp_path, capsys
):
    out = tmp_path / "out"
    files = {name: str(path) for name, path in small_files.items()}
    code, stdout, stderr = _run(
        capsys, model=tiny_model, **files, column=2, max_steps=3, max_length=32, out=out
    )
    assert code == 0, stderr
    dev = read_conll(small_files["dev"], column=2)
    tokenizer = Tokenizer.from_pretrained(tiny_model)
    lengths = [len(tokenizer([s.words], is_split_into_words=True).input_ids[0]) for s in dev]
    windowed = sum(n > 32 for n in lengths)
    assert windowed >= 1
    assert (
        f"dev: {len(dev)} sentences, {sum(len(s.words) for s in dev)} words; {windowed} longer "
        "than 32 tokens, split into" in stdout
    )
    assert "none truncated" in stdout and "micro avg" in stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "ner"
    for split in ("dev", "test"):
        scores = metrics[split]
        assert {"f1", "precision", "recall", "per_type", "mode"} <= set(scores)
        assert scores["mode"] == "default"
        assert set(scores["per_type"]) <= set(TYPES)
        assert all(
            {"precision", "recall", "f1", "support"} <= set(row)
            for row in scores["per_type"].values()
        )
    # Every word of every dev sentence (the long one too) got a prediction, gold kept alongside.
    gold = read_conll(out / "dev_predictions.txt", column=1)
    predicted = read_conll(out / "dev_predictions.txt", column=2)
    assert [s.words for s in gold] == [s.words for s in dev]
    assert [s.tags for s in gold] == [s.tags for s in dev]
    assert [len(s.tags) for s in predicted] == [len(s.words) for s in dev]
    # The scores are seqeval's on the predictions written (default and strict IOB2 modes, micro;
    # the same ratios of counts, so within 1e-12).
    for split in ("dev", "test"):
        written = out / f"{split}_predictions.txt"
        gold_tags = [s.tags for s in read_conll(written, column=1)]
        assert gold_tags == [s.tags for s in read_conll(small_files[split], column=2)]
        predicted_tags = [s.tags for s in read_conll(written, column=2)]
        for ours, strict in ((metrics[split], {}), (metrics[split]["strict"],
                                                    {"mode": "strict", "scheme": IOB2})):
            micro = classification_report(gold_tags, predicted_tags, output_dict=True,
                                          zero_division=0, **strict)["micro avg"]
            for key, theirs in (("precision", "precision"), ("recall", "recall"),
                                ("f1", "f1-score")):
                assert math.isclose(ours[key], micro[theirs], rel_tol=0, abs_tol=1e-12), (
                    split, strict, key)
        assert metrics[split]["support"] == micro["support"]

    # The folder loads in transformers with the same logits at the real positions.
    ours = TokenClassifier.from_pretrained(out).eval()
    theirs = transformers.BertForTokenClassification.from_pretrained(out).eval()
    assert theirs.config.id2label == {i: t for i, t in enumerate(metrics["labels"])}
    data = TokenClassificationDataset(
        [s.words for s in dev], Tokenizer.from_pretrained(out), max_length=32
    )
    batch = data.batch(list(range(len(data))))
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(**batch).logits[real], ours(**batch).logits[real], atol=1e-5, rtol=0
        )


def test_pos_column_reports_token_accuracy(tiny_model, small_files, tmp_path, capsys):
    out = tmp_path / "pos"
    train = str(small_files["train"])
    code, stdout, stderr = _run(
        capsys, model=tiny_model, train=train, dev=train, column=1, max_steps=2, out=out
    )
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "pos" and "test" not in metrics
    train = read_conll(small_files["train"], column=1)
    assert metrics["labels"] == LabelVocab.from_sequences([s.tags for s in train]).labels
    predicted = read_conll(out / "dev_predictions.txt", column=2)
    correct = sum(
        g == p
        for s, q in zip(train, predicted, strict=True)
        for g, p in zip(s.tags, q.tags, strict=True)
    )
    assert metrics["dev"]["accuracy"] == correct / sum(len(s.tags) for s in train)
    assert f"dev: token accuracy {metrics['dev']['accuracy']:.4f}" in stdout


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda text: text.replace("rejects VBZ O", "rejects O", 1), ":4: expected 3 columns"),
        (
            lambda text: text.replace("EU NNP B-ORG", "EU NNP I-ORG", 1),
            ":3: 'I-ORG' after the sentence start starts an entity",
        ),
        (
            lambda text: text.replace(" B-MISC", " B-ANIMAL", 1),
            ":5: found the tag 'B-ANIMAL', which the training tags do not include",
        ),
    ],
    ids=["malformed-line", "strict-iob2", "unknown-tag"],
)
def test_bad_files_stop_before_training(tiny_model, small_files, tmp_path, capsys, edit, expected):
    """The error names the file and line; nothing is trained or written."""
    bad = _write(tmp_path / "bad.txt", edit(small_files["train"].read_text(encoding="utf-8")))
    train = small_files["train"] if "ANIMAL" in expected else bad  # an unknown tag: in dev
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        capsys, model=tiny_model, train=train, dev=bad, column=2, max_steps=1, out=out
    )
    assert code == 2
    assert f"minift: error: {bad}{expected}" in stderr
    assert not out.exists() and "train:" not in stdout


def test_a_too_long_max_length_and_unknown_options_are_refused(tiny_model, small_files, capsys):
    files = dict(model=tiny_model, train=small_files["train"], dev=small_files["dev"], out="x")
    code, _, stderr = _run(capsys, **files, max_length=65)
    assert code == 2 and "--max-length 65 is more than the model's 64 positions" in stderr
    code, _, stderr = _run(capsys, **files, tags="pos", stride_words=-1)
    assert code == 2 and "--stride-words must be at least 0, got -1" in stderr


def test_tagged_sentence_where_without_a_path():
    assert TaggedSentence(["a"], ["O"], [7]).where == ["line 7"]
    assert tokens_per_word([None, 0, 0, None], 1) == [2]
