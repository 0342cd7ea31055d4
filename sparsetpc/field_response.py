"""Tabulated pixel field response in larnd-sim's format: reading, checking, interpolating and writing tables.

Format (larnd-sim ``detsim.get_closest_waveform`` / ``tracks_current``; response files ``response_44.npy`` ...):
``R[i, j, k]`` [1/µs] is the current induced on a pixel per unit charge that lands at |Δx| ≈ (i + ½)·b,
|Δy| ≈ (j + ½)·b from the pixel centre (b = ``response_bin_size`` cm), at time k·Δ (Δ = ``response_sampling`` µs)
counted from the start of a window of ``time_window`` µs that ends at the charge's arrival at the anode:
bin k is at τ_k = k·Δ − time_window relative to the arrival t_a = |z − z_anode|/v.  The charge per readout tick is
Σ q·R·tick (larnd-sim's front end integrates current × TIME_SAMPLING); Σ_k R[i, j, k]·Δ is the fraction of the
charge a pixel collects (1 on its own pad, 0 for the net induction on a neighbour).  larnd-sim looks up the nearest
bin, i = round(|Δx|/b − ½), j likewise, k = round((t − t_a + time_window)/Δ), and uses it only for
t_a − time_window < t < t_a and indices inside the table.

Interpolation (:func:`cloud_weights`, :func:`interpolate_response`): the table is read as a piecewise-linear
function of the signed offset (nodes at ±(i + ½)·b, mirror symmetric, zero one bin beyond the last) and of time
(nodes τ_k, zero one bin before the first and after the last); a Gaussian cloud (σ_T across, σ_t in arrival
time) is integrated against it exactly: each node's hat function has the Gaussian expectation
E[hat] = (ψ(y + h) − 2ψ(y) + ψ(y − h))/h, ψ(y) = y·Φ(y/σ) + σ·φ(y/σ) (y: cloud centre minus node, h: node spacing).
Every weight is smooth in the cloud's position, width and arrival time (no nearest-bin steps), the weights of
each axis sum to one, and σ → 0 gives plain linear interpolation.

Writers (:func:`analytic_response_table`, :func:`weighting_field_response_table`): the analytic pad response of
physics.md §2.5 (collection only), and the Shockley–Ramo current of a square pad in a parallel-plate gap (bipolar
induction on the neighbours); see docs/field_response.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .exceptions import SparseTPCError

#: larnd-sim's defaults (``larndsim/consts/detector.py``): bin size [cm], sampling [µs].
LARNDSIM_BIN_SIZE = 0.04434
LARNDSIM_SAMPLING = 0.1

INTERPOLATIONS = ("linear", "nearest")

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class ResponseTableError(SparseTPCError):
    """A field-response table or its settings are missing, unreadable or unusable."""


@dataclass
class ResponseTable:
    """A larnd-sim field-response table and its axes.

    ``values`` [Nx, Ny, Nt] float tensor, current per unit charge [1/µs]; ``bin_size`` cm (transverse bin);
    ``sampling`` µs (time bin); ``time_window`` µs (bin k is at k·sampling − time_window from the arrival at the
    anode); ``interpolation``: ``linear`` (smooth, differentiable; the default) or ``nearest`` (larnd-sim's
    lookup, for comparisons: gradients flow only through the charge); ``source``: where it came from.
    """

    values: torch.Tensor
    bin_size: float = LARNDSIM_BIN_SIZE
    sampling: float = LARNDSIM_SAMPLING
    time_window: Optional[float] = None
    interpolation: str = "linear"
    source: str = "table"

    def __post_init__(self):
        values = self.values
        if isinstance(values, np.ndarray):
            values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        if not isinstance(values, torch.Tensor):
            raise ResponseTableError(f"{self.source}: response values must be an array, got {type(values).__name__}")
        if values.dim() != 3:
            raise ResponseTableError(f"{self.source}: a response table has 3 axes (x, y, time), got shape "
                                     f"{tuple(values.shape)}")
        if min(values.shape) < 1:
            raise ResponseTableError(f"{self.source}: response table has an empty axis, shape {tuple(values.shape)}")
        if not values.dtype.is_floating_point:
            values = values.to(torch.float64)
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise ResponseTableError(f"{self.source}: response table has {bad} non-finite value(s)")
        self.values = values
        for name in ("bin_size", "sampling"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ResponseTableError(f"{self.source}: {name} must be a positive number, got {value!r}")
            setattr(self, name, float(value))
        if self.time_window is None:
            self.time_window = self.values.shape[2] * self.sampling
        if not (math.isfinite(self.time_window) and self.time_window > 0):
            raise ResponseTableError(f"{self.source}: time_window must be positive, got {self.time_window!r}")
        self.time_window = float(self.time_window)
        if self.interpolation not in INTERPOLATIONS:
            raise ResponseTableError(f"unknown response interpolation {self.interpolation!r}: "
                                     f"{' or '.join(INTERPOLATIONS)}")

    # ------------------------------------------------------------------ axes
    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(int(n) for n in self.values.shape)

    @property
    def reach(self) -> float:
        """Largest |offset| [cm] along x or y at which the (linearly interpolated) table is non-zero."""
        return (max(self.shape[0], self.shape[1]) + 0.5) * self.bin_size

    @property
    def first_time(self) -> float:
        """τ [µs] of bin 0 relative to the arrival at the anode."""
        return -self.time_window

    def to(self, dtype=None, device=None) -> "ResponseTable":
        return replace(self, values=self.values.to(dtype=dtype or self.values.dtype, device=device))

    def with_interpolation(self, interpolation: str) -> "ResponseTable":
        return replace(self, interpolation=interpolation)

    def collected_fraction(self) -> torch.Tensor:
        """Σ_k R[i, j, k]·Δ [Nx, Ny]: the time-integrated charge per unit charge landing at each bin."""
        return self.values.sum(dim=2) * self.sampling


def resolve_response(response) -> Optional[ResponseTable]:
    """``None``/``"analytic"`` → None (the analytic pad response); a :class:`ResponseTable` → itself; a path
    (str or Path ending in .npy/.npz) → the table read with larnd-sim's default settings."""
    if response is None or (isinstance(response, str) and response == "analytic"):
        return None
    if isinstance(response, ResponseTable):
        return response
    if isinstance(response, (str, Path)) and Path(response).suffix.lower() in (".npy", ".npz"):
        return load_response_table(response)
    raise ResponseTableError(f"response must be 'analytic', a ResponseTable or a .npy/.npz path, got {response!r}")


