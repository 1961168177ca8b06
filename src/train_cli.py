"""``python -m src train``: the training recipes per architecture (``ARCH_DEFAULTS``), the command's arguments,
and :func:`run_training`, the linear flow from arguments to a trained, tested checkpoint. The engine it runs is
:mod:`src.train` (``optimize``); checkpoints are :mod:`src.checkpoint`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, checkpoint_metadata, load_checkpoint, plain
from .data import compute_mean_and_std, get_data_loaders, load_landmark_data
from .data_config import resolve_data_config
from .distributed import barrier, cleanup, explain_lost_peers, init_distributed, local_device, \
    local_main_process_first, on_main_process
from .efficientnet_lite import OFFLINE_ARCHS
from .feature_cache import DEFAULT_N_VIEWS, get_feature_loaders
from .helpers import CHECKPOINTS_DIR, atomic_write_json, ensure_writable_dir, get_device, seed_everything
from .model import SCRATCH_ARCHS, create_model
from .optimization import get_loss, get_optimizer, get_scheduler
from .train import is_main_process, one_epoch_test, optimize, run_files
from .transfer import CachedActivationModel

# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

# The recipe per architecture when an argument is not given: for "scratch" the one that gave the best measured
# result (README.md, benchmarks/bench_scratch.py); "course" is the course's typical recipe (the baseline);
# every other arch is a transfer-learning backbone.
_LITE_RECIPE = {"epochs": 15, "lr": 3e-3, "optimizer": "adamw", "weight_decay": 1e-4, "scheduler": "onecycle",
                "label_smoothing": 0.1, "dropout": None, "augment": "standard", "batch_size": 32,
                "backbone_lr_scale": 0.33, "unfreeze": 2}
# Recipes only: the input size is the model's (src.data_config.resolve_data_config; --img-size overrides it).
ARCH_DEFAULTS = {
    "scratch": {"epochs": 30, "lr": 4e-3, "optimizer": "adamw", "weight_decay": 0.01, "scheduler": "onecycle",
                "label_smoothing": 0.1, "dropout": 0.2, "augment": "course", "batch_size": 16},
    "course": {"epochs": 30, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0, "scheduler": "none",
               "label_smoothing": 0.0, "dropout": 0.5, "augment": "course", "batch_size": 32},
    "transfer": {"epochs": 10, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 1e-4, "scheduler": "cosine",
                 "label_smoothing": 0.1, "dropout": None, "augment": "standard", "batch_size": 32,
                 "backbone_lr_scale": 0.1, "unfreeze": 0},
    # its last 2 stages and the head, on cached activations: it can be cut before them, so fine-tuning them costs
    # little more than a frozen backbone and measured better (benchmarks/bench_transfer.py, README.md)
    **{arch: dict(_LITE_RECIPE) for arch in OFFLINE_ARCHS},
}
RUN_SPECIFIC_ARGS = {"resume", "out", "data_dir", "workers", "device", "test_only", "compile", "command", "tta",
                     "topk"}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--arch", default="scratch",
      help="'scratch' (MyModel), 'course' (the course's baseline CNN), or a pretrained backbone for transfer "
           "learning: efficientnet_lite0/1/2 (weights from pip, offline) or any torchvision classifier (resnet18, "
           "...)")
    a("--data-dir", default=None, help="data folder or zip (default: $LANDMARK_DATA, else data/landmark_images)")
    a("--out", default=None, help="output folder for best.pt, last.pt, history (default: checkpoints/ARCH)")
    a("--epochs", type=int, default=None, help="default: 30 (scratch, course), 15 (efficientnet_lite*), 10 (others)")
    a("--batch-size", type=int, default=None)
    a("--lr", type=float, default=None, help="peak learning rate")
    a("--optimizer", default=None, choices=["sgd", "adam", "adamw", "SGD", "Adam", "AdamW"])
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--weight-decay", type=float, default=None)
    a("--label-smoothing", type=float, default=None)
    a("--scheduler", default=None, choices=["none", "cosine", "onecycle", "plateau"])
    a("--warmup-epochs", type=float, default=1.0, help="linear warmup of the cosine schedule")
    a("--dropout", type=float, default=None)
    a("--widths", default=None, help="scratch model: channels of the four stages, e.g. 32,64,128,256")
    a("--depths", default=None, help="scratch model: residual blocks per stage, e.g. 1,1,2,1")
    a("--img-size", type=int, default=None,
      help="input size in pixels (default: the model's: 224; 240 for efficientnet_lite1, 260 for "
           "efficientnet_lite2, the sizes their weights were trained at)")
    a("--augment", default=None, choices=["standard", "strong", "course"])
    a("--valid-size", type=float, default=0.2,
      help="share of train/ held out for validation; 0: train on every photo (a final refit once the recipe is "
           "chosen), best.pt is then the last epoch")
    a("--workers", type=int, default=-1, help="data loader processes (-1: one per CPU core)")
    a("--cache-images", action=argparse.BooleanOptionalAction, default=True,
      help="decode every photo once and keep it in memory (resized)")
    a("--seed", type=int, default=42)
    a("--split-seed", type=int, default=None,
      help="seed of the training/validation split (default: --seed); ensemble members trained with one split "
           "seed and different --seed share their validation photos, which export then calibrates on")
    a("--limit", type=int, default=-1, help="at most this many photos per split (quick runs)")
    a("--device", default=None, help="cpu, cuda, mps (default: best available; $LANDMARK_DEVICE)")
    a("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--resume", action="store_true", help="continue from OUT/last.pt with that run's arguments")
    a("--test-only", action="store_true", help="only evaluate OUT/best.pt on the test set")
    a("--topk", type=int, default=5)
    a("--tta", action=argparse.BooleanOptionalAction, default=False,
      help="test-time augmentation: average each test photo's prediction with its mirror image's")
    # transfer learning
    a("--unfreeze", type=int, default=None,
      help="transfer: number of backbone stages to fine-tune (0: head only; default: 2 for efficientnet_lite*, "
           "trained on cached activations, 0 for the others)")
    a("--backbone-lr-scale", type=float, default=None,
      help="transfer: learning rate of the unfrozen backbone stages relative to --lr (default 0.33 for "
           "efficientnet_lite*, 0.1 for the others)")
    a("--weights", default="DEFAULT", help="transfer: torchvision weights name for the backbone")
    a("--weights-path", default=None,
      help="transfer: a local weights file (state dict) for the backbone instead of downloading it")
    a("--feature-cache", action=argparse.BooleanOptionalAction, default=True,
      help="transfer with a frozen backbone: compute backbone features once and train the head on them")
    a("--n-views", type=int, default=None,
      help=f"transfer feature cache: views per training photo, the plain one included (default {DEFAULT_N_VIEWS})")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill arguments left at None with the recipe of ``args.arch`` (see ``ARCH_DEFAULTS``) and the input size
    with the model's."""
    defaults = ARCH_DEFAULTS.get(args.arch, ARCH_DEFAULTS["transfer"])
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.img_size = resolve_data_config(args.arch, getattr(args, "img_size", None)).img_size
    args.optimizer = args.optimizer.lower()
    if args.out is None:
        args.out = str(CHECKPOINTS_DIR / args.arch)
    return args


