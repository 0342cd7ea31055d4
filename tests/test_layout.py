"""Pixel layout: generated 2.2.16 geometry vs larnd-sim's YAML, plane borders, channel mapping."""

import numpy as np
import pytest

from sparsetpc.exceptions import GeometryError
from sparsetpc.layout import PixelLayout, from_larnd_pixel_id, to_larnd_pixel_id
from validation.run_reference import shared_data_dir

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data not found (set SPARSETPC_SHARED_DATA or "
                                                         "place it at <repo>/../shared/data)")
MODULE0_CENTERS = [[0.0, -21.8236, 0.0], [0.0, -21.8236, 0.0]]
MODULE0_DRIFT = 30.27225
#: larnd-sim consts.tile_map (hard-coded there for layout 2.2.16)
LARNDSIM_TILE_MAP = (((7, 5, 3, 1), (8, 6, 4, 2)), ((16, 14, 12, 10), (15, 13, 11, 9)))


@pytest.fixture(scope="module")
def yaml_layout():
    if SHARED is None:
        pytest.skip("shared data not found (set SPARSETPC_SHARED_DATA or place it at <repo>/../shared/data)")
    return PixelLayout.from_yaml(SHARED / "detector" / "multi_tile_layout-2.2.16.yaml")


def test_default_geometry():
    lay = PixelLayout.default()
    assert lay.pitch_cm == pytest.approx(0.4434, abs=1e-12)
    assert lay.n_tiles == 16 and lay.n_planes == 2
    assert lay.n_pixels == (140, 280) and lay.n_pixels_per_tile == (70, 70)
    assert lay.tile_map.tolist() == [list(map(list, p)) for p in LARNDSIM_TILE_MAP]
    assert lay.has_wiring                                   # built in (tests/test_builtin_wiring.py)
    assert not PixelLayout.default(wiring=False).has_wiring


@pytest.mark.parametrize("source", ["default", "yaml"])
def test_tpc_borders_module0(source, request):
    lay = PixelLayout.default() if source == "default" else request.getfixturevalue("yaml_layout")
    b = lay.tpc_borders(MODULE0_CENTERS, MODULE0_DRIFT)
    expected = np.array([[[-31.039, 31.039], [-83.8626, 40.2154], [-30.431, -0.15875]],
                         [[-31.039, 31.039], [-83.8626, 40.2154], [30.431, 0.15875]]])
    np.testing.assert_allclose(b, expected, rtol=0, atol=1e-9)
    # 140 x 280 pixels, but not exactly: a tile is 70 x 4.434 = 310.38 mm wide while tile centres are 310.4 mm
    # apart along x (plane 0.02 mm wider than 140 pitches) and 310.0 mm apart along y (plane 0.74 mm shorter
    # than 280 pitches); larnd-sim counts pixels from x0, y0 with one uniform pitch regardless
    assert lay.n_pixels == (140, 280)
    np.testing.assert_allclose(b[:, 0, 1] - b[:, 0, 0] - 140 * lay.pitch_cm, 0.002, atol=1e-9)
    np.testing.assert_allclose(b[:, 1, 1] - b[:, 1, 0] - 280 * lay.pitch_cm, -0.074, atol=1e-9)


def test_tpc_borders_use_centres_in_yaml_order():
    # detector-properties centres are in edep-sim order (x = drift): column 0 moves to z
    b = PixelLayout.default().tpc_borders([[5.0, 0.0, 2.0], [5.0, 0.0, 2.0]], MODULE0_DRIFT)
    np.testing.assert_allclose(b[0, 0], [-31.039 + 2.0, 31.039 + 2.0], atol=1e-9)
    np.testing.assert_allclose(b[0, 2], [-30.431 + 5.0, -0.15875 + 5.0], atol=1e-9)
    with pytest.raises(GeometryError, match="tpc_centers"):
        PixelLayout.default().tpc_borders([[0.0, 0.0, 0.0]], MODULE0_DRIFT)


