"""Atomic file writes: write to a temporary file in the same directory, fsync, then ``os.replace``."""
from __future__ import annotations

import json
import math

from sparsetpc.io import atomic_write


#: One atomic writer for the whole project (temporary file beside the target, fsync, os.replace).
atomic_path = atomic_write


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
