"""Field-response look-up tables (issue #12): table IO and checks, the smooth interpolation, the sparse LUT
induction against the analytic mode, charge conservation with neighbour induction, larnd-sim's nearest lookup
against an independent numpy summation, gradients (gradcheck, full-pipeline central differences), CLI errors."""
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import sparsetpc as st
from sparsetpc import drift as drift_stage
from sparsetpc.field_response import (ResponseTable, ResponseTableError, analytic_response_table, interpolate_response,
                                      load_response_table, response_settings_from_yaml, save_response_table,
                                      weighting_field_response_table)
from sparsetpc.induction import SegmentState, association_width
from sparsetpc.induction_table import (TableOptions, association_margin, column_waveforms, induce_table,
                                       time_smear)
from sparsetpc.pipeline import _pixel_table
from sparsetpc.pixels import associate
from sparsetpc.quenching import quench
from helpers import REPO, SHARED, devices, make_rows, needs_shared

DET = st.Detector.default()
PITCH = DET.pixel_pitch
X0, Y0, Z_ANODE = DET.tpc_borders[0, 0, 0], DET.tpc_borders[0, 1, 0], DET.tpc_borders[0, 2, 0]
#: fine enough that the table's discretisation is below the analytic mode's own cloud approximation
FINE = dict(bin_size=PITCH / 40, sampling=0.025)


def pad_centre(ix, iy):
    return X0 + (ix + 0.5) * PITCH, Y0 + (iy + 0.5) * PITCH


@pytest.fixture(scope="module")
def neighbour_table():
    """Weighting-field table: one pitch of neighbours, 1.5 cm gap (bipolar induction on the neighbours)."""
    return weighting_field_response_table(neighbours=1, gap=1.5)


@pytest.fixture(scope="module")
def fine_analytic_table():
    return analytic_response_table(**FINE)


def readouts(hits, min_weight=1e-6):
    table = hits.pixel_table[hits.pixel]
    return {(int(p), int(x), int(y), int(r)): (float(a), float(w))
            for (_, p, x, y), r, a, w in zip(table.tolist(), hits.readout, hits.adc, hits.weight) if w > min_weight}


def run_table_induction(rows, params, table, options=None):
    segs = st.Segments.from_numpy(rows, dtype=params.dtype, device=params.device, swap=False)
    electrons = quench(segs.dEdx, segs.dE, params)
    drifted = drift_stage.drift_segments(segs.start, segs.end, electrons, params, DET)
    options = options or TableOptions()
    margin = association_margin(association_width(segs.start, segs.end, drifted.z_anode, params), DET, table, options)
    pairs = associate(segs.start, segs.end, drifted.plane, margin, DET)
    pixel_table, pixel_of_pair = _pixel_table(pairs, segs, DET)
    n = len(segs)
    state = SegmentState(segs.start, segs.end, electrons, segs.t_start, segs.t_end, drifted.z_anode,
                         torch.zeros(n, dtype=params.dtype, device=params.device),
                         torch.zeros(n, dtype=torch.long, device=params.device))
    buffer, plan = induce_table(pairs, pixel_of_pair, pixel_table.shape[0], state, params, DET, table, options)
    return buffer, plan, pairs, pixel_table, electrons


