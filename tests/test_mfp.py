"""The MFP pruner in the Trainer: per-epoch criterion switching by the meta-attribute (logged, plotted,
checkpointed), soft masks that regrow, hard masks that stay, and a final plan that is the zeroed set."""

from __future__ import annotations

import pytest
import torch
from test_train_support import TinyAdapter, colour_dataset

import detprune
from detprune.errors import DetpruneError, UnknownPluginError
from detprune.graph import trace
from detprune.plugin.context import PruneContext, split_holdout
from detprune.training.checkpoint import load_checkpoint
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.mfp.meta import loss as meta_loss
from detprune_plugins.mfp.pruner import DEFAULT_CRITERIA, MFP

FAST = dict(lr=0.05, warmup_epochs=0.5, progress=False, device="cpu")


def setup(ratio=0.5, **options):
    adapter = TinyAdapter()
    train = make_loader(colour_dataset(32, 1), 8, train=True, seed=0)
    val = make_loader(colour_dataset(16, 2), 8, train=False)
    ctx = PruneContext(
        example_inputs=adapter.example_inputs(1), ratio=ratio, adapter=adapter, train_loader=train, val_loader=val
    )
    pruner = MFP(progress=False, **options).bind(ctx)
    return adapter, adapter.build(), train, val, ctx, pruner


def fit(tmp_path, epochs=2, resume=False, setup_=None, **options):
    adapter, model, train, val, ctx, pruner = setup_ or setup(**options)
    Trainer(model, adapter, train, val, epochs=epochs, out_dir=tmp_path, pruner=pruner, **FAST).fit(resume=resume)
    return model, ctx, pruner


def filter_norms(model):
    return model[0].weight.detach().flatten(1).norm(dim=1), model[3].weight.detach().flatten(1).norm(dim=1)


def dropped(pruner, gid, size):
    gone = torch.ones(size, dtype=torch.bool)
    gone[pruner._kept[gid]] = False
    return gone


def test_the_chosen_criterion_is_logged_per_epoch_and_is_the_smallest_meta_change(tmp_path):
    model, ctx, pruner = fit(tmp_path, epochs=3, holdout=0.5)
    assert [h["epoch"] for h in pruner.history] == [0, 1, 2]
    for h in pruner.history:
        assert h["switched"] and h["pruned"] and h["meta"] == "loss"
        assert set(h["values"]) == set(DEFAULT_CRITERIA)
        change = {c: abs(v - h["base"]) for c, v in h["values"].items()}
        assert h["criterion"] == min(DEFAULT_CRITERIA, key=change.get)
    assert pruner.chosen() == [(h["epoch"], h["criterion"]) for h in pruner.history]
    assert pruner.criterion == pruner.history[-1]["criterion"]
    # the meta value is the held-out loss of the unmasked network (eval mode, first meta_batches of the
    # holdout split of the train set: 16 of 32 images, batches of the train loader's 8)
    batches = pruner._held_out(model)
    assert len(batches) == 2 and batches[0][0].shape == (8, 3, 16, 16)


def test_weight_mean_meta_follows_the_criterion_that_removes_least_weight(tmp_path):
    """l1 removes, per single-producer group, the least total |w|: its neighbour moves the mean least."""
    _, _, pruner = fit(tmp_path, epochs=1, criteria=("cosine", "minkowski-p2", "l1"), meta="weight-mean")
    h = pruner.history[0]
    change = {c: abs(v - h["base"]) for c, v in h["values"].items()}
    assert h["values"]["l1"] < h["base"]  # zeroing weights lowers the mean |w|
    assert change["l1"] == min(change.values()) and change[h["criterion"]] == change["l1"]


