"""The L-BFGS polish's preconditioner: the expected Fisher information of the readout likelihood.

Why.  In the fitter's internal units the likelihood's curvature spans seven orders of magnitude (on the 12 chosen
tracks of mixed_sample.h5 the Hessian's condition number is 3·10⁷: vdrift is known to 2·10⁻⁵ of its value,
long_diff to 7·10⁻², and Ab and kb correlate at ρ ≈ 0.99), so an L-BFGS started from the identity spends most of
its evaluations learning that curvature (89–117 evaluations per six-parameter fit).  The expected Fisher
information F (``calibration/fisher.py``) is the curvature of −log L for the model as written, and costs 1 + 2P
forward passes of the relaxed model without a backward pass.  In the coordinates φ with θ = θ₀ + F^{-1/2} φ the
objective is nearly isotropic, and the polish's L-BFGS runs in φ (``Fitter._polish``).

F is only a preconditioner: it changes the path to the minimum, not the minimum (the loss and its gradient are
the fit's own), nor the σ (from the Hessian of the loss at the end, ``Fitter._finish``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch


class FisherCurvature:
    """``curvature(params, segments) -> [P, P]`` (physical units): the expected Fisher information of the readout
    likelihood of ``segments`` at ``params`` for ``names``, the readouts simulated by ``forward`` (the fit's own
    relaxed model: its clock phases, field response and written channels), ``front_end`` giving the readouts per
    pixel."""

    def __init__(self, forward: Callable, names: Sequence[str], front_end=None, relative_step: float = 1e-4):
        self.forward = forward
        self.names = list(names)
        self.front_end = front_end
        self.relative_step = float(relative_step)

    def __call__(self, params, segments) -> np.ndarray:
        import warnings
        from .fisher import expected_fisher
        # the ± steps of a parameter held at its bound leave larnd-sim's range by a step, and the fit's own
        # evaluations already report the readout cap: the preconditioner's simulations warn nothing more
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            info = expected_fisher(segments, params, self.names, front_end=self.front_end,
                                   relative_step=self.relative_step,
                                   simulate=self.forward)
        return info.matrix

    def describe(self) -> dict:
        return {"preconditioner": "expected Fisher information of the readout likelihood (calibration/fisher.py)",
                "relative_step": self.relative_step}


def fisher_unavailable(loss_fn, mode: Optional[str], paramset, dtype) -> Optional[str]:
    """Why the Fisher preconditioner cannot be used for a fit of ``loss_fn`` with the simulator in ``mode``
    (None when it can)."""
    if not getattr(loss_fn, "likelihood", False):
        return "the loss is not the readout likelihood"
    if dtype != torch.float64:
        return "the Fisher information is taken by finite differences: it needs float64"
    if mode != "relaxed":
        return f"it is the information of the relaxed front end's readouts (the fit's --mode is {mode})"
    if getattr(paramset, "link_vdrift_efield", False):
        return "vdrift is linked to eField (the Fisher steps would not move vdrift with eField)"
    return None


def whitening(curvature: np.ndarray, relative_floor: float = 1e-12) -> Optional[np.ndarray]:
    """R [P, P] with Rᵀ C R = 1 (eigenvalues below ``relative_floor`` × the largest raised to it), for the
    symmetric part of ``curvature`` C; None where C has a non-finite entry or no positive eigenvalue."""
    matrix = np.asarray(curvature, dtype=np.float64)
    if matrix.size == 0 or not np.all(np.isfinite(matrix)):
        return None
    matrix = 0.5 * (matrix + matrix.T)
    eigenvalues, vectors = np.linalg.eigh(matrix)
    if not eigenvalues[-1] > 0:
        return None
    eigenvalues = np.maximum(eigenvalues, relative_floor * eigenvalues[-1])
    return vectors / np.sqrt(eigenvalues)[None, :]
