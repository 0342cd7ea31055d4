"""Losses: gradcheck (float64, tiny inputs), identities, hand-computed values, event handling."""
import math

import pytest
import torch

from calibration.losses import (HitsLoss, chamfer_loss, sdtw_loss, sinkhorn_loss, soft_dtw, soft_dtw_divergence,
                                space_match_loss, waveform_keys, waveform_mse)
from calibration.toy import ToyHits, ToyWaveforms

D = torch.float64


def clouds(n=4, m=3, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=D)
    b = torch.randn(m, d, generator=g, dtype=D)
    s = torch.rand(d, generator=g, dtype=D) + 0.5
    return a, b, s


@pytest.mark.parametrize("fn", [
    lambda a, b, s: space_match_loss(a, b, s, n_pos=2),
    lambda a, b, s: space_match_loss(a, b, s, n_pos=2, temperature=0.3),
    lambda a, b, s: space_match_loss(a, b, s, n_pos=2, symmetric=False),
    chamfer_loss,
    lambda a, b, s: sinkhorn_loss(a, b, s, eps=0.5, n_iter=20),
    lambda a, b, s: sdtw_loss(a, b, s, gamma=0.5),
    lambda a, b, s: sdtw_loss(a, b, s, gamma=0.5, cost="l1"),
], ids=["space_match_hard", "space_match_soft", "space_match_oneway", "chamfer", "sinkhorn", "sdtw", "sdtw_l1"])
def test_gradcheck_cloud_losses(fn):
    a, b, s = clouds()
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y, s), (a, b), eps=1e-6, atol=1e-5)


def test_gradcheck_waveform_mse():
    keys_a = torch.tensor([[0, 0, 1, 2, 10], [0, 0, 1, 2, 11], [0, 0, 3, 3, 5]])
    keys_b = torch.tensor([[0, 0, 1, 2, 11], [0, 0, 4, 4, 7]])
    va = torch.tensor([1.0, 2.0, 3.0], dtype=D, requires_grad=True)
    vb = torch.tensor([0.5, 1.5], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: waveform_mse(keys_a, x, keys_b, y, scale=2.0), (va, vb))


def test_waveform_mse_union_value():
    keys_a = torch.tensor([[1, 10], [1, 11], [3, 5]])
    keys_b = torch.tensor([[1, 11], [4, 7]])
    va = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    vb = torch.tensor([0.5, 1.5], dtype=D)
    # union {(1,10):1, (1,11):2-0.5, (3,5):3, (4,7):-1.5}, divided by the 2 target keys
    expected = (1.0 + 1.5 ** 2 + 9.0 + 1.5 ** 2) / 2
    assert float(waveform_mse(keys_a, va, keys_b, vb, scale=1.0)) == pytest.approx(expected)
    assert float(waveform_mse(keys_a, va, keys_a, va)) == 0.0
    # default scale: the relative squared error sum (out - target)^2 / sum target^2
    assert float(waveform_mse(keys_a, va, keys_b, vb)) == pytest.approx((1.0 + 1.5 ** 2 + 9.0 + 1.5 ** 2) / 2.5)
    # an empty guess gives exactly 1
    assert float(waveform_mse(keys_a[:0], va[:0], keys_b, vb)) == pytest.approx(1.0)
    # duplicate keys are summed
    assert float(waveform_mse(torch.tensor([[1], [1]]), torch.tensor([1.0, 1.0], dtype=D),
                              torch.tensor([[1]]), torch.tensor([2.0], dtype=D), scale=1.0)) == 0.0


def test_waveform_mse_ignores_zero_keys_of_the_guess():
    # The guess's key set moves with the simulator's tick windows; keys carrying zero charge must not change
    # the loss (a union-size denominator made each window shift a step of the loss and stalled fits).
    keys_t = torch.tensor([[0, 5], [0, 6], [0, 7], [1, 3]])
    vt = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=D)
    keys_g = torch.tensor([[0, 5], [0, 6], [1, 3]])
    vg = torch.tensor([1.2, 2.5, 2.0], dtype=D)
    base = waveform_mse(keys_g, vg, keys_t, vt)
    padded_keys = torch.cat([torch.tensor([[0, 2], [0, 3], [0, 4]]), keys_g, torch.tensor([[0, 8], [2, 9]])])
    padded_values = torch.cat([torch.zeros(3, dtype=D), vg, torch.zeros(2, dtype=D)])
    assert float(waveform_mse(padded_keys, padded_values, keys_t, vt)) == float(base)
    assert float(base) == pytest.approx((0.2 ** 2 + 0.5 ** 2 + 0.5 ** 2) / float(vt.pow(2).sum()))