@needs_shared
def test_tpc_borders_from_module0_yaml(yaml_layout):
    import yaml
    props = yaml.safe_load((SHARED / "detector" / "module0.yaml").read_text())
    b = yaml_layout.tpc_borders(props["tpc_centers"], props["drift_length"])
    np.testing.assert_allclose(b[1, 2], [30.431, 0.15875], atol=1e-9)
    np.testing.assert_allclose(b[0, 1], [-83.8626, 40.2154], atol=1e-9)


@needs_shared
def test_generated_default_equals_yaml_geometry(yaml_layout):
    lay = PixelLayout.default()
    assert lay.pitch_mm == yaml_layout.pitch_mm
    np.testing.assert_array_equal(lay.tile_ids, yaml_layout.tile_ids)
    np.testing.assert_array_equal(lay.tile_positions, yaml_layout.tile_positions)
    np.testing.assert_array_equal(lay.tile_orientations, yaml_layout.tile_orientations)
    assert lay.n_pixels_per_tile == yaml_layout.n_pixels_per_tile
    np.testing.assert_array_equal(lay.tile_map, yaml_layout.tile_map)
    assert yaml_layout.version == "2.2.16" and yaml_layout.has_wiring
    assert yaml_layout.tile_indeces[16] == (1, 2, 8)


def test_geometry_only_layout_raises_clear_error():
    lay = PixelLayout.default(wiring=False)
    with pytest.raises(GeometryError, match="--layout"):
        lay.pixel_to_channel(0, 10, 10)
    with pytest.raises(GeometryError, match="wiring"):
        lay.channel_to_pixel(1, 1, 11, 0)


@needs_shared
def test_chip_grid_rule_and_unrouted_channels(yaml_layout):
    """The regular part of the wiring: 10x10 chips of 7x7 pixels, one routing table shared by all chips."""
    cc = np.array(list(yaml_layout.chip_channel_to_position))
    ij = np.array(list(yaml_layout.chip_channel_to_position.values()))
    chip, channel = cc // 1000, cc % 1000
    assert len(cc) == 4900 and len(np.unique(chip)) == 100
    np.testing.assert_array_equal(chip, 11 + ij[:, 0] // 7 + 10 * (9 - ij[:, 1] // 7))
    unrouted = sorted(set(range(64)) - set(channel.tolist()))
    assert unrouted == [6, 7, 8, 9, 22, 23, 24, 25, 38, 39, 40, 54, 55, 56, 57]
    for ch in np.unique(channel):
        assert len({(i % 7, j % 7) for i, j in ij[channel == ch]}) == 1


@needs_shared
def test_every_pixel_round_trips(yaml_layout):
    lay = yaml_layout
    plane, ix, iy = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(140), np.arange(280), indexing="ij"))
    g, c, chip, ch = lay.pixel_to_channel(plane, ix, iy)
    connected = g >= 0
    # chips missing from tile_chip_to_io: 1 on tile 7, 15 on tile 15, 49 pixels each
    assert (~connected).sum() == 49 * 16
    keys = ((g * 1000 + c) * 256 + chip) * 64 + ch
    assert len(np.unique(keys[connected])) == connected.sum()
    p2, x2, y2 = lay.channel_to_pixel(g[connected], c[connected], chip[connected], ch[connected])
    np.testing.assert_array_equal(p2, plane[connected])
    np.testing.assert_array_equal(x2, ix[connected])
    np.testing.assert_array_equal(y2, iy[connected])
    assert set(np.unique(g[connected])) == {1, 2}
    assert (g[connected] == plane[connected] + 1).all()


