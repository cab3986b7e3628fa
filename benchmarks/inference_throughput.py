"""Inference throughput: real tokens per second, minift vs transformers, same weights and batches.

Question: how fast does the encoder run a forward pass, at fixed lengths (no padding) and on real
length distributions (unsorted batches of SST-2 sentences, CoNLL-2003 sentences, MRPC pairs)?
Implementations: minift as it runs by default (see ``unpads_by_default``: unpadded on a CPU; on a
GPU padded for small batches, unpadded for large ones), minift forced onto the padded path
(``unpad=False``) and, on a GPU, onto the unpadded one (``unpad=True``); on a CPU also minift
with ``F.linear`` (MKL) in its linear layers instead of oneDNN ("minift, F.linear": what the
choice of matrix library buys, see ``minift.fast.cpu_kernels.linear``; where speed_up's one-time timing
chose ``F.linear`` already, the two columns run the same code); transformers with SDPA attention
and with eager attention. Throughput counts real tokens only, so padding is work that earns
nothing. The page faults per round (median, thousands) count
memory the system handed out fresh and zeroed on first touch: allocation cost beyond arithmetic.

    python benchmarks/inference_throughput.py            # a few minutes on 2 CPU cores
    python benchmarks/inference_throughput.py --quick    # a smoke run
    python benchmarks/inference_throughput.py --device cuda --bf16
    python benchmarks/inference_throughput.py --device cuda --batch-size 128   # larger batches
    python benchmarks/inference_throughput.py --device cuda --bf16 --config bert-base
    python benchmarks/inference_throughput.py --device cuda --bf16 --attention varlen,nested,padded
    python benchmarks/inference_throughput.py --device cuda --cuda-graphs   # + CUDA graphs

``--attention`` adds one column per attention path of ``minift.fast.attention`` ("minift
unpadded, varlen", ...): the unpadded path forced on, its attention forced onto that path; a
path that cannot run here (varlen on a CPU, or in fp32) is named with the reason and left out.

``--cuda-graphs`` adds "minift cuda graphs": the padded path replayed from one CUDA graph per
shape (``minift.fast.cuda_graphs.GraphedEncoder``), the real batches padded up to bucket lengths
(``minift.data.batches.pad_to_bucket``) so that a few graphs serve them all; that padding is
work it pays for, as throughput counts real tokens. On a CPU the flag is a no-op that says so.
"""

from __future__ import annotations

import contextlib

