"""Shared helpers of the sparsetpc core tests: locating ../shared/data and building small inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from validation.run_reference import segment_rows as reference_rows  # noqa: F401  (re-exported for the tests)
from validation.run_reference import shared_data_dir

REPO = Path(__file__).resolve().parents[1]

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared reference data not found: place it at "
                                  "<repo>/../shared/data or set SPARSETPC_SHARED_DATA")


def make_rows(starts, ends, dEdx=2.1, event=0, track=1):
    """Segment rows in sparsetpc's frame (z = drift) from start/end points [cm]."""
    from sparsetpc.segments import SEGMENT_DTYPE
    starts = np.atleast_2d(np.asarray(starts, dtype=np.float64))
    ends = np.atleast_2d(np.asarray(ends, dtype=np.float64))
    rows = np.zeros(len(starts), dtype=SEGMENT_DTYPE)
    length = np.linalg.norm(ends - starts, axis=1)
    rows["eventID"], rows["trackID"], rows["pdgId"] = event, track, 13
    rows["dEdx"] = dEdx
    rows["dx"] = length
    rows["dE"] = dEdx * length
    for axis, name in enumerate("xyz"):
        rows[name + "_start"] = starts[:, axis]
        rows[name + "_end"] = ends[:, axis]
        rows[name] = 0.5 * (starts[:, axis] + ends[:, axis])
    return rows


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out
