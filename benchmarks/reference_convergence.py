#!/usr/bin/env python
"""Parity study: is the residual between sparsetpc and the differentiable reference model discretisation?

The differentiable reference (larnd-sim ``detsim_ep``, commit c936a2a; physics.md §2.2-2.7) evaluates the
charge of every (segment, pixel) pair on a dense box of 30 x 30 x N_z samples with a hard pad mask.  This
script re-implements that box quadrature independently (float64 torch, vectorised, chunked) with a refinement
factor ``f``:

* 30·f samples along x and along y (x_i = x(z_min) + sign(d_x)·(i·Δx_s − 4σ_T), Δx_s = (|Δx| + 8σ_T)/(30f − 1));
* z step 0.05/f with a floor of 30·f samples (z_steps = max(30f, |Δz_int|/(0.05/f) + 1); the samples sit at
  frac(z_steps) + k, k < ⌊z_steps⌋, as the reference's ``diff_arange`` places them);
* everything else as the reference: Birks quench, drift with midpoint values (n_e·exp(−t_d/τ), σ_T, σ_L),
  impact tolerance I = 2·max(5√2·σ_T, p/√2), ``z_interval``, ``track_point``, closed-form ρ, the masks
  (z_poca ≠ 0, |x_p − x| < p/2, |y_p − y| < p/2), t₀ = (|z − z_a| − 0.5)/v, the current model
  (A, b, c, Δt₀ quadratics; truncated exponential) evaluated at the segment's own ticks t_lo + 0.1·k
  (k < T, T the event-wide maximum) and deposited at global tick round(t_lo/0.1) + k;
* the pixel list is the reference's own (``pixel_ids``); each segment feeds only the pixels of its own
  neighbour list (DDA active pixels expanded by ±2), as the reference does;
* float32 where the reference is float32: TPC borders (drift, t₀) and pixel centres (the reference multiplies
  an integer pixel index by the pitch, which torch evaluates in float32: a ~1e-6 cm shift that moves a sample
  across the hard pad edge now and then; with it f = 1 reproduces all four cases to ≤ 3e-11 ADC, without it
  to ≤ 7e-4 ADC).

f = 1 is the reference itself (must reproduce the stored ADC); f = 2, 4, 8 converge to the continuum limit of
the reference's physics.  The relaxed front end (sparsetpc.electronics.reference_readout, the reference's
algorithm) turns the waveforms into ADC/time per readout.  The same rows are simulated by sparsetpc
(``reference_time_axis=True``) and both are compared, per pixel (total induced charge) and per readout.

Time response, two evaluations (``box_waveforms(method=...)``; ``--sigmoid-max-f`` sets where sigmoid also runs):
* ``sigmoid``: brute force over (sample, tick) with the reference's relaxed step
  σ(100y)·exp(−max(y, −10))/s, y = (t₀' − t)/s — exact reproduction of the reference;
* ``step``: the hard truncated exponential exp(−y)/s·[y > 0], summed exactly along each z column with a
  backward recurrence (O(N_z + T) per column instead of O(N_z·T)).  Used for large f; the difference from
  ``sigmoid`` is reported where both run (default: sigmoid for f ≤ 2, step for all f).

Continuum (f → ∞) of the same physics, integrated directly (``continuum_waveforms``): midpoints along the
segment, Gauss-Legendre across it on the pad, exact Gaussian smearing along the drift (exponentially modified
Gaussian).  Two switches separate discretisation from physics: ``shape`` cloud (pad response per landing point
of the charge, the reference) / centre (at the track point, sparsetpc) and ``drift`` midpoint (the reference)
/ point (sparsetpc).  centre/point reproduces sparsetpc; box f → ∞ converges onto cloud/midpoint.

Usage:  PYTHONPATH=. python benchmarks/reference_convergence.py [--cases test_segment mixed_trk0]
        [--factors 1 2 4 8] [--sigmoid-max-f 2] [--no-continuum] [--out benchmarks/results/reference_convergence.json]
Default run: ≈ 2 min and 0.6 GB peak on 2 cores.  Numbers and conclusions: docs/parity.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# ----------------------------------------------------------------------------------------------- constants
PITCH = 0.4434
N_PIXELS = (140, 280)
_BORDERS64 = np.array([[[-31.039, 31.039], [-83.8626, 40.2154], [-30.431, -0.15875]],
                       [[-31.039, 31.039], [-83.8626, 40.2154], [30.431, 0.15875]]])
#: the reference stores its TPC borders as float32 tensors (drift, pixel coordinates)
BORDERS = _BORDERS64.astype(np.float32).astype(np.float64)
NOMINAL = dict(vdrift=0.1587, lifetime=2200.0, long_diff=4.0e-6, tran_diff=8.8e-6, Ab=0.8, kb=0.0486,
               eField=0.5, MeVToElectrons=4.237e4, lArDensity=1.38)
T_SAMPLING = 0.1          # µs
TIME_PADDING = 5.0        # µs
TIME_INTERVAL = (0.0, 200.0)
SAMPLED_POINTS = 30
Z_SAMPLING = T_SAMPLING / 2.0   # the reference's z step (a µs constant used as cm)
E_PER_ADC = (1300.0 - 288.0) / 256.0 / 4.0e-3   # ≈ 988.3 e⁻ per ADC count
#: relaxed digitize(0) = (V_PED − V_CM)·256/(V_REF − V_CM) + 0.5 (the npz's ``adc_pedestal`` is its float32 rounding)
PEDESTAL = (580.0 - 288.0) * 256.0 / (1300.0 - 288.0) + 0.5
CASES = ("test_segment", "mixed_trk0", "mixed_trk1", "mixed_trk4")

# pad response quadratics (c0, c1·x, c2·y, c3·xy, c4·x², c5·y²), physics.md §2.5
_RESP = {"A": (1.060, -0.909, -0.909, 5.856, 0.207, 0.207),
         "b": (0.679, -1.083, -1.083, 8.772, -5.521, -5.521),
         "c": (2.644, -9.174, -9.174, 13.483, 45.887, 45.887),
         "dt0": (2.948, -2.705, -2.705, 4.825, 20.814, 20.814)}


def _quad(c, x, y):
    return c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x * x + c[5] * y * y


def shared_data_dir() -> Path:
    env = os.environ.get("SPARSETPC_SHARED_DATA")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data"


def load_case(name: str, data_dir: Path | None = None) -> dict:
    data_dir = data_dir or shared_data_dir()
    d = np.load(data_dir / "reference" / f"{name}_fwd.npz", allow_pickle=True)
    return dict(name=name, rows=np.asarray(d["input_segments"], dtype=np.float64),
                fields=[str(f) for f in d["input_fields"]], pixel_ids=np.asarray(d["pixel_ids"]).astype(np.int64),
                adc=np.asarray(d["adc"], dtype=np.float64), ticks=np.asarray(d["ticks"], dtype=np.float64),
                pedestal=PEDESTAL, pedestal_stored=float(d["adc_pedestal"]))


# ----------------------------------------------------------------------------------------------- per segment
def quench_drift(rows: np.ndarray, fields: list, p: dict = NOMINAL) -> dict:
    """Birks quench and midpoint drift of the reference (drifting_ep.drift), float64 with float32 borders."""
    col = lambda n: torch.as_tensor(rows[:, fields.index(n)], dtype=torch.float64)
    dEdx, dE = col("dEdx"), col("dE")
    n_q = p["Ab"] / (1.0 + p["kb"] * dEdx / (p["eField"] * p["lArDensity"])) * dE * p["MeVToElectrons"]
    b = torch.as_tensor(BORDERS)
    xm, ym, zm = col("x"), col("y"), col("z")
    zlo = torch.minimum(b[:, 2, 1], b[:, 2, 0]) - 2e-2
    zhi = torch.maximum(b[:, 2, 1], b[:, 2, 0]) + 2e-2
    inside = ((xm[:, None] >= b[None, :, 0, 0] - 2e-2) & (xm[:, None] <= b[None, :, 0, 1] + 2e-2)
              & (ym[:, None] >= b[None, :, 1, 0] - 2e-2) & (ym[:, None] <= b[None, :, 1, 1] + 2e-2)
              & (zm[:, None] >= zlo[None]) & (zm[:, None] <= zhi[None]))
    plane = inside.to(torch.int64).argmax(dim=1)
    mask = inside.any(dim=1).to(torch.float64)
    z_a = b[plane, 2, 0]
    v = p["vdrift"]
    d = (zm - z_a).abs() - 0.5
    d_s = (torch.minimum(col("z_start"), col("z_end")) - z_a).abs() - 0.5
    d_e = (torch.maximum(col("z_start"), col("z_end")) - z_a).abs() - 0.5
    t_d = d / v
    n_e = n_q * torch.exp(-t_d / p["lifetime"]) * mask
    sig_l = torch.sqrt((t_d + 0.5 / v) * 2 * p["long_diff"] * mask)
    sig_t = torch.sqrt((t_d + 0.5 / v) * 2 * p["tran_diff"] * mask)
    t_start = col("t_start") + torch.minimum(d_s, d_e) / v * mask
    t_end = col("t_end") + torch.maximum(d_s, d_e) / v * mask
    start = torch.stack([col("x_start"), col("y_start"), col("z_start")], 1)
    end = torch.stack([col("x_end"), col("y_end"), col("z_end")], 1)
    # time_intervals: per-segment window start and the event-wide number of ticks
    t_hi = torch.clamp(t_end + TIME_PADDING + 0.5 / v, max=TIME_INTERVAL[1])
    t_lo = torch.clamp(t_start - TIME_PADDING, min=TIME_INTERVAL[0])
    n_ticks = int(torch.max((t_hi - t_lo) / T_SAMPLING + 1).item())
    return dict(n_quench=n_q, n_e=n_e, plane=plane, z_anode=z_a, sig_t=sig_t, sig_l=sig_l, t_start=t_start,
                t_end=t_end, start=start, end=end, t_lo=t_lo, n_ticks=n_ticks, dx=col("dx"), v=v)


def neighbour_lists(seg: dict) -> list:
    """Per segment, the set of pixel ids (ix + 140·plane, iy) of its DDA active pixels expanded by ±R
    (pixels_from_track_ep.get_pixels)."""
    b = BORDERS
    plane = seg["plane"].numpy()
    x0, y0 = b[plane, 0, 0], b[plane, 1, 0]
    st, en = seg["start"].numpy(), seg["end"].numpy()
    sx = np.floor((st[:, 0] - x0) / PITCH) + N_PIXELS[0] * plane
    sy = np.floor((st[:, 1] - y0) / PITCH)
    ex = np.floor((en[:, 0] - x0) / PITCH) + N_PIXELS[0] * plane
    ey = np.floor((en[:, 1] - y0) / PITCH)
    longest = math.ceil(float(seg["dx"].max()) / PITCH)
    max_active = int(longest * 1.5)
    radius = math.ceil(float(seg["sig_t"].max()) * 5 / PITCH) + 1
    out = []
    for n in range(len(plane)):
        dxy = np.array([ex[n] - sx[n], ey[n] - sy[n]])
        scale = np.abs(dxy).max()
        slope = dxy / (scale + 1e-12)
        pix = set()
        for k in range(max_active):
            if k > scale:
                break
            px = int(sx[n] + slope[0] * k + 0.5)
            py = int(sy[n] + slope[1] * k + 0.5)
            for i in range(-radius, radius + 1):
                for j in range(-radius, radius + 1):
                    pix.add((px + i, py + j))
        out.append(pix)
    return out


def reference_pairs(seg: dict, pixel_ids: np.ndarray, use_lists: bool = True):
    """(segment, pixel row) pairs: every segment with every pixel of ``pixel_ids`` in its neighbour list."""
    lists = neighbour_lists(seg) if use_lists else None
    rows = {(int(a), int(b)): i for i, (a, b) in enumerate(pixel_ids)}
    pairs = []
    covered = set()
    for n in range(len(seg["plane"])):
        for i, key in enumerate(map(tuple, pixel_ids.tolist())):
            if lists is None or key in lists[n]:
                pairs.append((n, i))
                covered.add(key)
    union = set().union(*lists) if lists else set(rows)
    union = {k for k in union if k[0] >= 0 and k[1] >= 0 and k[0] < 2 * N_PIXELS[0]}
    agree = union == set(rows)
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), agree


# ----------------------------------------------------------------------------------------------- box per pair
def pair_geometry(seg: dict, n: int, pix: tuple, pixel_centre_f32: bool = False):
    """z_interval, track_point and steps of tracks_current for one (segment, pixel) pair (python floats)."""
    s0, e0 = seg["start"][n].tolist(), seg["end"][n].tolist()
    if s0[2] < e0[2]:
        start, end = s0, e0
    else:
        start, end = e0, s0
    segv = [end[i] - start[i] for i in range(3)]
    norm_end = math.sqrt(sum(v * v for v in end))         # the reference's ‖end‖ (only ratios/signs matter)
    direction = [v / norm_end for v in segv]
    st, sl = float(seg["sig_t"][n]), float(seg["sig_l"][n])
    tol = max(math.sqrt((5 * st) ** 2 + (5 * st) ** 2), math.sqrt(PITCH ** 2 + PITCH ** 2) / 2) * 2
    ix, iy = pix
    plane_p = ix // N_PIXELS[0]
    if pixel_centre_f32:
        f32 = np.float32
        xp = float(f32(f32(ix - N_PIXELS[0] * plane_p) * f32(PITCH) + f32(BORDERS[plane_p, 0, 0])) + f32(PITCH / 2))
        yp = float(f32(f32(iy) * f32(PITCH) + f32(BORDERS[plane_p, 1, 0])) + f32(PITCH / 2))
    else:
        xp = (ix - N_PIXELS[0] * plane_p) * PITCH + BORDERS[plane_p, 0, 0] + PITCH / 2
        yp = iy * PITCH + BORDERS[plane_p, 1, 0] + PITCH / 2
    # z_interval (ordered by x inside)
    eps = 1e-12
    if start[0] < end[0]:
        a_, b_ = start, end
    else:
        a_, b_ = end, start
    xs, ys, xe, ye = a_[0], a_[1], b_[0], b_[1]
    m = (ye - ys) / (xe - xs + eps)
    q = (xe * ys - xs * ye) / (xe - xs + eps)
    x_poca = (-1 * (-1 * xp - m * yp) - m * q) / (m * m + 1)
    doca = abs(m * xp - yp + q) / math.sqrt(m * m + 1)
    vec = [b_[i] - a_[i] for i in range(3)]
    l3 = math.sqrt(sum(v * v for v in vec))
    d3 = [v / l3 for v in vec]
    if x_poca > xe:
        doca = math.sqrt((xp - xe) ** 2 + (yp - ye) ** 2)
        x_poca = xe
    if x_poca < xs:
        doca = math.sqrt((xp - xs) ** 2 + (yp - ys) ** 2)
        x_poca = xs
    z_poca = a_[2] + (x_poca - xs) / d3[0] * d3[2]
    l2 = math.sqrt(vec[0] ** 2 + vec[1] ** 2)
    d2x = vec[0] / l2
    dl = math.sqrt(abs(tol * tol - doca * doca))
    xpl, xmi = x_poca + dl * d2x, x_poca - dl * d2x
    zpl = a_[2] + d3[2] * ((xpl - xs) / d3[0])
    zmi = a_[2] + d3[2] * ((xmi - xs) / d3[0])
    if not tol > doca:
        return None
    z_min, z_max = min(zmi, zpl), max(zmi, zpl)
    if z_poca == 0:
        return None
    # track_point at z_min, z_max (from the z-ordered start)
    lmin = (z_min - start[2]) / direction[2]
    lmax = (z_max - start[2]) / direction[2]
    x_a, y_a = start[0] + lmin * direction[0], start[1] + lmin * direction[1]
    x_b, y_b = start[0] + lmax * direction[0], start[1] + lmax * direction[1]
    return dict(start=start, segv=segv, xp=xp, yp=yp, z_int=(z_min - 4 * sl, z_max + 4 * sl), x_a=x_a, y_a=y_a,
                dx_span=abs(x_b - x_a), dy_span=abs(y_b - y_a), sx=math.copysign(1.0, direction[0]) if direction[0] != 0 else 0.0,
                sy=math.copysign(1.0, direction[1]) if direction[1] != 0 else 0.0, st=st, sl=sl)


def box_columns(seg: dict, n: int, g: dict, f: int, q_floor: float = 1e-9, chunk_elems: int = 2_000_000):
    """Charge samples of one pair at refinement f, grouped in z columns.

    Returns dict: q [C, Nz] electrons, t0 [Nz] µs (arrival time of each z sample), shape params A, b, c, dt0 [C]
    (C = (x, y) sample columns inside the pad with any charge ≥ q_floor), or None.
    """
    npts = SAMPLED_POINTS * f
    st, sl = g["st"], g["sl"]
    x_step = (g["dx_span"] + 8 * st) / (npts - 1)
    y_step = (g["dy_span"] + 8 * st) / (npts - 1)
    idx = torch.arange(npts, dtype=torch.float64)
    x = g["x_a"] + g["sx"] * (idx * x_step - 4 * st)
    y = g["y_a"] + g["sy"] * (idx * y_step - 4 * st)
    xd, yd = (g["xp"] - x).abs(), (g["yp"] - y).abs()
    xin, yin = xd < PITCH / 2, yd < PITCH / 2
    if not bool(xin.any()) or not bool(yin.any()):
        return None
    x, xd, y, yd = x[xin], xd[xin], y[yin], yd[yin]
    z_lo, z_hi = g["z_int"]
    zs = Z_SAMPLING / f
    z_steps = max(float(npts), abs(z_hi - z_lo) / zs + 1.0)
    nz = int(z_steps)
    z_step = (z_hi - z_lo) / (z_steps - 1)
    iz = (z_steps - nz) + torch.arange(nz, dtype=torch.float64)     # diff_arange: frac(z_steps) + k
    z = z_lo + iz * z_step
    # rho, closed form (detsim_ep.rho)
    sx_, sy_, sz_ = st, st, sl
    start, segv = g["start"], g["segv"]
    L = math.sqrt(sum(v * v for v in segv))
    dxr, dyr, dzr = segv[0] / L, segv[1] / L, segv[2] / L
    a = dxr * dxr / (2 * sx_ ** 2) + dyr * dyr / (2 * sy_ ** 2) + dzr * dzr / (2 * sz_ ** 2)
    factor = float(seg["n_e"][n]) / L / (sx_ * sy_ * sz_ * math.sqrt(8 * math.pi ** 3))
    sa2 = 2 * math.sqrt(a)
    yc, zc = y - start[1], z - start[2]
    by = yc / (sy_ ** 2 / dyr) if dyr != 0 else yc * 0.0
    bz = zc / (sz_ ** 2 / dzr) if dzr != 0 else zc * 0.0
    dyz = (yc ** 2 / (2 * sy_ ** 2))[:, None] + (zc ** 2 / (2 * sz_ ** 2))[None, :]
    byz = by[:, None] + bz[None, :]
    nx, ny = len(x), len(y)
    rows = max(1, chunk_elems // (ny * nz))            # x rows per chunk: memory bounded for any f, N_z
    qs, XDs, YDs = [], [], []
    for lo in range(0, nx, rows):
        hi = min(nx, lo + rows)
        xc = x[lo:hi] - start[0]
        bx = xc / (sx_ ** 2 / dxr) if dxr != 0 else xc * 0.0
        b = -(bx[:, None, None] + byz[None])
        delta = (xc ** 2 / (2 * sx_ ** 2))[:, None, None] + dyz[None]
        integral = math.sqrt(math.pi) * (torch.erf((b + 2 * a * L) / sa2) - torch.erf(b / sa2)) / sa2
        rho = torch.nan_to_num(torch.exp(b * b / (4 * a) - delta) * factor * integral, nan=0.0)
        q = (rho * (abs(x_step) * abs(y_step) * abs(z_step))).reshape((hi - lo) * ny, nz)
        keep = q.max(dim=1).values >= q_floor
        qs.append(q[keep])
        XDs.append(xd[lo:hi, None].expand(hi - lo, ny).reshape(-1)[keep])
        YDs.append(yd[None, :].expand(hi - lo, ny).reshape(-1)[keep])
    q, XD, YD = torch.cat(qs), torch.cat(XDs), torch.cat(YDs)
    if q.shape[0] == 0:
        return None
    t0 = ((z - float(seg["z_anode"][n])).abs() - 0.5) / seg["v"]
    A = torch.clamp(_quad(_RESP["A"], XD, YD), max=1.0)
    return dict(q=q, t0=t0, A=A, b=_quad(_RESP["b"], XD, YD), c=_quad(_RESP["c"], XD, YD),
                dt0=_quad(_RESP["dt0"], XD, YD), z_step=z_step)


def _truncexpon_sigmoid(y, s):
    return torch.sigmoid(100.0 * y) * torch.exp(-torch.clamp(y, min=-10.0)) / s


def current_sigmoid(cols: dict, ticks: torch.Tensor, chunk_elems: int = 4_000_000) -> torch.Tensor:
    """Σ_samples q·I(t) at ``ticks`` [T] (electrons/µs), reference's relaxed truncated exponential, brute force."""
    q, t0 = cols["q"], cols["t0"]
    C, nz = q.shape
    T = ticks.numel()
    out = torch.zeros(T, dtype=torch.float64)
    per = max(1, chunk_elems // (nz * T))
    for lo in range(0, C, per):
        hi = min(C, lo + per)
        tau = (t0[None, :] + cols["dt0"][lo:hi, None])[:, :, None]          # [c, nz, 1]
        tt = ticks[None, None, :]
        b, c, A = (cols[k][lo:hi, None, None] for k in ("b", "c", "A"))
        cur = A * _truncexpon_sigmoid((tau - tt) / b, b) + (1 - A) * _truncexpon_sigmoid((tau - tt) / c, c)
        out += (q[lo:hi, :, None] * cur).sum(dim=(0, 1))
    return out


def current_step(cols: dict, ticks: torch.Tensor, chunk_cols: int = 8192) -> torch.Tensor:
    """Same with the hard truncated exponential exp(−(τ−t)/s)/s·[t < τ], exact via a backward recurrence
    along each z column (τ_k = t0_k + Δt0 is uniformly spaced in k)."""
    q, t0 = cols["q"], cols["t0"]
    if t0.numel() > 1 and bool(t0[-1] < t0[0]):
        q, t0 = q.flip(1), t0.flip(0)
    C, nz = q.shape
    delta = float(t0[1] - t0[0]) if nz > 1 else 1.0
    out = torch.zeros(ticks.numel(), dtype=torch.float64)
    for lo in range(0, C, chunk_cols):
        hi = min(C, lo + chunk_cols)
        qc = q[lo:hi]
        tau0 = t0[0] + cols["dt0"][lo:hi]                                    # [c]
        m = torch.floor((ticks[None, :] - tau0[:, None]) / delta).long() + 1    # first k with τ_k > t
        m = torch.clamp(m, min=0)
        valid = m < nz
        mc = torch.clamp(m, max=nz - 1)
        gap = tau0[:, None] + mc.to(torch.float64) * delta - ticks[None, :]  # τ_m − t > 0
        total = torch.zeros_like(gap)
        for key, weight in (("b", cols["A"][lo:hi]), ("c", 1 - cols["A"][lo:hi])):
            s = cols[key][lo:hi]
            r = torch.exp(-delta / s)
            G = torch.zeros(hi - lo, nz + 1, dtype=torch.float64)
            for k in range(nz - 1, -1, -1):
                G[:, k] = qc[:, k] + r * G[:, k + 1]
            val = torch.exp(-gap / s[:, None]) / s[:, None] * G.gather(1, mc)
            total = total + weight[:, None] * torch.where(valid, val, torch.zeros_like(val))
        out += total.sum(0)
    return out


def box_waveforms(case: dict, f: int, method: str = "step", pixel_centre_f32: bool = True, use_lists: bool = True,
                  seg: dict | None = None):
    """Per-pixel charge waveforms [U, W] (electrons per global 0.1 µs tick, column 0 = global tick 0) of the box
    quadrature at refinement f.  ``pixel_centre_f32``: pixel centres rounded as the reference computes them."""
    seg = seg or quench_drift(case["rows"], case["fields"])
    pairs, agree = reference_pairs(seg, case["pixel_ids"], use_lists)
    T = seg["n_ticks"]
    k = torch.arange(T, dtype=torch.float64)
    first = (seg["t_lo"] / T_SAMPLING + 0.5).to(torch.int64)
    width = int(first.max()) + T + 40
    U = len(case["pixel_ids"])
    wave = torch.zeros(U, width, dtype=torch.float64)
    n_samples = 0
    for n, i in pairs.tolist():
        g = pair_geometry(seg, n, tuple(case["pixel_ids"][i].tolist()), pixel_centre_f32)
        if g is None:
            continue
        cols = box_columns(seg, n, g, f)
        if cols is None:
            continue
        n_samples += cols["q"].numel()
        ticks = seg["t_lo"][n] + k * T_SAMPLING
        cur = current_sigmoid(cols, ticks) if method == "sigmoid" else current_step(cols, ticks)
        g0 = int(first[n])
        wave[i, g0:g0 + T] += cur * T_SAMPLING
    assert bool((wave[:, 0] == 0).all())
    return wave, dict(pairs=len(pairs), pixel_lists_agree=bool(agree), samples=n_samples, T=T)


# ----------------------------------------------------------------------------------------------- continuum
def _emg(t, mu, sigma, scale):
    """E[exp(−(τ−t)/s)/s·[t < τ]] for τ ~ N(μ, σ²) (exponentially modified Gaussian, overflow-safe)."""
    d = t - mu
    w = (d / sigma + sigma / scale) / math.sqrt(2.0)
    g = torch.special.erfcx(torch.clamp(w, min=0.0)) * torch.exp(-0.5 * (d / sigma) ** 2)
    e = torch.exp(torch.clamp(d / scale + 0.5 * (sigma / scale) ** 2, max=0.0)) * torch.special.erfc(torch.clamp(w, max=0.0))
    return torch.where(w >= 0, g, e) / (2.0 * scale)


def _transverse_nodes(pos, centre, sigma, n_gl: int = 8):
    """Nodes/weights [S, 2·n_gl] of N(pos, σ²) restricted to the pad [centre ± p/2] ∩ [pos ± 7σ]: Gauss-Legendre
    on each side of the pad centre (the response depends on |offset|, which has a kink there); weights
    renormalised to the exact erf fraction of the pad."""
    half = PITCH / 2
    lo = torch.maximum(centre - half, pos - 7 * sigma)
    hi = torch.maximum(torch.minimum(centre + half, pos + 7 * sigma), lo)
    gl_x, gl_w = np.polynomial.legendre.leggauss(n_gl)
    gx = torch.as_tensor(gl_x)[None, :]
    gw = torch.as_tensor(gl_w)[None, :]
    xs, ws = [], []
    for a, b in ((lo, torch.minimum(hi, centre)), (torch.maximum(lo, centre), hi)):
        b = torch.maximum(b, a)
        x = 0.5 * (a + b)[:, None] + 0.5 * (b - a)[:, None] * gx
        w = 0.5 * (b - a)[:, None] * gw * torch.exp(-0.5 * ((x - pos[:, None]) / sigma[:, None]) ** 2) / (
            sigma[:, None] * math.sqrt(2 * math.pi))
        xs.append(x)
        ws.append(w)
    x, w = torch.cat(xs, 1), torch.cat(ws, 1)
    pad_lo, pad_hi = centre - half, centre + half
    exact = 0.5 * (torch.erf((pad_hi - pos) / (sigma * math.sqrt(2))) - torch.erf((pad_lo - pos) / (sigma * math.sqrt(2))))
    s = w.sum(1)
    w = torch.where(s[:, None] > 0, w * (exact / torch.where(s > 0, s, torch.ones_like(s)))[:, None], w)
    return x, w


def continuum_waveforms(case: dict, shape: str = "cloud", drift: str = "midpoint", seg: dict | None = None,
                        u_step: float = 0.01, n_gl: int = 8, chunk: int = 4096):
    """Waveforms [U, W] of the reference's continuous physics (f → ∞), integrated directly:
    along the segment (midpoints every ``u_step`` cm), across it (Gauss-Legendre, n_gl nodes per side of the pad centre per axis,
    exact pad fraction), along the drift (exact: the Gaussian-smeared truncated exponential), current
    point-sampled at the segment's reference ticks t_lo + 0.1·k.

    ``shape``: ``cloud`` evaluates the pad response (A, b, c, Δt₀) at each transverse node (the reference:
    every bit of charge responds according to where it lands); ``centre`` at the clamped offset of the track
    point (sparsetpc's approximation before it took the cloud in through its moments, see docs/parity.md).  ``drift``: ``midpoint`` uses the segment midpoint's attenuation and σ
    (the reference); ``point`` each point's own (sparsetpc)."""
    seg = seg or quench_drift(case["rows"], case["fields"])
    pairs, _ = reference_pairs(seg, case["pixel_ids"], True)
    T = seg["n_ticks"]
    kk = torch.arange(T, dtype=torch.float64)
    first = (seg["t_lo"] / T_SAMPLING + 0.5).to(torch.int64)
    width = int(first.max()) + T + 40
    U = len(case["pixel_ids"])
    wave = torch.zeros(U, width, dtype=torch.float64)
    v = seg["v"]
    half = PITCH / 2
    for n, i in pairs.tolist():
        ix, iy = case["pixel_ids"][i].tolist()
        pl = ix // N_PIXELS[0]
        cx = (ix - N_PIXELS[0] * pl) * PITCH + BORDERS[pl, 0, 0] + half
        cy = iy * PITCH + BORDERS[pl, 1, 0] + half
        s0, e0 = seg["start"][n], seg["end"][n]
        L = float(torch.linalg.norm(e0 - s0))
        nu = max(1, math.ceil(L / u_step))
        u = (torch.arange(nu, dtype=torch.float64) + 0.5) * (L / nu)
        p = s0[None, :] + (u / L)[:, None] * (e0 - s0)[None, :]
        z_a = float(seg["z_anode"][n])
        dist = (p[:, 2] - z_a).abs()
        if drift == "midpoint":
            sig_t = torch.full_like(u, float(seg["sig_t"][n]))
            sig_l = torch.full_like(u, float(seg["sig_l"][n]))
            q = torch.full_like(u, float(seg["n_e"][n]) / nu)
        else:
            sig_t = torch.sqrt(2 * NOMINAL["tran_diff"] * dist / v)
            sig_l = torch.sqrt(2 * NOMINAL["long_diff"] * dist / v)
            q = float(seg["n_quench"][n]) / nu * torch.exp(-((dist - 0.5) / v) / NOMINAL["lifetime"])
        near = ((p[:, 0] - cx).abs() < half + 8 * sig_t) & ((p[:, 1] - cy).abs() < half + 8 * sig_t)
        if not bool(near.any()):
            continue
        p, sig_t, sig_l, q, dist = p[near], sig_t[near], sig_l[near], q[near], dist[near]
        mu0 = (dist - 0.5) / v
        ticks = seg["t_lo"][n] + kk * T_SAMPLING
        xs, wx = _transverse_nodes(p[:, 0], torch.full_like(p[:, 0], cx), sig_t, n_gl)
        ys, wy = _transverse_nodes(p[:, 1], torch.full_like(p[:, 1], cy), sig_t, n_gl)
        st_time = sig_l / v
        cur = torch.zeros(T, dtype=torch.float64)
        if shape == "cloud":
            m_gl = xs.shape[1]
            ox = (xs - cx).abs()[:, :, None].expand(-1, -1, m_gl)
            oy = (ys - cy).abs()[:, None, :].expand(-1, m_gl, -1)
            w = (wx[:, :, None] * wy[:, None, :]) * q[:, None, None]
            S = len(q)
            ox, oy, w = ox.reshape(S, -1), oy.reshape(S, -1), w.reshape(S, -1)
            mu = mu0[:, None].expand(-1, m_gl * m_gl)
            stt = st_time[:, None].expand(-1, m_gl * m_gl)
            ox, oy, w, mu, stt = ox.reshape(-1), oy.reshape(-1), w.reshape(-1), mu.reshape(-1), stt.reshape(-1)
        else:
            ox = torch.clamp((p[:, 0] - cx).abs(), max=half)
            oy = torch.clamp((p[:, 1] - cy).abs(), max=half)
            w = wx.sum(1) * wy.sum(1) * q
            mu, stt = mu0, st_time
        keep = w > 1e-12
        ox, oy, w, mu, stt = ox[keep], oy[keep], w[keep], mu[keep], stt[keep]
        A = torch.clamp(_quad(_RESP["A"], ox, oy), max=1.0)
        b, c, dt0 = _quad(_RESP["b"], ox, oy), _quad(_RESP["c"], ox, oy), _quad(_RESP["dt0"], ox, oy)
        for lo in range(0, len(w), chunk):
            hi = min(len(w), lo + chunk)
            m = (mu[lo:hi] + dt0[lo:hi])[:, None]
            sg = stt[lo:hi, None]
            val = A[lo:hi, None] * _emg(ticks[None, :], m, sg, b[lo:hi, None]) + \
                (1 - A[lo:hi, None]) * _emg(ticks[None, :], m, sg, c[lo:hi, None])
            cur += (w[lo:hi, None] * val).sum(0)
        g0 = int(first[n])
        wave[i, g0:g0 + T] += cur * T_SAMPLING
    return wave


# ----------------------------------------------------------------------------------------------- readout
def readout(wave: torch.Tensor, pedestal: float):
    """Relaxed front end -> adc [U,10] (pedestal where none), t [U,10] µs on the 0.1 µs axis (0 where none)."""
    from sparsetpc.electronics import FrontEnd, reference_readout
    adc, crossing, valid = reference_readout(wave, FrontEnd(), None)
    adc = torch.where(valid, adc, torch.full_like(adc, pedestal))
    t = torch.where(valid, crossing * T_SAMPLING, torch.zeros_like(crossing))
    return adc.numpy(), t.numpy(), valid.numpy()


def sparsetpc_run(case: dict, response="analytic"):
    """sparsetpc on the same rows: per-pixel charge [U], adc/t [U,10] on the reference's pixel list, extras.
    ``response``: the analytic pad response or a :class:`~sparsetpc.field_response.ResponseTable`."""
    import sparsetpc as st
    from sparsetpc.segments import SEGMENT_DTYPE
    rows = np.zeros(len(case["rows"]), dtype=SEGMENT_DTYPE)
    for j, name in enumerate(case["fields"]):
        rows[name] = case["rows"][:, j]
    t_start = time.perf_counter()
    hits = st.simulate(st.Segments.from_numpy(rows, swap=False), st.Detector.default(), st.Params.nominal(),
                       options=st.InductionOptions(reference_time_axis=True), return_waveforms=True,
                       mode="reference", response=response)
    elapsed = time.perf_counter() - t_start
    index = {(int(a), int(b)): i for i, (a, b) in enumerate(case["pixel_ids"])}
    U = len(case["pixel_ids"])
    charge = np.zeros(U)
    wf = hits.waveforms
    tot = wf.total_charge().detach().numpy()
    extra_charge = 0.0
    for r, (ev, pl, ix, iy) in enumerate(wf.pixel_table.tolist()):
        key = (ix + N_PIXELS[0] * pl, iy)
        if key in index:
            charge[index[key]] += tot[r]
        else:
            extra_charge += tot[r]
    adc = np.full((U, 10), case["pedestal"])
    t = np.zeros((U, 10))
    valid = np.zeros((U, 10), bool)
    extra_hits = 0
    for pl, ix, iy, ro, a, tt in zip(hits.plane.tolist(), hits.ix.tolist(), hits.iy.tolist(), hits.readout.tolist(),
                                    hits.adc.detach().tolist(), hits.t.detach().tolist()):
        key = (ix + N_PIXELS[0] * pl, iy)
        if key not in index:
            extra_hits += 1
            continue
        adc[index[key], ro], t[index[key], ro], valid[index[key], ro] = a, tt, True
    return dict(charge=charge, adc=adc, t=t, valid=valid, extra_hits=extra_hits, extra_charge=extra_charge,
                seconds=elapsed)


# ----------------------------------------------------------------------------------------------- comparisons
def compare_readouts(adc1, t1, v1, adc2, t2, v2) -> dict:
    """Residuals over readouts present in either (ADC) and in both (time)."""
    either = v1 | v2
    both = v1 & v2
    dadc = np.abs(adc1 - adc2)[either]
    dt = np.abs(t1 - t2)[both]
    return dict(n_either=int(either.sum()), n_both=int(both.sum()), n_only_a=int((v1 & ~v2).sum()),
                n_only_b=int((v2 & ~v1).sum()),
                mean_abs_dadc=float(dadc.mean()) if dadc.size else 0.0, max_abs_dadc=float(dadc.max()) if dadc.size else 0.0,
                rms_dadc=float(np.sqrt((dadc ** 2).mean())) if dadc.size else 0.0,
                mean_abs_dt_us=float(dt.mean()) if dt.size else 0.0, max_abs_dt_us=float(dt.max()) if dt.size else 0.0)


def compare_charge(q1, q2, floor: float = 7000.0) -> dict:
    """Per-pixel total charge residuals (electrons and ADC-equivalent), over pixels where either has ≥ floor e⁻."""
    sel = (q1 >= floor) | (q2 >= floor)
    d = np.abs(q1 - q2)[sel]
    rel = d / np.maximum(np.maximum(q1, q2)[sel], 1.0)
    return dict(n_pixels=int(sel.sum()), mean_abs_dq_e=float(d.mean()) if d.size else 0.0,
                max_abs_dq_e=float(d.max()) if d.size else 0.0,
                rms_dq_e=float(np.sqrt((d ** 2).mean())) if d.size else 0.0,
                mean_abs_dq_adc=float(d.mean() / E_PER_ADC) if d.size else 0.0,
                max_abs_dq_adc=float(d.max() / E_PER_ADC) if d.size else 0.0,
                mean_rel=float(rel.mean()) if rel.size else 0.0, max_rel=float(rel.max()) if rel.size else 0.0)


def _summary(adc, t, valid, charge) -> dict:
    return dict(adc=adc, t=t, valid=valid, charge=charge)


def _cmp(a: dict, b: dict) -> dict:
    """Readout and per-pixel charge residuals between two result dicts (adc, t, valid, charge)."""
    out = compare_readouts(a["adc"], a["t"], a["valid"], b["adc"], b["t"], b["valid"])
    if a.get("charge") is not None and b.get("charge") is not None:
        out["charge"] = compare_charge(a["charge"], b["charge"])
    return out


CONTINUUM_VARIANTS = (("cloud", "midpoint"), ("cloud", "point"), ("centre", "midpoint"), ("centre", "point"))


def run_case(name: str, factors, sigmoid_max_f: int = 2, continuum: bool = True, n_gl: int = 6,
             verbose: bool = True) -> dict:
    """All comparisons for one reference case; returns a JSON-able dict."""
    case = load_case(name)
    seg = quench_drift(case["rows"], case["fields"])
    ref = _summary(case["adc"], case["ticks"] * 6004.0 / 6000.0, case["adc"] > case["pedestal"] + 1e-9, None)
    out = dict(case=name, n_segments=int(len(case["rows"])), n_pixels=int(len(case["pixel_ids"])),
               n_ref_readouts=int(ref["valid"].sum()), T=seg["n_ticks"],
               n_e_quench=seg["n_quench"].tolist(), n_e_drift=seg["n_e"].tolist(), sigma_t=seg["sig_t"].tolist(),
               sigma_l=seg["sig_l"].tolist(), t_start=seg["t_start"].tolist(), pixel_ids=case["pixel_ids"].tolist(),
               reference_adc=case["adc"].tolist(), reference_t_us=ref["t"].tolist(), box={}, continuum={})
    ours = sparsetpc_run(case)
    out["sparsetpc"] = dict(seconds=ours["seconds"], extra_hits_outside_ref_pixels=ours["extra_hits"],
                            charge_outside_ref_pixels_e=ours["extra_charge"], vs_reference=_cmp(ours, ref),
                            pixel_charge_e=ours["charge"].tolist(), adc=ours["adc"].tolist(), t_us=ours["t"].tolist())
    if verbose:
        r = out["sparsetpc"]["vs_reference"]
        print(f"[{name}] S={out['n_segments']} U={out['n_pixels']} T={seg['n_ticks']} ref readouts={out['n_ref_readouts']}"
              f" | sparsetpc vs ref: mean|dADC| {r['mean_abs_dadc']:.3f} max {r['max_abs_dadc']:.3f}"
              f" mean|dt| {r['mean_abs_dt_us']:.4f} max {r['max_abs_dt_us']:.4f} us (only-ours {r['n_only_a']}, only-ref {r['n_only_b']})",
              flush=True)
    cont = {}
    if continuum:
        for shape, drift in CONTINUUM_VARIANTS:
            t0 = time.perf_counter()
            wave = continuum_waveforms(case, shape, drift, seg=seg, n_gl=n_gl)
            adc, t, valid = readout(wave, case["pedestal"])
            cont[(shape, drift)] = _summary(adc, t, valid, wave.sum(1).numpy())
            key = f"{shape}/{drift}"
            out["continuum"][key] = dict(seconds=time.perf_counter() - t0, vs_sparsetpc=_cmp(cont[(shape, drift)], ours),
                                         vs_reference=_cmp(cont[(shape, drift)], ref),
                                         pixel_charge_e=cont[(shape, drift)]["charge"].tolist(), adc=adc.tolist(),
                                         t_us=t.tolist())
            if verbose:
                a, b = out["continuum"][key]["vs_sparsetpc"], out["continuum"][key]["vs_reference"]
                print(f"  continuum {key:16s} ({out['continuum'][key]['seconds']:.0f}s): vs sparsetpc mean|dADC| "
                      f"{a['mean_abs_dadc']:.3f} max {a['max_abs_dadc']:.3f} mean|dt| {a['mean_abs_dt_us']:.4f} max "
                      f"{a['max_abs_dt_us']:.4f}, charge mean {a['charge']['mean_abs_dq_adc']:.3f} max "
                      f"{a['charge']['max_abs_dq_adc']:.3f} ADC-eq | vs ref mean|dADC| {b['mean_abs_dadc']:.3f} max "
                      f"{b['max_abs_dadc']:.3f} mean|dt| {b['mean_abs_dt_us']:.4f}", flush=True)
    exact = cont.get(("cloud", "midpoint"))
    for f in factors:
        methods = ["step"] + (["sigmoid"] if f <= sigmoid_max_f else [])
        res = {}
        for method in methods:
            t0 = time.perf_counter()
            wave, info = box_waveforms(case, f, method, seg=seg)
            secs = time.perf_counter() - t0
            adc, t, valid = readout(wave, case["pedestal"])
            res[method] = _summary(adc, t, valid, wave.sum(1).numpy())
            res[method].update(seconds=secs, info=info)
        main = res["sigmoid"] if "sigmoid" in res else res["step"]
        entry = dict(method="sigmoid" if "sigmoid" in res else "step",
                     seconds={m: r["seconds"] for m, r in res.items()}, info=main["info"],
                     vs_reference=_cmp(main, ref), vs_sparsetpc=_cmp(main, ours),
                     pixel_charge_e=main["charge"].tolist(), adc=main["adc"].tolist(), t_us=main["t"].tolist())
        if exact is not None:
            entry["vs_continuum"] = _cmp(main, exact)
        if "sigmoid" in res:
            entry["step_vs_sigmoid"] = _cmp(res["step"], res["sigmoid"])
            entry["step_vs_sigmoid"]["charge"] = compare_charge(res["step"]["charge"], res["sigmoid"]["charge"], floor=0.0)
        out["box"][str(f)] = entry
        if verbose:
            a, b = entry["vs_reference"], entry["vs_sparsetpc"]
            c = entry.get("vs_continuum")
            sv = entry.get("step_vs_sigmoid")
            print(f"  box f={f} ({entry['method']}, {sum(entry['seconds'].values()):.0f}s, {main['info']['samples']} samples):"
                  f" vs ref mean|dADC| {a['mean_abs_dadc']:.4f} max {a['max_abs_dadc']:.4f} mean|dt| {a['mean_abs_dt_us']:.4f}"
                  f" | vs sparsetpc mean|dADC| {b['mean_abs_dadc']:.3f} max {b['max_abs_dadc']:.3f} mean|dt| {b['mean_abs_dt_us']:.4f}"
                  f" charge mean {b['charge']['mean_abs_dq_adc']:.3f} max {b['charge']['max_abs_dq_adc']:.3f}"
                  + (f" | vs continuum mean|dADC| {c['mean_abs_dadc']:.3f} max {c['max_abs_dadc']:.3f} mean|dt| {c['mean_abs_dt_us']:.4f}" if c else "")
                  + (f" | step-sigmoid max|dADC| {sv['max_abs_dadc']:.3f}" if sv else ""), flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["test_segment", "mixed_trk0"], choices=CASES)
    ap.add_argument("--factors", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--sigmoid-max-f", type=int, default=2,
                    help="also run the brute-force sigmoid time response for f up to this (cost ∝ f³)")
    ap.add_argument("--no-continuum", action="store_true", help="skip the direct continuum integration")
    ap.add_argument("--n-gl", type=int, default=6, help="Gauss-Legendre nodes per pad half per axis (continuum)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reference_convergence.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (shared_data_dir() / "reference").is_dir():
        sys.exit(f"reference data not found under {shared_data_dir()} (set SPARSETPC_SHARED_DATA)")
    t0 = time.perf_counter()
    results = dict(factors=args.factors, sigmoid_max_f=args.sigmoid_max_f, n_gl=args.n_gl,
                   e_per_adc=E_PER_ADC, cases={})
    for name in args.cases:
        results["cases"][name] = run_case(name, args.factors, args.sigmoid_max_f, not args.no_continuum, args.n_gl)
    results["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
