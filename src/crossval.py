"""K-fold cross-validation of transfer-learning recipes on the training photos only.

Choosing between variants (one backbone or another, one model or an ensemble) by their test accuracy fits the test
set, and a small validation split is too noisy to tell them apart. ``python -m src cv`` scores every candidate on
all training photos instead: the photos are cut into ``--folds`` stratified folds, every member (an arch and a
seed, trained with the ``python -m src train`` recipe of its arch) is trained once per fold on the other folds and
predicts the photos of its own fold, so each photo is predicted by models that never saw it. An ensemble's
prediction is the average of its members' probabilities, exactly as an exported ensemble computes it.

The backbone's frozen start runs once per photo for all folds (the training photos' feature cache of a
``--valid-size 0`` run, shared with the final refit); only the trainable end and the head train per fold. The
held-out fold is never used for early stopping: the last epoch predicts it, as in a ``--valid-size 0`` refit.
Each member's predictions are saved per fold, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from .helpers import atomic_torch_save, atomic_write_json, ensure_writable_dir, seed_everything
from .train import optimize
from .train_cli import add_train_arguments, feature_loader_options, model_kwargs_from_args, resolve_defaults, train_args

log = logging.getLogger(__name__)

# bump when what a saved fold prediction means changes; 2: the recipe's learning-rate schedule is stepped (format 1
# built it and never passed it to the engine, so one-cycle members trained at its constant starting rate, lr/25)
CV_FORMAT = 2


def parse_member(spec: str) -> tuple[str, int]:
    """``"efficientnet_lite2:1"`` -> ``("efficientnet_lite2", 1)``; the seed defaults to 42."""
    arch, _, seed = spec.strip().partition(":")
    if not arch:
        raise ValueError(f"member {spec!r}: expected ARCH[:SEED], e.g. efficientnet_lite0:42")
    try:
        return arch, int(seed) if seed else 42
    except ValueError:
        raise ValueError(f"member {spec!r}: the seed must be an integer") from None


def member_name(arch: str, seed: int) -> str:
    return f"{arch}:{seed}"


def parse_candidate(spec: str) -> tuple[str, list[tuple[str, int]]]:
    """``"lite2x3=efficientnet_lite2:42+efficientnet_lite2:1+efficientnet_lite2:2"`` -> (name, members).

    Without ``NAME=`` the spec itself names the candidate (``efficientnet_lite0:42``).
    """
    name, sep, members = spec.partition("=")
    if not sep:
        name, members = spec, spec
    parsed = [parse_member(m) for m in members.split("+") if m.strip()]
    if not name.strip() or not parsed:
        raise ValueError(f"candidate {spec!r}: expected NAME=ARCH:SEED+ARCH:SEED...")
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"candidate {spec!r}: a member is listed twice")
    return name.strip(), parsed


def stratified_folds(samples: Sequence[tuple[Path, int]], n_folds: int, seed: int = 42) -> list[int]:
    """The fold (0..n_folds-1) of every sample: per class in a stable hash order (the one of the train/valid split,
    so the same on every run and machine), dealt round-robin, continuing from class to class so folds differ in
    size by at most one photo and every class is spread over all folds it can reach."""
    from .data import stable_order_key  # noqa: PLC0415

    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if len(samples) < n_folds:
        raise ValueError(f"{len(samples)} photos cannot be cut into {n_folds} folds")
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(samples):
        by_class.setdefault(int(label), []).append(index)
    folds = [0] * len(samples)
    dealt = 0
    for label in sorted(by_class):
        for index in sorted(by_class[label], key=lambda i: stable_order_key(Path(samples[i][0]), seed)):
            folds[index] = dealt % n_folds
            dealt += 1
    return folds


def member_args(arch: str, seed: int, overrides: dict | None = None) -> argparse.Namespace:
    """The ``python -m src train`` arguments of a member: its arch's defaults, the seed, ``overrides``."""
    return resolve_defaults(train_args(arch=arch, seed=seed, valid_size=0.0, **(overrides or {})))


def _new_model(args: argparse.Namespace, n_classes: int):
    from .model import create_model  # noqa: PLC0415

    model = create_model(args.arch, n_classes, **model_kwargs_from_args(args))
    if getattr(model, "cache_split", None) is None:
        raise ValueError(f"{args.arch}: cross-validation needs a transfer-learning backbone (efficientnet_lite*, "
                         "resnet18, ...), not a model trained from scratch")
    model.backbone_lr_scale = float(args.backbone_lr_scale)
    return model


