"""Compiling the training step: length buckets (static shapes) or dynamic shapes, against eager.

Question: does ``torch.compile`` of a fine-tuning step pay, and what does each way of meeting
batches of changing lengths cost in compilations? The step (forward, backward, AdamW) of a
sequence classifier (mean pooling) on MiniLM, or BERT-base's shape with ``--config bert-base``,
over length-grouped SST-2 batches as ``minift finetune`` builds them (batch 32, max_length 128,
and a short last batch, as an epoch ends with), in these variants:

- ``eager``: minift without ``--compile`` (its default path: unpadded on a CPU, padded for
  small batches on a GPU);
- ``eager, buckets``: the padded path on batches padded up to ``bucket_lengths(128)``,
  uncompiled: what the extra padding costs by itself;
- ``compiled, dynamic``: ``torch.compile(dynamic=True)`` on the batches as they are (padded
  path): kernels generic in the length, compiled once or twice;
- ``compiled, buckets``: ``torch.compile(dynamic=False)`` on bucketed batches (padded path):
  what ``--compile`` runs, one set of graphs per (batch, bucket) shape;
- on a GPU, ``compiled, buckets, CUDA graphs``: the same with ``mode="reduce-overhead"``, each
  shape's graphs replayed as CUDA graphs (the optimizer step stays outside).

Each variant trains its own copy of the same weights on the same batches, one after another,
with torch._dynamo's caches emptied before it (so its compilations are its own): a first pass
over the batches, where compilation happens ("first pass s"), then the timed passes (median).
"graphs" is torch._dynamo's count of graphs compiled in the first pass, "later" those compiled
during the timed passes (0 when every shape was met in the first), "breaks" its graph breaks.
Throughput counts real tokens, so padding is work that earns nothing.

    python benchmarks/compile_buckets.py --device cuda --bf16
    python benchmarks/compile_buckets.py --quick                  # CPU: slow, inductor builds C++
    python benchmarks/compile_buckets.py --quick --backend eager  # the graph counts, in seconds
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch
from speed_common import (
    add_config_option,
    data_dir,
    machine,
    model_folder,
    result_name,
    speed_parser,
    timed,
    training_steps,
    write_report,
)

from minift.core.metrics import format_table
from minift.core.optim import make_optimizer
from minift.data.batches import BucketedBatches, bucket_lengths
from minift.data.readers import read_examples
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.tasks.classify import ClassificationDataset, SequenceClassifier

MAX_LENGTH, BATCH_SIZE = 128, 32  # minift finetune's defaults


def training_batches(tokenizer: Tokenizer, n: int) -> list[dict]:
    """``n`` length-grouped SST-2 training batches (seed 0) and a short last batch of 7."""
    examples = read_examples(data_dir() / "sst2" / "train.tsv", text_col="sentence",
                             label_col="label")[: 50 * BATCH_SIZE]
    dataset = ClassificationDataset(examples, tokenizer, max_length=MAX_LENGTH,
                                    label_ids=[int(e.label) for e in examples])
    batches = dataset.batches(BATCH_SIZE, generator=torch.Generator().manual_seed(0))[:n]
    return batches + [dataset.batch(range(7))]


def variants(device: torch.device) -> dict[str, dict]:
    """name -> how it runs: bucketed batches, the padded path, torch.compile's options."""
    runs = {
        "eager": dict(buckets=False, padded=False, compile=None),
        "eager, buckets": dict(buckets=True, padded=True, compile=None),
        "compiled, dynamic": dict(buckets=False, padded=True, compile=dict(dynamic=True)),
        "compiled, buckets": dict(buckets=True, padded=True, compile=dict(dynamic=False)),
    }
    if device.type == "cuda":
        runs["compiled, buckets, CUDA graphs"] = dict(
            buckets=True, padded=True, compile=dict(dynamic=False, mode="reduce-overhead"))
    return runs


