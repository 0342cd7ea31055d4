"""Gradients do not depend on the memory budget, and the vdrift–eField link obeys the chain rule.

``memory_budget="1MB"`` splits the induction into tens of chunks, each under ``torch.utils.checkpoint`` (backward
recomputes it); ``"2GB"`` with ``checkpoint=False`` evaluates the same small event in one plain chunk.  Chunks only
partition a sum, so hits and gradients must agree to rounding (1e-10 relative).

With ``link_vdrift_efield=True`` the drift velocity is v(E) = E·µ(E, T): eField then acts through v *and* through
the recombination (Birks: R = Ab/(1 + kb·dE/dx/(E·ρ))), so
    dL/dE|linked = ∂L/∂E|unlinked + ∂L/∂v|unlinked · dv/dE,
with the unlinked run at vdrift = v(E), and dv/dE from central finite differences of the mobility function only.
"""
import pytest
import torch

import sparsetpc as st
from sparsetpc.example import generate
from sparsetpc.params import electron_mobility

NAMES = ("Ab", "lifetime", "vdrift", "long_diff", "tran_diff")
RELATIVE = 1e-10


@pytest.fixture(scope="module")
def segments():
    # one generated proton (seed 3), its first 8 steps: 12 readouts, ≈1.2e5 (sample, tick) elements (one chunk
    # at 2 GB, 40 chunks at 1 MB)
    return st.Segments.from_numpy(generate(n_events=1, tracks_per_event=1, seed=3, step=0.5)[:8], swap=True)


def run(segments, params, budget, checkpoint=None):
    """Hits and a scalar loss that touches ADC, crossing times and the waveforms (time-weighted charge)."""
    hits = st.simulate(segments, st.Detector.default(), params, mode="relaxed", memory_budget=budget,
                       checkpoint=checkpoint, return_waveforms=True)
    waves = hits.waveforms
    tick_time = (waves.start_tick[:, None] + torch.arange(waves.charge.shape[1])[None, :]).to(waves.charge.dtype) * 0.1
    loss = hits.adc.sum() + hits.t.sum() + 1e-4 * (waves.charge * tick_time).sum()
    return hits, loss


def gradients(loss, params, names):
    return dict(zip(names, torch.autograd.grad(loss, [getattr(params, n) for n in names])))


def assert_close(a, b, what):
    assert torch.allclose(a, b, rtol=RELATIVE, atol=0.0), f"{what}: {a} vs {b}"


def assert_same_hits(a, b):
    assert torch.equal(a.pixel_table, b.pixel_table)
    assert torch.equal(a.pixel, b.pixel) and torch.equal(a.readout, b.readout)
    assert_close(a.adc.detach(), b.adc.detach(), "adc")
    assert_close(a.t.detach(), b.t.detach(), "t")


def test_budgets_give_equal_hits_and_gradients(segments):
    small = st.Params.nominal().requires_grad_(NAMES)
    large = st.Params.nominal().requires_grad_(NAMES)
    hits_small, loss_small = run(segments, small, "1MB")
    hits_large, loss_large = run(segments, large, "2GB", checkpoint=False)
    assert len(hits_small) >= 5
    assert_same_hits(hits_small, hits_large)
    assert_close(hits_small.waveforms.charge.detach(), hits_large.waveforms.charge.detach(), "waveforms")
    grad_small = gradients(loss_small, small, NAMES)
    grad_large = gradients(loss_large, large, NAMES)
    for name in NAMES:
        assert float(grad_large[name]) != 0.0, f"d loss / d {name} vanishes: the comparison would be vacuous"
        assert_close(grad_small[name], grad_large[name], f"d loss / d {name}")


def test_linked_efield_gradient_is_the_chain_rule(segments):
    linked = st.Params.nominal(link_vdrift_efield=True).requires_grad_(["eField"])
    velocity = float(linked.drift_velocity().detach())
    unlinked = st.Params.nominal(vdrift=velocity).requires_grad_(["eField", "vdrift"])
    hits_linked, loss_linked = run(segments, linked, "1MB")
    hits_unlinked, loss_unlinked = run(segments, unlinked, "2GB", checkpoint=False)
    assert_same_hits(hits_linked, hits_unlinked)
    d_linked = gradients(loss_linked, linked, ["eField"])["eField"]
    d_unlinked = gradients(loss_unlinked, unlinked, ["eField", "vdrift"])

    def v_of_e(field):
        field = torch.tensor(field, dtype=torch.float64)
        return float(field * electron_mobility(field, torch.tensor(87.17, dtype=torch.float64)))

    field, step = float(linked.eField.detach()), 1e-5
    dv_de = (v_of_e(field + step) - v_of_e(field - step)) / (2 * step)
    expected = d_unlinked["eField"] + d_unlinked["vdrift"] * dv_de
    # both terms are there; a linked run that dropped the velocity path would miss by |∂L/∂v · dv/dE| ≫ the
    # tolerance.  The two terms nearly cancel on this loss (±3.3e3 for a sum of 29), so the finite difference's own
    # error (≈1e-10 of dv/dE) is compared with the terms, not with their sum: within 1e-9 of |∂L/∂E| + |∂L/∂v·dv/dE|.
    velocity_term = float(d_unlinked["vdrift"] * dv_de)
    assert abs(velocity_term) > 1e-4 * abs(float(expected)) and float(d_unlinked["eField"]) != 0.0
    scale = abs(float(d_unlinked["eField"])) + abs(velocity_term)
    assert abs(float(d_linked) - float(expected)) <= 1e-9 * scale, (float(d_linked), float(expected), scale)