# ---------------------------------------------------------------------------------------------- table IO
class TestTableFiles:
    def test_roundtrip_npy_and_npz(self, tmp_path):
        table = analytic_response_table(sampling=0.05, before=3.0, after=1.0)
        save_response_table(table, tmp_path / "r.npy")
        save_response_table(table, tmp_path / "r.npz")
        plain = load_response_table(tmp_path / "r.npy", sampling=0.05, time_window=table.time_window)
        stored = load_response_table(tmp_path / "r.npz")
        for loaded in (plain, stored):
            assert loaded.shape == table.shape
            assert torch.equal(loaded.values, table.values)
            assert (loaded.bin_size, loaded.sampling, loaded.time_window) == \
                (table.bin_size, table.sampling, pytest.approx(table.time_window))

    @pytest.mark.parametrize("array,message", [
        (np.zeros((4, 4)), "3 axes"),
        (np.full((2, 2, 3), np.nan), "non-finite"),
        (np.zeros((2, 0, 3)), "empty axis"),
        (np.array([[["a"]]]), "numbers"),
    ])
    def test_bad_tables_are_named(self, tmp_path, array, message):
        path = tmp_path / "bad.npy"
        np.save(path, array)
        with pytest.raises(ResponseTableError, match=message):
            load_response_table(path)

    def test_missing_and_bad_settings(self, tmp_path):
        with pytest.raises(ResponseTableError, match="not found"):
            load_response_table(tmp_path / "absent.npy")
        np.save(tmp_path / "ok.npy", np.ones((2, 2, 3)))
        with pytest.raises(ResponseTableError, match="sampling must be a positive"):
            load_response_table(tmp_path / "ok.npy", sampling=-0.1)
        (tmp_path / "det.yaml").write_text("response_bin_size: [0.03]\nresponse_sampling: 0.05\ntime_window: 8.9\n")
        assert response_settings_from_yaml(tmp_path / "det.yaml") == {"bin_size": 0.03, "sampling": 0.05,
                                                                       "time_window": 8.9}

    def test_sampling_must_divide_the_tick(self):
        table = ResponseTable(values=torch.ones(2, 2, 4), sampling=0.03)
        rows = make_rows([[0.5, 0.5, -25.0]], [[0.6, 0.6, -24.9]])
        with pytest.raises(ResponseTableError, match="divide the readout tick"):
            st.simulate(st.Segments.from_numpy(rows, swap=False), DET, st.Params.nominal(), response=table)


# ---------------------------------------------------------------------------------------------- interpolation
def _hat_matrix(points, nodes, values_at_nodes_count):
    """[len(points), n] linear-interpolation weights on ``nodes`` (np.interp of unit vectors)."""
    return np.stack([np.interp(points, nodes, np.eye(len(nodes))[i], left=0.0, right=0.0)
                     for i in range(values_at_nodes_count)], axis=1)


def numpy_cloud_response(table, x, y, tau, sigma_x, sigma_t, n=801):
    """E[R] of a Gaussian cloud by brute-force quadrature of the piecewise-linear table (independent of the
    hat-expectation formulas): nodes at ±(i+½)b (zero one bin beyond), time nodes k·Δ − T_w (zero beyond)."""
    values = table.values.numpy()
    nx, ny, nt = values.shape
    b, dt = table.bin_size, table.sampling

    def axis_weights(centre, sigma, n_bins):
        grid = centre + sigma * np.linspace(-7, 7, n)
        density = np.exp(-0.5 * ((grid - centre) / sigma) ** 2)
        density /= density.sum()
        nodes = np.concatenate([-(np.arange(n_bins + 1)[::-1] + 0.5) * b, (np.arange(n_bins + 1) + 0.5) * b])
        # signed node → table bin (mirror), the outermost nodes are zero
        basis = np.stack([np.interp(grid, nodes, np.eye(len(nodes))[i]) for i in range(len(nodes))], axis=1)
        folded = np.zeros((n, n_bins))
        for position, node in enumerate(nodes):
            index = int(round(abs(node) / b - 0.5))
            if index < n_bins:
                folded[:, index] += basis[:, position]
        return density @ folded

    grid_t = tau + sigma_t * np.linspace(-7, 7, n)
    density_t = np.exp(-0.5 * ((grid_t - tau) / sigma_t) ** 2)
    density_t /= density_t.sum()
    time_nodes = np.arange(-1, nt + 1) * dt - table.time_window
    basis_t = np.stack([np.interp(grid_t, time_nodes, np.eye(nt + 2)[i]) for i in range(1, nt + 1)], axis=1)
    wt = density_t @ basis_t
    return np.einsum("i,j,k,ijk->", axis_weights(x, sigma_x, nx), axis_weights(y, sigma_x, ny), wt, values)


