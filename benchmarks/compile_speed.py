"""What `torch.compile` buys: eager vs compiled, minift (unpadded and padded) and transformers.

Question: does `torch.compile` (the `--compile` option of every training command) pay off for
the encoder, on which path, and what does compiling cost up front? Inference (forward under
inference_mode) and the training step (forward, backward, fused AdamW) of all-MiniLM-L6-v2,
same weights and batches for every implementation, on full-length batches and on unsorted real
SST-2 batches. Compiled models use ``dynamic=True`` because real batches change shape from batch
to batch (and the unpadded path's token count with them); "compile s" is the wall time of the
first pass over the batches (tracing and code generation included), which the timed rounds
exclude; a variant compiled after another that runs the same code reuses part of its work, so the
first of each mode carries most of the cost.

    python benchmarks/compile_speed.py            # about 10-15 minutes on 2 CPU cores
    python benchmarks/compile_speed.py --quick
"""

from __future__ import annotations

import copy
import time

import torch
from speed_common import (
    call,
    fixed_batches,
    interleaved,
    load_models,
    machine,
    real_batches,
    speed_parser,
    to_device,
    write_report,
)

from minift.core.metrics import format_table
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import resolve_model_dir


def main() -> None:
    parser = speed_parser(__doc__)
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 5)
    n = 2 if args.quick else 4
    tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
    workloads = {
        "fixed 128": fixed_batches(30522, 128, 16, n),
        "SST-2 (real)": real_batches(tokenizer, "sst2", 32, n),
    }
    rows, records = [], []
    for mode in ("inference", "train"):
        models = load_models(device)
        # name: (implementation for `call`, module, call options); each compiled entry gets
        # its own copy of the weights so that training one never moves another.
        variants = {
            "minift": ("minift", models["minift"], {}),
            "minift padded": ("minift", copy.deepcopy(models["minift"]), {"unpad": False}),
            "hf sdpa": ("hf_sdpa", models["hf_sdpa"], {}),
        }
        for name in list(variants):
            impl, module, options = variants[name]
            compiled = torch.compile(copy.deepcopy(module), dynamic=True)
            variants[name + " compiled"] = (impl, compiled, options)
        optimizers = {}
        for name, (_, module, _) in variants.items():
            module.train(mode == "train")
            if mode == "train":
                optimizers[name] = torch.optim.AdamW(module.parameters(), lr=1e-6,
                                                     fused=True)

        for workload, batches in workloads.items():
            batches = to_device(batches, device)
            real = sum(int(b["attention_mask"].sum()) for b in batches)

            def run(name, batches=batches, variants=variants, mode=mode, optimizers=optimizers):
                impl, module, options = variants[name]

                def fn():
                    for b in batches:
                        if mode == "inference":
                            with torch.inference_mode():
                                call(impl, module, b, **options)
                        else:
                            out = call(impl, module, b, **options)
                            out.last_hidden_state.float().square().mean().backward()
                            optimizers[name].step()
                            optimizers[name].zero_grad(set_to_none=True)
                return fn

            first_pass = {}
            for name in variants:  # the first pass compiles: timed apart from the rounds
                start = time.perf_counter()
                run(name)()
                first_pass[name] = time.perf_counter() - start
            timings = interleaved({name: run(name) for name in variants}, device, rounds,
                                  warmup=0)
            tps = {name: real / t["median_s"] for name, t in timings.items()}
            records.append({"mode": mode, "workload": workload, "real_tokens": real,
                            "first_pass_s": first_pass, "timings": timings,
                            "real_tokens_per_s": tps})
            for impl in ("minift", "minift padded", "hf sdpa"):
                rows.append({
                    "mode": mode, "workload": workload, "implementation": impl,
                    "eager tok/s": tps[impl], "compiled tok/s": tps[impl + " compiled"],
                    "compiled / eager": tps[impl + " compiled"] / tps[impl],
                    "compiled / hf sdpa eager": tps[impl + " compiled"] / tps["hf sdpa"],
                    "compile s": first_pass[impl + " compiled"],
                })
            print(format_table(rows[-3:], float_format=".2f"), flush=True)
    table = format_table(rows, float_format=".2f")
    payload = {"machine": machine(device), "rounds": rounds, "quick": args.quick,
               "runs": records}
    name = ("compile_speed" + ("_" + device.type if device.type != "cpu" else "")
            + ("_quick" if args.quick else ""))
    write_report(name, payload, table,
                 "torch.compile (dynamic=True) vs eager: real tokens/s, all-MiniLM-L6-v2, fp32",
                 "python benchmarks/compile_speed.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
