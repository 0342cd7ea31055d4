"""LArPix front-end electronics: self-trigger, hold/integration, reset and ADC (physics.md §2.7).

Two modes on the same per-pixel charge waveforms (electrons per 0.1 µs tick):

* ``relaxed`` — the differentiable front end of the reference model: cumulative charge, threshold crossing
  time linearly interpolated between ticks (differentiable time), read of the cumulative charge at
  ⌊crossing⌋ + 18 ticks (differentiable value), read charge removed (clamped at 0), up to 10 readouts,
  float ADC with the +0.5 offset.  Differences from the reference: the *first* crossing of each pass is taken
  (the reference lets the last duplicate win; without noise there is only one), and pixels that never cross
  produce no readout instead of being integrated at tick 18.
* ``hard`` — larnd-sim's non-differentiable ``fee.get_adc_values``: sequential walk, integration of ticks
  c..c+18 on top of the running sum *counting the crossing tick twice* (larnd-sim's behaviour, not physics;
  ``FrontEnd(double_count_crossing=False)`` counts it once), reset with a one-tick dead time, integer ADC
  (round half to even, as numpy.around).

Noise (optional, seeded through a ``torch.Generator``): reset noise 900 e⁻ on every reset, uncorrelated noise
500 e⁻ on every read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class FrontEnd:
    """LArPix v2 front-end constants (larnd-sim ``fee``).  Charges in electrons, voltages in mV."""

    threshold: float = 7.0e3              # e⁻
    max_readouts: int = 10
    adc_hold_delay: int = 15              # clock cycles
    clock_cycle: float = 0.1              # µs
    tick: float = 0.1                     # µs, sampling of the current
    gain: float = 4.0e-3                  # mV per e⁻
    v_cm: float = 288.0
    v_ref: float = 1300.0
    v_pedestal: float = 580.0
    adc_counts: int = 256
    reset_noise: float = 900.0            # e⁻
    uncorrelated_noise: float = 500.0     # e⁻
    double_count_crossing: bool = True    # hard mode: larnd-sim adds the crossing tick twice

    @property
    def integration_ticks(self) -> int:
        """Ticks from the crossing to the end of integration (3 + hold delay clock cycles)."""
        return int(round((3 * self.clock_cycle + self.adc_hold_delay * self.clock_cycle) / self.tick))

    @property
    def dead_ticks(self) -> int:
        return int(round(self.clock_cycle / self.tick))

    def pedestal(self, hard: bool = False) -> float:
        """ADC of zero charge: 74.3656 relaxed (float, +0.5), 74 hard (rounded)."""
        return float(digitize(torch.zeros((), dtype=torch.float64), self, hard=hard))


def digitize(charge: torch.Tensor, front_end: FrontEnd, hard: bool = False) -> torch.Tensor:
    """ADC counts of an integrated charge [e⁻].  Relaxed: float with +0.5; hard: rounded (half to even)."""
    volts = torch.clamp(charge * front_end.gain + front_end.v_pedestal - front_end.v_cm, min=0.0)
    counts = volts * front_end.adc_counts / (front_end.v_ref - front_end.v_cm)
    counts = torch.round(counts) if hard else counts + 0.5
    return torch.clamp(counts, max=float(front_end.adc_counts))


def _normal(shape, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)


def draw_readout_noise(n_pixels: int, front_end: FrontEnd, like: torch.Tensor,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard-normal draws [U, 1 + 2R] for :func:`relaxed_readout` (initial reset, then per pass: read, reset).
    Drawn up front so that a checkpointed recomputation sees the same noise."""
    return _normal((n_pixels, 1 + 2 * front_end.max_readouts), like, generator)


def relaxed_readout(charge: torch.Tensor, front_end: FrontEnd, noise_draws: Optional[torch.Tensor] = None):
    """Differentiable self-trigger on waveforms ``charge`` [U, W] (e⁻ per tick, column 0 empty).

    ``noise_draws``: None (noise off) or the output of :func:`draw_readout_noise`.
    Returns ``adc`` [U, R] (float), ``crossing`` [U, R] (local tick, float, interpolated), ``valid`` [U, R].
    """
    n_pixels, width = charge.shape
    thr = front_end.threshold
    noise = noise_draws is not None
    cumulative = torch.cumsum(charge, dim=1)
    baseline = (noise_draws[:, :1] * front_end.reset_noise) if noise else charge.new_zeros((n_pixels, 1))
    adcs, crossings, valids = [], [], []
    columns = torch.arange(1, width, device=charge.device)
    for pass_index in range(front_end.max_readouts):
        total = cumulative + baseline
        above = (total[:, 1:] >= thr) & (total[:, :-1] <= thr)
        has = above.any(dim=1)
        # first crossing column k ≥ 1
        k = torch.where(above, columns[None, :], torch.full_like(columns[None, :], width)).amin(dim=1)
        k = torch.where(has, k, torch.ones_like(k))
        before = total.gather(1, (k - 1)[:, None]).squeeze(1)
        after = total.gather(1, k[:, None]).squeeze(1)
        step = torch.clamp(after - before, min=torch.finfo(charge.dtype).tiny)
        crossing = (k - 1).to(charge.dtype) + (thr - before) / step
        crossing = torch.where(has, crossing, torch.zeros_like(crossing))
        end = torch.clamp(torch.floor(crossing.detach()).long() + front_end.integration_ticks, max=width - 1)
        read = total.gather(1, end[:, None]).squeeze(1)
        if noise:
            read = read + noise_draws[:, 1 + 2 * pass_index] * front_end.uncorrelated_noise
        passed = has & (read >= thr)
        adcs.append(torch.where(passed, digitize(read, front_end), torch.zeros_like(read)))
        crossings.append(torch.where(passed, crossing, torch.zeros_like(crossing)))
        valids.append(passed)
        removed = cumulative.gather(1, end[:, None])
        cumulative = torch.where(has[:, None], torch.clamp(cumulative - removed, min=0.0), cumulative)
        if noise:
            reset = torch.where(passed, torch.full_like(read, front_end.reset_noise),
                                torch.full_like(read, front_end.uncorrelated_noise))
            baseline = torch.where(has, noise_draws[:, 2 + 2 * pass_index] * reset, baseline.squeeze(1))[:, None]
        if not bool(has.any()):
            # nothing left to trigger: remaining passes would produce no readout
            for _ in range(front_end.max_readouts - len(adcs)):
                adcs.append(torch.zeros_like(read))
                crossings.append(torch.zeros_like(crossing))
                valids.append(torch.zeros_like(passed))
            break
    return torch.stack(adcs, 1), torch.stack(crossings, 1), torch.stack(valids, 1)


