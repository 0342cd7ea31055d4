"""Readers of the three hit formats: numbers against the reference files, time axes, clear errors."""
import json

import h5py
import numpy as np
import pytest

from sparsetpc.exceptions import InputFormatError
from sparsetpc.hits import HIT_DTYPE
from sparsetpc.layout import PixelLayout
from validation.readers import (PEDESTAL_INTEGER, TICK_STEP_DIFFERENTIABLE, TICK_STEP_ORIGINAL, detect_format,
                                read_hits, write_sparsetpc_hits)
from validation.run_reference import shared_data_dir

SHARED = shared_data_dir()
REASON = "shared data not found (set SPARSETPC_SHARED_DATA or place it at <repo>/../shared/data)"
needs_shared = pytest.mark.skipif(SHARED is None, reason=REASON)
ORIGINAL = ["test_segment", "test_track0", "mixed_trk0", "mixed_trk1", "mixed_trk4"]
FWD = ["test_segment", "mixed_trk0", "mixed_trk1", "mixed_trk4"]


@pytest.fixture(scope="module")
def layout():
    if SHARED is None:
        pytest.skip(REASON)
    return PixelLayout.from_yaml(SHARED / "detector" / "multi_tile_layout-2.2.16.yaml")


@needs_shared
@pytest.mark.parametrize("case", ORIGINAL)
def test_original_npz(case):
    path = SHARED / "reference" / "original" / f"{case}_nd_njit.npz"
    table = read_hits(path)
    o = np.load(path)
    assert table.kind == "reference-original" and table.adc_pedestal == 74.0
    h = table.hits
    assert len(h) == len(o["hits_xyzt_adc"]) == len(o["hits_index"])
    # same readouts as the file's own hit list (x, y, adc), in pixel order
    np.testing.assert_allclose(np.c_[h["x"], h["y"], h["adc"]], o["hits_xyzt_adc"][:, [0, 1, 4]], atol=1e-9)
    np.testing.assert_array_equal(h["readout"], o["hits_index"][:, 1])
    # the original's ticks are linspace(0, 600, 6004)[ic]: converted times are whole 0.1 µs ticks
    ic = h["t"] / 0.1
    np.testing.assert_allclose(ic, np.round(ic), atol=1e-9)
    raw = read_hits(path, raw_time=True).hits
    np.testing.assert_allclose(raw["t"], h["t"] * TICK_STEP_ORIGINAL / 0.1, rtol=1e-12)
    assert json.loads(str(o["meta"]))["time_ticks_step"] == pytest.approx(TICK_STEP_ORIGINAL, rel=1e-12)


@needs_shared
@pytest.mark.parametrize("case", FWD)
def test_differentiable_npz(case):
    path = SHARED / "reference" / f"{case}_fwd.npz"
    table = read_hits(path)
    f = np.load(path)
    assert table.kind == "reference-differentiable"
    assert table.adc_pedestal == pytest.approx(74.3656, abs=1e-4)
    h = table.hits
    hx = f["hits_xyzt_adc"]
    assert len(h) == len(hx)
    np.testing.assert_allclose(np.c_[h["x"], h["y"], h["adc"]], hx[:, [0, 1, 4]], atol=1e-6)
    # hits_xyzt_adc's t column = (drift_length/vdrift_static - tick)·(-1)^(plane+1) with the raw tick
    raw = read_hits(path, raw_time=True).hits
    sign = np.where(raw["pixel_plane"] == 0, -1.0, 1.0)
    np.testing.assert_allclose(hx[:, 3], (30.27225 / 0.1587 - raw["t"]) * sign, atol=1e-6)
    np.testing.assert_allclose(h["t"], raw["t"] / TICK_STEP_DIFFERENTIABLE * 0.1, rtol=1e-12)


@needs_shared
@pytest.mark.parametrize("case", ["mixed_trk0", "mixed_trk1", "mixed_trk4"])
def test_time_axes_agree_between_models(case):
    """True times: the interpolated crossing of the differentiable model lies just before the original's tick."""
    orig = read_hits(SHARED / "reference" / "original" / f"{case}_nd_njit.npz").hits
    fwd = read_hits(SHARED / "reference" / f"{case}_fwd.npz").hits
    key = lambda h: list(zip(h["pixel_plane"], h["pixel_ix"], h["pixel_iy"], h["readout"]))
    common = set(key(orig)) & set(key(fwd))
    assert len(common) >= 0.9 * len(orig)
    t_o = dict(zip(key(orig), orig["t"]))
    t_f = dict(zip(key(fwd), fwd["t"]))
    dt = np.array([t_f[k] - t_o[k] for k in common])
    assert -0.15 < dt.min() and dt.max() < 0.0


@needs_shared
@pytest.mark.parametrize("case", ["test_track0", "mixed_trk0"])
def test_packets_through_read_hits(case, layout):
    table = read_hits(SHARED / "reference" / "larndsim_packets" / f"{case}_larndsim_packets.h5", layout=layout)
    assert table.kind == "packets" and table.adc_pedestal == PEDESTAL_INTEGER
    orig = read_hits(SHARED / "reference" / "original" / f"{case}_nd_njit.npz").hits
    cols = ["event_id", "pixel_plane", "pixel_ix", "pixel_iy", "readout", "adc"]
    have = {tuple(r) + (round(t, 6),) for r, t in zip(orig[cols].tolist(), orig["t"])}
    assert all(tuple(r) + (round(t, 6),) in have for r, t in zip(table.hits[cols].tolist(), table.hits["t"]))
    with pytest.raises(InputFormatError, match="wiring"):
        read_hits(SHARED / "reference" / "larndsim_packets" / f"{case}_larndsim_packets.h5",
                  layout=PixelLayout.default(wiring=False))
    # the default layout has the 2.2.16 wiring built in: same readouts as with the YAML
    default = read_hits(SHARED / "reference" / "larndsim_packets" / f"{case}_larndsim_packets.h5")
    assert default.hits.tolist() == table.hits.tolist()


