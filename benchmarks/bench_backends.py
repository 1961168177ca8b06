"""TorchScript against ONNX Runtime (and ONNX Runtime int8): forward-pass throughput, top-1 on the landmarks13 test
photos, and ``tag``'s pipeline throughput as a fraction of the forward pass alone, in one run.

    python benchmarks/bench_backends.py --model runs/serve_bench/transfer_exported.pt --threads 2

``--model`` is an exported TorchScript file with the ``.onnx`` exported beside it (``python -m src export
--checkpoint runs/transfer/best.pt --out FILE.pt --onnx``). int8: ONNX Runtime's static quantisation (QDQ,
per-channel weights, Conv/MatMul/Gemm only; the preprocessing stays float) calibrated on ``--calib`` training photos,
written to ``FILE.int8.onnx``.

* **forward**: the model alone on photos decoded beforehand (uint8 ``[B, 3, R, R]``, what ``tag``/``serve`` give it),
  batches of ``--batch-size``, ``--threads`` threads; photos/s, median of ``--repeat`` alternating runs.
* **top-1**: arg-max of each backend's probabilities on the 204 test photos.
* **pipeline**: ``src.pipeline.iter_predictions`` (files -> decoded batches -> backend: what ``tag`` and
  ``evaluate`` run) on the same photos; photos/s and its ratio to the same backend's forward alone.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import format_table, save_results

from src.backends import OnnxBackend, TorchScriptBackend
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/serve_bench/transfer_exported.pt")
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calib", type=int, default=64, help="training photos for int8 calibration")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--name", default="bench_backends")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    model = Path(args.model)
    data = Path(args.data_dir)
    if not (data / "test").is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return 1
    test = labelled(data / "test")
    load = time.perf_counter()
    backends = {"torchscript": TorchScriptBackend.load(model),
                "onnx": OnnxBackend(model.with_suffix(".onnx"), threads=args.threads)}
    print(f"loaded in {time.perf_counter() - load:.1f} s")
    size, crop = backends["onnx"].resize_size, backends["onnx"].img_size
    images = [decode_for_batch(p, size, crop) for p, _ in test]
    if not args.no_int8:
        calib_paths = labelled(data / "train")[:: max(1, len(labelled(data / "train")) // args.calib)][: args.calib]
        int8 = model.with_suffix(".int8.onnx")
        start = time.perf_counter()
        quantize_int8(model.with_suffix(".onnx"), int8, [decode_for_batch(p, size, crop) for p, _ in calib_paths])
        print(f"quantised to {int8} in {time.perf_counter() - start:.0f} s")
        backends["onnx-int8"] = OnnxBackend(int8, threads=args.threads)
    batches = [torch.stack(images[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)]
    classes = backends["onnx"].class_names
    rows = {name: {"backend": name, "file_mb": round(os.path.getsize(
        model if name == "torchscript" else model.with_suffix(".int8.onnx" if name == "onnx-int8" else ".onnx"))
        / 2**20, 1)} for name in backends}
    for name, backend in backends.items():  # top-1, and warm-up (TorchScript specialises on its first calls)
        probs = torch.cat([backend(b)[0] for b in batches])
        for b in batches:
            backend(b)
        hits = sum(classes[int(i)] == label for i, (_, label) in zip(probs.argmax(1), test))
        rows[name]["top1"] = f"{hits / len(test):.1%}"
        rows[name]["hits"] = int(hits)
    rates: dict[str, list[float]] = {n: [] for n in backends}
    pipe: dict[str, list[float]] = {n: [] for n in backends}
    paths = [p for p, _ in test]
    for _ in range(args.repeat):  # alternating, so a change in the machine's load hits every backend alike
        for name, backend in backends.items():
            rates[name].append(forward_rate(backend, batches))
            start = time.perf_counter()
            for _ in iter_predictions(backend, paths, batch_size=args.batch_size, progress=False):
                pass
            pipe[name].append(len(paths) / (time.perf_counter() - start))
    base = statistics.median(rates["torchscript"])
    for name in backends:
        forward, pipeline = statistics.median(rates[name]), statistics.median(pipe[name])
        rows[name].update(forward_photos_s=round(forward, 1), vs_torchscript=f"{forward / base:.2f}x",
                          pipeline_photos_s=round(pipeline, 1), pipeline_vs_forward=f"{pipeline / forward:.2f}x")
    table = format_table(list(rows.values()), [
        ("backend", "backend"), ("forward_photos_s", f"forward alone, photos/s (batch {args.batch_size})"),
        ("vs_torchscript", "vs TorchScript"), ("top1", f"top-1 ({len(test)} test photos)"),
        ("pipeline_photos_s", "tag pipeline, photos/s"), ("pipeline_vs_forward", "pipeline / forward alone"),
        ("file_mb", "file MB")])
    save_results(args.name, "bench_backends.py", argv, list(rows.values()), table, model=str(model),
                 threads=args.threads, batch_size=args.batch_size, photos=len(test), repeat=args.repeat,
                 load_before=load_before, load_after=os.getloadavg()[0], raw_forward=rates, raw_pipeline=pipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
