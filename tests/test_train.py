"""The Trainer in one process: plain training, pruner callbacks and their timing, AMP unscaling,
resuming and extending runs, fine-tuning an already smaller model, run-folder outputs."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from test_train_support import TinyAdapter, colour_dataset
from torch import nn

from detprune.errors import DetpruneError
from detprune.training.checkpoint import CheckpointError, load_checkpoint
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer, TrainingDivergedError

FAST = dict(lr=0.05, warmup_epochs=0.5, progress=False, device="cpu")


def loaders(n_train=48, n_val=24, batch=8):
    return (
        make_loader(colour_dataset(n_train, 1), batch, train=True, seed=0),
        make_loader(colour_dataset(n_val, 2), batch, train=False),
    )


def test_plain_training_learns_and_writes_the_run_folder(tmp_path):
    adapter = TinyAdapter()
    model = adapter.build()
    before = copy.deepcopy(model.state_dict())
    train, val = loaders(n_train=96)
    result = Trainer(model, adapter, train, val, epochs=4, out_dir=tmp_path, **FAST).fit()

    assert result.metric == "top1" and result.best >= 0.75  # chance is 1/3
    assert result.model is model  # no EMA: the trained model itself
    assert not torch.equal(before["0.weight"], model.state_dict()["0.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "last.prev.pt",
        "last.pt",
        "metrics.csv",
        "metrics.png",
    ]
    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows] == [12, 24, 36, 48]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert {"lr", "top1", "val_loss", "img_per_s", "ce"} <= set(rows[0])
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(tmp_path / "best.pt")  # weights_only load
    assert best["kind"] == "best" and best["best"] == result.best and best["epoch"] == result.best_epoch


class Recorder:
    """A pruner that checks, at each callback, what the documented timing guarantees."""

    def __init__(self, extra_loss=5.0):
        self.events, self.extra_loss, self.snapshot = [], extra_loss, None

    def loss_term(self, model, outputs, batch):
        assert not isinstance(model, nn.parallel.DistributedDataParallel)
        assert all(p.grad is None for p in model.parameters()), "loss_term must run before backward"
        params = [p.detach().clone() for p in model.parameters()]
        if self.snapshot is not None:  # the optimiser stepped since the last batch
            assert any(not torch.equal(a, b) for a, b in zip(params, self.snapshot))
        self.snapshot = params
        images, labels = batch
        assert images.shape == (8, 3, 16, 16) and labels.shape == (8,) and outputs.shape == (8, 3)
        self.events.append("loss_term")
        return torch.tensor(self.extra_loss)

    def on_after_backward(self, model):
        assert all(p.grad is not None for p in model.parameters()), "after backward: gradients exist"
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), self.snapshot)), "before optimizer.step"
        self.events.append("after_backward")

    def on_epoch_end(self, model, epoch):
        self.events.append(f"epoch_end {epoch}")
        with torch.no_grad():
            model[0].weight[0].zero_()  # soft-prune filter 0, as MFP does


def test_each_pruner_callback_fires_at_its_documented_time(tmp_path):
    adapter = TinyAdapter()
    rec = Recorder()
    seen_by_eval = []

    def evaluate_fn(model, loader):
        rec.events.append("evaluate")
        seen_by_eval.append(model[0].weight[0].abs().sum().item())
        return {"top1": 0.5}

    train, val = loaders(n_train=24)  # 3 steps per epoch
    result = Trainer(
        adapter.build(), adapter, train, val, epochs=2, out_dir=tmp_path, pruner=rec, evaluate_fn=evaluate_fn, **FAST
    ).fit()

    per_epoch = ["loss_term", "after_backward"] * 3
    assert rec.events == per_epoch + ["epoch_end 0", "evaluate"] + per_epoch + ["epoch_end 1", "evaluate"]
    assert seen_by_eval == [0.0, 0.0]  # evaluation runs after on_epoch_end
    saved = load_checkpoint(tmp_path / "last.pt")["model"]["0.weight"][0]
    assert torch.count_nonzero(saved) == 0  # ... and so does the checkpoint
    row = result.history[0]
    assert row["train_loss"] - row["ce"] == pytest.approx(5.0, abs=1e-6)  # loss_term is added to the loss


def test_on_after_step_runs_after_each_optimizer_step(tmp_path):
    """A hard mask re-applied here holds: the next forward and the saved weights see it."""

    class HardMask:
        def __init__(self):
            self.events, self.before = [], None

        def on_after_backward(self, model):
            self.before = model[0].weight.detach().clone()
            self.events.append("after_backward")

        def on_after_step(self, model):
            assert not torch.equal(model[0].weight, self.before), "the optimiser has stepped"
            with torch.no_grad():
                model[0].weight[0].zero_()
            self.events.append("after_step")

    adapter, mask = TinyAdapter(), HardMask()
    train, _ = loaders(n_train=24)  # 3 steps per epoch
    result = Trainer(adapter.build(), adapter, train, None, epochs=2, out_dir=tmp_path, pruner=mask, **FAST).fit()
    assert mask.events == ["after_backward", "after_step"] * 6
    assert torch.count_nonzero(result.model[0].weight[0]) == 0


def test_on_after_backward_sees_unscaled_gradients_under_fp16_amp(tmp_path):
    """With a GradScaler the raw gradients are multiplied by 65536; the callback must not see that."""
    adapter = TinyAdapter()
    model = adapter.build()
    train, _ = loaders(n_train=16)
    train.sampler.set_epoch(0)
    images, labels = next(iter(train))
    ref = copy.deepcopy(model)
    adapter.loss(ref(images), labels)[0].backward()
    ref_norm = torch.cat([p.grad.flatten() for p in ref.parameters()]).norm().item()
    norms = []

    class Probe:
        def on_after_backward(self, model):
            norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())

    trainer = Trainer(
        model, adapter, train, None, epochs=1, out_dir=tmp_path, pruner=Probe(), amp=True, amp_dtype="fp16", **FAST
    )
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 1000
    trainer.fit()
    assert norms[0] == pytest.approx(ref_norm, rel=0.05)


def test_a_pruned_smaller_model_is_fine_tuned_as_given(tmp_path):
    """The Trainer never rebuilds the model: a narrower model trains and its checkpoint fits it only."""
    adapter = TinyAdapter(width=8)
    pruned = TinyAdapter(width=5).build()  # stands in for a physically pruned model
    train, val = loaders()
    Trainer(pruned, adapter, train, val, epochs=1, out_dir=tmp_path, **FAST).fit()
    assert pruned[0].weight.shape[0] == 5

    dense = adapter.build()
    with pytest.raises(
        CheckpointError,
        match=r"'0.weight' is \[5, 3, 3, 3\] in the checkpoint but \[8, 3, 3, 3\] "
        r"in the model; a checkpoint of a pruned model needs the pruned architecture",
    ):
        Trainer(dense, adapter, train, val, epochs=2, out_dir=tmp_path, **FAST).fit(resume=True)


def test_resume_of_a_finished_run_with_more_epochs_continues(tmp_path):
    adapter = TinyAdapter()
    train, val = loaders(n_train=24)
    Trainer(adapter.build(), adapter, train, val, epochs=2, out_dir=tmp_path, **FAST).fit()
    first = load_checkpoint(tmp_path / "last.pt")

    model = adapter.build()
    trainer = Trainer(model, adapter, train, val, epochs=3, out_dir=tmp_path, **FAST)
    result = trainer.fit(resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[:2] == first["history"]
    assert trainer.step == 9 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert load_checkpoint(tmp_path / "last.prev.pt")["epoch"] == 2
    # the cosine now spans 3 epochs: it ends at min_lr_ratio * lr
    assert result.history[-1]["lr"] == pytest.approx(0.05 * 0.01)

    again = Trainer(adapter.build(), adapter, train, val, epochs=3, out_dir=tmp_path, **FAST)
    assert again.fit(resume=True).history == result.history  # nothing left to do


def test_a_new_run_refuses_to_overwrite_and_resume_needs_a_checkpoint(tmp_path):
    adapter = TinyAdapter()
    train, val = loaders(n_train=16)
    with pytest.raises(CheckpointError, match=r"last.pt: no checkpoint to resume from \(start without --resume\)"):
        Trainer(adapter.build(), adapter, train, val, epochs=1, out_dir=tmp_path, **FAST).fit(resume=True)
    Trainer(adapter.build(), adapter, train, val, epochs=1, out_dir=tmp_path, **FAST).fit()
    with pytest.raises(DetpruneError, match=r"already holds a run .*last.pt\); pass --resume to continue it"):
        Trainer(adapter.build(), adapter, train, val, epochs=1, out_dir=tmp_path, **FAST).fit()


def test_ema_is_what_gets_evaluated_and_saved_as_best(tmp_path):
    adapter = TinyAdapter()
    model = adapter.build()
    train, val = loaders()
    seen = []

    def evaluate_fn(evaluated, loader):  # improves every epoch, so best.pt is the last epoch's
        seen.append(evaluated)
        return {"top1": float(len(seen))}

    trainer = Trainer(
        model, adapter, train, val, epochs=2, out_dir=tmp_path, ema=True, ema_tau=5, evaluate_fn=evaluate_fn, **FAST
    )
    result = trainer.fit()
    assert result.model is trainer.ema.module and result.model is not model
    assert seen == [trainer.ema.module] * 2  # the average is what gets evaluated
    assert trainer.ema.updates == trainer.step == 12
    w_ema, w = result.model[0].weight, model[0].weight
    assert not torch.equal(w_ema, w)
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    assert result.best_epoch == 2 and torch.equal(best["0.weight"], w_ema)
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["ema"]["module"]["0.weight"], w_ema)


def test_a_diverging_loss_stops_with_a_clear_error(tmp_path):
    adapter = TinyAdapter()
    train, _ = loaders(n_train=16)

    class Blowup:
        def loss_term(self, model, outputs, batch):
            return torch.tensor(float("nan"))

    with pytest.raises(
        TrainingDivergedError,
        match=r"loss is not finite at epoch 1, step 2 \(lr .*\); lower the "
        r"learning rate or set a gradient clip",
    ):
        Trainer(adapter.build(), adapter, train, None, epochs=1, out_dir=tmp_path, pruner=Blowup(), **FAST).fit()


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_optimizers_clipping_and_channels_last_train(tmp_path, opt):
    adapter = TinyAdapter()
    model = adapter.build()
    train, val = loaders()
    result = Trainer(
        model,
        adapter,
        train,
        val,
        epochs=1,
        out_dir=tmp_path,
        optimizer=opt,
        clip_grad_norm=1.0,
        channels_last=True,
        **{**FAST, "lr": 0.01 if opt == "adamw" else 0.05},
    ).fit()
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_bad_options_are_clear_errors(tmp_path):
    adapter = TinyAdapter()
    train, _ = loaders(n_train=16)
    with pytest.raises(DetpruneError, match=r"unknown optimizer 'adam'; choose one of: sgd, adamw"):
        Trainer(adapter.build(), adapter, train, epochs=1, out_dir=tmp_path, optimizer="adam", **FAST)
    with pytest.raises(DetpruneError, match=r"epochs must be at least 1, got 0"):
        Trainer(adapter.build(), adapter, train, epochs=0, out_dir=tmp_path, **FAST)
    empty = make_loader(colour_dataset(4, 0), 8, train=True)  # fewer samples than a batch: kept, not dropped
    assert len(empty) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_amp_on_cuda_trains_saves_and_resumes(tmp_path, dtype):
    adapter = TinyAdapter()
    train, val = loaders(n_train=96)
    opts = dict(
        lr=0.05,
        warmup_epochs=0.5,
        progress=False,
        device="cuda",
        amp=True,
        amp_dtype=dtype,
        channels_last=True,
        ema=True,
        ema_tau=20,
    )
    trainer = Trainer(adapter.build(), adapter, train, val, epochs=3, out_dir=tmp_path, **opts)
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert trainer.scaler.is_enabled() == (dtype == "fp16")  # bf16 needs no loss scaling
    result = trainer.fit()
    assert result.best > 0.5 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    state = load_checkpoint(tmp_path / "last.pt")
    assert bool(state["scaler"]) == (dtype == "fp16") and len(state["rng"][0]["cuda"]) >= 1
    again = Trainer(adapter.build(), adapter, train, val, epochs=4, out_dir=tmp_path, **opts)
    assert [r["epoch"] for r in again.fit(resume=True).history] == [1, 2, 3, 4]
