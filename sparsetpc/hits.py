"""Simulation output: one entry per pixel readout (a LArPix hit)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

#: dtype of the ``hits`` dataset written by ``sparsetpc simulate`` (units in ``HIT_UNITS``).
HIT_DTYPE = np.dtype([
    ("event_id", "i8"), ("pixel_plane", "i4"), ("pixel_ix", "i4"), ("pixel_iy", "i4"),
    ("x", "f8"), ("y", "f8"), ("t", "f8"), ("adc", "f8"), ("readout", "i4"),
])
HIT_UNITS = {
    "event_id": "", "pixel_plane": "", "pixel_ix": "pixel index along x inside the plane (0..139)",
    "pixel_iy": "pixel index along y (0..279)", "x": "cm (pixel centre)", "y": "cm (pixel centre)",
    "t": "us (threshold crossing on the event time axis)", "adc": "ADC counts (pedestal included)",
    "readout": "readout slot of the pixel (0..9)",
}


def check_finite_readouts(table: np.ndarray, source: str, consequence: str) -> None:
    """Raise :class:`~sparsetpc.exceptions.InputFormatError` if a float column of a readout table (``HIT_DTYPE``
    names) holds NaN or ±inf, naming the file, column, count and first offending readout."""
    from .exceptions import InputFormatError
    for name in table.dtype.names:
        column = np.asarray(table[name])
        if column.dtype.kind != "f":
            continue
        bad = ~np.isfinite(column)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputFormatError(f"{source}: {int(bad.sum())} non-finite value(s) in column {name!r} (first: "
                                   f"readout {first}, event {int(table['event_id'][first])}, value {column[first]}); "
                                   f"{consequence}")


#: Fields of :class:`Hits` with one entry per readout.
PER_READOUT = ("event", "pixel", "readout", "plane", "ix", "iy", "x", "y", "t", "adc")
#: Relaxed mode's per-readout moments (None in the other modes).
MOMENTS = ("adc_variance", "t_variance", "adc_t_covariance", "adc_t_previous_covariance", "t_previous_covariance",
           "existence_slope")
#: Optional per-readout fields (None when absent).
OPTIONAL = ("weight",) + MOMENTS


@dataclass
class Hits:
    """Readouts above threshold, sorted by (event, plane, ix, iy, readout).

    Tensors are 1-D with one entry per readout.  ``x``, ``y`` [cm] are pixel centres, ``t`` [µs] the
    threshold-crossing time (differentiable), ``adc`` the ADC value (float in relaxed mode, integer-valued
    in hard mode; differentiable in relaxed mode, where it is the expected ADC given that the readout exists
    and ``weight`` the probability that it does), ``pixel`` the row of ``pixel_table`` (event, plane, ix, iy),
    ``readout`` the readout slot.  ``waveforms``: optional :class:`sparsetpc.induction.Waveforms`.
    """

    event: torch.Tensor
    pixel: torch.Tensor
    readout: torch.Tensor
    plane: torch.Tensor
    ix: torch.Tensor
    iy: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    adc: torch.Tensor
    pixel_table: torch.Tensor          # [U, 4] int64 (event, plane, ix, iy)
    waveforms: Optional[object] = None
    n_skipped_segments: int = 0        # segments outside every drift volume (no charge)
    weight: Optional[torch.Tensor] = None  # probability that each readout exists (relaxed mode); None = all 1
    adc_variance: Optional[torch.Tensor] = None  # relaxed mode: variance of hard mode's ADC [ADC²] given the readout
    t_variance: Optional[torch.Tensor] = None    # relaxed mode: variance of its crossing time [µs²]
    adc_t_covariance: Optional[torch.Tensor] = None  # relaxed mode: covariance of ADC and time [ADC·µs]
    # relaxed mode: covariance of the ADC [ADC·µs] and of the time [µs²] with the previous readout's time on the
    # pixel (a readout starts where the previous one ended: 0 for the first)
    adc_t_previous_covariance: Optional[torch.Tensor] = None
    t_previous_covariance: Optional[torch.Tensor] = None
    # relaxed mode: derivative of the probability that this readout exists given the previous one (w_s/w_{s−1}) with
    # respect to the previous readout's time [1/µs] (0 for the first)
    existence_slope: Optional[torch.Tensor] = None
    n_capped_pixels: float = 0.0       # pixels that would fire more than max_readouts (relaxed: expected number)

    def __len__(self) -> int:
        return int(self.adc.shape[0])

    def select(self, mask: torch.Tensor) -> "Hits":
        """The readouts where ``mask`` [N] is True (pixel_table and waveforms kept whole)."""
        picked = {name: getattr(self, name)[mask] for name in PER_READOUT}
        optional = {name: None if getattr(self, name) is None else getattr(self, name)[mask] for name in OPTIONAL}
        return Hits(**picked, **optional, pixel_table=self.pixel_table, waveforms=self.waveforms,
                    n_skipped_segments=self.n_skipped_segments, n_capped_pixels=self.n_capped_pixels)

    @classmethod
    def concat(cls, parts) -> "Hits":
        """One :class:`Hits` of several (e.g. one per event): pixel tables stacked, pixel rows renumbered,
        weights kept (1 where a part has none).  Waveforms are not carried."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        offsets = torch.cumsum(torch.tensor([0] + [h.pixel_table.shape[0] for h in parts[:-1]]), 0)
        merged = {name: torch.cat([getattr(h, name) for h in parts]) for name in PER_READOUT if name != "pixel"}
        weight = None
        if any(h.weight is not None for h in parts):
            weight = torch.cat([torch.ones_like(h.adc) if h.weight is None else h.weight for h in parts])
        for name in MOMENTS:
            # kept only when every part has them (relaxed mode)
            merged[name] = None if any(getattr(h, name) is None for h in parts) else \
                torch.cat([getattr(h, name) for h in parts])
        return cls(pixel=torch.cat([h.pixel + int(o) for h, o in zip(parts, offsets)]),
                   pixel_table=torch.cat([h.pixel_table for h in parts]), weight=weight,
                   n_skipped_segments=sum(h.n_skipped_segments for h in parts),
                   n_capped_pixels=sum(h.n_capped_pixels for h in parts), **merged)

    def likely(self, threshold: float = 0.5) -> "Hits":
        """The readouts more probable than ``threshold`` (all of them outside relaxed mode): the point cloud
        for losses that take each readout as certain."""
        if self.weight is None:
            return self
        return self.select(self.weight.detach() >= threshold)

    def to_numpy(self) -> np.ndarray:
        out = np.zeros(len(self), dtype=HIT_DTYPE)
        out["event_id"] = self.event.cpu().numpy()
        out["pixel_plane"] = self.plane.cpu().numpy()
        out["pixel_ix"] = self.ix.cpu().numpy()
        out["pixel_iy"] = self.iy.cpu().numpy()
        for name in ("x", "y", "t", "adc"):
            out[name] = getattr(self, name).detach().cpu().double().numpy()
        out["readout"] = self.readout.cpu().numpy()
        return out
