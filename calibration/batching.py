"""Mini-batches of tracks.

A *unit* is one track, grouped by (eventID, trackID), or one whole event (``group="event"``, needed when
the target hits come from a file, which cannot be split by track).  Inside a batch each unit is relabelled as
its own event 0..n−1, so the simulator treats tracks of the same event independently and the loss is a mean
over units; that is what makes data-parallel sharding (units split across ranks) exact.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass
class Batch:
    """``data`` is what the forward model consumes (``Segments`` or a toy track tensor)."""

    data: Any
    keys: List[Tuple[int, int]]          # (eventID, trackID) per unit; trackID = -1 for whole events
    kind: str                            # "segments" or "rows"
    unit_of_row: Optional[np.ndarray] = None   # for segments: unit index of every segment

    @property
    def n_units(self) -> int:
        return len(self.keys)

    def select_units(self, units: Sequence[int]) -> "Batch":
        units = list(units)
        if self.kind == "rows":
            idx = torch.as_tensor(units, dtype=torch.long, device=self.data.device)
            return Batch(self.data[idx], [self.keys[u] for u in units], "rows")
        mask = np.isin(self.unit_of_row, np.asarray(units, dtype=np.int64))
        sub = self.data.select(mask)
        old = self.unit_of_row[mask]
        remap = {u: i for i, u in enumerate(units)}
        new_units = np.asarray([remap[int(u)] for u in old], dtype=np.int64)
        sub = dataclasses.replace(sub, event_id=torch.as_tensor(new_units, device=sub.event_id.device))
        return Batch(sub, [self.keys[u] for u in units], "segments", new_units)

    def shard(self, rank: int, world: int) -> "Batch":
        """Units rank, rank+world, ... (round robin)."""
        return self.select_units(list(range(rank, self.n_units, world)))


def unit_keys(segments, group: str = "track") -> np.ndarray:
    ev = segments.event_id.cpu().numpy().astype(np.int64)
    if group == "event":
        return np.stack([ev, np.full_like(ev, -1)], 1)
    if group != "track":
        raise ValueError(f"group must be 'track' or 'event', got {group!r}")
    return np.stack([ev, segments.track_id.cpu().numpy().astype(np.int64)], 1)


def segment_batches(segments, ntracks: Optional[int] = None, tracks_per_batch: Optional[int] = None,
                    seed: Optional[int] = None, group: str = "track") -> List[Batch]:
    """Split ``segments`` into batches of ``tracks_per_batch`` units (default: all selected units in one batch).

    ``ntracks``: keep only this many units — the first ones in (eventID, trackID) order, or a random sample
    when ``seed`` is given.
    """
    keys = unit_keys(segments, group)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    chosen = np.arange(len(uniq))
    if ntracks is not None and 0 < ntracks < len(uniq):
        if seed is None:
            chosen = chosen[:ntracks]
        else:
            chosen = np.sort(np.random.default_rng(seed).choice(len(uniq), size=ntracks, replace=False))
    per = len(chosen) if not tracks_per_batch or tracks_per_batch <= 0 else int(tracks_per_batch)
    batches = []
    for start in range(0, len(chosen), per):
        units = chosen[start:start + per]
        mask = np.isin(inverse, units)
        sub = segments.select(mask)
        remap = np.full(len(uniq), -1, dtype=np.int64)
        remap[units] = np.arange(len(units))
        new_units = remap[inverse[mask]]
        sub = dataclasses.replace(sub, event_id=torch.as_tensor(new_units, device=sub.event_id.device))
        batches.append(Batch(sub, [tuple(int(v) for v in uniq[u]) for u in units], "segments", new_units))
    return batches


def row_batches(rows: torch.Tensor, tracks_per_batch: Optional[int] = None) -> List[Batch]:
    """Batches of a [K, F] tensor whose rows are units (the toy model)."""
    k = rows.shape[0]
    per = k if not tracks_per_batch or tracks_per_batch <= 0 else int(tracks_per_batch)
    return [Batch(rows[s:s + per], [(s + i, 0) for i in range(min(per, k - s))], "rows") for s in range(0, k, per)]
