import math

import pytest
import torch

import sparsetpc as st
from sparsetpc import drift as drift_stage
from sparsetpc.induction import (InductionOptions, Induction, SegmentState, cloud_delay, induce, pad_cloud, pad_fraction,
                                 response_shape, smeared_truncated_exponential)
from sparsetpc.pipeline import _pixel_table
from sparsetpc.pixels import associate
from sparsetpc.quenching import quench
from helpers import devices, make_rows

DET = st.Detector.default()


def run_induction(rows, params, max_elements=2_000_000, backend="torch", options=None):
    segs = st.Segments.from_numpy(rows, dtype=params.dtype, device=params.device, swap=False)
    electrons = quench(segs.dEdx, segs.dE, params)
    drifted = drift_stage.drift_segments(segs.start, segs.end, electrons, params, DET)
    far = torch.maximum(drift_stage.drift_distance(segs.start[:, 2], drifted.z_anode),
                        drift_stage.drift_distance(segs.end[:, 2], drifted.z_anode))
    margin = 5 * drift_stage.diffusion_sigma(far, params.drift_velocity().detach(), params.tran_diff.detach())
    pairs = associate(segs.start, segs.end, drifted.plane, margin.detach(), DET)
    table, pixel_of_pair = _pixel_table(pairs, segs, DET)
    n = len(segs)
    state = SegmentState(segs.start, segs.end, electrons, segs.t_start, segs.t_end, drifted.z_anode,
                         torch.zeros(n, dtype=params.dtype, device=params.device),
                         torch.zeros(n, dtype=torch.long, device=params.device))
    buffer, plan = induce(pairs, pixel_of_pair, table.shape[0], state, params, DET, options, max_elements, None, backend)
    return buffer, plan, drifted


