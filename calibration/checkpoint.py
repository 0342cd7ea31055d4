"""Atomic fit checkpoints.

A checkpoint (``checkpoint.pt``, written with ``torch.save`` to a temporary file then ``os.replace``) holds
everything the next iteration depends on: the internal parameter leaves, optimiser and scheduler state, the
RNG states of torch (CPU and CUDA), numpy and Python's ``random``, the iteration count, accumulated wall time
and the history.  Restoring it and continuing reproduces the uninterrupted trajectory bit for bit on CPU.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

from ._io import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "sparsetpc-calibration-checkpoint/1"


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, *, iteration: int, leaves, optimizer, scheduler, history, wall_time_s: float,
                    meta: Optional[dict] = None) -> None:
    payload = {
        "format": FORMAT,
        "iteration": int(iteration),
        "leaves": [leaf.detach().cpu().clone() for leaf in leaves],
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": rng_state(),
        "history": history.to_dict(),
        "wall_time_s": float(wall_time_s),
        "meta": meta or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path) -> Dict[str, Any]:
    # our own file: it contains numpy RNG state and Python objects, so weights_only must be off
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a calibration checkpoint (format {payload.get('format')!r})")
    return payload


def checkpoint_path(out_dir) -> str:
    return os.path.join(os.fspath(out_dir), CHECKPOINT_NAME)