def test_soft_pruned_filters_regrow_while_training_and_hard_ones_stay_zero(tmp_path):
    # prune at epoch 0 only: epoch 1 trains on without re-masking
    model, _, soft = fit(tmp_path / "soft", epochs=2, prune_every=2)
    assert soft._mask_epoch == 0 and [h["pruned"] for h in soft.history] == [True, False]
    gone0, gone3 = dropped(soft, 1, 8), dropped(soft, 2, 16)
    n0, n3 = filter_norms(model)
    assert gone0.sum() == 4 and gone3.sum() == 8
    assert (n0[gone0] > 0).all() and (n3[gone3] > 0).all(), "zeroed filters regrow (SGD momentum)"

    model, _, hard = fit(tmp_path / "hard", epochs=2, prune_every=2, hard=True)
    gone0 = dropped(hard, 1, 8)
    n0, _ = filter_norms(model)
    assert (n0[gone0] == 0).all() and (n0[~gone0] > 0).all()
    assert (model[1].weight.detach()[gone0] == 0).all() and (model[1].bias.detach()[gone0] == 0).all()


def test_plan_is_the_zeroed_set_and_the_pruned_model_equals_the_masked_one(tmp_path):
    model, ctx, pruner = fit(tmp_path, epochs=2)
    model.eval()
    graph = trace(model, ctx.example_inputs, protected=tuple(ctx.adapter.protected(model)))
    plan = pruner.plan(model, graph, ctx)
    assert {g: t.tolist() for g, t in plan.kept.items()} == {g: t.tolist() for g, t in pruner._kept.items()}
    assert plan.meta["pruner"] == "mfp" and plan.meta["criterion"] == pruner.criterion
    assert plan.meta["how"] == "the set zeroed at epoch 2"
    n0, n3 = filter_norms(model)
    assert (n0 == 0).sum() == 4 and (n3 == 0).sum() == 8  # exactly the removed filters are zero
    x = torch.rand(4, 3, 16, 16)
    pruned = graph.apply(model, plan)
    assert pruned[0].out_channels == 4 and pruned[3].out_channels == 8
    with torch.no_grad():
        assert torch.allclose(model(x), pruned(x), atol=1e-5, rtol=0)


def test_plan_reselects_when_the_weights_moved_since_the_last_mask(tmp_path):
    model, ctx, pruner = fit(tmp_path, epochs=2, prune_every=2)  # mask at epoch 0, regrown in epoch 1
    graph = trace(model, ctx.example_inputs, protected=["8"])
    plan = pruner.plan(model.eval(), graph, ctx)
    assert plan.meta["how"] == "selected at plan time"
    assert plan.meta["criterion"] == pruner.history[-1]["criterion"]
    with torch.no_grad():
        x = torch.rand(4, 3, 16, 16)
        assert torch.allclose(model(x), graph.apply(model, plan)(x), atol=1e-5, rtol=0)


def test_plan_without_training_chooses_once_by_the_meta_attribute():
    adapter, model, _, _, ctx, pruner = setup(ratio=0.25)
    graph = trace(model.eval(), ctx.example_inputs, protected=["8"])
    plan = pruner.plan(model, graph, ctx)
    assert [h["epoch"] for h in pruner.history] == [-1]
    assert plan.kept[1].numel() == 6 and plan.kept[2].numel() == 12
    assert plan.meta["switches"] == [[-1, pruner.criterion]]


def test_resume_restores_history_criterion_and_mask(tmp_path):
    _, _, first = fit(tmp_path, epochs=2)
    state = load_checkpoint(tmp_path / "last.pt")["pruner"]  # weights_only load
    assert state["history"] == first.history and state["criterion"] == first.criterion

    adapter, model, train, val, ctx, resumed = setup()
    fit(tmp_path, epochs=3, resume=True, setup_=(adapter, model, train, val, ctx, resumed))
    assert resumed.history[:2] == first.history
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]


def test_hard_mode_resumes_with_its_mask(tmp_path):
    fit(tmp_path, epochs=1, hard=True)
    adapter, model, train, val, ctx, pruner = setup(hard=True, prune_every=5)  # no new mask in epoch 2
    fit(tmp_path, epochs=2, resume=True, setup_=(adapter, model, train, val, ctx, pruner))
    n0, _ = filter_norms(model)
    assert (n0[dropped(pruner, 1, 8)] == 0).all(), "the restored mask is re-applied after every step"


