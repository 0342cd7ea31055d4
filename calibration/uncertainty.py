"""Parameter uncertainties from the curvature of the loss at the fitted point.

The Hessian H of the loss with respect to the *internal* (normalised) parameters is estimated by central
finite differences of autograd gradients, H[:, k] = (g(θ + h_k e_k) − g(θ − h_k e_k)) / (2 h_k), then
symmetrised.  Finite differences of gradients (rather than double backward) are used because the simulator
has hard steps (thresholds, pixel boundaries, argmin assignments) whose second derivatives are zero or
undefined almost everywhere; a step h of ~10⁻³ (relative, with the default ``divide`` normalisation) averages
over them.

Convention (as MINUIT's ERRORDEF ``up``): the 1σ contour is where the loss rises by ``up`` above its minimum,
so cov = 2·up·H⁻¹.  For a χ² loss up = 1 (cov = 2H⁻¹); for a negative log-likelihood up = 0.5 (cov = H⁻¹).
Our losses are means of normalised squared distances, not χ²: with up = 1 the sigmas are the half-widths of
the Δloss = 1 region and are a *sensitivity* measure (they scale with the loss normalisation and the number
of hits), not calibrated statistical errors, unless the loss is built as a χ² with the true noise as scale.
Covariances are converted to physical units with the (diagonal) Jacobian of the normalisation.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch


def fd_hessian(grad_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
               step: float | Sequence[float] = 1e-3) -> np.ndarray:
    """Hessian at ``theta`` [P] by central differences of ``grad_fn`` (returns gradient [P] at a point)."""
    theta = theta.detach()
    p = theta.numel()
    steps = [float(step)] * p if np.isscalar(step) else [float(s) for s in step]
    hess = np.zeros((p, p))
    for k in range(p):
        e = torch.zeros_like(theta)
        e[k] = steps[k]
        g_plus = grad_fn(theta + e).detach().cpu().double().numpy()
        g_minus = grad_fn(theta - e).detach().cpu().double().numpy()
        hess[:, k] = (g_plus - g_minus) / (2.0 * steps[k])
    return 0.5 * (hess + hess.T)


def autograd_hessian(loss_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> np.ndarray:
    """Exact Hessian by double backward (only meaningful for smooth losses; used in tests)."""
    return torch.autograd.functional.hessian(loss_fn, theta.detach()).detach().cpu().double().numpy()


def covariance_from_hessian(hess: np.ndarray, up: float = 1.0) -> Dict[str, object]:
    """cov = 2·up·H⁻¹ (pseudo-inverse if H is singular).  Returns cov, sigma (NaN where cov_kk ≤ 0),
    correlation, the eigenvalues of H and whether H is positive definite."""
    hess = np.asarray(hess, dtype=np.float64)
    eig, vec = np.linalg.eigh(hess) if hess.size else (np.zeros(0), np.zeros((0, 0)))
    posdef = bool(eig.size and np.all(eig > 0))
    try:
        inv = np.linalg.inv(hess) if posdef else np.linalg.pinv(hess)
    except np.linalg.LinAlgError:
        inv = np.full_like(hess, np.nan)
    cov = 2.0 * up * inv
    diag = np.diag(cov)
    sigma = np.where(diag > 0, np.sqrt(np.abs(diag)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sigma, sigma)
    np.fill_diagonal(corr, np.where(np.isfinite(sigma), 1.0, np.nan))
    absmax = float(np.max(np.abs(eig))) if eig.size else 0.0
    absmin = float(np.min(np.abs(eig))) if eig.size else 0.0
    condition = absmax / absmin if absmin > 0 else math.inf
    return {"covariance": cov, "sigma": sigma, "correlation": corr, "hessian_eigenvalues": eig,
            "hessian_posdef": posdef, "condition": condition,
            "flattest_direction": vec[:, int(np.argmin(np.abs(eig)))] if eig.size else np.zeros(0)}


#: independent batches per fitted parameter below which the sandwich covariance is not reported (its score
#: covariance would be estimated from too few outer products)
SANDWICH_MIN_BATCHES_PER_PARAMETER = 3


def sandwich_covariance(hess: np.ndarray, batch_gradients: Sequence[np.ndarray]) -> Dict[str, object]:
    """Robust (sandwich) covariance H⁻¹ V H⁻¹ of a likelihood fit: H the Hessian of the total loss (−log L, or a
    χ² = −2 log L: the factor cancels), V the covariance of the score estimated from the gradients of the total loss
    of independent batches (events) at the fitted point, Σ_b (g_b − ḡ)(g_b − ḡ)ᵀ·B/(B − 1).  It does not assume that
    the model's noise is exactly the data's: where the score varies more than the curvature says (V > H), σ grows.
    Returns covariance (internal units) and sigma, or ``reason`` when it cannot be given."""
    hess = np.asarray(hess, dtype=np.float64)
    n = hess.shape[0]
    grads = np.asarray(batch_gradients, dtype=np.float64).reshape(-1, n) if len(batch_gradients) else np.zeros((0, n))
    batches = grads.shape[0]
    if batches < SANDWICH_MIN_BATCHES_PER_PARAMETER * n:
        return {"covariance": None, "sigma": None, "batches": batches,
                "reason": f"{batches} independent batch(es) for {n} parameter(s): the score's covariance needs at "
                          f"least {SANDWICH_MIN_BATCHES_PER_PARAMETER * n} (use more events, or --tracks-per-batch 1)"}
    centred = grads - grads.mean(axis=0)
    return {**sandwich_from_score_covariance(hess, centred.T @ centred * batches / (batches - 1)), "batches": batches}


NOT_POSITIVE_DEFINITE = "the Hessian is not positive definite"


def positive_definite(hess: np.ndarray) -> bool:
    return bool(np.all(np.linalg.eigvalsh(np.asarray(hess, dtype=np.float64)) > 0))


def sandwich_from_score_covariance(hess: np.ndarray, score_covariance: np.ndarray) -> Dict[str, object]:
    """H⁻¹ V H⁻¹ for a Hessian ``hess`` of the total loss and a covariance V of its score (however V was
    estimated: per-batch gradients, or gradients against replicas of the data); covariance and sigma (internal
    units), or ``reason`` (covariance None) where H is not positive definite."""
    hess = np.asarray(hess, dtype=np.float64)
    if not positive_definite(hess):
        return {"covariance": None, "sigma": None, "reason": NOT_POSITIVE_DEFINITE}
    inverse = np.linalg.inv(hess)
    covariance = inverse @ np.asarray(score_covariance, dtype=np.float64) @ inverse
    diag = np.diag(covariance)
    return {"covariance": covariance, "sigma": np.where(diag > 0, np.sqrt(np.abs(diag)), np.nan), "reason": None}


#: |correlation| above which two fitted parameters are reported as (nearly) degenerate
DEGENERATE_CORRELATION = 0.99
#: Hessian condition number (internal units) above which the fit is reported as ill-conditioned
ILL_CONDITIONED = 1e6


def degeneracy_warnings(names: Sequence[str], unc: Dict[str, object],
                        max_corr: float = DEGENERATE_CORRELATION, max_condition: float = ILL_CONDITIONED) -> List[str]:
    """Human-readable warnings: parameter pairs with |ρ| > ``max_corr`` (only their combination is constrained;
    the individual values wander along the valley), an ill-conditioned or non-positive-definite Hessian."""
    out = []
    corr = np.asarray(unc["correlation"], dtype=np.float64)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if np.isfinite(corr[i, j]) and abs(corr[i, j]) > max_corr:
                out.append(f"degenerate: |corr({names[i]}, {names[j]})| = {abs(corr[i, j]):.4f} > {max_corr}; "
                           f"only a combination of the two is constrained")
    cond = float(unc.get("condition", math.nan))
    flat = np.asarray(unc.get("flattest_direction", []), dtype=np.float64)
    terms = " ".join(f"{v:+.3f}*{n}" for v, n in zip(flat, names) if abs(v) > 0.05)
    if not math.isfinite(cond) or cond > max_condition:
        out.append(f"ill-conditioned Hessian: condition number {cond:.3g} > {max_condition:.0e}; "
                   f"flattest direction (internal units): {terms}")
    if not unc.get("hessian_posdef", True):
        out.append("Hessian not positive definite: not at a minimum, or a flat (degenerate) direction; sigmas "
                   f"unreliable; flattest direction (internal units): {terms}")
    return out


def to_physical(cov_internal: np.ndarray, jacobians: Sequence[float]) -> np.ndarray:
    j = np.asarray(jacobians, dtype=np.float64)
    return cov_internal * np.outer(j, j)


def nan_to_none(array) -> list:
    """Nested list with NaN/inf replaced by None (strict JSON)."""
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return None if not math.isfinite(v) else v
    return [nan_to_none(a) for a in arr]