# ---------------------------------------------------------------------------------------------- reading
def load_response_table(path, bin_size: Optional[float] = None, sampling: Optional[float] = None,
                        time_window: Optional[float] = None, interpolation: str = "linear") -> ResponseTable:
    """Read a larnd-sim response table.

    ``.npy``: the 3-D array ``R[i, j, k]``; its bin size and sampling come from the arguments (larnd-sim's
    defaults 0.04434 cm and 0.1 µs when None), the time window from ``time_window`` (default: Nt·sampling).
    ``.npz``: keys ``response`` (the array), ``bin_size``, ``time_tick`` (as newer larnd-sim writes them) and
    optionally ``time_window``; explicit arguments override them.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ResponseTableError(f"{path}: response file not found")
    if path.is_dir():
        raise ResponseTableError(f"{path}: is a directory, not a response file")
    stored = {}
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ResponseTableError(f"{path}: cannot read a numpy response table ({' '.join(str(error).split())})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "response" not in loaded.files:
                raise ResponseTableError(f"{path}: .npz response file lacks the 'response' array "
                                         f"(has {', '.join(loaded.files) or 'nothing'})")
            array = np.asarray(loaded["response"])
            for key, name in (("bin_size", "bin_size"), ("time_tick", "sampling"), ("time_window", "time_window")):
                if key in loaded.files:
                    stored[name] = float(np.asarray(loaded[key]).reshape(-1)[0])
    else:
        array = np.asarray(loaded)
    if array.dtype.kind not in "fiu":
        raise ResponseTableError(f"{path}: response values must be numbers, got dtype {array.dtype}")
    if array.ndim != 3:
        raise ResponseTableError(f"{path}: a response table has 3 axes (x, y, time), got shape {array.shape}")
    settings = {"bin_size": LARNDSIM_BIN_SIZE, "sampling": LARNDSIM_SAMPLING, "time_window": None}
    settings.update(stored)
    for name, value in (("bin_size", bin_size), ("sampling", sampling), ("time_window", time_window)):
        if value is not None:
            settings[name] = float(value)
    return ResponseTable(values=torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)),
                         interpolation=interpolation, source=source, **settings)


def response_settings_from_yaml(path) -> dict:
    """The table settings a larnd-sim detector-properties YAML holds: ``response_bin_size`` (a number or a
    one-element list), ``response_sampling``, ``time_window``; missing keys are absent from the result."""
    import yaml
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ResponseTableError(f"{path}: cannot read detector properties ({' '.join(str(error).split())})") from None
    if not isinstance(loaded, dict):
        return {}
    out = {}
    for key, name in (("response_bin_size", "bin_size"), ("response_sampling", "sampling"),
                      ("time_window", "time_window")):
        if key in loaded:
            value = loaded[key]
            if isinstance(value, (list, tuple)):
                if len(value) == 0:
                    raise ResponseTableError(f"{path}: {key} is an empty list")
                value = value[0]
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                raise ResponseTableError(f"{path}: {key} must be a number, got {value!r}") from None
    return out


def save_response_table(table: ResponseTable, path) -> Path:
    """Write ``table``: ``.npy`` (larnd-sim's format: the array only) or ``.npz`` (``response``, ``bin_size``,
    ``time_tick``, ``time_window``).  Written to a temporary file and renamed."""
    from .io import atomic_write
    path = Path(path)
    array = table.values.detach().cpu().numpy().astype(np.float64)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ResponseTableError(f"{path}: response tables are written as .npy (larnd-sim) or .npz")
    with atomic_write(path) as tmp:              # mode from the umask, renamed into place when complete
        with open(tmp, "wb") as stream:
            if suffix == ".npy":
                np.save(stream, array)
            else:
                np.savez(stream, response=array, bin_size=table.bin_size, time_tick=table.sampling,
                         time_window=table.time_window)
    return path


# ---------------------------------------------------------------------------------------------- interpolation
def ramp_expectation(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ψ(y) = E[(y + Z)₊] for Z ~ N(0, σ²): y·Φ(y/σ) + σ·φ(y/σ)."""
    r = y / sigma
    return y * 0.5 * torch.special.erfc(-r / _SQRT2) + sigma * _INV_SQRT_2PI * torch.exp(-0.5 * r * r)


