"""minift.core.sentence: mean-pooled, normalised sentence embeddings against sentence-transformers'
`encode` on the published MiniLM checkpoint (atol 1e-5)."""

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
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(ours)), atol=1e-5, rtol=0)
