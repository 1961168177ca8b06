"""The exported predictor: a self-contained TorchScript module from raw photo pixels to class probabilities.

``Predictor`` wraps a trained model with everything inference needs (resize, center crop, normalisation,
softmax) so the exported file needs nothing else: it takes uint8 (or float in [0, 1]) images ``[B, 3, H, W]`` of
any size. Export checks its own work: the file is reloaded and compared with the eager model before it gets its
final name.
"""
# No ``from __future__ import annotations`` here: TorchScript must read the annotations as types, not strings.

import io
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data_config import DEFAULT_IMG_SIZE, resize_size_for
from .helpers import CHECKPOINTS_DIR, atomic_path, quiet_torchscript
from .images import center_offset, load_image_array, open_image, resized_shape, square_window

log = logging.getLogger(__name__)

PREDICTOR_FORMAT = "landmark-tagger-predictor/1"
EXPORT_TOLERANCE = 1e-5
SCRATCH_EXPORT_NAME = "original_exported.pt"
TRANSFER_EXPORT_NAME = "transfer_exported.pt"


class ExportError(RuntimeError):
    """Export failed or the exported file does not reproduce the eager model; one line says why."""


class ExportedModelError(ValueError):
    """An exported model file that cannot be used; ``str(err)`` is ``"<path>: <reason>"`` on one line."""


# --------------------------------------------------------------------------------------------------------------
# Preprocessing, written once in TorchScript-compatible code: used inside the exported module and, for batches
# of photos of different sizes, by the tag pipeline before stacking (so both see exactly the same pixels).
# --------------------------------------------------------------------------------------------------------------

