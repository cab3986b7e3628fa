"""Causal language modelling: a BERT body made a left-to-right writer, fine-tuned on plain text
(the "GPT-style" generation the BERT family can do), scored by perplexity (the number of equally
likely tokens the model hesitates between). The text is ``minift.tasks.mlm.TextSequences``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from minift.core.decoder import IGNORE_INDEX, CausalLM
from minift.data.batches import length_grouped_batches, pad_batch
from minift.hf.checkpoint import read_config_json, resolve_model_dir
from minift.hf.encoder_decoder import load_causal_lm, save_causal_lm, warm_start_causal_lm
from minift.tasks.mlm import TextSequences, batch_seed

# --- 1. The model ---------------------------------------------------------------------------------


class LanguageModel(CausalLM):
    """A ``CausalLM`` that loads and saves HF folders (``BertLMHeadModel``). It adds no state: a
    loaded ``CausalLM`` becomes one by a change of class, as ``minift.fast.unpad.speed_up`` swaps
    modules."""

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, seed: int = 0) -> LanguageModel:
        """A decoder folder (``is_decoder`` in its config.json, as this task saves) as it is,
        in eval mode; an encoder checkpoint warm-started into a decoder (fresh parts drawn from
        ``seed``), in train mode, as ``BertLMHeadModel.from_pretrained(path, is_decoder=True)``."""
        folder = resolve_model_dir(path)
        if read_config_json(folder).get("is_decoder") is True:
            model = load_causal_lm(folder)
        else:
            model = warm_start_causal_lm(folder, seed=seed)
        if model.bert.cross_attention:
            raise ValueError(f"{folder}: a decoder with cross-attention reads an encoder's "
                             "output; a language model has none (load the encoder-decoder)")
        model.__class__ = cls
        return model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write transformers' ``BertLMHeadModel`` folder (config.json, model.safetensors)."""
        save_causal_lm(self, path)


# --- 2. Batches -----------------------------------------------------------------------------------


class LMBatches(Sequence):
    """One epoch of batches of ``sequences``: ``input_ids``, ``attention_mask`` and ``labels``
    (the ids, -100 at padding; the model shifts them), (batch, seq). Shuffled with a generator
    seeded from (seed, epoch), so a resumed run sees the batches of an uninterrupted one."""

    def __init__(self, sequences: TextSequences, batch_size: int, *, seed: int, epoch: int = 0,
                 shuffle: bool = True) -> None:
        self.sequences = sequences
        order = torch.Generator().manual_seed(batch_seed(seed, epoch, 0))
        self.groups = length_grouped_batches(sequences.lengths, batch_size,
                                             generator=order if shuffle else None, shuffle=shuffle)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rows = [self.sequences.input_ids[i] for i in self.groups[index]]
        batch = pad_batch(rows, None, self.sequences.pad_token_id)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "labels": labels}


# --- 3. Perplexity --------------------------------------------------------------------------------


def held_out_loss(model, batches, device, *, shifted: bool, desc: str = "held-out",
                  progress: bool = False) -> tuple[float, int]:
    """The mean next-token cross-entropy over every target of ``batches`` and their count:
    a label that is not -100 (``shifted``: the labels after each row's first, those a causal LM
    predicts from its own inputs). The model's loss is a mean per batch: weighted by targets."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in tqdm(batches, desc=desc, leave=False, disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch["labels"][:, 1:] if shifted else batch["labels"]
            targets = int((labels != IGNORE_INDEX).sum())
            if targets:
                total += model(**batch).loss.item() * targets
                count += targets
    return (total / count if count else float("nan")), count


def lm_metrics(model, batches, device, *, progress: bool = False) -> dict[str, float]:
    """``loss`` (mean next-token cross-entropy over every predicted token: each sequence's
    tokens after the first), ``perplexity`` = exp(loss), and ``tokens``, the count."""
    loss, count = held_out_loss(model, batches, device, shifted=True, progress=progress)
    if count == 0:
        raise ValueError("the held-out text has no token to predict: give more held-out text")
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}
