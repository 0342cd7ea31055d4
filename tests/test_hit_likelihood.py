"""The readout likelihood (calibration/losses/likelihood.py) and the moments it uses (electronics.expected_readout).

Known values from the formula written out here, gradcheck, continuity where a slot fades out of the model, the
relaxed front end's variances against the spread of the hard front end over noise seeds, and the full pipeline's
gradient of the likelihood against central differences."""
import math

import numpy as np
import pytest
import torch

import sparsetpc as st
from calibration.losses import HitsLoss, noise_sigma_adc, readout_nll
from calibration.losses.likelihood import BROAD_SCALE, BROAD_WEIGHT, COUNT_FLOOR, OUTLIER_CHI2, OUTLIER_WEIGHT
from sparsetpc.electronics import FrontEnd, expected_readout, hard_readout

from helpers import SHARED, needs_shared

D = torch.float64


def _pixel(*rows):
    return torch.tensor(rows, dtype=torch.long)


def _log_outlier(sigma_adc0=None, sigma_time0=0.1):
    s0 = noise_sigma_adc() if sigma_adc0 is None else sigma_adc0
    return -0.5 * OUTLIER_CHI2 - math.log(2 * math.pi * s0 * sigma_time0)


class TestReadoutNLL:
    def test_known_value_one_readout(self):
        """One pixel, one target readout, one model slot (w, μ, σ²): −log[(w − 0)+ε] − log[(w g + ηB)/(w + η)], g
        the narrow + broad Gaussian mixture."""
        w, mu_a, mu_t, va, vt = 0.9, 100.0, 50.0, 1.2, 0.01
        x_a, x_t = 101.0, 50.05
        floor = 0.1 ** 2 / 12
        nll, summary = readout_nll(_pixel([0, 0, 3, 4]), torch.tensor([0]), torch.tensor([w], dtype=D),
                                   torch.tensor([mu_a], dtype=D), torch.tensor([mu_t], dtype=D),
                                   torch.tensor([va], dtype=D), torch.tensor([vt], dtype=D),
                                   _pixel([0, 0, 3, 4]), torch.tensor([0]), torch.tensor([x_a], dtype=D),
                                   torch.tensor([x_t], dtype=D))
        vt_total = vt + floor
        chi2 = (x_a - mu_a) ** 2 / va + (x_t - mu_t) ** 2 / vt_total
        gauss = ((1 - BROAD_WEIGHT) * math.exp(-0.5 * chi2) / (2 * math.pi * math.sqrt(va * vt_total))
                 + BROAD_WEIGHT * math.exp(-0.5 * chi2 / BROAD_SCALE ** 2)
                 / (2 * math.pi * BROAD_SCALE ** 2 * math.sqrt(va * vt_total)))
        w_value = w - 1e-9                   # the value term's weight: zero where the slot drops out (min_weight)
        eta = OUTLIER_WEIGHT
        expected = -math.log(w - 0.0 + COUNT_FLOOR) - math.log((w_value * gauss + eta * math.exp(_log_outlier()))
                                                              / (w_value + eta))
        assert float(nll) == pytest.approx(expected, rel=1e-12)
        assert summary["pixels"] == 1 and summary["target_readouts"] == 1

    def test_known_value_of_a_chained_readout(self):
        """Slot 1 given the target's slot 0: its density is the Gaussian regression on the previous crossing
        (mean μ₁ + c·d/V, covariance Σ₁ − c cᵀ/V, d the previous readout's deviation, V its time variance + the
        floor), written out here; and the chain's value differs from the product of the marginals."""
        floor = 0.1 ** 2 / 12
        w = torch.tensor([0.99, 0.9], dtype=D)
        mu_a, mu_t = torch.tensor([100.0, 95.0], dtype=D), torch.tensor([20.0, 24.0], dtype=D)
        var_a, var_t = torch.tensor([1.2, 1.4], dtype=D), torch.tensor([0.3, 0.5], dtype=D)
        cov = torch.tensor([-0.2, -0.1], dtype=D)
        c_a, c_t = torch.tensor([0.0, 0.15], dtype=D), torch.tensor([0.0, 0.28], dtype=D)
        x_a, x_t = torch.tensor([101.0, 94.0], dtype=D), torch.tensor([20.6, 24.9], dtype=D)
        pixel = _pixel([0, 0, 3, 4], [0, 0, 3, 4])
        slots = torch.tensor([0, 1])

        def nll(*chain):
            return float(readout_nll(pixel, slots, w, mu_a, mu_t, var_a, var_t, pixel, slots, x_a, x_t, cov, *chain,
                                     broad_weight=0.0)[0])

        def log_gauss(da, dt, va, vt, cv):
            det = va * vt - cv * cv
            return -0.5 * (vt * da * da - 2 * cv * da * dt + va * dt * dt) / det - 0.5 * math.log(det) \
                - math.log(2 * math.pi)

        def value_term(log_g, weight):
            w_value = weight - 1e-9
            return -math.log((w_value * math.exp(log_g) + OUTLIER_WEIGHT * math.exp(_log_outlier()))
                             / (w_value + OUTLIER_WEIGHT))

        count = -math.log(0.9 - 0.0 + COUNT_FLOOR)
        first = value_term(log_gauss(1.0, 0.6, 1.2, 0.3 + floor, -0.2), 0.99)
        previous = 0.3 + floor
        d = 0.6
        da, dt = -1.0 - 0.15 * d / previous, 0.9 - 0.28 * d / previous
        second = value_term(log_gauss(da, dt, 1.4 - 0.15 ** 2 / previous, 0.5 + floor - 0.28 ** 2 / previous,
                                      -0.1 - 0.15 * 0.28 / previous), 0.9)
        assert nll(c_a, c_t) == pytest.approx(count + first + second, rel=1e-12)
        marginal = value_term(log_gauss(-1.0, 0.9, 1.4, 0.5 + floor, -0.1), 0.9)
        assert nll() == pytest.approx(count + first + marginal, rel=1e-12)
        assert abs(second - marginal) > 0.05

    def test_gradcheck_of_the_chain(self):
        pixel = _pixel([0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 5])
        slots = torch.tensor([0, 1, 2, 0])
        adc_target = torch.tensor([100.0, 90.0, 85.0, 120.0], dtype=D)
        t_target = torch.tensor([20.0, 22.1, 24.3, 40.0], dtype=D)

        def fn(w, adc, t, va, vt, cv, ca, ct, es):
            return readout_nll(pixel, slots, w, adc, t, va, vt, pixel, slots, adc_target, t_target, cv, ca, ct,
                               es, chain_count=True)[0]
        inputs = (torch.tensor([0.95, 0.8, 0.6, 0.8], dtype=D), torch.tensor([99.0, 91.0, 84.0, 100.0], dtype=D),
                  torch.tensor([20.05, 22.0, 24.5, 41.0], dtype=D), torch.tensor([1.1, 1.5, 0.9, 1.0], dtype=D),
                  torch.tensor([0.02, 0.05, 0.07, 0.02], dtype=D), torch.tensor([-0.05, -0.02, 0.01, 0.0], dtype=D),
                  torch.tensor([0.0, 0.05, -0.03, 0.0], dtype=D), torch.tensor([0.0, 0.012, 0.03, 0.0], dtype=D),
                  torch.tensor([0.0, -0.02, -0.3, 0.0], dtype=D))
        inputs = tuple(x.requires_grad_(True) for x in inputs)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)

    def test_chain_count(self):
        """The count along the chain: with zero existence slopes it is the marginal −log(w_{n−1} − w_n + ε); with
        a slope, P(N = n) = w_0 · Π Φ(z_s + k_s d) · (1 − Φ(z_n + k_n d)) written out here."""
        from calibration.losses.likelihood import existence_probit
        pixel = _pixel([0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1])
        slots = torch.tensor([0, 1, 2])
        w = torch.tensor([0.999, 0.9, 0.3], dtype=D)
        mu_t = torch.tensor([10.0, 12.0, 14.0], dtype=D)
        common = (pixel, slots, w, torch.tensor([100.0, 90.0, 80.0], dtype=D), mu_t, torch.ones(3, dtype=D),
                  torch.full((3,), 0.05, dtype=D), pixel[:2], slots[:2], torch.tensor([101.0, 89.0], dtype=D),
                  torch.tensor([10.1, 12.3], dtype=D), torch.zeros(3, dtype=D), torch.zeros(3, dtype=D),
                  torch.tensor([0.0, 0.03, 0.04], dtype=D))
        count = lambda slope: float(readout_nll(*common, slope, terms="count", chain_count=True)[0])
        assert float(readout_nll(*common, torch.tensor([0.0, -0.05, -0.8], dtype=D), terms="count")[0]) == \
            pytest.approx(-math.log(0.9 - 0.3 + COUNT_FLOOR), rel=1e-9)          # off by default: the marginal
        assert count(torch.zeros(3, dtype=D)) == pytest.approx(-math.log(0.9 - 0.3 + COUNT_FLOOR), rel=1e-9)
        slope = torch.tensor([0.0, -0.05, -0.8], dtype=D)
        z, k = existence_probit(w, torch.tensor([1.0, 0.999, 0.9], dtype=D), slope)
        normal = torch.distributions.Normal(0.0, 1.0)
        expected = (0.999 * float(normal.cdf(z[1] + k[1] * 0.1)) * (1 - float(normal.cdf(z[2] + k[2] * 0.3))))
        assert count(slope) == pytest.approx(-math.log(expected + COUNT_FLOOR), rel=1e-9)
        assert count(slope) < count(torch.zeros(3, dtype=D))      # a late slot 1 makes the end more probable

    def test_count_terms(self):
        """A pixel the model may fire and the target does not: −log(1 − w0); a pixel with two target readouts
        and model slots (w0, w1): −log(w1 − 0) for the count."""
        weights = torch.tensor([0.3], dtype=D)
        nll, _ = readout_nll(_pixel([0, 0, 1, 1]), torch.tensor([0]), weights, torch.tensor([90.0], dtype=D),
                             torch.tensor([10.0], dtype=D), torch.ones(1, dtype=D), torch.ones(1, dtype=D) * 0.01,
                             torch.zeros((0, 4), dtype=torch.long), torch.zeros(0, dtype=torch.long),
                             torch.zeros(0, dtype=D), torch.zeros(0, dtype=D))
        assert float(nll) == pytest.approx(-math.log(0.7 + COUNT_FLOOR), rel=1e-12)
        # target has readouts where the model has none: count at the floor, values at the outlier density
        nll, summary = readout_nll(torch.zeros((0, 4), dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                   torch.zeros(0, dtype=D), torch.zeros(0, dtype=D), torch.zeros(0, dtype=D),
                                   torch.zeros(0, dtype=D), torch.zeros(0, dtype=D), _pixel([0, 0, 1, 1], [0, 0, 1, 1]),
                                   torch.tensor([0, 1]), torch.tensor([90.0, 80.0], dtype=D),
                                   torch.tensor([10.0, 12.0], dtype=D))
        assert float(nll) == pytest.approx(-math.log(COUNT_FLOOR) - 2 * _log_outlier(), rel=1e-12)
        assert summary["target_slots_absent_in_model"] == 2

    def test_gradcheck(self):
        torch.manual_seed(0)
        pixel_guess = _pixel([0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 5], [1, 1, 0, 0])
        slot_guess = torch.tensor([0, 1, 0, 0])
        pixel_target = _pixel([0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 5], [0, 0, 7, 7])
        slot_target = torch.tensor([0, 1, 0, 0])
        adc_target = torch.tensor([100.0, 90.0, 85.0, 120.0], dtype=D)
        t_target = torch.tensor([20.0, 22.1, 30.0, 40.0], dtype=D)

        def fn(w, adc, t, va, vt):
            return readout_nll(pixel_guess, slot_guess, w, adc, t, va, vt, pixel_target, slot_target, adc_target,
                               t_target)[0]
        inputs = (torch.tensor([0.95, 0.6, 0.4, 0.8], dtype=D), torch.tensor([99.0, 91.0, 84.0, 100.0], dtype=D),
                  torch.tensor([20.05, 22.0, 30.1, 41.0], dtype=D), torch.tensor([1.1, 1.5, 0.9, 1.0], dtype=D),
                  torch.tensor([0.02, 0.03, 0.01, 0.02], dtype=D))
        inputs = tuple(x.requires_grad_(True) for x in inputs)
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)

    def test_a_fading_slot_joins_the_outlier_term_continuously(self):
        """A model slot whose weight falls below min_weight is dropped from the hits: the loss must not jump."""
        def nll(slots):
            pixel = _pixel(*([[0, 0, 1, 1]] * len(slots)))
            w = torch.tensor([s[0] for s in slots], dtype=D)
            value, _ = readout_nll(pixel, torch.arange(len(slots)), w, torch.tensor([s[1] for s in slots], dtype=D),
                                   torch.tensor([s[2] for s in slots], dtype=D), torch.ones(len(slots), dtype=D),
                                   torch.full((len(slots),), 0.01, dtype=D), _pixel([0, 0, 1, 1], [0, 0, 1, 1]),
                                   torch.tensor([0, 1]), torch.tensor([100.0, 95.0], dtype=D),
                                   torch.tensor([20.0, 24.0], dtype=D))
            return float(value)
        absent = nll([(1.0, 100.0, 20.0)])
        # approaching min_weight (1e-9) from above, the value term joins the outlier term (where w − min_weight falls
        # below ηB/g ≈ 1e-17, η = 1e-6); what remains is the count term's −log(ε + 1e-9) vs −log ε = 1e-3 (ε = 1e-6)
        gaps = [abs(nll([(1.0, 100.0, 20.0), (1e-9 * (1 + delta), 95.0, 24.0)]) - absent)
                for delta in (1e-7, 1e-10, 1e-13)]
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1.01e-3, gaps
        far = nll([(1.0, 100.0, 20.0), (1e-3, 95.0, 24.0)])                   # the slot has not faded yet
        assert far < absent - 5

    def test_hits_loss_requires_the_relaxed_moments(self):
        class Bare:
            event = torch.zeros(1, dtype=torch.long)
            weight = None
        with pytest.raises(ValueError, match="relaxed"):
            HitsLoss("likelihood")(Bare(), Bare())


