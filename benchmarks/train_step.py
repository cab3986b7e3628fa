"""Training-step throughput: forward, backward and AdamW step, minift vs transformers.

Question: how many real tokens per second does one fine-tuning step process, for a sequence
classifier on the published MiniLM, with torch's foreach AdamW, its fused AdamW and minift's
hand-written AdamW, in fp32 and under bf16 autocast? Same weights, same batches (fixed length 128
without padding, and unsorted SST-2 / MRPC batches with their real padding); transformers runs
``BertForSequenceClassification`` with SDPA attention. On a CPU, "minift, F.dropout" is minift with
torch's own dropout masks in place of minift's (see benchmarks/dropout.py), and "minift,
F.linear" minift with ``F.linear`` (MKL) in its linear layers in place of oneDNN (see
``minift.fast.cpu_kernels.linear``): what each of those changes buys. On a GPU, where minift already uses torch's dropout and runs small padded batches padded
(see ``minift.fast.unpad.unpads_by_default``), that column is "minift unpadded" instead: the unpadded path forced on.

    python benchmarks/train_step.py            # a few minutes on 2 CPU cores
    python benchmarks/train_step.py --quick
    python benchmarks/train_step.py --device cuda --config bert-base   # random BERT-base weights
    python benchmarks/train_step.py --device cuda --attention nested,padded

``--attention`` adds one column per attention path of ``minift.fast.attention`` ("minift
unpadded, nested", ...): the unpadded path forced on, its attention forced onto that path, in
the rows (fp32 or bf16) where it can run with the model's attention dropout; elsewhere (varlen
has no dropout; it takes no fp32) the cell is empty and the reason is printed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
import transformers
from speed_common import (
    add_attention_option,
    add_config_option,
    attention_path,
    f_linear,
    fixed_batches,
    interleaved,
    machine,
    model_folder,
    real_batches,
    result_name,
    runnable_paths,
    speed_parser,
    to_device,
    write_report,
)

from minift.core.metrics import format_table
from minift.core.optim import make_optimizer
from minift.data.tokenizer import Tokenizer
from minift.fast import cpu_kernels as kernels
from minift.fast.unpad import speed_up
from minift.tasks.classify import SequenceClassifier


def with_labels(batches: list[dict], seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{**b, "labels": torch.randint(0, 2, (len(b["input_ids"]),), generator=gen)}
            for b in batches]


def with_torch_dropout(fn):
    """``fn`` with minift's dropout masks drawn as torch draws them, everything else unchanged:
    ``F.dropout`` in place of minift's ``dropout`` (hidden states), and a ``bernoulli_`` keep
    mask in place of ``keep_mask`` (attention probabilities): what minift's own masks buy in a
    whole step."""
    def run():
        own = kernels.dropout, kernels.keep_mask
        kernels.dropout = F.dropout
        kernels.keep_mask = bernoulli_keep_mask
        try:
            fn()
        finally:
            kernels.dropout, kernels.keep_mask = own
    return run


def bernoulli_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """The keep mask as torch's CPU dropout draws it."""
    return torch.empty_like(x).bernoulli_(1.0 - p).bool()


def with_f_linear(fn, model):
    """``fn`` with ``F.linear`` (MKL on a CPU) in ``model``'s linear layers instead of oneDNN."""
    def run():
        with f_linear(model):
            fn()
    return run


def unpadded(fn, model, path: str | None = None):
    """``fn`` with ``model``'s encoder forced onto the unpadded path, and its attention onto
    ``path`` (None: chosen per batch)."""
    def run():
        own, model.bert.unpad = model.bert.unpad, True
        try:
            with attention_path(model, path):
                fn()
        finally:
            model.bert.unpad = own
    return run


