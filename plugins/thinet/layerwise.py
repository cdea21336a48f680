"""ThiNet's layer-by-layer strategy on a masked dense model (Luo et al. 2017, §3.1 framework, §3.3).

"Prune one layer, fine-tune, move to the next": for each group, input side first, sample its
consumers on the network *as pruned so far*, choose the removed channels greedily, zero them
(:func:`thinet_mask`), rescale the consumers' kept input channels by least squares (§3.2) and
optionally fine-tune a few steps (the reference fine-tunes 10k iterations per layer at lr 1e-3,
momentum 0.9, weight decay 5e-4; we run ``steps`` of the same SGD), re-zeroing after each step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from detprune.data.collate import move_batch
from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune_plugins.common.channel_mask import ChannelMask
from detprune_plugins.thinet.mask import thinet_mask
from detprune_plugins.thinet.sampling import column_map, sample_consumers
from detprune_plugins.thinet.select import (
    consumer_scales,
    greedy_removal,
    group_gram,
    order_scores,
    scale_inputs,
)

log = logging.getLogger("detprune.thinet")


@dataclass
class LayerwiseResult:
    plan: PruningPlan
    scaled: list[str] = field(default_factory=list)
    finetune_loss: list[float] = field(default_factory=list)  # mean loss of each group's fine-tune


def input_side_first(graph, groups: list) -> list:
    """Groups ordered by their first producer's position in the forward pass."""
    return sorted(groups, key=lambda g: min(graph.records[m].order for m in g.modules("out")))


def finetune_steps(
    model: nn.Module, adapter: Any, loader: Any, steps: int, masks: ChannelMask, lr: float = 1e-3, progress: bool = True
) -> float:
    """``steps`` SGD steps (momentum 0.9, wd 5e-4, as ThiNet) on ``adapter.loss``; masks re-applied after each."""
    if adapter is None:
        raise DetpruneError("thinet: layer_finetune_steps > 0 needs the model adapter's loss (ctx.adapter)")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    device = next(iter(params)).device
    was_training = model.training
    model.train()
    total, done = 0.0, 0
    bar = tqdm(total=steps, desc="thinet: fine-tune", leave=False, disable=not progress)
    try:
        while done < steps:
            batches = 0
            for batch in loader:
                batches += 1
                images, targets = batch[0], batch[1]
                loss, _ = adapter.loss(model(images.to(device)), move_batch(targets, device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                masks.zero_()
                total += float(loss.detach())
                done += 1
                bar.update(1)
                if done >= steps:
                    break
            if not batches:
                raise DetpruneError("thinet: the training loader gave no batch to fine-tune on")
    finally:
        bar.close()
        model.train(was_training)
    return total / max(done, 1)


def prune_layerwise(
    model: nn.Module,
    graph,
    groups: list,
    ctx: PruneContext,
    *,
    images: int,
    locations: int,
    seed: int,
    scale: bool = True,
    steps: int = 0,
    lr: float = 1e-3,
    progress: bool = True,
) -> LayerwiseResult:
    """Prune ``groups`` one at a time on ``model`` (in place: masked and rescaled); return the plan."""
    kept: dict[int, torch.Tensor] = {}
    result = LayerwiseResult(PruningPlan())
    scaled: dict[str, None] = {}
    masks = None
    for g in tqdm(input_side_first(graph, groups), desc="thinet: layer by layer", disable=not progress):
        consumers = list(dict.fromkeys(s.module for s in g.consumers))
        cols = {m: column_map(graph.records[m].inp) for m in consumers}
        samples = sample_consumers(model, cols, ctx.train_loader, images, locations, seed, progress=progress)
        G, energy = group_gram(g, samples)
        order, errors = greedy_removal(G, allowed=~g.fixed)
        sub = graph.plan(
            {g.id: order_scores(order, errors, g.size, energy)}, ctx.ratio, round_to=ctx.round_to, min_keep=ctx.min_keep
        )
        if g.id not in sub.kept:
            continue
        kept[g.id] = sub.kept[g.id]
        plan = PruningPlan(dict(kept))
        masks = thinet_mask(model, graph, plan)
        masks.zero_()
        if scale:
            for m in consumers:
                pos = graph.kept_index(plan, m, "in")
                full = torch.ones(len(cols[m]), dtype=torch.float64)
                full[pos] = consumer_scales(samples[m], pos)
                scale_inputs(model.get_submodule(m), full)
                scaled[m] = None
        if steps:
            loss = finetune_steps(model, ctx.adapter, ctx.train_loader, steps, masks, lr=lr, progress=progress)
            result.finetune_loss.append(loss)
            log.info(
                "thinet: group %d (%s) keeps %d/%d, fine-tune loss %.4g",
                g.id,
                ",".join(g.modules("out")),
                len(kept[g.id]),
                g.size,
                loss,
            )
    result.plan = PruningPlan(kept)
    result.scaled = list(scaled)
    return result
