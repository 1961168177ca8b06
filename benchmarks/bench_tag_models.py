"""``python -m src tag`` end to end with different exported models on the same photos, as a user runs it (one
process per run, the default backend), alternating the models round by round; photos/s and the ratio to the first
model. Made to price an ensemble of EfficientNet-Lite0 members that share their frozen ImageNet stages (the
exported graph computes those stages once: the frozen copies are identical constants, which TorchScript's freezing
and ONNX Runtime merge).

    python benchmarks/bench_tag_models.py --models runs/base/transfer_exported.pt runs/ens42/exported.pt

Photos: ``--photos`` folder (default: the landmarks13 test photos + the everyday photos, 588 files) copied once to a
temporary folder (tag writes nothing into it; the CSV goes to a temporary file). Writes
``benchmarks/results/bench_tag_models.json``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, format_table, save_results

from src.images import is_candidate_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="exported models; the first is the baseline")
    parser.add_argument("--photos", nargs="+", default=[str(SHARED_DATA / "landmarks13" / "test"),
                                                         str(SHARED_DATA / "everyday")])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="bench_tag_models")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    times: dict[str, list[float]] = {m: [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        n = 0
        for source in map(Path, args.photos):
            for path in sorted(source.rglob("*")):
                if path.is_file() and is_candidate_image(path.name):
                    target = folder / source.name / path.relative_to(source)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target)
                    n += 1
        for r in range(args.rounds):
            for model in args.models:
                out = Path(tmp) / f"tags_{r}.csv"
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "src", "tag", str(folder), "--model", model, "--out", str(out),
                                "--no-time"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[model].append(time.perf_counter() - started)
                out.unlink()
                print(f"round {r + 1}: {model} {times[model][-1]:.1f} s", flush=True)
    base = statistics.median(times[args.models[0]])
    rows = [{"model": m, "photos": n, "seconds": f"{statistics.median(t):.1f}",
             "rate": f"{n / statistics.median(t):.1f}", "ratio": f"{base / statistics.median(t):.2f}x",
             "all": ", ".join(f"{x:.1f}" for x in t)} for m, t in times.items()]
    table = format_table(rows, [("model", "model"), ("photos", "photos"), ("seconds", "median s"),
                                ("rate", "photos/s"), ("ratio", "speed vs the first"), ("all", "each round, s")])
    table += f"\n\nLoad average at the start {load[0]:.2f}"
    save_results(args.name, "bench_tag_models.py", argv, rows, table, load_average=list(load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
