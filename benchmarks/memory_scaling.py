"""Peak memory and time as the sequence grows: minift vs transformers, inference and training.

Question: how do time and peak memory of a forward pass (inference) and of forward + backward
(training) grow with sequence length, and how much memory does minift need compared with
transformers (SDPA and eager attention)? Each measurement runs in a fresh process so one cannot
inherit another's allocations. On the CPU the peak is the growth of the resident set above what
the process held after loading the model and making the batch (``speed_common.peak_bytes``:
Linux's peak-RSS counter reset just before, the heap trimmed, large allocations on mappings of
their own); on CUDA it is ``torch.cuda.max_memory_allocated``.
The last rows use unsorted SST-2 batches, whose padding minift's unpadded path does not store.
The times here pay for that allocator setting (a fresh mapping per large tensor) and are not
interleaved: read them for how time grows with length; inference_throughput.py and
train_step.py are the speed comparisons.

    python benchmarks/memory_scaling.py            # a few minutes on 2 CPU cores
    python benchmarks/memory_scaling.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
IMPLS = ("minift", "hf_sdpa", "hf_eager")


def child(impl: str, mode: str, workload: str, batch_size: int, device: str, repeats: int) -> None:
    """One measurement; prints one JSON line."""
    sys.path.insert(0, str(HERE))
    from speed_common import call, fixed_batches, load_models, peak_bytes, real_batches, to_device

    from minift.data.tokenizer import Tokenizer
    from minift.hf.checkpoint import resolve_model_dir

    dev = torch.device(device)
    model = load_models(dev)[impl]
    if workload.startswith("sst2"):
        tok = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
        batch = real_batches(tok, "sst2", batch_size, 1)[0]
    else:
        batch = fixed_batches(30522, int(workload), batch_size, 1)[0]
    batch = to_device([batch], dev)[0]
    model.train(mode == "train")
    if mode == "train":
        for p in model.parameters():
            p.requires_grad_(True)

    def op():
        if mode == "train":
            out = call(impl, model, batch)
            out.last_hidden_state.float().square().mean().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                call(impl, model, batch)

    if dev.type == "cuda":
        op()  # CUDA's caching allocator and kernels settle on a first call
    peak = peak_bytes(op, dev)
    times = []
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        op()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    print(json.dumps({"peak_bytes": peak, "median_s": statistics.median(times),
                      "real_tokens": int(batch["attention_mask"].sum())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=5, metavar=("IMPL", "MODE", "WORKLOAD", "BATCH", "REP"))
    args = parser.parse_args()
    if args.child:
        impl, mode, workload, batch, rep = args.child
        child(impl, mode, workload, int(batch), args.device, int(rep))
        return
    sys.path.insert(0, str(HERE))
    from speed_common import MEASURE_ENV, machine, result_name, write_report

    from minift.core.metrics import format_table

    lengths = ["128", "512"] if args.quick else ["64", "128", "256", "512"]
    workloads = [(n, 8) for n in lengths] + [("sst2", 32)]
    repeats = 1 if args.quick else 3
    rows, records = [], []
    for mode in ("inference", "train"):
        for workload, batch in workloads:
            result = {}
            for impl in IMPLS:
                cmd = [sys.executable, __file__, "--device", args.device, "--child", impl, mode,
                       workload, str(batch), str(repeats)]
                done = subprocess.run(cmd, capture_output=True, text=True,
                                      env=os.environ | MEASURE_ENV, check=False)
                if done.returncode:
                    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
                result[impl] = json.loads(done.stdout.strip().splitlines()[-1])
            records.append({"mode": mode, "workload": workload, "batch_size": batch,
                            "results": result})
            mib = {impl: result[impl]["peak_bytes"] / 2**20 for impl in IMPLS}
            rows.append({
                "mode": mode, "seq": "SST-2 (real)" if workload == "sst2" else workload,
                "batch": batch,
                **{f"{impl} MiB": mib[impl] for impl in IMPLS},
                "memory minift / hf_sdpa": mib["minift"] / max(mib["hf_sdpa"], 1e-9),
                **{f"{impl} ms": 1e3 * result[impl]["median_s"] for impl in IMPLS},
                "time minift / hf_sdpa": result["minift"]["median_s"]
                / result["hf_sdpa"]["median_s"],
            })
            print(format_table(rows[-1:], float_format=".2f"), flush=True)
    table = format_table(rows, float_format=".2f")
    dev = torch.device(args.device)
    name = result_name("memory_scaling", dev, args.quick)
    write_report(name, {"machine": machine(dev), "quick": args.quick, "runs": records}, table,
                 "Peak memory and time vs sequence length, all-MiniLM-L6-v2, fp32",
                 "python benchmarks/memory_scaling.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
