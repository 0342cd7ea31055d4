"""Fittable physics parameters: one dataclass of 0-d tensors.

Nominal values and ranges follow larnd-sim's ``optimize/ranges.py`` (physics.md §3).  Any subset of the
fields can be made a leaf with ``requires_grad=True``; every stage reads its parameters from this object,
never from module globals.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
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

#: Drift velocities [cm/µs] accepted by :meth:`Params.validate` (LAr: ≈ 0.16 at 0.5 kV/cm; outside this
#: band the time window and drift arrays blow up, e.g. temperature → 0 with ``link_vdrift_efield``).
DRIFT_VELOCITY_SANE = (0.01, 1.0)

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

    def detached(self) -> "Params":
        """A copy whose fields are detached from any graph (same tensors' values, no gradients)."""
        return Params(**{n: getattr(self, n).detach() for n in self.names()},
                      link_vdrift_efield=self.link_vdrift_efield)

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
        """Raise :class:`ParameterError` naming the first unusable parameter; warn for values outside ``RANGES``.

        Refused: a field that is not a 0-d tensor, not floating point or not finite; fields of different dtypes
        or devices (one float32 among float64 would silently run the whole simulation in float32: convert with
        ``Params.to(dtype=...)``); vdrift, lifetime, MeVToElectrons, lArDensity, eField, temperature, Ab,
        box_alpha ≤ 0; long_diff, tran_diff, kb, box_beta < 0; a drift velocity (``vdrift``, or E·µ(E, T) with
        ``link_vdrift_efield``) outside :data:`DRIFT_VELOCITY_SANE` cm/µs.  Values outside ``RANGES`` (larnd-sim's
        fit ranges) are allowed with one ``UserWarning`` naming the parameter, its value and the range.
        """
        kinds = {}
        for name in self.names():
            value = getattr(self, name)
            if not torch.is_tensor(value) or value.dim() != 0:
                raise ParameterError(f"parameter {name} must be a 0-d tensor, got {value!r}")
            if not value.dtype.is_floating_point:
                raise ParameterError(f"parameter {name} must be a floating-point tensor, got {value.dtype}")
            if not bool(torch.isfinite(value.detach())):
                raise ParameterError(f"parameter {name} is not finite: {float(value)}")
            kinds.setdefault((value.dtype, str(value.device)), []).append(name)
        if len(kinds) > 1:
            def kind(key):
                return f"{str(key[0]).replace('torch.', '')} on {key[1]}"
            ordered = sorted(kinds, key=lambda key: -len(kinds[key]))
            odd = "; ".join(f"{', '.join(kinds[key])} {kind(key)}" for key in ordered[1:])
            raise ParameterError(f"parameters have mixed dtypes/devices: {odd}, the others {kind(ordered[0])}; "
                                 "make them one dtype and device, e.g. params.to(dtype=torch.float64)")
        values = {name: float(getattr(self, name).detach()) for name in self.names()}
        for name in ("vdrift", "lifetime", "MeVToElectrons", "lArDensity", "eField", "temperature", "Ab", "box_alpha"):
            if values[name] <= 0:
                raise ParameterError(f"parameter {name} must be positive, got {values[name]}")
        for name in ("long_diff", "tran_diff", "kb", "box_beta"):
            if values[name] < 0:
                raise ParameterError(f"parameter {name} must be non-negative, got {values[name]}")
        self._check_drift_velocity(values)
        outside = [name for name in self.names() if not RANGES[name][1] <= values[name] <= RANGES[name][2]]
        if self.link_vdrift_efield and "vdrift" in outside:
            outside.remove("vdrift")                    # ignored when linked to the field
        if outside:
            described = "; ".join(f"{name} = {values[name]:.6g} outside [{RANGES[name][1]:.6g}, {RANGES[name][2]:.6g}]"
                                  + (f" {RANGES[name][3]}" if RANGES[name][3] else "") for name in outside)
            warnings.warn(f"parameter(s) outside larnd-sim's ranges: {described}", UserWarning, stacklevel=2)

    def _check_drift_velocity(self, values: Dict[str, float]) -> None:
        low, high = DRIFT_VELOCITY_SANE
        if self.link_vdrift_efield:
            velocity = float(self.drift_velocity().detach())
            source = (f"drift velocity {velocity:.6g} cm/us from eField = {values['eField']:.6g} kV/cm and "
                      f"temperature = {values['temperature']:.6g} K (link_vdrift_efield)")
        else:
            velocity = values["vdrift"]
            source = f"vdrift = {velocity:.6g} cm/us"
        if not math.isfinite(velocity) or not low <= velocity <= high:
            raise ParameterError(f"{source} is not a physical drift velocity in liquid argon "
                                 f"(expected {low}-{high} cm/us)")


def nominal_value(name: str) -> float:
    return RANGES[name][0]


def parameter_range(name: str) -> Tuple[float, float]:
    return RANGES[name][1], RANGES[name][2]
