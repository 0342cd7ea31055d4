"""Writing simulation results: HDF5 with ``hits`` and the ``segments`` simulated, written atomically."""
from __future__ import annotations

import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .hits import HIT_DTYPE, HIT_UNITS
from .segments import FRAME_SPARSETPC


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)                  # elsewhere: read by setting and restoring it
    os.umask(mask)
    return mask


def final_mode(path) -> int:
    """Permission bits the written file should get: those of the file it replaces, else ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextmanager
def atomic_write(path):
    """Yield a temporary path beside ``path`` (same file system); on success it is flushed to disk and renamed
    over ``path`` (``os.replace`` is atomic), on failure it is removed.  A file that exists is complete.

    The temporary file (``mkstemp``: mode 0600, hidden name ``.NAME.XXXX.tmp``) gets, before the rename, the
    mode of the file it replaces or, for a new file, ``0o666 & ~umask`` (as a plain ``open`` for writing would give).
    Any exception, including ``KeyboardInterrupt`` and the CLI's SIGTERM exception, removes the temporary file
    and leaves ``path`` as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
        os.close(handle)
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, final_mode(path))
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            _remove_quietly(tmp)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def strict_json(value):
    """``value`` with numpy scalars/arrays as Python values and NaN/±inf as ``None`` (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(path, data, indent: int = 2) -> None:
    """Write ``data`` as strict JSON (NaN/inf as null, numpy values converted), atomically."""
    text = json.dumps(strict_json(data), indent=indent, allow_nan=False, default=str) + "\n"
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text)


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
                seg.attrs["frame"] = FRAME_SPARSETPC
                seg.attrs["units"] = "cm, MeV, MeV/cm, us"
            f.attrs["producer"] = "sparsetpc"
            f.attrs["n_skipped_segments"] = int(n_skipped)
            if metadata:
                f.attrs["metadata"] = json.dumps(metadata, default=str)
    return path
