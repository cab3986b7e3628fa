"""minift.core.align: the sub-word label aligner against transformers' recipe, decoding back to
words, and the windows that split long sentences."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Tokens
from tag_strategies import TYPES, iob2_tags
from transformers import AutoTokenizer

from minift.core.align import (
    IGNORE_INDEX,
    align_batch,
    align_labels,
    decode_batch,
    decode_word_predictions,
    merge_window_predictions,
    plan_windows,
    split_windows,
    tokens_per_word,
    window_owners,
)
from minift.core.labels import LabelVocab, entities
from minift.data.tokenizer import Tokenizer

LABELS = LabelVocab.from_sequences([["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"]])


# Words that become many sub-words, punctuation, digits, accents, other scripts, CJK, emoji.
TRICKY_WORDS = [
    "supercalifragilisticexpialidocious",
    "Donaudampfschifffahrtsgesellschaft",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "1234567890123",
    "3.14159",
    "U.S.A.",
    "e-mail",
    "don't",
    "CoNLL-2003",
    "naïve",
    "Zürich",
    "São",
    "l'école",
    "ﬁnance",
    "x²",
    "½",
    "Москва",
    "Ελλάδα",
    "مرحبا",
    "東京都",
    "北京大学",
    "😀",
    "...",
    "—",
    "(",
    ",",
    "@user",
    "#hashtag",
]


# Letters, digits, punctuation and symbols of every script. U+FFFD is the one such character the
# BERT normalizer deletes: a word of it has no token (tested on its own below).
CHARS = st.characters(categories=("L", "N", "P", "S"), exclude_characters="\ufffd")


WORDS = (
    st.sampled_from(TRICKY_WORDS)
    | st.text(CHARS, min_size=1, max_size=8)
    | st.text("abcdefghijklmnopqrstuvwxyzéüñçø0123456789", min_size=1, max_size=30)
)


@st.composite
def tagged_sentences(draw, max_sentences: int = 3, max_words: int = 12):
    """A batch of (words, IOB2 tags) sentences."""
    batch = []
    for _ in range(draw(st.integers(1, max_sentences))):
        words = draw(st.lists(WORDS, min_size=1, max_size=max_words))
        batch.append((words, draw(iob2_tags(len(words)))))
    return batch


@pytest.fixture(scope="session")
def hf_tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


def hf_tokenize_and_align_labels(tokenizer, words, tags, label_list, label_all_tokens):
    """`tokenize_and_align_labels` of transformers' examples/pytorch/token-classification/run_ner.py
    (with its `b_to_i_label` map), on a batch of words and tags."""
    label_to_id = {label: i for i, label in enumerate(label_list)}
    b_to_i_label = []
    for idx, label in enumerate(label_list):
        if label.startswith("B-") and label.replace("B-", "I-") in label_list:
            b_to_i_label.append(label_list.index(label.replace("B-", "I-")))
        else:
            b_to_i_label.append(idx)

    tokenized_inputs = tokenizer(words, truncation=True, is_split_into_words=True)
    labels = []
    for i, label in enumerate(tags):
        word_ids = tokenized_inputs.word_ids(batch_index=i)
        previous_word_idx = None
        label_ids = []
        for word_idx in word_ids:
            if word_idx is None:
                label_ids.append(-100)
            elif word_idx != previous_word_idx:
                label_ids.append(label_to_id[label[word_idx]])
            else:
                if label_all_tokens:
                    label_ids.append(b_to_i_label[label_to_id[label[word_idx]]])
                else:
                    label_ids.append(-100)
            previous_word_idx = word_idx
        labels.append(label_ids)
    return tokenized_inputs, labels


def seqeval_entities(tags: list[str], mode: str) -> list[tuple[str, int, int]]:
    """seqeval's reading of one sentence, `end` made exclusive."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "default":
            return [(t, start, end + 1) for t, start, end in get_entities(list(tags))]
        return [(e.tag, e.start, e.end) for e in Tokens(list(tags), IOB2).entities]


@st.composite
def window_problems(draw):
    max_tokens = draw(st.integers(1, 20))
    counts = draw(st.lists(st.integers(0, max_tokens), max_size=40))
    return counts, max_tokens, draw(st.integers(0, 6))


