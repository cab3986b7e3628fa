"""Data-to-text on E2E NLG: minift's encoder-decoder against transformers' ``EncoderDecoderModel``.

Question: trained the same way from the same weights, does minift's BERT2BERT (Rothe, Narayan and
Severyn, TACL 2020) write test texts as good as transformers' (BLEU, ROUGE-L), and does its
decoding, with the key/value cache, run at least as fast as transformers' ``generate``?

One run, for each seed:

1. ``minift.hf.encoder_decoder.warm_start`` builds the encoder-decoder from MiniLM (both halves
   from the encoder checkpoint, cross-attention drawn from the seed) and saves it in
   ``EncoderDecoderModel`` format; minift and transformers both load *that folder*, so they start
   from identical weights (the largest logit difference on the first batch is recorded).
2. Both are fine-tuned on the same batches in the same order (``Seq2SeqDataset``'s length-grouped
   batches, shuffled by the seed): AdamW with transformers' decay grouping, the same peak rate,
   linear warmup and decay over the same steps, gradients clipped at norm 1. minift's optimizer is
   ``minift.core.optim``'s; the reference's is torch's ``AdamW`` with
   ``get_linear_schedule_with_warmup``. Both draw their dropout masks after the same
   ``torch.manual_seed``: where minift draws them in transformers' order and shapes, the two
   runs coincide up to float rounding; any gap left is read against the spread over seeds.
3. Each writes one text per distinct test source, greedy and with 4 beams (same settings:
   ``max_new_tokens``, length penalty 1, no early stopping, stop at [SEP]), over the same
   length-grouped batches; corpus BLEU (sacrebleu's 13a, lowercased: MiniLM is uncased) and
   ROUGE-L against all of a source's references are computed by ``minift.core.bleu`` /
   ``minift.core.rouge`` (held to sacrebleu and rouge-score by the tests).
4. Generation speed, tokens written a second: minift with the cache (``minift.core.generate``),
   minift without it (a full decoder forward over every token so far at each step:
   ``no_cache_step`` below, run through the same greedy and beam loops) and transformers'
   ``generate(use_cache=True)``. The no-cache run is done on the first seed only (it is slow) and
   must write the same tokens as the cached one.

The train set is E2E's official *dev* set (devset.csv): the official 42k train set could not be
had. Scores are on the official test set (testset_w_refs.csv). The published anchor, TGen (Dušek
and Jurčíček 2016, the E2E challenge baseline: test BLEU 65.93 trained on the full 42k set), is
named as an anchor to read our numbers against, not a level claimed here.

    python benchmarks/generation_e2e.py --limit-train 1000 --limit-test 100 --epochs 1 --threads 1
    python benchmarks/generation_e2e.py --smoke        # a tiny random model, seconds, temp folder
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from speed_common import data_dir, machine, reference_adamw
from transformers import EncoderDecoderModel, get_linear_schedule_with_warmup

from minift.core.beam import beam_loop
from minift.core.bleu import corpus_bleu
from minift.core.generate import generate, greedy_loop
from minift.core.metrics import format_table
from minift.core.model import BertConfig, BertModel
from minift.core.optim import make_optimizer, make_scheduler
from minift.core.rouge import corpus_rouge_l
from minift.data.batches import length_grouped_batches, pad_batch
from minift.data.text_pairs import e2e_files, group_by_source, read_text_pairs
from minift.data.tokenizer import Tokenizer
from minift.fast.cpu_kernels import cpu_model
from minift.hf.checkpoint import resolve_model_dir, save_bert
from minift.hf.encoder_decoder import save_encoder_decoder, warm_start
from minift.run.recipes.prepare import subset
from minift.tasks.seq2seq import Seq2SeqDataset, Seq2SeqModel, is_uncased, source_rows

RESULTS = Path(__file__).resolve().parent / "results"
TGEN_BLEU = 65.93  # the E2E challenge baseline's test BLEU (full 42k train set): an anchor
E2E_NOTE = ("train set: E2E's official dev set (devset.csv; the official 42k train set could "
            "not be had); scored on the official test set (testset_w_refs.csv)")
DECODINGS = {"greedy": 1, "beam4": 4}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit-train", type=int, default=1000, help="seeded subset of "
                        "devset.csv rows (the same subset for every seed)")
    parser.add_argument("--limit-test", type=int, default=100, help="distinct test sources")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=64, help="source tokens kept")
    parser.add_argument("--max-target-length", type=int, default=64)
    parser.add_argument("--no-cache-sources", type=int, default=16, help="test sources the "
                        "no-cache decoding writes (its work grows with the square of the "
                        "output length: on one CPU thread all of them would take longer than "
                        "the rest of the run)")
    parser.add_argument("--threads", type=int, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model and a handful "
                        "of rows, written to a temp folder: a test that the script runs")
    parser.add_argument("--out", help="results folder (default benchmarks/results; --smoke: a "
                        "temp folder)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.limit_train, args.limit_test, args.max_new_tokens = 24, 4, 8
        args.seeds = args.seeds[:2] if len(args.seeds) > 1 else args.seeds
    return args


def tiny_checkpoint(folder: Path) -> Path:
    """A small random BERT (2 layers, hidden 32) with MiniLM's tokenizer: the smoke run's model."""
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128)
    save_bert(BertModel(config), folder)
    minilm = resolve_model_dir("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (minilm / name).is_file():
            shutil.copy(minilm / name, folder / name)
    return folder


# --- Decoding: one function per way, all over the same batches --------------------------------


@dataclass
class TokenHistory:
    """The no-cache step's memory: every token each row has been fed, (rows, t). It stands where
    the key/value cache stands, so beam search's ``select_beams`` reorders it with the beams."""

    tokens: torch.Tensor | None = None