import torch
from speed_common import (
    add_attention_option,
    add_config_option,
    attention_path,
    call,
    f_linear,
    fixed_batches,
    interleaved,
    load_models,
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
from minift.data.batches import bucket_lengths, pad_to_bucket
from minift.data.tokenizer import Tokenizer

GRAPHS = "minift cuda graphs"
# The graphs' lengths: the real workloads' buckets (max_length 128) and the fixed lengths.
GRAPH_BUCKETS = sorted({*bucket_lengths(128), 32, 128, 512})


def ratio(tps: dict, a: str, b: str) -> float | None:
    """tps[a] / tps[b], None where ``a`` did not run."""
    return tps[a] / tps[b] if a in tps else None


def cuda_graph_runs(device: torch.device, models: dict) -> dict:
    """``{GRAPHS: the graphed encoder}`` on a GPU; on a CPU nothing, saying so."""
    if device.type != "cuda":
        print("--cuda-graphs: no CUDA device, so no CUDA-graph column (a CPU launches no "
              "kernels to save)", flush=True)
        return {}
    from minift.fast.cuda_graphs import GraphedEncoder

    return {GRAPHS: GraphedEncoder(models["minift"])}


def main() -> None:
    parser = speed_parser(__doc__)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for every model")
    parser.add_argument("--batch-size", type=int, default=32, help="of the real workloads")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="add minift replayed from CUDA graphs (a GPU only)")
    add_config_option(parser)
    add_attention_option(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 5)
    n = 2 if args.quick else 6
    bs = args.batch_size
    models = load_models(device, config=args.config)
    tokenizer = Tokenizer.from_pretrained(model_folder(args.config))
    workloads = {
        "fixed 32": fixed_batches(30522, 32, 32, n),
        "fixed 128": fixed_batches(30522, 128, 16, n),
        "fixed 512": fixed_batches(30522, 512, 4 if device.type == "cpu" else 32, n),
        "SST-2 (real)": real_batches(tokenizer, "sst2", bs, n),
        "CoNLL-2003 (real)": real_batches(tokenizer, "conll", bs, n),
        "MRPC pairs (real)": real_batches(tokenizer, "mrpc", bs, n),
    }
    runs_of = {"minift": dict(), "minift padded": dict(unpad=False)}
    if device.type == "cpu":  # F.linear: MKL in place of oneDNN (see minift.fast.cpu_kernels.linear)
        runs_of["minift, F.linear"] = dict()
    else:  # on a CPU the default is the unpadded path
        runs_of["minift unpadded"] = dict(unpad=True)
    not_run = runnable_paths(args.attention, models["minift"], device,
                             torch.bfloat16 if args.bf16 else torch.float32, training=False)
    path_of = {f"minift unpadded, {path}": path for path, why in not_run.items() if why is None}
    runs_of |= {name: dict(unpad=True) for name in path_of}
    model_of = {name: models["minift"] for name in runs_of}
    model_of |= {"hf sdpa": models["hf_sdpa"], "hf eager": models["hf_eager"]}
    if args.cuda_graphs:
        model_of |= cuda_graph_runs(device, models)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())
    rows, records = [], []
    for workload, batches in workloads.items():
        batches = to_device(batches, device)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        total = sum(b["attention_mask"].numel() for b in batches)

        bucketed = ([pad_to_bucket(b, GRAPH_BUCKETS, tokenizer.pad_token_id) for b in batches]
                    if GRAPHS in model_of else [])

        def run(name, batches=batches, bucketed=bucketed):
            def fn():
                library = (f_linear(model_of[name]) if name == "minift, F.linear"
                           else contextlib.nullcontext())
                path = (attention_path(model_of[name], path_of[name]) if name in path_of
                        else contextlib.nullcontext())
                with torch.inference_mode(), autocast, library, path:
                    for b in bucketed if name == GRAPHS else batches:
                        call(name, model_of[name], b, **runs_of.get(name, {}))
            return fn

        names = list(model_of)
        if GRAPHS in names:  # records this workload's graphs; a failure empties their cells
            try:
                run(GRAPHS)()
            except Exception as error:  # noqa: BLE001 -- reported, and the rest still runs
                print(f"--cuda-graphs failed on {workload}: {error!r}", flush=True)
                names.remove(GRAPHS)
        timings = interleaved({name: run(name) for name in names}, device, rounds)
        tps = {name: real / t["median_s"] for name, t in timings.items()}
        records.append({"workload": workload, "real_tokens": real, "padded_tokens": total,
                        "padding_fraction": 1 - real / total, "timings": timings,
                        "real_tokens_per_s": tps})
        rows.append({"workload": workload, "padding %": 100 * (1 - real / total),
                     **{f"{name} tok/s": tps.get(name) for name in model_of},
                     "minift / hf sdpa": tps["minift"] / tps["hf sdpa"],
                     "minift / hf eager": tps["minift"] / tps["hf eager"],
                     **({"minift, F.linear / hf sdpa": tps["minift, F.linear"] / tps["hf sdpa"]}
                        if "minift, F.linear" in tps else {}),
                     **{f"{name} / hf sdpa": tps[name] / tps["hf sdpa"] for name in path_of},
                     **({"cuda graphs / minift": ratio(tps, GRAPHS, "minift"),
                         "cuda graphs / minift padded": ratio(tps, GRAPHS, "minift padded")}
                        if GRAPHS in model_of else {}),
                     **{f"{name} page faults (k)": timings[name]["median_page_faults"] / 1000
                        for name in ("minift", "hf sdpa")}})
        print(format_table(rows[-1:], float_format=".2f"), flush=True)
    table = format_table(rows, float_format=".2f")
    payload = {"machine": machine(device), "bf16": args.bf16, "rounds": rounds,
               "quick": args.quick, "batch_size": bs, "config": args.config,
               "attention": args.attention,
               "attention_not_measured": {k: v for k, v in not_run.items() if v is not None},
               "cuda_graphs": GRAPHS in model_of, "graph_buckets": GRAPH_BUCKETS,
               "workloads": records}
    other = args.config != "minilm"
    name = result_name("inference_throughput", device, args.quick, "_bf16" if args.bf16 else "",
                       f"_bs{bs}" if bs != 32 else "", f"_{args.config}" if other else "")
    command = "python benchmarks/inference_throughput.py" + " ".join(
        [""] + (["--quick"] if args.quick else []) + (["--bf16"] if args.bf16 else [])
        + ([f"--device {args.device}"] if device.type != "cpu" else [])
        + ([f"--batch-size {bs}"] if bs != 32 else [])
        + ([f"--config {args.config}"] if other else [])
        + ([f"--attention {','.join(args.attention)}"] if args.attention else [])
        + (["--cuda-graphs"] if GRAPHS in model_of else []))
    model = "BERT-base shape, random weights" if other else "all-MiniLM-L6-v2"
    write_report(name, payload, table,
                 f"Inference throughput (real tokens/s), {model}, fp32" +
                 (" + bf16 autocast" if args.bf16 else ""), command)


if __name__ == "__main__":
    main()
