"""A frozen feature extractor that works by default: `finetune --freeze head` with no rate given.

Question (issue #34): the seeds' first definition of transfer learning is a pretrained model as a
feature extractor with a new classifier trained on top. In minift that is
``finetune --freeze head``; before #34, with its defaults, it scored 0.539 on a sentiment task
against a majority rate of 0.50: the head read MiniLM's pooler, which all-MiniLM-L6-v2 never
trained (sentence-transformers pools by the mean), at full fine-tuning's rate, 5e-5. Now the
pooling follows the checkpoint (mean for MiniLM) and a frozen head's rate defaults to
``FROZEN_HEAD_LR``, chosen by ``frozen_head_lr.py`` on other tasks (Emotion, Financial
PhraseBank). Does the default clearly beat the majority rate on a sentiment task neither
MiniLM's training nor that choice has seen?

Method: SST-2, the issue's setting. Each run is ``minift.run.recipes.finetune(freeze="head")``
on 3,000 training sentences (a seeded subset, the run's seed), one epoch, batch 32, max length
64, scored once on all 872 dev sentences (majority label: 50.92). Four arms, paired by seed
(same subset, same head draw), so that each change is seen alone: the pooling (BERT's pooler
or mean) crossed with the rate (5e-5, or none given: the frozen head's default). Beside them,
scikit-learn's ``LogisticRegression`` (C=1, to convergence) on the same mean features of the
same subsets: the linear probe the head should match.

    python benchmarks/claims_frozen.py --threads 1 --seeds 0 1 2   # the run (see results)
    python benchmarks/claims_frozen.py --threads 1 --quick         # a smoke test
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile

import torch
from claims_common import claims_parser, mean_std, paired, parse, report
from sklearn.linear_model import LogisticRegression
from speed_common import data_dir

from minift.core.metrics import format_table
from minift.data.readers import read_examples, task_files
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import resolve_model_dir
from minift.run.options import FROZEN_HEAD_LR
from minift.run.recipes import finetune
from minift.run.recipes.prepare import subset
from minift.tasks.classify import ClassificationDataset, SequenceClassifier, encode_features

LIMIT, MAX_LENGTH = 3000, 64
# (name, options): the defaults last; "before" is what --freeze head gave before issue #34.
ARMS = [("before: pooler, lr 5e-5", dict(pooling="pooler", lr=5e-5)),
        ("pooler, default rate", dict(pooling="pooler")),
        ("mean, lr 5e-5", dict(lr=5e-5)),
        ("defaults: mean, default rate", {})]


def run(arm: dict, seed: int, limit: int, device: str) -> dict:
    """One ``finetune --freeze head`` on SST-2, scored on all of dev."""
    train, dev, text_col, _, label_col = task_files("sst2", data_dir())
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        metrics = finetune(model="minilm", out=out, train=str(train), dev=str(dev),
                           text_col=text_col, label_col=label_col, limit_train=limit, epochs=1,
                           batch_size=32, max_length=MAX_LENGTH, freeze="head", seed=seed,
                           progress=False, device=device, **arm)
    return {"accuracy": 100 * metrics["dev"]["accuracy"], "lr": metrics["train"]["lr"],
            "pooling": metrics["train"]["pooling"], "seconds": metrics["train"]["seconds"]}


def probe(seed: int, limit: int, device: str) -> float:
    """LogisticRegression on the mean features of the run's training subset, scored on dev."""
    train_path, dev_path, text_col, _, label_col = task_files("sst2", data_dir())
    folder = resolve_model_dir("minilm")
    tokenizer = Tokenizer.from_pretrained(folder)
    model = speed_up(SequenceClassifier.from_pretrained(folder, num_labels=2)).to(device)
    rows = {}
    for name, path, limit_ in (("train", train_path, limit), ("dev", dev_path, None)):
        examples = subset(read_examples(path, text_col=text_col, label_col=label_col), limit_,
                          seed)
        data = ClassificationDataset(examples, tokenizer, max_length=MAX_LENGTH,
                                     label_ids=[int(e.label) for e in examples])
        rows[name] = (encode_features(model, data, batch_size=64, device=device).numpy(),
                      data.labels.numpy())
    fitted = LogisticRegression(max_iter=5000).fit(*rows["train"])
    return 100 * fitted.score(*rows["dev"])


def main() -> None:
    args = parse(claims_parser(__doc__))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    limit = 256 if args.quick else LIMIT
    dev = read_examples(task_files("sst2", data_dir())[1], text_col="sentence",
                        label_col="label")
    majority = 100 * max(sum(e.label == y for e in dev) for y in ("0", "1")) / len(dev)
    runs = []
    for seed in seeds:
        for name, arm in ARMS:
            runs.append({"arm": name, "seed": seed, **run(arm, seed, limit, args.device)})
            print(f"seed {seed} {name}: {runs[-1]['accuracy']:.2f}", flush=True)
        runs.append({"arm": "LogisticRegression on the mean features", "seed": seed,
                     "accuracy": probe(seed, limit, args.device)})
        print(f"seed {seed} LogisticRegression: {runs[-1]['accuracy']:.2f}", flush=True)

    def scores(arm: str) -> list[float]:
        return [r["accuracy"] for r in runs if r["arm"] == arm]

    before = scores(ARMS[0][0])
    rows = []
    for arm in [name for name, _ in ARMS] + ["LogisticRegression on the mean features"]:
        done = [r for r in runs if r["arm"] == arm]
        rows.append({"arm": arm, "pooling": done[0].get("pooling", "mean"),
                     "lr": f"{done[0]['lr']:g}" if "lr" in done[0] else "-",
                     "dev accuracy": mean_std(scores(arm)),
                     "minus majority": statistics.mean(scores(arm)) - majority,
                     "minus before (paired)": paired(scores(arm), before)})
    text = (f"all-MiniLM-L6-v2 as a frozen feature extractor on SST-2: "
            f"`minift.run.recipes.finetune(freeze=\"head\", ...)` on {limit} training sentences "
            f"(a seeded subset, the run's seed), one epoch, batch 32, max length {MAX_LENGTH}, "
            f"scored once on all {len(dev)} dev sentences; seeds {seeds}, accuracy in points, "
            f"mean ± std; paired differences ± their standard error. Majority label: "
            f"{majority:.2f}. `lr` as the run used it (the default for a frozen head: "
            f"`FROZEN_HEAD_LR` = {FROZEN_HEAD_LR:g}, from `benchmarks/frozen_head_lr.py`). "
            f"The last row: scikit-learn's LogisticRegression (C=1) on the same mean features of "
            f"the same subsets.\n\n" + format_table(rows, float_format=".2f"))
    report("claims_frozen", torch.device(args.device), args.quick,
           {"seeds": seeds, "limit_train": limit, "max_length": MAX_LENGTH,
            "majority": majority, "frozen_head_lr": FROZEN_HEAD_LR, "runs": runs},
           text, "A frozen feature extractor at its defaults")


if __name__ == "__main__":
    main()
