"""``detprune train``: train or fine-tune a model adapter on a dataset card, on one GPU or many."""
from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any

from detprune.errors import DetpruneError

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
    p = sub.add_parser("train", help="train or fine-tune a model (AMP, EMA, DDP, resumable)",
                       description="Train a model adapter on a dataset: SGD or AdamW, linear warm-up and cosine "
                       "decay, optional AMP/EMA/channels_last/gradient clipping, evaluation with the task's metric "
                       "every --eval-every epochs, atomic resumable checkpoints.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model adapter name (see `detprune plugins --kind adapter`)")
    p.add_argument("--data", required=True, help="dataset card (.yaml) or dataset folder")
    p.add_argument("--epochs", type=int, required=True, help="total epochs (a resumed run trains up to this)")
    p.add_argument("--out", required=True, help="run folder (created; refuses an existing run unless --resume)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue OUT/last.pt, or the checkpoint given (e.g. OUT/last.prev.pt)")
    p.add_argument("--weights", help="start from these weights: a pruned recipe, a state_dict or a checkpoint")
    p.add_argument("--batch-size", type=int, default=16, help="images per step and process (default 16)")
    p.add_argument("--img-size", type=int, help="network input size (default: the card's, else 608 / 32)")
    p.add_argument("--width", type=float, help="channel width multiplier of the dense model")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available); under torchrun cuda:LOCAL_RANK")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes per rank (default 4)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.01 for sgd, 0.001 for adamw)")
    p.add_argument("--weight-decay", type=float, help="default 5e-4 for sgd, 0.01 for adamw")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length (default 1)")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 where supported, else fp16 + loss scaling)")
    p.add_argument("--ema", action="store_true", help="evaluate and save an exponential moving average of the weights")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convs with AMP on GPUs)")
    p.add_argument("--clip-grad", type=float, help="clip the global gradient norm to this value")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and after the last)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val", help="split to evaluate on; 'none' to skip evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels only (slower; exact reruns)")
    p.add_argument("--lenient", action="store_true", help="skip malformed annotation lines (listed) instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log one line per epoch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import detprune
    from detprune import distributed as D
    from detprune.checkpoint import load_checkpoint
    from detprune.data import build_dataset, load_card
    from detprune.train import Trainer, seed_everything

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    resume_from = out / "last.pt" if args.resume is True else (Path(args.resume) if args.resume else None)
    weights = args.weights
    if resume_from is not None and resume_from.exists() and weights is None:  # the architecture a pruned run was started from
        weights = load_checkpoint(resume_from).get("meta", {}).get("weights")

    card = load_card(args.data)
    seed_everything(args.seed)
    train_ds = build_dataset(card, split=args.train_split, img_size=args.img_size, train=True, lenient=args.lenient)
    size = args.img_size or getattr(train_ds, "img_size", None) or card.img_size
    val_ds = None
    if args.val_split.lower() != "none" and _has_split(card, args.val_split):
        val_ds = build_dataset(card, split=args.val_split, img_size=size, train=False, lenient=args.lenient)
    adapter_args = _adapter_args(args.model, card, size, args.width)
    adapter = detprune.plugins().adapter(args.model, **adapter_args)
    if adapter.task != card.task:
        raise DetpruneError(f"model '{args.model}' is a {adapter.task} model but {card.source} is a {card.task} dataset")
    if weights:
        from detprune.cli.eval import load_weights

        model = load_weights(weights, adapter)
    else:
        model = adapter.build()

    lr = args.lr if args.lr is not None else (0.01 if args.optimizer == "sgd" else 0.001)
    wd = args.weight_decay if args.weight_decay is not None else (5e-4 if args.optimizer == "sgd" else 0.01)
    device = D.resolve_device(args.device)
    D.init_distributed(device)  # before the loaders: they shard by rank
    train_loader = D.make_loader(train_ds, args.batch_size, train=True, workers=args.workers, seed=args.seed,
                                 pin_memory=device.type == "cuda")
    val_loader = (D.make_loader(val_ds, args.batch_size, train=False, workers=args.workers,
                                pin_memory=device.type == "cuda") if val_ds is not None else None)
    meta = {"model": args.model, "adapter_args": adapter.args, "data": str(args.data),
            "weights": str(Path(weights).resolve()) if weights else None}
    trainer = Trainer(model, adapter, train_loader, val_loader, epochs=args.epochs, out_dir=out, meta=meta,
                      lr=lr, optimizer=args.optimizer, momentum=args.momentum, weight_decay=wd,
                      warmup_epochs=args.warmup_epochs, amp=args.amp, ema=args.ema, channels_last=args.channels_last,
                      clip_grad_norm=args.clip_grad, eval_every=args.eval_every, seed=args.seed,
                      deterministic=args.deterministic, device=str(device), progress=not args.no_progress)
    main_rank = D.is_main()
    try:
        result = trainer.fit(resume=resume_from if resume_from is not None else False)
    finally:
        D.shutdown()
    if main_rank:
        best = "n/a" if result.best is None else f"{result.best:.4f} (epoch {result.best_epoch})"
        print(f"trained {len(result.history)} epochs; best {result.metric}: {best}; run folder {out}")
    return 0


def _has_split(card: Any, split: str) -> bool:
    try:
        card.resolve_split(split)
    except DetpruneError:
        return False
    return True


def _default(params, name: str) -> Any:
    p = params.get(name) if hasattr(params, "get") else None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _adapter_args(name: str, card: Any, img_size: int | None, width: float | None) -> dict[str, Any]:
    """Build arguments from the card (classes, size, anchors) that the adapter's constructor takes."""
    import detprune

    factory = detprune.plugins().get("adapter", name).factory
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    from detprune.anchors import card_anchors

    size = img_size or card.img_size or _default(params, "img_size")
    anchors = card_anchors(card, size) if size else card.extra.get("anchors")  # pixels of the input size
    offered = {"num_classes": card.num_classes, "img_size": img_size, "anchors": anchors}
    args = {k: v for k, v in offered.items() if v is not None and (takes_all or k in params)}
    if width is not None:
        args["width"] = width  # passed even if unknown: the adapter's own error names the option
    return args
