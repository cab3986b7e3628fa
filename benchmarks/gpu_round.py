"""The GPU round: every measurement a lent GPU is for, in one device call, under one time budget.

A GPU is lent to some tasks only, for 15 minutes in all, and nothing can be debugged there. So
the round is one script, rehearsed on a CPU (``--smoke``, run by tests/test_gpu_round.py), that
runs a fixed list of sections in order, each in its own process under its own time limit:

1. ``env``: Python, torch, CUDA and cuDNN, transformers and tokenizers versions; the GPU's name,
   capability, memory and driver; which SDPA backends are enabled and whether
   ``torch.nn.attention.varlen`` exists (issue 35's packed-attention path needs it).
2. ``matmul``: the measured matmul ceilings, bf16, fp32 and fp32 with TF32, in TFLOP/s (the best
   square product of ``flops.matmul_peak``): the denominators of every MFU figure.
3. ``test_cuda``: ``pytest tests/test_cuda.py``, the CUDA twins of the CPU parity tests.
4. The speed benchmarks on MiniLM, each with its own flags: ``inference_throughput.py`` in fp32,
   under bf16 autocast (both with ``--cuda-graphs``: the forward replayed from CUDA graphs, a
   column beside the eager ones), and under bf16 at batch 128; ``train_step.py``; ``flops.py``.
   The bf16 batch-128 inference and the training step also measure each packed attention path of
   ``minift.fast.attention`` (``--attention varlen,nested,padded``: FlashAttention's varlen
   kernel, SDPA on nested tensors, the re-padded batch with a boolean mask), one column each,
   beside the path ``choose_path`` takes by default; a path that cannot run (varlen in fp32 or
   with attention dropout, or on a torch without it) is named in the JSON with the reason.
5. ``finetune``: one real SST-2 fine-tune, ``--device cuda --amp bf16``, with README's quick-start
   settings, so its dev accuracy sits beside the CPU run's.
6. The BERT-base shape (``--config bert-base``: random weights, 12 layers, hidden 768), the size
   where the GPU's arithmetic, not kernel launches, should set the pace: the training step and
   bf16 inference, with the attention paths as in 4. ``--smoke`` skips these two, saying so:
   BERT-base takes minutes on a CPU.
7. ``compile_train``: ``compile_buckets.py --bf16``, the MiniLM training step eager, compiled
   for dynamic shapes, compiled on length buckets (``--compile``) and with CUDA graphs on top;
   last, so that it runs on what the budget leaves (compilation takes a minute or two).
   ``--smoke`` runs it with the ``eager`` backend: dynamo's graphs and counts without
   inductor's code generation, which takes minutes on a CPU.

The deadline guard: the round has ``--budget-s`` seconds in all. Before a section starts, it is
skipped, saying so, if fewer seconds are left than its floor; otherwise it runs with a time
limit of its own limit or what is left, whichever is less, and is killed (its whole process
group) at that limit. A failed or timed-out section does not stop the round.

What comes back (the device returns at most 8 files from ``$OUT``): ``round.json`` (every
section's command, status, seconds, and the JSON files it wrote), ``round.log`` (every
section's full output), ``results.md`` (the benchmarks' tables) and ``summary.md``; the
summary table is also the last thing on stdout, after the tail of any failed section's output.

The procedure (read benchmarks/gpu_pack.py first: the device machine reaches nothing):

    python benchmarks/gpu_pack.py              # gpu_carry/: MiniLM + data; prints the call
    # then one device call: command "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_round.py
    #   --budget-s 540 --out $OUT", carry ["gpu_carry"], timeout_s 590
    python benchmarks/gpu_round.py --smoke     # the rehearsal: a tiny model on the CPU, < 1 min

It runs on Python 3.12 with torch 2.11 and transformers 5 (the device machine) as well as here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
MAX_FILES = 8  # what the device call brings back from $OUT
FAILED_TAIL_LINES = 25


@dataclass
class Section:
    """One step of the round: a command run in its own process group, under ``limit_s``
    seconds, skipped when fewer than ``floor_s`` seconds of the budget are left."""

    name: str
    command: list[str]
    limit_s: float
    floor_s: float
    needs_cuda: bool = True
    cpu_too: bool = True  # whether --smoke runs it on the CPU (BERT-base there takes minutes)
    status: str = "not run"
    seconds: float = 0.0
    result: str = ""
    files: dict = field(default_factory=dict)
    failed_tail: str = ""


# ---- the probes: the two sections that are this script itself, in a child process -------------


def sdpa_backends(torch) -> dict:
    """Which scaled-dot-product-attention backends torch has enabled (each flag only where this
    torch has it)."""
    cuda = torch.backends.cuda
    flags = {}
    for name in ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled",
                 "cudnn_sdp_enabled", "is_flash_attention_available"):
        if hasattr(cuda, name):
            flags[name] = bool(getattr(cuda, name)())
    return flags


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def attention_defaults(torch) -> dict:
    """The attention path ``minift.fast.attention.choose_path`` takes for packed tokens here,
    for a head size of 64 (BERT-base's; MiniLM's is 32), in inference and in training with
    attention dropout: which path the benchmarks' default columns ran."""
    from minift.fast import attention

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    per_sequence = device.type == "cpu"
    return {f"{name} {mode}": attention.choose_path(device, dtype, p, 64, per_sequence)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
            for mode, p in (("inference", 0.0), ("training", 0.1))}


