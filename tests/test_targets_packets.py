"""Fit targets from files: sparsetpc hits HDF5 or larnd-sim packets HDF5 (detected), finite and non-empty."""
import json

import h5py
import numpy as np
import pytest
import torch

import sparsetpc as st
from calibration.cli import main
from calibration.targets import (WrittenChannelsForward, load_target_file, read_target_table, target_file_format,
                                 written_channel_mask)
from sparsetpc.example import write_example
from sparsetpc.exceptions import InputFormatError
from sparsetpc.hits import HIT_DTYPE
from sparsetpc.io import write_hits
from sparsetpc.layout import PixelLayout
from sparsetpc.packets import CLOCK_US, write_packets

EVENT = 1          # the target files hold this event only


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small example simulated in hard mode (integer ADC, crossing times on the 0.1 us clock), written as a
    hits file and as a packets file with the default (built-in wiring) layout."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("targets")
    write_example(d / "ex.h5", n_events=2, tracks_per_event=2, seed=3, step=1.0)
    segments = st.load_segments(d / "ex.h5")
    subset = segments.select((segments.event_id == EVENT).cpu().numpy())
    with torch.no_grad():
        hits = st.simulate(subset, mode="hard", noise=False)
    table = hits.to_numpy()
    assert len(table) > 10
    write_hits(d / "hits.h5", table)
    summary = write_packets(d / "packets.h5", table, PixelLayout.default())
    assert summary.n_events == 1 and summary.n_data_packets > 0
    return d, table


def sorted_rows(table):
    order = np.lexsort((table["readout"], table["pixel_iy"], table["pixel_ix"], table["pixel_plane"], table["event_id"]))
    return table[order]


def test_format_detected_and_packets_target_equals_hits_target(sample):
    d, simulated = sample
    assert target_file_format(d / "hits.h5") == "hits" and target_file_format(d / "packets.h5") == "packets"
    from_hits = read_target_table(d / "hits.h5")
    from_packets = read_target_table(d / "packets.h5")
    # the packets file holds the readouts of the channels larnd-sim writes: compare with those of the hits file
    keep = written_channel_mask(from_hits["pixel_plane"], from_hits["pixel_ix"], from_hits["pixel_iy"],
                                PixelLayout.default())
    a, b = sorted_rows(from_hits[keep]), sorted_rows(from_packets)
    assert len(b) == int(keep.sum()) > 0
    for name in ("event_id", "pixel_plane", "pixel_ix", "pixel_iy", "readout"):
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(np.floor(a["adc"]), b["adc"])          # hard mode: integer ADC
    assert np.all((a["t"] - b["t"] >= -1e-9) & (a["t"] - b["t"] < CLOCK_US))   # within one 0.1 us tick
    np.testing.assert_allclose(a["x"], b["x"], atol=1e-9)
    np.testing.assert_allclose(a["y"], b["y"], atol=1e-9)
    # as fit targets: same events, same clouds
    ta, tb = load_target_file(d / "hits.h5"), load_target_file(d / "packets.h5")
    assert list(ta) == list(tb) == [EVENT]
    assert tb[EVENT].plane is not None and len(tb[EVENT]) == len(b)


def test_written_channels_forward_drops_what_packets_lack(sample):
    d, simulated = sample
    segments = st.load_segments(d / "ex.h5")
    subset = segments.select((segments.event_id == EVENT).cpu().numpy())
    params = st.Params.nominal(dtype=torch.float64)
    plain = st.simulate(subset, params=params, mode="hard")
    wrapped = WrittenChannelsForward(lambda p, s, **kw: st.simulate(s, params=p, mode="hard", **kw))(params, subset)
    keep = written_channel_mask(plain.plane.numpy(), plain.ix.numpy(), plain.iy.numpy(), PixelLayout.default())
    assert len(wrapped) == int(keep.sum())
    np.testing.assert_array_equal(wrapped.adc.numpy(), plain.adc.numpy()[keep])


def fit_args(d, target, out, *extra):
    return ["fit", "--input", str(d / "ex.h5"), "--target-file", str(target), "--params", "Ab", "--mode", "hard",
            "--no-noise", "--loss", "chamfer", "--iterations", "0", "--no-hessian", "--no-plots", "--no-progress",
            "--out", str(out), *extra]


@pytest.mark.parametrize("name", ["hits.h5", "packets.h5"])
def test_fit_to_a_file_simulates_its_events_and_matches_at_the_truth(sample, tmp_path, name):
    """At the parameters the target was simulated with, the guess equals the target: loss 0 for both formats
    (for packets only because the guess loses the readouts a packets file cannot hold)."""
    d, _ = sample
    assert main(fit_args(d, d / name, tmp_path)) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    info = result["meta"]["input"]
    assert info["events"] == [EVENT] and info["group"] == "event"
    assert info["target_file"]["format"] == name.split(".")[0]
    assert result["final_loss"] == pytest.approx(0.0, abs=1e-12)


