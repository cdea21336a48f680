"""A run killed after epoch k and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from detprune.training.checkpoint import load_checkpoint

SCRIPT = Path(__file__).with_name("test_train_support.py")
ARGS = ["--epochs", "4", "--step-sleep", "0.03"]  # 12 steps per epoch: ~0.4 s each, a kill lands mid-epoch


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def kill_after_epoch(k: int, *args: str, timeout: float = 240) -> None:
    """Start training, SIGKILL it as soon as it reports epoch ``k`` saved (it is then inside epoch k+1)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline, seen = time.monotonic() + timeout, []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if line.startswith(f"epoch {k}/") and "saved" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            raise AssertionError(f"the run ended before epoch {k} was saved:\n{''.join(seen)}")
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    run("--out", str(tmp_path / "straight"), "--weights", str(tmp_path / "straight.pt"), *ARGS)

    killed = tmp_path / "killed"
    kill_after_epoch(2, "--out", str(killed), *ARGS)
    state = load_checkpoint(killed / "last.pt")
    assert state["epoch"] == 2 and len(state["history"]) == 2  # nothing of the half-done epoch 3
    assert state["pruner"]["calls"] == 24  # the pruner's own state is checkpointed too

    out = run("--out", str(killed), "--resume", "--weights", str(tmp_path / "resumed.pt"), *ARGS)
    epochs_run = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("epoch ")]
    assert "at epoch 2/4" in out.stdout and epochs_run == ["3/4", "4/4"]

    a = torch.load(tmp_path / "straight.pt.rank0", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt.rank0", weights_only=True)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert a["best"] == b["best"]
    final = load_checkpoint(killed / "last.pt")
    assert [r["epoch"] for r in final["history"]] == [1, 2, 3, 4]
    assert final["pruner"]["calls"] == 48
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("img_per_s", "epoch_s")} for r in h]  # noqa: E731
    assert strip(final["history"]) == strip(straight["history"])