@needs_shared
@pytest.mark.parametrize("tile", range(1, 17))
def test_yaml_channels_land_in_their_tile(yaml_layout, tile):
    """All 4900 chip/channel entries of a tile map to a pixel inside that tile, at the YAML position."""
    lay = yaml_layout
    chips = lay.tile_chip_to_io[tile]
    cc = np.array([k for k in lay.chip_channel_to_position if k // 1000 in chips])
    chip, ch = cc // 1000, cc % 1000
    io = np.array([chips[c] for c in chip])
    plane, ix, iy = lay.channel_to_pixel(io // 1000, io % 1000, chip, ch)
    assert (plane >= 0).all()
    t, li, lj = lay.local_position(plane, ix, iy)
    assert (t == tile).all()
    expected = np.array([lay.chip_channel_to_position[k] for k in cc])
    np.testing.assert_array_equal(np.stack([li, lj], 1), expected)
    # pixel centre inside the tile's square around its position (mm -> cm; y shifted by the TPC centre)
    borders = lay.tpc_borders(MODULE0_CENTERS, MODULE0_DRIFT)
    x, y = lay.pixel_center(borders, plane, ix, iy)
    row = int(np.flatnonzero(lay.tile_ids == tile)[0])
    tz, ty, tx = lay.tile_positions[row] / 10.0
    half = 35 * lay.pitch_cm
    assert (np.abs(x - tx) < half).all() and (np.abs(y - (ty - 21.8236)) < half).all()
    assert len(cc) == 49 * len(chips)


def test_unknown_channel_and_off_layout_pixel(yaml_layout):
    p, x, y = yaml_layout.channel_to_pixel([1, 9], [1, 1], [11, 11], [6, 0])   # unrouted channel, unknown io_group
    assert (p == -1).all() and (x == -1).all()
    with pytest.raises(GeometryError, match="outside the layout"):
        yaml_layout.pixel_to_channel(0, 140, 0)


def test_larnd_pixel_ids():
    ids = to_larnd_pixel_id([0, 1, 1], [3, 0, 139], [5, 279, 0])
    np.testing.assert_array_equal(ids, [[3, 5], [140, 279], [279, 0]])
    plane, ix, iy = from_larnd_pixel_id(ids.astype(float))
    np.testing.assert_array_equal(plane, [0, 1, 1])
    np.testing.assert_array_equal(ix, [3, 0, 139])
    np.testing.assert_array_equal(iy, [5, 279, 0])


def test_pixel_index_and_centre_convention():
    lay = PixelLayout.default()
    b = lay.tpc_borders(MODULE0_CENTERS, MODULE0_DRIFT)
    ix, iy = lay.pixel_index(b, [0, 1], [-31.039 + 1e-9, 31.039 - 0.01], [-83.8626 + 0.5, 40.2154 - 0.01])
    np.testing.assert_array_equal(ix, [0, 139])
    np.testing.assert_array_equal(iy, [1, 279])
    x, y = lay.pixel_center(b, [0], [0], [0])
    np.testing.assert_allclose([x[0], y[0]], [-31.039 + 0.2217, -83.8626 + 0.2217], atol=1e-12)


@pytest.mark.parametrize("text, match", [
    ("pixel_pitch: 4.4\n", "lacks"),
    ("- 1\n- 2\n", "mapping"),
    ("pixel_pitch: -1\ntile_positions: {1: [0, 0, 0]}\ntile_orientations: {1: [1, 1, 1]}\n", "positive"),
    ("pixel_pitch: 4\ntile_positions: {1: [0, 0, 0]}\ntile_orientations: {2: [1, 1, 1]}\n", "different tiles"),
    ("pixel_pitch: 4\ntile_positions: {1: [0, 0, 0]}\ntile_orientations: {1: [2, 1, 1]}\n", "±1"),
    ("pixel_pitch: 4\ntile_positions: {1: [0, 0, 0], 2: [0, 0, 10], 3: [0, 10, 0]}\n"
     "tile_orientations: {1: [1, 1, 1], 2: [1, 1, 1], 3: [1, 1, 1]}\n", "full grid"),
])
def test_bad_layout_yaml(tmp_path, text, match):
    path = tmp_path / "layout.yaml"
    path.write_text(text)
    with pytest.raises(GeometryError, match=match):
        PixelLayout.from_yaml(path)


def test_missing_layout_file(tmp_path):
    with pytest.raises(GeometryError, match="cannot read"):
        PixelLayout.from_yaml(tmp_path / "nope.yaml")
