"""Every option of the ``minift`` commands, defined once, as a dataclass field.

From the fields (``option``: help, check, choices, ``search``, ...) come the recipe's call
(``recipes.finetune(**options)`` builds ``FinetuneOptions(**options)``, which checks every
value), the command line (``add_options``, the way ``HfArgumentParser`` reads a dataclass) and the
search grid (``minift.run.grid``). The training loop's options are ``TrainConfig``'s fields, read
from it (``loop_fields``), never written here; this file adds how the command line shows them
(``LOOP``). Errors name fields, not flags (``OptionError``); only the command line shows flags.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, make_dataclass
from functools import cache
from pathlib import Path
from typing import Any

# --- 1. Errors that name an option, and the checks a field can carry ------------------------------


class OptionError(ValueError):
    """A bad option value: ```name``` in the text marks an option, shown as the field's name by
    ``str`` and as its flag by ``render(flag)`` (the command line)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def render(self, name: Callable[[str], str]) -> str:
        return re.sub(r"`(\w+)`", lambda match: name(match[1]), self.text)

    def __str__(self) -> str:
        return self.render(lambda name: name)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(test: Callable[[float], bool], text: str) -> Callable[[Any], None]:
    """A check that a finite number passes ``test`` (nan and inf fail), raising ``text``."""
    def check(value: Any) -> None:
        if not (_number(value) and test(value)):
            raise ValueError(text)
    return check


positive = _in_range(lambda v: v > 0, "must be positive")  # a learning rate
non_negative = _in_range(lambda v: v >= 0, "must be 0 or more")
fraction = _in_range(lambda v: 0 <= v < 1, "must be in [0, 1)")  # a dropout
share = _in_range(lambda v: 0 <= v <= 1, "must be in [0, 1]")  # the warmup's share of the steps
kept_share = _in_range(lambda v: 0 < v <= 1, "must be in (0, 1]")  # what a halving rung keeps
finite = _in_range(lambda v: True, "must be a finite number")


