"""BatchNorm of the new (mixed) channels: the ``bn`` modes of the ``sketch`` compensator.

The statistics of ``y' = Q y`` are not those of any old channel (research/algorithms.md section 6.4).

* ``fold`` (default for ``rebase``): the BN is folded into the producer before sketching
  (``A`` = the layer's effective filters ``gamma/sigma * W``), the conv gets ``Q A`` with no bias,
  and the BN is set to the affine map that gives exactly ``y' = Q A x + Q b_fold`` in eval mode
  *whatever its running statistics*: ``gamma' = sqrt(var' + eps)``, ``beta' = mean' + Q b_fold``.
  The statistics ``mean'``/``var'`` only matter once training resumes (train-mode BN normalises
  with batch statistics); they are measured on calibration batches (forward hooks, eval mode) or,
  without data, propagated: ``mean' = Q (s * (mu - b))``, ``var' = (Q o Q)(s^2 * var)``, ``s`` the
  fold scale (channels assumed uncorrelated).
* ``reinit`` (FilterSketch's choice, the literal reading): ``gamma' = 1``, ``beta' = 0``; running
  statistics re-estimated by AdaBN (the new BNs in train mode over calibration batches, cumulative
  average) or, without data, propagated (``mean' = Q mu``, ``var' = (Q o Q) var``).
* ``keep`` (default for ``procrustes``): the selected BN of the kept channel whose place each new
  channel takes stays as it is (channel identities are kept by the alignment).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from detprune_plugins.sketch.layout import positions
from detprune_plugins.sketch.weights import Rebase, fold_factors

BN_MODES = ("fold", "reinit", "keep")


@dataclass
class NormTarget:
    """The new channels of one BN: positions ``dst`` in the pruned BN and their propagated stats."""

    name: str
    dst: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    shift: torch.Tensor | None  # fold: Q b_fold, added after normalisation


def norm_targets(original: nn.Module, kept, rebases: dict[int, Rebase], bn_mode: str) -> list[NormTarget]:
    """Every BN position that holds a new channel, with propagated statistics."""
    if bn_mode == "keep":
        return []
    out = []
    for rb in rebases.values():
        lay = rb.layout
        for slot in lay.slots("through"):
            bn = original.get_submodule(slot.module)
            dev = bn.running_mean.device
            pos = positions(slot, lay.mix)[0].to(dev)
            keep = kept(slot.module, "through", dev)
            dst = torch.searchsorted(keep, positions(slot, lay.kept)[0].to(dev))
            Q = rb.Q.to(dev)
            mean = bn.running_mean.detach().to(torch.float64)[pos]
            var = bn.running_var.detach().to(torch.float64)[pos]
            shift = None
            if bn_mode == "fold":
                producer = next(p for p, n in lay.norm_of.items() if n == slot.module)
                scale, shift = fold_factors(original, lay, producer, "fold", dev)
                conv = original.get_submodule(producer)
                if getattr(conv, "bias", None) is not None:  # running_mean tracks W x + b
                    out_slot = next(s for s in lay.slots("out") if s.module == producer)
                    mean = mean - conv.bias.detach().to(torch.float64)[positions(out_slot, lay.mix)[0].to(dev)]
                mean, var, shift = Q @ (scale * mean), Q.square() @ (scale.square() * var), Q @ shift
            else:
                mean, var = Q @ mean, Q.square() @ var
            out.append(NormTarget(slot.module, dst, mean, var, shift))
    return out


def write_norms(pruned: nn.Module, targets: list[NormTarget]) -> None:
    """Install each target's statistics and affine (``fold``: identity-plus-shift; else 1/0)."""
    with torch.no_grad():
        for t in targets:
            bn = pruned.get_submodule(t.name)
            dt = bn.running_mean.dtype
            bn.running_mean[t.dst] = t.mean.to(dt)
            bn.running_var[t.dst] = t.var.clamp_min(0).to(dt)
            if not bn.affine:
                continue
            if t.shift is not None:
                bn.weight[t.dst] = (t.var.clamp_min(0) + bn.eps).sqrt().to(dt)
                bn.bias[t.dst] = (t.mean + t.shift).to(dt)
            else:
                bn.weight[t.dst] = 1.0
                bn.bias[t.dst] = 0.0


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _run(model: nn.Module, loader: Iterable[Any], n: int, what: str, progress: bool = True) -> int:
    device = next(model.parameters()).device
    seen = 0
    for batch in tqdm(islice(loader, n), total=n, desc=f"sketch: {what}", leave=False, disable=not progress):
        model(_inputs(batch).to(device))
        seen += 1
    return seen


