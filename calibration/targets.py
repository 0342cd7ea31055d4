"""Fit targets: simulated once for a closure test (and cached on disk), or read from a hits file.

Closure test: target values are uniform in the ``RANGES`` interval of each fitted parameter (seeded), or
given explicitly; the target hits are the forward model at those values, simulated once per batch under
``no_grad`` and cached in ``DIR/targets/`` keyed by a hash of everything they depend on.

File targets: a sparsetpc hits HDF5 (dataset ``hits`` of ``sparsetpc.hits.HIT_DTYPE``: event_id, x, y, t,
adc..., as ``sparsetpc simulate`` writes it) or a larnd-sim packets HDF5 (dataset ``packets``, the format of
real data and of ``sparsetpc simulate --format packets``), detected from the file.  Batches must then be whole
events (``group="event"``); the events simulated are those present in the file.  Any non-finite value, or a
file without readouts, is an :class:`~sparsetpc.exceptions.InputFormatError`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np
import torch

from sparsetpc.exceptions import InputFormatError
from sparsetpc.hits import check_finite_readouts

from ._io import atomic_path
from .forward import call_forward


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def detach_tree(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: detach_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    return obj


@dataclass
class CloudHits:
    """Minimal Hits-like object for targets read from files: event, x, y [cm], t [us], adc and, when the file
    names pixels, the readout keys plane, ix, iy, readout (used by the chi2 loss)."""

    event: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    adc: torch.Tensor
    waveforms: Any = None
    plane: Optional[torch.Tensor] = None
    ix: Optional[torch.Tensor] = None
    iy: Optional[torch.Tensor] = None
    readout: Optional[torch.Tensor] = None

    def __len__(self):
        return int(self.adc.shape[0])


def _hash(meta: Mapping) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def simulate_targets(forward, paramset, batches: Sequence, target_values: Mapping[str, float], *, dtype, device,
                     noise: bool = False, seed: int = 0, fixed: Optional[Mapping[str, float]] = None,
                     cache_dir: Optional[str] = None, cache_meta: Optional[Mapping] = None,
                     tag: str = "") -> List[Any]:
    """Target outputs (detached) for every batch; read from / written to ``cache_dir`` when given."""
    meta = {"targets": {k: float(v) for k, v in target_values.items()}, "noise": bool(noise), "seed": int(seed),
            "fixed": dict(fixed or {}), "link": paramset.link_vdrift_efield, "dtype": str(dtype),
            "batches": [b.keys for b in batches], **dict(cache_meta or {})}
    key = _hash(meta)
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, f"targets{tag}_{key}.pt")
        if os.path.exists(path):
            return torch.load(path, map_location=device, weights_only=False)
    base = paramset.base_params(dtype=dtype, device=device, fixed=fixed)
    params = base.replace(**{k: float(v) for k, v in target_values.items()})
    outs = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if batch.n_units == 0:            # an empty shard (more ranks than units in this batch)
                outs.append(None)
                continue
            out = call_forward(forward, params, batch.data, noise=noise, seed=derive_seed(seed, 1, i))
            outs.append(detach_tree(out))
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save(outs, tmp)
    return outs


#: columns of a target table (sparsetpc.hits.HIT_DTYPE names) and the CloudHits field each fills
_FLOAT_COLUMNS = ("x", "y", "t", "adc")
_KEY_COLUMNS = {"pixel_plane": "plane", "pixel_ix": "ix", "pixel_iy": "iy", "readout": "readout"}


def target_file_format(path) -> str:
    """``"hits"`` (sparsetpc's hits HDF5, dataset ``hits``) or ``"packets"`` (larnd-sim/LArPix packets HDF5,
    dataset ``packets``), detected from the file's datasets; :class:`InputFormatError` otherwise."""
    import h5py
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        if not os.path.exists(path):
            raise InputFormatError(f"{path}: target file does not exist") from error
        raise InputFormatError(f"{path}: target file is not a readable HDF5 file ({error})") from error
    with handle:
        names = list(handle.keys())
    if "hits" in names:
        return "hits"
    if "packets" in names:
        return "packets"
    raise InputFormatError(f"{path}: target file has neither a `hits` dataset (sparsetpc hits) nor a `packets` "
                           f"dataset (larnd-sim packets); found {', '.join(names) or 'nothing'}")


def read_target_table(path, layout=None) -> np.ndarray:
    """The target readouts of ``path`` as a ``HIT_DTYPE`` table (t [us] on each event's time axis).

    Packets files are decoded with :func:`sparsetpc.packets.read_packets` (events: one per trigger group,
    ``timestamp // 6000``; t from the packet timestamps; pixel from the chip/channel wiring of ``layout``,
    default the built-in 2.2.16 one; x, y the pixel centres of module 0, as the simulator's hits).  Raises
    :class:`InputFormatError` for a file without readouts or with a non-finite value in any column.
    """
    kind = target_file_format(path)
    if kind == "packets":
        from sparsetpc.layout import PixelLayout
        from sparsetpc.packets import read_packets
        table = read_packets(path, layout or PixelLayout.default()).hits
    else:
        import h5py
        with h5py.File(path, "r") as handle:
            table = handle["hits"][()]
        names = table.dtype.names or ()
        missing = [name for name in ("event_id",) + _FLOAT_COLUMNS if name not in names]
        if missing:
            raise InputFormatError(f"{path}: dataset `hits` lacks field(s) {', '.join(missing)}")
    if len(table) == 0:
        raise InputFormatError(f"{path}: the target file has no readouts (no {'data packet' if kind == 'packets' else 'hit'}); "
                               "nothing to fit")
    check_finite_readouts(table, str(path), "cannot fit to it")
    return table


