"""CUDA graphs for inference: capture the encoder's forward once per input shape, then replay it.

A small model on a GPU spends its time launching kernels rather than running them: a MiniLM
forward is a few hundred kernels of a few microseconds each, and the host's cost of launching
each one sets the pace (on an H200 a bf16 forward took as long at 1,024 tokens as at 2,048).
A CUDA graph records the kernels of one call and replays them all with one launch
(``torch.cuda.CUDAGraph``; ``torch.compile(mode="reduce-overhead")`` does the same under the
hood). Three prices, each visible here:

- **Fixed shapes.** A graph replays the shapes it recorded, so there is one graph per
  (batch, seq) shape. Pad batches to a few bucket lengths first
  (``minift.data.batches.pad_to_bucket``), or every new length records a new graph.
- **Fixed addresses.** A graph reads its inputs from the tensors it was recorded with, so each
  call copies its batch into those static buffers, and its output is overwritten by the next
  replay (``__call__`` hands back a copy).
- **No host synchronisation while recording.** The fast model's own forward asks the host
  whether a batch has padding and where its tokens are (``minift.fast.unpad``); recording
  forbids that. So what is recorded is the textbook forward, ``BertModel.forward``, which reads
  no tensor on the host: the padded path, with whatever modules ``speed_up`` swapped in.

The model's numbers do not change: the replayed outputs are the eager forward's.
"""

from __future__ import annotations

import torch

from minift.core.model import BertModel, BertOutput

WARMUP_CALLS = 3  # eager calls on a side stream before recording, as torch's CUDA-graph notes ask


class GraphedEncoder:
    """``model``'s inference forward, one CUDA graph per input shape (and autocast setting).

    ``model``: a ``BertModel`` (textbook or fast) on a CUDA device, in eval mode; called as the
    model is. All graphs share one memory pool, so their activations take the memory of one
    forward, not one each.
    """

    def __init__(self, model: BertModel) -> None:
        if not isinstance(model, BertModel):
            raise ValueError(f"expected a minift BertModel, found {type(model).__name__}")
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, found it on "
                             f"{device}: a CPU launches no kernels to save (model.to('cuda'))")
        if model.training:
            raise ValueError("expected the model in eval mode (model.eval()): a graph would "
                             "replay the dropout masks it recorded")
        self.model = model
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], BertOutput]] = {}
        self.pool = None  # the memory pool all the graphs share, from the first one

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> BertOutput:
        """The model's output for this batch, from the graph of its shape (recorded if new)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        inputs = [input_ids, attention_mask, token_type_ids]
        autocast = (torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda")
                    else None)
        key = (tuple(input_ids.shape), autocast)
        with torch.inference_mode():
            if key not in self.graphs:
                # autocast's cache of cast weights lives outside the graph and is freed when the
                # caller's autocast ends: record the casts into the graph instead
                with torch.autocast("cuda", dtype=autocast, enabled=autocast is not None,
                                    cache_enabled=False):
                    self.graphs[key] = self._record(inputs)
            graph, static, output = self.graphs[key]
            for buffer, value in zip(static, inputs, strict=True):
                buffer.copy_(value)
            graph.replay()
            pooled = output.pooler_output
            return BertOutput(last_hidden_state=output.last_hidden_state.clone(),
                              pooler_output=None if pooled is None else pooled.clone())

    def _record(self, inputs: list[torch.Tensor]) -> tuple:
        """Warm up on a side stream (first calls allocate and choose kernels), then record the
        textbook forward over the model's own modules on static copies of ``inputs``."""
        static = [t.clone() for t in inputs]
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                BertModel.forward(self.model, *static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = BertModel.forward(self.model, *static)
        if self.pool is None:
            self.pool = graph.pool()
        return graph, static, output
