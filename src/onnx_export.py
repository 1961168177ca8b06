"""Export to ONNX: the same predictor as the TorchScript file (preprocessing inside; ``probs``, plus ``embedding``
for models that give one), for ONNX Runtime (``src.backends.OnnxBackend``). Checked against the eager model with
onnxruntime before it gets its name.
"""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import atomic_path, quiet_torchscript
from .predictor import (EXPORT_TOLERANCE, PREDICTOR_FORMAT, EmbeddingPredictor, ExportError, Predictor, _first_line,
                        _for_export, check_inputs, compare_to_eager, resize_and_center_crop)

log = logging.getLogger(__name__)

# ---- ONNX --------------------------------------------------------------------------------------------------------
# The legacy (TorchScript-based) ONNX exporter has no rule for antialiased bilinear resizing, and the dynamo
# exporter needs onnxscript and cannot keep the shape arithmetic symbolic. So the ONNX graph's preprocessing is
# written directly: ONNX Resize (opset 18, antialias=1, half_pixel) with output sizes computed from the input
# shape, and Round (half to even, like Python's round) for the crop offsets: any input size works.

class _ResizeCenterCropOnnx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, resize_size: int, crop_size: int):  # noqa: ARG004 - eager path while tracing
        return resize_and_center_crop(x, resize_size, crop_size)

    @staticmethod
    def symbolic(g, x, resize_size: int, crop_size: int):
        def const(values, dtype=torch.int64):
            return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

        shape = g.op("Shape", x)
        batch_channels = g.op("Slice", shape, const([0]), const([2]))
        hw = g.op("Slice", shape, const([2]), const([4]))
        short = g.op("ReduceMin", hw, keepdims_i=1)
        long = g.op("ReduceMax", hw, keepdims_i=1)
        target = const([resize_size])
        new_long = g.op("Div", g.op("Mul", target, long), short)  # integer division: floor for positives
        new_hw = g.op("Where", g.op("Equal", hw, short), target, new_long)
        empty = const([], torch.float32)
        resized = g.op("Resize", x, empty, empty, g.op("Concat", batch_channels, new_hw, axis_i=0),
                       mode_s="linear", antialias_i=1, coordinate_transformation_mode_s="half_pixel")
        excess = g.op("Cast", g.op("Sub", new_hw, const([crop_size])), to_i=1)  # 1 = FLOAT
        start = g.op("Cast", g.op("Round", g.op("Div", excess, const([2.0, 2.0], torch.float32))), to_i=7)  # INT64
        end = g.op("Add", start, const([crop_size, crop_size]))
        return g.op("Slice", resized, start, end, const([2, 3]))


RESAMPLED_ONNX_TOLERANCE = 1e-3


class _OnnxPredictor(nn.Module):
    """The same computation as :class:`Predictor` for uint8 input, with ONNX-exportable preprocessing; for an
    :class:`EmbeddingPredictor` also its ``probs_and_embedding`` (two outputs from one backbone pass)."""

    def __init__(self, predictor: Predictor, model: nn.Module, with_embedding: bool = False):
        super().__init__()
        self.model = model
        self.with_embedding = bool(with_embedding)
        self.resize_size, self.img_size = predictor.resize_size, predictor.img_size
        self.register_buffer("mean", predictor.mean.clone())
        self.register_buffer("std", predictor.std.clone())

    def forward(self, x: torch.Tensor):
        x = _ResizeCenterCropOnnx.apply(x.float() / 255.0, self.resize_size, self.img_size)
        x = (x - self.mean) / self.std
        if self.with_embedding:
            if callable(getattr(self.model, "probs_and_embedding", None)):  # an ensemble: its own combination
                return self.model.probs_and_embedding(x)
            features = self.model.backbone(x)
            return F.softmax(self.model.head(features), dim=1), F.normalize(features.float(), dim=1)
        return F.softmax(self.model(x), dim=1)


