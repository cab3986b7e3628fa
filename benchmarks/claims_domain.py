"""Domain adaptation done right: does continued MLM on in-domain text help all-MiniLM-L6-v2?

Question (issue #19, claim 4): the earlier run (``domain_adaptation.py``) trained a fresh MLM head
and the whole encoder together at 1e-4 and found adaptation HURT. Here adaptation gets a fair
chance, and when it still does not help, the run measures why.

Two domains, each with a downstream task scored on a test split nothing was selected on:

- **Financial PhraseBank** (financial news). Downstream: sentiment (3 labels) on
  ``Sentences_AllAgree.txt``, its 2,264 sentences shuffled with ``random.Random(SPLIT_SEED=0)``:
  20% test, 5% dev, the rest train. MLM text: every sentence of ``Sentences_50Agree.txt``
  (4,846, ISO-8859-1; AllAgree is a subset of it) that is NOT a downstream dev or test sentence.
- **CSAbstruct** (computer-science abstracts). Downstream: sentence role (5 labels) on the
  train abstracts' sentences, scored on ``test.jsonl`` (dev: a seeded 256 of ``dev.jsonl``).
  MLM text: the train abstracts' sentences.

In each domain a seeded 10% of the MLM text (FPB: sentences; CSAbstruct: whole abstracts,
``MLM_SPLIT_SEED=0``) is held out for perplexity; MLM trains on the rest. MLM never sees a
downstream dev or test sentence.

**Adaptation** (``minift.run.recipes.pretrain``, whole-word masking, packed sequences):
phase 1 trains the MLM head alone (``freeze="head"``; the published checkpoint has no MLM head)
at a constant rate until the held-out loss stops falling (``eval_every`` + ``patience``) or a
cap of steps; phase 2 continues from it
with the whole model at a low learning rate (2e-5), tracking held-out perplexity, and keeps the
best step. The classifier reads the pooled [CLS]; MLM never trains a pooler, so the adapted
encoder keeps MiniLM's (``domain_adaptation.with_pooler``): the arms differ only in the encoder.
Whether that pooler, fitted to the published encoder and not to the adapted one, is what costs
the adapted arm is measured by the pooler cell: the low-label cell again with the pooler
removed from both folders, so that both arms start from the same freshly initialised pooler
(seeded by the run's seed).

**Downstream**: ``minift.run.recipes.finetune`` from MiniLM and from the adapted encoder, the same
recipe, seeds, labelled subset (drawn with the seed) and batches; a low-label cell (256 labelled
examples, drawn with the seed, every label at least once) and a full-label cell (every labelled
training example); fixed epochs, the last model
scored on test (dev is evaluated once, at the end: no model selection).

**Why** (the evidence cells): held-out perplexity of the frozen encoder with a trained head
(phase 1) and after phase 2, beside a context-free guess (each token's frequency in the MLM
training text, add-one smoothed) on the very same masked tokens; a linear probe (logistic
regression on mean-pooled, L2-normalised embeddings, sentence-transformers' pooling) fitted on
the labelled train sentences and scored on test, before and after adaptation; and the cosine
similarity of each test sentence's embedding before and after.

Cells run in this order, each written to the results file when it ends, and a rerun with the
same settings skips the finished ones (``--cells`` picks some): FPB adaptation, probe, low-label,
full-label; then the same for CSAbstruct; then FPB's pooler cell. The adapted models live in ``--work`` between runs.

    python benchmarks/claims_domain.py --threads 1           # the full run (see the results)
    python benchmarks/claims_domain.py --quick --threads 1   # a smoke test (a minute or two)
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from claims_common import SEEDS, claims_parser, mean_std, paired, parse, report
from domain_adaptation import read_phrasebank, with_pooler
from speed_common import RESULTS, data_dir, result_name

from minift.core.align import IGNORE_INDEX
from minift.core.metrics import format_table
from minift.core.sentence import encode
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import speed_up
from minift.hf.checkpoint import load_bert, resolve_model_dir, save_bert
from minift.run import plots
from minift.run.plots import read_log
from minift.run.recipes import finetune, pretrain
from minift.tasks.mlm import MaskedBatches, MaskingCollator, TextSequences

SPLIT_SEED = 0  # the downstream split of Financial PhraseBank, the CSAbstruct dev sample
MLM_SPLIT_SEED = 0  # the held-out slice of the MLM text
HELD_OUT = 0.1
ARMS = ("MiniLM", "MiniLM + MLM")


@dataclass
class Domain:
    """One domain: labelled (text, label) splits and the MLM text, train and held out."""

    name: str
    train: list[tuple[str, str]]
    dev: list[tuple[str, str]]
    test: list[tuple[str, str]]
    mlm_train: list[str]
    mlm_held_out: list[str]


def held_out(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded ``fraction`` of ``items`` held out, both in file order."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    out = set(order[: round(fraction * len(items))])
    return ([x for i, x in enumerate(items) if i not in out],
            [x for i, x in enumerate(items) if i in out])


def phrasebank(folder: Path) -> Domain:
    """Financial PhraseBank: AllAgree for the task, 50Agree minus dev/test for MLM."""
    pairs = read_phrasebank(folder / "Sentences_AllAgree.txt")
    order = list(range(len(pairs)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_test, n_dev = round(0.2 * len(pairs)), round(0.05 * len(pairs))
    test = [pairs[i] for i in sorted(order[:n_test])]
    dev = [pairs[i] for i in sorted(order[n_test : n_test + n_dev])]
    train = [pairs[i] for i in sorted(order[n_test + n_dev :])]
    unseen = {s for s, _ in test + dev}
    text = [s for s, _ in read_phrasebank(folder / "Sentences_50Agree.txt", "iso-8859-1")]
    text = [s for s in text if s not in unseen]
    mlm_train, mlm_held_out = held_out(text, HELD_OUT, MLM_SPLIT_SEED)
    return Domain("Financial PhraseBank", train, dev, test, mlm_train, mlm_held_out)


def abstracts(path: Path) -> list[list[tuple[str, str]]]:
    """The (sentence, role) pairs of each abstract of a CSAbstruct JSONL file."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line)
        if len(record["sentences"]) != len(record["labels"]):
            raise ValueError(f"{path}:{number}: {len(record['sentences'])} sentences but "
                             f"{len(record['labels'])} labels")
        out.append(list(zip(record["sentences"], record["labels"], strict=True)))
    return out


