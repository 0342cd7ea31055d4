"""Induced current from a tabulated field response (larnd-sim's look-up tables), sparse and differentiable.

The counterpart of :func:`sparsetpc.induction.induce` for a :class:`~sparsetpc.field_response.ResponseTable`;
it returns the same (flat buffer, :class:`~sparsetpc.induction.SamplePlan`) layout, so the electronics stage is
unchanged.

* (segment, pixel) pairs reach as far as the table does (neighbouring pixels included): the association margin
  is the table's transverse reach plus ``n_sigma`` widths of the widest transverse cloud.
* Charge samples: one midpoint grid per segment (spacing ≤ one diffusion width and ≤ ``max_sample_step``, as
  the analytic stage); an *item* is a (sample, pixel) pair whose cloud can reach the table.
* Transverse: the Gaussian cloud (σ_T) is integrated exactly against the bilinear table over every node
  (:func:`~sparsetpc.field_response.cloud_weights`): weights [items, Nx] and [items, Ny], contracted with the
  table by two matrix products into a waveform W [items, Nt] on the table's time grid.
* Time: the waveform, read as piecewise linear, is smeared by the Gaussian of the arrival time (σ_L/v) exactly
  (hat-function expectations).  The readout tick must be a whole number m of table bins, so every tick of an item
  sees the same 2J weights: out[n] = Σ_j G_j·W[k₀ + n·m + j].
* Each item is evaluated on its own tick window (the table's span ± n_sigma σ_t); values (electrons per tick)
  are scatter-added into per-pixel windows of a flat buffer, in chunks, checkpointed when gradients are needed.

``nearest`` interpolation reproduces larnd-sim's ``get_closest_waveform``: each sample is a point charge
(no diffusion), R[round(|Δx|/b − ½), round(|Δy|/b − ½), round((t − t_a + T_w)/Δ)] for t_a − T_w < t < t_a.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import drift as drift_stage
from .detector import Detector
from .field_response import ResponseTable, ResponseTableError, hat_expectation, mirrored_index
from .induction import (_SIGMA_TIME_FLOOR, SamplePlan, SegmentState, chunk_bounds, horizon_columns,
                        pixel_windows, sample_geometry, sample_nodes, scatter_sum, window_offset)
from .params import Params
from .pixels import Pairs


@dataclass
class TableOptions:
    """Numerical options of the table induction.  ``n_sigma``: reach of the longitudinal (time) smearing and of
    the association margin, in widths.  ``sample_spacing``/``max_sample_step``: sample step along a segment in
    diffusion widths / cm (as :class:`~sparsetpc.induction.InductionOptions`)."""

    n_sigma: float = 5.0
    sample_spacing: float = 1.0
    max_sample_step: float = 0.05


@dataclass
class TablePlan(SamplePlan):
    """:class:`SamplePlan` of the table induction (``first_tick``/``n_ticks`` [S, 1]) plus the time layout:
    ``first_bin`` [S] table bin of the first smearing node of the first tick, ``half_nodes`` J (2J time nodes per
    tick), ``ticks_per_item`` (every item has the same number of ticks), ``bins_per_tick`` m."""

    first_bin: Optional[torch.Tensor] = None
    half_nodes: int = 1
    ticks_per_item: int = 1
    bins_per_tick: int = 1


def association_margin(sigma_far: torch.Tensor, detector: Detector, table: ResponseTable,
                       options: TableOptions) -> torch.Tensor:
    """Margin [N] cm around each pad within which a segment pairs with it: the table's reach beyond the pad plus
    ``n_sigma`` widths ``sigma_far`` [N] of the widest transverse cloud of the parameter ranges at each segment's
    far end (the analytic stage's, :func:`sparsetpc.induction.association_diffusion`)."""
    reach = table.reach - 0.5 * detector.pixel_pitch
    return torch.clamp(reach + options.n_sigma * sigma_far, min=0.0)


def bins_per_tick(table: ResponseTable, detector: Detector) -> int:
    ratio = detector.tick / table.sampling
    whole = int(round(ratio))
    if whole < 1 or abs(ratio - whole) > 1e-6 * max(1.0, ratio):
        raise ResponseTableError(f"{table.source}: the response sampling {table.sampling} µs must divide the "
                                 f"readout tick {detector.tick} µs a whole number of times (e.g. 0.1 or 0.05)")
    return whole


def sample_state(u, weight, pair_rows, pairs: Pairs, segments: SegmentState, params: Params, detector: Detector):
    """Per item (differentiable): transverse offset from the pixel centre [S, 2] cm, arrival time at the anode
    [S] µs, σ_T [S] cm, σ_t [S] µs (longitudinal width / v) and charge [S] electrons (after attachment)."""
    seg, position, velocity, distance, t_drift, created = sample_geometry(u, pair_rows, pairs, segments, params,
                                                                         detector)
    arrival = created + distance / velocity              # at the anode (larnd-sim's table reference)
    sigma_t = drift_stage.diffusion_sigma(distance, velocity, params.tran_diff)
    sigma_l = drift_stage.diffusion_sigma(distance, velocity, params.long_diff)
    sigma_time = torch.clamp(sigma_l / velocity, min=_SIGMA_TIME_FLOOR)
    charge = segments.n_electrons[seg] * weight * drift_stage.attenuation(t_drift, params)
    offset = position[:, :2] - pairs.center[pair_rows]
    return offset, arrival, sigma_t, sigma_time, charge


@torch.no_grad()
def plan_table(pairs: Pairs, pixel_of_pair: torch.Tensor, n_pixels: int, segments: SegmentState, params: Params,
               detector: Detector, table: ResponseTable, options: TableOptions) -> TablePlan:
    """Samples along each pair's stretch, the items that reach the table, and their tick windows."""
    device = pairs.segment.device
    dtype = segments.start.dtype
    detached = params.detached()
    m = bins_per_tick(table, detector)
    # --- sample nodes: the analytic mode's node grid (fixed while the parameters move inside their ranges)
    pair_of_item, u, weight = sample_nodes(pairs, segments, detached, options)
    # --- items whose cloud reaches the table and that carry charge
    offset, arrival, sigma_trans, sigma_time, charge = sample_state(u, weight, pair_of_item, pairs, segments,
                                                                    detached, detector)
    nearest = table.interpolation == "nearest"
    reach = torch.tensor(table.shape[:2], dtype=dtype, device=device)[None, :] * table.bin_size
    if nearest:
        inside = (offset.abs() < reach).all(dim=1)
    else:
        inside = (offset.abs() - options.n_sigma * sigma_trans[:, None] < reach + 0.5 * table.bin_size).all(dim=1)
    keep = inside & (charge != 0)
    pair_of_item, u, weight = pair_of_item[keep], u[keep], weight[keep]
    arrival, sigma_time = arrival[keep], sigma_time[keep]
    shift = segments.time_shift.detach()[pairs.segment[pair_of_item]]
    # --- tick windows: the table's span (nodes −1 … Nt, the zero nodes included) ± n_sigma σ_t
    n_time = table.shape[2]
    step_t = table.sampling
    if nearest:
        half = 1
        lo_time = arrival - table.time_window
        hi_time = arrival
    else:
        half = int(math.ceil(options.n_sigma * float(sigma_time.max()) / step_t)) + 1 if sigma_time.numel() else 1
        lo_time = arrival - table.time_window - step_t - options.n_sigma * sigma_time
        hi_time = arrival - table.time_window + n_time * step_t + options.n_sigma * sigma_time
    first_tick = torch.floor((lo_time - shift) / detector.tick).long()
    last_tick = torch.floor((hi_time - shift) / detector.tick).long() + 1
    first_tick = torch.maximum(first_tick, segments.first_tick[pairs.segment[pair_of_item]])
    ticks = int((last_tick - first_tick + 1).max()) if first_tick.numel() else 1
    # bin coordinate of the first tick: (t − t_a + T_w)/Δ; its first smearing node floor(·) − J + 1
    t_first = first_tick.to(dtype) * detector.tick + shift
    first_bin = torch.floor((t_first - arrival + table.time_window) / step_t).long() - half + 1
    n_items = pair_of_item.numel()
    n_ticks = torch.full((n_items, 1), ticks, dtype=torch.long, device=device)
    # --- pixel windows (pixel_windows)
    big = torch.iinfo(torch.long).max
    pixel = pixel_of_pair[pair_of_item]
    lo = torch.full((n_pixels,), big, dtype=torch.long, device=device).scatter_reduce(0, pixel, first_tick, "amin")
    hi = torch.full((n_pixels,), -big, dtype=torch.long, device=device).scatter_reduce(
        0, pixel, first_tick + ticks - 1, "amax")
    empty = lo == big
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    pixel_start, pixel_width, pixel_offset, buffer_size = pixel_windows(lo, hi)
    return TablePlan(pair=pair_of_item, u=u, weight=weight, first_tick=first_tick[:, None], n_ticks=n_ticks,
                     pixel_of_pair=pixel_of_pair, pixel_start=pixel_start, pixel_width=pixel_width,
                     pixel_offset=pixel_offset, buffer_size=buffer_size, first_bin=first_bin,
                     half_nodes=half, ticks_per_item=ticks, bins_per_tick=m)


def transverse_weights(offset: torch.Tensor, sigma: torch.Tensor, bin_size: float, n_bins: int) -> torch.Tensor:
    """[S, n_bins] weight of each table bin along one axis for clouds at ``offset`` [S] (signed, cm) of width
    ``sigma`` [S]: the exact Gaussian expectation of every signed node's hat, folded onto |offset| (nodes at
    ±(i + ½)·b share bin i).  Sums to the fraction of the cloud within the table's reach."""
    node = torch.arange(-n_bins, n_bins, device=offset.device)
    centre = (node.to(offset.dtype) + 0.5) * bin_size
    weight = hat_expectation(offset[:, None] - centre[None, :], sigma[:, None], bin_size)   # [S, 2·n_bins]
    index = mirrored_index(node, n_bins)
    return weight.new_zeros((offset.shape[0], n_bins)).index_add(1, index, weight)


def _item_waveforms(values: torch.Tensor, weight_x: torch.Tensor, weight_y: torch.Tensor) -> torch.Tensor:
    """W [S, Nt] = Σ_ij w_x[s, i]·w_y[s, j]·R[i, j, :] (two matrix products)."""
    nx, ny, nt = values.shape
    partial = (weight_x @ values.reshape(nx, ny * nt)).reshape(-1, ny, nt)        # [S, Ny, Nt]
    return torch.einsum("sj,sjk->sk", weight_y, partial)


def _chunk_charge(lo: int, hi: int, plan: TablePlan, pairs: Pairs, segments: SegmentState, params: Params,
                  detector: Detector, table: ResponseTable, values: torch.Tensor, backend: str, *grad_inputs):
    """Charge per tick [flat buffer] induced by items [lo, hi)."""
    rows = plan.pair[lo:hi]
    offset, arrival, sigma_trans, sigma_time, charge = sample_state(
        plan.u[lo:hi], plan.weight[lo:hi], rows, pairs, segments, params, detector)
    nx, ny, nt = values.shape
    b, step_t, m = table.bin_size, table.sampling, plan.bins_per_tick
    n_items, ticks = rows.numel(), plan.ticks_per_item
    shift = segments.time_shift[pairs.segment[rows]]
    first_tick = plan.first_tick[lo:hi, 0]
    t_first = first_tick.to(offset.dtype) * detector.tick + shift
    device = offset.device
    if table.interpolation == "nearest":
        ix = torch.round(offset[:, 0].detach().abs() / b - 0.5).long()
        iy = torch.round(offset[:, 1].detach().abs() / b - 0.5).long()
        inside = (ix < nx) & (iy < ny)
        waveform = values[ix.clamp(max=nx - 1), iy.clamp(max=ny - 1)] * inside[:, None]            # [S, Nt]
        t = t_first[:, None] + torch.arange(ticks, device=device)[None, :] * detector.tick
        since_start = (t - arrival[:, None] + table.time_window).detach()
        k = torch.round(since_start / step_t).long()
        valid = (since_start > 0) & (since_start < table.time_window) & (k >= 0) & (k < nt)
        response = torch.gather(waveform, 1, k.clamp(0, nt - 1)) * valid
    else:
        weight_x = transverse_weights(offset[:, 0], sigma_trans, b, nx)
        weight_y = transverse_weights(offset[:, 1], sigma_trans, b, ny)
        waveform = _item_waveforms(values, weight_x, weight_y)                                     # [S, Nt]
        half = plan.half_nodes
        nodes = 2 * half
        # time weights: node j of tick 0 is bin first_bin + j at τ = bin·Δ − T_w; y = t − t_a − τ
        bins = plan.first_bin[lo:hi, None] + torch.arange(nodes, device=device)[None, :]
        y = t_first[:, None] - arrival[:, None] - (bins.to(offset.dtype) * step_t - table.time_window)
        time_weight = hat_expectation(y, sigma_time[:, None], step_t)                              # [S, 2J]
        # bins needed: first_bin … first_bin + (ticks − 1)·m + 2J − 1, zero outside the table
        span = (ticks - 1) * m + nodes
        needed = plan.first_bin[lo:hi, None] + torch.arange(span, device=device)[None, :]
        in_table = (needed >= 0) & (needed < nt)
        padded = torch.cat([waveform, waveform.new_zeros((n_items, 1))], dim=1)
        window = torch.gather(padded, 1, torch.where(in_table, needed, torch.full_like(needed, nt)))   # [S, span]
        strided = window.unfold(1, nodes, m)                                                         # [S, ticks, 2J]
        response = (strided * time_weight[:, None, :]).sum(dim=2)
    values_out = charge[:, None] * detector.tick * response                                       # electrons per tick
    flat = window_offset(plan, plan.pixel_of_pair[rows], first_tick)[:, None] + torch.arange(ticks, device=device)[None, :]
    return scatter_sum(values_out.reshape(-1), flat.reshape(-1), plan.buffer_size, backend)


def induce_table(pairs: Pairs, pixel_of_pair: torch.Tensor, n_pixels: int, segments: SegmentState, params: Params,
                 detector: Detector, table: ResponseTable, options: Optional[TableOptions] = None,
                 max_elements: int = 2_000_000, checkpoint: Optional[bool] = None, backend: str = "torch",
                 progress=None):
    """Flat per-pixel-window charge buffer (electrons per tick) and its plan, as :func:`sparsetpc.induction.induce`."""
    options = options or TableOptions()
    plan = plan_table(pairs, pixel_of_pair, n_pixels, segments, params, detector, table, options)
    dtype, device = segments.start.dtype, segments.start.device
    values = table.values.to(dtype=dtype, device=device)
    grad_inputs = [t for t in (segments.start, segments.end, segments.n_electrons, segments.t_start,
                               segments.t_end, *[getattr(params, n) for n in params.names()]) if t.requires_grad]
    use_checkpoint = (torch.is_grad_enabled() and bool(grad_inputs)) if checkpoint is None else checkpoint
    buffer = torch.zeros(plan.buffer_size, dtype=dtype, device=device)
    # elements held per item: its waveform on the table grid and its Ny × Nt partial product
    per_item = table.shape[1] * table.shape[2] + table.shape[2] + plan.ticks_per_item * 2 * plan.half_nodes
    n_items = plan.pair.numel()
    bounds = chunk_bounds(torch.full((n_items,), per_item, dtype=torch.long), max_elements)
    for lo, hi in bounds:
        if use_checkpoint:
            part = torch.utils.checkpoint.checkpoint(_chunk_charge, lo, hi, plan, pairs, segments, params, detector,
                                                     table, values, backend, *grad_inputs, use_reentrant=False)
        else:
            part = _chunk_charge(lo, hi, plan, pairs, segments, params, detector, table, values, backend)
        buffer = buffer + part
        if progress is not None:
            progress(hi - lo)
    return buffer, plan


def table_horizon(plan: TablePlan, pairs: Pairs, segments: SegmentState, params: Params, detector: Detector,
                  table: ResponseTable, options: Optional[TableOptions] = None) -> torch.Tensor:
    """Last column [U] (continuous, differentiable) at which a pixel's window may trigger (as
    :func:`sparsetpc.induction.pixel_horizon`): the latest item's end of signal plus the integration ticks."""
    options = options or TableOptions()
    n_pixels = plan.pixel_width.numel()
    dtype = segments.start.dtype
    if plan.pair.numel() == 0:
        return torch.full((n_pixels,), -1.0, dtype=dtype, device=segments.start.device)
    _, arrival, _, sigma_time, _ = sample_state(plan.u, plan.weight, plan.pair, pairs, segments, params, detector)
    shift = segments.time_shift[pairs.segment[plan.pair]]
    if table.interpolation == "nearest":
        end = arrival
    else:
        end = arrival - table.time_window + table.shape[2] * table.sampling + options.n_sigma * sigma_time
    return horizon_columns((end - shift) / detector.tick, plan.pixel_of_pair[plan.pair], plan)
