"""``python -m src data``: find or download the data set, check every photo, print the split and mean/std."""
from __future__ import annotations

import argparse

from .data import class_display_name, compute_mean_and_std, load_landmark_data
from .download import COURSE_DATA_URL


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="data folder or zip (default: $LANDMARK_DATA, else data/landmark_images, downloaded "
                             f"from $LANDMARK_DATA_URL or {COURSE_DATA_URL})")
    parser.add_argument("--valid-size", type=float, default=0.2, help="share of each class held out for validation")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/valid split")


def _count(samples, n_classes: int) -> list[int]:
    counts = [0] * n_classes
    for _, label in samples:
        counts[label] += 1
    return counts


def data_main(args: argparse.Namespace) -> int:
    seed = getattr(args, "seed", 42)
    data = load_landmark_data(args.data_dir, valid_size=args.valid_size, seed=seed)
    mean, std = compute_mean_and_std(data.root, samples=data.train)
    n = len(data.class_names)
    per_split = {name: _count(getattr(data, name), n) for name in ("train", "valid", "test")}
    print(f"Data set: {data.root}")
    print(f"{n} classes; per class train / valid / test:")
    width = max(len(class_display_name(c)) for c in data.class_names)
    for i, folder in enumerate(data.class_names):
        print(f"  {i:3d} {class_display_name(folder):<{width}}  {per_split['train'][i]:5d} "
              f"{per_split['valid'][i]:5d} {per_split['test'][i]:5d}")
    print(f"train {len(data.train)} / valid {len(data.valid)} / test {len(data.test)} photos; "
          f"{len(data.bad_files)} unreadable files left out")
    for path, reason in data.bad_files:
        print(f"  left out {path}: {reason}")
    print("mean " + ", ".join(f"{m:.4f}" for m in mean) + "   std " + ", ".join(f"{s:.4f}" for s in std)
          + "   (training split, images downscaled to 64x64: what the models trained from scratch normalise with)")
    print(f"Cache: {data.cache_dir}")
    return 0