def training_features(args: argparse.Namespace, data, cache_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, n_views, ...], labels [N])`` of every training photo for ``args.arch`` (its recipe's size,
    views and augmentation), from the feature cache of a ``--valid-size 0 --seed cache_seed`` run."""
    from .feature_cache import get_feature_loaders  # noqa: PLC0415

    model = _new_model(args, len(data.class_names))
    # the training command's own cache and loaders, with the cache's views seeded by cache_seed for every member
    train = get_feature_loaders(model, data, **{**feature_loader_options(args), "seed": cache_seed})["train"]
    feats, labels = train.dataset.features, train.dataset.labels
    if feats.shape[0] != len(data.train):
        raise RuntimeError(f"{data.root}: {len(data.train) - feats.shape[0]} training photo(s) could not be read "
                           "any more (see the warnings above); run `python -m src data` to re-check the photos")
    return feats, labels


def train_and_predict(args: argparse.Namespace, class_names: Sequence[str], train_feats: torch.Tensor,
                      train_labels: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
    """Train a fresh model of ``args`` (pretrained backbone, new head) on cached training features with the
    training command's engine and recipe; return its class probabilities ``[M, C]`` for ``held_out`` features
    (their plain view ``[M, 1, ...]`` or ``[M, ...]``)."""
    from .optimization import get_loss, get_optimizer, get_scheduler  # noqa: PLC0415
    from .feature_cache import FeatureDataset  # noqa: PLC0415
    from .transfer import CachedActivationModel  # noqa: PLC0415

    seed_everything(args.seed)
    model = _new_model(args, len(class_names))
    split = model.cache_split()
    train_module = model.head if args.unfreeze == 0 else CachedActivationModel(split[1], model.head,
                                                                               model.backbone_lr_scale)
    generator = torch.Generator()
    generator.manual_seed(args.seed)
    train_ds = FeatureDataset(train_feats, train_labels, sample_views=True, class_names=class_names)
    no_valid = FeatureDataset(train_feats[:0, :1], train_labels[:0], class_names=class_names)
    loaders = {"train": DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, generator=generator),
               "valid": DataLoader(no_valid, batch_size=args.batch_size)}
    optimizer = get_optimizer(train_module, args.optimizer, learning_rate=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.scheduler, optimizer, args.epochs, len(loaders["train"]),
                              warmup_epochs=args.warmup_epochs)
    with tempfile.TemporaryDirectory(prefix="landmark-cv-") as tmp:  # the engine checkpoints; nothing to keep
        optimize(loaders, train_module, optimizer, get_loss(args.label_smoothing), args.epochs,
                 Path(tmp) / "best.pt", metadata={"arch": args.arch, "img_size": args.img_size},
                 scheduler=scheduler, checkpoint_model=model, device=args.device, amp=args.amp, seed=args.seed)
    train_module.eval()
    device = next(train_module.parameters()).device
    held_out = held_out[:, 0] if held_out.dim() == train_feats.dim() else held_out
    with torch.inference_mode():
        probs = [torch.softmax(train_module(batch.float().to(device)).float(), dim=1).cpu()
                 for batch in held_out.split(64)]
    return torch.cat(probs) if probs else torch.zeros(0, len(class_names))


def _fold_file(out: Path, arch: str, seed: int, fold: int) -> Path:
    return out / "predictions" / f"{arch}-seed{seed}-fold{fold}.pt"


def cross_validate(data, candidates: Sequence[tuple[str, Sequence[tuple[str, int]]]], out: str | Path,
                   n_folds: int = 5, fold_seed: int = 42, overrides: dict | None = None) -> dict:
    """Out-of-fold accuracy of every member and candidate (see the module docstring); writes ``out/cv.json``.

    ``data``: a :class:`src.data.LandmarkData` whose ``train`` holds every training photo (``valid_size=0``).
    ``candidates``: ``(name, [(arch, seed), ...])``; a one-member candidate is that model alone.
    ``overrides``: training arguments for every member (``{"epochs": 3}``). ``fold_seed`` sets the folds and the
    views in the feature cache.
    """
    out = ensure_writable_dir(out)
    samples = list(data.train)
    folds = torch.tensor(stratified_folds(samples, n_folds, fold_seed))
    members = list(dict.fromkeys(m for _, ms in candidates for m in ms))  # in order, each once
    n_classes = len(data.class_names)
    probs: dict[tuple[str, int], torch.Tensor] = {}
    seconds: dict[tuple[str, int], float] = {}
    features_of: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for arch, seed in members:
        args = member_args(arch, seed, overrides)
        recipe = {k: v for k, v in vars(args).items() if k not in ("out", "seed", "workers", "data_dir")}
        member_probs = torch.zeros(len(samples), n_classes)
        spent = 0.0
        for fold in range(n_folds):
            path = _fold_file(out, arch, seed, fold)
            held = (folds == fold).nonzero().flatten()
            saved = _load_fold(path, recipe, samples, held, n_folds, fold_seed)
            if saved is None:
                if arch not in features_of:
                    features_of = {arch: training_features(args, data, fold_seed)}  # one arch in memory at a time
                feats, labels_all = features_of[arch]
                train_rows = (folds != fold).nonzero().flatten()
                print(f"{member_name(arch, seed)}: fold {fold + 1}/{n_folds} "
                      f"({len(train_rows)} photos train, {len(held)} predicted)", flush=True)
                started = time.perf_counter()
                fold_probs = train_and_predict(args, data.class_names, feats[train_rows], labels_all[train_rows],
                                               feats[held])
                saved = {"probs": fold_probs, "seconds": time.perf_counter() - started}
                atomic_torch_save({"format": CV_FORMAT, "recipe": recipe, "n_folds": n_folds, "fold_seed": fold_seed,
                                   "photos": [str(samples[i][0]) for i in held.tolist()], **saved}, path)
            member_probs[held] = saved["probs"]
            spent += float(saved["seconds"])
        probs[(arch, seed)], seconds[(arch, seed)] = member_probs, spent
    labels = torch.tensor([int(y) for _, y in samples])
    result = {"n_photos": len(samples), "n_folds": n_folds, "fold_seed": fold_seed, "data": str(data.root),
              "fold_sizes": [int((folds == f).sum()) for f in range(n_folds)], "overrides": dict(overrides or {}),
              "members": [], "candidates": []}
    for arch, seed in members:
        result["members"].append({"member": member_name(arch, seed), "train_seconds": round(seconds[(arch, seed)], 1),
                                  **_scores(probs[(arch, seed)], labels, folds, n_folds)})
    gmacs = _gmacs_per_photo({arch for arch, _ in members}, overrides)
    for name, ms in candidates:
        mean = torch.stack([probs[m] for m in ms]).mean(0)
        result["candidates"].append({"candidate": name, "members": [member_name(*m) for m in ms],
                                     "gmacs_per_photo": round(sum(gmacs[a] for a, _ in ms), 2),
                                     **_scores(mean, labels, folds, n_folds)})
    ranked = sorted(result["candidates"], key=lambda c: (-c["correct"], c["gmacs_per_photo"]))
    result["chosen"] = ranked[0]["candidate"] if ranked else None
    atomic_write_json(out / "cv.json", result)
    return result


def _load_fold(path: Path, recipe: dict, samples, held: torch.Tensor, n_folds: int, fold_seed: int) -> dict | None:
    """A fold's saved predictions when they are for this recipe and exactly these photos, else None."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file is recomputed, not fatal
        log.warning("Ignoring unreadable %s (%s)", path, " ".join(str(exc).split())[:200])
        return None
    expected = [str(samples[i][0]) for i in held.tolist()]
    if (saved.get("format") != CV_FORMAT or saved.get("recipe") != recipe
            or saved.get("n_folds") != n_folds or saved.get("fold_seed") != fold_seed
            or saved.get("photos") != expected):
        return None
    return saved


