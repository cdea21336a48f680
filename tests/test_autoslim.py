"""AutoSlim's slimmable network: a masked width is the physically pruned model, its FLOPs are
predicted exactly, and the sandwich rule (widest on labels, narrowest and random widths distilled
from it) accumulates the right gradients into one Trainer step."""

from __future__ import annotations

import copy

import pytest
import torch
from test_train_support import TinyAdapter, colour_dataset
from torch import nn

import detprune
from detprune.eval.measure import count_flops, count_params
from detprune.graph import trace
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.autoslim.distill import centernet_distill, kl_logits, yolo_distill
from detprune_plugins.autoslim.flops import FlopModel
from detprune_plugins.autoslim.pruner import AutoSlim
from detprune_plugins.autoslim.slimmable import Slimmable, calibrate_bn
from zoo import TOYS, build

FAST = dict(lr=0.05, warmup_epochs=0.5, progress=False, device="cpu")


def _flat(out) -> torch.Tensor:
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return torch.cat([t.flatten() for t in out])
    return out.flatten()


def _masked_and_pruned(model, graph, inputs, config, batches):
    """Outputs of the masked width and of the physically pruned model, each BN-calibrated on ``batches``."""
    slim = Slimmable(model, graph).attach()
    slim.set_config(config)
    assert calibrate_bn(model, batches) == len(batches)
    with torch.no_grad():
        masked = model.eval()(*inputs)
    plan = slim.plan_of(config)
    slim.detach()
    pruned = graph.apply(model, plan)
    calibrate_bn(pruned, batches)
    with torch.no_grad():
        physical = pruned.eval()(*inputs)
    return _flat(masked), _flat(physical), pruned, slim


def _configs(slim: Slimmable, n: int = 2):
    gen = torch.Generator().manual_seed(3)
    return [slim.min_config()] + [slim.random_config(gen) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(TOYS))
def test_masked_width_equals_the_physically_pruned_model_on_every_toy(name):
    model, inputs = build(name, torch.float64)
    graph = trace(model, inputs)
    probe = Slimmable(model, graph)
    assert probe.units, "every toy has at least one slimmable group"
    batches = [torch.randn_like(inputs[0]) * 1.5 + 0.2 for _ in range(3)]
    for config in _configs(probe):
        a, b, pruned, slim = _masked_and_pruned(model, graph, inputs, config, batches)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        if config == slim.min_config():  # the narrowest width really is narrower
            assert count_params(pruned) < count_params(model)


@pytest.mark.parametrize(
    "name,args",
    [
        ("resnet56-cifar", {}),
        ("yolov3", dict(img_size=64, width=0.125)),
        ("centernet-resnet18", dict(img_size=64, width=0.25, head_conv=16)),
    ],
)
def test_masked_width_equals_pruned_model_on_real_architectures(name, args):
    adapter = detprune.plugins().adapter(name, **args)
    model = adapter.build().double()  # float64: the comparison sees pruning errors, not rounding
    inputs = tuple(t.double() for t in adapter.example_inputs(2))
    graph = trace(model, inputs, protected=adapter.protected(model))
    slim = Slimmable(model, graph)
    gen = torch.Generator().manual_seed(0)
    config = slim.random_config(gen)
    batches = [torch.rand_like(inputs[0]) for _ in range(2)]
    a, b, pruned, _ = _masked_and_pruned(model, graph, inputs, config, batches)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert FlopModel(model, graph, inputs)(slim.keep_raw(config)) == count_flops(pruned, inputs)


def test_resnet56_trunk_keeps_its_zero_padded_channels():
    adapter = detprune.plugins().adapter("resnet56-cifar")
    model = adapter.build()
    graph = trace(model, adapter.example_inputs(1), protected=adapter.protected(model))
    slim = Slimmable(model, graph)
    trunk = next(g for g in graph.prunable_groups() if g.fixed.any())
    assert trunk.id in slim.units and slim.levels[trunk.id] == [2, 4, 5, 7, 8, 10, 12, 13, 15, 16]  # 16 free
    kept = slim.kept(slim.min_config())[trunk.id]
    fixed = torch.nonzero(trunk.fixed).flatten()
    assert set(fixed.tolist()) <= set(kept.tolist()) and len(kept) == len(fixed) + 2
    inner = graph.group(2)  # layer1.0.conv1: 16 channels in 10 bins -> ceil(16 i / 10)
    assert slim.kept({inner.id: 3})[inner.id].tolist() == [0, 1, 2, 3, 4]  # the first channels


