"""minift.core.contrastive, SetFit's contrastive phase, against the setfit library and
sentence-transformers: the pairs, the pair losses, and the loss on a real batch.

minift's sentence embeddings equal sentence-transformers' `encode` on the published checkpoint
(tests/test_sentence.py holds that); here the pair loss on a real batch is compared end to end,
which goes through the same embeddings.
"""


import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minift.core.contrastive import (
    contrastive_loss,
    contrastive_pairs,
    cosine_similarity_loss,
    embed_pairs,
)
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import load_bert

pytestmark = pytest.mark.usefixtures("one_thread")


def _setfit_pairs(labels, sampling, num_iterations):
    from setfit.sampler import ContrastiveDataset

    sentences = [f"s{i}" for i in range(len(labels))]
    dataset = ContrastiveDataset(sentences, labels, False, num_iterations, sampling)
    return [(int(p["sentence_1"][1:]), int(p["sentence_2"][1:]), p["label"]) for p in dataset]


@settings(deadline=None, max_examples=40)
@given(
    labels=st.lists(st.integers(0, 4), min_size=2, max_size=30),
    sampling=st.sampled_from(["oversampling", "undersampling", "unique"]),
    num_iterations=st.sampled_from([None, None, 1, 3]),
)
def test_pairs_equal_the_setfit_library(labels, sampling, num_iterations):
    assume(len(set(labels)) >= 2)
    ours = contrastive_pairs(labels, sampling=sampling, num_iterations=num_iterations, seed=42)
    theirs = _setfit_pairs(labels, sampling, num_iterations)
    positive = [p for p in ours if p[2] == 1.0]
    assert len(positive) == sum(1 for p in theirs if p[2] == 1.0)
    assert len(ours) - len(positive) == sum(1 for p in theirs if p[2] == 0.0)
    assert ours == theirs  # seed 42 is setfit's: the same pairs in the same order
    assert all((labels[i] == labels[j]) == (y == 1.0) for i, j, y in ours)


def test_pair_counts_for_16_shots_of_two_classes():
    labels = [0] * 16 + [1] * 16
    n = len(labels)
    positives, negatives = 2 * (16 * 17 // 2), 16 * 16  # self-pairs count as positives
    expected = {
        "unique": positives + negatives,
        "oversampling": 2 * max(positives, negatives),
        "undersampling": 2 * min(positives, negatives),
    }
    assert positives + negatives == n * (n + 1) // 2
    for sampling, count in expected.items():
        assert len(contrastive_pairs(labels, sampling=sampling)) == count
        assert len(_setfit_pairs(labels, sampling, None)) == count
    assert len(contrastive_pairs(labels, num_iterations=20)) == 2 * 20 * n


def test_other_seeds_shuffle_the_same_pairs():
    labels = [0, 0, 1, 1, 2, 2, 2]
    a = contrastive_pairs(labels, sampling="unique", seed=0)
    b = contrastive_pairs(labels, sampling="unique", seed=1)
    assert a != b and sorted(a) == sorted(b)
    assert a == contrastive_pairs(labels, sampling="unique", seed=0)


def test_one_class_is_refused_and_a_lone_example_keeps_only_its_self_pair():
    with pytest.raises(ValueError, match="at least two classes"):
        contrastive_pairs([1, 1, 1])
    with pytest.raises(ValueError, match="at least two classes"):
        contrastive_pairs([])
    labels = [0, 0, 0, 1]  # class 1 has a single example: its only positive is (3, 3)
    pairs = contrastive_pairs(labels, sampling="unique")
    assert [p for p in pairs if 3 in p[:2] and p[2] == 1.0] == [(3, 3, 1.0)]
    assert pairs == _setfit_pairs(labels, "unique", None)


@settings(deadline=None, max_examples=30)
@given(
    n=st.integers(1, 12),
    dim=st.integers(2, 16),
    seed=st.integers(0, 2**31),
    margin=st.floats(0.1, 1.5),
)
def test_pair_losses_equal_sentence_transformers(n, dim, seed, margin):
    from sentence_transformers.sentence_transformer.losses import (
        ContrastiveLoss,
        CosineSimilarityLoss,
    )

    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    y = torch.randint(0, 2, (n,), generator=g).float()
    reference = CosineSimilarityLoss(None).compute_loss_from_embeddings([a, b], y)
    torch.testing.assert_close(cosine_similarity_loss(a, b, y), reference, rtol=1e-6, atol=1e-7)
    reference = ContrastiveLoss(None, margin=margin).compute_loss_from_embeddings([a, b], y)
    torch.testing.assert_close(contrastive_loss(a, b, y, margin), reference, rtol=1e-6, atol=1e-7)
    reference = ContrastiveLoss(None).compute_loss_from_embeddings([a, b], y)  # the defaults
    torch.testing.assert_close(contrastive_loss(a, b, y), reference, rtol=1e-6, atol=1e-7)


def test_loss_on_a_real_batch_equals_sentence_transformers(minilm, minilm_dir, sst2):
    """Tokenize, embed and score the same pairs in both libraries (eval mode: no dropout)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    texts = [ex.text for ex in sst2[1][:10]]
    pairs = contrastive_pairs([ex.label for ex in sst2[1][:10]], sampling="unique")[:16]
    first, second = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    labels = torch.tensor([p[2] for p in pairs])
    reference_model = SentenceTransformer(str(minilm_dir), device="cpu").eval()
    features = [
        reference_model.tokenize([texts[i] for i in first.tolist()]),
        reference_model.tokenize([texts[i] for i in second.tolist()]),
    ]
    with torch.no_grad():
        reference = CosineSimilarityLoss(reference_model)(features, labels)
    encoder, tokenizer = minilm
    with torch.no_grad():
        a, b = embed_pairs(encoder, tokenizer(texts, max_length=256), first, second)
    torch.testing.assert_close(
        cosine_similarity_loss(a, b, labels), reference, rtol=1e-4, atol=1e-6
    )


def test_deduplicated_pairs_give_the_plain_loss_and_gradients(tiny_dir, sst2):
    texts = [ex.text for ex in sst2[0][:6]]
    tokens = Tokenizer.from_pretrained(tiny_dir)(texts, max_length=64)
    first, second = torch.tensor([0, 0, 1, 2, 5, 5]), torch.tensor([1, 0, 3, 2, 4, 1])
    labels = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    results = []
    for dedupe in (True, False):
        encoder = load_bert(tiny_dir).eval()
        a, b = embed_pairs(encoder, tokens, first, second, dedupe=dedupe)
        loss = cosine_similarity_loss(a, b, labels)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in encoder.layers.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    for g1, g2 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
