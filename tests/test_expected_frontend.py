"""The relaxed front end is the expectation of the hard one over its noise, and smooth in every parameter.

* expectation: mean ADC, mean crossing time and readout frequency of ``hard_readout`` with noise over many seeds
  against ``expected_readout``, readout by readout, on generated waveforms and on a reference track;
* differentiability: ``gradcheck`` of ``expected_readout`` in float64;
* smoothness of the whole pipeline: for L = Σ w·adc²/1e4 + Σ w·t·adc/1e5 (w the readout probability) central
  differences at relative steps 1e-4, 1e-5, 1e-6 agree with autograd within 2 % for the eight physics
  parameters on the segments of the differentiable reference's ``mixed_trk4`` and ``mixed_trk1`` tracks.
  (At 1e-3 the two-point difference itself is off by the loss's curvature on the tick scale for vdrift and
  eField: it converges as h², see docs/calibration.md.)
"""
import dataclasses

import numpy as np
import pytest
import torch

import sparsetpc as st
from sparsetpc.electronics import FrontEnd, expected_readout, hard_readout
from helpers import SHARED, needs_shared

FE = FrontEnd()


def pulses(rates, width=400, start=5, length=300):
    q = torch.zeros(len(rates), width, dtype=torch.float64)
    for row, rate in enumerate(rates):
        q[row, start:start + length] = rate
    return q


def hard_means(q, n_seeds, front_end=FE):
    """Per (pixel, slot): frequency, mean ADC, mean crossing, and the standard errors of the means."""
    generator = torch.Generator()
    generator.manual_seed(12345)
    adc, crossing, valid = hard_readout(q.repeat(n_seeds, 1), front_end, True, generator)
    shape = (n_seeds, q.shape[0], front_end.max_readouts)
    adc, crossing, valid = adc.reshape(shape), crossing.reshape(shape), valid.reshape(shape).double()
    count = valid.sum(0)
    safe = torch.clamp(count, min=1)
    mean_adc = (adc * valid).sum(0) / safe
    mean_crossing = (crossing * valid).sum(0) / safe
    sd_adc = torch.sqrt(((adc - mean_adc) ** 2 * valid).sum(0) / safe)
    sd_crossing = torch.sqrt(((crossing - mean_crossing) ** 2 * valid).sum(0) / safe)
    return count / n_seeds, mean_adc, mean_crossing, sd_adc / torch.sqrt(safe), sd_crossing / torch.sqrt(safe)


class TestExpectation:
    def test_long_pulses_many_readouts(self):
        # constant currents from slow (steep track) to fast: 3 to 10 readouts per pixel
        q = pulses([300.0, 1000.0, 3000.0])
        adc, crossing, valid, weight = expected_readout(q, FE)
        frequency, mean_adc, mean_crossing, err_adc, err_crossing = hard_means(q, 3000)
        assert torch.allclose(weight, frequency, atol=0.02)
        both = valid & (frequency > 0.5)
        assert int(both.sum()) >= 20
        # readouts whose integration window ends inside the pulse; the one that straddles the pulse's end is
        # sensitive to the spread of its start position, which the relaxed walk carries as a mean only
        inside = both & (mean_crossing + FE.integration_ticks + 5 < 5 + 300)
        d_adc = (adc - mean_adc)
        d_time = 0.1 * (crossing - mean_crossing)                     # µs
        # 0.1 ADC and 0.02 µs per readout, beyond 3 standard errors of the hard-mode means
        assert bool((d_adc[inside].abs() <= 0.1 + 3 * err_adc[inside]).all()), d_adc[inside]
        assert bool((d_time[inside].abs() <= 0.02 + 0.3 * err_crossing[inside]).all()), d_time[inside]
        assert bool((d_adc[both & ~inside].abs() < 1.0).all()), d_adc[both & ~inside]

    def test_near_threshold_probability(self):
        # a total charge near threshold: the readout exists with a probability, which hard mode's frequency matches
        q = torch.zeros(4, 120, dtype=torch.float64)
        for row, total in enumerate([5500.0, 6500.0, 7200.0, 8000.0]):
            q[row, 10:20] = total / 10
        _, _, _, weight = expected_readout(q, FE)
        frequency = hard_means(q, 4000)[0]
        assert 0.02 < float(weight[0, 0]) < float(weight[1, 0]) < float(weight[2, 0]) < float(weight[3, 0]) < 0.999
        assert torch.allclose(weight[:, 0], frequency[:, 0], atol=0.025)

    @needs_shared
    def test_reference_track(self):
        from validation.run_reference import segment_rows
        segments = st.Segments.from_numpy(segment_rows(SHARED / "reference" / "mixed_trk4_fwd.npz"), swap=False)
        hits = st.simulate(segments, st.Detector.default(), st.Params.nominal(), mode="hard", return_waveforms=True)
        q = hits.waveforms.charge
        adc, crossing, valid, weight = expected_readout(q, FE)
        frequency, mean_adc, mean_crossing, err_adc, err_crossing = hard_means(q, 500)
        both = valid & (frequency > 0.5)
        assert int(both.sum()) >= 30
        assert bool(((adc - mean_adc)[both].abs() <= 0.1 + 3 * err_adc[both]).all())
        assert bool((0.1 * (crossing - mean_crossing)[both].abs() <= 0.02 + 0.3 * err_crossing[both]).all())
        assert abs(float(weight.sum()) - float(frequency.sum())) < 0.5


