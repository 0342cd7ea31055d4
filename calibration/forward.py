"""Forward models for the fitter: ``forward(params, data, noise=False, seed=None) -> Hits-like``.

Any callable works; ``noise``/``seed`` are passed only when its signature accepts them.  The default is
:class:`SimForward`, a thin wrapper of ``sparsetpc.simulate``.
"""
from __future__ import annotations

import inspect
import torch
from typing import Callable, Optional


def accepts(fn: Callable, name: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def call_forward(forward: Callable, params, data, noise: bool = False, seed: Optional[int] = None):
    kwargs = {}
    if accepts(forward, "noise"):
        kwargs["noise"] = noise
    elif noise:
        raise ValueError("noise requested but the forward model takes no `noise` argument")
    if accepts(forward, "seed"):
        kwargs["seed"] = seed
    return forward(params, data, **kwargs)


class SimForward:
    """``sparsetpc.simulate`` with a fixed detector, memory budget and mode."""

    def __init__(self, detector=None, memory_budget=None, mode: str = "relaxed", return_waveforms: bool = False,
                 clock_phases: Optional[int] = None, response=None):
        import sparsetpc as st
        if not hasattr(st, "simulate"):
            raise RuntimeError("sparsetpc.simulate is not available in this checkout")
        self._simulate = st.simulate
        self.detector = detector if detector is not None else st.Detector.default()
        self.memory_budget = memory_budget
        self.mode = mode
        self.return_waveforms = return_waveforms
        self.clock_phases = clock_phases          # relaxed mode: FrontEnd.clock_phases (None: its default)
        self.response = response                  # None/'analytic' or a field-response table (sparsetpc.field_response)

    def __call__(self, params, segments, noise: bool = False, seed: Optional[int] = None):
        mode = self.mode
        if noise and mode == "relaxed":
            # relaxed is the expectation over the noise.  A noisy target is data, made by the hard front end; a
            # noisy guess that must carry gradients uses the reference model's differentiable noisy front end.
            wants_grad = torch.is_grad_enabled() and any(getattr(params, n).requires_grad for n in params.names())
            mode = "reference" if wants_grad else "hard"
        kwargs = dict(return_waveforms=self.return_waveforms, noise=noise, seed=seed, mode=mode)
        if self.memory_budget is not None:
            kwargs["memory_budget"] = self.memory_budget
        if self.clock_phases is not None:
            from sparsetpc.electronics import FrontEnd
            kwargs["front_end"] = FrontEnd(tick=self.detector.tick, clock_phases=int(self.clock_phases))
        if self.response is not None and not (isinstance(self.response, str) and self.response == "analytic"):
            kwargs["response"] = self.response
        return self._simulate(segments, self.detector, params, **kwargs)

    def describe(self) -> dict:
        return {"forward": "sparsetpc.simulate", "memory_budget": self.memory_budget, "mode": self.mode,
                "return_waveforms": self.return_waveforms, "clock_phases": self.clock_phases,
                **({} if self.response is None or isinstance(self.response, str)
                   else {"response": getattr(self.response, "source", "table")})}