def probe_env() -> dict:
    import tokenizers
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "cuda_available": torch.cuda.is_available(),
            "sdpa": sdpa_backends(torch),
            "torch.nn.attention.varlen": has_module("torch.nn.attention.varlen"),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    commit = REPO / "gpu_carry" / "commit.txt"
    if commit.is_file():
        info["commit"] = commit.read_text().strip()
    info["attention_paths"] = attention_defaults(torch)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                 "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "multiprocessors": props.multi_processor_count}
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            info["driver"] = f"unknown ({error})"
    return info


def probe_matmul(device_name: str) -> dict:
    """bf16, fp32 and fp32-with-TF32 ceilings in TFLOP/s, through flops.py's ``matmul_peak``."""
    import torch
    from flops import matmul_peak

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sizes, repeats = ((4096, 8192), 10) if cuda else ((256,), 3)
    peaks = {}
    for label, dtype, tf32 in (("bf16", torch.bfloat16, False), ("fp32", torch.float32, False),
                               ("fp32+tf32", torch.float32, True)):
        if tf32 and not cuda:
            continue
        own = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            best = matmul_peak(device, dtype, sizes, repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = own
        peaks[label] = {"tflops": best["flops_per_s"] / 1e12, "n": best["n"],
                        "library": best["library"]}
    return {"device": str(device), "peaks": peaks}


# ---- the plan --------------------------------------------------------------------------------


def plan(args: argparse.Namespace, work: Path) -> list[Section]:
    """The sections in order, with the flags of each command. ``--smoke`` keeps the flags and
    changes only the device (cpu), the benchmarks' size (``--quick --rounds 1``) and the
    fine-tune's length, so a typo in a flag fails here, not on the GPU."""
    py, device = sys.executable, args.device
    me = [py, str(Path(__file__).resolve())]
    small = ["--quick", "--rounds", "1"] if args.smoke else []

    def bench(script: str, *flags: str) -> list[str]:
        return [py, str(BENCHMARKS / script), "--device", device, *flags, *small]

    paths = ["--attention", "varlen,nested,padded"]  # minift.fast.attention's packed paths

    if args.smoke:
        length = ["--limit-train", "64", "--limit-dev", "64", "--max-steps", "4",
                  "--batch-size", "16"]
    else:  # README's quick start: the CPU run it is compared with
        length = ["--limit-train", "4000", "--epochs", "1"]
    finetune = [py, "-m", "minift", "finetune", "--task", "sst2", *length, "--max-length", "64",
                "--device", device, "--amp", "bf16", "--seed", "0", "--no-progress",
                "--overwrite", "--out", str(work / "finetune")]
    return [
        Section("env", [*me, "--probe", "env", "--probe-out", str(work / "env.json")], 60, 10,
                needs_cuda=False),
        Section("matmul", [*me, "--probe", "matmul", "--device", device,
                           "--probe-out", str(work / "matmul.json")], 60, 20),
        Section("test_cuda", [py, "-m", "pytest", str(REPO / "tests" / "test_cuda.py"), "-q",
                              "-rs", "-p", "no:cacheprovider"], 150, 45),
        Section("inference_fp32", bench("inference_throughput.py", "--cuda-graphs"), 75, 30),
        Section("inference_bf16", bench("inference_throughput.py", "--bf16", "--cuda-graphs"),
                75, 30),
        Section("inference_bf16_bs128", bench("inference_throughput.py", "--bf16",
                                              "--batch-size", "128", *paths), 90, 30),
        Section("train_step", bench("train_step.py", *paths), 150, 45),
        Section("finetune", finetune, 150, 60),
        Section("train_step_bert_base", bench("train_step.py", "--config", "bert-base", *paths),
                150, 60, cpu_too=False),
        Section("inference_bert_base_bf16", bench("inference_throughput.py", "--bf16",
                                                  "--config", "bert-base", *paths), 100, 45,
                cpu_too=False),
        Section("flops", bench("flops.py"), 120, 45),
        Section("compile_train", bench("compile_buckets.py", "--bf16",
                                       *(["--backend", "eager"] if args.smoke else [])),
                150, 75),
    ]


# ---- running ---------------------------------------------------------------------------------


def child_env(args: argparse.Namespace, carry: Path) -> dict:
    """The children's environment: this tree and the carried checkpoint package first on the
    path, the carried data as MINIFT_DATA, nothing from the network, unbuffered output."""
    env = dict(os.environ)
    paths = [str(REPO)]
    if (carry / "site").is_dir():
        paths.insert(0, str(carry / "site"))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                        else paths)
    if (carry / "data").is_dir():
        env["MINIFT_DATA"] = str(carry / "data")
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return env


