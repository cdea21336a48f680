"""Built-in criteria ``apoz`` (Hu et al. 2016, zeros counted where consumers read a channel) and
``random`` (seeded per group): registered through the entry point, exact against a direct count,
dead channels are the ones pruned, flatten -> Linear consumers, errors and the prepare/reset lifecycle."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import detprune
from detprune.errors import DetpruneError
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune.plugin.protocols import Criterion, score_groups
from detprune_plugins.criteria.data import APoZ, RandomCriterion
from zoo import SimpleCNN

DEAD1, DEAD2 = [2, 5], [1, 6]


class DeadNet(nn.Module):
    """conv-BN-ReLU x2 -> global average pool -> Linear; channels DEAD1 / DEAD2 always 0 after ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.bn1.bias[DEAD1] = -1e4
            self.bn2.bias[DEAD2] = -1e4

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _images(n: int = 12, s: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(1))


def _loader(images: torch.Tensor, batch: int = 4):
    return [(images[i : i + batch], torch.zeros(len(images[i : i + batch]))) for i in range(0, len(images), batch)]


def _group(graph, producer: str):
    return next(g for g in graph.groups if g.modules("out") == [producer])


def _zero_fraction(model: nn.Module, consumer: str, images: torch.Tensor) -> torch.Tensor:
    """Direct count: fraction of exact zeros per input position of ``consumer`` (dim 1, or a Linear's last)."""
    seen = []
    handle = model.get_submodule(consumer).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model.eval()(images)
    handle.remove()
    x = seen[0]
    return (x == 0).double().mean(0) if x.dim() == 2 else (x == 0).double().mean((0, 2, 3))


# ---- registration -----------------------------------------------------------------------------------
def test_criteria_are_registered_subclasses_with_one_line_descriptions():
    entries = {e.name: e for e in detprune.plugins().entries("criterion")}
    for name, cls in (("apoz", APoZ), ("random", RandomCriterion)):
        assert entries[name].plugin.dist == "detprune" and entries[name].plugin.name == "data-criteria"
        assert issubclass(cls, Criterion) and len(cls.__doc__.strip().splitlines()) == 1
        assert isinstance(detprune.plugins().criterion(name), cls)
    assert entries["apoz"].description.startswith("1 - Average Percentage of Zeros")


def test_bad_options_fail_at_construction():
    with pytest.raises(DetpruneError, match="apoz option 'images' must be an integer >= 1, got 0"):
        APoZ(images=0)
    with pytest.raises(DetpruneError, match="apoz option 'progress' must be true or false"):
        APoZ(progress="maybe")
    with pytest.raises(DetpruneError, match="random option 'seed' must be an integer, got 'x'"):
        RandomCriterion(seed="x")


# ---- random -----------------------------------------------------------------------------------------
def test_random_scores_are_seeded_per_group():
    model, x = SimpleCNN().eval(), torch.randn(2, 3, 16, 16)
    graph = trace(model, (x,))
    g0, g1 = graph.prunable_groups()[:2]
    a, b, c = RandomCriterion(seed=3), RandomCriterion(seed=3), RandomCriterion(seed=4)
    s = a.score(model, g0, PruneContext())
    assert s.shape == (g0.size,) and s.dtype == torch.float32 and ((s >= 0) & (s < 1)).all()
    assert torch.equal(s, a.score(model, g0, PruneContext()))  # the same group, again
    assert torch.equal(s, b.score(model, g0, PruneContext()))  # the same seed
    assert not torch.equal(s, c.score(model, g0, PruneContext()))  # another seed
    assert not torch.equal(s[:4], a.score(model, g1, PruneContext())[:4])  # another group
    # default seed: ctx.seed
    assert torch.equal(RandomCriterion().score(model, g0, PruneContext(seed=3)), s)
    assert not torch.equal(RandomCriterion().score(model, g0, PruneContext(seed=5)), s)