def _scores(probs: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor, n_folds: int) -> dict:
    right = probs.argmax(1) == labels
    top5 = (probs.topk(min(5, probs.shape[1]), dim=1).indices == labels[:, None]).any(1)
    log_loss = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean()
    return {"accuracy": round(float(right.float().mean()), 4), "correct": int(right.sum()),
            "top5": round(float(top5.float().mean()), 4), "log_loss": round(float(log_loss), 4),
            "fold_accuracy": [round(float(right[folds == f].float().mean()), 4) for f in range(n_folds)]}


def _gmacs_per_photo(archs, overrides: dict | None) -> dict[str, float]:
    from .notebook import compare_backbones  # noqa: PLC0415

    return {arch: next(v for k, v in compare_backbones([arch], member_args(arch, 42, overrides).img_size)[0].items()
                       if k.startswith("GMACs")) for arch in archs}


def format_result(result: dict) -> str:
    from .notebook import format_rows  # noqa: PLC0415

    n = result["n_photos"]
    table = format_rows([{"candidate": c["candidate"], "members": " + ".join(c["members"]),
                          "CV accuracy": f"{c['accuracy']:.1%}", "correct": f"{c['correct']}/{n}",
                          "CV top-5": f"{c['top5']:.1%}", "log-loss": f"{c['log_loss']:.3f}",
                          "per fold": " ".join(f"{a:.0%}" for a in c["fold_accuracy"]),
                          "GMACs/photo": f"{c['gmacs_per_photo']:.2f}"} for c in result["candidates"]])
    return (f"{table}\n{result['n_folds']}-fold cross-validation on {n} training photos of {result['data']}; "
            f"highest (ties: fewest multiply-adds): {result['chosen']}")


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

