"""Every flag of ``sparsetpc simulate`` / ``sparsetpc example`` has an effect a user can see; each test checks that
effect against a formula or an independent computation (docs/flag_coverage.md lists flag -> test).

Input: three events of one short track each (3 segments, written in sparsetpc's frame), plus a fourth event
whose track the default cuts drop (|z| < 15 cm).  A whole simulation takes ~0.4 s.
"""
import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from helpers import devices, make_rows
from sparsetpc.cli import main
from sparsetpc.detector import MODULE0_PROPERTIES
from sparsetpc.layout import PixelLayout
from sparsetpc.packets import CLOCK_US, read_packets
from sparsetpc.segments import FRAME_SPARSETPC
from calibration.targets import written_channel_mask

DRIFT_ANODE = 30.431          # |z| of the anodes [cm] (docs/validation.md, "Layout")


def short_track(event, x, y, z, dz=0.4):
    s = np.array([[x, y, z], [x + 0.8, y + 0.6, z + dz], [x + 1.6, y + 1.2, z + 2 * dz]])
    e = np.array([s[1], s[2], [x + 2.4, y + 1.8, z + 3 * dz]])
    return make_rows(s, e, event=event, track=1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    rows = np.concatenate([short_track(0, -10.0, -30.0, -25.0), short_track(1, 5.0, -10.0, 24.0),
                           short_track(2, 12.0, 10.0, -22.0), short_track(3, 0.0, 0.0, 5.0)])
    path = tmp_path_factory.mktemp("input") / "tracks.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("segments", data=rows).attrs["frame"] = FRAME_SPARSETPC
    return path, rows


def simulate(out, sample, *extra, cuts=False):
    path, _ = sample
    argv = ["simulate", str(path), "-o", str(out), "--quiet", *([] if cuts else ["--no-cuts"]), *map(str, extra)]
    assert main(argv) == 0
    return read(out)


def read(path):
    with h5py.File(path) as f:
        out = {"hits": f["hits"][()], "segments": f["segments"][()], "attrs": dict(f["hits"].attrs),
               "metadata": json.loads(f.attrs["metadata"])}
        out["weight"] = f["hit_weight"][()] if "hit_weight" in f else None
    return out


def keyed(hits):
    """{(event, plane, ix, iy, readout): (t, adc)}."""
    return {tuple(int(h[k]) for k in ("event_id", "pixel_plane", "pixel_ix", "pixel_iy", "readout")):
            (float(h["t"]), float(h["adc"])) for h in hits}


@pytest.fixture(scope="module")
def relaxed(sample, tmp_path_factory):
    """The default simulation (relaxed, float64, every segment)."""
    return simulate(tmp_path_factory.mktemp("relaxed") / "hits.h5", sample)


@pytest.fixture(scope="module")
def hard(sample, tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("hard") / "hits.h5", sample, "--mode", "hard")


def test_dtype_float32_computes_in_float32(sample, relaxed, tmp_path):
    """float32 results are float32 numbers (written as float64, every one exactly representable in float32),
    unlike the float64 ones, and within float32 rounding of them."""
    out = simulate(tmp_path / "f32.h5", sample, "--dtype", "float32")
    assert out["metadata"]["dtype"] == "float32"
    for column in ("adc", "t", "x", "y"):
        values = out["hits"][column]
        np.testing.assert_array_equal(values.astype(np.float32).astype(np.float64), values)
    reference = relaxed["hits"]["adc"]
    assert not np.array_equal(reference.astype(np.float32).astype(np.float64), reference)
    a, b = keyed(relaxed["hits"]), keyed(out["hits"])
    assert a.keys() == b.keys()
    assert max(abs(a[k][1] - b[k][1]) for k in a) < 0.02


def test_mode_sets_the_front_end(sample, relaxed, hard, tmp_path):
    """hard: integer ADC on the 0.1 us clock, pedestal 74; relaxed: float ADC with readout probabilities,
    pedestal 73.8656; reference: the differentiable reference's front end, pedestal 74.3656."""
    h = hard["hits"]
    np.testing.assert_array_equal(h["adc"], np.round(h["adc"]))
    np.testing.assert_allclose(h["t"] / CLOCK_US, np.round(h["t"] / CLOCK_US), atol=1e-9)
    assert hard["attrs"]["adc_pedestal"] == 74.0 and hard["attrs"]["mode"] == "hard" and hard["weight"] is None
    r = relaxed["hits"]
    assert not np.array_equal(r["adc"], np.round(r["adc"]))
    assert relaxed["attrs"]["adc_pedestal"] == pytest.approx(73.8656, abs=1e-4)
    assert relaxed["weight"] is not None and ((relaxed["weight"] > 0) & (relaxed["weight"] <= 1)).all()
    ref = simulate(tmp_path / "reference.h5", sample, "--mode", "reference")
    assert ref["attrs"]["adc_pedestal"] == pytest.approx(74.3656, abs=1e-4) and ref["metadata"]["mode"] == "reference"


def test_noise_and_seed(sample, hard, tmp_path):
    """--noise makes data (hard mode): seeded, so the same seed repeats it and another seed changes it."""
    a = simulate(tmp_path / "a.h5", sample, "--mode", "hard", "--noise", "--seed", "1")["hits"]
    b = simulate(tmp_path / "b.h5", sample, "--mode", "hard", "--noise", "--seed", "1")["hits"]
    c = simulate(tmp_path / "c.h5", sample, "--mode", "hard", "--noise", "--seed", "2")["hits"]
    np.testing.assert_array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)
    assert len(a) != len(hard["hits"]) or not np.array_equal(a, hard["hits"])   # noise changes the readouts
    np.testing.assert_array_equal(a["adc"], np.round(a["adc"]))


