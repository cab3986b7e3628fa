"""The test holes the audits closed, kept closed: does each planted bug still fail its tests?

Question: for every bug the test audits found that the suite let through (each was planted in
``minift/``, survived the test that claimed to cover it, and then that test was strengthened
until it failed; the commit messages on main describe them), do the tests named for it still
fail? A later change that weakens such a test, or moves the code so that it no longer tests
what it claims, reopens the hole silently; this script reopens each one on purpose.

For each mutation of ``MUTATIONS`` the script copies ``minift/``, ``tests/`` and
``pyproject.toml`` into a temporary folder (the working tree is never edited), replaces the
mutation's snippet (which occurs exactly once in its file) by the bug, and runs
``python -m pytest -p no:cacheprovider -q -x <tests>`` there, with PYTHONPATH on the copy and one
thread. The tests failing is "caught"; passing is "SURVIVED"; anything else (no test ran, a
collection error, a time-out) is "error". The exit status is 1 unless every mutation is caught.

    python benchmarks/mutations.py --list                       # the table, nothing run
    python benchmarks/mutations.py --only loop-no-clip          # one mutation (repeatable)
    python benchmarks/mutations.py --out benchmarks/results     # all; writes mutations.md/.json
    python benchmarks/mutations.py --baseline --only grid-log-uniform  # the tests, unmutated

``--baseline`` runs each mutation's tests on the unmutated copy instead, where they must pass (a
test that fails without the bug proves nothing by failing with it). tests/test_mutations.py
checks, cheaply, that every snippet still occurs exactly once and every test still exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from minift.fast.cpu_kernels import cpu_model  # the CPU's name, as the speed benchmarks give it

REPO = Path(__file__).resolve().parents[1]
COPIED = ("minift", "tests", "pyproject.toml")  # what the tests need of the repository
PYTEST = ("-m", "pytest", "-p", "no:cacheprovider", "-q", "-x")
TIMEOUT_S = 900  # one mutation's tests; the longest take about a minute on 2 cores


@dataclass(frozen=True)
class Mutation:
    """One planted bug: ``snippet`` (exactly once in ``file``) replaced by ``bug``."""

    id: str
    file: str  # relative to the repository root
    snippet: str
    bug: str
    tests: tuple[str, ...]  # pytest arguments: node ids, or "-k", EXPR, a test file
    words: str  # the bug in words
    why: str  # what a reader or user would lose if it slipped in
    audit: str  # the commit that closed the hole


def _m(id, file, snippet, bug, tests, words, why, audit) -> Mutation:
    return Mutation(id, file, snippet, bug, tuple(tests.split()), words, why, audit)


LOOP, SEARCH, RESUME = "minift/core/loop.py", "minift/run/search.py", "minift/core/resume.py"
MODEL, SENTENCE, BEAM = "minift/core/model.py", "minift/core/sentence.py", "minift/core/beam.py"
BIAS = "        linear.bias.copy_(bias)\n    return True"  # load_linear's bias copy
NO_BIAS = "    return True"
GELU = "        return self.down(F.gelu(self.up(x)))"
TANH = '        return self.down(F.gelu(self.up(x), approximate="tanh"))'

MUTATIONS: list[Mutation] = [
    # --- the training loop ------------------------------------------------------------------
    _m("loop-no-clip", LOOP,
       "        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)",
       "        pass",
       "tests/test_loop.py::test_the_optimizer_sees_gradients_clipped_to_max_grad_norm",
       "the optimizer step never clips the gradients",
       "max_grad_norm would be an option that does nothing; AdamW's first step hides it",
       "66b1e7a"),
    _m("loop-clip-twice", LOOP,
       "        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)",
       "        torch.nn.utils.clip_grad_norm_(trainable, 2 * max_grad_norm)",
       "tests/test_loop.py::test_the_optimizer_sees_gradients_clipped_to_max_grad_norm",
       "gradients clipped to twice max_grad_norm",
       "a clip to the wrong bound trains differently from the reference trainer",
       "66b1e7a"),
    _m("loop-accum-logged-loss", LOOP,
       "        losses[i] = loss.detach() * (n_targets / window_targets)",
       "        losses[i] = loss.detach() / len(window)",
       "tests/test_loop.py::test_accumulated_micro_batches_equal_one_batch",
       "under accumulation the logged loss is the plain mean of the micro-batch means",
       "log.jsonl would report a loss that is not the batch's (gradients stay right)",
       "15eb219"),
    # --- heads loaded from a checkpoint -------------------------------------------------------
    _m("head-bias-classify", "minift/hf/checkpoint.py", BIAS, NO_BIAS,
       "tests/test_classify.py::test_logits_and_loss_match_transformers_both_ways",
       "load_linear never copies a head's bias",
       "a fine-tuned classifier would load with a zero bias; a fresh head's bias is 0 anyway",
       "74581b6"),
    _m("head-bias-qa", "minift/hf/checkpoint.py", BIAS, NO_BIAS,
       "tests/test_qa.py::test_question_answering_matches_transformers",
       "load_linear never copies a head's bias (the span head)",
       "a trained QA model would answer differently once reloaded",
       "97737c0"),
    _m("head-bias-nsp", "minift/hf/checkpoint.py", BIAS, NO_BIAS,
       "tests/test_nsp.py::test_next_sentence_prediction_matches_transformers",
       "load_linear never copies a head's bias (the NSP head)",
       "a pretraining checkpoint's NSP head would be read wrong",
       "97737c0"),
    _m("head-bias-pretraining", "minift/hf/checkpoint.py", BIAS, NO_BIAS,
       "tests/test_nsp.py::test_pretraining_loss_matches_bert_for_pretraining",
       "load_linear never copies a head's bias (BertForPreTraining)",
       "continued pretraining would start from a different head than the checkpoint's",
       "97737c0"),
    _m("classify-head-init-scale", "minift/hf/checkpoint.py",
       "    nn.init.normal_(linear.weight, std=config.initializer_range)",
       "    nn.init.normal_(linear.weight, std=1.3 * config.initializer_range)",
       "tests/test_classify.py::test_published_encoder_gets_fresh_head",
       "a fresh head drawn at 1.3x initializer_range",
       "fresh heads must start as transformers' do, or runs from one seed stop being comparable",
       "7a16be8"),
    # --- the textbook model and sentence embeddings -------------------------------------------
    _m("model-eps-ignored", MODEL,
       "        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)",
       "        self.norm = nn.LayerNorm(config.hidden_size, eps=1e-12)",
       "tests/test_model.py::test_random_config_outputs_and_gradients_match",
       "the embeddings' LayerNorm ignores config.layer_norm_eps (1e-12 hard-coded)",
       "a checkpoint with another eps would load and compute something else",
       "12b265a"),
    _m("model-tanh-gelu", MODEL, GELU, TANH,
       "tests/test_model.py::test_random_config_outputs_and_gradients_match",
       "the feed-forward uses the tanh GELU, not the exact erf one",
       "BERT checkpoints were trained with the erf GELU; outputs move by ~3e-3",
       "12b265a"),
    _m("sentence-tanh-gelu", MODEL, GELU, TANH,
       "tests/test_sentence.py::test_sentence_embeddings_match_sentence_transformers",
       "the tanh GELU, seen through sentence embeddings of the published MiniLM",
       "a cosine of 0.99999 let coordinates differ by 4e-3",
       "9d626e2"),
    _m("sentence-layernorm-eps", MODEL,
       "        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)",
       "        self.norm = nn.LayerNorm(config.hidden_size)",
       "tests/test_sentence.py::test_sentence_embeddings_match_sentence_transformers",
       "the embeddings' LayerNorm at torch's default eps 1e-5",
       "embeddings would drift from sentence-transformers' while every cosine stays ~1",
       "9d626e2"),
    _m("sentence-pooling-scale", SENTENCE,
       "    return summed / weights.sum(dim=1).clamp(min=1e-9)",
       "    return summed / weights.shape[1]",
       "tests/test_sentence.py::test_sentence_embeddings_match_sentence_transformers",
       "mean pooling divides by the padded length, not each row's token count",
       "normalised vectors hide a per-row scale; a mean-pooling classifier does not",
       "9d626e2"),
    _m("cli-similarity-self", "minift/run/cli.py",
       "    right = encode(model, tokenizer, [b for _, b in pairs])",
       "    right = encode(model, tokenizer, [a for a, _ in pairs])",
       "tests/test_cli.py::test_similarity_command_prints_scores",
       "`minift similarity` scores each first sentence against itself",
       "the command would print 1.000 for every pair",
       "ed6d2c3"),
    # --- data ---------------------------------------------------------------------------------
    _m("batches-no-index-draw", "minift/data/batches.py",
       "        order = torch.randperm(len(lengths), generator=generator).tolist()",
       "        order = list(range(len(lengths)))",
       "tests/test_batches.py::test_grouped_batches_draw_both_their_members_and_their_order",
       "length-grouped batches cut mega-batches from the indices in file order",
       "every epoch would group the same neighbours: no shuffling of the members",
       "8ced0b3"),
    _m("batches-no-order-draw", "minift/data/batches.py",
       "        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)"
       ".tolist()]",
       "        batches = list(batches)",
       "tests/test_batches.py::test_grouped_batches_draw_both_their_members_and_their_order",
       "length-grouped batches keep the order they were cut in (longest first)",
       "training would see the batches sorted by length within each mega-batch",
       "8ced0b3"),
    _m("align-merge-first-window", "minift/core/align.py",
       "    owners = window_owners(windows)",
       "    owners = [next(k for k, (s, e) in enumerate(windows) if s <= i < e)\n"
       "              for i in range(windows[-1][1])]",
       "tests/test_align.py::test_windows_cover_every_word_and_respect_max_tokens",
       "each word's prediction taken from the first window that holds it, not its owner",
       "a word at a window's edge, with the least context, would decide the tag",
       "e5880ce"),
    # --- tasks --------------------------------------------------------------------------------
    _m("nsp-random-b-rate", "minift/tasks/nsp.py",
       "                if len(chunk) == 1 or _uniform(generator) < 0.5:",
       "                if len(chunk) == 1 or _uniform(generator) < 0.4:",
       "tests/test_nsp.py::test_a_chunk_of_two_sentences_gets_a_random_b_half_of_the_time",
       "a multi-sentence chunk gets a random B 40% of the time, not BERT's 50% (audit: 0.3, 0.75)",
       "NSP would train on another label balance than BERT's recipe",
       "adcaa72"),
    _m("mlm-resume-ignored", "minift/core/checkpoints.py",
       "        checkpoint = load_resume(self.out_dir, parts.model) if self.resume else None",
       "        checkpoint = None",
       "tests/test_mlm.py::test_resumed_mlm_training_equals_an_uninterrupted_run",
       "Checkpoints(resume=True) never loads resume.pt: a resumed run starts over",
       "a seeded restart ends with the same weights, so only the work done shows it",
       "598e8ba"),
    _m("tag-gold-pred-swapped", "minift/tasks/tag.py",
       '    scores = entity_scores(gold, pred, mode="default")',
       '    scores = entity_scores(pred, gold, mode="default")',
       "tests/test_tag.py::test_ner_end_to_end_writes_metrics_and_a_model_transformers_loads",
       "NER scores with gold and predicted tags swapped (precision and recall exchanged)",
       "metrics.json would report recall as precision",
       "646477d"),
    _m("tag-strict-as-default", "minift/tasks/tag.py",
       '    strict = entity_scores(gold, pred, mode="strict")',
       '    strict = entity_scores(gold, pred, mode="default")',
       "tests/test_tag.py::test_ner_end_to_end_writes_metrics_and_a_model_transformers_loads",
       "the strict IOB2 scores computed in seqeval's default mode",
       "the strict scores would repeat the lenient ones",
       "646477d"),
    _m("seq2seq-references-reversed", "minift/tasks/seq2seq.py",
       "    references = [list(e.references) for e in examples]",
       "    references = [list(e.references) for e in examples][::-1]",
       "tests/test_seq2seq.py::test_dev_scores_are_sacrebleu_and_rouge_score_on_the_written_texts",
       "dev BLEU and ROUGE-L score each text against another source's references",
       "a comparison of two zero scores let any pairing pass",
       "124ef7e"),
    _m("seq2seq-bleu-cased", "minift/tasks/seq2seq.py",
       "    bleu = corpus_bleu(texts, references, lowercase=is_uncased(tokenizer))",
       "    bleu = corpus_bleu(texts, references, lowercase=False)",
       "tests/test_seq2seq.py::test_dev_scores_are_sacrebleu_and_rouge_score_on_the_written_texts",
       "dev BLEU of an uncased model not lowercased",
       "an uncased model's lowercase texts would miss every capitalised reference word",
       "124ef7e"),
    _m("squad-f1-over-n-plus-1", "minift/tasks/qa.py",
       '    return {"exact_match": 100 * em / n, "f1": 100 * f / n, "questions": n}',
       '    return {"exact_match": 100 * em / n, "f1": 100 * f / (n + 1), "questions": n}',
       "tests/test_squad.py::test_train_then_answer",
       "SQuAD F1 averaged over one question more than there are",
       "the qa run's dev F1 was only checked to lie in 0..100",
       "bde636f"),
    _m("squad-keeps-a", "minift/tasks/qa.py",
       '    text = re.sub(r"\\b(a|an|the)\\b", " ", text)',
       '    text = re.sub(r"\\b(an|the)\\b", " ", text)',
       "tests/test_squad.py::test_train_then_answer",
       "answer normalisation keeps the article 'a'",
       "scores would differ from the official SQuAD v1.1 script's",
       "bde636f"),
    _m("setfit-lbfgs-early", "minift/tasks/setfit.py",
       "tolerance_grad=1e-10,",
       "tolerance_grad=1e-6,",
       "tests/test_setfit.py::test_logistic_regression_coefficients_equal_scikit_learn",
       "the logistic-regression head's L-BFGS stops at gradient tolerance 1e-6",
       "the head would no longer be scikit-learn's solution (tolerance was 100x the gap)",
       "c59159f"),
    _m("contrastive-default-margin", "minift/core/contrastive.py",
       "                     margin: float = 0.5) -> torch.Tensor:",
       "                     margin: float = 1.0) -> torch.Tensor:",
       "tests/test_contrastive.py::test_pair_losses_equal_sentence_transformers",
       "contrastive_loss's default margin 1.0, not sentence-transformers' 0.5",
       "SetFit with the contrastive loss would train on another objective by default",
       "3b33478"),
    # --- resume, the best model, a full disk ----------------------------------------------------
    _m("resume-python-random", RESUME,
       "    random.setstate((version, tuple(internal), gauss_next))",
       "    pass",
       "tests/test_resume.py::test_resume_restores_python_random_for_a_model_that_draws_from_it",
       "a resume does not restore Python's random state",
       "a model drawing from `random` would resume into another run",
       "0bed6fa"),
    _m("resume-weight-decay", RESUME,
       "        group.update(hyper)",
       "        pass",
       "tests/test_resume.py::test_a_resume_with_another_weight_decay_gives_the_optimizer_the_new_one",
       "a resume keeps the saved optimizer's hyperparameters (the old weight_decay)",
       "a resume with a new weight_decay would warn of it and then ignore it",
       "0bed6fa"),
    _m("resume-light-early-stop", RESUME,
       '        if run["total_steps"] > progress.step and not progress.stopped_early:',
       '        if run["total_steps"] > progress.step:',
       "tests/test_resume.py::test_a_light_final_resume_of_a_run_that_stopped_early_finishes_it",
       "the light resume.pt of an early-stopped run refused like an unfinished run's",
       "an early-stopped run could not redo its final save",
       "33909d3"),
    _m("resume-tmp-no-unlink", RESUME,
       "                leftover.unlink(missing_ok=True)",
       "                pass",
       "tests/test_resume.py::test_a_resume_removes_the_temporary_files_a_killed_write_left",
       "a start leaves the temporary files of a killed atomic write in place",
       "half-written files would pile up in out_dir",
       "1907296"),
    _m("resume-tmp-any-name", RESUME,
       "            if _ATOMIC_TEMPORARY.fullmatch(leftover.name) and leftover.is_file():",
       "            if leftover.is_file():",
       "tests/test_resume.py::test_a_resume_removes_the_temporary_files_a_killed_write_left",
       "a start removes every .*.tmp file, not only atomic_write's",
       "a user's own files in out_dir would be deleted",
       "1907296"),
    _m("best-new-left-behind", "minift/core/best.py",
       "    except BaseException:\n        shutil.rmtree(new, ignore_errors=True)\n        raise",
       "    except BaseException:\n        raise",
       "tests/test_best.py::test_crash_while_writing_best_keeps_previous_best",
       "a save of the best model that fails leaves best.new/ behind",
       "a half-written model folder would sit beside best/",
       "f2505af"),
    _m("best-new-left-full-disk", "minift/core/best.py",
       "    except BaseException:\n        shutil.rmtree(new, ignore_errors=True)\n        raise",
       "    except BaseException:\n        raise",
       "tests/test_faults.py::test_a_full_disk_never_leaves_a_folder_that_does_not_load",
       "best.new/ left behind when the disk fills while the best model is written",
       "the full-disk test drew only resume.pt writes before: best/ was never hit",
       "f2505af"),
    _m("recover-best-stale-old", "minift/core/best.py",
       "    shutil.rmtree(old, ignore_errors=True)\n    shutil.rmtree(new, ignore_errors=True)",
       "    shutil.rmtree(new, ignore_errors=True)",
       "tests/test_best.py::test_a_crash_after_the_swap_keeps_the_new_best",
       "recover_best leaves a stale best.old/ beside a completed swap",
       "the previous best model's folder would stay forever",
       "f2505af"),
    _m("log-kept-past-resume", "minift/core/logbook.py",
       "        if is_main:\n            lines =",
       "        if is_main and not (history and self.path.is_file()):\n            lines =",
       "tests/test_faults.py::test_a_full_disk_never_leaves_a_folder_that_does_not_load",
       "a resumed run keeps log.jsonl as it was, records written after resume.pt included",
       "the log would repeat the steps the resumed run trains again",
       "700b978"),
    # --- search -------------------------------------------------------------------------------
    _m("grid-log-uniform", "minift/run/grid.py",
       'math.exp(rng.uniform(math.log(self.low), math.log(self.high)))',
       'rng.uniform(self.low, self.high)',
       "tests/test_grid.py::test_a_log_range_is_drawn_log_uniformly",
       "a log range drawn uniformly, not log-uniformly",
       "a search over log:1e-6:1e-2 would put 99% of its draws in the last decade",
       "829780a"),
    _m("search-row-std-population", SEARCH,
       '            "std": statistics.stdev(values) if len(values) > 1 else 0.0,\n'
       '            "per_seed"',
       '            "std": statistics.pstdev(values) if len(values) > 1 else 0.0,\n'
       '            "per_seed"',
       "tests/test_search.py::test_rows_hold_the_mean_and_sample_std_over_the_seeds",
       "a configuration's std over seeds is the population std, not the sample (n-1) one",
       "the spread the search reports and plots would be too small",
       "b206223"),
    _m("search-row-mean-median", SEARCH,
       '            "mean": statistics.fmean(values) if values else None,',
       '            "mean": statistics.median(values) if values else None,',
       "tests/test_search.py::test_rows_hold_the_mean_and_sample_std_over_the_seeds",
       "a configuration's score is the median of its seeds, not the mean",
       "the search would choose by another statistic than it reports",
       "b206223"),
    _m("search-row-dev-first-seed", SEARCH,
       '            "dev": {name: statistics.fmean(record["dev"][name] for record in done)',
       '            "dev": {name: next(record["dev"][name] for record in done)',
       "tests/test_search.py::test_rows_hold_the_mean_and_sample_std_over_the_seeds",
       "a configuration's other dev metrics are its first seed's, not the mean",
       "the table's other columns would be one seed's noise",
       "b206223"),
    _m("search-test-mean-first-seed", SEARCH,
       '    return {"mean": statistics.fmean(values),',
       '    return {"mean": values[0],',
       "tests/test_search.py::test_rows_hold_the_mean_and_sample_std_over_the_seeds",
       "the chosen configuration's test score is its first seed's",
       "the one test-set number the search reports would be a single seed's",
       "b206223"),
    _m("search-test-std-population", SEARCH,
       '            "std": statistics.stdev(values) if len(values) > 1 else 0.0,\n'
       '            "examples"',
       '            "std": statistics.pstdev(values) if len(values) > 1 else 0.0,\n'
       '            "examples"',
       "tests/test_search.py::test_rows_hold_the_mean_and_sample_std_over_the_seeds",
       "the test scores' std over seeds is the population std",
       "the test score's reported spread would be too small",
       "b206223"),
    # --- generation -----------------------------------------------------------------------------
    _m("beam-full-freeze-dropped", BEAM,
       "        may_finish = ends & first_k & can_improve & ~full",
       "        may_finish = ends & first_k & can_improve",
       "tests/test_beam.py::test_early_stopping_keeps_a_full_sources_first_hypotheses_as_transformers",
       "early_stopping=True lets a full source's hypotheses be replaced",
       "beam search would return other texts than transformers' generate",
       "60fc4de"),
    _m("beam-can-improve-recomputed", BEAM,
       "        can_improve &= (best_hope > worst_kept).any(dim=-1, keepdim=True)",
       "        can_improve = (best_hope > worst_kept).any(dim=-1, keepdim=True)",
       "tests/test_beam.py::test_a_source_that_cannot_improve_stays_done_as_transformers",
       "a source that could not improve may finish hypotheses again later",
       "beam search would return other texts than transformers' generate",
       "72385a8"),
    # --- the tokenizer built from vocab.txt ----------------------------------------------------
    _m("tokenizer-word-limit-50", "minift/data/tokenizer.py",
       "max_input_chars_per_word=100))",
       "max_input_chars_per_word=50))",
       "tests/test_tokenizer.py::test_vocab_txt_pipeline_matches_reference_at_the_edges",
       "WordPiece gives up on words over 50 characters instead of 100",
       "a vocab.txt-only checkpoint would turn long words into [UNK] where the reference spells them",
       "06420a1"),
    _m("tokenizer-decode-no-cleanup", "minift/data/tokenizer.py",
       '    backend.decoder = decoders.WordPiece(prefix="##")',
       '    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)',
       "tests/test_tokenizer.py::test_vocab_txt_pipeline_matches_reference_at_the_edges",
       "decode keeps the spaces before punctuation (\"world .\")",
       "a vocab.txt-only checkpoint would decode to other text than the reference",
       "06420a1"),
]

BY_ID = {m.id: m for m in MUTATIONS}


def mutated_text(mutation: Mutation, root: Path = REPO) -> str:
    """The text of the mutation's file with its snippet replaced; ValueError unless the snippet
    occurs exactly once (the table has rotted: the code moved)."""
    text = (root / mutation.file).read_text(encoding="utf-8")
    count = text.count(mutation.snippet)
    if count != 1:
        raise ValueError(f"{mutation.id}: the snippet occurs {count} times in {mutation.file}, "
                         "expected once")
    return text.replace(mutation.snippet, mutation.bug)


def test_files(mutation: Mutation) -> list[str]:
    """The test files the mutation's pytest arguments name (node ids and bare paths)."""
    args, files = list(mutation.tests), []
    for i, arg in enumerate(args):
        if arg.startswith("-") or (i and args[i - 1] == "-k"):
            continue
        files.append(arg.split("::")[0])
    return files


