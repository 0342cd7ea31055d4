"""sparsetpc: a sparse, differentiable simulator of a pixelated liquid-argon TPC (LArPix readout).

Public API::

    import sparsetpc as st
    det = st.Detector.default()
    params = st.Params.nominal(dtype=torch.float64)
    segs = st.load_segments("in.h5", cuts=st.Cuts())
    hits = st.simulate(segs, det, params, memory_budget="2GB")
"""
from .detector import Detector
from .electronics import FrontEnd
from .exceptions import (GeometryError, InputFormatError, MemoryBudgetError, ParameterError, SparseTPCError)
from .hits import Hits
from .induction import InductionOptions, Waveforms
from .params import RANGES, Params
from .pipeline import simulate
from .segments import Cuts, Segments, load_segments

__version__ = "0.1.0"

__all__ = ["Detector", "FrontEnd", "Hits", "InductionOptions", "Waveforms", "Params", "RANGES", "simulate",
           "Cuts", "Segments", "load_segments", "SparseTPCError", "InputFormatError", "GeometryError",
           "ParameterError", "MemoryBudgetError", "__version__"]
