"""Transfer learning: the course's method against ours, same backbone, same data, one run.

    python benchmarks/bench_transfer.py --data-dir ../shared/data/landmarks13 --epochs 10

(a) **course**: the frozen pretrained backbone and a new linear layer (``src.transfer.CourseTransferModel``: its
    batch norms follow ``model.train()`` as in the course), Adam at 1e-3, batch 32, 2 loader workers, the data
    set's own mean/std, Resize(256) + RandomCrop(224) + flip, photos decoded and run through the whole backbone
    for every image in every epoch; best-by-validation-loss weights tested on the test photos.
(b) **ours**: ``python -m src train --arch ARCH`` with its defaults. For efficientnet_lite0: the frozen first
    stages run once per photo (plus 2 augmented views of each training photo), their activations are cached
    on disk, and the last 2 stages and the head train on them (``--unfreeze 2``); other backbones: the head
    on cached features. The feature cache is deleted first, so the time includes computing every activation.
(c) **fine-tuned ensemble** (the accurate variant): ``python -m src train --arch ENSEMBLE_ARCH --seed S`` (default
    efficientnet_lite2, its last 2 stages fine-tuned on cached activations) once per seed in ``--ensemble-seeds``,
    each seed its own train/valid split and augmented views; ``python -m src export --checkpoint A B C`` makes one
    TorchScript file that averages their probabilities, and that exported file is scored on the test photos
    (``python -m src evaluate``). Its time is the sum of the members', the export's and the scoring's.
(d) **photo fine-tuning** (``--methods ...,finetune``): ours, then its last ``--unfreeze`` backbone stages trained
    on photos with fresh augmentation every epoch, at a tenth of the head's learning rate, starting from (b)'s
    weights; its time includes (b)'s.

Every method trains through ``src.train.optimize``. Prints test accuracy, wall time and the ratio to the course
method; writes ``benchmarks/results/NAME.json`` (default ``bench_transfer``). The CPU may be shared with other
work: compare the ratios, measured in the same run, more than the seconds.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path

from common import RESULTS_DIR, format_table, save_results

from src.checkpoint import build_model_from_checkpoint, load_checkpoint
from src.data import compute_mean_and_std, get_data_loaders, limit_samples, load_landmark_data
from src.helpers import seed_everything
from src.optimization import get_loss, get_optimizer, get_scheduler
from src.export import predictor_from_checkpoints
from src.predictor import export_torchscript, load_exported
from src.evaluation import evaluate_exported
from src.train_cli import add_train_arguments, run_training
from src.train import one_epoch_test, optimize
from src.transfer import CourseTransferModel

RUNS_DIR = RESULTS_DIR.parent.parent / "runs"


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children (loader workers): less sensitive than wall
    time to other work sharing the CPU."""
    gc.collect()  # finish loader workers of the method just run, so that their time is counted
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _limited(data, limit: int):
    if limit > 0:
        data.train, data.valid, data.test = (limit_samples(s, limit) for s in (data.train, data.valid, data.test))
    return data


def run_course(args, out: Path) -> dict:
    """(a) The course's recipe, every epoch a full backbone pass over every photo."""
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    load_before = _load()
    seed_everything(args.seed)
    data = _limited(load_landmark_data(args.data_dir, valid_size=0.2, seed=args.seed), args.limit)
    mean, std = compute_mean_and_std(data.root, samples=data.train + data.valid)
    loaders = get_data_loaders(batch_size=32, num_workers=args.workers, img_size=224, mean=mean, std=std,
                               seed=args.seed, augment="course", cache_images=False, data=data)
    model = CourseTransferModel(args.arch, n_classes=len(data.class_names))
    optimizer = get_optimizer(model, "adam", learning_rate=1e-3)
    loss = get_loss()
    metadata = {"arch": args.arch, "model_kwargs": {}, "class_names": data.class_names, "mean": mean, "std": std,
                "img_size": 224, "args": {"method": "course", "seed": args.seed}}
    history = optimize(loaders, model, optimizer, loss, args.epochs, out / "best.pt", metadata=metadata,
                       seed=args.seed)
    model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    test = one_epoch_test(loaders["test"], model, loss, verbose=False)
    wall = time.perf_counter() - started
    del loaders  # stops the loader workers, so their CPU time is counted
    return {"method": "course", "epochs": args.epochs, "test_acc": test["accuracy"], "n_test": test["count"],
            "best_epoch": min(history, key=lambda h: h["valid_loss"])["epoch"], "wall_s": round(wall, 1),
            "cpu_s": round(_cpu_seconds() - cpu_before, 1), "load_before": load_before, "load_after": _load(),
            "recipe": "frozen backbone (BN in train mode), Adam 1e-3, batch 32, Resize256+RandomCrop224+flip, "
                      "data-set mean/std"}


