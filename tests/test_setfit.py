"""SetFit (minift/tasks/setfit.py) against the setfit library and scikit-learn: shots, the
logistic head, training end to end, saving. (The pairs and the pair losses are tested in
test_contrastive.py; the `setfit` command in test_fewshot.py.)"""

import json
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.core.contrastive import (
    contrastive_pairs,
    cosine_similarity_loss,
    embed_pairs,
)
from minift.core.loop import NonFiniteLossError
from minift.core.sentence import encode
from minift.data.readers import DataError, read_semicolon_examples
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import load_bert
from minift.tasks.setfit import (
    LinearHead,
    SetFitConfig,
    SetFitModel,
    fit_logistic_regression,
    sample_shots,
    train_body,
    train_head,
    train_setfit,
)

pytestmark = pytest.mark.usefixtures("one_thread")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------
# Pairs


def test_sample_shots_is_seeded_and_checks_class_sizes():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 3
    first = sample_shots(labels, 3, torch.Generator().manual_seed(7))
    assert first == sample_shots(labels, 3, torch.Generator().manual_seed(7))
    assert sorted(labels[i] for i in first) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    with pytest.raises(ValueError, match="'c' has 3 examples, fewer than the 4"):
        sample_shots(labels, 4, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------
# Losses


# --------------------------------------------------------------------------------------------
# Heads


@settings(deadline=None, max_examples=10)
@given(
    n=st.integers(6, 40),
    dim=st.integers(2, 8),
    k=st.integers(2, 4),
    seed=st.integers(0, 2**31),
    C=st.sampled_from([0.1, 1.0, 10.0]),
)
def test_logistic_regression_coefficients_equal_scikit_learn(n, dim, k, seed, C):
    """Both minimise the same objective in float64 to a tight tolerance; ours sees X rounded to
    float32 and stores float32 weights. Over 460 random draws the largest gaps were 2.3e-6
    (weights), 5.0e-6 (intercepts) and 2.8e-7 (probabilities), hence atol 2e-5 and 2e-6: L-BFGS
    stopped early (tolerance_grad 1e-6) moves the probabilities by 5e-6."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    y = rng.permutation(np.arange(n) % k)  # every class present
    head = fit_logistic_regression(
        LinearHead(dim, k, binary=k == 2),
        torch.tensor(X, dtype=torch.float32),
        torch.tensor(y),
        C=C,
    )
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=100_000).fit(X, y)
    np.testing.assert_allclose(head.linear.weight.detach().numpy(), reference.coef_, atol=2e-5)
    np.testing.assert_allclose(head.linear.bias.detach().numpy(), reference.intercept_, atol=2e-5)
    ours = head(torch.tensor(X, dtype=torch.float32)).softmax(-1).detach().numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(X), atol=2e-6)


@pytest.mark.parametrize("dataset", ["sst2", "emotion"])
def test_logistic_head_accuracy_matches_scikit_learn_on_real_embeddings(
    dataset, minilm, data_dir, sst2
):
    """Default LogisticRegression() (lbfgs, C=1, max_iter=100) vs minift's head, same embeddings
    of real sentences: held-out accuracy within one point."""
    from sklearn.linear_model import LogisticRegression

    if dataset == "sst2":
        pool, dev, shots = sst2[0], sst2[1][:150], 24
    else:
        pool = read_semicolon_examples(data_dir / "emotion" / "train.txt")
        dev, shots = read_semicolon_examples(data_dir / "emotion" / "val.txt")[:150], 10
    chosen = sample_shots([ex.label for ex in pool], shots, torch.Generator().manual_seed(0))
    train = [pool[i] for i in chosen]
    names = sorted({ex.label for ex in train})  # every class, so every dev label
    encoder, tokenizer = minilm
    X_train = encode(encoder, tokenizer, [ex.text for ex in train])
    X_dev = encode(encoder, tokenizer, [ex.text for ex in dev])
    y_train = torch.tensor([names.index(ex.label) for ex in train])
    y_dev = np.array([names.index(ex.label) for ex in dev])
    head = fit_logistic_regression(
        LinearHead(X_train.shape[1], len(names), len(names) == 2), X_train, y_train
    )
    ours = (head(X_dev).argmax(-1).numpy() == y_dev).mean()
    reference = LogisticRegression().fit(X_train.numpy(), y_train.numpy())
    theirs = (reference.predict(X_dev.numpy()) == y_dev).mean()
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


def test_end_to_end_head_trains_the_encoder_and_frozen_does_not(tiny_dir, sst2):
    texts = [ex.text for ex in sst2[0][:6]]
    label_ids = [0, 1, 0, 1, 1, 0]
    for end_to_end in (False, True):
        encoder = load_bert(tiny_dir)
        before = [p.detach().clone() for p in encoder.parameters()]
        head = LinearHead(32, 2)
        head_before = head.linear.weight.detach().clone()
        model = SetFitModel(encoder, Tokenizer.from_pretrained(tiny_dir), head, ["n", "p"])
        config = SetFitConfig(head="linear", end_to_end=end_to_end, head_epochs=2)
        train_head(model, texts, label_ids, config)
        moved = [not torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True)]
        assert any(moved) == end_to_end
        assert not torch.equal(head_before, head.linear.weight)


# --------------------------------------------------------------------------------------------
# The whole model: save / load, bad input


@pytest.mark.parametrize("head", ["logistic", "linear"])
def test_save_and_load_give_identical_predictions(head, tiny_dir, sst2, tmp_path):
    chosen = sample_shots([ex.label for ex in sst2[0]], 4, torch.Generator().manual_seed(0))
    texts = [sst2[0][i].text for i in chosen]
    labels = [sst2[0][i].label for i in chosen]
    config = SetFitConfig(head=head, head_epochs=2, max_length=64, seed=3)
    model, stats = train_setfit(
        load_bert(tiny_dir), Tokenizer.from_pretrained(tiny_dir), texts, labels, config, log=None
    )
    assert stats["pairs"] == len(contrastive_pairs(labels, seed=3))
    model.save_pretrained(tmp_path / "saved")
    loaded = SetFitModel.from_pretrained(tmp_path / "saved")
    dev = [ex.text for ex in sst2[1][:20]]
    assert torch.equal(model.predict_proba(dev), loaded.predict_proba(dev))
    assert model.predict(dev) == loaded.predict(dev)
    assert set(model.predict(dev)) <= {"0", "1"}


def test_loading_a_folder_without_a_head_says_so(tiny_dir):
    with pytest.raises(ValueError, match="setfit_head.json"):
        SetFitModel.from_pretrained(tiny_dir)


def test_bad_settings_are_refused():
    for bad in (
        {"sampling": "random"},
        {"loss": "triplet"},
        {"head": "svm"},
        {"num_iterations": 0},
        {"max_steps": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": math.inf},
        {"amp": "fp8"},
        {"seed": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SetFitConfig(**bad)


def test_semicolon_reader_reads_emotion_and_names_a_bad_line(data_dir, tmp_path):
    examples = read_semicolon_examples(data_dir / "emotion" / "val.txt")
    assert len(examples) == 2000 and examples[0].line == 2
    assert {ex.label for ex in examples} == {"sadness", "joy", "love", "anger", "fear", "surprise"}
    bad = tmp_path / "bad.txt"
    bad.write_text("text;label_name\ni feel fine;joy\ntwo;fields;here\n")
    with pytest.raises(DataError, match=r"bad.txt:3: expected 2 fields"):
        read_semicolon_examples(bad)


# --------------------------------------------------------------------------------------------
# The contrastive phase on minift.core.loop: the same recipe, its checks


def test_body_on_the_training_loop_equals_the_plain_recipe(tiny_dir, sst2):
    """setfit's recipe written out as a plain loop (dropout on): the same weights, bit for bit."""
    from minift.core.optim import make_optimizer, make_scheduler

    texts = [ex.text for ex in sst2[0][:8]]
    labels = [ex.label for ex in sst2[0][:8]]
    config = SetFitConfig(batch_size=6, epochs=2, lr=1e-3, max_length=32, seed=5, progress=False)
    encoder = load_bert(tiny_dir)
    torch.manual_seed(config.seed)
    stats = train_body(encoder, Tokenizer.from_pretrained(tiny_dir), texts, labels, config,
                       log=None)  # fmt: skip

    reference = load_bert(tiny_dir)
    tokens = Tokenizer.from_pretrained(tiny_dir)(texts, max_length=32)
    pairs = contrastive_pairs(labels, seed=config.seed)
    first, second, targets = (torch.tensor([p[k] for p in pairs]) for k in range(3))
    steps = config.epochs * math.ceil(len(pairs) / config.batch_size)
    optimizer = make_optimizer(reference, config.lr, config.weight_decay)
    scheduler = make_scheduler(optimizer, steps, math.ceil(config.warmup_ratio * steps))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    reference.train()
    losses = []
    for _ in range(config.epochs):
        for rows in torch.randperm(len(pairs), generator=generator).split(config.batch_size):
            a, b = embed_pairs(reference, tokens, first[rows], second[rows])
            loss = cosine_similarity_loss(a, b, targets[rows])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    for (name, ours), theirs in zip(encoder.state_dict().items(), reference.state_dict().values(),
                                    strict=True):  # fmt: skip
        assert torch.equal(ours, theirs), name
    assert (stats["steps"], stats["first_loss"], stats["last_loss"]) == (
        len(losses), losses[0], losses[-1]
    )  # fmt: skip
    assert all(p.requires_grad for p in encoder.parameters())  # the pooler is given back


def test_body_writes_its_log_to_out_dir_and_runs_under_bf16(tiny_dir, sst2, tmp_path):
    texts = [ex.text for ex in sst2[0][:6]]
    labels = [ex.label for ex in sst2[0][:6]]
    config = SetFitConfig(batch_size=8, max_length=32, amp="bf16", progress=False)
    stats = train_body(load_bert(tiny_dir), Tokenizer.from_pretrained(tiny_dir), texts, labels,
                       config, log=None, out_dir=tmp_path / "body")  # fmt: skip
    records = [
        json.loads(line) for line in (tmp_path / "body" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == list(range(1, stats["steps"] + 1))
    assert sorted(p.name for p in (tmp_path / "body").iterdir()) == ["log.jsonl"]
    assert math.isfinite(stats["last_loss"])


def test_max_steps_caps_the_contrastive_phase_and_only_shortens_it(tiny_dir, sst2):
    texts = [ex.text for ex in sst2[0][:8]]
    labels = [ex.label for ex in sst2[0][:8]]
    pairs = len(contrastive_pairs(labels, seed=0))
    steps = math.ceil(pairs / 4)
    for cap, expected in ((2, 2), (steps + 5, steps)):
        config = SetFitConfig(batch_size=4, max_length=32, max_steps=cap, seed=0, progress=False)
        lines = []
        stats = train_body(load_bert(tiny_dir), Tokenizer.from_pretrained(tiny_dir), texts,
                           labels, config, log=lines.append)  # fmt: skip
        assert stats["steps"] == expected
        assert stats["pairs"] == pairs
        assert stats["pairs_trained"] == min(pairs, 4 * expected)
        assert ("capped at max_steps=2" in lines[0]) == (cap == 2)


def test_a_diverging_run_stops_instead_of_training_through_nan(tiny_dir, sst2):
    chosen = sample_shots([ex.label for ex in sst2[0]], 4, torch.Generator().manual_seed(0))
    texts = [sst2[0][i].text for i in chosen]
    labels = [sst2[0][i].label for i in chosen]
    config = SetFitConfig(lr=1e6, batch_size=4, max_length=32, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"step \d+.*learning rate"):
        train_setfit(load_bert(tiny_dir), Tokenizer.from_pretrained(tiny_dir), texts, labels,
                     config, log=None)  # fmt: skip


def test_the_heads_refuse_non_finite_numbers(tiny_dir, sst2):
    embeddings = torch.randn(6, 4)
    embeddings[2, 1] = math.nan
    with pytest.raises(NonFiniteLossError, match="embeddings hold nan"):
        fit_logistic_regression(LinearHead(4, 2, binary=True), embeddings, torch.tensor([0, 1] * 3))
    head = LinearHead(32, 2)
    with torch.no_grad():
        head.linear.weight.fill_(math.inf)
    model = SetFitModel(load_bert(tiny_dir), Tokenizer.from_pretrained(tiny_dir), head, ["n", "p"])
    config = SetFitConfig(head="linear", head_epochs=1, progress=False)
    texts = [ex.text for ex in sst2[0][:4]]
    with pytest.raises(NonFiniteLossError, match=r"head's loss is nan at epoch 0, batch 0"):
        train_head(model, texts, [0, 1, 0, 1], config)
