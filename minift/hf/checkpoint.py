"""Reading and writing BERT checkpoints in HF format, with no pickled code ever executed.

Two parts (the file format itself is ``safetensors.py``): the key map, one table from HF BERT
names to minift's read by a short loop, with head weights (``cls.*``, ``classifier.*``, ...)
handed back for the heads to claim; then folders, read once and checked, and the one-line entry
points ``load_bert(path)`` and ``save_bert(model, path)``. ``model.py`` knows nothing of files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from minift.core.files import atomic_write
from minift.core.model import BertConfig, BertModel, ConfigError
from minift.data.tokenizer import named_checkpoint
from minift.hf.safetensors import CheckpointError, read_safetensors, write_safetensors

# --- 1. The key map: HF BERT names -> minift names ------------------------------------------------

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


def rename_tables(key_map: dict[str, str]) -> tuple[list, list]:
    """A key map -> the (pattern, target) tables that ``rename`` reads: HF -> ours, ours -> HF."""
    def table(pairs):
        return [(re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)") + "$"), dst)
                for src, dst in pairs]

    return table(key_map.items()), table((ours, hf) for hf, ours in key_map.items())


_FROM_HF, _TO_HF = rename_tables(KEY_MAP)


def rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    """``name`` under the first matching pattern of ``table`` ("{}" carries the layer index);
    None when no pattern matches."""
    for pattern, target in table:
        match = pattern.match(name)
        if match:
            return target.replace("{}", match.group(1)) if match.groups() else target
    return None


def split_hf_state_dict(state_dict: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """HF names -> (encoder weights under minift names, head weights as found, unknown names).

    Handles the ``bert.`` prefix of task checkpoints and the legacy LayerNorm ``gamma``/``beta``.
    """
    encoder, heads, unknown = {}, {}, []
    for name, tensor in state_dict.items():
        if name.startswith(HEAD_PREFIXES):
            heads[name] = tensor
            continue
        bare = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name.removeprefix("bert."))
        bare = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", bare)
        if bare in IGNORED_KEYS:
            continue
        ours = rename(bare, _FROM_HF)
        if ours is None:
            unknown.append(name)
        else:
            encoder[ours] = tensor
    return encoder, heads, unknown


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "", *,
                     table: list[tuple[re.Pattern, str]] = _TO_HF) -> dict[str, torch.Tensor]:
    """minift encoder names -> HF ``BertModel`` names (with ``prefix``, e.g. ``"bert."``);
    ``table``: another ``rename_tables`` map's ours -> HF side."""
    out = {}
    for name, tensor in state_dict.items():
        hf = rename(name, table)
        if hf is None:
            raise CheckpointError(f"no HF name for minift parameter {name!r}")
        out[prefix + hf] = tensor
    return out


