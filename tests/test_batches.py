"""Tests of minift/data/batches.py: a batch is padded once, by `pad_batch`, and equals the tokenizer's
own padded encoding of the same examples, tensor for tensor; the length-grouped sampler; `collate`
and the classification datasets' batches against transformers' padding; the length buckets that
give torch.compile a few shapes, with the losses of the unbucketed batches."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from minift.core.model import BertConfig
from minift.data.batches import (
    BucketedBatches,
    bucket_length,
    bucket_lengths,
    collate,
    length_grouped_batches,
    pad_batch,
    pad_to_bucket,
    with_lengths,
)
from minift.data.readers import read_conll, read_examples
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.tasks.classify import ClassificationDataset, SequenceClassifier, make_batches
from minift.tasks.tag import TokenClassificationDataset, TokenClassifier

KEYS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def splits(data_dir):
    sst2 = read_examples(data_dir / "sst2" / "dev.tsv", text_col="sentence", label_col="label")
    mrpc = read_examples(
        data_dir / "mrpc" / "dev.tsv",
        text_col="#1 String",
        pair_col="#2 String",
        label_col="Quality",
    )
    conll = read_conll(data_dir / "conll2003" / "dev.txt", column=2)
    return {"sst2": sst2[:60], "mrpc": mrpc[:60], "conll": conll[:60]}


def _assert_equal(batch, encoding):
    for key in KEYS:
        assert batch[key].dtype == torch.long
        assert torch.equal(batch[key], encoding[key]), key


def test_unpadded_rows_padded_once_equal_the_tokenizers_padding(tokenizer, splits):
    texts = [ex.text for ex in splits["mrpc"][:16]]
    pairs = [ex.pair for ex in splits["mrpc"][:16]]
    rows = tokenizer(texts, pairs, max_length=40, padding=False)
    padded = tokenizer(texts, pairs, max_length=40, padding=True)
    assert [len(row) for row in rows["input_ids"]] == padded.attention_mask.sum(1).tolist()
    batch = pad_batch(rows["input_ids"], rows["token_type_ids"], tokenizer.pad_token_id)
    _assert_equal(batch, padded)
    assert rows.word_ids == [
        w[: len(r)] for w, r in zip(padded.word_ids, rows["input_ids"], strict=True)
    ]


@settings(
    deadline=None, max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    task=st.sampled_from(["sst2", "mrpc"]),
    max_length=st.sampled_from([None, 12, 64]),
)
def test_classification_batches_equal_the_tokenizers_padded_encode(
    tokenizer, splits, data, task, max_length
):
    examples = splits[task]
    dataset = ClassificationDataset(examples, tokenizer, max_length=max_length, chunk_size=7)
    indices = data.draw(st.lists(st.integers(0, len(examples) - 1), min_size=1, max_size=10))
    chosen = [examples[i] for i in indices]
    pairs = None if task == "sst2" else [ex.pair for ex in chosen]
    encoding = tokenizer([ex.text for ex in chosen], pairs, max_length=max_length, padding=True)
    _assert_equal(dataset.batch(indices), encoding)


@settings(
    deadline=None, max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_token_batches_equal_the_tokenizers_padded_encode(tokenizer, splits, data):
    words = [s.words for s in splits["conll"]]
    dataset = TokenClassificationDataset(words, tokenizer, max_length=512, chunk_size=7)
    assert dataset.plan.num_windowed == 0  # each piece is its whole sentence
    indices = data.draw(st.lists(st.integers(0, len(words) - 1), min_size=1, max_size=10))
    encoding = tokenizer(
        [words[i] for i in indices], is_split_into_words=True, padding=True, truncation=False
    )
    _assert_equal(dataset.batch(indices), encoding)
    assert [dataset.word_ids[i] for i in indices] == [
        w[:n]
        for w, n in zip(encoding.word_ids, encoding.attention_mask.sum(1).tolist(), strict=True)
    ]


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def _padding(lengths: list[int], batches: list[list[int]]) -> int:
    """Pad tokens when each batch is padded to its longest member."""
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


_lengths = st.lists(st.integers(1, 512), min_size=0, max_size=300)


def _hf_batch(tokenizer, examples, max_length):
    texts = [ex.text for ex in examples]
    pairs = None if examples[0].pair is None else [ex.pair for ex in examples]
    return tokenizer(
        texts, pairs, max_length=max_length, padding=True, truncation=True, return_tensors="pt"
    )


def _assert_batch_equal(batch, reference):
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[name].dtype == torch.long
        assert torch.equal(batch[name], reference[name]), name


@pytest.fixture(scope="module")
def sst2_dev(data_dir):
    return read_examples(data_dir / "sst2" / "dev.tsv", text_col="sentence", label_col="label")


@pytest.fixture(scope="module")
def mrpc_dev(data_dir):
    return read_examples(
        data_dir / "mrpc" / "dev.tsv",
        text_col="#1 String",
        pair_col="#2 String",
        label_col="Quality",
    )


@settings(deadline=None, max_examples=150)
@given(
    lengths=_lengths,
    batch_size=st.integers(1, 16),
    multiplier=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    drop_last=st.booleans(),
)
def test_grouped_batches_cover_every_index_once(lengths, batch_size, multiplier, seed, drop_last):
    def run():
        return length_grouped_batches(
            lengths,
            batch_size,
            generator=torch.Generator().manual_seed(seed),
            group_size_multiplier=multiplier,
            drop_last=drop_last,
        )

    batches = run()
    flat = [i for b in batches for i in b]
    short = len(lengths) % batch_size
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(len(lengths)))
    assert len(flat) == len(lengths) - (short if drop_last else 0)
    sizes = sorted(len(b) for b in batches)
    expected = [short] if short and not drop_last else []
    assert sizes == expected + [batch_size] * (len(lengths) // batch_size)
    for b in batches:  # each batch longest first
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert run() == batches  # same seed, same batches


def test_grouped_batches_draw_both_their_members_and_their_order():
    """With ``shuffle`` the generator draws the indices before they are cut into mega-batches,
    and the order of the batches after. 64 sentences of lengths 0..63, batches of 4: with one
    mega-batch, batches in the order they were cut would come longest first (a random order of
    16 batches is that one with probability 1/16!); with mega-batches of 8, undrawn indices
    would put indices 0-7, 8-15, ... in the same mega-batch, so no batch would mix two such
    blocks (with drawn indices every batch is unmixed with probability well below 1e-6)."""
    lengths = list(range(64))
    for seed in range(3):
        whole = length_grouped_batches(lengths, 4, generator=torch.Generator().manual_seed(seed),
                                       group_size_multiplier=16)
        longest = [max(lengths[i] for i in b) for b in whole]
        assert longest != sorted(longest, reverse=True), seed
        cut = length_grouped_batches(lengths, 4, generator=torch.Generator().manual_seed(seed),
                                     group_size_multiplier=2)
        assert any(len({i // 8 for i in b}) > 1 for b in cut), seed


@settings(deadline=None, max_examples=100)
@given(
    data=st.data(),
    batch_size=st.integers(1, 16),
    num_batches=st.integers(0, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_grouped_batches_pad_no_more_than_random_batches(data, batch_size, num_batches, seed):
    # With one mega-batch holding everything and all batches full, grouping is the least padding
    # any cut into batches can have (the i-th largest batch maximum is at least the
    # ((i-1)*batch_size+1)-th largest length), so no random batching pads less. (With a short last
    # batch that is not so: lengths [10, 1, 1] in batches of 2 pad least as [10], [1, 1].)
    n = batch_size * num_batches
    lengths = data.draw(st.lists(st.integers(1, 512), min_size=n, max_size=n))
    g = torch.Generator().manual_seed(seed)
    grouped = length_grouped_batches(
        lengths, batch_size, generator=g, group_size_multiplier=max(1, num_batches)
    )
    for _ in range(5):
        order = torch.randperm(n, generator=g).tolist()
        random_batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        assert _padding(lengths, grouped) <= _padding(lengths, random_batches)


def test_grouped_batches_on_sst2_pad_far_less_than_random(data_dir):
    examples = read_examples(data_dir / "sst2" / "train.tsv", text_col="sentence")
    lengths = [len(ex.text.split()) for ex in examples]
    g = torch.Generator().manual_seed(0)
    grouped = length_grouped_batches(lengths, 32, generator=g)
    order = torch.randperm(len(lengths), generator=g).tolist()
    random_batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    # Many mega-batches of 1,600 sentences: grouping is not the optimum here, but sentence lengths
    # spread widely, so it must at least halve the padding of random batches.
    assert 2 * _padding(lengths, grouped) < _padding(lengths, random_batches)


@settings(deadline=None, max_examples=60)
@given(lengths=_lengths, batch_size=st.integers(1, 16))
def test_unshuffled_batches_are_a_stable_sort(lengths, batch_size):
    batches = length_grouped_batches(lengths, batch_size, generator=None, shuffle=False)
    flat = [i for b in batches for i in b]
    assert flat == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    assert all(len(b) == batch_size for b in batches[:-1])


def test_grouped_batches_refuse_bad_arguments():
    with pytest.raises(ValueError, match="Generator"):
        length_grouped_batches([1, 2], 1, generator=None)
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_batches([1, 2], 0, generator=None, shuffle=False)
    with pytest.raises(ValueError, match="group_size_multiplier"):
        length_grouped_batches([1, 2], 1, generator=None, shuffle=False, group_size_multiplier=0)


@pytest.mark.parametrize("max_length", [None, 128, 16])
def test_collate_equals_transformers_padding(hf_tokenizer, sst2_dev, mrpc_dev, max_length):
    for examples in (sst2_dev[:24], mrpc_dev[:24]):
        batch = collate(
            examples, hf_tokenizer, max_length, labels=[int(ex.label) for ex in examples]
        )
        _assert_batch_equal(batch, _hf_batch(hf_tokenizer, examples, max_length))
        assert batch["labels"].tolist() == [int(ex.label) for ex in examples]
    texts = [ex.text for ex in sst2_dev[:5]]
    _assert_batch_equal(
        collate(texts, hf_tokenizer, max_length), _hf_batch(hf_tokenizer, sst2_dev[:5], max_length)
    )


@settings(
    deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.data(),
    max_length=st.sampled_from([None, 12, 64]),
    task=st.sampled_from(["sst2", "mrpc"]),
)
def test_dataset_batches_equal_collate_and_transformers(
    hf_tokenizer, sst2_dev, mrpc_dev, data, max_length, task
):
    examples = (sst2_dev if task == "sst2" else mrpc_dev)[:60]
    dataset = ClassificationDataset(
        examples, hf_tokenizer, max_length=max_length, label_ids=range(len(examples)), chunk_size=7
    )
    indices = data.draw(st.lists(st.integers(0, len(examples) - 1), min_size=1, max_size=10))
    chosen = [examples[i] for i in indices]
    batch = dataset.batch(indices)
    _assert_batch_equal(batch, collate(chosen, hf_tokenizer, max_length))
    _assert_batch_equal(batch, _hf_batch(hf_tokenizer, chosen, max_length))
    assert batch["labels"].tolist() == indices


def test_make_batches_cover_every_example_with_its_label(hf_tokenizer, mrpc_dev):
    examples = mrpc_dev[:50]
    batches = make_batches(
        examples,
        list(range(len(examples))),  # label = index, to find each row's example
        hf_tokenizer,
        batch_size=8,
        max_length=64,
        generator=torch.Generator().manual_seed(1),
        shuffle=True,
    )
    seen = [i for b in batches for i in b["labels"].tolist()]
    assert sorted(seen) == list(range(len(examples)))
    for b in batches:
        chosen = [examples[i] for i in b["labels"].tolist()]
        _assert_batch_equal(b, _hf_batch(hf_tokenizer, chosen, 64))
    again = make_batches(
        examples,
        list(range(len(examples))),
        hf_tokenizer,
        batch_size=8,
        max_length=64,
        generator=torch.Generator().manual_seed(1),
        shuffle=True,
    )
    assert [b["labels"].tolist() for b in again] == [b["labels"].tolist() for b in batches]


def test_dataset_with_minift_tokenizer_equals_transformers(hf_tokenizer, minilm_dir, mrpc_dev):
    from minift.data.tokenizer import Tokenizer

    examples = mrpc_dev[:40]
    ours = ClassificationDataset(examples, Tokenizer.from_pretrained(minilm_dir), max_length=48)
    _assert_batch_equal(ours.batch(range(len(examples))), _hf_batch(hf_tokenizer, examples, 48))


def test_batches_refuse_mixed_pairs_left_padding_and_bad_labels(
    hf_tokenizer, sst2_dev, mrpc_dev, minilm_dir
):
    with pytest.raises(ValueError, match="pair"):
        collate([sst2_dev[0], mrpc_dev[0]], hf_tokenizer, 32)
    with pytest.raises(ValueError, match="one label"):
        collate(sst2_dev[:3], hf_tokenizer, 32, labels=[0, 1])
    with pytest.raises(ValueError, match="one label id"):
        ClassificationDataset(sst2_dev[:3], hf_tokenizer, max_length=32, label_ids=[0])
    left = AutoTokenizer.from_pretrained(minilm_dir, padding_side="left")
    with pytest.raises(ValueError, match="pads on the right"):
        ClassificationDataset(sst2_dev[:8], left, max_length=32)


@settings(deadline=None, max_examples=20)
@given(row_lengths=st.lists(st.integers(0, 12), min_size=1, max_size=8))
def test_with_lengths_counts_each_rows_real_tokens_on_the_host(row_lengths):
    """`lengths` is each row's own length (what the unpadded rows held), a list of ints, and
    the batch's tensors are the same objects; a mask with padding before a real token (left
    padding) is refused, since the fast model would place the real tokens first."""
    rows = [torch.arange(1, n + 1) for n in row_lengths]
    batch = pad_batch(rows, None, 0)
    counted = with_lengths(batch)
    assert counted["lengths"] == row_lengths
    assert all(type(n) is int for n in counted["lengths"])
    assert all(counted[k] is batch[k] for k in batch)
    if any(0 < n < max(row_lengths) for n in row_lengths):  # flipped, a row pads on the left
        flipped = dict(batch, attention_mask=batch["attention_mask"].flip(1))
        with pytest.raises(ValueError, match="padded on the right"):
            with_lengths(flipped)


# --- Buckets: a few shapes for torch.compile, the same losses ---------------------------------------


@settings(deadline=None, max_examples=25)
@given(longest=st.integers(1, 2048), count=st.integers(1, 6))
def test_bucket_lengths_end_at_the_longest_and_pad_less_than_twice(longest, count):
    """At most ``count`` buckets, the last ``longest``, each at most twice the one before; so
    every length above the smallest bucket pads to less than twice itself, and every length
    up to ``longest`` has a bucket."""
    buckets = bucket_lengths(longest, count)
    assert buckets[-1] == longest and len(buckets) <= count and buckets == sorted(set(buckets))
    assert all(b <= 2 * a for a, b in zip(buckets, buckets[1:], strict=False))
    for length in range(1, longest + 1):
        bucket = bucket_length(length, buckets)
        assert bucket >= length and bucket in buckets
        assert length <= buckets[0] or bucket < 2 * length
    assert bucket_lengths(128) == [16, 32, 64, 128]


def test_pad_to_bucket_pads_each_key_with_its_own_value_and_refuses_the_unknown():
    """Each (batch, seq) tensor goes to the bucket of its own width, padded with the pad id
    (ids), 0 (masks, token types) or -100 (labels); other tensors pass unchanged. A decoder's
    tensors (a width of their own) get their own bucket. An unknown 2-D key, or a width past
    the largest bucket, is refused by name."""
    ids = torch.tensor([[101, 7, 102], [101, 102, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(),
             "token_type_ids": torch.zeros_like(ids), "labels": torch.tensor([1, 0]),
             "decoder_input_ids": torch.tensor([[5], [5]]),
             "decoder_attention_mask": torch.ones(2, 1, dtype=torch.long),
             "start_positions": torch.tensor([0, 1])}
    out = pad_to_bucket(batch, [1, 4, 8], pad_token_id=0)
    assert out["input_ids"].tolist() == [[101, 7, 102, 0], [101, 102, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert out["token_type_ids"].tolist() == [[0] * 4] * 2
    assert out["labels"] is batch["labels"] and out["start_positions"] is batch["start_positions"]
    assert out["decoder_input_ids"].shape == (2, 1)  # its own width, already a bucket
    token_labels = pad_to_bucket({"input_ids": ids, "labels": torch.ones_like(ids)}, [4], 9)
    assert token_labels["labels"].tolist() == [[1, 1, 1, -100]] * 2
    assert token_labels["input_ids"][:, 3].tolist() == [9, 9]
    with pytest.raises(ValueError, match="'word_ids'"):
        pad_to_bucket({"input_ids": ids, "word_ids": ids}, [4], 0)
    with pytest.raises(ValueError, match="largest bucket \\(2\\)"):
        pad_to_bucket(batch, [1, 2], 0)
    lazy = BucketedBatches([batch, batch], [4, 8], 0)
    assert len(lazy) == 2 and torch.equal(lazy[1]["input_ids"], out["input_ids"])


def tiny_heads(seed: int) -> dict:
    """A sentence and a token classifier on one tiny random encoder, without dropout (so that
    training steps compare exactly: compiled code draws dropout masks of its own)."""
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    sentence = speed_up(SequenceClassifier(config, 3, pooling="mean")).eval()
    token = speed_up(TokenClassifier(config, 4)).eval()
    token.bert.load_state_dict(sentence.bert.state_dict())
    return {"sentence": sentence, "token": token}


@settings(deadline=None, max_examples=15)
@given(lengths=st.lists(st.integers(1, 24), min_size=1, max_size=5), seed=st.integers(0, 99),
       unpad=st.booleans())
def test_a_bucketed_batch_gives_the_unbucketed_loss(lengths, seed, unpad):
    """Padding a batch up to its bucket changes no number: the loss (a label per sentence, and a
    label per token with -100 at the padding) and the logits at real positions equal the
    unbucketed batch's, on the padded and the unpadded path (no dropout; fp32, atol 1e-6 and rtol 1e-5:
    the padded path's attention sums over more masked keys, in another order)."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1000, 30000, (n,), generator=gen) for n in lengths]
    batch = pad_batch(rows, None, pad_token_id=0)
    real = batch["attention_mask"].bool()
    token_labels = torch.randint(0, 4, real.shape, generator=gen).masked_fill(~real, -100)
    sentence_labels = torch.randint(0, 3, (len(rows),), generator=gen)
    buckets = bucket_lengths(32)
    for name, model in tiny_heads(seed).items():
        model.bert.unpad = unpad
        labelled = {**batch, "labels": token_labels if name == "token" else sentence_labels}
        bucketed = pad_to_bucket(labelled, buckets, pad_token_id=0)
        assert bucketed["input_ids"].shape[1] == bucket_length(max(lengths), buckets)
        with torch.no_grad():
            plain, padded = model(**labelled), model(**bucketed)
        torch.testing.assert_close(padded.loss, plain.loss, atol=1e-6, rtol=1e-5)
        logits = padded.logits[:, : real.shape[1]][real] if name == "token" else padded.logits
        want = plain.logits[real] if name == "token" else plain.logits
        torch.testing.assert_close(logits, want, atol=1e-6, rtol=1e-5)


