"""Atomic file writes: write to a temporary file in the same directory, fsync, then ``os.replace``."""
from __future__ import annotations

from sparsetpc.io import atomic_write
from sparsetpc.io import write_json as write_json_file


#: One atomic writer for the whole project (temporary file beside the target, fsync, os.replace).
atomic_path = atomic_write


def write_json(path, obj) -> None:
    """Atomic, strict JSON (NaN/inf written as null)."""
    write_json_file(path, obj, indent=1)