def test_identities_and_positivity():
    a, b, s = clouds(5, 5)
    for fn in (chamfer_loss, lambda x, y, z: space_match_loss(x, y, z), lambda x, y, z: sinkhorn_loss(x, y, z, eps=0.1),
               lambda x, y, z: sdtw_loss(x, y, z, gamma=0.1)):
        assert abs(float(fn(a, a, s))) < 1e-8
        assert float(fn(a, b, s)) > 1e-3


def test_space_match_symmetric_and_hard_limit():
    a, b, s = clouds(4, 6)
    assert float(space_match_loss(a, b, s)) == pytest.approx(float(space_match_loss(b, a, s)))
    # soft assignment tends to the hard argmin when the temperature goes to zero
    assert float(space_match_loss(a, b, s, temperature=1e-6)) == pytest.approx(float(space_match_loss(a, b, s)), rel=1e-6)
    # hand value: 1-D, points {0} vs {1, 3}, both columns positional
    x = torch.tensor([[0.0]], dtype=D)
    y = torch.tensor([[1.0], [3.0]], dtype=D)
    one = torch.ones(1, dtype=D)
    assert float(space_match_loss(x, y, one, n_pos=1)) == pytest.approx(0.5 * (1.0 + (1.0 + 9.0) / 2))


def test_space_match_assigns_by_position_only():
    # column 1 (ADC) differs hugely, assignment must still pair equal positions
    a = torch.tensor([[0.0, 100.0], [10.0, 0.0]], dtype=D)
    b = torch.tensor([[0.0, 0.0], [10.0, 100.0]], dtype=D)
    one = torch.ones(2, dtype=D)
    assert float(space_match_loss(a, b, one, n_pos=1)) == pytest.approx(1.0e4)
    assert float(chamfer_loss(a, b, one)) == pytest.approx(2 * 0.5 * (100.0 + 100.0))