def measure(name: str, how: dict, base: torch.nn.Module, batches: list[dict],
            device: torch.device, args) -> dict:
    """One variant: its first pass (compilation included) and ``args.rounds`` timed passes."""
    from torch._dynamo.utils import counters

    model = copy.deepcopy(base)
    if how["padded"]:
        speed_up(model, unpad=False)
    optimizer = make_optimizer(model, lr=1e-6, impl="fused" if device.type == "cuda" else "auto")
    data = BucketedBatches(batches, bucket_lengths(MAX_LENGTH), 0) if how["buckets"] else batches
    data = [{k: v.to(device) for k, v in b.items()} for b in data]
    torch._dynamo.reset()
    counters.clear()
    options = dict(how["compile"] or {})
    if options and args.backend != "inductor":
        options.pop("mode", None)  # CUDA graphs are inductor's
    forward = torch.compile(model, backend=args.backend, **options) if how["compile"] else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())

    def one_pass():
        training_steps(forward, data, optimizer, autocast)

    start = time.perf_counter()
    one_pass()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first = time.perf_counter() - start
    graphs = counters["stats"]["unique_graphs"]
    seconds = [timed(one_pass, device) for _ in range(args.rounds)]
    real = sum(int(b["attention_mask"].sum()) for b in data)
    padded = sum(b["attention_mask"].numel() for b in data)
    return {"variant": name, "graphs": graphs,
            "later": counters["stats"]["unique_graphs"] - graphs,
            "breaks": sum(counters["graph_break"].values()),
            "shapes": len({tuple(b["input_ids"].shape) for b in data}),
            "padding %": 100 * (1 - real / padded), "first pass s": first,
            "median s": statistics.median(seconds), "min s": min(seconds),
            "max s": max(seconds), "tok/s": real / statistics.median(seconds)}


def main() -> None:
    parser = speed_parser(__doc__)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile's backend (eager: dynamo's graphs, no code made)")
    add_config_option(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.rounds = args.rounds or (2 if args.quick else 5)
    folder = model_folder(args.config)
    batches = training_batches(Tokenizer.from_pretrained(folder), 3 if args.quick else 12)
    torch.manual_seed(0)
    base = speed_up(SequenceClassifier.from_pretrained(folder, num_labels=2, pooling="mean")
                    ).to(device).train()
    rows = []
    for name, how in variants(device).items():
        try:
            rows.append(measure(name, how, base, batches, device, args))
        except Exception as error:  # noqa: BLE001 -- a variant that fails is reported, not fatal
            print(f"{name}: failed: {error!r}", flush=True)
            rows.append({"variant": name, "failed": repr(error)[:200]})
            continue
        print(format_table(rows[-1:], float_format=".2f"), flush=True)
    eager = next((r for r in rows if r["variant"] == "eager" and "tok/s" in r), None)
    columns = ["variant", "shapes", "padding %", "graphs", "later", "breaks", "first pass s",
               "median s", "tok/s", "/ eager"]
    table_rows = [{c: r.get(c) for c in columns} | {
        "/ eager": r["tok/s"] / eager["tok/s"] if eager and "tok/s" in r else None}
        for r in rows]
    table = format_table(table_rows, columns, float_format=".2f")
    payload = {"machine": machine(device), "bf16": args.bf16, "backend": args.backend,
               "rounds": args.rounds, "quick": args.quick, "config": args.config,
               "buckets": bucket_lengths(MAX_LENGTH), "runs": rows}
    other = args.config != "minilm"
    name = result_name("compile_buckets", device, args.quick, "_bf16" if args.bf16 else "",
                       f"_{args.config}" if other else "",
                       f"_{args.backend}" if args.backend != "inductor" else "")
    command = "python benchmarks/compile_buckets.py" + " ".join(
        [""] + (["--quick"] if args.quick else []) + (["--bf16"] if args.bf16 else [])
        + ([f"--device {args.device}"] if device.type != "cpu" else [])
        + ([f"--config {args.config}"] if other else [])
        + ([f"--backend {args.backend}"] if args.backend != "inductor" else []))
    model = "BERT-base shape, random weights" if other else "all-MiniLM-L6-v2"
    write_report(name, payload, table,
                 f"torch.compile of the training step: length buckets or dynamic shapes "
                 f"(real tokens/s), {model}, " + ("bf16 autocast" if args.bf16 else "fp32"),
                 command)


if __name__ == "__main__":
    main()