def test_events_selects_exactly_those_events(sample, hard, tmp_path):
    out = simulate(tmp_path / "sel.h5", sample, "--mode", "hard", "--events", "0", "2")
    assert sorted(np.unique(out["hits"]["event_id"]).tolist()) == [0, 2]
    assert sorted(np.unique(out["segments"]["eventID"]).tolist()) == [0, 2]
    everything = keyed(hard["hits"])
    selected = keyed(out["hits"])
    assert selected == {k: v for k, v in everything.items() if k[0] in (0, 2)}


def test_no_cuts_keeps_what_the_default_selection_drops(sample, relaxed, tmp_path):
    """Default cuts keep only segments with |z_mid| > 15 cm (physics.md §1.3): event 3 (|z| ~ 5 cm) is dropped."""
    _, rows = sample
    cut = simulate(tmp_path / "cut.h5", sample, cuts=True)
    zmid = np.abs(0.5 * (rows["z_start"] + rows["z_end"]))
    assert len(cut["segments"]) == int((zmid > 15.0).sum()) < len(rows) == len(relaxed["segments"])
    assert 3 not in cut["hits"]["event_id"] and 3 in relaxed["hits"]["event_id"]
    assert cut["metadata"]["cuts"] != "none" and relaxed["metadata"]["cuts"] == "none"


def test_memory_budget_does_not_change_the_hits(sample, relaxed, tmp_path):
    tiny = simulate(tmp_path / "tiny.h5", sample, "--memory-budget", "1MB")
    a, b = keyed(relaxed["hits"]), keyed(tiny["hits"])
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=0, atol=1e-9)


def test_format_packets_reads_back_to_the_same_readouts(sample, hard, tmp_path):
    """--format packets writes a larnd-sim packets file; the project's reader gives back the hard-mode readouts on
    the channels larnd-sim writes, same ADC, same clock tick."""
    path, _ = sample
    out = tmp_path / "packets.h5"
    assert main(["simulate", str(path), "-o", str(out), "--quiet", "--no-cuts", "--mode", "hard",
                 "--format", "packets"]) == 0
    with h5py.File(out) as f:
        assert "packets" in f and "hits" not in f
    layout = PixelLayout.default()
    back = read_packets(out, layout).hits
    h = hard["hits"]
    a, b = keyed(h[written_channel_mask(h["pixel_plane"], h["pixel_ix"], h["pixel_iy"], layout)]), keyed(back)
    assert len(b) > 0 and a.keys() == b.keys()
    for k in a:
        assert b[k][1] == a[k][1]                                      # integer ADC
        assert abs(b[k][0] - a[k][0]) < 1e-6                           # the clock axis: t = tick x 0.1 us


def test_detector_yaml_lifetime_attenuates_the_charge(sample, relaxed, tmp_path):
    """A detector YAML with lifetime 500 us (nominal 2200): the charge of a segment reaching the anode falls by
    exp(−t_d·(1/500 − 1/2200)) with t_d = |z_anode − z|/v_drift, so the ADC above pedestal of each event (one
    track) falls by the charge-weighted mean of that factor (within 1.5 %: the front end integrates in windows)."""
    props = dict(MODULE0_PROPERTIES, lifetime=500.0)
    (tmp_path / "det.yaml").write_text(yaml.safe_dump(props))
    out = simulate(tmp_path / "det.h5", sample, "--detector", tmp_path / "det.yaml")
    assert out["metadata"]["params"]["lifetime"] == 500.0
    _, rows = sample
    zmid = 0.5 * (rows["z_start"] + rows["z_end"])
    t_drift = (DRIFT_ANODE - np.abs(zmid)) / MODULE0_PROPERTIES["vdrift"]
    pedestal = relaxed["attrs"]["adc_pedestal"]
    for event in range(3):
        sel = rows["eventID"] == event
        expected = np.average(np.exp(-t_drift[sel] * (1 / 500.0 - 1 / 2200.0)), weights=rows["dE"][sel])
        charge = lambda o: float((o["weight"] * (o["hits"]["adc"] - pedestal))[o["hits"]["event_id"] == event].sum())
        assert 0.8 < expected < 0.95
        assert charge(out) / charge(relaxed) == pytest.approx(expected, rel=0.015)


