"""TorchScript against ONNX Runtime (and ONNX Runtime int8): forward-pass throughput, top-1 on the landmarks13 test
photos, and ``tag``'s pipeline throughput as a fraction of the forward pass alone, in one run.

    python benchmarks/bench_backends.py --model runs/serve_bench/transfer_exported.pt --threads 2

``--model`` is an exported TorchScript file with the ``.onnx`` exported beside it (``python -m src export
--checkpoint runs/transfer/best.pt --out FILE.pt --onnx``). int8: ONNX Runtime's static quantisation (QDQ,
per-channel weights, Conv/MatMul/Gemm only; the preprocessing stays float) calibrated on ``--calib`` training photos,
written to ``FILE.int8.onnx``.

Each backend is measured in processes of its own (``--rounds`` of them, alternating), as a user runs one.

* **forward**: the model alone on photos decoded beforehand (uint8 ``[B, 3, R, R]``, what ``tag``/``serve`` give it),
  batches of ``--batch-size``, ``--threads`` threads; photos/s, median of ``--repeat`` alternating runs.
* **top-1**: arg-max of each backend's probabilities on the 204 test photos.
* **runners**: ``src.backends.parallel_runners`` (2 ONNX Runtime sessions of 1 thread on a 2-thread CPU), fed in
  parallel, forward alone.
* **pipeline**: ``src.pipeline.iter_predictions`` (files -> decoded batches -> backend: what ``tag`` and
  ``evaluate`` run) on the same photos; photos/s and its ratio to the same backend's forward alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import format_table, parallel_rate, save_results

from src.backends import OnnxBackend, TorchScriptBackend, parallel_runners
from src.pipeline import decode_for_batch, iter_predictions

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "landmarks13"


def labelled(split_dir: Path) -> list[tuple[Path, str]]:
    return sorted((p, p.parent.name) for p in split_dir.rglob("*") if p.is_file())


def quantize_int8(onnx_path: Path, out: Path, photos: list[torch.Tensor]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": p[None].numpy()} for p in photos])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return out


def forward_rate(backend, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    count = 0
    for batch in batches:
        backend(batch)
        count += len(batch)
    return count / (time.perf_counter() - start)


def measure_one(args) -> dict:
    """In a process of its own (``--only NAME``): one backend's top-1, forward-alone and pipeline rates. Backends
    are never measured in the same process: once ONNX Runtime has run, PyTorch's forward pass in that process is
    several times slower (their thread pools fight), which no real user of one backend sees."""
    torch.set_num_threads(args.threads)
    model = Path(args.model)
    test = labelled(Path(args.data_dir) / "test")
    if args.only == "torchscript":
        backend = TorchScriptBackend.load(model)
    else:
        backend = OnnxBackend(model.with_suffix(".int8.onnx" if args.only == "onnx-int8" else ".onnx"),
                              threads=args.threads)
    images = [decode_for_batch(p, backend.resize_size, backend.img_size) for p, _ in test]
    batches = [torch.stack(images[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)]
    probs = torch.cat([backend(b)[0] for b in batches])  # top-1, and warm-up (TorchScript specialises first)
    for b in batches:
        backend(b)
    hits = sum(backend.class_names[int(i)] == label for i, (_, label) in zip(probs.argmax(1), test))
    forward, pipeline, forward_parallel, pipeline_single = [], [], [], []
    paths = [p for p, _ in test]
    runners = parallel_runners(backend)
    for r in runners:
        r(batches[0])
    for _ in range(args.repeat):
        forward.append(forward_rate(backend, batches))
        forward_parallel.append(parallel_rate(runners, batches) if len(runners) > 1 else forward[-1])
        for parallel, out in ((True, pipeline), (False, pipeline_single)):
            start = time.perf_counter()
            for _ in iter_predictions(backend, paths, batch_size=args.batch_size, progress=False, parallel=parallel):
                pass
            out.append(len(paths) / (time.perf_counter() - start))
    return {"hits": int(hits), "photos": len(test), "forward": forward, "pipeline": pipeline,
            "forward_parallel": forward_parallel, "pipeline_single": pipeline_single, "runners": len(runners)}


def micro(args) -> int:
    """``--micro``: what the docs' explanations rest on, in one process: ONNX Runtime's forward rate by batch size,
    decoding alone (one thread), and PyTorch's against NumPy's copy of a photo-sized uint8 tensor and of a batch."""
    import numpy as np

    torch.set_num_threads(args.threads)
    model = Path(args.model)
    backend = OnnxBackend(model.with_suffix(".onnx"), threads=args.threads)
    paths = [p for p, _ in labelled(Path(args.data_dir) / "test")]
    start = time.perf_counter()
    images = [decode_for_batch(p, backend.resize_size, backend.img_size) for p in paths]
    decode_rate = len(paths) / (time.perf_counter() - start)
    sizes = (1, 2, 4, 8, 16)
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(3):
        for b in sizes:
            batches = [torch.stack(images[i:i + b]) for i in range(0, 96, b)]
            backend(batches[0])
            rates[b].append(forward_rate(backend, batches))

    def ms(fn, n: int = 100) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return 1000 * (time.perf_counter() - start) / n

    hwc = np.ascontiguousarray(images[0].numpy().transpose(1, 2, 0))
    eight = images[:8]
    copies = {"torch permute().contiguous() of a photo":
              ms(lambda: torch.from_numpy(hwc).permute(2, 0, 1).contiguous()),
              "numpy transpose copy of a photo": ms(lambda: np.ascontiguousarray(hwc.transpose(2, 0, 1))),
              "torch.stack of 8 photos": ms(lambda: torch.stack(eight)),
              "numpy stack of 8 photos": ms(lambda: np.stack([x.numpy() for x in eight]))}
    rows = [{"batch": b, "photos_s": round(statistics.median(rates[b]), 1)} for b in sizes]
    table = format_table(rows, [("batch", "batch size"), ("photos_s", "ONNX Runtime forward, photos/s")])
    table += f"\n\ndecoding alone (decode_for_batch, one thread): {decode_rate:.0f} photos/s\n"
    table += "\n".join(f"{name}: {value:.2f} ms" for name, value in copies.items())
    save_results(args.name, "bench_backends.py", None, rows, table, model=str(model), threads=args.threads,
                 decode_photos_s=round(decode_rate, 1), copies_ms={k: round(v, 3) for k, v in copies.items()},
                 raw=rates, load=os.getloadavg()[0])
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/serve_bench/transfer_exported.pt")
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="processes per backend, alternating")
    parser.add_argument("--repeat", type=int, default=2, help="measurements per process")
    parser.add_argument("--calib", type=int, default=64, help="training photos for int8 calibration")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--name", default="bench_backends")
    parser.add_argument("--micro", action="store_true",
                        help="only: ONNX forward by batch size, decoding alone, torch vs NumPy copies")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.micro:
        return micro(args)
    if args.only:
        print("RESULT " + json.dumps(measure_one(args)))
        return 0
    load_before = os.getloadavg()[0]
    model = Path(args.model)
    data = Path(args.data_dir)
    if not (data / "test").is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return 1
    names = ["torchscript", "onnx"]
    if not args.no_int8:
        train = labelled(data / "train")
        calib_paths = train[:: max(1, len(train) // args.calib)][: args.calib]
        size = OnnxBackend(model.with_suffix(".onnx")).resize_size
        crop = OnnxBackend(model.with_suffix(".onnx")).img_size
        start = time.perf_counter()
        quantize_int8(model.with_suffix(".onnx"), model.with_suffix(".int8.onnx"),
                      [decode_for_batch(p, size, crop) for p, _ in calib_paths])
        print(f"quantised to {model.with_suffix('.int8.onnx')} in {time.perf_counter() - start:.0f} s")
        names.append("onnx-int8")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.rounds):  # alternating processes: a change in the machine's load hits every backend alike
        for name in names:
            cmd = [sys.executable, __file__, "--only", name, "--model", str(model), "--data-dir", str(data),
                   "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--repeat", str(args.repeat)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.split("RESULT ", 1)[1]))
            print(name, runs[name][-1]["forward"], runs[name][-1]["pipeline"], flush=True)
    files = {"torchscript": model, "onnx": model.with_suffix(".onnx"), "onnx-int8": model.with_suffix(".int8.onnx")}
    rows = []
    base = statistics.median([r for run in runs["torchscript"] for r in run["forward"]])
    for name in names:
        def median(key):
            return statistics.median([r for run in runs[name] for r in run[key]])
        forward, pipeline = median("forward"), median("pipeline")
        forward_parallel, single = median("forward_parallel"), median("pipeline_single")
        first = runs[name][0]
        rows.append({"backend": name, "forward_photos_s": round(forward, 1), "vs_torchscript": f"{forward / base:.2f}x",
                     "forward_parallel_photos_s": round(forward_parallel, 1), "runners": first["runners"],
                     "top1": f"{first['hits'] / first['photos']:.1%}", "hits": first["hits"],
                     "pipeline_single_photos_s": round(single, 1), "single_vs_forward": f"{single / forward:.2f}x",
                     "pipeline_photos_s": round(pipeline, 1), "pipeline_vs_forward": f"{pipeline / forward:.2f}x",
                     "pipeline_vs_best": f"{pipeline / max(forward, forward_parallel):.2f}x",
                     "file_mb": round(os.path.getsize(files[name]) / 2**20, 1)})
    photos = runs["onnx"][0]["photos"]
    table = format_table(rows, [
        ("backend", "backend"), ("forward_photos_s", f"forward alone, photos/s (batch {args.batch_size})"),
        ("vs_torchscript", "vs TorchScript"), ("top1", f"top-1 ({photos} test photos)"),
        ("runners", "runners"), ("forward_parallel_photos_s", "forward alone on the runners, photos/s"),
        ("pipeline_single_photos_s", "tag pipeline, one runner, photos/s"), ("single_vs_forward", "/ forward alone"),
        ("pipeline_photos_s", "tag pipeline (default), photos/s"), ("pipeline_vs_forward", "/ forward alone"),
        ("pipeline_vs_best", "/ the faster forward alone"), ("file_mb", "file MB")])
    save_results(args.name, "bench_backends.py", argv, rows, table, model=str(model), threads=args.threads,
                 batch_size=args.batch_size, photos=photos, rounds=args.rounds, repeat=args.repeat,
                 load_before=load_before, load_after=os.getloadavg()[0], raw=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
