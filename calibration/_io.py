"""Atomic file writes: write to a temporary file in the same directory, fsync, then ``os.replace``."""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def strict(obj):
    """Copy of ``obj`` with non-finite floats replaced by None, so the file is strict JSON (jq, JS...)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path, obj) -> None:
    """Atomic, strict JSON (NaN/inf written as null)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(strict(obj), handle, indent=1, allow_nan=False, default=str)
            handle.write("\n")
