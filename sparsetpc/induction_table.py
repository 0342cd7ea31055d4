"""Induced current from a tabulated field response (larnd-sim's look-up tables), sparse and differentiable.

The counterpart of :func:`sparsetpc.induction.induce` for a :class:`~sparsetpc.field_response.ResponseTable`;
it returns the same (flat buffer, :class:`~sparsetpc.induction.SamplePlan`) layout, so the electronics stage is
unchanged.

* (segment, pixel) pairs reach as far as the table does (neighbouring pixels included): the association margin
  is the table's transverse reach plus ``n_sigma`` widths of the widest transverse cloud.
* Charge samples: one midpoint grid per segment (spacing ≤ one diffusion width and ≤ ``max_sample_step``, as
  the analytic stage); an *item* is a (sample, pixel) pair whose cloud can reach the table.
* Transverse: the Gaussian cloud (σ_T) is integrated exactly against the bilinear table over every node
  (:func:`~sparsetpc.field_response.cloud_weights`): x weights [Nx] per (sample, pixel column), y weights [Ny]
  per (sample, pixel row); the x weights are contracted with the table once per column (one matrix product for
  all columns), then with the y weights of the sample's rows, giving a waveform W [Nt] per item on the table's
  time grid.
* Time: the waveform, read as piecewise linear, is smeared by the Gaussian of the arrival time (σ_L/v) exactly
  (hat-function expectations).  The readout tick must be a whole number m of table bins, so every tick of an item
  sees the same 2J weights, the same for all the items of a sample: out[n] = Σ_j G_j·W[k₀ + n·m + j], evaluated
  as products with a banded (Toeplitz) matrix per sample.
* Each sample is evaluated on its own tick window (the table's span ± n_sigma σ_t); values (electrons per tick)
  are scatter-added into per-pixel windows of a flat buffer, in chunks of samples.  With gradients, the chunks
  are checkpointed only when the graph of all of them would not fit the graph budget (the graph keeps the
  waveforms, the weights and the scatter index, not the contractions, which backward recomputes).

``nearest`` interpolation reproduces larnd-sim's ``get_closest_waveform``: each sample is a point charge
(no diffusion), R[round(|Δx|/b − ½), round(|Δy|/b − ½), round((t − t_a + T_w)/Δ)] for t_a − T_w < t < t_a.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import drift as drift_stage
from .detector import Detector
from .field_response import ResponseTable, ResponseTableError, hat_expectation, mirrored_index
from .induction import (_SIGMA_TIME_FLOOR, SamplePlan, SegmentState, chunk_bounds, horizon_columns,
                        pixel_windows, sample_geometry, sample_nodes, scatter_sum, window_offset)
from .params import Params
from .pixels import Pairs


#: Floats a chunk of the table induction may hold per (sample, tick) element of ``max_elements`` (the analytic
#: mode's unit, ~40 floats each in the pipeline's memory budget).  On CPU (max_elements = 2^19) chunks of 2^23
#: floats (64 MiB in float64) ran fastest (mixed_trk4, weighting-field table): half as large ones were ~15 %
#: slower, 2–4× larger ones no faster.
FLOATS_PER_ELEMENT = 16


@dataclass
class TableOptions:
    """Numerical options of the table induction.  ``n_sigma``: reach of the longitudinal (time) smearing and of
    the association margin, in widths.  ``sample_spacing``/``max_sample_step``: sample step along a segment in
    diffusion widths / cm (as :class:`~sparsetpc.induction.InductionOptions`)."""

    n_sigma: float = 5.0
    sample_spacing: float = 1.0
    max_sample_step: float = 0.05


@dataclass
class TableItems:
    """The items of the table induction and how they share work; the same on every sampling grid (clock phase).

    Items (I) are sorted by charge sample, then pixel column, then pixel row; samples by their number of pixel
    rows (a chunk gives every column as many row slots as its widest sample has rows).  The items of a sample share
    its drift (position, arrival time, widths, charge) and its time weights; those that also share a pixel column
    share its x weights and the x contraction with the table.  ``pair`` [I] pair row of each item,
    ``item_sample`` [I]; ``sample_pair``/``sample_u``/``sample_weight`` [S]: a pair row of each sample's segment,
    its position along the segment [cm] and its fraction of the segment's charge; ``sample_items``/
    ``sample_columns``/``sample_rows`` [S + 1]: where each sample's items, columns and rows start;
    ``column_pair`` [C]/``row_pair`` [R]: a pair row of each (sample, pixel column)/(sample, pixel row) (its pad
    centre), ``column_sample``/``row_sample`` their sample; ``item_column`` [I] the item's column, ``item_rank``
    [I] the rank of its row among its sample's rows.  ``arrival`` [S] µs and ``sigma_time`` [S] µs at planning
    (no gradients): the tick windows' basis.  ``half_nodes`` J (2J time nodes per tick), ``bins_per_tick`` m."""

    pair: torch.Tensor
    item_sample: torch.Tensor
    sample_pair: torch.Tensor
    sample_u: torch.Tensor
    sample_weight: torch.Tensor
    sample_items: torch.Tensor
    sample_columns: torch.Tensor
    sample_rows: torch.Tensor
    column_pair: torch.Tensor
    column_sample: torch.Tensor
    row_pair: torch.Tensor
    row_sample: torch.Tensor
    item_column: torch.Tensor
    item_rank: torch.Tensor
    arrival: torch.Tensor
    sigma_time: torch.Tensor
    half_nodes: int
    bins_per_tick: int


