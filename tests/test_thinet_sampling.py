"""ThiNet's sampler: per-input-channel contributions that sum exactly to the consumer's pre-bias
output at the sampled (image, location, filter), for every padding/stride/dilation/groups; fixed
seeds; flatten -> Linear columns; early stop; clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from detprune.graph import trace
from detprune_plugins.thinet.sampling import SamplingError, column_map, sample_consumers

LAYERS = {
    "conv-grouped-stride": (lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2), (3, 8, 11, 9)),
    "conv-dilated-reflect": (
        lambda: nn.Conv2d(8, 6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=2, padding_mode="reflect"),
        (3, 8, 10, 10),
    ),
    "conv-circular": (lambda: nn.Conv2d(8, 6, 3, padding=1, padding_mode="circular", bias=False), (3, 8, 7, 7)),
    "conv-same-even-kernel": (lambda: nn.Conv2d(8, 6, 2, padding="same"), (3, 8, 7, 7)),
    "conv-1x1-no-pad": (lambda: nn.Conv2d(8, 5, 1), (3, 8, 6, 6)),
    "deconv-grouped-outpad": (
        lambda: nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, output_padding=1, groups=2),
        (3, 8, 5, 6),
    ),
    "deconv-dilated": (lambda: nn.ConvTranspose2d(8, 6, 3, stride=3, padding=2, dilation=2), (3, 8, 5, 6)),
    "linear": (lambda: nn.Linear(8, 5), (3, 8)),
    "linear-tokens": (lambda: nn.Linear(8, 5), (3, 4, 8)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_contributions_sum_to_the_pre_bias_output(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(*shape)
    s = sample_consumers(nn.Sequential(layer), {"0": torch.arange(8)}, [(x,)], images=3, locations=40, progress=False)[
        "0"
    ]
    assert s.X.shape == (120, 8) and s.y.shape == (120,)
    assert s.y.abs().max() > 0.1  # real outputs, not zeros
    torch.testing.assert_close(s.X.sum(1), s.y, atol=1e-5, rtol=1e-5)


def test_contributions_match_a_per_channel_reference_convolution():
    """x̂_c at (o, p, q) is what the conv outputs when only channel c of the input is kept."""
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 4, 3, stride=2, padding=1, dilation=1, groups=2)
    x = torch.randn(2, 6, 9, 9)
    net = nn.Sequential(conv)
    calls = []
    net[0].register_forward_hook(lambda m, a, o: calls.append(o))
    s = sample_consumers(net, {"0": torch.arange(6)}, [(x,)], images=2, locations=25, seed=3, progress=False)["0"]
    # recover each sample's (b, o, p, q) from y and check every column against a one-channel conv
    out = calls[0] - conv.bias[None, :, None, None]
    per_channel = []
    for c in range(6):
        xc = torch.zeros_like(x)
        xc[:, c] = x[:, c]
        per_channel.append(conv(xc) - conv.bias[None, :, None, None])
    per_channel = torch.stack(per_channel, -1)  # [B, O, H', W', C]
    for row in range(s.rows):
        b = row // 25
        hit = (out[b] - s.y[row]).abs() < 1e-6
        o, p, q = [int(v[0]) for v in torch.nonzero(hit, as_tuple=True)]
        torch.testing.assert_close(s.X[row], per_channel[b, o, p, q].detach(), atol=1e-5, rtol=1e-5)
        assert (s.X[row, [c for c in range(6) if c // 3 != o // 2]] == 0).all()  # other conv groups: nothing


class ConvToLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def test_flatten_linear_columns_are_channels_with_their_hw_features_summed():
    torch.manual_seed(0)
    model = ConvToLinear().eval()
    x = torch.randn(4, 3, 8, 8)
    graph = trace(model, (x,))
    cols = column_map(graph.records["fc"].inp)
    assert cols.tolist() == [c for c in range(4) for _ in range(4)]  # 4 channels x H*W = 4 features each
    s = sample_consumers(model, {"fc": cols}, [(x,)], images=4, locations=10, progress=False)["fc"]
    assert s.X.shape == (40, 4)
    torch.testing.assert_close(s.X.sum(1), s.y, atol=1e-5, rtol=1e-5)


def test_fixed_seed_gives_identical_samples_and_leaves_global_rngs_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3))
    data = [(torch.randn(4, 3, 10, 10),) for _ in range(3)]
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    a = sample_consumers(model, {"2": torch.arange(6)}, data, images=10, locations=5, seed=7, progress=False)["2"]
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and (before[2] == after[2]).all()
    b = sample_consumers(model, {"2": torch.arange(6)}, data, images=10, locations=5, seed=7, progress=False)["2"]
    c = sample_consumers(model, {"2": torch.arange(6)}, data, images=10, locations=5, seed=8, progress=False)["2"]
    assert a.rows == 50  # 10 images (the last batch cut to 2) x 5 locations
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)


def test_a_consumer_draws_the_same_samples_whoever_else_is_sampled():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3))
    data = [(torch.randn(4, 3, 10, 10),)]
    alone = sample_consumers(model, {"2": torch.arange(6)}, data, images=4, progress=False)["2"]
    both = sample_consumers(model, {"0": torch.arange(3), "2": torch.arange(6)}, data, images=4, progress=False)["2"]
    assert torch.equal(alone.X, both.X)


def test_sampling_an_early_layer_stops_the_forward_pass_after_the_first_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    seen = []
    model[4].register_forward_hook(lambda m, a, o: seen.append(o.shape[0]))
    data = [(torch.randn(2, 3, 8, 8),) for _ in range(3)]
    s = sample_consumers(model, {"2": torch.arange(6)}, data, images=6, locations=3, progress=False)["2"]
    assert s.rows == 18
    assert seen == [2]  # the last layer ran for the first batch only


def test_modes_are_restored_and_batches_may_be_dicts():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)).train()
    data = [{"images": torch.randn(2, 3, 6, 6)}]
    s = sample_consumers(model, {"2": torch.arange(4)}, data, images=2, locations=2, progress=False)["2"]
    assert s.rows == 4 and model.training and model[1].training
    assert model[1].num_batches_tracked.item() == 0  # sampled in eval mode: BN statistics untouched


def test_clear_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv1d(4, 2, 1))
    with pytest.raises(SamplingError, match=r"^ThiNet samples activations on training images: no training loader"):
        sample_consumers(model, {"0": torch.arange(3)}, None)
    with pytest.raises(SamplingError, match=r"^cannot sample '1': consumer is a Conv1d; ThiNet samples Conv2d"):
        sample_consumers(model, {"1": torch.arange(4)}, [(torch.randn(1, 3, 5, 5),)])
    with pytest.raises(SamplingError, match=r"^ThiNet's training loader gave no images"):
        sample_consumers(model, {"0": torch.arange(3)}, [], progress=False)
    with pytest.raises(SamplingError, match=r"^consumer '0' sees 3 input channels, the graph says 5"):
        sample_consumers(model, {"0": torch.arange(5)}, [(torch.randn(1, 3, 5, 5),)], progress=False)
