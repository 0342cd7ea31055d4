"""``python -m validation`` on bad inputs: exit 1 only for "beyond tolerance", 2 for every error (one line),
non-finite values and bad tolerances refused, strict JSON output."""
import json

import h5py
import numpy as np
import pytest

import validation.__main__ as cli
from sparsetpc.hits import HIT_DTYPE
from sparsetpc.layout import PixelLayout
from validation.__main__ import main
from sparsetpc.io import strict_json as strict_json_value
from validation.compare import Tolerances
from validation.readers import write_sparsetpc_hits

ROWS = [(0, 0, 5, 5, 10.0, 90.0, 0), (0, 0, 5, 5, 14.0, 85.0, 1), (0, 1, 7, 9, 3.0, 100.0, 0)]


def hits_array(rows):
    layout = PixelLayout.default()
    borders = layout.tpc_borders([[0, -21.8236, 0]] * 2, 30.27225)
    hits = np.zeros(len(rows), HIT_DTYPE)
    for k, (event, plane, ix, iy, t, adc, slot) in enumerate(rows):
        hits[k] = (event, plane, ix, iy, 0.0, 0.0, t, adc, slot)
    hits["x"], hits["y"] = layout.pixel_center(borders, hits["pixel_plane"], hits["pixel_ix"], hits["pixel_iy"])
    return hits


@pytest.fixture
def files(tmp_path):
    ref, ours = tmp_path / "ref.h5", tmp_path / "ours.h5"
    write_sparsetpc_hits(ref, hits_array(ROWS), adc_pedestal=74.0)
    write_sparsetpc_hits(ours, hits_array(ROWS), adc_pedestal=74.0)
    return ref, ours


