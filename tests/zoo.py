"""Small models, each exercising one channel-coupling pattern the engine must follow.

Every entry of ``TOYS`` builds a model and its example input; tests prove pruning equivalence on
all of them. ``YoloToy`` (routes, a C2f-style ``chunk``, an SPP block, two heads) is also the
detector toy of ``detprune bench engine`` (it lives in ``detprune.bench.toys``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from detprune.bench.toys import SPP, Bottleneck, C2f, YoloToy, cbr  # noqa: F401 - the detector toy of the benchmarks


class SimpleCNN(nn.Module):
    def __init__(self, n: int = 5):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), cbr(8, 16, s=2), cbr(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += x if self.down is None else self.down(x)  # in-place add, as torchvision's ResNet
        return F.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, n: int = 5):
        super().__init__()
        self.stem = cbr(3, 8)
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16))
        self.fc = nn.Linear(16, n)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class FlattenMLP(nn.Module):
    """flatten before Linear: each channel feeds H*W input features; BatchNorm1d and PReLU after."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc1, self.bn1, self.act = nn.Linear(6 * 4 * 4, 12), nn.BatchNorm1d(12), nn.PReLU(12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = F.adaptive_max_pool2d(F.relu(self.bn(self.conv(x))), 4)
        return self.fc2(self.act(self.bn1(self.fc1(x.flatten(1)))))


class InvertedResidualSE(nn.Module):
    """MobileNetV2/EfficientNet block: expand, depthwise, SE gate (x * s), project, residual."""

    def __init__(self, c: int = 8, e: int = 4):
        super().__init__()
        h = c * e
        self.expand = cbr(c, h, 1)
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h), nn.BatchNorm2d(h), nn.Hardswish())
        self.fc1, self.fc2 = nn.Conv2d(h, 4, 1), nn.Conv2d(4, h, 1)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.dw(self.expand(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return x + self.project(y * s)


class MobileToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.blocks = nn.Sequential(InvertedResidualSE(8), InvertedResidualSE(8))
        self.mult = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16))  # depth multiplier 2
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(F.silu(self.mult(self.blocks(self.stem(x)))))


class GroupedToy(nn.Module):
    """ResNeXt-style: 1x1 -> grouped 3x3 (4 groups) -> 1x1, plus GroupNorm in two flavours."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16, 1)
        self.b = nn.Conv2d(16, 24, 3, padding=1, groups=4, bias=True)
        self.gn = nn.GroupNorm(4, 24)
        self.c = nn.Conv2d(24, 12, 1)
        self.gn_pc = nn.GroupNorm(12, 12)  # one channel per group: freely prunable
        self.out = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        return self.out(F.relu(self.gn_pc(self.c(F.relu(self.gn(self.b(self.a(x))))))))


class DenseToy(nn.Module):
    """DenseNet: each layer reads BN-ReLU of the concatenation of all earlier outputs."""

    def __init__(self, c0: int = 8, growth: int = 4, n: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.layers = nn.ModuleList()
        c = c0
        for _ in range(n):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1)))
            c += growth
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 6, 1), nn.AvgPool2d(2))

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return self.trans(torch.cat(feats, 1))


class InceptionToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1 = cbr(8, 4, 1)
        self.b2 = nn.Sequential(cbr(8, 6, 1), cbr(6, 6, 3))
        self.b3 = nn.Sequential(cbr(8, 2, 1), cbr(2, 4, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(8, 4, 1))
        self.out = nn.Conv2d(18, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.out(torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 stride-1 unit: chunk, a branch on one half, cat, channel shuffle (view/transpose)."""

    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(
            cbr(h, h, 1), nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), cbr(h, h, 1)
        )

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), 1)
        b, c, hh, ww = out.size()
        return out.view(b, 2, c // 2, hh, ww).transpose(1, 2).contiguous().view(b, c, hh, ww)


class ShuffleToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.units = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.out(self.units(self.stem(x)))


class DeconvHeads(nn.Module):
    """CenterNet-style: ConvTranspose2d + BN + ReLU, one feature map read by three heads."""

    def __init__(self):
        super().__init__()
        self.backbone = cbr(3, 12, 3, 2)
        self.deconv = nn.Sequential(nn.ConvTranspose2d(12, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.hm = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))
        self.wh = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 1))
        self.reg = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 1))

    def forward(self, x):
        y = self.deconv(self.backbone(x))
        return {"hm": self.hm(y), "wh": self.wh(y), "reg": self.reg(y)}


