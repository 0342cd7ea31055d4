"""``sparsetpc simulate`` / ``example`` on bad and edge inputs: one-line errors, exit 2, checks before any work,
nothing written or lost; per-event failures; our own output fed back in."""
import h5py
import numpy as np
import pytest
import torch

import sparsetpc as st
from sparsetpc.cli import main
from sparsetpc.example import write_example
from sparsetpc.layout import PixelLayout
from sparsetpc.segments import FRAME_SPARSETPC


@pytest.fixture(scope="module")
def example_file(tmp_path_factory):
    return write_example(tmp_path_factory.mktemp("input") / "example.h5", n_events=3, tracks_per_event=2, seed=0)


def error_line(capsys):
    """The single stderr line of a failed command (asserting there is exactly one)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("sparsetpc") and "error:" in lines[0] and "Traceback" not in lines[0]
    return lines[0]


def no_simulation(monkeypatch):
    """Make any call of the simulator fail the test: the argument checks must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the simulation started before the arguments were checked")
    monkeypatch.setattr(st, "simulate", forbidden)


def nothing_written(directory):
    return [p.name for p in directory.iterdir() if p.name != "example.h5"]


@pytest.mark.parametrize("extra, expected", [
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--threads", "-4"], "--threads must be at least 1, got -4"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--device", "cuda:banana"], "--device 'cuda:banana'"),
    (["--memory-budget", "lots"], "--memory-budget: cannot read memory budget 'lots'"),
    (["--memory-budget", "10"], "--memory-budget: memory budget '10' is below 1 MB"),
    (["--events", "0", "999"], "requested event(s) 999 not in the file"),
    (["--events", "-1"], "--events: eventIDs are non-negative, got -1"),
    (["--seed", "-2"], "--seed must be non-negative, got -2"),
])
def test_bad_simulate_arguments_refused_before_work(example_file, tmp_path, capsys, monkeypatch, extra, expected):
    no_simulation(monkeypatch)
    out = tmp_path / "out.h5"
    assert main(["simulate", str(example_file), "-o", str(out), "--quiet", *extra]) == 2
    assert expected in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the 'unavailable' path cannot occur")