@pytest.mark.parametrize("name", ["simple_cnn", "inception", "mobile_se", "dense_cat", "pad_shortcut"])
def test_flop_model_is_exact(name):
    model, inputs = build(name, torch.float32)
    graph = trace(model, inputs)
    slim, flops = Slimmable(model, graph), FlopModel(model, graph, inputs)
    assert flops.dense == count_flops(model, inputs)
    for config in _configs(slim, 3):
        assert flops(slim.keep_raw(config)) == count_flops(graph.apply(model, slim.plan_of(config)), inputs)


def test_calibration_must_run_bn_in_training_mode():
    """§5.2 pitfall: statistics gathered in eval mode never change (the ~0-accuracy bug)."""
    model, inputs = build("simple_cnn", torch.float32)
    bn = model.features[0][1]
    before = bn.running_mean.clone()
    calibrate_bn(model, [torch.randn(4, 3, 16, 16) + 3.0])
    assert not torch.allclose(bn.running_mean, before)
    assert bn.momentum == 0.1 and not bn.training  # restored
    with torch.no_grad():  # cumulative average over two batches = mean of the two batch means
        x1, x2 = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16) + 1
        calibrate_bn(model, [x1, x2])
        conv = model.features[0][0]
        expect = (conv(x1).mean((0, 2, 3)) + conv(x2).mean((0, 2, 3))) / 2
    torch.testing.assert_close(bn.running_mean, expect, atol=1e-5, rtol=1e-5)


# ---- in-place distillation ----------------------------------------------------------------------


def _grad_at_teacher(loss_fn, teacher):
    student = [t.clone().requires_grad_(True) for t in teacher]
    loss_fn(student, teacher).backward()
    return [s.grad for s in student]


def test_distillation_losses_are_stationary_at_the_teacher():
    torch.manual_seed(0)
    logits = torch.randn(4, 7)
    (g,) = _grad_at_teacher(lambda s, t: kl_logits(s[0], t[0]), [logits])
    assert g.abs().max() < 1e-7 and float(kl_logits(logits, logits)) == pytest.approx(0, abs=1e-7)
    yolo = [torch.randn(2, 3 * 8, s, s) for s in (2, 4, 8)]  # nc = 3
    for grad in _grad_at_teacher(lambda s, t: yolo_distill(s, t, 3), yolo):
        assert grad.abs().max() < 1e-7
    cn = [torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)]
    for grad in _grad_at_teacher(centernet_distill, cn):
        assert grad.abs().max() < 1e-7


def test_yolo_distillation_regresses_boxes_only_where_the_teacher_sees_an_object():
    teacher = [torch.randn(1, 3 * 7, 4, 4)]  # nc = 2
    student = [torch.randn(1, 3 * 7, 4, 4, requires_grad=True)]
    yolo_distill(student, teacher, 2).backward()
    g = student[0].grad.view(1, 3, 7, 4, 4)
    obj = teacher[0].view(1, 3, 7, 4, 4)[:, :, 4] > 0
    assert (g[:, :, :4].abs().sum(2)[~obj] == 0).all() and (g[:, :, :4].abs().sum(2)[obj] > 0).all()
    assert (g[:, :, 4:] != 0).all()  # objectness and classes everywhere


# ---- the sandwich rule ------------------------------------------------------------------------------


def test_sandwich_step_accumulates_widest_label_loss_and_distilled_narrow_widths():
    adapter = TinyAdapter(width=8)
    model = adapter.build()
    reference = copy.deepcopy(model)
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    pruner = AutoSlim(num_random=2)
    seen, calls = [], []

    def forward(x):
        seen.append(dict(pruner.slim.config))
        return model(x)

    loss, parts = pruner.train_step(
        model, (images, labels), adapter, forward, lambda total: (calls.append(1), total.backward())
    )
    slim = pruner.slim
    assert len(seen) == 4 and len(calls) == 4 and pruner.steps == 1
    assert seen[0] == slim.max_config() and seen[1] == slim.min_config()
    assert all(len(c) == len(slim.units) for c in seen[2:]) and seen[2] != seen[3]
    assert not slim._handles and set(parts) == {"max", "kd"}  # hooks removed after the step

    # BN running statistics are those of the widest width alone (narrow widths are calibrated later)
    widest = copy.deepcopy(reference).train()
    with torch.no_grad():
        widest(images)
    for (name, b), w in zip(model.named_buffers(), widest.buffers()):
        torch.testing.assert_close(b, w, msg=name)

    # the same gradients by hand: CE at full width + KL(width || detached full width) for each other width
    ref_slim = Slimmable(reference, trace(reference, adapter.example_inputs(1), protected=["8"])).attach()
    teacher = reference(images)
    total = nn.functional.cross_entropy(teacher, labels)
    for cfg in seen[1:]:
        ref_slim.set_config(cfg)
        total = total + kl_logits(reference(images), teacher.detach())
    total.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert float(loss) == pytest.approx(float(total.detach()), rel=1e-5)


