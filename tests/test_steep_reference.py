"""Hard mode against larnd-sim's original kernels on a steep muon: long pulses, many readouts per pixel.

``reference/steep/steep_trk0_nd_njit_stages.npz`` holds larnd-sim's own per-pixel currents (``pixels_signals``,
C/µs on its 0.1 µs ticks) and what its ``fee.get_adc_values`` made of them: 22 readouts, two pixels at the
10-readout cap (resets and dead ticks after every read), one with 2.  Fed the same currents, ``hard_readout``
must give the same readouts: same slots, same crossing ticks, same ADC counts.

Precision.  larnd-sim works in Coulomb (threshold 7000·e) and converts to ADC counts with its own e = 1.602e-19 C
(``meta.fee.DISCRIMINATION_THRESHOLD`` / 7000); sparsetpc works in electrons.  The one readout whose count lies
close to a rounding boundary is 0.0016 counts (≈1.6 e⁻) above x.5; float64 arithmetic, in any summation order,
moves counts by ~1e-12 and float32 accumulation by < 1e-5, so exact equality is the right test.  Converting
larnd-sim's currents with the CODATA e (1.602176634e-19 C) instead moves every charge by −1.1e-4 relative and flips
exactly that readout by one count: the units, not the front end, are what a 1-count difference there would mean.
"""
import json

import numpy as np
import pytest
import torch

from helpers import SHARED, needs_shared
from sparsetpc.electronics import FrontEnd, hard_readout
from test_hard_frontend_sequential import sequential_readout

FE = FrontEnd()
CODATA_E_CHARGE = 1.602176634e-19   # C, exact since the 2019 SI redefinition (not larnd-sim's value)

pytestmark = needs_shared


@pytest.fixture(scope="module")
def stages():
    data = np.load(SHARED / "reference" / "steep" / "steep_trk0_nd_njit_stages.npz", allow_pickle=False)
    meta = json.loads(str(data["meta"]))
    return {key: data[key] for key in data.files} | {"meta": meta}


def larnd_e_charge(stages):
    """larnd-sim's elementary charge [C], from its stored threshold (7000 e⁻ expressed in C)."""
    return stages["meta"]["fee"]["DISCRIMINATION_THRESHOLD"] / FE.threshold


def charge_per_tick(stages, e_charge, dtype=torch.float64):
    """larnd-sim's currents as e⁻ per tick, with the leading empty column the front end expects."""
    current = torch.as_tensor(stages["pixels_signals"], dtype=torch.float64)              # C/µs
    electrons = current * FE.tick / e_charge
    return torch.cat([torch.zeros(current.shape[0], 1, dtype=torch.float64), electrons], dim=1).to(dtype)


def counts(charge_electrons):
    """ADC counts before rounding (physics.md §2.7)."""
    volts = np.maximum(charge_electrons * FE.gain + FE.v_pedestal - FE.v_cm, 0.0)
    return volts * FE.adc_counts / (FE.v_ref - FE.v_cm)


def reference_readouts(stages):
    adc = stages["adc_list"]
    valid = adc > FE.pedestal(hard=True)
    # larnd-sim reports linspace(0, 600, 6004)[c] µs: the crossing tick c is ticks × 6003/600
    ticks = np.rint(stages["adc_ticks_list"] * 6003 / 600)
    return adc, ticks, valid


def test_case_has_what_it_is_for(stages):
    adc, _, valid = reference_readouts(stages)
    per_pixel = valid.sum(axis=1)
    assert valid.sum() == 22 and sorted(per_pixel[per_pixel > 0].tolist()) == [2, 10, 10]
    assert stages["meta"]["fee"]["RESET_NOISE_CHARGE"] == 0 and stages["meta"]["fee"]["UNCORRELATED_NOISE_CHARGE"] == 0
    # the stored readouts of the stages file are those of the case file
    case = np.load(SHARED / "reference" / "steep" / "steep_trk0_nd_njit.npz")
    assert np.array_equal(case["adc"], adc) and np.array_equal(case["ticks"], stages["adc_ticks_list"])


