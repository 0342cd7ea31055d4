"""``sparsetpc example --kind steep``: straight muons with cot θ and drift extent in chosen ranges (issue #10, item 1).

Every property is measured on the written segments, independently of the generator: a track's displacement is the
sum of its segment vectors (end − start), its drift extent |Σ Δx| (edep-sim frame: x = drift axis) and its
cot θ = |Σ Δx| / |Σ (Δy, Δz)|.  Coordinates are stored as float32, hence the 1e-5 relative slack on the ranges.
"""
import hashlib

import h5py
import numpy as np
import pytest

from sparsetpc.cli.main import main
from sparsetpc.example import DRIFT_RANGE, generate, write_example
from sparsetpc.segments import FRAME_EDEPSIM

REL = 1e-5                                   # float32 coordinates


def error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(("sparsetpc: error: ", "sparsetpc example: error: "))     # ours, argparse's
    return lines[0]


def tracks_of(rows):
    """Per (event, track): the segments, in file order."""
    keys = sorted(set(zip(rows["eventID"].tolist(), rows["trackID"].tolist())))
    return {k: rows[(rows["eventID"] == k[0]) & (rows["trackID"] == k[1])] for k in keys}


def measure(track):
    """(drift extent, cot θ, transverse extent) from the sum of the segment vectors."""
    d = np.array([(track[a + "_end"].astype(np.float64) - track[a + "_start"].astype(np.float64)).sum() for a in "xyz"])
    transverse = float(np.hypot(d[1], d[2]))
    return abs(d[0]), abs(d[0]) / transverse, transverse


def check_steep(rows, cot_theta, drift_extent, step, n_events, tracks_per_event=1):
    tracks = tracks_of(rows)
    assert len(tracks) == n_events * tracks_per_event
    assert sorted({e for e, _ in tracks}) == list(range(n_events))
    for key, track in tracks.items():
        extent, cot, _ = measure(track)
        assert drift_extent[0] * (1 - REL) <= extent <= drift_extent[1] * (1 + REL), (key, extent)
        assert cot_theta[0] * (1 - REL) <= cot <= cot_theta[1] * (1 + REL), (key, cot)
        # one drift volume: every point on the same side of the cathode, inside |x| in (0.5, 29.5)
        x = np.concatenate([track["x_start"], track["x_end"]]).astype(np.float64)
        assert (x > 0).all() or (x < 0).all(), key
        assert DRIFT_RANGE[0] * (1 - REL) <= np.abs(x).min() and np.abs(x).max() <= DRIFT_RANGE[1] * (1 + REL), key
        # a straight, contiguous line of steps no longer than `step`, consistent dx and dE
        for axis in "xyz":
            np.testing.assert_array_equal(track[axis + "_end"][:-1], track[axis + "_start"][1:])
        vectors = np.stack([track[a + "_end"].astype(np.float64) - track[a + "_start"] for a in "xyz"], 1)
        lengths = np.linalg.norm(vectors, axis=1)
        np.testing.assert_allclose(track["dx"], lengths, rtol=1e-4, atol=1e-5)
        assert lengths.max() <= step * (1 + 1e-4)
        assert len(track) == int(np.ceil(lengths.sum() / step - 1e-3))
        unit = vectors / lengths[:, None]
        np.testing.assert_allclose(unit, np.broadcast_to(unit[0], unit.shape), atol=1e-3)
        np.testing.assert_allclose(track["dE"], track["dEdx"] * track["dx"], rtol=1e-5)
        assert (track["pdgId"] == 13).all() and 1.0 <= track["dEdx"].min() and track["dEdx"].max() < 4.0


