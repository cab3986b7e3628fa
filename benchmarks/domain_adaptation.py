"""Domain adaptation: does continued MLM pretraining on financial text help financial sentiment?

Question: all-MiniLM-L6-v2 was trained on general web text. If we first continue its pretraining
with masked-language modelling on the *text* of financial news sentences (no labels), does a
sentiment classifier fine-tuned from it beat one fine-tuned from plain MiniLM with the same
fine-tuning budget?

Data: Financial PhraseBank v1.0, `Sentences_AllAgree.txt` (2,264 sentences on which all
annotators agree; `sentence@label`, UTF-8), read from `$MINIFT_DATA/financial_phrasebank`. The
split is fixed: the sentence indices are shuffled with `random.Random(SPLIT_SEED=0)`; the first 20%
(453 sentences) are dev, the rest (1,811) train. Continued pretraining sees only the TRAIN
sentences' text; held-out perplexity is measured on the DEV sentences' text (masked once, with a
fixed seed, so before and after score the same masked tokens). Fine-tuning uses a seeded subset of
`--labelled` training examples (labels are the scarce resource; domain text is not; the subset
is drawn with the fine-tuning seed, so the spread over seeds includes the choice of examples), and
every arm gets the same budget: same examples, epochs, learning rate, batch size and seeds. The
classifier is evaluated once, after the last step (no model selection on dev).

Arms, for each fine-tuning seed (interleaved, so machine load hits both alike):
- `MiniLM`: `minift.run.recipes.finetune` from the published checkpoint;
- `MiniLM + MLM`: the same from the adapted encoder (`minift.run.recipes.pretrain`, one run, seed 0).
  BertForMaskedLM has no pooler, and the classifier reads the pooled [CLS]: the adapted encoder
  keeps MiniLM's pooler (MLM never trains it), so the two arms differ only in the encoder.

Writes `benchmarks/results/domain_adaptation{,_quick}.{json,md}` with the machine and versions.

    python benchmarks/domain_adaptation.py            # the full run (~20-25 min on 2 busy cores)
    python benchmarks/domain_adaptation.py --quick    # a smoke run (a couple of minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from minift.core.metrics import format_table
from minift.data.tokenizer import Tokenizer
from minift.fast.cpu_kernels import cpu_model
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import load_bert, resolve_model_dir, save_bert
from minift.run.recipes import finetune, pretrain

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0
DEV_FRACTION = 0.2
LABELS = ("negative", "neutral", "positive")


def read_phrasebank(path: Path, encoding: str = "utf-8") -> list[tuple[str, str]]:
    """(sentence, label) pairs of a `sentence@label` file; the label is after the LAST '@'.
    AllAgree is UTF-8, the other files ISO-8859-1."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding=encoding).splitlines(), start=1):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("@")
        if not sep or label not in LABELS or not sentence.strip():
            raise ValueError(
                f"{path}:{number}: expected 'sentence@label' with a label in "
                f"{LABELS}, found {line[:80]!r}"
            )
        pairs.append((sentence.strip(), label))
    return pairs


