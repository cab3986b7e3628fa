# %% [markdown]
# # Lesson 04: named entities, word by word
#
# ## Why this matters
#
# Named-entity recognition labels *words*: in CoNLL-2003 every word carries a tag, `B-PER` for
# the first word of a person's name, `I-PER` for the words that continue it, `O` for words outside
# any entity. The encoder never sees those words. It sees WordPiece sub-words, and a long or rare
# word becomes several of them. Training needs one label per token and evaluation needs one
# prediction per word, so labels have to be carried from words to sub-words and predictions
# back; done carelessly, a `B-PER` copied onto every piece of "Blackburn" opens three entities
# where there is one, and a sentence cut at the model's maximum length silently loses its last
# words and their entities.
#
# This lesson follows one real CoNLL-2003 sentence through the aligner, shows how a sentence too
# long for the model is cut into windows rather than truncated, fine-tunes the published MiniLM
# encoder with `minift ner`, and ends with an error analysis of its predictions on the dev set:
# which entities it misses, which it invents, and which it finds with the wrong type or the
# wrong boundaries.

# %%
import json
import shutil
import time
from collections import Counter

import transformers
from common import DATA as DATA_ROOT
from common import MINIFT_QUICK, REPO, START, check, figures
from seqeval.metrics import f1_score

from minift.core.align import IGNORE_INDEX, align_labels
from minift.core.labels import entities
from minift.core.metrics import entity_scores, format_table
from minift.data.readers import encode_tags, entity_label_set, read_conll, write_conll
from minift.data.tokenizer import Tokenizer
from minift.hf.checkpoint import resolve_model_dir
from minift.run import plots
from minift.run.recipes import ner
from minift.tasks.tag import TokenClassificationDataset

# MINIFT_QUICK=1 (what CI runs) trains on a tiny subset for a few steps; the steps are the same.
TRAIN_SENTENCES = 192 if MINIFT_QUICK else 3000
DEV_SENTENCES = 100 if MINIFT_QUICK else None  # None: the whole dev set
MAX_STEPS = 12 if MINIFT_QUICK else None  # None: one epoch (188 steps of 16)
LR = 5e-4 if MINIFT_QUICK else 2e-4  # peak learning rate: see "Fine-tuning"

DATA = DATA_ROOT / "conll2003"  # CoNLL-2003: train.txt, dev.txt, test.txt
FIGURES = figures("04")  # lessons/figures/04/ (git-ignored); None without matplotlib


print(f"quick mode: {MINIFT_QUICK}; data: {DATA}")

# %% [markdown]
# ## A sentence, its sub-words, their labels
#
# `read_conll` reads a column file: one word a line, `word POS NER` in CoNLL-2003 as stored
# here, a blank line between sentences. Column 2 holds the NER tags; `scheme="iob2"` checks that
# every entity opens with `B-` (an `I-` that opens one would be reported with its file and line).
# We pick the first training sentence in which an entity word splits into several sub-words.

# %%
train = read_conll(DATA / "train.txt", column=2, scheme="iob2")
dev = read_conll(DATA / "dev.txt", column=2, scheme="iob2")
tokenizer = Tokenizer.from_pretrained(resolve_model_dir("minilm"))
labels = entity_label_set(train)
print(f"{len(train)} training and {len(dev)} dev sentences; tags: {' '.join(labels.labels)}")


def pieces(word: str) -> list[str]:
    return tokenizer.tokenize(word)


def splits_an_entity(sentence) -> bool:
    """True when a word that opens an entity becomes several sub-words."""
    pairs = zip(sentence.words, sentence.tags, strict=True)
    return any(len(pieces(w)) > 1 and t.startswith("B-") for w, t in pairs)


example = next(s for s in train if 6 <= len(s.words) <= 12 and splits_an_entity(s))
print(
    format_table(
        [
            {"word": w, "tag": t, "sub-words": " ".join(pieces(w))}
            for w, t in zip(example.words, example.tags, strict=True)
        ]
    )
)

