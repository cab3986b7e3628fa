"""Shared pieces of the speed benchmarks: the models, the batches, honest timing, the report.

Timing rules, the same in every speed benchmark (the "Speed" section of benchmarks/RESULTS.md reads its tables
by them): the same weights and the same batches for every implementation; warm-up first; then
several rounds in which the implementations take turns (interleaved, so a slow moment of a
shared machine hits all of them alike); the median round is reported with its spread; ratios
carry the claim. On CUDA, CUDA events time the GPU work.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from minift.data.tokenizer import Tokenizer
from minift.fast import attention
from minift.fast import cpu_kernels as kernels
from minift.fast.unpad import FastBertModel, FastSelfAttention, speed_up
from minift.hf.checkpoint import load_bert, resolve_model_dir

try:
    import resource
except ImportError:  # Windows: no page-fault counter
    resource = None

RESULTS = Path(__file__).resolve().parent / "results"


def speed_parser(doc: str) -> argparse.ArgumentParser:
    """The options every speed benchmark takes: --quick, --device, --rounds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=None)
    return parser


def reference_adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch's AdamW over a transformers model's trainable parameters, grouped for weight decay
    as transformers' Trainer groups them (no decay on biases and LayerNorm weights)."""
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def data_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("MINIFT_DATA", default))


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": kernels.cpu_model(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "device": str(device),
            # speed_up's one-time timing: whether minift's linear layers run through oneDNN here
            "onednn_linear": device.type == "cpu" and kernels.onednn_is_faster()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# The model shapes a benchmark can take (``--config``): the published MiniLM, or random weights of
# BERT-base's shape (Devlin et al. 2019: 12 layers, hidden 768, 12 heads, feed-forward 3072; the
# defaults of transformers' BertConfig and minift's), the size the GPU goals of issue 35 are about.
CONFIGS = {"minilm": None,
           "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072)}


RANDOM_CACHE = Path(tempfile.gettempdir())  # where ``model_folder`` writes random checkpoints


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", choices=sorted(CONFIGS), default="minilm",
                        help="minilm (the published weights) or bert-base (random weights)")


def model_folder(config: str = "minilm") -> Path:
    """The checkpoint folder of ``config``: MiniLM's own; for a random shape, a folder written
    once (seed 0, MiniLM's tokenizer: the same uncased WordPiece vocabulary of 30,522) under
    ``RANDOM_CACHE``, named for the shape, and reused by later processes. Both implementations
    then load the same file, as they do MiniLM's."""
    from minift.core.model import BertConfig, BertModel
    from minift.hf.checkpoint import save_bert

    if CONFIGS[config] is None:
        return resolve_model_dir(config)
    shape = "_".join(f"{k}{v}" for k, v in sorted(CONFIGS[config].items()))
    folder = RANDOM_CACHE / f"minift_random_{config}_{shape}_seed0"
    if (folder / "done").is_file():
        return folder
    torch.manual_seed(0)
    save_bert(BertModel(BertConfig(**CONFIGS[config])), folder)
    Tokenizer.from_pretrained(resolve_model_dir("minilm")).save_pretrained(folder)
    (folder / "done").write_text("written whole\n")  # a folder cut off midway is rewritten
    return folder


def load_models(device: torch.device, dtype: torch.dtype = torch.float32,
                config: str = "minilm") -> dict[str, object]:
    """One checkpoint (see ``model_folder``) in minift and in transformers (SDPA and eager
    attention), transformers loaded in float32 by name: its ``dtype="auto"`` would take the
    file's dtype."""
    folder = model_folder(config)
    ours = speed_up(load_bert(folder)).to(device, dtype).eval()
    ref = {attn: transformers.BertModel.from_pretrained(folder, attn_implementation=attn,
                                                        dtype=torch.float32)
           .to(device, dtype).eval() for attn in ("sdpa", "eager")}
    return {"minift": ours, "hf_sdpa": ref["sdpa"], "hf_eager": ref["eager"]}


