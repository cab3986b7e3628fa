"""minift.tasks.seq2seq: the batches held to what transformers' tokenizer and
``EncoderDecoderModel`` compute from the same texts, generation in input order, and the dev scores
held to sacrebleu and rouge-score on the texts the model wrote.

The model is the tiny random BERT of conftest (2 layers, hidden 32, 64 positions, MiniLM's
tokenizer) warm-started into an encoder-decoder; the real weights do not matter here.
"""

import math
import warnings

import pytest
import sacrebleu
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

from minift.data.text_pairs import TextPair, group_by_source
from minift.data.tokenizer import Tokenizer
from minift.tasks.seq2seq import (
    Seq2SeqDataset,
    Seq2SeqModel,
    generate_texts,
    is_uncased,
    seq2seq_metrics,
    source_rows,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the", "Golden", "Palace", "serves", "cheap", "Thai", "food", "near", "the", "river",
         "family-friendly", "café", "5", "out", "of", "rating[high]", "name[Aromi],", "unaffable"]
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join)


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def model(tiny):
    """Warm-started, then its fresh cross-attention made large (N(0, 0.5)) so that what it
    writes depends on the source, as a trained model's does."""
    model = Seq2SeqModel.warm_started(tiny, seed=1).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.decoder.named_parameters():
            if ".cross_attention." in name and name.endswith("weight"):
                param.normal_(0, 0.5)
    return model


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(texts, texts), min_size=1, max_size=5),
       max_length=st.integers(3, 20), max_target_length=st.integers(2, 20))
def test_a_batch_is_what_transformers_tokenizer_and_shift_give(pairs, max_length,
                                                                max_target_length, tokenizer,
                                                                hf_tokenizer):
    """Sources: the reference tokenizer's ids with truncation to max_length (exactly); labels:
    its ids of the target without the leading [CLS], cut to max_target_length with [SEP] kept,
    -100 at padding; decoder inputs: transformers' own shift_tokens_right of those labels."""
    rows = [TextPair(s, t, i + 2) for i, (s, t) in enumerate(pairs)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = Seq2SeqDataset(rows, tokenizer, max_length=max_length,
                              max_target_length=max_target_length)
    batch = data.batch(list(range(len(rows))))
    want = hf_tokenizer([s for s, _ in pairs], max_length=max_length, truncation=True,
                        padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], want["input_ids"])
    assert torch.equal(batch["attention_mask"], want["attention_mask"])
    sep = hf_tokenizer.sep_token_id
    labels = []
    for _, target in pairs:
        body = hf_tokenizer(target, add_special_tokens=False)["input_ids"]
        labels.append(body[: max_target_length - 1] + [sep])
    width = max(map(len, labels))
    padded = torch.tensor([row + [-100] * (width - len(row)) for row in labels])
    assert torch.equal(batch["labels"], padded)
    shifted = shift_tokens_right(padded, hf_tokenizer.pad_token_id, hf_tokenizer.cls_token_id)
    assert torch.equal(batch["decoder_input_ids"], shifted)
    assert torch.equal(batch["decoder_attention_mask"], (shifted != 0).long())
    # truncation is counted and said: one warning for the sources, one for the targets
    cut = sum(len(hf_tokenizer(s)["input_ids"]) > max_length for s, _ in pairs)
    assert data.truncated_sources == cut
    messages = [str(w.message) for w in caught]
    assert (f"{cut} of {len(rows)} sources are longer than `max_length` {max_length} tokens"
            in " ".join(messages)) == (cut > 0)


