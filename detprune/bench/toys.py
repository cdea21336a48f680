"""A YOLO-style toy detector for the engine and latency benchmarks (and the tests): residuals, a
C2f ``chunk``, an SPP block, an upsample + route concat and two heads, in 40 lines."""

from __future__ import annotations

import torch
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = cbr(c, c), cbr(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f as written upstream: ``cv1(x).chunk(2, 1)``, bottlenecks, cat of all, cv2."""

    def __init__(self, cin: int, cout: int, n: int = 2):
        super().__init__()
        self.c = cout // 2
        self.cv1 = cbr(cin, 2 * self.c, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = cbr((2 + n) * self.c, cout, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPP(nn.Module):
    """YOLOv3-SPP: max-pools 5/9/13 at stride 1 concatenated with their input."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1 = cbr(c, c // 2, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
        self.cv2 = cbr(c * 2, c, 1)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [p(x) for p in self.pools], 1))


class YoloToy(nn.Module):
    """A YOLO-style detector: residual backbone, C2f, SPP, an upsample + route concat, two heads."""

    def __init__(self, nc: int = 3, w: int = 16):
        super().__init__()
        self.stem = cbr(3, w, 3, 2)
        self.down1 = cbr(w, 2 * w, 3, 2)
        self.res1 = Bottleneck(2 * w)
        self.c2f = C2f(2 * w, 2 * w)
        self.down2 = cbr(2 * w, 4 * w, 3, 2)
        self.spp = SPP(4 * w)
        self.lat = cbr(4 * w, 2 * w, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = cbr(4 * w, 2 * w, 3)
        self.head_big = nn.Conv2d(4 * w, 3 * (5 + nc), 1)
        self.head_small = nn.Conv2d(2 * w, 3 * (5 + nc), 1)

    def forward(self, x):
        p3 = self.c2f(self.res1(self.down1(self.stem(x))))
        p4 = self.spp(self.down2(p3))
        route = torch.cat([self.up(self.lat(p4)), p3], 1)
        return self.head_big(p4), self.head_small(self.fuse(route))
