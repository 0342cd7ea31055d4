"""Exceptions raised by sparsetpc.  Every error names the problem and, where there is one, the file."""


class SparseTPCError(Exception):
    """Base class of every sparsetpc error."""


class InputFormatError(SparseTPCError):
    """An input file or array lacks a field, has the wrong dtype, NaN values, or is empty."""


class GeometryError(SparseTPCError):
    """Detector properties or pixel layout are inconsistent or unreadable."""


class ParameterError(SparseTPCError):
    """A physics parameter is unknown, not a 0-d tensor, not finite or out of its physical domain."""


class MemoryBudgetError(SparseTPCError):
    """A memory budget cannot be parsed or is too small for the smallest unit of work."""
