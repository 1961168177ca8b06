"""The course's typical scratch CNN against ``MyModel``: same data, same number of epochs, one run.

    python benchmarks/bench_scratch.py --data-dir ../shared/data/landmarks13 --epochs 30

Trains ``--arch course`` (five conv-BN-ReLU-maxpool blocks, 1024-unit dense layer, dropout, Adam, 224 px, the
course's Resize+RandomCrop+flip augmentation) then ``--arch scratch`` (``MyModel`` with its default recipe from
``src/train.py``), each by running ``python -m src train`` in a child process, and prints test accuracy and
training time for both. The children get ``OMP_WAIT_POLICY=PASSIVE`` unless set: on a CPU shared with other
work, OpenMP threads that spin while waiting make PyTorch up to 10x slower. Interrupted? Run the same command
with ``--resume``: each model continues from its ``last.pt``. Results: ``benchmarks/results/NAME.json``
(default ``bench_scratch``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from common import RESULTS_DIR, format_table, save_results

from src.helpers import PROJECT_ROOT


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
    parser.add_argument("--retries", type=int, default=3, help="resume a training killed by a signal this often")
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
        print(f"\n=== {arch}: python -m src train {' '.join(train_argv)}", flush=True)
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               "PYTHONUNBUFFERED": "1"}  # the log shows each epoch as it ends
        started = time.perf_counter()
        interruptions = 0
        while True:
            proc = subprocess.run([sys.executable, "-m", "src", "train", *train_argv], cwd=PROJECT_ROOT, env=env)
            if proc.returncode >= 0 or interruptions >= args.retries:
                break
            # killed by a signal (another job on a shared machine, the OOM killer): carry on from last.pt
            interruptions += 1
            print(f"{arch}: training killed by signal {-proc.returncode}; resuming", flush=True)
            if "--resume" not in train_argv:
                train_argv.append("--resume")
        if proc.returncode != 0:
            print(f"{arch}: training failed (exit code {proc.returncode})", file=sys.stderr)
            return proc.returncode or 1
        result = json.loads((runs_dir / arch / "test_metrics.json").read_text())
        history = json.loads((runs_dir / arch / "history.json").read_text())
        rows.append({**result, "train_argv": train_argv, "interruptions": interruptions,
                     "wall_s": round(time.perf_counter() - started, 1),
                     # epochs' own time, summed over interrupted and resumed parts of the run
                     "train_s": round(sum(h["seconds"] for h in history), 1),
                     # CPU time of the training process (2 threads): not inflated by other work on the machine
                     "cpu_s": round(sum(h["cpu_seconds"] for h in history), 1)
                     if all("cpu_seconds" in h for h in history) else None,
                     "best_valid_acc": max(h["valid_acc"] for h in history),
                     "test_acc_pct": round(100 * result["test_acc"], 1)})
    base = next((r for r in rows if r["arch"] == "course"), rows[0])
    for r in rows:
        r["time_ratio"] = round(r["train_s"] / base["train_s"], 2) if base["train_s"] else None
        r["cpu_ratio"] = round(r["cpu_s"] / base["cpu_s"], 2) if r["cpu_s"] and base["cpu_s"] else None
        r["model"] = {"course": "course CNN (5 conv blocks + dense 1024)", "scratch": "MyModel"}.get(r["arch"],
                                                                                                    r["arch"])
    table = format_table(rows, [("model", "model"), ("img_size", "img px"), ("epochs", "epochs"),
                                ("test_acc_pct", "test acc %"), ("best_epoch", "best epoch"),
                                ("train_s", "train time s"), ("time_ratio", "time vs course"),
                                ("cpu_s", "CPU s"), ("cpu_ratio", "CPU vs course")])
    save_results(args.name, "bench_scratch.py", argv, rows, table, epochs=args.epochs, limit=args.limit,
                 data_dir=args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