def add_cv_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--data-dir", default=None, help="data folder or zip (default: $LANDMARK_DATA, else data/landmark_images)")
    a("--candidate", action="append", required=True, metavar="NAME=ARCH:SEED+ARCH:SEED",
      help="a model (efficientnet_lite0:42) or an ensemble (lite2x3=efficientnet_lite2:42+efficientnet_lite2:1+"
           "efficientnet_lite2:2) to score; repeat for each candidate")
    a("--folds", type=int, default=5)
    a("--fold-seed", type=int, default=42, help="sets the folds and the augmented views in the feature cache")
    a("--epochs", type=int, default=None, help="every member: this many epochs instead of its arch's default")
    a("--set", action="append", default=[], metavar="KEY=VALUE",
      help="every member: a `python -m src train` argument instead of its arch's default, e.g. unfreeze=3, "
           "img_size=288, augment=strong (repeat for several)")
    a("--workers", type=int, default=-1, help="photo decoding processes for the feature cache (-1: one per core)")
    a("--out", default="runs/cv", help="folder for the per-fold predictions and cv.json")
    a("--json", default=None, help="also write the result to this JSON file")


def training_overrides(settings: Sequence[str]) -> dict:
    """``["unfreeze=3", "img_size=288"]`` -> ``{"unfreeze": 3, "img_size": 288}``, typed and checked by the
    training command's own parser (an unknown name or a bad value is an error naming it)."""

    parser = argparse.ArgumentParser(prog="--set", add_help=False, exit_on_error=False)
    add_train_arguments(parser)
    dests = {a.dest for a in parser._actions}
    overrides = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or key not in dests:
            raise ValueError(f"--set {setting!r}: expected KEY=VALUE with KEY a training argument "
                             "(python -m src train --help), e.g. unfreeze=3")
        try:
            parsed = parser.parse_args([f"--{key.replace('_', '-')}", value])
        except argparse.ArgumentError as exc:
            raise ValueError(f"--set {setting!r}: {exc}") from None
        except SystemExit:  # argparse still exits on some errors (a flag that takes no value)
            raise ValueError(f"--set {setting!r}: not a value this argument takes") from None
        overrides[key] = getattr(parsed, key)
    return overrides


def cv_main(args: argparse.Namespace) -> int:
    from .data import load_landmark_data  # noqa: PLC0415

    candidates = [parse_candidate(spec) for spec in args.candidate]
    names = [name for name, _ in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must differ: {', '.join(names)}")
    data = load_landmark_data(args.data_dir, valid_size=0.0, seed=args.fold_seed)
    overrides = {"workers": args.workers, **training_overrides(args.set),
                 **({"epochs": args.epochs} if args.epochs else {})}
    result = cross_validate(data, candidates, args.out, args.folds, args.fold_seed, overrides)
    print(format_result(result))
    if args.json:
        atomic_write_json(Path(args.json), result)
        print(f"Wrote {args.json}")
    return 0
