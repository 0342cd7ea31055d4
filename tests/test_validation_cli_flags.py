"""Every flag of ``python -m validation compare|run-reference|to-packets`` has an effect a user can see; each test
checks that effect against a formula or an independent computation (docs/flag_coverage.md lists flag -> test)."""
import json

import h5py
import numpy as np
import pytest
import yaml

from helpers import SHARED, check_comparison_plots, needs_shared
from sparsetpc.hits import HIT_DTYPE
from sparsetpc.layout import PixelLayout
from sparsetpc.packets import LARNDSIM_TIME_TICKS, larndsim_disabled, read_packets
from validation.__main__ import main
from validation.readers import default_borders, write_sparsetpc_hits
from validation.run_reference import simulator_available

LAYOUT = PixelLayout.default()
# (event, plane, ix, iy, crossing tick, ADC, slot): hard-mode-like readouts on connected, enabled channels,
# ticks away from the three larnd-sim timestamps that two ticks share (0, 2000, 4000)
ROWS = [(0, 0, 40, 100, 1000, 90.0, 0), (0, 0, 40, 100, 1150, 85.0, 1), (0, 1, 75, 150, 1503, 100.0, 0),
        (2, 0, 30, 60, 3001, 80.0, 0), (5, 1, 100, 200, 2500, 120.0, 0)]


def hits_array(rows):
    """HIT_DTYPE readouts at the default layout's pixel centres, t = tick x 0.1 us."""
    hits = np.zeros(len(rows), HIT_DTYPE)
    for k, (event, plane, ix, iy, tick, adc, slot) in enumerate(rows):
        hits[k] = (event, plane, ix, iy, 0.0, 0.0, tick * 0.1, adc, slot)
    hits["x"], hits["y"] = LAYOUT.pixel_center(default_borders(LAYOUT), hits["pixel_plane"], hits["pixel_ix"],
                                               hits["pixel_iy"])
    return hits


def write(path, rows):
    write_sparsetpc_hits(path, hits_array(rows), adc_pedestal=74.0, mode="hard")
    return path


def compare(capsys, *argv):
    """(exit code, summary) of ``compare ... --json``."""
    out = argv[-1]
    code = main(["compare", *map(str, argv[:-1]), "--json", str(out)])
    capsys.readouterr()
    return code, json.loads(out.read_text()) if out.exists() else None


def test_written_rows_are_on_enabled_channels():
    h = hits_array(ROWS)
    group, _, chip, channel = LAYOUT.pixel_to_channel(h["pixel_plane"], h["pixel_ix"], h["pixel_iy"])
    assert (group >= 0).all() and not larndsim_disabled(chip, channel).any()


def test_tolerance_time_and_unmatched(tmp_path, capsys):
    ref = write(tmp_path / "ref.h5", ROWS)
    late = write(tmp_path / "late.h5", [r[:4] + (r[4] + 3,) + r[5:] for r in ROWS])        # every readout +0.3 us
    assert compare(capsys, ref, late, tmp_path / "a.json")[0] == 1                         # default 0.05 us
    assert compare(capsys, ref, late, "--tolerance-time", "0.31", tmp_path / "b.json")[0] == 0
    assert compare(capsys, ref, late, "--tolerance-time", "0.29", tmp_path / "c.json")[0] == 1
    # one extra readout: unmatched fraction = 1 / (5 + 6) readouts
    extra = write(tmp_path / "extra.h5", ROWS + [(5, 0, 10, 10, 2000, 95.0, 0)])
    code, summary = compare(capsys, ref, extra, tmp_path / "d.json")
    assert code == 1 and summary["unmatched_fraction"] == pytest.approx(1 / 11)
    assert compare(capsys, ref, extra, "--tolerance-unmatched", str(1 / 11 + 1e-9), tmp_path / "e.json")[0] == 0
    assert compare(capsys, ref, extra, "--tolerance-unmatched", str(1 / 11 - 1e-9), tmp_path / "f.json")[0] == 1


def to_packets(tmp_path, source, name, *extra):
    out = tmp_path / name
    assert main(["to-packets", str(source), str(out), *extra]) == 0
    return out


