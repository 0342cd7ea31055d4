import math

import pytest
import torch

import sparsetpc as st
from sparsetpc.drift import Drift, assign_planes, diffusion_sigma, drift_segments
from sparsetpc.quenching import quench
from helpers import SHARED, devices, needs_shared, reference_rows

DET = st.Detector.default()


def _segments(points_start, points_end, dtype=torch.float64):
    return torch.tensor(points_start, dtype=dtype), torch.tensor(points_end, dtype=dtype)


class TestDrift:
    def test_plane_assignment(self):
        mid = torch.tensor([[0.0, 0.0, -10.0], [0.0, 0.0, 10.0], [0.0, 0.0, 35.0], [50.0, 0.0, 10.0]], dtype=torch.float64)
        assert assign_planes(mid, DET).tolist() == [0, 1, -1, -1]

    def test_closed_form(self):
        p = st.Params.nominal()
        start, end = _segments([[1.0, 2.0, 20.0]], [[1.5, 2.0, 21.0]])
        n = torch.tensor([1e5], dtype=torch.float64)
        out = drift_segments(start, end, n, p, DET)
        distance = 30.431 - 20.5
        t = (distance - 0.5) / 0.1587
        assert float(out.drift_time[0]) == pytest.approx(t)
        assert float(out.n_electrons[0]) == pytest.approx(1e5 * math.exp(-t / 2200.0))
        assert float(out.sigma_transverse[0]) == pytest.approx(math.sqrt(2 * 8.8e-6 * distance / 0.1587))
        assert float(out.sigma_longitudinal[0]) == pytest.approx(math.sqrt(2 * 4.0e-6 * distance / 0.1587))
        assert float(out.t_start[0]) == pytest.approx((30.431 - 21.0 - 0.5) / 0.1587)
        assert float(out.t_end[0]) == pytest.approx((30.431 - 20.0 - 0.5) / 0.1587)

    def test_outside_segments_have_finite_gradients(self):
        p = st.Params.nominal().requires_grad_(["tran_diff", "long_diff", "lifetime", "vdrift"])
        start, end = _segments([[0.0, 0.0, 40.0], [0.0, 0.0, -30.431]], [[0.0, 0.0, 41.0], [0.0, 0.0, -30.431]])
        out = drift_segments(start, end, torch.tensor([1e4, 1e4], dtype=torch.float64), p, DET)
        assert out.plane.tolist() == [-1, 0]
        assert float(out.n_electrons[0].detach()) == 0.0
        total = (out.n_electrons.sum() + out.sigma_transverse.sum() + out.sigma_longitudinal.sum())
        grads = torch.autograd.grad(total, [p.tran_diff, p.long_diff, p.lifetime, p.vdrift])
        assert all(torch.isfinite(g) for g in grads)

    def test_gradcheck(self):
        start, end = _segments([[1.0, 2.0, 20.0], [0.0, -3.0, -12.0]], [[1.5, 2.0, 21.0], [0.2, -3.5, -14.0]])
        n = torch.tensor([1e4, 2e4], dtype=torch.float64)

        def f(v, tau, dl, dt):   # relative to nominal, so that gradcheck's step is a relative one
            p = st.Params.nominal().replace(vdrift=0.1587 * v, lifetime=2200.0 * tau, long_diff=4e-6 * dl, tran_diff=8.8e-6 * dt)
            out = drift_segments(start, end, n, p, DET)
            return torch.cat([out.n_electrons / 1e4, out.sigma_transverse, out.sigma_longitudinal, out.t_start / 100])

        args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.0, 1.0, 1.0, 1.0)]
        assert torch.autograd.gradcheck(f, args)

    def test_sigma_floor_no_sqrt0(self):
        d = torch.zeros(1, dtype=torch.float64)
        coefficient = torch.tensor(4e-6, dtype=torch.float64, requires_grad=True)
        s = diffusion_sigma(d, torch.tensor(0.16, dtype=torch.float64), coefficient)
        (g,) = torch.autograd.grad(s.sum(), coefficient)
        assert torch.isfinite(g)

    @pytest.mark.parametrize("device", devices())
    def test_device(self, device):
        p = st.Params.nominal(device=device)
        start = torch.tensor([[1.0, 2.0, 20.0]], dtype=torch.float64, device=device)
        out = Drift(DET)(start, start + 0.1, torch.ones(1, dtype=torch.float64, device=device), p)
        assert out.n_electrons.device.type == device

    @needs_shared
    def test_reference_test_segment(self):
        # physics.md §6.1 measured internals of the reference model
        rows = reference_rows(SHARED / "reference" / "test_segment_fwd.npz")
        segs = st.Segments.from_numpy(rows, swap=False)
        p = st.Params.nominal()
        out = drift_segments(segs.start, segs.end, quench(segs.dEdx, segs.dE, p), p, DET)
        assert float(out.n_electrons[0]) == pytest.approx(161029.94, rel=1e-5)
        assert float(out.sigma_transverse[0]) == pytest.approx(0.013478, rel=1e-4)
        assert float(out.sigma_longitudinal[0]) == pytest.approx(0.009087, rel=1e-3)
        assert float(out.t_start[0]) == pytest.approx(6.9210, abs=1e-3)
        assert float(out.t_end[0]) == pytest.approx(7.4213, abs=1e-3)
