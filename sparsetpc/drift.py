"""Drift of ionisation electrons to the anode (physics.md §2.2).

Pure functions of positions and parameters.  The induction stage evaluates them for every charge sample along
a segment (so a long, steep segment is attenuated and diffused according to each point's own drift distance);
:func:`drift_segments` gives the per-segment values at the midpoint, as larnd-sim's ``drift`` does.

Conventions: the pad response model starts ``response_offset`` = 0.5 cm from the anode, so the drift time is
t_d = (|z − z_anode| − 0.5)/v, while the diffusion acts over the full drift, σ = √(2·D·|z − z_anode|/v).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .detector import Detector
from .params import Params

#: σ floor [cm] used where a drift distance is zero: keeps √ differentiable (no √0) at masked points.
_SIGMA_FLOOR = 1e-9


def assign_planes(midpoints: torch.Tensor, detector: Detector) -> torch.Tensor:
    """Pixel plane of each segment midpoint [N, 3]; −1 outside every drift volume (such segments carry no charge)."""
    borders = torch.as_tensor(detector.tpc_borders, dtype=midpoints.dtype, device=midpoints.device)
    tol = detector.plane_tolerance
    lo = torch.minimum(borders[:, :, 0], borders[:, :, 1]) - tol          # [P, 3]
    hi = torch.maximum(borders[:, :, 0], borders[:, :, 1]) + tol
    inside = ((midpoints[:, None, :] >= lo[None]) & (midpoints[:, None, :] <= hi[None])).all(dim=2)   # [N, P]
    first = torch.argmax(inside.to(torch.int8), dim=1)
    return torch.where(inside.any(dim=1), first, torch.full_like(first, -1))


def anode_z(planes: torch.Tensor, detector: Detector, dtype=torch.float64) -> torch.Tensor:
    """z of the anode of each plane index (0 for plane −1)."""
    anodes = torch.as_tensor(detector.tpc_borders[:, 2, 0], dtype=dtype, device=planes.device)
    return torch.where(planes >= 0, anodes[planes.clamp(min=0)], torch.zeros((), dtype=dtype, device=planes.device))


def drift_distance(z: torch.Tensor, z_anode: torch.Tensor) -> torch.Tensor:
    """Distance [cm] from the anode plane."""
    return torch.abs(z - z_anode)


def drift_time(distance: torch.Tensor, velocity: torch.Tensor, response_offset: float = 0.5) -> torch.Tensor:
    """Drift time [µs] until the charge reaches the start of the pad-response region."""
    return (distance - response_offset) / velocity


def attenuation(drift_time_us: torch.Tensor, params: Params) -> torch.Tensor:
    """Fraction of electrons surviving attachment over a drift time [µs]: exp(−t/τ)."""
    return torch.exp(-drift_time_us / params.lifetime)


def diffusion_sigma(distance: torch.Tensor, velocity: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """Diffusion width [cm] after drifting ``distance`` [cm]: √(2·D·distance/v), D in cm²/µs.

    Distances ≤ 0 give a floor instead of √0 so that the derivative stays finite.
    """
    variance = 2.0 * coefficient * distance / velocity
    return torch.sqrt(torch.clamp(variance, min=_SIGMA_FLOOR ** 2))


@dataclass
class DriftResult:
    """Per-segment drift values at the segment midpoint.

    ``plane`` (−1 outside), ``valid`` bool, ``z_anode`` cm, ``drift_time`` µs (to the response region),
    ``n_electrons`` after attachment, ``sigma_transverse``/``sigma_longitudinal`` cm, ``t_start``/``t_end`` µs
    (arrival times of the segment's two ends at the response region).
    """

    plane: torch.Tensor
    valid: torch.Tensor
    z_anode: torch.Tensor
    drift_time: torch.Tensor
    n_electrons: torch.Tensor
    sigma_transverse: torch.Tensor
    sigma_longitudinal: torch.Tensor
    t_start: torch.Tensor
    t_end: torch.Tensor


def drift_segments(start: torch.Tensor, end: torch.Tensor, n_electrons: torch.Tensor, params: Params,
                   detector: Detector, time_offset=None) -> DriftResult:
    """Drift every segment (midpoint values).  Segments outside every volume get ``valid = False``,
    zero charge and finite (floored) widths, so gradients stay finite."""
    midpoint = 0.5 * (start + end)
    plane = assign_planes(midpoint.detach(), detector)
    valid = plane >= 0
    z_a = anode_z(plane, detector, dtype=start.dtype)
    velocity = params.drift_velocity()
    offset = detector.response_offset
    distance = torch.where(valid, drift_distance(midpoint[:, 2], z_a), torch.full_like(z_a, offset))
    t_drift = drift_time(distance, velocity, offset)
    electrons = torch.where(valid, n_electrons * attenuation(t_drift, params), torch.zeros_like(n_electrons))
    sigma_t = diffusion_sigma(distance, velocity, params.tran_diff)
    sigma_l = diffusion_sigma(distance, velocity, params.long_diff)
    d_start = torch.where(valid, drift_distance(start[:, 2], z_a), distance)
    d_end = torch.where(valid, drift_distance(end[:, 2], z_a), distance)
    t0 = torch.zeros_like(distance) if time_offset is None else time_offset
    t_a = drift_time(torch.minimum(d_start, d_end), velocity, offset) + t0
    t_b = drift_time(torch.maximum(d_start, d_end), velocity, offset) + t0
    return DriftResult(plane=plane, valid=valid, z_anode=z_a, drift_time=t_drift, n_electrons=electrons,
                       sigma_transverse=sigma_t, sigma_longitudinal=sigma_l, t_start=t_a, t_end=t_b)


class Drift(nn.Module):
    """Thin module wrapper of :func:`drift_segments`."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, start, end, n_electrons, params: Params) -> DriftResult:
        return drift_segments(start, end, n_electrons, params, self.detector)
