"""Recombination (quenching): ionisation electrons surviving recombination (physics.md §2.1).

Birks: R = Ab / (1 + kb·dEdx/(E·ρ)).  Box: ξ = β·dEdx/(E·ρ), R = max(0, ln(α + ξ)/ξ).
n_e = R · dE · MeVToElectrons (kept as a float: truncation would kill gradients).
"""
from __future__ import annotations

import torch
from torch import nn

from .params import Params

MODELS = ("birks", "box")


def birks_recombination(dEdx: torch.Tensor, params: Params) -> torch.Tensor:
    """Birks recombination factor for dE/dx [MeV/cm]."""
    return params.Ab / (1.0 + params.kb * dEdx / (params.eField * params.lArDensity))


def box_recombination(dEdx: torch.Tensor, params: Params) -> torch.Tensor:
    """Modified-Box recombination factor; R → 0 as dE/dx → 0 (ln α < 0), never negative."""
    xi = params.box_beta * dEdx / (params.eField * params.lArDensity)
    safe_xi = torch.where(xi > 0, xi, torch.ones_like(xi))
    ratio = torch.log(params.box_alpha + safe_xi) / safe_xi
    return torch.where(xi > 0, torch.clamp(ratio, min=0.0), torch.zeros_like(xi))


def quench(dEdx: torch.Tensor, dE: torch.Tensor, params: Params, model: str = "birks") -> torch.Tensor:
    """Electrons [e⁻] escaping recombination for segments with dE/dx [MeV/cm] and dE [MeV]."""
    if model == "birks":
        recombination = birks_recombination(dEdx, params)
    elif model == "box":
        recombination = box_recombination(dEdx, params)
    else:
        raise ValueError(f"unknown quenching model {model!r}; choose one of {MODELS}")
    return recombination * dE * params.MeVToElectrons


class Quenching(nn.Module):
    """Thin module wrapper of :func:`quench`."""

    def __init__(self, model: str = "birks"):
        super().__init__()
        self.model = model

    def forward(self, dEdx, dE, params: Params):
        return quench(dEdx, dE, params, self.model)
