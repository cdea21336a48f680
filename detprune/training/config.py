"""What shapes a training run (:class:`TrainConfig`, stored in every checkpoint) and seeding."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from detprune.errors import DetpruneError


@dataclass
class TrainConfig:
    """Everything that shapes a run; stored in each checkpoint."""

    epochs: int
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" | "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine ends at lr * min_lr_ratio
    amp: bool = False
    amp_dtype: str = "auto"  # "auto" (bf16 where supported, else fp16), "bf16", "fp16"
    channels_last: bool = False
    clip_grad_norm: float | None = None
    ema: bool = False
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    eval_every: int = 1
    seed: int = 0
    deterministic: bool = False
    device: str | None = None  # None: CUDA if available
    log_every: int = 10
    progress: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise DetpruneError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr <= 0:
            raise DetpruneError(f"lr must be positive, got {self.lr}")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise DetpruneError(f"amp_dtype must be auto, bf16 or fp16, got {self.amp_dtype!r}")
        if self.eval_every < 1:
            raise DetpruneError(f"eval_every must be at least 1, got {self.eval_every}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise DetpruneError(f"clip_grad_norm must be > 0 (a norm), got {self.clip_grad_norm}")
        if not self.warmup_epochs >= 0:
            raise DetpruneError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise DetpruneError(f"weight_decay must be >= 0, got {self.weight_decay}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_kernels() -> None:
    """Ask torch for deterministic kernels only (bit-identical reruns and resumes)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