class TestResponse:
    def test_pad_centre_and_corner(self):
        zero = torch.zeros(1, dtype=torch.float64)
        a, b, c, d = response_shape(zero, zero)
        assert (float(a), float(b), float(d)) == (1.0, pytest.approx(0.679), pytest.approx(2.948))
        corner = torch.full((1,), 0.2217, dtype=torch.float64)
        a, b, c, d = response_shape(corner, corner)
        # physics.md §2.5: A ≈ 0.965, b ≈ 0.087, c ≈ 3.75, Δt0 ≈ 4.03 at the corner
        assert float(a) == pytest.approx(0.965, abs=2e-3) and float(b) == pytest.approx(0.087, abs=2e-3)
        assert float(c) == pytest.approx(3.75, abs=1e-2) and float(d) == pytest.approx(4.03, abs=1e-2)

    @pytest.mark.parametrize("sigma,scale", [(0.05, 0.68), (0.3, 0.087), (0.01, 3.7)])
    def test_smeared_exponential_matches_numerical_convolution(self, sigma, scale):
        t = torch.linspace(-6, 3, 301, dtype=torch.float64)
        mu = torch.tensor(0.3, dtype=torch.float64)
        got = smeared_truncated_exponential(t, mu, torch.tensor(sigma, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
        tau = torch.linspace(-8 * sigma, 8 * sigma, 40001, dtype=torch.float64) + mu
        weight = torch.exp(-0.5 * ((tau - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        f = torch.where(t[:, None] < tau[None, :], torch.exp(-(tau[None, :] - t[:, None]) / scale) / scale, torch.zeros(()).double())
        expected = torch.trapezoid(f * weight[None, :], tau, dim=1)
        assert torch.allclose(got, expected, atol=2e-3 * float(expected.max()), rtol=0)
        # unit integral over time
        tt = torch.linspace(-60, 10, 200001, dtype=torch.float64)
        total = torch.trapezoid(smeared_truncated_exponential(tt, mu, torch.tensor(sigma).double(), torch.tensor(scale).double()), tt)
        assert float(total) == pytest.approx(1.0, abs=1e-6)

    def test_pad_fraction(self):
        pos = torch.tensor([[0.0, 0.0], [0.2217, 0.0], [0.2217, 0.2217], [5.0, 0.0]], dtype=torch.float64)
        frac = pad_fraction(pos, torch.zeros(4, 2, dtype=torch.float64), 0.2217, torch.full((4,), 0.05, dtype=torch.float64))
        assert float(frac[0]) == pytest.approx(math.erf(0.2217 / (0.05 * math.sqrt(2))) ** 2)
        assert float(frac[1]) == pytest.approx(0.5 * math.erf(0.2217 / (0.05 * math.sqrt(2))) * math.erf(0.4434 / (0.05 * math.sqrt(2))))
        assert float(frac[2]) == pytest.approx(0.25, rel=1e-6)
        assert float(frac[3]) == 0.0

    @pytest.mark.parametrize("offset", [0.0, 0.05, 0.2, 0.2217, 0.26])
    def test_pad_cloud_moments_match_numerical_integration(self, offset):
        sigma, half = 0.04, 0.2217
        x = torch.linspace(-half, half, 200001, dtype=torch.float64)
        density = torch.exp(-0.5 * ((x - offset) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        mass = torch.trapezoid(density, x)
        mean_abs = torch.trapezoid(density * x.abs(), x) / mass
        mean_square = torch.trapezoid(density * x * x, x) / mass
        pos = torch.tensor([[offset, 0.0]], dtype=torch.float64)
        frac, m1, m2 = pad_cloud(pos, torch.zeros(1, 2, dtype=torch.float64), half, torch.tensor([sigma], dtype=torch.float64))
        assert float(m1[0, 0]) == pytest.approx(float(mean_abs), rel=1e-6, abs=1e-9)
        assert float(m2[0, 0]) == pytest.approx(float(mean_square), rel=1e-6, abs=1e-12)
        assert float(frac[0]) == pytest.approx(float(mass) * float(pad_fraction(torch.zeros(1, 2).double(), torch.zeros(1, 2).double(), half, torch.tensor([sigma]).double())) ** 0.5, rel=1e-6)

    def test_cloud_delay_mean_is_exact_for_the_quadratic(self):
        # E[Δt0] over a distribution of |offsets| equals the quadratic evaluated with the moments
        rng = torch.Generator().manual_seed(0)
        xs = (torch.rand(200000, generator=rng, dtype=torch.float64) * 0.1 + 0.05)
        ys = (torch.rand(200000, generator=rng, dtype=torch.float64) * 0.05)
        _, _, _, delay = response_shape(xs, ys)
        m1 = torch.stack([xs.mean(), ys.mean()])[None]
        m2 = torch.stack([(xs ** 2).mean(), (ys ** 2).mean()])[None]
        mean, variance = cloud_delay(m1, m2)
        # x and y are independent here, so E[xy] = E[x]E[y]
        assert float(mean[0]) == pytest.approx(float(delay.mean()), rel=1e-3)
        assert float(variance[0]) == pytest.approx(float(delay.var()), rel=0.1)

    def test_gradcheck_pure_functions(self):
        t = torch.linspace(-3, 1, 9, dtype=torch.float64)
        args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.2, 0.1, 0.6)]
        assert torch.autograd.gradcheck(lambda m, s, b: smeared_truncated_exponential(t, m, s, b), args)
        pos = torch.tensor([[0.1, 0.05], [0.2, -0.2]], dtype=torch.float64, requires_grad=True)
        sig = torch.tensor([0.05, 0.08], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda p, s: pad_fraction(p, torch.zeros(2, 2, dtype=torch.float64), 0.2217, s), (pos, sig))
        assert torch.autograd.gradcheck(lambda p, s: pad_cloud(p, torch.zeros(2, 2, dtype=torch.float64), 0.2217, s), (pos, sig))
        m1 = torch.tensor([[0.1, 0.05]], dtype=torch.float64, requires_grad=True)
        m2 = torch.tensor([[0.012, 0.0031]], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(cloud_delay, (m1, m2))


ORIENTATIONS = {
    "flat_x": ((1.0, -20.0, -20.0), (3.0, -20.0, -20.0)),
    "diagonal": ((1.0, -20.0, -20.0), (2.5, -18.7, -20.3)),
    "45deg": ((1.0, -20.0, -20.0), (2.0, -20.5, -21.1180)),
    "steep_cot20": ((1.0, -20.0, -16.0), (1.05, -19.95, -17.414)),
    "vertical": ((1.0, -20.0, -16.0), (1.0, -20.0, -18.0)),
    "zero_length": ((1.0, -20.0, -16.0), (1.0, -20.0, -16.0)),
}


class TestInduction:
    @pytest.mark.parametrize("name", sorted(ORIENTATIONS))
    def test_total_charge_equals_drifted_charge(self, name):
        start, end = ORIENTATIONS[name]
        rows = make_rows([start], [end])
        if name == "zero_length":
            rows["dE"] = 1.0
        params = st.Params.nominal()
        buffer, plan, drifted = run_induction(rows, params)
        total = float(buffer.sum())
        assert total == pytest.approx(float(drifted.n_electrons.sum()), rel=1e-2)
        # tighter: the quadrature is converged well below the 1% requirement
        assert total == pytest.approx(float(drifted.n_electrons.sum()), rel=2e-4)

    def test_chunking_does_not_change_results(self):
        rows = make_rows([(1.0, -20.0, -20.0), (2.0, -19.0, -18.0)], [(3.0, -19.0, -21.0), (2.3, -18.8, -22.0)])
        params = st.Params.nominal()
        big, plan, _ = run_induction(rows, params)
        small, plan_small, _ = run_induction(rows, params, max_elements=3000)
        assert plan.n_elements == plan_small.n_elements
        assert torch.allclose(big, small, rtol=1e-12, atol=1e-9)

    def test_gradcheck_full_stage(self):
        # Outputs per pixel: total charge and Σ q·t (first time moment), on the nominal pixel set, so that the
        # output layout does not move with the parameters; tail_tolerance 1e-12 makes window edges negligible.
        rows = make_rows([(1.0, -20.0, -28.0)], [(1.3, -19.9, -28.2)], dEdx=2.0)
        options = InductionOptions(tail_tolerance=1e-12)
        _, nominal_plan, _ = run_induction(rows, st.Params.nominal(), options=options)
        n_pixels = nominal_plan.pixel_width.numel()

        def f(v, tau, dl, dt, ab):
            params = st.Params.nominal().replace(vdrift=0.1587 * v, lifetime=2200 * tau, long_diff=4e-6 * dl,
                                                 tran_diff=8.8e-6 * dt, Ab=0.8 * ab)
            buffer, plan, _ = run_induction(rows, params, options=options)
            assert plan.pixel_width.numel() == n_pixels
            pixel = torch.repeat_interleave(torch.arange(n_pixels), plan.pixel_width)
            tick = plan.pixel_start[pixel] + (torch.arange(plan.buffer_size) - plan.pixel_offset[pixel])
            charge = torch.zeros(n_pixels, dtype=torch.float64).index_add(0, pixel, buffer)
            moment = torch.zeros(n_pixels, dtype=torch.float64).index_add(0, pixel, buffer * tick.double() * 0.1)
            return torch.cat([charge / 1e3, moment / 1e5])

        args = [torch.tensor(1.0, dtype=torch.float64, requires_grad=True) for _ in range(5)]
        assert torch.autograd.gradcheck(f, args, atol=1e-6, rtol=1e-4)

    def test_torch_scatter_backend_agrees(self):
        pytest.importorskip("torch_scatter", reason="optional torch-scatter backend not installed")
        rows = make_rows([(1.0, -20.0, -20.0)], [(3.0, -19.0, -21.0)])
        params = st.Params.nominal()
        native, _, _ = run_induction(rows, params)
        other, _, _ = run_induction(rows, params, backend="torch_scatter")
        assert torch.allclose(native, other, rtol=1e-10, atol=1e-9)

    def test_unknown_backend(self):
        rows = make_rows([(1.0, -20.0, -20.0)], [(3.0, -19.0, -21.0)])
        with pytest.raises(ValueError, match="unknown scatter backend"):
            run_induction(rows, st.Params.nominal(), backend="nope")

    @pytest.mark.parametrize("device", devices())
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_device_dtype(self, device, dtype):
        rows = make_rows([(1.0, -20.0, -20.0)], [(3.0, -19.0, -21.0)])
        params = st.Params.nominal(dtype=dtype, device=device)
        buffer, _, drifted = run_induction(rows, params)
        assert buffer.dtype == dtype and buffer.device.type == device
        assert float(buffer.sum()) == pytest.approx(float(drifted.n_electrons.sum()), rel=1e-3)

    def test_module_wrapper(self):
        assert isinstance(Induction(DET), torch.nn.Module)


@pytest.mark.parametrize("case", ["no_diffusion", "touches_anode"])
def test_vanishing_cloud_width_keeps_the_sample_grid_finite(case):
    """tran_diff = long_diff = 0 (allowed: non-negative) and a segment ending on the anode plane (drift distance 0)
    give a zero diffusion width; the sample grid floors it (before: a 400 GB allocation inside torch).  The charge
    on the pads is still the segment's: compared with a slightly diffused cloud the total charge agrees."""
    z_anode = float(st.Detector.default().tpc_borders[0, 2, 0])
    params = st.Params.nominal()
    if case == "no_diffusion":
        start, end = [1.0, 1.0, z_anode + 10.0], [1.6, 1.3, z_anode + 6.0]
        params.tran_diff = torch.tensor(0.0, dtype=torch.float64)
        params.long_diff = torch.tensor(0.0, dtype=torch.float64)
    else:
        start, end = [1.0, 1.0, z_anode + 4.0], [1.3, 1.2, z_anode]
    segments = st.Segments.from_numpy(make_rows(start, end), swap=False)
    with torch.no_grad():
        hits = st.simulate(segments, st.Detector.default(), params, front_end=st.FrontEnd(clock_phases=1),
                           return_waveforms=True)
    charge = hits.waveforms.charge
    assert torch.isfinite(charge).all() and len(hits.adc) > 0 and torch.isfinite(hits.adc).all()
    reference_params = st.Params.nominal()
    reference_params.tran_diff = torch.tensor(1e-9, dtype=torch.float64)
    reference_params.long_diff = torch.tensor(1e-9, dtype=torch.float64)
    if case == "no_diffusion":
        with torch.no_grad():
            reference = st.simulate(segments, st.Detector.default(), reference_params,
                                    front_end=st.FrontEnd(clock_phases=1), return_waveforms=True)
        # not tighter: without longitudinal smearing the current has a sharp edge, and its value at the ticks
        # sums to its integral only to ~1e-3 (the tick sampling of larnd-sim's current)
        assert float(charge.sum()) == pytest.approx(float(reference.waveforms.charge.sum()), rel=3e-3)


class TestSegmentPieces:
    """The node grid's pieces: geometry only, contiguous, the drift distance at most doubling within a piece."""

    def pieces(self, d_start, d_end, length=None, cross=False):
        from sparsetpc.induction import segment_pieces
        d_start = torch.tensor(d_start, dtype=torch.float64)
        d_end = torch.tensor(d_end, dtype=torch.float64)
        length = (d_end - d_start).abs() * 1.3 if length is None else torch.tensor(length, dtype=torch.float64)
        offset = -d_start if not cross else -d_start
        delta_z = -(d_end - d_start) if not cross else d_start + d_end
        return segment_pieces(d_start, d_end, length, offset, delta_z), length

    def test_pieces_tile_the_segment_and_distance_at_most_doubles(self):
        pieces, length = self.pieces([0.001, 3.0, 5.0, 0.3], [3.0, 0.001, 5.4, 20.0])
        for row in range(4):
            used = pieces.used[row]
            start, end = pieces.start[row][used], pieces.end[row][used]
            order = torch.argsort(start)
            start, end = start[order], end[order]
            assert float(start[0]) == pytest.approx(0.0, abs=1e-12)
            assert float(end[-1]) == pytest.approx(float(length[row]), rel=1e-12)
            assert torch.allclose(start[1:], end[:-1], atol=1e-12)
            near = pieces.near_distance[row][used][order]
            # distance along the piece: linear; its far end at most twice its near end (above the floor)
            d0, d1 = (0.001, 3.0) if row < 2 else ((5.0, 5.4) if row == 2 else (0.3, 20.0))
            if row == 1:
                d0, d1 = 3.0, 0.001
            far = d0 + (d1 - d0) * torch.maximum(start, end) / float(length[row])
            near_end = d0 + (d1 - d0) * torch.minimum(start, end) / float(length[row])
            far_distance = torch.maximum(far, near_end)
            assert torch.all(far_distance <= 2.0 * torch.clamp(near, min=0.01) + 1e-9)
        assert int(pieces.used[2].sum()) == 1          # 5.0 → 5.4 cm: one piece

    def test_a_segment_crossing_the_anode_plane_is_one_piece_at_distance_zero(self):
        pieces, _ = self.pieces([0.5], [0.7], length=[1.0], cross=True)
        assert int(pieces.used.sum()) == 1 and float(pieces.near_distance[0, 0]) == 0.0

    def test_a_segment_ending_near_the_anode_costs_nodes_by_its_pieces(self):
        """3 cm of drift ending 1 mm from the anode: one grid at the segment's nearest point (the old rule) needs
        more samples than the pieces; the charge per pixel and tick is the same to the quadrature's accuracy."""
        from sparsetpc import induction
        z_anode = float(st.Detector.default().tpc_borders[0, 2, 0])
        rows = make_rows([0.5, 0.5, z_anode + 3.1], [1.9, 1.2, z_anode + 0.1])
        segments = st.Segments.from_numpy(rows, swap=False)
        counts = {}
        original_plan, original_pieces = induction.plan_samples, induction.segment_pieces

        def counting(*args, **kwargs):
            plan = original_plan(*args, **kwargs)
            counts.setdefault("samples", []).append(plan.horizon_pair.numel())
            return plan

        def one_piece(distance_start, distance_end, length, offset_start, delta_z):
            near = torch.minimum(distance_start, distance_end)
            return induction.SegmentPieces(start=torch.zeros_like(length)[:, None], end=length[:, None],
                                           near_distance=near[:, None], used=torch.ones_like(near, dtype=torch.bool)[:, None])
        induction.plan_samples = counting
        try:
            with torch.no_grad():
                pieces = st.simulate(segments, st.Detector.default(), st.Params.nominal(),
                                     front_end=st.FrontEnd(clock_phases=1), return_waveforms=True)
                induction.segment_pieces = one_piece
                single = st.simulate(segments, st.Detector.default(), st.Params.nominal(),
                                     front_end=st.FrontEnd(clock_phases=1), return_waveforms=True)
        finally:
            induction.plan_samples, induction.segment_pieces = original_plan, original_pieces
        assert counts["samples"][0] < 0.6 * counts["samples"][1]
        a, b = pieces.waveforms, single.waveforms
        assert torch.equal(a.pixel_table, b.pixel_table)

        def on_global_ticks(waves):   # window starts differ (the earliest tails come from other nodes)
            rows, ticks, values = waves.to_coo()
            dense = torch.zeros((waves.charge.shape[0], int(ticks.max()) + 2), dtype=values.dtype)
            return dense.index_put((rows, ticks), values, accumulate=True)
        dense_a, dense_b = on_global_ticks(a), on_global_ticks(b)
        width = max(dense_a.shape[1], dense_b.shape[1])
        dense_a = torch.nn.functional.pad(dense_a, (0, width - dense_a.shape[1]))
        dense_b = torch.nn.functional.pad(dense_b, (0, width - dense_b.shape[1]))
        # per tick to 5e-4 of the peak: each grid truncates its own nodes' tails at 1e-5 of their charge
        assert float((dense_a - dense_b).abs().max()) < 5e-4 * float(dense_b.max())
        assert float(dense_a.sum()) == pytest.approx(float(dense_b.sum()), rel=1e-5)
