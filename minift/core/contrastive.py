"""SetFit's contrastive phase: pairs of sentences, their losses, and the module that trains on them.

A pair of sentences of the same class should embed close together (cosine similarity 1), a pair
of different classes far apart (0). `contrastive_pairs` builds the pairs as the setfit library
does; `cosine_similarity_loss` (setfit's default) and `contrastive_loss` score a batch of them;
`PairLoss` is the module `minift.core.loop.train` runs (`minift.tasks.setfit` uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minift.core.model import BertModel
from minift.core.sentence import embed_rows

SAMPLING_STRATEGIES = ("oversampling", "undersampling", "unique")


def shuffled_combinations(n: int, seed: int) -> list[tuple[int, int]]:
    """Every index pair (i, j) with i <= j, in an order shuffled by `seed`.

    A sentence is paired with itself too (combinations *with* replacement, as setfit's
    `shuffle_combinations`), so n sentences give n (n + 1) / 2 pairs. The shuffle is numpy's
    `RandomState(seed).permutation`, setfit's own, so seed 42 (the one setfit always uses) gives
    its order exactly.
    """
    first, second = np.triu_indices(n, 0)
    order = np.random.RandomState(seed).permutation(len(first))
    return [(int(first[k]), int(second[k])) for k in order]


def contrastive_pairs(labels: Sequence, *, sampling: str = "oversampling",
                      num_iterations: int | None = None,
                      seed: int = 42) -> list[tuple[int, int, float]]:
    """SetFit's training pairs over `labels`: `(i, j, 1.0)` same class, `(i, j, 0.0)` not.

    All n (n + 1) / 2 pairs are split into positives and negatives; then as many of each are
    taken as the strategy says, cycling through a list when more are asked than it holds:

    - "unique": each pair once;
    - "oversampling" (setfit's default): the smaller side repeated up to the larger one's size;
    - "undersampling": the larger side cut to the smaller one's size;
    - `num_iterations` (legacy; overrides the strategy): `num_iterations * n` of each.

    Positives and negatives alternate (pos, neg, pos, ...), the rest of the longer side at the
    end. Counts, pairs and order equal `list(setfit.sampler.ContrastiveDataset(...))` for the same
    labels and `seed=42` (a test holds them equal). A class with a single example has only its
    self-pair (i, i) as a positive, which teaches nothing: setfit accepts it, and so does this.
    Fewer than two classes leaves no negative pair: that is a ValueError.
    """
    if sampling not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling must be one of {SAMPLING_STRATEGIES}, got {sampling!r}")
    if num_iterations is not None and num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1 or None, got {num_iterations}")
    classes = set(labels)
    if len(classes) < 2:
        found = f"the single class {next(iter(classes))!r}" if classes else "no examples"
        raise ValueError(f"SetFit needs examples of at least two classes, found {found}")
    positives, negatives = [], []
    for i, j in shuffled_combinations(len(labels), seed):
        if labels[i] == labels[j]:
            positives.append((i, j, 1.0))
        else:
            negatives.append((i, j, 0.0))
    if num_iterations is not None:
        n_pos = n_neg = num_iterations * len(labels)
    elif sampling == "unique":
        n_pos, n_neg = len(positives), len(negatives)
    elif sampling == "undersampling":
        n_pos = n_neg = min(len(positives), len(negatives))
    else:
        n_pos = n_neg = max(len(positives), len(negatives))
    pairs = []
    for k in range(max(n_pos, n_neg)):
        if k < n_pos:
            pairs.append(positives[k % len(positives)])
        if k < n_neg:
            pairs.append(negatives[k % len(negatives)])
    return pairs


def cosine_similarity_loss(first: torch.Tensor, second: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error between cos(first, second) and the 1/0 label, over the batch.

    sentence-transformers' `CosineSimilarityLoss` (setfit's default). first, second: (pairs,
    hidden); labels: (pairs,) floats.
    """
    return F.mse_loss(F.cosine_similarity(first, second), labels.float())


def contrastive_loss(first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor,
                     margin: float = 0.5) -> torch.Tensor:
    """Hadsell et al.'s contrastive loss on the cosine distance d = 1 - cos:
    mean of 0.5 (y d^2 + (1 - y) max(0, margin - d)^2).

    Positives are pulled together; negatives are pushed apart only until they are `margin` away,
    so pairs that are already far apart stop costing anything (sentence-transformers'
    `ContrastiveLoss` with its default cosine distance).
    """
    distance = 1 - F.cosine_similarity(first, second)
    labels = labels.float()
    losses = labels * distance.pow(2) + (1 - labels) * F.relu(margin - distance).pow(2)
    return 0.5 * losses.mean()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"cosine": cosine_similarity_loss,
                                                  "contrastive": contrastive_loss}


def embed_pairs(encoder: BertModel, tokens, first: torch.Tensor, second: torch.Tensor, *,
                dedupe: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled embeddings of both sides of a batch of pairs: two (pairs, hidden) tensors.

    `tokens` holds every training sentence tokenized once (an `Encoding`, padded to the longest);
    `first` and `second` index into it. With few shots the same sentence sits in many pairs of a
    batch (16 pairs over 32 sentences hold about 20 distinct ones), so with `dedupe` each distinct
    sentence runs through the encoder once and its embedding is shared. The loss and gradient are
    those of embedding every side on its own (exactly so without dropout; a test holds the two
    equal); with dropout a repeated sentence shares one dropout mask.
    """
    both = torch.cat([first, second]).to(tokens.input_ids.device)
    rows, inverse = torch.unique(both, return_inverse=True) if dedupe else (both, None)
    embeddings = embed_rows(encoder, tokens, rows)  # (rows, hidden)
    if inverse is not None:
        embeddings = embeddings[inverse.to(embeddings.device)]  # (2 * pairs, hidden)
    return embeddings[: len(first)], embeddings[len(first) :]


class PairLoss(nn.Module):
    """The contrastive phase as a module `minift.core.loop.train` trains: `forward(first, second,
    labels)` returns `{"loss": mean pair loss}` over a batch of pairs (`tokens`, `first` and
    `second` as in `embed_pairs`; `labels` (pairs,) 1.0 for the same class, else 0.0). Each pair
    is one target, so the loop weights a batch by its number of pairs.
    """

    def __init__(self, encoder: BertModel, tokens, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.encoder, self.tokens, self.loss_fn = encoder, tokens, loss_fn

    def forward(self, first: torch.Tensor, second: torch.Tensor, labels: torch.Tensor) -> dict:
        a, b = embed_pairs(self.encoder, self.tokens, first, second)
        return {"loss": self.loss_fn(a, b, labels.float())}