def error_line(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("python -m validation") and "error:" in lines[0]
    return lines[0]


def test_nan_adc_is_an_input_error_not_within_tolerance(files, tmp_path, capsys):
    ref, _ = files
    bad_hits = hits_array(ROWS)
    bad_hits["adc"][1] = np.nan
    bad = tmp_path / "nan_adc.h5"
    write_sparsetpc_hits(bad, bad_hits, adc_pedestal=74.0)
    out = tmp_path / "summary.json"
    assert main(["compare", str(ref), str(bad), "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert "WITHIN TOLERANCE" not in captured.out
    assert "nan_adc.h5" in captured.err and "'adc'" in captured.err and "non-finite" in captured.err
    assert not out.exists()


def test_infinite_time_in_the_reference_is_refused(files, tmp_path, capsys):
    _, ours = files
    bad_hits = hits_array(ROWS)
    bad_hits["t"][0] = np.inf
    write_sparsetpc_hits(tmp_path / "inf_t.h5", bad_hits)
    assert main(["compare", str(tmp_path / "inf_t.h5"), str(ours)]) == 2
    assert "'t'" in error_line(capsys)


def test_nan_in_a_reference_npz_is_refused(files, tmp_path, capsys):
    _, ours = files
    adc = np.full((2, 10), 74.3656)
    adc[0, :2] = [90.0, np.nan]
    np.savez(tmp_path / "ref.npz", pixel_ids=np.array([[5, 5], [6, 6]]), adc=adc, ticks=np.zeros((2, 10)))
    assert main(["compare", str(tmp_path / "ref.npz"), str(ours)]) == 2
    line = error_line(capsys)
    assert "ref.npz" in line and "'adc'" in line and "non-finite" in line


@pytest.mark.parametrize("option, value", [("--tolerance-adc", "nan"), ("--tolerance-adc", "-1"),
                                           ("--tolerance-time", "inf"), ("--tolerance-unmatched", "1.5")])
def test_bad_tolerances_refused(files, capsys, option, value):
    ref, ours = files
    assert main(["compare", str(ref), str(ours), option, value]) == 2
    assert option in error_line(capsys)


def test_tolerances_dataclass_refuses_nan():
    with pytest.raises(ValueError, match="tolerance adc"):
        Tolerances(adc=float("nan"))


def test_empty_and_zero_byte_files(files, tmp_path, capsys):
    ref, _ = files
    write_sparsetpc_hits(tmp_path / "empty_hits.h5", np.zeros(0, HIT_DTYPE))
    assert main(["compare", str(ref), str(tmp_path / "empty_hits.h5")]) == 2
    assert "empty_hits.h5: no readouts" in error_line(capsys)
    (tmp_path / "zero.h5").write_bytes(b"")
    assert main(["compare", str(tmp_path / "zero.h5"), str(ref)]) == 2
    assert "zero.h5" in error_line(capsys)
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("hits")
    assert main(["compare", str(ref), str(tmp_path / "group.h5")]) == 2
    assert "group.h5" in error_line(capsys)


def test_beyond_tolerance_is_the_only_exit_1(files, tmp_path, capsys):
    ref, _ = files
    shifted = hits_array(ROWS)
    shifted["adc"] += 1.0
    write_sparsetpc_hits(tmp_path / "shifted.h5", shifted)
    assert main(["compare", str(ref), str(tmp_path / "shifted.h5")]) == 1
    assert "BEYOND TOLERANCE" in capsys.readouterr().out


def test_a_crash_exits_2_not_1(files, capsys, monkeypatch):
    ref, ours = files

    def broken(*args, **kwargs):
        raise TypeError("simulated bug")
    monkeypatch.setattr("validation.compare.compare_tables", broken)
    assert main(["compare", str(ref), str(ours)]) == 2
    line = error_line(capsys)
    assert "TypeError: simulated bug" in line and "--debug" in line
    assert main(["compare", str(ref), str(ours), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_json_output_checked_first_and_strict(files, tmp_path, capsys, monkeypatch):
    ref, ours = files
    before = ref.read_bytes()
    assert main(["compare", str(ref), str(ours), "--json", str(ref)]) == 2
    assert "--json" in error_line(capsys)
    assert ref.read_bytes() == before
    (tmp_path / "plain").write_text("x")
    assert main(["compare", str(ref), str(ours), "--json", str(tmp_path / "plain" / "s.json")]) == 2
    assert "--json" in error_line(capsys)
    assert main(["compare", str(ref), str(ours), "--plots", str(tmp_path / "plain")]) == 2
    assert "--plots" in error_line(capsys)
    # a summary holding a non-finite number is written as strict JSON (null), never bare NaN
    import validation.compare as compare
    original = compare.compare_tables

    def with_nan(*args, **kwargs):
        summary = original(*args, **kwargs)
        summary["charge_ratio"]["0"] = float("nan")
        summary["mean_dadc"] = np.float64("inf")
        return summary
    monkeypatch.setattr(compare, "compare_tables", with_nan)
    out = tmp_path / "s.json"
    assert main(["compare", str(ref), str(ours), "--json", str(out)]) == 0

    def refuse(constant):
        raise AssertionError(f"bare {constant} in the JSON")
    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["charge_ratio"]["0"] is None and data["mean_dadc"] is None and data["matched"] == 3


def test_strict_json_value():
    value = {"a": [1.0, float("nan"), np.float32("-inf")], "b": np.array([2.0, np.nan]), 3: np.int64(4)}
    assert strict_json_value(value) == {"a": [1.0, None, None], "b": [2.0, None], "3": 4}


def test_packets_need_wiring_checked_up_front(files, tmp_path, capsys, monkeypatch):
    ref, _ = files
    out = tmp_path / "packets.h5"
    if PixelLayout.default().has_wiring:
        assert main(["to-packets", str(ref), str(out)]) == 0 and out.exists()
    else:
        def forbidden(*args, **kwargs):
            raise AssertionError("read the input before checking the wiring")
        monkeypatch.setattr("validation.readers.read_hits", forbidden)
        assert main(["to-packets", str(ref), str(out)]) == 2
        assert "wiring" in error_line(capsys)
        assert not out.exists()


def test_to_packets_refuses_its_input_as_output(files, capsys):
    ref, _ = files
    before = ref.read_bytes()
    assert main(["to-packets", str(ref), str(ref)]) == 2
    assert "refusing to overwrite the input" in error_line(capsys)
    assert ref.read_bytes() == before


def test_run_reference_checks_tolerances_and_budget(tmp_path, capsys):
    assert main(["run-reference", "--out", str(tmp_path / "o"), "--tolerance-adc", "nan"]) == 2
    assert "--tolerance-adc" in error_line(capsys)
    assert main(["run-reference", "--out", str(tmp_path / "o"), "--memory-budget", "x"]) == 2
    assert "--memory-budget" in error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_argparse_errors_are_one_line(capsys):
    assert main(["compare", "only-one-file"]) == 2
    assert "the following arguments are required" in error_line(capsys)
    assert cli.PROG == "python -m validation"