@dataclass
class TablePlan(SamplePlan):
    """:class:`SamplePlan` of the table induction on one sampling grid (``first_tick``/``n_ticks`` [I, 1]):
    ``items`` (:class:`TableItems`, shared by the grids), ``phase`` µs added to the segments' time shift,
    ``first_bin`` [S] table bin of the first smearing node of a sample's first tick, ``ticks_per_item`` (every
    item has the same number of ticks)."""

    items: Optional[TableItems] = None
    phase: float = 0.0
    first_bin: Optional[torch.Tensor] = None
    ticks_per_item: int = 1


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
    """Per sample (differentiable): where its cloud lands (x, y) [S, 2] cm, arrival time at the anode [S] µs,
    σ_T [S] cm, σ_t [S] µs (longitudinal width / v) and charge [S] electrons (after attachment)."""
    seg, position, velocity, distance, t_drift, created = sample_geometry(u, pair_rows, pairs, segments, params,
                                                                         detector)
    arrival = created + distance / velocity              # at the anode (larnd-sim's table reference)
    sigma_t = drift_stage.diffusion_sigma(distance, velocity, params.tran_diff)
    sigma_l = drift_stage.diffusion_sigma(distance, velocity, params.long_diff)
    sigma_time = torch.clamp(sigma_l / velocity, min=_SIGMA_TIME_FLOOR)
    charge = segments.n_electrons[seg] * weight * drift_stage.attenuation(t_drift, params)
    return position[:, :2], arrival, sigma_t, sigma_time, charge