# %% [markdown]
# The tokenizer, called with `is_split_into_words=True`, keeps the word boundaries: `word_ids`
# says, for every token, which word it came from (None for `[CLS]` and `[SEP]`). The aligner
# gives the first sub-word of each word the word's label and every other token -100, the index
# the cross-entropy loss ignores. With `label_all_subwords` every sub-word is trained, and the
# continuation of a `B-X` word gets `I-X`: copying `B-X` instead would tell the model that each
# piece of the word starts a new entity.

# %%
encoding = tokenizer([example.words], is_split_into_words=True)
word_ids = encoding.word_ids[0]
tag_ids = labels.encode(example.tags)
first = align_labels(tag_ids, word_ids)
every = align_labels(tag_ids, word_ids, label_all_subwords=True, b_to_i=labels.b_to_i())
copied = [IGNORE_INDEX if w is None else tag_ids[w] for w in word_ids]  # the naive copy


def show(ids: list[int]) -> list[str]:
    return ["-100" if i == IGNORE_INDEX else labels.labels[i] for i in ids]


tokens = tokenizer.convert_ids_to_tokens(encoding.input_ids[0])
print(
    format_table(
        [
            {
                "token": t,
                "word id": "None" if w is None else w,
                "first sub-word": a,
                "all sub-words": b,
                "naive copy": c,
            }
            for t, w, a, b, c in zip(
                tokens, word_ids, show(first), show(every), show(copied), strict=True
            )
        ]
    )
)


# %% [markdown]
# The same alignment as a picture: one column per token, one row per way of labelling it. A
# coloured cell is a label the loss trains on (its entity type's colour; `O` grey), a white cell
# is -100, ignored. Only the first row keeps one entity per entity word.

# %%
if FIGURES:
    from matplotlib.patches import Rectangle

    rows = {"first sub-word": show(first), "all sub-words": show(every),
            "naive copy": show(copied)}
    types = sorted({tag[2:] for tag in labels.labels if tag != "O"})
    colour = {t: f"C{k}" for k, t in enumerate(types)}
    fig, ax = plots.figure(13, 3.4)
    for y, row in enumerate(rows.values()):
        for x, tag in enumerate(row):
            fill = "white" if tag == "-100" else "0.85" if tag == "O" else colour[tag[2:]]
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=fill, edgecolor="0.6",
                                   alpha=0.45 if fill.startswith("C") else 1))
            ax.text(x, y, tag, ha="center", va="center", fontsize=9)
    ax.set_xlim(-0.5, len(tokens) - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xticks(range(len(tokens)), [f"{t}\n(word {w})" if w is not None else t
                                        for t, w in zip(tokens, word_ids, strict=True)],
                  rotation=0, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), list(rows))
    ax.grid(False)
    ax.set_title("Labels of each sub-word token (white: -100, ignored by the loss)", pad=40)
    FIGURES.save(fig, "subword_labels.png")


def token_entities(ids: list[int]) -> list:
    return entities([labels.labels[i] for i in ids if i != IGNORE_INDEX])


print(
    f"entities in the words: {len(entities(example.tags))}; read from the tokens: "
    f"all sub-words {len(token_entities(every))}, naive copy {len(token_entities(copied))}"
)
check(
    len(token_entities(every)) == len(entities(example.tags)),
    "labelling all sub-words must keep the number of entities",
)
check(
    len(token_entities(copied)) > len(entities(example.tags)),
    "the naive copy was expected to open extra entities in this sentence",
)

# %% [markdown]
# The first-sub-word labels are exactly those of transformers' token-classification example
# (`tokenize_and_align_labels`), which the test suite holds for random words in every script;
# here we check it once more on this sentence with the reference tokenizer.

# %%
hf_tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model_dir("minilm"))
hf = hf_tokenizer(example.words, is_split_into_words=True)
previous, reference = None, []
for w in hf.word_ids():
    reference.append(IGNORE_INDEX if w is None or w == previous else tag_ids[w])
    previous = w
check(
    hf["input_ids"] == encoding.input_ids[0].tolist() and reference == first,
    "the aligned labels differ from transformers' recipe",
)
print("token ids and aligned labels equal transformers' recipe")

# %% [markdown]
# ## A sentence longer than the model takes
#
# Fine-tuning runs at a maximum length, 128 tokens here. The transformers example truncates
# longer sentences: their last words get no label in training and no prediction at test time,
# and the score silently counts their entities as missed. `TokenClassificationDataset` cuts such
# a sentence into windows of whole words instead, overlapping by a few words, and each word
# keeps the prediction of the window where it has the most context on both sides.

