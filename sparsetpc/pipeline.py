"""The forward model: segments → electrons → pixel waveforms → readouts (hits).

``simulate`` strings the pure stage functions together (quenching → drift → pixels → induction →
electronics).  Work is chunked by a memory budget in bytes; with gradients every chunk runs under
``torch.utils.checkpoint`` so backward holds one chunk's intermediates at a time.  Results do not depend on
the chunking (chunks only partition a sum).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import replace
from typing import Optional, Union

import torch

from . import drift as drift_stage
from .detector import Detector
from .electronics import (FrontEnd, check_mode, draw_readout_noise, expected_readout, hard_readout,
                          reference_readout)
from .exceptions import InputFormatError, MemoryBudgetError
from .hits import Hits
from .induction import (InductionOptions, SegmentState, association_width, induce, pixel_horizon,
                        to_waveforms)
from .induction_table import TableOptions, induce_table_phases, table_horizon
from .induction_table import association_margin as table_margin
from .field_response import resolve_response
from .params import Params
from .pixels import associate
from .quenching import quench
from .segments import Segments

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}

#: Bytes held per (sample, tick) element while a chunk is evaluated (forward + its recomputed backward),
#: in units of the float size; measured with benchmarks/scaling.py (≈ 25 live float temporaries + indices).
BYTES_PER_ELEMENT_FLOATS = 40

#: On CPU, chunks larger than this many elements only add allocation cost (page faults of fresh large tensors):
#: measured on the mixed sample, a 2 GB budget ran 2.2× slower than chunks of ~1.5e5 elements (11 s of system
#: time vs 0.3 s).  The memory budget still bounds every chunk from above.
CPU_CHUNK_ELEMENTS = 2 ** 19


def parse_memory(budget: Union[str, int, float]) -> int:
    """Bytes from ``2GB``, ``512MiB``, ``1.5e9`` or an int."""
    if isinstance(budget, (int, float)):
        value = float(budget)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(budget))
        if not match or match.group(2).lower() not in _UNITS:
            raise MemoryBudgetError(f"cannot read memory budget {budget!r}; use e.g. '2GB', '512MiB' or bytes")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1e6:
        raise MemoryBudgetError(f"memory budget {budget!r} is below 1 MB")
    return int(value)


def _pixel_table(pairs, segments: Segments, detector: Detector):
    """Unique pixels (event, plane, ix, iy), sorted, and the pixel row of every pair."""
    nx, ny = detector.n_pixels
    events = segments.event_id[pairs.segment]
    unique_events, event_rank = torch.unique(events, return_inverse=True)
    key = ((event_rank * detector.n_planes + pairs.plane) * nx + pairs.ix) * ny + pairs.iy
    unique_keys, pixel_of_pair = torch.unique(key, return_inverse=True)
    rank = unique_keys // (detector.n_planes * nx * ny)
    plane = (unique_keys // (nx * ny)) % detector.n_planes
    ix = (unique_keys // ny) % nx
    iy = unique_keys % ny
    table = torch.stack([unique_events[rank], plane, ix, iy], dim=1)
    return table, pixel_of_pair


def _electronics_groups(width: torch.Tensor, max_elements: int):
    """Pixels sorted by window width, grouped so that rows × max width ≤ max_elements."""
    order = torch.argsort(width.cpu(), stable=True)
    widths = width.cpu()[order]
    groups = []
    lo = 0
    n = len(order)
    while lo < n:
        rows = max(1, max_elements // max(int(widths[lo]), 1))
        hi = min(n, lo + rows)
        # widths increase: shrink until rows × width(hi-1) fits
        while hi - lo > 1 and (hi - lo) * int(widths[hi - 1]) > max_elements:
            hi = lo + max(1, (hi - lo) // 2)
        groups.append(order[lo:hi])
        lo = hi
    return groups


def _group_waveforms(buffer, plan, rows):
    width = plan.pixel_width[rows]
    columns = torch.arange(int(width.max()), device=buffer.device)
    index = plan.pixel_offset[rows][:, None] + columns[None, :]
    index = torch.where(columns[None, :] < width[:, None], index, torch.full_like(index, plan.buffer_size))
    return torch.cat([buffer, buffer.new_zeros(1)])[index]


def _relaxed_group(buffer, plan, rows, front_end, horizon):
    return expected_readout(_group_waveforms(buffer, plan, rows), front_end, horizon[rows], plan.pixel_width[rows],
                            moments=True, overflow=True, previous_covariances=True)


def _reference_group(buffer, plan, rows, front_end, draws):
    adc, crossing, valid = reference_readout(_group_waveforms(buffer, plan, rows), front_end, draws)
    zero = torch.zeros_like(adc)
    return adc, crossing, valid, valid.to(adc.dtype), zero, zero, zero, zero, zero, zero, adc.new_zeros(adc.shape[0])


def simulate(segments: Segments, detector: Optional[Detector] = None, params: Optional[Params] = None, *,
             mode: str = "relaxed", memory_budget: Union[str, int] = "2GB", quenching: str = "birks",
             noise: bool = False, seed: Optional[int] = None, return_waveforms: bool = False,
             options: Optional[InductionOptions] = None, front_end: Optional[FrontEnd] = None,
             backend: str = "torch", checkpoint: Optional[bool] = None, progress: bool = False,
             response=None) -> Hits:
    """Simulate the LArPix readout of ``segments`` (z = drift axis) for ``params``.

    ``mode``: ``relaxed`` (the expectation of the hard front end over its noise: smooth, every readout with the
    probability that it exists in ``hits.weight``), ``hard`` (larnd-sim's integer front end; with ``noise`` this
    is how data are simulated) or ``reference`` (the differentiable reference model's front end, for parity).
    ``memory_budget``: bytes (or '2GB') for the largest chunk of work; the computation is split accordingly.  With
    gradients, the induction keeps its graph for backward (instead of recomputing it chunk by chunk) when that
    graph takes at most half the budget (over all clock phases).
    ``noise``/``seed``: electronics noise from a seeded generator (reproducible).
    The work runs on ``params``' device and dtype; segments are moved there.
    Segments outside every drift volume carry no charge; their number is in ``hits.n_skipped_segments`` and a
    warning says how many.
    A pixel stores at most ``front_end.max_readouts`` readouts (larnd-sim's cap; a long pulse under a steep track
    would fire more): hard mode counts the readouts past the cap, relaxed mode the probability of a readout past it
    (the weight of the slot after the last); ``hits.n_capped_pixels`` holds the number of pixels that hit the cap
    (relaxed: its expectation) and one warning per call says how many (reference mode is not counted).
    ``response``: the pad response, ``None``/``"analytic"`` (physics.md §2.5, the default) or a
    :class:`~sparsetpc.field_response.ResponseTable` (larnd-sim's look-up table, neighbour induction included;
    :mod:`sparsetpc.induction_table`).
    """
    detector = detector or Detector.default()
    params = params or Params.nominal()
    params.validate()
    front_end = front_end or FrontEnd(tick=detector.tick)
    options = options or InductionOptions()
    table = resolve_response(response)
    check_mode(mode, noise)
    if len(segments) == 0:
        raise InputFormatError("no segments to simulate (empty input)")
    dtype, device = params.dtype, params.device
    if not dtype.is_floating_point:
        raise InputFormatError(f"parameters must be floating point, got {dtype}")
    segments = segments.to(dtype=dtype, device=device)
    for name in ("start", "end", "dE", "dEdx", "t_start", "t_end"):
        value = getattr(segments, name)
        if not bool(torch.isfinite(value.detach()).all()):
            raise InputFormatError(f"segments field {name} has non-finite values")
    budget = parse_memory(memory_budget)
    itemsize = torch.finfo(dtype).bits // 8
    max_elements = max(1000, budget // (BYTES_PER_ELEMENT_FLOATS * itemsize))
    if torch.device(device).type == "cpu":
        max_elements = min(max_elements, CPU_CHUNK_ELEMENTS)

    # recombination and drift (per segment)
    electrons = quench(segments.dEdx, segments.dE, params, quenching)
    drifted = drift_stage.drift_segments(segments.start, segments.end, electrons, params, detector,
                                         time_offset=segments.t_start)
    n_skipped = int((~drifted.valid).sum())
    if n_skipped == len(segments):
        raise InputFormatError(f"none of the {len(segments)} segments lies inside a drift volume of the detector "
                               "(are coordinates in cm, and x/z swapped so that z is the drift axis?)")
    if n_skipped:
        warnings.warn(f"{n_skipped} of {len(segments)} segment(s) have their midpoint outside every drift volume "
                      "and are not simulated (no charge)", stacklevel=2)
    sigma_far = association_width(segments.start, segments.end, drifted.z_anode, params)
    if table is None:
        margin = options.n_sigma_pad * sigma_far
    else:                               # the table's reach: neighbouring pixels included
        margin = table_margin(sigma_far, detector, table, TableOptions())
    pairs = associate(segments.start.detach(), segments.end.detach(), drifted.plane, margin, detector)
    pixel_table, pixel_of_pair = _pixel_table(pairs, segments, detector)
    n_pixels = pixel_table.shape[0]

    if options.reference_time_axis:
        with torch.no_grad():
            t_lo = torch.clamp(drifted.t_start.detach() - options.reference_time_padding, min=0.0)
            first_tick = torch.floor(t_lo / detector.tick + 0.5).long()
            time_shift = t_lo - first_tick.to(dtype) * detector.tick
    else:
        first_tick = torch.zeros(len(segments), dtype=torch.long, device=device)
        time_shift = torch.zeros(len(segments), dtype=dtype, device=device)
    generator = None
    if noise:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    # relaxed mode averages over clock phases: the sampling grid shifted by j/K of a tick (exactly: the
    # induction evaluates the current at the shifted ticks), each (pixel, slot) a mixture over the K phases
    phases = max(1, int(front_end.clock_phases)) if mode == "relaxed" else 1
    if phases > 1 and options.reference_time_axis:
        raise ValueError("clock-phase averaging (FrontEnd.clock_phases > 1) and reference_time_axis exclude each "
                         "other; use FrontEnd(clock_phases=1) for parity studies")
    buffer = plan = None
    sums = None
    overflow = None
    base_state = SegmentState(start=segments.start, end=segments.end, n_electrons=electrons, t_start=segments.t_start,
                              t_end=segments.t_end, z_anode=drifted.z_anode, time_shift=time_shift,
                              first_tick=first_tick)
    induced = None
    if table is not None:               # all phases at once: they share the transverse work
        bar, callback = _progress_bar(progress)
        induced = induce_table_phases(pairs, pixel_of_pair, n_pixels, base_state, params, detector, table, None,
                                      max_elements, checkpoint, backend, callback, graph_budget=budget // 2,
                                      phases=[detector.tick * k / phases for k in range(phases)])
        if bar is not None:
            bar.close()
    for phase_index in range(phases):
        phase = detector.tick * phase_index / phases
        state = replace(base_state, time_shift=time_shift + phase) if induced is None else base_state
        (phase_buffer, phase_plan, adc, crossing, valid, weight, adc_variance, crossing_variance,
         crossing_covariance, adc_previous, crossing_previous, existence, phase_overflow) = _phase_readouts(
            pairs, pixel_of_pair, n_pixels, state, params, detector, options, front_end, mode, noise, generator,
            max_elements, checkpoint, backend, progress, table, graph_budget=budget // (2 * phases),
            induced=None if induced is None else induced[phase_index])
        time = (phase_plan.pixel_start.to(dtype)[:, None] + crossing) * detector.tick + phase
        time_variance = crossing_variance * detector.tick ** 2
        covariance = crossing_covariance * detector.tick
        adc_previous_covariance = adc_previous * detector.tick
        time_previous_covariance = crossing_previous * detector.tick ** 2
        existence_slope = existence / detector.tick
        if phase_index == 0:
            buffer, plan = phase_buffer, phase_plan
        # per pixel: readouts past the cap (hard) or the probability of one (relaxed), averaged over the phases
        overflow = phase_overflow / phases if overflow is None else overflow + phase_overflow / phases
        if phases == 1:
            break
        # a readout below min_weight in one phase is absent there: it adds nothing to the mixture
        weight = torch.where(valid, weight, torch.zeros_like(weight))
        # the previous slot's time, for the covariances with it (E[x_s t_{s−1}] over the phases where s exists)
        previous_time = torch.cat([torch.zeros_like(time[:, :1]), time[:, :-1]], dim=1)
        terms = (weight, weight * adc, weight * time, weight * (adc_variance + adc * adc),
                 weight * (time_variance + time * time), weight * (covariance + adc * time),
                 weight * previous_time, weight * (adc_previous_covariance + adc * previous_time),
                 weight * (time_previous_covariance + time * previous_time),
                 # the existence slope of slot s, averaged with the weights of slot s − 1 (given that it exists)
                 torch.cat([torch.ones_like(weight[:, :1]), weight[:, :-1]], dim=1) * existence_slope)
        sums = terms if sums is None else tuple(x + y for x, y in zip(sums, terms))
    if phases > 1:
        # the mixture over phases: its mean, and its variance (E[x²] − mean², the phases' spread included)
        weight = sums[0] / phases
        valid = weight.detach() >= front_end.min_weight
        safe = torch.clamp(sums[0], min=torch.finfo(dtype).tiny)
        zero = torch.zeros_like(weight)
        adc = torch.where(valid, sums[1] / safe, zero)
        time = torch.where(valid, sums[2] / safe, zero)
        adc_variance = torch.where(valid, torch.clamp(sums[3] / safe - adc * adc, min=0.0), zero)
        time_variance = torch.where(valid, torch.clamp(sums[4] / safe - time * time, min=0.0), zero)
        covariance = torch.where(valid, sums[5] / safe - adc * time, zero)
        previous_mean = sums[6] / safe
        adc_previous_covariance = torch.where(valid, sums[7] / safe - adc * previous_mean, zero)
        time_previous_covariance = torch.where(valid, sums[8] / safe - time * previous_mean, zero)
        previous_weight = torch.cat([torch.full_like(sums[0][:, :1], float(phases)), sums[0][:, :-1]], dim=1)
        existence_slope = torch.where(valid, sums[9] / torch.clamp(previous_weight, min=torch.finfo(dtype).tiny), zero)

    n_capped = _warn_capped(overflow, mode, front_end.max_readouts)

    # hits, sorted by pixel then readout slot
    pixel_rows, slots = torch.nonzero(valid, as_tuple=True)
    table = pixel_table[pixel_rows]
    x0 = torch.as_tensor(detector.tpc_borders[:, 0, 0], dtype=dtype, device=device)[table[:, 1]]
    y0 = torch.as_tensor(detector.tpc_borders[:, 1, 0], dtype=dtype, device=device)[table[:, 1]]
    time = time[pixel_rows, slots]
    hits = Hits(event=table[:, 0], pixel=pixel_rows, readout=slots, plane=table[:, 1], ix=table[:, 2], iy=table[:, 3],
                x=x0 + (table[:, 2].to(dtype) + 0.5) * detector.pixel_pitch,
                y=y0 + (table[:, 3].to(dtype) + 0.5) * detector.pixel_pitch,
                t=time, adc=adc[pixel_rows, slots], pixel_table=pixel_table, n_skipped_segments=n_skipped,
                weight=weight[pixel_rows, slots], n_capped_pixels=n_capped)
    if mode == "relaxed":
        hits.adc_variance = adc_variance[pixel_rows, slots]
        hits.t_variance = time_variance[pixel_rows, slots]
        hits.adc_t_covariance = covariance[pixel_rows, slots]
        hits.adc_t_previous_covariance = adc_previous_covariance[pixel_rows, slots]
        hits.t_previous_covariance = time_previous_covariance[pixel_rows, slots]
        hits.existence_slope = existence_slope[pixel_rows, slots]
    if return_waveforms:
        hits.waveforms = to_waveforms(buffer, plan, pixel_table)
    return hits


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _warn_capped(overflow: Optional[torch.Tensor], mode: str, max_readouts: int) -> float:
    """Warn once about pixels that would fire more than ``max_readouts`` readouts; returns their number (hard
    mode) or its expectation (relaxed).  ``overflow`` [U]: readouts past the cap (hard) or the probability of one
    (relaxed)."""
    if overflow is None or overflow.numel() == 0:
        return 0.0
    overflow = overflow.detach()
    if mode == "hard":
        n_pixels = int((overflow > 0).sum())
        if n_pixels:
            warnings.warn(f"{n_pixels} pixel(s) would fire more than max_readouts={max_readouts} readouts: "
                          f"{int(overflow.sum())} readout(s) past the {_ordinal(max_readouts)} were dropped "
                          "(larnd-sim's cap, FrontEnd.max_readouts)", stacklevel=3)
        return float(n_pixels)
    if mode == "relaxed":
        expected = float(overflow.sum())
        if expected >= 0.5:
            likely = int((overflow >= 0.5).sum())
            warnings.warn(f"an expected {expected:.2f} pixel(s) ({likely} with probability ≥ 0.5) would fire more "
                          f"than max_readouts={max_readouts} readouts: readouts past the {_ordinal(max_readouts)} "
                          "are dropped (larnd-sim's cap, FrontEnd.max_readouts)", stacklevel=3)
        return expected
    return 0.0


def _progress_bar(progress: bool):
    """(tqdm bar, its update callback) of the induction, or (None, None)."""
    if not progress:
        return None, None
    from tqdm.auto import tqdm
    bar = tqdm(desc="induction", unit="sample", leave=False)
    return bar, bar.update


def _phase_readouts(pairs, pixel_of_pair, n_pixels, state, params, detector, options, front_end, mode, noise,
                    generator, max_elements, checkpoint, backend, progress, table=None, graph_budget=None,
                    induced=None):
    """Induction and electronics on one sampling grid (``state.time_shift``): (buffer, plan, adc, crossing,
    valid, weight, adc_variance, crossing_variance, adc_crossing_covariance, adc_previous_covariance,
    crossing_previous_covariance, existence_slope, overflow), ten [U, R], the crossing
    in columns of each pixel's window (moments: relaxed mode only, else 0); ``overflow`` [U]: readouts past the
    cap (hard), the probability of one (relaxed), 0 (reference).  ``induced``: the (buffer, plan) of a response
    table's induction (:func:`~sparsetpc.induction_table.induce_table_phases`, whose segment state ``state`` then
    is; the plan carries the grid's phase), else the analytic induction runs here."""
    device = state.start.device
    if induced is None:
        bar, callback = _progress_bar(progress)
        buffer, plan = induce(pairs, pixel_of_pair, n_pixels, state, params, detector, options, max_elements,
                              checkpoint, backend, callback, graph_budget=graph_budget)
        if bar is not None:
            bar.close()
    else:
        buffer, plan = induced
    # electronics, in groups of pixels of similar window width
    use_checkpoint = (torch.is_grad_enabled() and buffer.requires_grad) if checkpoint is None else checkpoint
    readouts = front_end.max_readouts
    # per (pixel, slot): adc, crossing, valid, weight and the six moments, in the order the groups return them
    columns = [buffer.new_zeros((n_pixels, readouts)) for _ in range(10)]
    columns[2] = columns[2].bool()                                       # valid
    overflow = buffer.new_zeros(n_pixels).detach()
    horizon = None
    if mode == "relaxed" and n_pixels:
        horizon = (pixel_horizon(plan, pairs, state, params, detector, options) if table is None
                   else table_horizon(plan, pairs, state, params, detector, table))
    if n_pixels:
        # the relaxed front end holds [rows, width, quadrature nodes] temporaries
        per_element = 4 * (max(1, front_end.quadrature_nodes) if mode == "relaxed" else 1)
        group_elements = max(1, max_elements // per_element)
        for rows in _electronics_groups(plan.pixel_width, group_elements):
            rows = rows.to(device)
            if mode == "hard":
                a, c, v, o = hard_readout(_group_waveforms(buffer.detach(), plan, rows), front_end, noise, generator,
                                          return_dropped=True)
                group = [a, c, v, v.to(buffer.dtype)] + [torch.zeros_like(a)] * 6       # no moments
                o = o.to(buffer.dtype)
            elif mode == "relaxed":
                arguments = (_relaxed_group, buffer, plan, rows, front_end, horizon)
            else:
                draws = draw_readout_noise(len(rows), front_end, buffer, generator) if noise else None
                arguments = (_reference_group, buffer, plan, rows, front_end, draws)
            if mode != "hard":
                *group, o = (torch.utils.checkpoint.checkpoint(*arguments, use_reentrant=False) if use_checkpoint
                             else arguments[0](*arguments[1:]))
            columns = [column.index_copy(0, rows, part) for column, part in zip(columns, group)]
            overflow = overflow.index_copy(0, rows, o.detach())
    return (buffer, plan, *columns, overflow)
