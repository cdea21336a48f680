"""``detprune train``: train or fine-tune a model adapter on a dataset card, on one GPU or many."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detprune.cli._values import (
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

EPILOG = """\
examples:
  detprune train --model vgg16-cifar --data datasets/cifar10.yaml --epochs 160 --out runs/vgg
  detprune train --model yolov3 --data datasets/visdrone.yaml --epochs 100 --batch-size 16 --amp --ema --out runs/y3
  detprune train --model yolov3 --data datasets/visdrone.yaml --weights pruned.pt --epochs 30 --out runs/ft
  detprune train ... --out runs/y3 --resume                 continue a killed run, or a finished one to more --epochs
  torchrun --nproc_per_node 4 -m detprune.cli train ...     DDP: NCCL on GPUs, gloo on CPUs; --batch-size is per process
  torchrun --nproc_per_node 4 --no-python detprune train ...  the same through the console script

The run folder holds last.pt (and last.prev.pt, the one before), best.pt (best validation metric:
mAP@0.5 or top-1), metrics.csv (one row per epoch) and metrics.png. A pruned model is fine-tuned by
passing its recipe file as --weights; --resume rebuilds it from the same file.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model (AMP, EMA, DDP, resumable)",
        description="Train a model adapter on a dataset: SGD or AdamW, linear warm-up and cosine "
        "decay, optional AMP/EMA/channels_last/gradient clipping, evaluation with the task's metric "
        "every --eval-every epochs, atomic resumable checkpoints.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model adapter name (see `detprune plugins --kind adapter`)")
    p.add_argument("--data", required=True, help="dataset card (.yaml) or dataset folder")
    p.add_argument("--epochs", type=positive_int, required=True, help="total epochs (a resumed run trains up to this)")
    p.add_argument("--out", required=True, help="run folder (created; refuses an existing run unless --resume)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CKPT",
        help="continue OUT/last.pt, or the checkpoint given (e.g. OUT/last.prev.pt)",
    )
    p.add_argument(
        "--weights",
        help="start from these weights: a pruned recipe, a trainer checkpoint or a state_dict "
        "(the build arguments a recipe or checkpoint records are used)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per step and process (default 16)")
    p.add_argument("--img-size", type=positive_int, help="network input size (default: the card's, else 608 / 32)")
    p.add_argument("--width", type=positive_float, help="channel width multiplier of the dense model")
    p.add_argument(
        "--depth", type=positive_float, help="depth multiplier (residual blocks per stage) of the dense model"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available); under torchrun cuda:LOCAL_RANK")
    p.add_argument(
        "--workers", type=nonnegative_int, default=4, help="DataLoader worker processes per rank (default 4)"
    )
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default 0.01 for sgd, 0.001 for adamw)")
    p.add_argument("--weight-decay", type=nonnegative_float, help="default 5e-4 for sgd, 0.01 for adamw")
    p.add_argument("--momentum", type=nonnegative_float, default=0.9)
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=1.0, help="linear warm-up length (default 1)")
    p.add_argument(
        "--amp", action="store_true", help="mixed precision (bf16 where supported, else fp16 + loss scaling)"
    )
    p.add_argument("--ema", action="store_true", help="evaluate and save an exponential moving average of the weights")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convs with AMP on GPUs)")
    p.add_argument("--clip-grad", type=positive_float, help="clip the global gradient norm to this value (> 0)")
    p.add_argument("--eval-every", type=positive_int, default=1, help="evaluate every N epochs (and after the last)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val", help="split to evaluate on; 'none' to skip evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels only (slower; exact reruns)")
    p.add_argument("--lenient", action="store_true", help="skip malformed annotation lines (listed) instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log one line per epoch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detprune.data import build_dataset, load_card
    from detprune.pipeline.weights import open_model
    from detprune.training import distributed as D
    from detprune.training.trainer import Trainer, seed_everything

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    resume_from = out / "last.pt" if args.resume is True else (Path(args.resume) if args.resume else None)
    device = D.resolve_device(args.device)
    card = load_card(args.data)
    seed_everything(args.seed)
    # a resumed run rebuilds its model from the checkpoint (it records adapter args and a pruned recipe)
    source = resume_from if resume_from is not None and resume_from.exists() and args.weights is None else args.weights
    loaded = open_model(
        args.model, card, source, img_size=args.img_size, overrides={"width": args.width, "depth": args.depth}
    )
    adapter, model = loaded.adapter, loaded.model
    size = adapter.args.get("img_size") or args.img_size or card.img_size
    train_ds = build_dataset(card, split=args.train_split, img_size=size, train=True, lenient=args.lenient)
    val_ds = None
    if args.val_split.lower() != "none" and card.has_split(args.val_split):
        val_ds = build_dataset(card, split=args.val_split, img_size=size, train=False, lenient=args.lenient)

    lr = args.lr if args.lr is not None else (0.01 if args.optimizer == "sgd" else 0.001)
    wd = args.weight_decay if args.weight_decay is not None else (5e-4 if args.optimizer == "sgd" else 0.01)
    D.init_distributed(device)  # before the loaders: they shard by rank
    train_loader = D.make_loader(
        train_ds, args.batch_size, train=True, workers=args.workers, seed=args.seed, pin_memory=device.type == "cuda"
    )
    val_loader = (
        D.make_loader(val_ds, args.batch_size, train=False, workers=args.workers, pin_memory=device.type == "cuda")
        if val_ds is not None
        else None
    )
    meta = {
        "model": args.model,
        "adapter_args": adapter.args,
        "data": str(args.data),
        "weights": str(Path(args.weights).resolve()) if args.weights else None,
    }
    trainer = Trainer(
        model,
        adapter,
        train_loader,
        val_loader,
        epochs=args.epochs,
        out_dir=out,
        meta=meta,
        lr=lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=wd,
        warmup_epochs=args.warmup_epochs,
        amp=args.amp,
        ema=args.ema,
        channels_last=args.channels_last,
        clip_grad_norm=args.clip_grad,
        eval_every=args.eval_every,
        seed=args.seed,
        deterministic=args.deterministic,
        device=str(device),
        progress=not args.no_progress,
    )
    main_rank = D.is_main()
    try:
        result = trainer.fit(resume=resume_from if resume_from is not None else False)
    finally:
        D.shutdown()
    if main_rank:
        best = "n/a" if result.best is None else f"{result.best:.4f} (epoch {result.best_epoch})"
        print(f"trained {len(result.history)} epochs; best {result.metric}: {best}; run folder {out}")
    return 0
