"""Per-iteration fit history: parameter values, gradients, learning rates and losses.

Written as plain JSON (default) or HDF5, both readable without this package:

JSON ``history.json``::

    {"format": "sparsetpc-calibration-history/1", "params": ["Ab", "kb"],
     "iteration": [0, 1, ...], "loss": [...], "batch": [...],
     "values": {"Ab": [...], ...},        # physical value used at that iteration (before the step)
     "grads": {"Ab": [...], ...},         # d loss / d internal (normalised) leaf, before clipping
     "lr": {"Ab": [...], ...},
     "target": {"Ab": ...} | null, "initial": {"Ab": ...}, "norm": {"Ab": "divide"}, "units": {"Ab": ""}}

HDF5 ``history.h5``: datasets ``iteration``, ``loss``, ``batch``, ``values/<name>``, ``grads/<name>``,
``lr/<name>``; attributes ``params`` (JSON list), ``target``, ``initial``, ``norm`` (JSON strings).
A skipped (non-finite) gradient is NaN in HDF5 and null in JSON (the JSON files are strict).
"""
from __future__ import annotations

import json
import math
from typing import Dict, List, Mapping, Optional, Sequence

from ._io import atomic_path, write_json

FORMAT = "sparsetpc-calibration-history/1"


class History:
    def __init__(self, names: Sequence[str], target: Optional[Mapping[str, float]] = None,
                 initial: Optional[Mapping[str, float]] = None, norm: Optional[Mapping[str, str]] = None,
                 units: Optional[Mapping[str, str]] = None):
        self.names = list(names)
        self.target = None if target is None else {k: float(v) for k, v in target.items()}
        self.initial = {} if initial is None else {k: float(v) for k, v in initial.items()}
        self.norm = dict(norm or {})
        self.units = dict(units or {})
        self.iteration: List[int] = []
        self.loss: List[float] = []
        self.batch: List[int] = []
        self.values: Dict[str, List[float]] = {n: [] for n in self.names}
        self.grads: Dict[str, List[float]] = {n: [] for n in self.names}
        self.lr: Dict[str, List[float]] = {n: [] for n in self.names}

    def __len__(self):
        return len(self.iteration)

    def append(self, iteration: int, loss: float, batch: int, values: Mapping[str, float],
               grads: Mapping[str, float], lrs: Mapping[str, float]) -> None:
        self.iteration.append(int(iteration))
        self.loss.append(float(loss))
        self.batch.append(int(batch))
        for n in self.names:
            self.values[n].append(float(values[n]))
            self.grads[n].append(float(grads[n]))
            self.lr[n].append(float(lrs[n]))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return {"format": FORMAT, "params": self.names, "iteration": self.iteration, "loss": self.loss,
                "batch": self.batch, "values": self.values, "grads": self.grads, "lr": self.lr,
                "target": self.target, "initial": self.initial, "norm": self.norm, "units": self.units}

    @classmethod
    def from_dict(cls, d: Mapping) -> "History":
        h = cls(d["params"], d.get("target"), d.get("initial"), d.get("norm"), d.get("units"))
        h.iteration = [int(v) for v in d["iteration"]]
        num = lambda v: math.nan if v is None else float(v)      # JSON stores NaN as null
        h.loss = [num(v) for v in d["loss"]]
        h.batch = [int(v) for v in d["batch"]]
        for key in ("values", "grads", "lr"):
            setattr(h, key, {n: [num(v) for v in d[key][n]] for n in h.names})
        return h

    def save(self, path, fmt: str = "json") -> None:
        if fmt == "json":
            write_json(path, self.to_dict())
        elif fmt in ("hdf5", "h5"):
            self._save_hdf5(path)
        else:
            raise ValueError(f"history format must be json or hdf5, got {fmt!r}")

    def _save_hdf5(self, path) -> None:
        import h5py
        import numpy as np
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["params"] = json.dumps(self.names)
                for key in ("target", "initial", "norm", "units"):
                    f.attrs[key] = json.dumps(getattr(self, key))
                f["iteration"] = np.asarray(self.iteration, dtype=np.int64)
                f["loss"] = np.asarray(self.loss, dtype=np.float64)
                f["batch"] = np.asarray(self.batch, dtype=np.int64)
                for key in ("values", "grads", "lr"):
                    group = f.create_group(key)
                    for n in self.names:
                        group[n] = np.asarray(getattr(self, key)[n], dtype=np.float64)

    @classmethod
    def load(cls, path) -> "History":
        path = str(path)
        if path.endswith((".h5", ".hdf5")):
            import h5py
            with h5py.File(path, "r") as f:
                names = json.loads(f.attrs["params"])
                d = {"params": names, "iteration": f["iteration"][()].tolist(), "loss": f["loss"][()].tolist(),
                     "batch": f["batch"][()].tolist()}
                for key in ("target", "initial", "norm", "units"):
                    d[key] = json.loads(f.attrs[key])
                for key in ("values", "grads", "lr"):
                    d[key] = {n: f[key][n][()].tolist() for n in names}
            return cls.from_dict(d)
        with open(path) as handle:
            return cls.from_dict(json.load(handle))

    def last_finite_loss(self) -> float:
        for v in reversed(self.loss):
            if math.isfinite(v):
                return v
        return math.nan