@contextlib.contextmanager
def f_linear(model: torch.nn.Module):
    """``model`` (fast, from ``load_bert`` or a head's ``from_pretrained``) with ``F.linear``
    (MKL on a CPU) in its linear layers, through ``speed_up(model, onednn=False)``; its own
    choice (see ``minift.fast.cpu_kernels.linear``) is put back after. Where the one-time timing already
    chose ``F.linear``, this changes nothing."""
    onednn = any(type(m) is kernels.Linear for m in model.modules())
    encoder = next(m for m in model.modules() if isinstance(m, FastBertModel))
    layer = next(m for m in model.modules() if isinstance(m, FastSelfAttention))
    options = dict(unpad=encoder.unpad, per_sequence=encoder.per_sequence_attention,
                   attention_path=layer.attention_path)
    speed_up(model, onednn=False, **options)
    try:
        yield
    finally:
        speed_up(model, onednn=onednn, **options)


def add_attention_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attention", default="auto", type=attention_paths,
        help="how minift's unpadded runs attend: auto (chosen per batch, see "
             "minift.fast.attention.choose_path), or a comma-separated list of "
             f"{', '.join(attention.PATHS)} (or all): one more column per path, the "
             "unpadded path forced on with that attention")


def attention_paths(text: str) -> list[str]:
    """``--attention``'s value: [] for auto, else the named paths (all: every one)."""
    if text == "auto":
        return []
    if text == "all":
        return list(attention.PATHS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in attention.PATHS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected auto, all or a comma-separated list of {', '.join(attention.PATHS)}")
    return names


def runnable_paths(paths: list[str], model: torch.nn.Module, device: torch.device,
                   dtype: torch.dtype, training: bool) -> dict[str, str | None]:
    """Each of ``paths`` with None where it can run ``model`` on this device in ``dtype`` (its
    attention dropout counted in ``training``), else why it cannot (printed once)."""
    layer = next(m for m in model.modules() if isinstance(m, FastSelfAttention))
    dropout_p = layer.dropout_p if training else 0.0
    why = {path: attention.why_not(path, device, dtype, dropout_p, layer.head_dim)
           for path in paths}
    for path, problem in why.items():
        if problem is not None:
            print(f"attention path {path!r} not measured: {problem}", flush=True)
    return why


@contextlib.contextmanager
def attention_path(model: torch.nn.Module, path: str | None):
    """``model``'s fast attention layers forced onto ``path`` (None: chosen per batch), their
    own setting put back after."""
    layers = [m for m in model.modules() if isinstance(m, FastSelfAttention)]
    own = [m.attention_path for m in layers]
    for m in layers:
        m.attention_path = path
    try:
        yield
    finally:
        for m, path_before in zip(layers, own, strict=True):
            m.attention_path = path_before


def call(name: str, model, batch: dict, **kwargs):
    """One forward with the keyword names each implementation takes."""
    if name.startswith("minift"):
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                     **kwargs)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"])


# ---- workloads ---------------------------------------------------------------------------------


