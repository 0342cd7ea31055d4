import pytest
import torch

import sparsetpc as st
from sparsetpc.quenching import Quenching, birks_recombination, box_recombination, quench
from helpers import SHARED, devices, needs_shared, reference_rows


class TestQuenching:
    def test_smoke_shape(self):
        p = st.Params.nominal()
        out = quench(torch.rand(7, dtype=torch.float64) * 10, torch.rand(7, dtype=torch.float64), p)
        assert out.shape == (7,)

    def test_birks_closed_form(self):
        p = st.Params.nominal()
        dedx = torch.tensor([0.0, 2.1, 11.1105], dtype=torch.float64)
        expected = 0.8 / (1 + 0.0486 * dedx / (0.5 * 1.38))
        assert torch.allclose(birks_recombination(dedx, p), expected)
        # physics.md §2.1: a MIP (2.1 MeV/cm) gives R = 0.697, the test segment R = 0.4488
        assert float(expected[1]) == pytest.approx(0.697, abs=5e-4)
        assert float(expected[2]) == pytest.approx(0.4488, abs=5e-4)

    def test_box_limits(self):
        p = st.Params.nominal()
        dedx = torch.tensor([0.0, 2.1, 1e9], dtype=torch.float64)
        r = box_recombination(dedx, p)
        xi = 0.207 * 2.1 / (0.5 * 1.38)
        assert float(r[0]) == 0.0
        assert float(r[1]) == pytest.approx(torch.log(torch.tensor(0.93 + xi)).item() / xi)
        assert float(r[2]) < 1e-6
        with pytest.raises(ValueError):
            quench(dedx, dedx, p, model="nope")

    def test_gradcheck(self):
        dedx = torch.tensor([1.5, 4.0, 20.0], dtype=torch.float64)
        de = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)

        def f(ab, kb, efield, mev, alpha, beta):   # relative to nominal
            p = st.Params.nominal().replace(Ab=0.8 * ab, kb=0.0486 * kb, eField=0.5 * efield, MeVToElectrons=4.237e4 * mev,
                                            box_alpha=0.93 * alpha, box_beta=0.207 * beta)
            return torch.cat([quench(dedx, de, p, "birks"), quench(dedx, de, p, "box")]) / 1e4

        args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.0,) * 6]
        assert torch.autograd.gradcheck(f, args)

    @pytest.mark.parametrize("device", devices())
    def test_device(self, device):
        p = st.Params.nominal(device=device)
        out = Quenching()(torch.ones(3, dtype=torch.float64, device=device), torch.ones(3, dtype=torch.float64, device=device), p)
        assert out.device.type == device

    @needs_shared
    def test_reference_test_segment(self):
        # physics.md §6.1: n_e(quench) = 161555.70 for the reference's test segment
        rows = reference_rows(SHARED / "reference" / "test_segment_fwd.npz")
        segs = st.Segments.from_numpy(rows, swap=False)
        n = quench(segs.dEdx, segs.dE, st.Params.nominal())
        assert float(n[0]) == pytest.approx(161555.70, rel=1e-5)