class PadShortcutNet(nn.Module):
    """ResNet option A: subsample and zero-pad channels on the shortcut (F.pad on the channel axis)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        y = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + short)
        return self.fc(y.mean((2, 3)))


class LayerScaleNet(nn.Module):
    """A per-channel parameter multiplied in forward (ConvNeXt layer scale) and a shared conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)  # applied twice: one set of filters
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.conv(x)) * self.gamma[:, None, None]
        return self.out(self.shared(F.relu(self.shared(y))))


class FixedSplitNet(nn.Module):
    """split into sizes fixed in code, and a slice of the channel axis: those channels stay."""

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 12)
        self.b = cbr(8, 8)
        self.c = cbr(3, 10)
        self.out = nn.Conv2d(8 + 4, 2, 1)

    def forward(self, x):
        p, q = torch.split(self.a(x), [8, 4], dim=1)
        first = self.c(x)[:, :4]
        return self.out(torch.cat([self.b(p), q + first], 1))


def _input(c: int = 3, s: int = 16, n: int = 2) -> torch.Tensor:
    return torch.randn(n, c, s, s)


TOYS = {
    "simple_cnn": (SimpleCNN, lambda: (_input(),)),
    "tiny_resnet": (TinyResNet, lambda: (_input(),)),
    "flatten_mlp": (FlattenMLP, lambda: (_input(s=8, n=3),)),
    "mobile_se": (MobileToy, lambda: (_input(),)),
    "grouped_gn": (GroupedToy, lambda: (_input(),)),
    "dense_cat": (DenseToy, lambda: (_input(),)),
    "inception": (InceptionToy, lambda: (_input(),)),
    "yolo_c2f_spp": (YoloToy, lambda: (_input(s=32),)),
    "shuffle": (ShuffleToy, lambda: (_input(),)),
    "deconv_heads": (DeconvHeads, lambda: (_input(),)),
    "pad_shortcut": (PadShortcutNet, lambda: (_input(),)),
    "layer_scale_shared": (LayerScaleNet, lambda: (_input(),)),
    "fixed_split": (FixedSplitNet, lambda: (_input(),)),
}

# groups-stats normalisation changes with the channel count, so zeroing + pruning is exact only
# where every channel's normalisation is its own
NOT_EXACT_AFTER_ZEROING = {"grouped_gn"}


def build(name: str, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A toy in eval mode with non-trivial BN statistics, and its example inputs."""
    torch.manual_seed(0)
    ctor, make_inputs = TOYS[name]
    model = ctor().eval().to(dtype)
    randomize_norms(model)
    return model, tuple(t.to(dtype) for t in make_inputs())


def randomize_norms(model: nn.Module) -> None:
    """Random BN statistics and affine, so a wrong slice shows in the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


# ---- helpers shared by the engine tests ---------------------------------------------------------
def flat_outputs(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def run(model: nn.Module, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return flat_outputs(model(*inputs))


def zero_removed(model: nn.Module, graph, plan) -> None:
    """Zero what a plan removes: producers' filters and biases, per-channel affines (BN γ/β,
    depthwise filters and biases, layer scales). Pruning exactly those channels afterwards must
    leave the outputs unchanged."""
    with torch.no_grad():
        for gid, kept in plan.kept.items():
            g = graph.group(gid)
            gone = torch.ones(g.size, dtype=torch.bool)
            gone[kept] = False
            for s in g.slots:
                if s.role == "in":
                    continue
                pos = s.index[gone[s.channel]]
                if not len(pos):
                    continue
                m = model.get_submodule(s.module)
                if s.param:
                    p = getattr(m, s.param)
                    p.index_fill_(next(k for k, n in enumerate(p.shape) if n > 1), pos, 0)
                    continue
                rec = graph.records[s.module]
                for name, axis in rec.params.get(s.role, []):
                    if name in ("running_mean", "running_var"):
                        continue
                    p = getattr(m, name)
                    if rec.kind == "dwconv" and rec.transposed and p.dim() > 1:
                        p.view(-1, *p.shape[2:]).index_fill_(0, pos, 0)
                    else:
                        p.index_fill_(axis, pos, 0)


def removed_per_producer(graph, plan) -> dict[str, int]:
    """How many output channels each producer loses under ``plan``."""
    removed: dict[str, int] = {}
    for gid, keep in plan.kept.items():
        for slot in graph.group(gid).producers:
            removed[slot.module] = removed.get(slot.module, 0) + int((~torch.isin(slot.channel, keep)).sum())
    return removed


def out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels
