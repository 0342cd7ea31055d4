"""Sparse segment → pixel association (COO pairs), physics.md §2.3 done without dense broadcasts.

A (segment, pixel) pair exists where the segment's projection on the anode plane comes within ``margin`` of
the pad (margin = n_sigma · transverse diffusion width at the segment's far end): those are exactly the pads
that can receive charge.  The true geometric extent start → end decides the pixels (not ``dx``; see
docs/deviations.md).  Work and memory are O(pixels crossed), never O(N·P·U).

This stage is integer-valued and not differentiable (as in every LArTPC simulator); it runs under no_grad.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .detector import Detector


@dataclass
class Pairs:
    """COO list of (segment, pixel) pairs.

    ``segment`` [M] row into the segments; ``plane``, ``ix``, ``iy`` [M] pixel; ``u_start``/``u_end`` [M] cm along
    the segment (from its start) of the part whose projection lies within the margin of the pad;
    ``center`` [M, 2] pad centre (x, y) cm.
    """

    segment: torch.Tensor
    plane: torch.Tensor
    ix: torch.Tensor
    iy: torch.Tensor
    u_start: torch.Tensor
    u_end: torch.Tensor
    center: torch.Tensor

    def __len__(self) -> int:
        return int(self.segment.shape[0])


def clip_to_rectangles(origin: torch.Tensor, direction: torch.Tensor, length: torch.Tensor,
                       lower: torch.Tensor, upper: torch.Tensor):
    """Parameter interval [u0, u1] ⊂ [0, length] of the 2-D lines origin + u·direction inside the
    rectangles [lower, upper] (Liang–Barsky).  All tensors [M, 2] except length [M].  Empty → u1 < u0."""
    u0 = torch.zeros_like(length)
    u1 = length.clone()
    for axis in range(2):
        d = direction[:, axis]
        o = origin[:, axis]
        moving = d.abs() > 1e-12
        safe = torch.where(moving, d, torch.ones_like(d))
        a = (lower[:, axis] - o) / safe
        b = (upper[:, axis] - o) / safe
        lo = torch.where(moving, torch.minimum(a, b), torch.full_like(a, -math.inf))
        hi = torch.where(moving, torch.maximum(a, b), torch.full_like(a, math.inf))
        inside = (o >= lower[:, axis]) & (o <= upper[:, axis])
        lo = torch.where(moving | inside, lo, torch.full_like(lo, math.inf))
        hi = torch.where(moving | inside, hi, torch.full_like(hi, -math.inf))
        u0 = torch.maximum(u0, lo)
        u1 = torch.minimum(u1, hi)
    return u0, u1


@torch.no_grad()
def associate(start: torch.Tensor, end: torch.Tensor, plane: torch.Tensor, margin: torch.Tensor,
              detector: Detector) -> Pairs:
    """(segment, pixel) pairs for segments with ``plane`` ≥ 0.

    ``start``/``end`` [N, 3] cm, ``margin`` [N] cm.  Pads outside the instrumented plane are not returned.
    """
    device, dtype = start.device, start.dtype
    pitch = detector.pixel_pitch
    nx, ny = detector.n_pixels
    valid = torch.nonzero(plane >= 0).flatten()
    if valid.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        zf = torch.zeros(0, dtype=dtype, device=device)
        return Pairs(empty, empty, empty, empty, zf, zf, torch.zeros(0, 2, dtype=dtype, device=device))
    p0 = start[valid, :2]
    p1 = end[valid, :2]
    seg_plane = plane[valid]
    origin_xy = torch.as_tensor(detector.tpc_borders[:, :2, 0], dtype=dtype, device=device)[seg_plane]   # [V, 2]
    seg_margin = margin[valid]
    # walk the projection in steps of at most half a pitch and take the (2R+1)² pads around each step
    step = pitch / 2
    length_xy = torch.linalg.norm(p1 - p0, dim=1)
    n_points = (torch.ceil(length_xy / step) + 1).long()
    radius = int(math.ceil((float(seg_margin.max()) + step / 2) / pitch))
    owner = torch.repeat_interleave(torch.arange(len(valid), device=device), n_points)
    first = torch.cumsum(n_points, 0) - n_points
    local = torch.arange(owner.numel(), device=device) - first[owner]
    frac = local.to(dtype) / (n_points[owner] - 1).clamp(min=1).to(dtype)
    points = p0[owner] + frac[:, None] * (p1 - p0)[owner]
    cell = torch.floor((points - origin_xy[owner]) / pitch).long()
    offsets = torch.arange(-radius, radius + 1, device=device)
    ox, oy = torch.meshgrid(offsets, offsets, indexing="ij")
    cand_ix = (cell[:, 0:1] + ox.reshape(1, -1)).reshape(-1)
    cand_iy = (cell[:, 1:2] + oy.reshape(1, -1)).reshape(-1)
    cand_seg = owner.repeat_interleave(offsets.numel() ** 2)
    inside = (cand_ix >= 0) & (cand_ix < nx) & (cand_iy >= 0) & (cand_iy < ny)
    key = (cand_seg[inside] * nx + cand_ix[inside]) * ny + cand_iy[inside]
    key = torch.unique(key)
    pair_local = key // (nx * ny)
    ix = (key // ny) % nx
    iy = key % ny
    # exact test: does the segment come within the margin of the pad rectangle?
    seg_rows = valid[pair_local]
    s3 = start[seg_rows]
    e3 = end[seg_rows]
    length = torch.linalg.norm(e3 - s3, dim=1)
    direction = (e3 - s3)[:, :2] / torch.where(length > 0, length, torch.ones_like(length))[:, None]
    centre = origin_xy[pair_local] + (torch.stack([ix, iy], 1).to(dtype) + 0.5) * pitch
    half = pitch / 2 + seg_margin[pair_local]
    u0, u1 = clip_to_rectangles(s3[:, :2], direction, length, centre - half[:, None], centre + half[:, None])
    keep = u1 > u0
    point_like = (length == 0) & (u1 >= u0)     # zero-length segment sitting inside the widened pad
    keep = keep | point_like
    return Pairs(segment=seg_rows[keep], plane=seg_plane[pair_local][keep], ix=ix[keep], iy=iy[keep],
                 u_start=u0[keep], u_end=u1[keep], center=centre[keep])
