"""Gradient-descent fit of physics parameters: optimiser, clipping, schedulers, mini-batches, checkpoints.

The fitter is generic: ``forward(params, data[, noise=, seed=]) -> Hits-like`` and
``loss(guess, target[, n_units=]) -> scalar``.  One iteration = one mini-batch: simulate the guess with the
current parameters, compare with the cached target, back-propagate to the internal (normalised) leaves,
(optionally) all-reduce across ranks, record, clip, step, project into bounds, step the scheduler.

Determinism: batch order per epoch and the guess-noise seeds are derived from (seed, epoch/iteration, batch)
rather than drawn from a running generator, and the global RNG states are checkpointed too, so a resumed fit
follows the uninterrupted trajectory bit for bit on CPU.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from . import checkpoint as ckpt
from ._io import write_json
from .distributed import DistContext
from .forward import accepts, call_forward
from .history import History
from .paramsets import ParamSet
from .targets import derive_seed, detach_tree, simulate_targets
from .uncertainty import (covariance_from_hessian, degeneracy_warnings, fd_hessian, nan_to_none, sandwich_covariance,
                          NOT_POSITIVE_DEFINITE, positive_definite, sandwich_from_score_covariance, to_physical)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "lbfgs": torch.optim.LBFGS}


@dataclass
class FitConfig:
    iterations: int = 200
    optimizer: str = "adam"
    optimizer_kwargs: Dict[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0                       # multiplies every parameter's learning rate
    clip_norm: Optional[float] = 1.0            # clip_grad_norm_ on the internal leaves; None = off
    scheduler: Optional[str] = None             # name in torch.optim.lr_scheduler
    scheduler_kwargs: Dict[str, Any] = field(default_factory=dict)
    scheduler_step: str = "epoch"               # "epoch" (after every pass over the batches) or "iteration"
    checkpoint_every: int = 10
    seed: int = 0
    shuffle: bool = True                        # batch order per epoch
    noise_guess: bool = False
    progress: bool = True
    history_format: str = "json"                # json | hdf5
    stop_after: Optional[int] = None            # test hook: leave after this many iterations, as if killed
    hessian: bool = True
    hessian_step: float = 1e-3                  # FD step in internal units
    errordef_up: Optional[float] = None         # cov = 2·up·H⁻¹ (see uncertainty.py); None: the loss's own
                                                # (0.5 for the likelihood, 1 for χ²; 1 otherwise)
    plots: bool = True
    polish_lbfgs: int = 0                       # L-BFGS steps on the full objective (all batches) after the loop
    polish_kwargs: Dict[str, Any] = field(default_factory=dict)   # torch.optim.LBFGS kwargs for the polish
    max_wall_s: Optional[float] = None          # leave the main loop once this much wall time is spent
    polish_max_wall_s: Optional[float] = None   # no new polish step once the polish has run this long
    polish_ftol: float = 1e-12                  # polish converged when a step lowers the loss by <= ftol*max(|f|, 1)
    polish_edm: float = 1e-6                    # with a curvature: the whitened polish has converged at a point
                                                # where ½ gᵀC⁻¹g (loss units) is at most this (0: off)
    polish_plain_iterations: int = 10           # with a curvature: L-BFGS iterations of a step in internal units
    polish_precondition_after: int = 1          # with a curvature (Fitter(curvature=...)): L-BFGS steps in the
                                                # internal units before the polish moves to the whitened ones
    sigma_replicas: int = 0                     # χ² loss: per-readout σ_ADC from this many noisy replicas of the
                                                # guess at the initial values (readout_sigma.py); 0 = noise model
    score_replicas: int = 0                     # likelihood / χ²: also the sandwich σ whose score covariance is
                                                # taken over this many hard-mode noisy replicas drawn at the
                                                # fitted point (0: not computed)

    def to_dict(self) -> dict:
        return asdict(self)


#: the fewest score replicas of the replica sandwich (σ from N replicas is known to ≈ 1/√(2N): 22 % at 10)
MIN_SCORE_REPLICAS = 10


class FitInterrupted(Exception):
    pass


class _PolishWallTime(Exception):
    """Raised inside an L-BFGS step when the polish's wall time is spent (see Fitter._polish)."""


#: curvature computations per polish at most (one per L-BFGS start, and per step whose Newton trial failed)
MAX_CURVATURES = 4
#: the likelihood's goodness of fit below which the polish trusts the Fisher information (mean χ² per target
#: readout; 2 where the model describes the data)
MAX_MEAN_CHI2 = 4.0


class _PolishConverged(Exception):
    """Raised inside a whitened L-BFGS step at a point whose estimated distance to the minimum is below
    ``polish_edm`` (see Fitter._polish)."""

    def __init__(self, point, loss):
        super().__init__()
        self.point, self.loss = point, loss


