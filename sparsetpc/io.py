"""Writing simulation results: HDF5 with ``hits`` and the ``segments`` simulated, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .hits import HIT_UNITS, Hits


def atomic_path(path: Path):
    """A temporary file beside ``path`` (same file system, so ``os.replace`` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(handle)
    return tmp


def write_hits(path, hits: Hits, segment_rows: Optional[np.ndarray] = None, metadata: Optional[Dict] = None) -> Path:
    """Write ``hits`` (dataset ``hits``, units in attributes) and the simulated segment rows (dataset
    ``segments``, z = drift axis) to HDF5; the file appears only once complete."""
    import h5py
    path = Path(path)
    tmp = atomic_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("hits", data=hits.to_numpy())
            for name, unit in HIT_UNITS.items():
                dset.attrs[f"unit_{name}"] = unit
            if segment_rows is not None:
                seg = f.create_dataset("segments", data=segment_rows)
                seg.attrs["frame"] = "sparsetpc frame: z is the drift axis (edep-sim x and z swapped)"
                seg.attrs["units"] = "cm, MeV, MeV/cm, us"
            f.attrs["producer"] = "sparsetpc"
            f.attrs["n_skipped_segments"] = int(hits.n_skipped_segments)
            if metadata:
                f.attrs["metadata"] = json.dumps(metadata, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
