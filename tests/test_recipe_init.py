"""``init="random"`` and ``head_lr`` in the finetune and ner recipes, end to end on the tiny
random model: the weights a run starts from, and the rate each group trains at."""

import json

import pytest
import torch

import minift.run.recipes
from minift.hf.checkpoint import read_state_dict
from minift.run.cli import main
from minift.run.recipes import finetune, ner
from minift.tasks.classify import SequenceClassifier
from minift.tasks.tag import TokenClassifier

SENTENCES = [("a gripping , beautifully acted film", "1"), ("dull , lifeless and far too long", "0"),
             ("funny , warm and wise", "1"), ("i wanted my two hours back", "0")] * 4
CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\n" * 4


@pytest.fixture()
def files(tmp_path):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    for path, rows in ((train, SENTENCES), (dev, SENTENCES[:4])):
        path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return train, dev


def changes(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, float]:
    """The largest absolute change of each parameter."""
    old = dict(before.named_parameters())
    return {name: (p - old[name]).abs().max().item() for name, p in after.named_parameters()}


def test_random_init_and_head_lr_through_the_command(files, tmp_path, tiny):
    """`--init random` starts from BERT's random weights, not the checkpoint's (the seeded draw
    of SequenceClassifier.from_config); `--head-lr` moves the classifier by its own rate while
    the encoder moves by `--lr`'s. Two steps, the first at warmup's zero rate: each weight
    moves at most about one peak rate."""
    train, dev = files
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(tiny), "--train", str(train), "--dev", str(dev),
                 "--max-steps", "2", "--batch-size", "8", "--max-length", "16", "--lr", "1e-6",
                 "--head-lr", "0.05", "--init", "random", "--seed", "3", "--no-progress",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["init"] == "random" and metrics["train"]["head_lr"] == 0.05
    torch.manual_seed(3)  # the recipe's seed before building
    start = SequenceClassifier.from_config(tiny, num_labels=2)
    trained = SequenceClassifier.from_pretrained(out)
    moved = changes(start, trained)
    assert max(v for k, v in moved.items() if k.startswith("bert.")) < 2e-6
    assert 0.01 < max(v for k, v in moved.items() if k.startswith("classifier.")) < 0.06
    pretrained = dict(read_state_dict(tiny)[0])["embeddings.word_embeddings.weight"]
    assert not torch.allclose(trained.bert.embeddings.word_embeddings.weight, pretrained,
                              atol=1e-3)


def test_ner_takes_init_and_head_lr(tmp_path, tiny):
    for name in ("train", "dev"):
        (tmp_path / f"{name}.txt").write_text(CONLL, encoding="utf-8")
    metrics = ner(model=str(tiny), train=str(tmp_path / "train.txt"),
                  dev=str(tmp_path / "dev.txt"), out=str(tmp_path / "out"), max_steps=2,
                  batch_size=4, max_length=16, lr=1e-6, head_lr=0.05, init="random", seed=1,
                  progress=False)
    assert metrics["train"]["init"] == "random"
    torch.manual_seed(1)
    start = TokenClassifier.from_config(tiny, num_labels=len(metrics["labels"]))
    moved = changes(start, TokenClassifier.from_pretrained(tmp_path / "out"))
    assert max(v for k, v in moved.items() if k.startswith("bert.")) < 2e-6
    assert max(v for k, v in moved.items() if k.startswith("classifier.")) > 0.01


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
