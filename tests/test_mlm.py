"""The MLM head against transformers' BertForMaskedLM, and `minift pretrain` end to end.

Tolerances: fp32, dropout off (eval mode); logits and losses atol 1e-5.
"""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.core.checkpoints import Checkpoints
from minift.core.loop import TrainConfig, train
from minift.core.masking import word_ids_from_tokens
from minift.core.model import BertConfig, BertModel
from minift.core.optim import make_optimizer
from minift.data.readers import DataError
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import load_bert, save_bert
from minift.hf.safetensors import CheckpointError, read_safetensors, write_safetensors
from minift.run.cli import main
from minift.run.recipes import pretrain
from minift.tasks.mlm import (
    MaskedBatches,
    MaskedLM,
    MaskingCollator,
    TextSequences,
    held_out_split,
    read_text_lines,
)


@st.composite
def configs(draw):
    heads = draw(st.integers(1, 3))
    return dict(
        vocab_size=draw(st.integers(12, 80)),
        hidden_size=heads * draw(st.integers(2, 8)),
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 2)),
        intermediate_size=draw(st.integers(4, 40)),
        max_position_embeddings=24,
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-5])),
    )


def random_batch(gen, vocab_size, batch, seq):
    """Ids, a right-padded attention mask, token types, and labels at ~30% of the real tokens
    (at least one), -100 elsewhere (padding included)."""
    ids = torch.randint(1, vocab_size, (batch, seq), generator=gen)
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
    mask = (torch.arange(seq) < lengths[:, None]).long()
    types = torch.randint(0, 2, (batch, seq), generator=gen)
    chosen = (torch.rand(batch, seq, generator=gen) < 0.3) & mask.bool()
    chosen[0, 0] = True
    labels = torch.where(chosen, torch.randint(0, vocab_size, (batch, seq), generator=gen), -100)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)