def at_least(minimum: int, maximum: int | None = None) -> Callable[[Any], None]:
    """A whole number >= ``minimum`` (and <= ``maximum``, where a huge value means a hang)."""
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("is not a whole number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
    return check


LARGEST = 2**63 - 1  # what torch's integers hold: a larger whole number is refused by name
seed_check = at_least(0, 2**32 - 1)  # a seed: numpy's range, and torch's with room for seed + k


def freeze_mode(value: Any) -> None:
    """``none``, ``head`` or ``last-N`` (N is checked against the model, ``check_freeze``)."""
    if not (value in ("none", "head") or (isinstance(value, str) and value.startswith("last-")
                                          and value[5:].isdigit())):
        raise ValueError("is not a freeze mode (none, head or last-N)")


def check_field(spec: Field, value: Any) -> None:
    """Raise ``OptionError`` naming ``spec`` when ``value`` fails its choices or its check
    (None passes where None is the default: the option is not given)."""
    if value is None and spec.default is None:
        return
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST:
        raise OptionError(f"`{spec.name}` {value} is too large (at most {LARGEST})")
    choices, check = spec.metadata.get("choices"), spec.metadata.get("check")
    if choices and value not in choices:
        raise OptionError(f"`{spec.name}` must be one of {', '.join(choices)}, got {value!r}")
    if check is not None:
        try:
            check(value)
        except ValueError as err:
            raise OptionError(f"`{spec.name}` {err}, got {value!r}") from None


# --- 2. Fields, and the training loop's own (read from TrainConfig) -------------------------------

DATA, TRAINING, RUN, GENERATION = "model and data", "training", "run", "generation"
MAX_SEEDS = 1000  # runs a command makes, one per seed: more is a typo, not a plan


def option(default: Any = MISSING, help: str = "", *, group: str | None = TRAINING,
           **metadata: Any) -> Any:
    """A field of an options dataclass. ``metadata``: ``check``, ``choices``, ``search``,
    ``flag``, ``metavar``, ``nargs``, ``action``, ``required`` (the command line's, when it
    differs from the call's), ``cli=False`` (an option of the call only)."""
    return field(default=default, metadata={"help": help, "group": group, **metadata})


# How the command line shows TrainConfig's fields (names, types and defaults are TrainConfig's).
LOOP: dict[str, dict] = {
    "epochs": dict(help="passes over the training set", check=at_least(1), search=True),
    "max_steps": dict(help="optimizer steps; overrides --epochs", check=at_least(1)),
    "lr": dict(help="peak learning rate (AdamW)", check=positive, search=True),
    "grad_accum": dict(help="micro-batches accumulated into one optimizer step",
                       check=at_least(1)),
    "warmup_ratio": dict(help="share of the steps of linear warmup", check=share, search=True),
    "weight_decay": dict(help="AdamW weight decay", check=non_negative, search=True),
    "schedule": dict(help="learning-rate decay after warmup", search=True,
                     choices=("linear", "cosine", "constant")),
    "amp": dict(help="mixed precision", choices=("off", "bf16", "fp16")),
    "optimizer": dict(help="AdamW implementation", choices=("auto", "fused", "foreach", "hand")),
    "seed": dict(help="seed of everything random", check=seed_check),
    "compile": dict(help="torch.compile the model, for static shapes: each batch padded up to "
                         "one of 4 bucket lengths, the encoder on its padded path"),
    "eval_every": dict(help="steps between evaluations on dev (default: every epoch)",
                       check=at_least(1)),
    "patience": dict(help="stop early after N evaluations without improvement",
                     check=at_least(1)),
    "save_every": dict(help="steps between resume checkpoints (default: at each evaluation)",
                       check=at_least(1)),
    "keep_resume": dict(help="keep OUT/resume.pt when the run completes (removed otherwise)",
                        group=RUN),
    "progress": dict(help="no progress bars", group=RUN),
}
LOOP_SOURCE = Path(__file__).resolve().parents[1] / "core" / "loop.py"


@cache
def loop_fields() -> dict[str, tuple[str, Any]]:
    """``TrainConfig``'s fields: name -> (type, default), read from the loop's source rather than
    imported, so that ``minift --help`` stays free of torch (a test holds the two equal)."""
    tree = ast.parse(LOOP_SOURCE.read_text(encoding="utf-8"))
    config = next(node for node in tree.body
                  if isinstance(node, ast.ClassDef) and node.name == "TrainConfig")
    return {node.target.id: (ast.unparse(node.annotation), _default(node.value))
            for node in config.body if isinstance(node, ast.AnnAssign)}


def _default(node: ast.expr | None) -> Any:
    """A field's default in the source: a literal, or ``field(default=literal)``."""
    if isinstance(node, ast.Call):
        node = next((k.value for k in node.keywords if k.arg == "default"), None)
    try:
        return MISSING if node is None else ast.literal_eval(node)
    except ValueError:
        return MISSING


def with_loop(*names: str, helps: dict[str, str] | None = None,
              **defaults: Any) -> Callable[[type], type]:
    """Add TrainConfig's fields ``names`` to an options dataclass (after its own), with their
    command-line metadata from ``LOOP``; ``defaults`` and ``helps`` are the recipe's own."""
    def add(cls: type) -> type:
        extra = []
        for name in names:
            kind, default = loop_fields()[name]
            meta = {"group": TRAINING} | LOOP[name] | ({"help": helps[name]}
                                                       if name in (helps or {}) else {})
            extra.append((name, kind, field(default=defaults.get(name, default), metadata=meta)))
        made = make_dataclass(cls.__name__, extra, bases=(cls,), kw_only=True)
        made.__doc__, made.__module__, made.__qualname__ = cls.__doc__, cls.__module__, cls.__name__
        return made
    return add


@dataclass(kw_only=True)
class Options:
    """Checks every field when made: a bad value raises ``OptionError`` naming the field."""

    def __post_init__(self) -> None:
        for spec in fields(self):
            check_field(spec, getattr(self, spec.name))


# --- 3. The options of each command ---------------------------------------------------------------

MODEL_HELP = "'minilm' (the installed all-MiniLM-L6-v2) or a checkpoint folder"
DEVICE_HELP = "cpu, cuda, cuda:1 or mps (default: cuda when available)"
LIMIT_DEV_HELP = "score only a fixed seeded subset of N dev examples (a quick trial)"
DATA_DIR_HELP = ("folder of the data sets, for --task (default: $MINIFT_DATA, else "
                 "../shared/data beside the repository)")
CLASSIFIER_LOOP = ("epochs", "max_steps", "lr", "grad_accum", "warmup_ratio", "weight_decay",
                   "schedule", "amp", "optimizer", "seed", "compile", "eval_every", "patience",
                   "keep_resume", "progress")


@dataclass(kw_only=True)
class RunOptions(Options):
    """Where a run writes and on what device (every command that writes)."""
    out: str = option(help="output folder (one run at a time)", group=RUN, metavar="DIR")
    device: str | None = option(None, DEVICE_HELP, group=RUN)
    overwrite: bool = option(False, "write into OUT although it holds other files or another "
                             "command's run (never into the model folder)", group=RUN)


@dataclass(kw_only=True)
class LoopRunOptions(RunOptions):
    """The options of a run on ``minift.core.loop.train`` that are not TrainConfig's."""
    model: str = option("minilm", MODEL_HELP, group=DATA)
    resume: bool = option(False, "continue an interrupted run from OUT/resume.pt", group=RUN)
    batch_size: int = option(32, "examples a step (the global batch under torchrun)",
                             check=at_least(1), search=True)
    activation_checkpointing: bool = option(
        False, "recompute each encoder block in backward: less memory, more time")


@dataclass(kw_only=True)
class ClassifierOptions(LoopRunOptions):
    """What ``finetune`` and ``ner`` share: a head on the encoder."""
    max_length: int = option(128, "tokens an example keeps", check=at_least(1), search=True)
    freeze: str = option("none", "what does not train: none, head (only the classifier trains) "
                         "or last-N (only the last N blocks and the classifier train)",
                         check=freeze_mode, search=True)
    head_lr: float | None = option(None, "the classifier's own peak learning rate (default: "
                                   "--lr); a head on a frozen or partly frozen encoder takes a "
                                   "far higher one (lesson 03)", check=positive)
    init: str = option("pretrained", "random: the model's architecture from random weights, to "
                       "measure what pretraining is worth", choices=("pretrained", "random"))
    dropout: float | None = option(None, "the classifier's dropout (default: the encoder's "
                                   "hidden dropout)", check=fraction, search=True)
    limit_train: int | None = option(None, "train on a seeded random subset of N", group=DATA,
                                     check=at_least(1))
    limit_dev: int | None = option(None, LIMIT_DEV_HELP, group=DATA, check=at_least(1))
    test: str | None = option(None, "test file, same format: scored once, by the best model, "
                              "at the end", group=DATA, metavar="FILE")


# The learning rate of a classifier head trained alone on a frozen encoder (``freeze`` head,
# ``lr`` not given): the head is a logistic regression on fixed features, a convex problem that
# takes rates far above full fine-tuning's. Chosen by benchmarks/frozen_head_lr.py (its results
# file holds the sweep: MiniLM's mean features, Emotion and Financial PhraseBank, 256 to 3,000
# examples, 1 or 3 epochs): the rate of smallest mean regret, each setting's best held-out
# accuracy minus its own (0.28 points; 0.1: 0.80, 0.01: 2.19). benchmarks/claims_frozen.py then
# tests it on SST-2, which the choice did not see.
FROZEN_HEAD_LR = 3e-2
POOLINGS = ("cls", "mean", "pooler")  # minift.tasks.classify.POOLINGS (a test holds them equal)


@with_loop(*CLASSIFIER_LOOP, lr=None, helps={
    "lr": f"peak learning rate (AdamW); default {loop_fields()['lr'][1]:g}, BERT's range for "
          f"full fine-tuning, and {FROZEN_HEAD_LR:g} with --freeze head (the head alone on a "
          "frozen encoder)"})
@dataclass(kw_only=True)
class FinetuneOptions(ClassifierOptions):
    """``minift finetune``: a sequence (or pair) classifier. ``lr`` None (not given) becomes
    full fine-tuning's rate, or ``FROZEN_HEAD_LR`` when ``freeze`` is head."""
    pooling: str | None = option(
        None, "what the classifier reads: pooler (BERT's tanh(dense(h_[CLS])), the only one "
        "transformers loads with the same logits), cls (h_[CLS]) or mean (the mean of the "
        "tokens' states). Default: the checkpoint's own (a sentence-transformers pooling "
        "config: all-MiniLM-L6-v2 says mean), else pooler", choices=POOLINGS, search=True)
    task: str | None = option(None, "a GLUE task from the data folder (instead of --train/--dev)",
                              group=DATA, choices=("sst2", "mrpc", "rte"))
    data_dir: str | None = option(None, DATA_DIR_HELP, group=DATA, metavar="DIR")
    train: str | None = option(None, "training file (.tsv, .csv or .jsonl)", group=DATA,
                               metavar="FILE")
    dev: str | None = option(None, "development file, same format", group=DATA, metavar="FILE")
    text_col: str = option("text", "column of the text", group=DATA)
    pair_col: str | None = option(None, "column of the second text of a pair (optional)",
                                  group=DATA)
    label_col: str = option("label", "column of the label", group=DATA)
    dev_from_train: int | None = option(
        None, "dev = N examples held out of the training file (a split drawn with --split-seed, "
        "the same for every --seed, which also draws --limit-train); the dev file is not read: "
        "give it as --test", group=DATA, metavar="N", check=at_least(1))
    split_seed: int = option(0, "seed of --dev-from-train", group=DATA)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr is None:  # not given: full fine-tuning's rate, or a frozen encoder's head's
            self.lr = FROZEN_HEAD_LR if self.freeze == "head" else loop_fields()["lr"][1]


@with_loop(*CLASSIFIER_LOOP)
@dataclass(kw_only=True)
class NerOptions(ClassifierOptions):
    """``minift ner``: a token classifier (NER or POS) on CoNLL column files."""
    train: str = option(help="CoNLL column file (word ... tag a line)", group=DATA,
                        metavar="FILE")
    dev: str = option(help="development file, same columns", group=DATA, metavar="FILE")
    column: int = option(-1, "0-based tag column, -1 the last (CoNLL-2003: 1 POS, 2 NER)",
                         group=DATA)
    scheme: str = option("iob2", "NER tags: iob2 checks strict IOB2, iob1 converts to it",
                         group=DATA, choices=("iob1", "iob2"))
    tags: str = option("auto", "ner: entity F1; pos: token accuracy; auto: ner when tags are "
                       "O/B-/I-", group=DATA, choices=("auto", "ner", "pos"))
    stride_words: int = option(16, "overlap of the windows of a long sentence, in words",
                               group=DATA, check=at_least(0))
    label_all_subwords: bool = option(False, "train on every sub-word (B- continuations become "
                                      "I-), not the first", group=DATA)
    max_length: int = option(128, "tokens a window holds; longer sentences are split into "
                             "windows of whole words", check=at_least(1), search=True)


@dataclass(kw_only=True)
class TextOptions(LoopRunOptions):
    """What ``pretrain`` and ``lm`` share: plain text, one passage a line, and held-out text."""
    text: str | list[str] = option(help="text file(s), one passage a line", group=DATA,
                                   nargs="+", metavar="FILE")
    eval_text: str | None = option(None, "held-out text (default: a seeded slice of --text, "
                                   "left out of training)", group=DATA, metavar="FILE")
    eval_fraction: float = option(0.05, "share of the passages held out when there is no "
                                  "--eval-text", group=DATA)
    eval_seed: int = option(0, "seed of the held-out slice (pretrain: and of its fixed "
                                   "masks)", group=DATA)
    max_eval_passages: int = option(2000, "passages held out at most", cli=False)
    pack: bool = option(False, "pack consecutive passages into full-length sequences",
                        group=DATA)
    max_length: int = option(128, "tokens a sequence holds", check=at_least(1))


@with_loop("max_steps", "lr", "grad_accum", "schedule", "amp", "optimizer", "seed", "compile",
           "eval_every", "patience", "save_every", "weight_decay", "warmup_ratio", "keep_resume",
           "progress", warmup_ratio=0.06, max_steps=1000,
           helps={"max_steps": "optimizer steps",
                  "eval_every": "steps between held-out evaluations (default: at the end)",
                  "patience": "stop early after N evaluations without a better held-out loss",
                  "schedule": "learning-rate decay after warmup (constant: for --patience)"})
@dataclass(kw_only=True)
class PretrainOptions(TextOptions):
    """``minift pretrain``: continued masked-language-model pretraining on domain text."""
    masking: str = option("mlm", "mlm: BERT tokens; wwm: whole words; span: SpanBERT spans",
                          group=DATA, choices=("mlm", "wwm", "span"))
    mlm_probability: float = option(0.15, "masking rate (budget)", group=DATA)
    nsp: bool = option(False, "also next-sentence prediction (BERT's pair objective): --text "
                       "holds documents, a blank line between them, or JSONL with a 'sentences' "
                       "list a line", group=DATA)
    freeze: str = option("none", "head: train only the MLM head, the encoder frozen (first, for "
                         "a checkpoint shipped without one)", choices=("none", "head"))


@with_loop(*CLASSIFIER_LOOP, "save_every",
           helps={"eval_every": "steps between held-out evaluations (default: every epoch)",
                  "patience": "stop early after N evaluations without a better held-out loss"})
@dataclass(kw_only=True)
class LmOptions(TextOptions):
    """``minift lm``: the decoder alone fine-tuned as a left-to-right language model."""


@dataclass(kw_only=True)
class DecodingOptions(Options):
    """Greedy or beam search, in transformers' ``generate``'s names (``minift.core.generate``):
    ``minift generate``'s, and those ``seq2seq`` writes its dev texts with (its BLEU is that of
    ``generate`` with the same values)."""
    max_new_tokens: int = option(64, "tokens a generated text holds at most", group=GENERATION,
                                 check=at_least(1))
    num_beams: int = option(1, "beam search with N beams (1: greedy)",
                            group=GENERATION, check=at_least(1, 64), search=True)
    length_penalty: float = option(1.0, "beam search ranks a text by its score / length ** this "
                                   "(above 0 favours longer texts)", group=GENERATION,
                                   check=finite, search=True)
    no_repeat_ngram_size: int = option(0, "never repeat an n-gram of this size (0: allowed)",
                                       group=GENERATION, check=at_least(0), search=True)

    def decoding(self) -> dict[str, Any]:
        """The keywords of ``minift.core.generate.generate`` these options give."""
        return dict(num_beams=self.num_beams, length_penalty=self.length_penalty,
                    no_repeat_ngram_size=self.no_repeat_ngram_size)


@with_loop(*CLASSIFIER_LOOP, helps={
    "eval_every": "steps between dev evaluations, each generating for every dev source "
                  "(default: every epoch)",
    "patience": "stop early after N evaluations without a better dev BLEU"})
@dataclass(kw_only=True)
class Seq2seqOptions(DecodingOptions, LoopRunOptions):
    """``minift seq2seq``: a BERT2BERT encoder-decoder, warm-started from one checkpoint."""
    task: str | None = option(None, "e2e: E2E NLG from the data folder (train: its official "
                              "dev set devset.csv, the train set could not be had; dev: "
                              "testset_w_refs.csv), instead of --train/--dev and the columns",
                              group=DATA, choices=("e2e",))
    data_dir: str | None = option(None, DATA_DIR_HELP, group=DATA, metavar="DIR")
    train: str | None = option(None, "training file (.tsv, .csv or .jsonl), a (source, target) "
                               "row each", group=DATA, metavar="FILE")
    dev: str | None = option(None, "development file, same format; rows that share a source "
                             "are one example with several references", group=DATA,
                             metavar="FILE")
    source_col: str = option("source", "column of the source text", group=DATA)
    target_col: str = option("target", "column of the target text", group=DATA)
    limit_train: int | None = option(None, "train on a seeded random subset of N", group=DATA,
                                     check=at_least(1))
    limit_dev: int | None = option(None, LIMIT_DEV_HELP, group=DATA, check=at_least(1))
    max_length: int = option(128, "tokens a source keeps (longer ones are truncated, with a "
                             "warning)", check=at_least(2))
    max_target_length: int = option(64, "tokens a target keeps, [SEP] included (longer ones are "
                                    "truncated, with a warning)", check=at_least(2))


@dataclass(kw_only=True)
class SetfitOptions(RunOptions):
    """``minift setfit``: few-shot SetFit over several seeds."""
    model: str = option("minilm", MODEL_HELP, group=DATA)
    train: str = option(help="training file (.tsv .csv .jsonl, or .txt for semicolon "
                        "'text;label' lines)", group=DATA, metavar="FILE")
    dev: str = option(help="development file, same format", group=DATA, metavar="FILE")
    text_col: str = option("text", "column of the text", group=DATA)
    label_col: str = option("label", "column of the label", group=DATA)
    format: str | None = option(None, "file format (default: from the suffix)", group=DATA,
                                choices=("tsv", "csv", "jsonl", "semicolon"))
    shots: int = option(8, "training examples per class", group=DATA, check=at_least(1))
    limit_dev: int | None = option(None, LIMIT_DEV_HELP, group=DATA, check=at_least(1))
    seeds: int = option(5, "runs, with seeds --seed, --seed + 1, ...",
                        check=at_least(1, MAX_SEEDS))
    loss: str = option("cosine", "loss of the contrastive phase", search=True,
                       choices=("cosine", "contrastive"))
    sampling: str = option("oversampling", "how positive and negative pairs are balanced",
                           search=True, choices=("oversampling", "undersampling", "unique"))
    num_iterations: int | None = option(None, "legacy: N positive and N negative pairs per "
                                        "example (overrides --sampling)", check=at_least(1),
                                        search=True)
    epochs: int = option(1, "contrastive epochs", check=at_least(1), search=True)
    max_steps: int | None = option(None, "stop the contrastive phase after N steps (the pairs "
                                   "grow with the square of --shots)", check=at_least(1),
                                   search=True)
    batch_size: int = option(16, "pairs a step", check=at_least(1), search=True)
    lr: float = option(2e-5, "encoder learning rate", check=positive, search=True)
    head: str = option("logistic", "logistic regression (L-BFGS) or a linear head trained by "
                       "AdamW", search=True, choices=("logistic", "linear"))
    end_to_end: bool = option(False, "with --head linear: train the encoder with the head")
    max_length: int = option(256, "tokens a text keeps", check=at_least(1), search=True)
    progress: bool = option(True, "no progress bars", group=RUN)
    seed: int = option(0, LOOP["seed"]["help"], check=seed_check)  # the first run's

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.end_to_end and self.head != "linear":  # the logistic head is fitted on frozen
            raise OptionError(f"`end_to_end` trains the encoder through a head trained by "
                              f"gradient: give `head` linear (got {self.head})")  # embeddings


@dataclass(kw_only=True)
class SpanOptions(Options):
    """What training a span head and answering with one share: how a context is cut."""
    model: str = option("minilm", MODEL_HELP, group=DATA)
    max_length: int = option(384, "tokens a window holds (question + context piece)",
                             check=at_least(1), search=True)
    doc_stride: int = option(128, "tokens of context two consecutive windows share",
                             check=at_least(0), search=True)
    n_best: int = option(20, "start and end candidates a window, and answers kept",
                         check=at_least(1))
    max_answer_length: int = option(30, "tokens an answer spans", check=at_least(1))
    device: str | None = option(None, DEVICE_HELP, group=RUN)


@with_loop("epochs", "max_steps", "lr", "grad_accum", "warmup_ratio", "weight_decay", "amp",
           "optimizer", "seed", "compile", "eval_every", "keep_resume", "progress", epochs=2)
@dataclass(kw_only=True)
class QaOptions(SpanOptions, LoopRunOptions):
    """``minift qa``: train a span head on SQuAD v1.1 files."""
    out: str = option(help="output folder (one run at a time)", group=RUN, metavar="DIR",
                      required=False)  # the command line answers a question without one
    train: str | None = option(None, "SQuAD v1.1 JSON training file", group=DATA, metavar="FILE")
    dev: str | None = option(None, "SQuAD v1.1 JSON development file", group=DATA, metavar="FILE")
    squad: str | None = option(None, "one SQuAD file split by article (instead of --train/--dev)",
                               group=DATA, metavar="FILE")
    dev_articles: int | None = option(None, "with --squad: articles held out for dev",
                                      group=DATA)
    split_seed: int = option(0, "seed of the article split", group=DATA)
    limit_train: int | None = option(None, "train on a seeded random subset of N questions",
                                     group=DATA, check=at_least(1))
    limit_dev: int | None = option(None, LIMIT_DEV_HELP, group=DATA, check=at_least(1))


ASK = "answering one question (with a trained --model)"


@dataclass(kw_only=True)
class AnswerOptions(SpanOptions):
    """``minift qa --question``: answer one question with a trained span head."""
    question: str = option(help="the question", group=ASK, required=False)
    context: str | None = option(None, "the text to find the answer in", group=ASK)
    context_file: str | None = option(None, "the context, from a UTF-8 file", group=ASK,
                                      metavar="FILE")
    show: int = option(1, "answers printed, best first", group=ASK)


@dataclass(kw_only=True)
class SimilarityOptions(Options):
    """``minift similarity``: cosine similarity of sentence pairs."""
    model: str = option("minilm", MODEL_HELP, group=None)
    pair: list[str] | None = option(None, "a sentence pair (repeatable); default: a few built-in "
                                    "pairs", group=None, action="append", metavar="'A ||| B'")
    device: str | None = option(None, DEVICE_HELP, group=None)
    progress: bool = option(True, "no progress bars", group=None)


@dataclass(kw_only=True)
class SearchOptions(Options):
    """``minift search TASK``: the search's own options (the task's are fixed for every trial)."""
    grid: list[str] | None = option(
        None, "a hyperparameter to vary (repeatable): lr, batch_size, epochs, freeze, "
        "warmup_ratio, weight_decay, dropout, max_length (setfit: also sampling, num_iterations, "
        "head, loss; seq2seq: also num_beams, length_penalty, no_repeat_ngram_size, each trial "
        "trained afresh); lr=log:1e-5:1e-4 is a range for --random. Default: the BERT paper's grid "
        "(lr 5e-5,3e-5,2e-5; batch_size 16,32; epochs 2,3,4)", group="search", action="append",
        metavar="NAME=V1,V2,...")
    seeds: int = option(3, "seeds a configuration: --seed, --seed + 1, ...", group="search",
                        check=at_least(1, MAX_SEEDS))
    metric: str | None = option(None, "the dev metric the choice is made on (finetune: accuracy, "
                                "f1, loss; ner: entity_f1, precision, recall, token_accuracy, "
                                "accuracy (POS), loss; qa: f1, exact_match; setfit: accuracy; "
                                "seq2seq: bleu, rouge_l, loss; lm: perplexity, loss); default: "
                                "the first", group="search")
    random_draws: int | None = option(None, "draw N configurations from the grid instead of "
                                      "running all", group="search", flag="--random",
                                      metavar="N", check=at_least(1))
    random_seed: int = option(0, "seed of --random's draws", group="search")
    test: str | None = option(None, "test file, same format: scored once, at the end, for the "
                              "chosen configuration only", group="search", metavar="FILE")
    halving: bool = option(False, "successive halving over epochs: all configurations train a "
                           "short budget, the best share goes on, the last rung in full",
                           group="search")
    halving_keep: float = option(0.5, "share of the configurations a rung keeps", group="search",
                                 check=kept_share)
    halving_min_epochs: int = option(1, "epochs of the first rung", group="search",
                                     check=at_least(1))


@dataclass(kw_only=True)
class GenerateOptions(DecodingOptions):
    """``minift generate``: a text for each line of a file, with a trained model."""
    model: str = option("minilm", MODEL_HELP, group=DATA)
    input: str = option(help="one source a line (an encoder-decoder) or one prompt a line (a "
                        "language model); - reads stdin; one output a line on stdout, in input "
                        "order", group=DATA, metavar="FILE")
    max_length: int | None = option(None, "tokens a source (or a prompt) keeps; longer ones are "
                                    "truncated, with a warning (default: all the model's "
                                    "positions; a prompt's: those its continuation leaves)",
                                    group=GENERATION, check=at_least(2))
    batch_size: int = option(32, "sources generated at once", group=GENERATION,
                            check=at_least(1))
    sample: bool = option(False, "sample each next token instead of taking the likeliest "
                          "(with --temperature, --top-k, --top-p, --seed)", group=GENERATION)
    temperature: float = option(1.0, "sampling: divide the scores by this first", group=GENERATION,
                                check=positive)
    top_k: int | None = option(None, "sampling: only from the K likeliest tokens",
                               group=GENERATION, check=at_least(1))
    top_p: float = option(1.0, "sampling: only from the likeliest tokens whose probabilities sum "
                          "to P (nucleus sampling)", group=GENERATION, check=kept_share)
    seed: int = option(0, LOOP["seed"]["help"], group=GENERATION, check=seed_check)  # sampling's
    device: str | None = option(None, DEVICE_HELP, group=RUN)
    progress: bool = option(True, "no progress bars", group=RUN)

    def decoding(self) -> dict[str, Any]:
        """``DecodingOptions.decoding`` and the sampling keywords (no generator)."""
        if self.sample and self.num_beams > 1:
            raise OptionError(f"`sample` with `num_beams` {self.num_beams}: beam sampling is not "
                              "implemented; sample with one beam or search without `sample`")
        return super().decoding() | dict(do_sample=self.sample, temperature=self.temperature,
                                         top_k=self.top_k, top_p=self.top_p)


@dataclass(kw_only=True)
class ProcessOptions(Options):
    """How the ``minift`` process runs: an option of every command that computes, read by the
    command line alone (``minift.run.cli.choose_threads``), not by the recipes."""
    threads: int | None = option(None, "CPU threads of torch (default: $MINIFT_THREADS, else "
                                 "fewer when other jobs keep the cores busy, "
                                 "with a notice, else torch's default); another count can move "
                                 "the last digits of a loss: give it to repeat a run bit for "
                                 "bit", group=RUN,
                                 check=at_least(1, 4096))


@dataclass(kw_only=True)
class PlotOptions(Options):
    """``minift plot``: draw the curves of finished runs (``minift.run.plots.plot_runs``)."""
    runs: list[str] = option(help="folder of a finetune, ner or pretrain run (holding log.jsonl)",
                             group=None, flag="runs", nargs="+", metavar="RUN")
    out: str | None = option(None, "folder of the curves (default: the first RUN)", group=None,
                             metavar="DIR")


@dataclass(kw_only=True)
class AfterRunOptions(Options):
    """What the command line does when a run on the loop has ended (read by it alone)."""
    plot: bool = option(False, "when the run ends, draw its curves into OUT (as 'minift plot "
                        "OUT'; needs matplotlib)", group=RUN)


SEARCHED = ("finetune", "ner", "qa", "setfit", "seq2seq", "lm")  # what `minift search` runs
RECIPES: dict[str, type] = {"finetune": FinetuneOptions, "ner": NerOptions,
                            "pretrain": PretrainOptions, "setfit": SetfitOptions,
                            "qa": QaOptions, "answer": AnswerOptions, "lm": LmOptions,
                            "seq2seq": Seq2seqOptions}


# --- 4. The command line and the grid, derived from the fields ------------------------------------


def kind(spec: Field) -> type:
    """The scalar type of a field (``int | None`` -> int, ``str | list[str]`` -> str)."""
    return next((t for t in (bool, int, float)
                 if re.search(rf"\b{t.__name__}\b", str(spec.type))), str)


def flag(name: str) -> str:
    """The command-line flag of the field ``name`` (``--max-length``; its ``flag`` if set)."""
    specs = (spec for cls in (*RECIPES.values(), GenerateOptions, SimilarityOptions,
                              SearchOptions, ProcessOptions) for spec in fields(cls))
    return next((_flag(spec) for spec in specs if spec.name == name),
                "--" + name.replace("_", "-"))


def _negated(spec: Field) -> bool:
    return kind(spec) is bool and spec.default is True  # progress -> --no-progress


def _flag(spec: Field) -> str:
    negated = "no-" if _negated(spec) else ""
    return spec.metadata.get("flag", f"--{negated}{spec.name.replace('_', '-')}")


def add_options(parser, cls: type, skip: set[str] | frozenset = frozenset()) -> list[str]:
    """Add the fields of ``cls`` (but ``skip`` and those with ``cli=False``) to ``parser`` as
    options, in argument groups by their ``group``; return the names added."""
    groups = {group.title: group for group in parser._action_groups}
    added = []
    for spec in fields(cls):
        meta = spec.metadata
        if spec.name in skip or not meta.get("cli", True):
            continue
        group = meta.get("group")
        target = parser if group is None else (
            groups.get(group) or groups.setdefault(group, parser.add_argument_group(group)))
        settings = {"help": meta.get("help"),
                    "dest": f"no_{spec.name}" if _negated(spec) else spec.name}
        if kind(spec) is bool:
            settings["action"] = "store_true"
        else:
            settings |= {"default": None if spec.default is MISSING else spec.default,
                         "required": meta.get("required", spec.default is MISSING)}
            settings |= {key: meta[key] for key in ("choices", "metavar", "nargs", "action")
                         if key in meta}
            if kind(spec) is not str:
                settings["type"] = kind(spec)
        if not _flag(spec).startswith("-"):  # a positional argument: its name is its dest
            del settings["dest"], settings["required"]
        target.add_argument(_flag(spec), **settings)
        added.append(spec.name)
    return added


def from_namespace(cls: type, namespace: Any) -> dict[str, Any]:
    """The keywords of ``cls``'s call from parsed arguments (``--no-progress`` -> progress)."""
    values = vars(namespace)
    options = {}
    for spec in fields(cls):
        if spec.name in values:
            options[spec.name] = values[spec.name]
        elif f"no_{spec.name}" in values:
            options[spec.name] = not values[f"no_{spec.name}"]
    return options
