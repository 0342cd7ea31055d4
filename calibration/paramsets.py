"""Parameter sets: which physics parameters are fitted, and how they are represented to the optimiser.

A :class:`ParamSet` is an ordered list of :class:`ParamSpec`.  Each spec names one field of
:class:`sparsetpc.params.Params` and carries its learning rate, bounds and normalisation.  The optimiser
works on *internal* (normalised) leaves; :meth:`ParamSet.physical` maps them back (differentiably) to the
physical 0-d tensors that the forward model reads.

Normalisations (physics.md §3):

``divide`` (default)
    internal = p / nominal, so leaves start near 1 and the learning rate is a relative step.
``standard``
    internal = (p - nominal) / sigma with sigma = (high - low) / 2 from ``RANGES``.  The reference code divides
    by sigma² (a dimensional slip: the leaf then has units of 1/p); we divide by sigma so the scale is unit-free.
``none``
    internal = p.
``inverse``
    internal = nominal / p (so internal ∝ 1/p).  Meant for ``lifetime``, whose inverse enters linearly in the
    attenuation exponent exp(−t_drift/τ): the loss is much closer to quadratic in 1/τ than in τ, and the
    gradient does not fade at long lifetimes.  Values reported (history, result) stay physical (µs).

Bounds (physical units) are enforced by projection after every optimiser step; the default bounds are the
``RANGES`` interval.  ``bounds: null`` in a YAML spec disables them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from sparsetpc.params import RANGES, Params

NORMALISATIONS = ("divide", "standard", "none", "inverse")
DEFAULT_LR = 1e-2


class ParamSetError(ValueError):
    """A parameter set is inconsistent (unknown name, bad bounds, vdrift fitted while linked...)."""


@dataclass
class ParamSpec:
    name: str
    lr: float = DEFAULT_LR
    norm: str = "divide"
    bounds: Optional[Tuple[float, float]] = None   # physical units; None = unbounded

    def __post_init__(self):
        if self.name not in RANGES or self.name not in Params.names():
            raise ParamSetError(f"unknown parameter {self.name!r}; fittable: {', '.join(Params.names())}")
        if self.norm not in NORMALISATIONS:
            raise ParamSetError(f"{self.name}: normalisation {self.norm!r} not in {NORMALISATIONS}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ParamSetError(f"{self.name}: learning rate must be positive, got {self.lr}")
        if self.bounds is not None:
            lo, hi = float(self.bounds[0]), float(self.bounds[1])
            if not lo < hi:
                raise ParamSetError(f"{self.name}: bounds must satisfy low < high, got {self.bounds}")
            self.bounds = (lo, hi)

    # --------------------------------------------------------------- physics ranges
    @property
    def nominal(self) -> float:
        return float(RANGES[self.name][0])

    @property
    def low(self) -> float:
        return float(RANGES[self.name][1])

    @property
    def high(self) -> float:
        return float(RANGES[self.name][2])

    @property
    def unit(self) -> str:
        return RANGES[self.name][3]

    # --------------------------------------------------------------- normalisation (affine p = a*q + b, or inverse)
    @property
    def scale_offset(self) -> Tuple[float, float]:
        if self.norm == "divide":
            return self.nominal, 0.0
        if self.norm == "standard":
            return 0.5 * (self.high - self.low), self.nominal
        if self.norm == "inverse":
            raise ParamSetError(f"{self.name}: the inverse normalisation is not affine")
        return 1.0, 0.0

    def to_internal(self, value):
        if self.norm == "inverse":
            return self.nominal / value
        a, b = self.scale_offset
        return (value - b) / a

    def to_physical(self, q):
        if self.norm == "inverse":
            return self.nominal / q
        a, b = self.scale_offset
        return q * a + b

    @property
    def jacobian(self) -> float:
        """d(physical)/d(internal) of an affine normalisation (see :meth:`jacobian_at` for any)."""
        return self.scale_offset[0]

    def jacobian_at(self, value: float) -> float:
        """d(physical)/d(internal) at the physical ``value`` (−p²/nominal for ``inverse``)."""
        if self.norm == "inverse":
            return -float(value) ** 2 / self.nominal
        return self.scale_offset[0]

    def internal_bounds(self) -> Optional[Tuple[float, float]]:
        if self.bounds is None:
            return None
        lo, hi = self.to_internal(self.bounds[0]), self.to_internal(self.bounds[1])
        return (min(lo, hi), max(lo, hi))

    def to_dict(self) -> dict:
        return {"name": self.name, "lr": self.lr, "norm": self.norm,
                "bounds": None if self.bounds is None else list(self.bounds)}


class ParamSet:
    """Ordered fitted parameters plus the fixed ones (``base`` overrides) and the vdrift↔eField link."""

    def __init__(self, specs: Sequence[ParamSpec], link_vdrift_efield: bool = False):
        names = [s.name for s in specs]
        if not names:
            raise ParamSetError("no parameter to fit")
        if len(set(names)) != len(names):
            raise ParamSetError(f"parameter listed twice: {names}")
        if link_vdrift_efield and "vdrift" in names:
            raise ParamSetError("vdrift is computed from eField when linked (--link-vdrift-efield); fit eField instead")
        self.specs: List[ParamSpec] = list(specs)
        self.link_vdrift_efield = bool(link_vdrift_efield)

    # --------------------------------------------------------------- construction
    @classmethod
    def from_names(cls, names: Iterable[str], lr: Optional[float] = None, norm: str = "divide",
                   link_vdrift_efield: bool = False, default_bounds: bool = True) -> "ParamSet":
        specs = []
        for name in names:
            if name not in RANGES:
                raise ParamSetError(f"unknown parameter {name!r}; fittable: {', '.join(Params.names())}")
            bounds = (RANGES[name][1], RANGES[name][2]) if default_bounds else None
            specs.append(ParamSpec(name, DEFAULT_LR if lr is None else float(lr), norm, bounds))
        return cls(specs, link_vdrift_efield)

    @classmethod
    def from_mapping(cls, mapping: Mapping, lr: Optional[float] = None, norm: str = "divide",
                     link_vdrift_efield: bool = False, default_bounds: bool = True) -> "ParamSet":
        """``{name: lr}`` (the seed's ``param_list.yaml``) or ``{name: {lr:, norm:, bounds: [lo, hi] | null}}``.

        An explicit per-parameter value wins over the global ``lr``/``norm`` arguments.
        """
        if not isinstance(mapping, Mapping) or not mapping:
            raise ParamSetError(f"parameter file must be a non-empty mapping name -> lr, got {mapping!r}")
        specs = []
        for name, value in mapping.items():
            if name not in RANGES:
                raise ParamSetError(f"unknown parameter {name!r} in parameter file; fittable: {', '.join(Params.names())}")
            bounds = (RANGES[name][1], RANGES[name][2]) if default_bounds else None
            spec_lr = DEFAULT_LR if lr is None else float(lr)
            spec_norm = norm
            if isinstance(value, Mapping):
                unknown = set(value) - {"lr", "norm", "bounds"}
                if unknown:
                    raise ParamSetError(f"{name}: unknown key(s) {sorted(unknown)} (allowed: lr, norm, bounds)")
                spec_lr = float(value.get("lr", spec_lr))
                spec_norm = value.get("norm", spec_norm)
                if "bounds" in value:
                    bounds = None if value["bounds"] is None else tuple(value["bounds"])
            elif value is not None:
                spec_lr = float(value)
            specs.append(ParamSpec(name, spec_lr, spec_norm, bounds))
        return cls(specs, link_vdrift_efield)

    @classmethod
    def from_yaml(cls, path, **kwargs) -> "ParamSet":
        import yaml
        with open(path) as handle:
            mapping = yaml.safe_load(handle)
        return cls.from_mapping(mapping, **kwargs)

    # --------------------------------------------------------------- accessors
    @property
    def names(self) -> List[str]:
        return [s.name for s in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self):
        return iter(self.specs)

    def __getitem__(self, name: str) -> ParamSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"link_vdrift_efield": self.link_vdrift_efield, "params": [s.to_dict() for s in self.specs]}

    # --------------------------------------------------------------- values
    def nominal_values(self) -> Dict[str, float]:
        return {s.name: s.nominal for s in self.specs}

    def sample_uniform(self, seed: int) -> Dict[str, float]:
        """Values drawn uniformly in each ``RANGES`` interval, in parameter order (closure-test targets)."""
        import numpy as np
        rng = np.random.default_rng(seed)
        return {s.name: float(rng.uniform(s.low, s.high)) for s in self.specs}

    def make_leaves(self, values: Mapping[str, float], dtype=torch.float64, device="cpu") -> List[torch.Tensor]:
        """Internal leaves (0-d, requires_grad) for physical ``values`` (missing names start at nominal)."""
        leaves = []
        for spec in self.specs:
            value = float(values.get(spec.name, spec.nominal))
            leaves.append(torch.tensor(spec.to_internal(value), dtype=dtype, device=device, requires_grad=True))
        return leaves

    def physical(self, leaves: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Physical 0-d tensors (differentiable functions of the leaves)."""
        return {spec.name: spec.to_physical(leaf) for spec, leaf in zip(self.specs, leaves)}

    def physical_values(self, leaves: Sequence[torch.Tensor]) -> Dict[str, float]:
        return {k: float(v.detach()) for k, v in self.physical(leaves).items()}

    def build_params(self, leaves: Sequence[torch.Tensor], base: Params) -> Params:
        """``base`` with the fitted fields replaced by the (graph-connected) physical values."""
        return base.replace(**self.physical(leaves))

    def base_params(self, dtype=torch.float64, device="cpu", fixed: Optional[Mapping[str, float]] = None) -> Params:
        return Params.nominal(dtype=dtype, device=device, link_vdrift_efield=self.link_vdrift_efield, **dict(fixed or {}))

    @torch.no_grad()
    def project_(self, leaves: Sequence[torch.Tensor]) -> None:
        """Clamp leaves into their bounds (in place, outside autograd)."""
        for spec, leaf in zip(self.specs, leaves):
            ib = spec.internal_bounds()
            if ib is not None:
                leaf.clamp_(ib[0], ib[1])

    def param_groups(self, leaves: Sequence[torch.Tensor], lr_scale: float = 1.0) -> List[dict]:
        return [{"params": [leaf], "lr": spec.lr * lr_scale, "name": spec.name} for spec, leaf in zip(self.specs, leaves)]

    def jacobians(self, values: Optional[Mapping[str, float]] = None) -> List[float]:
        """d(physical)/d(internal) per parameter, at the physical ``values`` (needed for ``inverse``)."""
        if values is None:
            return [s.jacobian for s in self.specs]
        return [s.jacobian_at(values[s.name]) for s in self.specs]