def copy_repository(into: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, into / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
        else:
            shutil.copy2(source, into / name)


def test_env(copy: Path) -> dict[str, str]:
    """This process's environment with PYTHONPATH on the copy alone and one thread."""
    env = dict(os.environ)
    env.setdefault("MINIFT_DATA", str(REPO.parent / "shared" / "data"))  # the copy has no ..
    env.update(PYTHONPATH=str(copy), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MINIFT_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def outcome(returncode: int, output: str, baseline: bool) -> str:
    """pytest's exit status read as the check's verdict."""
    ran = re.search(r"\d+ (passed|failed)", output)
    if returncode == 1 and ran:
        return "FAILED" if baseline else "caught"
    if returncode == 0 and ran:
        return "passed" if baseline else "SURVIVED"
    return "error"


def run_one(mutation: Mutation, baseline: bool = False) -> dict:
    """Copy, mutate (unless ``baseline``), run the tests; the verdict, seconds and pytest's tail."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"minift-mutation-{mutation.id}-") as tmp:
        copy = Path(tmp)
        copy_repository(copy)
        if not baseline:
            (copy / mutation.file).write_text(mutated_text(mutation, copy), encoding="utf-8")
        argv = [sys.executable, *PYTEST, *mutation.tests]
        try:
            done = subprocess.run(argv, cwd=copy, env=test_env(copy), capture_output=True,
                                  text=True, timeout=TIMEOUT_S)
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            returncode, output = None, f"timed out after {TIMEOUT_S} s\n{e.stdout or ''}"
    lines = [line for line in output.splitlines() if line.strip()]
    failure = next((line[1:].strip() for line in lines if line.startswith("E ")), None)
    result = outcome(returncode, output, baseline)
    return {"id": mutation.id, "result": result,
            "seconds": round(time.perf_counter() - start, 1), "returncode": returncode,
            "pytest": lines[-1].strip("= ") if lines else "", "failure": failure,
            # pytest's output is kept where it explains something: a survivor, an error
            **({} if result in ("caught", "passed") else {"output": output[-4000:]})}


def revision() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def report(runs: list[dict], header: dict) -> str:
    caught = sum(r["result"] == "caught" for r in runs)
    lines = ["# Mutations: the audits' planted bugs against their tests", "",
             f"`{header['command']}` on {header['cpu']} ({header['cpus']} CPUs, one thread), "
             f"code {header['revision']}, {header['date']}. Each bug planted in a copy of the "
             "repository; its tests run with `python -m pytest -p no:cacheprovider -q -x`. "
             "\"caught\": the tests failed, as they must.", "",
             f"**{caught} of {len(runs)} caught**, {sum(r['seconds'] for r in runs):.0f} s in all.",
             "", "| id | file | the bug | tests | result | s |", "|---|---|---|---|---|---:|"]
    for run in runs:
        m = BY_ID[run["id"]]
        tests = " ".join(f"`{t}`" for t in m.tests)
        lines.append(f"| {m.id} | `{m.file}` | {m.words} | {tests} | {run['result']} | "
                     f"{run['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="ID",
                        help="run this mutation only (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run at once (default 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for mutations.md and mutations.json (default: none; "
                        "not with --baseline)")
    parser.add_argument("--baseline", action="store_true",
                        help="run the tests unmutated instead (they must pass)")
    args = parser.parse_args(argv)
    unknown = [i for i in args.only if i not in BY_ID]
    if unknown:
        parser.error(f"unknown mutation ids {unknown}; --list shows them")
    chosen = [BY_ID[i] for i in args.only] if args.only else MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.id:30s} {m.file:28s} {m.words}\n{'':30s} {shlex.join(m.tests)}")
        return 0
    for m in chosen:
        mutated_text(m)  # every snippet found before anything runs

    def run(mutation: Mutation) -> dict:
        result = run_one(mutation, args.baseline)
        print(f"{result['result']:8s} {result['seconds']:6.1f} s  {mutation.id}  "
              f"({result['pytest']})", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(run, chosen))
    good = "passed" if args.baseline else "caught"
    bad = [r["id"] for r in runs if r["result"] != good]
    print(f"{len(runs) - len(bad)} of {len(runs)} {good}, {sum(r['seconds'] for r in runs):.0f} s"
          + (f"; not {good}: {' '.join(bad)}" if bad else ""))
    if args.out and not args.baseline:
        header = {"command": shlex.join(["python", "benchmarks/mutations.py", *(argv or sys.argv[1:])]),
                  "cpu": cpu_model(), "cpus": os.cpu_count(), "revision": revision(),
                  "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        name = "mutations"
        args.out.mkdir(parents=True, exist_ok=True)
        table = {m.id: asdict(m) for m in chosen}
        (args.out / f"{name}.json").write_text(json.dumps(
            {**header, "runs": [{**r, "mutation": table[r["id"]]} for r in runs]}, indent=2)
            + "\n")
        (args.out / f"{name}.md").write_text(report(runs, header))
        print(f"wrote {args.out / name}.md and .json")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
