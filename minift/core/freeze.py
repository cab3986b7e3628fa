"""Freezing: which parameters of a fine-tuned model train (the whole model, the head, or the last
N blocks), for the comparison of lesson 03 and `--freeze`."""

from __future__ import annotations

from torch import nn


def freeze(model: nn.Module, mode: str) -> tuple[int, int]:
    """Choose what trains; return (trainable, total) parameter counts.

    - ``"none"``: everything trains (full fine-tuning).
    - ``"head"``: only the head trains, every parameter outside the encoder ``model.bert``: the
      classifier, or ``MaskedLM``'s transform and output bias (its decoder weight IS the word
      embeddings, so it stays frozen with them). The encoder is a frozen feature extractor
      (pooler included); the classifiers keep it in eval mode while they train
      (``minift.tasks.classify``), so its features are fixed and can be computed once.
    - ``"last-N"`` (classifiers): the last N encoder blocks, the pooler and the classifier train;
      embeddings and the earlier blocks are frozen.
    """
    blocks = model.bert.layers
    if mode == "none":
        trainable = list(model.parameters())
    elif mode == "head":
        encoder = {id(p) for p in model.bert.parameters()}
        trainable = [p for p in model.parameters() if id(p) not in encoder]
    elif mode.startswith("last-") and mode[5:].isdigit():
        n = int(mode[5:])
        if not 1 <= n <= len(blocks):
            raise ValueError(f"freeze mode {mode!r}: N must be between 1 and {len(blocks)}")
        kept = [*blocks[len(blocks) - n :], model.classifier]
        if model.bert.pooler is not None:
            kept.append(model.bert.pooler)
        trainable = [p for module in kept for p in module.parameters()]
    else:
        raise ValueError(f"unknown freeze mode {mode!r}: use 'none', 'head' or 'last-N'")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))
