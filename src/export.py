"""``python -m src export``: a training checkpoint (or several: their ensemble) -> one self-contained TorchScript
file and the ONNX file beside it (unless ``--no-onnx``), then its landmark index and calibrated threshold beside
it (``src.calibrate``).

Export does not need the training engine: checkpoints are read by ``src.checkpoint``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from .calibrate import add_calibration_arguments, calibrate_model, describe_calibration, negatives_from_args
from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint, saved_split
from .helpers import ensure_writable_dir, file_sha256
from .onnx_export import export_onnx
from .predictor import (
    SCRATCH_EXPORT_NAME,
    TRANSFER_EXPORT_NAME,
    Ensemble,
    Predictor,
    default_export_path,
    export_torchscript,
    make_predictor,
)

# --------------------------------------------------------------------------------------------------------------
# Command line: python -m src export --checkpoint PATH [--out FILE.pt] [--onnx]
# --------------------------------------------------------------------------------------------------------------

def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, nargs="+", metavar="PATH",
                        help="training checkpoint (e.g. runs/scratch/best.pt); several: export their ensemble (the "
                             "average of their probabilities)")
    parser.add_argument("--out", default=None,
                        help=f"exported file (default: checkpoints/{SCRATCH_EXPORT_NAME} for a from-scratch model, "
                             f"checkpoints/{TRANSFER_EXPORT_NAME} otherwise)")
    onnx = parser.add_mutually_exclusive_group()
    onnx.add_argument("--onnx", action="store_true", default=None,
                      help="write the ONNX file beside it (same name, .onnx; the default when onnxruntime is "
                           "installed: the faster backend on a CPU, see docs/serve.md); fail if it cannot be written")
    onnx.add_argument("--no-onnx", dest="onnx", action="store_false", help="TorchScript file only")
    parser.add_argument("--data-dir", default=None,
                        help="data set for the landmark index and calibration (default: the one it was trained on)")
    parser.add_argument("--no-index", action="store_true",
                        help="do not build the landmark index / calibrate (make it later with python -m src calibrate)")
    add_calibration_arguments(parser)


def predictor_from_checkpoint(checkpoint_path: str | os.PathLike) -> Predictor:
    """A :class:`Predictor` around the model of a training checkpoint (``src.train`` format)."""
    return predictor_from_checkpoints([checkpoint_path])


def predictor_from_checkpoints(checkpoint_paths: Sequence[str | os.PathLike]) -> Predictor:
    """A :class:`Predictor` around one checkpoint's model, or around the :class:`Ensemble` of several.

    Ensemble members must share classes (in the same order), input normalisation and input size: the exported
    file runs one preprocessing for all of them. A mismatch raises ``CheckpointError`` naming the file.
    """
    paths = list(checkpoint_paths)
    if not paths:
        raise ValueError("no checkpoint given")
    models, archs, first = [], [], None
    for path in paths:
        ckpt = load_checkpoint(path)
        archs.append(str(ckpt.get("arch", "")))
        try:
            models.append(build_model_from_checkpoint(ckpt))
        except CheckpointError as exc:  # name the file: the checkpoint itself does not know its path
            raise CheckpointError(f"{path}: {exc}") from None
        if first is None:
            first = ckpt
            continue
        for key in ("class_names", "mean", "std", "img_size"):
            if ckpt[key] != first[key]:
                raise CheckpointError(f"{path}: its {key} differs from {paths[0]}'s, so the two cannot be "
                                      f"ensembled (members share one preprocessing and one list of classes)")
    arch = archs[0] if len(paths) == 1 else "ensemble:" + "+".join(archs)
    model = models[0] if len(models) == 1 else Ensemble(models)
    return make_predictor(model, first["class_names"], first["mean"], first["std"], first["img_size"], arch=arch)


def export_main(args: argparse.Namespace) -> int:
    predictor = predictor_from_checkpoints(args.checkpoint)
    out = Path(args.out) if args.out else default_export_path(predictor.arch)
    ensure_writable_dir(out.parent)  # before scripting and checking, which take a while for big models
    report = export_torchscript(predictor, out)
    print(f"Exported {out} ({predictor.arch or 'model'}, {len(predictor.class_names)} classes, "
          f"{predictor.img_size} px): reloaded and checked against the eager model on {report['n_inputs']} inputs, "
          f"max |difference| {report['max_abs_diff']:.1e}")
    if args.onnx is not False:
        export_onnx_beside(predictor, out, required=bool(args.onnx))
    if not args.no_index:
        build_export_index(out, args)
    return 0


def export_onnx_beside(predictor: Predictor, out: Path, required: bool = False) -> Path | None:
    """The ONNX file beside the TorchScript file ``out``, recording ``out``'s hash (so ``--backend auto`` never
    takes a stale one). Unless ``required`` (``--onnx``), a missing onnxruntime or a model ONNX cannot express
    is one line and the TorchScript file alone is used; with ``required`` it is an error."""
    from .predictor import ExportError  # noqa: PLC0415

    onnx_path = out.with_suffix(".onnx")
    try:
        report = export_onnx(predictor, onnx_path, metadata={"torchscript_sha256": file_sha256(out)})
    except ExportError as exc:
        if required:
            raise
        print(f"note: no ONNX file ({exc}); {out} runs with the torchscript backend")
        return None
    print(f"Exported {onnx_path}: checked with onnxruntime on {report['n_inputs']} inputs, "
          f"max |difference| {report['max_abs_diff']:.1e}")
    return onnx_path


def build_export_index(out: Path, args: argparse.Namespace) -> None:
    """The exported file's landmark index and calibration, from the data set its (first) checkpoint names.

    Failing here does not undo the export: the file works with the uncalibrated fallback threshold, and one line
    says how to calibrate it.
    """
    checkpoints = [load_checkpoint(path) for path in args.checkpoint]
    saved = checkpoints[0].get("args") or {}
    data_dir = args.data_dir or saved.get("data_dir")
    splits = [saved_split(ckpt) for ckpt in checkpoints]
    valid_size = args.valid_size if args.valid_size is not None else splits[0][0]
    seed = args.seed if args.seed is not None else splits[0][1]
    if args.valid_size is None and args.seed is None and len(set(splits)) > 1 and valid_size > 0:
        # Each member held out other photos: every "validation" photo trained some member, and calibrating on
        # them would put the threshold far too low (as for a model refit on every photo).
        print(f"warning: the ensemble's members were trained on different training/validation splits "
              f"({', '.join(f'--valid-size {v:g} --split-seed {s}' for v, s in splits)}): no photo is held out "
              f"from all of them, so the threshold cannot be calibrated on its landmarks; train the members with "
              f"one --split-seed and different --seed")
        valid_size = 0.0
    try:
        path, index = calibrate_model(out, data_dir, negatives_from_args(args.negatives), valid_size, seed,
                                      args.max_false_rate)
    except Exception as exc:  # the export itself is done and checked
        print(f"warning: no landmark index for {out} ({' '.join(str(exc).split())[:300]}); make it with: python -m "
              f"src calibrate --model {out} --data-dir DIR")
        return
    print(describe_calibration(path, index))
