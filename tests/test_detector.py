import numpy as np
import pytest

import sparsetpc as st
from helpers import SHARED, needs_shared


class TestDetector:
    def test_default_module0_geometry(self):
        det = st.Detector.default()
        # physics.md §1.2
        assert det.n_planes == 2 and det.n_pixels == (140, 280)
        assert det.pixel_pitch == pytest.approx(0.4434)
        assert np.allclose(det.tpc_borders[0], [[-31.039, 31.039], [-83.8626, 40.2154], [-30.431, -0.15875]], atol=1e-6)
        assert np.allclose(det.tpc_borders[1, 2], [30.431, 0.15875], atol=1e-6)
        x, y = det.pixel_centers(np.array([1]), np.array([0]), np.array([0]))
        assert (float(x[0]), float(y[0])) == (pytest.approx(-31.039 + 0.2217), pytest.approx(-83.8626 + 0.2217))

    @needs_shared
    def test_from_larnd_yaml_matches_default(self):
        det = st.Detector.from_larnd_yaml(SHARED / "detector" / "module0.yaml",
                                          SHARED / "detector" / "multi_tile_layout-2.2.16.yaml")
        default = st.Detector.default()
        assert np.allclose(det.tpc_borders, default.tpc_borders)
        assert det.nominal_parameters["lifetime"] == 2200.0 and det.layout.has_wiring
        assert det.drift_length == pytest.approx(30.27225)

    def test_bad_properties_yaml(self, tmp_path):
        bad = tmp_path / "props.yaml"
        bad.write_text("lifetime: 2200\n")
        with pytest.raises(st.GeometryError, match="tpc_centers"):
            st.Detector.from_larnd_yaml(bad, None)
        bad.write_text("- just\n- a list\n")
        with pytest.raises(st.GeometryError, match="mapping"):
            st.Detector.from_larnd_yaml(bad, None)

    def test_borders_shape_checked(self):
        with pytest.raises(st.GeometryError, match="shape"):
            st.Detector(tpc_borders=np.zeros((2, 2, 2)))
