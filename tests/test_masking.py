"""minift.core.masking: invariants on random batches (hypothesis), rates and 80/10/10 splits (binomial
and chi-square bounds), SpanBERT's span lengths and budget, and parity with transformers'
DataCollatorForLanguageModeling (bit for bit where it can be driven by the same generator).

Statistical bounds: |z| <= 5.3 (two-sided normal tail 1.2e-7) and chi-square p-value > 1e-6, so a
correct implementation fails an assertion less than once in a million; the statistical tests use
fixed seeds, so each either always passes or always fails.
"""

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from minift.core.masking import (
    mlm,
    span_budget,
    span_length_probs,
    span_mask,
    special_tokens_mask_from,
    whole_word_mask,
    word_ids_from_tokens,
)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
FIRST_ID = 4  # ordinary token ids are FIRST_ID .. SMALL_VOCAB - 1
SMALL_VOCAB = 40
HUGE_VOCAB = 2**62  # a random id equals the original or [MASK] with probability ~1e-18
Z_BOUND = 5.3
MIN_P_VALUE = 1e-6
SPLIT = ("mask", "random", "keep")


# ---------------------------------------------------------------------------------------------
# Batches with known words
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    input_ids: torch.Tensor  # (batch, seq)
    special: torch.Tensor  # (batch, seq) bool: [CLS], [SEP], [PAD]
    word_ids: torch.Tensor  # (batch, seq), -1 outside words
    words: list[list[tuple[int, int]]]  # per row, each word's token range [start, end)


def build_batch(pieces: list[list[int]], token_ids: list[list[int]], seq: int) -> Batch:
    """Rows of [CLS] + pieces, cut at ``seq`` and padded: piece 0 is a [SEP], k > 0 a k-token word.

    Word ids restart at 0 after every [SEP], as a tokenizer's ``word_ids()`` does for pairs.
    """
    ids, special, word_ids, words = [], [], [], []
    for row_pieces, row_ids in zip(pieces, token_ids, strict=True):
        row, row_special, row_words, ranges = [CLS], [True], [-1], []
        word = 0
        for piece in row_pieces:
            if piece == 0:
                row, row_special, row_words, word = (
                    row + [SEP],
                    row_special + [True],
                    row_words + [-1],
                    0,
                )
                continue
            start = len(row)
            row += [row_ids[t % len(row_ids)] for t in range(start, start + piece)]
            row_special += [False] * piece
            row_words += [word] * piece
            ranges.append((start, start + piece))
            word += 1
        row, row_special, row_words = row[:seq], row_special[:seq], row_words[:seq]
        pad = seq - len(row)
        ids.append(row + [PAD] * pad)
        special.append(row_special + [True] * pad)
        word_ids.append(row_words + [-1] * pad)
        words.append([(s, min(e, seq)) for s, e in ranges if s < seq])
    return Batch(
        torch.tensor(ids), torch.tensor(special), torch.tensor(word_ids, dtype=torch.long), words
    )


@st.composite
def batches(draw, max_batch: int = 4, max_seq: int = 24) -> Batch:
    batch, seq = draw(st.integers(1, max_batch)), draw(st.integers(1, max_seq))
    pieces = draw(
        st.lists(st.lists(st.integers(0, 4), max_size=seq), min_size=batch, max_size=batch)
    )
    token = st.integers(FIRST_ID, SMALL_VOCAB - 1)
    token_ids = draw(
        st.lists(st.lists(token, min_size=seq, max_size=seq), min_size=batch, max_size=batch)
    )
    return build_batch(pieces, token_ids, seq)