class TestExpectedMoments:
    def test_variances_match_the_spread_of_hard_mode(self):
        """On pulses of several shapes and sizes, the relaxed front end's ADC and crossing variances equal the
        spread of the hard front end's over 600 noise seeds (statistical error of a variance: √(2/600) ≈ 6 %).
        The slow pulse shows the baseline–crossing anticorrelation: its ADC variance (≈0.5 ADC²) is less than half the
        independent-noise sum (reset 900 e⁻ and read 500 e⁻: ≈1.1 ADC²), in both front ends."""
        ticks = torch.arange(140, dtype=D)
        shapes = []
        for amplitude, width, start in ((1.3e4, 3.0, 10), (2e4, 6.0, 30), (4e4, 1.5, 12), (1.5e4, 25.0, 20)):
            pulse = amplitude * torch.exp(-0.5 * ((ticks - start - 3 * width) / width) ** 2)
            shapes.append(pulse / pulse.sum() * amplitude)
        charge = torch.stack(shapes)
        charge[:, 0] = 0.0
        fe = FrontEnd()
        adc, crossing, valid, weight, var_adc, var_crossing, covariance = expected_readout(charge, fe, moments=True)
        generator = torch.Generator().manual_seed(11)
        draws_a, draws_c, seen = [], [], []
        for _ in range(600):
            a, c, v = hard_readout(charge, fe, noise=True, generator=generator)
            draws_a.append(a[:, 0]); draws_c.append(c[:, 0]); seen.append(v[:, 0])
        a, c, v = torch.stack(draws_a), torch.stack(draws_c), torch.stack(seen)
        assert bool(v.all())                               # every pulse is far above threshold: slot 0 always
        ratio_a = var_adc[:, 0] / a.var(dim=0)
        assert torch.all((ratio_a > 0.8) & (ratio_a < 1.25)), ratio_a
        # crossing variances span 0.003 tick² (a sharp pulse: one tick in ~400 draws differs) to 17 tick²: relative
        # 20 % or, for the nearly certain crossing, 0.01 tick² (its rare events are too few in 600 draws)
        empirical = c.var(dim=0)
        assert torch.all((var_crossing[:, 0] - empirical).abs() < 0.2 * empirical + 0.01), (var_crossing[:, 0], empirical)
        assert float(var_crossing[:, 0].max()) > 10 and float(var_crossing[:, 0].min()) < 0.01      # the span above
        # ADC–crossing covariance, compared as correlations within 0.15 (statistical error from 600 draws ≈ 0.04)
        empirical_cov = ((a - a.mean(0)) * (c - c.mean(0))).mean(0)
        model_corr = covariance[:, 0] / torch.sqrt(var_adc[:, 0] * var_crossing[:, 0])
        empirical_corr = empirical_cov / torch.sqrt(a.var(0) * c.var(0))
        assert torch.all((model_corr - empirical_corr).abs() < 0.15), (model_corr, empirical_corr)
        print("ADC-crossing correlation, model", model_corr.tolist(), "hard", empirical_corr.tolist())

    def test_later_readouts_of_a_long_pulse_carry_the_jitter_of_the_earlier_ones(self):
        """A long steady pulse (a steep track's pixel) fires many readouts; each slot starts where the previous one
        ended, so the crossing jitter accumulates as a random walk: in hard mode the crossing variance of slot s
        grows ~ (s + 1)-fold.  The relaxed model carries the start's variance forward (before it did not: hard
        mode's variance was 2.8–10× the model's by slot 1–9 on steep tracks).  Asserted over 800 noise seeds (a
        variance's statistical error: 5 %), slots 1–5: the crossing and ADC variances within 20 % of hard mode's
        (measured 0.88–1.14), and the crossing variance growing with the slot."""
        ticks = torch.arange(260, dtype=D)
        rate = torch.tensor([1500.0, 2500.0], dtype=D)[:, None]           # e⁻ per tick, for ~200 ticks
        charge = rate * ((ticks > 10) & (ticks < 215)).to(D) * (1.0 + 0.3 * torch.sin(ticks / 17.0))
        charge[:, 0] = 0.0
        fe = FrontEnd()
        (_, _, valid, _, var_adc, var_crossing, _, adc_previous,
         crossing_previous, _) = expected_readout(charge, fe, moments=True, previous_covariances=True)
        generator = torch.Generator().manual_seed(5)
        draws = [hard_readout(charge, fe, noise=True, generator=generator) for _ in range(800)]
        a = torch.stack([d[0] for d in draws]).to(D)
        c = torch.stack([d[1] for d in draws]).to(D)
        v = torch.stack([d[2] for d in draws])
        slots = range(1, 6)
        assert bool(valid[:, 5].all()) and bool(v[:, :, 5].all())          # both pulses fire ≥ 6 readouts
        for s in slots:
            ratio_c = var_crossing[:, s] / c[:, :, s].var(dim=0)
            ratio_a = var_adc[:, s] / a[:, :, s].var(dim=0)
            assert torch.all((ratio_c > 0.8) & (ratio_c < 1.2)), (s, ratio_c)
            assert torch.all((ratio_a > 0.8) & (ratio_a < 1.2)), (s, ratio_a)
        assert torch.all(var_crossing[:, 5] > 2.5 * var_crossing[:, 0]), var_crossing[:, :6]
        # the chain: each slot's covariances with the previous crossing (correlations within 0.1 of hard mode's;
        # statistical error ≈ 0.03) and its variance given the previous crossing (what the chain likelihood
        # scores: the residual of the model's regression, within 20 % of hard mode's)
        for s in slots:
            previous = c[:, :, s - 1] - c[:, :, s - 1].mean(0)
            for draws_s, model_cov, model_var in ((c[:, :, s], crossing_previous[:, s], var_crossing[:, s]),
                                                  (a[:, :, s], adc_previous[:, s], var_adc[:, s])):
                empirical = ((draws_s - draws_s.mean(0)) * previous).mean(0)
                hard_corr = empirical / torch.sqrt(draws_s.var(0) * previous.var(0))
                model_corr = model_cov / torch.sqrt(model_var * var_crossing[:, s - 1])
                assert torch.all((hard_corr - model_corr).abs() < 0.1), (s, hard_corr, model_corr)
            beta = crossing_previous[:, s] / var_crossing[:, s - 1]
            conditional = var_crossing[:, s] - crossing_previous[:, s] * beta
            ratio = conditional / (c[:, :, s] - beta * c[:, :, s - 1]).var(0)
            assert torch.all((ratio > 0.8) & (ratio < 1.25)), (s, ratio)
            # most of a later slot's time variance is its start's: conditioning removes it
            assert torch.all(conditional < 0.6 * var_crossing[:, s]), (s, conditional, var_crossing[:, s])
            print("slot", s, "conditional / marginal time variance", (conditional / var_crossing[:, s]).tolist())

    def test_existence_of_the_last_readout_given_the_previous_crossing(self):
        """Where a long pulse ends, whether one more readout fires depends on where the previous one crossed (a
        late start leaves too little charge).  The chain's Φ(z + k·d) (existence_probit: the front end's
        existence slope) against hard mode over 800 noise seeds, in quartiles of the previous crossing's
        deviation d: within 0.25 in every quartile, where the marginal w_s/w_{s−1} (the same in every quartile)
        misses by up to 0.7 (measured: worst quartile 0.20 for the chain, the probit-linear form's error at
        d ≈ −2.5 columns; 0.70 for the marginal)."""
        from calibration.losses.likelihood import existence_probit
        ticks = torch.arange(260, dtype=D)
        ends = torch.tensor([166.0, 192.0, 193.0, 194.0], dtype=D)[:, None]     # the last readout is uncertain
        charge = 1500.0 * ((ticks > 10) & (ticks < ends)).to(D) * (1.0 + 0.3 * torch.sin(ticks / 17.0))
        charge[:, 0] = 0.0
        fe = FrontEnd()
        out = expected_readout(charge, fe, moments=True, previous_covariances=True)
        crossing, weight, existence_slope = out[1], out[3], out[9]
        previous_weight = torch.cat([torch.ones_like(weight[:, :1]), weight[:, :-1]], 1)
        z, k = existence_probit(weight, previous_weight, existence_slope)
        generator = torch.Generator().manual_seed(9)
        draws = [hard_readout(charge, fe, noise=True, generator=generator) for _ in range(800)]
        c = torch.stack([d[1] for d in draws]).to(D)
        v = torch.stack([d[2] for d in draws])
        worst_chain, worst_marginal, checked = 0.0, 0.0, 0
        for p in range(charge.shape[0]):
            for s in range(1, fe.max_readouts):
                marginal = float(weight[p, s] / previous_weight[p, s])
                if not 0.1 < marginal < 0.9:
                    continue
                seen = v[:, p, s - 1]
                deviation = c[seen, p, s - 1] - crossing[p, s - 1]
                exists = v[seen, p, s].to(D)
                chain = torch.special.ndtr(z[p, s] + k[p, s] * deviation)
                for quartile in torch.chunk(torch.argsort(deviation), 4):
                    hard = float(exists[quartile].mean())
                    worst_chain = max(worst_chain, abs(hard - float(chain[quartile].mean())))
                    worst_marginal = max(worst_marginal, abs(hard - marginal))
                checked += 1
        print(f"{checked} uncertain slots: worst quartile |hard - chain| {worst_chain:.3f}, "
              f"|hard - marginal| {worst_marginal:.3f}")
        assert checked >= 3
        assert worst_chain < 0.25 and worst_marginal > 0.4

    def test_gradcheck_of_the_variances(self):
        charge = torch.zeros(2, 40, dtype=D)
        charge[0, 5:12] = torch.tensor([500.0, 1500.0, 3000.0, 2500.0, 1200.0, 500.0, 200.0], dtype=D)
        charge[1, 3:9] = torch.tensor([2000.0, 4000.0, 1500.0, 800.0, 300.0, 100.0], dtype=D)
        charge.requires_grad_(True)
        fe = FrontEnd(quadrature_nodes=4, max_readouts=2)
        assert torch.autograd.gradcheck(lambda q: expected_readout(q, fe, moments=True)[4:], (charge,),
                                        eps=1e-3, atol=1e-6, rtol=1e-4)