def _photo_test_accuracy(best: Path, args) -> float:
    """Untimed check: the saved full model (backbone + head) on the test photos, as export will run it."""
    ckpt = load_checkpoint(best)
    model = build_model_from_checkpoint(ckpt)
    data = _limited(load_landmark_data(args.data_dir, valid_size=0.2, seed=args.seed), args.limit)
    loaders = get_data_loaders(batch_size=32, num_workers=args.workers, img_size=ckpt["img_size"],
                               mean=ckpt["mean"], std=ckpt["std"], seed=args.seed, data=data)
    return one_epoch_test(loaders["test"], model, get_loss(), verbose=False)["accuracy"]


def run_ours(args, out: Path, extra: list[str], method: str = "ours", arch: str | None = None,
             seed: int | None = None, photo_check: bool = True) -> dict:
    """(b) ``python -m src train --arch ARCH`` with the feature cache, deleted first."""
    arch = arch or args.arch
    seed = args.seed if seed is None else seed
    data = load_landmark_data(args.data_dir, valid_size=0.2, seed=seed)
    for stale in (data.cache_dir / "features").glob(f"{arch}-*.pt"):
        stale.unlink()
    train_argv = ["--arch", arch, "--limit", str(args.limit), "--workers", str(args.workers),
                  "--seed", str(seed), "--out", str(out)] + extra
    if args.ours_epochs:
        train_argv += ["--epochs", str(args.ours_epochs)]
    if args.data_dir:
        train_argv += ["--data-dir", args.data_dir]
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    train_args = parser.parse_args(train_argv)
    print(f"\n=== {method}: python -m src train {' '.join(train_argv)}", flush=True)
    load_before = _load()
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    result = run_training(train_args)
    wall = time.perf_counter() - started
    row = {"method": method, "epochs": result["epochs"], "test_acc": result["test_acc"],
           "n_test": result["n_test"], "best_epoch": result["best_epoch"], "wall_s": round(wall, 1),
           "cpu_s": round(_cpu_seconds() - cpu_before, 1),
           "load_before": load_before, "load_after": _load(), "train_argv": train_argv,
           "recipe": f"cached activations ({train_args.n_views or 'default'} views), last {train_args.unfreeze} "
                     f"stages at {train_args.backbone_lr_scale:g}x and head: {train_args.optimizer} lr "
                     f"{train_args.lr}, wd {train_args.weight_decay}, {train_args.scheduler}, label smoothing "
                     f"{train_args.label_smoothing}, {train_args.img_size} px"}
    history = json.loads((out / "history.json").read_text())
    row["head_train_s"] = round(sum(h["seconds"] for h in history), 1)  # the rest: feature extraction, test
    if photo_check:
        row["test_acc_photos"] = _photo_test_accuracy(out / "best.pt", args)
    return row