@pytest.mark.parametrize("cot_theta, drift_extent, step", [
    ((5.0, 50.0), (15.0, 27.0), 0.4),
    ((0.5, 2.0), (2.0, 29.0), 0.4),           # shallow: up to 58 cm transverse
    ((20.0, 20.0), (29.0, 29.0), 1.0),        # degenerate ranges: exactly these values, a full drift volume
])
def test_tracks_have_the_requested_cot_theta_and_drift_extent(cot_theta, drift_extent, step):
    rows = generate(12, 2, seed=4, step=step, kind="steep", cot_theta=cot_theta, drift_extent=drift_extent)
    check_steep(rows, cot_theta, drift_extent, step, n_events=12, tracks_per_event=2)
    # the ranges are sampled, not only respected: wide ranges spread the tracks over them
    if cot_theta[1] > cot_theta[0] and drift_extent[1] - drift_extent[0] > 10:
        measured = np.array([measure(t)[:2] for t in tracks_of(rows).values()])
        assert np.ptp(measured[:, 0]) > 0.3 * (drift_extent[1] - drift_extent[0])
        assert np.ptp(np.log(measured[:, 1])) > 0.3 * np.log(cot_theta[1] / cot_theta[0])


def test_both_volumes_and_both_directions_are_drawn():
    rows = generate(40, 1, seed=1, kind="steep")
    sides, towards_anode = set(), set()
    for track in tracks_of(rows).values():
        sides.add(bool(track["x_start"][0] > 0))
        towards_anode.add(bool(abs(track["x_end"][-1]) > abs(track["x_start"][0])))
    assert sides == {True, False} and towards_anode == {True, False}


def test_cli_command_of_the_readme(tmp_path, capsys):
    out = tmp_path / "steep.h5"
    assert main(["example", "-o", str(out), "--kind", "steep", "--cot-theta", "5", "50", "--drift-extent", "15", "27",
                 "--events", "4"]) == 0
    assert "4 event(s) x 1 steep muon(s)" in capsys.readouterr().out
    with h5py.File(out) as f:
        rows = f["segments"][()]
        assert f["segments"].attrs["frame"] == FRAME_EDEPSIM
        assert "kind=steep cot_theta=5..50 drift_extent=15..27cm step=0.4cm" in f.attrs["generator"]
    check_steep(rows, (5, 50), (15, 27), 0.4, n_events=4)                      # one muon per event by default
    np.testing.assert_array_equal(rows, generate(4, 1, seed=0, step=0.4, kind="steep"))
    np.testing.assert_array_equal(rows, generate(4, 1, seed=0, kind="steep"))     # the library default: 0.4 cm


def test_seeded_reproducibility(tmp_path):
    args = dict(kind="steep", cot_theta=(3, 30), drift_extent=(5, 25))
    a = generate(3, 2, seed=7, step=0.4, **args)
    b = generate(3, 2, seed=7, step=0.4, **args)
    c = generate(3, 2, seed=8, step=0.4, **args)
    assert a.tobytes() == b.tobytes()
    assert len(a) != len(c) or a.tobytes() != c.tobytes()
    p1, p2 = tmp_path / "a.h5", tmp_path / "b.h5"
    for p in (p1, p2):
        assert main(["example", "-o", str(p), "--kind", "steep", "--seed", "7", "--events", "2", "--step", "0.3"]) == 0
    with h5py.File(p1) as f1, h5py.File(p2) as f2:
        np.testing.assert_array_equal(f1["segments"][()], f2["segments"][()])
        check_steep(f1["segments"][()], (5, 50), (15, 27), 0.3, n_events=2)


#: sha256 of generate(3, 3, seed=0, step=0.5) and generate(2, 2, seed=3, step=1.0) as written before the steep
#: kind existed (numpy's PCG64 streams are stable; a new numpy changing its normal/uniform algorithms would
#: change these, not the code)
DEFAULT_HASHES = {(3, 3, 0, 0.5): "a2d47c13dd5140a5e468339054c926db95c393a65ae5c5bced041a5238367beb",
                  (2, 2, 3, 1.0): "0645213e2b3a333b6237c3465a7da3ae41d7c62aeecd6b86e9f6e873a5c71e2a"}


def test_default_kind_is_unchanged(tmp_path, capsys):
    for args, digest in DEFAULT_HASHES.items():
        assert hashlib.sha256(generate(*args).tobytes()).hexdigest() == digest, args
        assert generate(*args).tobytes() == generate(*args, kind="mixed").tobytes()
    out = tmp_path / "default.h5"
    assert main(["example", "-o", str(out)]) == 0
    assert "3 event(s) x 3 track(s)" in capsys.readouterr().out
    library = write_example(tmp_path / "library.h5")
    with h5py.File(out) as f, h5py.File(library) as g:
        assert f["segments"][()].tobytes() == g["segments"][()].tobytes() == generate().tobytes()
        assert f.attrs["generator"] == g.attrs["generator"] == "sparsetpc.example seed=0 events=3 tracks/event=3"
        assert dict(f["segments"].attrs) == dict(g["segments"].attrs)