def _likelihood_loss(segments, target, params):
    return HitsLoss("likelihood")(st.simulate(segments, st.Detector.default(), params), target)


def _finite_difference_failures(segments, names, steps=(1e-3, 1e-4, 1e-6), tolerance=0.02):
    """Central differences of the likelihood (target: hard mode with noise at another parameter point) at the
    relative ``steps`` against autograd: the (parameter, step, deviation) outside the criterion of the tests below.
    Every step but 1e-3 within ``tolerance``; at 1e-3 either within 2 % or, where the likelihood's own curvature
    shows at a step that large, the deviation shrinks more than 30-fold to 1e-4 (as h², 100-fold, for a smooth
    function; a kink, where a hard index slides, gives 10-fold at most)."""
    with torch.no_grad():
        target = st.simulate(segments, st.Detector.default(),
                             st.Params.nominal().replace(vdrift=0.1587 * 1.01, Ab=0.816, lifetime=1800.0,
                                                         tran_diff=9e-6, long_diff=3.6e-6),
                             mode="hard", noise=True, seed=1)
    failures = []
    for name in names:
        base = st.Params.nominal(link_vdrift_efield=(name == "eField"))
        params = base.replace().requires_grad_([name])
        _likelihood_loss(segments, target, params).backward()
        gradient = float(getattr(params, name).grad)
        value = float(getattr(base, name))
        deviation = {}
        with torch.no_grad():
            for relative in steps:
                h = value * relative
                difference = (float(_likelihood_loss(segments, target, base.replace(**{name: value + h})))
                              - float(_likelihood_loss(segments, target, base.replace(**{name: value - h})))) / (2 * h)
                deviation[relative] = difference / gradient - 1
        for relative in steps[1:]:
            if abs(deviation[relative]) > tolerance:
                failures.append((name, relative, deviation[relative]))
        if abs(deviation[1e-3]) > 0.02:
            scaling = deviation[1e-3] / deviation[1e-4]
            if not scaling > 30:
                failures.append((name, 1e-3, deviation[1e-3], "h² scaling", scaling))
    return failures