def test_the_loss_on_a_batch_is_encoder_decoder_models_from_the_labels_alone(model, tokenizer,
                                                                             tmp_path):
    """Our batch (explicit decoder inputs) through our model = transformers'
    EncoderDecoderModel given only the labels (it shifts them itself): same loss, 1e-5."""
    rows = [TextPair("name[Aromi], food[Thai]", "Aromi serves Thai food.", 2),
            TextPair("name[Golden Palace]", "The Golden Palace is a café by the river.", 3)]
    batch = Seq2SeqDataset(rows, tokenizer, max_length=32, max_target_length=32).batch([0, 1])
    model.save_pretrained(tmp_path)
    hf = transformers.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = model(**batch).loss
        want = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  labels=batch["labels"]).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_generated_texts_come_back_in_input_order(model, tokenizer):
    """Sources batched by length (longest first) and padded: each text is the one generated
    for that source alone, in the order given."""
    sources = ["name[Aromi]", "name[Golden Palace], food[Thai], area[riverside], rating[high]",
               "food[Thai]", "name[Aromi], area[city centre]", ""]
    rows, _ = source_rows(sources, tokenizer, 32)
    together = generate_texts(model, tokenizer, rows, batch_size=2, max_new_tokens=6,
                              device="cpu")
    alone = [generate_texts(model, tokenizer, [row], batch_size=1, max_new_tokens=6,
                            device="cpu")[0] for row in rows]
    assert together == alone and len(set(alone)) > 1  # distinct texts, or order is untested


def test_dev_scores_are_sacrebleu_and_rouge_score_on_the_written_texts(model, tokenizer):
    """BLEU: sacrebleu's corpus_bleu (lowercased: MiniLM is uncased) over one text per distinct
    source, every reference of that source a stream; ROUGE-L: rouge-score's best-reference
    F-measure (no stemmer, as minift's ROUGE-L), averaged, times 100. Tolerance 1e-9. The
    references hold pieces of what the model writes for their source, so that neither score is
    0 (a random model's words match no hand-written reference): the first in capitals (the
    uncased model writes lowercase), the third the better ROUGE-L of its source with no n-gram
    of BLEU's in common."""
    rows, _ = source_rows(["name[Aromi]", "food[Thai]"], tokenizer, 32)
    aromi, thai = (text.split() for text in generate_texts(
        model, tokenizer, rows, batch_size=2, max_new_tokens=8, device="cpu"))
    pairs = [TextPair("name[Aromi]", " ".join(aromi[:4]).upper() + " is a Thai café.", 2),
             TextPair("food[Thai]", "Thai food: " + " ".join(thai) + " is served here.", 3),
             TextPair("name[Aromi]", " and ".join(aromi[:7]), 4)]
    examples = group_by_source(pairs)
    data = Seq2SeqDataset(pairs, tokenizer, max_length=32, max_target_length=32)
    batches = data.batches(2, generator=None, shuffle=False)
    scores = seq2seq_metrics(model, batches, examples, tokenizer, max_length=32,
                             max_new_tokens=8, batch_size=2, device="cpu")
    texts = scores["predictions"]
    assert len(texts) == scores["sources"] == 2 and is_uncased(tokenizer)
    streams = [[pairs[0].target, pairs[1].target],
               [pairs[2].target, ""]]  # sacrebleu: one stream per reference slot
    want = sacrebleu.corpus_bleu(texts, [[r or None for r in s] for s in streams],
                                 lowercase=True).score
    assert math.isclose(scores["bleu"], want, abs_tol=1e-9) and 0 < want < 100
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    best = [max(scorer.score(ref, text)["rougeL"].fmeasure for ref in e.references)
            for text, e in zip(texts, examples, strict=True)]
    assert math.isclose(scores["rouge_l"], 100 * sum(best) / len(best), abs_tol=1e-9)
    assert 0 < min(best) and max(best) < 1
    first, third = (scorer.score(pairs[i].target, texts[0])["rougeL"].fmeasure for i in (0, 2))
    assert third > first > 0
    token_mean = sum(model(**b).loss.item() * int((b["labels"] != -100).sum()) for b in batches)
    assert math.isclose(scores["loss"], token_mean / sum(len(r) for r in data.labels),
                        rel_tol=1e-6)
