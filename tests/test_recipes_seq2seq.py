"""`minift seq2seq`, `minift lm` and `minift generate` as a user runs them: bad input refused by
name (exit 2) before a model loads, a tiny end-to-end run whose folder transformers loads with the
same logits, an exact resume, and generation one line a source, in input order.

The model is conftest's tiny random BERT (64 positions, MiniLM's tokenizer); the data a few rows.
"""

import io
import json
import math

import pytest
import torch
import transformers

import minift.run.recipes
from minift.hf.safetensors import read_safetensors
from minift.run.cli import main
from minift.tasks.seq2seq import Seq2SeqModel, generate_texts, source_rows

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [("name[Aromi], food[Thai]", "Aromi serves Thai food."),
        ("name[Aromi], food[Thai]", "Thai food at the Aromi."),
        ("name[Blue Spice], area[riverside]", "Blue Spice is by the river."),
        ("name[Cotto]", "Cotto is a coffee shop.")] * 2


def csv(path, rows, header="mr,ref"):
    path.write_text(header + "\n" + "".join(f'"{s}","{t}"\n' for s, t in rows), encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path):
    return {"train": csv(tmp_path / "train.csv", ROWS), "dev": csv(tmp_path / "dev.csv", ROWS[:4]),
            "text": (tmp_path / "text.txt")}


@pytest.fixture()
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr(minift.run.recipes.skeleton, "run_recipe", refuse)
    monkeypatch.setattr(Seq2SeqModel, "from_pretrained", refuse)


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def seq2seq_args(model, files, out, *extra):
    return ["seq2seq", "--model", model, "--train", files["train"], "--dev", files["dev"],
            "--source-col", "mr", "--target-col", "ref", "--max-length", 32,
            "--max-target-length", 16, "--max-new-tokens", 6, "--batch-size", 4, "--lr", 1e-3,
            "--no-progress", "--out", out, *extra]


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    """An encoder-decoder folder and a language-model folder, warm-started from ``tiny``."""
    from minift.hf.encoder_decoder import save_causal_lm, save_encoder_decoder, warm_start
    from minift.tasks.lm import LanguageModel

    root = tmp_path_factory.mktemp("folders")
    save_encoder_decoder(warm_start(tiny), root / "seq2seq")
    save_causal_lm(LanguageModel.from_pretrained(tiny), root / "lm")
    return root


def test_bad_input_is_a_named_error_before_any_model_loads(tiny, files, folders, tmp_path, capsys,
                                                           no_loading):
    out = tmp_path / "out"
    empty = csv(tmp_path / "empty.csv", [("name[Aromi]", "Aromi."), ("name[Cotto]", " ")])
    (tmp_path / "source.txt").write_text("name[Aromi]\n", encoding="utf-8")
    cases = [
        (seq2seq_args(tiny, files, out, "--target-col", "text"), "expected a column 'text'"),
        (seq2seq_args(tiny, {**files, "train": empty}, out), "empty"),
        (seq2seq_args(tiny, files, out, "--max-new-tokens", 0),
         "--max-new-tokens must be at least 1, got 0"),
        (seq2seq_args(tiny, files, out, "--max-length", 65),
         "--max-length 65 is more than the model's 64 positions"),
        (seq2seq_args(tiny, files, out, "--max-target-length", 65),
         "--max-target-length 65 does not fit the decoder"),
        (seq2seq_args(tiny, files, out, "--task", "e2e"), "give either --task or --train/--dev"),
        (["generate", "--model", tiny, "--input", tmp_path / "source.txt"],
         f"--model {tiny} holds no decoder"),
        (["generate", "--model", tiny, "--input", tmp_path / "source.txt", "--max-new-tokens",
          0], "--max-new-tokens must be at least 1, got 0"),
        (["lm", "--model", tiny, "--text", tmp_path / "missing.txt", "--max-length", 32,
          "--out", out],
         "missing.txt"),
        (["lm", "--model", tiny, "--text", files["train"], "--max-length", 65, "--out", out],
         "--max-length 65 is more than the model's 64 positions"),
        (seq2seq_args(folders / "lm", files, out), "is a language model (a decoder alone)"),
        (["lm", "--model", folders / "seq2seq", "--text", files["train"], "--max-length", 32,
          "--out", out], "is an encoder-decoder: lm trains a decoder alone"),
        (["generate", "--model", folders / "seq2seq", "--input", tmp_path / "source.txt",
          "--max-new-tokens", 65], "--max-new-tokens 65 does not fit the decoder"),
        (["generate", "--model", folders / "seq2seq", "--input", tmp_path / "empty.txt",
          "--max-length", 32], "expected one input a line, found none"),
    ]
    (tmp_path / "empty.txt").write_bytes(b"")
    for argv, expected in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert not out.exists(), argv