def model_kwargs_from_args(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`src.model.create_model` for the training arguments ``args``."""
    if args.arch == "scratch":
        kwargs: dict[str, Any] = {"dropout": args.dropout}
        if args.widths:
            kwargs["widths"] = [int(x) for x in str(args.widths).split(",")]
        if args.depths:
            kwargs["depths"] = [int(x) for x in str(args.depths).split(",")]
        return kwargs
    if args.arch == "course":
        return {"dropout": args.dropout, "img_size": args.img_size}
    kwargs = {"unfreeze": args.unfreeze, "weights": args.weights}
    if args.dropout is not None:
        kwargs["dropout"] = args.dropout
    if getattr(args, "weights_path", None):
        kwargs["weights_path"] = args.weights_path
    return kwargs


def train_args(**overrides) -> argparse.Namespace:
    """The arguments of ``python -m src train`` with its defaults, then ``overrides`` (Python names: ``img_size``).

    ``run_training(train_args(arch="efficientnet_lite0", epochs=5))`` is ``python -m src train --arch
    efficientnet_lite0 --epochs 5``. An unknown name raises ``TypeError`` (a typo must not be ignored silently).
    """
    parser = argparse.ArgumentParser(prog="python -m src train")
    add_train_arguments(parser)
    args = parser.parse_args([])
    unknown = sorted(set(overrides) - set(vars(args)))
    if unknown:
        raise TypeError(f"unknown training argument(s) {', '.join(unknown)}; see python -m src train --help")
    for key, value in overrides.items():
        setattr(args, key, str(value) if isinstance(value, Path) else value)
    return args


def feature_loader_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`src.feature_cache.get_feature_loaders` for the training arguments
    ``args`` (resolved: :func:`resolve_defaults`)."""
    return {"img_size": args.img_size, "n_views": args.n_views, "batch_size": args.batch_size,
            "workers": args.workers, "seed": args.seed, "limit": args.limit, "augment": args.augment,
            "device": args.device}


def _given_args(args: argparse.Namespace) -> set[str]:
    """The arguments given on the command line (those differing from the parser's defaults), before the arch's
    recipe fills the rest in."""
    defaults = vars(train_args())
    return {k for k, v in vars(args).items() if k in defaults and v != defaults[k]}


def _apply_saved_args(args: argparse.Namespace, saved_from: Path, given: set[str] = frozenset(),
                      resume: bool = True) -> argparse.Namespace:
    """``args`` with the run's saved arguments (those of ``saved_from``) in place of the recipe's.

    An argument given on the command line that contradicts the saved run is not silently dropped: more
    ``--epochs`` for a run that already finished is refused (its learning-rate schedule ended with the epochs it
    was started with), anything else is reported as ignored.
    """
    ckpt = on_main_process(lambda: load_checkpoint(saved_from))
    saved = ckpt.get("args") or {}
    ignored = []
    for key, value in saved.items():
        if key in RUN_SPECIFIC_ARGS and not (key == "data_dir" and args.data_dir is None):
            continue
        mine = getattr(args, key, None)
        if key in given and key != "data_dir" and mine != value:
            flag = "--" + key.replace("_", "-")
            if resume and key == "epochs" and int(ckpt.get("epoch", 0)) >= int(value):
                raise CheckpointError(
                    f"{saved_from}: this run already finished its {value} epochs and --resume cannot extend it "
                    f"(its learning-rate schedule ends there); train {mine} epochs in a new run with another --out")
            ignored.append(f"{flag} {mine} (the run's: {value})")
        setattr(args, key, value)
    if ignored and is_main_process():
        print(f"Ignoring {', '.join(ignored)}: {'--resume continues' if resume else '--test-only tests'} the run "
              f"with its saved arguments", file=sys.stderr)
    return args


def run_training(args: argparse.Namespace) -> dict:
    """Train (or with ``test_only`` just test) as ``args`` say; returns the test metrics and run facts."""
    given = _given_args(args)
    args = resolve_defaults(args)
    # a read-only or mistyped --out fails now, not after the first epoch; only rank 0 writes there
    out = ensure_writable_dir(args.out) if is_main_process() else Path(args.out)
    files = run_files(out / "best.pt")
    if args.resume and on_main_process(files["last"].exists):
        args = _apply_saved_args(args, files["last"], given)
        if is_main_process():
            print(f"Resuming {files['last']} with its saved arguments")
    elif args.test_only:
        args = _apply_saved_args(args, files["best"], given, resume=False)  # test the model as it was trained
    seed_everything(args.seed)
    device = local_device(get_device(args.device))  # cuda -> this process's own GPU under torchrun

    with local_main_process_first():  # under torchrun one process per machine checks photos, fills caches
        split_seed = args.seed if args.split_seed is None else args.split_seed
        data = load_landmark_data(args.data_dir, valid_size=args.valid_size, seed=split_seed)
    model_kwargs = model_kwargs_from_args(args)
    with local_main_process_first():  # ... and downloads pretrained weights
        model = create_model(args.arch, len(data.class_names), **model_kwargs)
    if getattr(model, "mean", None) is not None and getattr(model, "std", None) is not None:
        mean, std = [float(x) for x in model.mean], [float(x) for x in model.std]  # the backbone's own
    else:
        # The training split's own statistics, the rule of compute_mean_and_std and the numbers `python -m src
        # data` prints: the same photos, so one computation serves both (cached), never the validation photos.
        with local_main_process_first():
            mean, std = compute_mean_and_std(data.root, samples=data.train)
    train_module = model
    if args.arch not in SCRATCH_ARCHS:
        model.backbone_lr_scale = float(args.backbone_lr_scale)
    split = model.cache_split() if args.arch not in SCRATCH_ARCHS and args.feature_cache else None
    if split is not None:
        # The frozen start of the backbone runs once per photo (and view); only its trainable end and the head
        # train, on the cached activations. Training them trains `model` (the same modules).
        loaders = get_feature_loaders(model, data, **feature_loader_options(args))
        train_module = (model.head if args.unfreeze == 0
                        else CachedActivationModel(split[1], model.head, model.backbone_lr_scale))
    else:
        loaders = get_data_loaders(batch_size=args.batch_size, valid_size=args.valid_size, num_workers=args.workers,
                                   limit=args.limit, img_size=args.img_size, mean=mean, std=std, seed=args.seed,
                                   augment=args.augment, cache_images=args.cache_images, data=data)
    metadata = checkpoint_metadata(args.arch, model_kwargs, data.class_names, mean, std, args.img_size, args)
    loss = get_loss(args.label_smoothing)

    started = time.perf_counter()
    if not args.test_only:
        optimizer = get_optimizer(train_module, args.optimizer, learning_rate=args.lr, momentum=args.momentum,
                                  weight_decay=args.weight_decay)
        scheduler = get_scheduler(args.scheduler, optimizer, args.epochs, len(loaders["train"]),
                                  warmup_epochs=args.warmup_epochs)
        optimize(loaders, train_module, optimizer, loss, args.epochs, files["best"], scheduler=scheduler,
                 resume=args.resume, metadata=metadata, checkpoint_model=model, device=device, amp=args.amp,
                 compile_model=args.compile, seed=args.seed)
    train_seconds = time.perf_counter() - started

    best = on_main_process(load_checkpoint, files["best"])
    if list(best["class_names"]) != list(data.class_names):
        raise CheckpointError(f"{files['best']}: trained on other classes than {data.root}")
    model.load_state_dict(best["model"])
    model.to(device)
    test = one_epoch_test(loaders["test"], train_module, loss, topk=args.topk, verbose=False, tta=args.tta)
    result = {"arch": args.arch, "img_size": args.img_size, "epochs": args.epochs, "best_epoch": int(best["epoch"]),
              "test_loss": test["loss"], "test_acc": test["accuracy"], f"test_top{args.topk}": test["topk_accuracy"],
              "n_test": test["count"], "tta": bool(args.tta), "train_seconds": round(train_seconds, 1),
              "device": str(device)}
    if is_main_process():
        atomic_write_json(out / "test_metrics.json", plain(result))
        print(f"Test accuracy: {test['accuracy']:.1%} (top-{args.topk} {test['topk_accuracy']:.1%}, "
              f"loss {test['loss']:.4f}) on {test['count']} test photos; best epoch {best['epoch']}; "
              f"checkpoints in {out}")
    return result


def train_main(args: argparse.Namespace) -> int:
    # Under torchrun: join the job (NCCL on CUDA, gloo on CPU); a plain run stays a single process.
    init_distributed(args.device)
    with explain_lost_peers():
        run_training(args)
        barrier()  # every process done before any leaves the group
    cleanup()
    return 0
