"""Training throughput of the Trainer: images/s for YOLOv3 at 608 and VGG-16 on CIFAR, fp32 vs AMP,
and model FLOPs utilisation (MFU) on a GPU.

Each row times ``Trainer.train_epoch`` (the real step: forward, adapter loss, backward, optimiser,
scheduler) over one pre-built batch repeated, after a warm-up epoch, so data loading is excluded.
The fp32 and AMP trainers are timed alternately and the best of ``--repeats`` is kept, so the
ratio compares the modes side by side even on a machine shared with other work.

MFU = (images/s x training FLOPs per image) / peak FLOP/s, where the training FLOPs are 3x the
forward FLOPs counted by ``torch.utils.flop_counter`` (backward = 2x forward), and the peak is
*measured* on this device with large matmuls in the same precision (so it is an achievable peak,
not the datasheet's).

On a machine without CUDA the full configurations take minutes per step, so a reduced
configuration runs instead (say so when quoting it): YOLOv3 at width 0.25 / depth 0.34 / 256 px,
VGG-16 at width 0.5, smaller batches, bf16 autocast as the "AMP" mode, and no MFU.

    detprune bench train-throughput            # full on CUDA, reduced on CPU
    detprune bench train-throughput --reduced --steps 5 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import detprune
from detprune.training.trainer import Trainer


def configs(reduced: bool, on_gpu: bool) -> list[dict]:
    if reduced:
        return [
            dict(
                label="yolov3 256 w0.25 d0.34",
                adapter="yolov3",
                args=dict(img_size=256, width=0.25, depth=0.34),
                batch=4,
            ),
            dict(label="vgg16-cifar 32 w0.5", adapter="vgg16-cifar", args=dict(width=0.5), batch=32),
        ]
    return [
        dict(label="yolov3 608", adapter="yolov3", args=dict(img_size=608), batch=16 if on_gpu else 2),
        dict(label="vgg16-cifar 32", adapter="vgg16-cifar", args=dict(), batch=128 if on_gpu else 32),
    ]


def fake_batch(adapter, batch: int):
    """One batch in the adapter's format: random images; a few random boxes per image for detectors."""
    g = torch.Generator().manual_seed(0)
    size = adapter.args.get("img_size", 32)
    images = torch.rand(batch, 3, size, size, generator=g)
    if adapter.task == "classification":
        return images, torch.randint(0, adapter.args.get("num_classes", 10), (batch,), generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(20, 2, generator=g) * size * 0.8
        wh = 8 + torch.rand(20, 2, generator=g) * size * 0.15
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1).clamp(max=size - 1),
                "labels": torch.randint(0, adapter.args.get("num_classes", 10), (20,), generator=g),
            }
        )
    metas = [{"image_id": i, "orig_size": (size, size), "scale": 1.0, "pad": (0, 0)} for i in range(batch)]
    return images, targets, metas


def train_flops_per_image(model, images: torch.Tensor) -> float:
    """3 x forward FLOPs (forward + backward w.r.t. inputs and weights), per image."""
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images[:1])
    model.train(was)
    return 3.0 * counter.get_total_flops()


def measured_peak(device: torch.device, dtype: torch.dtype, n: int = 8192, reps: int = 20) -> float:
    """Best FLOP/s of an n x n matmul in ``dtype`` (TF32 allowed for fp32, as the Trainer allows it)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    best = 0.0
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 / (start.elapsed_time(end) / 1e3))
    return best


def make_trainer(cfg: dict, amp: bool, steps: int, device: torch.device, channels_last: bool, out: str) -> Trainer:
    adapter = detprune.plugins().adapter(cfg["adapter"], **cfg["args"])
    torch.manual_seed(0)
    batch = fake_batch(adapter, cfg["batch"])
    return Trainer(
        adapter.build(),
        adapter,
        [batch] * steps,
        epochs=1,
        out_dir=out,
        amp=amp,
        channels_last=channels_last,
        progress=False,
        device=str(device),
        lr=1e-4,
        warmup_epochs=0,
    )


def images_per_s(trainer: Trainer, batch: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    trainer.train_epoch(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return trainer.steps_per_epoch * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="detprune bench train-throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--reduced", action="store_true", help="small configuration (default when there is no CUDA)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per mode, interleaved; the best is kept")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    reduced = args.reduced or not on_gpu
    torch.manual_seed(0)
    print(
        f"device: {torch.cuda.get_device_name(device) if on_gpu else 'cpu'} ({torch.get_num_threads()} threads); "
        f"configuration: {'REDUCED (see module docstring)' if reduced else 'full'}; best of {args.repeats} x "
        f"{args.steps} steps per row"
    )
    peaks: dict[torch.dtype, float] = {}
    head = f"{'model':<26} {'batch':>5} {'mode':<16} {'img/s':>9} {'vs fp32':>8} {'GFLOP/img':>10}"
    print(head + (f" {'TFLOP/s':>8} {'peak':>8} {'MFU':>6}" if on_gpu else ""))
    for cfg in configs(reduced, on_gpu):
        with tempfile.TemporaryDirectory() as out:
            modes = {amp: make_trainer(cfg, amp, args.steps, device, on_gpu and amp, out) for amp in (False, True)}
            for trainer in modes.values():  # warm-up: kernel selection, allocator, first-call costs
                trainer.train_epoch(0)
            best = {amp: 0.0 for amp in modes}
            for _ in range(args.repeats):  # interleaved, so load on a shared machine hits both modes
                for amp, trainer in modes.items():
                    best[amp] = max(best[amp], images_per_s(trainer, cfg["batch"], device))
        for amp, trainer in modes.items():
            images = trainer.train_loader[0][0].to(device)  # type: ignore[index]
            flops = train_flops_per_image(trainer.model, images)
            dtype = trainer.amp_dtype or torch.float32
            mode = ("amp " + {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] if amp else "fp32") + (
                " +NHWC" if on_gpu and amp else ""
            )
            line = (
                f"{cfg['label']:<26} {cfg['batch']:>5} {mode:<16} {best[amp]:>9.1f} {best[amp] / best[False]:>7.2f}x "
                f"{flops / 1e9:>10.2f}"
            )
            if on_gpu:
                if dtype not in peaks:
                    peaks[dtype] = measured_peak(device, dtype)
                achieved = best[amp] * flops
                line += f" {achieved / 1e12:>8.1f} {peaks[dtype] / 1e12:>8.1f} {achieved / peaks[dtype]:>6.1%}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
