"""LArPix pixel layout: tile geometry, pixel grid and the chip/channel wiring.

The layout is larnd-sim's ``multi_tile_layout-*.yaml`` (lengths in **mm**, tile positions ordered
[drift, y, x]).  :meth:`PixelLayout.default` is layout 2.2.16 (module 0) built into the package: its geometry
is generated from a handful of numbers and its chip/channel wiring comes from the compact tables of
:mod:`sparsetpc.wiring_2_2_16`, so packets can be written and read without the YAML.  Other layouts are read
with :meth:`PixelLayout.from_yaml` (``--layout`` on the command lines).

Pixel convention used everywhere in sparsetpc: a pixel is ``(plane, ix, iy)`` with
``ix = floor((x - x0) / p)`` in ``[0, nx)``, ``iy = floor((y - y0) / p)`` in ``[0, ny)`` and centre
``x0 + (ix + 0.5) p``, where ``[x0, x1], [y0, y1]`` are the plane's borders (:meth:`PixelLayout.tpc_borders`).
larnd-sim's pixel id is the pair ``(ix + nx * plane, iy)``.

Wiring (how larnd-sim's ``fee.export_to_hdf5`` names a pixel's readout channel):

* the plane's tiles form a grid of ``n_pixels_per_tile`` blocks; the tile covering pixel ``(ix, iy)`` is the
  one at grid cell ``(ix // 70, iy // 70)``, cells ranked by the tile centres (:attr:`PixelLayout.tile_map`;
  for 2.2.16 this is larnd-sim's hard-coded ``((7,5,3,1),(8,6,4,2)),((16,14,12,10),(15,13,11,9))``);
* inside the tile the local index ``(ix % 70, iy % 70)`` is mirrored along x when the tile's x orientation
  is negative and along y when its y orientation is negative;
* the mirrored local index is looked up in ``chip_channel_to_position`` (``chip*1000 + channel -> [i, j]``)
  and the chip in ``tile_chip_to_io[tile]`` (``io_group*1000 + io_channel``).  Chips absent from
  ``tile_chip_to_io`` are not read out.

How the 2.2.16 wiring is built in: ``chip_channel_to_position`` follows a rule (chip
``11 + i//7 + 10*(9 - j//7)`` holds the 7×7 block of pixel (i, j), and every chip routes its 49 connected
channels to the same places in its block; 15 of the 64 channels are not routed), so it is stored as that
49-entry routing table.  ``tile_chip_to_io`` is irregular hardware configuration (chips missing: tile 7 lacks
chip 12, tile 15 lacks 15 chips; the chips of tiles 4, 6, 7, 15 and 16 spread over 2 or 3 io channels instead
of 4), so it is stored explicitly, one character per chip.  ``tests/test_builtin_wiring.py`` checks both
against the YAML entry for entry.  ``PixelLayout.default(wiring=False)`` gives the geometry alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .exceptions import GeometryError

MM_TO_CM = 0.1

#: Numbers the 2.2.16 (module-0) geometry is generated from.
_DEFAULT_PITCH_MM = 4.434
_DEFAULT_PIXELS_PER_TILE = (70, 70)
_DEFAULT_ANODE_DRIFT_MM = 304.31          # |drift coordinate| of the two anode planes
_DEFAULT_TILE_X_MM = (-155.2, 155.2)      # tile-centre columns
_DEFAULT_TILE_Y_MM = (465.2, 155.2, -155.2, -465.2)  # tile-centre rows, in tile-number order

#: Message of every error raised when the wiring is needed but the layout has none.
_NEEDS_WIRING = ("give a layout with chip_channel_to_position and tile_chip_to_io (larnd-sim's layout file, "
                 "e.g. --layout multi_tile_layout-2.2.16.yaml, PixelLayout.from_yaml), or use "
                 "PixelLayout.default(), which has the 2.2.16 wiring built in")


def _default_tiles() -> Tuple[np.ndarray, np.ndarray]:
    """Tile positions [16, 3] (mm, [drift, y, x]) and orientations [16, 3] of layout 2.2.16.

    Tiles 1-8 sit on the anode at drift = -304.31 mm, tiles 9-16 on the one at +304.31 mm.  On each anode the
    tiles are numbered row by row from +y to -y, two per row; on the first anode the odd tile of a row is at
    -x, on the second at +x.  Orientations: drift axis +1 / -1 (pointing into the drift volume), y axis
    alternating -1, +1 along the numbering, x axis +1/-1 alternating (first anode) or -1/+1 (second anode).
    """
    positions, orientations = [], []
    for side, drift_sign in enumerate((-1.0, 1.0)):
        for row_y in _DEFAULT_TILE_Y_MM:
            for k in range(2):
                # first anode: -x then +x; second anode: +x then -x
                x = _DEFAULT_TILE_X_MM[k] if side == 0 else _DEFAULT_TILE_X_MM[1 - k]
                positions.append([drift_sign * _DEFAULT_ANODE_DRIFT_MM, row_y, x])
                orient_y = -1 if k == 0 else 1
                orient_x = (1 if k == 0 else -1) if side == 0 else (-1 if k == 0 else 1)
                orientations.append([-int(drift_sign), orient_y, orient_x])
    return np.asarray(positions, dtype=np.float64), np.asarray(orientations, dtype=np.int64)


@dataclass(eq=False)
class PixelLayout:
    """A LArPix multi-tile layout.

    ``pitch_mm``: pixel pitch [mm] (``pitch_cm`` in cm).  ``tile_ids`` [T] tile numbers (YAML keys, 1-based);
    ``tile_positions`` [T, 3] tile centres in mm, order [drift, y, x]; ``tile_orientations`` [T, 3] ±1 per axis;
    ``tile_indeces``: tile -> [module, anode, tile-in-anode] as in the YAML (None for the default).
    ``chip_channel_to_position``: chip*1000+channel -> (i, j) inside a tile; ``tile_chip_to_io``:
    tile -> chip -> io_group*1000+io_channel (both None when the layout has no wiring).
    """

    pitch_mm: float
    tile_ids: np.ndarray
    tile_positions: np.ndarray
    tile_orientations: np.ndarray
    n_pixels_per_tile: Tuple[int, int] = _DEFAULT_PIXELS_PER_TILE
    tile_indeces: Optional[Dict[int, Tuple[int, int, int]]] = None
    chip_channel_to_position: Optional[Dict[int, Tuple[int, int]]] = None
    tile_chip_to_io: Optional[Dict[int, Dict[int, int]]] = None
    version: Optional[str] = None
    tile_layout_version: Optional[str] = None
    source: str = "default"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.tile_ids = np.asarray(self.tile_ids, dtype=np.int64)
        self.tile_positions = np.asarray(self.tile_positions, dtype=np.float64)
        self.tile_orientations = np.asarray(self.tile_orientations, dtype=np.int64)
        n = len(self.tile_ids)
        if n == 0:
            raise GeometryError(f"{self.source}: layout has no tiles")
        if self.tile_positions.shape != (n, 3) or self.tile_orientations.shape != (n, 3):
            raise GeometryError(f"{self.source}: tile_positions/tile_orientations must be [{n}, 3], got "
                                f"{self.tile_positions.shape} and {self.tile_orientations.shape}")
        if not np.isin(self.tile_orientations, (-1, 1)).all():
            raise GeometryError(f"{self.source}: tile_orientations must be ±1")
        if not (np.isfinite(self.pitch_mm) and self.pitch_mm > 0):
            raise GeometryError(f"{self.source}: pixel_pitch must be a positive length in mm, got {self.pitch_mm}")
        if len(np.unique(self.tile_ids)) != n:
            raise GeometryError(f"{self.source}: duplicate tile ids")
        order = np.argsort(self.tile_ids, kind="stable")     # rows sorted by tile id
        self.tile_ids, self.tile_positions, self.tile_orientations = (
            self.tile_ids[order], self.tile_positions[order], self.tile_orientations[order])
        self.n_pixels_per_tile = tuple(int(v) for v in self.n_pixels_per_tile)
        self._check_grid()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls, wiring: bool = True) -> "PixelLayout":
        """Layout 2.2.16 (module 0): generated geometry and the built-in chip/channel wiring
        (:mod:`sparsetpc.wiring_2_2_16`); ``wiring=False`` leaves the wiring out (geometry only)."""
        from . import wiring_2_2_16
        positions, orientations = _default_tiles()
        tile_ids = np.arange(1, len(positions) + 1)
        if not wiring:
            return cls(pitch_mm=_DEFAULT_PITCH_MM, tile_ids=tile_ids, tile_positions=positions,
                       tile_orientations=orientations, n_pixels_per_tile=_DEFAULT_PIXELS_PER_TILE,
                       version="2.2.16 (generated geometry)", source="PixelLayout.default(wiring=False)")
        return cls(pitch_mm=_DEFAULT_PITCH_MM, tile_ids=tile_ids, tile_positions=positions,
                   tile_orientations=orientations, n_pixels_per_tile=_DEFAULT_PIXELS_PER_TILE,
                   tile_indeces=wiring_2_2_16.tile_indeces(),
                   chip_channel_to_position=wiring_2_2_16.chip_channel_to_position(),
                   tile_chip_to_io=wiring_2_2_16.tile_chip_to_io(), version="2.2.16", tile_layout_version="2.4.0",
                   source="PixelLayout.default()")

    @classmethod
    def from_yaml(cls, path) -> "PixelLayout":
        """Read larnd-sim's ``multi_tile_layout-*.yaml``."""
        import yaml
        path = Path(path)
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)      # the C loader is ~10x faster when present
        try:
            data = yaml.load(path.read_text(), Loader=loader)
        except (OSError, yaml.YAMLError) as error:
            raise GeometryError(f"{path}: cannot read pixel layout ({error})") from error
        if not isinstance(data, dict):
            raise GeometryError(f"{path}: pixel layout must be a YAML mapping")
        missing = [k for k in ("pixel_pitch", "tile_positions", "tile_orientations") if k not in data]
        if missing:
            raise GeometryError(f"{path}: pixel layout lacks {', '.join(missing)}")
        positions = data["tile_positions"]
        orientations = data["tile_orientations"]
        if not isinstance(positions, dict) or not isinstance(orientations, dict):
            raise GeometryError(f"{path}: tile_positions and tile_orientations must map tile id -> [drift, y, x]")
        tile_ids = sorted(int(k) for k in positions)
        if sorted(int(k) for k in orientations) != tile_ids:
            raise GeometryError(f"{path}: tile_positions and tile_orientations name different tiles")
        pos = np.array([positions[k] for k in sorted(positions, key=int)], dtype=np.float64)
        ori = np.array([orientations[k] for k in sorted(orientations, key=int)], dtype=np.int64)

        cc2pos = data.get("chip_channel_to_position")
        per_tile = _DEFAULT_PIXELS_PER_TILE
        if cc2pos is not None:
            cc2pos = {int(k): (int(v[0]), int(v[1])) for k, v in cc2pos.items()}
            ij = np.array(list(cc2pos.values()), dtype=np.int64)
            if ij.size == 0 or ij.min() < 0:
                raise GeometryError(f"{path}: chip_channel_to_position is empty or has negative positions")
            # larnd-sim counts the distinct positions per axis
            per_tile = (len(np.unique(ij[:, 0])), len(np.unique(ij[:, 1])))
            if ij[:, 0].max() + 1 != per_tile[0] or ij[:, 1].max() + 1 != per_tile[1]:
                raise GeometryError(f"{path}: chip_channel_to_position positions are not a full "
                                    f"{per_tile[0]}x{per_tile[1]} grid")
            if len({tuple(v) for v in ij.tolist()}) != len(ij):
                raise GeometryError(f"{path}: chip_channel_to_position maps two channels to the same pixel")
        t2io = data.get("tile_chip_to_io")
        if t2io is not None:
            t2io = {int(t): {int(c): int(io) for c, io in chips.items()} for t, chips in t2io.items()}
            unknown = sorted(set(t2io) - set(tile_ids))
            if unknown:
                raise GeometryError(f"{path}: tile_chip_to_io names tiles {unknown} that have no position")
        indeces = data.get("tile_indeces")
        if indeces is not None:
            indeces = {int(k): tuple(int(x) for x in v) for k, v in indeces.items()}
        return cls(pitch_mm=float(data["pixel_pitch"]), tile_ids=np.array(tile_ids), tile_positions=pos,
                   tile_orientations=ori, n_pixels_per_tile=per_tile, tile_indeces=indeces,
                   chip_channel_to_position=cc2pos, tile_chip_to_io=t2io,
                   version=None if data.get("multitile_layout_version") is None else str(data["multitile_layout_version"]),
                   tile_layout_version=None if data.get("tile_layout_version") is None else str(data["tile_layout_version"]),
                   source=str(path))

    # ------------------------------------------------------------------ geometry
    @property
    def pitch_cm(self) -> float:
        return self.pitch_mm * MM_TO_CM

    @property
    def has_wiring(self) -> bool:
        return self.chip_channel_to_position is not None and self.tile_chip_to_io is not None

    @property
    def n_tiles(self) -> int:
        return len(self.tile_ids)

    @property
    def anode_drift_cm(self) -> np.ndarray:
        """Drift coordinate [cm] of each pixel plane's anode, ascending (plane index order, as larnd-sim)."""
        return np.unique(self.tile_positions[:, 0]) * MM_TO_CM

    @property
    def n_planes(self) -> int:
        return len(self.anode_drift_cm)

    def tile_plane(self) -> np.ndarray:
        """Plane index of every tile (row of ``tile_ids``)."""
        return np.searchsorted(np.unique(self.tile_positions[:, 0]), self.tile_positions[:, 0])

    def _check_grid(self) -> None:
        planes = self.tile_plane()
        shapes = set()
        for p in range(self.n_planes):
            sel = planes == p
            xs = np.unique(self.tile_positions[sel, 2])
            ys = np.unique(self.tile_positions[sel, 1])
            if len(xs) * len(ys) != sel.sum():
                raise GeometryError(f"{self.source}: the tiles of plane {p} do not form a full grid "
                                    f"({len(xs)} columns x {len(ys)} rows for {int(sel.sum())} tiles)")
            shapes.add((len(xs), len(ys)))
        if len(shapes) != 1:
            raise GeometryError(f"{self.source}: pixel planes have different tile grids {sorted(shapes)}")

    @property
    def tiles_per_plane(self) -> Tuple[int, int]:
        """Tile grid (columns along x, rows along y) of one plane."""
        sel = self.tile_plane() == 0
        return len(np.unique(self.tile_positions[sel, 2])), len(np.unique(self.tile_positions[sel, 1]))

    @property
    def n_pixels(self) -> Tuple[int, int]:
        """Pixels per plane along (x, y): (140, 280) for 2.2.16."""
        nx, ny = self.tiles_per_plane
        return nx * self.n_pixels_per_tile[0], ny * self.n_pixels_per_tile[1]

    @property
    def tile_map(self) -> np.ndarray:
        """Tile id at each (plane, tile column along x, tile row along y), columns/rows by ascending centre."""
        if "tile_map" not in self._cache:
            nx, ny = self.tiles_per_plane
            out = np.zeros((self.n_planes, nx, ny), dtype=np.int64)
            planes = self.tile_plane()
            for p in range(self.n_planes):
                sel = np.flatnonzero(planes == p)
                xs = np.unique(self.tile_positions[sel, 2])
                ys = np.unique(self.tile_positions[sel, 1])
                for t in sel:
                    out[p, np.searchsorted(xs, self.tile_positions[t, 2]),
                        np.searchsorted(ys, self.tile_positions[t, 1])] = self.tile_ids[t]
            self._cache["tile_map"] = out
        return self._cache["tile_map"]

    def tpc_borders(self, tpc_centers_cm, drift_length_cm: float, swap_xz: bool = True) -> np.ndarray:
        """Borders [n_planes, 3, 2] = [[x0, x1], [y0, y1], [z_anode, z_cathode]] in cm (z = drift axis).

        Follows larnd-sim ``consts.load_detector_properties``: ``tpc_centers_cm`` as written in the detector
        properties YAML (edep-sim order, x = drift; columns 0 and 2 are exchanged unless ``swap_xz=False``),
        one centre per plane in ascending-anode order.  x/y borders: extreme tile centres ± half a tile
        (``n_pixels_per_tile * pitch / 2``) plus the centre; z: from the anode to anode + drift_length
        times the drift orientation of the plane's first tile.
        """
        centers = np.array(tpc_centers_cm, dtype=np.float64, ndmin=2)
        if centers.shape[1] != 3:
            raise GeometryError(f"tpc_centers must have 3 columns, got shape {centers.shape}")
        if swap_xz:
            centers = centers[:, [2, 1, 0]]
        if len(centers) < self.n_planes:
            raise GeometryError(f"{self.n_planes} pixel planes in the layout but only {len(centers)} tpc_centers")
        if not drift_length_cm > 0:
            raise GeometryError(f"drift_length must be positive, got {drift_length_cm}")
        half_x = self.n_pixels_per_tile[0] * self.pitch_cm / 2.0
        half_y = self.n_pixels_per_tile[1] * self.pitch_cm / 2.0
        pos = self.tile_positions * MM_TO_CM
        anodes = np.unique(pos[:, 0])
        borders = np.zeros((len(anodes), 3, 2))
        for p, anode in enumerate(anodes):
            sel = pos[:, 0] == anode
            tiles, orient = pos[sel], self.tile_orientations[sel]
            c = centers[p]
            borders[p, 0] = tiles[:, 2].min() - half_x + c[0], tiles[:, 2].max() + half_x + c[0]
            borders[p, 1] = tiles[:, 1].min() - half_y + c[1], tiles[:, 1].max() + half_y + c[1]
            borders[p, 2] = tiles[:, 0].min() + c[2], tiles[:, 0].max() + drift_length_cm * orient[0, 0] + c[2]
        return borders

    # ------------------------------------------------------------------ wiring
    def require_wiring(self, what: str = "this operation") -> None:
        if not self.has_wiring:
            raise GeometryError(f"{what} needs the LArPix chip/channel wiring, which layout {self.source} lacks: "
                                + _NEEDS_WIRING)

    def _tables(self):
        """Lookup arrays of the wiring (built once)."""
        if "tables" in self._cache:
            return self._cache["tables"]
        self.require_wiring("the channel mapping")
        npx, npy = self.n_pixels_per_tile
        pos_to_cc = np.full((npx, npy), -1, dtype=np.int64)          # local (i, j) -> chip*1000+channel
        cc_to_pos = np.full((256, 1000, 2), -1, dtype=np.int64)      # chip, channel -> (i, j)
        for cc, (i, j) in self.chip_channel_to_position.items():
            chip, channel = divmod(int(cc), 1000)
            if not (0 <= chip < 256 and 0 <= channel < 1000):
                raise GeometryError(f"{self.source}: chip_channel_to_position key {cc} is not chip*1000+channel")
            pos_to_cc[i, j] = cc
            cc_to_pos[chip, channel] = (i, j)
        tile_row = {int(t): r for r, t in enumerate(self.tile_ids)}
        tile_chip_io = np.full((self.n_tiles, 256), -1, dtype=np.int64)  # row of tile_ids, chip -> io value
        keys, rows = [], []
        for tile, chips in self.tile_chip_to_io.items():
            for chip, io in chips.items():
                tile_chip_io[tile_row[tile], chip] = io
                keys.append(io * 256 + chip)
                rows.append(tile_row[tile])
        keys = np.asarray(keys, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], rows[order]
        if len(np.unique(keys)) != len(keys):
            raise GeometryError(f"{self.source}: tile_chip_to_io gives the same (io_group, io_channel, chip) to two tiles")
        # (plane, tile column, tile row) of every tile row
        tmap = self.tile_map
        where = np.zeros((self.n_tiles, 3), dtype=np.int64)
        for p, tx, ty in np.ndindex(tmap.shape):
            where[tile_row[int(tmap[p, tx, ty])]] = (p, tx, ty)
        tables = dict(pos_to_cc=pos_to_cc, cc_to_pos=cc_to_pos, tile_chip_io=tile_chip_io, io_keys=keys,
                      io_rows=rows, tile_where=where, tile_row=tile_row)
        self._cache["tables"] = tables
        return tables

    def _tile_rows(self, plane, ix, iy):
        """Row of ``tile_ids`` of the tile holding each pixel (vectorised)."""
        npx, npy = self.n_pixels_per_tile
        return np.searchsorted(self.tile_ids, self.tile_map[plane, ix // npx, iy // npy])

    def _check_pixels(self, plane, ix, iy):
        plane, ix, iy = (np.asarray(v, dtype=np.int64) for v in (plane, ix, iy))
        nx, ny = self.n_pixels
        bad = (plane < 0) | (plane >= self.n_planes) | (ix < 0) | (ix >= nx) | (iy < 0) | (iy >= ny)
        if bad.any():
            k = int(np.flatnonzero(bad.ravel())[0])
            raise GeometryError(f"pixel (plane, ix, iy) = ({plane.ravel()[k]}, {ix.ravel()[k]}, {iy.ravel()[k]}) "
                                f"is outside the layout ({self.n_planes} planes of {nx}x{ny} pixels)")
        return np.broadcast_arrays(plane, ix, iy)

    def pixel_to_channel(self, plane, ix, iy):
        """(io_group, io_channel, chip_id, channel_id) of pixels, as larnd-sim's packet writer names them.

        Returns four int64 arrays; all four are -1 where the pixel's chip is not read out (absent from
        ``tile_chip_to_io``).  Raises :class:`GeometryError` without wiring or for pixels off the layout.
        """
        tables = self._tables()
        plane, ix, iy = self._check_pixels(plane, ix, iy)
        npx, npy = self.n_pixels_per_tile
        rows = self._tile_rows(plane, ix, iy)
        orient = self.tile_orientations[rows]
        li, lj = ix % npx, iy % npy
        li = np.where(orient[..., 2] < 0, npx - 1 - li, li)
        lj = np.where(orient[..., 1] < 0, npy - 1 - lj, lj)
        cc = tables["pos_to_cc"][li, lj]
        chip = cc // 1000
        channel = cc % 1000
        io = np.where(cc >= 0, tables["tile_chip_io"][rows, np.clip(chip, 0, 255)], -1)
        ok = io >= 0
        io_group = np.where(ok, io // 1000, -1)
        io_channel = np.where(ok, io % 1000, -1)
        return io_group, io_channel, np.where(ok, chip, -1), np.where(ok, channel, -1)

    def channel_to_pixel(self, io_group, io_channel, chip_id, channel_id):
        """Inverse of :meth:`pixel_to_channel`: (plane, ix, iy) int64 arrays, -1 where the channel is unknown."""
        tables = self._tables()
        io_group, io_channel, chip_id, channel_id = (np.asarray(v, dtype=np.int64)
                                                     for v in (io_group, io_channel, chip_id, channel_id))
        io_group, io_channel, chip_id, channel_id = np.broadcast_arrays(io_group, io_channel, chip_id, channel_id)
        key = (io_group * 1000 + io_channel) * 256 + chip_id
        keys, rows_sorted = tables["io_keys"], tables["io_rows"]
        at = np.clip(np.searchsorted(keys, key), 0, max(len(keys) - 1, 0))
        found = (len(keys) > 0) & (keys[at] == key) & (chip_id >= 0) & (chip_id < 256)
        rows = np.where(found, rows_sorted[at], 0)
        valid_cc = (chip_id >= 0) & (chip_id < 256) & (channel_id >= 0) & (channel_id < 1000)
        ij = tables["cc_to_pos"][np.where(valid_cc, chip_id, 0), np.where(valid_cc, channel_id, 0)]
        found &= valid_cc & (ij[..., 0] >= 0)
        npx, npy = self.n_pixels_per_tile
        orient = self.tile_orientations[rows]
        li = np.where(orient[..., 2] < 0, npx - 1 - ij[..., 0], ij[..., 0])
        lj = np.where(orient[..., 1] < 0, npy - 1 - ij[..., 1], ij[..., 1])
        where = tables["tile_where"][rows]
        plane = np.where(found, where[..., 0], -1)
        ix = np.where(found, where[..., 1] * npx + li, -1)
        iy = np.where(found, where[..., 2] * npy + lj, -1)
        return plane, ix, iy

    def local_position(self, plane, ix, iy):
        """(tile id, i, j): the pixel's tile and its position in the tile's wiring frame (after mirroring).

        This is the frame of ``chip_channel_to_position``; geometry only, no wiring needed.
        """
        plane, ix, iy = self._check_pixels(plane, ix, iy)
        npx, npy = self.n_pixels_per_tile
        tile = self.tile_map[plane, ix // npx, iy // npy]
        rows = np.searchsorted(self.tile_ids, tile)
        orient = self.tile_orientations[rows]
        li, lj = ix % npx, iy % npy
        li = np.where(orient[..., 2] < 0, npx - 1 - li, li)
        lj = np.where(orient[..., 1] < 0, npy - 1 - lj, lj)
        return tile, li, lj

    # ------------------------------------------------------------------ pixel <-> position
    def pixel_index(self, borders: np.ndarray, plane, x, y):
        """(ix, iy) = floor((x - x0)/p), floor((y - y0)/p) of points on ``plane``."""
        plane = np.asarray(plane, dtype=np.int64)
        p = self.pitch_cm
        return (np.floor((np.asarray(x) - borders[plane, 0, 0]) / p).astype(np.int64),
                np.floor((np.asarray(y) - borders[plane, 1, 0]) / p).astype(np.int64))

    def pixel_center(self, borders: np.ndarray, plane, ix, iy):
        """Pixel centre (x, y) [cm]: x0 + (ix + 0.5) p, y0 + (iy + 0.5) p."""
        plane = np.asarray(plane, dtype=np.int64)
        p = self.pitch_cm
        return (borders[plane, 0, 0] + (np.asarray(ix) + 0.5) * p, borders[plane, 1, 0] + (np.asarray(iy) + 0.5) * p)


def to_larnd_pixel_id(plane, ix, iy, nx: int = 140) -> np.ndarray:
    """larnd-sim's pixel id ``[ix + nx*plane, iy]`` as an [N, 2] int64 array."""
    plane, ix, iy = np.broadcast_arrays(*(np.asarray(v, dtype=np.int64) for v in (plane, ix, iy)))
    return np.stack([ix + nx * plane, iy], axis=-1)


def from_larnd_pixel_id(pixel_ids, nx: int = 140):
    """(plane, ix, iy) from larnd-sim's pixel ids ``[ix + nx*plane, iy]`` ([N, 2], int or float)."""
    ids = np.rint(np.asarray(pixel_ids, dtype=np.float64)).astype(np.int64)
    if ids.ndim != 2 or ids.shape[1] != 2:
        raise GeometryError(f"pixel ids must have shape [N, 2], got {ids.shape}")
    plane = ids[:, 0] // nx
    return plane, ids[:, 0] - nx * plane, ids[:, 1]
