"""What every fidelity study does the same way: its data for one seed, training a VGG16-CIFAR on it,
scoring top-1 on the whole test split, counting parameters, and writing a row of the runner's contract.

A seed fixes everything random in a study (initialisation, data order, sampling), so a method and
its baseline started from that seed's dense checkpoint are paired.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset, TensorDataset

import detprune
from detprune.bench.fidelity.data import train_test
from detprune.eval.evaluate import evaluate_classifier
from detprune.graph import trace
from detprune.plugin.context import split_holdout
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer


class Study:
    """One seed's data, loaders and adapter: ``train`` (the training images the study may use),
    ``holdout`` (training images held out of ``train``, for methods that judge the model on unseen
    data), ``test`` (every test image: what is scored)."""

    def __init__(self, cfg: dict[str, Any], seed: int, holdout: int = 0):
        self.cfg, self.seed = cfg, seed
        train_ds, self.test_ds, self.source = train_test(cfg)
        self.train_ds, self.holdout_ds = train_ds, None
        if holdout:  # the product's own rule (the pipeline's --holdout, MFP's carve-out), drawn per seed
            self.train_ds, self.holdout_ds = split_holdout(train_ds, holdout / len(train_ds), seed=1000 + seed)
        self.adapter = detprune.plugins().adapter("vgg16-cifar", width=cfg["width"])
        self.train = make_loader(self.train_ds, cfg["batch"], train=True, seed=seed)
        self.holdout = make_loader(self.holdout_ds, cfg["batch"], train=False) if holdout else None
        self.test = make_loader(self.test_ds, 500, train=False)
        self.tmp = Path(tempfile.mkdtemp(prefix="detprune-fidelity-"))
        self.runs = 0

    def build(self) -> torch.nn.Module:
        """A dense VGG16-CIFAR initialised from this seed."""
        torch.manual_seed(self.seed)
        return self.adapter.build()

    def graph(self, model: torch.nn.Module):
        """The model's channel graph, traced on its own device."""
        dev = next(model.parameters()).device
        inputs = tuple(x.to(dev) for x in self.adapter.example_inputs(1))
        return trace(model, inputs, protected=tuple(self.adapter.protected(model)))

    def fit(self, model: torch.nn.Module, epochs: int, lr: float, pruner: Any = None) -> torch.nn.Module:
        """Train ``model`` in place (SGD, warm-up + cosine, this seed's batch order); returns it in eval mode."""
        if epochs <= 0:
            return model.eval()
        self.runs += 1
        Trainer(model, self.adapter, self.train, None, epochs=epochs, out_dir=self.tmp / f"run{self.runs}", lr=lr,
                pruner=pruner, progress=False, seed=self.seed, warmup_epochs=min(1.0, epochs / 4)).fit()  # fmt: skip
        return model.eval()

    def top1(self, model: torch.nn.Module) -> float:
        """Top-1 on every test image."""
        return float(evaluate_classifier(model.eval(), self.test, progress=False)["top1"])

    def describe(self) -> str:
        held = f", {len(self.holdout_ds)} held out of training" if self.holdout_ds is not None else ""
        return (f"vgg16-cifar width {self.cfg['width']} on {self.source} ({len(self.train_ds)} train{held} / "
                f"{len(self.test_ds)} test)")  # fmt: skip


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def copy_of(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def row(method: str, baseline: str, metric: str, m: float, b: float, mp: int, bp: int, notes: str = "",
        higher_is_better: bool = True) -> dict[str, Any]:  # fmt: skip
    """One row of the runner's contract for one seed."""
    return {"method": method, "baseline": baseline, "metric": metric, "method_value": round(float(m), 4),
            "baseline_value": round(float(b), 4), "method_params": int(mp), "baseline_params": int(bp),
            "notes": notes, "higher_is_better": higher_is_better}  # fmt: skip


def subset(ds: TensorDataset, n: int, seed: int) -> Subset:
    """``n`` images of ``ds`` drawn by ``seed`` (for sampling-based methods)."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return Subset(ds, idx)
