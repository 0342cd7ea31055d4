"""Loss functions comparing simulated hits (or waveforms) to a target.

Each loss lives in its own module as a pure tensor function; :class:`HitsLoss` applies one of them to
``Hits``-like objects (attributes ``event``, ``x``, ``y``, ``t``, ``adc`` and, for ``mse``, ``waveforms``)
event by event and averages over events ("units": in a fit each track is simulated as its own event).

Empty clouds: when one side has hits in an event and the other has none the event contributes
``empty_penalty`` (no gradient; the fit cannot learn from it, but the value shows it); both empty → 0.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from .chamfer import chamfer_loss
from .chi2 import noise_sigma_adc, readout_chi2, readout_keys
from .likelihood import readout_nll
from .sdtw import sdtw_loss, soft_dtw, soft_dtw_divergence
from .sinkhorn import sinkhorn_loss
from .space_match import space_match_loss
from .waveform_mse import waveform_keys, waveform_mse

CLOUD_LOSSES = {
    "space_match": space_match_loss,
    "chamfer": chamfer_loss,
    "sinkhorn": sinkhorn_loss,
    "sdtw": sdtw_loss,
}
LOSS_NAMES = tuple(CLOUD_LOSSES) + ("mse", "chi2", "likelihood")
#: losses whose value is a χ² or −log L summed over units (σ from the curvature are statistical errors)
STATISTICAL_LOSSES = {"chi2": 1.0, "likelihood": 0.5}     # name → ERRORDEF up
COLUMNS = ("x", "y", "t", "adc")
#: default per-axis scales: one pixel pitch in x, y; the drift time over one pitch in t [µs]; ADC: None =
#: mean |ADC| of the target hits of the event (the reference model's choice).
DEFAULT_SCALES = {"x": 0.4434, "y": 0.4434, "t": 2.8, "adc": None}

__all__ = ["HitsLoss", "LOSS_NAMES", "STATISTICAL_LOSSES", "readout_nll", "readout_chi2", "readout_keys", "noise_sigma_adc", "chamfer_loss", "sdtw_loss", "soft_dtw", "soft_dtw_divergence",
           "sinkhorn_loss", "space_match_loss", "waveform_mse", "waveform_keys", "hit_cloud"]


def hit_cloud(hits, columns: Sequence[str] = COLUMNS, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    dtype = hits.adc.dtype if hits.adc.is_floating_point() else torch.get_default_dtype()
    cols = [getattr(hits, c).to(dtype) for c in columns]
    cloud = torch.stack(cols, dim=1) if cols else torch.zeros(0, 0)
    return cloud if mask is None else cloud[mask]


def _likely(hits, threshold: float = 0.5):
    """``hits.likely(threshold)`` (the readouts more probable than ``threshold``), keeping a per-readout
    ``adc_sigma`` (set by ``calibration.readout_sigma.with_readout_sigma``) on the readouts kept."""
    if not hasattr(hits, "likely"):
        return hits
    out = hits.likely(threshold)
    sigma = getattr(hits, "adc_sigma", None)
    if sigma is not None and out is not hits:
        weight = getattr(hits, "weight", None)
        out.adc_sigma = sigma if weight is None else sigma[weight.detach() >= threshold]
    return out


class HitsLoss:
    """Callable ``loss(guess, target, n_units=None) -> scalar``: mean over events of the per-event loss.

    ``name``: one of ``LOSS_NAMES``.  ``scales``: per-axis scale overrides (keys x, y, t, adc).
    ``options``: keyword arguments of the pure function (``temperature``, ``eps``, ``n_iter``, ``gamma``...).
    ``n_units``: divide the summed per-event losses by this (the number of tracks in the batch), so that events
    with no hits on either side still count and sharded batches average exactly like unsharded ones.

    ``chi2`` (see ``losses/chi2.py``): Σ over matched readouts of ((ADC_g − ADC_t)/σ_ADC)², divided by
    ``n_units`` like the others; ``self.chi2`` is True so that the fitter sums over units for the Hessian (the
    total χ², for which cov = 2H⁻¹ with up = 1).  Options: ``sigma`` (default: the target's per-readout
    ``adc_sigma`` when it carries one (fitter option ``sigma_replicas``), else the noise model, ≈1.04 ADC),
    ``unmatched`` (``ignore`` | ``threshold``), ``max_dt`` (µs, default 1.0).  ``last_counts`` holds the matched
    and unmatched readout counts of the last call.
    """

    def __init__(self, name: str = "space_match", scales: Optional[Mapping[str, float]] = None,
                 empty_penalty: float = 1.0, **options):
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
        self.name = name
        self.scales = dict(DEFAULT_SCALES)
        for key, value in (scales or {}).items():
            if key not in self.scales:
                raise ValueError(f"unknown loss scale axis {key!r}; axes: {', '.join(self.scales)}")
            self.scales[key] = None if value is None else float(value)
        self.empty_penalty = float(empty_penalty)
        self.options = options
        self.chi2 = name == "chi2"
        self.likelihood = name == "likelihood"
        #: the fitter sums this loss over units (a total χ² or −log L) and reports σ with this ERRORDEF
        self.statistical = name in STATISTICAL_LOSSES
        self.errordef = STATISTICAL_LOSSES.get(name)
        self.last_counts = None

    def describe(self) -> dict:
        return {"name": self.name, "scales": self.scales, "empty_penalty": self.empty_penalty, "options": self.options}

    def _scale_vector(self, target_cloud: torch.Tensor) -> torch.Tensor:
        values = []
        for i, axis in enumerate(COLUMNS):
            scale = self.scales[axis]
            if scale is None:
                col = target_cloud[:, i].detach()
                mean = float(col.abs().mean()) if col.numel() else 0.0
                scale = mean if mean > 0 else 1.0
            values.append(scale)
        return torch.tensor(values, dtype=target_cloud.dtype, device=target_cloud.device)

    def __call__(self, guess, target, n_units: Optional[int] = None) -> torch.Tensor:
        if self.name == "mse":
            return self._mse(guess, target, n_units)
        if self.name == "likelihood":
            return self._likelihood(guess, target, n_units)
        # point-cloud losses take each readout as certain: relaxed readouts (weight = probability) enter when
        # more likely than not
        guess, target = _likely(guess), _likely(target)
        if self.name == "chi2":
            return self._chi2(guess, target, n_units)
        events = torch.unique(torch.cat([guess.event.reshape(-1), target.event.reshape(-1)]).cpu())
        fn = CLOUD_LOSSES[self.name]
        total = guess.adc.sum() * 0.0          # keeps the graph even if every event is empty
        for ev in events.tolist():
            g = hit_cloud(guess, mask=guess.event == ev)
            t = hit_cloud(target, mask=target.event == ev).to(g.dtype)
            if g.shape[0] == 0 or t.shape[0] == 0:
                total = total + (self.empty_penalty if (g.shape[0] + t.shape[0]) > 0 else 0.0)
                continue
            total = total + fn(g, t, self._scale_vector(t), **self.options)
        denom = n_units if n_units is not None else max(len(events), 1)
        return total / denom

    def _chi2(self, guess, target, n_units):
        for side, hits in (("guess", guess), ("target", target)):
            if getattr(hits, "readout", None) is None or getattr(hits, "plane", None) is None:
                raise ValueError(f"the 'chi2' loss needs readout keys (event, plane, ix, iy, readout) on the {side}")
        opts = dict(self.options)
        sigma = opts.pop("sigma", None)
        if sigma is None and getattr(target, "adc_sigma", None) is not None:
            sigma = target.adc_sigma                 # per target readout (calibration.readout_sigma)
        elif sigma is None:
            sigma = noise_sigma_adc()
        else:
            sigma = float(sigma)
        max_dt = opts.pop("max_dt", 1.0)
        chi2, counts = readout_chi2(readout_keys(guess), guess.adc, readout_keys(target), target.adc, sigma,
                                    t_out=guess.t, t_target=target.t, max_dt=max_dt, **opts)
        self.last_counts = counts
        events = torch.unique(torch.cat([guess.event.reshape(-1), target.event.reshape(-1)]).cpu())
        denom = n_units if n_units is not None else max(len(events), 1)
        return chi2 / denom

    def _likelihood(self, guess, target, n_units):
        for attr in ("weight", "adc_variance", "t_variance"):
            if getattr(guess, attr, None) is None:
                raise ValueError(f"the 'likelihood' loss needs the relaxed model's readout probabilities and "
                                 f"variances on the guess (hits.{attr} is missing: simulate in mode 'relaxed')")
        if getattr(target, "readout", None) is None or getattr(target, "plane", None) is None:
            raise ValueError("the 'likelihood' loss needs readout keys (event, plane, ix, iy, readout) on the target")
        pixel = lambda h: torch.stack([h.event.reshape(-1).long(), h.plane.reshape(-1).long(), h.ix.reshape(-1).long(),
                                       h.iy.reshape(-1).long()], dim=1)
        nll, summary = readout_nll(pixel(guess), guess.readout.long(), guess.weight, guess.adc, guess.t,
                                   guess.adc_variance, guess.t_variance, pixel(target), target.readout.long(),
                                   target.adc, target.t, getattr(guess, "adc_t_covariance", None),
                                   getattr(guess, "adc_t_previous_covariance", None),
                                   getattr(guess, "t_previous_covariance", None),
                                   getattr(guess, "existence_slope", None), **self.options)
        self.last_counts = summary
        events = torch.unique(torch.cat([guess.event.reshape(-1), target.event.reshape(-1)]).cpu())
        denom = n_units if n_units is not None else max(len(events), 1)
        return nll / denom

    def _mse(self, guess, target, n_units):
        if getattr(guess, "waveforms", None) is None or getattr(target, "waveforms", None) is None:
            raise ValueError("the 'mse' loss needs waveforms on both sides (simulate with return_waveforms=True)")
        kg, vg = waveform_keys(guess.waveforms)
        kt, vt = waveform_keys(target.waveforms)
        events = torch.unique(torch.cat([kg[:, 0], kt[:, 0]]).cpu())
        total = vg.sum() * 0.0
        for ev in events.tolist():
            mg, mt = kg[:, 0] == ev, kt[:, 0] == ev
            total = total + waveform_mse(kg[mg], vg[mg], kt[mt], vt[mt], **self.options)
        denom = n_units if n_units is not None else max(len(events), 1)
        return total / denom