def test_plot_shows_the_chosen_criteria(tmp_path):
    _, _, pruner = fit(tmp_path / "run", epochs=2)
    path = pruner.plot(tmp_path)
    assert path == tmp_path / "mfp_criteria.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_meta_attribute_is_pluggable(tmp_path):
    calls = []

    def meta(model, batches, adapter):
        calls.append(len(batches))
        return meta_loss(model, batches, adapter)

    _, _, pruner = fit(tmp_path / "a", epochs=1, meta=meta, meta_batches=1, criteria="l1,cosine")
    assert calls == [1, 1, 1] and pruner.history[0]["meta"] == "meta"  # base + one neighbour per criterion
    _, _, pruner = fit(tmp_path / "b", epochs=1, meta="detprune_plugins.mfp.meta:sparsity", criteria=("l2",))
    assert pruner.history[0]["criterion"] == "l2"
    assert pruner.history[0]["values"]["l2"] > pruner.history[0]["base"]  # zeroing raises sparsity


class NeverIterate:
    """A val loader that fails the test if anyone reads it."""

    def __iter__(self):
        raise AssertionError("the val/test loader was iterated")

    def __len__(self):
        return 2


def tagged(n, first):
    """Images whose every pixel is their tag (first, first + 1, ...), labels 0..2."""
    images = (first + torch.arange(n, dtype=torch.float32))[:, None, None, None].expand(n, 3, 16, 16).clone()
    return torch.utils.data.TensorDataset(images, torch.arange(n) % 3)


def recording_meta(seen):
    def meta(model, batches, adapter):
        seen.extend(int(t) for images, *_ in batches for t in images[:, 0, 0, 0].tolist())
        return meta_loss(model, batches, adapter)

    return meta


def test_meta_batches_come_from_the_holdout_loader_never_the_val_loader(tmp_path):
    adapter = TinyAdapter()
    train = make_loader(tagged(32, 0), 8, train=True, seed=0)
    holdout = make_loader(tagged(8, 1000), 4, train=False)
    ctx = PruneContext(example_inputs=adapter.example_inputs(1), ratio=0.25, adapter=adapter, train_loader=train,
                       val_loader=NeverIterate(), holdout_loader=holdout)  # fmt: skip
    seen = []
    pruner = MFP(meta=recording_meta(seen), meta_batches=2, criteria="l1,cosine", progress=False).bind(ctx)
    assert pruner.holdout_fraction == 0.1  # a data-reading meta-attribute asks the pipeline for a holdout
    Trainer(adapter.build(), adapter, train, None, epochs=2, out_dir=tmp_path, pruner=pruner, **FAST).fit()
    assert seen and set(seen) == set(range(1000, 1008))  # both meta batches, every time, only holdout images


def test_without_a_holdout_loader_mfp_carves_a_seeded_split_of_the_train_set(tmp_path):
    adapter = TinyAdapter()
    train = make_loader(tagged(40, 0), 8, train=True, seed=0)
    ctx = PruneContext(example_inputs=adapter.example_inputs(1), ratio=0.25, adapter=adapter, train_loader=train,
                       val_loader=NeverIterate(), seed=3)  # fmt: skip
    seen = []
    pruner = MFP(meta=recording_meta(seen), meta_batches=5, holdout=0.25, criteria="l2", progress=False).bind(ctx)
    Trainer(adapter.build(), adapter, train, None, epochs=1, out_dir=tmp_path, pruner=pruner, **FAST).fit()
    _, held = split_holdout(train.dataset, 0.25, 3)
    assert set(seen) == set(held.indices) and len(held) == 10  # the same rule the pipeline splits by
    assert MFP(meta="weight-mean").holdout_fraction == 0.0  # no data read: nothing held out of training


