"""Known values of the Sinkhorn loss (calibration/losses/sinkhorn.py).

OT_ε(a, b) there is ⟨P_ε, C⟩: the squared-distance cost C of the entropic optimal plan P_ε between uniform
weights (the plan minimising ⟨P, C⟩ − ε·H(P) with the marginals fixed); the loss is the debiased
S = OT_ε(a, b) − ½ OT_ε(a, a) − ½ OT_ε(b, b) of the clouds after dividing each column by its scale.
"""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from calibration.losses.sinkhorn import sinkhorn_loss


def t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


@pytest.mark.parametrize("eps", [1e-3, 0.05, 10.0])
@pytest.mark.parametrize("debias", [True, False])
def test_one_point_clouds_cost_their_scaled_squared_distance(eps, debias):
    """One point each: the only plan moves all mass from a to b, whatever ε: OT = |(a − b)/s|², OT(a, a) = 0."""
    a, b, scales = [[1.0, 2.0, 3.0, 4.0]], [[1.5, 2.0, 2.0, 4.0]], [0.5, 1.0, 2.0, 1.0]
    expected = (0.5 / 0.5) ** 2 + (1.0 / 2.0) ** 2                                  # 1.25
    value = sinkhorn_loss(t(a), t(b), t(scales), eps=eps, n_iter=3, debias=debias)
    assert float(value) == pytest.approx(expected, rel=1e-12)


def numpy_sinkhorn_cost(a, b, eps, tol=1e-15, max_iter=100000):
    """⟨P, C⟩ of the entropic plan by the textbook scaling iterations u = μ/(Kv), v = ν/(Kᵀu), K = exp(−C/ε),
    run until both marginals hold to ``tol`` (written independently of the module under test)."""
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    mu, nu = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    kernel = np.exp(-cost / eps)
    u, v = np.ones(len(a)), np.ones(len(b))
    for _ in range(max_iter):
        u = mu / (kernel @ v)
        v = nu / (kernel.T @ u)
        plan = u[:, None] * kernel * v[None, :]
        if np.abs(plan.sum(1) - mu).max() < tol and np.abs(plan.sum(0) - nu).max() < tol:
            break
    else:
        raise AssertionError("numpy Sinkhorn did not converge")
    return float((plan * cost).sum())


def test_matches_an_independent_sinkhorn_at_finite_eps():
    """ε = 0.2 on clouds of 5 and 4 points in the unit square (scaled costs ≤ ~3): entropy matters (a cloud
    against itself costs clearly more than 0), and the module's log-domain iterations reach the same fixed point
    as the textbook scaling form.  The module's value is first shown converged (300 and 600 iterations agree to
    1e-13), so the 1e-10 asked is float64 round-off with a wide margin, and 10⁶ times tighter than the entropic
    effect.  (Sinkhorn's rate depends on the clouds: an isolated point in a self-transport problem, e.g. a
    point at cost ≫ ε from the rest, can need 10⁴ iterations to settle to 1e-9.)"""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=(5, 2)), rng.uniform(size=(4, 2)) + 0.2
    scales = np.array([0.7, 1.3])
    sa, sb = a / scales, b / scales
    eps = 0.2
    ab, aa, bb = (numpy_sinkhorn_cost(x, y, eps) for x, y in ((sa, sb), (sa, sa), (sb, sb)))
    plain = float(sinkhorn_loss(t(a), t(b), t(scales), eps=eps, n_iter=300, debias=False))
    debiased = float(sinkhorn_loss(t(a), t(b), t(scales), eps=eps, n_iter=300))
    assert debiased == pytest.approx(float(sinkhorn_loss(t(a), t(b), t(scales), eps=eps, n_iter=600)), rel=1e-13)
    assert plain == pytest.approx(ab, rel=1e-10)
    assert debiased == pytest.approx(ab - 0.5 * (aa + bb), rel=1e-10)
    assert aa > 0.01 and bb > 0.01                       # a cloud against itself costs > 0 at this blur


def test_small_eps_tends_to_the_exact_assignment_cost():
    """n = m points with uniform weights: exact OT is the optimal assignment, OT₀ = (1/n)·min_σ Σ C[i, σ(i)]
    (Birkhoff).  The entropic plan minimises ⟨P, C⟩ − εH(P), so ⟨P_ε, C⟩ − εH(P_ε) ≤ OT₀ − εH(P₀); with
    log n ≤ H ≤ 2 log n for couplings of uniform marginals, 0 ≤ OT_ε − OT₀ ≤ ε·log n.  Likewise
    0 ≤ OT_ε(a, a) ≤ ε·log n, so the debiased S lies within ε·log n of OT₀."""
    rng = np.random.default_rng(3)
    n = 6
    a = rng.uniform(0, 3, size=(n, 3))
    b = a[rng.permutation(n)] + rng.normal(scale=0.3, size=(n, 3))
    scales = np.ones(3)
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    exact = cost[rows, cols].sum() / n
    eps = 1e-3
    bound = eps * math.log(n)
    plain = float(sinkhorn_loss(t(a), t(b), t(scales), eps=eps, n_iter=300, debias=False))
    longer = float(sinkhorn_loss(t(a), t(b), t(scales), eps=eps, n_iter=600, debias=False))
    assert longer == pytest.approx(plain, rel=1e-12)                    # converged: the bound applies
    assert -1e-12 <= plain - exact <= bound
    debiased = float(sinkhorn_loss(t(a), t(b), t(scales), eps=eps, n_iter=300))
    assert abs(debiased - exact) <= bound
    # and a blur of 1 (≈ the spread of the costs) is far from exact OT: the limit above is a real test
    assert float(sinkhorn_loss(t(a), t(b), t(scales), eps=1.0, n_iter=300, debias=False)) - exact > 100 * bound
