"""The ``minift`` command line: the one place where the pieces are wired together.

``minift similarity`` loads a checkpoint and prints the cosine similarity of sentence pairs.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_PAIRS = [
    ("A man is playing a guitar.", "Someone is playing an instrument."),
    ("A man is playing a guitar.", "The stock market fell sharply today."),
    ("The cat sits on the mat.", "A cat is sitting on a rug."),
    ("How do I fine-tune BERT?", "What is the recipe for training an encoder on my labels?"),
    ("It was a dark and stormy night.", "Quarterly revenue grew by eight percent."),
]


def cmd_similarity(args: argparse.Namespace) -> int:
    from minift.checkpoint import load_bert, resolve_model_dir
    from minift.sentence import encode
    from minift.tokenizer import Tokenizer

    folder = resolve_model_dir(args.model)
    model, tokenizer = load_bert(folder), Tokenizer.from_pretrained(folder)
    pairs = DEFAULT_PAIRS
    if args.pair:
        pairs = []
        for text in args.pair:
            if "|||" not in text:
                raise ValueError(f"--pair {text!r}: separate the two sentences with '|||'")
            first, second = text.split("|||", 1)
            pairs.append((first.strip(), second.strip()))
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {folder} ({model.config.num_hidden_layers} layers, hidden "
          f"{model.config.hidden_size}, {n / 1e6:.1f}M parameters)")
    left = encode(model, tokenizer, [a for a, _ in pairs])
    right = encode(model, tokenizer, [b for _, b in pairs])
    print(f"{'cosine':>7}  sentence pair")
    for (a, b), score in zip(pairs, (left * right).sum(-1).tolist(), strict=True):
        print(f"{score:7.3f}  {a}  <->  {b}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("similarity", help="cosine similarity of sentence pairs")
    sim.add_argument("--model", default="minilm", help="'minilm' or a checkpoint folder")
    sim.add_argument("--pair", action="append", metavar="'A ||| B'",
                     help="a sentence pair (repeatable); default: a few built-in pairs")
    sim.set_defaults(func=cmd_similarity)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minift`` console script and ``python -m minift``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"minift: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
