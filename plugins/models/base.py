"""What every built-in model adapter shares: JSON-checked build args, example inputs,
the detection output helpers, and the classifiers' loss/decode/protected layers.

An adapter (``detprune.plugin.protocols.ModelAdapter``) owns one model family. Its build arguments live in
``self.args`` and must survive ``json.dumps`` so a pruning recipe can rebuild the dense model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from detprune.errors import DetpruneError
from detprune.plugin.protocols import ModelAdapter


class AdapterArgumentError(DetpruneError, ValueError):
    """A model adapter was given a build argument it cannot use."""


class AdapterBase(ModelAdapter):
    """Stores and validates JSON-serialisable build arguments; gives square example inputs."""

    task: str = "classification"
    name: str = "?"

    def __init__(self, **args: Any) -> None:
        """
        :param num_classes: classes the model predicts (``detprune prune`` takes the dataset's).
        :param img_size: network input size (square); example inputs, FLOPs and latency use it.
        :param width: channel width multiplier of every layer.
        :param depth: residual blocks per stage multiplier, where the family has stages.
        """
        try:
            json.dumps(args)
        except TypeError as exc:
            raise AdapterArgumentError(
                f"adapter '{self.name}': build arguments must be JSON-serialisable: {exc}"
            ) from exc
        self.args = dict(args)
        n = self.args.get("num_classes")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise AdapterArgumentError(f"adapter '{self.name}': num_classes must be a positive integer, got {n!r}")
        size = self.args.get("img_size")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise AdapterArgumentError(f"adapter '{self.name}': img_size must be a positive integer, got {size!r}")
        for key in ("width", "depth"):
            v = self.args.get(key)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 4):
                raise AdapterArgumentError(f"adapter '{self.name}': {key} must be a number in (0, 4], got {v!r}")

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """One random batch at the model's default input size (tracing, FLOPs, latency)."""
        s = self.args["img_size"]
        return (torch.rand(batch_size, 3, s, s),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


def scaled(channels: int, width: float, floor: int = 1) -> int:
    """Channel count under a width multiplier (at least ``floor``)."""
    return max(floor, int(round(channels * width)))


def without_inplace(model: nn.Module) -> nn.Module:
    """Turn off ``inplace`` on every activation: a forward hook on a conv or BN (ThiNet, sketching,
    activation statistics) must see the tensor the layer produced, not the one ReLU overwrote."""
    for m in model.modules():
        if hasattr(m, "inplace") and isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU)):
            m.inplace = False
    return model


def last_linear(model: nn.Module) -> str:
    """Qualified name of the last ``nn.Linear`` registered in ``model`` (the classifier)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise DetpruneError(f"{type(model).__name__} has no nn.Linear classifier to protect")
    return names[-1]


class ClassifierAdapter(AdapterBase):
    """Classification: cross-entropy loss, softmax decode, the last Linear protected."""

    task = "classification"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(outputs, targets)
        return loss, {"ce": float(loss.detach())}

    def decode(self, outputs: torch.Tensor, metas: Any = None) -> list[torch.Tensor]:
        """Class probabilities, one ``[num_classes]`` tensor per image."""
        return list(outputs.detach().softmax(dim=1))

    def protected(self, model: nn.Module) -> list[str]:
        return [last_linear(model)]


# ---- detection helpers -----------------------------------------------------------------


def finish_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, meta: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One prediction dict, carrying ``image_id`` when the meta has it.

    Boxes go back to original image pixels through the data pipeline's letterbox inverse
    (``detprune.data.transforms.unletterbox``: ``(xy - pad) / scale``, clipped to ``orig_size``);
    with ``meta=None`` they stay in network-input pixels.
    """
    if meta is not None:
        from detprune.data.transforms import (
            unletterbox,  # local: albumentations costs ~0.4 s when plugins load
        )

        boxes = unletterbox(boxes, dict(meta), clip="orig_size" in meta)
    det: dict[str, Any] = {"boxes": boxes, "scores": scores, "labels": labels}
    if meta is not None and "image_id" in meta:
        det["image_id"] = meta["image_id"]
    return det


def metas_for(metas: Sequence[Mapping[str, Any]] | None, batch: int) -> list[Mapping[str, Any] | None]:
    """``metas`` checked against the batch size (``None`` = boxes stay in network pixels)."""
    if metas is None:
        return [None] * batch
    metas = list(metas)
    if len(metas) != batch:
        raise DetpruneError(f"decode got {len(metas)} metas for a batch of {batch} images")
    return metas


def targets_on(
    targets: Sequence[Mapping[str, torch.Tensor]], batch: int, device: torch.device, num_classes: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-image ``(boxes [N,4] float, labels [N] long)`` on ``device``, checked for shape and range."""
    if len(targets) != batch:
        raise DetpruneError(f"loss got {len(targets)} targets for a batch of {batch} images")
    out = []
    for i, t in enumerate(targets):
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        labels = torch.as_tensor(t["labels"], dtype=torch.long, device=device).reshape(-1)
        if boxes.shape[0] != labels.shape[0]:
            raise DetpruneError(f"target {i}: {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DetpruneError(
                f"target {i}: labels must be 0-based class ids below num_classes={num_classes}, "
                f"got {sorted(set(labels.tolist()))}"
            )
        out.append((boxes, labels))
    return out
