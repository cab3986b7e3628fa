"""The ``minift`` command: argument parsing only; the recipes it runs live in ``minift.run.recipes``.

Nothing heavy is imported until a command runs, so ``minift --help`` answers at once (a test
holds it to importing no torch).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from minift.run import options

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
  --threads      CPU threads (also $MINIFT_THREADS); by default fewer, with a notice, when
                 other jobs keep cores busy (a 0.2 s sample of /proc/stat)
  exit status    0 done; 2 bad input (one line 'minift: error: ...', nothing trained);
                 1 a failure during the run (full disk, out of memory; any other error is one
                 line too: MINIFT_DEBUG=1 shows its traceback); 130 Ctrl-C: the folder
                 is left as --resume continues it

run 'minift COMMAND --help' for the options of a command."""

# --- Commands: each turns the parsed arguments into a call of its recipe --------------------------


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
    import torch

    from minift.core.sentence import encode
    from minift.data.tokenizer import Tokenizer
    from minift.fast.unpad import speed_up
    from minift.hf.checkpoint import load_bert, resolve_model_dir
    from minift.run.recipes import check_device

    check_device(args.device)
    folder = resolve_model_dir(args.model)
    model, tokenizer = speed_up(load_bert(folder)), Tokenizer.from_pretrained(folder)
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))  # as training's
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
    """Call ``minift.run.recipes.<name>`` with the parsed options of its dataclass."""
    from minift.run import recipes

    if getattr(args, "plot", False):  # checked before training, not after an hour of it
        from minift.run.plots import require_matplotlib

        require_matplotlib("--plot")
    getattr(recipes, name)(**options.from_namespace(options.RECIPES[name], args))
    if getattr(args, "plot", False) and os.environ.get("RANK", "0") == "0":
        cmd_plot(argparse.Namespace(runs=[args.out], out=None))  # PlotOptions' fields
    return 0


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