def no_cache_step(model, input_ids, attention_mask, copies):
    """A step that runs the decoder over *all* tokens so far at every call (quadratic work in
    the output length), what decoding costs without the cache. Same signature and returns as
    ``minift.core.steps.encoder_decoder_step``."""
    memory = model.encode(input_ids, attention_mask).repeat_interleave(copies, dim=0)
    memory_mask = attention_mask.repeat_interleave(copies, dim=0)
    history = TokenHistory()

    def step(new: torch.Tensor) -> torch.Tensor:
        history.tokens = new if history.tokens is None else torch.cat([history.tokens, new], 1)
        return model.decoder(history.tokens, memory=memory,
                             memory_mask=memory_mask).logits[:, -1]

    start = torch.full((input_ids.size(0), 1), model.decoder_start_token_id,
                       dtype=input_ids.dtype)
    return step, [history], start


def decoders(ids: dict, max_new_tokens: int) -> dict:
    """name -> fn(model, input_ids, attention_mask, num_beams) -> sequences (rows, 1 + new)."""
    same = dict(max_new_tokens=max_new_tokens, eos_token_id=ids["eos"], pad_token_id=ids["pad"])

    def minift_cache(model, input_ids, mask, beams):
        return generate(model, input_ids, mask, num_beams=beams, length_penalty=1.0,
                        early_stopping=False, **same)

    @torch.no_grad()
    def minift_no_cache(model, input_ids, mask, beams):
        step, history, start = no_cache_step(model, input_ids, mask, beams)
        if beams == 1:
            return greedy_loop(step, start, **same)
        return beam_loop(step, history, start, num_beams=beams, length_penalty=1.0,
                         early_stopping=False, no_repeat_ngram_size=0, num_return_sequences=1,
                         **same).sequences

    @torch.no_grad()
    def transformers_generate(model, input_ids, mask, beams):
        return model.generate(input_ids=input_ids, attention_mask=mask, num_beams=beams,
                              do_sample=False, use_cache=True, length_penalty=1.0,
                              early_stopping=False, decoder_start_token_id=ids["start"],
                              bos_token_id=ids["start"], **same)

    return {"minift": minift_cache, "minift_no_cache": minift_no_cache,
            "transformers": transformers_generate}