def _tsv(path: Path, *columns: str) -> list[tuple[str, ...]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [tuple(row[c] for c in columns) for row in rows]


def real_texts(name: str) -> tuple[list[str], list[str] | None]:
    """Texts (and pairs) of a real length distribution: sst2, conll, mrpc (dev sets)."""
    root = data_dir()
    if name == "sst2":
        return [t for (t,) in _tsv(root / "sst2" / "dev.tsv", "sentence")], None
    if name == "mrpc":
        rows = _tsv(root / "mrpc" / "dev.tsv", "#1 String", "#2 String")
        return [a for a, _ in rows], [b for _, b in rows]
    if name == "conll":
        sentences, words = [], []
        for line in (root / "conll2003" / "dev.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                words.append(line.split()[0])
            elif words:
                sentences.append(" ".join(words))
                words = []
        if words:
            sentences.append(" ".join(words))
        return sentences, None
    raise ValueError(f"unknown workload {name!r}")


def real_batches(tokenizer: Tokenizer, name: str, batch_size: int, n_batches: int,
                 max_length: int = 128, seed: int = 0) -> list[dict]:
    """Random (not length-grouped) batches: the padding a real, unsorted stream carries. At most
    as many full batches as the dev set holds (MRPC's 408 pairs: 3 of 128)."""
    texts, pairs = real_texts(name)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    batches = []
    for b in range(min(n_batches, len(texts) // batch_size)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        enc = tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None,
                        max_length=max_length)
        batches.append({"input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
                        "token_type_ids": enc.token_type_ids})
    return batches


def fixed_batches(vocab_size: int, length: int, batch_size: int, n_batches: int,
                  seed: int = 0) -> list[dict]:
    """Full-length batches of random ids: no padding at all."""
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1000, vocab_size, (batch_size, length), generator=gen),
             "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
             "token_type_ids": torch.zeros(batch_size, length, dtype=torch.long)}
            for _ in range(n_batches)]


def to_device(batches: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def training_steps(model: Callable, batches, optimizer: torch.optim.Optimizer,
                   autocast: contextlib.AbstractContextManager) -> None:
    """One training step a batch: the loss's backward (the forward under ``autocast``), the
    optimizer's step, the gradients dropped. ``autocast`` is entered once a batch."""
    for batch in batches:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


# ---- timing --------------------------------------------------------------------------------------


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds that ``fn`` takes (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], None]], device: torch.device, rounds: int,
                warmup: int = 1) -> dict[str, dict]:
    """Median and spread of seconds per round for each run, taking turns round by round."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    faults: dict[str, list[int]] = {name: [] for name in runs}
    for r in range(rounds):
        names = list(runs)
        if r % 2:  # alternate the order so no one always runs first
            names.reverse()
        for name in names:
            before = minor_faults()
            seconds[name].append(timed(runs[name], device))
            faults[name].append(minor_faults() - before)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                   "rounds": len(s), "median_page_faults": statistics.median(faults[name])}
            for name, s in seconds.items()}


def minor_faults() -> int:
    """Minor page faults of this process so far: each is a page of memory touched for the first
    time since the system mapped it, zeroed on the spot. Tensors on a CPU that come from fresh
    mappings rather than reused memory pay this on top of their arithmetic."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


# For processes that call `peak_bytes` on the CPU: every allocation over 128 KiB gets a mapping
# of its own (glibc), returned to the system when freed, so the resident set follows the tensors.
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak memory one call of ``fn`` adds above what the process holds just before it.

    CUDA: ``max_memory_allocated`` above ``memory_allocated``. CPU (Linux): the growth of the
    resident set, its peak counter (VmHWM) reset through /proc/self/clear_refs, after glibc's
    heap is trimmed so that memory freed earlier does not hide the peak. Run it in a fresh
    process started with `MEASURE_ENV`.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (_rss_kib("VmHWM") - base) * 1024


def result_name(base: str, device: torch.device, quick: bool, *extra: str) -> str:
    """The file name of a result: ``base``, then ``_cuda`` off the CPU, any ``extra`` parts
    (``_bf16``), then ``_quick`` for a smoke run, so no run overwrites another kind's."""
    return (base + ("_" + device.type if device.type != "cpu" else "") + "".join(extra)
            + ("_quick" if quick else ""))


def write_report(name: str, payload: dict, table: str, title: str, command: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    header = (f"# {title}\n\n`{command}` on {m['processor']} ({m['cpu_count']} CPUs, "
              f"{m['torch_threads']} torch threads, {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}), "
              f"torch {m['torch']}, transformers {m['transformers']}.\n\n")
    (RESULTS / f"{name}.md").write_text(header + table + "\n")
    print(header + table)