def run_ensemble(args, out: Path) -> dict:
    """(c) One ``python -m src train --arch ENSEMBLE_ARCH`` per seed, exported as one averaging TorchScript file,
    which is what gets scored."""
    seeds = [int(s) for s in args.ensemble_seeds.split(",")]
    members = [run_ours(args, out / f"seed{seed}", shlex.split(args.ensemble_args), f"ensemble member (seed {seed})",
                        arch=args.ensemble_arch, seed=seed, photo_check=False) for seed in seeds]
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    exported = out / "ensemble_exported.pt"
    export_torchscript(predictor_from_checkpoints([out / f"seed{seed}" / "best.pt" for seed in seeds]), exported)
    data = _limited(load_landmark_data(args.data_dir, valid_size=0.2, seed=args.seed), args.limit)
    scores = evaluate_exported(load_exported(exported), [(p, data.class_names[y]) for p, y in data.test],
                               progress=False)
    wall = time.perf_counter() - started
    return {"method": f"fine-tuned ensemble ({len(seeds)}x {args.ensemble_arch})", "epochs": members[0]["epochs"],
            "test_acc": scores["accuracy"], "test_acc_photos": scores["accuracy"], "n_test": scores["count"],
            "wall_s": round(wall + sum(m["wall_s"] for m in members), 1),
            "cpu_s": round(_cpu_seconds() - cpu_before + sum(m["cpu_s"] for m in members), 1),
            "export_and_score_s": round(wall, 1), "load_before": members[0]["load_before"], "load_after": _load(),
            "member_test_acc": [m["test_acc"] for m in members], "member_wall_s": [m["wall_s"] for m in members],
            "recipe": f"seeds {args.ensemble_seeds}, each: {members[0]['recipe']}; exported file averages the "
                      f"members' probabilities"}