def test_pipeline_data_holds_the_pruners_fraction_out_of_training():
    from types import SimpleNamespace

    from detprune.pipeline.trip import Data

    cfg = SimpleNamespace(batch_size=4, workers=0, seed=5, train_split="train", val_split="val")
    card = SimpleNamespace(task="classification", source="x", name="x")
    whole = tagged(30, 0)
    data = Data(card, whole, tagged(6, 500), 16, cfg, holdout=0.2)
    train_tags = {int(x[0][0, 0, 0]) for x in data.train_ds}
    held_tags = {int(x[0][0, 0, 0]) for batch in data.holdout_loader for x in batch[0][:, None]}
    assert len(held_tags) == 6 and train_tags.isdisjoint(held_tags) and train_tags | held_tags == set(range(30))
    assert data.train_loader.dataset is data.train_ds  # every training phase sees the remainder only
    assert held_tags == set(Data(card, whole, tagged(6, 500), 16, cfg, holdout=0.2).holdout_ds.indices)
    assert data.describe()["train_images"] == 24 and data.describe()["holdout_images"] == 6
    assert Data(card, whole, tagged(6, 500), 16, cfg).holdout_loader is None


def test_registered_and_listed():
    entry = detprune.plugins().get("pruner", "mfp")
    assert entry.plugin.dist == "detprune" and entry.description.startswith("Meta filter pruning")
    assert isinstance(detprune.plugins().pruner("mfp", criteria=["l1"]), MFP)


def test_user_errors_are_clear_messages(tmp_path):
    with pytest.raises(UnknownPluginError, match="unknown criterion 'cosin'. Did you mean 'cosine'?"):
        MFP(criteria=("l1", "cosin"))
    known = "known: loss, weight-mean, sparsity, or 'package.module:function'"
    with pytest.raises(DetpruneError, match=f"mfp: unknown meta-attribute 'accuracy'; {known}"):
        MFP(meta="accuracy")
    with pytest.raises(DetpruneError, match="mfp: switch_every must be at least 1, got 0"):
        MFP(switch_every=0)
    with pytest.raises(DetpruneError, match="mfp: criteria must name at least one criterion"):
        MFP(criteria="")
    with pytest.raises(DetpruneError, match=r"mfp needs its PruneContext before training: call pruner.bind\(ctx\)"):
        MFP().on_epoch_end(TinyAdapter().build(), 0)
    adapter = TinyAdapter()
    lonely = MFP().bind(PruneContext(example_inputs=adapter.example_inputs(1), adapter=adapter))
    with pytest.raises(
        DetpruneError,
        match="mfp: meta='loss' needs held-out training images, but the bound PruneContext "
        "has neither holdout_loader nor a DataLoader train_loader",
    ):
        lonely.on_epoch_end(adapter.build(), 0)
    with pytest.raises(DetpruneError, match=r"mfp: holdout is a fraction of the training set in \(0, 1\), got 1.5"):
        MFP(holdout=1.5)
    with pytest.raises(
        DetpruneError,
        match=r"mfp: the checkpoint's criterion 'cosine' is not among this run's "
        r"criteria \['l1'\]",
    ):
        MFP(criteria=["l1"]).load_state_dict({"criterion": "cosine"})


def test_pipeline_trip_binds_mfp_and_the_pruned_model_scores_as_the_soft_pruned_one(tmp_path):
    """`detprune prune --pruner mfp --prune-epochs 2`: bound before training, history in the report's plot,
    and the soft-pruned (masked) model and the physically pruned one give the same top-1."""
    import cv2
    import numpy as np

    from detprune.pipeline.trip import PipelineConfig, run

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        for c, name in enumerate(("red", "blue")):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n // 2):
                img = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                img[..., 2 if c == 0 else 0] += 120
                cv2.imwrite(str(tmp_path / "data" / split / name / f"{i}.png"), img)
    res = run(
        PipelineConfig(
            model="vgg16-cifar",
            width=0.125,
            data=tmp_path / "data",
            out=tmp_path / "run",
            pruner="mfp",
            prune_epochs=2,
            ratio=0.4,
            batch_size=8,
            device="cpu",
            latency_iters=2,
            latency_warmup=1,
            progress=False,
            pruner_options={"criteria": ["l1", "cosine"]},
        )
    )
    assert (tmp_path / "run" / "mfp_criteria.png").exists()
    assert res.report["dense"]["metrics"]["top1"] == res.report["pruned"]["metrics"]["top1"]
    assert res.plan.meta["pruner"] == "mfp" and res.plan.meta["how"] == "the set zeroed at epoch 2"
    assert res.report["data"]["train_images"] == 14 and res.report["data"]["holdout_images"] == 2  # 10 % of 16