def perturb(model, gen):
    """Non-trivial values for every parameter (the fresh head has zero biases, unit norm)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@settings(deadline=None, max_examples=10)
@given(
    config=configs(), seed=st.integers(0, 2**31), batch=st.integers(1, 3), seq=st.integers(1, 12)
)
def test_logits_and_loss_match_bert_for_masked_lm_both_ways(
    config, seed, batch, seq, tmp_path_factory
):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**config)).eval()
    perturb(hf, gen)
    data = random_batch(gen, config["vocab_size"], batch, seq)
    inputs = {k: v for k, v in data.items() if k != "labels"}
    real = data["attention_mask"].bool()
    with torch.no_grad():
        ref_logits, ref_loss = hf(**inputs).logits, hf(**data).loss

    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)  # transformers -> minift
    ours = MaskedLM.from_pretrained(folder).eval()
    assert ours.head_loaded
    with torch.no_grad():
        logits, out = ours(**inputs).logits, ours(**data)
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, ref_logits[data["labels"] != -100], atol=1e-5, rtol=0)

    perturb(ours, gen)  # minift -> transformers, with weights transformers never had
    back_dir = tmp_path_factory.mktemp("ours")
    ours.save_pretrained(back_dir)
    back = transformers.BertForMaskedLM.from_pretrained(back_dir).eval()
    assert back.config.architectures == ["BertForMaskedLM"]
    assert back.cls.predictions.decoder.weight is back.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        torch.testing.assert_close(
            back(**inputs).logits[real], ours(**inputs).logits[real], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(back(**data).loss, ours(**data).loss, atol=1e-5, rtol=0)


TINY = BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=24,
)


@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 4), seq=st.integers(1, 16))
def test_sparse_head_equals_the_dense_computation(seed, batch, seq):
    """Same loss and same gradients as all logits + cross-entropy with ignore_index=-100."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MaskedLM(TINY).eval()
    perturb(model, gen)
    data = random_batch(gen, TINY.vocab_size, batch, seq)
    sparse = model(**data)
    sparse.loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    dense = model(**{k: v for k, v in data.items() if k != "labels"}).logits  # (b, s, vocab)
    dense_loss = F.cross_entropy(
        dense.reshape(-1, TINY.vocab_size), data["labels"].reshape(-1), ignore_index=-100
    )
    dense_loss.backward()
    torch.testing.assert_close(sparse.loss, dense_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.logits, dense[data["labels"] != -100], atol=1e-6, rtol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_tie_is_kept_after_loading_moving_and_an_optimizer_step(tmp_path):
    torch.manual_seed(0)
    MaskedLM(TINY).save_pretrained(tmp_path)
    model = MaskedLM.from_pretrained(tmp_path).to("cpu")
    embeddings = model.bert.embeddings.word_embeddings.weight

    def tied():
        return (
            model.decoder.weight is embeddings
            and model.decoder.weight.data_ptr() == embeddings.data_ptr()
        )

    assert tied()
    model.load_state_dict(model.state_dict())
    assert tied()
    names = [n for n, _ in model.named_parameters()]
    assert "decoder.weight" not in names  # counted once, under the embeddings
    optimizer = make_optimizer(model, lr=1e-2)
    data = random_batch(torch.Generator().manual_seed(0), TINY.vocab_size, 2, 8)
    before = embeddings.detach().clone()
    model(**data).loss.backward()
    optimizer.step()
    assert tied()
    assert not torch.equal(before, embeddings)  # the step moved the shared matrix
    hidden = torch.randn(3, TINY.hidden_size)
    torch.testing.assert_close(
        model.head(hidden),
        F.linear(model.transform_norm(F.gelu(model.transform(hidden))), embeddings, model.bias),
    )


def test_minilm_has_no_head_and_gets_berts_initialisation(minilm_dir):
    torch.manual_seed(0)
    model = MaskedLM.from_pretrained(minilm_dir)
    assert not model.head_loaded
    encoder = load_bert(minilm_dir, add_pooling_layer=False)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.bert.state_dict()[name], tensor), name
    assert torch.all(model.transform.bias == 0) and torch.all(model.bias == 0)
    assert torch.all(model.transform_norm.weight == 1) and torch.all(model.transform_norm.bias == 0)
    # 147,456 draws of N(0, 0.02): the sample mean and std are within 5% of 0.02 with
    # probability far above 1 - 1e-6 (the std's relative error is about 0.2%).
    weight = model.transform.weight
    assert abs(weight.mean().item()) < 0.05 * 0.02
    assert abs(weight.std().item() / model.config.initializer_range - 1) < 0.05


def _write_head(folder, **changes):
    """A saved tiny MaskedLM whose safetensors has keys renamed / added / removed."""
    torch.manual_seed(0)
    MaskedLM(TINY).save_pretrained(folder)
    tensors = read_safetensors(folder / "model.safetensors")
    for old, new in changes.items():
        value = tensors.pop(old) if old in tensors else None
        if isinstance(new, str):
            tensors[new] = value
        elif new is not None:
            tensors[old] = new
    write_safetensors(tensors, folder / "model.safetensors")


def test_checkpoint_variants(tmp_path):
    """Legacy gamma/beta names load; an untied decoder and an incomplete head are refused."""
    reference = tmp_path / "reference"
    _write_head(reference)
    legacy = tmp_path / "legacy"
    _write_head(
        legacy,
        **{
            "cls.predictions.transform.LayerNorm.weight": "cls.predictions.transform.LayerNorm.gamma",
            "cls.predictions.transform.LayerNorm.bias": "cls.predictions.transform.LayerNorm.beta",
        },
    )
    a, b = MaskedLM.from_pretrained(reference), MaskedLM.from_pretrained(legacy)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name

    untied = tmp_path / "untied"
    _write_head(untied, **{"cls.predictions.decoder.weight": torch.randn(40, 16)})
    with pytest.raises(CheckpointError, match="cls.predictions.decoder.weight"):
        MaskedLM.from_pretrained(untied)
    incomplete = tmp_path / "incomplete"
    _write_head(incomplete, **{"cls.predictions.transform.dense.bias": None})
    with pytest.raises(CheckpointError, match="transform.bias"):
        MaskedLM.from_pretrained(incomplete)


