import numpy as np
import pytest
import torch

import sparsetpc as st
from sparsetpc.pixels import associate, clip_to_rectangles

DET = st.Detector.default()
PITCH = DET.pixel_pitch


def _brute_force(start, end, margin, plane):
    """Pads (ix, iy) whose rectangle, widened by margin, is touched by the densely sampled projection."""
    x0, y0 = DET.tpc_borders[plane, 0, 0], DET.tpc_borders[plane, 1, 0]
    u = np.linspace(0, 1, 20001)[:, None]
    pts = start[None, :2] + u * (end[:2] - start[:2])[None, :]
    found = set()
    lo_x, hi_x = int((pts[:, 0].min() - x0) // PITCH) - 3, int((pts[:, 0].max() - x0) // PITCH) + 3
    lo_y, hi_y = int((pts[:, 1].min() - y0) // PITCH) - 3, int((pts[:, 1].max() - y0) // PITCH) + 3
    for ix in range(max(lo_x, 0), min(hi_x, 139) + 1):
        for iy in range(max(lo_y, 0), min(hi_y, 279) + 1):
            cx, cy = x0 + (ix + 0.5) * PITCH, y0 + (iy + 0.5) * PITCH
            half = PITCH / 2 + margin
            inside = (np.abs(pts[:, 0] - cx) <= half) & (np.abs(pts[:, 1] - cy) <= half)
            if inside.any():
                found.add((ix, iy))
    return found


class TestAssociation:
    @pytest.mark.parametrize("direction", [(1.0, 0.0, 0.0), (1.0, 1.0, 0.3), (0.3, -1.0, 2.0), (0.01, 0.02, 1.0)])
    def test_matches_brute_force(self, direction):
        start = np.array([1.234, -20.77, -20.0])
        d = np.asarray(direction) / np.linalg.norm(direction)
        end = start + 3.1 * d
        margin = 0.07
        pairs = associate(torch.tensor(start[None]), torch.tensor(end[None]), torch.tensor([0]), torch.tensor([margin]), DET)
        got = set(zip(pairs.ix.tolist(), pairs.iy.tolist()))
        # pads only grazed within the sampling resolution of the brute force may differ: compare with a tolerance
        inner = _brute_force(start, end, margin - 1e-3, 0)
        outer = _brute_force(start, end, margin + 1e-3, 0)
        assert inner <= got <= outer
        # the clipped stretch lies on the segment and inside the widened pad
        assert bool((pairs.u_start >= 0).all() and (pairs.u_end <= 3.1 + 1e-9).all() and (pairs.u_end > pairs.u_start).all())

    def test_vertical_and_zero_length(self):
        start = torch.tensor([[0.1, 0.1, -10.0], [0.1, 0.1, -12.0]], dtype=torch.float64)
        end = torch.tensor([[0.1, 0.1, -15.0], [0.1, 0.1, -12.0]], dtype=torch.float64)
        pairs = associate(start, end, torch.tensor([0, 0]), torch.tensor([0.05, 0.05]), DET)
        assert sorted(pairs.segment.tolist()) == [0, 1]
        assert float(pairs.u_end[pairs.segment == 0][0]) == pytest.approx(5.0)

    def test_outside_plane_gives_no_pairs(self):
        start = torch.tensor([[0.0, 0.0, -10.0]], dtype=torch.float64)
        pairs = associate(start, start + 1.0, torch.tensor([-1]), torch.tensor([0.05]), DET)
        assert len(pairs) == 0

    def test_edge_of_plane_is_clipped(self):
        # a segment running beyond the instrumented area only gets in-range pads
        start = torch.tensor([[29.0, 0.0, -10.0]], dtype=torch.float64)
        end = torch.tensor([[34.0, 0.0, -10.0]], dtype=torch.float64)
        pairs = associate(start, end, torch.tensor([0]), torch.tensor([0.05]), DET)
        assert int(pairs.ix.max()) == 139

    def test_clip_interval(self):
        origin = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
        direction = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        u0, u1 = clip_to_rectangles(origin, direction, torch.tensor([10.0], dtype=torch.float64),
                                    torch.tensor([[2.0, -1.0]], dtype=torch.float64), torch.tensor([[3.0, 1.0]], dtype=torch.float64))
        assert (float(u0), float(u1)) == (2.0, 3.0)
