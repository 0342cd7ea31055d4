"""``sparsetpc.io.atomic_write``: final file modes follow the umask (or the replaced file), and an interrupted
write (exception, KeyboardInterrupt, SIGTERM through the CLI guard) leaves no temporary file and the old file."""
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sparsetpc.cli.errors import EXIT_INTERRUPTED, Terminated
from sparsetpc.example import write_example
from sparsetpc.io import atomic_write, current_umask, write_hits

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    """Set a umask for the test and restore the old one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask):
        os.umask(mask)
    yield set_mask
    os.umask(previous)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_new_file_gets_umask_mode(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    with atomic_write(tmp_path / "plain.txt") as tmp:
        Path(tmp).write_text("data")
    write_hits(tmp_path / "hits.h5", [], metadata={"x": 1})
    write_example(tmp_path / "example.h5", n_events=1, tracks_per_event=1)
    for name in ("plain.txt", "hits.h5", "example.h5"):
        assert mode_of(tmp_path / name) == 0o666 & ~mask, name
    # the same as a plain open() would give
    (tmp_path / "reference.txt").write_text("x")
    assert mode_of(tmp_path / "reference.txt") == mode_of(tmp_path / "plain.txt")
    assert leftovers(tmp_path) == []


def test_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "kept.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_write(target) as tmp:
        Path(tmp).write_text("new")
    assert target.read_text() == "new" and mode_of(target) == 0o640


@pytest.mark.parametrize("kind", [ValueError, KeyboardInterrupt, Terminated])
def test_interrupted_write_removes_temp_and_keeps_old_file(tmp_path, kind):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(kind):
        with atomic_write(target) as tmp:
            Path(tmp).write_text("half")
            raise kind()
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_sigterm_during_a_slow_write_leaves_nothing(tmp_path):
    """A real process under the CLI guard gets SIGTERM while writing: exit 130, no .tmp, old file intact."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from sparsetpc.cli.errors import run_guarded
        from sparsetpc.io import atomic_write

        def body():
            with atomic_write(sys.argv[1]) as tmp:
                Path(tmp).write_text("partial")
                print("writing", flush=True)
                time.sleep(60)
            return 0

        sys.exit(run_guarded("slow-writer", body))
    """)
    target = tmp_path / "result.txt"
    target.write_text("old")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "writing"
        assert len(leftovers(tmp_path)) == 1              # the temporary file exists while writing
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == EXIT_INTERRUPTED
    assert "terminated" in process.stderr.read()
    assert leftovers(tmp_path) == [] and target.read_text() == "old"


#: calls that create a file, each capturing the path argument
WRITE_CALLS = [re.compile(pattern) for pattern in (
    r"h5py\.File\(([^,]+),\s*[\"'](?:w|a|x|w-)[\"']",
    r"\.savefig\(([^,)]+)",
    r"np\.savez\w*\(([^,)]+)",
    r"\bopen\(([^,]+),\s*[\"'][wax]",
    r"\b(\w+)\.write_(?:text|bytes)\(",
    r"Path\(([^()]+)\)\.write_(?:text|bytes)\(",
)]


def test_every_writer_goes_through_atomic_write():
    """Static check: files the packages write are opened on ``tmp`` (the path atomic_write yields)."""
    offenders = []
    for package in ("sparsetpc", "validation", "calibration"):
        for source in sorted((REPO / package).rglob("*.py")):
            if "scripts" in source.parts:           # stand-alone study scripts are not part of the packages
                continue
            text = source.read_text()
            # a file object opened on tmp (``with open(tmp, "wb") as stream``) is tmp too
            allowed = {"tmp", "Path(tmp)"} | set(re.findall(r"open\(tmp,\s*[\"'][wax]b?[\"']\)\s+as\s+(\w+)", text))
            for number, line in enumerate(text.splitlines(), 1):
                if line.lstrip().startswith("#"):
                    continue
                for pattern in WRITE_CALLS:
                    for match in pattern.finditer(line):
                        if match.group(1).strip() not in allowed:
                            offenders.append(f"{source.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
