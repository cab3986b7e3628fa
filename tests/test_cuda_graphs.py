"""Tests of minift/fast/cuda_graphs.py that run on a CPU: what ``GraphedEncoder`` refuses, and
that the forward it records reads no tensor on the host (recording a CUDA graph forbids it) and
gives the fast model's numbers. Its replays on a GPU are held to the eager forward in
tests/test_cuda.py."""

import pytest
import torch
from hypothesis import given, settings
from test_model import tiny_setups
from torch.utils._python_dispatch import TorchDispatchMode

from minift.core.model import BertConfig, BertModel
from minift.fast.cuda_graphs import GraphedEncoder
from minift.fast.unpad import speed_up

# Ops that hand a tensor's value to the host, each a wait for the GPU: ``bool(t)`` runs
# ``is_nonzero``, ``.item()`` ``_local_scalar_dense``; ``nonzero``'s output shape is a value.
# (``.tolist()`` reads the memory without an op, so a dispatcher mode cannot see it.)
HOST_READS = {"aten::is_nonzero", "aten::_local_scalar_dense", "aten::item", "aten::nonzero"}


class HostReads(TorchDispatchMode):
    """Records the ops of ``HOST_READS`` that run inside it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in HOST_READS:
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def tiny_model(**extra) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=24,
                                max_position_embeddings=32, **extra))


def test_graphed_encoder_refuses_a_cpu_model_a_training_model_and_other_modules():
    """On a CPU it refuses, saying that CUDA graphs need a CUDA device and naming the device
    found; a model in training mode and a module that is not a BertModel are refused too."""
    with pytest.raises(ValueError, match="need the model on a CUDA device, found it on cpu"):
        GraphedEncoder(tiny_model().eval())
    with pytest.raises(ValueError, match="minift BertModel, found Linear"):
        GraphedEncoder(torch.nn.Linear(2, 2))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="eval mode"):
            GraphedEncoder(tiny_model().cuda().train())


@settings(deadline=None, max_examples=15)
@given(setup=tiny_setups())
def test_the_recorded_forward_reads_nothing_on_the_host_and_gives_the_fast_numbers(setup):
    """What ``GraphedEncoder`` records, the textbook ``BertModel.forward`` over the fast modules,
    calls no op that reads a tensor on the host (the fast model's own forward asks whether the
    batch has padding, which is why it is not what is recorded), and its real positions, and its pooler where position
    0 is a token, equal the fast model's forward (fp32, atol 1e-5)."""
    config, input_ids, mask, token_type_ids, seed = setup
    torch.manual_seed(seed)
    model = speed_up(BertModel(BertConfig(**config))).eval()
    with torch.inference_mode():
        with HostReads() as recorded:
            out = BertModel.forward(model, input_ids, mask, token_type_ids)
        want = model(input_ids, mask, token_type_ids)
        with HostReads() as control:  # the detector sees a host read where there is one
            bool(mask.all())
    assert recorded.seen == [] and control.seen == ["aten::is_nonzero"]
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], want.last_hidden_state[real],
                               atol=1e-5, rtol=0)
    first = mask[:, 0].bool()  # the pooler reads position 0: the same where it is a token
    torch.testing.assert_close(out.pooler_output[first], want.pooler_output[first], atol=1e-5,
                               rtol=0)