class TestExpectedReadout:
    def test_smoke_and_shape(self):
        adc, crossing, valid, weight = expected_readout(pulses([2000.0], width=60, length=10), FE)
        assert adc.shape == crossing.shape == valid.shape == weight.shape == (1, FE.max_readouts)
        assert bool(valid[0, 0]) and float(weight[0, 0]) == pytest.approx(1.0, abs=1e-6)
        # 20000 e⁻ + the double-counted crossing tick (2000 e⁻) over the linear ADC (no +0.5, no rounding)
        expected = float(st.electronics.digitize(torch.tensor(22000.0, dtype=torch.float64), FE, mode="relaxed"))
        assert float(adc[0, 0]) == pytest.approx(expected, abs=0.05)

    def test_no_charge_no_readout(self):
        adc, crossing, valid, weight = expected_readout(torch.zeros(3, 50, dtype=torch.float64), FE)
        assert not bool(valid.any()) and float(weight.max()) < 1e-9

    def test_gradcheck(self):
        q = pulses([700.0, 1500.0], width=40, start=3, length=25)
        q = q + torch.rand(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 100
        small = dataclasses.replace(FE, quadrature_nodes=4, max_readouts=3)

        def outputs(charge):
            adc, crossing, _, weight = expected_readout(charge, small)
            return adc, crossing, weight
        q.requires_grad_(True)
        assert torch.autograd.gradcheck(outputs, (q,), eps=1e-3, atol=1e-6, rtol=1e-4)

    def test_horizon_weighs_out_late_ticks_continuously(self):
        # residual charge just below threshold: noise triggers with a probability growing with the ticks allowed
        q = torch.zeros(1, 200, dtype=torch.float64)
        q[0, 5:10] = 1300.0
        w = [float(expected_readout(q, FE, torch.tensor([h], dtype=torch.float64))[3][0, 0]) for h in (50.0, 50.5, 51.0)]
        assert w[0] < w[1] < w[2] and w[1] == pytest.approx(0.5 * (w[0] + w[2]), rel=0.05)

    @pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    def test_device(self, device):
        out = expected_readout(pulses([2000.0], width=60, length=10).to(device), FE)
        assert out[0].device.type == device


def _loss(segments, params):
    hits = st.simulate(segments, st.Detector.default(), params)
    return (hits.weight * hits.adc ** 2).sum() / 1e4 + (hits.weight * hits.t * hits.adc).sum() / 1e5


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("case", ["mixed_trk4", "mixed_trk1"])
def test_pipeline_gradients_match_finite_differences_at_every_step(case):
    from validation.run_reference import segment_rows
    torch.set_num_threads(1)
    segments = st.Segments.from_numpy(segment_rows(SHARED / "reference" / f"{case}_fwd.npz"), swap=False)
    failures = []
    for name in ("Ab", "kb", "eField", "vdrift", "lifetime", "long_diff", "tran_diff", "MeVToElectrons"):
        base = st.Params.nominal(link_vdrift_efield=(name == "eField"))
        params = base.replace().requires_grad_([name])
        _loss(segments, params).backward()
        gradient = float(getattr(params, name).grad)
        value = float(getattr(base, name))
        with torch.no_grad():
            for relative in (1e-3, 1e-4, 1e-5, 1e-6):
                h = value * relative
                difference = (float(_loss(segments, base.replace(**{name: value + h})))
                              - float(_loss(segments, base.replace(**{name: value - h})))) / (2 * h)
                if abs(difference / gradient - 1) > 0.02:
                    failures.append((name, relative, difference, gradient))
    assert not failures, failures


def test_cli_writes_the_readout_probabilities_of_every_event(tmp_path):
    """``sparsetpc simulate`` (relaxed) writes ``hit_weight`` aligned with ``hits``, for every event."""
    import h5py
    from sparsetpc.cli import main
    from sparsetpc.example import write_example
    write_example(tmp_path / "ex.h5", n_events=2, tracks_per_event=2, seed=5)
    assert main(["simulate", str(tmp_path / "ex.h5"), "-o", str(tmp_path / "hits.h5"), "--no-cuts", "--quiet"]) == 0
    segments = st.load_segments(tmp_path / "ex.h5", cuts=st.Cuts.none())
    expected = st.Hits.concat([st.simulate(segments.select((segments.event_id == e).numpy()))
                               for e in segments.events()])
    with h5py.File(tmp_path / "hits.h5", "r") as f:
        hits, weight = f["hits"][()], f["hit_weight"][()]
    assert len(set(hits["event_id"].tolist())) == 2 and len(weight) == len(hits) == len(expected)
    np.testing.assert_allclose(weight, expected.weight.numpy(), rtol=0, atol=1e-12)
    assert ((weight > 0) & (weight <= 1 + 1e-12)).all() and (weight < 0.5).any()