def hf_logits(hf, model, tokenizer):
    """Logits of transformers' model and ours on two rows (with labels: teacher forcing)."""
    from minift.data.text_pairs import TextPair
    from minift.tasks.seq2seq import Seq2SeqDataset

    rows = [TextPair(s, t, i) for i, (s, t) in enumerate(ROWS[:2])]
    batch = Seq2SeqDataset(rows, tokenizer, max_length=32, max_target_length=16).batch([0, 1])
    with torch.no_grad():
        want = hf.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).logits
        return model.eval()(**batch).logits, want


def test_train_two_steps_then_transformers_loads_it_and_generate_writes_a_line_a_source(
        tiny, files, tmp_path, capsys):
    from minift.data.tokenizer import Tokenizer

    out = tmp_path / "run"
    code, stdout, err = run(capsys, *seq2seq_args(tiny, files, out, "--max-steps", 2,
                                                  "--max-length", 8))
    assert code == 0, err  # a source longer than --max-length is cut, and the user is told
    assert ("minift: warning: 6 of 8 sources are longer than --max-length 8 tokens: "
            "truncated") in err, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["dev"]["sources"] == 3
    assert {"bleu", "rouge_l", "loss"} <= set(metrics["dev"]) and "predictions" not in metrics["dev"]
    assert len((out / "dev_predictions.txt").read_text().splitlines()) == 3
    ours = Seq2SeqModel.from_pretrained(out)
    hf = transformers.EncoderDecoderModel.from_pretrained(out)
    tokenizer = Tokenizer.from_pretrained(out)
    got, want = hf_logits(hf, ours, tokenizer)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    sources = ["name[Cotto]", "name[Aromi], food[Thai], area[riverside]", "name[Aromi]"]
    (tmp_path / "in.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    code, stdout, err = run(capsys, "generate", "--model", out, "--input", tmp_path / "in.txt",
                            "--max-new-tokens", 5, "--batch-size", 2, "--max-length", 32,
                            "--no-progress")
    assert code == 0, err
    rows, _ = source_rows(sources, tokenizer, 32)
    alone = [generate_texts(ours, tokenizer, [row], batch_size=1, max_new_tokens=5,
                            device="cpu")[0] for row in rows]
    assert stdout.splitlines() == alone  # one line a source, in input order
    # and transformers' generate writes the same first source's tokens (greedy, same weights)
    ids = tokenizer([sources[0]], max_length=32)
    hf_ids = hf.eval().generate(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                                num_beams=1, do_sample=False, max_new_tokens=5)
    assert tokenizer.decode(hf_ids[0, 1:]) == alone[0]

    # Beam search through the command: transformers' generate(num_beams=3) on every source.
    code, stdout, err = run(capsys, "generate", "--model", out, "--input", tmp_path / "in.txt",
                            "--max-new-tokens", 5, "--max-length", 32, "--num-beams", 3,
                            "--no-repeat-ngram-size", 2, "--no-progress")
    assert code == 0, err
    for source, line in zip(sources, stdout.splitlines(), strict=True):
        ids = tokenizer([source], max_length=32)
        hf_ids = hf.generate(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"],
                             num_beams=3, no_repeat_ngram_size=2, do_sample=False,
                             max_new_tokens=5)
        assert tokenizer.decode(hf_ids[0, 1:], skip_special_tokens=True) == line, source
    # Sampling: seeded (the same lines again), and a bad combination named before loading.
    sample = ["generate", "--model", out, "--input", tmp_path / "in.txt", "--max-new-tokens", 5,
              "--max-length", 32, "--sample", "--top-k", 20, "--temperature", 1.5,
              "--no-progress"]
    first, again = run(capsys, *sample, "--seed", 7), run(capsys, *sample, "--seed", 7)
    assert first[0] == 0 and first[1] == again[1] and len(first[1].splitlines()) == 3
    code, _, err = run(capsys, *sample, "--num-beams", 2)
    assert code == 2 and "--sample with --num-beams 2" in err, err


