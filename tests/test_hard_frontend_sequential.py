"""The hard front end against a plain sequential re-implementation of larnd-sim's ``fee.get_adc_values``.

``hard_readout`` is vectorised over pixels (cumulative sums, one loop iteration per readout).  Here the same
front end is written the way larnd-sim's kernel walks a pixel (physics.md §2.7), one tick at a time, noise off:

* add each tick's charge to the running sum; when the sum reaches the threshold at tick c, keep integrating
  ticks c..c+18 inclusive on top of it (tick c is therefore counted twice, larnd-sim's behaviour);
* a read below threshold: skip one tick (dead time), reset the sum and go on (next tick accumulated c+20);
* a read at or above threshold: store it (ADC and crossing tick c), skip one tick, reset; the walk's own step
  then moves one more tick (next tick accumulated c+21);
* at most 10 readouts per pixel; integration stops at the end of the waveform.

The two are compared readout by readout on long random multi-pulse waveforms (many pixels, several seeds).
"""
import numpy as np
import pytest
import torch

from sparsetpc.electronics import FrontEnd, digitize, hard_readout

FE = FrontEnd()


def sequential_readout(charge, threshold=FE.threshold, span=FE.integration_ticks, dead_ticks=FE.dead_ticks,
                       max_readouts=FE.max_readouts, double_count=True, skip_after_pass=1):
    """larnd-sim's per-pixel walk over one waveform ``charge`` (e⁻ per tick, a 1-d sequence of floats).

    Returns a list of (integrated charge [e⁻], crossing tick).  The keyword arguments exist so that the tests
    can check that the waveforms used discriminate each rule (a wrong rule must give different readouts).
    """
    readouts = []
    n_ticks = len(charge)
    tick = 0
    running = 0.0
    while tick < n_ticks:
        running += charge[tick]
        if running >= threshold:
            crossing = tick
            end = tick + span
            integrated = running if double_count else running - charge[crossing]
            while tick <= end and tick < n_ticks:
                integrated += charge[tick]
                tick += 1
            running = 0.0
            if integrated < threshold:
                tick += dead_ticks
                continue
            readouts.append((integrated, crossing))
            if len(readouts) >= max_readouts:
                break
            tick += dead_ticks + skip_after_pass
            continue
        tick += 1
    return readouts


def random_waveforms(seed, n_pixels=120, n_ticks=900, bipolar_fraction=0.25):
    """Long multi-pulse waveforms [n_pixels, n_ticks] (e⁻ per tick, integer-valued so every sum is exact).

    Each pixel gets 1–8 pulses of 2·10³–6·10⁴ e⁻ with an exponential rise of 0.3–4 µs cut off at arrival
    (the shape of the pad response), some overlapping; long steep-track-like plateaus on some pixels; and on a
    fraction of the pixels a negative undershoot after each pulse, so that a read can fall back below the
    threshold (the failed-read branch, which larnd-sim without noise reaches only with negative current).
    """
    rng = np.random.default_rng(seed)
    waves = np.zeros((n_pixels, n_ticks))
    ticks = np.arange(n_ticks)
    for pixel in range(n_pixels):
        for _ in range(rng.integers(1, 9)):
            arrival = rng.integers(5, n_ticks)
            scale = rng.uniform(3.0, 40.0)                 # ticks
            total = rng.uniform(2e3, 6e4)                  # e⁻
            before = ticks <= arrival
            shape = np.where(before, np.exp(-(arrival - ticks) / scale), 0.0)
            waves[pixel] += total * shape / shape.sum()
            if rng.random() < bipolar_fraction:
                after = (ticks > arrival) & (ticks <= arrival + 10)
                waves[pixel, after] -= rng.uniform(0.2, 1.5) * total / 10
        if rng.random() < 0.2:                             # steep track: a plateau of current for tens of µs
            first = rng.integers(0, n_ticks // 2)
            waves[pixel, first:first + rng.integers(100, 400)] += rng.uniform(200.0, 1500.0)
    return np.round(waves)


def compare(waves, front_end=FE, **rules):
    """Readouts of hard_readout and of the sequential walk, as lists per pixel: [(adc, crossing), ...]."""
    adc, crossing, valid = hard_readout(torch.as_tensor(waves), front_end)
    ours, theirs = [], []
    for pixel in range(waves.shape[0]):
        slots = valid[pixel].numpy()
        assert not (slots[1:] & ~slots[:-1]).any(), "readout slots must fill from the first"
        ours.append([(float(a), int(c)) for a, c in zip(adc[pixel, slots].tolist(), crossing[pixel, slots].tolist())])
        walk = sequential_readout(waves[pixel], **rules)
        charges = torch.tensor([q for q, _ in walk], dtype=torch.float64)
        adcs = digitize(charges, front_end, hard=True).tolist() if walk else []
        theirs.append([(float(a), c) for a, (_, c) in zip(adcs, walk)])
    return ours, theirs


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_hard_readout_equals_sequential_walk(seed):
    waves = random_waveforms(seed)
    ours, theirs = compare(waves)
    for pixel, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"seed {seed}, pixel {pixel}: hard_readout {a} != sequential {b}"
    counts = [len(r) for r in theirs]
    # the waveforms exercise what the test is about: many readouts per pixel, the 10-readout cap
    assert sum(counts) > 3 * len(counts) and counts.count(FE.max_readouts) >= 3


def test_single_count_option_equals_sequential_walk():
    waves = random_waveforms(7)
    ours, theirs = compare(waves, FrontEnd(double_count_crossing=False), double_count=False)
    assert ours == theirs


def test_failed_reads_are_exercised():
    """The bipolar pixels do produce crossings whose read falls below threshold (the branch is covered)."""
    waves = random_waveforms(0)
    failed = 0
    for row in waves:
        running, tick = 0.0, 0
        # count crossings whose integral is below threshold, with the walk's own rules
        while tick < len(row):
            running += row[tick]
            if running >= FE.threshold:
                end = min(tick + FE.integration_ticks, len(row) - 1)
                integrated = running + row[tick:end + 1].sum()
                failed += integrated < FE.threshold
                tick = end + 1 + FE.dead_ticks + (integrated >= FE.threshold)
                running = 0.0
                continue
            tick += 1
    assert failed >= 5


@pytest.mark.parametrize("wrong_rule", [
    {"dead_ticks": 0},              # no dead tick after a read
    {"dead_ticks": 2},
    {"skip_after_pass": 0},         # a passed read resumes like a failed one (one tick too early)
    {"span": 17},                   # integration one tick short
    {"span": 19},
    {"double_count": False},        # crossing tick counted once
    {"max_readouts": 9},
])
def test_waveforms_discriminate_each_rule(wrong_rule):
    """The comparison above is not vacuous: a walk with any one rule changed disagrees with hard_readout."""
    ours, theirs = compare(random_waveforms(0), **wrong_rule)
    assert sum(a != b for a, b in zip(ours, theirs)) > 0