def _starts(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[n_groups + 1] where each group of the sorted ``group`` [K] starts (the last entry is K)."""
    counts = torch.bincount(group, minlength=n_groups)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def _first_of(group: torch.Tensor, n_groups: int, values: torch.Tensor) -> torch.Tensor:
    """[n_groups] the entry of ``values`` [K] at the first position of each group (``group`` [K])."""
    position = torch.arange(group.numel(), device=group.device)
    first = torch.full((n_groups,), group.numel(), dtype=torch.long, device=group.device).scatter_reduce(
        0, group, position, "amin")
    return values[first]


@torch.no_grad()
def plan_items(pairs: Pairs, segments: SegmentState, params: Params, detector: Detector, table: ResponseTable,
               options: TableOptions) -> TableItems:
    """Samples along each pair's stretch, the items that reach the table and how they share work."""
    device = pairs.segment.device
    dtype = segments.start.dtype
    detached = params.detached()
    # --- sample nodes: the analytic mode's node grid (fixed while the parameters move inside their ranges); the
    # pairs of a segment share its nodes, so a (segment, u) is one charge sample
    pair_of_item, u, weight = sample_nodes(pairs, segments, detached, options)
    segment = pairs.segment[pair_of_item]
    order = torch.argsort(u, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]
    pair_of_item, u, weight, segment = pair_of_item[order], u[order], weight[order], segment[order]
    new = torch.ones_like(segment, dtype=torch.bool)
    new[1:] = (segment[1:] != segment[:-1]) | (u[1:] != u[:-1])
    item_sample = torch.cumsum(new, 0) - 1
    sample_u, sample_weight = u[new], weight[new]
    position, arrival, sigma_trans, sigma_time, charge = sample_state(sample_u, sample_weight, pair_of_item[new],
                                                                      pairs, segments, detached, detector)
    # --- items whose cloud reaches the table and that carry charge
    offset = position[item_sample] - pairs.center[pair_of_item]
    reach = torch.tensor(table.shape[:2], dtype=dtype, device=device)[None, :] * table.bin_size
    if table.interpolation == "nearest":
        inside = (offset.abs() < reach).all(dim=1)
    else:
        inside = (offset.abs() - options.n_sigma * sigma_trans[item_sample, None]
                  < reach + 0.5 * table.bin_size).all(dim=1)
    keep = inside & (charge[item_sample] != 0)
    pair_of_item, item_sample = pair_of_item[keep], item_sample[keep]
    kept, item_sample = torch.unique(item_sample, return_inverse=True)
    sample_u, sample_weight, arrival, sigma_time = sample_u[kept], sample_weight[kept], arrival[kept], sigma_time[kept]
    n_samples = kept.numel()
    column = pairs.ix[pair_of_item]
    row = pairs.iy[pair_of_item]
    n_columns_max = int(column.max()) + 1 if column.numel() else 1
    n_rows_max = int(row.max()) + 1 if row.numel() else 1
    # --- samples by their number of pixel rows
    row_count = torch.bincount(torch.unique(item_sample * n_rows_max + row) // n_rows_max, minlength=n_samples)
    by_rows = torch.argsort(row_count, stable=True)
    rank = torch.empty_like(by_rows)
    rank[by_rows] = torch.arange(n_samples, device=device)
    item_sample = rank[item_sample]
    sample_u, sample_weight, arrival, sigma_time = (t[by_rows] for t in (sample_u, sample_weight, arrival, sigma_time))
    # --- items by (sample, pixel column, pixel row); columns and rows of each sample
    order = torch.argsort((item_sample * n_columns_max + column) * n_rows_max + row)
    pair_of_item, item_sample, column, row = pair_of_item[order], item_sample[order], column[order], row[order]
    columns, item_column = torch.unique_consecutive(item_sample * n_columns_max + column, return_inverse=True)
    rows, item_row = torch.unique(item_sample * n_rows_max + row, return_inverse=True)
    column_sample, row_sample = columns // n_columns_max, rows // n_rows_max
    sample_rows = _starts(row_sample, n_samples)
    if table.interpolation == "nearest":
        half = 1
    else:
        half = int(math.ceil(options.n_sigma * float(sigma_time.max()) / table.sampling)) + 1 if n_samples else 1
    return TableItems(pair=pair_of_item, item_sample=item_sample,
                      sample_pair=_first_of(item_sample, n_samples, pair_of_item), sample_u=sample_u,
                      sample_weight=sample_weight, sample_items=_starts(item_sample, n_samples),
                      sample_columns=_starts(column_sample, n_samples), sample_rows=sample_rows,
                      column_pair=_first_of(item_column, columns.numel(), pair_of_item), column_sample=column_sample,
                      row_pair=_first_of(item_row, rows.numel(), pair_of_item), row_sample=row_sample,
                      item_column=item_column, item_rank=item_row - sample_rows[item_sample], arrival=arrival,
                      sigma_time=sigma_time, half_nodes=half, bins_per_tick=bins_per_tick(table, detector))


@torch.no_grad()
def plan_ticks(items: TableItems, pairs: Pairs, pixel_of_pair: torch.Tensor, n_pixels: int,
               segments: SegmentState, detector: Detector, table: ResponseTable, options: TableOptions,
               phase: float = 0.0) -> TablePlan:
    """Tick windows of the samples on the sampling grid shifted by ``phase`` µs, and the pixel windows."""
    device = pairs.segment.device
    dtype = segments.start.dtype
    segment = pairs.segment[items.sample_pair]
    shift = segments.time_shift.detach()[segment] + phase
    arrival, sigma_time = items.arrival, items.sigma_time
    # --- tick windows (per sample): the table's span (nodes −1 … Nt, the zero nodes included) ± n_sigma σ_t
    step_t = table.sampling
    if table.interpolation == "nearest":
        lo_time = arrival - table.time_window
        hi_time = arrival
    else:
        lo_time = arrival - table.time_window - step_t - options.n_sigma * sigma_time
        hi_time = arrival - table.time_window + table.shape[2] * step_t + options.n_sigma * sigma_time
    first_tick = torch.floor((lo_time - shift) / detector.tick).long()
    last_tick = torch.floor((hi_time - shift) / detector.tick).long() + 1
    first_tick = torch.maximum(first_tick, segments.first_tick[segment])
    ticks = int((last_tick - first_tick + 1).max()) if first_tick.numel() else 1
    # bin coordinate of the first tick: (t − t_a + T_w)/Δ; its first smearing node floor(·) − J + 1
    t_first = first_tick.to(dtype) * detector.tick + shift
    first_bin = torch.floor((t_first - arrival + table.time_window) / step_t).long() - items.half_nodes + 1
    item_first_tick = first_tick[items.item_sample]
    n_items = items.pair.numel()
    # --- pixel windows (pixel_windows)
    big = torch.iinfo(torch.long).max
    pixel = pixel_of_pair[items.pair]
    lo = torch.full((n_pixels,), big, dtype=torch.long, device=device).scatter_reduce(0, pixel, item_first_tick,
                                                                                      "amin")
    hi = torch.full((n_pixels,), -big, dtype=torch.long, device=device).scatter_reduce(
        0, pixel, item_first_tick + ticks - 1, "amax")
    empty = lo == big
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    pixel_start, pixel_width, pixel_offset, buffer_size = pixel_windows(lo, hi)
    return TablePlan(pair=items.pair, u=items.sample_u[items.item_sample],
                     weight=items.sample_weight[items.item_sample], first_tick=item_first_tick[:, None],
                     n_ticks=torch.full((n_items, 1), ticks, dtype=torch.long, device=device),
                     pixel_of_pair=pixel_of_pair, pixel_start=pixel_start, pixel_width=pixel_width,
                     pixel_offset=pixel_offset, buffer_size=buffer_size, items=items, phase=phase,
                     first_bin=first_bin, ticks_per_item=ticks)


def transverse_weights(offset: torch.Tensor, sigma: torch.Tensor, bin_size: float, n_bins: int) -> torch.Tensor:
    """[S, n_bins] weight of each table bin along one axis for clouds at ``offset`` [S] (signed, cm) of width
    ``sigma`` [S]: the exact Gaussian expectation of every signed node's hat, folded onto |offset| (nodes at
    ±(i + ½)·b share bin i).  Sums to the fraction of the cloud within the table's reach."""
    node = torch.arange(-n_bins, n_bins, device=offset.device)
    centre = (node.to(offset.dtype) + 0.5) * bin_size
    weight = hat_expectation(offset[:, None] - centre[None, :], sigma[:, None], bin_size)   # [S, 2·n_bins]
    index = mirrored_index(node, n_bins)
    return weight.new_zeros((offset.shape[0], n_bins)).index_add(1, index, weight)


def column_waveforms(values: torch.Tensor, weight_x: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """W [C, R, Nt] = Σ_ij w_x[c, i]·w_y[c, r, j]·R[i, j, :] for the columns' x weights ``weight_x`` [C, Nx] and
    the y weights of their rows ``row_weights`` [C, R, Ny]: the x contraction once per column (a matrix product
    with the table), then one small product per column.  Backward recomputes the x contraction [C, Ny, Nt]
    instead of keeping it."""
    return _ColumnWaveforms.apply(values, weight_x, row_weights)


class _ColumnWaveforms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, weight_x, row_weights):
        ctx.save_for_backward(values, weight_x, row_weights)
        return torch.bmm(row_weights, _x_contraction(values, weight_x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        values, weight_x, row_weights = ctx.saved_tensors
        nx, ny, nt = values.shape
        grad_values = grad_weight_x = grad_row_weights = None
        if ctx.needs_input_grad[2]:
            grad_row_weights = torch.bmm(grad, _x_contraction(values, weight_x).transpose(1, 2))
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_partial = torch.bmm(row_weights.transpose(1, 2), grad).reshape(-1, ny * nt)     # [C, Ny·Nt]
            if ctx.needs_input_grad[0]:
                grad_values = (weight_x.transpose(0, 1) @ grad_partial).reshape(nx, ny, nt)
            if ctx.needs_input_grad[1]:
                grad_weight_x = grad_partial @ values.reshape(nx, ny * nt).transpose(0, 1)
        return grad_values, grad_weight_x, grad_row_weights


def _x_contraction(values: torch.Tensor, weight_x: torch.Tensor) -> torch.Tensor:
    """[C, Ny, Nt] = Σ_i w_x[c, i]·R[i, :, :]."""
    nx, ny, nt = values.shape
    return (weight_x @ values.reshape(nx, ny * nt)).reshape(-1, ny, nt)


def time_smear(waveform: torch.Tensor, kernel: torch.Tensor, first_bin: torch.Tensor, ticks: int,
               bins_per_tick: int) -> torch.Tensor:
    """out[c, r, n] = Σ_j kernel[c, j]·W[c, r, first_bin[c] + n·m + j] [C, R, ticks] for waveforms W [C, R, Nt + 1]
    on the table's Nt time bins followed by a zero bin (which the bins outside the table read), kernels [C, 2J]
    and m = ``bins_per_tick``.

    Evaluated as matrix products: the ticks are cut into blocks of 2J, each block reads (2J − 1)·m + 2J
    consecutive bins, and every block of a column is multiplied by the same banded (Toeplitz) matrix
    T[c, q, n] = kernel[c, q − n·m].  Backward keeps the waveforms and kernels (not the blocks)."""
    return _TimeSmear.apply(waveform, kernel, first_bin, ticks, bins_per_tick)


def _smear_layout(waveform: torch.Tensor, kernel: torch.Tensor, first_bin: torch.Tensor, ticks: int,
                  bins_per_tick: int):
    """Blocks of :func:`time_smear`: (bin index [C, R, blocks · width], Nt outside the table; lag index
    [width, block] into the kernel, 2J outside the band; blocks; width)."""
    n_columns, n_rows, n_bins = waveform.shape
    nodes = kernel.shape[1]
    block = nodes
    n_blocks = -(-ticks // block)
    width = (block - 1) * bins_per_tick + nodes
    device = waveform.device
    offsets = (torch.arange(n_blocks, device=device)[:, None] * (block * bins_per_tick)
               + torch.arange(width, device=device)[None, :]).reshape(-1)
    bins = first_bin[:, None] + offsets[None, :]                                   # [C, blocks · width]
    bins = torch.where((bins >= 0) & (bins < n_bins - 1), bins, torch.full_like(bins, n_bins - 1))
    index = bins[:, None, :].expand(n_columns, n_rows, -1)
    lag = torch.arange(width, device=device)[:, None] - torch.arange(block, device=device)[None, :] * bins_per_tick
    lag = torch.where((lag >= 0) & (lag < nodes), lag, torch.full_like(lag, nodes))
    return index, lag, n_blocks, width


def _toeplitz(kernel: torch.Tensor, lag: torch.Tensor) -> torch.Tensor:
    """[C, width, block] banded matrices kernel[c, lag] (zero where ``lag`` is 2J)."""
    n_columns = kernel.shape[0]
    padded = torch.cat([kernel, kernel.new_zeros((n_columns, 1))], dim=1)
    return padded.gather(1, lag.reshape(1, -1).expand(n_columns, -1)).reshape(n_columns, *lag.shape)


class _TimeSmear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, waveform, kernel, first_bin, ticks, bins_per_tick):
        n_columns, n_rows, _ = waveform.shape
        index, lag, n_blocks, width = _smear_layout(waveform, kernel, first_bin, ticks, bins_per_tick)
        windows = waveform.gather(2, index).reshape(n_columns, n_rows * n_blocks, width)
        out = torch.bmm(windows, _toeplitz(kernel, lag))                                       # [C, R·blocks, block]
        ctx.save_for_backward(waveform, kernel, first_bin)
        ctx.ticks, ctx.bins_per_tick = ticks, bins_per_tick
        return out.reshape(n_columns, n_rows, -1)[:, :, :ticks]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        waveform, kernel, first_bin = ctx.saved_tensors
        n_columns, n_rows, _ = waveform.shape
        nodes = kernel.shape[1]
        index, lag, n_blocks, width = _smear_layout(waveform, kernel, first_bin, ctx.ticks, ctx.bins_per_tick)
        block = lag.shape[1]
        grad_blocks = torch.nn.functional.pad(grad, (0, n_blocks * block - ctx.ticks)).reshape(
            n_columns, n_rows * n_blocks, block)
        grad_waveform = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_windows = torch.bmm(grad_blocks, _toeplitz(kernel, lag).transpose(1, 2))
            grad_waveform = torch.zeros_like(waveform).scatter_add_(2, index,
                                                                    grad_windows.reshape(n_columns, n_rows, -1))
        if ctx.needs_input_grad[1]:
            windows = waveform.gather(2, index).reshape(n_columns, n_rows * n_blocks, width)
            grad_toeplitz = torch.bmm(windows.transpose(1, 2), grad_blocks)                    # [C, width, block]
            grad_kernel = kernel.new_zeros((n_columns, nodes + 1)).index_add_(
                1, lag.reshape(-1), grad_toeplitz.reshape(n_columns, -1))[:, :nodes]
        return grad_waveform, grad_kernel, None, None, None


def _chunk_charge(lo: int, hi: int, plans, pairs: Pairs, segments: SegmentState, params: Params,
                  detector: Detector, table: ResponseTable, values: torch.Tensor, backend: str, *grad_inputs):
    """Charge per tick induced by the items of samples [lo, hi) on each plan's sampling grid: one flat buffer per
    plan.  The transverse work (x/y weights, contraction with the table) is done once for all the grids."""
    items = plans[0].items
    first_item, last_item = int(items.sample_items[lo]), int(items.sample_items[hi])
    sample_pair = items.sample_pair[lo:hi]
    position, arrival, sigma_trans, sigma_time, charge = sample_state(
        items.sample_u[lo:hi], items.sample_weight[lo:hi], sample_pair, pairs, segments, params, detector)
    nx, ny, nt = table.shape
    b, step_t = table.bin_size, table.sampling
    item_sample = items.item_sample[first_item:last_item] - lo
    pixel = plans[0].pixel_of_pair[items.pair[first_item:last_item]]
    shift = segments.time_shift[pairs.segment[sample_pair]]
    device = position.device
    nearest = table.interpolation == "nearest"
    if nearest:
        offset = position[item_sample] - pairs.center[items.pair[first_item:last_item]]
        ix = torch.round(offset[:, 0].detach().abs() / b - 0.5).long()
        iy = torch.round(offset[:, 1].detach().abs() / b - 0.5).long()
        inside = (ix < nx) & (iy < ny)
        waveform = values[ix.clamp(max=nx - 1), iy.clamp(max=ny - 1)] * inside[:, None]            # [I, Nt]
    else:
        first_column, last_column = int(items.sample_columns[lo]), int(items.sample_columns[hi])
        first_row, last_row = int(items.sample_rows[lo]), int(items.sample_rows[hi])
        column_sample = items.column_sample[first_column:last_column] - lo
        row_sample = items.row_sample[first_row:last_row] - lo
        offset_x = position[column_sample, 0] - pairs.center[items.column_pair[first_column:last_column], 0]
        offset_y = position[row_sample, 1] - pairs.center[items.row_pair[first_row:last_row], 1]
        weight_x = transverse_weights(offset_x, sigma_trans[column_sample], b, nx)                  # [C, Nx]
        weight_y = transverse_weights(offset_y, sigma_trans[row_sample], b, ny)                     # [rows, Ny]
        # each column's rows: its sample's rows, zero weights in the slots past the last
        sample_rows = items.sample_rows[lo:hi + 1] - first_row
        row_count = (sample_rows[1:] - sample_rows[:-1])[column_sample]
        slot = torch.arange(int(row_count.max()), device=device)
        row_index = torch.where(slot[None, :] < row_count[:, None], sample_rows[:-1][column_sample, None] + slot,
                                torch.full_like(row_count, last_row - first_row)[:, None])
        row_weights = torch.cat([weight_y, weight_y.new_zeros((1, ny))])[row_index]                 # [C, R, Ny]
        waveform = column_waveforms(values, weight_x, row_weights)                             # [C, R, Nt + 1]
        slot_index = (items.item_column[first_item:last_item] - first_column) * slot.numel() \
            + items.item_rank[first_item:last_item]
        nodes = 2 * items.half_nodes
    buffers = []
    for plan in plans:
        ticks = plan.ticks_per_item
        first_tick = plan.first_tick[first_item:last_item, 0]
        sample_first_tick = first_tick[items.sample_items[lo:hi] - first_item]
        t_first = sample_first_tick.to(position.dtype) * detector.tick + shift + plan.phase   # [S] µs
        if nearest:
            t = t_first[:, None] + torch.arange(ticks, device=device)[None, :] * detector.tick
            since_start = (t - arrival[:, None] + table.time_window).detach()[item_sample]
            k = torch.round(since_start / step_t).long()
            valid = (since_start > 0) & (since_start < table.time_window) & (k >= 0) & (k < nt)
            response = torch.gather(waveform, 1, k.clamp(0, nt - 1)) * valid
            values_out = (charge * detector.tick)[item_sample, None] * response                 # electrons per tick
        else:
            # time weights (per sample): node j of tick 0 is bin first_bin + j, at τ = bin·Δ − T_w; y = t − t_a − τ
            first_bin = plan.first_bin[lo:hi]
            bins = first_bin[:, None] + torch.arange(nodes, device=device)[None, :]
            y = t_first[:, None] - arrival[:, None] - (bins.to(position.dtype) * step_t - table.time_window)
            kernel = hat_expectation(y, sigma_time[:, None], step_t) * (charge * detector.tick)[:, None]   # [S, 2J]
            response = time_smear(waveform, kernel[column_sample], first_bin[column_sample], ticks,
                                  items.bins_per_tick)                                             # [C, R, ticks]
            values_out = response.flatten(0, 1)[slot_index]                                     # electrons per tick
        flat = window_offset(plan, pixel, first_tick)[:, None] + torch.arange(ticks, device=device)[None, :]
        buffers.append(scatter_sum(values_out.reshape(-1), flat.reshape(-1), plan.buffer_size, backend))
    return tuple(buffers)


def induce_table(pairs: Pairs, pixel_of_pair: torch.Tensor, n_pixels: int, segments: SegmentState, params: Params,
                 detector: Detector, table: ResponseTable, options: Optional[TableOptions] = None,
                 max_elements: int = 2_000_000, checkpoint: Optional[bool] = None, backend: str = "torch",
                 progress=None, graph_budget: Optional[int] = None):
    """Flat per-pixel-window charge buffer (electrons per tick) and its plan, as :func:`sparsetpc.induction.induce`
    (one sampling grid: :func:`induce_table_phases`)."""
    return induce_table_phases(pairs, pixel_of_pair, n_pixels, segments, params, detector, table, options,
                               max_elements, checkpoint, backend, progress, graph_budget)[0]


def induce_table_phases(pairs: Pairs, pixel_of_pair: torch.Tensor, n_pixels: int, segments: SegmentState,
                        params: Params, detector: Detector, table: ResponseTable,
                        options: Optional[TableOptions] = None, max_elements: int = 2_000_000,
                        checkpoint: Optional[bool] = None, backend: str = "torch", progress=None,
                        graph_budget: Optional[int] = None, phases=(0.0,)):
    """[(buffer, plan)] per sampling grid: the segments' time shift plus each of ``phases`` µs (the clock phases
    of the relaxed front end).  The transverse work is shared by the grids.

    Samples are processed in chunks that hold at most ``max_elements`` · :data:`FLOATS_PER_ELEMENT` floats.  With
    gradients each chunk is checkpointed (backward recomputes it) when ``checkpoint`` is True, or when it is None
    and the graph of all chunks would exceed ``graph_budget`` bytes (None: always)."""
    options = options or TableOptions()
    items = plan_items(pairs, segments, params, detector, table, options)
    plans = [plan_ticks(items, pairs, pixel_of_pair, n_pixels, segments, detector, table, options, phase)
             for phase in phases]
    dtype, device = segments.start.dtype, segments.start.device
    values = table.values.to(dtype=dtype, device=device)
    if table.interpolation == "linear":              # a zero time bin after the table (time_smear reads it outside)
        values = torch.nn.functional.pad(values, (0, 1))
    grad_inputs = [t for t in (segments.start, segments.end, segments.n_electrons, segments.t_start,
                               segments.t_end, *[getattr(params, n) for n in params.names()]) if t.requires_grad]
    use_checkpoint = (torch.is_grad_enabled() and bool(grad_inputs)) if checkpoint is None else checkpoint
    held, graph = _sample_elements(plans, table)
    if checkpoint is None and use_checkpoint and graph_budget is not None:
        use_checkpoint = int(graph.sum()) * (torch.finfo(dtype).bits // 8) > graph_budget
    buffers = [torch.zeros(plan.buffer_size, dtype=dtype, device=device) for plan in plans]
    for lo, hi in chunk_bounds(held, max_elements * FLOATS_PER_ELEMENT):
        if use_checkpoint:
            parts = torch.utils.checkpoint.checkpoint(_chunk_charge, lo, hi, plans, pairs, segments, params,
                                                      detector, table, values, backend, *grad_inputs,
                                                      use_reentrant=False)
        else:
            parts = _chunk_charge(lo, hi, plans, pairs, segments, params, detector, table, values, backend)
        buffers = [buffer + part for buffer, part in zip(buffers, parts)]
        if progress is not None:
            progress(int(items.sample_items[hi] - items.sample_items[lo]) * len(plans))
    return list(zip(buffers, plans))


def _sample_elements(plans, table: ResponseTable):
    """Per sample [S]: the floats a chunk holds while it evaluates the sample's items on every plan's grid, and
    those its graph keeps for backward (int64 indices count as one float)."""
    items = plans[0].items
    nx, ny, nt = table.shape
    nodes = 2 * items.half_nodes
    n_items = (items.sample_items[1:] - items.sample_items[:-1]).cpu()
    columns = (items.sample_columns[1:] - items.sample_columns[:-1]).cpu()
    rows = (items.sample_rows[1:] - items.sample_rows[:-1]).cpu()
    if table.interpolation == "nearest":
        held = n_items * (nt + sum(3 * nt + 4 * plan.ticks_per_item for plan in plans))
        graph = n_items * (nt + sum(3 * plan.ticks_per_item + 1 for plan in plans))
        return held, graph
    block, width = nodes, (nodes - 1) * items.bins_per_tick + nodes          # time_smear's blocks
    # transverse (once): x contraction, waveforms, the weights' temporaries; its graph: waveforms and row weights
    # (time_smear, column_waveforms), x weights, hat arguments, row index
    held = columns * (ny * nt + rows * nt + 30 * nx) + rows * 30 * ny + 20 * nodes
    graph = columns * (rows * (nt + ny + 1) + 6 * nx) + rows * 4 * ny + 20
    for plan in plans:
        ticks = plan.ticks_per_item
        blocks = -(-ticks // block)
        # time blocks (read, masked, multiplied), Toeplitz matrix, values and scatter index; graph: kernels, index
        held = held + columns * (rows * blocks * (2 * width + block) + width * block) + n_items * 4 * ticks
        graph = graph + columns * nodes + n_items * (ticks + 1) + 2 * nodes
    return held, graph


def table_horizon(plan: TablePlan, pairs: Pairs, segments: SegmentState, params: Params, detector: Detector,
                  table: ResponseTable, options: Optional[TableOptions] = None) -> torch.Tensor:
    """Last column [U] (continuous, differentiable) at which a pixel's window may trigger (as
    :func:`sparsetpc.induction.pixel_horizon`): the latest item's end of signal plus the integration ticks."""
    options = options or TableOptions()
    n_pixels = plan.pixel_width.numel()
    dtype = segments.start.dtype
    if plan.pair.numel() == 0:
        return torch.full((n_pixels,), -1.0, dtype=dtype, device=segments.start.device)
    items = plan.items
    _, arrival, _, sigma_time, _ = sample_state(items.sample_u, items.sample_weight, items.sample_pair, pairs,
                                                segments, params, detector)
    shift = segments.time_shift[pairs.segment[items.sample_pair]] + plan.phase
    if table.interpolation == "nearest":
        end = arrival
    else:
        end = arrival - table.time_window + table.shape[2] * table.sampling + options.n_sigma * sigma_time
    last = ((end - shift) / detector.tick)[items.item_sample]
    return horizon_columns(last, plan.pixel_of_pair[plan.pair], plan)
