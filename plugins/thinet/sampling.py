"""ThiNet's training samples: per-input-channel contributions at a consumer layer's output.

Luo, Wu & Lin, "ThiNet" (ICCV 2017, arXiv 1707.06342), §3.2 (collecting training examples): to
judge layer i's channels, look at the input of layer i+1. One sample is (image, output location (p, q), output
filter o) drawn at random; the consumer's pre-bias output there is a sum over its input channels

    ŷ = Σ_c x̂_c,   x̂_c = Σ_{k1,k2} Ŵ[o, c, k1, k2] · x[c, p·s + k1·d, q·s + k2·d]

on the input padded exactly as the layer pads it (stride, dilation, groups, padding mode). The
reference code (Roll920/ThiNet_Code ``compress_model.py``) draws 10 (location, filter) pairs per
image. We gather the receptive-field patches directly, so each sample costs ``C·k²`` MACs.

Consumers sampled here: ``nn.Conv2d``, ``nn.ConvTranspose2d`` (same sum over the input positions
that reach (p, q)) and ``nn.Linear`` (a "location" is a token; a flattened conv map gives every
channel H·W features). Columns are *channels*, not input positions: positions that carry the same
channel id (flatten -> Linear) are summed into one column, because ThiNet keeps or drops whole
channels. ``y`` is read from the layer's real output (minus bias), so ``X.sum(1) == y`` is a check
of the decomposition, not an assumption.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detprune.errors import DetpruneError
from detprune_plugins.common.sampling import sampled_batches

SUPPORTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class ConsumerSamples:
    """Samples of one consumer: ``X[n, col]`` contribution of each input channel, ``y[n]`` the output.

    ``cols[pos]`` is the column of input position ``pos`` (positions of one channel share it).
    """

    X: torch.Tensor
    y: torch.Tensor
    cols: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])


class SamplingError(DetpruneError):
    """ThiNet could not draw samples (no images, an unsupported consumer, ...)."""


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ThiNet cannot decompose this consumer's output by input channel (None: it can)."""
    if not isinstance(module, SUPPORTED):
        return f"consumer is a {type(module).__name__}; ThiNet samples Conv2d, ConvTranspose2d and Linear"
    if isinstance(module, nn.ConvTranspose2d) and module.padding_mode != "zeros":
        return f"ConvTranspose2d with padding_mode={module.padding_mode!r}"
    return None


def column_map(input_ids: np.ndarray) -> torch.Tensor:
    """Column of each input position: positions carrying the same channel id share one column.

    Columns are numbered in order of first appearance, so an input axis without repeated channels
    (every conv) maps position i to column i.
    """
    ids = np.asarray(input_ids).reshape(-1)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return torch.from_numpy(rank[inverse.reshape(-1)]).long()


