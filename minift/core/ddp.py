"""Data parallelism on PyTorch's own engine: torchrun starts the processes, DDP syncs gradients.

`torchrun --nproc_per_node=N -m minift finetune ...` starts N copies of the same command and
tells each which one it is through environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). This module is the little that minift adds on top:

- `setup` joins the process group they announce; without them everything runs as one process.
- `shard` splits the data. Every rank builds the same global batches (same seed, same order)
  and keeps rows `rank, rank + N, ...` of each, as `DistributedSampler` does, one batch at a
  time: N processes with a global batch of B take the steps of one process with batch B, and
  the batch count, data position and resume stay identical on every rank.
- `all_sum`, `broadcast` and `gather`: the collectives the loop needs besides DDP's gradient
  all-reduce (the summed loss, rank 0's evaluation, every rank's RNG state).

The training loop (`minift.core.loop`) does not import this file: the caller hands it the
`Context` that `setup` returns (`train(..., parallel=setup(device.type))`), whose methods are the
loop's one door to the other ranks. A script that calls `train` under torchrun should end with
`teardown()`. A rank that raises exits, and torchrun stops the others; outside torchrun the
process-group timeout (`MINIFT_DIST_TIMEOUT`, seconds, default 600) bounds the wait in a
collective.
"""

import contextlib
import datetime
import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world_size` processes (one process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank on this machine: which GPU it drives

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs, shows progress and writes files."""
        return self.rank == 0

    # What the training loop calls (its default, `minift.core.loop.OneProcess`, has the same).
    def shard(self, batch: Mapping[str, object]) -> dict[str, object]:
        """This rank's rows of a global batch (`shard` below)."""
        return shard(batch, self)

    def wrap(self, model: nn.Module, device: torch.device):
        """The module the loop calls and its `no_sync`: under several ranks, DDP around `model`
        (it copies rank 0's weights to every rank, then all-reduces the gradients)."""
        if not self.enabled:
            return model, contextlib.nullcontext
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        return ddp, ddp.no_sync

    def all_sum(self, values: Tensor) -> Tensor:
        """`all_sum` below: the element-wise sum over the ranks."""
        return all_sum(values)

    def broadcast(self, obj: object) -> object:
        """`broadcast` below: rank 0's `obj` on every rank."""
        return broadcast(obj)


def launched() -> bool:
    """True when torchrun (or a launcher setting the same variables) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context() -> Context:
    """This process's rank and world size (0 of 1 unless a process group is running)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0")))
    return Context()


def setup(device_type: str = "cpu") -> Context:
    """Join the process group torchrun announced (gloo for CPU, NCCL for CUDA, each process on
    the GPU of its LOCAL_RANK); idempotent, and nothing without several ranks."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return context()
    missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for distributed training but "
                         f"the environment lacks {', '.join(missing)}; launch with torchrun "
                         "--nproc_per_node=N")
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = datetime.timedelta(seconds=float(os.environ.get("MINIFT_DIST_TIMEOUT", "600")))
    dist.init_process_group(backend=backend, timeout=timeout)
    return context()


def teardown(clean: bool = True) -> None:
    """Leave the process group (a no-op when there is none).

    A finished `DistributedDataParallel` wrapper can outlive `train` in a reference cycle and
    keeps the process group alive; were it freed only at interpreter exit, gloo's threads would
    be torn down then and abort the process now and then. So: collect it first. With `clean`
    (the run succeeded), wait for every rank before closing the connections, so no rank closes
    them while another still finishes its last collective; after an error, leave at once.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """The device this rank uses: a bare "cuda" becomes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(batch: Mapping[str, object], ctx: Context) -> dict[str, object]:
    """This rank's rows of a global batch: rows `rank, rank + world_size, ...` of every tensor,
    and of every list with one entry per row (a batch's host-counted `lengths`).

    Tensors whose first dimension is not the batch's, and anything else, pass through whole. A
    rank can get zero rows (a last batch smaller than the world); the loop handles that.
    """
    sizes = [v.shape[0] for v in batch.values() if isinstance(v, Tensor) and v.ndim > 0]
    if not ctx.enabled or not sizes:
        return dict(batch)
    size = sizes[0]
    return {key: value[ctx.rank :: ctx.world_size]
            if (isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == size)
            or (isinstance(value, list) and len(value) == size) else value
            for key, value in batch.items()}


def all_sum(values: Tensor) -> Tensor:
    """The element-wise sum of `values` over all ranks (the tensor itself with one process)."""
    if context().enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast(obj: object, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (any picklable object; `obj` itself with one process)."""
    if not context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` with one process)."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