def hat_expectation(y: torch.Tensor, sigma: torch.Tensor, spacing: float) -> torch.Tensor:
    """E[hat((y + Z)/h)] for the unit hat of half-width h = ``spacing`` centred at 0, Z ~ N(0, σ²):
    (ψ(y + h) − 2ψ(y) + ψ(y − h))/h.  σ → 0 gives the hat itself (linear interpolation).

    Differentiable in ``y`` and ``sigma`` (broadcast against each other) through the closed forms ∂ψ/∂y = Φ(y/σ)
    and ∂ψ/∂σ = φ(y/σ): backward keeps only the inputs, not the intermediates of the three ψ."""
    return _HatExpectation.apply(y, sigma, spacing)


class _HatExpectation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, sigma, spacing):
        ctx.save_for_backward(y, sigma)
        ctx.spacing = spacing
        return (ramp_expectation(y + spacing, sigma) - 2.0 * ramp_expectation(y, sigma)
                + ramp_expectation(y - spacing, sigma)) / spacing

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        y, sigma = ctx.saved_tensors
        spacing = ctx.spacing
        by_y = by_sigma = 0.0                     # h·∂E/∂y, h·∂E/∂σ
        for shift, factor in ((spacing, 1.0), (0.0, -2.0), (-spacing, 1.0)):
            r = (y + shift) / sigma
            by_y = by_y + factor * 0.5 * torch.special.erfc(-r / _SQRT2)                # Φ(r)
            by_sigma = by_sigma + factor * _INV_SQRT_2PI * torch.exp(-0.5 * r * r)     # φ(r)
        grad_y = (grad * by_y / spacing).sum_to_size(y.shape) if ctx.needs_input_grad[0] else None
        grad_sigma = (grad * by_sigma / spacing).sum_to_size(sigma.shape) if ctx.needs_input_grad[1] else None
        return grad_y, grad_sigma, None


