"""Sharding scoring work across processes (`accelerate launch` or `torchrun`).

Every rank loads the base and measures the (cheap) baselines itself; the units of
each phase are dealt round-robin to the ranks; rank 0 gathers the measurements and
writes the same JSON a single process writes. Choices every rank must share (the anchor
layer, hybrid's exact units) are rank 0's (`decide`). Ranks talk over nccl with `--device
cuda`, else over gloo (also under `--device auto` on GPUs: the objects exchanged are small);
each GPU rank computes on its own device (LOCAL_RANK).
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Sequence, TypeVar

import torch

T = TypeVar("T")


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> None:
    """Join the process group when started by a launcher (no-op otherwise)."""
    import torch.distributed as dist

    if not launched() or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_device(device: str) -> str:
    """cuda -> cuda:LOCAL_RANK under a launcher, so ranks do not share a GPU."""
    if launched() and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if launched() and device.startswith("cuda:") and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"warning: every process computes on {device} (--device names one GPU); give --device cuda to put "
              "each process on its own GPU (cuda:LOCAL_RANK)", file=sys.stderr)
    return device


def shard(items: Sequence[T]) -> List[T]:
    return list(items[rank()::world()])


def gather(obj: Any) -> List[Any]:
    """Every rank's `obj`, in rank order, on rank 0 (others get [])."""
    import torch.distributed as dist

    if world() == 1:
        return [obj]
    out = [None] * world() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def decide(obj: Any) -> Any:
    """Rank 0's `obj` on every rank: choices each rank could compute itself (the anchor layer,
    hybrid's exact units) but must agree on, or `shard` deals different lists and a unit is
    measured twice or never. GPU kernels need not be bitwise deterministic across ranks."""
    import torch.distributed as dist

    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    if world() > 1:
        dist.barrier()