@pytest.mark.parametrize("extra, expected", [
    (["--kind", "steep", "--cot-theta", "0", "5"], "--cot-theta must be positive, got min 0"),
    (["--kind", "steep", "--cot-theta", "-2", "5"], "--cot-theta must be positive, got min -2"),
    (["--kind", "steep", "--cot-theta", "9", "5"], "--cot-theta: min 9 is larger than max 5"),
    (["--kind", "steep", "--cot-theta", "nan", "5"], "--cot-theta must be finite"),
    (["--kind", "steep", "--drift-extent", "10", "30"], "--drift-extent max 30 cm does not fit in one drift volume"),
    (["--kind", "steep", "--drift-extent", "20", "10"], "--drift-extent: min 20 is larger than max 10"),
    (["--kind", "steep", "--drift-extent", "0", "10"], "--drift-extent must be positive"),
    (["--kind", "steep", "--cot-theta", "0.001", "0.01"], "does not fit in the module"),
    (["--kind", "steep", "--step", "0"], "--step must be a positive length in cm, got 0"),
    (["--cot-theta", "5", "50"], "--cot-theta needs --kind steep"),
    (["--drift-extent", "5", "10", "--cot-theta", "5", "50"], "--cot-theta and --drift-extent need --kind steep"),
    (["--kind", "steep", "--tracks-per-event", "0"], "--tracks-per-event must be at least 1, got 0"),
    (["--kind", "sideways"], "invalid choice: 'sideways'"),
    (["--kind", "steep", "--cot-theta", "5"], "argument --cot-theta: expected 2 arguments"),
])
def test_impossible_requests_are_one_line_errors_and_write_nothing(tmp_path, capsys, extra, expected):
    assert main(["example", "-o", str(tmp_path / "steep.h5"), *extra]) == 2
    assert expected in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, expected", [
    (dict(cot_theta=(0, 5)), "cot_theta must be positive"),
    (dict(drift_extent=(10, 29.5)), "does not fit in one drift volume"),
    (dict(drift_extent=(12, 11)), "min 12 is larger than max 11"),
    (dict(cot_theta=5), "cot_theta must be two numbers"),
    (dict(kind="flat"), "unknown example kind 'flat'"),
])
def test_library_checks_the_steep_arguments(tmp_path, kwargs, expected):
    kwargs = {"kind": "steep", **kwargs}
    with pytest.raises(ValueError, match=expected):
        write_example(tmp_path / "never.h5", n_events=1, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_simulate_runs_on_a_steep_file(tmp_path, capsys):
    example, out = tmp_path / "steep.h5", tmp_path / "hits.h5"
    assert main(["example", "-o", str(example), "--kind", "steep", "--cot-theta", "5", "10", "--drift-extent", "5", "5",
                 "--events", "1"]) == 0
    with h5py.File(example) as f:
        rows = f["segments"][()]
    check_steep(rows, (5, 10), (5, 5), 0.4, n_events=1)
    capsys.readouterr()
    assert main(["simulate", str(example), "-o", str(out), "--no-cuts", "--quiet"]) == 0
    with h5py.File(out) as f:
        hits = f["hits"][()]
        assert len(f["segments"]) == len(rows)
    assert len(hits) > 0
    # a steep track: few pixels, several readouts on some of them
    pixels, per_pixel = np.unique(hits[["pixel_plane", "pixel_ix", "pixel_iy"]], return_counts=True)
    assert per_pixel.max() >= 3
    # the hits lie under the track: pixel centres within 1 cm of its transverse path (sparsetpc x = edep-sim z)
    y_path = np.concatenate([rows["y_start"], rows["y_end"]])
    x_path = np.concatenate([rows["z_start"], rows["z_end"]])
    assert hits["y"].min() > y_path.min() - 1 and hits["y"].max() < y_path.max() + 1
    assert hits["x"].min() > x_path.min() - 1 and hits["x"].max() < x_path.max() + 1