def test_hard_readout_reproduces_larnd_sim_readout_by_readout(stages):
    adc_ref, ticks_ref, valid_ref = reference_readouts(stages)
    adc, crossing, valid = hard_readout(charge_per_tick(stages, larnd_e_charge(stages)), FE)
    assert np.array_equal(valid.numpy(), valid_ref)
    mismatched = [(int(p), int(s), float(adc[p, s]), float(adc_ref[p, s]))
                  for p, s in zip(*np.nonzero(valid_ref)) if adc[p, s] != adc_ref[p, s]]
    assert mismatched == [], f"(pixel, slot, ours, larnd-sim): {mismatched}"
    # crossing tick, on larnd-sim's tick index (ours has one leading empty column)
    assert np.array_equal(crossing.numpy()[valid_ref] - 1, ticks_ref[valid_ref])


def test_integrals_are_larnd_sims_to_rounding(stages):
    """The sequential walk in larnd-sim's own units (C, float64, its summation order) gives its integrals
    bit for bit, and in electrons (our units) to ≤ 1e-12 relative: the front end is the same arithmetic."""
    e_charge = larnd_e_charge(stages)
    current = stages["pixels_signals"]
    _, ticks_ref, valid_ref = reference_readouts(stages)
    integral_ref = stages["integral_list"]
    for pixel in np.nonzero(valid_ref.any(axis=1))[0]:
        in_coulomb = sequential_readout(current[pixel] * FE.tick, threshold=FE.threshold * e_charge)
        in_electrons = sequential_readout(current[pixel] * FE.tick / e_charge)
        n = valid_ref[pixel].sum()
        assert len(in_coulomb) == len(in_electrons) == n
        np.testing.assert_allclose([q for q, _ in in_coulomb], integral_ref[pixel, :n], rtol=1e-15, atol=0)
        np.testing.assert_allclose([q * e_charge for q, _ in in_electrons], integral_ref[pixel, :n], rtol=1e-12, atol=0)
        assert [c for _, c in in_coulomb] == ticks_ref[pixel, :n].tolist()


def test_rounding_margin_and_the_elementary_charge(stages):
    """Why exact equality holds and what would break it (the numbers behind the module docstring)."""
    e_charge = larnd_e_charge(stages)
    adc_ref, _, valid_ref = reference_readouts(stages)
    exact = counts(stages["integral_list"][valid_ref] / e_charge)
    assert np.array_equal(np.around(exact), adc_ref[valid_ref])           # larnd-sim's digitize: around, half to even
    distance_to_tie = np.abs(exact - np.floor(exact) - 0.5)
    closest = int(np.argmin(distance_to_tie))
    # no readout sits on an exact .5: rounding half to even plays no role; the closest is ≈1.6e-3 counts away,
    # 1e8 × float64's error on these sums and 100 × float32's
    assert 1e-4 < distance_to_tie[closest] < 1e-2
    float32_in = charge_per_tick(stages, e_charge, torch.float32)
    adc32, _, valid32 = hard_readout(float32_in, FE)
    assert np.array_equal(valid32.numpy(), valid_ref) and np.array_equal(adc32.double().numpy()[valid_ref], adc_ref[valid_ref])
    # a different elementary charge scales every charge by e/e': the readouts whose count moves past a tie flip
    relative = e_charge / CODATA_E_CHARGE - 1.0
    shifted = FE.pedestal(hard=False) - 0.5 + (exact - (FE.pedestal(hard=False) - 0.5)) * (1 + relative)
    predicted_flips = np.nonzero(np.around(shifted) != np.around(exact))[0]
    adc_codata, _, valid_codata = hard_readout(charge_per_tick(stages, CODATA_E_CHARGE), FE)
    observed_flips = np.nonzero(adc_codata.numpy()[valid_ref] != adc_ref[valid_ref])[0]
    assert np.array_equal(valid_codata.numpy(), valid_ref)
    assert predicted_flips.tolist() == observed_flips.tolist() == [closest]
    assert abs(float(adc_codata.numpy()[valid_ref][closest] - adc_ref[valid_ref][closest])) == 1.0