def length_batches(lengths, buckets=None, seed=0) -> list[dict]:
    """One batch of three sentences a longest length, labelled; padded to ``buckets`` if given."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for longest in lengths:
        rows = [torch.randint(1000, 30000, (n,), generator=gen) for n in (longest, 3, 4)]
        batch = {**pad_batch(rows, None, 0), "labels": torch.tensor([0, 1, 2])}
        batches.append(batch if buckets is None else pad_to_bucket(batch, buckets, 0))
    return batches


def graphs_compiled(model, batches, **options) -> list[int]:
    """How many graphs torch._dynamo compiled at each training step of ``model`` compiled with
    ``options`` for static shapes."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=False, **options)
    seen = [0]
    for batch in batches:
        compiled(**batch).loss.backward()
        seen.append(counters["stats"]["unique_graphs"])
    return [after - before for before, after in zip(seen, seen[1:], strict=False)]


def test_buckets_compile_once_a_shape_where_lengths_compile_once_each():
    """Compiled for static shapes, five batches of five lengths compile new graphs at every
    step; padded into two buckets, only at the steps that bring a new bucket (dynamo's graph
    count; the ``eager`` backend traces as inductor does but runs the graphs as they are, which
    keeps the test fast)."""
    model = tiny_heads(0)["sentence"].train()
    model.bert.unpad = False  # --compile's path (minift.run.recipes.skeleton.static_shapes)
    lengths = (5, 12, 20, 9, 31)
    plain = graphs_compiled(model, length_batches(lengths), backend="eager")
    bucketed = graphs_compiled(model, length_batches(lengths, [16, 32]), backend="eager")
    assert all(n > 0 for n in plain), plain
    assert [n > 0 for n in bucketed] == [True, False, True, False, False], bucketed  # 16, 32
    assert sum(bucketed) < sum(plain)


@pytest.mark.slow  # inductor generates and builds C++ for the forward and backward graphs
def test_compiled_step_on_buckets_equals_eager():
    """torch.compile for static shapes (inductor, as ``--compile`` runs it) on batches of three
    lengths padded into one bucket: it compiles once, and the loss and every gradient equal
    eager's on each batch (fp32, atol 1e-5, rtol 1e-4: inductor fuses and reorders sums)."""
    model = tiny_heads(0)["sentence"].train()
    model.bert.unpad = False
    batches = length_batches((5, 12, 16), [16, 32])

    def step(fn, batch):
        model.zero_grad(set_to_none=True)
        loss = fn(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=False)
    graphs = []
    for batch in batches:
        (loss, grads), (want, want_grads) = step(compiled, batch), step(model, batch)
        graphs.append(counters["stats"]["unique_graphs"])
        torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-4)
        assert grads.keys() == want_grads.keys()
        for name in want_grads:
            torch.testing.assert_close(grads[name], want_grads[name], atol=1e-5, rtol=1e-4,
                                       msg=name)
    assert graphs[0] >= 1 and graphs == [graphs[0]] * 3  # one bucket: no recompilation
