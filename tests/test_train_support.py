"""Not tests: a tiny adapter, a learnable in-memory dataset and a training script for the
Trainer tests. The subprocess tests (kill/resume, torchrun) run this file as a script.

The task is learnable in a few epochs on the CPU: the label is the colour channel with the
largest mean, so top-1 rises well above chance (1/3) when training works.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


class TinyAdapter:
    """A small conv classifier (conv-BN-ReLU x2, pool, linear) for 16x16 images."""

    task = "classification"

    def __init__(self, num_classes: int = 3, width: int = 8):
        self.args = {"num_classes": num_classes, "width": width}

    def build(self) -> nn.Module:
        w, n = self.args["width"], self.args["num_classes"]
        return nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, n),
        )

    def example_inputs(self, batch_size: int = 1):
        return (torch.randn(batch_size, 3, 16, 16),)

    def loss(self, outputs, targets):
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss, {"ce": float(loss.detach())}

    def decode(self, outputs, metas=None):
        return list(outputs.softmax(dim=1))

    def protected(self, model: nn.Module) -> list[str]:
        return ["8"]


def colour_dataset(n: int, seed: int, size: int = 16) -> TensorDataset:
    """Noisy images whose label is the channel with the brightest mean."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.rand(n, 3, size, size, generator=g) * 0.6
    images[torch.arange(n), labels] += 0.04
    return TensorDataset(images, labels)


class RandomFlip(torch.utils.data.Dataset):
    """Flips each image with probability 1/2 using the global torch RNG (a resume must restore it)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return (image.flip(-1) if torch.rand(()) < 0.5 else image), label


def main(argv: list[str] | None = None) -> int:
    """Train TinyAdapter deterministically; used by the kill/resume and torchrun tests."""
    from detprune.training import distributed as D
    from detprune.training.distributed import make_loader
    from detprune.training.trainer import Trainer, seed_everything

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--per-rank-out", action="store_true", help="rank r writes under OUT/rank{r}")
    p.add_argument("--weights", help="save the final weights here (rank suffix added)")
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--step-sleep", type=float, default=0.0, help="slow each step (kill tests)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    torch.set_num_threads(1)

    seed_everything(0)
    adapter = TinyAdapter()
    model = adapter.build()
    device = torch.device("cpu")
    D.init_distributed(device)
    train = make_loader(RandomFlip(colour_dataset(args.n_train, 1)), 8, train=True, seed=0)
    val = make_loader(colour_dataset(30, 2), 8, train=False)
    out = Path(args.out) / f"rank{D.rank()}" if args.per_rank_out else Path(args.out)
    pruner = SlowPruner(args.step_sleep) if args.step_sleep else None
    trainer = Trainer(
        model,
        adapter,
        train,
        val,
        epochs=args.epochs,
        out_dir=out,
        pruner=pruner,
        lr=0.05,
        warmup_epochs=1,
        deterministic=True,
        progress=False,
        device="cpu",
        ema=True,
        ema_tau=20,
    )
    result = trainer.fit(resume=args.resume)
    if args.weights:
        torch.save(
            {"model": trainer.model.state_dict(), "ema": result.model.state_dict(), "best": result.best},
            f"{args.weights}.rank{D.rank()}",
        )
    print(f"done rank {D.rank()} best {result.best}", flush=True)
    D.shutdown()
    return 0


class SlowPruner:
    """Sleeps after each backward, so a kill lands inside an epoch; stateful, to test pruner checkpoints."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    def on_after_backward(self, model):
        import time

        self.calls += 1
        time.sleep(self.seconds)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


if __name__ == "__main__":
    sys.exit(main())
