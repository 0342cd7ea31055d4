"""Fittable physics parameters: one dataclass of 0-d tensors.

Nominal values and ranges follow larnd-sim's ``optimize/ranges.py`` (physics.md §3).  Any subset of the
fields can be made a leaf with ``requires_grad=True``; every stage reads its parameters from this object,
never from module globals.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Dict, Iterable, Tuple

import torch

from .exceptions import ParameterError

# name -> (nominal, lower, upper, unit).  Units: cm, µs, kV/cm, MeV, g/cm³.
RANGES: Dict[str, Tuple[float, float, float, str]] = {
    "Ab": (0.8, 0.78, 0.88, ""),
    "kb": (0.0486, 0.04, 0.07, "(kV/cm)(g/cm2)/MeV"),
    "eField": (0.5, 0.45, 0.55, "kV/cm"),
    "vdrift": (0.1587, 0.14, 0.18, "cm/us"),
    "lifetime": (2200.0, 500.0, 5000.0, "us"),
    "long_diff": (4.0e-6, 2e-6, 9e-6, "cm2/us"),
    "tran_diff": (8.8e-6, 4e-6, 14e-6, "cm2/us"),
    "MeVToElectrons": (4.237e4, 3.48e4, 5.13e4, "electrons/MeV"),
    "lArDensity": (1.38, 1.37, 1.41, "g/cm3"),
    "box_alpha": (0.93, 0.85, 1.1, ""),
    "box_beta": (0.207, 0.18, 0.22, "(kV/cm)(g/cm2)/MeV"),
    "temperature": (87.17, 85.0, 90.0, "K"),
}

# Electron mobility parametrisation (larnd-sim consts.electron_mobility, after Walkowiak).
_MOBILITY_A = (551.6, 7158.3, 4440.43, 4.29, 43.63, 0.2053)


def electron_mobility(efield: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Electron mobility in LAr [cm²/(kV·µs)] for a field [kV/cm] and temperature [K]."""
    a0, a1, a2, a3, a4, a5 = _MOBILITY_A
    e = efield
    num = a0 + a1 * e + a2 * e ** 1.5 + a3 * e ** 2.5
    den = 1 + (a1 / a0) * e + a4 * e ** 2 + a5 * e ** 3
    return num / den * (temperature / 89.0) ** (-1.5) / 1000.0


@dataclass
class Params:
    """Physics parameters as 0-d tensors (units in ``RANGES``).

    ``link_vdrift_efield``: when True the drift velocity is computed from eField through the mobility
    (``vdrift`` is then ignored), as larnd-sim's ``--link-vdrift-eField``.
    """

    Ab: torch.Tensor
    kb: torch.Tensor
    eField: torch.Tensor
    vdrift: torch.Tensor
    lifetime: torch.Tensor
    long_diff: torch.Tensor
    tran_diff: torch.Tensor
    MeVToElectrons: torch.Tensor
    lArDensity: torch.Tensor
    box_alpha: torch.Tensor
    box_beta: torch.Tensor
    temperature: torch.Tensor
    link_vdrift_efield: bool = False

    # ------------------------------------------------------------------ constructors
    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "link_vdrift_efield")

    @classmethod
    def nominal(cls, dtype=torch.float64, device="cpu", link_vdrift_efield: bool = False, **overrides) -> "Params":
        values = {name: RANGES[name][0] for name in cls.names()}
        for key, value in overrides.items():
            if key not in values:
                raise ParameterError(f"unknown parameter {key!r}; known: {', '.join(values)}")
            values[key] = value
        tensors = {k: torch.as_tensor(v, dtype=dtype, device=device).clone().reshape(()) for k, v in values.items()}
        return cls(**tensors, link_vdrift_efield=link_vdrift_efield)

    def replace(self, **changes) -> "Params":
        """A copy with some fields replaced (floats are converted to 0-d tensors of the same dtype/device)."""
        ref = self.Ab
        converted = {}
        for key, value in changes.items():
            if key == "link_vdrift_efield":
                converted[key] = bool(value)
            elif key in self.names():
                converted[key] = value if torch.is_tensor(value) else torch.tensor(float(value), dtype=ref.dtype, device=ref.device)
            else:
                raise ParameterError(f"unknown parameter {key!r}")
        return dataclasses.replace(self, **converted)

    def requires_grad_(self, names: Iterable[str]) -> "Params":
        """Make the named fields leaves that require grad (in place; returns self)."""
        for name in names:
            if name not in self.names():
                raise ParameterError(f"unknown parameter {name!r}")
            value = getattr(self, name).detach().clone().requires_grad_(True)
            setattr(self, name, value)
        return self

    def to(self, dtype=None, device=None) -> "Params":
        return dataclasses.replace(self, **{n: getattr(self, n).to(dtype=dtype, device=device) for n in self.names()})

    def as_dict(self) -> Dict[str, float]:
        return {n: float(getattr(self, n).detach()) for n in self.names()}

    # ------------------------------------------------------------------ derived quantities
    @property
    def dtype(self):
        return self.Ab.dtype

    @property
    def device(self):
        return self.Ab.device

    def drift_velocity(self) -> torch.Tensor:
        """Drift velocity [cm/µs]: ``vdrift``, or E·µ(E, T) when linked to the field."""
        if self.link_vdrift_efield:
            return self.eField * electron_mobility(self.eField, self.temperature)
        return self.vdrift

    def validate(self) -> None:
        for name in self.names():
            value = getattr(self, name)
            if not torch.is_tensor(value) or value.dim() != 0:
                raise ParameterError(f"parameter {name} must be a 0-d tensor, got {value!r}")
            if not bool(torch.isfinite(value.detach())):
                raise ParameterError(f"parameter {name} is not finite: {float(value)}")
        for name in ("vdrift", "lifetime", "MeVToElectrons", "lArDensity", "eField"):
            if float(getattr(self, name).detach()) <= 0:
                raise ParameterError(f"parameter {name} must be positive, got {float(getattr(self, name))}")
        for name in ("long_diff", "tran_diff", "kb"):
            if float(getattr(self, name).detach()) < 0:
                raise ParameterError(f"parameter {name} must be non-negative, got {float(getattr(self, name))}")


def nominal_value(name: str) -> float:
    return RANGES[name][0]


def parameter_range(name: str) -> Tuple[float, float]:
    return RANGES[name][1], RANGES[name][2]