def test_random_prunes_a_model_reproducibly():
    model, x = SimpleCNN().eval(), torch.randn(2, 3, 16, 16)
    r1 = detprune.prune(model, x, ratio=0.5, criterion="random")
    r2 = detprune.prune(model, x, ratio=0.5, criterion="random")
    assert r1.params_after < r1.params_before
    assert {k: v.tolist() for k, v in r1.plan.kept.items()} == {k: v.tolist() for k, v in r2.plan.kept.items()}
    assert r1.model(x).shape == (2, 5)
    r3 = detprune.prune(model, x, ratio=0.5, criterion=RandomCriterion(seed=11))
    assert {k: v.tolist() for k, v in r3.plan.kept.items()} != {k: v.tolist() for k, v in r1.plan.kept.items()}


# ---- apoz -------------------------------------------------------------------------------------------
def test_apoz_scores_are_one_minus_the_zero_fraction_at_the_consumer():
    torch.manual_seed(0)
    model, images = DeadNet().eval(), _images()
    graph = trace(model, (images[:2],))
    ctx = PruneContext(train_loader=_loader(images), progress=False)
    scores = score_groups(APoZ(), model, graph, ctx)
    s1, s2 = scores[_group(graph, "conv1").id], scores[_group(graph, "conv2").id]
    assert s1.dtype == torch.float32 and s1.shape == (8,)
    assert torch.allclose(s1.double(), 1 - _zero_fraction(model, "conv2", images), atol=1e-6)
    assert (s1[DEAD1] == 0).all() and (s1[[c for c in range(8) if c not in DEAD1]] > 0).all()
    assert (s2[DEAD2] == 0).all() and (s2[[c for c in range(8) if c not in DEAD2]] > 0).all()


def test_apoz_prunes_the_dead_channels():
    torch.manual_seed(0)
    model, images = DeadNet().eval(), _images()
    ctx = PruneContext(train_loader=_loader(images), progress=False)
    result = detprune.prune(model, images[:2], ratio=0.25, criterion="apoz", ctx=ctx)
    removed = {
        g.modules("out")[0]: sorted(set(range(g.size)) - set(result.plan.kept[g.id].tolist()))
        for g in result.graph.prunable_groups()
    }
    assert removed == {"conv1": DEAD1, "conv2": DEAD2}
    with torch.no_grad():  # dead channels contribute nothing: the pruned model computes the same
        assert torch.allclose(result.model(images), model(images), atol=1e-5)


def test_apoz_averages_the_positions_of_a_flatten_linear_consumer():
    model = detprune.plugins().adapter("vgg16-cifar", width=0.125, img_size=64).build().eval()
    last_bn = [m for m in model.features if isinstance(m, nn.BatchNorm2d)][-1]
    with torch.no_grad():
        last_bn.bias[[0, 3]] = -1e4
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    graph = trace(model, (images[:1],))
    g = next(g for g in graph.prunable_groups() if any(s.module == "classifier" for s in g.consumers))
    (slot,) = g.consumers
    assert len(slot.index) == 4 * g.size  # each channel at 2x2 flattened positions
    crit = APoZ(images=5)
    crit.prepare(model, graph, PruneContext(train_loader=_loader(images, 4), progress=False))
    s = crit.score(model, g, PruneContext())
    per_pos = _zero_fraction(model, "classifier", images[:5])  # only the first 5 images count
    expected = torch.zeros(g.size, dtype=torch.float64).index_add_(0, slot.channel, per_pos[slot.index]) / 4
    assert torch.allclose(s.double(), 1 - expected, atol=1e-6)
    assert (s[[0, 3]] == 0).all() and ((s > 0) & (s < 1)).any()  # dead channels, and partial ones


def test_apoz_takes_the_mean_over_several_consumers():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1), nn.Linear(4 * 2 * 2, 2)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.a(y).mean((1, 2, 3)) + self.b(torch.nn.functional.max_pool2d(y, 2).flatten(1)).sum(1)

    model, images = TwoHeads().eval(), _images(8, 4)
    graph = trace(model, (images[:2],))
    g = _group(graph, "conv")
    assert sorted(s.module for s in g.consumers) == ["a", "b"]
    s = APoZ().score(model, g, PruneContext(train_loader=_loader(images), graph=graph, progress=False))
    za = _zero_fraction(model, "a", images)
    zb = _zero_fraction(model, "b", images).reshape(4, 4).mean(1)  # flatten: channel c at 4c..4c+3
    assert torch.allclose(s.double(), 1 - (za + zb) / 2, atol=1e-6)


