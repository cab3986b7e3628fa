"""Writing the safetensors format: what the loop needs to save a model that has no `save_pretrained`.

A file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the raw little-endian bytes. The reader, which checks every header field
before it reads a byte, is `minift.hf.safetensors`. This file imports nothing from minift.
"""

from __future__ import annotations

import json
import struct

import torch


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be loaded (or a tensor that cannot be saved)."""


DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


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