def mirrored_index(node: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Table index of the signed transverse node ``node`` (at (node + ½)·b): node ≥ 0 → node, node < 0 →
    −node − 1 (the table holds |offset|); ``n_bins`` (a zero slot) beyond the table."""
    index = torch.where(node >= 0, node, -node - 1)
    return torch.where(index < n_bins, index, torch.full_like(index, n_bins))


def cloud_weights(offset: torch.Tensor, sigma: torch.Tensor, first_node: torch.Tensor, n_nodes: int,
                  bin_size: float, n_bins: int):
    """Weights and table indices of ``n_nodes`` consecutive signed transverse nodes from ``first_node`` [S]
    for clouds at ``offset`` [S] cm from the pixel centre with width ``sigma`` [S] cm: ([S, K] weights,
    [S, K] table index, ``n_bins`` for nodes beyond the table, whose value is zero)."""
    node = first_node[:, None] + torch.arange(n_nodes, device=offset.device)[None, :]
    centre = (node.to(offset.dtype) + 0.5) * bin_size
    weight = hat_expectation(offset[:, None] - centre, sigma[:, None], bin_size)
    return weight, mirrored_index(node, n_bins)


def interpolate_response(table: ResponseTable, offset_x: torch.Tensor, offset_y: torch.Tensor, tau: torch.Tensor,
                         sigma_transverse: torch.Tensor, sigma_time: torch.Tensor, n_sigma: float = 5.0) -> torch.Tensor:
    """Expected current per unit charge [1/µs] of Gaussian clouds: E[R(x, y, τ)] for landing offsets
    (x, y) ~ N((offset_x, offset_y), σ_T²) [cm] and time from arrival τ ~ N(tau, σ_t²) [µs], each [S], with the
    table read as piecewise linear (module docstring).  Dense over the nodes within ``n_sigma`` (a reference
    implementation for tests and small inputs; the induction stage uses the same weights sparsely)."""
    values = table.values.to(dtype=offset_x.dtype, device=offset_x.device)
    nx, ny, nt = table.shape
    b, step = table.bin_size, table.sampling
    with torch.no_grad():
        half_x = int(math.ceil(n_sigma * float(sigma_transverse.max()) / b)) + 1
        half_t = int(math.ceil(n_sigma * float(sigma_time.max()) / step)) + 1
        first_x = torch.floor(offset_x / b - 0.5).long() - half_x + 1
        first_y = torch.floor(offset_y / b - 0.5).long() - half_x + 1
        first_k = torch.floor((tau + table.time_window) / step).long() - half_t + 1
    wx, ix = cloud_weights(offset_x, sigma_transverse, first_x, 2 * half_x, b, nx)
    wy, iy = cloud_weights(offset_y, sigma_transverse, first_y, 2 * half_x, b, ny)
    k = first_k[:, None] + torch.arange(2 * half_t, device=tau.device)[None, :]
    tau_k = k.to(tau.dtype) * step - table.time_window
    wt = hat_expectation(tau[:, None] - tau_k, sigma_time[:, None], step)
    inside = (k >= 0) & (k < nt)
    padded = torch.zeros((nx + 1, ny + 1, nt + 1), dtype=values.dtype, device=values.device)
    padded[:nx, :ny, :nt] = values
    kk = torch.where(inside, k, torch.full_like(k, nt))
    gathered = padded[ix[:, :, None, None], iy[:, None, :, None], kk[:, None, None, :]]
    return torch.einsum("sa,sb,sk,sabk->s", wx, wy, wt, gathered)


def nearest_response(table: ResponseTable, offset_x, offset_y, time_in_window):
    """larnd-sim's ``get_closest_waveform``: R[round(|x|/b − ½), round(|y|/b − ½), round(t/Δ)] for t the time
    since the window start, 0 outside the table (numpy or torch inputs; ties round half to even)."""
    values = table.values
    nx, ny, nt = table.shape
    i = torch.round(torch.as_tensor(offset_x).abs() / table.bin_size - 0.5).long()
    j = torch.round(torch.as_tensor(offset_y).abs() / table.bin_size - 0.5).long()
    k = torch.round(torch.as_tensor(time_in_window) / table.sampling).long()
    inside = (i >= 0) & (i < nx) & (j >= 0) & (j < ny) & (k >= 0) & (k < nt)
    value = values[i.clamp(0, nx - 1), j.clamp(0, ny - 1), k.clamp(0, nt - 1)]
    return torch.where(inside, value, torch.zeros_like(value))


# ---------------------------------------------------------------------------------------------- writers
def _time_bins(sampling: float, before: float, after: float):
    """Bin centres τ_k [µs] (from the arrival) of a table spanning [−before, after], and its time_window."""
    n_before = int(math.ceil(before / sampling - 1e-9))
    n_after = int(math.ceil(after / sampling - 1e-9))
    n_bins = n_before + n_after
    # bin k covers [τ_k − Δ/2, τ_k + Δ/2]; the last bin ends at `after`
    time_window = (n_before - 0.5) * sampling
    tau = np.arange(n_bins) * sampling - time_window
    return tau, time_window


def analytic_response_table(velocity: float = 0.1587, bin_size: float = LARNDSIM_BIN_SIZE,
                            sampling: float = LARNDSIM_SAMPLING, pitch: float = 0.4434, neighbours: int = 0,
                            before: float = 25.0, after: float = 2.0, response_offset: float = 0.5) -> ResponseTable:
    """The analytic pad response of physics.md §2.5 as a table (collection only: zero on neighbouring pads).

    The analytic model starts its clock ``response_offset`` (0.5 cm) before the anode, so relative to the
    arrival at the anode its cut-off is at Δt₀(x, y) − response_offset/v: the table is exact for the drift
    velocity ``velocity`` [cm/µs] only.  Time bins hold the bin average of the current (the charge in the bin
    divided by Δ, in closed form), so Σ_k R·Δ is exactly the charge of the response within the span; the
    span is [−``before``, ``after``] µs around the arrival (the analytic cut-off can fall after it).
    Transverse bins hold the response at their centre; ``neighbours`` adds that many pitches of zeros."""
    from .induction import response_shape
    if pitch / bin_size < 0.5:
        raise ResponseTableError(f"bin size {bin_size} cm is larger than twice the pitch {pitch} cm")
    tau, time_window = _time_bins(sampling, before, after)
    n_pad = int(round(0.5 * pitch / bin_size))
    n_bins = n_pad + int(round(neighbours * pitch / bin_size))
    centres = (np.arange(n_bins) + 0.5) * bin_size
    on_pad = centres < 0.5 * pitch
    x = torch.as_tensor(np.minimum(centres, 0.5 * pitch), dtype=torch.float64)
    xx, yy = torch.meshgrid(x, x, indexing="ij")
    amplitude, fast, slow, delay = (v.numpy() for v in response_shape(xx, yy))
    cut = delay - response_offset / velocity                                  # [Nx, Ny] µs from the arrival
    lower = tau[None, None, :] - 0.5 * sampling
    upper = tau[None, None, :] + 0.5 * sampling

    def charge(scale):          # ∫ over the bin of exp(−(cut − t)/s)/s for t < cut
        s = scale[:, :, None]
        c = cut[:, :, None]
        return np.exp(-(c - np.minimum(upper, c)) / s) - np.exp(-(c - np.minimum(lower, c)) / s)

    values = (amplitude[:, :, None] * charge(fast) + (1 - amplitude[:, :, None]) * charge(slow)) / sampling
    values = values * (on_pad[:, None] & on_pad[None, :])[:, :, None]
    return ResponseTable(values=torch.as_tensor(values), bin_size=bin_size, sampling=sampling,
                         time_window=time_window, source=f"analytic model (v = {velocity} cm/µs)")


def square_pad_potential(x, y, z, pitch: float):
    """Weighting potential of a square pad (side ``pitch``, centred at the origin, in an infinite grounded
    plane z = 0) at height z > 0: (1/2π)·Σ± arctan(u·v/(z·√(u² + v² + z²))) over the pad's corners
    (u, v = corner − point); 1 on the pad at z → 0."""
    half = 0.5 * pitch
    total = 0.0
    for sign_u, u in ((1.0, half - x), (-1.0, -half - x)):
        for sign_v, v in ((1.0, half - y), (-1.0, -half - y)):
            total = total + sign_u * sign_v * np.arctan(u * v / (z * np.sqrt(u * u + v * v + z * z)))
    return total / (2.0 * np.pi)


def gap_pad_potential(x, y, z, pitch: float, gap: float, n_images: int = 60):
    """Weighting potential of the square pad in a parallel-plate gap: pad plane at z = 0 and a grounded plane
    at z = ``gap`` (method of images: Σ_n [φ∞(z + 2n·gap) − φ∞(2(n+1)·gap − z)]); exactly 0 at z = gap."""
    z = np.clip(z, 1e-12, gap)
    total = np.zeros(np.broadcast(x, y, z).shape)
    for n in range(n_images):
        total = total + square_pad_potential(x, y, z + 2 * n * gap, pitch) \
            - square_pad_potential(x, y, 2 * (n + 1) * gap - z, pitch)
    return total


def weighting_field_response_table(velocity: float = 0.1587, bin_size: float = LARNDSIM_BIN_SIZE,
                                   sampling: float = LARNDSIM_SAMPLING, pitch: float = 0.4434, neighbours: int = 2,
                                   gap: float = 2.0) -> ResponseTable:
    """Shockley–Ramo current of a square pad with bipolar induction on its neighbours.

    A unit charge drifting straight to the anode at ``velocity`` induces on a pad the charge φ_w(x, y, z) (the
    pad's weighting potential, :func:`gap_pad_potential`: pad at 1, the rest of the anode plane and a plane
    at height ``gap`` cm at 0), so the current is dφ_w/dt.  Time bins hold the bin average, (φ_w(z_end) −
    φ_w(z_start))/Δ, so Σ_k R·Δ telescopes to exactly 1 for charge landing on the pad and 0 beside it; the
    window starts when the charge crosses the top plane (time_window = gap/v − Δ/2: the last bin ends at the
    arrival).  Transverse bins are sampled at their centres, ``neighbours`` pitches beyond the pad."""
    n_time = int(math.ceil(gap / velocity / sampling - 1e-9))
    time_window = (n_time - 0.5) * sampling
    tau = np.arange(n_time) * sampling - time_window
    n_bins = int(round((0.5 + neighbours) * pitch / bin_size))
    centres = (np.arange(n_bins) + 0.5) * bin_size
    xx, yy = np.meshgrid(centres, centres, indexing="ij")
    edges = np.append(tau - 0.5 * sampling, tau[-1] + 0.5 * sampling)          # µs from the arrival
    height = np.clip(-edges * velocity, 0.0, gap)                               # cm above the anode
    potential = np.stack([gap_pad_potential(xx, yy, np.full_like(xx, h), pitch, gap) for h in height], axis=2)
    potential[:, :, -1] = ((np.abs(xx) < pitch / 2) & (np.abs(yy) < pitch / 2)).astype(float)   # at the anode
    potential[:, :, 0] = 0.0                                                                       # at the top plane
    values = np.diff(potential, axis=2) / sampling
    return ResponseTable(values=torch.as_tensor(values), bin_size=bin_size, sampling=sampling,
                         time_window=time_window, source=f"weighting-field model (gap {gap} cm, v = {velocity} cm/µs)")