def csabstruct(folder: Path) -> Domain:
    """CSAbstruct: train abstracts for the task and MLM; dev (a sample) and test for scoring."""
    train = abstracts(folder / "train.jsonl")
    dev = [p for a in abstracts(folder / "dev.jsonl") for p in a]
    dev = random.Random(SPLIT_SEED).sample(dev, 256)
    test = [p for a in abstracts(folder / "test.jsonl") for p in a]
    kept, out = held_out(train, HELD_OUT, MLM_SPLIT_SEED)  # whole abstracts held out
    return Domain("CSAbstruct", [p for a in train for p in a], dev, test,
                  [s for a in kept for s, _ in a], [s for a in out for s, _ in a])


def settings(quick: bool) -> dict:
    """Both MLM phases and both fine-tuning cells; the same for both domains and both arms."""
    mlm = dict(masking="wwm", pack=True, batch_size=16, max_length=128, seed=0)
    return {
        # a constant rate, so that phase 1 stops when the head has learned what it can from the
        # frozen encoder, not because the rate decayed (1e-3 with linear decay was still falling
        # at 300 steps; 5e-2 was barely faster than 1e-2 in a 100-step probe)
        "phase1": mlm | dict(freeze="head", lr=1e-2, schedule="constant", warmup_ratio=0.0,
                             max_steps=6 if quick else 400, eval_every=3 if quick else 25,
                             patience=2),
        "phase2": mlm | dict(lr=2e-5, max_steps=4 if quick else 150, eval_every=2 if quick else 25,
                             patience=2, warmup_ratio=0.06),
        "low": dict(labelled=32 if quick else 256, epochs=2 if quick else 5, lr=5e-5,
                    batch_size=16, max_length=128),
        "full": dict(labelled=64 if quick else None, epochs=1 if quick else 2, lr=5e-5,
                     batch_size=16, max_length=128),
        "probe_train": 200 if quick else 2000,  # labelled sentences the linear probe fits on
    }


