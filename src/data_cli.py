"""``python -m src data``: find or download the data set, check every photo, print the split and mean/std."""
from __future__ import annotations

import argparse

from .data import COURSE_DATA_URL, class_display_name, compute_mean_and_std, load_landmark_data


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="data folder or zip (default: $LANDMARK_DATA, else data/landmark_images, downloaded "
                             f"from {COURSE_DATA_URL})")
    parser.add_argument("--valid-size", type=float, default=0.2)


def data_main(args: argparse.Namespace) -> int:
    data = load_landmark_data(args.data_dir, valid_size=args.valid_size)
    mean, std = compute_mean_and_std(data.root, samples=data.train + data.valid)
    print(f"Data set: {data.root}")
    print(f"{len(data.class_names)} classes: {', '.join(class_display_name(c) for c in data.class_names[:5])}"
          + (", ..." if len(data.class_names) > 5 else ""))
    print(f"train {len(data.train)} / valid {len(data.valid)} / test {len(data.test)} photos; "
          f"{len(data.bad_files)} unreadable files left out")
    for path, reason in data.bad_files:
        print(f"  left out {path}: {reason}")
    print("mean " + ", ".join(f"{m:.4f}" for m in mean) + "   std " + ", ".join(f"{s:.4f}" for s in std))
    return 0
