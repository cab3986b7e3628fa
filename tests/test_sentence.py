"""minift.core.sentence: mean-pooled, normalised sentence embeddings against sentence-transformers'
`encode` on the published MiniLM checkpoint, normalised and not (atol 1e-5 on each coordinate;
they agree to about 1e-6)."""

import csv

import pytest
import torch

from minift.core.sentence import encode


@pytest.fixture(scope="module")
def sst2_sentences(data_dir):
    with open(data_dir / "sst2" / "dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows[:300]]


def test_sentence_embeddings_match_sentence_transformers(minilm, minilm_dir, sst2_sentences):
    from sentence_transformers import SentenceTransformer

    model, tokenizer = minilm
    reference = SentenceTransformer(str(minilm_dir), device="cpu")
    ref = torch.as_tensor(reference.encode(sst2_sentences, batch_size=32,
                                           convert_to_numpy=True))
    ours = encode(model, tokenizer, sst2_sentences, batch_size=32,
                  max_length=reference.max_seq_length)
    cosine = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    assert cosine.min().item() >= 0.99999, f"lowest cosine {cosine.min().item():.7f}"
    # Each coordinate too: a cosine of 0.99999 lets coordinates of unit vectors differ by 4e-3,
    # while the two agree to 2e-7 (float32 sums in another order).
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(ours)), atol=1e-5, rtol=0)
    # Without normalisation (what mean pooling gives a classifier): the reference's Transformer
    # and Pooling modules alone; unit vectors above would hide a wrong scale.
    pooled = SentenceTransformer(modules=[reference[0], reference[1]], device="cpu")
    few = sst2_sentences[:32]
    ref = torch.as_tensor(pooled.encode(few, batch_size=32, convert_to_numpy=True))
    ours = encode(model, tokenizer, few, batch_size=32, max_length=reference.max_seq_length,
                  normalize=False)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