def resize_and_center_crop(x: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """``Resize(resize_size, antialias=True)`` then ``CenterCrop(crop_size)`` on float images ``[B, C, H, W]``.

    Matches ``src.data.get_transforms("test")`` (bilinear with antialiasing when shrinking). A photo whose shorter
    side already equals ``resize_size`` is not resampled, so pre-resizing then calling this again is exact.
    """
    height, width = x.shape[-2], x.shape[-1]
    if min(height, width) != resize_size:
        size = resized_shape(height, width, resize_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        height, width = size[0], size[1]
    if height < crop_size or width < crop_size:  # only when crop_size > resize_size; pad like CenterCrop does
        pad_h, pad_w = max(crop_size - height, 0), max(crop_size - width, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        height, width = x.shape[-2], x.shape[-1]
    top = center_offset(height - crop_size)
    left = center_offset(width - crop_size)
    return x[:, :, top:top + crop_size, left:left + crop_size]


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]; float input is taken to be in [0, 1] already (like ``ToTensor``)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


class Predictor(nn.Module):
    """Photo pixels -> class probabilities, with the preprocessing inside.

    ``forward`` takes ``[B, 3, H, W]`` uint8 (0-255) or float (0-1) images of any size, resizes the shorter side to
    ``resize_size_for(img_size)`` with antialiasing, center-crops ``img_size``, normalises with the training
    ``mean``/``std`` and returns softmax probabilities ``[B, num_classes]``. ``class_names`` (folder names) and the
    sizes are attributes, kept by TorchScript.
    """

    class_names: List[str]
    mean_values: List[float]
    std_values: List[float]
    img_size: int
    resize_size: int
    arch: str
    format: str

    def __init__(self, model: nn.Module, class_names: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 img_size: int = DEFAULT_IMG_SIZE, arch: str = ""):
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        self.model = model.eval()
        self.class_names = [str(c) for c in class_names]
        self.mean_values = [float(m) for m in mean]
        self.std_values = [float(s) for s in std]
        self.img_size = int(img_size)
        self.resize_size = int(resize_size_for(img_size))
        self.arch = str(arch)
        self.format = PREDICTOR_FORMAT
        self.register_buffer("mean", torch.tensor(self.mean_values, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.std_values, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` uint8/float -> the normalised ``[B, 3, img_size, img_size]`` the network sees."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("expected images [B, 3, H, W]")
        x = resize_and_center_crop(to_unit_float(x), self.resize_size, self.img_size)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.model(self.preprocess(x)), dim=1)


class EmbeddingPredictor(Predictor):
    """A :class:`Predictor` whose model is ``head(backbone(x))`` (the transfer models): one forward pass also gives
    the photo's L2-normalised embedding, the pooled backbone features the head reads, for searching the landmark
    index. ``probs_and_embedding`` is exported next to ``forward`` in the same file."""

    embedding_dim: int

    def __init__(self, model: nn.Module, class_names: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 img_size: int = DEFAULT_IMG_SIZE, arch: str = "", embedding_dim: int = 0):
        super().__init__(model, class_names, mean, std, img_size, arch)
        self.embedding_dim = int(embedding_dim)

    @torch.jit.export
    def probs_and_embedding(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.model.backbone(self.preprocess(x))
        return F.softmax(self.model.head(features), dim=1), F.normalize(features.float(), dim=1)


class EnsembleEmbeddingPredictor(EmbeddingPredictor):
    """An :class:`EmbeddingPredictor` around an :class:`EmbeddingEnsemble`: the averaged probabilities and the
    members' embeddings side by side, from one backbone pass per member."""

    @torch.jit.export
    def probs_and_embedding(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.probs_and_embedding(self.preprocess(x))


def has_embedding(model: nn.Module) -> bool:
    """True when ``model`` is ``head(backbone(x))`` with pooled features, or an ensemble of such models: it can
    give embeddings."""
    if isinstance(model, Ensemble):
        return all(has_embedding(member) for member in model.members)
    return isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(getattr(model, "head", None),
                                                                                  nn.Module)


def make_predictor(model: nn.Module, class_names: Sequence[str], mean: Sequence[float], std: Sequence[float],
                   img_size: int = DEFAULT_IMG_SIZE, arch: str = "") -> Predictor:
    """The right predictor for ``model``: :class:`EmbeddingPredictor` for backbone+head models,
    :class:`EnsembleEmbeddingPredictor` for an ensemble of them, else :class:`Predictor`."""
    if isinstance(model, Ensemble) and has_embedding(model):
        ensemble = model if isinstance(model, EmbeddingEnsemble) else EmbeddingEnsemble(list(model.members))
        dim = sum(int(getattr(m, "num_features", 0) or 0) for m in ensemble.members)
        return EnsembleEmbeddingPredictor(ensemble, class_names, mean, std, img_size, arch, embedding_dim=dim)
    if has_embedding(model):
        dim = int(getattr(model, "num_features", 0) or 0)
        return EmbeddingPredictor(model, class_names, mean, std, img_size, arch, embedding_dim=dim)
    return Predictor(model, class_names, mean, std, img_size, arch)


class Ensemble(nn.Module):
    """Several models of the same classes as one: the average of their softmax probabilities.

    ``forward`` returns the log of that average, so the :class:`Predictor` around it (which applies softmax)
    outputs exactly the averaged probabilities. Members see the same normalised input.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 models, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [F.softmax(member(x).float(), dim=1) for member in self.members]
        return torch.log(torch.stack(probs).mean(dim=0))

    def scriptable(self, example: torch.Tensor) -> nn.Module:
        """The same ensemble with each member replaced by its ``scriptable(example)`` form where it has one."""
        return type(self)([m.scriptable(example) if callable(getattr(m, "scriptable", None)) else m
                           for m in self.members])


class EmbeddingEnsemble(Ensemble):
    """An :class:`Ensemble` of ``head(backbone(x))`` models that also gives an embedding: each member's L2-normalised
    features side by side, divided by the square root of the number of members, so the embedding has unit length
    and its cosine similarity to another is the mean of the members' similarities (each member's vote counts
    equally in the landmark index, as its probabilities do in ``forward``)."""

    @torch.jit.export
    def probs_and_embedding(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        probs: List[torch.Tensor] = []
        features: List[torch.Tensor] = []
        for member in self.members:
            f = member.backbone(x)
            probs.append(F.softmax(member.head(f).float(), dim=1))
            features.append(F.normalize(f.float(), dim=1))
        return torch.stack(probs).mean(dim=0), torch.cat(features, dim=1) / math.sqrt(float(len(features)))


def default_export_path(arch: str) -> Path:
    """``checkpoints/original_exported.pt`` for a from-scratch model, ``checkpoints/transfer_exported.pt`` else."""
    try:
        from .model import SCRATCH_ARCHS  # noqa: PLC0415

        scratch = set(SCRATCH_ARCHS)
    except ImportError:  # the model module is optional for using an exported file
        scratch = {"scratch"}
    return CHECKPOINTS_DIR / (SCRATCH_EXPORT_NAME if arch in scratch else TRANSFER_EXPORT_NAME)


# --------------------------------------------------------------------------------------------------------------
# Export and check
# --------------------------------------------------------------------------------------------------------------

def check_inputs(img_size: int = DEFAULT_IMG_SIZE, seed: int = 0) -> list[torch.Tensor]:
    """A few test images for export checks: uint8 and float, batch 1 and 2, landscape, portrait, small, exact."""
    g = torch.Generator().manual_seed(seed)
    r = resize_size_for(img_size)

    def u8(*shape):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    smooth = torch.linspace(0, 1, img_size * 2).view(1, 1, 1, -1).expand(1, 3, img_size + 37, img_size * 2)
    return [
        u8(1, 3, r + 61, r * 3 // 2),                          # landscape, shrunk
        u8(2, 3, img_size * 2, img_size + 13),                 # portrait batch of two
        u8(1, 3, max(img_size // 2, 8), max(img_size * 2 // 3, 8)),  # smaller than the crop: enlarged
        u8(1, 3, r, r),                                        # already the resize size: no resampling
        smooth.contiguous().clone(),                           # float input in [0, 1]
    ]


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _for_export(predictor: Predictor, example: torch.Tensor | None) -> Predictor:
    """The predictor itself, or a copy around ``model.scriptable(example)`` when the model needs one to script."""
    scriptable = getattr(predictor.model, "scriptable", None)
    if not callable(scriptable):
        return predictor
    if example is None:
        example = torch.randn(1, 3, predictor.img_size, predictor.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inner = scriptable(example)
    if isinstance(predictor, EmbeddingPredictor):
        return type(predictor)(inner, predictor.class_names, predictor.mean_values, predictor.std_values,
                                  predictor.img_size, predictor.arch, predictor.embedding_dim)
    return Predictor(inner, predictor.class_names, predictor.mean_values, predictor.std_values, predictor.img_size,
                     predictor.arch)


def compare_to_eager(predictor: nn.Module, candidate, inputs: Iterable[torch.Tensor],
                     tolerance: float = EXPORT_TOLERANCE, what: str = "exported model") -> float:
    """Largest absolute difference between ``candidate(x)`` and ``predictor(x)`` over ``inputs``; raises
    :class:`ExportError` above ``tolerance`` or on a shape mismatch."""
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = predictor(x)
            got = candidate(x)
            if tuple(got.shape) != tuple(expected.shape):
                raise ExportError(f"{what} returns shape {tuple(got.shape)} for input {tuple(x.shape)}, "
                                  f"the eager model {tuple(expected.shape)}")
            diff = _max_abs_diff(got, expected)
            worst = max(worst, diff)
            if not diff <= tolerance:  # also catches NaN
                raise ExportError(f"{what} disagrees with the eager model on input {tuple(x.shape)} "
                                  f"{x.dtype}: max |difference| {diff:.2e} > {tolerance:.0e}")
    return worst


def export_torchscript(predictor: Predictor, path: str | os.PathLike, example: torch.Tensor | None = None,
                       inputs: Sequence[torch.Tensor] | None = None, tolerance: float = EXPORT_TOLERANCE) -> dict:
    """Script ``predictor`` with ``torch.jit.script``, save it to ``path``, reload it and check it.

    The file is written to a temporary name, reloaded with ``torch.jit.load`` and compared with the eager
    predictor on ``inputs`` (default :func:`check_inputs`); only when every output agrees within ``tolerance`` does
    it replace ``path``. A model that cannot be scripted may provide ``scriptable(example)`` (see the brief).
    Returns ``{"path", "max_abs_diff", "n_inputs"}``.
    """
    path = Path(path)
    predictor = predictor.eval()
    inputs = list(inputs) if inputs is not None else check_inputs(predictor.img_size)
    with quiet_torchscript():
        try:
            scripted = torch.jit.script(_for_export(predictor, example))
        except Exception as exc:  # scripting errors are long; the first line names the problem
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"cannot script the model for export ({type(exc).__name__}: {first}); give it a "
                              f"scriptable(example) method returning a TorchScript-compatible module") from exc
        with atomic_path(path) as tmp:
            buffer = io.BytesIO()  # torch's file writer aborts the process on a full disk; Python's raises OSError
            torch.jit.save(scripted, buffer)
            tmp.write_bytes(buffer.getvalue())
            reloaded = torch.jit.load(str(tmp), map_location="cpu")
            worst = compare_to_eager(predictor, reloaded, inputs, tolerance, what=f"{path} (reloaded)")
            if list(reloaded.class_names) != list(predictor.class_names):
                raise ExportError(f"{path}: class_names did not survive export and reload")
            if isinstance(predictor, EmbeddingPredictor):
                with torch.no_grad():
                    for x in inputs:
                        diff = _max_abs_diff(reloaded.probs_and_embedding(x)[1], predictor.probs_and_embedding(x)[1])
                        if not diff <= tolerance:
                            raise ExportError(f"{path}: the reloaded embedding differs from the eager one by "
                                              f"{diff:.2e} > {tolerance:.0e}")
    return {"path": str(path), "max_abs_diff": worst, "n_inputs": len(inputs)}


# --------------------------------------------------------------------------------------------------------------
# Loading an exported file, and turning a photo file into model input
# --------------------------------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return text or type(exc).__name__


def load_exported(path: str | os.PathLike, device: str | torch.device | None = "cpu",
                  optimize: bool = False) -> torch.jit.ScriptModule:
    """Load an exported predictor (``checkpoints/*_exported.pt``) in eval mode.

    ``optimize=True`` returns :func:`optimize_for_cpu` of it on a CPU (what ``predict`` and ``tag`` use).
    Raises :class:`ExportedModelError` with one line naming the file and what is wrong: missing, not TorchScript
    (a training checkpoint, say), or TorchScript that is not a landmark predictor.
    """
    path = Path(path)
    hint = "export one with: python -m src export --checkpoint runs/NAME/best.pt"
    if not path.exists():
        raise ExportedModelError(f"{path}: no such file ({hint})")
    if path.is_dir():
        raise ExportedModelError(f"{path}: is a folder, not an exported model file")
    with quiet_torchscript():
        try:
            module = torch.jit.load(str(path), map_location=device or "cpu")
        except Exception as exc:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    names = zf.namelist()
                if any(n.endswith("data.pkl") for n in names) and not any(n.endswith("constants.pkl") for n in names):
                    raise ExportedModelError(f"{path}: a torch.save file (a training checkpoint?), not an exported "
                                             f"TorchScript model; {hint}") from None
            raise ExportedModelError(f"{path}: not a TorchScript file ({_first_line(exc)})") from None
    if not hasattr(module, "class_names") or not hasattr(module, "resize_size"):
        raise ExportedModelError(f"{path}: TorchScript, but not an exported landmark predictor (it has no "
                                 f"class_names); {hint}")
    module = module.eval()
    if optimize and torch.device(device or "cpu").type == "cpu":
        module = optimize_for_cpu(module)
    return module


# Attributes a frozen module must keep (freezing inlines everything else into the graph).
PREDICTOR_ATTRIBUTES = ["class_names", "mean_values", "std_values", "img_size", "resize_size", "arch", "format",
                        "embedding_dim"]
PREDICTOR_METHODS = ["probs_and_embedding"]  # exported methods besides forward that must survive freezing
OPTIMIZE_TOLERANCE = 1e-5


def optimize_for_cpu(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The exported module frozen and optimised for CPU inference (``torch.jit.freeze`` folds batch norm into the
    convolutions, ``torch.jit.optimize_for_inference`` runs them with oneDNN): about 1.5-2x faster forward passes.

    Its probabilities are checked against the module as loaded on a test batch; should they differ by more than
    1e-5, or optimisation fail, the module is returned as it was. Only ``forward`` and the attributes in
    ``PREDICTOR_ATTRIBUTES`` remain.
    """
    preserved = [name for name in PREDICTOR_ATTRIBUTES if hasattr(module, name)]
    methods = [name for name in PREDICTOR_METHODS if hasattr(module, name)]
    try:
        with quiet_torchscript():
            optimized = torch.jit.optimize_for_inference(
                torch.jit.freeze(module.eval(), preserved_attrs=preserved + methods), other_methods=methods)
        size = int(module.resize_size)
        probe = torch.rand(2, 3, size, size + 17, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = _max_abs_diff(optimized(probe), module(probe))
            for name in methods:
                diff = max(diff, _max_abs_diff(getattr(optimized, name)(probe)[1], getattr(module, name)(probe)[1]))
    except Exception as exc:  # an exotic model oneDNN cannot take: the plain module is correct, just slower
        log.debug("not optimising the exported module: %s", exc)
        return module
    if not diff <= OPTIMIZE_TOLERANCE:
        log.debug("optimised module differs by %.2e; using it unoptimised", diff)
        return module
    return optimized


def load_image_tensor(source, resize_size: int = 256, name: str | None = None) -> torch.Tensor:
    """A photo file (path or bytes) as a uint8 tensor ``[3, H, W]`` whose shorter side is ``resize_size``:
    :func:`src.images.load_image_array` (decoding, EXIF orientation, Pillow's resize, as the training/test
    transforms do) as a tensor. Raises ``ImageLoadError`` for bad files."""
    return torch.from_numpy(load_image_array(source, resize_size, name=name))


def prepare_for_batch(image: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """One ``[3, H, W]`` photo -> ``[3, R, R]`` (R = ``resize_size``) for stacking photos of different shapes into
    one batch; the exported module (``img_size`` = ``crop_size``) then sees exactly the pixels it sees for the
    photo alone. A photo from :func:`load_image_tensor` is only cut (uint8 stays uint8); any other is resized the
    module's way first (float in [0, 1])."""
    x = image.unsqueeze(0)
    if min(x.shape[-2:]) != resize_size:
        size = resized_shape(x.shape[-2], x.shape[-1], resize_size)
        x = F.interpolate(to_unit_float(x), size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left, side = square_window(x.shape[-2], x.shape[-1], crop_size)
    crop = x[0, :, top:top + side, left:left + side]
    # a NumPy copy on the CPU: torch's costs milliseconds for a photo (see load_image_tensor)
    return torch.from_numpy(np.ascontiguousarray(crop.numpy())) if crop.device.type == "cpu" else crop.contiguous()


# --------------------------------------------------------------------------------------------------------------
# Testing an exported model, and the app's functions
# --------------------------------------------------------------------------------------------------------------

_MODEL_CACHE: dict[tuple[str, int], torch.jit.ScriptModule] = {}


def default_exported_path() -> Path:
    """The exported model the app uses: the transfer model when there is one, else the scratch model."""
    for name in (TRANSFER_EXPORT_NAME, SCRATCH_EXPORT_NAME):
        if (CHECKPOINTS_DIR / name).exists():
            return CHECKPOINTS_DIR / name
    raise ExportedModelError(f"{CHECKPOINTS_DIR}: no exported model ({TRANSFER_EXPORT_NAME} or "
                             f"{SCRATCH_EXPORT_NAME}); export one with: python -m src export --checkpoint PATH")


def get_exported_model(model=None) -> torch.jit.ScriptModule:
    """``model`` itself when it is a module, else the exported file at ``model`` (default: the app's), cached."""
    if isinstance(model, nn.Module):
        return model
    path = Path(model) if model is not None else default_exported_path()
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_exported(path)
    return _MODEL_CACHE[key]


def top_k(probs: torch.Tensor, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """``[(folder name, probability)]`` of the ``k`` most likely classes, most likely first."""
    k = max(1, min(int(k), len(class_names)))
    values, indices = torch.topk(probs.float(), k)
    return [(class_names[int(i)], float(v)) for v, i in zip(values, indices)]


def predict_landmarks(img_path, k: int = 5, model=None) -> tuple[list[str], list[float]]:
    """The ``k`` most likely landmarks of a photo: ``(names, probabilities)``, most likely first.

    ``model``: a loaded exported module, a path to one, or ``None`` for the app's (``checkpoints/``).
    Names are readable ("Golden Gate Bridge"). Raises ``ImageLoadError`` for a file that is not a usable photo.
    """
    from .landmarks import display_name  # noqa: PLC0415

    module = get_exported_model(model)
    image = load_image_tensor(img_path, int(module.resize_size))
    with torch.no_grad():
        probs = module(image.unsqueeze(0))[0]
    best = top_k(probs, list(module.class_names), k)
    return [display_name(c) for c, _ in best], [p for _, p in best]


def suggestion_question(names: Sequence[str]) -> str:
    """``["A", "B", "C"]`` -> ``"Is this picture of the A, B, or C?"``."""
    names = list(names)
    if len(names) == 1:
        listed = names[0]
    elif len(names) == 2:
        listed = f"{names[0]} or {names[1]}"
    else:
        listed = ", ".join(names[:-1]) + f", or {names[-1]}"
    return f"Is this picture of the {listed}?"


def suggest_locations(img_path, k: int = 3, model=None, show: bool = True) -> str:
    """Show the photo and ask "Is this picture of the A, B, or C?" with the ``k`` most likely landmarks.

    Returns the question (also printed).
    """
    names, _ = predict_landmarks(img_path, k, model)
    question = suggestion_question(names)
    if show:
        import matplotlib.pyplot as plt  # noqa: PLC0415

        img: Image.Image = open_image(img_path)
        fig, ax = plt.subplots(figsize=(6, 6 * img.height / max(img.width, 1)))
        ax.imshow(img)
        ax.axis("off")
        fig.tight_layout()
        plt.show()
    print(question)
    return question