def test_cuda_unavailable_is_an_error(example_file, tmp_path, capsys, monkeypatch):
    no_simulation(monkeypatch)
    assert main(["simulate", str(example_file), "-o", str(tmp_path / "o.h5"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in error_line(capsys)


def test_output_same_as_input_refused_and_input_kept(example_file, capsys, monkeypatch):
    no_simulation(monkeypatch)
    before = example_file.read_bytes()
    assert main(["simulate", str(example_file), "-o", str(example_file), "--no-cuts"]) == 2
    line = error_line(capsys)
    assert "--output" in line and "input" in line
    assert example_file.read_bytes() == before


def test_unwritable_output_refused_before_work(example_file, tmp_path, capsys, monkeypatch):
    no_simulation(monkeypatch)
    (tmp_path / "plain_file").write_text("x")
    assert main(["simulate", str(example_file), "-o", str(tmp_path / "plain_file" / "out.h5")]) == 2
    assert "plain_file is not a directory" in error_line(capsys)
    (tmp_path / "a_directory").mkdir()
    assert main(["simulate", str(example_file), "-o", str(tmp_path / "a_directory")]) == 2
    assert "is a directory" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory", "plain_file"]
    assert list((tmp_path / "a_directory").iterdir()) == []


def test_argparse_errors_are_one_line(example_file, tmp_path, capsys):
    assert main(["simulate", str(example_file), "-o", str(tmp_path / "o.h5"), "--threads", "x"]) == 2
    assert "invalid int value: 'x'" in error_line(capsys)


def test_debug_shows_the_traceback(example_file, tmp_path, capsys):
    assert main(["simulate", str(example_file), "-o", str(tmp_path / "o.h5"), "--threads", "0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "UsageError" in err and err.strip().endswith("got 0")


def test_missing_and_corrupt_input(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "none.h5"), "-o", str(tmp_path / "o.h5")]) == 2
    assert "none.h5" in error_line(capsys)
    (tmp_path / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    assert main(["simulate", str(tmp_path / "corrupt.h5"), "-o", str(tmp_path / "o.h5")]) == 2
    assert "corrupt.h5" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.h5"]


@pytest.mark.parametrize("extra, expected", [
    (["--events", "-3"], "--events must be at least 1, got -3"),
    (["--events", "0"], "--events must be at least 1, got 0"),
    (["--tracks-per-event", "0"], "--tracks-per-event must be at least 1, got 0"),
    (["--seed", "-1"], "--seed must be non-negative, got -1"),
])
def test_bad_example_arguments(tmp_path, capsys, extra, expected):
    assert main(["example", "-o", str(tmp_path / "ex.h5"), *extra]) == 2
    assert expected in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_example_library_checks_its_arguments():
    with pytest.raises(ValueError, match="tracks_per_event"):
        write_example("never_written.h5", n_events=1, tracks_per_event=0)


def test_packets_format_checks_the_wiring_before_simulating(example_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "packets.h5"
    if PixelLayout.default().has_wiring:
        # once the default layout carries the 2.2.16 wiring, the default just works
        assert main(["simulate", str(example_file), "-o", str(out), "--no-cuts", "--quiet", "--format", "packets"]) == 0
        with h5py.File(out) as f:
            assert len(f["packets"]) > 0
    else:
        no_simulation(monkeypatch)
        assert main(["simulate", str(example_file), "-o", str(out), "--format", "packets"]) == 2
        line = error_line(capsys)
        assert "wiring" in line and "--layout" in line
        assert not out.exists()


def hits_of(path):
    with h5py.File(path) as f:
        return f["hits"][()], f["segments"][()]


def test_resimulating_our_output_gives_the_same_hits(example_file, tmp_path, capsys):
    first, again = tmp_path / "hits.h5", tmp_path / "again.h5"
    assert main(["simulate", str(example_file), "-o", str(first), "--no-cuts", "--quiet"]) == 0
    with h5py.File(first) as f:
        assert f["segments"].attrs["frame"] == FRAME_SPARSETPC
    assert main(["simulate", str(first), "-o", str(again), "--no-cuts", "--quiet"]) == 0
    hits_a, segments_a = hits_of(first)
    hits_b, segments_b = hits_of(again)
    assert len(hits_a) > 0
    np.testing.assert_array_equal(segments_a, segments_b)          # no second x<->z swap
    for name in hits_a.dtype.names:
        np.testing.assert_array_equal(hits_a[name], hits_b[name])
    # the library reader agrees: same Segments from the edep-sim file and from our output
    from_input = st.load_segments(example_file, cuts=st.Cuts.none())
    from_output = st.load_segments(first, cuts=st.Cuts.none())
    assert torch.equal(from_input.start, from_output.start) and torch.equal(from_input.end, from_output.end)


def test_unknown_frame_attribute_is_an_error(example_file, tmp_path, capsys):
    odd = tmp_path / "odd.h5"
    with h5py.File(example_file) as source, h5py.File(odd, "w") as f:
        f.create_dataset("segments", data=source["segments"][()]).attrs["frame"] = "y is the drift axis"
    assert main(["simulate", str(odd), "-o", str(tmp_path / "o.h5"), "--no-cuts"]) == 2
    assert "unknown frame attribute 'y is the drift axis'" in error_line(capsys)


def input_with_events_outside(tmp_path, outside_events):
    """The example with the segments of ``outside_events`` moved 300 cm along y, outside the detector."""
    path = tmp_path / "partly_outside.h5"
    with h5py.File(write_example(tmp_path / "base.h5", n_events=3, tracks_per_event=2, seed=1)) as f:
        rows = f["segments"][()]
    moved = np.isin(rows["eventID"], outside_events)
    for name in ("y", "y_start", "y_end"):
        rows[name][moved] += 300.0
    with h5py.File(path, "w") as f:
        f.create_dataset("segments", data=rows)
    return path


def test_a_failing_event_is_named_skipped_and_the_rest_written(tmp_path, capsys):
    path = input_with_events_outside(tmp_path, [1])
    out = tmp_path / "out.h5"
    assert main(["simulate", str(path), "-o", str(out), "--no-cuts", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "event 1 skipped" in captured.err and "drift volume" in captured.err
    assert "1 event(s) skipped: 1" in captured.out
    hits, segments = hits_of(out)
    assert set(np.unique(hits["event_id"]).tolist()) == {0, 2}
    assert set(np.unique(segments["eventID"]).tolist()) == {0, 2}
    with h5py.File(out) as f:
        assert '"events_failed": [1]' in f.attrs["metadata"]


def test_strict_stops_at_the_first_failing_event(tmp_path, capsys):
    path = input_with_events_outside(tmp_path, [1])
    out = tmp_path / "out.h5"
    assert main(["simulate", str(path), "-o", str(out), "--no-cuts", "--quiet", "--strict"]) == 2
    line = error_line(capsys)
    assert "event 1" in line and "--strict" in line
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_every_event_failing_writes_nothing(tmp_path, capsys):
    path = input_with_events_outside(tmp_path, [0, 1, 2])
    out = tmp_path / "out.h5"
    assert main(["simulate", str(path), "-o", str(out), "--no-cuts", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "every event failed (3 of 3)" in err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