def run_section(section: Section, timeout: float, env: dict, log) -> tuple[int | None, str]:
    """Run the command in a new process group, its output appended to ``log``; kill the group
    at ``timeout``. Returns (exit code or None on time-out, the output)."""
    log.write(f"\n===== {section.name}: {' '.join(section.command)}\n")
    log.flush()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        proc = subprocess.Popen(section.command, cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        out.seek(0)
        text = out.read()
    log.write(text)
    log.flush()
    return code, text


def new_results(since: float) -> list[Path]:
    """The benchmark result files written since ``since`` (the benchmarks write them into
    benchmarks/results; the round folds them into its own files)."""
    if not RESULTS.is_dir():
        return []
    return sorted(p for p in RESULTS.iterdir() if p.suffix in (".json", ".md")
                  and p.stat().st_mtime >= since)


def describe(section: Section, code: int | None, output: str, work: Path, cuda: bool) -> None:
    """Set the section's status and its one-line result from what it left."""
    last = [line for line in output.splitlines() if line.strip()]
    if code is None:
        section.status = f"timed out at {section.seconds:.0f} s"
    elif code != 0:
        section.status = f"failed (exit {code})"
    else:
        section.status = "ok" if cuda or not section.needs_cuda else "ok (cpu rehearsal)"
    if section.name == "test_cuda" and last:
        section.result = last[-1].strip("= ")
        if code == 0 and not cuda:
            section.status = "skipped: no CUDA (pytest skips every test)"
    elif section.name in ("env", "matmul"):
        probe = work / f"{section.name}.json"
        if probe.is_file():
            section.files[probe.name] = json.loads(probe.read_text())
            data = section.files[probe.name]
            if section.name == "env":
                section.result = (f"{data.get('gpu', 'no GPU')}, torch {data['torch']}, "
                                  f"varlen {data['torch.nn.attention.varlen']}")
            else:
                section.result = ", ".join(f"{k} {v['tflops']:.1f} TFLOP/s"
                                           for k, v in data["peaks"].items())
    elif section.name == "finetune":
        section.result = finetune_result(work / "finetune", section)
    elif section.files:
        section.result = ", ".join(sorted(section.files))


def finetune_result(folder: Path, section: Section) -> str:
    """The fine-tune's run record and metrics (small JSON files, never the weights) and its dev
    accuracy before and after training."""
    for name in ("metrics.json", ".minift-run.json"):
        if (folder / name).is_file():
            section.files[name] = json.loads((folder / name).read_text())
    metrics = section.files.get("metrics.json", {})
    if "dev" not in metrics:
        return ""
    before = metrics.get("before", {}).get("accuracy")
    return (f"dev accuracy {metrics['dev']['accuracy']:.4f}"
            + (f" (before training {before:.4f})" if before is not None else "")
            + f", {metrics.get('train', {}).get('seconds', 0):.1f} s training")


def run_round(args: argparse.Namespace) -> list[Section]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_round_"))
    carry = Path(args.carry).resolve()
    if args.smoke:
        sys.path.insert(0, str(BENCHMARKS))
        from gpu_pack import pack_tiny

        carry = pack_tiny(work / "carry")
    import torch

    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    env = child_env(args, carry)
    deadline = time.monotonic() + args.budget_s
    sections = plan(args, work)
    with open(out / "round.log", "w", encoding="utf-8") as log, \
            open(out / "results.md", "w", encoding="utf-8") as tables:
        log.write(f"carry: {carry}\nPYTHONPATH={env['PYTHONPATH']}\n"
                  f"MINIFT_DATA={env.get('MINIFT_DATA')}\n")
        for section in sections:
            left = deadline - time.monotonic()
            if left < section.floor_s:
                section.status = (f"skipped: {left:.0f} s of the budget left, it needs "
                                  f"{section.floor_s:.0f}")
                print(f"[{section.name}] {section.status}", flush=True)
                continue
            if section.needs_cuda and not cuda and not (args.smoke and section.cpu_too):
                section.status = ("skipped: no CUDA" if section.cpu_too else
                                  "skipped: no CUDA (and too slow to rehearse on a CPU)")
                print(f"[{section.name}] {section.status}", flush=True)
                continue
            started, wall = time.time(), time.monotonic()
            print(f"[{section.name}] running, limit {min(section.limit_s, left):.0f} s", flush=True)
            code, output = run_section(section, min(section.limit_s, left), env, log)
            section.seconds = time.monotonic() - wall
            for path in new_results(started):
                if path.suffix == ".json":
                    section.files[path.name] = json.loads(path.read_text())
                else:
                    tables.write(f"\n<!-- {section.name}: {path.name} -->\n{path.read_text()}\n")
            describe(section, code, output, work, cuda)
            if code != 0:
                section.failed_tail = "\n".join(output.splitlines()[-FAILED_TAIL_LINES:])
            print(f"[{section.name}] {section.status} in {section.seconds:.0f} s", flush=True)
    write_outputs(out, sections, args)
    shutil.rmtree(work, ignore_errors=True)  # the fine-tune's weights and the probes' files
    return sections


def summary_table(sections: list[Section]) -> str:
    from minift.core.metrics import format_table

    rows = [{"section": s.name, "status": s.status, "seconds": round(s.seconds),
             "limit s": round(s.limit_s), "result": s.result[:110]} for s in sections]
    return format_table(rows)


def write_outputs(out: Path, sections: list[Section], args: argparse.Namespace) -> None:
    table = summary_table(sections)
    record = {"budget_s": args.budget_s, "smoke": args.smoke, "device": args.device,
              "sections": [{"name": s.name, "command": s.command, "status": s.status,
                            "seconds": s.seconds, "limit_s": s.limit_s, "floor_s": s.floor_s,
                            "result": s.result, "files": s.files} for s in sections]}
    (out / "round.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "summary.md").write_text(f"# GPU round\n\n{table}\n")
    files = [p for p in out.rglob("*") if p.is_file()]
    if len(files) > MAX_FILES:
        raise SystemExit(f"{len(files)} files under {out}: the device call brings back {MAX_FILES}")
    for s in sections:
        if s.failed_tail:
            print(f"\n----- the end of {s.name}'s output ({s.status}):\n{s.failed_tail}")
    print("\n" + table, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_round_out"),
                        help="folder of the round's files (default: $OUT)")
    parser.add_argument("--budget-s", type=float, default=540,
                        help="seconds for the whole round; a section that no longer fits is skipped")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--carry", default=str(REPO / "gpu_carry"),
                        help="the folder benchmarks/gpu_pack.py wrote")
    parser.add_argument("--smoke", action="store_true",
                        help="rehearse on the CPU: tiny random model, tiny data, device cpu")
    parser.add_argument("--probe", choices=("env", "matmul"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # minift from this tree, as the device's command sets no path
    if args.probe:
        sys.path.insert(0, str(BENCHMARKS))
        result = probe_env() if args.probe == "env" else probe_matmul(args.device)
        Path(args.probe_out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    if args.smoke:
        args.device = "cpu"
    run_round(args)


if __name__ == "__main__":
    main()
