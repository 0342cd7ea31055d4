"""Built-in LArPix chip/channel wiring of pixel layout 2.2.16 (module 0), as compact literals.

Derived once from larnd-sim's ``multi_tile_layout-2.2.16.yaml`` and checked against it entry for entry by
``tests/test_builtin_wiring.py``; the two tables below expand into exactly the YAML's
``chip_channel_to_position`` (4900 entries) and ``tile_chip_to_io`` (1584 entries).  The functions cache their result: treat the returned
mappings as read-only.

Channel routing.  A tile is a 10 x 10 grid of chips, each reading a 7 x 7 block of the tile's 70 x 70 pixels
(positions ``(i, j)`` in the tile's wiring frame).  Chip ``11 + i // 7 + 10 * (9 - j // 7)`` holds the block
of pixel ``(i, j)``, and every chip routes its 49 connected channels to the same places in its block:
:data:`CHANNEL_GRID` ``[j % 7][i % 7]`` is the channel of the pixel at ``(i, j)``.  The 15 channels absent
from the grid (6-9, 22-25, 38-40, 54-57) are not connected to a pixel.

io channels.  Tile ``t`` (1-16) is read by io_group ``1`` (tiles 1-8) or ``2`` (tiles 9-16) on io channels
``4 * ((t - 1) % 8) + 1 + k`` with ``k`` in 0..3.  :data:`TILE_IO_OFFSETS` ``[t]`` gives ``k`` for the 100
chips of the tile as ten rows of ten characters, row ``r`` being chips ``11 + 10 r`` to ``20 + 10 r``; a
``.`` marks a chip that is not read out (tile 7 lacks chip 12, tile 15 lacks 15 chips).  The irregular rows
(tiles 4, 6, 7, 10, 11, 15, 16) are hardware configuration, not a rule, which is why the table is explicit.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, Tuple

CHIPS_PER_SIDE = 10          #: chips along each tile axis
BLOCK = 7                    #: pixels per chip along each axis
FIRST_CHIP = 11              #: chip id of chip row 0, column 0

#: channel of the pixel at local (i % 7, j % 7): CHANNEL_GRID[j % 7][i % 7]
CHANNEL_GRID = (
    (28, 29, 30, 31, 33, 34, 35),
    (19, 26, 27, 32, 36, 37, 41),
    (20, 21, 18, 42, 43, 44, 45),
    (17, 16, 15, 14, 46, 47, 48),
    (13, 12, 11, 49, 50, 51, 53),
    (10, 5, 4, 0, 59, 58, 52),
    (3, 2, 1, 63, 62, 61, 60),
)

_REGULAR = ("0000000000 0000000000 0000111111 1111111111 1111111111 "
            "2222222222 2222222222 3333222222 3333333333 3333333333")

#: io channel offset (0-3) of each chip of each tile; '.' = chip not read out
TILE_IO_OFFSETS = {
    1: _REGULAR,
    2: _REGULAR,
    3: _REGULAR,
    4: "0000000000 0000000000 0000001111 1111111111 1111111111 2222222222 2222222222 2222222222 2222222222 2222222222",
    5: _REGULAR,
    6: "0000000000 0000000000 0000000000 1111110000 1111110111 1111111111 2111111112 2222222222 2222222222 2222222222",
    7: "0.00000000 0000000000 0000111111 1111111111 1111111111 2222222222 2222222222 2222222222 2222222222 2222222222",
    8: _REGULAR,
    9: _REGULAR,
    10: "0000000000 0000000000 0000111111 1111111111 2211111111 2222222222 2222222222 3333222222 3333333333 3333333333",
    11: "0000000000 0000000000 0000111111 1111111111 1111111111 2222222222 2322222222 3322222222 3333333333 3333333333",
    12: _REGULAR,
    13: _REGULAR,
    14: _REGULAR,
    15: "0000000000 0000000000 0000000000 1000000000 1000000000 1111111100 .111111100 11111111.. 11111111.. ..........",
    16: "0000000000 0000000000 0000000000 0000000000 0000000000 2222222222 2222222222 3333222222 3333333333 3333333333",
}

TILES_PER_IO_GROUP = 8
IO_CHANNELS_PER_TILE = 4


@lru_cache(maxsize=None)
def chip_channel_to_position() -> Dict[int, Tuple[int, int]]:
    """``chip * 1000 + channel -> (i, j)`` in the tile's wiring frame (larnd-sim's ``chip_channel_to_position``)."""
    out = {}
    for chip_row in range(CHIPS_PER_SIDE):
        for chip_column in range(CHIPS_PER_SIDE):
            chip = FIRST_CHIP + chip_column + CHIPS_PER_SIDE * chip_row
            block_j = CHIPS_PER_SIDE - 1 - chip_row            # chip rows count down from the top of the tile
            for local_j, channels in enumerate(CHANNEL_GRID):
                for local_i, channel in enumerate(channels):
                    out[chip * 1000 + channel] = (chip_column * BLOCK + local_i, block_j * BLOCK + local_j)
    return out


@lru_cache(maxsize=None)
def tile_chip_to_io() -> Dict[int, Dict[int, int]]:
    """``tile -> chip -> io_group * 1000 + io_channel`` (larnd-sim's ``tile_chip_to_io``)."""
    out = {}
    for tile, grid in TILE_IO_OFFSETS.items():
        io_group = 1 + (tile - 1) // TILES_PER_IO_GROUP
        first_io_channel = IO_CHANNELS_PER_TILE * ((tile - 1) % TILES_PER_IO_GROUP) + 1
        chips = {}
        for chip_row, row in enumerate(grid.split()):
            for chip_column, offset in enumerate(row):
                if offset != ".":
                    chip = FIRST_CHIP + chip_column + CHIPS_PER_SIDE * chip_row
                    chips[chip] = io_group * 1000 + first_io_channel + int(offset)
        out[tile] = chips
    return out


@lru_cache(maxsize=None)
def tile_indeces() -> Dict[int, Tuple[int, int, int]]:
    """``tile -> (module, anode, tile in anode)`` as in the YAML's ``tile_indeces``."""
    return {tile: (1, 1 + (tile - 1) // TILES_PER_IO_GROUP, 1 + (tile - 1) % TILES_PER_IO_GROUP)
            for tile in TILE_IO_OFFSETS}