class TwoHalves:
    """A ``train_step`` pruner that does the default step as two half-loss forward/backward passes."""

    def __init__(self):
        self.calls = 0

    def train_step(self, model, batch, adapter, forward, backward):
        assert not isinstance(model, nn.parallel.DistributedDataParallel)
        images, labels = batch
        total = 0.0
        for half in (slice(None), slice(None)):
            loss, _ = adapter.loss(forward(images[half]), labels[half])
            backward(loss / 2)
            total = total + loss.detach() / 2
        self.calls += 1
        return total, {"ce": float(total)}


def test_trainer_train_step_replaces_forward_loss_backward_and_steps_once(tmp_path):
    adapter = TinyAdapter()
    runs = {}
    for name, pruner in (("default", None), ("halves", TwoHalves())):
        torch.manual_seed(0)
        model = adapter.build()
        train = make_loader(colour_dataset(32, 1), 8, train=True, seed=0)
        result = Trainer(model, adapter, train, None, epochs=2, out_dir=tmp_path / name, pruner=pruner, **FAST).fit()
        runs[name] = (dict(model.named_parameters()), result.history)
        if pruner is not None:
            assert pruner.calls == 8  # one call per batch, 4 batches x 2 epochs
    (a, ha), (b, hb) = runs["default"], runs["halves"]
    assert [r["step"] for r in ha] == [r["step"] for r in hb] == [4, 8]  # one optimiser step per batch
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    assert ha[-1]["train_loss"] == pytest.approx(hb[-1]["train_loss"], rel=1e-4)


def test_slimmable_training_in_the_trainer_lowers_the_loss_at_every_width(tmp_path):
    adapter = TinyAdapter(width=8)
    torch.manual_seed(0)
    model = adapter.build()
    train = make_loader(colour_dataset(96, 1), 16, train=True, seed=0)
    val = make_loader(colour_dataset(48, 2), 48, train=False)
    pruner = AutoSlim(min_level=3)
    result = Trainer(model, adapter, train, val, epochs=5, out_dir=tmp_path, pruner=pruner, **FAST).fit()
    rows = result.history
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert rows[-1]["max"] < 0.8 * rows[0]["max"]  # the widest width learns the labels ...
    assert rows[-1]["kd"] < 0.2 * rows[-1]["max"]  # ... and the narrower widths follow it
    assert pruner.steps == 5 * 6 and pruner.state_dict() == {"steps": 30}
    assert not pruner.slim._handles  # the trained model is hook-free
    images, labels = next(iter(val))
    slim = pruner.slim.attach()
    slim.set_config(slim.min_config())
    slim.calibrate([b[0] for b in train])
    with torch.no_grad():
        top1 = float((model.eval()(images).argmax(1) == labels).float().mean())
    slim.detach()
    assert top1 > 0.5  # the narrowest width learned too (chance is 1/3)


@pytest.mark.parametrize(
    "name,args",
    [
        ("yolov3", dict(num_classes=3, img_size=64, width=0.0625, depth=0.34)),
        ("centernet-resnet18", dict(num_classes=3, img_size=64, width=0.125, head_conv=8)),
    ],
)
def test_detector_sandwich_step_distills_its_head_outputs(name, args, caplog):
    adapter = detprune.plugins().adapter(name, **args)
    model = adapter.build()
    images = torch.rand(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 10.0, 50.0, 30.0], [2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([0, 2])},
    ]
    pruner = AutoSlim()
    with caplog.at_level("WARNING", logger="detprune.autoslim"):
        loss, parts = pruner.train_step(
            model, (images, targets, [{}, {}]), adapter, model, lambda total: total.backward()
        )
    assert "MSE" not in caplog.text  # the detector's own distillation, not the fallback
    assert torch.isfinite(loss) and parts["kd"] > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