def shrink(domain: Domain) -> Domain:
    """The quick mode's domain: seeded samples of every part."""
    rng = random.Random(1)
    return Domain(domain.name, rng.sample(domain.train, 96), rng.sample(domain.dev, 32),
                  rng.sample(domain.test, 64), rng.sample(domain.mlm_train, 300),
                  rng.sample(domain.mlm_held_out, 40))


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> str:
    path.write_text("".join(json.dumps({"text": s, "label": y}) + "\n" for s, y in pairs),
                    encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------------------------
# Adaptation: phase 1 (the head alone), phase 2 (the whole model at a low rate)
# --------------------------------------------------------------------------------------------


def perplexity_curve(run: Path) -> list[dict]:
    """(step, held-out loss, perplexity) of every evaluation in ``run/log.jsonl``."""
    _, evaluations = read_log(run)
    return [{"step": e["step"], "loss": e["eval"]["loss"], "perplexity": e["eval"]["perplexity"]}
            for e in evaluations]


def unigram_perplexity(domain: Domain, recipe: dict) -> float:
    """The perplexity of a context-free guess on the held-out masked tokens that ``pretrain``
    scores (same text, masking and eval seed): each token's add-one frequency in the MLM
    training text."""
    tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
    options = dict(max_length=recipe["max_length"], pack=recipe["pack"])
    counts = Counter()
    for ids in TextSequences(domain.mlm_train, tokenizer, **options).input_ids:
        counts.update(ids.tolist())
    collator = MaskingCollator.from_tokenizer(tokenizer, recipe["masking"], 0.15)
    held = TextSequences(domain.mlm_held_out, tokenizer, **options)
    total = sum(counts.values()) + tokenizer.vocab_size
    nll, n = 0.0, 0
    for batch in MaskedBatches(held, collator, recipe["batch_size"], seed=0, shuffle=False):
        for target in batch["labels"][batch["labels"] != IGNORE_INDEX].tolist():
            nll -= math.log((counts[target] + 1) / total)
            n += 1
    return math.exp(nll / n)


def adapt(domain: Domain, config: dict, work: Path) -> dict:
    """Phase 1 then phase 2 into ``work``; the held-out numbers and curves of both."""
    if work.exists():
        shutil.rmtree(work)  # an unfinished earlier attempt: start the cell afresh
    work.mkdir(parents=True)
    text = write_lines(work / "mlm_train.txt", domain.mlm_train)
    eval_text = write_lines(work / "mlm_held_out.txt", domain.mlm_held_out)
    phases, model = {}, "minilm"
    for phase in ("phase1", "phase2"):
        start = time.process_time()
        metrics = pretrain(model=model, text=text, eval_text=eval_text, out=str(work / phase),
                           progress=False, **config[phase])
        phases[phase] = {"before": metrics["before"], "after": metrics["after"],
                         "train": metrics["train"], "curve": perplexity_curve(work / phase),
                         "cpu_seconds": time.process_time() - start}
        model = str(work / phase)
    with_pooler(work / "phase2", "minilm", work / "adapted")
    return {"data": metrics["data"], **phases,
            "unigram_perplexity": unigram_perplexity(domain, config["phase1"])}


# --------------------------------------------------------------------------------------------
# Why: a linear probe and the drift of the sentence embeddings
# --------------------------------------------------------------------------------------------


def logistic_probe(x_train, y_train, x_test, y_test, l2: float = 1e-3) -> float:
    """Test accuracy (points) of multinomial logistic regression fitted by L-BFGS."""
    classes = int(max(y_train.max(), y_test.max())) + 1
    w = torch.zeros(x_train.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ w + b, y_train) + l2 * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return 100 * ((x_test @ w + b).argmax(-1) == y_test).float().mean().item()


def probe(domain: Domain, adapted: Path, n_train: int) -> dict:
    """Linear-probe test accuracy before and after adaptation; cosine of before/after."""
    tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
    labels = sorted({y for _, y in domain.train})
    train = random.Random(SPLIT_SEED).sample(domain.train, min(n_train, len(domain.train)))
    y_train = torch.tensor([labels.index(y) for _, y in train])
    y_test = torch.tensor([labels.index(y) for _, y in domain.test])
    out, embeddings = {}, {}
    for arm, folder in zip(ARMS, (resolve_model_dir("minilm"), adapted), strict=True):
        model = speed_up(load_bert(folder))
        x_train = encode(model, tokenizer, [s for s, _ in train], max_length=128)
        embeddings[arm] = x_test = encode(model, tokenizer, [s for s, _ in domain.test],
                                          max_length=128)
        out[arm] = logistic_probe(x_train, y_train, x_test, y_test)
    cosine = (embeddings[ARMS[0]] * embeddings[ARMS[1]]).sum(-1)  # both L2-normalised
    return {"probe_accuracy": out, "probe_train": len(train),
            "cosine_mean": cosine.mean().item(), "cosine_min": cosine.min().item()}


# --------------------------------------------------------------------------------------------
# Downstream: the same fine-tune from both encoders
# --------------------------------------------------------------------------------------------


def labelled_subset(pairs: list[tuple[str, str]], n: int | None, seed: int) -> list:
    """``n`` labelled examples drawn with ``seed`` (all when None): a seeded shuffle, the first
    example of every label kept first, so a rare label (CSAbstruct's 'other', 3%) is never
    missing from the training labels while the test set holds it."""
    if n is None or n >= len(pairs):
        return pairs
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    first = {}
    for i in order:
        first.setdefault(pairs[i][1], i)
    chosen = list(first.values())
    taken = set(chosen)
    chosen += [i for i in order if i not in taken][: n - len(chosen)]
    return [pairs[i] for i in sorted(chosen)]


def without_pooler(model: str | Path, out: Path) -> str:
    """A copy of ``model``'s encoder and tokenizer with no pooler weights: the classifier that
    loads it initialises a fresh pooler (``load_encoder_weights(init_missing_pooler=True)``)."""
    if not out.is_dir():
        save_bert(speed_up(load_bert(model, add_pooling_layer=False)), out)
        Tokenizer.from_pretrained(model).save_pretrained(out)
    return str(out)


def fine_tune(domain: Domain, model: str, recipe: dict, seed: int, device: str) -> dict:
    """One fine-tune; test accuracy and macro-F1 (points) of the last model."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = write_jsonl(tmp / "train.jsonl",
                            labelled_subset(domain.train, recipe["labelled"], seed))
        dev = write_jsonl(tmp / "dev.jsonl", domain.dev)
        test = write_jsonl(tmp / "test.jsonl", domain.test)
        start = time.process_time()
        metrics = finetune(model=model, out=str(tmp / "out"), train=train, dev=dev, test=test,
                           text_col="text", label_col="label",
                           epochs=recipe["epochs"], lr=recipe["lr"],
                           batch_size=recipe["batch_size"], max_length=recipe["max_length"],
                           eval_every=10**9,  # dev once, at the end: the last model is scored
                           pooling="pooler",  # the same head on both encoders (the adapted
                           seed=seed, device=device, progress=False)  # folder states none)
    return {"accuracy": 100 * metrics["test"]["accuracy"], "macro_f1": 100 * metrics["test"]["f1"],
            "examples": metrics["train"]["examples"], "steps": metrics["train"]["steps"],
            "best_step": metrics["train"]["best_step"],
            "cpu_seconds": time.process_time() - start}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def downstream_table(results: dict) -> str:
    rows = []
    for key, cell in results["cells"].items():
        if "runs" not in cell:
            continue
        runs = cell["runs"]
        seeds = sorted(set.intersection(*(set(runs[arm]) for arm in ARMS)))
        if not seeds:
            continue
        acc = {arm: [runs[arm][s]["accuracy"] for s in seeds] for arm in ARMS}
        f1 = {arm: [runs[arm][s]["macro_f1"] for s in seeds] for arm in ARMS}
        first = runs[ARMS[0]][seeds[0]]
        rows.append({
            "domain": cell["domain"], "labelled": first["examples"], "steps": first["steps"],
            "pooler": "fresh, both" if key.endswith("/pooler") else "MiniLM's", "seeds": len(seeds),
            **{f"{arm} acc": mean_std(acc[arm]) for arm in ARMS},
            "adapted - not, acc": paired(acc[ARMS[1]], acc[ARMS[0]]),
            **{f"{arm} F1": mean_std(f1[arm]) for arm in ARMS},
            "adapted - not, F1": paired(f1[ARMS[1]], f1[ARMS[0]]),
        })
    return format_table(rows) if rows else "(no downstream cell has finished yet)"


def evidence_table(results: dict) -> str:
    rows = []
    for key, cell in results["cells"].items():
        if "phase1" not in cell:
            continue
        probe_cell = results["cells"].get(key.replace("adapt", "probe"), {})
        probe_cell = probe_cell if "probe_accuracy" in probe_cell else None
        p1, p2 = cell["phase1"], cell["phase2"]
        rows.append({
            "domain": cell["domain"],
            "context-free guess": cell["unigram_perplexity"],
            "fresh head": p1["before"]["perplexity"],
            "phase 1: head trained": p1["after"]["perplexity"],
            "phase 1 steps": p1["train"]["steps"],
            "phase 2: all trained": p2["after"]["perplexity"],
            "phase 2 steps (best)": f"{p2['train']['steps']} ({p2['train']['best_step']})",
            "masked acc 1 -> 2": f"{100 * p1['after']['masked_accuracy']:.1f} -> "
                                 f"{100 * p2['after']['masked_accuracy']:.1f}",
            "probe before -> after": " -> ".join(
                f"{probe_cell['probe_accuracy'][arm]:.2f}" for arm in ARMS) if probe_cell else "-",
            "cosine before/after (mean, min)":
                f"{probe_cell['cosine_mean']:.3f}, {probe_cell['cosine_min']:.3f}"
                if probe_cell else "-",
        })
    return format_table(rows, float_format=".1f") if rows else "(no adaptation has finished yet)"


def draw(results: dict, name: str) -> Path | None:
    """Left: held-out perplexity over MLM steps, phase 1 then phase 2, one line a domain. Right:
    what adaptation did downstream, adapted - not adapted accuracy for every seed of every cell
    (a dot a seed, the bar its mean ± standard error; below zero, adaptation cost accuracy)."""
    cells = [c for c in results["cells"].values() if "phase1" in c]
    if not plots.available() or not cells:
        return None
    fig, (ax, down) = plots.figure(12, 4.4, ncols=2, width_ratios=(3, 2))
    for i, cell in enumerate(cells):
        one, two = cell["phase1"]["curve"], cell["phase2"]["curve"]
        offset = cell["phase1"]["train"]["steps"]
        ax.plot([r["step"] for r in one], [r["perplexity"] for r in one], color=f"C{i}",
                marker="o", ms=3, label=f"{cell['domain']}: phase 1 (head alone)")
        ax.plot([offset + r["step"] for r in two], [r["perplexity"] for r in two], color=f"C{i}",
                marker="s", ms=3, linestyle="--", label=f"{cell['domain']}: phase 2 (all, 2e-5)")
        ax.axhline(cell["unigram_perplexity"], color=f"C{i}", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("MLM optimizer steps (phase 2 after phase 1's last)")
    ax.set_ylabel("held-out perplexity (log scale)")
    ax.set_title("held-out masked-word perplexity (dotted: context-free guess)")
    ax.legend(fontsize=8)

    domains = [c["domain"] for c in cells]
    ticks = []
    for key, cell in results["cells"].items():
        runs = cell.get("runs", {})
        seeds = sorted(set.intersection(*(set(runs[arm]) for arm in ARMS))) if runs else []
        if not seeds:
            continue
        x = len(ticks)
        deltas = [runs[ARMS[1]][s]["accuracy"] - runs[ARMS[0]][s]["accuracy"] for s in seeds]
        color = f"C{domains.index(cell['domain'])}" if cell["domain"] in domains else "C7"
        down.scatter([x] * len(deltas), deltas, color=color, alpha=0.5, s=18)
        se = statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else 0.0
        down.errorbar([x], [statistics.mean(deltas)], yerr=[se], color=color, marker="_",
                      markersize=22, capsize=4, linewidth=2)
        labelled = runs[ARMS[0]][seeds[0]]["examples"]
        ticks.append(cell["domain"].replace(" ", "\n", 1) + f"\n{labelled:,} labels"
                     + ("\nfresh pooler" if key.endswith("/pooler") else ""))
    down.axhline(0, color="grey", linestyle=":")
    down.set_xticks(range(len(ticks)), ticks, fontsize=8)
    down.set_xlim(-0.6, max(len(ticks), 1) - 0.4)
    down.set_ylabel("adapted - not adapted, test accuracy (points)")
    down.set_title("downstream: a dot a seed, bar: mean ± SE")
    fig.suptitle("Continued MLM on all-MiniLM-L6-v2: the head first, then the whole model")
    return plots.save(fig, RESULTS / f"{name}.png")


def write(results: dict, device: torch.device, quick: bool) -> None:
    name = result_name("claims_domain", device, quick)
    figure = draw(results, name)
    done = {key for key, cell in results["cells"].items()
            if "phase1" in cell or "probe_accuracy" in cell
            or ("runs" in cell and all(len(runs) == len(results["seeds"])
                                       for runs in cell["runs"].values()))}
    missing = [key for key in CELLS if key not in done]
    s = results["settings"]
    text = (
        "Continued whole-word MLM on in-domain text, then the same fine-tune from the published "
        "and the adapted encoder (see the docstring of `benchmarks/claims_domain.py` for the "
        f"splits: Financial PhraseBank AllAgree shuffled with seed {SPLIT_SEED}, 20% test, 5% "
        "dev; MLM on 50Agree minus those; CSAbstruct test.jsonl; a seeded 10% of the MLM text "
        f"held out, seed {MLM_SPLIT_SEED}). Phase 1: the MLM head alone, lr "
        f"{s['phase1']['lr']:g} constant, at most {s['phase1']['max_steps']} steps of "
        f"{s['phase1']['batch_size']} packed sequences of {s['phase1']['max_length']} tokens, "
        f"held-out loss every {s['phase1']['eval_every']} steps, patience "
        f"{s['phase1']['patience']}. Phase 2: the whole model, lr {s['phase2']['lr']:g}, at "
        f"most {s['phase2']['max_steps']} steps, evaluated every {s['phase2']['eval_every']}, "
        f"patience {s['phase2']['patience']}, best step kept.\n\n"
        "**Downstream** (test split; no model selection: fixed epochs, the last model): "
        f"low-label {s['low']['labelled']} examples x {s['low']['epochs']} epochs, full-label "
        f"all train x {s['full']['epochs']} epochs; lr {s['low']['lr']:g}, batch "
        f"{s['low']['batch_size']}, the labelled subset drawn with the seed. Points, mean ± std "
        "over seeds; adapted - not: paired by seed, ± its standard error.\n\n"
        f"{downstream_table(results)}\n\n"
        "**Why** (held-out perplexity on the same masked tokens; a context-free guess is each "
        "token's frequency in the MLM text; the linear probe is logistic regression on "
        f"mean-pooled embeddings of {s['probe_train']} labelled train sentences, test accuracy; "
        "the cosine compares each test sentence's embedding before and after adaptation):\n\n"
        f"{evidence_table(results)}\n"
        + (f"\n![perplexity and downstream differences]({figure.name})\n" if figure else "")
        + f"\nCells not run (yet): {', '.join(missing) if missing else 'none'}.\n"
        + "\nCPU time of the cells (this process): "
        + ", ".join(f"{k} {v['cpu_seconds'] / 60:.1f} min" for k, v in results["cells"].items()
                    if "cpu_seconds" in v) + ".\n"
    )
    report("claims_domain", device, quick, results, text,
           "Domain adaptation done right: continued MLM on all-MiniLM-L6-v2")


# --------------------------------------------------------------------------------------------


CELLS = ("fpb/adapt", "fpb/probe", "fpb/low", "fpb/full",
         "csabstruct/adapt", "csabstruct/probe", "csabstruct/low", "csabstruct/full",
         "fpb/pooler")


def main() -> None:
    parser = claims_parser(__doc__)
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS),
                        help="which cells to run (in the order of CELLS)")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "minift_claims_domain",
                        help="where the adapted models live between runs")
    args = parse(parser)
    quick, device = args.quick, torch.device(args.device)
    seeds = args.seeds or ([0, 1] if quick else SEEDS)
    config = settings(quick)
    work = args.work / ("quick" if quick else "full")
    data = data_dir()
    load = {"fpb": lambda: phrasebank(data / "financial_phrasebank"),
            "csabstruct": lambda: csabstruct(data / "csabstruct")}

    path = RESULTS / f"{result_name('claims_domain', device, quick)}.json"
    results = {"settings": config, "seeds": seeds, "cells": {}}
    if path.is_file():
        old = json.loads(path.read_text())
        for phase in ("phase1", "phase2"):  # recorded before pretrain's steps became max_steps
            if "steps" in old.get("settings", {}).get(phase, {}):
                old["settings"][phase]["max_steps"] = old["settings"][phase].pop("steps")
        if old.get("settings") == json.loads(json.dumps(config)):
            results["cells"] = old["cells"]  # resume: the finished cells and seeds stay
            print(f"resuming from {path}: {', '.join(old['cells'])}")
    domains: dict[str, Domain] = {}
    for key in [c for c in CELLS if c in args.cells]:
        short, kind = key.split("/")
        if short not in domains:
            domains[short] = shrink(load[short]()) if quick else load[short]()
            d = domains[short]
            results.setdefault("data", {})[short] = {
                "train": len(d.train), "dev": len(d.dev), "test": len(d.test),
                "mlm_train_sentences": len(d.mlm_train),
                "mlm_held_out_sentences": len(d.mlm_held_out)}
            print(f"{d.name}: {results['data'][short]}", flush=True)
        domain, cell = domains[short], results["cells"].setdefault(key, {"domain": domains[short].name})
        adapted = work / short / "adapted"
        if kind == "adapt" and "phase1" not in cell:
            start = time.process_time()
            cell.update(adapt(domain, config, work / short))
            cell["cpu_seconds"] = time.process_time() - start
        elif kind in ("probe", "low", "full", "pooler") and not adapted.is_dir():
            print(f"{key}: skipped, {short}/adapt has not run (no {adapted})")
            continue
        elif kind == "probe" and "probe_accuracy" not in cell:
            start = time.process_time()
            cell.update(probe(domain, adapted, config["probe_train"]))
            cell["cpu_seconds"] = time.process_time() - start
        elif kind in ("low", "full", "pooler"):
            runs = cell.setdefault("runs", {arm: {} for arm in ARMS})
            models = dict(zip(ARMS, (str(resolve_model_dir("minilm")), str(adapted)),
                              strict=True))
            if kind == "pooler":  # both arms from the same fresh pooler, the low-label recipe
                models = {arm: without_pooler(folder, work / short / f"no_pooler_{i}")
                          for i, (arm, folder) in enumerate(models.items())}
            for seed in seeds:
                for arm in ARMS:  # interleaved: load changes hit both arms alike
                    if str(seed) in runs[arm]:
                        continue
                    recipe = config["low" if kind == "pooler" else kind]
                    r = fine_tune(domain, models[arm], recipe, seed, args.device)
                    runs[arm][str(seed)] = r
                    print(f"{key} seed {seed} {arm}: test accuracy {r['accuracy']:.2f} "
                          f"macro-F1 {r['macro_f1']:.2f} ({r['cpu_seconds']:.0f} CPU-s)",
                          flush=True)
                    write(results, device, quick)
            cell["cpu_seconds"] = sum(r["cpu_seconds"] for arm in ARMS
                                      for r in runs[arm].values())
        write(results, device, quick)


if __name__ == "__main__":
    main()
