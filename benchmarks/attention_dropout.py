"""Attention with dropout in training: one hand-written autograd node against autograd's own.

Question: in a training step on a CPU, attention drops probabilities, and SDPA has no fused kernel
for that (it falls back to the plain formula). What does one layer's attention cost, forward and
backward, on the packed sequences of a real batch? Three forms on the same q, k, v (MiniLM's
shape: 12 heads of 32) and the lengths of real unsorted batches of 32 (SST-2, MRPC):
minift's ``varlen_attention`` (``DropoutAttentionPerSequence``: per sequence, its backward
written out), the same plain formula per sequence through autograd (``attention`` on each
sequence, the obvious form that tests hold it to), and SDPA with dropout on the re-padded batch
with a mask (what transformers runs). fp32: minift attends in float32 under bf16 autocast too.

    python benchmarks/attention_dropout.py            # under a minute
    python benchmarks/attention_dropout.py --quick
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from speed_common import interleaved, machine, real_batches, write_report

from minift.core.metrics import format_table
from minift.core.model import additive_mask
from minift.data.tokenizer import Tokenizer
from minift.fast import cpu_kernels as kernels
from minift.fast.unpad import Unpadding, varlen_attention
from minift.hf.checkpoint import resolve_model_dir

HEADS, HEAD_DIM, P = 12, 32, 0.1


def minift_node(q, k, v, unpadding, mask):
    """minift's ``varlen_attention``: ``DropoutAttentionPerSequence``, one autograd node."""
    return varlen_attention(q, k, v, unpadding.lengths, dropout_p=P)


def autograd_per_sequence(q, k, v, unpadding, mask):
    """The plain formula (``model.attention``) on each sequence alone, autograd recording every
    step; its mask drawn by ``kernels.dropout``, as minift's node draws it."""
    outputs, lengths = [], unpadding.lengths
    for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
        qi, ki, vi = (t.transpose(0, 1) for t in (qi, ki, vi))  # (heads, len, d)
        probs = (qi @ ki.transpose(-2, -1) / math.sqrt(HEAD_DIM)).softmax(dim=-1)
        outputs.append((kernels.dropout(probs, P) @ vi).transpose(0, 1))
    return torch.cat(outputs)


def sdpa_padded(q, k, v, unpadding, mask):
    """SDPA with dropout on the re-padded batch, as transformers attends."""
    q, k, v = (unpadding.pad(t).transpose(1, 2) for t in (q, k, v))  # (batch, heads, seq, d)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=P)
    return unpadding.unpad(y.transpose(1, 2))


FORMS = {"minift": minift_node, "autograd per sequence": autograd_per_sequence,
         "sdpa re-padded": sdpa_padded}


def step(form, inputs: tuple, dy: torch.Tensor, repeats: int):
    """``repeats`` forward + backward passes of one attention form."""
    def go():
        for _ in range(repeats):
            torch.autograd.grad(form(*inputs), inputs[:3], dy)
    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu")
    rounds, repeats = (3, 2) if args.quick else (9, 6)
    tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
    gen = torch.Generator().manual_seed(0)
    rows, records = [], []
    for workload in ("sst2", "mrpc"):
        attention_mask = real_batches(tokenizer, workload, 32, 1)[0]["attention_mask"]
        unpadding = Unpadding.from_mask(attention_mask)
        mask = additive_mask(attention_mask, torch.float32)
        lengths = unpadding.lengths
        q, k, v = (torch.randn(sum(lengths), HEADS, HEAD_DIM, generator=gen).requires_grad_()
                   for _ in range(3))
        dy = torch.randn(q.shape, generator=gen)
        inputs = (q, k, v, unpadding, mask)
        timings = interleaved({name: step(form, inputs, dy, repeats)
                               for name, form in FORMS.items()}, device, rounds)
        ms = {name: 1000 * t["median_s"] / repeats for name, t in timings.items()}
        records.append({"workload": workload, "lengths": lengths, "timings": timings,
                        "repeats": repeats, "ms_forward_backward": ms})
        rows.append({"batch": f"{workload} (32 unsorted, {sum(lengths)} tokens)",
                     **{f"{name} ms": value for name, value in ms.items()},
                     "autograd / minift": ms["autograd per sequence"] / ms["minift"],
                     "sdpa re-padded / minift": ms["sdpa re-padded"] / ms["minift"]})
        print(format_table(rows[-1:], float_format=".2f"), flush=True)
    write_report("attention_dropout" + ("_quick" if args.quick else ""),
                 {"machine": machine(device), "rounds": rounds, "quick": args.quick,
                  "runs": records},
                 format_table(rows, float_format=".2f"),
                 "Attention with dropout, forward + backward of one layer (ms): minift's "
                 "hand-written node, autograd per sequence, SDPA re-padded",
                 "python benchmarks/attention_dropout.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