# --- 2. Folders -----------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """``"minilm"`` -> the installed all-MiniLM-L6-v2 folder; a folder path -> itself.

    ``"hf:org/name"`` downloads through the optional ``huggingface_hub`` (untested: the tests run
    offline); the explicit prefix keeps a mistyped local path from becoming a network request.
    """
    name = str(name_or_path)
    try:
        named = named_checkpoint(name)  # "minilm", shared with the tokenizer (minift.data)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if named is not None:
        return named
    if name.startswith("hf:"):
        if importlib.util.find_spec("huggingface_hub") is None:
            raise CheckpointError(f"model {name!r}: hub downloads need huggingface_hub "
                                  "(pip install huggingface_hub)")
        from huggingface_hub import snapshot_download  # optional, network

        return Path(snapshot_download(name[3:]))
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"model {name!r} is a file, not a folder: give the checkpoint "
                              "folder that holds config.json and the weights")
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


def read_config(path: str | os.PathLike, raw: dict | None = None) -> BertConfig:
    """Read ``config.json`` in a checkpoint folder into a ``BertConfig`` (``raw``: its JSON,
    when already read), refusing a model too large for this machine before anything is built."""
    source = str(Path(path) / "config.json")
    config = BertConfig.from_dict(read_config_json(path) if raw is None else raw, source=source)
    check_fits_in_memory(config, source)
    return config


# sentence-transformers' pooling modes -> minift's pooling: older flags, newer names (read_pooling).
ST_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                    "mean": "mean", "cls": "cls"}


def read_pooling(path: str | os.PathLike) -> str | None:
    """The pooling a sentence-transformers folder states for its sentence embeddings: ``"mean"``
    or ``"cls"``; else None, and the caller falls back to BERT's pooler (a notice is printed for
    several modes at once or one minift has no head for: max, weighted mean, ...).

    ``modules.json`` lists the modules; the ``Pooling`` one's folder (``1_Pooling``) holds a
    ``config.json`` naming the mode: a ``pooling_mode_*`` flag set to true (sentence-transformers
    2 to 5; ``pooling_mode_mean_tokens`` for all-MiniLM-L6-v2, trained on the mean of its token
    states, never on BERT's pooler) or a ``pooling_mode`` name (newer).
    """
    folder = Path(path)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        pooling = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
        if pooling is None:
            return None
        config_file = folder / str(pooling.get("path", "")) / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        named = config.get("pooling_mode", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as err:
        print(f"{modules_file}: the sentence-transformers pooling could not be read ({err!r}); "
              "using BERT's pooler")
        return None
    modes = sorted({key for key, value in config.items()
                    if key.startswith("pooling_mode_") and value is True}
                   | set([named] if isinstance(named, str) else map(str, named)))
    if len(modes) == 1 and modes[0] in ST_POOLING_MODES:
        return ST_POOLING_MODES[modes[0]]
    print(f"{config_file}: pooling {', '.join(modes) or 'none'} has no minift head (mean or cls); "
          "using BERT's pooler")
    return None


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(config: BertConfig, source: str = "config") -> None:
    """Refuse a config whose float32 parameters alone exceed physical memory, naming the key
    that makes it so (the one whose bert-base value would shrink the model most)."""
    need, memory = 4 * config.num_parameters(), physical_memory()
    if memory is None or need <= memory:
        return
    base = BertConfig()

    def shrunk(key: str) -> int:  # the parameter count with ``key`` at most bert-base's value
        value = min(getattr(config, key), getattr(base, key))
        return BertConfig.num_parameters(types.SimpleNamespace(**asdict(config) | {key: value}))

    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
            "max_position_embeddings", "type_vocab_size")
    key = min(keys, key=shrunk)
    raise ConfigError(f"{source}: {key}={getattr(config, key)} makes a model of "
                      f"{config.num_parameters():,} parameters, {need / 2**30:.1f} GiB in float32, "
                      f"more than this machine's memory ({memory / 2**30:.1f} GiB)")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of a checkpoint folder, and the file(s) they came from: ``model.safetensors``,
    its shards (``model.safetensors.index.json``), or else ``pytorch_model.bin`` loaded with
    ``torch.load(weights_only=True)`` so no pickled code runs."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {str(folder)!r} does not exist")
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return read_safetensors(folder / "model.safetensors"), str(folder / "model.safetensors")
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError,
                TypeError) as err:
            raise CheckpointError(f"{index}: malformed index ({err!r})") from None
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(shard_file(folder, shard, index)))
        return tensors, str(index)
    if (folder / "pytorch_model.bin").is_file():
        file = folder / "pytorch_model.bin"
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:  # torch raises many types for a damaged or unsafe pickle
            raise CheckpointError(f"{file}: cannot be loaded safely: it is not a plain pickle of "
                                  "tensors (it holds pickled code, which minift will not run, or "
                                  "it is damaged); convert it to model.safetensors with a tool "
                                  "you trust") from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise CheckpointError(f"{file}: expected a dict of tensors")
        return state, str(file)
    raise CheckpointError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES)})")


def shard_file(folder: Path, shard: object, index: Path) -> Path:
    """The file a ``weight_map`` entry names, refused unless it is a regular file inside the
    model folder: no absolute path, no ``..``, no link out of the folder, no device."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{index}: a weight_map entry is {shard!r}, not a file name")
    file = folder / shard
    inside = (not Path(shard).is_absolute() and ".." not in Path(shard).parts
              and file.resolve().is_relative_to(folder.resolve()))
    if not inside or not file.resolve().is_file():
        raise CheckpointError(f"{index}: shard {shard!r} is not a file inside the model folder "
                              f"{folder}")
    return file


@dataclass
class Checkpoint:
    """A checkpoint folder read once: its config (raw JSON and checked), the encoder weights
    under minift names, and the head weights under their HF names, for a head to claim."""

    folder: Path
    raw_config: dict
    config: BertConfig
    encoder: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor]
    source: str  # the weights file(s), for messages


def read_checkpoint(path: str | os.PathLike, *, allow_unexpected: bool = False) -> Checkpoint:
    """Read config.json and the weights of a folder (or ``"minilm"``), each once; nothing built.
    Keys neither encoder nor known head weights are an error unless ``allow_unexpected``."""
    folder = resolve_model_dir(path)
    raw = read_config_json(folder)
    config = read_config(folder, raw)
    state, source = read_state_dict(folder)
    encoder, heads, unknown = split_hf_state_dict(state)
    if unknown and not allow_unexpected:
        raise CheckpointError(f"{source}: unexpected keys: {', '.join(unknown)} "
                              "(pass allow_unexpected=True to ignore them)")
    return Checkpoint(folder, raw, config, encoder, heads, source)


