"""minift's safetensors (core/safetensors.py writes, hf/safetensors.py reads) against the
reference package: bytes either way, fuzzing (a damaged file gives a CheckpointError or tensors
consistent with its header, nothing else), named bad inputs; a failed write keeps the previous
file; and a run's final save (a classifier and its tokenizer, the files a finished ``minift
finetune`` leaves) under a disk that fills at seeded points: every file is the old one or the
new one, and the folder loads.

Tensors are compared byte for byte (NaN payloads included). The HF key map and folders are
tested in test_checkpoint.py; ``atomic_write`` alone in test_files.py.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from bitwise import assert_same_dict, raw
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import minift.core.files as files_module
from minift.core.model import BertConfig
from minift.data.tokenizer import Tokenizer
from minift.hf.safetensors import (
    CheckpointError,
    encode_safetensors,
    parse_safetensors,
    read_safetensors,
    write_safetensors,
)
from minift.tasks.classify import SequenceClassifier

# The safetensors dtype names, written out here rather than taken from minift.
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


# --------------------------------------------------------------------------------------------
# 1. Against the reference package
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
    # Multiplying 1000 numbers of 4000 digits each one by one takes about a minute: the parser
    # must stop at the first dim that overflows torch's int64 (that error, not the byte count's).
    shape = [int("9" * 4000)] * 1000
    data = with_header({"z": {"dtype": "U8", "shape": shape, "data_offsets": [0, 0]}}, b"")
    with pytest.raises(CheckpointError, match="'z': shape of 1000 dims is too large for torch"):
        parse_safetensors(data)


def test_parse_reads_only_its_view():
    valid = with_header({"a": A, "b": B}, BUFFER)
    view = memoryview(valid + b"bytes beyond the view")[: len(valid)]
    assert_same_dict(parse_safetensors(view), parse_safetensors(valid))


# --------------------------------------------------------------------------------------------
# 3. A failed write keeps the previous file
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
# 4. A disk that fills during a run's final save
# --------------------------------------------------------------------------------------------


class _FillingDisk:
    """``minift.hf.safetensors``' ``os``, whose files accept ``budget`` bytes in all, then ENOSPC."""

    def __init__(self, budget: float):
        self.budget, self.used = budget, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        disk, f = self, os.fdopen(fd, *args, **kwargs)

        class Limited:
            def write(self, data):
                room = disk.budget - disk.used
                if len(data) > room:
                    f.write(data[: int(max(room, 0))])
                    disk.used = disk.budget
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.used += len(data)
                return f.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def __getattr__(self, name):
                return getattr(f, name)

        return Limited()


def test_a_full_disk_during_the_final_save_leaves_a_folder_that_loads(tmp_path, minilm_dir,
                                                                      monkeypatch):
    tokenizer = Tokenizer.from_pretrained(minilm_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=16, max_position_embeddings=32)
    torch.manual_seed(0)
    old, new = SequenceClassifier(config, 2), SequenceClassifier(config, 2)

    def save(model, folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    reference = tmp_path / "reference"
    save(new, reference)
    files = {p.name: p.read_bytes() for p in reference.iterdir()}
    total = sum(len(data) for data in files.values())
    rng = random.Random(5)
    budgets = [0, *sorted(rng.randrange(1, total) for _ in range(11))]
    for i, budget in enumerate(budgets):
        folder = tmp_path / f"run{i}"
        save(old, folder)
        previous = {p.name: p.read_bytes() for p in folder.iterdir()}
        with monkeypatch.context() as patch:
            patch.setattr(files_module, "os", _FillingDisk(budget))
            with pytest.raises(OSError) as error:
                save(new, folder)
        assert error.value.errno == errno.ENOSPC
        now = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert set(now) == set(previous), f"budget {budget}: {sorted(now)}"  # no temporary file
        for name, data in now.items():  # each file whole: the old one or the new one
            assert data in (previous[name], files[name]), f"budget {budget}: {name} is partial"
        SequenceClassifier.from_pretrained(folder)  # the folder loads
        Tokenizer.from_pretrained(folder)