def _check_config(config: FitConfig) -> None:
    """Refuse settings that cannot work, before any simulation (the CLI checks its arguments the same way)."""
    if config.iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {config.iterations}")
    if config.checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {config.checkpoint_every}")
    for name in ("max_wall_s", "polish_max_wall_s"):
        value = getattr(config, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    if config.polish_lbfgs < 0:
        raise ValueError(f"polish_lbfgs must be >= 0, got {config.polish_lbfgs}")
    if not (config.polish_edm >= 0 and math.isfinite(config.polish_edm)):
        raise ValueError(f"polish_edm must be a finite number >= 0, got {config.polish_edm}")
    if config.polish_plain_iterations < 1:
        raise ValueError(f"polish_plain_iterations must be >= 1, got {config.polish_plain_iterations}")
    if config.polish_precondition_after < 0:
        raise ValueError(f"polish_precondition_after must be >= 0, got {config.polish_precondition_after}")
    if config.score_replicas != 0 and config.score_replicas < MIN_SCORE_REPLICAS:
        raise ValueError(f"score_replicas must be 0 or >= {MIN_SCORE_REPLICAS} (a covariance of the score), "
                         f"got {config.score_replicas}")


class Fitter:
    def __init__(self, paramset: ParamSet, forward: Callable, loss_fn: Callable, batches: Sequence,
                 config: FitConfig, *, targets: Optional[Sequence] = None,
                 target_values: Optional[Mapping[str, float]] = None, target_noise: bool = False,
                 initial_values: Optional[Mapping[str, float]] = None, fixed: Optional[Mapping[str, float]] = None,
                 out_dir: Optional[str] = None, dist: Optional[DistContext] = None, dtype=torch.float64,
                 device="cpu", meta: Optional[Mapping] = None, curvature: Optional[Callable] = None):
        """``curvature(params, data) -> [P, P]``: an approximation of the Hessian of the total objective of one
        batch in physical units (e.g. ``curvature.FisherCurvature``); when given, the L-BFGS polish runs in
        the coordinates it whitens (see ``_polish``)."""
        if not batches:
            raise ValueError("no batch to fit (did the selection keep any track?)")
        if config.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        _check_config(config)
        self.paramset = paramset
        self.forward = forward
        self.loss_fn = loss_fn
        self.config = config
        self.dist = dist or DistContext()
        self.dtype = dtype
        self.device = device
        self.out_dir = out_dir
        self.fixed = dict(fixed or {})
        self.meta = dict(meta or {})
        self.curvature = curvature
        self.last_mean_chi2 = None       # goodness of fit of the last evaluate() (the likelihood's mean χ²)
        self.batches = list(batches)
        self.local_batches = [self.dist.shard(b) for b in self.batches]
        self.target_values = None if target_values is None else {k: float(v) for k, v in target_values.items()}
        self.initial_values = {s.name: float((initial_values or {}).get(s.name, s.nominal)) for s in paramset}
        self._loss_takes_units = accepts(loss_fn, "n_units")
        self.base = paramset.base_params(dtype=dtype, device=device, fixed=self.fixed)
        if targets is None:
            if self.target_values is None:
                raise ValueError("give either targets or target_values (closure test)")
            # only rank 0 writes: other ranks re-simulate their (deterministic) targets on every start
            cache = None if out_dir is None or not self.dist.is_main else os.path.join(out_dir, "targets")
            describe = getattr(forward, "describe", None)
            tag = "" if not self.dist.enabled else f"_r{self.dist.rank}of{self.dist.world}"
            targets = simulate_targets(forward, paramset, self.local_batches, self.target_values, dtype=dtype,
                                       device=device, noise=target_noise, seed=config.seed, fixed=self.fixed,
                                       cache_dir=cache, tag=tag,
                                       cache_meta={"forward": describe() if callable(describe) else repr(forward),
                                                   **self.meta.get("input", {})})
        if len(targets) != len(self.local_batches):
            raise ValueError(f"{len(targets)} targets for {len(self.local_batches)} batches")
        self.targets = list(targets)
        self.readout_sigma_summary = None
        if config.sigma_replicas:
            self._attach_readout_sigma()

    def _attach_readout_sigma(self) -> None:
        """Per-target-readout σ_ADC from noisy replicas of the guess at the initial values (χ² loss only)."""
        if not self.loss_is_chi2:
            raise ValueError("sigma_replicas needs the chi2 loss")
        from .readout_sigma import replica_sigma, with_readout_sigma
        params = self.base.replace(**self.initial_values)
        max_dt = getattr(self.loss_fn, "options", {}).get("max_dt", 1.0)
        sigmas = []
        for b, batch in enumerate(self.local_batches):
            if batch.n_units == 0 or self.targets[b] is None:
                continue
            sigma = replica_sigma(self.forward, params, batch.data, self.targets[b], self.config.sigma_replicas,
                                  seed=derive_seed(self.config.seed, 5, b), max_dt=max_dt)
            self.targets[b] = with_readout_sigma(self.targets[b], sigma)
            sigmas.append(sigma)
        values = torch.cat(sigmas).double().cpu().numpy() if sigmas else np.zeros(0)
        self.readout_sigma_summary = {
            "source": f"{self.config.sigma_replicas} noisy replicas of the guess at the initial values",
            "readouts": int(values.size),
            "quantiles_adc": {q: float(np.quantile(values, float(q))) for q in ("0.1", "0.5", "0.9", "0.99")}
            if values.size else None}

    # ------------------------------------------------------------------ pieces
    def _order(self, epoch: int) -> np.ndarray:
        nb = len(self.batches)
        if not self.config.shuffle or nb == 1:
            return np.arange(nb)
        return np.random.default_rng(derive_seed(self.config.seed, 4, epoch)).permutation(nb)

    def _batch_loss(self, leaves: List[torch.Tensor], b: int, noise_seed: int) -> torch.Tensor:
        """Mean loss over the local units of batch ``b`` (graph to ``leaves``)."""
        batch = self.local_batches[b]
        params = self.paramset.build_params(leaves, self.base)
        out = call_forward(self.forward, params, batch.data, noise=self.config.noise_guess, seed=noise_seed)
        if self._loss_takes_units:
            return self.loss_fn(out, self.targets[b], n_units=batch.n_units)
        return self.loss_fn(out, self.targets[b])

    def _loss_and_grad(self, leaves: List[torch.Tensor], b: int, it: int) -> torch.Tensor:
        for leaf in leaves:
            leaf.grad = None
        n_local = self.local_batches[b].n_units
        if n_local == 0:
            loss = torch.zeros((), dtype=self.dtype, device=self.device)
            for leaf in leaves:
                leaf.grad = torch.zeros_like(leaf)
        else:
            loss = self._batch_loss(leaves, b, derive_seed(self.config.seed, 2, it, b))
            loss.backward()
            for leaf in leaves:
                if leaf.grad is None:
                    leaf.grad = torch.zeros_like(leaf)
        return self.dist.reduce_grads(leaves, loss, n_local)

    @property
    def loss_is_chi2(self) -> bool:
        """The loss is a χ² or a −log L per unit (``loss.statistical``, or ``loss.chi2``, true): the full
        objective is then the *sum* over units, and its curvature gives statistical errors."""
        return bool(getattr(self.loss_fn, "statistical", getattr(self.loss_fn, "chi2", False)))

    @property
    def errordef(self) -> float:
        """ERRORDEF ``up`` of the σ: the configured one, else the loss's own (0.5 for −log L, 1 for χ²), else 1."""
        if self.config.errordef_up is not None:
            return float(self.config.errordef_up)
        own = getattr(self.loss_fn, "errordef", None)
        return float(own) if own is not None else 1.0

    def evaluate(self, theta: torch.Tensor, need_grad: bool = True, total: Optional[bool] = None,
                 batch_gradients: Optional[list] = None):
        """Loss and gradient over *all* batches at internal point ``theta`` [P]: the unit-weighted mean, or with
        ``total`` (default: when the loss is a χ²) the sum over units, i.e. the total χ².  ``batch_gradients``: a
        list that receives each batch's gradient of its total loss (numpy [P]), for the sandwich covariance."""
        total = self.loss_is_chi2 if total is None else total
        leaves = [theta[k].detach().clone().requires_grad_(need_grad) for k in range(theta.numel())]
        total_loss = torch.zeros((), dtype=self.dtype, device=self.device)
        grad_sum = torch.zeros(len(leaves), dtype=self.dtype, device=self.device)
        n_total, chi2_sum, chi2_readouts = 0, 0.0, 0
        for b, batch in enumerate(self.local_batches):
            if batch.n_units == 0:
                continue
            with torch.set_grad_enabled(need_grad):
                loss = self._batch_loss(leaves, b, derive_seed(self.config.seed, 3, b))
            if need_grad:
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                batch_grad = torch.stack([torch.zeros((), dtype=self.dtype, device=self.device) if g is None
                                          else g.reshape(()) for g in grads]) * batch.n_units
                grad_sum += batch_grad
                if batch_gradients is not None:
                    batch_gradients.append(batch_grad.detach().cpu().numpy())
            total_loss += loss.detach() * batch.n_units
            n_total += batch.n_units
            counts = getattr(self.loss_fn, "last_counts", None)
            if isinstance(counts, dict) and "chi2_sum" in counts:
                chi2_sum += counts["chi2_sum"]
                chi2_readouts += counts["chi2_readouts"]
        packed = torch.cat([grad_sum, total_loss.reshape(1),
                            torch.tensor([float(n_total), chi2_sum, float(chi2_readouts)], dtype=self.dtype,
                                         device=self.device)])
        if self.dist.enabled:
            import torch.distributed as tdist
            tdist.all_reduce(packed, op=tdist.ReduceOp.SUM)
        # the likelihood's goodness of fit at this point: the target readouts' mean χ² (None for other losses)
        self.last_mean_chi2 = float(packed[-2] / packed[-1]) if float(packed[-1]) > 0 else None
        packed = packed[:-2]
        n = packed[-1].clamp_min(1.0)
        if total:
            return packed[-2], packed[:-2]
        return packed[-2] / n, packed[:-2] / n

    def _make_optimizer(self, leaves):
        cfg = self.config
        cls = OPTIMIZERS[cfg.optimizer]
        if cfg.optimizer == "lbfgs":
            # L-BFGS: one parameter group, so per-parameter learning rates do not apply; lr 1 with a strong-Wolfe
            # line search unless given in optimizer_kwargs.  No gradient clipping (it would corrupt the curvature
            # pairs); use full batches (one batch), since L-BFGS assumes a deterministic objective.
            kwargs = {"lr": 1.0, "line_search_fn": "strong_wolfe", **cfg.optimizer_kwargs}
            return cls(leaves, **kwargs)
        return cls(self.paramset.param_groups(leaves, cfg.lr_scale), **cfg.optimizer_kwargs)

    def _make_scheduler(self, optimizer):
        name = self.config.scheduler
        if not name:
            return None
        if not hasattr(torch.optim.lr_scheduler, name):
            raise ValueError(f"unknown LR scheduler {name!r} (a class of torch.optim.lr_scheduler)")
        return getattr(torch.optim.lr_scheduler, name)(optimizer, **self.config.scheduler_kwargs)

    def _write(self, path_fn, *args):
        if self.out_dir is not None and self.dist.is_main:
            path_fn(*args)

    # ------------------------------------------------------------------ main loop
    def run(self, resume: bool = False, resume_force: bool = False) -> Dict[str, Any]:
        """Fit; ``resume``: continue from ``out_dir/checkpoint.pt`` when present, refusing a checkpoint of another
        fit definition (``meta["definition"]``) unless ``resume_force``.  The wall time (``max_wall_s`` budget,
        ``wall_time_s`` of the result) continues from the checkpoint's."""
        cfg = self.config
        ps = self.paramset
        leaves = ps.make_leaves(self.initial_values, dtype=self.dtype, device=self.device)
        optimizer = self._make_optimizer(leaves)
        scheduler = self._make_scheduler(optimizer)
        history = History(ps.names, self.target_values, self.initial_values, {s.name: s.norm for s in ps},
                          {s.name: s.unit for s in ps})
        start, wall_prev = 0, 0.0
        ck_path = None if self.out_dir is None else ckpt.checkpoint_path(self.out_dir)
        if resume and ck_path is not None and os.path.exists(ck_path):
            state = ckpt.load_checkpoint(ck_path)
            saved = state["meta"].get("params")
            if saved is not None and saved != ps.names and not resume_force:
                raise ckpt.CheckpointMismatchError(f"{ck_path}: checkpoint fits {saved}, this run fits {ps.names}")
            if saved is not None and len(saved) != len(ps.names):
                raise ckpt.CheckpointMismatchError(f"{ck_path}: checkpoint fits {len(saved)} parameter(s) "
                                                   f"{saved}, this run {len(ps.names)}: cannot resume even forced")
            self.resume_differences = ckpt.check_definition(ck_path, state, self.meta.get("definition"),
                                                            force=resume_force)
            self.resumed_from = int(state["iteration"])
            with torch.no_grad():
                for leaf, value in zip(leaves, state["leaves"]):
                    leaf.copy_(value.to(dtype=leaf.dtype, device=leaf.device))
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"])
            history = History.from_dict(state["history"])
            start, wall_prev = int(state["iteration"]), float(state["wall_time_s"])
        else:
            torch.manual_seed(cfg.seed)
            np.random.seed(cfg.seed % (2 ** 32))
            random.seed(cfg.seed)
        t0 = time.perf_counter()
        nb = len(self.batches)
        pbar = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm
            pbar = tqdm(total=cfg.iterations, initial=start, desc="fit", dynamic_ncols=True, leave=False)
        it = start
        done_here = 0
        history_name = "history.json" if cfg.history_format == "json" else "history.h5"

        def save_checkpoint():
            wall = wall_prev + time.perf_counter() - t0
            self._write(lambda: ckpt.save_checkpoint(
                ck_path, iteration=it, leaves=leaves, optimizer=optimizer, scheduler=scheduler,
                history=history, wall_time_s=wall, meta={"params": ps.names, "config": cfg.to_dict(),
                                                         "definition": self.meta.get("definition")}))
            self._write(lambda: history.save(os.path.join(self.out_dir, history_name), cfg.history_format))
        try:
            while it < cfg.iterations:
                if cfg.stop_after is not None and done_here >= cfg.stop_after:
                    return {"interrupted": True, "iteration": it}
                if cfg.max_wall_s is not None and wall_prev + time.perf_counter() - t0 > cfg.max_wall_s:
                    self.stopped_by_wall = True
                    if ck_path is not None and it > start:
                        save_checkpoint()        # a resume with a larger budget continues from here
                    break
                epoch, pos = divmod(it, nb)
                b = int(self._order(epoch)[pos])
                values = ps.physical_values(leaves)
                if cfg.optimizer == "lbfgs":
                    record = {}

                    def closure():
                        loss_c = self._loss_and_grad(leaves, b, it)
                        if "loss" not in record:
                            record["loss"] = float(loss_c)
                            record["grads"] = [float(l.grad) for l in leaves]
                        return loss_c
                    optimizer.step(closure)
                    loss_value, grads = record["loss"], record["grads"]
                else:
                    loss = self._loss_and_grad(leaves, b, it)
                    loss_value = float(loss)
                    grads = [float(l.grad) for l in leaves]
                    if all(math.isfinite(g) for g in grads) and math.isfinite(loss_value):
                        if cfg.clip_norm:
                            torch.nn.utils.clip_grad_norm_(leaves, cfg.clip_norm)
                        optimizer.step()
                    else:
                        grads = [math.nan] * len(leaves)    # step skipped
                ps.project_(leaves)
                lrs = {s.name: float(optimizer.param_groups[0 if cfg.optimizer == "lbfgs" else k]["lr"])
                       for k, s in enumerate(ps)}
                history.append(it, loss_value, b, values, dict(zip(ps.names, grads)), lrs)
                if scheduler is not None and (cfg.scheduler_step == "iteration" or pos == nb - 1):
                    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        scheduler.step(loss_value)
                    else:
                        scheduler.step()
                it += 1
                done_here += 1
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix({"loss": f"{loss_value:.4g}",
                                      **{k: f"{v:.4g}" for k, v in ps.physical_values(leaves).items()}})
                if ck_path is not None and (it % max(cfg.checkpoint_every, 1) == 0 or it == cfg.iterations):
                    save_checkpoint()
        finally:
            if pbar is not None:
                pbar.close()
        polish = self._polish(leaves, history, it) if cfg.polish_lbfgs > 0 else None
        result = self._finish(leaves, history, it, wall_prev + time.perf_counter() - t0, history_name, polish)
        return result

    def _polish(self, leaves: List[torch.Tensor], history: History, it: int) -> Dict[str, Any]:
        """L-BFGS (strong-Wolfe line search) on the full deterministic objective (every batch), after the loop.

        Bounds by an active set: a parameter at a bound whose gradient pushes it outwards, or that a step had to
        project back onto a bound, is held there and the L-BFGS runs over the others; once that reduced problem
        stops decreasing, the held parameters whose gradient points inwards are released.  Each change of the
        active set restarts the L-BFGS memory (its curvature pairs describe the other subspace), and holding
        until the reduced problem has converged keeps a parameter from cycling between bound and interior.
        Inside a step the line search may still probe outside the bounds: there the objective is continued by a
        steep quadratic (see ``closure``).  Stops after ``polish_lbfgs`` steps, when a step lowers the loss by no
        more than ``polish_ftol``·max(|f|, 1) and no held parameter can be released, or after
        ``polish_max_wall_s``.
        Not checkpointed: a resumed fit that had finished its loop redoes the polish from the final checkpoint
        (deterministic, so the result is the same).  Each polish step is recorded in the history with batch −1;
        its gradients are those of the full objective.
        """
        cfg = self.config
        ps = self.paramset
        t0 = time.perf_counter()
        theta = torch.stack([leaf.detach().reshape(()) for leaf in leaves]).clone()
        kwargs = {"lr": 1.0, "max_iter": 20, "line_search_fn": "strong_wolfe", "tolerance_grad": 1e-12,
                  "tolerance_change": 1e-15, "history_size": 20, **cfg.polish_kwargs}
        lo = torch.tensor([(spec.internal_bounds() or (-math.inf, math.inf))[0] for spec in ps],
                          dtype=theta.dtype, device=theta.device)
        hi = torch.tensor([(spec.internal_bounds() or (-math.inf, math.inf))[1] for spec in ps],
                          dtype=theta.dtype, device=theta.device)
        n_eval = [0]
        last = {}
        best = {"loss": math.inf, "point": None}

        def full(point):
            """(loss, gradient) of the full objective, the last point remembered (steps end where they looked).
            Past ``polish_max_wall_s`` no new evaluation starts: the step is abandoned (a step may take up to
            max_iter evaluations) and the polish ends at the best point evaluated."""
            key = point.detach().cpu().numpy().tobytes()
            if key not in last:
                if (cfg.polish_max_wall_s is not None and n_eval[0] > 0
                        and time.perf_counter() - t0 > cfg.polish_max_wall_s):
                    raise _PolishWallTime()
                last.clear()
                last[key] = (*self.evaluate(point), self.last_mean_chi2)
                n_eval[0] += 1
                value = float(last[key][0])
                if finite(*last[key][:2]) and value < best["loss"]:
                    best.update(loss=value, point=point.detach().clone(), grad=last[key][1].detach().clone())
            return last[key][:2]

        def finite(loss, grad):
            return math.isfinite(float(loss)) and bool(torch.isfinite(grad).all())

        def described(point):
            """Does the model describe the target at ``point`` (the last one evaluated)?  The Fisher information
            is the likelihood's curvature only there: the target readouts' mean χ² against the model's Gaussian
            is at most MAX_MEAN_CHI2 (2 where the model is right; far from the minimum, e.g. a drift velocity
            that shifts every time by many σ, the readouts sit in the likelihood's flat outlier tails, its
            gradient vanishes and the expected information promises a curvature the loss does not have).  True
            for a loss that reports no χ²."""
            value = last.get(point.detach().cpu().numpy().tobytes(), (None, None, None))[2]
            return value is None or value <= MAX_MEAN_CHI2

        def newton_trial(theta, loss_here, grad_here, free, whiten):
            """The curvature's Newton step θ_free − C⁻¹g (C⁻¹ = RRᵀ) clamped into the bounds, kept where it
            lowers the loss (one evaluation where the L-BFGS's first step, 1/|g|₁ long, would take several to
            extrapolate to it).  Also says whether the curvature is trusted here: the step lowered the loss by at
            least a quarter of the ½gᵀC⁻¹g the quadratic predicts (a trust region's test)."""
            whitened_gradient = whiten.T @ grad_here[free]
            predicted = 0.5 * float(whitened_gradient.pow(2).sum())
            trial = theta.clone()
            trial[free] = trial[free] - whiten @ whitened_gradient
            trial = torch.minimum(torch.maximum(trial, lo), hi)
            loss_trial, grad_trial = full(trial)
            preconditioner["newton_trials"] += 1
            if not (finite(loss_trial, grad_trial) and float(loss_trial) < float(loss_here)):
                return theta, loss_here, grad_here, False
            preconditioner["newton_accepted"] += 1
            trusted = float(loss_here) - float(loss_trial) >= 0.25 * predicted
            return trial, loss_trial, grad_trial, trusted

        def switch_ready(step):
            """May step ``step`` start in the whitened coordinates?  After ``polish_precondition_after`` plain
            steps, at most MAX_CURVATURES computations of the curvature, and where the model describes the
            target (else the plain L-BFGS goes on, its memory kept)."""
            if step < cfg.polish_precondition_after or preconditioner["computations"] >= MAX_CURVATURES:
                return False
            if not described(theta):
                preconditioner["waits"] += 1
                return False
            return True

        losses, restarts, non_finite = [], 0, 0
        preconditioner = {"computations": 0, "wall_time_s": 0.0, "fallbacks": 0, "newton_trials": 0,
                          "newton_accepted": 0, "waits": 0, "after_steps": cfg.polish_precondition_after,
                          "source": None if self.curvature is None else
                          (self.curvature.describe() if callable(getattr(self.curvature, "describe", None))
                           else repr(self.curvature))}
        whiten = anchor = None
        stop = "steps done"
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm
            bar = tqdm(total=cfg.polish_lbfgs, desc="L-BFGS", unit="step", dynamic_ncols=True, leave=False)
        loss_here, grad_here = full(theta)
        held = ((theta <= lo) & (grad_here > 0)) | ((theta >= hi) & (grad_here < 0))
        opt, x = None, None
        for k in range(cfg.polish_lbfgs):
            free = ~held
            if not bool(free.any()):
                stop = "every parameter held at a bound"
                break
            if opt is None:
                # the L-BFGS variable: x = θ_free itself, or with a curvature the whitened φ, θ_free = anchor + Rφ
                # (from step polish_precondition_after on: far from the minimum, e.g. a drift velocity whose
                # times miss the target's by many σ, the likelihood is not the quadratic the curvature describes)
                whiten = None
                if self.curvature is not None and switch_ready(k):
                    whiten = self._whitening(theta, free, preconditioner)
                    if whiten is not None:
                        try:
                            theta, loss_here, grad_here, trusted = newton_trial(theta, loss_here, grad_here, free,
                                                                                whiten)
                        except _PolishWallTime:
                            stop = "polish wall time"
                            break
                        if not trusted and preconditioner["computations"] < MAX_CURVATURES:
                            whiten = None   # the quadratic the curvature describes is not the loss here: plain
                anchor = theta[free].clone()
                x = (anchor.clone() if whiten is None else torch.zeros_like(anchor)).requires_grad_(True)
                # plain steps that only bring the fit near the minimum, for the curvature to take over: fewer
                # iterations each
                step_kwargs = kwargs
                if self.curvature is not None and whiten is None and preconditioner["computations"] < MAX_CURVATURES:
                    step_kwargs = {**kwargs, "max_iter": min(kwargs["max_iter"], cfg.polish_plain_iterations)}
                opt = torch.optim.LBFGS([x], **step_kwargs)
                restarts += 1

            def position():
                return x.detach() if whiten is None else anchor + whiten @ x.detach()

            def closure():
                # outside the bounds the objective is continued from the clamped point c:
                # f(c) + g(c)·(θ − c) + ½κ|θ − c|² (C¹, steep, pulls back inside); κ = 10⁴·(|f(c)| + 10⁻³⁰⁰)
                opt.zero_grad()
                probe = theta.clone()
                probe[free] = position()
                point = torch.minimum(torch.maximum(probe, lo), hi)
                loss, grad = full(point)
                if not finite(loss, grad) and best["point"] is not None:
                    # the model is not finite there (e.g. an unphysical value of a parameter without bounds):
                    # continued the same way from the best point, so that the line search backs off
                    point = best["point"]
                    loss, grad = torch.as_tensor(best["loss"], dtype=theta.dtype), best["grad"]
                out = (probe - point)[free]
                if (whiten is not None and cfg.polish_edm > 0 and not bool((out != 0).any()) and finite(loss, grad)
                        and described(point)):
                    # the curvature's estimate of the distance to the minimum, ½ gᵀC⁻¹g = ½|Rᵀg|²
                    edm = 0.5 * float((whiten.T @ grad[free].detach()).pow(2).sum())
                    if edm <= cfg.polish_edm:
                        raise _PolishConverged(point.detach().clone(), loss.detach())
                kappa = 1e4 * (abs(float(loss)) + 1e-300)
                grad_free = grad[free].detach() + kappa * out
                x.grad = grad_free if whiten is None else whiten.T @ grad_free
                return loss.detach() + (grad[free].detach() * out).sum() + 0.5 * kappa * out.pow(2).sum()

            values = ps.physical_values([theta[i] for i in range(theta.numel())])
            converged_inside = False
            try:
                loss = opt.step(closure)
                moved = theta.clone()
                moved[free] = position()
            except _PolishWallTime:
                # inside a step: end at the best point evaluated (inside the bounds: every evaluation is clamped)
                if best["point"] is not None:
                    theta = best["point"]
                stop = "polish wall time"
                break
            except _PolishConverged as done:
                converged_inside, moved, loss = True, done.point, done.loss
            theta = torch.minimum(torch.maximum(moved, lo), hi)
            losses.append(float(loss))
            grads = [float(g) for g in grad_here]
            history.append(it + k, float(loss), -1, values, dict(zip(ps.names, grads)),
                           {s.name: float(kwargs["lr"]) for s in ps})
            previous = loss_here
            loss_here, grad_here = full(theta)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({"loss": f"{float(loss_here):.6g}", "evaluations": n_eval[0],
                                 **{k: f"{v:.4g}" for k, v in ps.physical_values([theta[i] for i in range(theta.numel())]).items()}})
            if not finite(loss_here, grad_here):
                # the step ended where the model is not finite: back to the best point, the memory restarted
                non_finite += 1
                if best["point"] is None or non_finite > 3:
                    stop = "non-finite loss or gradient"
                    break
                theta = best["point"].clone()
                loss_here, grad_here = full(theta)
                opt = None
                continue
            projected = theta != moved
            if bool(projected.any()):
                held = held | projected                    # reached a bound: hold it, restart the memory
                opt = None
            elif converged_inside or (float(previous) - float(loss_here)
                                      <= cfg.polish_ftol * max(abs(float(previous)), abs(float(loss_here)), 1.0)):
                # converged on the free parameters (scipy's ftol test): release the held ones whose gradient now
                # points inwards
                release = held & (((theta <= lo) & (grad_here < 0)) | ((theta >= hi) & (grad_here > 0)))
                if not bool(release.any()):
                    stop = ("converged (estimated distance to the minimum by the curvature <= polish_edm)"
                            if converged_inside else "converged (decrease over a whole step <= polish_ftol)")
                    break
                held = held & ~release
                opt = None
            if self.curvature is not None and whiten is None and opt is not None and switch_ready(k + 1):
                opt = None                                 # the next step tries the whitened coordinates
            if cfg.polish_max_wall_s is not None and time.perf_counter() - t0 > cfg.polish_max_wall_s:
                stop = "polish wall time"
                break
        if bar is not None:
            bar.close()
        with torch.no_grad():
            for i, leaf in enumerate(leaves):
                leaf.copy_(theta[i])
        return {"steps": len(losses), "evaluations": n_eval[0], "losses": losses, "stopped": stop,
                "lbfgs_starts": restarts, "non_finite_returns": non_finite, "wall_time_s": time.perf_counter() - t0, "kwargs": kwargs,
                "preconditioner": preconditioner if self.curvature is not None else None}

    def _curvature_internal(self, theta: torch.Tensor) -> np.ndarray:
        """The ``curvature`` hook summed over the batches (all ranks) at the internal point ``theta``, in internal
        units (Jᵀ C J, J = d physical / d internal)."""
        ps = self.paramset
        leaves = [theta[k].detach().clone() for k in range(theta.numel())]
        params = ps.build_params(leaves, self.base)
        total = torch.zeros((len(leaves), len(leaves)), dtype=torch.float64, device=self.device)
        for batch in self.local_batches:
            if batch.n_units:
                total += torch.as_tensor(np.asarray(self.curvature(params, batch.data), dtype=np.float64),
                                         device=self.device)
        if self.dist.enabled:
            import torch.distributed as tdist
            tdist.all_reduce(total, op=tdist.ReduceOp.SUM)
        jac = np.asarray(ps.jacobians(ps.physical_values(leaves)), dtype=np.float64)
        return jac[:, None] * total.cpu().numpy() * jac[None, :]

    def _whitening(self, theta: torch.Tensor, free: torch.Tensor, record: dict) -> Optional[torch.Tensor]:
        """R [F, F] (θ's dtype and device) whitening the curvature of the free parameters at ``theta``, or None
        (the L-BFGS then runs in θ itself) where that curvature is not finite or has no positive eigenvalue."""
        from .curvature import whitening
        start = time.perf_counter()
        curvature = self._curvature_internal(theta)
        index = np.flatnonzero(free.cpu().numpy())
        whiten = whitening(curvature[np.ix_(index, index)])
        record["computations"] += 1
        record["wall_time_s"] += time.perf_counter() - start
        if whiten is None:
            record["fallbacks"] += 1
            return None
        return torch.as_tensor(whiten, dtype=theta.dtype, device=theta.device)

    # ------------------------------------------------------------------ end of fit
    def _replica_sandwich(self, theta: torch.Tensor, hess, statistical: bool, up: float) -> Dict[str, Any]:
        """The sandwich covariance H⁻¹VH⁻¹ (internal units) with V the covariance of the score (the gradient of the
        total loss at the fitted point ``theta``) over ``score_replicas`` targets drawn as data are made: the hard
        front end with noise, at the fitted parameters, for the fit's own events.  Unlike the batch sandwich it
        needs no more events than parameters; like it, σ grow where the score varies more than the likelihood's
        curvature says (a model whose noise is not exactly the data's).  Returns covariance, sigma (internal),
        replicas, variance_over_curvature (diag V / (2·up·diag H): 1 for a well-specified likelihood or χ²),
        score_mean_over_standard_error, wall_time_s, or ``reason`` (covariance None) when it cannot be given."""
        cfg = self.config
        n = int(cfg.score_replicas)
        reason = ("not a likelihood or chi2" if not statistical else "no Hessian (--no-hessian)" if hess is None
                  else "not computed in distributed fits" if self.dist.enabled
                  else NOT_POSITIVE_DEFINITE if not positive_definite(hess) else None)
        if reason is not None:
            return {"covariance": None, "sigma": None, "replicas": n, "reason": reason}
        start = time.perf_counter()
        params = self.paramset.build_params([theta[k] for k in range(theta.numel())], self.base)
        saved = self.targets
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm
            bar = tqdm(total=n, desc="score replicas", unit="replica", dynamic_ncols=True, leave=False)
        scores = []
        try:
            for r in range(n):
                with torch.no_grad():
                    self.targets = [None if batch.n_units == 0 else
                                    detach_tree(call_forward(self.forward, params, batch.data, noise=True,
                                                             seed=derive_seed(cfg.seed, 6, r, b)))
                                    for b, batch in enumerate(self.local_batches)]
                scores.append(self.evaluate(theta, total=True)[1].detach().cpu().double().numpy())
                if bar is not None:
                    bar.update(1)
        finally:
            self.targets = saved
            if bar is not None:
                bar.close()
        scores = np.asarray(scores).reshape(n, theta.numel())
        hess = np.asarray(hess, dtype=np.float64)
        variance = np.cov(scores, rowvar=False).reshape(theta.numel(), theta.numel())
        spread = np.sqrt(np.diag(variance) / n)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_over_error = scores.mean(axis=0) / spread
        return {**sandwich_from_score_covariance(hess, variance), "replicas": n,
                "variance_over_curvature": dict(zip(self.paramset.names,
                                                    nan_to_none(np.diag(variance) / (2.0 * up * np.diag(hess))))),
                "score_mean_over_standard_error": dict(zip(self.paramset.names, nan_to_none(mean_over_error))),
                "what": "H^-1 V H^-1, V the covariance of the score at the fitted point over targets drawn by the "
                        "hard front end with noise at the fitted parameters",
                "wall_time_s": time.perf_counter() - start}

    def _finish(self, leaves, history: History, iterations: int, wall: float, history_name: str,
                polish: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        cfg = self.config
        ps = self.paramset
        self.history = history
        theta = torch.stack([leaf.detach().reshape(()) for leaf in leaves])
        up = self.errordef
        # the gradient at the end (for the convergence check) only where a Hessian is computed anyway
        batch_gradients = [] if cfg.hessian else None
        final_loss, final_grad = self.evaluate(theta, need_grad=cfg.hessian, batch_gradients=batch_gradients)
        unc = None
        hess = None
        if cfg.hessian:
            bar = None
            if cfg.progress and self.dist.is_main:
                from tqdm import tqdm
                bar = tqdm(total=2 * theta.numel(), desc="Hessian", unit="evaluation", dynamic_ncols=True, leave=False)

            def gradient(point):
                g = self.evaluate(point)[1]
                if bar is not None:
                    bar.update(1)
                return g
            try:
                hess = fd_hessian(gradient, theta, cfg.hessian_step)
            finally:
                if bar is not None:
                    bar.close()
            unc = covariance_from_hessian(hess, up)
            cov_phys = to_physical(unc["covariance"], ps.jacobians(ps.physical_values(leaves)))
            sigma_phys = np.where(np.isfinite(unc["sigma"]), np.sqrt(np.abs(np.diag(cov_phys))), np.nan)
            with np.errstate(invalid="ignore", divide="ignore"):
                corr_phys = cov_phys / np.outer(sigma_phys, sigma_phys)   # physical signs (inverse norm flips)
            np.fill_diagonal(corr_phys, np.where(np.isfinite(sigma_phys), 1.0, np.nan))
            unc["correlation"] = corr_phys
        warn = degeneracy_warnings(ps.names, unc) if unc is not None else []
        statistical = self.loss_is_chi2
        # the sandwich covariance: σ that do not assume the model's noise is exactly the data's
        sigma_sandwich = None
        if not statistical:
            sandwich_reason = "not a likelihood or chi2"
        elif hess is None:
            sandwich_reason = "no Hessian (--no-hessian)"
        elif self.dist.enabled:
            sandwich_reason = "not computed in distributed fits (batch gradients are on other ranks)"
        else:
            computed = sandwich_covariance(hess, batch_gradients)
            sandwich_reason = computed["reason"]
            if computed["covariance"] is not None:
                cov_sandwich = to_physical(computed["covariance"], ps.jacobians(ps.physical_values(leaves)))
                sigma_sandwich = np.sqrt(np.abs(np.diag(cov_sandwich)))
        replica = self._replica_sandwich(theta, hess, statistical, up) if cfg.score_replicas else None
        sigma_replica = None
        if replica is not None and replica["covariance"] is not None:
            cov_replica = to_physical(replica["covariance"], ps.jacobians(ps.physical_values(leaves)))
            sigma_replica = np.sqrt(np.abs(np.diag(cov_replica)))
        sigma_reason = None
        if not statistical:
            sigma_reason = (f"loss {getattr(self.loss_fn, 'name', type(self.loss_fn).__name__)!r} is not a likelihood "
                            "or a chi2 with the noise as scale: its curvature is a sensitivity, not an error; "
                            "use --loss likelihood (the default for --target-file) for sigmas")
        elif unc is None:
            sigma_reason = "no Hessian (--no-hessian)"
        convergence = convergence_check(ps, leaves, final_grad, hess, unc, history, statistical, up,
                                        stopped_by_wall=bool(getattr(self, "stopped_by_wall", False)),
                                        polish=polish, iterations_planned=cfg.iterations)
        warn = convergence["warnings"] + warn
        forward_notes = getattr(self.forward, "notes", None)
        if callable(forward_notes):
            warn = warn + list(forward_notes())
        fitted = ps.physical_values(leaves)
        result = {
            "params": {s.name: {"initial": self.initial_values[s.name],
                                "target": None if self.target_values is None else self.target_values.get(s.name),
                                "fitted": fitted[s.name],
                                "sigma": None if (unc is None or not statistical) else nan_to_none(sigma_phys[k]),
                                "newton_step": convergence["newton_step"].get(s.name),
                                "sigma_sandwich": None if sigma_sandwich is None else nan_to_none(sigma_sandwich[k]),
                                "sigma_replica_sandwich": None if sigma_replica is None
                                else nan_to_none(sigma_replica[k]),
                                "unit": s.unit, "norm": s.norm, "lr": s.lr}
                       for k, s in enumerate(ps)},
            "iterations": int(iterations),
            "final_loss": float(final_loss),
            "sigma_reason": sigma_reason,
            "sandwich": {"batches": len(batch_gradients or []), "reason": sandwich_reason,
                         "what": "H^-1 V H^-1, V the covariance of the per-batch scores at the fitted point: sigma "
                                 "robust to a noise model that is not exactly the data's"},
            "replica_sandwich": None if replica is None else {
                key: value for key, value in replica.items() if key not in ("covariance", "sigma")},
            "converged": convergence["converged"],
            "edm": convergence["edm"],
            "correlation": None if unc is None else nan_to_none(unc["correlation"]),
            "covariance": None if (unc is None or not statistical) else nan_to_none(cov_phys),
            "hessian_internal": None if unc is None else nan_to_none(hess),
            "hessian_posdef": None if unc is None else unc["hessian_posdef"],
            "hessian_condition": None if unc is None else nan_to_none(unc["condition"]),
            "hessian_eigenvalues": None if unc is None else nan_to_none(unc["hessian_eigenvalues"]),
            "hessian_flattest_direction": None if unc is None else nan_to_none(unc["flattest_direction"]),
            "warnings": warn,
            "loss_is_chi2": self.loss_is_chi2,
            "readout_sigma": self.readout_sigma_summary,
            "loss_is_likelihood": bool(getattr(self.loss_fn, "likelihood", False)),
            "uncertainty_convention": f"cov = 2*up*H^-1 with up = {up} (loss rises by up at 1 sigma); "
                                      f"H by central differences of gradients, step {cfg.hessian_step} (internal units); "
                                      + ("loss = total -log L or chi2 (sum over units)" if self.loss_is_chi2 else
                                         "loss = mean over units (not a likelihood: no sigma reported)"),
            "polish": polish,
            "loss_counts": getattr(self.loss_fn, "last_counts", None),   # of the last batch of the final evaluation
            "stopped_by_wall_time": bool(getattr(self, "stopped_by_wall", False)),
            "wall_time_s": float(wall),      # whole fit, across resumes (loop, polish, Hessian; not the setup)
            "resumed_from_iteration": getattr(self, "resumed_from", None),
            "resume_differences": getattr(self, "resume_differences", None) or None,
            "world_size": self.dist.world,
            "link_vdrift_efield": ps.link_vdrift_efield,
            "config": cfg.to_dict(),
            "paramset": ps.to_dict(),
            "meta": self.meta,
            "history_file": history_name,
        }
        for name, entry in result["params"].items():
            if entry["target"] is not None:
                entry["residual_rel"] = (entry["fitted"] - entry["target"]) / entry["target"]
        if self.out_dir is not None and self.dist.is_main:
            history.save(os.path.join(self.out_dir, history_name), cfg.history_format)
            write_json(os.path.join(self.out_dir, "result.json"), result)
            if cfg.plots:
                from .plots import plot_fit
                try:
                    plot_fit(history, result, os.path.join(self.out_dir, "plots"))
                except Exception as error:   # plotting must never lose a finished fit
                    result["plot_error"] = repr(error)
                    write_json(os.path.join(self.out_dir, "result.json"), result)
        return result


def convergence_check(ps, leaves, grad, hess, unc, history, statistical: bool, up: float, *,
                      stopped_by_wall: bool = False, polish=None, iterations_planned: int = 0) -> Dict[str, Any]:
    """Has the fit converged?  From the gradient g and Hessian H of the full objective at the end (internal
    units): the Newton step δ = −H⁻¹g per parameter (physical units) and the estimated distance to the minimum
    EDM = ½ gᵀH⁻¹g.  A statistical loss (−log L, χ²) has converged when EDM < 1e-3·up and every |δ| < 0.1σ;
    another loss when every |δ| < 1e-3 of the parameter's value.  Without a Hessian: the loss change over the
    last tenth of the iterations (< 1e-4 relative).  Returns converged, edm, newton_step (physical), warnings
    naming the parameters that have not converged."""
    names = ps.names
    values = ps.physical_values(leaves)
    out: Dict[str, Any] = {"converged": None, "edm": None, "newton_step": {}, "warnings": []}
    g = grad.detach().cpu().double().numpy() if torch.is_tensor(grad) else np.asarray(grad, dtype=np.float64)
    not_done = []
    if hess is not None and unc is not None and unc.get("hessian_posdef") and np.all(np.isfinite(g)):
        step_internal = -np.linalg.solve(hess, g)
        edm = float(-0.5 * g @ step_internal)
        jac = np.asarray(ps.jacobians(values), dtype=np.float64)
        step = step_internal * jac
        sigma = np.asarray(unc["sigma"], dtype=np.float64) * np.abs(jac)     # √(2·up·H⁻¹)_kk, internal → physical
        out["edm"] = edm
        out["newton_step"] = {n: float(v) for n, v in zip(names, step)}
        for k, name in enumerate(names):
            limit = 0.1 * sigma[k] if statistical else 1e-3 * abs(values[name])
            if abs(step[k]) > limit:
                what = f"{step[k] / sigma[k]:+.2g} sigma" if statistical else f"{step[k] / values[name]:+.2g} relative"
                not_done.append(f"{name} (Newton step {step[k]:+.3g} = {what})")
        converged = not not_done and (not statistical or edm < 1e-3 * up)
        if not converged:
            out["warnings"].append("not converged: the fit stopped before the minimum; still moving: "
                                   + (", ".join(not_done) if not_done else f"all (EDM {edm:.3g} > {1e-3 * up:.3g})"))
    elif hess is not None and unc is not None:
        converged = False
        out["warnings"].append("not converged: the Hessian at the end is not positive definite (not at a minimum, "
                               "or a flat direction); parameters: " + ", ".join(names))
    else:
        losses = [float(v) for v in getattr(history, "loss", [])] if history is not None else []
        n = len(losses)
        converged = None
        if n >= 20:
            tenth = max(2, n // 10)
            recent, before = np.mean(losses[-tenth:]), np.mean(losses[-2 * tenth:-tenth])
            change = abs(recent - before) / max(abs(before), 1e-300)
            converged = bool(change < 1e-4)
            if not converged:
                out["warnings"].append(f"not converged: the loss changed by {change:.2g} (relative) over the last "
                                       f"{tenth} iterations; parameters: " + ", ".join(names))
    if stopped_by_wall and not converged:
        out["warnings"].append("stopped by --max-wall before converging")
    if polish is not None and polish.get("stopped") == "steps done" and not converged:
        out["warnings"].append(f"the L-BFGS polish used all its {polish.get('steps')} steps without converging")
    if polish is not None and polish.get("stopped") == "polish wall time" and not converged:
        out["warnings"].append("the L-BFGS polish was stopped by its wall-time limit before converging")
    out["converged"] = converged
    return out