def layout_yaml(path, shift_x_mm=0.0):
    """The 2.2.16 tile geometry (no wiring) as a larnd-sim layout YAML, every tile moved along x."""
    lay = PixelLayout.default(wiring=False)
    positions = lay.tile_positions.copy()
    positions[:, 2] += shift_x_mm                     # [drift, y, x] in mm
    path.write_text(yaml.safe_dump({
        "pixel_pitch": float(lay.pitch_mm),
        "tile_positions": {int(i): [float(v) for v in p] for i, p in zip(lay.tile_ids, positions)},
        "tile_orientations": {int(i): [int(v) for v in o] for i, o in zip(lay.tile_ids, lay.tile_orientations)}}))
    return path


def test_layout_yaml_moves_the_pixel_grid(sample, relaxed, tmp_path):
    """Every tile one pitch further along x: the same pixels (same centres, same readouts) are numbered one lower
    in ix; a layout without the chip/channel wiring cannot write packets."""
    pitch_mm = PixelLayout.default().pitch_mm
    out = simulate(tmp_path / "shifted.h5", sample, "--layout", layout_yaml(tmp_path / "shifted.yaml", pitch_mm))
    a, b = relaxed["hits"], out["hits"]
    assert len(a) == len(b)
    np.testing.assert_array_equal(b["pixel_ix"], a["pixel_ix"] - 1)
    np.testing.assert_array_equal(b["pixel_iy"], a["pixel_iy"])
    np.testing.assert_allclose(b["x"], a["x"], atol=1e-9)
    np.testing.assert_allclose(b["adc"], a["adc"], atol=1e-9)
    path, _ = sample
    geometry_only = layout_yaml(tmp_path / "plain.yaml")
    assert main(["simulate", str(path), "-o", str(tmp_path / "p.h5"), "--quiet", "--no-cuts", "--format", "packets",
                 "--layout", str(geometry_only)]) == 2
    assert not (tmp_path / "p.h5").exists()


@pytest.mark.parametrize("device", devices())
def test_device(sample, relaxed, tmp_path, device):
    out = simulate(tmp_path / "dev.h5", sample, "--device", device)
    assert out["metadata"]["device"] == device
    a, b = keyed(relaxed["hits"]), keyed(out["hits"])
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=0, atol=1e-9)


def test_unknown_device_is_one_line_exit_2(sample, tmp_path, capsys):
    path, _ = sample
    assert main(["simulate", str(path), "-o", str(tmp_path / "o.h5"), "--device", "npu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsetpc: error: --device 'npu'")
    assert not (tmp_path / "o.h5").exists()


def test_threads_and_quiet(sample, tmp_path, capsys, monkeypatch):
    """--threads N sets torch's intra-op threads (recorded by a stand-in: two threads on a loaded two-core runner
    make the simulation ten times slower); the progress bar is on stderr unless --quiet."""
    path, _ = sample
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["simulate", str(path), "-o", str(tmp_path / "a.h5"), "--no-cuts", "--threads", "3"]) == 0
    assert calls == [3]
    assert "events:" in capsys.readouterr().err                    # the progress bar
    assert main(["simulate", str(path), "-o", str(tmp_path / "b.h5"), "--no-cuts", "--quiet"]) == 0
    assert "events:" not in capsys.readouterr().err


def test_example_events_tracks_and_seed(tmp_path):
    """example: --events N x --tracks-per-event M tracks; the same seed writes the same segments, another seed
    others."""
    def segments(name, *extra):
        assert main(["example", "-o", str(tmp_path / name), *extra]) == 0
        with h5py.File(tmp_path / name) as f:
            return f["segments"][()]
    a = segments("a.h5", "--events", "2", "--tracks-per-event", "3", "--seed", "7")
    assert sorted(np.unique(a["eventID"]).tolist()) == [0, 1]
    assert {int(e): len(np.unique(a["trackID"][a["eventID"] == e])) for e in (0, 1)} == {0: 3, 1: 3}
    np.testing.assert_array_equal(a, segments("b.h5", "--events", "2", "--tracks-per-event", "3", "--seed", "7"))
    c = segments("c.h5", "--events", "2", "--tracks-per-event", "3", "--seed", "8")
    assert len(a) != len(c) or not np.array_equal(a, c)
    default = segments("d.h5")
    assert len(np.unique(default["eventID"])) == 3                 # documented defaults: 3 events x 3 tracks
    assert len(np.unique(default[["eventID", "trackID"]])) == 9


def test_event_noise_seeds_do_not_collide_across_seeds():
    """Each (seed, event) has its own noise stream: --seed 0's event 1 is not --seed 1's event 0."""
    from sparsetpc.cli.main import event_seed
    seeds = {event_seed(seed, event) for seed in range(20) for event in range(20)}
    assert len(seeds) == 400
    assert event_seed(3, 7) == event_seed(3, 7) and 0 <= event_seed(3, -1) < 2 ** 63