def reference_scores(texts, examples):
    """BLEU by sacrebleu (lowercased: MiniLM is uncased; one stream a reference slot, None where
    a source has fewer references) and ROUGE-L by rouge-score (best reference, mean, times 100)
    of ``texts``, one a distinct source of ``examples``: how the dev set is scored."""
    import sacrebleu
    from rouge_score import rouge_scorer

    references = [list(e.references) for e in examples]
    width = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
    bleu = sacrebleu.corpus_bleu(texts, streams, lowercase=True).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)  # minift does not stem
    best = [max(scorer.score(ref, text)["rougeL"].fmeasure for ref in refs)
            for text, refs in zip(texts, references, strict=True)]
    return bleu, 100 * sum(best) / len(best)


def generate_lines(capsys, model, sources, path, *flags):
    """What ``minift generate`` writes for ``sources`` (one a line in ``path``) with ``flags``."""
    capsys.readouterr()  # what was printed before is not generate's
    path.write_text("".join(f"{s}\n" for s in sources), encoding="utf-8")
    code, stdout, err = run(capsys, "generate", "--model", model, "--input", path,
                            "--max-length", 32, "--batch-size", 4, "--no-progress", *flags)
    assert code == 0, err
    return stdout.splitlines()


BEAMS = ["--num-beams", 3, "--length-penalty", 2.0, "--no-repeat-ngram-size", 2,
         "--max-new-tokens", 8]


def test_dev_is_scored_on_what_generate_writes_with_the_same_decoding_flags(tiny, files, tmp_path,
                                                                         capsys):
    """``seq2seq`` with beam-search flags scores dev on the texts ``generate`` writes from the
    saved model with the same flags (one field each in ``DecodingOptions``): its
    dev_predictions.txt is generate's output line for line, one a distinct dev source, and its
    dev BLEU and ROUGE-L are sacrebleu's and rouge-score's on generate's lines (abs 1e-9). Twenty
    steps at a high rate teach the tiny model words of the references (BLEU above 0, so the
    comparison is not of zeros), and the flags change its texts (greedy writes others), so a dev
    scoring that ignored them would fail here."""
    from minift.data.text_pairs import group_by_source, read_text_pairs

    out = tmp_path / "run"
    code, _, err = run(capsys, *seq2seq_args(tiny, files, out, "--max-steps", 20, "--eval-every",
                                             20, "--lr", 3e-2, *BEAMS))
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = (out / "dev_predictions.txt").read_text(encoding="utf-8").splitlines()
    examples = group_by_source(read_text_pairs(files["dev"], source_col="mr", target_col="ref"))
    sources = [e.source for e in examples]
    beams = generate_lines(capsys, out, sources, tmp_path / "dev_sources.txt", *BEAMS)
    assert beams == predictions and len(beams) == metrics["dev"]["sources"] == 3
    greedy = generate_lines(capsys, out, sources, tmp_path / "dev_sources.txt",
                            "--max-new-tokens", 8)
    assert greedy != beams, "the flags must change the texts for this test to prove anything"
    bleu, rouge_l = reference_scores(beams, examples)
    assert bleu > 0 and rouge_l > 0
    assert math.isclose(metrics["dev"]["bleu"], bleu, abs_tol=1e-9)
    assert math.isclose(metrics["dev"]["rouge_l"], rouge_l, abs_tol=1e-9)
    assert json.loads((out / ".minift-run.json").read_text())["options"]["num_beams"] == 3


