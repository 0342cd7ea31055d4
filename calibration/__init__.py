"""Calibration of sparsetpc detector physics parameters by gradient descent.

Modules (one concept each): :mod:`paramsets` (what is fitted and how it is normalised), :mod:`losses`,
:mod:`batching` (mini-batches of tracks), :mod:`targets` (closure / file targets), :mod:`forward`,
:mod:`fitter`, :mod:`checkpoint`, :mod:`history`, :mod:`uncertainty`, :mod:`plots`, :mod:`scan`,
:mod:`distributed`, :mod:`cli` (``python -m calibration fit ...``), :mod:`toy` (a toy forward model).
"""
from .fitter import FitConfig, Fitter
from .losses import HitsLoss
from .paramsets import ParamSet, ParamSpec

__all__ = ["FitConfig", "Fitter", "HitsLoss", "ParamSet", "ParamSpec"]
