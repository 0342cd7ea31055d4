"""Squared error between sparse waveforms on the union of their (pixel, tick) keys; no assignment step.

A key absent from one side counts as zero charge there.  Keys are integer rows (e.g. event, plane, ix, iy,
tick); values are the induced charge per tick.

The sum of squared differences is divided by a quantity of the **target alone** (its number of keys and its
RMS), never by the size of the union: the simulator's tick windows (and so the guess's key set) move with the
parameters, and a union-size denominator turns every window shift into a step of the loss.  Those steps stalled
six-parameter closure fits (docs/calibration.md, "the stall of seeds 1 and 4").
"""
from __future__ import annotations

from typing import Optional

import torch


def union_difference(keys_out: torch.Tensor, values_out: torch.Tensor, keys_target: torch.Tensor,
                     values_target: torch.Tensor) -> torch.Tensor:
    """out − target on the union of the keys [U] (duplicate keys summed; a key absent from one side is 0 there)."""
    union, inverse = torch.unique(torch.cat([keys_out, keys_target], dim=0), dim=0, return_inverse=True)
    diff = torch.zeros(union.shape[0], dtype=values_out.dtype, device=values_out.device)
    n_out = keys_out.shape[0]
    diff = diff.index_add(0, inverse[:n_out], values_out)
    return diff.index_add(0, inverse[n_out:], -values_target.to(values_out.dtype))


def waveform_mse(keys_out: torch.Tensor, values_out: torch.Tensor, keys_target: torch.Tensor,
                 values_target: torch.Tensor, scale: Optional[float] = None) -> torch.Tensor:
    """Σ over the union of keys of ((out − target)/scale)², divided by the number of target keys.

    ``keys_*`` [N, K] int64 (duplicate keys are summed); ``values_*`` [N] float.  ``scale`` defaults to the
    RMS of the target values, so the default is the relative squared error Σ(out − target)² / Σ target²
    (0 at the target, 1 for an empty guess).  A target with no keys or all-zero values uses scale 1 and
    divides by max(number of target keys, 1).  The value depends on the guess only through its values: adding
    keys with zero charge to the guess does not change it.
    """
    if keys_out.shape[0] + keys_target.shape[0] == 0:
        return values_out.sum() * 0.0
    diff = union_difference(keys_out, values_out, keys_target, values_target)
    n_target = max(int(keys_target.shape[0]), 1)
    if scale is None:
        rms = values_target.detach().pow(2).mean().sqrt() if values_target.numel() else torch.tensor(0.0)
        scale = float(rms) if float(rms) > 0 else 1.0
    return (diff / scale).pow(2).sum() / n_target


def waveform_keys(waveforms) -> tuple:
    """Flatten a ``Waveforms`` object (pixel_table [U,4], start_tick [U], charge [U,W]) to (keys [U·W,5], values)."""
    table = waveforms.pixel_table.to(torch.int64)
    charge = waveforms.charge
    u, w = charge.shape
    ticks = waveforms.start_tick.to(torch.int64)[:, None] + torch.arange(w, device=charge.device)[None, :]
    keys = torch.cat([table[:, None, :].expand(u, w, table.shape[1]), ticks[..., None]], dim=-1)
    return keys.reshape(u * w, table.shape[1] + 1), charge.reshape(u * w)
