"""The course's typical scratch CNN against ``MyModel``: same data, same number of epochs, one run.

    python benchmarks/bench_scratch.py --data-dir ../shared/data/landmarks13 --epochs 30

Trains ``--arch course`` (five conv-BN-ReLU-maxpool blocks, 1024-unit dense layer, dropout, Adam, 224 px, the
course's Resize+RandomCrop+flip augmentation) then ``--arch scratch`` (``MyModel`` with its default recipe from
``src/train.py``), each through ``src.train.run_training`` exactly as ``python -m src train`` would, and prints
test accuracy and wall time for both. Interrupted? Run the same command with ``--resume``: each model continues
from its ``last.pt``. Results: ``benchmarks/results/NAME.json`` (default ``bench_scratch``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from common import RESULTS_DIR, format_table, machine

from src.helpers import atomic_write_json
from src.train import add_train_arguments, run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--limit", type=int, default=-1, help="at most this many photos per split (smoke runs)")
    parser.add_argument("--archs", default="course,scratch")
    parser.add_argument("--course-args", default="", help="extra `python -m src train` arguments for the course net")
    parser.add_argument("--scratch-args", default="", help="extra `python -m src train` arguments for MyModel")
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs from their last.pt")
    parser.add_argument("--name", default="bench_scratch", help="results/NAME.json; checkpoints in runs/NAME/")
    args = parser.parse_args(argv)

    runs_dir = RESULTS_DIR.parent.parent / "runs" / args.name  # checkpoints: large, and git-ignored there
    rows = []
    for arch in args.archs.split(","):
        extra = shlex.split(args.course_args if arch == "course" else args.scratch_args)
        train_argv = ["--arch", arch, "--epochs", str(args.epochs), "--limit", str(args.limit), "--workers",
                      str(args.workers), "--out", str(runs_dir / arch)] + extra
        if args.data_dir:
            train_argv += ["--data-dir", args.data_dir]
        if args.resume:
            train_argv.append("--resume")
        train_parser = argparse.ArgumentParser()
        add_train_arguments(train_parser)
        train_args = train_parser.parse_args(train_argv)
        print(f"\n=== {arch}: python -m src train {' '.join(train_argv)}", flush=True)
        started = time.perf_counter()
        result = run_training(train_args)
        history = json.loads((runs_dir / arch / "history.json").read_text())
        rows.append({**result, "train_argv": train_argv, "wall_s": round(time.perf_counter() - started, 1),
                     # epochs' own time, summed over interrupted and resumed parts of the run
                     "train_s": round(sum(h["seconds"] for h in history), 1),
                     "best_valid_acc": max(h["valid_acc"] for h in history),
                     "test_acc_pct": round(100 * result["test_acc"], 1)})
    base = next((r for r in rows if r["arch"] == "course"), rows[0])
    for r in rows:
        r["time_ratio"] = round(r["train_s"] / base["train_s"], 2) if base["train_s"] else None
        r["model"] = {"course": "course CNN (5 conv blocks + dense 1024)", "scratch": "MyModel"}.get(r["arch"],
                                                                                                    r["arch"])
    table = format_table(rows, [("model", "model"), ("img_size", "img px"), ("epochs", "epochs"),
                                ("test_acc_pct", "test acc %"), ("best_epoch", "best epoch"),
                                ("train_s", "train time s"), ("time_ratio", "time vs course")])
    print("\n" + table)
    out = {"command": "python benchmarks/bench_scratch.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
           "machine": machine(), "epochs": args.epochs, "limit": args.limit, "data_dir": args.data_dir,
           "rows": rows, "table": table}
    atomic_write_json(RESULTS_DIR / f"{args.name}.json", out)
    print(f"\nwrote {RESULTS_DIR / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
