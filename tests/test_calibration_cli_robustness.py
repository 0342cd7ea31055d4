"""Calibration CLI error policy: every bad argument or input is one line on stderr and exit 2, before any work."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from calibration.cli import main
from sparsetpc.example import write_example

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["fit", "--forward", "toy", "--params", "Ab", "--closure-seed", "1", "--iterations", "2", "--no-progress",
       "--no-plots", "--no-hessian"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    write_example(d / "ex.h5", n_events=2, tracks_per_event=2, seed=3, step=1.0)
    (d / "bad_value.yaml").write_text("Ab: abc\n")
    (d / "bad_syntax.yaml").write_text("Ab: [1\n")
    (d / "list.yaml").write_text("- Ab\n")
    (d / "bad_bounds.yaml").write_text("Ab: {bounds: [1]}\n")
    (d / "unknown.yaml").write_text("Abx: 0.1\n")
    (d / "corrupt.h5").write_bytes(b"not an HDF5 file")
    with h5py.File(d / "no_segments.h5", "w") as f:
        f["other"] = np.zeros(3)
    return d


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def sim(files, *extra):
    return ["fit", "--input", files / "ex.h5", "--params", "Ab", "--closure-seed", "1", "--iterations", "1",
            "--no-progress", "--no-plots", "--no-hessian", *extra]


BAD_TOY = [
    (["--iterations", "-5"], "--iterations must be >= 0"),
    (["--ntracks", "0"], "--ntracks must be >= 1"),
    (["--ntracks", "-2"], "--ntracks must be >= 1"),
    (["--tracks-per-batch", "0"], "--tracks-per-batch must be >= 1"),
    (["--max-wall", "0"], "--max-wall must be > 0"),
    (["--max-wall", "-3"], "--max-wall must be > 0"),
    (["--max-wall", "nan"], "--max-wall must be a finite number"),
    (["--polish-max-wall", "0"], "--polish-max-wall must be > 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--hessian-step", "0"], "--hessian-step must be > 0"),
    (["--track-seed", "-1"], "--track-seed must be >= 0"),
    (["--sigma-replicas", "1"], "--sigma-replicas must be 0"),
    (["--optimizer-kwargs", "{bad"], "--optimizer-kwargs: not valid JSON"),
    (["--scheduler-kwargs", "[1]"], "--scheduler-kwargs: expected a JSON object"),
    (["--scheduler", "Nope"], "--scheduler 'Nope'"),
    (["--fixed", "Ab=1"], "--fixed: Ab is not fitted"),
    (["--fixed", "foo=1"], "--fixed: unknown parameter 'foo'"),
    (["--fixed", "kb"], "--fixed: expected NAME=VALUE"),
    (["--init-values", "Ab=x"], "'x' is not a number"),
    (["--init-values", "kb=0.05"], "--init-values: kb is not fitted"),
    (["--init-values", "Ab=0.8", "--init-seed", "2"], "not both"),
    (["--target-values", "Ab=0.8"], "choose one target source"),
    (["--loss", "nope"], "unknown loss 'nope'"),
    (["--loss-opt", "foo"], "--loss-opt: expected KEY=VALUE"),
    (["--loss-scales", "z=1"], "unknown loss scale axis 'z'"),
    (["--memory-budget", "2XB"], "cannot read memory budget"),
    (["--min-abs-segment-z", "far"], "--min-abs-segment-z"),
]


@pytest.mark.parametrize("extra,message", BAD_TOY, ids=[" ".join(e) for e, _ in BAD_TOY])
def test_bad_argument_is_one_line_exit_2_and_no_work(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, err = run_cli(capsys, TOY + ["--out", out] + extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsetpc-calibrate: error: ") and message in lines[0], err
    assert not out.exists()                       # refused before anything was created


def test_bad_files_name_the_file(files, tmp_path, capsys):
    out = tmp_path / "o"
    cases = [
        (["--param-file", files / "bad_value.yaml"], "bad_value.yaml: bad entry"),
        (["--param-file", files / "bad_syntax.yaml"], "bad_syntax.yaml: not valid YAML"),
        (["--param-file", files / "list.yaml"], "list.yaml: expected a non-empty mapping"),
        (["--param-file", files / "bad_bounds.yaml"], "bad_bounds.yaml: bad entry"),
        (["--param-file", files / "unknown.yaml"], "unknown parameter 'Abx'"),
        (["--param-file", files / "missing.yaml"], "missing.yaml: no such file"),
    ]
    for extra, message in cases:
        argv = ["fit", "--forward", "toy", "--closure-seed", "1", "--out", out] + extra
        code, err = run_cli(capsys, argv)
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    for name, message in (("missing.h5", "missing.h5: no such file"), ("corrupt.h5", "corrupt.h5"),
                          ("no_segments.h5", "no_segments.h5")):
        code, err = run_cli(capsys, ["fit", "--input", files / name, "--params", "Ab", "--closure-seed", "1",
                                     "--out", out])
        assert code == 2 and message in err and "Traceback" not in err, err


def test_unknown_parameter_and_missing_input(files, tmp_path, capsys):
    code, err = run_cli(capsys, TOY[:4] + ["Abx"] + TOY[5:] + ["--out", tmp_path / "o"])
    assert code == 2 and "unknown parameter 'Abx'" in err
    code, err = run_cli(capsys, ["fit", "--params", "Ab", "--closure-seed", "1", "--out", tmp_path / "o"])
    assert code == 2 and "--input FILE.h5 is required" in err
    code, err = run_cli(capsys, ["fit", "--forward", "toy", "--params", "Ab", "--out", tmp_path / "o"])
    assert code == 2 and "choose targets" in err


def test_ntracks_beyond_available_names_the_number(files, tmp_path, capsys):
    code, err = run_cli(capsys, sim(files, "--ntracks", "100000", "--out", tmp_path / "o"))
    assert code == 2
    # the example has 2 events x 2 tracks; the default cuts keep some of them: the message names how many
    import sparsetpc as st
    from calibration.batching import unit_keys
    segs = st.load_segments(files / "ex.h5")
    available = len(np.unique(unit_keys(segs, "track"), axis=0))
    assert f"--ntracks 100000: only {available} track(s) pass the selection" in err


def test_output_directory_checked_first(files, tmp_path, capsys):
    code, err = run_cli(capsys, TOY + ["--out", files / "ex.h5"])
    assert code == 2 and "exists and is not a directory" in err
    code, err = run_cli(capsys, TOY + ["--out", files / "ex.h5" / "sub"])
    assert code == 2 and "--out" in err and "Traceback" not in err


def test_scan_checks(tmp_path, capsys):
    base = ["scan", "--forward", "toy", "--params", "Ab", "--closure-seed", "1", "--out", tmp_path / "s"]
    code, err = run_cli(capsys, base + ["--points", "1"])
    assert code == 2 and "--points must be >= 2" in err
    code, err = run_cli(capsys, base + ["--losses", "nope"])
    assert code == 2 and "unknown loss 'nope'" in err


def test_debug_shows_the_traceback_and_console_script_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "calibration"] + TOY + ["--out", str(tmp_path / "o"), "--loss", "nope"]
    plain = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip() == "sparsetpc-calibrate: error: unknown loss 'nope'; choose from space_match, " \
                                   "chamfer, sinkhorn, sdtw, mse, chi2, likelihood"
    debug = subprocess.run(argv + ["--debug"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_good_run_still_works(tmp_path, capsys):
    code, _ = run_cli(capsys, TOY + ["--out", tmp_path / "o"])
    assert code == 0
    assert json.loads((tmp_path / "o" / "result.json").read_text())["iterations"] == 2


@pytest.mark.parametrize("argv", [["fit", "--iterations", "abc"], ["fit", "--clock-phases", "x"], ["fit", "--bogus"],
                                  ["nonsense"]])
def test_argparse_errors_are_one_line(argv, tmp_path, capsys):
    """Type errors and unknown options of the argument parser itself: one line, exit 2, no usage dump."""
    from calibration.cli import main as calibration_main
    with pytest.raises(SystemExit) as stop:
        calibration_main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("sparsetpc-calibrate"), err
    assert not (tmp_path / "o").exists()
