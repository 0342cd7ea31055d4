"""One error policy for the three command lines (``sparsetpc``, ``python -m calibration``, ``python -m validation``).

Exit codes: 0 success; 1 only ``validation compare``'s "beyond tolerance"; 2 every expected failure (bad
argument, unreadable/corrupt/non-finite input, unwritable output, the project's own exceptions); 130 interrupted.
An expected failure prints one line on stderr, ``PROG: error: MESSAGE``; any other exception (a bug) prints one
line naming its type and also exits 2; a traceback is shown only with ``--debug`` (or ``SPARSETPC_DEBUG=1``).  SIGTERM is turned into an exception so that atomic writers remove their temporary files.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from typing import Callable, Iterable, List, Optional

from ..exceptions import SparseTPCError

EXIT_OK = 0
EXIT_BEYOND_TOLERANCE = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class UsageError(SparseTPCError):
    """A command-line argument has a value that cannot work (checked before any work starts)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (``PROG: error: ...``), exit code 2."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (a BaseException, like KeyboardInterrupt: cleanup runs)."""


def _expected_errors() -> tuple:
    kinds: List[type] = [SparseTPCError, OSError, ValueError, KeyError, EOFError]
    try:
        import yaml
        kinds.append(yaml.YAMLError)
    except ImportError:                      # pragma: no cover - pyyaml is a dependency
        pass
    import json
    kinds.append(json.JSONDecodeError)
    return tuple(kinds)


def describe(error: BaseException) -> str:
    """One line naming the problem (the file when the exception carries one)."""
    if isinstance(error, OSError) and error.filename is not None:
        reason = error.strerror or str(error)
        return f"{error.filename}: {reason}"
    text = str(error) if str(error) else type(error).__name__
    if isinstance(error, KeyError) and error.args:
        text = f"missing key {error.args[0]!r}"
    return " ".join(text.split())


def _on_sigterm(signum, frame):                 # pragma: no cover - exercised through a subprocess test
    raise Terminated()


def run_guarded(prog: str, body: Callable[[], int], debug: bool = False,
                extra_expected: Iterable[type] = ()) -> int:
    """Run ``body()`` under the policy above and return the exit code."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:                          # not the main thread (e.g. inside a test runner's worker)
        previous = None
    try:
        return int(body())
    except Terminated:
        print(f"{prog}: terminated (SIGTERM); no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() + tuple(extra_expected) as error:
        if debug or os.environ.get("SPARSETPC_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:                  # a bug: still one line and exit 2 (never 1, which means "beyond tolerance")
        if debug or os.environ.get("SPARSETPC_DEBUG"):
            traceback.print_exc()
            hint = ""
        else:
            hint = " (an internal error: rerun with --debug for the traceback and please report it)"
        print(f"{prog}: error: {type(error).__name__}: {describe(error)}{hint}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def check_output_path(path, inputs: Optional[Iterable] = None, option: str = "output") -> None:
    """Refuse, before any work, an output that is an input, a directory, or in a directory we cannot write."""
    from pathlib import Path
    target = Path(path)
    if target.exists() and target.is_dir():
        raise UsageError(f"{option} {path} is a directory, not a file")
    for other in inputs or ():
        if other is None:
            continue
        try:
            if target.exists() and Path(other).exists() and os.path.samefile(target, other):
                raise UsageError(f"{option} {path} is the input file {other}: refusing to overwrite the input")
        except OSError:
            pass
    parent = target.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write {option} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_file_in(existing):
        raise UsageError(f"cannot write {option} {path}: directory {existing} is not writable")


def _can_create_file_in(directory) -> bool:
    """Whether a file can really be created there (``os.access`` says yes to root on read-only or virtual
    file systems such as /proc); the probe is removed at once."""
    import tempfile
    try:
        handle, probe = tempfile.mkstemp(prefix=".sparsetpc-probe.", suffix=".tmp", dir=directory)
    except OSError:
        return False
    os.close(handle)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def check_output_dir(path, option: str = "--out") -> None:
    """A directory we can create or write into (checked before any work)."""
    from pathlib import Path
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option} {path} exists and is not a directory")
    check_output_path(target / "result.json", option=option)


DEVICE_TYPES = ("cpu", "cuda")


def check_device(text: str, option: str = "--device"):
    """The torch device named by ``--device``; UsageError for an unknown or unavailable one."""
    import torch
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{option} {text!r}: unknown device; use one of cpu, cuda, cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise UsageError(f"{option} {text!r}: not supported; use one of cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {text!r} requested but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"{option} {text!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device


def check_memory_budget(text: str, option: str = "--memory-budget") -> int:
    """Bytes of ``--memory-budget``; UsageError naming the option when it cannot be read."""
    from ..exceptions import MemoryBudgetError
    from ..pipeline import parse_memory
    try:
        return parse_memory(text)
    except MemoryBudgetError as error:
        raise UsageError(f"{option}: {error}") from None