def _norms(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Module]:
    if names is not None:
        return {n: model.get_submodule(n) for n in names}
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


@torch.no_grad()
def adabn(
    model: nn.Module, loader: Iterable[Any], batches: int, names: Iterable[str] | None = None, progress: bool = True
) -> int:
    """AdaBN (Li et al. 2016): re-estimate BN running statistics on ``batches`` batches, the BNs
    ``names`` (default: every BN with running statistics) in train mode with a cumulative average,
    the rest of the model in eval mode. Weights are untouched; returns batches seen."""
    norms = _norms(model, names)
    if not norms or batches <= 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {n: bn.momentum for n, bn in norms.items()}
    model.eval()
    try:
        for bn in norms.values():
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        return _run(model, loader, batches, "AdaBN", progress)
    finally:
        for n, bn in norms.items():
            bn.momentum = momenta[n]
        for m, was in modes.items():
            m.train(was)


@torch.no_grad()
def _measure_inputs(model: nn.Module, names: Iterable[str], loader, batches: int, progress: bool = True):
    """Per-channel mean and (unbiased) variance of each BN's input, eval mode."""
    sums, hooks = {}, []
    modes = {m: m.training for m in model.modules()}
    device = next(model.parameters()).device
    model.eval()
    try:
        for name in names:
            bn = model.get_submodule(name)
            sums[name] = [torch.zeros(bn.num_features, dtype=torch.float64, device=device) for _ in range(3)]
            hooks.append(bn.register_forward_pre_hook(_accumulate(sums[name])))
        seen = _run(model, loader, batches, "BN statistics", progress)
    finally:
        for h in hooks:
            h.remove()
        for m, was in modes.items():
            m.train(was)
    out = {}
    for name, (s1, s2, n) in sums.items():
        if float(n[0]) >= 2:
            mean = s1 / n
            out[name] = (mean, ((s2 - n * mean.square()) / (n - 1)).clamp_min(0))
    return out, seen


@torch.no_grad()
def calibrate(
    pruned: nn.Module,
    targets: list[NormTarget],
    loader: Iterable[Any],
    batches: int,
    everything: bool = False,
    progress: bool = True,
) -> int:
    """Re-estimate BN statistics on ``batches`` batches; returns batches seen.

    ``fold`` targets: per-channel mean/variance of the BN *input*, measured in eval mode (the folded
    BN's eval output does not depend on its statistics, so one pass sees the final inputs), then
    ``gamma'``/``beta'`` follow them. ``reinit`` targets: AdaBN on their BNs; the old channels of those
    BNs get their statistics back. ``everything``: AdaBN on every BN afterwards (downstream layers see
    the pruned network's activations); folded channels keep their exact eval output.
    """
    if batches <= 0 or (not targets and not everything):
        return 0
    seen = 0
    by_name: dict[str, list[NormTarget]] = {}
    for t in targets:
        by_name.setdefault(t.name, []).append(t)
    folded = {n for n, ts in by_name.items() if ts[0].shift is not None}
    if folded:
        stats, seen = _measure_inputs(pruned, folded, loader, batches, progress)
        for name, (mean, var) in stats.items():
            for t in by_name[name]:
                t.mean, t.var = mean[t.dst], var[t.dst]
        write_norms(pruned, [t for n in folded for t in by_name[n]])
    reinit = [n for n in by_name if n not in folded]
    if not reinit and not everything:
        return seen
    saved = {
        n: (pruned.get_submodule(n).running_mean.clone(), pruned.get_submodule(n).running_var.clone()) for n in reinit
    }
    seen = max(seen, adabn(pruned, loader, batches, None if everything else reinit, progress))
    for name, ts in by_name.items():
        bn = pruned.get_submodule(name)
        for t in ts:
            t.mean, t.var = bn.running_mean[t.dst].to(torch.float64), bn.running_var[t.dst].to(torch.float64)
        if name in saved and not everything:  # only the new channels were meant to change
            keep = torch.ones(bn.num_features, dtype=torch.bool, device=bn.running_mean.device)
            keep[torch.cat([t.dst for t in ts])] = False
            bn.running_mean[keep] = saved[name][0][keep]
            bn.running_var[keep] = saved[name][1][keep]
    write_norms(pruned, targets)
    return seen


def _accumulate(acc: list[torch.Tensor]):
    def hook(_module, args):
        x = args[0].detach().to(torch.float64)
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        acc[0] += flat.sum(1)
        acc[1] += flat.square().sum(1)
        acc[2] += flat.shape[1]

    return hook
