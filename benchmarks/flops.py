"""Achieved FLOP/s: how much of the machine's matmul peak minift and transformers turn into work.

Question: of the floating-point work the hardware could do, how much goes into the model's useful
arithmetic, for inference and for a training step, minift (unpadded) against transformers (SDPA
attention), same weights, same batches (fixed length 128 without padding, unsorted SST-2 and MRPC
batches with their real padding), in fp32 and under bf16 autocast?

The peak: on a CPU there is no datasheet to trust (clocks, cores, vector units and the thread
count all move it), so it is measured: the best of several large square matmuls in the dtype of
the run, at the same thread count as the benchmark, taken before and after the model runs, in
float32 through both of PyTorch's CPU matrix libraries (MKL behind ``torch.mm``, oneDNN behind
minift's linear layers: on an AMD CPU they differ by about 2x). On a
GPU the same measurement is reported beside the datasheet's dense peak (MFU, the usual figure),
for the cards in ``DATASHEET_TFLOPS``; any other card says "unknown".

The work: ``count_flops`` below, analytic and small. Only matmuls count (LayerNorm, GELU, softmax,
the embedding lookups and the optimizer step are left out: a few percent at most).

- Per token and per layer, the linear layers cost 2 FLOPs per weight: Q, K, V and the output
  projection (hidden x hidden each), the feed-forward up and down (hidden x intermediate each).
- Attention scores and values (q k^T, then p v) cost 4 * keys * hidden per query token per layer.
  "Useful" counts a real token attending to the real tokens of its own sequence; "executed" counts
  what the kernels run: every position of the padded (batch, seq) batch attends to all seq keys,
  as SDPA with a mask does on the CPU. minift runs unpadded and attends per sequence on a CPU
  (executes only the useful work) and runs padded batches padded on a GPU (see ``BertModel``).
- The pooler (hidden x hidden) and, when training, the classifier run once per sequence.
- A training step is forward + backward, and backward costs twice the forward: 3x in all.

Useful FLOP/s counts only real tokens, the same numerator for both implementations, so its ratio
is the speed ratio; padding is work that earns nothing. "Executed" FLOP/s counts padding too:
transformers computes every pad token through every layer (its padding tax is executed / useful),
minift none on a CPU and all of it on a GPU.

    python benchmarks/flops.py            # several minutes on 2 CPU cores
    python benchmarks/flops.py --quick    # a smoke run
    python benchmarks/flops.py --device cuda
    python benchmarks/flops.py --device cuda --config bert-base   # random BERT-base weights
"""

from __future__ import annotations

import contextlib

import torch
import transformers
from speed_common import (
    add_config_option,
    call,
    fixed_batches,
    interleaved,
    load_models,
    machine,
    model_folder,
    real_batches,
    result_name,
    speed_parser,
    timed,
    to_device,
    write_report,
)
from train_step import with_labels

from minift.core.metrics import format_table
from minift.core.model import BertConfig
from minift.core.optim import make_optimizer
from minift.data.tokenizer import Tokenizer
from minift.fast import cpu_kernels as kernels
from minift.fast.unpad import speed_up
from minift.tasks.classify import SequenceClassifier

# Dense (no sparsity) tensor-core bf16 and plain fp32 (not TF32) peaks in TFLOP/s, from NVIDIA's
# datasheets. The most specific name found in the device name wins ("H100 PCIe" before "H100").
DATASHEET_TFLOPS = {
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "H100": {"bf16": 989.0, "fp32": 67.0},  # SXM
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "fp32": 60.0},
    "H200": {"bf16": 989.0, "fp32": 67.0},  # SXM
    "H200 NVL": {"bf16": 835.0, "fp32": 60.0},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- the work ----------------------------------------------------------------------------------