def decode_all(fn, model, tokenizer, rows, *, beams: int, batch_size: int, pad: int) -> dict:
    """Every source's text (input order) by ``fn``, over length-grouped batches (longest first),
    with the tokens written (after the start token, padding not counted) and the seconds."""
    model.eval()
    texts, sequences = [None] * len(rows), [None] * len(rows)
    groups = length_grouped_batches([len(r) for r in rows], batch_size, generator=None,
                                    shuffle=False)
    written, seconds = 0, 0.0
    for group in groups:
        batch = pad_batch([rows[i] for i in group], None, pad)
        begin = time.perf_counter()
        out = fn(model, batch["input_ids"], batch["attention_mask"], beams)
        seconds += time.perf_counter() - begin
        for i, row in zip(group, out[:, 1:].tolist(), strict=True):
            body = row[: len(row) - next((k for k, t in enumerate(reversed(row)) if t != pad),
                                         len(row))]
            written += len(body)
            sequences[i] = body
            texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    return {"texts": texts, "sequences": sequences, "tokens": written, "seconds": seconds,
            "tokens_per_s": written / seconds}


# --- Training: the same batches, the same optimizer settings ----------------------------------


def train(model, batches, *, optimizer, scheduler, seed: int) -> float:
    """One pass over ``batches`` (already ordered): loss, backward, clip at 1, step. Seconds."""
    torch.manual_seed(seed)  # the dropout stream
    model.train()
    begin = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - begin


def start_pair(checkpoint: Path, seed: int, folder: Path):
    """minift's warm start, saved as an ``EncoderDecoderModel`` folder and loaded by both."""
    save_encoder_decoder(warm_start(checkpoint, seed=seed), folder)
    ours = Seq2SeqModel.from_pretrained(folder)
    theirs = EncoderDecoderModel.from_pretrained(folder)
    return ours, theirs


@torch.no_grad()
def start_gap(ours, theirs, batch: dict) -> float:
    """The largest |logit difference| of the two fresh models on one batch (eval mode)."""
    ours.eval()
    theirs.eval()
    return (ours(**batch).logits - theirs(**batch).logits).abs().max().item()


def score(texts, references, uncased: bool) -> dict:
    return {"bleu": corpus_bleu(texts, references, lowercase=uncased).score,
            "rouge_l": 100 * corpus_rouge_l(texts, references).fmeasure}


