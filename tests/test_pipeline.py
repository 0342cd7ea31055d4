import warnings

import h5py
import numpy as np
import pytest
import torch

import sparsetpc as st
from sparsetpc.electronics import FrontEnd
from sparsetpc.cli import main
from sparsetpc.example import generate
from helpers import SHARED, devices, make_rows, needs_shared, reference_rows

DET = st.Detector.default()
FIT_PARAMETERS = ("Ab", "kb", "eField", "vdrift", "lifetime", "long_diff", "tran_diff", "MeVToElectrons")


@pytest.fixture(scope="module")
def example_segments():
    return st.Segments.from_numpy(generate(2, 2, seed=5), swap=True)


def loss_of(hits):
    """A smooth scalar of the readouts: ADC above pedestal and crossing times, with fixed weights."""
    weights = torch.linspace(0.5, 1.5, len(hits), dtype=hits.adc.dtype)
    return (weights * (hits.adc - 74.3656)).sum() + 0.1 * (weights * hits.t).sum()


class TestSimulate:
    def test_smoke_and_shapes(self, example_segments):
        hits = st.simulate(example_segments, DET, st.Params.nominal(), return_waveforms=True)
        n = len(hits)
        assert n > 20
        for name in ("event", "pixel", "readout", "plane", "ix", "iy", "x", "y", "t", "adc"):
            assert getattr(hits, name).shape == (n,)
        # relaxed ADC is the mean given that the read passed threshold: above the linear pedestal 73.8656 by the
        # threshold's 7.08 counts; weights are probabilities
        assert bool((hits.adc > 73.8656 + 7.0).all())
        assert bool(((hits.weight > 0) & (hits.weight <= 1 + 1e-12)).all())
        keys = hits.pixel * 10 + hits.readout
        assert bool((keys[1:] > keys[:-1]).all())            # sorted by pixel then readout, unique
        wf = hits.waveforms
        assert wf.charge.shape[0] == hits.pixel_table.shape[0]
        assert set(hits.event.tolist()) <= set(example_segments.event_id.tolist())
        x_expected = DET.tpc_borders[hits.plane.numpy(), 0, 0] + (hits.ix.numpy() + 0.5) * DET.pixel_pitch
        assert np.allclose(hits.x.numpy(), x_expected)

    def test_memory_budget_does_not_change_results(self, example_segments):
        one_phase = FrontEnd(tick=DET.tick, clock_phases=1)
        a = st.simulate(example_segments, DET, st.Params.nominal(), memory_budget="4GB", front_end=one_phase)
        b = st.simulate(example_segments, DET, st.Params.nominal(), memory_budget="2MB", front_end=one_phase)
        assert torch.equal(a.pixel, b.pixel) and torch.equal(a.readout, b.readout)
        assert torch.allclose(a.adc, b.adc, rtol=0, atol=1e-9) and torch.allclose(a.t, b.t, rtol=0, atol=1e-9)
        assert torch.allclose(a.weight, b.weight, rtol=0, atol=1e-12)
        for mode in ("hard", "reference"):
            a = st.simulate(example_segments, DET, st.Params.nominal(), memory_budget="4GB", mode=mode)
            b = st.simulate(example_segments, DET, st.Params.nominal(), memory_budget="2MB", mode=mode)
            assert torch.equal(a.pixel, b.pixel) and torch.equal(a.readout, b.readout)
            assert torch.allclose(a.adc, b.adc, rtol=0, atol=1e-9) and torch.allclose(a.t, b.t, rtol=0, atol=1e-9)

    def test_float32_close_to_float64(self, example_segments):
        a = st.simulate(example_segments, DET, st.Params.nominal(dtype=torch.float64))
        b = st.simulate(example_segments, DET, st.Params.nominal(dtype=torch.float32))
        assert b.adc.dtype == torch.float32
        same = (a.pixel == b.pixel).all() if len(a) == len(b) else False
        assert bool(same)
        assert float((a.adc - b.adc.double()).abs().max()) < 0.02

    def test_hard_mode_integer_adc(self, example_segments):
        hits = st.simulate(example_segments, DET, st.Params.nominal(), mode="hard")
        assert torch.equal(hits.adc, torch.round(hits.adc))
        assert torch.allclose(hits.t / 0.1, torch.round(hits.t / 0.1))

    def test_noise_is_seeded(self, example_segments):
        p = st.Params.nominal()
        a = st.simulate(example_segments, DET, p, noise=True, seed=1, mode="hard")
        b = st.simulate(example_segments, DET, p, noise=True, seed=1, mode="hard")
        c = st.simulate(example_segments, DET, p, noise=True, seed=2, mode="hard")
        with pytest.raises(ValueError, match="expectation over the electronics noise"):
            st.simulate(example_segments, DET, p, noise=True, seed=1)
        assert torch.equal(a.adc, b.adc)
        assert len(a) != len(c) or not torch.equal(a.adc, c.adc)

    def test_outside_segments_warned_and_counted(self):
        rows = make_rows([(1.0, -20.0, -20.0), (1.0, -20.0, 45.0)], [(3.0, -19.0, -21.0), (2.0, -20.0, 46.0)])
        with pytest.warns(UserWarning, match="1 of 2 segment"):
            hits = st.simulate(st.Segments.from_numpy(rows, swap=False), DET, st.Params.nominal())
        assert hits.n_skipped_segments == 1 and len(hits) > 0

    def test_all_outside_is_an_error(self):
        rows = make_rows([(1.0, -20.0, 45.0)], [(2.0, -20.0, 46.0)])
        with pytest.raises(st.InputFormatError, match="none of the 1 segments"):
            st.simulate(st.Segments.from_numpy(rows, swap=False), DET, st.Params.nominal())

    def test_bad_budget_and_mode(self, example_segments):
        with pytest.raises(st.MemoryBudgetError):
            st.simulate(example_segments, DET, st.Params.nominal(), memory_budget="lots")
        with pytest.raises(ValueError, match="unknown mode"):
            st.simulate(example_segments, DET, st.Params.nominal(), mode="soft")

    def test_gradients_finite_for_degenerate_segments(self):
        rows = make_rows([(1.0, -20.0, -20.0), (1.0, -20.0, 45.0), (2.0, -15.0, -18.0), (3.0, -10.0, -16.0)],
                         [(3.0, -19.0, -21.0), (2.0, -20.0, 46.0), (2.0, -15.0, -18.0), (3.0, -10.0, -19.0)],
                         dEdx=20.0)
        rows["dE"][2] = 3.0   # zero-length segment with charge
        params = st.Params.nominal().requires_grad_(FIT_PARAMETERS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hits = st.simulate(st.Segments.from_numpy(rows, swap=False), DET, params)
        grads = torch.autograd.grad(loss_of(hits), [getattr(params, n) for n in FIT_PARAMETERS])
        assert all(bool(torch.isfinite(g)) for g in grads)
        assert any(float(g) != 0 for g in grads)

    @pytest.mark.parametrize("device", devices())
    def test_device(self, device, example_segments):
        hits = st.simulate(example_segments, DET, st.Params.nominal(device=device))
        assert hits.adc.device.type == device


def finite_difference_check(segments, names, rel_step=1e-7, tolerance=0.02):
    """Central differences with a relative step small enough that no readout's integration-end tick
    (⌊crossing⌋ + 18, a hard index in the relaxed front end as in the reference) changes."""
    params = st.Params.nominal().requires_grad_(names)
    one_phase = FrontEnd(tick=DET.tick, clock_phases=1)      # 3x faster; phases: test_expected_frontend
    hits = st.simulate(segments, DET, params, memory_budget="50MB", front_end=one_phase)
    grads = torch.autograd.grad(loss_of(hits), [getattr(params, n) for n in names])
    results = {}
    for name, grad in zip(names, grads):
        nominal = float(getattr(params, name).detach())
        h = rel_step * nominal
        with torch.no_grad():
            up = st.simulate(segments, DET, st.Params.nominal(**{name: nominal + h}), front_end=one_phase)
            down = st.simulate(segments, DET, st.Params.nominal(**{name: nominal - h}), front_end=one_phase)
        assert torch.equal(up.pixel, down.pixel) and len(up) == len(hits)
        numeric = (float(loss_of(up)) - float(loss_of(down))) / (2 * h)
        results[name] = (float(grad), numeric)
        assert float(grad) == pytest.approx(numeric, rel=tolerance), name
    return results


class TestPipelineGradient:
    def test_finite_differences_generated_track(self):
        rows = generate(1, 1, seed=11)
        segs = st.Segments.from_numpy(rows, swap=True)
        finite_difference_check(segs, FIT_PARAMETERS)

    @needs_shared
    def test_finite_differences_mixed_sample_track(self):
        # mixed-sample track 4 (μ⁻, 4 segments), the reference's own case
        rows = reference_rows(SHARED / "reference" / "mixed_trk4_fwd.npz")
        finite_difference_check(st.Segments.from_numpy(rows, swap=False), FIT_PARAMETERS)


class TestCLI:
    def test_example_then_simulate(self, tmp_path, capsys):
        example = tmp_path / "example.h5"
        assert main(["example", "-o", str(example), "--events", "2", "--seed", "3"]) == 0
        out = tmp_path / "out.h5"
        assert main(["simulate", str(example), "-o", str(out), "--no-cuts", "--quiet"]) == 0
        with h5py.File(out) as f:
            hits = f["hits"][()]
            assert set(hits.dtype.names) >= {"event_id", "pixel_plane", "pixel_ix", "pixel_iy", "x", "y", "t", "adc", "readout"}
            assert len(hits) > 0 and len(f["segments"]) > 0
            assert "cm" in f["hits"].attrs["x"] and "us" in f["hits"].attrs["t"]
        assert not list(tmp_path.glob(".*.tmp"))

    def test_missing_input_is_a_clear_error(self, tmp_path, capsys):
        assert main(["simulate", str(tmp_path / "none.h5"), "-o", str(tmp_path / "o.h5")]) == 2
        assert "cannot open" in capsys.readouterr().err


def test_clock_phase_mixture_equals_time_shifted_single_phase_runs():
    """Relaxed mode with K clock phases mixes K runs whose sampling grid is shifted by δ_j = j·tick/K.  A grid
    shifted by +δ sees exactly what the unshifted grid sees of a track created δ earlier, whose readout times
    are then δ late: t_j = t(segments with t − δ_j, one phase) + δ_j.  The mixture (per pixel and readout slot):
    weight Σw_j/K, ADC Σw_j·a_j/Σw_j, time Σw_j·t_j/Σw_j, time variance Σw_j(v_j + t_j²)/Σw_j − t²."""
    import dataclasses

    from sparsetpc.electronics import FrontEnd

    rows = make_rows([(1.0, -20.0, -8.0), (1.6, -19.7, -9.1)], [(1.6, -19.7, -9.1), (2.4, -19.5, -10.5)], dEdx=2.3)
    segments = st.Segments.from_numpy(rows, swap=False)
    segments = dataclasses.replace(segments, t_start=segments.t_start + 1.0, t_end=segments.t_end + 1.0)
    params = st.Params.nominal()
    K = 3
    mixed = st.simulate(segments, DET, params, front_end=FrontEnd(tick=DET.tick, clock_phases=K))
    assert len(mixed) >= 5
    sums = {}
    for j in range(K):
        delta = DET.tick * j / K
        shifted = dataclasses.replace(segments, t_start=segments.t_start - delta, t_end=segments.t_end - delta)
        one = st.simulate(shifted, DET, params, front_end=FrontEnd(tick=DET.tick, clock_phases=1))
        for k in range(len(one)):
            key = (tuple(one.pixel_table[int(one.pixel[k])].tolist()), int(one.readout[k]))
            w, a, t, v = (float(one.weight[k]), float(one.adc[k]), float(one.t[k]) + delta, float(one.t_variance[k]))
            s = sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            for i, x in enumerate((w, w * a, w * t, w * (v + t * t))):
                s[i] += x
    got = {(tuple(mixed.pixel_table[int(p)].tolist()), int(r)): k
           for k, (p, r) in enumerate(zip(mixed.pixel, mixed.readout))}
    assert set(got) <= set(sums)
    for key, s in sums.items():
        if key not in got:                      # absent from the mixture: below min_weight there
            assert s[0] / K < FrontEnd().min_weight + 1e-12
            continue
        k = got[key]
        time = s[2] / s[0]
        assert float(mixed.weight[k]) == pytest.approx(s[0] / K, rel=1e-9, abs=1e-12)
        assert float(mixed.adc[k]) == pytest.approx(s[1] / s[0], rel=1e-9)
        assert float(mixed.t[k]) == pytest.approx(time, rel=0, abs=1e-9)
        assert float(mixed.t_variance[k]) == pytest.approx(s[3] / s[0] - time * time, rel=1e-6, abs=1e-9)
