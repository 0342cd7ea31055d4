"""Atomic fit checkpoints.

A checkpoint (``checkpoint.pt``, written with ``torch.save`` to a temporary file then ``os.replace``) holds
everything the next iteration depends on: the internal parameter leaves, optimiser and scheduler state, the
RNG states of torch (CPU and CUDA), numpy and Python's ``random``, the iteration count, accumulated wall time
and the history.  Restoring it and continuing reproduces the uninterrupted trajectory bit for bit on CPU.

``meta["definition"]`` records what defines the fit (input file path, size and SHA-256; target file hash or
closure seed and target values; track selection; parameters, fixed values and initial values; loss; noise
switches; dtype...; see ``calibration.cli.fit_definition``).  A resume whose definition differs is refused
(:class:`CheckpointMismatchError`, naming what differs) unless forced.  ``wall_time_s`` is the wall time the
fit had spent up to the checkpoint: a resumed fit continues its ``max_wall_s`` budget from there.
"""
from __future__ import annotations

import hashlib
import os
import random
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from sparsetpc.exceptions import SparseTPCError

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


class CheckpointError(SparseTPCError, ValueError):
    """A checkpoint cannot be read (corrupt, truncated, not a calibration checkpoint)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was written by a fit with another definition (input, targets, parameters, loss...)."""


_REQUIRED = ("iteration", "leaves", "optimizer", "scheduler", "rng", "history", "wall_time_s", "meta")


def load_checkpoint(path) -> Dict[str, Any]:
    """The checkpoint's payload; :class:`CheckpointError` naming the file when it is unreadable or corrupt."""
    # our own file: it contains numpy RNG state and Python objects, so weights_only must be off
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:             # torch raises RuntimeError, EOFError, UnpicklingError... on a bad file
        reason = " ".join(str(error).split()) or type(error).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason[:200]}); delete it to start "
                              "afresh") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a calibration checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: corrupt checkpoint: lacks {', '.join(missing)}")
    return payload


# ---------------------------------------------------------------------------------------------- fit definition
def file_digest(path, chunk: int = 1 << 20) -> Dict[str, Any]:
    """Absolute path, size [bytes] and SHA-256 of a file's bytes (what identifies an input file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def _flatten(obj, prefix: str = "") -> Dict[str, Any]:
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        if not obj:
            out[prefix.rstrip(".")] = {}
        return out
    if isinstance(obj, tuple):
        obj = list(obj)
    return {prefix.rstrip("."): obj}


def definition_differences(saved: Mapping, current: Mapping) -> List[str]:
    """``key (checkpoint X, now Y)`` for every dotted key whose value differs between two fit definitions."""
    a, b = _flatten(saved), _flatten(current)
    short = lambda v: (repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "...")
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key} (checkpoint {short(a.get(key, '<absent>'))}, now {short(b.get(key, '<absent>'))})")
    return out


def check_definition(path, payload: Mapping, definition: Optional[Mapping], force: bool = False) -> List[str]:
    """Refuse (:class:`CheckpointMismatchError`) to resume ``payload`` under another fit ``definition``.

    Returns the differences (empty when equal); with ``force`` they are returned instead of raised.  A
    checkpoint that records no definition (older format) cannot be checked and is refused unless forced.
    """
    if definition is None:
        return []
    saved = (payload.get("meta") or {}).get("definition")
    if saved is None:
        diffs = ["the checkpoint records no fit definition (written by an older version)"]
    else:
        diffs = definition_differences(saved, definition)
    if diffs and not force:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise CheckpointMismatchError(f"{path} was written by a different fit: {shown}; use --resume-force to "
                                      "resume it anyway, or another --out")
    return diffs


def checkpoint_path(out_dir) -> str:
    return os.path.join(os.fspath(out_dir), CHECKPOINT_NAME)