@settings(deadline=None, max_examples=120)
@given(tagged_sentences(), st.booleans())
def test_aligner_equals_the_transformers_recipe(hf_tokenizer, tokenizer, batch, label_all):
    words = [w for w, _ in batch]
    tags = [t for _, t in batch]
    hf_inputs, hf_labels = hf_tokenize_and_align_labels(
        hf_tokenizer, words, tags, LABELS.labels, label_all
    )
    encoding = tokenizer(words, is_split_into_words=True)
    b_to_i = LABELS.b_to_i() if label_all else None
    word_labels = [LABELS.encode(t) for t in tags]
    aligned = align_batch(word_labels, encoding, label_all_subwords=label_all, b_to_i=b_to_i)

    assert aligned.dtype == torch.long and aligned.shape == encoding.input_ids.shape
    for i, expected in enumerate(hf_labels):
        n = len(expected)
        assert encoding.word_ids[i][:n] == hf_inputs.word_ids(i)  # same tokens, same words
        assert aligned[i, :n].tolist() == expected
        assert (aligned[i, n:] == IGNORE_INDEX).all()  # padding
        # the same from transformers' own word ids, and from its BatchEncoding as a batch
        assert (
            align_labels(
                word_labels[i], hf_inputs.word_ids(i), label_all_subwords=label_all, b_to_i=b_to_i
            )
            == expected
        )
    hf_batch = align_batch(word_labels, hf_inputs, label_all_subwords=label_all, b_to_i=b_to_i)
    assert hf_batch.tolist() == aligned.tolist()


@settings(deadline=None, max_examples=120)
@given(tagged_sentences())
def test_decoding_the_aligned_labels_gives_back_the_words(tokenizer, batch):
    words = [w for w, _ in batch]
    tags = [t for _, t in batch]
    encoding = tokenizer(words, is_split_into_words=True)
    word_labels = [LABELS.encode(t) for t in tags]
    aligned = align_batch(word_labels, encoding)

    decoded = decode_batch(aligned, encoding.word_ids, [len(w) for w in words])
    assert decoded == word_labels
    for i in range(len(batch)):
        assert decode_word_predictions(aligned[i], encoding.word_ids[i]) == word_labels[i]
        back = LABELS.decode(decoded[i])
        assert back == tags[i]
        assert (
            entities(back, mode="strict")
            == entities(tags[i])
            == seqeval_entities(tags[i], "default")
        )


@settings(deadline=None, max_examples=120)
@given(tagged_sentences())
def test_label_all_subwords_continues_b_words_with_i(tokenizer, batch):
    words = [w for w, _ in batch]
    tags = [t for _, t in batch]
    encoding = tokenizer(words, is_split_into_words=True)
    aligned = align_batch(
        [LABELS.encode(t) for t in tags], encoding, label_all_subwords=True, b_to_i=LABELS.b_to_i()
    )
    for i in range(len(batch)):
        previous = None
        for t, word in enumerate(encoding.word_ids[i]):
            if word is None:
                assert aligned[i, t] == IGNORE_INDEX
            else:
                tag = tags[i][word]
                if word != previous or not tag.startswith("B-"):
                    expected = tag
                else:
                    expected = "I-" + tag[2:]
                assert LABELS.decode([aligned[i, t]]) == [expected]
            previous = word
        # every token labelled, the entities are those of the words, read even strictly
        token_tags = LABELS.decode([x for x in aligned[i].tolist() if x != IGNORE_INDEX])
        assert len(entities(token_tags, mode="strict")) == len(entities(tags[i]))


def test_a_word_without_tokens_is_filled_or_named(tokenizer):
    words = ["Paris", "\ufffd", "is"]  # the normalizer deletes U+FFFD: the word has no token
    encoding = tokenizer([words], is_split_into_words=True)
    word_ids = encoding.word_ids[0]
    assert 1 not in word_ids
    assert tokens_per_word(word_ids, 3)[1] == 0
    labels = align_labels([1, 2, 0], word_ids)
    with pytest.raises(ValueError, match="word 1 has no token"):
        decode_word_predictions(labels, word_ids, num_words=3)
    assert decode_word_predictions(labels, word_ids, num_words=3, fill=0) == [1, 0, 0]


def test_aligner_errors():
    with pytest.raises(ValueError, match=r"token 2: word id 2 is not in 0..1"):
        align_labels([0, 1], [None, 0, 2, None])
    with pytest.raises(ValueError, match="needs b_to_i"):
        align_labels([0], [None, 0, None], label_all_subwords=True)
    with pytest.raises(ValueError, match=r"sentence 1: token 1"):
        align_batch([[0], [0]], type("E", (), {"word_ids": [[None, 0], [None, 1]]})())
    with pytest.raises(ValueError, match="2 token predictions for 3 word ids"):
        decode_word_predictions([0, 1], [None, 0, None])


