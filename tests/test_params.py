import pytest
import torch

import sparsetpc as st
from sparsetpc.params import RANGES, electron_mobility


class TestParams:
    def test_nominal_values_and_types(self):
        p = st.Params.nominal(dtype=torch.float32)
        for name in p.names():
            value = getattr(p, name)
            assert value.dim() == 0 and value.dtype == torch.float32
            assert float(value) == pytest.approx(RANGES[name][0], rel=1e-6)

    def test_ranges_bracket_nominal(self):
        for name, (nominal, low, high, _) in RANGES.items():
            assert low < high, name
            assert low <= nominal <= high, name

    def test_mobility_link(self):
        # physics.md §2.2: µ(0.5 kV/cm, 87.17 K) = 0.31929, v = 0.15965 cm/µs
        e = torch.tensor(0.5, dtype=torch.float64)
        assert float(electron_mobility(e, torch.tensor(87.17, dtype=torch.float64))) == pytest.approx(0.31929, rel=2e-4)
        p = st.Params.nominal(link_vdrift_efield=True)
        assert float(p.drift_velocity()) == pytest.approx(0.15965, rel=2e-4)
        assert float(st.Params.nominal().drift_velocity()) == pytest.approx(0.1587)

    def test_requires_grad_subset(self):
        p = st.Params.nominal().requires_grad_(["Ab", "lifetime"])
        assert p.Ab.requires_grad and p.lifetime.requires_grad and not p.kb.requires_grad

    def test_replace_and_errors(self):
        p = st.Params.nominal().replace(Ab=0.85)
        assert float(p.Ab) == pytest.approx(0.85)
        with pytest.raises(st.ParameterError, match="unknown parameter"):
            p.replace(bogus=1.0)
        with pytest.raises(st.ParameterError, match="lifetime must be positive"):
            st.Params.nominal(lifetime=-1.0).validate()
        with pytest.raises(st.ParameterError, match="not finite"):
            st.Params.nominal(Ab=float("nan")).validate()
