"""Exported predictor: single-image latency, and ``tag`` throughput against the course app's way, in one run.

    python benchmarks/bench_predict.py --threads 2                      # MyModel, random weights
    python benchmarks/bench_predict.py --checkpoint runs/scratch/best.pt --threads 2

The model is exported exactly as ``python -m src export`` does (TorchScript, reloaded). Without ``--checkpoint``
it is ``MyModel`` (or ``--arch``) with random weights: timing does not depend on the weights' values.

Photos: ``--images DIR`` (searched recursively), else ``../shared/data/landmarks13``: its 204 test photos plus
training photos up to ``--n`` (default 300), copied into a temporary folder (real web photos: JPEG, PNG, WEBP, GIF).

* **course**: the course app's way - for each file ``PIL.Image.open``, ``.convert("RGB")`` (the course omits it and
  fails on RGBA/GIF files), ``transforms.ToTensor()``, ``unsqueeze(0)``, forward one photo at a time.
* **tag**: ``src.tagging.tag_folder`` - what ``python -m src tag DIR --model FILE`` runs once it has loaded the
  file optimised for the CPU (frozen, batch norm folded, oneDNN; that loading is timed separately): photos decoded
  and resized in worker threads while small batches go through the model in the main thread, CSV written.

Single-image latency is that of the exported file as loaded (``torch.jit.load``), as an app calling it would see.
Each method runs ``--repeat`` times, alternating, and its median wall time is reported, with the CPU time all
its threads used (``time.process_time``): on a machine shared with other jobs wall time depends on their load,
CPU time per photo much less. Latency: median of
``--runs`` forward passes of one photo (uint8 tensor in, probabilities out) after ``--warmup`` passes; and the same
for file -> probabilities (decode included). Results: table on stdout, ``benchmarks/results/NAME.json``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, format_table, machine
from PIL import Image
from torchvision import transforms

from src.data_config import resize_size_for
from src.helpers import atomic_write_json, seed_everything
from src.images import is_candidate_image
from src.export import predictor_from_checkpoint
from src.predictor import Predictor, export_torchscript, load_exported, load_image_tensor
from src.pipeline import DEFAULT_BATCH_SIZE
from src.tagging import list_photos, tag_folder

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "landmarks13"


def pick_photos(images: str | None, n: int) -> list[Path]:
    if images:
        return list_photos(Path(images))[: n if n > 0 else None]
    if not (SHARED / "test").is_dir():
        sys.exit(f"no photos: pass --images DIR ({SHARED} is not here)")
    test = list_photos(SHARED / "test")
    train = list_photos(SHARED / "train")
    return (test + train)[: max(n, 1)]


def build_predictor(args) -> Predictor:
    if args.checkpoint:
        return predictor_from_checkpoint(args.checkpoint)
    from src.model import create_model  # noqa: PLC0415

    classes = [f"{i:02d}.Class_{i}" for i in range(args.num_classes)]
    kwargs = {} if args.arch in ("scratch", "course") else {"weights": None}
    if args.arch == "course":
        kwargs["img_size"] = args.img_size
    model = create_model(args.arch, args.num_classes, **kwargs)
    return Predictor(model, classes, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], args.img_size, arch=args.arch)


def course_way(model, paths: list[Path]) -> tuple[int, int]:
    """The course app: open, ToTensor, one forward per photo. Returns (succeeded, failed)."""
    to_tensor = transforms.ToTensor()
    ok = failed = 0
    with torch.no_grad():
        for path in paths:
            try:
                img = Image.open(path).convert("RGB")
                model(to_tensor(img).unsqueeze_(0))
                ok += 1
            except Exception:  # the course app would crash; we count and go on
                failed += 1
    return ok, failed


def median_ms(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="training checkpoint to export (default: random weights)")
    parser.add_argument("--arch", default="scratch", help="model without --checkpoint (default scratch = MyModel)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=50)
    parser.add_argument("--images", default=None, help="folder of photos (default: ../shared/data/landmarks13)")
    parser.add_argument("--n", type=int, default=300, help="number of photos (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; the target machine has 2 cores")
    parser.add_argument("--workers", type=int, default=None, help="tag's decoding threads (default: as tag)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50, help="latency: timed passes")
    parser.add_argument("--warmup", type=int, default=10, help="latency: untimed passes first")
    parser.add_argument("--name", default="bench_predict", help="results/NAME.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    seed_everything(0)
    load_before = os.getloadavg()
    predictor = build_predictor(args)
    paths = pick_photos(args.images, args.n)
    with tempfile.TemporaryDirectory(prefix="bench_predict.") as tmp:
        tmp = Path(tmp)
        exported = tmp / "exported.pt"
        export_torchscript(predictor, exported)
        model = load_exported(exported)
        folder = tmp / "photos"
        folder.mkdir()
        for i, p in enumerate(paths):
            if is_candidate_image(p.name):
                shutil.copyfile(p, folder / f"{i:04d}_{p.name}")
        photos = list_photos(folder)
        print(f"{len(photos)} photos, model {predictor.arch} at {predictor.img_size} px "
              f"({'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}), "
              f"{args.threads} torch threads", flush=True)

        # warm both paths up (TorchScript's profiling runs, page cache)
        course_way(model, photos[:5])
        # tag loads the file optimised for the CPU (`python -m src tag --model FILE`); loading is timed on its own,
        # and both methods are then timed with their model in memory
        start = time.perf_counter()
        optimized = load_exported(exported, optimize=True)
        load_optimized_s = time.perf_counter() - start
        tag_folder(folder, optimized, tmp / "warm.csv", progress=False, batch_size=args.batch_size,
                   workers=args.workers)

        walls: dict[str, list[float]] = {"course": [], "tag": []}
        cpus: dict[str, list[float]] = {"course": [], "tag": []}  # CPU seconds of all our threads: load-proof
        counts: dict[str, tuple[int, int]] = {}
        for r in range(args.repeat):
            for method in (("course", "tag") if r % 2 == 0 else ("tag", "course")):
                start, cpu_start = time.perf_counter(), time.process_time()
                if method == "course":
                    counts["course"] = course_way(model, photos)
                else:
                    summary = tag_folder(folder, optimized, tmp / f"tags_{r}.csv", progress=False, redo=True,
                                         batch_size=args.batch_size, workers=args.workers)
                    counts["tag"] = (summary.tagged, summary.errors)
                walls[method].append(time.perf_counter() - start)
                cpus[method].append(time.process_time() - cpu_start)
                print(f"  run {r + 1} {method}: {walls[method][-1]:.2f} s wall, {cpus[method][-1]:.2f} s CPU",
                      flush=True)

        # single-image latency: a typical photo, through the file as loaded and as `predict` loads it (optimised)
        sample = photos[0]
        image = load_image_tensor(sample, int(model.resize_size))[None]
        latency = {}
        with torch.no_grad():
            for label, module in (("loaded", model), ("optimized", optimized)):
                latency[f"forward_ms_{label}"] = round(median_ms(lambda: module(image), args.warmup, args.runs), 2)
                latency[f"file_to_probs_ms_{label}"] = round(median_ms(
                    lambda: module(load_image_tensor(sample, int(module.resize_size))[None]), args.warmup, args.runs),
                    2)

    course_s = statistics.median(walls["course"])
    course_cpu = statistics.median(cpus["course"])
    rows = []
    for method, label in (("course", "course way (open, ToTensor, one-by-one forward)"),
                          ("tag", f"tag (threaded decode, batches of {args.batch_size})")):
        wall, cpu = statistics.median(walls[method]), statistics.median(cpus[method])
        rows.append({"method": label, "images": len(photos), "ok": counts[method][0], "failed": counts[method][1],
                     "wall_s": round(wall, 2), "images_per_s": round(len(photos) / wall, 1),
                     "ratio": round(course_s / wall, 2), "cpu_ms_per_image": round(1000 * cpu / len(photos), 1),
                     "cpu_ratio": round(course_cpu / cpu, 2)})
    print()
    print(format_table(rows, [("method", "method"), ("images", "images"), ("failed", "failed"),
                              ("wall_s", "wall s (median)"), ("images_per_s", "images/s"),
                              ("ratio", "vs course"), ("cpu_ms_per_image", "CPU ms/image"),
                              ("cpu_ratio", "CPU vs course")]))
    print(f"\nLoading the exported file optimised for the CPU (once per tag run): {load_optimized_s:.2f} s")
    print(f"\nLoad average (1, 5, 15 min) before: {load_before}, after: {os.getloadavg()} on {os.cpu_count()} cores")
    print(f"\nSingle-image latency (median of {args.runs} after {args.warmup} warm-up), {sample.name} "
          f"{tuple(image.shape[2:])}:")
    for label in ("loaded", "optimized"):
        print(f"  exported file {label:9s}: forward {latency['forward_ms_' + label]:.1f} ms; "
              f"file -> probabilities {latency['file_to_probs_ms_' + label]:.1f} ms")
    result = {"command": "python benchmarks/bench_predict.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "load_average_before_after": [round(x, 2) for x in load_before + os.getloadavg()],
              "arch": predictor.arch, "img_size": predictor.img_size,
              "resize_size": resize_size_for(predictor.img_size), "weights": args.checkpoint or "random",
              "threads": args.threads, "load_optimized_s": round(load_optimized_s, 2), "repeat": args.repeat,
              "walls_s": walls, "cpu_s": cpus, "throughput": rows,
              "latency": {"photo": sample.name, "shape": list(image.shape), "runs": args.runs, "warmup": args.warmup,
                          **latency}}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS_DIR / f"{args.name}.json", result)
    print(f"-> {RESULTS_DIR / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