@torch.no_grad()
def hard_readout(charge: torch.Tensor, front_end: FrontEnd, noise: bool = False,
                 generator: Optional[torch.Generator] = None):
    """larnd-sim's self-trigger (non-differentiable), vectorised over pixels.

    Returns ``adc`` [U, R] integer-valued, ``crossing`` [U, R] local tick (integer-valued), ``valid`` [U, R].
    """
    n_pixels, width = charge.shape
    thr = front_end.threshold
    rows = torch.arange(n_pixels, device=charge.device)
    columns = torch.arange(width, device=charge.device)
    cumulative = torch.cumsum(charge, dim=1)
    padded = torch.cat([charge.new_zeros((n_pixels, 1)), cumulative], dim=1)   # padded[:, k] = Σ_{j<k} q_j
    position = torch.zeros(n_pixels, dtype=torch.long, device=charge.device)   # next tick to accumulate
    offset = (_normal((n_pixels,), charge, generator) * front_end.reset_noise) if noise else charge.new_zeros(n_pixels)
    n_read = torch.zeros(n_pixels, dtype=torch.long, device=charge.device)
    adc = charge.new_zeros((n_pixels, front_end.max_readouts))
    crossing = charge.new_zeros((n_pixels, front_end.max_readouts))
    valid = torch.zeros((n_pixels, front_end.max_readouts), dtype=torch.bool, device=charge.device)
    active = torch.ones(n_pixels, dtype=torch.bool, device=charge.device)
    span = front_end.integration_ticks
    while bool(active.any()):
        # running sum since the last reset: Σ q[position..k] + offset
        # finished pixels may sit past the last column (position ≤ width + 2): clamp only the gather index;
        # they are masked out of `above` by `active`
        start = torch.clamp(position, max=width)
        running = cumulative - padded.gather(1, start[:, None]) + offset[:, None]
        probe = running
        if noise:
            probe = running + _normal(running.shape, charge, generator) * front_end.uncorrelated_noise
        above = (probe >= thr) & (columns[None, :] >= position[:, None]) & active[:, None]
        found = above.any(dim=1)
        c = torch.where(above, columns[None, :], torch.full_like(columns[None, :], width)).amin(dim=1)
        c = torch.where(found, c, torch.zeros_like(c))
        end = torch.clamp(c + span, max=width - 1)
        at_crossing = running.gather(1, c[:, None]).squeeze(1)
        start_sum = c if front_end.double_count_crossing else c + 1
        integrated = padded.gather(1, (end + 1)[:, None]).squeeze(1) - padded.gather(1, start_sum[:, None]).squeeze(1)
        value = at_crossing + integrated
        if noise:
            value = value + _normal((n_pixels,), charge, generator) * front_end.uncorrelated_noise
        passed = found & (value >= thr)
        slot = torch.clamp(n_read, max=front_end.max_readouts - 1)
        store = passed & (n_read < front_end.max_readouts)
        adc[rows[store], slot[store]] = digitize(value[store], front_end, hard=True)
        crossing[rows[store], slot[store]] = c[store].to(charge.dtype)
        valid[rows[store], slot[store]] = True
        n_read = n_read + store.long()
        # after a read: one dead tick, then the walk goes on (a passed read also skips the loop's own +1)
        next_position = end + 1 + front_end.dead_ticks + passed.long()
        position = torch.where(found, next_position, position)
        if noise:
            reset = torch.where(passed, torch.full_like(value, front_end.reset_noise),
                                torch.full_like(value, front_end.uncorrelated_noise))
            offset = torch.where(found, _normal((n_pixels,), charge, generator) * reset, offset)
        else:
            offset = torch.where(found, torch.zeros_like(offset), offset)
        active = found & (n_read < front_end.max_readouts) & (position < width)
    return adc, crossing, valid


def readout(charge: torch.Tensor, front_end: FrontEnd, mode: str = "relaxed", noise: bool = False,
            generator: Optional[torch.Generator] = None):
    if mode == "relaxed":
        draws = draw_readout_noise(charge.shape[0], front_end, charge, generator) if noise else None
        return relaxed_readout(charge, front_end, draws)
    if mode == "hard":
        return hard_readout(charge, front_end, noise, generator)
    raise ValueError(f"unknown electronics mode {mode!r}: 'relaxed' or 'hard'")


class Electronics(nn.Module):
    """Thin module wrapper of :func:`readout`."""

    def __init__(self, front_end: Optional[FrontEnd] = None, mode: str = "relaxed"):
        super().__init__()
        self.front_end = front_end or FrontEnd()
        self.mode = mode

    def forward(self, charge, noise: bool = False, generator=None):
        return readout(charge, self.front_end, self.mode, noise, generator)