def split(pairs: list, seed: int = SPLIT_SEED, dev_fraction: float = DEV_FRACTION):
    """The fixed train/dev split: shuffle the indices with `seed`, the first share is dev."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_dev = round(dev_fraction * len(pairs))
    dev = sorted(order[:n_dev])
    train = sorted(order[n_dev:])
    return [pairs[i] for i in train], [pairs[i] for i in dev]


def write_jsonl(path: Path, pairs) -> None:
    path.write_text(
        "".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in pairs), encoding="utf-8"
    )


def write_text(path: Path, pairs) -> None:
    path.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")


def with_pooler(adapted: Path, pooler_from: str, out: Path) -> Path:
    """A classification-ready folder: the adapted encoder + the pooler of `pooler_from`.

    `MaskedLM` (as BertForMaskedLM) has no pooler; the sequence classifier reads the pooled [CLS].
    MLM never trains a pooler, so we keep MiniLM's: the two arms then differ only in the encoder.
    """
    encoder = speed_up(load_bert(pooler_from))  # pooler included
    missing, unexpected = encoder.load_state_dict(
        speed_up(load_bert(adapted, add_pooling_layer=False)).state_dict(), strict=False
    )
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise RuntimeError(f"unexpected encoder keys: missing {missing}, unexpected {unexpected}")
    save_bert(encoder, out)
    Tokenizer.from_pretrained(adapted).save_pretrained(out)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--masking", choices=["mlm", "wwm", "span"], default="wwm")
    parser.add_argument("--pretrain-steps", type=int, help="MLM optimizer steps")
    parser.add_argument("--labelled", type=int, help="labelled training examples for fine-tuning")
    parser.add_argument("--seeds", type=int, help="fine-tuning seeds (at least 3 in full runs)")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for JSON + markdown")
    args = parser.parse_args()
    q = args.quick
    data = Path(os.environ.get("MINIFT_DATA") or HERE.parent.parent / "shared" / "data")
    pairs = read_phrasebank(data / "financial_phrasebank" / "Sentences_AllAgree.txt")
    train_pairs, dev_pairs = split(pairs)
    if q:  # a seeded random subset: the file is grouped by label, so never take its head
        dev_pairs = random.Random(1).sample(dev_pairs, 64)
    seeds = list(range(args.seeds or (1 if q else 3)))
    settings = {
        "masking": args.masking,
        "pretrain": dict(
            max_steps=args.pretrain_steps or (4 if q else 160),
            lr=1e-4,
            batch_size=4,
            max_length=128,
            pack=True,
            seed=0,
        ),
        "finetune": dict(
            labelled=args.labelled or (48 if q else 320),
            epochs=1 if q else 2,
            lr=8e-5,
            batch_size=16,
            max_length=64,
        ),
        "seeds": seeds,
        "split": {
            "seed": SPLIT_SEED,
            "dev_fraction": DEV_FRACTION,
            "train": len(train_pairs),
            "dev": len(dev_pairs),
        },
    }
    counts = {
        name: {y: sum(label == y for _, label in part) for y in LABELS}
        for name, part in (("train", train_pairs), ("dev", dev_pairs))
    }
    print(
        f"Financial PhraseBank AllAgree: {len(pairs)} sentences -> train {len(train_pairs)} / "
        f"dev {len(dev_pairs)} (seed {SPLIT_SEED}); labels {counts}"
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_text(tmp / "train.txt", train_pairs)
        write_text(tmp / "dev.txt", dev_pairs)
        write_jsonl(tmp / "train.jsonl", train_pairs)
        write_jsonl(tmp / "dev.jsonl", dev_pairs)

        p = settings["pretrain"]
        t0 = time.perf_counter()
        mlm = pretrain(
            model="minilm",
            text=str(tmp / "train.txt"),
            eval_text=str(tmp / "dev.txt"),
            masking=args.masking,
            out=str(tmp / "adapted"),
            progress=False,
            **p,
        )
        pretrain_s = time.perf_counter() - t0
        adapted = with_pooler(tmp / "adapted", "minilm", tmp / "adapted_cls")

        f = settings["finetune"]
        steps = -(-f["labelled"] // f["batch_size"]) * f["epochs"]  # evaluate once, at the end
        arms = {"MiniLM": str(resolve_model_dir("minilm")), "MiniLM + MLM": str(adapted)}
        runs = {arm: [] for arm in arms}
        for seed in seeds:
            for arm, model in arms.items():  # interleaved: load changes hit both arms
                t0 = time.perf_counter()
                m = finetune(
                    model=model,
                    out=str(tmp / "ft"),
                    train=str(tmp / "train.jsonl"),
                    dev=str(tmp / "dev.jsonl"),
                    text_col="sentence",
                    label_col="label",
                    limit_train=f["labelled"],
                    epochs=f["epochs"],
                    lr=f["lr"],
                    batch_size=f["batch_size"],
                    max_length=f["max_length"],
                    seed=seed,
                    eval_every=steps,
                    progress=False,
                )
                runs[arm].append(
                    {
                        "seed": seed,
                        "accuracy": m["dev"]["accuracy"],
                        "macro_f1": m["dev"]["f1"],
                        "best_step": m["train"]["best_step"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"seed {seed} {arm}: dev accuracy {m['dev']['accuracy']:.4f} "
                    f"macro-F1 {m['dev']['f1']:.4f}",
                    flush=True,
                )
    total_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    rows, summary = [], {}
    for arm, results in runs.items():
        acc = mean_std([100 * r["accuracy"] for r in results])
        f1 = mean_std([100 * r["macro_f1"] for r in results])
        summary[arm] = {
            "accuracy_mean": acc[0],
            "accuracy_std": acc[1],
            "macro_f1_mean": f1[0],
            "macro_f1_std": f1[1],
        }
        rows.append(
            {
                "model": arm,
                "dev accuracy": f"{acc[0]:.2f} ± {acc[1]:.2f}",
                "dev macro-F1": f"{f1[0]:.2f} ± {f1[1]:.2f}",
                "per seed (acc)": " ".join(f"{100 * r['accuracy']:.1f}" for r in results),
            }
        )
    gain = [
        100 * (a["accuracy"] - b["accuracy"])
        for a, b in zip(runs["MiniLM + MLM"], runs["MiniLM"], strict=True)
    ]
    gain_f1 = [
        100 * (a["macro_f1"] - b["macro_f1"])
        for a, b in zip(runs["MiniLM + MLM"], runs["MiniLM"], strict=True)
    ]
    ppl_rows = [
        {
            "held-out (dev text)": when,
            "perplexity": mlm[when]["perplexity"],
            "masked accuracy": 100 * mlm[when]["masked_accuracy"],
            "masked tokens": mlm[when]["masked_tokens"],
        }
        for when in ("before", "after")
    ]
    machine = {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "quick": q,
    }
    record = {
        "machine": machine,
        "settings": settings,
        "label_counts": counts,
        "pretrain": {**mlm, "seconds": pretrain_s},
        "finetune": runs,
        "summary": summary,
        "paired_gain_points": {"accuracy": gain, "macro_f1": gain_f1},
        "total_seconds": total_s,
        "cpu_seconds": cpu_s,  # this process's CPU time: what the run costs without contention
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "domain_adaptation_quick" if q else "domain_adaptation"
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = format_table(rows)
    ppl_table = format_table(ppl_rows, float_format=".2f")
    g, gf = mean_std(gain), mean_std(gain_f1)
    p, f = settings["pretrain"], settings["finetune"]
    md = (
        "# Domain adaptation: continued MLM pretraining of all-MiniLM-L6-v2 on financial text\n\n"
        f"`python benchmarks/domain_adaptation.py{' --quick' if q else ''}` on "
        f"{machine['platform']}, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, {machine['threads']} threads; {total_s / 60:.1f} min in "
        f"all ({cpu_s / 60:.1f} CPU-min of this process; load average at the end "
        f"{machine['load_average'][0]:.1f} on {machine['cpu_count']} cores).\n\nFinancial PhraseBank AllAgree, fixed split (seed {SPLIT_SEED}): "
        f"{len(train_pairs)} train / {len(dev_pairs)} dev sentences. Continued pretraining: "
        f"{args.masking} masking, {p['max_steps']} steps of {p['batch_size']} packed sequences of "
        f"{p['max_length']} tokens, lr {p['lr']}, on the train sentences' text only "
        f"({pretrain_s / 60:.1f} min). Fine-tuning (both arms alike): {f['labelled']} labelled "
        f"train examples, {f['epochs']} epochs, lr {f['lr']}, batch {f['batch_size']}, seeds "
        f"{seeds}; dev accuracy and macro-F1 in points, mean ± std over seeds.\n\n{table}\n\n"
        f"Paired gain of adaptation (same seed): accuracy {g[0]:+.2f} ± {g[1]:.2f} points, "
        f"macro-F1 {gf[0]:+.2f} ± {gf[1]:.2f}.\n\nHeld-out masked-LM quality on the dev "
        f"sentences' text (masked once with a fixed seed). Before = MiniLM with a freshly "
        f"initialised MLM head (the published checkpoint has none), so 'before' measures an "
        f"untrained head, not MiniLM's knowledge:\n\n{ppl_table}\n"
    )
    (out / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
