"""minift.run.recipes.skeleton, what every recipe on the loop shares: `init` random builds the
model from BERT's random weights, `head_lr` gives the classifier its own rate (finetune and ner),
and `compile` trains on bucketed padded batches with static shapes to the eager model."""

import json
import shutil

import pytest
import torch
from recipe_runs import sentence_files

from minift.data.batches import bucket_lengths
from minift.hf.checkpoint import read_state_dict
from minift.run.cli import main
from minift.run.recipes import ner
from minift.tasks.classify import SequenceClassifier
from minift.tasks.tag import TokenClassifier

CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\n" * 4


@pytest.fixture()
def files(tmp_path):
    return sentence_files(tmp_path)


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


def test_compile_trains_on_bucketed_padded_batches_to_the_same_model(tmp_path, tiny,
                                                                   monkeypatch):
    """``--compile`` (here a recording stand-in for torch.compile, so the test stays fast; the
    real one is held to eager in tests/test_batches.py) trains ``ner`` on batches padded to
    ``bucket_lengths(max_length)`` through the encoder's padded path, with static shapes
    (``dynamic=False``); without dropout, the trained weights equal those of the run without
    ``--compile`` (unbucketed, the CPU's unpadded path): fp32, atol 1e-5 after four steps."""
    quiet = tmp_path / "quiet"  # the tiny model without dropout: the two runs compare exactly
    shutil.copytree(tiny, quiet)
    config = json.loads((quiet / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (quiet / "config.json").write_text(json.dumps(config))
    for name in ("train", "dev"):
        (tmp_path / f"{name}.txt").write_text(CONLL + "A O\n\n", encoding="utf-8")
    seen = []

    def record(module, **options):
        def forward(**batch):
            seen.append((options, batch["input_ids"].shape[1], module.bert.unpad,
                         batch["labels"].shape == batch["input_ids"].shape))
            return module(**batch)
        return forward

    monkeypatch.setattr(torch, "compile", record)
    common = dict(model=str(quiet), train=str(tmp_path / "train.txt"),
                  dev=str(tmp_path / "dev.txt"), max_steps=4, batch_size=4, max_length=16,
                  lr=1e-3, seed=0, progress=False)
    ner(out=str(tmp_path / "compiled"), compile=True, **common)
    ner(out=str(tmp_path / "eager"), **common)
    assert len(seen) == 4
    assert {options["dynamic"] for options, *_ in seen} == {False}
    assert {width for _, width, *_ in seen} <= set(bucket_lengths(16))
    assert all(unpad is False and same for _, _, unpad, same in seen)
    compiled = TokenClassifier.from_pretrained(tmp_path / "compiled")
    eager = TokenClassifier.from_pretrained(tmp_path / "eager")
    moved = changes(TokenClassifier.from_pretrained(quiet, num_labels=len(compiled.id2label)),
                    eager)
    assert max(v for k, v in moved.items() if k.startswith("bert.")) > 1e-4  # it trained
    for name, param in eager.named_parameters():
        torch.testing.assert_close(dict(compiled.named_parameters())[name], param, atol=1e-5,
                                   rtol=0, msg=name)

