"""The safetensors file format, read from scratch with every header field checked.

safetensors: 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the raw little-endian bytes. Every number in the header is checked before a
byte is read, so a damaged file gives a ``CheckpointError`` (a ``ValueError``) that says what is
wrong, never a crash or a silently wrong tensor. No pickled code is involved at any point.

The encoder lives in ``minift.core.safetensors`` (the training loop saves with it); this file
adds the reader and ``write_safetensors`` (atomic: a crash leaves the previous file, never half
of one), and re-exports the rest.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from minift.core.files import atomic_write
from minift.core.safetensors import DTYPES, CheckpointError, encode_safetensors

__all__ = ["DTYPES", "CheckpointError", "encode_safetensors", "parse_safetensors",
           "read_safetensors", "write_safetensors"]

MAX_HEADER_BYTES = 100_000_000  # the reference library's own limit


def _parse_header(data: bytes | memoryview, source: str) -> tuple[dict, int]:
    """Check and return (header dict, offset of the data buffer)."""
    if len(data) < 8:
        raise CheckpointError(f"{source}: truncated file ({len(data)} bytes, a header needs 8)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{source}: header length {header_len} exceeds {MAX_HEADER_BYTES}")
    if 8 + header_len > len(data):
        raise CheckpointError(f"{source}: header length {header_len} runs past the end of the "
                              f"file ({len(data)} bytes): the file is truncated or not safetensors")
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
        raise CheckpointError(f"{source}: tensor {name!r}: shape {shape} of {dtype_name} needs "
                              f"{nbytes} bytes but data_offsets {offsets} span "
                              f"{offsets[1] - offsets[0]}")
    return dtype, shape, offsets[0], offsets[1]


def parse_safetensors(data: bytes | bytearray | memoryview,
                      source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Decode a whole safetensors file held in memory into CPU tensors (copies)."""
    data = memoryview(data)
    header, start = _parse_header(data, source)
    buffer_len = len(data) - start
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise CheckpointError(f"{source}: __metadata__ must map strings to strings")
    entries = {name: _check_entry(name, entry, source) for name, entry in header.items()}
    # The tensors must tile the data buffer: in range, no overlaps, no holes.
    end = 0
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != end:
            what = ("overlaps the previous tensor" if begin < end
                    else f"leaves bytes {end}..{begin} unused")
            raise CheckpointError(f"{source}: tensor {name!r} at data_offsets [{begin}, {stop}] "
                                  f"{what}")
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


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` in safetensors format, atomically."""
    atomic_write(path, encode_safetensors(tensors, metadata or {"format": "pt"}))