def target_events(table: np.ndarray) -> List[int]:
    """Sorted event ids present in a target table (the events a fit to it simulates)."""
    return [int(v) for v in np.unique(table["event_id"])]


def load_target_file(path, dtype=torch.float64, device="cpu", layout=None, table: Optional[np.ndarray] = None) -> dict:
    """event_id -> CloudHits read from a hits or packets HDF5 file (``table``: already read by
    :func:`read_target_table`)."""
    rows = read_target_table(path, layout) if table is None else table
    names = rows.dtype.names
    out = {}
    order = np.argsort(rows["event_id"], kind="stable")
    rows = rows[order]
    events, starts = np.unique(rows["event_id"], return_index=True)
    stops = np.r_[starts[1:], len(rows)]
    for ev, a, b in zip(events, starts, stops):
        r = rows[a:b]
        col = lambda name: torch.as_tensor(np.asarray(r[name], dtype=np.float64), dtype=dtype, device=device)
        keys = {field: torch.as_tensor(np.asarray(r[name], dtype=np.int64), device=device)
                for name, field in _KEY_COLUMNS.items() if name in names}
        if len(keys) != len(_KEY_COLUMNS):
            keys = {}
        out[int(ev)] = CloudHits(torch.zeros(len(r), dtype=torch.long, device=device), col("x"), col("y"), col("t"),
                                 col("adc"), **keys)
    return out


def _concat_clouds(parts: Sequence[CloudHits], dtype, device) -> CloudHits:
    if not parts:
        z = torch.zeros(0, dtype=dtype, device=device)
        return CloudHits(torch.zeros(0, dtype=torch.long, device=device), z, z, z, z)
    fields = ["event", "x", "y", "t", "adc"]
    keyed = all(p.plane is not None for p in parts)
    merged = {f: torch.cat([getattr(p, f) for p in parts]) for f in fields}
    if keyed:
        merged.update({f: torch.cat([getattr(p, f) for p in parts]) for f in _KEY_COLUMNS.values()})
    return CloudHits(**merged)


def targets_from_file(path, batches: Sequence, dtype=torch.float64, device="cpu", layout=None,
                      table: Optional[np.ndarray] = None) -> List[CloudHits]:
    """One CloudHits per batch, events relabelled to unit indices (batches must be grouped by event)."""
    per_event = load_target_file(path, dtype, device, layout=layout, table=table)
    outs = []
    for batch in batches:
        parts = []
        for unit, (ev, trk) in enumerate(batch.keys):
            if trk != -1:
                raise ValueError("targets from a file need batches of whole events (group='event')")
            if ev in per_event:
                h = per_event[ev]
                parts.append(dataclasses.replace(h, event=torch.full_like(h.event, unit)))
        outs.append(_concat_clouds(parts, dtype, device))
    return outs


def written_channel_mask(plane, ix, iy, layout) -> np.ndarray:
    """True for pixels whose readouts a larnd-sim packets file can hold: chip read out (in ``tile_chip_to_io``)
    and channel not one of the tile-edge channels larnd-sim's writer skips."""
    from sparsetpc.packets import larndsim_disabled
    group, _, chip, channel = layout.pixel_to_channel(np.asarray(plane), np.asarray(ix), np.asarray(iy))
    return (group >= 0) & ~larndsim_disabled(chip, channel)


class WrittenChannelsForward:
    """Wrap a forward model so that its hits keep only readouts on channels a packets file can hold.

    A packets target lacks the readouts of unconnected chips and of larnd-sim's disabled edge channels; the
    simulated guess must lose the same ones, or every such readout would count as unmatched.  Differentiable
    (the kept readouts are selected by index)."""

    def __init__(self, forward, layout=None):
        from sparsetpc.layout import PixelLayout
        self.forward = forward
        self.layout = layout or PixelLayout.default()

    def __getattr__(self, name):                 # return_waveforms, detector... of the wrapped model
        if name == "forward":
            raise AttributeError(name)
        return getattr(self.forward, name)

    def describe(self):
        inner = getattr(self.forward, "describe", None)
        return {"forward": inner() if callable(inner) else repr(self.forward), "restricted_to": "written channels"}

    def __call__(self, params, data, **kwargs):
        hits = self.forward(params, data, **kwargs)
        keep = written_channel_mask(hits.plane.cpu().numpy(), hits.ix.cpu().numpy(), hits.iy.cpu().numpy(),
                                    self.layout)
        if keep.all():
            return hits
        return hits.select(torch.as_tensor(keep, dtype=torch.bool, device=hits.adc.device))
