import numpy as np
import pytest
import torch

from sparsetpc.electronics import (Electronics, FrontEnd, digitize, draw_readout_noise, hard_readout,
                                   reference_readout)
from helpers import SHARED, devices, needs_shared

FE = FrontEnd()
E_CHARGE = 1.602e-19   # C, larnd-sim's value


def ramp(total_electrons, n_ticks=60, start=5, length=10):
    """Waveform [1, n_ticks] (e⁻ per tick): uniform charge over ``length`` ticks from ``start``."""
    q = torch.zeros(1, n_ticks, dtype=torch.float64)
    q[0, start:start + length] = total_electrons / length
    return q


class TestDigitize:
    def test_pedestal_and_gain(self):
        # physics.md §2.7: pedestal 74.3656, 1 count ≈ 988 e⁻, saturation at 256
        assert FE.pedestal() == pytest.approx(74.3656, abs=1e-4)
        assert FE.pedestal(hard=True) == 74.0
        q = torch.tensor([0.0, 988.28125, 1e7], dtype=torch.float64)
        out = digitize(q, FE)
        assert float(out[1] - out[0]) == pytest.approx(1.0, rel=1e-6)
        assert float(out[2]) == 256.0
        hard = digitize(q, FE, hard=True)
        assert torch.equal(hard, torch.round(hard)) and float(hard[0]) == 74.0


class TestRelaxed:
    def test_crossing_interpolated_and_read(self):
        q = ramp(20000.0)                     # 2000 e⁻ per tick from tick 5: crosses 7000 e⁻ during tick 8
        adc, crossing, valid = reference_readout(q, FE)
        assert bool(valid[0, 0]) and not bool(valid[0, 1:].any())
        # cumulative reaches 6000 at tick 7 and 8000 at tick 8: interpolated crossing at 7.5
        assert float(crossing[0, 0]) == pytest.approx(7.5)
        # read at floor(7.5) + 18 = tick 25: all 20000 e⁻
        assert float(adc[0, 0]) == pytest.approx(float(digitize(torch.tensor(20000.0, dtype=torch.float64), FE)))

    def test_second_readout_after_charge_removal(self):
        q = ramp(20000.0, n_ticks=120)
        q[0, 60:70] = 1000.0                  # 10000 e⁻ more, long after the first read
        adc, crossing, valid = reference_readout(q, FE)
        assert valid[0].tolist()[:3] == [True, True, False]
        assert float(crossing[0, 1]) == pytest.approx(60 + 6.0)   # 7000 e⁻ reached at the end of tick 66
        assert float(adc[0, 1]) == pytest.approx(float(digitize(torch.tensor(10000.0, dtype=torch.float64), FE)))

    def test_below_threshold_gives_no_readout(self):
        adc, crossing, valid = reference_readout(ramp(6000.0), FE)
        assert not bool(valid.any())

    def test_gradcheck(self):
        base = ramp(20000.0)[0]

        def f(scale, shape):
            q = (base * scale + shape)[None, :]
            adc, crossing, valid = reference_readout(q, FE)
            return torch.stack([adc[0, 0], crossing[0, 0]])

        scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        shape = torch.zeros(60, dtype=torch.float64)
        shape[7:9] = torch.tensor([130.0, 270.0], dtype=torch.float64)
        shape.requires_grad_(True)
        assert torch.autograd.gradcheck(f, (scale, shape), eps=1e-3, atol=1e-6)

    def test_noise_seeded(self):
        q = ramp(20000.0)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a1 = reference_readout(q, FE, draw_readout_noise(1, FE, q, g1))[0]
        a2 = reference_readout(q, FE, draw_readout_noise(1, FE, q, g2))[0]
        assert torch.equal(a1, a2)
        a0 = reference_readout(q, FE)[0]
        assert not torch.equal(a0, a1)

    @pytest.mark.parametrize("device", devices())
    def test_device(self, device):
        out = Electronics(FE)(ramp(20000.0).to(device))
        assert out[0].device.type == device


class TestHard:
    def test_double_counted_crossing_tick(self):
        q = ramp(20000.0)
        adc, crossing, valid = hard_readout(q, FE)
        assert bool(valid[0, 0]) and float(crossing[0, 0]) == 8.0
        # running sum at tick 8 (8000) + ticks 8..26 (12000, tick 8 counted again) = 20000 + 2000
        assert float(adc[0, 0]) == float(digitize(torch.tensor(22000.0, dtype=torch.float64), FE, hard=True))
        single = hard_readout(q, FrontEnd(double_count_crossing=False))[0]
        assert float(single[0, 0]) == float(digitize(torch.tensor(20000.0, dtype=torch.float64), FE, hard=True))
        assert torch.equal(adc, torch.round(adc))

    @needs_shared
    def test_matches_larnd_sim_kernel(self):
        # the original kernel's own per-pixel currents in, its ADC and ticks out, exactly
        data = np.load(SHARED / "reference" / "original" / "test_segment_nd_njit_stages.npz", allow_pickle=True)
        current = torch.as_tensor(data["pixels_signals"], dtype=torch.float64)      # C/µs on 0.1 µs ticks
        q = torch.cat([torch.zeros(current.shape[0], 1, dtype=torch.float64), current * 0.1 / E_CHARGE], dim=1)
        adc, crossing, valid = hard_readout(q, FE)
        reference = data["adc_list"]
        assert np.array_equal(valid.numpy(), reference > 74)
        assert np.array_equal(adc.numpy()[valid.numpy()], reference[reference > 74])
        # larnd-sim reports linspace(0, 600, 6004)[c]: the crossing tick c (shifted by our leading empty column)
        ticks = data["adc_ticks_list"][reference > 74] * 6003 / 600
        assert np.allclose(crossing.numpy()[valid.numpy()] - 1, ticks, atol=1e-6)

    def test_noise_long_pulses_every_pixel_state(self):
        # long pulses (steep tracks), noise triggers anywhere up to the last tick: pixels finish at different
        # iterations, some one or more ticks past their last column, while others continue (used to crash)
        generator = torch.Generator().manual_seed(0)
        n_pixels, width = 64, 330
        q = torch.rand(n_pixels, width, dtype=torch.float64, generator=generator) * 900.0
        q[::3, -40:] = 0.0
        q[1::4, :] = 0.0            # noise-only pixels
        for seed in range(40):
            generator.manual_seed(seed)
            adc, crossing, valid = hard_readout(q, FE, noise=True, generator=generator)
            assert adc.shape == (n_pixels, FE.max_readouts)
            assert bool((crossing[valid] <= width - 1).all()) and bool((crossing[valid] >= 0).all())
            assert bool((adc[valid] >= FE.pedestal(hard=True)).all())
            # slots fill from the first: no readout after an empty slot
            assert bool((valid[:, 1:] <= valid[:, :-1]).all())
