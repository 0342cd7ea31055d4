"""Data-parallel fitting with ``torch.distributed``.

Launch with ``torchrun --nproc_per_node N -m calibration fit ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).  Backend: gloo on CPU, nccl on CUDA.  Every mini-batch is
sharded across ranks by units (tracks, round robin); each rank computes the mean loss over its units; the
gradients are combined as Σ_r n_r·g_r / Σ_r n_r (an average weighted by unit count), which equals the
gradient of the unsharded batch mean.  All ranks then take the same optimiser step; only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch):
        return batch.shard(self.rank, self.world) if self.enabled else batch

    def reduce_grads(self, leaves: Sequence[torch.Tensor], loss: torch.Tensor, n_local: int):
        """Unit-weighted average of gradients and loss over ranks (in place on ``.grad``); returns the loss."""
        if not self.enabled:
            return loss.detach()
        import torch.distributed as dist
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
        flat = torch.stack([g.reshape(()) for g in grads] + [loss.detach().reshape(()).to(grads[0].dtype)])
        weight = torch.tensor(float(n_local), dtype=flat.dtype, device=flat.device)
        flat = flat * weight
        packed = torch.cat([flat, weight.reshape(1)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        total = packed[-1]
        averaged = packed[:-1] / total
        for leaf, value in zip(leaves, averaged[:-1]):
            if leaf.grad is None:
                leaf.grad = value.clone().reshape(leaf.shape)
            else:
                leaf.grad.copy_(value.reshape(leaf.shape))
        return averaged[-1]

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self):
        if self.initialised_here:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.initialised_here = False


def default_backend(device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device="cpu", backend: Optional[str] = None) -> DistContext:
    """Join the process group described by the torchrun environment; single process when WORLD_SIZE ≤ 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), False)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend or default_backend(device))
    return DistContext(dist.get_rank(), dist.get_world_size(), True)
