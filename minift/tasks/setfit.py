"""SetFit: few-shot classification by contrastive fine-tuning of a sentence encoder.

With 8 or 16 labelled sentences per class, SetFit (Tunstall et al. 2022) first fine-tunes the
sentence encoder on *pairs* built from them (`minift.core.contrastive`): a pair of sentences of
the same class should embed close together (cosine similarity 1), a pair of different classes far
apart (0). Then it trains a light classifier on the embeddings of the few examples. The defaults
are setfit 1.2's (`SetFitConfig`), and the names follow the setfit library's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minift.core import ddp as distributed
from minift.core.checkpoints import Checkpoints
from minift.core.contrastive import (
    LOSSES,
    SAMPLING_STRATEGIES,
    PairLoss,
    contrastive_loss,
    contrastive_pairs,
)
from minift.core.files import atomic_write
from minift.core.loop import AMP_DTYPES, NonFiniteLossError, TrainConfig, train
from minift.core.model import BertModel
from minift.core.optim import AdamW
from minift.core.sentence import embed_rows, encode
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import load_bert, save_bert
from minift.hf.safetensors import read_safetensors, write_safetensors


@dataclass
class SetFitConfig:
    """Every setting of a SetFit run; the defaults are setfit 1.2's `TrainingArguments`.

    Contrastive phase: `margin` is the "contrastive" loss's, on the cosine distance
    (sentence-transformers' default 0.5); `weight_decay` is setfit's `l2_weight`; `max_grad_norm`
    is transformers' Trainer default. `max_steps` caps the phase: the pairs grow with the square
    of the shots (64 of 6 classes give 122,880 oversampled pairs), so a run with many shots stops
    after `max_steps` steps, its schedule spanning them (unlike setfit's `max_steps`, which
    replaces the epochs, this only ever shortens a run). Head phase: `head` "logistic"
    (scikit-learn's LogisticRegression, inverse regularisation `C`) or "linear" (setfit's
    differentiable `SetFitHead`, trained at `head_lr`, the encoder at `head_body_lr` when
    `end_to_end`). `amp` is the contrastive phase's mixed precision.
    """

    sampling: str = "oversampling"
    num_iterations: int | None = None
    max_steps: int | None = None  # a cap on the contrastive steps; None: every pair, `epochs` times
    loss: str = "cosine"
    margin: float = 0.5
    batch_size: int = 16
    epochs: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 256  # all-MiniLM-L6-v2's max_seq_length
    head: str = "logistic"
    C: float = 1.0
    head_epochs: int = 16
    head_batch_size: int = 2
    head_lr: float = 1e-2
    head_body_lr: float = 1e-5
    end_to_end: bool = False
    seed: int = 42
    amp: str = "off"
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"sampling": SAMPLING_STRATEGIES, "loss": tuple(LOSSES),
                   "head": ("logistic", "linear"), "amp": tuple(AMP_DTYPES)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("num_iterations", "max_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
        for name in ("batch_size", "epochs", "max_length", "head_epochs", "head_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "C", "head_lr", "head_body_lr", "max_grad_norm"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be positive and finite, got {getattr(self, name)}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")


# --- 1. The shots ---------------------------------------------------------------------------------


def sample_shots(labels: Sequence, shots: int, generator: torch.Generator) -> list[int]:
    """Indices of `shots` examples of every class, drawn without replacement, in index order."""
    by_class: dict = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    chosen = []
    for label in sorted(by_class, key=str):
        members = by_class[label]
        if len(members) < shots:
            raise ValueError(f"class {label!r} has {len(members)} examples, fewer than the "
                             f"{shots} shots asked for")
        order = torch.randperm(len(members), generator=generator)[:shots].tolist()
        chosen += [members[k] for k in order]
    return sorted(chosen)


# --- 2. Contrastive fine-tuning of the encoder ----------------------------------------------------


@contextlib.contextmanager
def _pooler_frozen(encoder: BertModel):
    """Mean pooling never reads the pooler: it sits out the phase (its weights get no gradient
    and no update either way; frozen, DDP does not wait for its gradients)."""
    pooler = encoder.pooler.parameters() if encoder.pooler is not None else []
    trained = [param for param in pooler if param.requires_grad]
    for param in trained:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in trained:
            param.requires_grad_(True)


def train_body(encoder: BertModel, tokenizer: Tokenizer, texts: Sequence[str], labels: Sequence,
               config: SetFitConfig, *, log: Callable[[str], None] | None = print,
               out_dir: str | os.PathLike | None = None, resume: bool = False) -> dict:
    """Fine-tune `encoder` in place on SetFit's pairs of `texts`; return what happened.

    The recipe of setfit (through sentence-transformers' trainer): pairs shuffled every epoch,
    AdamW with weight decay on all but biases and LayerNorms, linear warmup over
    ceil(warmup_ratio * steps) then linear decay, gradient norm clipped, dropout on.

    The steps run in `minift.core.loop.train` on a `PairLoss` (under torchrun every rank draws
    the same pairs and order and trains on its rows of every batch of pairs). Its files go to
    `out_dir`, from which `resume=True` continues; without `out_dir` they go to a temporary
    folder, removed afterwards, and no resume checkpoint is written.
    """
    if len(texts) != len(labels):
        raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
    pairs = contrastive_pairs(labels, sampling=config.sampling,
                              num_iterations=config.num_iterations, seed=config.seed)
    n_pos = sum(1 for p in pairs if p[2] == 1.0)
    steps = config.epochs * math.ceil(len(pairs) / config.batch_size)
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)  # the first steps of the shuffled pairs
    if log:
        how = (f"num_iterations={config.num_iterations}" if config.num_iterations
               else f"sampling={config.sampling}")
        log(f"contrastive pairs: {len(pairs)} ({n_pos} positive, {len(pairs) - n_pos} negative) "
            f"from {len(texts)} examples, {how}; {steps} steps of {config.batch_size} pairs"
            + (f" (capped at max_steps={config.max_steps})" if steps == config.max_steps else ""))
    tokens = tokenizer(list(texts), max_length=config.max_length)  # once, padded to the longest
    first, second, targets = (torch.tensor(column) for column in zip(*pairs, strict=True))

    def pair_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        # setfit's order: one generator seeded once, a permutation per epoch.
        generator = torch.Generator().manual_seed(config.seed)
        for _ in range(epoch + 1):
            order = torch.randperm(len(pairs), generator=generator)
        return [{"first": first[rows], "second": second[rows], "labels": targets[rows]}
                for rows in order.split(config.batch_size)]

    loss_fn = LOSSES[config.loss]
    if config.loss == "contrastive":
        loss_fn = functools.partial(contrastive_loss, margin=config.margin)
    folder = tempfile.TemporaryDirectory(prefix="setfit-body-") if out_dir is None else None
    same = ("epochs", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "amp", "seed",
            "progress")
    train_config = TrainConfig(
        out_dir=folder.name if folder else out_dir, log_every=1,
        max_steps=steps if config.max_steps is not None else None,
        save_every=steps + 1 if folder else None,  # a temporary folder: nothing to resume from
        **{name: getattr(config, name) for name in same})
    try:
        with _pooler_frozen(encoder):
            # under torchrun: join the process group (once), so the ranks split each batch
            parallel = distributed.setup(next(encoder.parameters()).device.type)
            result = train(PairLoss(encoder, tokens, loss_fn), pair_batches, train_config,
                           recorder=Checkpoints(resume=resume), parallel=parallel)
    finally:
        if folder:
            folder.cleanup()
    encoder.eval()
    losses = [record["loss"] for record in result.history if "loss" in record]
    return {"pairs": len(pairs), "positive_pairs": n_pos, "negative_pairs": len(pairs) - n_pos,
            "steps": steps,
            "pairs_trained": min(len(pairs) * config.epochs, steps * config.batch_size),
            "first_loss": losses[0], "last_loss": losses[-1]}


# --- 3. The classification head ------------------------------------------------------------------


class LinearHead(nn.Module):
    """Logits (batch, num_labels) from embeddings (batch, hidden): one linear layer.

    With `binary` (two classes, fitted as scikit-learn fits them) the layer has a single output z
    and the logits are [0, z]: their softmax is [1 - sigmoid(z), sigmoid(z)], binary logistic
    regression. Otherwise one output per class (multinomial; setfit's `SetFitHead`).
    """

    def __init__(self, hidden_size: int, num_labels: int, binary: bool = False):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got num_labels={num_labels}")
        if binary and num_labels != 2:
            raise ValueError(f"binary=True needs num_labels=2, got {num_labels}")
        self.num_labels, self.binary = num_labels, binary
        self.linear = nn.Linear(hidden_size, 1 if binary else num_labels)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        z = self.linear(embeddings)
        return torch.cat([torch.zeros_like(z), z], dim=-1) if self.binary else z


def fit_logistic_regression(head: LinearHead, embeddings: torch.Tensor, label_ids: torch.Tensor,
                            C: float = 1.0, max_iter: int = 1000) -> LinearHead:
    """Fit `head` as scikit-learn's `LogisticRegression()` would: return it, fitted in place.

    The objective is scikit-learn's: C * sum_i cross_entropy_i + 0.5 * ||W||^2, the intercept not
    penalised (divided here by C n, which moves no minimum). Two classes are a binary logistic
    regression (a `binary` head), more a multinomial one. It is smooth and convex, so full-batch
    L-BFGS in float64 reaches the minimum scikit-learn's lbfgs solver approaches.
    """
    X = embeddings.detach().to(torch.float64)
    if not bool(torch.isfinite(X).all()):
        raise NonFiniteLossError("fit_logistic_regression: the embeddings hold nan or inf (the "
                                 "encoder's training diverged?); lower the learning rate, or "
                                 "train with amp='off'")
    y = torch.as_tensor(label_ids, device=X.device)
    if y.min() < 0 or y.max() >= head.num_labels:
        raise ValueError(f"label ids must be in 0..{head.num_labels - 1}, found "
                         f"{y.unique().tolist()}")
    weight, bias = (torch.zeros_like(p, dtype=torch.float64, device=X.device).requires_grad_()
                    for p in (head.linear.weight, head.linear.bias))
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = X @ weight.T + bias
        if head.binary:
            data = F.binary_cross_entropy_with_logits(logits[:, 0], y.to(torch.float64))
        else:
            data = F.cross_entropy(logits, y)
        loss = data + weight.pow(2).sum() / (2 * C * len(X))
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny problem: waking a thread pool for every op costs more
    try:
        optimizer.step(closure)
    finally:
        torch.set_num_threads(threads)
    if not all(bool(torch.isfinite(p).all()) for p in (weight, bias)):
        raise NonFiniteLossError(f"fit_logistic_regression: L-BFGS ended on nan or inf weights "
                                 f"(C={C}); the embeddings may be too large to fit")
    with torch.no_grad():
        head.linear.weight.copy_(weight)
        head.linear.bias.copy_(bias)
    return head


def train_head(model: SetFitModel, texts: Sequence[str], label_ids: Sequence[int],
               config: SetFitConfig) -> SetFitModel:
    """Train the head by gradient descent on cross-entropy; with `config.end_to_end` the encoder
    trains too. setfit's recipe for its differentiable head: `head_epochs` epochs of shuffled
    batches of `head_batch_size`, AdamW (head at `head_lr`, encoder at `head_body_lr`, weight
    decay `config.weight_decay` on everything), the learning rates halved every 5 epochs.

    Without `end_to_end` the encoder is frozen, so the embeddings are computed once, in eval mode
    (setfit recomputes them every batch with dropout on).
    """
    labels = torch.as_tensor(list(label_ids))
    device = next(model.encoder.parameters()).device
    groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
    if config.end_to_end:
        groups.append({"params": list(model.encoder.parameters()), "lr": config.head_body_lr})
        tokens = model.tokenizer(list(texts), max_length=model.max_length)
    else:
        frozen = model.embed(texts)
    optimizer = AdamW(groups, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    generator = torch.Generator().manual_seed(config.seed)
    model.train(config.end_to_end)
    for epoch in tqdm(range(config.head_epochs), desc="head", disable=not config.progress):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), config.head_batch_size):
            rows = order[start : start + config.head_batch_size]
            if config.end_to_end:
                embeddings = embed_rows(model.encoder, tokens, rows, normalize=model.normalize)
            else:
                embeddings = frozen[rows.to(device)]
            loss = F.cross_entropy(model.head(embeddings), labels[rows].to(device))
            if not bool(torch.isfinite(loss)):
                raise NonFiniteLossError(f"the head's loss is {loss.item()} at epoch {epoch}, "
                                         f"batch {start // config.head_batch_size}; training "
                                         "stopped before the update. Lower head_lr (and "
                                         "head_body_lr)")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    model.eval()
    return model


# --- 4. The model, its training, saving and loading -----------------------------------------------

HEAD_WEIGHTS = "setfit_head.safetensors"
HEAD_CONFIG = "setfit_head.json"


class SetFitModel(nn.Module):
    """A sentence encoder (mean pooling, L2-normalised), a tokenizer and a `LinearHead`.

    `labels[i]` is the name of class i. Embeddings are normalised as all-MiniLM-L6-v2's
    sentence-transformers pipeline does (its `Normalize` module), which is what setfit's head sees.
    """

    def __init__(self, encoder: BertModel, tokenizer: Tokenizer, head: LinearHead,
                 labels: Sequence[str], *, max_length: int = 256, normalize: bool = True):
        super().__init__()
        if len(labels) != head.num_labels:
            raise ValueError(f"got {len(labels)} label names for a head of {head.num_labels}")
        self.encoder, self.tokenizer, self.head = encoder, tokenizer, head
        self.labels = [str(label) for label in labels]
        self.max_length, self.normalize = max_length, normalize

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Sentence embeddings (len(texts), hidden), without gradients."""
        return encode(self.encoder, self.tokenizer, list(texts), batch_size=batch_size,
                      max_length=self.max_length, normalize=self.normalize)

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (len(texts), num_labels); columns in the order of `labels`."""
        self.head.eval()
        return self.head(self.embed(texts, batch_size)).softmax(dim=-1)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        """The most probable label name of every text."""
        ids = self.predict_proba(texts, batch_size).argmax(dim=-1).tolist()
        return [self.labels[i] for i in ids]

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the encoder in HF format (config.json, model.safetensors), the tokenizer, and
        the head beside them: `setfit_head.safetensors` and `setfit_head.json`."""
        folder = Path(path)
        save_bert(self.encoder, folder)
        self.tokenizer.save_pretrained(folder)
        write_safetensors({k: v.detach() for k, v in self.head.state_dict().items()},
                          folder / HEAD_WEIGHTS)
        config = {"labels": self.labels, "binary": self.head.binary,
                  "max_length": self.max_length, "normalize": self.normalize}
        atomic_write(folder / HEAD_CONFIG, (json.dumps(config, indent=2) + "\n").encode())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> SetFitModel:
        """Load a folder written by `save_pretrained`."""
        folder = Path(path)
        file = folder / HEAD_CONFIG
        if not file.is_file():
            raise ValueError(f"{file}: no {HEAD_CONFIG}; is {folder} a saved SetFit model?")
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON ({err})") from None
        for key in ("labels", "binary", "max_length", "normalize"):
            if key not in config:
                raise ValueError(f"{file}: expected a key {key!r}, found {sorted(config)}")
        encoder = load_bert(folder)
        head = LinearHead(encoder.config.hidden_size, len(config["labels"]), config["binary"])
        head.load_state_dict(read_safetensors(folder / HEAD_WEIGHTS))
        return cls(encoder, Tokenizer.from_pretrained(folder), head.eval(), config["labels"],
                   max_length=config["max_length"], normalize=config["normalize"]).eval()


def train_setfit(encoder: BertModel, tokenizer: Tokenizer, texts: Sequence[str],
                 labels: Sequence[str], config: SetFitConfig | None = None, *,
                 label_names: Sequence[str] | None = None,
                 log: Callable[[str], None] | None = print) -> tuple[SetFitModel, dict]:
    """SetFit's two phases: contrastive fine-tuning of `encoder` (in place), then the head.

    `label_names` fixes the class order (default: the sorted distinct labels). Dropout and the
    head's initialisation draw from torch's global generator, seeded here with `config.seed`.
    """
    config = config or SetFitConfig()
    names = [str(n) for n in (label_names if label_names is not None else sorted(set(labels)))]
    unknown = sorted({str(label) for label in labels} - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the label names {names}")
    torch.manual_seed(config.seed)
    stats = train_body(encoder, tokenizer, texts, labels, config, log=log)
    label_ids = [names.index(str(label)) for label in labels]
    hidden = encoder.config.hidden_size
    if config.head == "logistic":
        head = LinearHead(hidden, len(names), binary=len(names) == 2)
    else:  # setfit's SetFitHead initialisation
        head = LinearHead(hidden, len(names))
        nn.init.xavier_uniform_(head.linear.weight)
        nn.init.constant_(head.linear.bias, 1e-2)
    device = next(encoder.parameters()).device
    model = SetFitModel(encoder, tokenizer, head.to(device), names, max_length=config.max_length)
    if config.head == "logistic":
        fit_logistic_regression(head, model.embed(texts), torch.tensor(label_ids), C=config.C)
    else:
        train_head(model, texts, label_ids, config)
    return model.eval(), {**stats, "config": asdict(config)}