def test_a_resumed_run_ends_with_the_uninterrupted_model(tiny, files, tmp_path, capsys,
                                                         monkeypatch):
    """Stopped after its step-2 checkpoint and resumed: the same weights and dev scores as a
    run never stopped (bit for bit: seeded batches, resume.pt holds optimizer and schedule)."""
    from minift.data.batches import PaddedRows

    class Stop(Exception):
        pass

    plain = PaddedRows.batches
    left = {"n": None}

    def batches(self, batch_size, *, generator, shuffle=True, drop_last=False):
        found = plain(self, batch_size, generator=generator, shuffle=shuffle,
                      drop_last=drop_last)
        if not shuffle:
            return found

        class Stopping(list):
            def __getitem__(self, i):
                if left["n"] == 0:
                    raise Stop
                if left["n"] is not None:
                    left["n"] -= 1
                return list.__getitem__(self, i)

            def __iter__(self):
                return (self[i] for i in range(len(self)))

        return Stopping(found)

    monkeypatch.setattr(PaddedRows, "batches", batches)
    settings = dict(model=str(tiny), train=str(files["train"]), dev=str(files["dev"]),
                    source_col="mr", target_col="ref", max_length=32, max_target_length=16,
                    max_new_tokens=4, batch_size=2, max_steps=4, eval_every=2, lr=1e-3,
                    progress=False)
    full = minift.run.recipes.seq2seq(out=str(tmp_path / "full"), **settings)
    left["n"] = 3
    with pytest.raises(Stop):
        minift.run.recipes.seq2seq(out=str(tmp_path / "cut"), **settings)
    left["n"] = None
    resumed = minift.run.recipes.seq2seq(out=str(tmp_path / "cut"), resume=True, **settings)
    assert resumed["dev"] == full["dev"] and resumed["train"]["steps"] == 4
    a = read_safetensors(tmp_path / "full" / "model.safetensors")
    b = read_safetensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()


def test_lm_trains_two_steps_and_transformers_loads_it(tiny, tmp_path, capsys, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"the aromi serves thai food number {i}\n" for i in range(20)),
                    encoding="utf-8")
    out = tmp_path / "lm"
    code, _, err = run(capsys, "lm", "--model", tiny, "--text", text, "--max-steps", 2,
                       "--batch-size", 4, "--max-length", 16, "--lr", 1e-3, "--no-progress",
                       "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2
    after = metrics["after"]
    assert abs(after["perplexity"] - torch.tensor(after["loss"]).exp().item()) < 1e-3 * after[
        "perplexity"]
    from minift.tasks.lm import LanguageModel

    ours = LanguageModel.from_pretrained(out)
    hf = transformers.BertLMHeadModel.from_pretrained(out).eval()
    ids = torch.tensor([[101, 1996, 2012, 2072, 102]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)
    # generate continues each prompt (stdin, "-"): one line each, in input order, each what
    # transformers' greedy generate writes after that prompt alone (stopping at [SEP])
    from minift.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(out)
    prompts = ["the aromi", "the", "the aromi serves", "thai"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(prompts) + "\n"))
    code, stdout, err = run(capsys, "generate", "--model", out, "--input", "-",
                            "--max-new-tokens", 3, "--max-length", 16, "--batch-size", 2,
                            "--no-progress")
    assert code == 0, err
    want = []
    for prompt in prompts:
        ids = tokenizer([prompt])["input_ids"][:, :-1]  # [CLS] prompt, no [SEP]
        written = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=1,
                              do_sample=False, max_new_tokens=3, eos_token_id=102,
                              pad_token_id=0)
        want.append(tokenizer.decode(written[0, ids.size(1):]))
    assert stdout.splitlines() == want


def test_compile_pads_sources_and_targets_each_to_two_buckets(tiny, files, tmp_path,
                                                              monkeypatch):
    """``--compile`` on seq2seq (a recording stand-in for torch.compile): sources and targets
    each padded to one of two bucket lengths of the longer limit (``bucket_lengths(32, 2)``:
    16 or 32), the decoder's tensors to one width, labels -100 in the padding: at most four
    pairs of shapes a batch size, within torch's recompile limit of eight for two sizes."""
    from minift.data.batches import bucket_lengths

    seen = []

    def record(module, **options):
        def forward(**batch):
            seen.append(batch)
            return module(**batch)
        return forward

    monkeypatch.setattr(torch, "compile", record)
    minift.run.recipes.seq2seq(model=str(tiny), train=str(files["train"]), dev=str(files["dev"]),
                               source_col="mr", target_col="ref", max_length=32,
                               max_target_length=16, max_new_tokens=4, batch_size=3,
                               max_steps=3, lr=1e-3, progress=False, compile=True,
                               out=str(tmp_path / "out"))
    assert len(seen) == 3
    buckets = bucket_lengths(32, count=2)
    assert buckets == [16, 32]
    for batch in seen:
        assert batch["input_ids"].shape[1] in buckets
        assert batch["attention_mask"].shape == batch["input_ids"].shape
        width = batch["labels"].shape[1]
        assert width in buckets and batch["decoder_input_ids"].shape[1] == width
        assert batch["decoder_attention_mask"].shape[1] == width
        padding = batch["decoder_attention_mask"] == 0
        assert (batch["labels"][padding] == -100).all()
