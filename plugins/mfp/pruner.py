"""MFP: soft filter pruning whose criterion is re-chosen during training by a meta-attribute.

He, Liu, Zhu, Yang, "Meta Filter Pruning to Accelerate Deep Convolutional Neural Networks"
(arXiv 1904.03961 v1; v2 / TNNLS: "Filter Pruning by Switching to Neighboring CNNs with Good
Attributes"). Only the abstract could be read; ../shared/research/algorithms.md §2 states what is
certain and what is a proposal. What this plugin implements (§2.4 pseudocode):

* Soft filter pruning (SFP, He et al. IJCAI 2018, §3): at each pruning epoch the lowest-scored
  channels of every prunable group, ``ctx.ratio`` of them (the same fraction per group, SFP §3.2),
  are zeroed and stay trainable, so they may regrow. Zeroing covers producer filters, biases and
  BN γ, β (:mod:`channel_mask`), so the masked network *is* the pruned one. The price: a channel
  that outputs exactly 0 gets no gradient through ReLU (its derivative at 0 is 0), so under ReLU it
  regrows only through the optimiser's momentum (LeakyReLU nets also through β). ``mask_bn=False``
  is SFP's original mask (filters and biases only: the channel outputs act(β) and regrows through
  BN, but masked ≠ pruned: the network learns to use those constant outputs, and removing them
  left VGG-16 at chance in benchmarks/fidelity_mfp.py); neighbours and the final plan always use
  the exact mask. With ``hard=True`` the mask is re-applied after every optimiser step
  (``on_after_step``), FPGM's "hard within the epoch" done right (a gradient mask alone lets
  momentum and weight decay revive weights, FPGM #47).
* Criterion pool (§2.2): ``l1``, ``l2`` norms and the filter-distance criteria ``minkowski-p1``,
  ``minkowski-p2``, ``cosine`` (:mod:`distance_criteria`); any registered criterion name works.
* Switching (the paper's contribution): at each switching epoch, for every criterion c, build the
  neighbour network W ⊙ M_c (c's selection zeroed, in place and restored), measure the
  meta-attribute on a fixed set of held-out *training* images, and follow the criterion whose neighbour changes it
  least versus the unmasked network. The attribute is a hook (:mod:`mfp_meta`: ``loss`` by default,
  ``weight-mean``, ``sparsity`` or a callable). Each choice is logged and kept in ``history``.
  The batches come from ``ctx.holdout_loader`` (the pipeline holds ``holdout`` of the training set
  out of training for it), else from the same seeded split of ``ctx.train_loader``'s dataset
  (:func:`split_holdout`; a caller that trains on the whole loader trains on those images too);
  never from ``ctx.val_loader``: choosing by the scored split would leak it into the result.
* ``plan`` hard-prunes at the end: the zeroed set itself when the weights still hold the mask,
  otherwise the current criterion's selection on the current weights.

Coupled groups are scored as groups (§2.5), so the final model really loses the channels; SFP/FPGM
masked residual outputs per conv, which cannot be removed.

Lifecycle (docs/internals.md §4): ``bind(ctx)`` before training (the pipeline does it, and may
``attach(graph)``, its trace of the model), then the
Trainer's ``on_epoch_end`` / ``on_after_step`` callbacks, checkpointed through ``state_dict``; then
``plan(model, graph, ctx)``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import detprune
from detprune.data.collate import move_batch
from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext, split_holdout
from detprune.plugin.protocols import Pruner
from detprune.training import distributed as D
from detprune_plugins.common.channel_mask import ChannelMask, channel_mask
from detprune_plugins.mfp import meta as mfp_meta
from detprune_plugins.mfp.plot import plot_history

log = logging.getLogger("detprune.mfp")

DEFAULT_CRITERIA = ("l1", "l2", "minkowski-p1", "minkowski-p2", "cosine")
DISTANCE_CRITERIA = frozenset({"minkowski-p1", "minkowski-p2", "cosine"})


class MFP(Pruner):
    """Meta filter pruning: soft pruning that switches criterion by a meta-attribute (He et al. 2019)."""

    def __init__(
        self,
        criteria: Sequence[str] | str = DEFAULT_CRITERIA,
        switch_every: int = 1,
        prune_every: int = 1,
        meta: Any = "loss",
        meta_batches: int = 2,
        hard: bool = False,
        initial: str = "l2",
        mask_bn: bool = True,
        holdout: float = 0.1,
        progress: bool = True,
    ):
        """
        :param criteria: the criterion pool, names or one comma-separated string (default l1, l2,
            minkowski-p1, minkowski-p2, cosine).
        :param switch_every: re-choose the criterion every this many epochs (the meta step).
        :param prune_every: re-select and zero the channels every this many epochs (SFP: 1).
        :param meta: the meta-attribute: ``loss`` (held-out loss), ``weight-mean``, ``sparsity`` or a callable.
        :param meta_batches: held-out batches the attribute is measured on (drawn once, kept).
        :param holdout: fraction of the training set held out for those batches (``ctx.holdout_loader``;
            used only by a meta-attribute that reads data).
        :param hard: re-apply the mask after every optimiser step instead of once per epoch.
        :param initial: the criterion followed until the first switch (SFP's ``l2``).
        :param mask_bn: zero BN γ, β with the filters (masked == pruned); ``False`` is SFP's original mask.
        :param progress: show a progress bar during the meta step.
        """
        if isinstance(criteria, str):
            criteria = [c.strip() for c in criteria.split(",") if c.strip()]
        self.criteria = tuple(dict.fromkeys(criteria))
        if not self.criteria:
            raise DetpruneError("mfp: criteria must name at least one criterion")
        counts = {"switch_every": switch_every, "prune_every": prune_every, "meta_batches": meta_batches}
        for name, value in counts.items():
            if int(value) < 1:
                raise DetpruneError(f"mfp: {name} must be at least 1, got {value}")
        self.switch_every, self.prune_every, self.meta_batches = int(switch_every), int(prune_every), int(meta_batches)
        self.meta_name, self.meta_fn = mfp_meta.resolve(meta)
        self.hard, self.mask_bn, self.progress = bool(hard), bool(mask_bn), bool(progress)
        if not 0.0 < float(holdout) < 1.0:
            raise DetpruneError(f"mfp: holdout is a fraction of the training set in (0, 1), got {holdout}")
        self.holdout = float(holdout)
        reads_data = self.meta_name in mfp_meta.NEEDS_DATA or self.meta_name not in mfp_meta.META_ATTRIBUTES
        self.holdout_fraction = self.holdout if reads_data else 0.0  # what the pipeline holds out for us
        host = detprune.plugins()
        self._scorers = {c: host.criterion(c) for c in self.criteria}  # unknown names fail here, listing the known
        self.criterion = initial if initial in self.criteria else self.criteria[0]  # SFP ranks by l2 until a switch
        self.history: list[dict[str, Any]] = []
        self.ctx: PruneContext | None = None
        self._graph = None
        self._kept: dict[int, torch.Tensor] = {}
        self._fingerprint = ""
        self._mask_epoch = -1
        self._mask: ChannelMask | None = None
        self._mask_owner: Any = None
        self._batches: list[Any] | None = None
        self._last_plan: PruningPlan | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def bind(self, ctx: PruneContext) -> MFP:
        """Take the context (ratio, adapter, loaders, the dense graph) before training; returns self."""
        if ctx is not self.ctx:
            self._batches = None
        self.ctx = ctx
        if ctx.graph is not None and self._graph is None:
            self._graph = ctx.graph
        return self

    def attach(self, graph) -> None:
        """Use the pipeline's trace of the model being trained (without it, the first epoch end traces it)."""
        self._graph = graph

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Switch criterion (every ``switch_every`` epochs), then zero its selection (every ``prune_every``)."""
        graph = self._ensure_graph(model)
        switched = epoch % self.switch_every == 0
        plan = self._switch(model, graph, epoch) if switched else None
        pruned = epoch % self.prune_every == 0
        if pruned:
            self._zero(model, graph, plan or self._select(model, graph, self.criterion), epoch)
        if not switched and pruned:
            self.history.append(
                {
                    "epoch": int(epoch),
                    "criterion": self.criterion,
                    "switched": False,
                    "pruned": True,
                    "meta": self.meta_name,
                    "base": None,
                    "values": {},
                }
            )
        elif switched:
            self.history[-1]["pruned"] = pruned

    def on_after_step(self, model: nn.Module) -> None:
        """Hard mode: re-zero the current selection after each optimiser step (weights just updated)."""
        if self.hard and self._kept:
            self._current_mask(model).zero_()

    def plan(self, model: nn.Module, graph, ctx: PruneContext | None = None) -> PruningPlan:
        """The final hard prune: the zeroed set when still in place, else the current criterion's choice."""
        if ctx is not None:
            self.bind(ctx)
        self._require_ctx()
        if self._kept and self._fingerprint == graph.fingerprint():
            plan = PruningPlan(kept=dict(self._kept))
            if channel_mask(model, graph, plan, through=self.mask_bn).holds():
                plan.meta.update(self._plan_meta(self.criterion, f"the set zeroed at epoch {self._mask_epoch + 1}"))
                return plan
            log.info("mfp: weights changed since the last mask; re-selecting with %s", self.criterion)
        if not any(h.get("switched") for h in self.history):
            self._switch(model, graph, -1)  # never trained with this pruner: choose once, now
            plan = self._last_plan
        else:
            plan = self._select(model, graph, self.criterion)
        if self._graph is None:
            self._graph = graph
        self._zero(model, graph, plan, self._mask_epoch)
        plan.meta.update(self._plan_meta(self.criterion, "selected at plan time"))
        return plan

    # ---- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """History, current criterion and mask: tensors and plain containers (weights_only-safe)."""
        return {
            "criterion": self.criterion,
            "history": [dict(h) for h in self.history],
            "kept": {str(g): t.clone() for g, t in self._kept.items()},
            "fingerprint": self._fingerprint,
            "mask_epoch": self._mask_epoch,
            "criteria": list(self.criteria),
            "meta": self.meta_name,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("criterion") not in self.criteria:
            raise DetpruneError(
                f"mfp: the checkpoint's criterion {state.get('criterion')!r} is not among this run's "
                f"criteria {list(self.criteria)}"
            )
        self.criterion = state["criterion"]
        self.history = [dict(h) for h in state.get("history", [])]
        self._kept = {int(g): torch.as_tensor(t, dtype=torch.long) for g, t in state.get("kept", {}).items()}
        self._fingerprint = str(state.get("fingerprint", ""))
        self._mask_epoch = int(state.get("mask_epoch", -1))
        self._mask, self._mask_owner = None, None

    # ---- reporting --------------------------------------------------------------------------------
    def chosen(self) -> list[tuple[int, str]]:
        """``(epoch, criterion)`` of every switching epoch (epoch -1: chosen at plan time)."""
        return [(h["epoch"], h["criterion"]) for h in self.history if h.get("switched")]

    def plot(self, out_dir: str | Path) -> Path:
        """``out_dir/mfp_criteria.png``: the criterion chosen per epoch and each neighbour's meta change."""
        return plot_history(self.history, self.criteria, self.meta_name, Path(out_dir) / "mfp_criteria.png")

    # ---- internals --------------------------------------------------------------------------------
    def _require_ctx(self) -> PruneContext:
        if self.ctx is None:
            raise DetpruneError(
                "mfp needs its PruneContext before training: call pruner.bind(ctx) "
                "(ratio, adapter and a loader for the meta-attribute batches)"
            )
        return self.ctx

    def _ensure_graph(self, model: nn.Module):
        if self._graph is None:
            self._graph = self._require_ctx().require_graph(model)
        fp = self._graph.fingerprint()
        if self._kept and self._fingerprint and fp != self._fingerprint:
            log.warning("mfp: the stored mask belongs to another model structure; it is dropped")
            self._kept, self._mask = {}, None
        self._fingerprint = fp
        return self._graph

    def _select(self, model: nn.Module, graph, name: str) -> PruningPlan:
        ctx = self._require_ctx()
        with torch.no_grad():
            scores = {g.id: self._scorers[name].score(model, g, ctx) for g in graph.prunable_groups()}
        return graph.plan(scores, ctx.ratio, round_to=ctx.round_to, min_keep=ctx.min_keep)

    def _holdout_loader(self) -> Any:
        """``ctx.holdout_loader``, else a loader over the ``holdout`` split of the train loader's dataset."""
        ctx = self._require_ctx()
        if ctx.holdout_loader is not None:
            return ctx.holdout_loader
        train = ctx.train_loader
        if train is None or not hasattr(train, "dataset"):
            return None
        log.info("mfp: no ctx.holdout_loader; meta batches from a %.0f%% split of the train loader", 100 * self.holdout)
        _, held = split_holdout(train.dataset, self.holdout, ctx.seed)
        batch = getattr(train, "batch_size", None) or 1
        return torch.utils.data.DataLoader(held, batch, shuffle=False, collate_fn=getattr(train, "collate_fn", None))

    def _held_out(self, model: nn.Module) -> list[Any]:
        """The fixed meta batches: the first ``meta_batches`` of the held-out training images."""
        device = next(model.parameters()).device
        if self._batches is None:
            loader = self._holdout_loader()
            if loader is None:
                if self.meta_name in mfp_meta.NEEDS_DATA:
                    raise DetpruneError(
                        f"mfp: meta={self.meta_name!r} needs held-out training images, but the bound "
                        "PruneContext has neither holdout_loader nor a DataLoader train_loader"
                    )
                self._batches = []
            else:
                batches = []
                for batch in loader:
                    batches.append(move_batch(batch, torch.device("cpu")))
                    if len(batches) == self.meta_batches:
                        break
                self._batches = batches
        return [move_batch(b, device) for b in self._batches]

    def _switch(self, model: nn.Module, graph, epoch: int) -> PruningPlan:
        """Try every neighbour network; follow the criterion whose neighbour moves the meta-attribute least."""
        ctx = self._require_ctx()
        batches = self._held_out(model)
        base = self.meta_fn(model, batches, ctx.adapter)
        plans, values = {}, []
        bar = tqdm(
            self.criteria,
            desc=f"mfp neighbours (epoch {epoch + 1})",
            leave=False,
            disable=None if self.progress and ctx.progress and D.is_main() else True,
        )  # None: off when not a terminal
        for name in bar:
            plans[name] = self._select(model, graph, name)
            with channel_mask(model, graph, plans[name]).applied():
                values.append(self.meta_fn(model, batches, ctx.adapter))
        device = next(model.parameters()).device
        summed = D.all_reduce_sum(torch.tensor([base, *values], dtype=torch.float64, device=device))
        base, *values = (summed / D.world_size()).tolist()  # ranks with different batches agree on one choice
        change = {name: abs(v - base) for name, v in zip(self.criteria, values)}
        self.criterion = min(self.criteria, key=lambda c: change[c])  # ties: the first listed
        self.history.append(
            {
                "epoch": int(epoch),
                "criterion": self.criterion,
                "switched": True,
                "pruned": False,
                "meta": self.meta_name,
                "base": float(base),
                "values": {n: float(v) for n, v in zip(self.criteria, values)},
            }
        )
        if D.is_main():
            log.info(
                "mfp epoch %d: criterion %s (%s %.4g; neighbours %s)",
                epoch + 1,
                self.criterion,
                self.meta_name,
                base,
                ", ".join(f"{n} {v:+.3g}" for n, v in zip(self.criteria, [v - base for v in values])),
            )
        self._last_plan = plans[self.criterion]
        return plans[self.criterion]

    def _zero(self, model: nn.Module, graph, plan: PruningPlan, epoch: int) -> None:
        self._mask = channel_mask(model, graph, plan, through=self.mask_bn)
        self._mask.zero_()
        self._mask_owner = weakref.ref(model)
        self._kept = dict(plan.kept)
        self._fingerprint = graph.fingerprint()
        self._mask_epoch = int(epoch)

    def _current_mask(self, model: nn.Module) -> ChannelMask:
        owner = self._mask_owner() if self._mask_owner is not None else None
        if self._mask is None or owner is not model:
            graph = self._ensure_graph(model)
            self._mask = channel_mask(model, graph, PruningPlan(kept=dict(self._kept)), through=self.mask_bn)
            self._mask_owner = weakref.ref(model)
        return self._mask

    def _plan_meta(self, criterion: str, how: str) -> dict[str, Any]:
        ratio = self.ctx.ratio if self.ctx is not None else None
        return {
            "pruner": "mfp",
            "criterion": criterion,
            "ratio": ratio,
            "how": how,
            "meta": self.meta_name,
            "switches": [[e, c] for e, c in self.chosen()],
        }


@detprune.hookimpl
def detprune_pruners():
    return {"mfp": MFP}