def test_apoz_reads_tuple_dict_and_tensor_batches_on_a_seeded_shuffled_loader():
    model, images = DeadNet().eval(), _images()
    graph = trace(model, (images[:2],))
    g = _group(graph, "conv1")
    tensors = [images[i : i + 4] for i in range(0, 12, 4)]
    ref = APoZ().score(model, g, PruneContext(train_loader=_loader(images), graph=graph, progress=False))
    for loader in (tensors, [{"images": t, "labels": None} for t in tensors]):
        s = APoZ().score(model, g, PruneContext(train_loader=loader, graph=graph, progress=False))
        assert torch.allclose(s, ref)
    shuffled = DataLoader(TensorDataset(images, torch.zeros(12)), batch_size=4, shuffle=True)
    state, py = torch.get_rng_state(), random.getstate()
    a = APoZ(images=4).score(model, g, PruneContext(train_loader=shuffled, graph=graph, progress=False, seed=1))
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py  # restored
    b = APoZ(images=4).score(model, g, PruneContext(train_loader=shuffled, graph=graph, progress=False, seed=1))
    assert torch.equal(a, b)  # the same 4 images
    with pytest.raises(DetpruneError, match="cannot find the images in a loader batch of type str"):
        APoZ().score(model, g, PruneContext(train_loader=["x"], graph=graph, progress=False))


def test_apoz_without_a_training_loader_names_the_group():
    model, images = DeadNet().eval(), _images()
    with pytest.raises(DetpruneError, match=r"criterion 'apoz' cannot score group \d+ \(producers: conv1\).*"):
        detprune.prune(model, images[:2], ratio=0.25, criterion="apoz")
    graph = trace(model, (images[:2],))
    g = _group(graph, "conv2")
    with pytest.raises(DetpruneError, match=r"\(producers: conv2\): .*no training loader was given"):
        APoZ().score(model, g, PruneContext(graph=graph))
    empty = r"^criterion 'apoz': the training loader gave no images to count zeros on$"
    with pytest.raises(DetpruneError, match=empty):
        APoZ().score(model, g, PruneContext(train_loader=[], graph=graph, progress=False))


def test_apoz_group_without_consumer_is_an_error():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    model, images = Head().eval(), _images(4, 4)
    graph = trace(model, (images[:2],))
    g = _group(graph, "conv")
    assert not g.consumers
    with pytest.raises(DetpruneError, match=r"cannot score group \d+ \(producers: conv\): no consumer layer reads"):
        APoZ().score(model, g, PruneContext(train_loader=_loader(images), graph=graph))


def test_apoz_lifecycle_prepare_score_reset():
    model, images = DeadNet().eval(), _images()
    graph = trace(model, (images[:2],))
    ctx = PruneContext(train_loader=_loader(images), graph=graph, progress=False)
    crit = APoZ()
    assert crit.zero_fraction is None
    crit.prepare(model, graph, ctx)
    assert sorted(crit.zero_fraction) == ["conv2", "fc"]
    assert crit.zero_fraction["conv2"].shape == (8,)
    s = crit.score(model, _group(graph, "conv1"), ctx)
    crit.reset()
    assert crit.zero_fraction is None
    # used without prepare(): counts on the fly, the same numbers
    lazy = APoZ()
    assert torch.equal(lazy.score(model, _group(graph, "conv1"), ctx), s)
    assert sorted(lazy.zero_fraction) == ["conv2", "fc"]
    # statistics belong to the model as prepared: after reset a changed model is counted anew
    with torch.no_grad():
        model.bn1.bias[0] = -1e4
    lazy.reset()
    assert lazy.score(model, _group(graph, "conv1"), ctx)[0] == 0
