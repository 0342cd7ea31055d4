"""Noise of the hard front end: its spread equals the noise model (physics.md §2.7), within statistical error.

What ``hard_readout`` adds with ``noise=True`` (and larnd-sim's kernel too):
* a baseline N(0, 900²) e⁻ on the running sum at the start and after every stored read (reset noise), N(0, 500²)
  after a read that fell below threshold;
* on every tick of the walk, an independent N(0, 500²) on the sum *only for the trigger decision* (the probe);
* on every read, N(0, 500²) added to the integrated charge (uncorrelated noise).

Measurements (each pixel of a batch is an independent sample; several seeds):
* one charge Q arriving in a single tick long after the start: the probe cannot fire before it (7000 e⁻ is 6.7σ
  of the baseline + probe noise) and fires at that tick, so the read is baseline + 2Q (the crossing tick is
  counted twice) + read noise: mean 2Q, variance 900² + 500²;
* the same with one noise source switched off isolates each (500², 900²);
* a second pulse after the first read: its baseline is a fresh reset (900²), uncorrelated with the first read;
* a plateau 500 e⁻ under the threshold, reset noise off: the probe fires on each tick independently with
  p = 1 − Φ(1), so the wait before the crossing is geometric.
ADC counts are integers: rounding adds Δ²/12 (Δ = 1 count) to the variance (Sheppard; exact to e^(−2π²σ²/Δ²)
≈ 1e-9 here since σ ≥ 0.5 count).  Tolerances: 4.5 standard errors of the mean and of the variance.
"""
import math

import numpy as np
import pytest
import torch

from sparsetpc.electronics import FrontEnd, hard_readout

FE = FrontEnd()
PER_ELECTRON = FE.gain * FE.adc_counts / (FE.v_ref - FE.v_cm)    # ADC counts per e⁻
N_PIXELS = 4000
SEEDS = (0, 1, 2)
STEP = 40000.0            # e⁻ in one tick
STEP_TICK = 30


def step_waveforms(n_pixels=N_PIXELS, second_step=False):
    width = 140 if second_step else 60
    q = torch.zeros(n_pixels, width, dtype=torch.float64)
    q[:, STEP_TICK] = STEP
    if second_step:
        q[:, 90] = STEP / 2
    return q


def noisy_reads(q, front_end):
    """ADC [samples, R], crossing [samples, R], valid, over SEEDS (each seed a fresh batch of pixels)."""
    out = []
    for seed in SEEDS:
        generator = torch.Generator().manual_seed(seed)
        out.append(hard_readout(q, front_end, noise=True, generator=generator))
    return tuple(torch.cat(parts).numpy() for parts in zip(*out))


def expected_counts(charge):
    return (charge * FE.gain + FE.v_pedestal - FE.v_cm) * FE.adc_counts / (FE.v_ref - FE.v_cm)


def assert_mean_and_variance(values, mean, sigma_electrons):
    """Sample mean and variance of ADC ``values`` against a Gaussian of ``sigma_electrons`` rounded to counts."""
    n = len(values)
    variance = (sigma_electrons * PER_ELECTRON) ** 2 + 1.0 / 12.0
    sample_mean = values.mean()
    sample_variance = values.var(ddof=1)
    assert abs(sample_mean - mean) < 4.5 * math.sqrt(variance / n), (sample_mean, mean)
    assert abs(sample_variance - variance) < 4.5 * variance * math.sqrt(2.0 / (n - 1)), (sample_variance, variance)


@pytest.mark.parametrize("reset, uncorrelated", [(900.0, 500.0), (0.0, 500.0), (900.0, 0.0)])
def test_single_read_spread(reset, uncorrelated):
    front_end = FrontEnd(reset_noise=reset, uncorrelated_noise=uncorrelated)
    adc, crossing, valid = noisy_reads(step_waveforms(), front_end)
    # one read per pixel, at the step's tick: the probe never fired on the baseline alone
    assert valid[:, 0].all() and not valid[:, 1:].any()
    assert (crossing[:, 0] == STEP_TICK).all()
    assert_mean_and_variance(adc[:, 0], expected_counts(2 * STEP), math.hypot(reset, uncorrelated))


def test_reset_after_a_read_is_fresh_and_uncorrelated():
    adc, crossing, valid = noisy_reads(step_waveforms(second_step=True), FE)
    assert valid[:, :2].all() and not valid[:, 2:].any()
    assert (crossing[:, 1] == 90).all()
    assert_mean_and_variance(adc[:, 1], expected_counts(STEP), math.hypot(900.0, 500.0))
    # a baseline carried over from the first read (no reset), or shared draws, would correlate the two reads
    correlation = np.corrcoef(adc[:, 0], adc[:, 1])[0, 1]
    assert abs(correlation) < 4.5 / math.sqrt(len(adc))


def test_trigger_probe_noise_is_drawn_per_tick():
    """Plateau at threshold − 500 e⁻ from tick 5 on, reset noise off, and a large charge at tick 5 + 18 so that
    any crossing from tick 5 on is read above threshold.  The probe fires on each tick independently with
    p = P(N(0, 500²) ≥ 500) = 1 − Φ(1): the wait before the crossing is geometric(p), cut at 18 ticks (the large
    charge fires the probe for sure)."""
    level = FE.threshold - 500.0
    cut = FE.integration_ticks
    q = torch.zeros(N_PIXELS, 60, dtype=torch.float64)
    q[:, 5] = level
    q[:, 5 + cut] = 20000.0
    adc, crossing, valid = noisy_reads(q, FrontEnd(reset_noise=0.0))
    assert valid[:, 0].all()
    wait = crossing[:, 0] - 5
    assert wait.min() >= 0 and wait.max() <= cut
    p = 0.5 * math.erfc(1.0 / math.sqrt(2.0))
    n = len(wait)
    probability = np.array([p * (1 - p) ** k for k in range(cut)] + [(1 - p) ** cut])
    for k in (0, 1, 2, cut):
        observed = (wait == k).mean()
        assert abs(observed - probability[k]) < 4.5 * math.sqrt(probability[k] * (1 - probability[k]) / n), (k, observed)
    mean = (np.arange(cut + 1) * probability).sum()
    variance = (np.arange(cut + 1) ** 2 * probability).sum() - mean ** 2
    # a probe drawn once per walk (not per tick) would give P(0) ≈ p and then nothing until the cut
    assert abs(wait.mean() - mean) < 4.5 * math.sqrt(variance / n), (wait.mean(), mean)


def test_noise_off_is_exact():
    adc, crossing, valid = hard_readout(step_waveforms(8), FE, noise=False)
    assert (adc[:, 0] == float(np.round(expected_counts(2 * STEP)))).all()