@settings(deadline=None, max_examples=400)
@given(window_problems())
def test_windows_cover_every_word_and_respect_max_tokens(problem):
    counts, max_tokens, stride = problem
    windows = split_windows(counts, max_tokens, stride)
    n = len(counts)
    assert windows[0][0] == 0 and windows[-1][1] == n
    assert (len(windows) == 1) == (sum(counts) <= max_tokens)
    for (s0, e0), (s1, e1) in zip(windows, windows[1:], strict=False):
        assert s0 < s1 <= e0 < e1  # moving forward, and no gap: every word is in a window
        assert e0 - s1 <= stride  # the overlap is at most the stride
    for s, e in windows:
        assert s < e or n == 0
        assert sum(counts[s:e]) <= max_tokens

    owners = window_owners(windows)
    assert len(owners) == n
    assert owners == sorted(owners)  # the sentence is read window after window
    for i, k in enumerate(owners):
        s, e = windows[k]
        assert s <= i < e  # a word is owned by a window that holds it
    # merging per-word values keyed by the word itself gives the sentence back
    merged = merge_window_predictions([list(range(s, e)) for s, e in windows], windows)
    assert merged == list(range(n))
    # ... each word's value taken from its owner's window
    labelled = [[(k, i) for i in range(s, e)] for k, (s, e) in enumerate(windows)]
    assert merge_window_predictions(labelled, windows) == [(k, i) for i, k in enumerate(owners)]


def test_overlap_is_cut_in_the_middle():
    windows = split_windows([1] * 10, max_tokens=6, stride_words=4)
    assert windows == [(0, 6), (2, 8), (4, 10)]
    # word 4: context 1 in window 0 (one word to the cut at 6), 2 in window 1, 0 in window 2
    assert window_owners(windows) == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    # an odd overlap has a middle word with the same context on both sides: the earlier wins
    windows = split_windows([1] * 10, max_tokens=6, stride_words=3)
    assert windows == [(0, 6), (3, 9), (6, 10)]
    assert window_owners(windows) == [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]


@settings(deadline=None, max_examples=60)
@given(
    st.lists(WORDS, min_size=1, max_size=40),
    st.integers(3, 24),
    st.integers(0, 4),
)
def test_windowed_predictions_equal_unwindowed_ones(tokenizer, words, max_tokens, stride):
    """With a prediction that depends only on the token, not on its position or context, merged
    window predictions equal the prediction of the whole sentence, word for word."""

    def predict(input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids * 31 + 7) % 9

    whole = tokenizer(words, is_split_into_words=True, truncation=False)
    counts = tokens_per_word(whole.word_ids[0], len(words))
    max_tokens = max(max_tokens, *counts)
    expected = decode_word_predictions(predict(whole.input_ids[0]), whole.word_ids[0])

    plan = plan_windows([counts], max_tokens, stride)
    assert plan.num_windowed == (sum(counts) > max_tokens)
    piece_predictions = []
    for sentence, start, end in plan.pieces():
        assert sentence == 0
        piece = tokenizer(words[start:end], is_split_into_words=True, truncation=False)
        assert piece.input_ids.shape[1] <= max_tokens + 2  # with [CLS] and [SEP]
        piece_predictions.append(
            decode_word_predictions(predict(piece.input_ids[0]), piece.word_ids[0])
        )
    assert plan.merge(piece_predictions) == [expected]


def test_window_plan_counts_and_errors():
    plan = plan_windows([[1, 1], [3, 3, 3], [2]], max_tokens=4, stride_words=1)
    assert plan.num_sentences == 3 and plan.num_windowed == 1 and plan.num_windows == 5
    assert plan.windows[1] == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match=r"sentence 1, word 2: has 9 sub-word tokens, more than"):
        plan_windows([[1], [1, 2, 9]], max_tokens=8, stride_words=2)
    with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
        split_windows([1], max_tokens=0, stride_words=0)
    with pytest.raises(ValueError, match="window 1 covers 1 words"):
        merge_window_predictions([[0, 0], [0, 0]], [(0, 2), (1, 2)])
    with pytest.raises(ValueError, match="word 2 is in no window"):
        window_owners([(0, 2), (3, 4)])
    with pytest.raises(ValueError, match="predictions for 1 pieces, expected 5"):
        plan.merge([[0]])


def test_window_errors_name_the_place_of_each_word():
    where = [["a.txt:1"], ["a.txt:3", "a.txt:4", "a.txt:5"]]
    with pytest.raises(ValueError, match=r"^a.txt:5: has 9 sub-word tokens, more than"):
        plan_windows([[1], [1, 2, 9]], max_tokens=8, stride_words=2, where=where)
    with pytest.raises(ValueError, match="where has 1 entries for 2 sentences"):
        plan_windows([[1], [1]], max_tokens=8, stride_words=2, where=where[:1])
    with pytest.raises(ValueError, match="where has 1 entries for 2 words"):
        split_windows([1, 1], max_tokens=8, stride_words=2, where=["a.txt:1"])
