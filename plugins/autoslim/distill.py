"""In-place distillation (AutoSlim §3.1 / US-Nets §3.3; research/algorithms.md §5.1, §5.5): every
narrower width learns from the widest width's *detached* outputs of the same batch.

* classifiers: KL(teacher softmax || student softmax) at temperature 1 (mmrazor; the gradient of
  JiahuiYu's soft-target cross-entropy);
* YOLOv3 (§5.5): BCE of the student's objectness and class logits against the teacher's
  probabilities, plus L1 on the raw box outputs where the teacher's objectness exceeds 0.5;
* CenterNet (§5.5): BCE of the heatmap logits against the teacher's heatmap probabilities, plus
  L1 on size (weight 0.1) and offset (weight 1, CenterNet's loss weights) at the teacher's peaks;
* an adapter may define ``distill_loss(student, teacher) -> Tensor`` for its own outputs;
  any other output structure falls back to the mean squared error of every output tensor.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger("detprune.autoslim")


def detach(outputs: Any) -> Any:
    """The teacher: the widest width's outputs, cut from the graph."""
    leaves, spec = tree_flatten(outputs)
    return tree_unflatten([x.detach() if torch.is_tensor(x) else x for x in leaves], spec)


def distill_loss(adapter: Any, student: Any, teacher: Any) -> torch.Tensor:
    """The in-place distillation loss of ``adapter``'s task for one narrower width."""
    own = getattr(adapter, "distill_loss", None)
    if callable(own):
        return own(student, teacher)
    name = getattr(adapter, "name", "")
    if getattr(adapter, "task", None) == "classification" and torch.is_tensor(student):
        return kl_logits(student, teacher)
    if name == "yolov3":
        return yolo_distill(student, teacher, int(adapter.args["num_classes"]))
    if name.startswith("centernet"):
        return centernet_distill(student, teacher)
    return mse_outputs(student, teacher)


def kl_logits(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL divergence of the student's class distribution from the teacher's, batch mean (x τ²)."""
    return (
        F.kl_div(
            F.log_softmax(student / tau, dim=1),
            F.log_softmax(teacher / tau, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * tau
        * tau
    )


def yolo_distill(student, teacher, num_classes: int) -> torch.Tensor:
    """Objectness/class probability BCE everywhere + box L1 where the teacher sees an object."""
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        b, _, h, w = s.shape
        s = s.view(b, 3, 5 + num_classes, h, w)
        t = t.view(b, 3, 5 + num_classes, h, w)
        total = total + F.binary_cross_entropy_with_logits(s[:, :, 4:], t[:, :, 4:].sigmoid())
        obj = (t[:, :, 4] > 0).unsqueeze(2)  # sigmoid(t) > 0.5
        if obj.any():
            diff = (s[:, :, :4] - t[:, :, :4]).abs() * obj
            total = total + diff.sum() / (obj.sum() * 4)
    return total


def centernet_distill(student, teacher) -> torch.Tensor:
    """Heatmap probability BCE + size/offset L1 at the teacher's 3x3 peaks above 0.1."""
    s_hm, s_wh, s_reg = student
    t_hm, t_wh, t_reg = teacher
    loss = F.binary_cross_entropy_with_logits(s_hm, t_hm.sigmoid())
    heat = t_hm.sigmoid().amax(dim=1, keepdim=True)
    peak = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > 0.1)
    n = peak.sum()
    if n > 0:
        loss = (
            loss + 0.1 * ((s_wh - t_wh).abs() * peak).sum() / (2 * n) + ((s_reg - t_reg).abs() * peak).sum() / (2 * n)
        )
    return loss


_warned: set[str] = set()


def mse_outputs(student, teacher) -> torch.Tensor:
    """Fallback for an unknown output structure: mean squared error of every output tensor."""
    s_leaves, _ = tree_flatten(student)
    t_leaves, _ = tree_flatten(teacher)
    pairs = [(s, t) for s, t in zip(s_leaves, t_leaves) if torch.is_tensor(s) and s.is_floating_point()]
    if "mse" not in _warned:
        _warned.add("mse")
        log.warning("autoslim: no in-place distillation loss for these outputs; using the MSE of the raw outputs")
    return sum(F.mse_loss(s, t) for s, t in pairs) / max(len(pairs), 1)
