"""Host synchronisations, counted without a GPU.

A GPU runs ahead of the Python that feeds it: kernels queue up and Python moves on. Whenever
Python needs a number the device holds (``.item()``, ``.tolist()``, ``bool(tensor)``, the size of
``nonzero``'s output) it must wait until the queue has drained, and the GPU then idles while
Python prepares the next kernels. A training step that asks for nothing keeps the GPU busy.

These tests count those waits on the CPU, where nothing waits, with a ``TorchDispatchMode``
(``SyncCounter``) that sees every ATen operation and simulates the split between the host and
the device:

- **Residency.** The tensors of a batch as the batch builder made them are host tensors, and so
  is everything computed from host tensors alone; ``.to(device)`` of a host tensor makes a
  device copy (here a clone); a host tensor written with a device value becomes a device
  tensor; everything else (parameters, what they compute, tensors made by factories inside
  the step) is on the device. A read of a host tensor costs nothing and is not counted. The
  convention errs towards counting: host work done with torch factories inside the counted
  code would be counted (minift's steps do none), a device read is never missed for it. One
  blind spot: ``.to("cpu")`` of a device tensor looks like a move to the (CPU) device here, so
  minift reads with ``.tolist()``, ``.item()`` and ``.cpu()``, which are seen.
- **What forces a wait** (``SYNC_OPS`` and ``forces_sync``), on a device tensor:
  ``aten._local_scalar_dense`` (what ``.item()``, ``bool()``, ``int()``, ``float()`` dispatch),
  ``aten.nonzero``, ``aten.masked_select``, ``aten.unique*``, ``aten.equal``,
  ``aten.is_nonzero``, ``aten.bincount``, ``aten.repeat_interleave`` without ``output_size``,
  and indexing with a boolean mask (``aten.index.Tensor`` and ``index_put_``, which run
  ``nonzero`` inside the kernel, where the mode cannot see it).
- **What the dispatcher does not show.** ``.tolist()``, ``.numpy()`` and ``.cpu()`` of a CPU
  tensor dispatch no operation at all (a probe with this mode saw none for ``.tolist()`` of a
  multi-element tensor: the data is read in place), and a copy to the device that does not
  pass ``non_blocking=True`` waits on a GPU. The counter patches ``Tensor.tolist``,
  ``.numpy``, ``.cpu``, ``.to`` and ``torch.tensor(..., device=...)`` while it is active.

The first tests prove the counter can fail (a deliberately syncing function is counted; the
same reads of host tensors are not). Then: the fast model given host lengths reads nothing;
the training loop's steps between two log points read nothing, and exactly two reads remain at
each log point (the losses and the weights' check); the evaluation loops read at their end only.
"""

from __future__ import annotations

import itertools
import math
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minift.core import loop
from minift.core.model import BertConfig, BertModel
from minift.data.batches import pad_batch, with_lengths
from minift.fast.unpad import speed_up
from minift.tasks.classify import SequenceClassifier, classification_metrics
from minift.tasks.mlm import MaskedLM, mlm_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten
SYNC_OPS = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
    aten.equal.default, aten.is_nonzero.default, aten.bincount.default, aten._unique.default,
    aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
    aten.unique_dim_consecutive.default,
}  # fmt: skip
BOOL_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                 aten._index_put_impl_.default}


def forces_sync(func, args, kwargs) -> bool:
    """Whether this ATen operation waits for the device when its inputs live there."""
    if func in SYNC_OPS:
        return True
    if func.overloadpacket is aten.repeat_interleave:
        return kwargs.get("output_size") is None  # the output's size is a device number
    if func in BOOL_INDEXING:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
    return False


def _is_device_move(args, kwargs) -> bool:
    """`.to(...)` naming a device (not a dtype alone)."""
    return "device" in kwargs or any(isinstance(a, torch.device | str) for a in args)


