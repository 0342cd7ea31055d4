"""Forward models for the fitter: ``forward(params, data, noise=False, seed=None) -> Hits-like``.

Any callable works; ``noise``/``seed`` are passed only when its signature accepts them.  The default is
:class:`SimForward`, a thin wrapper of ``sparsetpc.simulate``.
"""
from __future__ import annotations

import inspect
import warnings
import torch
from typing import Callable, Dict, List, Optional

#: the words that mark sparsetpc.simulate's readout-cap warning
_CAP_WARNING = "would fire more than max_readouts"


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
        self.capped: Dict[tuple, str] = {}        # events → the last readout-cap warning simulate gave for them
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
        # a fit simulates the same events hundreds of times: the readout-cap warning is shown once per set of
        # events (and summarised by notes()); every other warning passes through
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hits = self._simulate(segments, self.detector, params, **kwargs)
        events = tuple(torch.unique(segments.event_id).tolist()) if hasattr(segments, "event_id") else ()
        for item in caught:
            message = str(item.message)
            if _CAP_WARNING in message:
                first = events not in self.capped
                self.capped[events] = message
                if not first:
                    continue
                message = f"events {list(events)}: {message} (shown once per event set in a fit)"
                warnings.warn(message, item.category, stacklevel=2)
            else:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        return hits

    def notes(self) -> List[str]:
        """Warnings for the fit's result: the events in which pixels hit the readout cap."""
        if not self.capped:
            return []
        events = sorted(e for key in self.capped for e in key)
        return [f"readout cap: in events {events} pixels would fire more than max_readouts readouts (larnd-sim "
                "drops them, so does the model); last message: " + list(self.capped.values())[-1]]

    def describe(self) -> dict:
        return {"forward": "sparsetpc.simulate", "memory_budget": self.memory_budget, "mode": self.mode,
                "return_waveforms": self.return_waveforms, "clock_phases": self.clock_phases,
                **({} if self.response is None or isinstance(self.response, str)
                   else {"response": getattr(self.response, "source", "table")})}