@needs_shared
@pytest.mark.slow
def test_likelihood_gradient_matches_finite_differences_at_every_step():
    """The readout likelihood through the whole pipeline (mixed_trk4 segments): central differences at 1e-4 and
    1e-6 agree with autograd within 2 %, and at 1e-3 within 2 % or shrinking as h² (vdrift: 1e-3 moves the times
    by about one σ_t; measured 70–140-fold)."""
    from validation.run_reference import segment_rows
    torch.set_num_threads(1)
    segments = st.Segments.from_numpy(segment_rows(SHARED / "reference" / "mixed_trk4_fwd.npz"), swap=False)
    failures = _finite_difference_failures(segments, ("Ab", "kb", "eField", "vdrift", "lifetime", "long_diff",
                                                      "tran_diff"))
    assert not failures, failures


@pytest.mark.slow
def test_likelihood_gradient_of_a_steep_track_matches_finite_differences_at_every_step(tmp_path):
    """The same on a generated steep muon (cot θ 15–20): its pixels fire chains of readouts, each slot starting
    where the previous one ended, so the slots' start positions slide with every parameter.  Hard mode starts at
    integer ticks and the model mixes the walks from the integer starts around the mean start; with the two-start
    linear mixture the likelihood's slope jumped at every integer: on this track central differences missed
    autograd by 2.3 % at 1e-4 (vdrift; 4 % at 3e-4), on a steep muon of #10 by 0.5 % (Ab).  The cubic B-spline
    mixture is twice differentiable: within 0.5 % at 1e-4 and 1e-5 (measured ≤ 5e-4) and at 1e-3 within 2 % or
    shrinking as h² (vdrift 2.05 % → 0.049 %)."""
    from sparsetpc.example import write_example
    torch.set_num_threads(1)
    write_example(tmp_path / "steep.h5", n_events=1, tracks_per_event=1, seed=4, kind="steep",
                  cot_theta=(15.0, 20.0), drift_extent=(6.0, 8.0))
    segments = st.load_segments(tmp_path / "steep.h5", cuts=st.Cuts.none(), dtype=torch.float64)
    with torch.no_grad():
        hits = st.simulate(segments, st.Detector.default(), st.Params.nominal())
    assert int((hits.readout.detach() > 0).sum()) >= 10, "the track must fire chains of readouts"
    failures = _finite_difference_failures(segments, ("Ab", "vdrift", "lifetime", "long_diff", "tran_diff"),
                                           steps=(1e-3, 1e-4, 1e-5), tolerance=0.005)
    assert not failures, failures