class SyncCounter(TorchDispatchMode):
    """Records every operation that would wait for the device (see the module docstring):
    `syncs` holds (what, the line of minift or test code that asked) in order."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[tuple[str, str]] = []

    @staticmethod
    def on_host(tensor: torch.Tensor) -> bool:
        return getattr(tensor, "_minift_host", False)

    @staticmethod
    def mark(tree, host: bool = True):
        """Mark every tensor in `tree` as living on the host (or the device); return `tree`."""
        for leaf in tree_leaves(tree):
            if isinstance(leaf, torch.Tensor):
                leaf._minift_host = host
        return tree

    def record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2]
                  if "/minift/" in f.filename or f.filename.endswith("test_sync.py")]
        last = frames[-1] if frames else None
        where = f"{last.filename.split('/')[-1]}:{last.lineno}:{last.name}" if last else "?"
        self.syncs.append((what, where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        # A tensor made from Python data (torch.tensor) is made on the host first.
        host = func is aten.lift_fresh.default or (
            bool(tensors) and all(self.on_host(t) for t in tensors))
        if not host and forces_sync(func, args, kwargs):
            self.record(str(func))
        out = func(*args, **kwargs)
        if not host and func._schema.is_mutable:  # a device value written into a host tensor
            for arg, value in zip(func._schema.arguments, args, strict=False):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    self.mark(value, host=False)
            for arg in func._schema.arguments:
                if arg.name in kwargs and arg.alias_info is not None and arg.alias_info.is_write:
                    self.mark(kwargs[arg.name], host=False)
        return self.mark(out) if host else out

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name)
                      for name in ("tolist", "numpy", "cpu", "to")}
        self.saved_tensor = torch.tensor
        counter, saved = self, self.saved

        def reading(name):
            def read(tensor, *args, **kwargs):
                if not counter.on_host(tensor):
                    counter.record(f"Tensor.{name}")
                return saved[name](tensor, *args, **kwargs)
            return read

        def to(tensor, *args, **kwargs):
            out = saved["to"](tensor, *args, **kwargs)
            if counter.on_host(tensor) and _is_device_move(args, kwargs):
                if not kwargs.get("non_blocking", False):
                    counter.record("Tensor.to(device) without non_blocking")
                out = counter.mark(out.clone() if out is tensor else out, host=False)
            return out

        def tensor(data, *args, **kwargs):
            out = counter.saved_tensor(data, *args, **kwargs)
            if kwargs.get("device") is not None:  # made on the host, copied and waited for
                counter.record("torch.tensor(..., device=...)")
                counter.mark(out, host=False)
            return out

        for name in ("tolist", "numpy", "cpu"):
            setattr(torch.Tensor, name, reading(name))
        torch.Tensor.to, torch.tensor = to, tensor
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)
        torch.tensor = self.saved_tensor
        return super().__exit__(*exc)


# --- The counter can fail -------------------------------------------------------------------------


def syncing(x: torch.Tensor) -> float:
    """Every way this file knows to make the host wait, on purpose."""
    total = x.sum().item()  # _local_scalar_dense
    if bool(x.any()):  # _local_scalar_dense
        total += len(x[x > 0])  # boolean indexing (nonzero in the kernel)
    total += len(x.nonzero()) + len(x.tolist()) + len(x.cpu()) + len(x.numpy())
    total += len(torch.repeat_interleave(torch.ones(3, dtype=torch.long)))
    return total + len(x.unique()) + len(torch.tensor([1.0, 2.0], device=x.device))


def test_the_counter_sees_every_deliberate_sync_on_the_device_and_none_on_the_host():
    device_x = torch.randn(5)
    with SyncCounter() as counter:
        syncing(device_x)
    seen = [what for what, _ in counter.syncs]
    assert seen == [
        "aten._local_scalar_dense.default", "aten._local_scalar_dense.default",
        "aten.index.Tensor", "aten.nonzero.default", "Tensor.tolist", "Tensor.cpu",
        "Tensor.numpy", "aten.repeat_interleave.Tensor", "aten._unique2.default",
        "torch.tensor(..., device=...)",
    ]  # fmt: skip
    assert all(where.startswith("test_sync.py:") for _, where in counter.syncs)

    host_x = SyncCounter.mark(torch.randn(5))
    with SyncCounter() as counter:
        host_x.sum().item(), host_x[host_x > 0], host_x.tolist(), host_x.nonzero()
        moved = host_x.to(torch.device("cpu"), non_blocking=True)  # a device copy now
        moved.tolist()
        host_x.to("cpu")  # a copy that waits
        written = SyncCounter.mark(torch.zeros(5))
        written.copy_(device_x)  # holds a device value now
        written.tolist()
    assert [what for what, _ in counter.syncs] == [
        "Tensor.tolist", "Tensor.to(device) without non_blocking", "Tensor.tolist"]


# --- The fast model: host lengths, nothing read -------------------------------------------------


def _tiny_config() -> BertConfig:
    return BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=16)


def _batch(generator: torch.Generator, lengths: list[int], labels: int | None = 2) -> dict:
    """A right-padded batch of random rows, `lengths` counted on the host, random labels."""
    rows = [torch.randint(1, 64, (n,), generator=generator) for n in lengths]
    batch = pad_batch(rows, None, 0)
    if labels:
        batch["labels"] = torch.randint(0, labels, (len(lengths),), generator=generator)
    return with_lengths(batch)


@pytest.mark.parametrize("per_sequence", [True, False])
@pytest.mark.parametrize("first_token_only", [True, False])
def test_the_fast_model_given_host_lengths_reads_nothing_and_equals_the_textbook(
    per_sequence, first_token_only
):
    """With `lengths`, the unpadded forward and backward make no sync; without, the old path
    reads the mask (two bools, nonzero, tolist) and gives the same numbers. Both equal the
    textbook model at real positions (atol 1e-5, float32)."""
    torch.manual_seed(0)
    textbook = BertModel(_tiny_config()).eval()
    fast = speed_up(BertModel(_tiny_config()), onednn=False, unpad=True,
                    per_sequence=per_sequence).eval()
    fast.load_state_dict(textbook.state_dict())
    batch = _batch(torch.Generator().manual_seed(1), [7, 3, 12, 1], labels=None)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    mask = batch["attention_mask"].bool()
    expected = textbook(**inputs, first_token_only=first_token_only).last_hidden_state
    SyncCounter.mark(batch)
    outputs = {}
    for given in (True, False):
        with SyncCounter() as counter:
            moved = {k: v.to(torch.device("cpu"), non_blocking=True) for k, v in inputs.items()}
            out = fast(**moved, first_token_only=first_token_only,
                       lengths=batch["lengths"] if given else None)
            out.last_hidden_state.sum().backward()
        outputs[given] = (out.last_hidden_state.detach(), [what for what, _ in counter.syncs])
    assert outputs[True][1] == []
    old = ["aten._local_scalar_dense.default"] * 2 + ["aten.nonzero.default", "Tensor.tolist"]
    if first_token_only:
        old.append("torch.tensor(..., device=...)")  # Unpadding.starts from the lengths read
    assert outputs[False][1] == old
    real = mask[:, :1] if first_token_only else mask
    for hidden, _ in outputs.values():
        torch.testing.assert_close(hidden[real], expected[real], atol=1e-5, rtol=1e-5)


# --- The training loop: nothing read between two log points ---------------------------------------


class StepMarks(loop.Recorder):
    """Notes how many syncs the counter had seen when each step ended."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter, self.marks = counter, [0]

    def stepped(self, progress, loss, lr, examples, seconds):
        self.marks.append(len(self.counter.syncs))


