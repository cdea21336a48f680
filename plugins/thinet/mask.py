"""Zero, in the dense model, every channel a plan removes (ThiNet's layer-by-layer mode).

ThiNet (Luo et al. 2017, §3.1 framework) prunes one layer, fine-tunes briefly and moves
on, so the next layer is judged on the network as already pruned. We keep the dense model and the
original graph throughout and *mask* instead of cutting: :func:`channel_mask` (shared with MFP)
zeroes the producers' filters and biases and the per-channel modules (BN γ/β, depthwise filters,
layer scales); ThiNet also zeroes the consumers' input slices of removed channels, since a removed
channel never comes back here and so nothing downstream can see it, whatever the activation gives
for 0. The masks are re-applied after every optimiser step. ``graph.apply(model, plan)`` on the
masked model then gives the same outputs (per-channel norms; GroupNorm over several channels mixes
a zeroed channel into its neighbours' statistics), and the plan refers to the original graph.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from detprune_plugins.common.channel_mask import ChannelMask, channel_mask


def _consumer_input_mask(w: torch.Tensor, rec, dropped: np.ndarray) -> torch.Tensor:
    """Bool mask of ``w``'s entries that read a dropped input position (broadcastable to ``w``)."""
    extra = (1,) * (w.dim() - 2)
    if rec.kind == "linear":  # [out, in]
        m = dropped[None, :]
    elif rec.transposed:  # [in, out/g, k..]
        m = dropped[:, None]
    else:  # [out, in/g, k..]: row o reads the input positions of its group
        m = dropped.reshape(rec.groups, -1)[np.arange(w.shape[0]) // (w.shape[0] // rec.groups)]
    return torch.from_numpy(np.ascontiguousarray(m)).reshape(*m.shape, *extra).to(w.device)


def thinet_mask(model: nn.Module, graph, plan) -> ChannelMask:
    """:func:`channel_mask` of ``plan`` plus the consumers' input slices of its removed channels."""
    mask = channel_mask(model, graph, plan)
    keep = graph.kept_mask(plan)
    for rec in graph.records.values():
        if rec.kind not in ("conv", "linear") or rec.inp is None:
            continue
        dropped = ~keep[rec.inp]
        if dropped.any():
            w = getattr(model.get_submodule(rec.name), rec.params["in"][0][0])
            mask.entries.append((w, _consumer_input_mask(w, rec, dropped)))
    return mask