# %%
dev_data = TokenClassificationDataset(
    [s.words for s in dev], tokenizer, max_length=128, label_ids=encode_tags(dev, labels)
)
plan = dev_data.plan
longest = max(range(len(dev)), key=lambda s: len(plan.windows[s]))
sentence = dev[longest]
n_tokens = len(tokenizer([sentence.words], is_split_into_words=True).input_ids[0])
print(
    f"dev: {plan.num_windowed} of {plan.num_sentences} sentences are longer than 128 tokens; "
    f"the longest has {len(sentence.words)} words, {n_tokens} tokens"
)
print(f"its windows (words start..end): {plan.windows[longest]}")
truncated = tokenizer([sentence.words], is_split_into_words=True, max_length=128)
kept = len({w for w in truncated.word_ids[0] if w is not None})
lost = [e for e in entities(sentence.tags) if e[2] > kept]
print(
    f"truncated to 128 tokens it would keep {kept} of {len(sentence.words)} words and lose "
    f"{len(lost)} of its {len(entities(sentence.tags))} entities"
)
check(plan.num_windowed >= 1 and len(plan.windows[longest]) > 1, "expected a windowed sentence")

# %% [markdown]
# ## Fine-tuning
#
# `minift ner` (here its Python form, `minift.run.recipes.ner`) does the whole job: it reads the files,
# fixes the tag set on the training sentences, checks every dev tag against it, builds the
# windowed batches, fine-tunes a `TokenClassifier` (the encoder plus one linear layer over each
# token, saved in transformers' `BertForTokenClassification` format), keeps the checkpoint with
# the best dev entity F1 and writes the predictions next to it. We train on a fixed random
# subset of the training set. `column=-1` takes the last column, the NER tags both in the
# original files (`word POS NER`) and in the dev subset the quick mode writes (`word NER`).
#
# The full run takes one epoch over 3,000 sentences (188 steps) at a peak learning rate of 2e-4,
# as `benchmarks/ner_conll.py` does. The quick run has 12 steps, and at 2e-4 that is too few:
# the classifier still tags every word `O` (entity F1 0), and there is nothing to analyse. It
# therefore takes 5e-4 (1e-3 found fewer entities in 12 steps when we tried it), and finds a
# first share of the entities, so the error analysis below has both hits and mistakes to sort.

# %%
# The lesson's files go to runs/lessons/04/ (git-ignored): emptied now, removed at the end; a run
# that stops halfway leaves it there until the next run empties it.
work = REPO / "runs" / "lessons" / "04"
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
dev_file = DATA / "dev.txt"
if DEV_SENTENCES is not None:  # quick mode: the first dev sentences only
    dev_file = work / "dev_subset.txt"
    subset = dev[:DEV_SENTENCES]
    write_conll(dev_file, [s.words for s in subset], [s.tags for s in subset])
out = work / "model"
metrics = ner(
    model="minilm",
    train=str(DATA / "train.txt"),
    dev=str(dev_file),
    out=str(out),
    column=-1,
    limit_train=TRAIN_SENTENCES,
    epochs=1,
    max_steps=MAX_STEPS,
    lr=LR,
    batch_size=16,
    max_length=128,
    seed=0,
    progress=False,
)
print(
    f"trained {metrics['train']['steps']} steps on {metrics['train']['sentences']} sentences "
    f"in {metrics['train']['seconds']:.0f} s; dev entity F1 {metrics['dev']['f1']:.4f} "
    f"(strict IOB2 {metrics['dev']['strict']['f1']:.4f})"
)
check(metrics["dev"]["f1"] > 0, "the model found no entity: the error analysis needs some")

# %% [markdown]
# ## Error analysis
#
# The predictions file holds `word gold predicted`, one word a line, so `read_conll` reads it
# back: column 1 is the gold tags, column 2 the predicted ones. An entity counts as found only
# when its type and both its boundaries are right. Every other gold or predicted entity falls
# in one of five kinds: the right span with the wrong type, an overlapping span of the right
# type (a boundary error), an overlapping span of another type with other boundaries (both
# wrong), a gold entity nothing overlaps (missed) and a predicted entity that overlaps no gold
# one (spurious).

