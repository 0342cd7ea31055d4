"""Parameter sets: parsing (CLI list, seed-style YAML), normalisations, bounds, graph connection."""
import pytest
import torch

from calibration.paramsets import ParamSet, ParamSetError, ParamSpec
from sparsetpc.params import RANGES, Params


def test_yaml_seed_form(tmp_path):
    f = tmp_path / "param_list.yaml"
    f.write_text("Ab: 1e-2\nkb: 0.05\nlifetime: {lr: 0.1, norm: standard, bounds: [1000, 3000]}\ntran_diff: {bounds: null}\n")
    ps = ParamSet.from_yaml(f, link_vdrift_efield=True)
    assert ps.names == ["Ab", "kb", "lifetime", "tran_diff"]
    assert ps["Ab"].lr == 0.01 and ps["kb"].lr == 0.05
    assert ps["lifetime"].norm == "standard" and ps["lifetime"].bounds == (1000.0, 3000.0)
    assert ps["tran_diff"].bounds is None
    assert ps["Ab"].bounds == (RANGES["Ab"][1], RANGES["Ab"][2])
    assert ps.link_vdrift_efield


@pytest.mark.parametrize("bad", [{"nope": 0.1}, {"Ab": -1.0}, {"Ab": {"lr": 0.1, "typo": 1}}, {"Ab": {"norm": "log"}}, {}])
def test_bad_mappings(bad):
    with pytest.raises(ParamSetError):
        ParamSet.from_mapping(bad)


def test_vdrift_cannot_be_fitted_when_linked():
    with pytest.raises(ParamSetError):
        ParamSet.from_names(["eField", "vdrift"], link_vdrift_efield=True)
    ps = ParamSet.from_names(["eField"], link_vdrift_efield=True)
    p = ps.build_params(ps.make_leaves({"eField": 0.55}), ps.base_params())
    assert p.link_vdrift_efield and float(p.drift_velocity().detach()) != pytest.approx(float(Params.nominal().vdrift))


@pytest.mark.parametrize("norm", ["divide", "standard", "none"])
def test_normalisation_roundtrip_and_jacobian(norm):
    spec = ParamSpec("lifetime", norm=norm)
    for value in (500.0, 2200.0, 4000.0):
        assert spec.to_physical(spec.to_internal(value)) == pytest.approx(value)
    q = torch.tensor(spec.to_internal(3000.0), dtype=torch.float64, requires_grad=True)
    spec.to_physical(q).backward()
    assert float(q.grad) == pytest.approx(spec.jacobian)
    expected = {"divide": 1.0, "standard": 0.0, "none": 2200.0}[norm]
    assert spec.to_internal(2200.0) == pytest.approx(expected)
    if norm == "standard":
        assert spec.jacobian == pytest.approx(0.5 * (5000 - 500))


def test_build_params_keeps_graph_and_projection():
    ps = ParamSet.from_names(["Ab", "kb"], lr=0.05)
    leaves = ps.make_leaves({"Ab": 0.85})
    assert float(leaves[0].detach()) == pytest.approx(0.85 / 0.8)
    params = ps.build_params(leaves, ps.base_params())
    (params.Ab * 2 + params.kb).backward()
    assert float(leaves[0].grad) == pytest.approx(2 * 0.8) and float(leaves[1].grad) == pytest.approx(0.0486)
    assert [g["lr"] for g in ps.param_groups(leaves)] == [0.05, 0.05]
    with torch.no_grad():
        leaves[0].fill_(2.0)
        leaves[1].fill_(-1.0)
    ps.project_(leaves)
    vals = ps.physical_values(leaves)
    assert vals["Ab"] == pytest.approx(RANGES["Ab"][2]) and vals["kb"] == pytest.approx(RANGES["kb"][1])


def test_sample_uniform_is_seeded_and_in_range():
    ps = ParamSet.from_names(["Ab", "kb", "lifetime"])
    a, b, c = ps.sample_uniform(1), ps.sample_uniform(1), ps.sample_uniform(2)
    assert a == b and a != c
    for name, value in a.items():
        assert RANGES[name][1] <= value <= RANGES[name][2]


def test_dtype_device_follow_request():
    ps = ParamSet.from_names(["Ab"])
    leaves = ps.make_leaves({}, dtype=torch.float32)
    assert leaves[0].dtype == torch.float32
    assert ps.build_params(leaves, ps.base_params(dtype=torch.float32)).Ab.dtype == torch.float32
