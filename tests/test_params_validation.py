"""``Params.validate``: unphysical values refused with a ParameterError naming them (before any allocation),
mixed dtypes refused, values outside larnd-sim's ranges warned about once."""
import warnings

import pytest
import torch

import sparsetpc as st
from sparsetpc.exceptions import ParameterError
from sparsetpc.params import DRIFT_VELOCITY_SANE, RANGES, electron_mobility

from helpers import make_rows


@pytest.mark.parametrize("overrides, linked, words", [
    ({"temperature": 0.001}, True, ["temperature = 0.001", "drift velocity"]),   # hung with 10 GB before
    ({"temperature": 0.0}, True, ["temperature", "positive", "0.0"]),              # tried to allocate 650 GB
    ({"temperature": -3.0}, False, ["temperature", "positive", "-3.0"]),
    ({"eField": 500.0}, True, ["eField = 500", "drift velocity"]),
    ({"vdrift": 5.0}, False, ["vdrift = 5", "0.01-1.0 cm/us"]),
    ({"vdrift": 1e-4}, False, ["vdrift = 0.0001"]),
    ({"box_beta": -0.2}, False, ["box_beta", "non-negative", "-0.2"]),
    ({"box_alpha": -1.0}, False, ["box_alpha", "positive", "-1.0"]),
    ({"Ab": 0.0}, False, ["Ab", "positive"]),
    ({"lifetime": float("nan")}, False, ["lifetime", "not finite"]),
])
def test_unphysical_values_refused(overrides, linked, words):
    params = st.Params.nominal(link_vdrift_efield=linked, **overrides)
    with pytest.raises(ParameterError) as caught:
        params.validate()
    for word in words:
        assert word in str(caught.value)


def test_simulate_refuses_before_any_work():
    segments = st.Segments.from_numpy(make_rows([[0.0, -20.0, 10.0]], [[1.0, -20.0, 12.0]]), swap=False)
    with pytest.raises(ParameterError, match="temperature = 0.001"):
        st.simulate(segments, params=st.Params.nominal(link_vdrift_efield=True, temperature=0.001))


def test_linked_drift_velocity_at_nominal_values_is_accepted():
    params = st.Params.nominal(link_vdrift_efield=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params.validate()
    velocity = float(params.drift_velocity())
    # E·µ(E, T) at the nominal field and temperature is the nominal vdrift within 5% (larnd-sim's module-0 values)
    assert velocity == pytest.approx(RANGES["vdrift"][0], rel=0.05)
    assert DRIFT_VELOCITY_SANE[0] < velocity < DRIFT_VELOCITY_SANE[1]
    # and the mobility falls with temperature as T^-1.5
    ratio = electron_mobility(torch.tensor(0.5), torch.tensor(89.0 / 4)) / electron_mobility(torch.tensor(0.5), torch.tensor(89.0))
    assert float(ratio) == pytest.approx(8.0)


def test_mixed_dtypes_refused_naming_the_odd_one():
    params = st.Params.nominal(dtype=torch.float64).replace(kb=torch.tensor(0.05, dtype=torch.float32))
    with pytest.raises(ParameterError) as caught:
        params.validate()
    message = str(caught.value)
    assert "kb float32" in message and "others float64" in message
    params.to(dtype=torch.float64).validate()          # the suggested fix works


def test_integer_parameter_refused():
    params = st.Params.nominal().replace(lifetime=torch.tensor(2200))
    with pytest.raises(ParameterError, match="lifetime must be a floating-point tensor"):
        params.validate()


def test_out_of_range_value_warns_once_naming_it():
    with pytest.warns(UserWarning) as record:
        st.Params.nominal(Ab=5.0).validate()
    assert len(record) == 1
    text = str(record[0].message)
    assert "Ab = 5 outside [0.78, 0.88]" in text


def test_nominal_values_do_not_warn():
    for linked in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            st.Params.nominal(link_vdrift_efield=linked).validate()


def test_vdrift_out_of_range_is_not_warned_about_when_linked():
    # with link_vdrift_efield the vdrift field is ignored, so its value cannot be "outside" anything
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st.Params.nominal(link_vdrift_efield=True, vdrift=0.5).validate()
