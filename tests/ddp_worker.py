"""A tiny training run that tests/test_ddp.py starts under torchrun or in one process.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py \
        --out OUT --result weights.safetensors --task tokens --steps 6

Every rank builds the same model (seeded) and the same global batches (21 examples of random
lengths; the last batch of each epoch is smaller than the number of ranks when the batch size
allows, so a rank gets an empty shard). Dropout is off, so the weights after k steps depend only
on the data and the arithmetic: one process and two must agree to float rounding.
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from minift.core import ddp as distributed
from minift.core.checkpoints import Checkpoints
from minift.core.loop import TrainConfig, train
from minift.core.model import BertConfig
from minift.hf.safetensors import write_safetensors
from minift.tasks.classify import SequenceClassifier
from minift.tasks.tag import TokenClassifier

N_EXAMPLES, VOCAB, MAX_LEN = 21, 50, 12


def make_model(task: str) -> torch.nn.Module:
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    cls = TokenClassifier if task == "tokens" else SequenceClassifier
    return cls(config, num_labels=3)


def make_examples(task: str) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(N_EXAMPLES):
        length = int(torch.randint(1, MAX_LEN + 1, (1,), generator=gen))
        ids = torch.randint(1, VOCAB, (length,), generator=gen)
        if task == "tokens":  # about a third of the tokens carry no label, as sub-words do
            labels = torch.randint(0, 3, (length,), generator=gen)
            labels[torch.rand(length, generator=gen) < 0.35] = -100
        else:
            labels = torch.randint(0, 3, (), generator=gen)
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def collate(examples: list[dict[str, torch.Tensor]], task: str) -> dict[str, torch.Tensor]:
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), length, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    labels = torch.full((len(examples), length), -100) if task == "tokens" else None
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], mask[i, :n] = e["input_ids"], 1
        if labels is not None:
            labels[i, :n] = e["labels"]
    if labels is None:
        labels = torch.stack([e["labels"] for e in examples])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches_for(task: str, batch_size: int, bad_step: int | None = None):
    examples = make_examples(task)

    def train_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        order = torch.randperm(N_EXAMPLES, generator=torch.Generator().manual_seed(100 + epoch))
        batches = [collate([examples[i] for i in order[s : s + batch_size]], task)
                   for s in range(0, N_EXAMPLES, batch_size)]
        if bad_step is not None and epoch == 0:
            # A token id outside the vocabulary in row 1: on 2 ranks, only rank 1 sees it.
            batches[bad_step - 1]["input_ids"][1, 0] = VOCAB + 7
        return batches

    return train_batches


def rows_per_step(task: str, steps: int, batch_size: int) -> list[int]:
    """The global batch sizes of the first `steps` batches (grad_accum 1)."""
    batches = []
    for epoch in range(steps):
        batches += batches_for(task, batch_size)(epoch)
    return [len(b["input_ids"]) for b in batches[:steps]]


def run(out: str, task: str, steps: int, batch_size: int, grad_accum: int, resume: bool = False,
        bad_step: int | None = None, crash_after: int | None = None,
        rows: list[int] | None = None, grads: list | None = None) -> torch.nn.Module:
    """Train; with `rows`, append the number of rows of every training forward to it; with
    `grads`, append the gradients each optimizer step starts from (a flat tensor a step)."""
    model = make_model(task)
    if rows is not None:
        model.register_forward_pre_hook(
            lambda m, args, kwargs: rows.append(len(kwargs["input_ids"])) if m.training else None,
            with_kwargs=True)
    train_batches = batches_for(task, batch_size, bad_step)
    if crash_after is not None:  # stop the whole job after `crash_after` optimizer steps
        inner = train_batches

        class Crashing(list):
            def __getitem__(self, index):
                if index >= crash_after * grad_accum:
                    raise KeyboardInterrupt(f"simulated crash at batch {index}")
                return list.__getitem__(self, index)

        def train_batches(epoch):
            return Crashing(inner(epoch))

    def evaluate(m):
        with torch.no_grad():
            batch = collate(make_examples(task)[:8], task)
            return {"loss": float(m(**batch).loss)}

    config = TrainConfig(out_dir=out, max_steps=steps, lr=1e-2, warmup_ratio=0.2,
                         grad_accum=grad_accum, eval_every=2, progress=False, log_every=1,
                         optimizer="foreach", seed=3, keep_resume=True)
    with recording_grads(grads):
        train(model, train_batches, config, evaluate=evaluate, device="cpu",
              recorder=Checkpoints(resume=resume), parallel=distributed.setup("cpu"))
    return model


@contextlib.contextmanager
def recording_grads(grads: list | None):
    """Append to `grads` the gradients every optimizer step starts from (one flat tensor)."""
    if grads is None:
        yield
        return

    def keep(optimizer, args, kwargs):
        grads.append(torch.cat([p.grad.flatten() for group in optimizer.param_groups
                                for p in group["params"] if p.grad is not None]))

    handle = register_optimizer_step_pre_hook(keep)  # a hook on every optimizer: remove it
    try:
        yield
    finally:
        handle.remove()


SETFIT_TEXTS = [
    ("a gripping , beautifully acted film", "pos"), ("dull , lifeless and far too long", "neg"),
    ("one of the best movies of the year", "pos"), ("a mess from start to finish", "neg"),
    ("funny , warm and wise", "pos"), ("i wanted my two hours back", "neg"),
    ("a quiet triumph", "pos"), ("the plot makes no sense", "neg"), ("pure joy", "pos"),
]


def setfit_encoder() -> torch.nn.Module:
    from minift.core.model import BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def run_setfit(grads: list | None = None) -> torch.nn.Module:
    """SetFit's contrastive phase on a tiny random encoder (dropout off), 7 pairs a batch."""
    from minift.data.tokenizer import Tokenizer
    from minift.hf.checkpoint import resolve_model_dir
    from minift.tasks.setfit import SetFitConfig, train_body

    tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
    encoder = setfit_encoder()
    texts, labels = zip(*SETFIT_TEXTS, strict=True)
    config = SetFitConfig(batch_size=7, lr=1e-2, seed=0, max_length=16, progress=False)
    with recording_grads(grads):
        stats = train_body(encoder, tokenizer, list(texts), list(labels), config, log=None)
    assert stats["pairs"] % 7 == 1, stats  # the last batch has one pair: rank 1 gets none
    return encoder


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True, help="rank 0 writes the final weights here")
    parser.add_argument("--task", choices=("tokens", "sequence", "setfit"), default="tokens")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--bad-step", type=int, help="put an out-of-vocabulary id in this step")
    parser.add_argument("--crash-after", type=int, help="raise after this many steps")
    parser.add_argument("--stats", help="each rank writes the rows it trained on (and rank 0 "
                        "the gradients of every step) here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, grads = [], []
    if args.task == "setfit":
        model = run_setfit(grads)
    else:
        model = run(args.out, args.task, args.steps, args.batch_size, args.grad_accum,
                    args.resume, args.bad_step, args.crash_after, rows, grads)
    if args.stats:
        Path(args.stats).mkdir(parents=True, exist_ok=True)
        rank = os.environ.get("RANK", "0")
        (Path(args.stats) / f"rank{rank}.json").write_text(json.dumps(rows))
        write_safetensors({f"step{i}": g for i, g in enumerate(grads)},
                          Path(args.stats) / f"grads{rank}.safetensors")
    if torch.distributed.is_initialized():
        if torch.distributed.get_rank() == 0:
            write_safetensors(model.state_dict(), args.result)
        distributed.teardown()
    else:
        write_safetensors(model.state_dict(), args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