def _sdtw_bruteforce(a, b, gamma):
    dist = ((a[:, None] - b[None]) ** 2).sum(-1)
    n, m = dist.shape
    r = [[math.inf] * (m + 1) for _ in range(n + 1)]
    r[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = torch.tensor([r[i - 1][j - 1], r[i - 1][j], r[i][j - 1]], dtype=D)
            r[i][j] = float(dist[i - 1, j - 1] - gamma * torch.logsumexp(-prev / gamma, 0))
    return r[n][m]


@pytest.mark.parametrize("n,m", [(1, 1), (1, 4), (5, 2), (4, 4)])
def test_sdtw_matches_cell_by_cell_recursion(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    a = torch.randn(n, 2, generator=g, dtype=D)
    b = torch.randn(m, 2, generator=g, dtype=D)
    for gamma in (0.1, 1.0):
        assert float(soft_dtw(a, b, gamma)) == pytest.approx(_sdtw_bruteforce(a, b, gamma), rel=1e-10)


def test_sdtw_divergence_nonnegative_and_gamma_limit():
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        a = torch.randn(int(torch.randint(1, 6, (1,), generator=g)), 2, generator=g, dtype=D)
        b = torch.randn(int(torch.randint(1, 6, (1,), generator=g)), 2, generator=g, dtype=D)
        assert float(soft_dtw_divergence(a, b, 0.5)) >= -1e-10
    # gamma -> 0: soft-DTW tends to the hard DTW (a=[0,1], b=[0,0,1] aligns at zero cost)
    a = torch.tensor([[0.0], [1.0]], dtype=D)
    b = torch.tensor([[0.0], [0.0], [1.0]], dtype=D)
    assert abs(float(soft_dtw(a, b, 1e-3))) < 1e-2


def _hits(events, x, adc):
    ev = torch.tensor(events)
    x = torch.tensor(x, dtype=D)
    return ToyHits(ev, x, torch.zeros_like(x), torch.zeros_like(x), torch.tensor(adc, dtype=D))


def test_hits_loss_per_event_and_units():
    # hits of event 0 must not be matched with hits of event 1
    guess = _hits([0, 1], [0.0, 10.0], [1.0, 1.0])
    target = _hits([0, 1], [10.0, 0.0], [1.0, 1.0])
    loss = HitsLoss("chamfer", scales={"x": 1.0, "y": 1.0, "t": 1.0, "adc": 1.0})
    assert float(loss(guess, target)) == pytest.approx(200.0)   # per event 100 + 100, mean over 2 events
    assert float(loss(guess, target, n_units=4)) == pytest.approx(100.0)
    # empty guess in one event: constant penalty for that event
    guess2 = _hits([0], [10.0], [1.0])
    lp = HitsLoss("chamfer", scales={"x": 1.0, "y": 1.0, "t": 1.0, "adc": 1.0}, empty_penalty=7.0)
    assert float(lp(guess2, target)) == pytest.approx((0.0 + 7.0) / 2)


def test_hits_loss_mse_needs_waveforms_and_matches_pure_function():
    wf_a = ToyWaveforms(torch.tensor([[0, 0, 1, 1], [1, 0, 2, 2]]), torch.tensor([3, 5]),
                        torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D))
    wf_b = ToyWaveforms(torch.tensor([[0, 0, 1, 1]]), torch.tensor([4]), torch.tensor([[1.0, 1.0]], dtype=D))
    ga = _hits([0], [0.0], [1.0]); ga.waveforms = wf_a
    gb = _hits([0], [0.0], [1.0]); gb.waveforms = wf_b
    loss = HitsLoss("mse", scale=1.0)
    ka, va = waveform_keys(wf_a)
    kb, vb = waveform_keys(wf_b)
    expected = float(waveform_mse(ka[ka[:, 0] == 0], va[ka[:, 0] == 0], kb, vb, scale=1.0)) + \
        float(waveform_mse(ka[ka[:, 0] == 1], va[ka[:, 0] == 1], kb[:0], vb[:0], scale=1.0))
    assert float(loss(ga, gb)) == pytest.approx(expected / 2)
    # event 0: ticks 3,4 vs 4,5 -> union {3:1, 4:2-1, 5:-1} over 2 target keys; event 1: no target keys
    assert expected == pytest.approx(3 / 2 + (9 + 16) / 1)
    with pytest.raises(ValueError):
        HitsLoss("mse")(_hits([0], [0.0], [1.0]), _hits([0], [0.0], [1.0]))


def test_unknown_loss_rejected():
    with pytest.raises(ValueError):
        HitsLoss("nope")


def test_hits_loss_default_adc_scale_is_the_targets_mean_adc_per_event():
    """Default scales (x, y: one pitch 0.4434 cm; ADC: mean |ADC| of the *target* hits of each event), hand-computed
    chamfer values.  Event 0: one guess hit (x = 0.4434, ADC 2) vs one target hit (x = 0, ADC 4): ADC scale 4,
    d² = 1 + (2/4)² = 1.25 each way -> 2.5.  Event 1: guess ADC 30 vs target ADCs 10, 30 (scale 20): guess -> target
    0; target -> guess mean(((10 − 30)/20)², 0) = 0.5.  Mean over the two events: 1.5.  With the guess's mean as
    the scale instead, event 0 gives 2 · (1 + 1) = 4 and event 1 (20/30)²/2 ≈ 0.22."""
    guess = _hits([0, 1], [0.4434, 0.0], [2.0, 30.0])
    target = _hits([0, 1, 1], [0.0, 0.0, 0.0], [4.0, 10.0, 30.0])
    loss = HitsLoss("chamfer")
    assert loss.scales["adc"] is None
    assert float(loss(guess, target)) == pytest.approx((2.5 + 0.5) / 2, rel=1e-12)
    # not symmetric: swapping the roles changes the ADC scale (event 0: 2 · (1 + 1) = 4; event 1, scale 30:
    # (20/30)²/2 + 0)
    assert float(loss(target, guess)) == pytest.approx((4.0 + (20 / 30) ** 2 / 2) / 2, rel=1e-12)
