"""ThiNet's channel selection (greedy, Gram form) and least-squares scaling.

Luo et al., ThiNet (ICCV 2017, arXiv 1707.06342):

* §3.2 (greedy channel selection, Algorithm 1): grow the removed set T greedily, each time adding
  the channel j that keeps ``Σ_i (Σ_{c∈T∪{j}} x̂_ic)²`` smallest. With the Gram matrix ``G = X̂ᵀX̂`` that is
  ``‖v + x_j‖² = vᵀv + 2(G·1_T)_j + G_jj``, so a step costs O(C) instead of the reference's O(N·C).
  Rows from several consumers of the same channels (a concat, a branch) add their Gram matrices:
  their reconstruction errors are summed.
* §3.2 (minimize the reconstruction error): with S the kept channels,
  ``ŵ = argmin_w ‖ŷ - X̂_S w‖²`` and consumer input channel c ∈ S is multiplied by ``ŵ_c``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from detprune_plugins.thinet.sampling import ConsumerSamples


def group_columns(slot, samples: ConsumerSamples) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique ``(column, group channel)`` pairs of one consumer slot of a group."""
    col = samples.cols[slot.index]
    chan = slot.channel.long()
    width = int(chan.max()) + 1 if len(chan) else 1
    key = torch.unique(col * width + chan)
    return key // width, key % width


def group_gram(group, samples: dict[str, ConsumerSamples]) -> tuple[torch.Tensor, float]:
    """``G[size, size]`` summed over the group's consumers, and the consumers' output energy ``Σ y²``."""
    G = torch.zeros(group.size, group.size, dtype=torch.float64)
    energy = 0.0
    for slot in group.consumers:
        s = samples[slot.module]
        cols, chans = group_columns(slot, s)
        Xg = torch.zeros(s.rows, group.size, dtype=torch.float64)
        Xg.index_add_(1, chans, s.X[:, cols].double())
        G += Xg.T @ Xg
        energy += float((s.y.double() ** 2).sum())
    return G, energy


def greedy_removal(G: torch.Tensor, allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ThiNet Algorithm 1 run to the end: removal order of the ``allowed`` channels and the error after each.

    ``errors[k] = ‖Σ_{c ∈ order[:k+1]} x̂_c‖²``. Removing the first ``m`` of ``order`` is exactly the
    greedy set T of size m (the greedy is incremental), so one run serves every ratio.
    """
    C = G.shape[0]
    G = G.double()
    allowed = torch.ones(C, dtype=torch.bool) if allowed is None else allowed.bool().clone()
    diag = torch.diagonal(G)
    acc = torch.zeros(C, dtype=torch.float64)
    blocked = ~allowed
    order, errors, err = [], [], 0.0
    for _ in range(int(allowed.sum())):
        score = (2 * acc + diag).masked_fill(blocked, float("inf"))
        j = int(torch.argmin(score))
        err += float(score[j])
        acc += G[:, j]
        blocked[j] = True
        order.append(j)
        errors.append(err)
    return torch.tensor(order, dtype=torch.long), torch.tensor(errors, dtype=torch.float64)


def order_scores(order: torch.Tensor, errors: torch.Tensor, size: int, energy: float) -> torch.Tensor:
    """Scores (higher = keep) that make ``graph.plan`` remove channels in greedy order.

    A channel's score is the relative reconstruction error ``‖Σ_T x̂‖² / ‖y‖²`` once it is removed,
    made strictly increasing along the order (running max), so lowest-first removal replays the
    greedy exactly and scores are comparable across layers for global ranking. Channels the greedy
    never removed (fixed) score above all others.
    """
    rel = errors.numpy() / (energy if energy > 0 else 1.0)
    s = np.maximum.accumulate(np.maximum(rel, 0.0)) if len(rel) else rel
    for k in range(1, len(s)):
        if s[k] <= s[k - 1]:
            s[k] = np.nextafter(s[k - 1], np.inf)
    top = (float(s[-1]) if len(s) else 0.0) + 1.0
    out = torch.full((size,), top, dtype=torch.float64)
    if len(order):
        out[order] = torch.from_numpy(s)
    return out


def lsq_scales(X: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """``ŵ = argmin ‖y - X ŵ‖²`` (ThiNet §3.2, the scaling step), in float64.

    Dead columns (all zero on the samples, e.g. a channel ReLU never opens) carry no information:
    they keep scale 1 instead of the minimum-norm 0, which would silence a channel that other
    images may use. If the solve is not finite, a ridge pulled towards 1 replaces it.
    """
    X, y = X.double(), y.double()
    k = X.shape[1]
    w = torch.ones(k, dtype=torch.float64)
    norms = X.norm(dim=0)
    live = norms > 1e-10 * max(float(norms.max()) if k else 0.0, 1e-300)
    if not live.any():
        return w
    Xl = X[:, live]
    sol = torch.linalg.lstsq(Xl, y[:, None], driver="gelsd").solution[:, 0]
    if not torch.isfinite(sol).all():
        Gl = Xl.T @ Xl
        lam = ridge * float(torch.diagonal(Gl).mean())
        sol = torch.linalg.solve(Gl + lam * torch.eye(Gl.shape[0], dtype=Gl.dtype), Xl.T @ y + lam)
    w[live] = sol
    return w


def consumer_scales(samples: ConsumerSamples, kept_positions: torch.Tensor) -> torch.Tensor:
    """One scale per kept input position of a consumer (positions of one channel share its column's)."""
    kept_cols = torch.unique(samples.cols[kept_positions])
    w = lsq_scales(samples.X[:, kept_cols], samples.y)
    per_col = torch.ones(int(samples.cols.max()) + 1, dtype=torch.float64)
    per_col[kept_cols] = w
    return per_col[samples.cols[kept_positions]]


@torch.no_grad()
def scale_inputs(module: nn.Module, scale: torch.Tensor) -> None:
    """Multiply each input position ``i`` of ``module``'s weight by ``scale[i]`` (in place)."""
    w = module.weight
    s = scale.to(device=w.device, dtype=w.dtype)
    if isinstance(module, nn.Linear):
        w.mul_(s[None, :])
    elif isinstance(module, nn.ConvTranspose2d):  # [in, out/g, k, k]
        w.mul_(s.view(-1, *([1] * (w.dim() - 1))))
    else:  # [out, in/g, k, k]: output row o sees the input positions of its group
        g = module.groups
        per = s.view(g, -1)[torch.arange(w.shape[0], device=w.device) // (w.shape[0] // g)]
        w.mul_(per.view(*per.shape, *([1] * (w.dim() - 2))))
