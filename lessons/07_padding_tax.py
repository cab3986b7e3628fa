# %% [markdown]
# # Lesson 07: the padding tax
#
# ## Why this matters
#
# A batch of sentences is a rectangle: every row is padded to the longest one, and an encoder
# written the obvious way pushes every pad token through every layer, at the same cost as a real
# token, only to throw the result away. How much that costs depends on the data, not on the
# model: short reviews beside a long one, a news headline beside a paragraph. Before any kernel is
# tuned, it is worth knowing how much of the work is padding, because that fraction is both the
# waste and the most that removing it can ever win.
#
# This lesson measures the padding of real batches of SST-2 (single sentences), CoNLL-2003 (NER
# sentences) and MRPC (sentence pairs), in random order and grouped by length; shows what
# `minift.fast.unpad.Unpadding` does about it; turns the padding into a ceiling on the speed-up that
# unpadding can give, per dataset (and asks whether MRPC allows the 1.5x the speed issue hopes
# for); and then times minift unpadded, minift padded and transformers on the same real batches.

# %%
import inspect
import json
import os
import sys
import time

import torch
from common import DATA, MINIFT_QUICK, REPO, START, check, figures

from minift.core.metrics import format_table
from minift.data.batches import length_grouped_batches
from minift.data.readers import read_conll, read_examples
from minift.data.tokenizer import Tokenizer
from minift.fast.unpad import Unpadding, speed_up, varlen_attention
from minift.hf.checkpoint import load_bert, read_config, resolve_model_dir
from minift.run import plots
from minift.tasks.classify import ClassificationDataset
from minift.tasks.tag import TokenClassificationDataset

# MINIFT_QUICK=1 (what CI sets) takes a seeded subset of each training set and times fewer
# batches and rounds; the steps are the same.
NUM_EXAMPLES = 2000 if MINIFT_QUICK else None  # None: the whole training set
TIMED_BATCHES = 1 if MINIFT_QUICK else 4  # real batches per dataset in the timing
ROUNDS = 3 if MINIFT_QUICK else 7  # timing rounds (after one warm-up)
BATCH_SIZE = 32
MAX_LENGTH = 128
SEED = 0
GOAL = 1.5  # the speed-up over transformers on MRPC that the speed issue asks for

# The speed benchmarks' helpers: their exact MRPC batches and their FLOP count.
sys.path.insert(0, str(REPO / "benchmarks"))
FIGURES = figures("07")  # lessons/figures/07/ (git-ignored); None without matplotlib


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}")
print(f"batch size {BATCH_SIZE}, max_length {MAX_LENGTH}, seed {SEED}")

# %% [markdown]
# ## How much of a real batch is padding
#
# Each training set is tokenized once (`ClassificationDataset`, and `TokenClassificationDataset`
# for CoNLL-2003's word lists, which splits the rare sentence longer than `max_length` into
# windows), so the length of every example is known. A batch is padded to its longest member
# ("dynamic padding"), so it computes `len(batch) * max(lengths)` tokens. Length-grouped
# batches come from `length_grouped_batches` with its defaults: it shuffles the examples, cuts
# the shuffled order into chunks of 50 batches, sorts each chunk by length, cuts it into batches
# and shuffles the batches, so the members of a batch have similar lengths while the order of
# training stays random. With `group_size_multiplier=1` each sorted chunk is one batch, so
# nothing is grouped: plain random batches. Padding to `max_length` is shown too: some scripts
# do that.

# %%
tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))


def subset(items: list) -> list:
    if NUM_EXAMPLES is None or len(items) <= NUM_EXAMPLES:
        return items
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(SEED))
    return [items[i] for i in sorted(keep[:NUM_EXAMPLES].tolist())]


sst2 = subset(read_examples(DATA / "sst2" / "train.tsv", text_col="sentence", label_col="label"))
mrpc = subset(
    read_examples(
        DATA / "mrpc" / "train.tsv", text_col="#1 String", pair_col="#2 String", label_col="Quality"
    )
)
conll = subset(read_conll(DATA / "conll2003" / "train.txt"))
datasets = {
    "SST-2": ClassificationDataset(sst2, tokenizer, max_length=MAX_LENGTH),
    "CoNLL-2003": TokenClassificationDataset(
        [s.words for s in conll], tokenizer, max_length=MAX_LENGTH
    ),
    "MRPC": ClassificationDataset(mrpc, tokenizer, max_length=MAX_LENGTH),
}