# --------------------------------------------------------------------------------------------
# minift pretrain
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(minilm_dir, tmp_path_factory):
    """A tiny random encoder with MiniLM's tokenizer (30,522 tokens) and no MLM head."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
    )
    save_bert(BertModel(config), folder)
    Tokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finance_text(data_dir, tmp_path_factory):
    """Real domain text: 60 Financial PhraseBank sentences, one a line, labels removed."""
    lines = (
        (data_dir / "financial_phrasebank" / "Sentences_AllAgree.txt")
        .read_text(encoding="utf-8")
        .splitlines()[:60]
    )
    path = tmp_path_factory.mktemp("text") / "finance.txt"
    path.write_text("".join(line.rsplit("@", 1)[0] + "\n" for line in lines), encoding="utf-8")
    return path


def test_pretrain_end_to_end_writes_a_folder_transformers_loads(
    tiny_model_dir, finance_text, tmp_path, capsys
):
    out = tmp_path / "out"
    code = main(
        [
            "pretrain",
            "--model",
            str(tiny_model_dir),
            "--text",
            str(finance_text),
            "--masking",
            "wwm",
            "--pack",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--max-length",
            "48",
            "--lr",
            "1e-3",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for when in ("before", "after"):
        assert math.isfinite(metrics[when]["perplexity"]) and metrics[when]["perplexity"] > 1
        assert 0 <= metrics[when]["masked_accuracy"] <= 1
        assert metrics[when]["perplexity"] == pytest.approx(math.exp(metrics[when]["loss"]))
    assert metrics["before"]["masked_tokens"] == metrics["after"]["masked_tokens"]  # fixed masks
    assert metrics["train"]["steps"] == 3 and not metrics["train"]["head_loaded"]
    assert metrics["after"]["loss"] != metrics["before"]["loss"]  # training changed the model

    ours = MaskedLM.from_pretrained(out).eval()
    assert ours.head_loaded
    hf = transformers.BertForMaskedLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    enc = tokenizer(
        ["Operating profit rose to EUR 13.1 mn.", "Sales fell."], padding=True, return_tensors="pt"
    )
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(**enc).logits[real], hf(**enc).logits[real], atol=1e-5, rtol=0
        )


def test_pretrain_freeze_head_trains_the_head_alone_then_the_whole_model_continues(
    tiny_model_dir, finance_text, tmp_path
):
    """Phase 1 (``freeze="head"``) leaves every encoder weight, the tied word embeddings
    included, as it was and trains the fresh head; phase 2 starts from phase 1's folder with that
    head loaded, and moves the encoder."""
    common = dict(text=str(finance_text), masking="wwm", batch_size=4, max_length=32,
                  progress=False)
    first = pretrain(model=str(tiny_model_dir), out=str(tmp_path / "head"), max_steps=4, lr=1e-2,
                     freeze="head", schedule="constant", **common)
    assert first["train"]["freeze"] == "head"
    assert first["after"]["loss"] < first["before"]["loss"]  # the head learned something
    encoder = load_bert(tiny_model_dir, add_pooling_layer=False).state_dict()
    adapted = MaskedLM.from_pretrained(tmp_path / "head")
    for name, weight in adapted.bert.state_dict().items():
        assert torch.equal(weight, encoder[name]), name
    assert adapted.transform.weight.std() > 0 and adapted.bias.abs().sum() > 0

    second = pretrain(model=str(tmp_path / "head"), out=str(tmp_path / "all"), max_steps=2, lr=1e-3,
                      **common)
    assert second["train"]["head_loaded"]
    assert second["before"]["loss"] == pytest.approx(first["after"]["loss"], rel=1e-5)
    moved = MaskedLM.from_pretrained(tmp_path / "all").bert.state_dict()
    assert any(not torch.equal(moved[name], encoder[name]) for name in encoder)


def test_pretrain_patience_stops_when_held_out_loss_stops_falling(tiny_model_dir, finance_text,
                                                                tmp_path):
    """A learning rate far too high makes the held-out loss climb: patience 1 ends the run at
    the first evaluation that is no better than the best, long before ``steps``."""
    metrics = pretrain(model=str(tiny_model_dir), text=str(finance_text), out=str(tmp_path / "o"),
                       max_steps=40, lr=3.0, batch_size=4, max_length=32, eval_every=1, patience=1,
                       warmup_ratio=0.0, progress=False)
    assert metrics["train"]["stopped_early"] and metrics["train"]["steps"] < 40


@pytest.mark.parametrize("problem",
                         ["missing", "empty", "empty-eval", "bad-masking", "bad-freeze"])
def test_pretrain_bad_input_fails_before_training(problem, tiny_model_dir, finance_text, tmp_path):
    missing, empty = tmp_path / "nope.txt", tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    kwargs = dict(
        model=str(tiny_model_dir),
        text=str(finance_text),
        out=str(tmp_path / "out"),
        max_steps=2,
        batch_size=4,
        max_length=32,
        progress=False,
    )
    expected = {
        "missing": str(missing),
        "empty": str(empty),
        "empty-eval": str(empty),
        "bad-masking": "masking",
        "bad-freeze": "freeze must be one of none, head",
    }[problem]
    if problem == "missing":
        kwargs["text"] = [str(finance_text), str(missing)]
    elif problem == "empty":
        kwargs["text"] = str(empty)
    elif problem == "empty-eval":
        kwargs["eval_text"] = str(empty)
    elif problem == "bad-freeze":
        kwargs["freeze"] = "last-2"
    else:
        kwargs["masking"] = "random"
    with pytest.raises(ValueError, match=re.escape(expected)):
        pretrain(**kwargs)
    assert not (tmp_path / "out").exists()  # nothing was trained or written


def test_pretrain_cli_reports_a_missing_file_by_name(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    code = main(["pretrain", "--text", str(missing), "--max-steps", "1", "--out", str(tmp_path / "o")])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


def test_resumed_mlm_training_equals_an_uninterrupted_run(tiny_model_dir, finance_text, tmp_path):
    """Dynamic masking is seeded per (epoch, batch): a run stopped after step 2 and resumed ends
    with exactly the weights of a run that was never stopped."""
    tokenizer = Tokenizer.from_pretrained(tiny_model_dir)
    passages = finance_text.read_text(encoding="utf-8").splitlines()
    sequences = TextSequences(passages, tokenizer, max_length=32, pack=True)
    collator = MaskingCollator.from_tokenizer(tokenizer, "span")
    steps = len(MaskedBatches(sequences, collator, 8, seed=3)) + 2  # crosses an epoch boundary

    def run(folder, stop_at=None, resume=False):
        torch.manual_seed(0)
        model = MaskedLM.from_pretrained(tiny_model_dir)
        calls = {"n": 0}

        class Stop(Exception):
            pass

        def batches(epoch):
            epoch_batches = MaskedBatches(sequences, collator, 8, seed=3, epoch=epoch)

            class Interrupting(list):
                def __getitem__(self, i):
                    calls["n"] += 1
                    if stop_at is not None and calls["n"] > stop_at:
                        raise Stop
                    return epoch_batches[i]

            return Interrupting(range(len(epoch_batches)))

        config = TrainConfig(out_dir=folder, max_steps=steps, lr=1e-3, save_every=2, progress=False)
        try:
            train(model, batches, config, recorder=Checkpoints(resume=resume))
        except Stop:
            return None, calls["n"]
        return model, calls["n"]

    full, fetched = run(tmp_path / "full")
    assert fetched == steps
    assert run(tmp_path / "cut", stop_at=steps - 1)[0] is None  # stopped after a checkpoint
    resumed, fetched = run(tmp_path / "cut", resume=True)
    # it continued from the last checkpoint (save_every=2) rather than starting over, which
    # would also end with the same weights
    assert fetched == steps - 2 * ((steps - 1) // 2)
    for (name, a), (_, b) in zip(
        full.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


WORDS = ["profit", "rose", "EUR", "13.1", "mn", "unaffable", "Componenta", "'s", "net", "sales",
         "(", ")", "-", "quarterly", "to", "the", "[UNK]", "ÄÖ", "oyj"]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


passages_strategy = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join),
    min_size=1,
    max_size=12,
)


def body(tokenizer, passage):
    return tokenizer.backend.encode(passage, add_special_tokens=False).ids


@settings(deadline=None, max_examples=40)
@given(passages=passages_strategy, max_length=st.integers(3, 40), pack=st.booleans())
def test_sequences_hold_the_text_in_order(tokenizer, passages, max_length, pack):
    """Packed: every token of every passage, in order, [SEP] after each piece, nothing dropped.
    Unpacked: one sequence a passage, cut at max_length. Always: [CLS] first, [SEP] last, at most
    max_length tokens, and word ids that group the tokens as their WordPiece pieces do."""
    seqs = TextSequences(passages, tokenizer, max_length=max_length, pack=pack)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    bodies = [body(tokenizer, p) for p in passages]
    assert seqs.lengths == [len(ids) for ids in seqs.input_ids]
    for ids, words in zip(seqs.input_ids, seqs.word_ids, strict=True):
        assert 3 <= len(ids) <= max_length and ids[0] == cls and ids[-1] == sep
        special = (ids == cls) | (ids == sep)
        assert torch.equal(words < 0, special)
        tokens = tokenizer.convert_ids_to_tokens(ids)
        expected = word_ids_from_tokens([tokens], special[None])[0]
        starts = words[1:] != words[:-1]  # our words start exactly where ## pieces say
        assert torch.equal(starts, expected[1:] != expected[:-1])
        real = words[words >= 0]
        assert torch.all(real[1:] >= real[:-1])  # numbered in order within a sequence
    if pack:
        flat = [t for ids in seqs.input_ids for t in ids.tolist() if t not in (cls, sep)]
        assert flat == [t for b in bodies for t in b]
        # greedy: no sequence had room for the next one's first piece and its [SEP]
        for ids, following in zip(seqs.input_ids[:-1], seqs.input_ids[1:], strict=True):
            first_piece = following.tolist().index(sep) - 1
            assert len(ids) + first_piece + 1 > max_length
    else:
        assert [ids[1:-1].tolist() for ids in seqs.input_ids] == [
            b[: max_length - 2] for b in bodies
        ]


def test_packing_fills_sequences_greedily(tokenizer):
    passages = ["net sales rose"] * 10  # 3 tokens + [SEP] each
    seqs = TextSequences(passages, tokenizer, max_length=10, pack=True)
    # [CLS] + two passages with their [SEP] = 9 tokens; a third would need 13
    assert seqs.lengths == [9] * 5
    tokens = tokenizer.convert_ids_to_tokens(seqs.input_ids[0])
    assert tokens == ["[CLS]", "net", "sales", "rose", "[SEP]", "net", "sales", "rose", "[SEP]"]
    assert seqs.word_ids[0].tolist() == [-1, 0, 1, 2, -1, 3, 4, 5, -1]
    long = TextSequences(["net sales rose " * 5], tokenizer, max_length=6, pack=True)
    assert long.lengths == [6, 6, 6, 5]  # 15 tokens cut into pieces of 4, none dropped


@settings(deadline=None, max_examples=15)
@given(
    passages=passages_strategy,
    strategy=st.sampled_from(["mlm", "wwm", "span"]),
    seed=st.integers(0, 2**20),
    epoch=st.integers(0, 5),
)
def test_masked_batches_repeat_and_never_select_special_tokens(
    tokenizer, passages, strategy, seed, epoch
):
    seqs = TextSequences(passages, tokenizer, max_length=24, pack=True)
    collator = MaskingCollator.from_tokenizer(tokenizer, strategy, mlm_probability=0.3)
    first = MaskedBatches(seqs, collator, 3, seed=seed, epoch=epoch)
    again = MaskedBatches(seqs, collator, 3, seed=seed, epoch=epoch)
    assert len(first) == len(again) == -(-len(seqs) // 3)
    for i in range(len(first)):
        a, b = first[i], again[i]
        assert a.keys() == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        for key in a:
            assert torch.equal(a[key], b[key]), key
        original = seqs.batch(first.groups[i])["input_ids"]
        selected = a["labels"] != -100
        special = torch.isin(original, torch.tensor(sorted(tokenizer.special_token_ids)))
        assert not (selected & (special | (a["attention_mask"] == 0))).any()
        assert torch.equal(a["labels"][selected], original[selected])
        assert torch.equal(a["input_ids"][~selected], original[~selected])


def test_different_epochs_get_different_masks(tokenizer):
    passages = [" ".join(WORDS[:15])] * 40
    seqs = TextSequences(passages, tokenizer, max_length=64, pack=True)
    collator = MaskingCollator.from_tokenizer(tokenizer, "mlm")
    epoch0 = MaskedBatches(seqs, collator, 4, seed=0, epoch=0, shuffle=False)
    epoch1 = MaskedBatches(seqs, collator, 4, seed=0, epoch=1, shuffle=False)
    assert epoch0.groups == epoch1.groups
    assert not torch.equal(epoch0[0]["labels"], epoch1[0]["labels"])  # dynamic masking


def test_read_text_lines_and_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(b"\xef\xbb\xbffirst line\r\n\n  \nsecond line\n")
    assert read_text_lines(good) == ["first line", "second line"]
    assert read_text_lines([good, good]) == ["first line", "second line"] * 2
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok\ncaf\xe9\n")
    for path, what in (
        (tmp_path / "missing.txt", "no such file"),
        (empty, "empty file"),
        (latin, "UTF-8"),
        (tmp_path, "directory"),
    ):
        with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + what):
            read_text_lines([good, path])


@settings(deadline=None, max_examples=30)
@given(n=st.integers(2, 200), fraction=st.floats(0.01, 0.9), seed=st.integers(0, 100))
def test_held_out_split_is_a_seeded_partition(n, fraction, seed):
    passages = [f"passage {i}" for i in range(n)]
    train, held = held_out_split(passages, fraction, seed)
    assert sorted(train + held, key=lambda p: int(p.split()[1])) == passages
    assert 1 <= len(held) <= n - 1 and not set(train) & set(held)
    assert train == sorted(train, key=lambda p: int(p.split()[1]))  # file order kept
    assert held_out_split(passages, fraction, seed) == (train, held)


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        TextSequences(["a b"], tokenizer, max_length=2)
    with pytest.raises(ValueError, match="masking"):
        MaskingCollator.from_tokenizer(tokenizer, "random")
    with pytest.raises(DataError, match="at least 2 passages"):
        held_out_split(["only one"], 0.1, 0)


def test_pretrain_on_a_device_or_an_oversized_file_is_one_line(minilm_dir, tmp_path, capsys,
                                                               monkeypatch):
    """Issue 31, row 8: `pretrain --text /dev/zero` was a MemoryError traceback; now the text is
    refused by stat, and a file over the cap by its size, before --out exists."""
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(3 << 20)
    monkeypatch.setenv("MINIFT_MAX_FILE_MB", "2")
    for text, expected in (("/dev/zero", "found a character device"),
                           (str(big), "expected a data file of at most 2 MiB")):
        out = tmp_path / "out"
        assert main(["pretrain", "--model", str(minilm_dir), "--text", text,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"minift: error: {text}: ") and expected in err
        assert err.count("\n") == 1 and not out.exists()