def write_table(path, table):
    with h5py.File(path, "w") as f:
        f["hits"] = table


@pytest.mark.parametrize("column", ["adc", "t", "x", "y"])
def test_non_finite_target_values_are_an_input_error(sample, tmp_path, capsys, column):
    d, simulated = sample
    bad = simulated.copy()
    bad[column][3] = np.nan
    write_table(tmp_path / "bad.h5", bad)
    with pytest.raises(InputFormatError, match=f"non-finite value.*'{column}'"):
        read_target_table(tmp_path / "bad.h5")
    assert main(fit_args(d, tmp_path / "bad.h5", tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "bad.h5" in err and f"column '{column}'" in err and not (tmp_path / "o" / "result.json").exists()


def test_empty_or_foreign_target_file_is_an_error(sample, tmp_path, capsys):
    d, _ = sample
    write_table(tmp_path / "empty.h5", np.zeros(0, HIT_DTYPE))
    assert main(fit_args(d, tmp_path / "empty.h5", tmp_path / "o")) == 2
    assert "empty.h5: the target file has no readouts" in capsys.readouterr().err
    write_packets(tmp_path / "empty_packets.h5", np.zeros(0, HIT_DTYPE), PixelLayout.default())
    assert main(fit_args(d, tmp_path / "empty_packets.h5", tmp_path / "o")) == 2
    assert "no readouts" in capsys.readouterr().err
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = np.zeros(2)
    assert main(fit_args(d, tmp_path / "other.h5", tmp_path / "o")) == 2
    assert "neither a `hits` dataset" in capsys.readouterr().err
    (tmp_path / "text.h5").write_text("not hdf5")
    assert main(fit_args(d, tmp_path / "text.h5", tmp_path / "o")) == 2
    assert "text.h5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()              # a refused run leaves no empty output directory


def test_target_event_missing_from_input_is_refused(sample, tmp_path, capsys):
    d, simulated = sample
    other = simulated.copy()
    other["event_id"] = 7
    write_table(tmp_path / "ev7.h5", np.concatenate([simulated, other]))
    assert main(fit_args(d, tmp_path / "ev7.h5", tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert ("has 1 event(s) that --input" in err or "event(s) 7 not in the file" in err) and not (tmp_path / "o" / "result.json").exists()
    write_table(tmp_path / "only7.h5", other)
    assert main(fit_args(d, tmp_path / "only7.h5", tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "none of the requested events [7]" in err or "event(s) 7 not in the file" in err


def test_default_fit_to_packets_is_the_likelihood_with_sigma(sample, tmp_path):
    """Data-like target (hard front end with noise, Ab = 0.84, written as packets): the default fit (--loss auto =
    the readout likelihood, L-BFGS until converged) recovers Ab within 4σ, reports σ with up = ½ and says it
    converged."""
    d, _ = sample
    segments = st.load_segments(d / "ex.h5")
    subset = segments.select((segments.event_id == EVENT).cpu().numpy())
    with torch.no_grad():
        noisy = st.simulate(subset, params=st.Params.nominal().replace(Ab=0.84), mode="hard", noise=True, seed=5)
    write_packets(tmp_path / "target.h5", noisy.to_numpy(), PixelLayout.default())
    out = tmp_path / "fit"
    assert main(["fit", "--input", str(d / "ex.h5"), "--target-file", str(tmp_path / "target.h5"), "--params", "Ab",
                 "--clock-phases", "1", "--no-plots", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    entry = result["params"]["Ab"]
    assert result["meta"]["loss"]["name"] == "likelihood" and result["loss_is_likelihood"]
    assert "up = 0.5" in result["uncertainty_convention"] and result["sigma_reason"] is None
    assert 0 < entry["sigma"] < 0.05 * entry["fitted"]
    # one noise draw (seed 5 is a −3σ draw for this 14-readout event; pulls over 20 seeds: mean −0.05, RMS 1.24):
    # 4σ keeps the check meaningful (a biased fit or a σ 3× too small fails) and deterministic
    assert abs(entry["fitted"] - 0.84) < 4 * entry["sigma"], entry
    assert result["converged"] is True and not any("not converged" in w for w in result["warnings"])
    assert result["polish"]["stopped"].startswith("converged")


def test_likelihood_refuses_a_front_end_without_probabilities(sample, tmp_path, capsys):
    d, _ = sample
    rc = main(["fit", "--input", str(d / "ex.h5"), "--target-file", str(d / "hits.h5"), "--params", "Ab",
               "--mode", "hard", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--mode relaxed" in err[0] and not (tmp_path / "o").exists()
    rc = main(["fit", "--input", str(d / "ex.h5"), "--target-file", str(d / "hits.h5"), "--params", "Ab",
               "--clock-phases", "0", "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--clock-phases" in err[0]
