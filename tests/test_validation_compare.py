"""Matching, residual statistics and the ``python -m validation compare`` command line."""
import json

import numpy as np
import pytest

from sparsetpc.hits import HIT_DTYPE
from sparsetpc.layout import PixelLayout
from validation.__main__ import main
from validation.compare import Tolerances, compare_tables, match_hits
from validation.readers import HitTable, write_sparsetpc_hits
from validation.run_reference import shared_data_dir
from helpers import check_comparison_plots

SHARED = shared_data_dir()
REASON = "shared data not found (set SPARSETPC_SHARED_DATA or place it at <repo>/../shared/data)"
needs_shared = pytest.mark.skipif(SHARED is None, reason=REASON)


def table(rows, pedestal=74.0, name="t"):
    h = np.zeros(len(rows), HIT_DTYPE)
    for k, (ev, plane, ix, iy, t, adc, slot) in enumerate(rows):
        h[k] = (ev, plane, ix, iy, 0.0, 0.0, t, adc, slot)
    return HitTable(hits=h, source=name, kind="sparsetpc", adc_pedestal=pedestal)


REF_ROWS = [(0, 0, 5, 5, 10.0, 90, 0), (0, 0, 5, 5, 14.0, 85, 1), (0, 1, 7, 9, 3.0, 100, 0), (2, 0, 1, 1, 50.0, 80, 0)]


def test_identical_tables_match_exactly():
    s = compare_tables(table(REF_ROWS), table(REF_ROWS))
    assert (s["matched"], s["ref_only"], s["ours_only"]) == (4, 0, 0)
    assert s["max_abs_dadc"] == 0 and s["mean_abs_dt"] == 0
    assert s["charge_ratio"] == {"0": 1.0, "2": 1.0}
    assert s["within_tolerance"]


def test_residuals_and_charge_ratio():
    ours = [list(r) for r in REF_ROWS]
    ours[0][5] += 2          # +2 ADC
    ours[2][4] += 0.3        # +0.3 µs
    s = compare_tables(table(REF_ROWS), table([tuple(r) for r in ours]), Tolerances(adc=0.6, time=0.1))
    assert s["matched"] == 4
    assert s["mean_dadc"] == pytest.approx(0.5) and s["max_abs_dadc"] == pytest.approx(2)
    assert s["rms_dadc"] == pytest.approx(1.0)
    assert s["mean_abs_dt"] == pytest.approx(0.075) and s["max_abs_dt"] == pytest.approx(0.3)
    # event 0: ref charge (16 + 11 + 26) = 53, ours 55
    assert s["charge_ratio"]["0"] == pytest.approx(55 / 53)
    assert s["within_tolerance"]
    s = compare_tables(table(REF_ROWS), table([tuple(r) for r in ours]), Tolerances(adc=0.4, time=0.1))
    assert not s["within_tolerance"] and "dADC" in s["failures"][0]


def test_unequal_readout_counts_pair_by_nearest_time():
    ours = [(0, 0, 5, 5, 14.1, 86, 0), (0, 1, 7, 9, 3.0, 100, 0), (2, 0, 1, 1, 50.0, 80, 0), (2, 0, 1, 2, 5.0, 90, 0)]
    m = match_hits(table(REF_ROWS).hits, table(ours).hits)
    pairs = sorted(zip(m.ref_index.tolist(), m.ours_index.tolist()))
    assert pairs == [(1, 0), (2, 1), (3, 2)]       # ref readout 1 (t = 14) pairs with ours at 14.1, not slot 0
    assert m.ref_only.tolist() == [0] and m.ours_only.tolist() == [3]
    s = compare_tables(table(REF_ROWS), table(ours))
    assert (s["pixels_both"], s["pixels_ref_only"], s["pixels_ours_only"]) == (3, 0, 1)
    assert s["unmatched_fraction"] == pytest.approx(2 / 8)
    assert not s["within_tolerance"]
    assert compare_tables(table(REF_ROWS), table(ours), Tolerances(adc=1, time=0.2, unmatched=0.3))["within_tolerance"]