def run_finetune(args, init: Path, out: Path, previous_s: float, previous_cpu_s: float) -> dict:
    """(c) Ours, then its last ``--unfreeze`` backbone stages trained too, on photos with fresh augmentation each
    epoch, at 0.1x the head's learning rate (``TransferModel.param_groups``); starts from (b)'s trained head
    ("linear probe, then fine-tune"). Frozen stages run without gradients and keep their batch-norm statistics."""
    load_before = _load()
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    seed_everything(args.seed)
    ckpt = load_checkpoint(init)
    model = build_model_from_checkpoint(ckpt)
    model.set_unfrozen(args.unfreeze)
    data = _limited(load_landmark_data(args.data_dir, valid_size=0.2, seed=args.seed), args.limit)
    loaders = get_data_loaders(batch_size=32, num_workers=args.workers, img_size=ckpt["img_size"],
                               mean=ckpt["mean"], std=ckpt["std"], seed=args.seed, augment="standard",
                               cache_images=True, data=data)
    optimizer = get_optimizer(model, "adamw", learning_rate=args.finetune_lr, weight_decay=1e-4)
    scheduler = get_scheduler("cosine", optimizer, args.finetune_epochs, len(loaders["train"]), warmup_epochs=1)
    loss = get_loss(label_smoothing=0.1)
    kwargs = {**ckpt["model_kwargs"], "unfreeze": args.unfreeze}
    metadata = {"arch": ckpt["arch"], "model_kwargs": kwargs, "class_names": data.class_names,
                "mean": ckpt["mean"], "std": ckpt["std"], "img_size": ckpt["img_size"],
                "args": {"method": "fine-tuned", "init": str(init), "unfreeze": args.unfreeze,
                         "lr": args.finetune_lr, "epochs": args.finetune_epochs, "seed": args.seed}}
    history = optimize(loaders, model, optimizer, loss, args.finetune_epochs, out / "best.pt", scheduler=scheduler,
                       metadata=metadata, seed=args.seed, channels_last=True)
    model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    test = one_epoch_test(loaders["test"], model, loss, verbose=False)
    wall = time.perf_counter() - started
    del loaders
    cpu = _cpu_seconds() - cpu_before
    return {"method": f"fine-tuned (last {args.unfreeze} stages)", "epochs": args.finetune_epochs,
            "test_acc": test["accuracy"], "test_acc_photos": test["accuracy"], "n_test": test["count"],
            "best_epoch": min(history, key=lambda h: h["valid_loss"])["epoch"], "finetune_s": round(wall, 1),
            "wall_s": round(wall + previous_s, 1), "cpu_s": round(cpu + previous_cpu_s, 1), "load_before": load_before,
            "load_after": _load(),
            "recipe": f"from ours; last {args.unfreeze} stages at {args.finetune_lr / 10:g}, head at "
                      f"{args.finetune_lr:g}, AdamW wd 1e-4, cosine, label smoothing 0.1, standard augmentation, "
                      f"channels-last"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the course method")
    parser.add_argument("--ours-epochs", type=int, default=None,
                        help="epochs of training on cached activations (default: the CLI's)")
    parser.add_argument("--ours-args", default="", help="extra `python -m src train` arguments for ours")
    parser.add_argument("--unfreeze", type=int, default=3, help="fine-tuned: backbone stages to train")
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="head; backbone stages get 0.1x")
    parser.add_argument("--finetune-from", default=None, help="fine-tune this checkpoint instead of running ours")
    parser.add_argument("--ensemble-arch", default="efficientnet_lite2", help="fine-tuned ensemble: members' arch")
    parser.add_argument("--ensemble-seeds", default="42,1,2", help="fine-tuned ensemble: one member per seed")
    parser.add_argument("--ensemble-args", default="",
                        help="fine-tuned ensemble: extra `python -m src train` arguments for every member")
    parser.add_argument("--methods", default="course,ours,ensemble", help="any of course,ours,ensemble,finetune")
    parser.add_argument("--limit", type=int, default=-1, help="at most this many photos per split (smoke runs)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--name", default="bench_transfer", help="results/NAME.json; checkpoints in runs/NAME/")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    runs = RUNS_DIR / args.name
    rows = []
    if "course" in methods:
        print(f"\n=== course: frozen {args.arch}, Adam, {args.epochs} epochs", flush=True)
        rows.append(run_course(args, runs / "course"))
        print(rows[-1], flush=True)
    if "ours" in methods or ("finetune" in methods and not args.finetune_from):
        rows.append(run_ours(args, runs / "ours", shlex.split(args.ours_args)))
        print(rows[-1], flush=True)
    if "ensemble" in methods:
        rows.append(run_ensemble(args, runs / "ensemble"))
        print(rows[-1], flush=True)
    if "finetune" in methods:
        if args.finetune_from:  # experiments: start from an existing head, time the fine-tuning alone
            rows.append(run_finetune(args, Path(args.finetune_from), runs / "finetune", 0.0, 0.0))
        else:
            ours = next(r for r in rows if r["method"] == "ours")
            # its time includes ours': it starts from ours' trained head
            rows.append(run_finetune(args, runs / "ours" / "best.pt", runs / "finetune", ours["wall_s"],
                                     ours["cpu_s"]))
            if "ours" not in methods:
                rows.remove(ours)
        print(rows[-1], flush=True)

    base = next((r for r in rows if r["method"] == "course"), None)
    for r in rows:
        r["test_acc_pct"] = round(100 * r["test_acc"], 1)
        if "test_acc_photos" in r:
            r["test_acc_photos_pct"] = round(100 * r["test_acc_photos"], 1)
        r["time_ratio"] = round(r["wall_s"] / base["wall_s"], 3) if base else None
        r["cpu_ratio"] = round(r["cpu_s"] / base["cpu_s"], 3) if base else None
    table = format_table(rows, [("method", "method"), ("epochs", "epochs"), ("test_acc_pct", "test acc %"),
                                ("test_acc_photos_pct", "exported model on photos %"), ("wall_s", "wall time s"),
                                ("time_ratio", "time vs course"), ("cpu_s", "CPU s"), ("cpu_ratio", "CPU vs course"),
                                ("load_before", "load avg before")])
    save_results(args.name, "bench_transfer.py", argv, rows, table, arch=args.arch, data_dir=args.data_dir,
                 limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
