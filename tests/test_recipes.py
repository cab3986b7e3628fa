"""minift.run.recipes called as a user calls them: the `init` and `head_lr` options refused
before any model loads, and finetune's frozen head (`freeze` head: the encoder's features
computed once, the head as logistic regression on them). (Each task's recipe is also run end
to end by its task's test file; what the recipes share is in test_prepare.py and
test_skeleton.py, `minift qa` in test_squad.py.)
"""

import math
import random

import pytest
import torch
from recipe_runs import sentence_files

import minift.run.recipes
from minift.run.recipes import finetune, ner
from minift.tasks.classify import SequenceClassifier


@pytest.fixture()
def files(tmp_path):
    return sentence_files(tmp_path)


@pytest.mark.parametrize("recipe", ["finetune", "ner"])
@pytest.mark.parametrize("change, message", [(dict(init="scratch"), "init must be one of"),
                                             (dict(head_lr=0.0), "head_lr must be positive")])
def test_bad_init_or_head_lr_stops_before_loading(tmp_path, files, monkeypatch, recipe, change,
                                                  message):
    for module in (minift.run.recipes.classify, minift.run.recipes.tag):
        monkeypatch.setattr(module, "resolve_model_dir", lambda *a: pytest.fail("loaded"))
    train, dev = files
    kwargs = dict(model="minilm", train=str(train), dev=str(dev), out=str(tmp_path / "o"),
                  progress=False) | change
    with pytest.raises(ValueError, match=message):
        (finetune if recipe == "finetune" else ner)(**kwargs)


@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_a_frozen_run_encodes_each_example_once_and_trains_the_same_head(files, tmp_path, tiny,
                                                                        monkeypatch, pooling):
    """``freeze`` head: the encoder runs once per training and dev example (its features are
    cached), not once an epoch and an evaluation; and the head comes out as in the run that
    encodes every batch (the recipe with its cache turned off, the frozen encoder in eval mode):
    the same head weights to float32 rounding (the features are computed in other batches, so
    other padding: atol 1e-5), the same best step and dev scores."""
    from minift.fast.unpad import FastBertModel
    from minift.run.recipes import classify

    encoded = []
    forward = FastBertModel.forward
    monkeypatch.setattr(FastBertModel, "forward", lambda self, ids, *a, **k:
                        encoded.append(len(ids)) or forward(self, ids, *a, **k))
    train, dev = files
    common = dict(model=str(tiny), train=str(train), dev=str(dev), epochs=3, batch_size=4,
                  max_length=16, freeze="head", pooling=pooling, seed=5, progress=False)
    cached = finetune(out=str(tmp_path / "cached"), **common)
    assert sum(encoded) == 16 + 4  # each training and dev example once
    assert cached["train"]["cached_features"] and cached["train"]["pooling"] == pooling
    assert cached["train"]["lr"] == minift.run.options.FROZEN_HEAD_LR  # no rate given

    encoded.clear()
    monkeypatch.setattr(classify, "frozen_rows", lambda model, datasets, o: datasets)
    uncached = finetune(out=str(tmp_path / "uncached"), **common)
    assert sum(encoded) >= 3 * 16 + 4 * 4  # every epoch, and every evaluation (before + 3)
    heads = [SequenceClassifier.from_pretrained(tmp_path / run).classifier
             for run in ("cached", "uncached")]
    for ours, theirs in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(heads[0].weight, SequenceClassifier.from_pretrained(
        tiny, num_labels=2).classifier.weight, atol=1e-3)  # and it did train
    assert cached["train"]["best_step"] == uncached["train"]["best_step"]
    for when in ("before", "dev"):
        assert cached[when]["accuracy"] == uncached[when]["accuracy"]
        assert cached[when]["loss"] == pytest.approx(uncached[when]["loss"], abs=1e-5)


def test_the_frozen_head_scores_as_logistic_regression_on_the_same_features(tmp_path, data_dir,
                                                                           monkeypatch):
    """A real task: Financial PhraseBank, the 2,264 sentences all annotators agree on, split
    1,500 / 764 (seeded). ``finetune`` with ``freeze`` head and no rate given (mean pooling,
    the default rate, 3 epochs; scored once at the end: no choice made on dev) scores within one
    point of accuracy of scikit-learn's ``LogisticRegression`` (L-BFGS to convergence, C=1)
    fitted on the very features the recipe computed (recorded as it computes them)."""
    from sklearn.linear_model import LogisticRegression

    from minift.run.recipes import classify

    path = data_dir / "financial_phrasebank" / "Sentences_AllAgree.txt"
    rows = [line.rsplit("@", 1) for line in path.read_text(encoding="utf-8").splitlines() if line]
    order = random.Random(0).sample(range(len(rows)), len(rows))
    for name, part in (("train", order[:1500]), ("dev", order[1500:])):
        (tmp_path / f"{name}.tsv").write_text(
            "text\tlabel\n" + "".join(f"{rows[i][0]}\t{rows[i][1]}\n" for i in part),
            encoding="utf-8")
    computed = []
    encode = classify.encode_features
    monkeypatch.setattr(classify, "encode_features", lambda model, data, **k:
                        computed.append((encode(model, data, **k), data.labels)) or computed[-1][0])
    metrics = finetune(model="minilm", train=str(tmp_path / "train.tsv"),
                       dev=str(tmp_path / "dev.tsv"), out=str(tmp_path / "out"), freeze="head",
                       max_length=64, eval_every=10**9, progress=False)
    steps = 3 * math.ceil(1500 / 32)  # the default 3 epochs of the default batch of 32
    assert metrics["train"]["pooling"] == "mean" and metrics["train"]["best_step"] == steps
    (train_x, train_y), (dev_x, dev_y) = computed
    probe = LogisticRegression(max_iter=5000).fit(train_x.numpy(), train_y.numpy())
    reference = probe.score(dev_x.numpy(), dev_y.numpy())
    assert reference > 0.8  # the features carry the task (the majority label scores 0.61)
    assert abs(metrics["dev"]["accuracy"] - reference) <= 0.01, (metrics["dev"], reference)