def sample_hits(n=4):
    lay = PixelLayout.default()
    b = lay.tpc_borders([[0, -21.8236, 0]] * 2, 30.27225)
    h = np.zeros(n, HIT_DTYPE)
    h["event_id"] = [0, 0, 1, 1][:n]
    h["pixel_plane"] = [0, 1, 0, 1][:n]
    h["pixel_ix"] = [5, 6, 7, 139][:n]
    h["pixel_iy"] = [10, 11, 279, 0][:n]
    h["x"], h["y"] = lay.pixel_center(b, h["pixel_plane"], h["pixel_ix"], h["pixel_iy"])
    h["t"] = [1.0, 2.5, 3.0, 4.2][:n]
    h["adc"] = [80.4, 90.0, 100.5, 76.0][:n]
    return h


def test_sparsetpc_hits_round_trip(tmp_path):
    path = tmp_path / "ours.h5"
    write_sparsetpc_hits(path, sample_hits(), adc_pedestal=74.3656, mode="relaxed")
    assert detect_format(path) == "sparsetpc"
    table = read_hits(path)
    assert table.kind == "sparsetpc" and table.adc_pedestal == pytest.approx(74.3656)
    np.testing.assert_array_equal(table.hits, sample_hits())
    with h5py.File(path, "r") as f:
        assert "us" in f["hits"].attrs["t"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.h5"]


def test_pedestal_guess_without_attribute(tmp_path):
    h = sample_hits()
    h["adc"] = np.round(h["adc"])
    with h5py.File(tmp_path / "int.h5", "w") as f:
        f.create_dataset("hits", data=h)
    assert read_hits(tmp_path / "int.h5").adc_pedestal == 74.0


def test_missing_datasets_and_fields(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("segments", data=np.zeros(3))
    with pytest.raises(InputFormatError, match=r"other\.h5.*neither 'packets'.*nor 'hits'.*segments"):
        read_hits(tmp_path / "other.h5")
    with h5py.File(tmp_path / "fields.h5", "w") as f:
        f.create_dataset("hits", data=np.zeros(2, dtype=[("x", "f8"), ("adc", "f8")]))
    with pytest.raises(InputFormatError, match=r"fields\.h5.*lacks field.*event_id"):
        read_hits(tmp_path / "fields.h5")
    np.savez(tmp_path / "ref.npz", pixel_ids=np.zeros((1, 2)), adc=np.zeros((1, 10)))
    with pytest.raises(InputFormatError, match=r"ref\.npz.*lacks array.*ticks"):
        read_hits(tmp_path / "ref.npz")
    np.savez(tmp_path / "shape.npz", pixel_ids=np.zeros((2, 2)), adc=np.zeros((1, 10)), ticks=np.zeros((1, 10)))
    with pytest.raises(InputFormatError, match="inconsistent shapes"):
        read_hits(tmp_path / "shape.npz")
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(InputFormatError, match="not an HDF5 file nor an npz"):
        read_hits(tmp_path / "junk.txt")
    with pytest.raises(InputFormatError, match="no such file"):
        read_hits(tmp_path / "absent.h5")


def test_empty_event(tmp_path):
    write_sparsetpc_hits(tmp_path / "empty.h5", np.zeros(0, HIT_DTYPE))
    with pytest.raises(InputFormatError, match=r"empty\.h5.*empty event"):
        read_hits(tmp_path / "empty.h5")
    assert len(read_hits(tmp_path / "empty.h5", allow_empty=True)) == 0
    np.savez(tmp_path / "ped.npz", pixel_ids=np.array([[3, 4]]), adc=np.full((1, 10), 74.3656),
             ticks=np.zeros((1, 10)), adc_pedestal=np.float64(74.3656))
    with pytest.raises(InputFormatError, match="empty event"):
        read_hits(tmp_path / "ped.npz")


def test_mismatched_layout(tmp_path):
    h = sample_hits()
    h["x"][1] += 0.3            # not the centre of its pixel in this layout
    write_sparsetpc_hits(tmp_path / "shifted.h5", h)
    with pytest.raises(InputFormatError, match=r"shifted\.h5.*mismatched layout.*pixel \(1, 6, 11\)"):
        read_hits(tmp_path / "shifted.h5")
    h = sample_hits()
    h["pixel_ix"][0] = 150
    write_sparsetpc_hits(tmp_path / "outside.h5", h)
    with pytest.raises(InputFormatError, match="mismatched layout.*outside 2 planes of 140x280"):
        read_hits(tmp_path / "outside.h5")
    np.savez(tmp_path / "bigid.npz", pixel_ids=np.array([[3, 400]]), adc=np.full((1, 10), 90.0),
             ticks=np.ones((1, 10)), adc_pedestal=np.float64(74.0))
    with pytest.raises(InputFormatError, match="mismatched layout"):
        read_hits(tmp_path / "bigid.npz")


def test_time_unit_checked(tmp_path):
    with h5py.File(tmp_path / "ns.h5", "w") as f:
        d = f.create_dataset("hits", data=sample_hits())
        d.attrs["t"] = "ns"
    with pytest.raises(InputFormatError, match="'ns'"):
        read_hits(tmp_path / "ns.h5")