def main() -> None:
    parser = speed_parser(__doc__)
    add_config_option(parser)
    add_attention_option(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 4)
    n = 2 if args.quick else 4
    folder = model_folder(args.config)
    tokenizer = Tokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    ours = speed_up(SequenceClassifier.from_pretrained(folder, num_labels=2, pooling="pooler")
                    ).to(device).train()  # transformers' head: the pooler
    ref = transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=2, attn_implementation="sdpa", dtype=torch.float32  # not "auto"
    ).to(device).train()
    with torch.no_grad():  # the same head on both sides
        ref.classifier.weight.copy_(ours.classifier.weight)
        ref.classifier.bias.copy_(ours.classifier.bias)
    workloads = {
        "fixed 128": fixed_batches(30522, 128, 16, n),
        "SST-2 (real)": real_batches(tokenizer, "sst2", 32, n),
        "MRPC pairs (real)": real_batches(tokenizer, "mrpc", 32, n),
    }
    variants = [("fp32", "foreach"), ("fp32", "fused"), ("fp32", "hand"), ("bf16", "fused")]
    if args.quick:
        variants = [("fp32", "fused"), ("bf16", "fused")]
    rows, records = [], []
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    not_run = {amp: runnable_paths(args.attention, ours, device, dtypes[amp], training=True)
               for amp in sorted({amp for amp, _ in variants})}
    all_paths = [f"minift unpadded, {path}" for path in args.attention]
    for workload, batches in workloads.items():
        batches = to_device(with_labels(batches), device)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        for amp, impl in variants:
            optimizers = {"minift": make_optimizer(ours, lr=1e-5, impl=impl),
                          "hf sdpa": make_optimizer(ref, lr=1e-5, impl=impl)}
            others = (["minift, F.dropout", "minift, F.linear"] if device.type == "cpu"
                      else ["minift unpadded"])
            path_of = {f"minift unpadded, {path}": path for path, why in not_run[amp].items()
                       if why is None}
            others += list(path_of)
            models = {"minift": ours, **{name: ours for name in others}, "hf sdpa": ref}
            optimizers |= {name: optimizers["minift"] for name in others}

            def step_fn(name, batches=batches, amp=amp, optimizers=optimizers, models=models,
                        path_of=path_of):
                def fn():
                    model, opt = models[name], optimizers[name]
                    for b in batches:
                        ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16"
                               else contextlib.nullcontext())
                        with ctx:
                            loss = model(**b).loss
                        loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                if name == "minift, F.dropout":
                    return with_torch_dropout(fn)
                if name == "minift, F.linear":
                    return with_f_linear(fn, ours)
                if name in path_of:
                    return unpadded(fn, ours, path_of[name])
                return unpadded(fn, ours) if name == "minift unpadded" else fn

            timings = interleaved({name: step_fn(name) for name in models}, device, rounds)
            tps = {name: real / t["median_s"] for name, t in timings.items()}
            records.append({"workload": workload, "amp": amp, "optimizer": impl,
                            "real_tokens": real, "timings": timings, "real_tokens_per_s": tps})
            rows.append({"workload": workload, "amp": amp, "AdamW": impl,
                         **{f"{name} tok/s": tps.get(name) for name in [*models, *all_paths]},
                         "minift / hf sdpa": tps["minift"] / tps["hf sdpa"],
                         **{f"{name} / hf sdpa": tps[name] / tps["hf sdpa"] if name in tps
                            else None for name in dict.fromkeys([*others, *all_paths])}})
            print(format_table(rows[-1:], float_format=".2f"), flush=True)
    table = format_table(rows, float_format=".2f")
    payload = {"machine": machine(device), "rounds": rounds, "quick": args.quick,
               "config": args.config, "attention": args.attention,
               "attention_not_measured": {amp: {k: v for k, v in why.items() if v is not None}
                                          for amp, why in not_run.items()},
               "runs": records}
    other = args.config != "minilm"
    name = result_name("train_step", device, args.quick, f"_{args.config}" if other else "")
    write_report(name, payload, table,
                 "Training-step throughput (real tokens/s): forward + backward + AdamW step, "
                 "sequence classifier on "
                 + ("BERT-base shape, random weights" if other else "all-MiniLM-L6-v2"),
                 "python benchmarks/train_step.py" + (" --quick" if args.quick else "")
                 + (f" --device {args.device}" if device.type != "cpu" else "")
                 + (f" --config {args.config}" if other else "")
                 + (f" --attention {','.join(args.attention)}" if args.attention else ""))


if __name__ == "__main__":
    main()