@pytest.mark.slow
def test_pulls_of_a_one_parameter_fit_over_noise_seeds(tmp_path):
    """Ab from the likelihood of 20 hard-mode noisy targets (one small generated event, ~18 readouts): the
    minimum and the curvature of a parabola through the likelihood scan give Ab and σ; pulls (Ab − 0.84)/σ have
    mean within ±0.6 (3× its statistical error 1/√20) and RMS within 0.7–1.5 (measured: −0.03 and 1.09; without
    the ADC–time covariance in the density the RMS was 1.44)."""
    from sparsetpc.example import write_example
    torch.set_num_threads(1)
    write_example(tmp_path / "ex.h5", n_events=2, tracks_per_event=2, seed=3, step=1.0)
    segments = st.load_segments(tmp_path / "ex.h5")
    event = segments.select((segments.event_id == 1).cpu().numpy())
    front_end = FrontEnd(clock_phases=1)
    loss = HitsLoss("likelihood")
    grid = np.linspace(0.80, 0.88, 17)
    with torch.no_grad():
        models = [st.simulate(event, params=st.Params.nominal().replace(Ab=float(a)), front_end=front_end)
                  for a in grid]
        pulls = []
        for seed in range(1, 21):
            target = st.simulate(event, params=st.Params.nominal().replace(Ab=0.84), mode="hard", noise=True,
                                 seed=seed)
            values = np.array([float(loss(model, target)) for model in models])
            i = int(np.argmin(values))
            assert 0 < i < len(grid) - 1, "the minimum must be inside the scan"
            lo, hi = max(0, i - 3), min(len(grid), i + 4)
            c = np.polyfit(grid[lo:hi], values[lo:hi], 2)
            pulls.append((-c[1] / (2 * c[0]) - 0.84) * math.sqrt(2 * c[0]))    # σ² = 1/(2c) for −log L
    pulls = np.array(pulls)
    assert abs(pulls.mean()) < 0.6 and 0.7 < pulls.std() < 1.5, pulls