def batches_of(lengths: list[int], grouped: bool) -> list[list[int]]:
    return length_grouped_batches(
        lengths,
        BATCH_SIZE,
        generator=torch.Generator().manual_seed(SEED),
        group_size_multiplier=50 if grouped else 1,
    )


def computed(lengths: list[int], batches: list[list[int]]) -> int:
    """Tokens a padded model computes: each batch padded to its longest member."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


padding_rows, stats = [], {}
for name, dataset in datasets.items():
    lengths = dataset.lengths
    real = sum(lengths)
    stats[name] = {
        "real": real,
        "random": computed(lengths, batches_of(lengths, grouped=False)),
        "grouped": computed(lengths, batches_of(lengths, grouped=True)),
        "max_length": len(lengths) * MAX_LENGTH,
    }
    padding_rows.append(
        {
            "dataset": name,
            "examples": len(lengths),
            "mean length": real / len(lengths),
            "max length": max(lengths),
            "padding, random batches": 1 - real / stats[name]["random"],
            "padding, length-grouped": 1 - real / stats[name]["grouped"],
            f"padding, pad to {MAX_LENGTH}": 1 - real / stats[name]["max_length"],
        }
    )
print(format_table(padding_rows, float_format=".3f"))
for name, s in stats.items():
    check(s["real"] <= s["grouped"] <= s["random"], f"{name}: grouping added padding")

# Grouped, yet in random order: the shortest and longest member of the first SST-2 batches.
sst2_lengths = datasets["SST-2"].lengths
first = [sorted(sst2_lengths[i] for i in b) for b in batches_of(sst2_lengths, grouped=True)[:8]]
print("first length-grouped SST-2 batches, shortest-longest member (tokens):",
      ", ".join(f"{b[0]}-{b[-1]}" for b in first))
check([b[-1] for b in first] != sorted(b[-1] for b in first), "grouped batches come sorted")

# %% [markdown]
# Where the padding comes from, per dataset: the lengths of the examples (a batch is padded to
# its longest member, so a long tail of lengths means padding in most random batches), and the
# share of padding each way of batching computes.

# %%
if FIGURES:
    fig, axes = plots.figure(13, 4.2, ncols=len(datasets) + 1)
    for ax, (name, dataset) in zip(axes, datasets.items(), strict=False):
        lengths = dataset.lengths
        ax.hist(lengths, bins=range(0, max(lengths) + 4, 4), color="C0")
        ax.axvline(sum(lengths) / len(lengths), color="black", linestyle="--", label="mean")
        ax.set_title(f"{name}: {len(lengths)} examples")
        ax.set_xlabel("length (tokens)")
        ax.set_ylabel("examples")
        ax.legend()
    ways = {"random batches": "random", "length-grouped": "grouped",
            f"pad to {MAX_LENGTH}": "max_length"}
    ax = axes[-1]
    width = 0.8 / len(ways)
    for k, (label, key) in enumerate(ways.items()):
        ax.bar([i + (k - 1) * width for i in range(len(stats))],
               [1 - s["real"] / s[key] for s in stats.values()], width, label=label)
    ax.set_xticks(range(len(stats)), list(stats))
    ax.set_ylim(0, 1.4)  # room for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("share of computed tokens that are padding")
    ax.set_title(f"padding, batches of {BATCH_SIZE}")
    ax.legend(fontsize=8, loc="upper left")
    FIGURES.save(fig, "padding.png")

# %% [markdown]
# The shares above are fractions of the tokens computed. Random batches of short, uneven
# sentences are the worst case; grouping by length removes most of the padding for free, which
# is why `minift finetune` groups its training batches. Evaluation sorted by length pads even
# less. But grouping changes which examples share a batch, and some setups cannot or do not
# group (a stream of requests, a data loader that must stay random). There, the padding must be
# removed inside the model.
#
# ## What unpadding does
#
# LayerNorm, the Q/K/V and output projections and the feed-forward layers treat each token on
# its own, so they can run on the real tokens alone, packed as `(tokens, hidden)` instead of
# `(batch, seq, hidden)`. `Unpadding` holds the positions of the real tokens in the flattened
# batch; `unpad` gathers them, `pad` scatters them back with zeros at the padding. The fast model
# (`FastBertModel` in `minift/fast/unpad.py`, which `speed_up` swaps into a textbook
# `BertModel`; the recipes call it) unpads once after the embeddings and re-pads once
# at the output. Attention must know which
# token belongs to which sequence: the packed tokens come sequence after sequence, so
# `varlen_attention` splits them by `lengths` and runs attention on each sequence alone, with no
# padding and no mask (on a GPU, where many small calls cost more than the padding, attention
# re-pads for itself instead). In training, with dropout on the attention probabilities, SDPA
# has no fused CPU kernel and neither do we: `DropoutAttentionPerSequence` runs the plain
# formula per sequence as one autograd node, its backward written out, because autograd's
# bookkeeping of thousands of tiny per-sequence nodes costs more than their arithmetic (read its
# docstring in `minift/fast/unpad.py`; tests hold it to autograd through the plain formula). Here is
# the whole piece, from `minift/fast/unpad.py`:

# %%
print(inspect.getsource(Unpadding))
print(inspect.getsource(varlen_attention))

# %% [markdown]
# On four real SST-2 sentences: the padded batch holds `batch * seq` positions, the unpadded one
# only the real tokens, and `pad(unpad(x))` gives back `x` at every real position.

# %%
example = datasets["SST-2"].batch([0, 1, 2, 3])
mask = example["attention_mask"]
unpadding = Unpadding.from_mask(mask)
print(f"attention_mask ({tuple(mask.shape)}):\n{mask}")
print(f"indices of the real tokens in the flattened batch: {unpadding.indices.tolist()}")
hidden = torch.randn(*mask.shape, 8, generator=torch.Generator().manual_seed(SEED))
packed = unpadding.unpad(hidden)
print(
    f"padded {tuple(hidden.shape)} = {mask.numel()} positions -> unpadded {tuple(packed.shape)}"
    f" = {int(mask.sum())} real tokens"
)
restored = unpadding.pad(packed)
check(torch.equal(restored, hidden * mask[..., None]), "pad(unpad(x)) lost a real token")
print("pad(unpad(x)) == x at the real positions, 0 at the padding")

# %% [markdown]
# ## The ceiling: what removing padding can win
#
# If every token cost the same and padding were the only difference, a model that skips padding
# would be faster by `padded tokens / real tokens`, and by no more. That is the ceiling on the
# speed-up of unpadding over a padded model on the same batches, for the layers that treat
# tokens one by one. Attention is different: its work grows with the square of the length, so a
# sequence of half the batch's longest length wastes three quarters of its padded attention, and
# attention without padding wins more than the token count says. The FLOP count of
# `benchmarks/flops.py` (`count_flops`: matmuls only, padded against useful) gives that ceiling
# in the last column. Neither is exact: the gathers and scatters cost a little, a training step
# has costs that do not shrink with the tokens (the optimizer step), and attention runs far
# below the matmul peak (on this CPU it takes several times its share of the FLOPs), so the
# time it saves counts for more than its FLOPs.

# %%
from flops import count_flops  # noqa: E402  (benchmarks/flops.py)

config = read_config(resolve_model_dir("minilm"))


def batch_masks(lengths: list[int], batches: list[list[int]]) -> list[torch.Tensor]:
    masks = []
    for b in batches:
        n = torch.tensor([lengths[i] for i in b])
        masks.append((torch.arange(int(n.max())) < n[:, None]).long())
    return masks


def flops_ceiling(masks: list[torch.Tensor]) -> float:
    counts = [count_flops(config, m) for m in masks]
    return sum(c["padded"] for c in counts) / sum(c["useful"] for c in counts)


ceiling_rows = []
for name, dataset in datasets.items():
    s = stats[name]
    random_masks = batch_masks(dataset.lengths, batches_of(dataset.lengths, grouped=False))
    ceiling_rows.append(
        {
            "dataset": name,
            "ceiling, random batches": s["random"] / s["real"],
            "ceiling, length-grouped": s["grouped"] / s["real"],
            f"ceiling, pad to {MAX_LENGTH}": s["max_length"] / s["real"],
            "FLOP ceiling, random batches": flops_ceiling(random_masks),
        }
    )
print("speed-up ceilings of unpadding over a padded model on the same batches (x):")
print(format_table(ceiling_rows, float_format=".3f"))

# %% [markdown]
# ## Can MRPC reach 1.5x?
#
# The speed benchmarks time unsorted MRPC dev pairs, truncated to `max_length` 128, in batches of
# 32 (`speed_common.real_batches`, seed 0): six batches for inference, four for the training
# step. Their ceilings, and the ceiling over every random batch of the whole dev and training
# sets, are below; then the ratios the benchmarks measured (read from `benchmarks/results/`).
# Pairs pad less than single sentences (two sentences make a longer, less variable row), so the
# token ceiling is below 1.5: with attention padded, as it was in an earlier version of minift,
# MRPC could not reach 1.5x. Attention per sequence is what lifts it.

# %%
from speed_common import real_batches  # noqa: E402  (benchmarks/speed_common.py)


def ceiling_of(masks: list[torch.Tensor]) -> float:
    return sum(m.numel() for m in masks) / sum(int(m.sum()) for m in masks)


mrpc_dev = ClassificationDataset(
    read_examples(
        DATA / "mrpc" / "dev.tsv", text_col="#1 String", pair_col="#2 String", label_col="Quality"
    ),
    tokenizer,
    max_length=MAX_LENGTH,
)
mrpc_rows = []
for n in (6, 4):
    masks = [b["attention_mask"] for b in real_batches(tokenizer, "mrpc", BATCH_SIZE, n)]
    per_batch = [ceiling_of([m]) for m in masks]
    mrpc_rows.append(
        {
            "MRPC batches": f"benchmark's {n} dev batches",
            "padding": 1 - 1 / ceiling_of(masks),
            "token ceiling": ceiling_of(masks),
            "FLOP ceiling": flops_ceiling(masks),
            "best single batch": max(per_batch),
        }
    )
for split, dataset in (("dev", mrpc_dev), ("train", datasets["MRPC"])):
    masks = batch_masks(dataset.lengths, batches_of(dataset.lengths, grouped=False))
    mrpc_rows.append(
        {
            "MRPC batches": f"all random {split} batches ({len(dataset)} pairs)",
            "padding": 1 - 1 / ceiling_of(masks),
            "token ceiling": ceiling_of(masks),
            "FLOP ceiling": flops_ceiling(masks),
            "best single batch": max(ceiling_of([m]) for m in masks),
        }
    )
for row in mrpc_rows:
    row[f"ceiling >= {GOAL}"] = "yes" if row["token ceiling"] >= GOAL else "no"
print(format_table(mrpc_rows, float_format=".3f"))
print(
    f"MRPC pairs, max_length {MAX_LENGTH}, random batches of {BATCH_SIZE}: the padding ceiling "
    f"is {mrpc_rows[0]['token ceiling']:.3f}x on the inference benchmark's batches, "
    f"{mrpc_rows[1]['token ceiling']:.3f}x on the training benchmark's, "
    f"{mrpc_rows[2]['token ceiling']:.3f}x over the whole dev set"
)


def measured_records(file: str, key: str) -> list[dict]:
    """The records a speed benchmark wrote to benchmarks/results/, or none."""
    path = REPO / "benchmarks" / "results" / file
    return json.loads(path.read_text())[key] if path.exists() else []


def measured(file: str, key: str) -> dict[tuple, float]:
    """minift / hf sdpa speed ratios that a benchmark wrote, by (workload, amp, optimizer)."""
    ratios = {}
    for record in measured_records(file, key):
        tps = record["real_tokens_per_s"]
        where = (record["workload"], record.get("amp", "fp32"), record.get("optimizer", "-"))
        ratios[where] = tps["minift"] / tps["hf sdpa"]
    return ratios


# A measured ratio against transformers is (what unpadding wins) x (how much faster minift is
# with no padding at all, the fixed-128 line of the same benchmark); the token ceiling of the
# very batches the benchmark timed stands for the first (see below for why it is now exceeded).
goal_rows = []
for bench, file, key, ceiling in (
    ("inference", "inference_throughput.json", "workloads", mrpc_rows[0]["token ceiling"]),
    ("train step", "train_step.json", "runs", mrpc_rows[1]["token ceiling"]),
):
    ratios = measured(file, key)
    for (workload, amp, optimizer), ratio in ratios.items():
        fixed = ratios.get(("fixed 128", amp, optimizer))
        if workload != "MRPC pairs (real)" or fixed is None:
            continue
        goal_rows.append(
            {
                "benchmark": bench,
                "amp, AdamW": f"{amp}, {optimizer}",
                "measured MRPC": ratio,
                "measured fixed 128": fixed,
                "token ceiling x fixed": ceiling * fixed,
                f"measured >= {GOAL}": "yes" if ratio >= GOAL else "no",
            }
        )
inference_mrpc = [
    r
    for r in measured_records("inference_throughput.json", "workloads")
    if r["workload"] == "MRPC pairs (real)"
]
for record in inference_mrpc:  # the benchmark saw the batches we rebuilt here, token for token
    check(
        abs(record["padded_tokens"] / record["real_tokens"] - mrpc_rows[0]["token ceiling"]) < 1e-9,
        "the inference benchmark's MRPC batches are not the ones rebuilt here",
    )
if goal_rows:
    print("\nminift / hf sdpa as measured on MRPC (benchmarks/results/):")
    print(format_table(goal_rows, float_format=".3f"))
else:
    print("\n(no benchmark results in benchmarks/results/ yet: run the speed benchmarks)")

# %% [markdown]
# Read the tables against the goal. A measured ratio against transformers is the product of
# what unpadding wins and how much faster minift is with no padding at all (the `measured fixed
# 128` column). With attention re-padded, the token ceiling bounded the first factor, and
# "token ceiling x fixed" bounded the ratio. While both implementations ran their matmuls
# through the same library, the fixed factor was about 1.0-1.2 and MRPC sat below 1.5; the
# fixed factor is now mostly minift's matrix library (oneDNN in place of MKL, see below). With attention per
# sequence, the attention part of the work shrinks by more than the token count (the FLOP
# ceiling), and on this CPU attention runs far below the matmul peak, so it weighs more in time
# than in FLOPs: a measured ratio above "token ceiling x fixed" is that effect, not noise. The
# training step has one more saving that is not about padding: its sequence classifier reads
# only [CLS], so the last block computes [CLS] alone (`first_token_only` in `BertModel`), about
# 5/6 of one block's work of six skipped, on both the fixed-length and the real batches. Over a
# model padded to `max_length` (the third column of the ceiling table) the ceiling is far
# higher, but that compares against a baseline nobody should run. The whole-split rows show how
# much the benchmark's few batches differ from the split they come from, and "best single batch"
# how far one batch can stray.
#
# ## Timing it, honestly
#
# Three ways to run the same encoder on the same random batches: minift unpadded (the default),
# minift with `unpad=False` (the fast model on the padded batch, same code otherwise) and
# transformers
# with SDPA attention. This machine is shared, so one timing means little: another process can
# steal a core for a second. `speed_common.interleaved` runs the three in turns, round by round,
# alternating who goes first, after a warm-up, and reports the median round and the spread. The
# claim is the ratio of medians within one run, never a time from another run on another day.

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import transformers  # noqa: E402  (the reference, only here)
from speed_common import interleaved  # noqa: E402

transformers.utils.logging.disable_progress_bar()

folder = resolve_model_dir("minilm")
ours = speed_up(load_bert(folder))
reference = transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa").eval()

timing_rows = []
for name, dataset in datasets.items():
    picked = batches_of(dataset.lengths, grouped=False)[:TIMED_BATCHES]
    batches = [dataset.batch(indices) for indices in picked]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    positions = sum(b["attention_mask"].numel() for b in batches)

    def runs(batches=batches):
        def minift(unpad: bool):
            def fn():
                with torch.inference_mode():
                    for b in batches:
                        ours(b["input_ids"], b["attention_mask"], b["token_type_ids"], unpad=unpad)

            return fn

        def hf():
            with torch.inference_mode():
                for b in batches:
                    reference(**b)

        return {"minift": minift(True), "minift padded": minift(False), "hf sdpa": hf}

    started = time.perf_counter()
    timings = interleaved(runs(), torch.device("cpu"), ROUNDS)
    print(f"{name}: timed in {time.perf_counter() - started:.1f} s")
    median = {k: t["median_s"] for k, t in timings.items()}
    spread = max((t["max_s"] - t["min_s"]) / t["median_s"] for t in timings.values())
    timing_rows.append(
        {
            "dataset": name,
            "batches": len(batches),
            "ceiling": positions / real,
            "minift tok/s": real / median["minift"],
            "minift padded tok/s": real / median["minift padded"],
            "hf sdpa tok/s": real / median["hf sdpa"],
            "minift / minift padded": median["minift padded"] / median["minift"],
            "minift / hf sdpa": median["hf sdpa"] / median["minift"],
            "largest spread": spread,
            **{f"{k} page faults": t["median_page_faults"] for k, t in timings.items()},
        }
    )
print(f"{ROUNDS} rounds after one warm-up, {torch.get_num_threads()} torch threads, median:")
print(format_table(timing_rows, float_format=".2f"))
if FIGURES:
    implementations = {"minift": "minift tok/s", "minift padded": "minift padded tok/s",
                       "hf sdpa": "hf sdpa tok/s"}
    fig, ax = plots.figure(8, 4.2)
    width = 0.8 / len(implementations)
    for k, (label, key) in enumerate(implementations.items()):
        ax.bar([i + (k - 1) * width for i in range(len(timing_rows))],
               [row[key] for row in timing_rows], width, label=label)
    ax.set_xticks(range(len(timing_rows)),
                  [f"{row['dataset']}\n(ceiling {row['ceiling']:.2f}x)" for row in timing_rows])
    ax.set_ylabel("real tokens per second (median round)")
    ax.set_title(f"Forward pass speed per implementation, {torch.get_num_threads()} threads "
                 "(one machine: compare ratios)", fontsize=11)
    ax.legend()
    FIGURES.save(fig, "speed.png")

# %% [markdown]
# `minift / minift padded` isolates the padding: same code, same weights, only `unpad` differs.
# It can pass the token ceiling, for the reason above: attention per sequence saves more than
# the token count. `minift / hf sdpa` adds the difference between the two implementations, and
# on a CPU the largest part of that difference is not padding at all but the matrix library:
# minift's linear layers call oneDNN for float32 where `F.linear` calls MKL, and on an AMD CPU
# MKL can run well below oneDNN (`minift.fast.cpu_kernels.linear`, `benchmarks/linear_speed.py`; on other
# CPUs the two are level, and `speed_up` measures which is faster before choosing). The
# benchmarks print a "minift, F.linear" column, minift with MKL's products
# (`speed_up(model, onednn=False)`), to keep the two effects apart: its ratio to transformers
# is what unpadding and the rest of minift win on their own.
# "largest spread" is (slowest round - fastest round) / median, the worst of the three
# implementations: it tells how far to trust the second decimal. In quick mode a single batch
# and few rounds make these numbers rough; the benchmarks (`benchmarks/inference_throughput.py`,
# `train_step.py`, `flops.py`) time more batches.
#
# ### One more thing to count: page faults
#
# The page-fault columns count, per round, the pages of memory the process touched for the
# first time since the system handed them over (`speed_common.minor_faults`). On a CPU, every
# large tensor that comes from fresh memory rather than memory the allocator kept costs one
# such fault per 4 KiB page, the page zeroed on the spot, on top of the tensor's arithmetic.
# glibc's malloc gives large blocks fresh mappings of their own and returns them to the system
# when they are freed; each time it sees one freed it raises that size threshold to the block's
# size (up to 32 MiB), so later blocks that size come from its heap, which it keeps and reuses.
# A model that allocates the same few shapes round after round stops faulting after its warm-up;
# one that allocates more, or larger, tensors keeps paying (a training step's gradient of the
# 30522 x 384 word embeddings, 47 MB, is always fresh). Two of minift's choices show here:
# unpadded tensors are smaller, and GELU runs in place where no gradient will flow
# (`FastFeedForward.forward`), so the largest activation is not allocated twice per block. When two
# implementations do the same arithmetic and one is slower, this column is the first place to
# look.

# %%
print(f"lesson ran in {time.perf_counter() - START:.1f} s")

# %% [markdown]
# ## What to try next
#
# - Change `BATCH_SIZE` to 8 or 128 and watch the padding of random batches (and the ceiling)
#   move: the longest member of a bigger batch is longer.
# - Time length-grouped batches instead of random ones: unpadding then has little left to win.
# - Run `speed_up(ours, per_sequence=False)` (attention on the re-padded batch, the GPU
#   default) and time it against the default: that difference is what attention per sequence
#   wins on this CPU. On a GPU, a variable-length kernel (FlashAttention's `varlen`) attends per
#   sequence in one launch instead of the re-padding.
# - On a GPU the padding tax turns around for small batches: MiniLM at batch 32 is bound by the
#   time to launch kernels, not by arithmetic, and the padded path wins there; from about 4,096
#   padded positions the unpadded one does (`unpads_by_default` in `minift/fast/unpad.py`, and the
#   "On a GPU" part of `benchmarks/RESULTS.md`). Run `python benchmarks/inference_throughput.py --device cuda
#   --batch-size 128` to see both paths side by side.
# - Pack several short examples into one row (sequence packing) and compare its padding with
#   length grouping.
# - Run `python benchmarks/flops.py` to see how much of the machine's matmul peak each
#   implementation turns into useful work, and how much transformers spends on padding.
