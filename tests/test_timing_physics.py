"""Arrival-time physics of the induced waveforms, against an independent computation of their time moments.

Each simulated per-pixel waveform (electrons per 0.1 µs tick) is a density in time.  Its centroid and variance
are predicted here from the model of sparsetpc.induction / physics.md §2.2 and §2.5, computed independently in
numpy (fine midpoint quadrature along the track, Gauss–Legendre over the pad, moments in closed form):

for a bit of track charge at drift distance d (its weight: electrons × attachment exp(−t_d/τ) × the fraction of
its transverse Gaussian cloud, σ_T = √(2·D_T·d/v), that lands on the pad), the current it induces is spread in
time as  t_d + Δt₀ − X + G  where
* t_d = (d − 0.5 cm)/v is the drift time to the start of the pad response;
* Δt₀ is the response delay, quadratic in the landing point's offsets from the pad centre: its mean over the
  cloud's part on the pad is exact from E|x|, E x²; its spread over the cloud is the linearised
  slope² × Var|x| (the documented model, docs/parity.md);
* X is the response's exponential rise, scale b with probability A and c otherwise, (A, b, c) at the mean
  offsets (mean A·b + (1−A)·c, second moment 2A·b² + 2(1−A)·c²);
* G ~ N(0, (σ_L/v)² + Var Δt₀) is the longitudinal diffusion, σ_L = √(2·D_L·d/v), widened by the delay spread.

The simulation runs with a response tail tolerance of 1e-12 (the default 1e-5 drops a tail whose second moment
is ~1e-2 µs²) and half the default sample spacing.  Measured agreement: centroid ≤ 2e-4 µs, variance ≤ 1e-4 µs²;
the delay spread contributes 0.016–0.054 µs² to the variance of these pixels, so dropping it fails the test.
"""
import math

import numpy as np
import pytest

import sparsetpc as st
from helpers import make_rows
from sparsetpc.induction import RESPONSE_COEFFICIENTS

CENTROID_TOLERANCE = 1e-3      # µs
VARIANCE_TOLERANCE = 1e-3      # µs²
MIN_PIXEL_CHARGE = 3000.0      # e⁻


def track_rows():
    """A muon in drift volume 0, 20–21 cm from the anode, crossing pads at many offsets, cut into 6 segments."""
    start, end = np.array([1.0, -20.0, -10.0]), np.array([4.3, -17.2, -9.6])
    knots = start[None] + np.linspace(0.0, 1.0, 7)[:, None] * (end - start)[None]
    return make_rows(knots[:-1], knots[1:])


def quadratic(name, x, y):
    c0, c1, c2, c3, c4, c5 = RESPONSE_COEFFICIENTS[name]
    return c0 + c1 * x + c2 * y + c3 * x * y + c4 * x * x + c5 * y * y


NODES, NODE_WEIGHTS = np.polynomial.legendre.leggauss(48)


def landing_moments(offset, sigma, half_pitch):
    """Mass on [−h, h], E|x| and E x² over it, for landing points x ~ N(offset, σ²) (arrays, any shape)."""
    mass = np.zeros(np.shape(offset))
    first = np.zeros_like(mass)
    second = np.zeros_like(mass)
    for lo, hi in ((-half_pitch, 0.0), (0.0, half_pitch)):     # split at the cusp of |x|
        x = 0.5 * (hi - lo) * NODES + 0.5 * (hi + lo)
        w = 0.5 * (hi - lo) * NODE_WEIGHTS
        z = (x - offset[..., None]) / sigma[..., None]
        density = np.exp(-0.5 * z * z) / (sigma[..., None] * math.sqrt(2 * math.pi)) * w
        mass += density.sum(-1)
        first += (density * np.abs(x)).sum(-1)
        second += (density * x * x).sum(-1)
    safe = np.where(mass > 0, mass, 1.0)
    return mass, first / safe, second / safe


