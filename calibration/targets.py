"""Fit targets: simulated once for a closure test (and cached on disk), or read from a hits file.

Closure test: target values are uniform in the ``RANGES`` interval of each fitted parameter (seeded), or
given explicitly; the target hits are the forward model at those values, simulated once per batch under
``no_grad`` and cached in ``DIR/targets/`` keyed by a hash of everything they depend on.

File targets: an HDF5 file with a ``hits`` dataset of ``sparsetpc.hits.HIT_DTYPE`` (event_id, x, y, t,
adc...), as written by ``sparsetpc simulate``.  Batches must then be whole events (``group="event"``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ._io import atomic_path
from .forward import call_forward


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def detach_tree(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: detach_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    return obj


@dataclass
class CloudHits:
    """Minimal Hits-like object (event, x, y, t, adc) for targets read from files."""

    event: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    adc: torch.Tensor
    waveforms: Any = None

    def __len__(self):
        return int(self.adc.shape[0])


def _hash(meta: Mapping) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def simulate_targets(forward, paramset, batches: Sequence, target_values: Mapping[str, float], *, dtype, device,
                     noise: bool = False, seed: int = 0, fixed: Optional[Mapping[str, float]] = None,
                     cache_dir: Optional[str] = None, cache_meta: Optional[Mapping] = None,
                     tag: str = "") -> List[Any]:
    """Target outputs (detached) for every batch; read from / written to ``cache_dir`` when given."""
    meta = {"targets": {k: float(v) for k, v in target_values.items()}, "noise": bool(noise), "seed": int(seed),
            "fixed": dict(fixed or {}), "link": paramset.link_vdrift_efield, "dtype": str(dtype),
            "batches": [b.keys for b in batches], **dict(cache_meta or {})}
    key = _hash(meta)
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, f"targets{tag}_{key}.pt")
        if os.path.exists(path):
            return torch.load(path, map_location=device, weights_only=False)
    base = paramset.base_params(dtype=dtype, device=device, fixed=fixed)
    params = base.replace(**{k: float(v) for k, v in target_values.items()})
    outs = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if batch.n_units == 0:            # an empty shard (more ranks than units in this batch)
                outs.append(None)
                continue
            out = call_forward(forward, params, batch.data, noise=noise, seed=derive_seed(seed, 1, i))
            outs.append(detach_tree(out))
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save(outs, tmp)
    return outs


def load_target_file(path, dtype=torch.float64, device="cpu") -> dict:
    """event_id -> CloudHits read from an HDF5 ``hits`` dataset."""
    import h5py
    with h5py.File(path, "r") as f:
        if "hits" not in f:
            raise ValueError(f"{path}: no `hits` dataset (found {list(f.keys())})")
        rows = f["hits"][()]
    out = {}
    for ev in np.unique(rows["event_id"]):
        r = rows[rows["event_id"] == ev]
        col = lambda name: torch.as_tensor(np.asarray(r[name], dtype=np.float64), dtype=dtype, device=device)
        out[int(ev)] = CloudHits(torch.zeros(len(r), dtype=torch.long, device=device), col("x"), col("y"), col("t"), col("adc"))
    return out


def targets_from_file(path, batches: Sequence, dtype=torch.float64, device="cpu") -> List[CloudHits]:
    """One CloudHits per batch, events relabelled to unit indices (batches must be grouped by event)."""
    per_event = load_target_file(path, dtype, device)
    outs = []
    for batch in batches:
        parts = []
        for unit, (ev, trk) in enumerate(batch.keys):
            if trk != -1:
                raise ValueError("targets from a file need batches of whole events (group='event')")
            if ev in per_event:
                h = per_event[ev]
                parts.append(dataclasses.replace(h, event=torch.full_like(h.event, unit)))
        if parts:
            outs.append(CloudHits(*[torch.cat([getattr(p, f) for p in parts]) for f in ("event", "x", "y", "t", "adc")]))
        else:
            z = torch.zeros(0, dtype=dtype, device=device)
            outs.append(CloudHits(torch.zeros(0, dtype=torch.long, device=device), z, z, z, z))
    return outs