@pytest.mark.parametrize("axis", ["clock", "larnd-sim"])
def test_to_packets_writes_the_readouts_on_the_chosen_time_axis(tmp_path, capsys, axis):
    """Data-packet timestamps: event x 6000 + tick (clock) or + floor(linspace(0, 600, 6004)[tick] / 0.1)
    (larnd-sim's writer); the reader undoes either and gives back every readout."""
    source = write(tmp_path / "hits.h5", ROWS)
    out = to_packets(tmp_path, source, "p.h5", "--time-axis", axis)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_data_packets"] == len(ROWS)
    with h5py.File(out) as f:
        packets = f["packets"][()]
        assert f.attrs["sparsetpc_time_axis"] == axis
    ticks = np.array([r[4] for r in ROWS])
    events = np.array([r[0] for r in ROWS])
    stamp = ticks if axis == "clock" else np.floor(LARNDSIM_TIME_TICKS[ticks] / 0.1).astype(np.int64)
    data = packets[packets["packet_type"] == 0]
    np.testing.assert_array_equal(np.sort(data["timestamp"]), np.sort(events * 6000 + stamp))
    back = read_packets(out, LAYOUT).hits
    key = lambda h: np.lexsort((h["readout"], h["pixel_iy"], h["pixel_ix"], h["pixel_plane"], h["event_id"]))
    a, b = hits_array(ROWS), back[key(back)]
    a = a[key(a)]
    for name in ("event_id", "pixel_plane", "pixel_ix", "pixel_iy", "readout", "adc"):
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_allclose(b["t"], a["t"], atol=1e-9)


def test_raw_time_keeps_the_packet_timestamps(tmp_path, capsys):
    """A packets file on larnd-sim's time axis: compared with its source, the converted times agree exactly;
    with --raw-time the packets side keeps timestamp x 0.1 us, floor(linspace(0, 600, 6004)[ic] / 0.1) x 0.1."""
    source = write(tmp_path / "hits.h5", ROWS)
    packets = to_packets(tmp_path, source, "p.h5", "--time-axis", "larnd-sim")
    code, converted = compare(capsys, source, packets, tmp_path / "a.json")
    assert code == 0 and converted["matched"] == len(ROWS) and converted["max_abs_dt"] < 1e-9
    code, raw = compare(capsys, source, packets, "--raw-time", tmp_path / "b.json")
    ticks = np.array([r[4] for r in ROWS])
    dt = np.floor(LARNDSIM_TIME_TICKS[ticks] / 0.1) * 0.1 - ticks * 0.1
    assert raw["matched"] == len(ROWS) and code == 1
    assert dt.max() < 0 and raw["mean_dt"] == pytest.approx(dt.mean(), abs=1e-9)
    assert raw["max_abs_dt"] == pytest.approx(np.abs(dt).max(), abs=1e-9)


def test_restrict_drops_readouts_larnd_sim_does_not_write(tmp_path, capsys):
    """A readout on a disabled edge channel is in the hits file but not in its packets file: --restrict auto
    (default) leaves it out of the comparison, --restrict no counts it as ref-only."""
    plane, ix, iy = np.meshgrid([0], np.arange(140), np.arange(280), indexing="ij")
    group, _, chip, channel = LAYOUT.pixel_to_channel(plane.ravel(), ix.ravel(), iy.ravel())
    k = int(np.flatnonzero((group >= 0) & larndsim_disabled(chip, channel))[0])
    edge = (0, 0, int(ix.ravel()[k]), int(iy.ravel()[k]), 1200, 99.0, 0)
    source = write(tmp_path / "hits.h5", ROWS + [edge])
    packets = to_packets(tmp_path, source, "p.h5")
    with h5py.File(packets) as f:
        assert int((f["packets"]["packet_type"] == 0).sum()) == len(ROWS)
    code = main(["compare", str(source), str(packets), "--json", str(tmp_path / "auto.json")])
    assert code == 0 and "ref restricted to channels larnd-sim writes (1 readouts dropped)" in capsys.readouterr().out
    code, summary = compare(capsys, source, packets, "--restrict", "no", tmp_path / "no.json")
    assert code == 1 and (summary["matched"], summary["ref_only"], summary["ours_only"]) == (len(ROWS), 1, 0)


def layout_yaml(path, shift_x_mm=0.0):
    """The 2.2.16 tile geometry without the chip/channel wiring, every tile moved along x."""
    lay = PixelLayout.default(wiring=False)
    positions = lay.tile_positions.copy()
    positions[:, 2] += shift_x_mm
    path.write_text(yaml.safe_dump({
        "pixel_pitch": float(lay.pitch_mm),
        "tile_positions": {int(i): [float(v) for v in p] for i, p in zip(lay.tile_ids, positions)},
        "tile_orientations": {int(i): [int(v) for v in o] for i, o in zip(lay.tile_ids, lay.tile_orientations)}}))
    return path


def test_layout_is_the_one_used_to_read_and_write(tmp_path, capsys):
    source = write(tmp_path / "hits.h5", ROWS)
    same = layout_yaml(tmp_path / "same.yaml")
    shifted = layout_yaml(tmp_path / "shifted.yaml", LAYOUT.pitch_mm)
    # our hits sit at the pixel centres of the 2.2.16 geometry: read with it, not with a grid moved one pitch
    assert compare(capsys, source, source, "--layout", same, tmp_path / "a.json")[0] == 0
    assert main(["compare", str(source), str(source), "--layout", str(shifted)]) == 2
    assert "mismatched layout" in capsys.readouterr().err
    # without the chip/channel wiring a layout can neither read nor write packets
    packets = to_packets(tmp_path, source, "p.h5")
    capsys.readouterr()
    assert main(["compare", str(source), str(packets), "--layout", str(same)]) == 2
    assert "wiring" in capsys.readouterr().err
    assert main(["to-packets", str(source), str(tmp_path / "q.h5"), "--layout", str(same)]) == 2
    assert "wiring" in capsys.readouterr().err and not (tmp_path / "q.h5").exists()


