"""Checkpoints: atomic writes, the kept previous copy, RNG round trips, clear errors on damage."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from test_train_support import TinyAdapter, colour_dataset
from torch import nn

from detprune.training import checkpoint as ck
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer


def payload(value: float) -> dict:
    return {
        "format": ck.FORMAT,
        "version": ck.VERSION,
        "kind": "last",
        "w": torch.full((4,), value),
        "epoch": int(value),
    }


def test_save_is_weights_only_loadable_and_keeps_the_previous(tmp_path):
    last = tmp_path / "run" / "last.pt"
    ck.save_atomic(payload(1), last, keep_previous=True)
    assert not ck.previous_path(last).exists()
    ck.save_atomic(payload(2), last, keep_previous=True)
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert ck.load_checkpoint(ck.previous_path(last))["epoch"] == 1
    assert ck.previous_path(last).name == "last.prev.pt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.prev.pt", "last.pt"]  # no temp file left


def test_a_crash_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    last = tmp_path / "last.pt"
    ck.save_atomic(payload(1), last, keep_previous=True)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ck.save_atomic(payload(2), last, keep_previous=True)
    monkeypatch.undo()
    assert ck.load_checkpoint(last)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_truncated_checkpoint_is_a_clear_error_and_the_previous_is_intact(tmp_path):
    last = tmp_path / "last.pt"
    ck.save_atomic(payload(1), last, keep_previous=True)
    ck.save_atomic(payload(2), last, keep_previous=True)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])

    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint(last)
    msg = str(err.value)
    assert msg.startswith(f"{last}: checkpoint is truncated or corrupt (")
    assert msg.endswith(
        f"; the previous checkpoint {tmp_path / 'last.prev.pt'} is intact: "
        f"resume from it with --resume {tmp_path / 'last.prev.pt'}"
    )
    assert ck.load_checkpoint(tmp_path / "last.prev.pt")["epoch"] == 1

    # saving over a damaged last.pt must not push the good previous copy out
    ck.save_atomic(payload(3), last, keep_previous=True)
    assert ck.load_checkpoint(tmp_path / "last.prev.pt")["epoch"] == 1
    assert ck.load_checkpoint(last)["epoch"] == 3


def test_a_truncated_last_pt_stops_resume_with_one_line_from_the_cli(tmp_path):
    """The Trainer's resume raises the same error; the CLI prints it as one line."""
    adapter = TinyAdapter()
    train = make_loader(colour_dataset(16, 1), 8, train=True)
    Trainer(adapter.build(), adapter, train, epochs=2, out_dir=tmp_path, progress=False, device="cpu").fit()
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[:1000])
    with pytest.raises(
        ck.CheckpointError,
        match=r"last.pt: checkpoint is truncated or corrupt .* the previous "
        r"checkpoint .*last.prev.pt is intact",
    ):
        Trainer(adapter.build(), adapter, train, epochs=3, out_dir=tmp_path, progress=False, device="cpu").fit(
            resume=True
        )
    trainer = Trainer(adapter.build(), adapter, train, epochs=3, out_dir=tmp_path, progress=False, device="cpu")
    trainer.load(tmp_path / "last.prev.pt")
    assert trainer.epoch == 1


def test_objects_that_need_unpickling_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "module": nn.Linear(2, 2)}, path)
    with pytest.raises(ck.CheckpointError, match=r"evil.pt: holds Python objects that a weights-only load refuses"):
        ck.load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(
        ck.CheckpointError, match=r"other.pt: not a detprune training checkpoint \(found \['state_dict'\]\)"
    ):
        ck.load_checkpoint(other)
    with pytest.raises(ck.CheckpointError, match=r"missing.pt: no such checkpoint"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.randn(), torch.randn(1)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    ck.save_atomic({"format": ck.FORMAT, "rng": ck.rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.randn(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.randn(3).tolist()) == expected


def test_model_state_mismatch_names_the_keys(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    other = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(
        ck.CheckpointError,
        match=r"x.pt: the checkpoint's weights do not fit the model: missing "
        r"\[1.weight, 1.bias, 1.running_mean, 1.running_var\] and 1 more, "
        r"unexpected none",
    ):
        ck.load_model_state(model, other.state_dict(), tmp_path / "x.pt")