def random_batch(rng: np.random.Generator, rows: int, seq: int, max_word: int = 3) -> Batch:
    """A large batch: rows of random lengths, words of 1..max_word tokens, a [SEP] now and then."""
    pieces = []
    for _ in range(rows):
        length = int(rng.integers(seq // 2, seq + 1))
        row = rng.integers(1, max_word + 1, size=length).tolist()
        row = [0 if rng.random() < 0.02 else piece for piece in row]
        pieces.append(row)
    token_ids = rng.integers(FIRST_ID, SMALL_VOCAB, size=(rows, seq)).tolist()
    return build_batch(pieces, token_ids, seq)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def outcome(original: list[int], masked: list[int]) -> str:
    """What happened to a selected token, or to a word or span sharing one decision; "invalid"
    for a group whose tokens do not share it. With HUGE_VOCAB a random id never collides."""
    if all(m == MASK for m in masked):
        return "mask"
    if masked == original:
        return "keep"
    replaced = all(m not in (MASK, o) for m, o in zip(masked, original, strict=True))
    if replaced and len(set(masked)) == len(masked):  # one random id per token
        return "random"
    return "invalid"


def split_expected(mask_replace_prob: float, random_replace_prob: float) -> np.ndarray:
    return np.array(
        [mask_replace_prob, random_replace_prob, 1 - mask_replace_prob - random_replace_prob]
    )


def assert_split(outcomes: list[str], mask_replace_prob: float, random_replace_prob: float):
    """Chi-square of the mask / random / keep counts against the requested split."""
    counts = np.array([outcomes.count(name) for name in SPLIT])
    assert counts.sum() == len(outcomes), "some group mixed decisions"
    expected = split_expected(mask_replace_prob, random_replace_prob) * len(outcomes)
    p_value = stats.chisquare(counts, expected).pvalue
    assert p_value > MIN_P_VALUE, (counts, expected, p_value)


def assert_binomial(count: int, trials: int, probability: float):
    sigma = math.sqrt(trials * probability * (1 - probability))
    assert abs(count - trials * probability) <= Z_BOUND * sigma, (count, trials, probability)


def check_invariants(
    batch: Batch, before: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor
):
    """What every strategy guarantees, whatever it selects."""
    ids = batch.input_ids
    assert torch.equal(ids, before), "the input was modified in place"
    assert masked.shape == labels.shape == ids.shape
    assert masked.dtype == labels.dtype == torch.long
    selected = labels != -100
    assert not (selected & batch.special).any(), "a special or padding token was selected"
    assert torch.equal(labels[selected], ids[selected]), "labels are not the original ids"
    assert torch.equal(masked[~selected], ids[~selected]), "an unselected token changed"
    assert ((masked >= 0) & (masked < SMALL_VOCAB)).all()


def word_selection(batch: Batch, labels: torch.Tensor) -> list[list[bool]]:
    """Per row and word, whether the word is selected; fails if a word is only partly selected."""
    selected = (labels != -100).tolist()
    rows = []
    for b, words in enumerate(batch.words):
        row = []
        for start, end in words:
            states = set(selected[b][start:end])
            assert len(states) == 1, f"row {b}: word {start}:{end} is partly selected"
            row.append(states.pop())
        rows.append(row)
    return rows


def observed_spans(batch: Batch, labels: torch.Tensor) -> list[list[list[tuple[int, int]]]]:
    """Per row, the spans: maximal runs of selected words that touch (no token between them)."""
    spans = []
    for words, chosen in zip(batch.words, word_selection(batch, labels), strict=True):
        row, previous_end = [], None
        for (start, end), is_chosen in zip(words, chosen, strict=True):
            if is_chosen:
                if row and previous_end == start and row[-1][-1][1] == start:
                    row[-1].append((start, end))
                else:
                    row.append([(start, end)])
            previous_end = end
        spans.append(row)
    return spans


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@given(
    ids=st.lists(st.lists(st.integers(0, 9), min_size=5, max_size=5), min_size=1, max_size=4),
    special_ids=st.sets(st.integers(0, 9), max_size=4),
)
@settings(deadline=None, max_examples=50)
def test_special_tokens_mask_from(ids, special_ids):
    mask = special_tokens_mask_from(torch.tensor(ids), special_ids)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[token in special_ids for token in row] for row in ids]


def test_word_ids_from_tokens_groups_wordpieces():
    tokens = [["[CLS]", "un", "##believ", "##able", "film", "[SEP]"], ["##x", "a", "##", "b"]]
    special = torch.tensor([[True, False, False, False, False, True], [False] * 4 + [False] * 2])
    assert word_ids_from_tokens(tokens).tolist() == [[0, 1, 1, 1, 2, 3], [0, 1, 2, 3, -1, -1]]
    assert word_ids_from_tokens(tokens, special).tolist() == [
        [-1, 1, 1, 1, 2, -1],
        [0, 1, 2, 3, -1, -1],
    ]
    with pytest.raises(ValueError, match="batch"):
        word_ids_from_tokens(["a", "##b"])


def canonical_words(word_ids: list) -> list[int]:
    """Word ids renumbered 0, 1, ... per run of equal ids; -1 (or None) outside words."""
    out, word, previous = [], -1, None
    for word_id in word_ids:
        word_id = -1 if word_id is None else word_id
        if word_id >= 0 and word_id != previous:
            word += 1
        out.append(word if word_id >= 0 else -1)
        previous = word_id
    return out


# ---------------------------------------------------------------------------------------------
# Invariants on random batches
# ---------------------------------------------------------------------------------------------

probabilities = st.one_of(st.sampled_from([0.0, 0.1, 0.15, 0.8, 1.0]), st.floats(0.0, 1.0))


@st.composite
def replace_probs(draw) -> tuple[float, float]:
    """(mask_replace_prob, random_replace_prob) with a sum of at most 1."""
    mask_replace_prob = draw(probabilities)
    random_replace_prob = draw(probabilities) * (1 - mask_replace_prob)
    assume(mask_replace_prob + random_replace_prob <= 1.0)
    return mask_replace_prob, random_replace_prob


def run_twice(function, batch: Batch, seed: int, **kwargs):
    """Masks the batch twice from fresh generators with the same seed; checks they agree."""
    before = batch.input_ids.clone()
    first = function(generator=generator(seed), **kwargs)
    second = function(generator=generator(seed), **kwargs)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    check_invariants(batch, before, *first)
    return first


@given(batch=batches(), seed=st.integers(0, 2**32), p=probabilities, split=replace_probs())
@settings(deadline=None, max_examples=150)
def test_mlm_invariants(batch, seed, p, split):
    masked, labels = run_twice(
        mlm,
        batch,
        seed,
        input_ids=batch.input_ids,
        special_tokens_mask=batch.special,
        mask_token_id=MASK,
        vocab_size=SMALL_VOCAB,
        mlm_probability=p,
        mask_replace_prob=split[0],
        random_replace_prob=split[1],
    )
    selected = labels != -100
    assert ((masked != batch.input_ids) <= selected).all()
    if p == 1.0:
        assert torch.equal(selected, ~batch.special)
    if p == 0.0:
        assert not selected.any()
    if split[0] == 1.0:  # every selected token becomes [MASK], and only those do
        assert torch.equal(selected, masked == MASK)


@given(batch=batches(), seed=st.integers(0, 2**32), p=probabilities, split=replace_probs())
@settings(deadline=None, max_examples=150)
def test_whole_word_mask_invariants(batch, seed, p, split):
    masked, labels = run_twice(
        whole_word_mask,
        batch,
        seed,
        input_ids=batch.input_ids,
        special_tokens_mask=batch.special,
        word_ids=batch.word_ids,
        mask_token_id=MASK,
        vocab_size=SMALL_VOCAB,
        mlm_probability=p,
        mask_replace_prob=split[0],
        random_replace_prob=split[1],
    )
    chosen = word_selection(batch, labels)  # all or none of each word's sub-words
    in_words = torch.zeros_like(batch.special)
    for b, words in enumerate(batch.words):
        for start, end in words:
            in_words[b, start:end] = True
    assert not ((labels != -100) & ~in_words).any()
    if p == 1.0:
        assert all(all(row) for row in chosen)
    if p == 0.0:
        assert not any(any(row) for row in chosen)
    if split[0] == 1.0:
        assert torch.equal(labels != -100, masked == MASK)


@given(batch=batches(), seed=st.integers(0, 2**32), p=probabilities)
@settings(deadline=None, max_examples=100)
def test_whole_word_mask_shares_the_decision_within_a_word(batch, seed, p):
    masked, labels = whole_word_mask(
        batch.input_ids,
        batch.special,
        batch.word_ids,
        mask_token_id=MASK,
        vocab_size=HUGE_VOCAB,
        generator=generator(seed),
        mlm_probability=p,
    )
    for b, (words, chosen) in enumerate(
        zip(batch.words, word_selection(batch, labels), strict=True)
    ):
        for (start, end), is_chosen in zip(words, chosen, strict=True):
            if is_chosen:
                original = batch.input_ids[b, start:end].tolist()
                assert outcome(original, masked[b, start:end].tolist()) != "invalid"


@given(
    batch=batches(max_seq=40),
    seed=st.integers(0, 2**32),
    budget=st.sampled_from([0.0, 0.05, 0.15, 0.3, 0.5, 1.0]),
    geometric_p=st.sampled_from([0.2, 0.5, 1.0]),
    max_span=st.integers(1, 10),
)
@settings(deadline=None, max_examples=150)
def test_span_mask_invariants_and_budget(batch, seed, budget, geometric_p, max_span):
    """The rule: with n maskable tokens, target = ceil(budget * n); spans of whole words are added
    while fewer than target tokens are selected, so selected - tokens(last span) < target <=
    selected, unless no free word (unselected, touching no selected word) is left."""
    masked, labels = run_twice(
        span_mask,
        batch,
        seed,
        input_ids=batch.input_ids,
        special_tokens_mask=batch.special,
        word_ids=batch.word_ids,
        mask_token_id=MASK,
        vocab_size=SMALL_VOCAB,
        budget=budget,
        geometric_p=geometric_p,
        max_span=max_span,
    )
    chosen = word_selection(batch, labels)  # spans consist of whole words
    spans = observed_spans(batch, labels)
    for b, words in enumerate(batch.words):
        maskable = sum(end - start for start, end in words)
        target = math.ceil(Fraction(str(budget)) * maskable)
        span_tokens = [span[-1][1] - span[0][0] for span in spans[b]]
        count = sum(span_tokens)
        assert count == int((labels[b] != -100).sum())
        assert all(len(span) <= max_span for span in spans[b])
        if target == 0:
            assert count == 0
            continue
        assert count - max(span_tokens, default=0) < target, "a span was added past the target"
        if count < target:  # stopped short: no word may be free
            for i, (start, end) in enumerate(words):
                touches_left = i > 0 and words[i - 1][1] == start and chosen[b][i - 1]
                touches_right = i + 1 < len(words) and words[i + 1][0] == end and chosen[b][i + 1]
                assert chosen[b][i] or touches_left or touches_right, f"row {b}: word {i} free"


@given(batch=batches(max_seq=40), seed=st.integers(0, 2**32))
@settings(deadline=None, max_examples=100)
def test_span_mask_shares_the_decision_within_a_span(batch, seed):
    masked, labels = span_mask(
        batch.input_ids,
        batch.special,
        batch.word_ids,
        mask_token_id=MASK,
        vocab_size=HUGE_VOCAB,
        generator=generator(seed),
    )
    for b, row in enumerate(observed_spans(batch, labels)):
        for span in row:
            start, end = span[0][0], span[-1][1]
            original = batch.input_ids[b, start:end].tolist()
            assert outcome(original, masked[b, start:end].tolist()) != "invalid"


def test_bad_inputs_are_refused():
    ids = torch.tensor([[CLS, 5, 6, SEP]])
    special = torch.tensor([[True, False, False, True]])
    words = torch.tensor([[-1, 0, 1, -1]])
    common = dict(mask_token_id=MASK, vocab_size=SMALL_VOCAB, generator=generator(0))
    cases = [
        (mlm, (ids[0], special[0]), {}, "input_ids"),
        (mlm, (ids.float(), special), {}, "input_ids"),
        (mlm, (ids, special.long()), {}, "special_tokens_mask"),
        (mlm, (ids, special[:, :3]), {}, "special_tokens_mask"),
        (mlm, (ids, special), {"mlm_probability": 1.5}, "mlm_probability"),
        (mlm, (ids, special), {"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "at most 1"),
        (mlm, (ids, special), {"mask_token_id": SMALL_VOCAB}, "mask_token_id"),
        (whole_word_mask, (ids, special, words[:, :3]), {}, "word_ids"),
        (whole_word_mask, (ids, special, words.int()), {}, "word_ids"),
        (span_mask, (ids, special, words), {"budget": -0.1}, "budget"),
        (span_mask, (ids, special, words), {"geometric_p": 0.0}, "geometric_p"),
        (span_mask, (ids, special, words), {"max_span": 0}, "max_span"),
    ]
    for function, args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            function(*args, **{**common, **kwargs})


# ---------------------------------------------------------------------------------------------
# Rates and splits over many draws (about 200k tokens each)
# ---------------------------------------------------------------------------------------------

SETTINGS = [(0.15, 0.8, 0.1), (0.3, 0.5, 0.4)]  # BERT's, and one that tests the scaling


@pytest.mark.parametrize("p, mask_replace_prob, random_replace_prob", SETTINGS)
def test_mlm_rate_and_split(p, mask_replace_prob, random_replace_prob):
    batch = random_batch(np.random.default_rng(0), rows=1000, seq=200)
    masked, labels = mlm(
        batch.input_ids,
        batch.special,
        mask_token_id=MASK,
        vocab_size=HUGE_VOCAB,
        generator=generator(1),
        mlm_probability=p,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
    )
    selected = labels != -100
    assert_binomial(int(selected.sum()), int((~batch.special).sum()), p)
    originals, outputs = batch.input_ids[selected].tolist(), masked[selected].tolist()
    outcomes = [outcome([o], [m]) for o, m in zip(originals, outputs, strict=True)]
    assert_split(outcomes, mask_replace_prob, random_replace_prob)


@pytest.mark.parametrize("p, mask_replace_prob, random_replace_prob", SETTINGS)
def test_whole_word_mask_rate_and_split(p, mask_replace_prob, random_replace_prob):
    """Words are selected by Bernoulli(p) each (binomial bound on the word count); the split is
    counted per word, since a word's sub-words share one decision."""
    batch = random_batch(np.random.default_rng(2), rows=1000, seq=200)
    masked, labels = whole_word_mask(
        batch.input_ids,
        batch.special,
        batch.word_ids,
        mask_token_id=MASK,
        vocab_size=HUGE_VOCAB,
        generator=generator(3),
        mlm_probability=p,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
    )
    chosen = word_selection(batch, labels)
    assert_binomial(sum(map(sum, chosen)), sum(map(len, chosen)), p)
    outcomes = []
    for b, (words, row) in enumerate(zip(batch.words, chosen, strict=True)):
        for (start, end), is_chosen in zip(words, row, strict=True):
            if is_chosen:
                original = batch.input_ids[b, start:end].tolist()
                outcomes.append(outcome(original, masked[b, start:end].tolist()))
    assert_split(outcomes, mask_replace_prob, random_replace_prob)


@pytest.mark.parametrize("budget", [0.0, 0.05, 0.14, 0.15, 0.28, 0.55, 1.0])
def test_span_budget_is_the_exact_ceiling(budget):
    """ceil(budget * n) in exact arithmetic (float noise would add one at 0.14 * 50)."""
    for num_tokens in range(2001):
        assert span_budget(num_tokens, budget) == math.ceil(Fraction(str(budget)) * num_tokens)


def test_span_starts_are_uniform_over_the_places_that_fit():
    """Rows of 10 one-token words and a budget of one token: one span per row. Its first word is
    uniform over the starts where its length fits, so P(first = i) = sum over L of
    P(L) [i <= 10 - L] / (11 - L)."""
    rows, num_words = 10_000, 10
    batch = build_batch(
        [[1] * num_words] * rows, [[FIRST_ID] * (num_words + 1)] * rows, num_words + 1
    )
    _, labels = span_mask(
        batch.input_ids,
        batch.special,
        batch.word_ids,
        mask_token_id=MASK,
        vocab_size=SMALL_VOCAB,
        generator=generator(6),
        budget=0.1,
    )
    spans = observed_spans(batch, labels)
    assert all(len(row) == 1 for row in spans)
    firsts = np.bincount([row[0][0][0] - 1 for row in spans], minlength=num_words)
    lengths = np.array([0.2 * 0.8 ** (k - 1) for k in range(1, 11)])
    lengths /= lengths.sum()
    expected = np.array(
        [
            sum(lengths[k - 1] / (num_words - k + 1) for k in range(1, 11) if i <= num_words - k)
            for i in range(num_words)
        ]
    )
    assert abs(expected.sum() - 1) < 1e-12
    p_value = stats.chisquare(firsts, expected * rows).pvalue
    assert p_value > MIN_P_VALUE, (firsts, expected * rows, p_value)


def test_span_lengths_follow_the_clipped_geometric():
    # the distribution, from the formula: P(k) = p (1 - p)^(k - 1) / sum over 1..10
    p, max_span = 0.2, 10
    expected = np.array([p * (1 - p) ** (k - 1) for k in range(1, max_span + 1)])
    expected /= expected.sum()
    np.testing.assert_allclose(span_length_probs(p, max_span).numpy(), expected, rtol=1e-12)
    assert abs(float(expected @ np.arange(1, max_span + 1)) - 3.8) < 0.05  # REFERENCE.md

    # long rows (about 100 words), so that room for a 10-word span is always left
    batch = random_batch(np.random.default_rng(4), rows=800, seq=256)
    masked, labels = span_mask(
        batch.input_ids,
        batch.special,
        batch.word_ids,
        mask_token_id=MASK,
        vocab_size=HUGE_VOCAB,
        generator=generator(5),
    )
    spans = [span for row in observed_spans(batch, labels) for span in row]
    lengths = np.bincount([len(span) for span in spans], minlength=max_span + 1)
    assert lengths[0] == 0 and len(lengths) == max_span + 1
    p_value = stats.chisquare(lengths[1:], expected * len(spans)).pvalue
    assert p_value > MIN_P_VALUE, (lengths[1:], expected * len(spans), p_value)

    outcomes = []
    for b, row in enumerate(observed_spans(batch, labels)):
        for span in row:
            start, end = span[0][0], span[-1][1]
            original = batch.input_ids[b, start:end].tolist()
            outcomes.append(outcome(original, masked[b, start:end].tolist()))
    assert_split(outcomes, 0.8, 0.1)


# ---------------------------------------------------------------------------------------------
# Against transformers' DataCollatorForLanguageModeling
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def sst2_sentences(data_dir: Path) -> list[str]:
    lines = (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines[1:]]  # after the header "sentence\tlabel"


@pytest.fixture(scope="module")
def sst2_encoded(tokenizer, sst2_sentences):
    return tokenizer(
        sst2_sentences,
        padding=True,
        return_tensors="pt",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )


def reference_collator(tokenizer, **kwargs) -> DataCollatorForLanguageModeling:
    with warnings.catch_warnings():  # the whole-word option warns that it drops 80/10/10
        warnings.simplefilter("ignore")
        return DataCollatorForLanguageModeling(tokenizer, **kwargs)


def test_word_ids_from_tokens_matches_the_fast_tokenizer(tokenizer, sst2_sentences, sst2_encoded):
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in sst2_encoded["input_ids"].tolist()]
    special = sst2_encoded["special_tokens_mask"].bool()
    ours = word_ids_from_tokens(tokens, special).tolist()
    for b in range(len(sst2_sentences)):
        reference = sst2_encoded.word_ids(b)
        assert canonical_words(ours[b]) == canonical_words(reference), sst2_sentences[b]


def test_mlm_equals_the_collator_bit_for_bit(tokenizer, sst2_sentences):
    """The collator's public path (seed=..., called on tokenized examples) for two batches in a
    row, against mlm on the same padded ids with a generator seeded the same."""
    collator = DataCollatorForLanguageModeling(tokenizer, seed=1234)
    ours = generator(1234)
    special_ids = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]
    for sentences in (sst2_sentences[:64], sst2_sentences[64:160]):
        examples = [tokenizer(s, return_special_tokens_mask=True) for s in sentences]
        reference = collator(examples)
        ids = tokenizer(sentences, padding=True, return_tensors="pt")["input_ids"]
        masked, labels = mlm(
            ids,
            special_tokens_mask_from(ids, special_ids),
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            generator=ours,
        )
        assert (labels != -100).any() and (masked != ids).any()
        assert torch.equal(masked, reference["input_ids"])
        assert torch.equal(labels, reference["labels"])


@given(
    ids=st.lists(st.lists(st.integers(0, 30521), min_size=12, max_size=12), min_size=1, max_size=6),
    special_rows=st.lists(
        st.lists(st.booleans(), min_size=12, max_size=12), min_size=6, max_size=6
    ),
    seed=st.integers(0, 2**32),
    p=probabilities,
    split=replace_probs(),
)
@settings(deadline=None, max_examples=100)
def test_mlm_equals_torch_mask_tokens(tokenizer, ids, special_rows, seed, p, split):
    """Every branch (early return when mask_replace_prob = 1 or random_replace_prob = 0)."""
    mask_replace_prob, random_replace_prob = split
    assume(mask_replace_prob == 1 or random_replace_prob / (1 - mask_replace_prob) <= 1)
    ids = torch.tensor(ids)
    special = torch.tensor(special_rows[: len(ids)])
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=p,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
    )
    collator.generator = generator(seed)
    reference = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
    masked, labels = mlm(
        ids,
        special,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        generator=generator(seed),
        mlm_probability=p,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
    )
    assert torch.equal(masked, reference[0]) and torch.equal(labels, reference[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_word_mask_equals_the_collator_with_its_words(tokenizer, sst2_encoded, seed):
    """With the words transformers finds from the character offsets: the same selection from the
    same generator; and with mask_replace_prob=1 (transformers 5.x's whole-word behaviour,
    all [MASK]) the same output, bit for bit."""
    ids, special = sst2_encoded["input_ids"], sst2_encoded["special_tokens_mask"]
    offsets = sst2_encoded["offset_mapping"]
    collator = reference_collator(tokenizer, whole_word_mask=True)
    collator.generator = generator(seed)
    reference = collator.torch_mask_tokens(ids.clone(), special, offsets)
    word_ids, _ = collator._calc_word_ids_and_prob_mask(offsets.numpy(), special.numpy())
    common = dict(
        input_ids=ids,
        special_tokens_mask=special.bool(),
        word_ids=torch.as_tensor(word_ids, dtype=torch.long),
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
    )
    all_mask = whole_word_mask(
        **common, generator=generator(seed), mask_replace_prob=1.0, random_replace_prob=0.0
    )
    assert torch.equal(all_mask[0], reference[0]) and torch.equal(all_mask[1], reference[1])
    bert = whole_word_mask(**common, generator=generator(seed))
    assert torch.equal(bert[1], reference[1])  # same selection ...
    selected = bert[1] != -100
    assert (bert[0][selected] != tokenizer.mask_token_id).any()  # ... but not all [MASK]


def test_whole_word_mask_rates_per_token_class_agree_with_the_collator(tokenizer, sst2_encoded):
    """Word-initial and ## continuation tokens of the SST-2 dev set, masked 8 times by each:
    minift with words from ## continuations, transformers with words from character offsets
    (which also joins e.g. "n ' t"). Both select each token with probability 0.15. The tokens of
    one word move together, so the variance of a class count is p (1 - p) sum over words of
    (tokens of the class in the word)^2; each count is checked against 0.15 and against the other.
    """
    repeats, p = 8, 0.15
    ids, special = sst2_encoded["input_ids"], sst2_encoded["special_tokens_mask"]
    offsets = sst2_encoded["offset_mapping"]
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    continuation = torch.tensor([[t.startswith("##") for t in row] for row in tokens])
    classes = {"initial": ~special.bool() & ~continuation, "continuation": continuation}

    collator = reference_collator(tokenizer, whole_word_mask=True)
    collator.generator = generator(10)
    hf_words, _ = collator._calc_word_ids_and_prob_mask(offsets.numpy(), special.numpy())
    our_words = word_ids_from_tokens(tokens, special.bool())
    ours = generator(11)
    counts = {name: {"minift": 0, "transformers": 0} for name in classes}
    for _ in range(repeats):
        reference = collator.torch_mask_tokens(ids.clone(), special, offsets)[1] != -100
        labels = whole_word_mask(
            ids,
            special.bool(),
            our_words,
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            generator=ours,
        )[1]
        for name, in_class in classes.items():
            counts[name]["transformers"] += int((reference & in_class).sum())
            counts[name]["minift"] += int(((labels != -100) & in_class).sum())

    def variance(word_ids: torch.Tensor, in_class: torch.Tensor) -> float:
        """p (1 - p) sum over words of (class tokens in the word)^2, per repeat times repeats."""
        total = 0
        for row_words, row_class in zip(word_ids.tolist(), in_class.tolist(), strict=True):
            sizes: dict[int, int] = {}  # both groupings number the words of a row uniquely
            for word, member in zip(row_words, row_class, strict=True):
                if member and word >= 0:
                    sizes[word] = sizes.get(word, 0) + 1
            total += sum(size * size for size in sizes.values())
        return repeats * p * (1 - p) * total

    for name, in_class in classes.items():
        trials = repeats * int(in_class.sum())
        assert trials > 5000, (name, trials)
        var_hf = variance(torch.as_tensor(hf_words), in_class)
        var_ours = variance(our_words, in_class)
        hf, mine = counts[name]["transformers"], counts[name]["minift"]
        assert abs(hf - p * trials) <= Z_BOUND * math.sqrt(var_hf), (name, hf, trials)
        assert abs(mine - p * trials) <= Z_BOUND * math.sqrt(var_ours), (name, mine, trials)
        assert abs(mine - hf) <= Z_BOUND * math.sqrt(var_hf + var_ours), (name, mine, hf)
