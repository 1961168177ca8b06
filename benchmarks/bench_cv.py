"""Which transfer model or ensemble is most accurate, judged on the training photos only (benchmarks/cv_plan.md).

5-fold cross-validation (``src.crossval``): every training photo is predicted by members that never saw it, every
member trained with the ``python -m src train`` recipe of its arch. Prints the candidates' out-of-fold accuracy
and the members', writes ``benchmarks/results/bench_cv.json``. The per-fold predictions stay in ``--out``, so a
second run (or one after an interruption) only computes what is missing.

    python benchmarks/bench_cv.py --data-dir ../shared/data/landmarks13
"""
from __future__ import annotations

import argparse
import time

from common import format_table, save_results

from src.crossval import cross_validate, parse_candidate
from src.data import load_landmark_data

# The candidates fixed in benchmarks/cv_plan.md before any of them ran.
PLANNED = [
    "lite0=efficientnet_lite0:42",
    "lite0x3=efficientnet_lite0:42+efficientnet_lite0:1+efficientnet_lite0:2",
    "lite2=efficientnet_lite2:42",
    "lite2x3=efficientnet_lite2:42+efficientnet_lite2:1+efficientnet_lite2:2",
    "lite2x5=efficientnet_lite2:42+efficientnet_lite2:1+efficientnet_lite2:2+efficientnet_lite2:3+efficientnet_lite2:4",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/landmarks13")
    parser.add_argument("--candidate", action="append", default=None, help="default: the planned five")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="every member (default: its arch's recipe)")
    parser.add_argument("--out", default="runs/cv_landmarks13")
    parser.add_argument("--name", default="bench_cv")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = load_landmark_data(args.data_dir, valid_size=0.0, seed=42)
    candidates = [parse_candidate(c) for c in (args.candidate or PLANNED)]
    overrides = {"epochs": args.epochs} if args.epochs else {}
    result = cross_validate(data, candidates, args.out, n_folds=args.folds, overrides=overrides)
    n = result["n_photos"]
    rows = [{"candidate": c["candidate"], "members": len(c["members"]), "gmacs": c["gmacs_per_photo"],
             "accuracy": f"{c['accuracy']:.1%}", "correct": f"{c['correct']}/{n}", "top5": f"{c['top5']:.1%}",
             "log_loss": f"{c['log_loss']:.3f}",
             "folds": " / ".join(f"{a:.1%}" for a in c["fold_accuracy"])} for c in result["candidates"]]
    table = format_table(rows, [("candidate", "candidate"), ("members", "models"), ("gmacs", "GMACs per photo"),
                                ("accuracy", "CV accuracy"), ("correct", "photos right"), ("top5", "CV top-5"),
                                ("log_loss", "CV log-loss"),
                                ("folds", "per fold")])
    member_rows = [{"member": m["member"], "accuracy": f"{m['accuracy']:.1%}", "correct": f"{m['correct']}/{n}",
                    "seconds": m["train_seconds"]} for m in result["members"]]
    members_table = format_table(member_rows, [("member", "member (arch:seed)"), ("accuracy", "CV accuracy"),
                                               ("correct", "photos right"),
                                               ("seconds", f"training s ({args.folds} folds, on cached features)")])
    print("\n" + members_table)
    save_results(args.name, "bench_cv.py", argv, rows, table, members=result["members"],
                 members_table=members_table, chosen=result["chosen"], n_photos=n, n_folds=result["n_folds"],
                 fold_sizes=result["fold_sizes"], data=str(data.root),
                 rule="highest out-of-fold accuracy; a tie goes to fewer multiply-adds (benchmarks/cv_plan.md)",
                 wall_seconds=round(time.perf_counter() - started, 1))
    print(f"\nChosen by the planned rule: {result['chosen']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