def cmd_plot(args: argparse.Namespace) -> int:
    from minift.run.plots import plot_runs

    for path in plot_runs(**options.from_namespace(options.PlotOptions, args)):
        print(f"wrote {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from minift.run import recipes

    recipes.generate(**options.from_namespace(options.GenerateOptions, args))
    return 0


def cmd_search(task: str, args: argparse.Namespace) -> int:
    from minift.run.search import search

    settings = options.from_namespace(options.SearchOptions, args)
    search(task, out=args.out, options=vars(args), **settings)
    return 0


# --- Parsers, generated from the option dataclasses (minift.run.options) --------------------------


# Flags that were renamed so that one name means one thing in every command.
RENAMED = {"--steps": "--max-steps", "--max-dev": "--limit-dev", "--task": "--tags"}  # ner: --tags


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching (``setfit --seed`` is not ``--seeds``), whose commands
    refuse an unknown flag with their own usage and the nearest flags they do have."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            self.error(f"unrecognized arguments: {' '.join(extras)}{self.hint(extras)}")
        return namespace, extras

    def hint(self, extras: list[str]) -> str:
        """'; --steps is now --max-steps' or '; did you mean --seeds?' for the unknown flags."""
        known = [flag for action in self._actions for flag in action.option_strings]
        hints = []
        for word in extras:
            name = word.split("=", 1)[0]
            if not name.startswith("--"):
                continue
            if RENAMED.get(name) in known:
                hints.append(f"{name} is now {RENAMED[name]}")
            elif close := difflib.get_close_matches(name, known, n=1, cutoff=0.75):
                hints.append(f"did you mean {close[0]} (for {name})?")
        return "".join(f"; {hint}" for hint in hints)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help (not the None / False of optional flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is not None and action.default is not False
                and action.default != argparse.SUPPRESS and action.option_strings
                and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


# The commands, in the order --help lists them: name -> (help, description; "": the help).
COMMANDS = {
    "finetune": ("fine-tune a sequence / pair classifier", ""),
    "ner": ("fine-tune a token classifier (NER or POS) on CoNLL files", ""),
    "pretrain": ("continue masked-language-model pretraining on domain text", ""),
    "setfit": ("few-shot classification with SetFit, over several seeds", ""),
    "seq2seq": ("fine-tune a BERT2BERT encoder-decoder (translation, data-to-text)",
                "Fine-tune an encoder-decoder warm-started from one encoder checkpoint "
                "(BERT2BERT) on (source, target) rows of a CSV, TSV or JSONL file; dev is scored "
                "by generating (the generation options, as 'minift generate' has them): BLEU "
                "and ROUGE-L, rows that share a source being one example with several "
                "references; the model kept is the one of best dev BLEU. --task e2e: E2E NLG, "
                "trained on its official dev set (the train set could not be had), scored on its "
                "test set."),
    "lm": ("fine-tune the decoder alone as a left-to-right language model",
           "Fine-tune an encoder checkpoint, its self-attention made causal, as a GPT-style "
           "language model on plain text (one passage a line); held-out perplexity before and "
           "after."),
    "qa": ("extractive question answering: train on SQuAD files, or answer",
           "Train a span head on SQuAD v1.1 JSON files (--train/--dev, or --squad FILE "
           "--dev-articles N), or answer one question with a trained model (--model RUN "
           "--question ... --context ...)."),
    "generate": ("write text with a trained seq2seq or lm model",
                 "Write a text for each line of --input (- reads stdin) with a trained model: a "
                 "seq2seq run's encoder-decoder (each line a source) or an lm run's language "
                 "model (each line a prompt, continued). One output a line on stdout, in input "
                 "order; greedy, beam search (--num-beams) or sampling (--sample)."),
    "similarity": ("cosine similarity of sentence pairs", ""),
    "plot": ("draw the curves of runs into PNG files",
             "Draw the training loss (smoothed, the logged values faint), the learning rate and "
             "every held-out metric against the step from each RUN/log.jsonl, several runs on "
             "the same axes (labelled by folder). The curves go into --out, by default the "
             "first RUN; each run's confusion.png (classification) or f1_per_type.png (NER), "
             "from its metrics.json, goes into its own folder."),
    "search": ("hyperparameter search: a grid, several seeds a configuration",
               "Run TASK's recipe for every configuration of a grid (or --random N of them), "
               "each with --seeds K seeds, every trial a fresh run from the same checkpoint into "
               "OUT/trials/; choose the configuration with the best mean dev --metric; score "
               "--test once, for the chosen configuration only. Every option of TASK is accepted "
               "and fixed; --grid varies the ones it names. Trials run one after another; rerun "
               "the same command to resume (OUT/trials.jsonl holds the finished ones). Writes "
               "OUT/search.json, search.md, search.png and model/. Run 'minift search TASK "
               "--help' for TASK's options."),
}


def add_command(sub, name: str, classes: tuple[type, ...], func: Callable,
                groups: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser of ``name``: its argument ``groups`` in that order, then the fields of
    ``classes`` in order (a name an earlier class gave is not added twice); run by ``func``."""
    help, description = COMMANDS[name]
    p = sub.add_parser(name, help=help, description=description or help,
                       formatter_class=_HelpFormatter)
    for title in groups:
        p.add_argument_group(title)
    added: set[str] = set()
    for cls in classes:
        added.update(options.add_options(p, cls, skip=added))
    p.set_defaults(func=func)
    return p


def add_recipe_parser(sub, name: str, *extra: type,
                      func: Callable | None = None) -> argparse.ArgumentParser:
    """The parser of a recipe command (qa: and ``answer``'s options), ``extra`` after."""
    qa = name == "qa"
    recipe = (options.AnswerOptions, options.QaOptions) if qa else (options.RECIPES[name],)
    after_run = () if name == "setfit" else (options.AfterRunOptions,)  # setfit: no log.jsonl
    return add_command(sub, name, (*recipe, options.ProcessOptions, *after_run, *extra),
                       func or (cmd_qa if qa else lambda args: _run_recipe(name, args)),
                       groups=(options.DATA, options.TRAINING, *([options.ASK] if qa else [])))


def add_search_parser(sub) -> None:
    """``minift search TASK``: TASK's options, then the search's (the task's own ``test``, and
    setfit's own ``seeds``, seeds a configuration, serve the search)."""
    help, description = COMMANDS["search"]
    p = sub.add_parser("search", help=help, description=description,
                       formatter_class=_HelpFormatter)
    tasks = p.add_subparsers(dest="search_task", required=True, metavar="TASK")
    for name in options.SEARCHED:
        task = add_recipe_parser(tasks, name, options.SearchOptions,
                                 func=lambda args, task=name: cmd_search(task, args))
        if name == "setfit":
            task.set_defaults(seeds=3)


def build_parser() -> argparse.ArgumentParser:
    """The ``minift`` parser and its subcommands."""
    from minift import __version__

    parser = Parser(prog="minift", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"minift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("finetune", "ner", "pretrain", "setfit", "seq2seq", "lm", "qa"):
        add_recipe_parser(sub, name)
    add_command(sub, "generate", (options.GenerateOptions, options.ProcessOptions), cmd_generate)
    add_command(sub, "similarity", (options.SimilarityOptions, options.ProcessOptions),
                cmd_similarity)
    add_command(sub, "plot", (options.PlotOptions,), cmd_plot)
    add_search_parser(sub)
    return parser


# --- Entry point: errors as one line --------------------------------------------------------------


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed run left in its output folder."""
    out = getattr(args, "out", None)
    if out is None:
        return "nothing was written"
    if (Path(out) / "resume.pt").is_file():
        return f"{out}/resume.pt holds the last checkpoint: add --resume to continue"
    return f"{out} keeps what was written before"


def check_text(argv: list[str]) -> None:
    """Refuse an argument that is not UTF-8 (the shell passed bytes Python could not decode: a
    ``$'caf\\xe9'``), naming it and its flag, before anything reads it as text."""
    for i, arg in enumerate(argv):
        try:
            str(arg).encode("utf-8")
        except UnicodeEncodeError:
            flag = argv[i - 1] if i and argv[i - 1].startswith("--") and "=" not in arg else ""
            raise ValueError(f"{flag} {os.fsencode(arg)!r}".strip() + " is not UTF-8 text "
                             "(minift reads its arguments as UTF-8)") from None


def busy_cores(read: Callable[[], str] | None = None, wait: Callable[[float], object] = time.sleep,
               interval: float = 0.2) -> tuple[float, str] | None:
    """How many cores other jobs keep busy now, and what measured it (for the notice), or None.

    Linux: the share of the ``/proc/stat`` ticks (its first line: every core's ``user nice system
    idle iowait ...`` summed) that were not idle or iowait between two reads ``interval`` s apart,
    times the cores; this process sleeps meanwhile, so those are the others'. Elsewhere (macOS):
    the 1-minute load average, which lags a minute or more behind a machine just become idle."""
    def ticks() -> tuple[int, int, int]:  # (all ticks, idle ticks, cores)
        text = read() if read else Path("/proc/stat").read_text(encoding="ascii")
        lines = text.splitlines()
        counts = [int(n) for n in lines[0].split()[1:9]]  # the "cpu" line: every core summed
        cores = sum(1 for line in lines if re.match(r"cpu\d+ ", line))
        if not lines[0].startswith("cpu ") or len(counts) < 5 or not cores:
            raise ValueError("not /proc/stat")
        return sum(counts), counts[3] + counts[4], cores
    try:
        total, idle, cores = ticks()
        wait(interval)
        total2, idle2, _ = ticks()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0], "the load average is {:.1f} on {} cores"
        except (OSError, AttributeError):  # no load average either (Windows has none)
            return None
    if total2 <= total:  # no tick passed (a clock this coarse is not worth reading)
        return None
    busy = (1 - (idle2 - idle) / (total2 - total)) * cores
    return busy, f"other jobs keep {{:.1f}} of {{}} cores busy ({interval:g} s of /proc/stat)"


def choose_threads(requested: int | None, environ=os.environ,
                   measure: Callable[[], tuple[float, str] | None] | None = None,
                   cpus: int | None = None, default: int | None = None) -> tuple[int | None, str]:
    """The CPU threads of this run and a notice (or ""): ``--threads``, else ``MINIFT_THREADS``,
    else torch's default (None: leave it), but, unless ``OMP_NUM_THREADS`` is set, at most
    ``cpus - k`` (at least 1) when other jobs keep k cores busy (``measure``): threads that wait
    on a busy core slow every step down (10x on 2 shared cores)."""
    if requested is not None:
        return requested, ""
    if text := environ.get("MINIFT_THREADS", "").strip():
        if not text.isdigit() or int(text) < 1 or int(text) > 4096:
            raise ValueError(f"MINIFT_THREADS={text[:20]!r} is not a number of threads "
                             "(1 to 4096)")
        return int(text), ""
    if environ.get("OMP_NUM_THREADS"):
        return None, ""  # chosen by the user; torch reads it
    measured = (measure or busy_cores)()
    if measured is None:
        return None, ""
    load, how = measured
    cpus = cpus or os.cpu_count() or 1
    busy = min(cpus, math.floor(load + 0.5))  # cores the other jobs hold
    if default is None:
        import torch

        default = torch.get_num_threads()
    threads = max(1, min(default, cpus - busy))
    if threads >= default:
        return None, ""
    return threads, (f"minift: {how.format(load, cpus)}: {threads} "
                     f"thread{'s' if threads > 1 else ''} (--threads N or MINIFT_THREADS "
                     "to choose)")


def set_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads once, before any work (commands without ``--threads``: none)."""
    if not hasattr(args, "threads"):
        return
    threads, notice = choose_threads(options.ProcessOptions(threads=args.threads).threads)
    if notice:
        print(notice, file=sys.stderr)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _short(text: object, limit: int = 600) -> str:
    """An error message cut to ``limit`` characters (a message may quote a whole bad line)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 160]} [...] {text[-150:]}"


@contextlib.contextmanager
def one_line_warnings():
    """Within the block a warning shows as one line, ``minift: warning: ...``, its options as
    flags, as errors do; each command shows its own, even one an earlier ``main`` showed."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = options.OptionError(str(message)).render(options.flag)
        print(f"minift: warning: {text}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():  # the filters and showwarning come back after
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minift`` console script and ``python -m minift``. Every error is one
    line: 2 for bad input, 1 for a failure during the run, 130 for Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_text(argv)
    except ValueError as err:
        print(f"minift: error: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    # Under torchrun every rank runs this command; only rank 0 prints (errors show from all).
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    helper_rank = launched and os.environ.get("RANK", "0") != "0"
    where = f" (rank {os.environ.get('RANK', '0')})" if launched else ""
    clean = False
    try:
        set_threads(args)
        with open(os.devnull, "w") if helper_rank else contextlib.nullcontext() as quiet:
            with (contextlib.redirect_stdout(quiet) if helper_rank else contextlib.nullcontext(),
                  one_line_warnings()):
                status = args.func(args)
        clean = True
        return status
    except ValueError as err:  # bad input: one clear line, no traceback; options as flags
        text = err.render(options.flag) if isinstance(err, options.OptionError) else err
        print(f"minift: error{where}: {_short(text)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nminift: interrupted{where}; {_kept(args)}", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a vanished folder: say what happened and what is kept
        print(f"minift: error{where}: {_short(err)}; {_kept(args)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - whatever else: one line, never a traceback
        if os.environ.get("MINIFT_DEBUG"):
            raise
        first = _short((str(err).strip().splitlines() or [""])[0])
        if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
            text = f"out of memory ({first}); a smaller --batch-size or --max-length needs less"
        else:
            text = f"{type(err).__name__}: {first} (MINIFT_DEBUG=1 shows where)"
        print(f"minift: error{where}: {text}; {_kept(args)}", file=sys.stderr)
        return 1
    finally:
        if "minift.core.ddp" in sys.modules:  # only a command that trained joined a group
            sys.modules["minift.core.ddp"].teardown(clean)


if __name__ == "__main__":
    sys.exit(main())