@pytest.mark.parametrize(("per_sequence", "pooling", "amp"), [
    (True, "pooler", "off"), (False, "pooler", "off"), (True, "mean", "off"),
    (False, "mean", "off"), (True, "pooler", "bf16"), (False, "mean", "bf16")])
def test_the_loop_reads_the_device_only_at_log_points(tmp_path, per_sequence, pooling, amp):
    """Six steps of two micro-batches each (padded, with host lengths) through a sped-up
    classifier with dropout, a log every three steps: steps 1, 2, 4 and 5 (forward, backward,
    clipping, fused AdamW, the schedule; fp32 or bf16 autocast) make no sync; steps 3 and 6
    make exactly two, the losses' read and the weights' check."""
    torch.manual_seed(0)
    model = speed_up(SequenceClassifier(_tiny_config(), num_labels=2, pooling=pooling),
                     onednn=False, unpad=True, per_sequence=per_sequence)
    generator = torch.Generator().manual_seed(2)
    batches = [SyncCounter.mark(_batch(generator, [int(n) for n in torch.randint(
        1, 16, (4,), generator=generator)])) for _ in range(12)]
    config = loop.TrainConfig(out_dir=tmp_path, max_steps=6, grad_accum=2, log_every=3,
                              progress=False, lr=1e-3, amp=amp)
    with SyncCounter() as counter:
        marks = StepMarks(counter)
        result = loop.train(model, lambda epoch: batches, config, recorder=marks)
    per_step = [counter.syncs[a:b] for a, b in itertools.pairwise(marks.marks)]
    reads = [[("Tensor.tolist", "loop.py")], [("Tensor.tolist", "loop.py")]]
    where = [[(what, at.split(":")[0]) for what, at in step] for step in per_step]
    assert where == [[], [], sum(reads, []), [], [], sum(reads, [])], per_step
    assert counter.syncs[marks.marks[-1] :] == []  # the last record and the end read nothing
    assert [r["step"] for r in result.history] == [3, 6]
    assert all(math.isfinite(r["loss"]) for r in result.history)


