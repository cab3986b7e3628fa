"""The GPU round (benchmarks/gpu_round.py), rehearsed on the CPU so that a lent GPU's 15 minutes
are never spent on a typo: the whole round with ``--smoke`` (every section's command built,
parsed and run on a tiny model), the time limit that kills a section, and the deadline guard that
skips one."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_round.py"


def load_round():
    spec = importlib.util.spec_from_file_location("gpu_round", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_round"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def statuses_are_accounted(sections: list[dict]) -> list[str]:
    """The sections that neither ran cleanly nor said why they were skipped."""
    return [f"{s['name']}: {s['status']}" for s in sections
            if not (s["status"].startswith("ok") or s["status"].startswith("skipped: "))]


@pytest.mark.slow  # about 2 minutes of one CPU core: ten processes, each importing torch
def test_smoke_round_runs_every_section_and_writes_at_most_8_files(tmp_path):
    """``--smoke`` runs the round end to end on the CPU: exit 0; at most 8 files (the device
    call's limit), round.json and summary.md among them; every section of the plan either ran
    ("ok ...") or says why it was skipped, none failed; test_cuda says "skipped: no CUDA"; the
    benchmarks ran with the GPU round's own flags (device swapped for cpu); the summary table is
    the last thing on stdout, one row per section in the plan's order."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("OUT", "PYTHONPATH"):  # as on the device: the script finds its own tree
        env.pop(name, None)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and {"round.json", "summary.md", "round.log"} <= set(files), files
    record = json.loads((out / "round.json").read_text())
    sections = record["sections"]
    names = [s["name"] for s in sections]
    assert names == ["env", "matmul", "test_cuda", "inference_fp32", "inference_bf16",
                     "inference_bf16_bs128", "train_step", "finetune", "train_step_bert_base",
                     "inference_bert_base_bf16", "flops", "compile_train"]
    assert statuses_are_accounted(sections) == []
    by_name = {s["name"]: s for s in sections}
    for name in ("train_step_bert_base", "inference_bert_base_bf16"):
        assert by_name[name]["status"].startswith("skipped: no CUDA"), by_name[name]
        assert "--config" in by_name[name]["command"]
    if not by_name["env"]["files"]["env.json"]["cuda_available"]:
        assert by_name["test_cuda"]["status"].startswith("skipped: no CUDA")
    assert all(f"{k} " in by_name["matmul"]["result"] for k in ("bf16", "fp32"))
    for name in ("inference_fp32", "inference_bf16", "train_step", "flops", "compile_train"):
        assert by_name[name]["status"].startswith("ok"), by_name[name]
        assert by_name[name]["files"], f"{name} wrote no result file"
    assert "--bf16" in by_name["inference_bf16"]["command"]
    # the packed attention paths: nested and padded measured on the CPU, varlen named with
    # the reason it was not (CUDA only), in the inference and the training benchmarks alike
    assert set(by_name["env"]["files"]["env.json"]["attention_paths"].values()) <= {
        "per_sequence", "varlen", "nested", "padded"}
    for name, result in (("inference_bf16_bs128", "inference_throughput_bf16_bs128_quick.json"),
                         ("train_step", "train_step_quick.json")):
        assert "varlen,nested,padded" in by_name[name]["command"]
        payload = by_name[name]["files"][result]
        assert payload["attention"] == ["varlen", "nested", "padded"]
        runs = payload.get("workloads") or payload["runs"]
        assert {"minift unpadded, nested", "minift unpadded, padded"} <= set(
            runs[0]["real_tokens_per_s"]), runs[0]["real_tokens_per_s"].keys()
        if not by_name["env"]["files"]["env.json"]["cuda_available"]:
            assert "CUDA" in str(payload["attention_not_measured"]), payload
    for name in ("inference_fp32", "inference_bf16"):  # on a CPU the flag says it does nothing
        assert "--cuda-graphs" in by_name[name]["command"]
    assert "no CUDA-graph column" in (out / "round.log").read_text()
    compiled = by_name["compile_train"]["files"]["compile_buckets_bf16_eager_quick.json"]
    variants = {run["variant"]: run for run in compiled["runs"]}
    assert {"eager", "compiled, dynamic", "compiled, buckets"} <= set(variants)
    assert variants["compiled, buckets"]["graphs"] > 0 and "failed" not in str(variants)
    assert by_name["finetune"]["result"].startswith("dev accuracy ")
    assert ["--amp", "bf16"] == by_name["finetune"]["command"][
        by_name["finetune"]["command"].index("--amp"):][:2]
    rows = [line for line in done.stdout.strip().splitlines()[-len(names):]]
    assert [row.split("|")[1].strip() for row in rows] == names, done.stdout[-2000:]


def test_a_section_is_killed_at_its_limit(tmp_path):
    """A section that outlives its limit is killed, its whole process group with it (a child
    that sleeps 60 s is gone within 10 s of a 1 s limit), and reported as timed out."""
    gpu_round = load_round()
    section = gpu_round.Section("sleeper", [sys.executable, "-c", (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); print('started', flush=True); time.sleep(60)")],
        limit_s=1, floor_s=0)
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        code, output = gpu_round.run_section(section, 1, dict(os.environ), log)
    assert code is None and time.monotonic() - start < 10
    section.seconds = 1.0
    gpu_round.describe(section, code, output, tmp_path, cuda=False)
    assert section.status.startswith("timed out")


def test_the_deadline_guard_skips_what_no_longer_fits(tmp_path, monkeypatch):
    """With a 30 s budget, a section whose floor is 1,000 s is skipped, saying how much was
    left and how much it needs; the round goes on to the next, which runs; the summary names
    both."""
    gpu_round = load_round()
    quick = [sys.executable, "-c", "print('done')"]
    sections = [gpu_round.Section("big", quick, limit_s=2000, floor_s=1000, needs_cuda=False),
                gpu_round.Section("small", quick, limit_s=20, floor_s=1, needs_cuda=False)]
    monkeypatch.setattr(gpu_round, "plan", lambda args, work: sections)
    args = Namespace(out=str(tmp_path / "out"), carry=str(tmp_path / "none"), smoke=False,
                     device="cpu", budget_s=30)
    gpu_round.run_round(args)
    assert sections[0].status.startswith("skipped: ") and "needs 1000" in sections[0].status
    assert sections[1].status == "ok"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "big" in summary and "small" in summary


def test_bert_base_config_is_bert_base_and_its_folder_loads_alike(tmp_path, monkeypatch):
    """``--config bert-base`` is BERT-base's shape: the sizes in ``CONFIGS`` equal the defaults of
    transformers' ``BertConfig`` (which are bert-base-uncased's). ``model_folder`` writes a random
    checkpoint of a shape once, in a folder named for the shape (here a tiny one, so the test
    stays fast): minift and transformers load the same weights from it (last hidden states
    equal, fp32, atol 1e-5), and a second call reuses the folder without writing it again."""
    import torch
    import transformers

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import speed_common

    reference = transformers.BertConfig()
    for key, value in speed_common.CONFIGS["bert-base"].items():
        assert getattr(reference, key) == value, key
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    monkeypatch.setitem(speed_common.CONFIGS, "bert-base", tiny)
    monkeypatch.setattr(speed_common, "RANDOM_CACHE", tmp_path)
    folder = speed_common.model_folder("bert-base")
    assert folder.parent == tmp_path and "hidden_size32" in folder.name
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert speed_common.model_folder("bert-base") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    models = speed_common.load_models(torch.device("cpu"), config="bert-base")
    assert models["hf_sdpa"].config.num_hidden_layers == 2
    assert next(models["hf_sdpa"].parameters()).dtype == torch.float32
    ids = torch.randint(1000, 30522, (2, 9), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        ours = speed_common.call("minift", models["minift"], batch).last_hidden_state
        theirs = speed_common.call("hf_sdpa", models["hf_sdpa"], batch).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_packed_minilm_is_fp16_rounded_and_loads_as_float32(tmp_path, minilm_dir):
    """The packer's copy of MiniLM (benchmarks/gpu_pack.py): every weight within float16's
    rounding of the original (relative 2**-11, half a unit in the last place; absolute 1e-7 for
    values float16 holds as subnormals), in a package of the name ``"minilm"`` resolves to,
    loaded by transformers 5 as float32 (its ``dtype="auto"`` reads the
    carried config.json's "torch_dtype", not the file's float16)."""
    import torch
    import transformers

    from minift.hf.checkpoint import load_bert

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_pack
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    worst = gpu_pack.copy_checkpoint(minilm_dir, tmp_path)
    assert worst <= 2**-11
    folder = tmp_path / "site" / gpu_pack.PACKAGE / "model"
    original = dict(load_bert(minilm_dir).named_parameters())
    for name, param in load_bert(folder).named_parameters():
        assert param.dtype == torch.float32
        torch.testing.assert_close(param, original[name], rtol=2**-11, atol=1e-7)
    assert transformers.BertModel.from_pretrained(folder).dtype == torch.float32