def one_seed(seed: int, args, setup: dict) -> dict:
    """Train both models from the seed's warm start, decode the test sources, score, time."""
    train_set, tokenizer, rows = setup["train_set"], setup["tokenizer"], setup["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = start_pair(setup["checkpoint"], seed, Path(tmp) / "start")
    epochs = [train_set.batches(args.batch_size,
                                generator=torch.Generator().manual_seed(seed * 1000 + e))
              for e in range(args.epochs)]
    gap = start_gap(ours, theirs, epochs[0][0])
    steps = sum(len(e) for e in epochs)
    warmup = int(args.warmup_ratio * steps)
    opt_ours = make_optimizer(ours, args.lr, args.weight_decay)
    opt_theirs = reference_adamw(theirs, args.lr, args.weight_decay)
    runs = {"minift": (ours, opt_ours, make_scheduler(opt_ours, steps, warmup)),
            "transformers": (theirs, opt_theirs,
                             get_linear_schedule_with_warmup(opt_theirs, warmup, steps))}
    result = {"seed": seed, "steps": steps, "start_max_logit_diff": gap, "train_seconds": {}}
    for name, (model, optimizer, scheduler) in runs.items():
        result["train_seconds"][name] = sum(
            train(model, batches, optimizer=optimizer, scheduler=scheduler, seed=seed + e)
            for e, batches in enumerate(epochs))
    ways = decoders(setup["ids"], args.max_new_tokens)
    names = ["minift", "transformers"] + (["minift_no_cache"] if setup["first"] else [])
    result["scores"], result["speed"], texts = {}, {}, {}
    few = args.no_cache_sources  # the no-cache run reads only the first few sources
    for decoding, beams in DECODINGS.items():
        for name in names:
            model = ours if name.startswith("minift") else theirs
            out = decode_all(ways[name], model, tokenizer,
                             rows[:few] if name == "minift_no_cache" else rows, beams=beams,
                             batch_size=args.batch_size, pad=setup["ids"]["pad"])
            texts[name, decoding] = out
            result["speed"][f"{name}/{decoding}"] = {k: out[k] for k in
                                                     ("tokens", "seconds", "tokens_per_s")}
            if name != "minift_no_cache":
                result["scores"][f"{name}/{decoding}"] = score(out["texts"], setup["references"],
                                                               setup["uncased"])
        if setup["first"]:  # the full forward must write what the cache writes
            same = [a == b for a, b in zip(texts["minift", decoding]["sequences"][:few],
                                           texts["minift_no_cache", decoding]["sequences"],
                                           strict=True)]
            result[f"no_cache_same_tokens/{decoding}"] = sum(same) / len(same)
    result["examples"] = {f"{n}/greedy": texts[n, "greedy"]["texts"][:3]
                          for n in ("minift", "transformers")}
    return result


# --- Summary and report -----------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def summarize(runs: list[dict]) -> dict:
    """Mean and std over seeds of every score, the paired differences minift - transformers
    (same seed: same start, same batches), training seconds and tokens a second."""
    summary: dict = {"scores": {}, "paired_difference": {}, "train_seconds": {}, "speed": {}}
    for key in runs[0]["scores"]:
        for metric in ("bleu", "rouge_l"):
            summary["scores"][f"{key}/{metric}"] = stats([r["scores"][key][metric] for r in runs])
    for decoding in DECODINGS:
        for metric in ("bleu", "rouge_l"):
            deltas = [r["scores"][f"minift/{decoding}"][metric]
                      - r["scores"][f"transformers/{decoding}"][metric] for r in runs]
            summary["paired_difference"][f"{decoding}/{metric}"] = stats(deltas)
    for name in ("minift", "transformers"):
        summary["train_seconds"][name] = stats([r["train_seconds"][name] for r in runs])
    for key in runs[0]["speed"]:
        summary["speed"][key] = stats([r["speed"][key]["tokens_per_s"] for r in runs
                                       if key in r["speed"]])
    return summary


def ms(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(args, summary: dict, runs: list[dict], command: str, info: dict) -> str:
    """The report: the setting, the scores table, the speed table, the anchor."""
    rows = []
    for decoding in DECODINGS:
        for metric, label in (("bleu", "BLEU"), ("rouge_l", "ROUGE-L")):
            rows.append({"decoding": decoding, "metric": label,
                         "minift": ms(summary["scores"][f"minift/{decoding}/{metric}"]),
                         "transformers": ms(summary["scores"][f"transformers/{decoding}/{metric}"]),
                         "minift - transformers (paired)":
                             ms(summary["paired_difference"][f"{decoding}/{metric}"])})
    speed = [{"decoding": decoding, "way": name, "tokens/s": ms(summary["speed"][key]),
              "seeds": len(summary["speed"][key]["values"])}
             for decoding in DECODINGS
             for name in ("minift", "minift_no_cache", "transformers")
             if (key := f"{name}/{decoding}") in summary["speed"]]
    same = {d: runs[0].get(f"no_cache_same_tokens/{d}") for d in DECODINGS}
    gaps = max(r["start_max_logit_diff"] for r in runs)
    return "\n".join([
        "# E2E NLG data-to-text: minift vs transformers' EncoderDecoderModel\n",
        f"`{command}`\n",
        f"CPU: {info['cpu_model']} ({info['cpu_count']} CPUs, {info['torch_threads']} torch "
        f"threads), torch {info['torch']}, transformers {info['transformers']}.\n",
        f"Note: the {E2E_NOTE}. Model: {args.model_name}, warm-started as BERT2BERT, one start "
        f"a seed shared by both (largest start logit difference {gaps:.1e}). Train "
        f"{args.train_rows} rows, {args.epochs} epoch(s), {runs[0]['steps']} steps of "
        f"{args.batch_size}, AdamW lr {args.lr:g}, warmup {args.warmup_ratio:g}, weight decay "
        f"{args.weight_decay:g}; test: {args.test_sources} distinct sources, all their "
        f"references; max {args.max_new_tokens} new tokens. Seeds {args.seeds}: mean ± std "
        "over seeds; the paired difference is the mean ± std of minift - transformers over "
        "the same seeds.\n",
        "## Test scores\n", format_table(rows), "",
        f"Anchor, not a claim: TGen, the E2E challenge baseline, reaches test BLEU {TGEN_BLEU} "
        "trained on the full 42k train set; this run trains on a small part of the 4.7k-row "
        "dev set.\n",
        "## Training time (seconds, all epochs)\n",
        format_table([{"model": n, "seconds": ms(summary["train_seconds"][n])}
                      for n in ("minift", "transformers")]), "",
        "## Generation speed (tokens written a second, batches of "
        f"{args.batch_size} sources)\n",
        format_table(speed), "",
        "minift_no_cache runs the whole decoder over every token so far at each step, on the "
        f"first seed only and the first {min(args.no_cache_sources, args.test_sources)} test "
        "sources (the others: all of them); it wrote the same tokens as the cached decoding for "
        + ", ".join(f"{d} {100 * v:.0f}%" for d, v in same.items() if v is not None)
        + " of the sources. Timings on a machine shared with other jobs are indicative only.\n",
    ])


def setup_data(args, checkpoint: Path) -> dict:
    """The train subset (the same for every seed), the test sources and their references."""
    train_path, test_path, source_col, target_col = e2e_files(data_dir())
    cols = dict(source_col=source_col, target_col=target_col)
    train_pairs = subset(read_text_pairs(train_path, **cols), args.limit_train, 0)
    examples = subset(group_by_source(read_text_pairs(test_path, **cols)), args.limit_test, 0)
    tokenizer = Tokenizer.from_pretrained(checkpoint)
    train_set = Seq2SeqDataset(train_pairs, tokenizer, max_length=args.max_length,
                               max_target_length=args.max_target_length)
    rows, _ = source_rows([e.source for e in examples], tokenizer, args.max_length)
    args.train_rows, args.test_sources = len(train_pairs), len(examples)
    return {"checkpoint": checkpoint, "tokenizer": tokenizer, "train_set": train_set,
            "rows": rows, "references": [list(e.references) for e in examples],
            "uncased": is_uncased(tokenizer),
            "ids": {"start": tokenizer.cls_token_id, "eos": tokenizer.sep_token_id,
                    "pad": tokenizer.pad_token_id}}


def main(argv=None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    scratch = Path(tempfile.mkdtemp(prefix="generation_e2e_"))
    checkpoint = tiny_checkpoint(scratch / "tiny") if args.smoke else resolve_model_dir("minilm")
    args.model_name = "a tiny random BERT (smoke run)" if args.smoke else "all-MiniLM-L6-v2"
    out = Path(args.out) if args.out else (scratch if args.smoke else RESULTS)
    setup = setup_data(args, checkpoint)
    runs = []
    for i, seed in enumerate(args.seeds):
        setup["first"] = i == 0
        runs.append(one_seed(seed, args, setup))
        print(f"seed {seed}: {json.dumps(runs[-1]['scores'])}", flush=True)
    summary = summarize(runs)
    info = machine(torch.device("cpu")) | {"cpu_model": cpu_model()}
    command = f"python benchmarks/generation_e2e.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {"machine": info, "command": command.rstrip(), "note": E2E_NOTE,
               "anchor": {"system": "TGen", "test_bleu": TGEN_BLEU, "train_rows": 42061,
                          "role": "anchor, not a claim"},
               "settings": settings, "summary": summary, "runs": runs}
    name = "generation_e2e_smoke" if args.smoke else "generation_e2e"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    report = markdown(args, summary, runs, command.rstrip(), info)
    (out / f"{name}.md").write_text(report)
    print(report)
    print(f"written: {out / name}.json and .md")
    return out / f"{name}.json"


if __name__ == "__main__":
    main()
