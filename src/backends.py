"""Inference backends: what runs an exported model on a batch of photos.

Every backend takes a batch of photos as uint8 ``[B, 3, R, R]`` (R = ``resize_size``, from
:func:`src.predictor.prepare_for_batch`) and returns ``(probs [B, C], embedding [B, D] or None)`` as float CPU
tensors; it carries the exported file's ``class_names``, ``resize_size`` and ``img_size``. The rest of the
project (the recogniser, ``tag``, ``serve``, the app) never calls a model file directly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .predictor import PREDICTOR_METHODS, ExportedModelError, load_exported
from .helpers import file_sha256, get_device


class TorchScriptBackend:
    """An exported TorchScript predictor (``python -m src export``), frozen and optimised for the CPU."""

    name = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule, path: str | os.PathLike | None = None):
        self.module = module.eval()
        self.path = Path(path) if path is not None else None
        self.class_names = [str(c) for c in module.class_names]
        self.resize_size = int(module.resize_size)
        self.img_size = int(module.img_size)
        self.arch = str(getattr(module, "arch", ""))
        self.has_embedding = hasattr(module, PREDICTOR_METHODS[0])
        self.device = next((b.device for b in module.buffers()), torch.device("cpu"))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             optimize: bool = True) -> "TorchScriptBackend":
        return cls(load_exported(path, device=device, optimize=optimize), path)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # inference mode only around the forward: it is thread-local state
        with torch.inference_mode():
            batch = batch.to(self.device)
            if self.has_embedding:
                probs, embedding = self.module.probs_and_embedding(batch)
                return probs.float().cpu(), embedding.float().cpu()
            return self.module(batch).float().cpu(), None


def resolve_device(name: str | None) -> torch.device:
    """``"auto"`` -> the best available device (``src.helpers.get_device``); anything else as given."""
    return get_device(None if name in (None, "auto") else name)


def as_backend(model) -> "TorchScriptBackend":
    """A backend for ``model``: a backend as it is, a loaded TorchScript module wrapped, a path loaded."""
    if isinstance(model, torch.jit.ScriptModule):
        return TorchScriptBackend(model)
    if isinstance(model, (str, os.PathLike)):
        return load_backend(model)
    if callable(model) and hasattr(model, "class_names") and hasattr(model, "has_embedding"):
        return model
    if isinstance(model, torch.nn.Module) and hasattr(model, "class_names"):  # an eager Predictor
        return TorchScriptBackend(model)
    raise TypeError(f"not an exported model or backend: {type(model).__name__}")


# ---- ONNX Runtime ----------------------------------------------------------------------------------------------

class OnnxBackend:
    """An exported ONNX predictor (``python -m src export --onnx``) run by ONNX Runtime: same input, same outputs
    (``probs``, and ``embedding`` when the file has it) and the same metadata as the TorchScript file beside it."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise ExportedModelError(f"{path}: no such file (export one with: python -m src export --checkpoint "
                                     f"runs/NAME/best.pt --onnx)")
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError as exc:
            raise ExportedModelError(f"{path}: the onnx backend needs onnxruntime ({exc}); pip install "
                                     f"onnxruntime, or use --backend torchscript") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # Idle ORT threads spin for a while by default, taking the cores the photo decoders need (tag, serve).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ExportedModelError(f"{path}: not a usable ONNX file ({text})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta or "resize_size" not in meta:
            raise ExportedModelError(f"{path}: ONNX, but not an exported landmark predictor (no class_names in its "
                                     f"metadata); export one with: python -m src export --checkpoint PATH --onnx")
        self.path = path
        self.metadata = dict(meta)
        self.class_names = meta["class_names"].split("\n")
        self.resize_size = int(meta["resize_size"])
        self.img_size = int(meta["img_size"])
        self.arch = meta.get("arch", "")
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_embedding = "embedding" in outputs
        self.output_names = ["probs", "embedding"] if self.has_embedding else [outputs[0]]
        self.device = torch.device("cpu")  # what callers move batches to; ORT copies to its own device itself

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs) -> "OnnxBackend":
        return cls(path, device, **kwargs)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if batch.dtype != torch.uint8:  # the file takes photo pixels, like prepare_for_batch gives them
            batch = (batch.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        outputs = self.session.run(self.output_names, {self.input_name: batch.cpu().contiguous().numpy()})
        probs = torch.from_numpy(outputs[0]).float()
        return probs, (torch.from_numpy(outputs[1]).float() if self.has_embedding else None)


def parallel_runners(backend, workers: int = 0) -> list:
    """Forward passes to run batches on in parallel. ONNX Runtime on a CPU: ``workers`` sessions of the same file
    (0: 2 when there are at least 2 threads) sharing the threads between them, which pass 1.2-1.6x the photos of
    one session using them all (docs/serve.md); made once per backend and kept. Anything else (TorchScript, a
    GPU): the backend alone."""
    threads = torch.get_num_threads()
    onnx_cpu = isinstance(backend, OnnxBackend) and backend.session.get_providers()[0] == "CPUExecutionProvider"
    workers = int(workers) if workers else (2 if onnx_cpu and threads >= 2 else 1)
    if workers <= 1 or not onnx_cpu:
        return [backend]
    made = getattr(backend, "_parallel", None)
    if made is None or len(made) != workers:
        made = [OnnxBackend(backend.path, threads=max(1, threads // workers)) for _ in range(workers)]
        backend._parallel = made
    return made


BACKENDS = ("auto", "torchscript", "onnx")
# The faster backend on a CPU, measured by benchmarks/bench_backends.py (docs/serve.md): "auto" uses it when the
# file for it exists and was exported from the same model.
DEFAULT_BACKEND = "onnx"


def onnx_path_for(path: str | os.PathLike) -> Path:
    """The ONNX file ``export --onnx`` writes beside the TorchScript file ``path`` (same name, ``.onnx``)."""
    return Path(path).with_suffix(".onnx")


def onnx_matches(onnx_file: Path, torchscript_file: Path) -> bool:
    """True when ``onnx_file`` was exported together with ``torchscript_file`` (its recorded hash matches), so it
    answers exactly what the TorchScript file does; a stale or foreign ``.onnx`` beside it is False."""
    try:
        import onnx  # noqa: PLC0415

        model = onnx.load(str(onnx_file), load_external_data=False)
        recorded = {e.key: e.value for e in model.metadata_props}.get("torchscript_sha256")
        return recorded is not None and recorded == file_sha256(torchscript_file)
    except Exception:  # unreadable, not ONNX, onnx missing: not a match
        return False


def choose_backend_file(path: str | os.PathLike, backend: str = "auto") -> tuple[str, Path]:
    """``(backend name, file)`` that :func:`load_backend` loads for ``path`` and ``backend``.

    A ``.onnx`` path is the onnx backend. For a TorchScript path, ``"onnx"`` takes the ``.onnx`` beside it (an
    error when it is missing or was exported from another model), ``"auto"`` takes it only when it exists and
    matches (else TorchScript, which is always correct).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if backend == "torchscript":
            raise ValueError(f"{path}: an ONNX file; give the TorchScript .pt file for --backend torchscript")
        return "onnx", path
    if backend == "torchscript":
        return "torchscript", path
    sibling = onnx_path_for(path)
    if backend == "onnx":
        if not sibling.is_file():
            raise ExportedModelError(f"{sibling}: no such file (the onnx backend runs the .onnx file exported beside "
                                     f"{path.name}: python -m src export --checkpoint PATH --out {path} --onnx)")
        if path.is_file() and not onnx_matches(sibling, path):
            raise ExportedModelError(f"{sibling}: was not exported together with {path} (another or an older "
                                     f"model); export both again with --onnx")
        return "onnx", sibling
    if DEFAULT_BACKEND == "onnx" and sibling.is_file() and path.is_file() and onnx_matches(sibling, path):
        return "onnx", sibling
    return "torchscript", path


def load_backend(path: str | os.PathLike, backend: str = "auto", device: str | torch.device = "cpu"):
    """Load the exported model at ``path`` with ``backend`` ("auto", "torchscript" or "onnx"; see
    :func:`choose_backend_file`)."""
    name, file = choose_backend_file(path, backend)
    if name == "onnx":
        return OnnxBackend.load(file, device=device)
    return TorchScriptBackend.load(file, device=device)


def add_backend_argument(parser) -> None:
    """``--backend {auto,torchscript,onnx}`` for the commands that run an exported model."""
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help=f"what runs the model: auto (default: {DEFAULT_BACKEND} when the file for it was exported "
                             f"beside the model, else torchscript), torchscript (the .pt file) or onnx (the .onnx "
                             f"file beside it, through ONNX Runtime)")