def _generator(seed: int, name: str) -> torch.Generator:
    """One generator per consumer, so a consumer's draws do not depend on which others are sampled."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


# ---- per-layer decompositions ------------------------------------------------------------------
def conv2d_contributions(m: nn.Conv2d, x: torch.Tensor, out: torch.Tensor, b, o, p, q):
    """``X[n, C]`` per-input-channel contributions and ``y[n]`` for samples (image b, filter o, p, q)."""
    pad = tuple(m._reversed_padding_repeated_twice)
    if any(pad):
        x = F.pad(x, pad, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    g, cin = m.groups, m.in_channels
    cg, og = cin // g, m.out_channels // g
    dev = x.device
    chan = (o // og)[:, None] * cg + torch.arange(cg, device=dev)  # [n, cg]
    rows = p[:, None] * sh + torch.arange(kh, device=dev) * dh  # [n, kh]
    cols = q[:, None] * sw + torch.arange(kw, device=dev) * dw
    patch = x[b[:, None, None, None], chan[:, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    contrib = (patch.float() * m.weight[o].float()).sum((2, 3))  # [n, cg]
    X = contrib if g == 1 else torch.zeros(len(o), cin, device=dev).scatter_(1, chan, contrib)
    y = out[b, o, p, q].float()
    if m.bias is not None:
        y = y - m.bias[o].float()
    return X, y


def conv_transpose2d_contributions(m: nn.ConvTranspose2d, x: torch.Tensor, out: torch.Tensor, b, o, p, q):
    """As :func:`conv2d_contributions`; input (i, j) reaches (p, q) when ``i·s - pad + k·d == p``."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    g, cin = m.groups, m.in_channels
    cg, og = cin // g, m.out_channels // g
    H, W = x.shape[-2:]
    dev = x.device
    chan = (o // og)[:, None] * cg + torch.arange(cg, device=dev)

    def taps(pos, pad, k, d, s, size):
        num = pos[:, None] + pad - torch.arange(k, device=dev) * d  # [n, k]
        ok = (num >= 0) & (num % s == 0) & (num // s < size)
        return (num // s).clamp(0, size - 1), ok

    ri, rok = taps(p, ph, kh, dh, sh, H)
    ci, cok = taps(q, pw, kw, dw, sw, W)
    patch = x[b[:, None, None, None], chan[:, :, None, None], ri[:, None, :, None], ci[:, None, None, :]].float()
    valid = (rok[:, :, None] & cok[:, None, :])[:, None].float()  # [n, 1, kh, kw]
    w = m.weight[chan, (o % og)[:, None]].float()  # [n, cg, kh, kw]
    contrib = (patch * valid * w).sum((2, 3))
    X = contrib if g == 1 else torch.zeros(len(o), cin, device=dev).scatter_(1, chan, contrib)
    y = out[b, o, p, q].float()
    if m.bias is not None:
        y = y - m.bias[o].float()
    return X, y


def linear_contributions(m: nn.Linear, x: torch.Tensor, out: torch.Tensor, b, o, t):
    """Samples (image b, token t, output feature o) of a Linear over ``[B, ..., F]`` inputs."""
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    out = out.reshape(out.shape[0], -1, out.shape[-1])
    X = x[b, t].float() * m.weight[o].float()
    y = out[b, t, o].float()
    if m.bias is not None:
        y = y - m.bias[o].float()
    return X, y


class _Sampler:
    """Forward hook on one consumer: draws ``locations`` samples per image and keeps their rows."""

    def __init__(self, name: str, module: nn.Module, cols: torch.Tensor, locations: int, seed: int):
        self.name, self.module, self.cols, self.locations = name, module, cols, locations
        self.gen = _generator(seed, name)
        self.n_cols = int(cols.max()) + 1 if cols.numel() else 0
        self.identity = self.n_cols == len(cols) and bool((cols == torch.arange(len(cols))).all())
        self.X: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.calls = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        x = args[0]
        self.calls += 1
        m, L, B = self.module, self.locations, x.shape[0]
        if isinstance(m, nn.Linear):
            axis_len, dims = x.shape[-1], (int(np.prod(x.shape[1:-1])) if x.dim() > 2 else 1,)
        else:
            axis_len, dims = x.shape[1], tuple(out.shape[-2:])
        if axis_len != len(self.cols):
            raise SamplingError(
                f"consumer '{self.name}' sees {axis_len} input channels, the graph says {len(self.cols)}: "
                "sample the model the graph was traced from"
            )
        n = B * L
        draws = [torch.randint(0, int(s), (n,), generator=self.gen) for s in dims]
        o = torch.randint(0, out.shape[-1] if isinstance(m, nn.Linear) else out.shape[1], (n,), generator=self.gen)
        b = torch.arange(B).repeat_interleave(L)
        dev = x.device
        b, o, draws = b.to(dev), o.to(dev), [d.to(dev) for d in draws]
        if isinstance(m, nn.Linear):
            X, y = linear_contributions(m, x, out, b, o, draws[0])
        elif isinstance(m, nn.ConvTranspose2d):
            X, y = conv_transpose2d_contributions(m, x, out, b, o, *draws)
        else:
            X, y = conv2d_contributions(m, x, out, b, o, *draws)
        if not self.identity:
            X = torch.zeros(n, self.n_cols, device=dev).index_add_(1, self.cols.to(dev), X)
        self.X.append(X.cpu())
        self.y.append(y.cpu())

    def result(self) -> ConsumerSamples:
        if not self.X:
            raise SamplingError(f"consumer '{self.name}' was never called in the forward pass: nothing to sample")
        return ConsumerSamples(torch.cat(self.X), torch.cat(self.y), self.cols)


class _Enough(BaseException):
    """Raised from a hook once every sampled consumer has run for this batch (skips the rest)."""


@torch.no_grad()
def sample_consumers(
    model: nn.Module,
    columns: Mapping[str, torch.Tensor],
    loader: Iterable[Any] | None,
    images: int = 256,
    locations: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, ConsumerSamples]:
    """Run ``images`` training images through ``model`` (eval mode) and sample every named consumer.

    :param columns: consumer module name -> column of each of its input positions (:func:`column_map`).
    :returns: consumer name -> :class:`ConsumerSamples` with ``images·locations`` rows per call.

    The forward pass stops early once every hooked consumer has run as often as in the first
    batch, so sampling the first layers of a deep network costs only those layers.
    """
    if loader is None:
        raise SamplingError(
            "ThiNet samples activations on training images: no training loader was given "
            "(pass --data, or ctx.train_loader)"
        )
    if images < 1 or locations < 1:
        raise SamplingError(f"ThiNet needs images >= 1 and locations >= 1, got images={images}, locations={locations}")
    samplers: dict[str, _Sampler] = {}
    for name, cols in columns.items():
        module = model.get_submodule(name)
        why = unsupported_reason(module)
        if why:
            raise SamplingError(f"cannot sample '{name}': {why}")
        samplers[name] = _Sampler(name, module, torch.as_tensor(cols).long(), locations, seed)
    if not samplers:
        return {}
    expected: dict[str, int] | None = None

    def stopper(sampler: _Sampler):
        def hook(module, args, out):
            sampler(module, args, out)
            if expected is not None and all(s.calls >= expected[n] for n, s in samplers.items()):
                raise _Enough

        return hook

    handles = [s.module.register_forward_hook(stopper(s)) for s in samplers.values()]
    batches = sampled_batches(model, loader, images, seed, who="", error=SamplingError,
                              desc=f"thinet: sampling {len(samplers)} layer(s)", progress=progress,
                              empty="ThiNet's training loader gave no images to sample")  # fmt: skip
    try:
        for x in batches:
            for s in samplers.values():
                s.calls = 0
            with contextlib.suppress(_Enough):
                model(x)
            if expected is None:
                expected = {n: s.calls for n, s in samplers.items()}
    finally:
        for h in handles:
            h.remove()
    return {n: s.result() for n, s in samplers.items()}