def onnx_metadata(predictor: Predictor) -> dict[str, str]:
    """What the ONNX file carries in ``metadata_props`` (strings): the TorchScript file's attributes."""
    meta = {"class_names": "\n".join(predictor.class_names), "img_size": str(predictor.img_size),
            "resize_size": str(predictor.resize_size), "format": PREDICTOR_FORMAT, "arch": predictor.arch,
            "mean": json.dumps(predictor.mean_values), "std": json.dumps(predictor.std_values)}
    if isinstance(predictor, EmbeddingPredictor):
        meta["embedding_dim"] = str(predictor.embedding_dim)
    return meta


def _trace_to_onnx(wrapper: nn.Module, trace_input: torch.Tensor, with_embedding: bool) -> bytes:
    import warnings  # noqa: PLC0415

    outputs = ["probs", "embedding"] if with_embedding else ["probs"]
    buffer = io.BytesIO()
    with quiet_torchscript(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (trace_input,), buffer, dynamo=False, opset_version=18,
                          input_names=["image"], output_names=outputs,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        **{name: {0: "batch"} for name in outputs}})
    return buffer.getvalue()


def export_onnx(predictor: Predictor, path: str | os.PathLike, example: torch.Tensor | None = None,
                inputs: Sequence[torch.Tensor] | None = None, tolerance: float = EXPORT_TOLERANCE,
                metadata: dict[str, str] | None = None) -> dict:
    """Export ``predictor`` to ONNX (input ``image``: uint8 ``[B, 3, H, W]``, any size; output ``probs``, and
    ``embedding`` (L2-normalised) for an :class:`EmbeddingPredictor`), then run the file with onnxruntime and
    compare both outputs with the eager predictor, like :func:`export_torchscript`.

    The TorchScript file's attributes are stored in the file's metadata (:func:`onnx_metadata`; ``class_names`` one
    per line, ``mean``/``std`` as JSON lists), with ``metadata`` added (``export`` adds ``torchscript_sha256``, the
    TorchScript file it was exported beside, so a stale ``.onnx`` is never taken for it).
    """
    try:
        import onnx  # noqa: PLC0415
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx and onnxruntime packages ({exc}); "
                          f"pip install onnx onnxruntime") from None
    path = Path(path)
    predictor = predictor.eval()
    with_embedding = isinstance(predictor, EmbeddingPredictor)
    inputs = [x for x in (inputs if inputs is not None else check_inputs(predictor.img_size)) if x.dtype == torch.uint8]
    trace_input = inputs[0][:1]
    # The eager model first: tracing follows its Python code. Its scriptable() form, which TorchScript export
    # needs, is a ScriptModule that the ONNX tracer refuses to call into ("not part of the active trace"), so it is
    # only the fallback for a model whose eager code does not trace.
    data, errors = None, []
    for model in (predictor.model, None):
        try:
            model = model if model is not None else _for_export(predictor, example).model
            data = _trace_to_onnx(_OnnxPredictor(predictor, model, with_embedding).eval(), trace_input, with_embedding)
            break
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {_first_line(exc)}")
    if data is None:
        raise ExportError(f"ONNX export failed ({errors[0]})")
    proto = onnx.load_from_string(data)
    for key, value in {**onnx_metadata(predictor), **(metadata or {})}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor, output: int = 0) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"image": x.numpy()})[output])

        worst = 0.0
        for x in inputs:
            # Photos already at the resize size (what tag/serve send) are not resampled: exact within tolerance.
            # ONNX Resize and torch's antialiased interpolate round differently (~2e-5 per pixel), which a deep
            # network turns into ~1e-4 on its outputs: photos that need resampling get RESAMPLED_ONNX_TOLERANCE.
            tol = tolerance if min(x.shape[-2:]) == predictor.resize_size else max(tolerance, RESAMPLED_ONNX_TOLERANCE)
            worst = max(worst, compare_to_eager(predictor, run, [x], tol, what=f"{path} (onnxruntime)"))
            if with_embedding:
                worst = max(worst, compare_to_eager(lambda t: predictor.probs_and_embedding(t)[1],
                                                    lambda t: run(t, 1), [x], tol,
                                                    what=f"{path} (onnxruntime, embedding)"))
    return {"path": str(path), "max_abs_diff": worst, "n_inputs": len(inputs)}