def test_classification_metrics_reads_the_device_at_the_end_only():
    """Per batch nothing is read (the labels are the host's copy; the batch goes to the device
    with non_blocking); at the end, two reads: the losses and the predictions. The metrics
    equal those of a plain per-batch loop over the same model (exact: the same float32 losses
    summed in the same order)."""
    torch.manual_seed(0)
    model = speed_up(SequenceClassifier(_tiny_config(), num_labels=3), onednn=False, unpad=True)
    generator = torch.Generator().manual_seed(3)
    batches = [SyncCounter.mark(_batch(generator, [5, 9, 2], labels=3)) for _ in range(4)]
    with SyncCounter() as counter:
        metrics = classification_metrics(model, batches, 3, torch.device("cpu"))
    assert [what for what, _ in counter.syncs] == ["Tensor.tolist", "Tensor.tolist"]
    assert {at.split(":")[0] for _, at in counter.syncs} == {"classify.py"}
    with torch.no_grad():
        outs = [model(**b) for b in batches]
    loss = sum(o.loss.item() * len(b["labels"]) for o, b in zip(outs, batches, strict=True))
    assert metrics["loss"] == loss / sum(len(b["labels"]) for b in batches)
    pred = torch.cat([o.logits.argmax(-1) for o in outs])
    gold = torch.cat([b["labels"] for b in batches])
    assert metrics["accuracy"] == (pred == gold).double().mean().item()


def test_mlm_metrics_reads_the_device_once_at_the_end():
    """The textbook MaskedLM: per batch, the only syncs are the sparse head's own two boolean
    indexes (each a nonzero on a GPU, in the model, not the evaluation loop); the loop
    itself reads once, at the end. Its numbers equal the plain per-batch loop's (exactly: the
    same float32 values, summed on the host in the same order)."""
    torch.manual_seed(0)
    model = MaskedLM(_tiny_config()).eval()
    generator = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(3):
        batch = _batch(generator, [6, 9, 4], labels=None)
        chosen = (torch.rand(batch["input_ids"].shape, generator=generator) < 0.3)
        chosen &= batch["attention_mask"].bool()
        chosen[0, 0] = True  # at least one target per batch
        batch["labels"] = batch["input_ids"].where(chosen, -100)
        del batch["lengths"]  # MaskedLM takes no lengths
        batches.append(SyncCounter.mark(batch))
    with SyncCounter() as counter:
        metrics = mlm_metrics(model, batches, torch.device("cpu"))
    in_loop = [what for what, at in counter.syncs if at.endswith(":mlm_metrics")]
    in_head = [at.split(":")[-1] for _, at in counter.syncs if not at.endswith(":mlm_metrics")]
    assert in_loop == ["Tensor.tolist"] and counter.syncs[-1][1].endswith(":mlm_metrics")
    assert in_head == ["sparse_head"] * 2 * len(batches)  # hidden[targets], labels[targets]
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            out, targets = model(**batch), batch["labels"][batch["labels"] != -100]
            loss_sum += out.loss.item() * targets.numel()
            correct += int((out.logits.argmax(-1) == targets).sum())
            count += targets.numel()
    assert (metrics["loss"], metrics["masked_accuracy"], metrics["masked_tokens"]) == (
        loss_sum / count, correct / count, count)


def test_predict_tags_reads_the_device_at_the_end_only(minilm_dir):
    """The tagger's evaluation over a sped-up TokenClassifier: nothing read per batch (its
    batches carry host lengths; the labels are counted on the host's copy; the batch builder's
    output is marked as host tensors, being built on the host), two reads at the end (losses,
    predictions). Predictions and loss equal the plain per-batch loop's (exact)."""
    from minift.data.tokenizer import Tokenizer
    from minift.tasks.tag import TokenClassificationDataset, TokenClassifier, predict_tags

    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    sentences = [["the", "cat", "sat"], ["on", "a", "very", "long", "mat", "today"], ["hi"],
                 ["dogs", "bark"], ["x"] * 9]
    labels = [[i % 3 for i in range(len(words))] for words in sentences]
    dataset = TokenClassificationDataset(sentences, tokenizer, max_length=16, label_ids=labels)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=16)
    model = speed_up(TokenClassifier(config, num_labels=3), onednn=False, unpad=True)
    built = dataset.batch
    dataset.batch = lambda indices: SyncCounter.mark(built(indices))
    with SyncCounter() as counter:
        predicted, loss = predict_tags(model, dataset, 2, torch.device("cpu"))
    assert [(what, at.split(":")[-1]) for what, at in counter.syncs] == [
        ("Tensor.tolist", "predict_tags"), ("Tensor.tolist", "predict_tags")]
    rows, loss_sum, targets = [None] * len(dataset), 0.0, 0
    with torch.no_grad():
        for indices in dataset.batch_indices(2, generator=None, shuffle=False):
            batch = built(indices)
            out = model(**batch)
            n = int((batch["labels"] != -100).sum())
            loss_sum, targets = loss_sum + out.loss.item() * n, targets + n
            for i, row in zip(indices, out.logits.argmax(-1), strict=True):
                rows[i] = row
    assert predicted == dataset.word_predictions(rows)
    assert loss == loss_sum / targets
