"""Activation checkpointing: what it saves in peak memory and what it costs in time, per step.

Question: a training step (forward, backward, AdamW) of a sequence classifier keeps every
block's activations for the backward pass; with activation checkpointing
(`minift.core.model.set_activation_checkpointing`) it keeps only each block's input and recomputes
the rest during backward. How much peak memory does that save, and how much slower is the
step, at sequence lengths 128 and 512? Two models: the published all-MiniLM-L6-v2 (6 layers,
hidden 384) and a randomly initialised BERT-base shape (12 layers, hidden 768), full-length
batches. The transformers row (`gradient_checkpointing_enable()`, same weights) is the
reference for the same trade.

Peak memory: each measurement runs in a fresh process so one cannot inherit another's
allocations. Time: the plain and the checkpointed step take turns on the same model in one
process (the flag is switched between rounds), so both see the same machine load. On the
CPU the peak is the growth of the resident set during one training step above what the process
held before it (after a warm-up step, so the optimizer state already exists; Linux's peak-RSS
counter is reset through /proc/self/clear_refs just before). So that the resident set follows
the live tensors, the child asks glibc to serve every allocation over 128 KiB with its own
mapping (MALLOC_MMAP_THRESHOLD_, which returns it to the system when freed) and trims the heap
before measuring; otherwise memory freed by the warm-up stays resident and hides the peak. On
CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the step.

    python benchmarks/activation_checkpointing.py            # about 10 minutes on 2 CPU cores
    python benchmarks/activation_checkpointing.py --quick    # MiniLM only, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = {  # name: (config overrides for a random model, or None for the published MiniLM)
    "minilm": None,
    "bert-base shape": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072),
}


def _model_folder(model: str, tmp: str) -> Path:
    """The checkpoint folder: MiniLM, or a seeded random BERT of the named shape."""
    from minift.hf.checkpoint import resolve_model_dir

    folder = resolve_model_dir("minilm")
    if MODELS[model] is None:
        return folder
    import transformers

    config = transformers.BertConfig.from_pretrained(folder)
    for key, value in MODELS[model].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp)
    return Path(tmp)


def build(impl: str, model: str, device: torch.device, checkpointing: bool = False):
    """The classifier, with activation checkpointing set: (module, switch(on: bool))."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = _model_folder(model, tmp)
        if impl == "minift":
            from minift.core.model import set_activation_checkpointing
            from minift.fast.unpad import speed_up
            from minift.tasks.classify import SequenceClassifier

            net = speed_up(SequenceClassifier.from_pretrained(folder, num_labels=2))

            def switch(on: bool) -> None:
                set_activation_checkpointing(net, on)
        else:
            import transformers

            net = transformers.BertForSequenceClassification.from_pretrained(
                folder, num_labels=2, attn_implementation="sdpa")

            def switch(on: bool) -> None:
                if on:
                    net.gradient_checkpointing_enable(
                        gradient_checkpointing_kwargs={"use_reentrant": False})
                else:
                    net.gradient_checkpointing_disable()
    switch(checkpointing)
    return net.to(device).train(), switch


def training_step(net, seq: int, batch_size: int, device: torch.device):
    """A full-length random batch and a function that runs one AdamW step on it."""
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (batch_size, seq), generator=gen),
             "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
             "token_type_ids": torch.zeros(batch_size, seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,), generator=gen)}
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, foreach=True)

    def step():
        net(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def child(impl: str, model: str, checkpointing: bool, seq: int, batch_size: int,
          device: str) -> None:
    """One peak-memory measurement of a training step; prints one JSON line."""
    sys.path.insert(0, str(HERE))
    from speed_common import peak_bytes

    dev = torch.device(device)
    net, _ = build(impl, model, dev, checkpointing)
    step = training_step(net, seq, batch_size, dev)
    step()  # warm-up: the optimizer state exists from here on
    peak = peak_bytes(step, dev)
    print(json.dumps({"peak_bytes": peak}))


def step_times(impl: str, model: str, seq: int, batch_size: int, device: str,
               rounds: int) -> dict[bool, float]:
    """Median seconds of a training step, plain and checkpointed, taking turns on one model."""
    from speed_common import timed

    dev = torch.device(device)
    net, switch = build(impl, model, dev)
    step = training_step(net, seq, batch_size, dev)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds + 1):
        order = (False, True) if r % 2 else (True, False)
        for on in order:
            switch(on)
            seconds = timed(step, dev)
            if r > 0:  # the first round warms up both
                times[on].append(seconds)
    return {on: statistics.median(t) for on, t in times.items()}


def peak_memory(impl: str, model: str, checkpointing: bool, seq: int, batch: int,
                device: str) -> int:
    """Peak bytes of a training step, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--device", device, "--child", impl, model,
           str(int(checkpointing)), str(seq), str(batch)]
    from speed_common import MEASURE_ENV

    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | MEASURE_ENV,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=5, metavar=("IMPL", "MODEL", "CHECKPOINTING", "SEQ",
                                                     "BATCH"))
    args = parser.parse_args()
    if args.child:
        impl, model, ckpt, seq, batch = args.child
        child(impl, model, ckpt == "1", int(seq), int(batch), args.device)
        return
    sys.path.insert(0, str(HERE))
    from speed_common import machine, write_report

    from minift.core.metrics import format_table

    models = ["minilm"] if args.quick else list(MODELS)
    rounds = 1 if args.quick else 3
    batch = 8
    rows, records = [], []
    for model in models:
        for seq in (128, 512):
            for impl in ("minift", "transformers"):
                seconds = step_times(impl, model, seq, batch, args.device, rounds)
                result = {ckpt: {"peak_bytes": peak_memory(impl, model, ckpt, seq, batch,
                                                           args.device),
                                 "median_s": seconds[ckpt]} for ckpt in (False, True)}
                records.append({"impl": impl, "model": model, "seq": seq, "batch_size": batch,
                                "rounds": rounds, "plain": result[False],
                                "checkpointed": result[True]})
                plain, ckpt = result[False], result[True]
                rows.append({
                    "model": model, "seq": seq, "impl": impl,
                    "peak MiB": plain["peak_bytes"] / 2**20,
                    "checkpointed MiB": ckpt["peak_bytes"] / 2**20,
                    "memory ratio": ckpt["peak_bytes"] / max(plain["peak_bytes"], 1),
                    "step s": plain["median_s"], "checkpointed s": ckpt["median_s"],
                    "time ratio": ckpt["median_s"] / plain["median_s"],
                })
                print(format_table(rows[-1:], float_format=".2f"), flush=True)
    table = format_table(rows, float_format=".2f")
    dev = torch.device(args.device)
    name = ("activation_checkpointing" + ("_" + dev.type if dev.type != "cpu" else "")
            + ("_quick" if args.quick else ""))
    write_report(
        name, {"machine": machine(dev), "quick": args.quick, "runs": records}, table,
        f"Activation checkpointing: peak memory and time of a training step (batch {batch}, "
        "fp32, AdamW); ratios are checkpointed / plain",
        "python benchmarks/activation_checkpointing.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
