"""Two processes under torchrun with gloo on the CPU: they train in lock-step, only rank 0 writes,
and the reported top-1 is the exact top-1 of the whole validation set (not a per-rank average)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_support import TinyAdapter, colour_dataset

from detprune.training.checkpoint import load_checkpoint
from detprune.training.validate import validate

SCRIPT = Path(__file__).with_name("test_train_support.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_gloo_processes_train_and_only_rank0_writes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        "--out",
        str(tmp_path / "run"),
        "--per-rank-out",
        "--epochs",
        "2",
        "--weights",
        str(tmp_path / "final.pt"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "done rank 0" in out.stdout and "done rank 1" in out.stdout

    rank0, rank1 = tmp_path / "run" / "rank0", tmp_path / "run" / "rank1"
    assert sorted(p.name for p in rank0.iterdir()) == [
        "best.pt",
        "last.prev.pt",
        "last.pt",
        "metrics.csv",
        "metrics.png",
    ]
    assert not rank1.exists()  # rank 1 was handed its own folder and wrote nothing there

    w0 = torch.load(tmp_path / "final.pt.rank0", weights_only=True)
    w1 = torch.load(tmp_path / "final.pt.rank1", weights_only=True)
    for key in w0["model"]:  # DDP kept the replicas identical (gradients all-reduced)
        assert torch.equal(w0["model"][key], w1["model"][key]), key
    assert w0["best"] == w1["best"]  # both ranks got the same metric

    state = load_checkpoint(rank0 / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # one RNG state per rank
    # 96 training images, 2 ranks x batches of 8 -> 6 steps per epoch on each rank
    assert [r["step"] for r in state["history"]] == [6, 12]

    # the logged top-1 equals one process's top-1 over the whole validation set (30 images, split 15/15)
    adapter = TinyAdapter()
    model = adapter.build()
    model.load_state_dict(w0["ema"])
    loader = torch.utils.data.DataLoader(colour_dataset(30, 2), batch_size=8)
    expected = validate(model, adapter, loader, torch.device("cpu"))["top1"]
    with open(rank0 / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["top1"]) == pytest.approx(expected, abs=1e-6)
    assert state["history"][-1]["top1"] == pytest.approx(expected, abs=1e-12)