def load_encoder_weights(model: BertModel, checkpoint: Checkpoint, *,
                         init_missing_pooler: bool = False) -> None:
    """Copy the checkpoint's encoder weights into ``model`` (see ``copy_weights``). A model
    without a pooler drops pooler weights; ``init_missing_pooler=True`` accepts a checkpoint
    without them (MLM, token classification) and keeps the fresh pooler, saying so, as
    transformers does."""
    encoder, source = checkpoint.encoder, checkpoint.source
    expected = model.state_dict()
    if model.pooler is None:
        encoder = {k: v for k, v in encoder.items() if not k.startswith("pooler.")}
    elif init_missing_pooler and not any(k.startswith("pooler.") for k in encoder):
        print(f"{source}: no pooler weights; the pooler is freshly initialised")
        encoder = encoder | {k: v for k, v in expected.items() if k.startswith("pooler.")}
    copy_weights(expected, encoder, source)


def copy_weights(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                 source: str) -> None:
    """Copy ``weights`` into the model tensors ``expected`` (both under minift names): missing
    keys, keys the model lacks and shapes that disagree are errors, listed by name."""
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{source}: missing keys (minift names): {', '.join(missing)}")
    extra = sorted(set(weights) - set(expected))  # e.g. more layers than num_hidden_layers
    if extra:
        raise CheckpointError(f"{source}: keys the model built from config.json does not have "
                              f"(minift names): {', '.join(extra)}")
    wrong = [f"{name}: checkpoint {tuple(t.shape)} vs config {tuple(expected[name].shape)}"
             for name, t in weights.items() if t.shape != expected[name].shape]
    if wrong:
        raise CheckpointError(f"{source}: shapes disagree with config.json: " + "; ".join(wrong))
    with torch.no_grad():
        for name, tensor in weights.items():
            expected[name].copy_(tensor)


def load_bert(path: str | os.PathLike, *, add_pooling_layer: bool = True,
              allow_unexpected: bool = False) -> BertModel:
    """Load an HF BERT checkpoint folder (or ``"minilm"``) into the textbook ``BertModel``, in
    eval mode (``add_pooling_layer=False``: without a pooler); ``minift.fast.unpad.speed_up``
    swaps in the fast modules."""
    checkpoint = read_checkpoint(path, allow_unexpected=allow_unexpected)
    model = BertModel(checkpoint.config, add_pooling_layer=add_pooling_layer)
    load_encoder_weights(model, checkpoint)
    return model.eval()


def write_hf_folder(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                    config: dict) -> None:
    """Write ``model.safetensors`` and ``config.json`` (HF names, HF keys) in a folder made here."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, folder / "model.safetensors")
    atomic_write(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())


def save_bert(model: BertModel, path: str | os.PathLike,
              heads: dict[str, torch.Tensor] | None = None, config_extra: dict | None = None,
              prefix: str = "") -> None:
    """Write ``config.json`` and ``model.safetensors`` in HF layout. ``heads`` (HF names) and
    ``config_extra`` add a task's head and settings; ``prefix="bert."`` stores the encoder as
    task checkpoints do."""
    tensors = to_hf_state_dict(model.state_dict(), prefix=prefix) | (heads or {})
    write_hf_folder(path, tensors, model.config.to_dict() | (config_extra or {}))


def load_linear(linear: nn.Linear, checkpoint, name: str) -> bool:
    """Copy ``name.weight`` / ``name.bias`` of ``checkpoint`` into ``linear``; False when the
    checkpoint has no such head (``linear`` keeps its fresh initialisation)."""
    heads = checkpoint.heads
    if f"{name}.weight" not in heads:
        return False
    weight, bias = heads[f"{name}.weight"], heads.get(f"{name}.bias")
    if weight.shape != linear.weight.shape or bias is None or bias.shape != linear.bias.shape:
        raise CheckpointError(f"{checkpoint.source}: {name}.weight has shape "
                              f"{tuple(weight.shape)} and {name}.bias "
                              f"{None if bias is None else tuple(bias.shape)}; the model needs "
                              f"{tuple(linear.weight.shape)} and {tuple(linear.bias.shape)}")
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return True


def linear_tensors(linear: nn.Linear, name: str) -> dict[str, torch.Tensor]:
    """``name.weight`` and ``name.bias`` of ``linear``, what ``save_bert`` takes as ``heads``
    (and ``load_linear`` reads back)."""
    return {f"{name}.weight": linear.weight, f"{name}.bias": linear.bias}


def fresh_linear(config: BertConfig, outputs: int) -> nn.Linear:
    """hidden -> ``outputs``, initialised as BERT's heads: N(0, initializer_range), zero bias."""
    linear = nn.Linear(config.hidden_size, outputs)
    nn.init.normal_(linear.weight, std=config.initializer_range)
    nn.init.zeros_(linear.bias)
    return linear