def expected_time_moments(rows, pixel_x, pixel_y, z_anode, params, half_pitch, points_per_segment=1500):
    """Charge-weighted centroid [µs], variance [µs²] and delay-spread part of the variance, per pixel."""
    p = params.as_dict()
    velocity = p["vdrift"]
    recombination = p["Ab"] / (1 + p["kb"] * rows["dEdx"] / (p["eField"] * p["lArDensity"]))     # Birks
    electrons = recombination * rows["dE"] * p["MeVToElectrons"]
    u = (np.arange(points_per_segment) + 0.5) / points_per_segment
    total = np.zeros(len(pixel_x))
    first = np.zeros_like(total)
    second = np.zeros_like(total)
    delay_part = np.zeros_like(total)
    for k in range(len(rows)):
        start = np.array([rows[a + "_start"][k] for a in "xyz"], dtype=np.float64)
        end = np.array([rows[a + "_end"][k] for a in "xyz"], dtype=np.float64)
        point = start[None] + u[:, None] * (end - start)[None]                       # [P, 3]
        distance = np.abs(point[:, 2] - z_anode)
        drift_time = (distance - 0.5) / velocity
        sigma_t = np.sqrt(2 * p["tran_diff"] * distance / velocity)
        sigma_time = np.sqrt(2 * p["long_diff"] * distance / velocity) / velocity
        offset_x = point[None, :, 0] - pixel_x[:, None]                               # [U, P]
        offset_y = point[None, :, 1] - pixel_y[:, None]
        spread = np.broadcast_to(sigma_t[None], offset_x.shape)
        mass_x, abs_x, square_x = landing_moments(offset_x, spread, half_pitch)
        mass_y, abs_y, square_y = landing_moments(offset_y, spread, half_pitch)
        weight = electrons[k] / points_per_segment * np.exp(-drift_time / p["lifetime"])[None] * mass_x * mass_y
        c0, c1, c2, c3, c4, c5 = RESPONSE_COEFFICIENTS["delay"]
        delay = c0 + c1 * abs_x + c2 * abs_y + c3 * abs_x * abs_y + c4 * square_x + c5 * square_y
        slope_x = c1 + c3 * abs_y + 2 * c4 * abs_x
        slope_y = c2 + c3 * abs_x + 2 * c5 * abs_y
        delay_variance = slope_x ** 2 * (square_x - abs_x ** 2) + slope_y ** 2 * (square_y - abs_y ** 2)
        amplitude = np.minimum(quadratic("amplitude", abs_x, abs_y), 1.0)
        fast, slow = quadratic("fast", abs_x, abs_y), quadratic("slow", abs_x, abs_y)
        rise_mean = amplitude * fast + (1 - amplitude) * slow
        rise_variance = 2 * amplitude * fast ** 2 + 2 * (1 - amplitude) * slow ** 2 - rise_mean ** 2
        mean = drift_time[None] + delay - rise_mean
        variance = sigma_time[None] ** 2 + delay_variance + rise_variance
        total += weight.sum(1)
        first += (weight * mean).sum(1)
        second += (weight * (variance + mean ** 2)).sum(1)
        delay_part += (weight * delay_variance).sum(1)
    centroid = first / total
    return total, centroid, second / total - centroid ** 2, delay_part / total


@pytest.fixture(scope="module")
def simulated():
    detector = st.Detector.default()
    params = st.Params.nominal()
    rows = track_rows()
    options = st.InductionOptions(tail_tolerance=1e-12, sample_spacing=0.5)
    hits = st.simulate(st.Segments.from_numpy(rows, swap=False), detector, params, options=options,
                       return_waveforms=True)
    return detector, params, rows, hits.waveforms


def test_waveform_time_moments_match_independent_model(simulated):
    detector, params, rows, waves = simulated
    charge = waves.charge.detach().numpy()
    time = (waves.start_tick.numpy()[:, None] + np.arange(charge.shape[1])[None]) * detector.tick
    total = charge.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):   # pixels whose pairs carry no charge are not selected
        centroid = (charge * time).sum(1) / total
        variance = (charge * (time - centroid[:, None]) ** 2).sum(1) / total
    table = waves.pixel_table.numpy()
    assert (table[:, 1] == 0).all()
    pixel_x, pixel_y = detector.pixel_centers(table[:, 1], table[:, 2], table[:, 3])
    expected_total, expected_centroid, expected_variance, delay_part = expected_time_moments(
        rows, pixel_x, pixel_y, detector.tpc_borders[0, 2, 0], params, detector.pixel_pitch / 2)
    selected = total > MIN_PIXEL_CHARGE
    assert selected.sum() >= 10
    np.testing.assert_allclose(total[selected], expected_total[selected], rtol=2e-3)
    np.testing.assert_allclose(centroid[selected], expected_centroid[selected], rtol=0, atol=CENTROID_TOLERANCE)
    np.testing.assert_allclose(variance[selected], expected_variance[selected], rtol=0, atol=VARIANCE_TOLERANCE)
    # the test sees the delay spread: on every pixel it is well above the variance tolerance
    assert (delay_part[selected] > 10 * VARIANCE_TOLERANCE).all()
    # and the drift itself: the centroids follow the ≈ 0.4 cm drift-distance range of the track (≈ 2.5 µs)
    assert np.ptp(centroid[selected]) > 1.5
