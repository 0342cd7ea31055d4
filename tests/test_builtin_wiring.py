"""Built-in LArPix wiring of layout 2.2.16: equal to larnd-sim's YAML; packets round trip without --layout."""
import numpy as np
import pytest

from sparsetpc import wiring_2_2_16
from sparsetpc.exceptions import GeometryError
from sparsetpc.hits import HIT_DTYPE
from sparsetpc.layout import PixelLayout
from sparsetpc.packets import CLOCK_US, larndsim_disabled, read_packets, write_packets

from helpers import SHARED, needs_shared


@needs_shared
def test_builtin_wiring_equals_yaml_entry_for_entry():
    yaml_layout = PixelLayout.from_yaml(SHARED / "detector" / "multi_tile_layout-2.2.16.yaml")
    built_in = PixelLayout.default()
    assert built_in.chip_channel_to_position == yaml_layout.chip_channel_to_position
    assert built_in.tile_chip_to_io == yaml_layout.tile_chip_to_io
    assert built_in.tile_indeces == yaml_layout.tile_indeces
    assert built_in.n_pixels_per_tile == yaml_layout.n_pixels_per_tile
    np.testing.assert_array_equal(built_in.tile_ids, yaml_layout.tile_ids)
    np.testing.assert_allclose(built_in.tile_positions, yaml_layout.tile_positions, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(built_in.tile_orientations, yaml_layout.tile_orientations)
    assert (built_in.version, built_in.tile_layout_version) == (yaml_layout.version, yaml_layout.tile_layout_version)
    # every pixel gets the same channel from both layouts
    plane, ix, iy = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(140), np.arange(280), indexing="ij"))
    for ours, theirs in zip(built_in.pixel_to_channel(plane, ix, iy), yaml_layout.pixel_to_channel(plane, ix, iy)):
        np.testing.assert_array_equal(ours, theirs)


def test_routing_table_is_a_permutation_of_49_channels():
    channels = [c for row in wiring_2_2_16.CHANNEL_GRID for c in row]
    assert len(channels) == 49 and len(set(channels)) == 49 and 0 <= min(channels) and max(channels) < 64
    positions = wiring_2_2_16.chip_channel_to_position()
    assert len(positions) == 100 * 49
    assert sorted(positions.values()) == [(i, j) for i in range(70) for j in range(70)]   # each pixel once
    for grid in wiring_2_2_16.TILE_IO_OFFSETS.values():
        rows = grid.split()
        assert len(rows) == 10 and all(len(r) == 10 and set(r) <= set("0123.") for r in rows)


def test_default_layout_channel_mapping_inverts_for_every_connected_pixel():
    layout = PixelLayout.default()
    assert layout.has_wiring
    plane, ix, iy = (a.ravel() for a in np.meshgrid(np.arange(2), np.arange(140), np.arange(280), indexing="ij"))
    group, io_channel, chip, channel = layout.pixel_to_channel(plane, ix, iy)
    connected = group >= 0
    chips_read_out = sum(len(chips) for chips in layout.tile_chip_to_io.values())
    assert int(connected.sum()) == chips_read_out * 49          # every read-out chip has its 49 pixels
    back = layout.channel_to_pixel(group[connected], io_channel[connected], chip[connected], channel[connected])
    for got, want in zip(back, (plane[connected], ix[connected], iy[connected])):
        np.testing.assert_array_equal(got, want)
    keys = set(zip(group[connected], io_channel[connected], chip[connected], channel[connected]))
    assert len(keys) == int(connected.sum())                    # no two pixels share a channel


def test_geometry_only_default_still_asks_for_the_wiring(tmp_path):
    with pytest.raises(GeometryError, match="wiring"):
        write_packets(tmp_path / "x.h5", np.zeros(1, HIT_DTYPE), PixelLayout.default(wiring=False))


def test_hits_packets_hits_round_trip_with_default_layout(tmp_path):
    layout = PixelLayout.default()
    borders = layout.tpc_borders([[0.0, -21.8236, 0.0]] * 2, 30.27225)
    rng = np.random.default_rng(7)
    n = 400
    hits = np.zeros(n, HIT_DTYPE)
    hits["event_id"] = rng.integers(0, 5, n)
    hits["pixel_plane"] = rng.integers(0, 2, n)
    hits["pixel_ix"] = rng.integers(0, 140, n)
    hits["pixel_iy"] = rng.integers(0, 280, n)
    hits["readout"] = np.arange(n)                  # distinct slots: (event, pixel) repeats keep their order
    hits["t"] = rng.integers(0, 5000, n) * CLOCK_US + 0.03        # [us]; floor to the 0.1 us tick
    hits["adc"] = rng.integers(0, 256, n) + 0.4
    hits["x"], hits["y"] = layout.pixel_center(borders, hits["pixel_plane"], hits["pixel_ix"], hits["pixel_iy"])
    summary = write_packets(tmp_path / "p.h5", hits, layout)
    group, _, chip, channel = layout.pixel_to_channel(hits["pixel_plane"], hits["pixel_ix"], hits["pixel_iy"])
    written = (group >= 0) & ~larndsim_disabled(chip, channel)
    assert summary.n_data_packets == int(written.sum()) > 300
    back = read_packets(tmp_path / "p.h5", layout, borders=borders).hits
    key = lambda h: sorted(zip(h["event_id"].tolist(), h["pixel_plane"].tolist(), h["pixel_ix"].tolist(),
                               h["pixel_iy"].tolist(), np.round(h["t"], 6).tolist(), h["adc"].tolist()))
    expected = hits[written].copy()
    expected["t"] = np.floor(expected["t"] / CLOCK_US + 1e-6) * CLOCK_US
    expected["adc"] = np.floor(expected["adc"])
    assert key(back) == key(expected)
    np.testing.assert_allclose(np.sort(back["x"]), np.sort(expected["x"]), atol=1e-12)
