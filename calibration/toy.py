"""A small differentiable toy detector used by the tests (and ``--forward toy``) while no simulator is needed.

A toy "track" is a row (x0, y0, z0, ux, uy, uz, dEdx, length): a straight line starting at (x0, y0) with
drift distance z0 [cm].  ``N_POINTS`` hits are produced along it; the physics parameters act much as in the
real simulator: Birks quenching (Ab, kb, eField, lArDensity), drift velocity (vdrift or linked eField),
electron lifetime, longitudinal and transverse diffusion (widening the pulse and lowering the peak ADC).
Output: a ``ToyHits`` with event = track (unit) index, continuous x, y, t, adc, and optional Gaussian-pulse
waveforms for the ``mse`` loss.  Every output is a smooth function of every parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

N_POINTS = 8
N_TICKS = 48


@dataclass
class ToyWaveforms:
    pixel_table: torch.Tensor   # [U, 4] (event, plane, ix, iy)
    start_tick: torch.Tensor    # [U]
    charge: torch.Tensor        # [U, W]


@dataclass
class ToyHits:
    event: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    adc: torch.Tensor
    waveforms: Optional[ToyWaveforms] = None

    def __len__(self):
        return int(self.adc.shape[0])


def make_toy_tracks(n_tracks: int, seed: int = 0, dtype=torch.float64, device="cpu") -> torch.Tensor:
    rng = np.random.default_rng(seed)
    start = np.stack([rng.uniform(-20, 20, n_tracks), rng.uniform(-20, 20, n_tracks), rng.uniform(2, 25, n_tracks)], 1)
    direction = rng.normal(size=(n_tracks, 3))
    direction[:, 2] *= 0.5
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    dedx = rng.uniform(1.8, 8.0, n_tracks)
    length = rng.uniform(3.0, 10.0, n_tracks)
    rows = np.concatenate([start, direction, dedx[:, None], length[:, None]], 1)
    return torch.as_tensor(rows, dtype=dtype, device=device)


def toy_forward(params, tracks: torch.Tensor, noise: bool = False, seed: Optional[int] = None,
                waveforms: bool = False) -> ToyHits:
    """Simulate ``tracks`` [K, 8] with ``params`` (a :class:`sparsetpc.params.Params`)."""
    k = tracks.shape[0]
    dtype = params.Ab.dtype
    tracks = tracks.to(dtype)
    s = torch.linspace(0.0, 1.0, N_POINTS, dtype=dtype, device=tracks.device)
    start, direction, dedx, length = tracks[:, :3], tracks[:, 3:6], tracks[:, 6], tracks[:, 7]
    pos = start[:, None, :] + (s[None, :, None] * length[:, None, None]) * direction[:, None, :]   # [K, P, 3]
    drift = pos[..., 2].abs() + 0.5                                                                 # cm
    v = params.drift_velocity()
    t = drift / v                                                                                   # µs
    recomb = params.Ab / (1.0 + params.kb * dedx / (params.eField * params.lArDensity))             # Birks-like
    charge = (recomb * dedx)[:, None] * 1.0e2 * torch.exp(-t / params.lifetime)
    sigma_t = torch.sqrt(2.0 * params.long_diff * t * 1.0e4 + 0.05) / v * 0.3                       # µs (toy scale)
    sigma_xy = torch.sqrt(2.0 * params.tran_diff * t * 1.0e4 + 0.05)
    adc = charge / (sigma_t * sigma_xy) * 3.0 + 10.0
    t_hit = t + 1.5 * sigma_t                                                                       # threshold shift
    x = pos[..., 0] + 0.1 * sigma_xy
    y = pos[..., 1]
    event = torch.arange(k, device=tracks.device)[:, None].expand(k, N_POINTS)
    if noise:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else int(seed))
        adc = adc + torch.randn(adc.shape, generator=gen, dtype=dtype).to(adc.device) * 0.5
    wf = None
    if waveforms:
        ticks = torch.arange(N_TICKS, dtype=dtype, device=tracks.device) * 5.0                     # 5 µs per toy tick
        pulse = torch.exp(-0.5 * ((ticks[None, None, :] - t[..., None]) / (sigma_t[..., None] * 10.0)) ** 2)
        wf_charge = (charge[..., None] * pulse).reshape(k * N_POINTS, N_TICKS)
        table = torch.stack([event.reshape(-1), torch.zeros(k * N_POINTS, dtype=torch.long, device=tracks.device),
                             torch.arange(N_POINTS, device=tracks.device).repeat(k),
                             torch.zeros(k * N_POINTS, dtype=torch.long, device=tracks.device)], 1)
        wf = ToyWaveforms(table, torch.zeros(k * N_POINTS, dtype=torch.long, device=tracks.device), wf_charge)
    return ToyHits(event.reshape(-1), x.reshape(-1), y.reshape(-1), t_hit.reshape(-1), adc.reshape(-1), wf)


class ToyForward:
    """``forward(params, tracks, noise=False, seed=None)`` wrapper (optionally with waveforms)."""

    def __init__(self, waveforms: bool = False):
        self.waveforms = waveforms

    def __call__(self, params, tracks, noise: bool = False, seed: Optional[int] = None) -> ToyHits:
        return toy_forward(params, tracks, noise=noise, seed=seed, waveforms=self.waveforms)

    def describe(self) -> dict:
        return {"forward": "toy", "waveforms": self.waveforms}
