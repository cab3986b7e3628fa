"""Tensors compared byte for byte (NaN payloads included): what the checkpoint tests
(test_safetensors, test_checkpoint) call the same."""

import torch


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
