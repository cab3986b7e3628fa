"""The ``minift`` command: argument parsing only; the recipes it runs live in ``minift.run.recipes``.

Nothing heavy is imported until a command runs, so ``minift --help`` answers at once (a test
holds it to importing no torch). ``main`` turns the errors a command can foresee into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sys
from pathlib import Path

DEFAULT_PAIRS = [
    ("A man is playing a guitar.", "Someone is playing an instrument."),
    ("A man is playing a guitar.", "The stock market fell sharply today."),
    ("The cat sits on the mat.", "A cat is sitting on a rug."),
    ("How do I fine-tune BERT?", "What is the recipe for training an encoder on my labels?"),
    ("It was a dark and stormy night.", "Quarterly revenue grew by eight percent."),
]

DESCRIPTION = "Fine-tune BERT-style encoders (minift, pure PyTorch)."
EPILOG = """\
conventions shared by every command:
  --model        'minilm' (the installed all-MiniLM-L6-v2) or a checkpoint folder
  --text-col     defaults to 'text' and --label-col to 'label' everywhere (the usual names in
                 Hugging Face datasets); 'finetune --task' sets the task's own columns
  --out          one run at a time per folder; a finished run leaves the best model (HF
                 format), metrics.json and log.jsonl; resume.pt and best/ exist only while
                 the run is unfinished (or with --keep-resume)
  exit status    0 done; 2 bad input (one line 'minift: error: ...', nothing trained);
                 1 a failure during the run (full disk, out of memory); 130 Ctrl-C: the folder
                 is left as --resume continues it