def count_flops(
    config: BertConfig, attention_mask: torch.Tensor, num_labels: int = 0
) -> dict[str, int]:
    """Forward-pass matmul FLOPs of one (batch, seq) batch, three ways.

    useful:   real tokens only, each attending to its own sequence's real tokens.
    padded:   what a padded model executes: every position through every layer, attention over
              all seq keys (transformers, minift with ``unpad=False``).
    repadded: linear layers on real tokens, attention re-padded: what minift executes on a GPU
              with ``unpad=True`` on a GPU (on a CPU it attends per sequence and executes
              ``useful``; by default on a GPU it executes ``padded``).
    cls_only, repadded_cls_only, padded_cls_only: ``useful``, ``repadded`` and ``padded`` when
              the last block computes the first token of each sequence alone (minift's
              sequence classifier, in training).
    The pooler and a ``num_labels`` classifier run once per sequence in all of them.
    """
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    batch, seq = attention_mask.shape
    lengths = attention_mask.sum(dim=1).tolist()
    real, positions = sum(lengths), batch * seq
    linear = layers * 2 * (4 * h * h + 2 * h * inner)  # per token: Q, K, V, out; FFN up, down
    attention_own = layers * 4 * h * sum(n * n for n in lengths)  # q k^T and p v, own keys
    attention_padded = layers * 4 * h * positions * seq  # every position, all seq keys
    head = batch * 2 * (h * h + h * num_labels)  # pooler (+ classifier) on [CLS]
    # The last block, first token only: the other tokens skip Q, the output projection and the
    # feed-forward (K and V are still needed), and ask no attention query.
    skipped_tokens = sum(max(n - 1, 0) for n in lengths)
    skipped_linear = skipped_tokens * 2 * (2 * h * h + 2 * h * inner)
    skipped_own = 4 * h * sum(max(n - 1, 0) * n for n in lengths)
    skipped_padded = 4 * h * (positions - batch) * seq
    useful = linear * real + attention_own + head
    repadded = linear * real + attention_padded + head
    padded = linear * positions + attention_padded + head
    skipped_positions_linear = (positions - batch) * 2 * (2 * h * h + 2 * h * inner)
    return {
        "useful": useful,
        "padded": padded,
        "repadded": repadded,
        "cls_only": useful - skipped_linear - skipped_own,
        "repadded_cls_only": repadded - skipped_linear - skipped_padded,
        "padded_cls_only": padded - skipped_positions_linear - skipped_padded,
    }


# ---- the peak ----------------------------------------------------------------------------------


def matmul_peak(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], repeats: int
) -> dict:
    """Best FLOP/s of square (n x n) @ (n x n) matmuls, 2 n^3 FLOPs each, through ``torch.mm``
    and, for float32 on a CPU, through oneDNN as well (the library minift's linear layers use
    there; ``torch.mm`` takes MKL): the faster library sets the peak."""
    best = {"flops_per_s": 0.0, "n": None, "library": None}
    gen = torch.Generator(device=device).manual_seed(0)
    libraries = {"torch.mm": torch.mm}
    if device.type == "cpu" and dtype == torch.float32:
        libraries["oneDNN"] = lambda a, b: kernels.onednn_linear(a, b.t())
    for n in sizes:
        a = torch.randn(n, n, device=device, generator=gen).to(dtype)
        b = torch.randn(n, n, device=device, generator=gen).to(dtype)
        for library, mm in libraries.items():
            mm(a, b)  # warm-up: the first call pays for allocation and kernel choice
            for _ in range(repeats):
                rate = 2 * n**3 / timed(lambda a=a, b=b, mm=mm: mm(a, b), device)
                if rate > best["flops_per_s"]:
                    best = {"flops_per_s": rate, "n": n, "library": library}
    return best


def datasheet_peak(device: torch.device) -> tuple[str | None, dict | None]:
    """The card's name in ``DATASHEET_TFLOPS`` and its peaks, or (None, None)."""
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device).lower()
    known = [k for k in DATASHEET_TFLOPS if all(word in name for word in k.lower().split())]
    if not known:
        return None, None
    card = max(known, key=len)
    return card, DATASHEET_TFLOPS[card]


# ---- the runs ----------------------------------------------------------------------------------


def classifiers(device: torch.device, config: str = "minilm") -> dict[str, torch.nn.Module]:
    """minift's SequenceClassifier and transformers' with SDPA (in float32 by name), the same
    weights and head."""
    folder = model_folder(config)
    torch.manual_seed(0)
    ours = speed_up(SequenceClassifier.from_pretrained(folder, num_labels=2, pooling="pooler")
                    ).to(device).train()  # transformers' head: the pooler
    ref = (
        transformers.BertForSequenceClassification.from_pretrained(
            folder, num_labels=2, attn_implementation="sdpa", dtype=torch.float32
        )
        .to(device)
        .train()
    )
    with torch.no_grad():
        ref.classifier.weight.copy_(ours.classifier.weight)
        ref.classifier.bias.copy_(ours.classifier.bias)
    return {"minift": ours, "hf sdpa": ref}


def autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_runs(models: dict, batches: list[dict], device: torch.device, amp: str) -> dict:
    def run(name: str):
        def fn():
            with torch.inference_mode(), autocast(device, amp):
                for b in batches:
                    call(name, models[name], b)

        return fn

    return {name: run(name) for name in models}


def train_runs(models: dict, batches: list[dict], device: torch.device, amp: str) -> dict:
    optimizers = {name: make_optimizer(m, lr=1e-5, impl="fused") for name, m in models.items()}

    def run(name: str):
        def fn():
            model, opt = models[name], optimizers[name]
            for b in batches:
                with autocast(device, amp):
                    loss = model(**b).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        return fn

    return {name: run(name) for name in models}


def pct(flops: float, seconds: float, peak: float | None) -> float | str:
    return "unknown" if peak is None else 100 * flops / seconds / peak


def main() -> None:
    parser = speed_parser(__doc__)
    add_config_option(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    rounds = args.rounds or (2 if args.quick else 5)
    n = 1 if args.quick else 4
    sizes = (4096, 8192) if cuda else ((1024,) if args.quick else (1024, 2048))
    repeats = 3 if args.quick else 5

    peaks_before = {amp: matmul_peak(device, dt, sizes, repeats) for amp, dt in DTYPES.items()}
    encoders = load_models(device, config=args.config)
    encoders = {"minift": encoders["minift"], "hf sdpa": encoders["hf_sdpa"]}
    trainers = classifiers(device, args.config)
    config = encoders["minift"].config
    tokenizer = Tokenizer.from_pretrained(model_folder(args.config))
    workloads = {
        "fixed 128": fixed_batches(config.vocab_size, 128, 8 if args.quick else 16, n),
        "SST-2 (real)": real_batches(tokenizer, "sst2", 32, n),
        "MRPC pairs (real)": real_batches(tokenizer, "mrpc", 32, n),
    }
    records = []
    for mode in ("inference", "train"):
        for workload, batches in workloads.items():
            num_labels = 2 if mode == "train" else 0
            factor = 3 if mode == "train" else 1  # backward = 2 x forward
            flops = {
                k: factor
                * sum(count_flops(config, b["attention_mask"], num_labels)[k] for b in batches)
                for k in ("useful", "padded", "repadded", "cls_only", "repadded_cls_only",
                          "padded_cls_only")
            }
            real = sum(int(b["attention_mask"].sum()) for b in batches)
            total = sum(b["attention_mask"].numel() for b in batches)
            if mode == "train":
                batches, models, make = with_labels(batches), trainers, train_runs
            else:
                models, make = encoders, inference_runs
            batches = to_device(batches, device)
            for amp in DTYPES:
                timings = interleaved(make(models, batches, device, amp), device, rounds)
                # Unpadded with attention per sequence on a CPU, padded on a GPU; in training
                # the classifier's last block computes [CLS] alone.
                minift_executes = "useful" if device.type == "cpu" else "padded"
                if mode == "train":
                    minift_executes = {"useful": "cls_only", "padded": "padded_cls_only"}[
                        minift_executes
                    ]
                executed = {"minift": flops[minift_executes], "hf sdpa": flops["padded"]}
                records.append(
                    {
                        "mode": mode,
                        "workload": workload,
                        "amp": amp,
                        "real_tokens": real,
                        "padded_tokens": total,
                        "flops": flops,
                        "executed_flops": executed,
                        "timings": timings,
                    }
                )
                t = {name: timings[name]["median_s"] for name in timings}
                print(
                    f"{mode:<9} {workload:<18} {amp}: "
                    + ", ".join(
                        f"{name} {flops['useful'] / t[name] / 1e9:.1f} useful GFLOP/s" for name in t
                    ),
                    flush=True,
                )

    peaks_after = {amp: matmul_peak(device, dt, sizes, repeats) for amp, dt in DTYPES.items()}
    peak = {
        amp: max(peaks_before[amp]["flops_per_s"], peaks_after[amp]["flops_per_s"])
        for amp in DTYPES
    }
    card, sheet = datasheet_peak(device)

    rows = []
    for r in records:
        t = {name: r["timings"][name]["median_s"] for name in r["timings"]}
        useful, executed = r["flops"]["useful"], r["executed_flops"]
        row = {
            "mode": r["mode"],
            "workload": r["workload"],
            "amp": r["amp"],
            "padding %": 100 * (1 - r["real_tokens"] / r["padded_tokens"]),
            "minift GFLOP/s": useful / t["minift"] / 1e9,
            "hf sdpa GFLOP/s": useful / t["hf sdpa"] / 1e9,
            "minift % peak": pct(useful, t["minift"], peak[r["amp"]]),
            "hf sdpa % peak": pct(useful, t["hf sdpa"], peak[r["amp"]]),
            "minift % peak executed": pct(executed["minift"], t["minift"], peak[r["amp"]]),
            "hf sdpa % peak executed": pct(executed["hf sdpa"], t["hf sdpa"], peak[r["amp"]]),
            "hf executed / useful": executed["hf sdpa"] / useful,
        }
        if cuda:
            sheet_peak = None if sheet is None else 1e12 * sheet[r["amp"]]
            row["minift MFU %"] = pct(useful, t["minift"], sheet_peak)
            row["hf sdpa MFU %"] = pct(useful, t["hf sdpa"], sheet_peak)
        row["minift / hf sdpa"] = t["hf sdpa"] / t["minift"]
        rows.append(row)
        r["useful_flops_per_s"] = {name: useful / t[name] for name in t}

    peak_rows = [
        {
            "dtype": amp,
            "matmul peak before, GFLOP/s": peaks_before[amp]["flops_per_s"] / 1e9,
            "after, GFLOP/s": peaks_after[amp]["flops_per_s"] / 1e9,
            "best n": max((peaks_before[amp], peaks_after[amp]), key=lambda p: p["flops_per_s"])[
                "n"
            ],
            "library": max((peaks_before[amp], peaks_after[amp]),
                           key=lambda p: p["flops_per_s"])["library"],
            **({"datasheet TFLOP/s": "unknown" if sheet is None else sheet[amp]} if cuda else {}),
        }
        for amp in DTYPES
    ]
    peak_note = (
        f"Datasheet peaks of the {card} (dense), for MFU."
        if sheet is not None
        else "No datasheet peak known for this card: MFU unknown."
        if cuda
        else "The peak is the best of the measured matmuls (before and after), in the dtype "
        "of the run, at the benchmark's thread count."
    )
    text = (
        format_table(peak_rows, float_format=".1f")
        + "\n\n"
        + peak_note
        + "\n\n"
        + format_table(rows, float_format=".2f")
        + "\n\n"
        "GFLOP/s and % peak count useful work: real tokens only, attention within each "
        'sequence\'s real tokens. "% peak executed" counts what each implementation runs, '
        "padding included (minift: on a CPU everything on real tokens, attention per sequence; "
        "on a GPU everything padded; in training a last block that computes [CLS] alone; "
        'transformers: everything padded); "hf executed / useful" is transformers\' padding '
        "tax. Matmuls only; training = 3 x forward. minift / hf sdpa is the speed ratio "
        "(median times, interleaved)."
    )
    payload = {
        "machine": machine(device),
        "rounds": rounds,
        "quick": args.quick,
        "batches_per_workload": n,
        "flop_convention": count_flops.__doc__,
        "matmul_sizes": list(sizes),
        "matmul_repeats": repeats,
        "matmul_peak_before": peaks_before,
        "matmul_peak_after": peaks_after,
        "peak_flops_per_s": peak,
        "datasheet_card": card,
        "datasheet_tflops": sheet,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        "config": args.config,
        "runs": records,
    }
    other = args.config != "minilm"
    name = result_name("flops", device, args.quick, f"_{args.config}" if other else "")
    command = (
        "python benchmarks/flops.py"
        + (" --quick" if args.quick else "")
        + (f" --device {args.device}" if cuda else "")
        + (f" --config {args.config}" if other else "")
    )
    write_report(
        name,
        payload,
        text,
        "Achieved FLOP/s against the matmul peak: minift vs transformers SDPA, "
        + ("BERT-base shape, random weights" if other else "all-MiniLM-L6-v2")
        + ", inference and training step",
        command,
    )


if __name__ == "__main__":
    main()
