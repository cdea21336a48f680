"""The synthetic drone set is learnable on a CPU: a 0.23M-parameter CenterNet-style net trained for
100 steps (batch 8, input 256, ~3 epochs of the default train split) must score a clearly non-zero
mAP@0.5 on its val split. Guards the generator against changes that make objects unlearnable.
Uses the built-in CenterNet loss and decoder (objects as points, stride 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow


def _cbr(i: int, o: int, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class TinyCenterNet(nn.Module):
    """Stride-16 encoder, two upsampling merges back to stride 4, CenterNet heads (hm, wh, reg)."""

    def __init__(self, num_classes: int = 10, c: int = 16):
        super().__init__()
        self.s4 = nn.Sequential(_cbr(3, c, 2), _cbr(c, c), _cbr(c, 2 * c, 2), _cbr(2 * c, 2 * c))
        self.s8 = nn.Sequential(_cbr(2 * c, 3 * c, 2), _cbr(3 * c, 3 * c))
        self.s16 = nn.Sequential(_cbr(3 * c, 4 * c, 2), _cbr(4 * c, 4 * c), _cbr(4 * c, 4 * c))
        self.up8, self.up4 = _cbr(7 * c, 2 * c), _cbr(4 * c, 2 * c)
        self.hm = nn.Sequential(_cbr(2 * c, 2 * c), nn.Conv2d(2 * c, num_classes, 1))
        self.wh = nn.Sequential(_cbr(2 * c, 2 * c), nn.Conv2d(2 * c, 2, 1))
        self.reg = nn.Sequential(_cbr(2 * c, 2 * c), nn.Conv2d(2 * c, 2, 1))
        nn.init.constant_(self.hm[-1].bias, -2.19)

    def forward(self, x):
        f4 = self.s4(x)
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        u8 = self.up8(torch.cat([nn.functional.interpolate(f16, scale_factor=2.0), f8], 1))
        u4 = self.up4(torch.cat([nn.functional.interpolate(u8, scale_factor=2.0), f4], 1))
        return self.hm(u4), self.wh(u4), self.reg(u4)


def test_small_detector_learns_the_synthetic_set(tmp_path_factory):
    import detprune
    from detprune.data import build_dataset, make_loader
    from detprune.data.synthetic import ensure_default
    from detprune.errors import DetpruneError
    from detprune.eval.evaluate import evaluate_model

    try:
        adapter = detprune.plugins().adapter("centernet-resnet18", num_classes=10, img_size=256)
    except DetpruneError as exc:  # pragma: no cover - built-in adapters missing
        pytest.skip(f"CenterNet adapter unavailable: {exc}")
    card = ensure_default(tmp_path_factory.mktemp("cache"))
    train = build_dataset(card, "train", img_size=256, train=True)
    val = build_dataset(card, "val", img_size=256)
    torch.manual_seed(0)
    model = TinyCenterNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loader = make_loader(train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    step = 0
    while step < 100:
        for images, targets, _ in loader:
            loss, _parts = adapter.loss(model(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == 100:
                break
    result = evaluate_model(model, adapter, make_loader(val, batch_size=16), conf=0.1, progress=False)
    assert result["map50"] > 0.25, result["per_class"]