# ---------------------------------------------------------------------------------------------- plots
def test_max_events_and_what_the_plots_draw(tmp_path, capsys):
    """--max-events N draws the first N events; the figures show every readout of both files (helpers.
    check_comparison_plots) and the residual histograms hold exactly the ΔADC and Δt built into ``ours``."""
    dadc = [1.0, -2.0, 0.0, 3.0, 0.5]
    dticks = [0, 1, -1, 0, 2]
    ours_rows = [r[:4] + (r[4] + d, r[5] + a) + r[6:] for r, a, d in zip(ROWS, dadc, dticks)]
    ref, ours = write(tmp_path / "ref.h5", ROWS), write(tmp_path / "ours.h5", ours_rows)
    loose = ["--tolerance-adc", "10", "--tolerance-time", "1"]
    assert main(["compare", str(ref), str(ours), "--plots", str(tmp_path / "plots"), "--max-events", "2", *loose]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["event_0.png", "event_2.png", "residuals.png"]
    assert main(["compare", str(ref), str(ours), "--plots", str(tmp_path / "all"), *loose]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["event_0.png", "event_2.png", "event_5.png",
                                                                   "residuals.png"]
    figures = check_comparison_plots(ref, ours, tmp_path / "plots", tmp_path / "again", max_events=2)
    for ax, values in zip(figures["residuals.png"].axes, (dadc, np.array(dticks) * 0.1)):
        counts, _ = np.histogram(values, bins=40)
        np.testing.assert_array_equal([p.get_height() for p in ax.patches], counts)


# ---------------------------------------------------------------------------------------------- run-reference
needs_simulator = pytest.mark.skipif(not simulator_available(), reason="simulator not available")


def run_reference(out, *extra):
    return main(["run-reference", "--out", str(out), *map(str, extra)])


def case_hits(out, case):
    with h5py.File(out / f"{case}_hits.h5") as f:
        return f["hits"][()]


@needs_shared
@needs_simulator
def test_reference_time_axis_shifts_the_fwd_cases_only(tmp_path, capsys):
    """--reference-time-axis evaluates the current on the differentiable reference's per-segment time axis (a shift
    of at most half a 0.1 us tick per segment, docs/deviations.md); the hard-mode cases do not use it."""
    for case, changes in (("mixed_trk0_fwd", True), ("test_segment_nd_njit", False)):
        run_reference(tmp_path / "true", "--case", case, "--no-plots", "--shared", SHARED)
        run_reference(tmp_path / "ref", "--case", case, "--no-plots", "--shared", SHARED, "--reference-time-axis")
        a, b = case_hits(tmp_path / "true", case), case_hits(tmp_path / "ref", case)
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a[["pixel_plane", "pixel_ix", "pixel_iy", "readout"]],
                                      b[["pixel_plane", "pixel_ix", "pixel_iy", "readout"]])
        shift = np.abs(a["t"] - b["t"]).max()
        if changes:
            assert 0 < shift <= 0.05 + 1e-9
        else:
            assert shift == 0 and np.array_equal(a["adc"], b["adc"])


@needs_shared
@needs_simulator
def test_run_reference_budget_plots_and_tolerances(tmp_path, capsys):
    """--memory-budget does not change the hits; --no-plots writes no PNG; the tolerances decide the exit code
    (test_segment_nd_njit: max |dADC| <= 1 count, mean |dt| <= 0.05 us, every readout matched; docs/parity.md)."""
    case = "test_segment_nd_njit"
    assert run_reference(tmp_path / "plots", "--case", case, "--shared", SHARED) == 1
    assert (tmp_path / "plots" / case / "residuals.png").exists()
    assert run_reference(tmp_path / "tiny", "--case", case, "--shared", SHARED, "--no-plots",
                         "--memory-budget", "1MB") == 1
    assert not (tmp_path / "tiny" / case).exists()
    a, b = case_hits(tmp_path / "plots", case), case_hits(tmp_path / "tiny", case)
    np.testing.assert_array_equal(a, b)
    assert run_reference(tmp_path / "loose", "--case", case, "--shared", SHARED, "--no-plots",
                         "--tolerance-adc", "1.0", "--tolerance-time", "0.05", "--tolerance-unmatched", "0") == 0
