"""Writing simulation results: HDF5 with ``hits`` and the ``segments`` simulated, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .hits import HIT_DTYPE, HIT_UNITS


@contextmanager
def atomic_write(path):
    """Yield a temporary path beside ``path`` (same file system); on success it is flushed to disk and renamed
    over ``path`` (``os.replace`` is atomic), on failure it is removed.  A file that exists is complete."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_hits(path, hits, segment_rows: Optional[np.ndarray] = None, metadata: Optional[Dict] = None,
               adc_pedestal: Optional[float] = None, mode: Optional[str] = None) -> Path:
    """Write readouts (a :class:`Hits` or a ``HIT_DTYPE`` structured array) as dataset ``hits`` with each
    field's unit as a dataset attribute (plus ``adc_pedestal`` and ``mode`` when given), and the simulated
    segment rows as dataset ``segments`` (z = drift axis), to HDF5; the file appears only once complete."""
    import h5py
    path = Path(path)
    n_skipped = getattr(hits, "n_skipped_segments", 0)
    table = hits.to_numpy() if hasattr(hits, "to_numpy") else np.asarray(hits, dtype=HIT_DTYPE)
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("hits", data=table)
            for name, unit in HIT_UNITS.items():
                dset.attrs[name] = unit
            if adc_pedestal is not None:
                dset.attrs["adc_pedestal"] = float(adc_pedestal)
            if mode is not None:
                dset.attrs["mode"] = mode
            weight = getattr(hits, "weight", None)
            if weight is not None and bool((weight.detach() != 1).any()):
                w = f.create_dataset("hit_weight", data=weight.detach().cpu().double().numpy())
                w.attrs["meaning"] = ("probability that each readout of `hits` exists (relaxed mode: the expectation "
                                      "of the hard front end over its noise)")
            if segment_rows is not None:
                seg = f.create_dataset("segments", data=segment_rows)
                seg.attrs["frame"] = "sparsetpc frame: z is the drift axis (edep-sim x and z swapped)"
                seg.attrs["units"] = "cm, MeV, MeV/cm, us"
            f.attrs["producer"] = "sparsetpc"
            f.attrs["n_skipped_segments"] = int(n_skipped)
            if metadata:
                f.attrs["metadata"] = json.dumps(metadata, default=str)
    return path