class TestInterpolation:
    @pytest.mark.parametrize("device", devices())
    def test_smoke_and_shape(self, device):
        table = analytic_response_table(before=3.0, after=1.0).to(device=device)
        offsets = torch.tensor([0.0, 0.1, 0.5], dtype=torch.float64, device=device)
        out = interpolate_response(table, offsets, offsets, torch.full_like(offsets, -0.5),
                                   torch.full_like(offsets, 0.02), torch.full_like(offsets, 0.1))
        assert out.shape == (3,) and out.device.type == device and out.dtype == torch.float64
        assert float(out[2]) == 0.0          # beyond the pad: the analytic table is zero there

    def test_zero_width_is_linear_interpolation_through_the_nodes(self):
        table = ResponseTable(values=torch.rand(3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                              bin_size=0.05, sampling=0.1, time_window=0.55)
        i, j, k = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(6), indexing="ij")
        i, j, k = (v.flatten().double() for v in (i, j, k))
        x = (i + 0.5) * 0.05 * torch.where(torch.arange(72) % 2 == 0, 1.0, -1.0).double()
        y = (j + 0.5) * 0.05
        tau = k * 0.1 - 0.55
        tiny = torch.full_like(tau, 1e-12)         # the smoothing of a node kink is O(σ/h)
        got = interpolate_response(table, x, y, tau, tiny, tiny)
        assert torch.allclose(got, table.values.flatten(), atol=1e-9, rtol=0)

    @pytest.mark.parametrize("x,y,tau,sigma_x,sigma_t", [(0.01, 0.2, -1.3, 0.02, 0.12), (0.21, 0.05, -0.05, 0.05, 0.03),
                                                         (0.3, 0.0, -2.0, 0.01, 0.3)])
    def test_cloud_expectation_matches_quadrature(self, neighbour_table, x, y, tau, sigma_x, sigma_t):
        t = lambda v: torch.tensor([v], dtype=torch.float64)
        got = float(interpolate_response(neighbour_table, t(x), t(y), t(tau), t(sigma_x), t(sigma_t)))
        expected = numpy_cloud_response(neighbour_table, x, y, tau, sigma_x, sigma_t)
        assert got == pytest.approx(expected, rel=2e-4, abs=2e-6 * float(neighbour_table.values.abs().max()))

    def test_gradcheck(self):
        generator = torch.Generator().manual_seed(3)
        table = ResponseTable(values=torch.rand(3, 3, 8, dtype=torch.float64, generator=generator),
                              bin_size=0.05, sampling=0.1, time_window=0.6)
        inputs = (torch.tensor([0.013, -0.071], dtype=torch.float64, requires_grad=True),
                  torch.tensor([0.102, 0.034], dtype=torch.float64, requires_grad=True),
                  torch.tensor([-0.33, -0.052], dtype=torch.float64, requires_grad=True),
                  torch.tensor([0.021, 0.04], dtype=torch.float64, requires_grad=True),
                  torch.tensor([0.07, 0.15], dtype=torch.float64, requires_grad=True))
        assert torch.autograd.gradcheck(lambda *a: interpolate_response(table, *a), inputs, eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- physics
def _track_rows():
    """A short track over a few pads, ~5 cm from the anode, crossing pad boundaries (plane 0)."""
    start = np.array([X0 + 40.3 * PITCH, Y0 + 100.2 * PITCH, Z_ANODE + 4.0])
    end = start + np.array([1.1, 0.7, 1.2])
    return make_rows([start], [end], dEdx=2.1)


#: The analytic mode evaluates the response of the cloud's part on a pad at the cloud's mean |offset| (an
#: approximation; the table integrates the cloud exactly), which alone moves ADCs by ~0.05 (0.12 on mixed_trk0)
#: at nominal diffusion; with point-like transverse clouds (tran_diff → 1e-8) the analytic mode is exact and the
#: comparison tests the table machinery (docs/field_response.md).
POINT_LIKE = dict(tran_diff=1e-8)


class TestAnalyticTable:
    @pytest.mark.parametrize("device", devices())
    def test_reproduces_the_analytic_mode(self, fine_analytic_table, device):
        segs = st.Segments.from_numpy(_track_rows(), dtype=torch.float64, device=device, swap=False)
        params = st.Params.nominal(dtype=torch.float64, device=device, **POINT_LIKE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # tran_diff outside larnd-sim's range
            analytic = st.simulate(segs, DET, params)
            table = st.simulate(segs, DET, params, response=fine_analytic_table)
        a, b = readouts(analytic), readouts(table)
        assert sorted(a) == sorted(b) and len(a) >= 4
        assert np.mean([abs(a[k][0] - b[k][0]) for k in a]) <= 0.05
        assert max(abs(a[k][1] - b[k][1]) for k in a) < 1e-3

    def test_pixel_charges_at_nominal_diffusion(self, fine_analytic_table):
        """Both modes share the diffused charge among the pads exactly: equal charge per pixel."""
        segs = st.Segments.from_numpy(_track_rows(), dtype=torch.float64, swap=False)
        params = st.Params.nominal(dtype=torch.float64)
        front_end = st.FrontEnd(clock_phases=1)
        analytic = st.simulate(segs, DET, params, front_end=front_end, return_waveforms=True).waveforms
        table = st.simulate(segs, DET, params, front_end=front_end, return_waveforms=True,
                            response=fine_analytic_table).waveforms
        a = dict(zip(map(tuple, analytic.pixel_table.tolist()), analytic.total_charge().tolist()))
        b = dict(zip(map(tuple, table.pixel_table.tolist()), table.total_charge().tolist()))
        scale = max(a.values())
        for key in set(a) | set(b):
            assert b.get(key, 0.0) == pytest.approx(a.get(key, 0.0), abs=1e-4 * scale), key

    @needs_shared
    def test_reference_track(self, fine_analytic_table):
        from validation.run_reference import segment_rows
        rows = segment_rows(SHARED / "reference" / "mixed_trk0_fwd.npz")
        segs = st.Segments.from_numpy(rows, dtype=torch.float64, swap=False)
        params = st.Params.nominal(dtype=torch.float64, **POINT_LIKE)
        front_end = st.FrontEnd(clock_phases=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = readouts(st.simulate(segs, DET, params, front_end=front_end))
            b = readouts(st.simulate(segs, DET, params, front_end=front_end, response=fine_analytic_table))
        assert sorted(a) == sorted(b)
        assert np.mean([abs(a[k][0] - b[k][0]) for k in a]) <= 0.05


class TestNeighbourInduction:
    @pytest.mark.parametrize("offset,extent", [((0.02, -0.03), (0.03, 0.04, 2.0)), ((-0.06, 0.05), (-0.02, 0.01, 1.0))])
    def test_charge_conservation(self, neighbour_table, offset, extent):
        """Every segment inside one pad column: the neighbours' time-integrated charge is 0 and the pad's is
        the drifted charge (n_e × mean survival exp(−(|z − z_a| − 0.5)/(vτ)) over the segment, closed form)."""
        cx, cy = pad_centre(40, 100)
        start = np.array([cx + offset[0], cy + offset[1], Z_ANODE + 3.0])
        end = start + np.array(extent)
        params = st.Params.nominal(dtype=torch.float64)
        buffer, plan, pairs, pixel_table, electrons = run_table_induction(make_rows([start], [end]), params,
                                                                          neighbour_table)
        totals = torch.zeros(pixel_table.shape[0], dtype=torch.float64).index_add(
            0, torch.repeat_interleave(torch.arange(pixel_table.shape[0]), plan.pixel_width), buffer)
        centre = int(((pixel_table[:, 2] == 40) & (pixel_table[:, 3] == 100)).nonzero())
        collected = float(totals[centre])
        others = torch.cat([totals[:centre], totals[centre + 1:]])
        assert len(others) >= 8                                   # the neighbours are there ...
        assert float(buffer.min()) < -1e-4 * collected            # ... with bipolar current
        assert float(others.abs().max()) <= 1e-3 * collected      # ... and no net charge
        v, tau = float(params.vdrift), float(params.lifetime)
        d0, d1 = start[2] - Z_ANODE, end[2] - Z_ANODE
        survival = v * tau * (math.exp(-(d0 - 0.5) / (v * tau)) - math.exp(-(d1 - 0.5) / (v * tau))) / (d1 - d0)
        assert collected == pytest.approx(float(electrons[0]) * survival, rel=1e-3)


class TestNearest:
    def test_matches_numpy_get_closest_waveform_summation(self, neighbour_table):
        """Our nearest lookup against a direct numpy re-implementation of larnd-sim's summation over the same
        point charges: i = round(|Δx|/b − ½), j likewise, k = round((t − t0)/Δ), t0 = |z − z_a|/v − T_w,
        t0 < t < t0 + T_w, current += q·R[i, j, k]."""
        table = neighbour_table.with_interpolation("nearest")
        cx, cy = pad_centre(40, 100)
        start = np.array([cx - 0.13, cy + 0.08, Z_ANODE + 2.5])
        end = start + np.array([0.35, -0.2, 0.3])
        params = st.Params.nominal(dtype=torch.float64)
        buffer, plan, pairs, pixel_table, electrons = run_table_induction(make_rows([start], [end]), params, table)
        # ours: (plane, ix, iy, tick) -> current [electrons/µs]
        ours = {}
        for row, (start_tick, width, offset) in enumerate(zip(plan.pixel_start.tolist(), plan.pixel_width.tolist(),
                                                                plan.pixel_offset.tolist())):
            key = tuple(pixel_table[row, 1:].tolist())
            for column in range(width):
                value = float(buffer[offset + column]) / DET.tick
                if value != 0.0:
                    ours[key + (start_tick + column,)] = value
        # numpy: the point charges of our sample grid (u along the segment, weight), independent lookup and sum
        values = table.values.numpy()
        nx, ny, nt = values.shape
        v, lifetime = float(params.vdrift), float(params.lifetime)
        length = np.linalg.norm(end - start)
        direction = (end - start) / length
        nodes = sorted(set(zip(plan.u.tolist(), plan.weight.tolist())))
        expected = {}
        for u, weight in nodes:
            point = start + u * direction
            distance = abs(point[2] - Z_ANODE)
            charge = float(electrons[0]) * weight * math.exp(-(distance - 0.5) / v / lifetime)
            t0 = distance / v - table.time_window
            for ix in range(30, 51):
                for iy in range(90, 111):
                    px, py = pad_centre(ix, iy)
                    x_dist, y_dist = abs(px - point[0]), abs(py - point[1])
                    if x_dist > table.bin_size * nx or y_dist > table.bin_size * ny:
                        continue
                    i, j = round(x_dist / table.bin_size - 0.5), round(y_dist / table.bin_size - 0.5)
                    for tick in range(int(t0 / DET.tick) - 2, int((t0 + table.time_window) / DET.tick) + 3):
                        time_tick = tick * DET.tick
                        if not t0 < time_tick < t0 + table.time_window:
                            continue
                        k = round((time_tick - t0) / table.sampling)
                        if 0 <= i < nx and 0 <= j < ny and 0 <= k < nt and values[i, j, k] != 0:
                            key = (0, ix, iy, tick)
                            expected[key] = expected.get(key, 0.0) + charge * values[i, j, k]
        scale = max(abs(x) for x in expected.values())
        assert len(expected) > 100
        for key in set(expected) | set(ours):
            assert ours.get(key, 0.0) == pytest.approx(expected.get(key, 0.0), rel=1e-6, abs=1e-6 * scale), key


# ---------------------------------------------------------------------------------------------- gradients
class TestPipelineGradients:
    NAMES = ("vdrift", "tran_diff", "long_diff", "lifetime")

    def test_central_differences(self, neighbour_table):
        cx, cy = pad_centre(40, 100)
        start = np.array([cx - 0.05, cy + 0.1, Z_ANODE + 2.0])
        rows = make_rows([start], [start + np.array([0.3, -0.25, 0.4])], dEdx=3.0)
        segs = st.Segments.from_numpy(rows, dtype=torch.float64, swap=False)
        front_end = st.FrontEnd(clock_phases=1)

        def loss(params):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hits = st.simulate(segs, DET, params, front_end=front_end, response=neighbour_table)
            return (hits.weight * (hits.adc + 10.0 * hits.t)).sum()

        params = st.Params.nominal(dtype=torch.float64).requires_grad_(self.NAMES)
        loss(params).backward()
        for name in self.NAMES:
            gradient = float(getattr(params, name).grad)
            value = float(getattr(params, name).detach())
            assert gradient != 0.0, name
            for step in (1e-3, 1e-4, 1e-5, 1e-6):
                h = step * value
                with torch.no_grad():
                    up = float(loss(st.Params.nominal(dtype=torch.float64, **{name: value + h})))
                    down = float(loss(st.Params.nominal(dtype=torch.float64, **{name: value - h})))
                numeric = (up - down) / (2 * h)
                assert numeric == pytest.approx(gradient, rel=0.02), (name, step, numeric, gradient)


class TestContractions:
    """The pieces of the table induction with hand-written backward passes: values against direct sums, gradients
    by gradcheck."""

    @pytest.mark.parametrize("bins_per_tick", [1, 2, 3])
    def test_time_smear(self, bins_per_tick):
        generator = torch.Generator().manual_seed(5)
        waveform = torch.randn(4, 3, 11, dtype=torch.float64, generator=generator, requires_grad=True)
        kernel = torch.randn(4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
        first_bin = torch.tensor([-5, 0, 3, -2])            # windows reaching before and past the table
        ticks = 7
        expected = torch.zeros(4, 3, ticks, dtype=torch.float64)
        for c in range(4):
            for n in range(ticks):
                for j in range(4):
                    k = int(first_bin[c]) + n * bins_per_tick + j
                    if 0 <= k < 11:
                        expected[c, :, n] += kernel[c, j].detach() * waveform[c, :, k].detach()
        def smear(w, k):                                    # the waveform's zero bin after the table
            return time_smear(torch.nn.functional.pad(w, (0, 1)), k, first_bin, ticks, bins_per_tick)

        assert torch.allclose(smear(waveform, kernel).detach(), expected, rtol=0, atol=1e-13)
        assert torch.autograd.gradcheck(smear, (waveform, kernel))

    def test_column_waveforms(self):
        generator = torch.Generator().manual_seed(6)
        values = torch.randn(3, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
        weight_x = torch.randn(6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
        row_weights = torch.randn(6, 2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
        expected = torch.einsum("ci,crj,ijk->crk", weight_x, row_weights, values)
        assert torch.allclose(column_waveforms(values, weight_x, row_weights), expected, rtol=0, atol=1e-13)
        assert torch.autograd.gradcheck(column_waveforms, (values, weight_x, row_weights))

    def test_chunks_and_checkpoints_do_not_change_hits_or_gradients(self, neighbour_table):
        """1 MB: tens of checkpointed chunks (backward recomputes them); 2 GB without checkpoints: one chunk
        whose graph is kept.  Three clock phases share the transverse work.  Equal to rounding."""
        cx, cy = pad_centre(40, 100)
        start = np.array([cx - 0.05, cy + 0.1, Z_ANODE + 2.0])
        rows = make_rows([start], [start + np.array([0.6, -0.45, 0.8])], dEdx=3.0)
        segs = st.Segments.from_numpy(rows, dtype=torch.float64, swap=False)
        names = ("vdrift", "tran_diff", "long_diff", "lifetime")
        results = []
        for budget, checkpoint in (("1MB", None), ("2GB", False)):
            params = st.Params.nominal(dtype=torch.float64).requires_grad_(names)
            hits = st.simulate(segs, DET, params, memory_budget=budget, checkpoint=checkpoint, response=neighbour_table,
                               return_waveforms=True)
            (hits.adc.sum() + hits.t.sum() + 1e-4 * hits.waveforms.charge.sum()).backward()
            results.append((hits, [float(getattr(params, name).grad) for name in names]))
        (small, small_grad), (large, large_grad) = results
        assert len(small) >= 5 and torch.equal(small.pixel_table, large.pixel_table)
        for field in ("adc", "t", "weight"):
            assert torch.allclose(getattr(small, field), getattr(large, field), rtol=1e-10, atol=1e-10), field
        assert torch.allclose(small.waveforms.charge, large.waveforms.charge, rtol=1e-10, atol=1e-10)
        for name, a, b in zip(names, small_grad, large_grad):
            assert b != 0.0 and a == pytest.approx(b, rel=1e-10), name


# ---------------------------------------------------------------------------------------------- command line
class TestCommandLine:
    def _run(self, *args, cwd):
        return subprocess.run([sys.executable, "-m", "sparsetpc", *args], capture_output=True, text=True, cwd=cwd,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})

    def test_writer_and_one_line_errors(self, tmp_path):
        done = self._run("response-table", "-o", "t.npz", "--model", "analytic", "--sampling", "0.05", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        table = load_response_table(tmp_path / "t.npz")
        assert table.shape[:2] == (5, 5) and table.sampling == 0.05
        # the table keeps to the umask like every other output (not mkstemp's 0600)
        mask = os.umask(0o022)
        os.umask(mask)
        assert (tmp_path / "t.npz").stat().st_mode & 0o777 == 0o666 & ~mask
        assert "an analytic response table" in done.stdout
        assert float(table.collected_fraction()[0, 0]) == pytest.approx(1.0, abs=1e-6)
        np.save(tmp_path / "flat.npy", np.zeros((3, 3)))
        example = self._run("example", "-o", "ex.h5", "--events", "1", cwd=tmp_path)
        assert example.returncode == 0, example.stderr
        for response, message in (("absent.npy", "not found"), ("flat.npy", "3 axes")):
            failed = self._run("simulate", "ex.h5", "-o", "out.h5", "--response", response, cwd=tmp_path)
            assert failed.returncode == 2
            lines = failed.stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0] and lines[0].startswith("sparsetpc: error:")
            assert not (tmp_path / "out.h5").exists()
        failed = self._run("simulate", "ex.h5", "-o", "out.h5", "--response-sampling", "0.05", cwd=tmp_path)
        assert failed.returncode == 2 and "needs --response" in failed.stderr