# %%
predictions = out / "dev_predictions.txt"
gold = read_conll(predictions, column=1)
pred = read_conll(predictions, column=2)
gold_tags, pred_tags = [s.tags for s in gold], [s.tags for s in pred]
ours = entity_scores(gold_tags, pred_tags)
print(
    f"entity F1 {ours['f1']:.4f} by minift.core.metrics, {f1_score(gold_tags, pred_tags):.4f} by seqeval"
)
check(abs(ours["f1"] - f1_score(gold_tags, pred_tags)) < 1e-12, "minift and seqeval disagree")


def overlaps(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def classify(gold_spans, pred_spans) -> list[tuple[str, tuple | None, tuple | None]]:
    """(kind, gold entity, predicted entity) for every entity of one sentence."""
    found = set(gold_spans) & set(pred_spans)
    out = [("correct", g, g) for g in gold_spans if g in found]
    for g in gold_spans:
        if g in found:
            continue
        same_span = [p for p in pred_spans if p[1:] == g[1:]]
        near = [p for p in pred_spans if p[0] == g[0] and overlaps(p, g) and p not in found]
        if same_span:
            out.append(("wrong type", g, same_span[0]))
        elif near:
            out.append(("wrong boundary", g, near[0]))
        elif not any(overlaps(p, g) for p in pred_spans):
            out.append(("missed", g, None))
        else:
            out.append(("other overlap", g, next(p for p in pred_spans if overlaps(p, g))))
    for p in pred_spans:
        if p not in found and not any(overlaps(p, g) for g in gold_spans):
            out.append(("spurious", None, p))
    return out


def text(sentence, span) -> str:
    return "-" if span is None else f"{span[0]}: {' '.join(sentence.words[span[1] : span[2]])}"


kinds, examples = Counter(), {}
for g, p in zip(gold, pred, strict=True):
    for kind, gold_span, pred_span in classify(entities(g.tags), entities(p.tags)):
        kinds[kind] += 1
        if kind != "correct" and kind not in examples:
            examples[kind] = (g, gold_span, pred_span)
print(format_table([{"kind": k, "entities": n} for k, n in kinds.most_common()]))
print(
    format_table(
        [
            {
                "kind": kind,
                "gold": text(s, g),
                "predicted": text(s, p),
                "sentence": " ".join(s.words)[:70],
            }
            for kind, (s, g, p) in examples.items()
        ]
    )
)
check(
    kinds["correct"] == round(ours["recall"] * ours["support"]),
    "the correct entities must be the true positives of the F1",
)

# %% [markdown]
# Per type, the scores the command printed and wrote into `metrics.json`:

# %%
saved = json.loads((out / "metrics.json").read_text())
print(
    format_table(
        [
            {"type": t, **{k: row[k] for k in ("precision", "recall", "f1", "support")}}
            for t, row in saved["dev"]["per_type"].items()
        ]
    )
)
if FIGURES:
    per_type = saved["dev"]["per_type"]
    fig, ax = plots.figure(8, 4.2)
    plots.draw_class_scores(ax, per_type, "CoNLL-2003 dev: scores per entity type"
                            f" (micro F1 {saved['dev']['f1']:.3f})")
    FIGURES.save(fig, "f1_per_type.png")
shutil.rmtree(work)  # the trained model, its metrics and predictions
print(f"lesson ran in {time.perf_counter() - START:.0f} s")

# %% [markdown]
# ## What to try next
#
# - Train on every sub-word (`minift ner --label-all-subwords`) and compare the dev F1.
# - Point the same command at the part-of-speech column (`--column 1`): the tags are then not
#   `B-`/`I-` entities, and the score becomes token accuracy.
# - `benchmarks/ner_conll.py` trains on a larger subset and holds minift against the
#   transformers recipe on the same batches, for NER and POS.
# - MiniLM is uncased: the capital letters that mark most names are gone before the encoder
#   sees them. A cased checkpoint (`--model DIR`) is where the published CoNLL-2003 numbers
#   come from.