run 'minift COMMAND --help' for the options of a command."""

MODEL_HELP = "'minilm' (the installed all-MiniLM-L6-v2) or a checkpoint folder"


# --------------------------------------------------------------------------------------------
# Commands: each turns the parsed arguments into a call of its recipe
# --------------------------------------------------------------------------------------------


def parse_pairs(texts: list[str] | None) -> list[tuple[str, str]]:
    """``'A ||| B'`` strings -> (A, B) pairs; both texts must be non-empty."""
    if not texts:
        return DEFAULT_PAIRS
    pairs = []
    for text in texts:
        if "|||" not in text:
            raise ValueError(f"--pair {text!r}: separate the two sentences with '|||'")
        first, second = (part.strip() for part in text.split("|||", 1))
        if not first or not second:
            raise ValueError(f"--pair {text!r}: both sentences must be non-empty")
        pairs.append((first, second))
    return pairs


def cmd_similarity(args: argparse.Namespace) -> int:
    pairs = parse_pairs(args.pair)  # checked before the model is loaded
    from minift.core.sentence import encode
    from minift.data.tokenizer import Tokenizer
    from minift.fast.unpad import speed_up
    from minift.hf.checkpoint import load_bert, resolve_model_dir
    from minift.run.recipes import check_device

    check_device(args.device)
    folder = resolve_model_dir(args.model)
    model, tokenizer = speed_up(load_bert(folder)), Tokenizer.from_pretrained(folder)
    if args.device:
        model.to(args.device)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {folder} ({model.config.num_hidden_layers} layers, hidden "
          f"{model.config.hidden_size}, {n / 1e6:.1f}M parameters)")
    left = encode(model, tokenizer, [a for a, _ in pairs])
    right = encode(model, tokenizer, [b for _, b in pairs])
    print(f"{'cosine':>7}  sentence pair")
    for (a, b), score in zip(pairs, (left * right).sum(-1).tolist(), strict=True):
        print(f"{score:7.3f}  {a}  <->  {b}")
    return 0


def _run_recipe(name: str, args: argparse.Namespace) -> int:
    """Call ``minift.run.recipes.<name>`` with the parsed options its signature names."""
    from minift.run import recipes

    recipe = getattr(recipes, name)
    if getattr(args, "plot", False):  # checked before training, not after an hour of it
        from minift.run.plots import require_matplotlib

        require_matplotlib("--plot")
    options = vars(args) | {"progress": not args.no_progress}
    recipe(**{key: options[key] for key in inspect.signature(recipe).parameters if key in options})
    if getattr(args, "plot", False) and os.environ.get("RANK", "0") == "0":
        cmd_plot(argparse.Namespace(runs=[args.out], out=None))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from minift.run.plots import plot_runs

    for path in plot_runs(args.runs, args.out):
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help (not the None / False of optional flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is not None and action.default is not False
                and action.default != argparse.SUPPRESS and action.option_strings
                and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


def _parser(sub, name: str, help: str, description: str = "") -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help,
                          formatter_class=_HelpFormatter)


def add_model_option(group) -> None:
    group.add_argument("--model", default="minilm", help=MODEL_HELP)


def add_loop_options(group, *, lr: float, warmup_ratio: float, batch_size: int = 32) -> None:
    """Options of the training loop (``minift.core.loop``) that every command on it shares."""
    group.add_argument("--lr", type=float, default=lr, help="peak learning rate (AdamW)")
    group.add_argument("--batch-size", type=int, default=batch_size,
                       help="examples a step (the global batch under torchrun)")
    group.add_argument("--grad-accum", type=int, default=1,
                       help="micro-batches accumulated into one optimizer step")
    group.add_argument("--warmup-ratio", type=float, default=warmup_ratio,
                       help="share of the steps of linear warmup")
    group.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    group.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                       help="mixed precision")
    group.add_argument("--optimizer", choices=["auto", "fused", "foreach", "hand"],
                       default="auto", help="AdamW implementation")
    group.add_argument("--seed", type=int, default=0, help="seed of everything random")
    group.add_argument("--compile", action="store_true", help="torch.compile the model")
    group.add_argument("--activation-checkpointing", action="store_true",
                       help="recompute each encoder block in backward: less memory, more time")


def add_run_options(p: argparse.ArgumentParser, *, resumable: bool = True,
                    out_required: bool = True) -> None:
    """Where the run writes, on what device, and how it reports."""
    group = p.add_argument_group("run")
    group.add_argument("--out", required=out_required, metavar="DIR",
                       help="output folder (one run at a time)")
    if resumable:
        group.add_argument("--resume", action="store_true",
                           help="continue an interrupted run from OUT/resume.pt")
        group.add_argument("--keep-resume", action="store_true",
                           help="keep OUT/resume.pt when the run completes (removed otherwise)")
    group.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: cuda when available)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    if resumable:  # the runs on minift.core.loop, which write log.jsonl
        group.add_argument("--plot", action="store_true",
                           help="when the run ends, draw its curves into OUT (as 'minift plot "
                                "OUT'; needs matplotlib)")


def add_classifier_training(p: argparse.ArgumentParser, *, max_length_help: str) -> None:
    """The training options ``finetune`` and ``ner`` share."""
    group = p.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=3, help="passes over the training set")
    group.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    add_loop_options(group, lr=5e-5, warmup_ratio=0.1)
    group.add_argument("--max-length", type=int, default=128, help=max_length_help)
    group.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear",
                       help="learning-rate decay after warmup")
    group.add_argument("--freeze", default="none",
                       help="what does not train: none, head (only the classifier trains) or "
                            "last-N (only the last N blocks and the classifier train)")
    group.add_argument("--head-lr", type=float,
                       help="the classifier's own peak learning rate (default: --lr); a frozen "
                            "encoder's head needs a far higher one (lesson 03)")
    group.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                       help="random: the model's architecture from random weights, to measure "
                            "what pretraining is worth")
    group.add_argument("--eval-every", type=int,
                       help="steps between evaluations on dev (default: every epoch)")
    group.add_argument("--patience", type=int,
                       help="stop early after N evaluations without improvement")
    group.add_argument("--dropout", type=float,
                       help="the classifier's dropout (default: the encoder's hidden dropout)")


def add_finetune_parser(sub) -> None:
    p = _parser(sub, "finetune", "fine-tune a sequence / pair classifier")
    data = p.add_argument_group("model and data")
    add_model_option(data)
    data.add_argument("--task", choices=["sst2", "mrpc", "rte"],
                      help="a GLUE task from the data folder (instead of --train/--dev)")
    data.add_argument("--data-dir", metavar="DIR", help="folder of the data sets, for --task (default: "
                      "$MINIFT_DATA, else ../shared/data beside the repository)")
    data.add_argument("--train", metavar="FILE", help="training file (.tsv, .csv or .jsonl)")
    data.add_argument("--dev", metavar="FILE", help="development file, same format")
    data.add_argument("--text-col", default="text", help="column of the text")
    data.add_argument("--pair-col", help="column of the second text of a pair (optional)")
    data.add_argument("--label-col", default="label", help="column of the label")
    data.add_argument("--limit-train", type=int, help="train on a seeded random subset of N")
    data.add_argument("--dev-from-train", type=int, metavar="N",
                      help="dev = N examples held out of the training file (a split drawn with "
                           "--split-seed, the same for every --seed, which also draws "
                           "--limit-train); the dev file is not read: give it as --test")
    data.add_argument("--split-seed", type=int, default=0, help="seed of --dev-from-train")
    data.add_argument("--test", metavar="FILE",
                      help="test file, same format: scored once, by the best model, at the end")
    add_classifier_training(p, max_length_help="tokens an example keeps")
    add_run_options(p)
    p.set_defaults(func=lambda args: _run_recipe("finetune", args))


def add_ner_parser(sub) -> None:
    p = _parser(sub, "ner", "fine-tune a token classifier (NER or POS) on CoNLL files")
    data = p.add_argument_group("model and data")
    add_model_option(data)
    data.add_argument("--train", metavar="FILE", required=True, help="CoNLL column file (word ... tag a line)")
    data.add_argument("--dev", metavar="FILE", required=True, help="development file, same columns")
    data.add_argument("--test", metavar="FILE", help="test file, same columns (optional)")
    data.add_argument("--column", type=int, default=-1,
                      help="0-based tag column, -1 the last (CoNLL-2003: 1 POS, 2 NER)")
    data.add_argument("--scheme", choices=["iob1", "iob2"], default="iob2",
                      help="NER tags: iob2 checks strict IOB2, iob1 converts to it")
    data.add_argument("--task", choices=["auto", "ner", "pos"], default="auto",
                      help="ner: entity F1; pos: token accuracy; auto: ner when tags are O/B-/I-")
    data.add_argument("--limit-train", type=int, help="train on a seeded random subset of N "
                      "sentences")
    data.add_argument("--stride-words", type=int, default=16,
                      help="overlap of the windows of a long sentence, in words")
    data.add_argument("--label-all-subwords", action="store_true",
                      help="train on every sub-word (B- continuations become I-), not the first")
    add_classifier_training(p, max_length_help="tokens a window holds; longer sentences are "
                            "split into windows of whole words")
    add_run_options(p)
    p.set_defaults(func=lambda args: _run_recipe("ner", args))


def add_pretrain_parser(sub) -> None:
    p = _parser(sub, "pretrain", "continue masked-language-model pretraining on domain text")
    data = p.add_argument_group("model and data")
    add_model_option(data)
    data.add_argument("--text", nargs="+", required=True, metavar="FILE",
                      help="text file(s), one passage a line")
    data.add_argument("--eval-text", metavar="FILE",
                      help="held-out text (default: a seeded slice of --text, left out of "
                           "training)")
    data.add_argument("--eval-fraction", type=float, default=0.05,
                      help="share of the passages held out when there is no --eval-text")
    data.add_argument("--eval-seed", type=int, default=0,
                      help="seed of the held-out slice and of its (fixed) masks")
    data.add_argument("--masking", choices=["mlm", "wwm", "span"], default="mlm",
                      help="mlm: BERT tokens; wwm: whole words; span: SpanBERT spans")
    data.add_argument("--mlm-probability", type=float, default=0.15,
                      help="masking rate (budget)")
    data.add_argument("--pack", action="store_true",
                      help="pack consecutive passages into full-length sequences")
    data.add_argument("--nsp", action="store_true",
                      help="also next-sentence prediction (BERT's pair objective): --text holds "
                           "documents, a blank line between them, or JSONL with a 'sentences' "
                           "list a line")
    group = p.add_argument_group("training")
    group.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    add_loop_options(group, lr=5e-5, warmup_ratio=0.06)
    group.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear",
                       help="learning-rate decay after warmup (constant: for --patience)")
    group.add_argument("--max-length", type=int, default=128, help="tokens a sequence holds")
    group.add_argument("--eval-every", type=int,
                       help="steps between held-out evaluations (default: at the end)")
    group.add_argument("--patience", type=int,
                       help="stop early after N evaluations without a better held-out loss")
    group.add_argument("--freeze", choices=["none", "head"], default="none",
                       help="head: train only the MLM head, the encoder frozen (first, for a "
                            "checkpoint shipped without one)")
    group.add_argument("--save-every", type=int,
                       help="steps between resume checkpoints (default: at each evaluation)")
    add_run_options(p)
    p.set_defaults(func=lambda args: _run_recipe("pretrain", args))


def add_setfit_parser(sub) -> None:
    p = _parser(sub, "setfit", "few-shot classification with SetFit, over several seeds")
    data = p.add_argument_group("model and data")
    add_model_option(data)
    data.add_argument("--train", metavar="FILE", required=True, help="training file (.tsv .csv .jsonl, or .txt "
                      "for semicolon 'text;label' lines)")
    data.add_argument("--dev", metavar="FILE", required=True, help="development file, same format")
    data.add_argument("--text-col", default="text", help="column of the text")
    data.add_argument("--label-col", default="label", help="column of the label")
    data.add_argument("--format", choices=["tsv", "csv", "jsonl", "semicolon"],
                      help="file format (default: from the suffix)")
    data.add_argument("--shots", type=int, default=8, help="training examples per class")
    data.add_argument("--max-dev", type=int, help="evaluate on a fixed seeded subset of N")
    group = p.add_argument_group("training")
    group.add_argument("--seeds", type=int, default=5, help="runs, with seeds 0..N-1")
    group.add_argument("--loss", choices=["cosine", "contrastive"], default="cosine",
                       help="loss of the contrastive phase")
    group.add_argument("--sampling", choices=["oversampling", "undersampling", "unique"],
                       default="oversampling", help="how positive and negative pairs are balanced")
    group.add_argument("--num-iterations", type=int,
                       help="legacy: N positive and N negative pairs per example (overrides "
                            "--sampling)")
    group.add_argument("--epochs", type=int, default=1, help="contrastive epochs")
    group.add_argument("--max-steps", type=int, help="stop the contrastive phase after N steps "
                       "(the pairs grow with the square of --shots)")
    group.add_argument("--batch-size", type=int, default=16, help="pairs a step")
    group.add_argument("--lr", type=float, default=2e-5, help="encoder learning rate")
    group.add_argument("--head", choices=["logistic", "linear"], default="logistic",
                       help="logistic regression (L-BFGS) or a linear head trained by AdamW")
    group.add_argument("--end-to-end", action="store_true",
                       help="with --head linear: train the encoder with the head")
    group.add_argument("--max-length", type=int, default=256, help="tokens a text keeps")
    add_run_options(p, resumable=False)
    p.set_defaults(func=lambda args: _run_recipe("setfit", args))


def cmd_qa(args: argparse.Namespace) -> int:
    """Train a span head (``recipes.qa``), or with --question answer one (``recipes.answer``)."""
    if args.question is not None:
        return _run_recipe("answer", args)
    if args.context is not None or args.context_file is not None:
        raise ValueError("--context / --context-file go with --question")
    if args.out is None:
        raise ValueError("--out DIR is needed to train (or give --question to answer with "
                         "a trained --model)")
    return _run_recipe("qa", args)


def add_qa_parser(sub) -> None:
    p = _parser(sub, "qa", "extractive question answering: train on SQuAD files, or answer",
                "Train a span head on SQuAD v1.1 JSON files (--train/--dev, or --squad FILE "
                "--dev-articles N), or answer one question with a trained model (--model RUN "
                "--question ... --context ...).")
    data = p.add_argument_group("model and data")
    add_model_option(data)
    data.add_argument("--train", metavar="FILE", help="SQuAD v1.1 JSON training file")
    data.add_argument("--dev", metavar="FILE", help="SQuAD v1.1 JSON development file")
    data.add_argument("--squad", metavar="FILE",
                      help="one SQuAD file split by article (instead of --train/--dev)")
    data.add_argument("--dev-articles", type=int, help="with --squad: articles held out for dev")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the article split")
    data.add_argument("--limit-train", type=int,
                      help="train on a seeded random subset of N questions")
    ask = p.add_argument_group("answering one question (with a trained --model)")
    ask.add_argument("--question", help="the question")
    ask.add_argument("--context", help="the text to find the answer in")
    ask.add_argument("--context-file", metavar="FILE", help="the context, from a UTF-8 file")
    ask.add_argument("--show", type=int, default=1, help="answers printed, best first")
    group = p.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=2, help="passes over the training set")
    group.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    add_loop_options(group, lr=5e-5, warmup_ratio=0.1)
    group.add_argument("--max-length", type=int, default=384,
                       help="tokens a window holds (question + context piece)")
    group.add_argument("--doc-stride", type=int, default=128,
                       help="tokens of context two consecutive windows share")
    group.add_argument("--n-best", type=int, default=20,
                       help="start and end candidates a window, and answers kept")
    group.add_argument("--max-answer-length", type=int, default=30, help="tokens an answer spans")
    group.add_argument("--eval-every", type=int,
                       help="steps between evaluations on dev (default: every epoch)")
    add_run_options(p, out_required=False)
    p.set_defaults(func=cmd_qa)


def add_similarity_parser(sub) -> None:
    p = _parser(sub, "similarity", "cosine similarity of sentence pairs")
    add_model_option(p)
    p.add_argument("--pair", action="append", metavar="'A ||| B'",
                   help="a sentence pair (repeatable); default: a few built-in pairs")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_similarity)


def add_plot_parser(sub) -> None:
    p = _parser(sub, "plot", "draw the curves of runs into PNG files",
                "Draw the training loss (smoothed, the logged values faint), the learning rate "
                "and every held-out metric against the step from each RUN/log.jsonl, several "
                "runs on the same axes (labelled by folder). The curves go into --out, by "
                "default the first RUN; each run's confusion.png (classification) or "
                "f1_per_type.png (NER), from its metrics.json, goes into its own folder.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="folder of a finetune, ner or "
                   "pretrain run (holding log.jsonl)")
    p.add_argument("--out", metavar="DIR", help="folder of the curves (default: the first RUN)")
    p.set_defaults(func=cmd_plot)


def cmd_search(task: str, args: argparse.Namespace) -> int:
    from minift.run.search import search

    search(task, out=args.out, options=vars(args), grid=args.grid, seeds=args.seeds,
           metric=args.metric, random_draws=args.random, random_seed=args.random_seed,
           test=args.test, halving=args.halving, halving_keep=args.halving_keep,
           halving_min_epochs=args.halving_min_epochs)
    return 0


def add_search_parser(sub) -> None:
    p = _parser(sub, "search", "hyperparameter search: a grid, several seeds a configuration",
                "Run TASK's recipe for every configuration of a grid (or --random N of them), "
                "each with --seeds K seeds, every trial a fresh run from the same checkpoint "
                "into OUT/trials/; choose the configuration with the best mean dev --metric; "
                "score --test once, for the chosen configuration only. Every option of TASK is "
                "accepted and fixed; --grid varies the ones it names. Trials run one after "
                "another; rerun the same command to resume (OUT/trials.jsonl holds the "
                "finished ones). Writes OUT/search.json, search.md, search.png and model/. "
                "Run 'minift search TASK --help' for TASK's options.")
    tasks = p.add_subparsers(dest="search_task", required=True, metavar="TASK")
    for name, add in (("finetune", add_finetune_parser), ("ner", add_ner_parser),
                      ("qa", add_qa_parser), ("setfit", add_setfit_parser)):
        add(tasks)
        task = tasks.choices[name]
        group = task.add_argument_group("search")
        group.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                           help="a hyperparameter to vary (repeatable): lr, batch_size, epochs, "
                                "freeze, warmup_ratio, weight_decay, dropout, max_length (setfit:"
                                " also sampling, num_iterations, head, loss); lr=log:1e-5:1e-4 "
                                "is a range for --random. Default: the BERT paper's grid (lr "
                                "5e-5,3e-5,2e-5; batch_size 16,32; epochs 2,3,4)")
        if name == "setfit":  # setfit's own --seeds is the same idea: seeds a configuration
            task.set_defaults(seeds=3)
        else:
            group.add_argument("--seeds", type=int, default=3,
                               help="seeds a configuration: --seed, --seed + 1, ...")
        group.add_argument("--metric", help="the dev metric the choice is made on (finetune: "
                           "accuracy, f1, loss; ner: entity_f1, precision, recall, "
                           "token_accuracy, accuracy (POS), loss; qa: f1, exact_match; setfit: "
                           "accuracy); default: the first")
        group.add_argument("--random", type=int, metavar="N",
                           help="draw N configurations from the grid instead of running all")
        group.add_argument("--random-seed", type=int, default=0, help="seed of --random's draws")
        group.add_argument("--halving", action="store_true",
                           help="successive halving over epochs: all configurations train a "
                                "short budget, the best share goes on, the last rung in full")
        group.add_argument("--halving-keep", type=float, default=0.5,
                           help="share of the configurations a rung keeps")
        group.add_argument("--halving-min-epochs", type=int, default=1,
                           help="epochs of the first rung")
        if name in ("qa", "setfit"):
            group.add_argument("--test", metavar="FILE",
                               help="test file, same format: scored once, at the end, for the "
                                    "chosen configuration only")
        task.set_defaults(func=lambda args, task=name: cmd_search(task, args))


def build_parser() -> argparse.ArgumentParser:
    """The ``minift`` parser and its subcommands."""
    from minift import __version__

    parser = argparse.ArgumentParser(prog="minift", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"minift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_finetune_parser(sub)
    add_ner_parser(sub)
    add_pretrain_parser(sub)
    add_setfit_parser(sub)
    add_qa_parser(sub)
    add_similarity_parser(sub)
    add_plot_parser(sub)
    add_search_parser(sub)
    return parser


# --------------------------------------------------------------------------------------------
# Entry point: errors as one line
# --------------------------------------------------------------------------------------------


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed run left in its output folder."""
    out = getattr(args, "out", None)
    if out is None:
        return "nothing was written"
    if (Path(out) / "resume.pt").is_file():
        return f"{out}/resume.pt holds the last checkpoint: add --resume to continue"
    return f"{out} keeps what was written before"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minift`` console script and ``python -m minift``."""
    args = build_parser().parse_args(argv)
    # Under torchrun every rank runs this command; only rank 0 prints (errors show from all).
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    helper_rank = launched and os.environ.get("RANK", "0") != "0"
    where = f" (rank {os.environ.get('RANK', '0')})" if launched else ""
    clean = False
    try:
        with open(os.devnull, "w") if helper_rank else contextlib.nullcontext() as quiet:
            with contextlib.redirect_stdout(quiet) if helper_rank else contextlib.nullcontext():
                status = args.func(args)
        clean = True
        return status
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"minift: error{where}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nminift: interrupted{where}; {_kept(args)}", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a vanished folder: say what happened and what is kept
        print(f"minift: error{where}: {err}; {_kept(args)}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if type(err).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError
            raise
        print(f"minift: error{where}: out of memory ({str(err).splitlines()[0]}); a smaller "
              f"--batch-size or --max-length needs less; {_kept(args)}", file=sys.stderr)
        return 1
    finally:
        if "minift.core.ddp" in sys.modules:  # only a command that trained joined a group
            sys.modules["minift.core.ddp"].teardown(clean)


if __name__ == "__main__":
    sys.exit(main())