def test_pedestals_enter_the_charge():
    s = compare_tables(table(REF_ROWS, pedestal=74.0), table(REF_ROWS, pedestal=74.3656))
    assert s["charge_ratio"]["0"] == pytest.approx((53 - 3 * 0.3656) / 53)


def write_table(path, rows):
    lay = PixelLayout.default()
    b = lay.tpc_borders([[0, -21.8236, 0]] * 2, 30.27225)
    h = table(rows).hits
    h["x"], h["y"] = lay.pixel_center(b, h["pixel_plane"], h["pixel_ix"], h["pixel_iy"])
    write_sparsetpc_hits(path, h, adc_pedestal=74.0)


def test_cli_exit_codes_json_and_plots(tmp_path, capsys):
    write_table(tmp_path / "ref.h5", REF_ROWS)
    write_table(tmp_path / "same.h5", REF_ROWS)
    shifted = [r[:5] + (r[5] + 1,) + r[6:] for r in REF_ROWS]
    write_table(tmp_path / "off.h5", shifted)
    out = tmp_path / "s.json"
    assert main(["compare", str(tmp_path / "ref.h5"), str(tmp_path / "same.h5"), "--json", str(out),
                 "--plots", str(tmp_path / "plots")]) == 0
    summary = json.loads(out.read_text())
    for key in ("matched", "ref_only", "ours_only", "mean_abs_dadc", "max_abs_dadc", "mean_abs_dt", "charge_ratio"):
        assert key in summary
    assert summary["matched"] == 4
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["event_0.png", "event_2.png", "residuals.png"]
    check_comparison_plots(tmp_path / "ref.h5", tmp_path / "same.h5", tmp_path / "plots", tmp_path / "redrawn")
    assert main(["compare", str(tmp_path / "ref.h5"), str(tmp_path / "off.h5")]) == 1
    assert main(["compare", str(tmp_path / "ref.h5"), str(tmp_path / "off.h5"), "--tolerance-adc", "1.0"]) == 0
    (tmp_path / "bad.h5").write_text("garbage")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "ref.h5"), str(tmp_path / "bad.h5")]) == 2
    assert "bad.h5" in capsys.readouterr().err


@needs_shared
def test_cli_reference_files(tmp_path, capsys):
    ref = SHARED / "reference"
    lay = str(SHARED / "detector" / "multi_tile_layout-2.2.16.yaml")
    packets = str(ref / "larndsim_packets" / "test_track0_larndsim_packets.h5")
    original = str(ref / "original" / "test_track0_nd_njit.npz")
    # the packets hold exactly the original's readouts on the channels larnd-sim writes
    assert main(["compare", original, packets, "--layout", lay, "--json", str(tmp_path / "a.json")]) == 0
    s = json.loads((tmp_path / "a.json").read_text())
    assert (s["matched"], s["ref_only"], s["ours_only"], s["max_abs_dadc"]) == (106, 0, 0, 0.0)
    assert s["max_abs_dt"] < 1e-9
    assert "16 readouts dropped" in capsys.readouterr().out
    # without the restriction the 16 unwritten readouts show up as ref-only
    assert main(["compare", original, packets, "--layout", lay, "--restrict", "no"]) == 1
    # without --layout the built-in 2.2.16 wiring reads the packets: the same comparison
    capsys.readouterr()
    assert main(["compare", original, packets, "--json", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text()) == s
    # the two reference models differ by ~1 ADC count (original counts the crossing tick twice)
    assert main(["compare", str(ref / "original" / "mixed_trk1_nd_njit.npz"), str(ref / "mixed_trk1_fwd.npz"),
                 "--json", str(tmp_path / "b.json")]) == 1
    s = json.loads((tmp_path / "b.json").read_text())
    assert s["matched"] == 32 and 0.9 < -s["mean_dadc"] < 1.7
