"""The toy task the loop's tests train (test_loop, test_resume, test_best, test_logbook,
test_checkpoints): a token classifier whose label is the token id modulo CLASSES, its seeded
batches, and the loop run with its files (``Checkpoints``) as the recipes run it."""

import torch
import torch.nn.functional as F
from torch import nn

import minift.core.loop as train_module
from minift.core.checkpoints import Checkpoints
from minift.core.loop import TrainConfig, TrainResult

VOCAB, CLASSES, SEQ = 12, 3, 5
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Toy(nn.Module):
    """Embedding, LayerNorm, dropout, linear; mean cross-entropy over tokens whose label != -100.

    `poison` (optional batch key) multiplies the loss, to inject a non-finite loss or gradient;
    `poison_grad` multiplies the gradient of the logits only (the loss stays finite).
    """

    def __init__(self, dim: int = 8, dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, CLASSES)
        self.frozen = nn.Parameter(torch.zeros(7), requires_grad=False)
        self.seen_dtypes: set[torch.dtype] = set()

    def forward(self, input_ids, labels, poison=None, poison_grad=None):
        logits = self.out(self.drop(self.norm(self.embed(input_ids))))  # (batch, seq, classes)
        if poison_grad is not None and logits.requires_grad:  # a finite loss, a nan gradient
            logits.register_hook(lambda grad: grad * poison_grad)
        if self.training:
            self.seen_dtypes.add(logits.dtype)
        loss = F.cross_entropy(logits.float().reshape(-1, CLASSES), labels.reshape(-1))
        if poison is not None:
            loss = loss * poison
        return {"loss": loss}


def make_batch(gen: torch.Generator, size: int, ignore: float = 0.3) -> dict[str, torch.Tensor]:
    """`size` sequences of SEQ tokens; each label is ignored (-100) with probability `ignore`."""
    input_ids = torch.randint(0, VOCAB, (size, SEQ), generator=gen)
    labels = input_ids % CLASSES
    labels[torch.rand((size, SEQ), generator=gen) < ignore] = -100
    return {"input_ids": input_ids, "labels": labels}


def epochs_of(n_batches: int, batch_size: int = 4, seed: int = 0):
    """`train_batches`: epoch e's batches are drawn from a generator seeded with seed + e."""

    def train_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed + epoch)
        return [make_batch(gen, batch_size) for _ in range(n_batches)]

    return train_batches


def mean_loss(model: nn.Module, batches) -> float:
    device = next(model.parameters()).device
    with torch.no_grad():
        return sum(
            model(**{k: v.to(device) for k, v in batch.items()})["loss"].item() for batch in batches
        ) / len(batches)


def train(model, batches, cfg, *, resume=False, save_best=None, **kwargs) -> TrainResult:
    """The loop with its files in `cfg.out_dir` (resume.pt, log.jsonl, best/), as the recipes
    run it: most tests here are about those files."""
    return train_module.train(model, batches, cfg, **kwargs,
                              recorder=Checkpoints(resume=resume, save_best=save_best))


def config(tmp_path, name: str = "run", **overrides) -> TrainConfig:
    """A quiet config in tmp_path/name with a learning rate a toy model learns with; resume.pt
    is kept at the end, so tests can compare finished runs' states."""
    values = {"lr": 5e-2, "progress": False, "log_every": 1, "keep_resume": True} | overrides
    return TrainConfig(out_dir=tmp_path / name, **values)


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    """Every tensor equal (atol 0: torch.equal) in two dicts with the same keys."""
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)



class Crash(RuntimeError):
    """Stands for the process dying."""


class CrashingBatches(list):
    """A list of batches whose item `crash_at` raises when it is read."""

    def __init__(self, batches, crash_at):
        super().__init__(batches)
        self.crash_at = crash_at

    def __getitem__(self, index):
        if index == self.crash_at:
            raise Crash(f"batch {index}")
        return super().__getitem__(index)

