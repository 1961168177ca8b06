"""The CNN designed from scratch (``MyModel``), the course's typical baseline, and the model factory.

Why ``MyModel`` looks the way it does (a few thousand photos, no pretraining):

* **Residual blocks with batch norm** (He et al. 2016): the identity shortcut lets gradients reach the stem from
  the first step, and batch norm lets a high learning rate converge in the few epochs a small data set affords.
* **A small stem then four stages** that halve the resolution and double the width: most compute is spent at
  low resolution, so the network is cheap enough to train on a CPU, and the receptive field covers the whole
  landmark by the last stage.
* **Anti-aliased shortcuts** (average pool then 1x1 conv, "ResNet-D"): downsampling shortcuts see every pixel
  instead of one in four.
* **Global average pooling** instead of a large dense layer: the course network's 12M-weight dense layer is what
  memorises 4000 photos; pooling has no weights and makes the model independent of the input size.
* **Dropout before the classifier**: the only dense layer is the last one, and it is where co-adaptation happens.
* **Initialisation**: Kaiming-normal for convolutions (keeps activations' variance through ReLUs), and the last
  batch norm of every residual branch starts at zero so each block begins as the identity ("zero-gamma", Goyal
  et al. 2017): the network starts shallow and grows into its depth, which makes early training stable.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .data_config import DEFAULT_IMG_SIZE

DEFAULT_WIDTHS = (32, 64, 128, 256)
DEFAULT_DEPTHS = (1, 1, 2, 1)


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; the shortcut downsamples with average pooling when needed."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_ch != out_ch:
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride != 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class MyModel(nn.Module):
    """Residual CNN for landmark photos: ``[B, 3, H, W]`` (any H, W >= 32) -> logits ``[B, num_classes]``.

    ``widths``/``depths``: channels and number of residual blocks of the four stages (stride 1, 2, 2, 2 after a
    stride-4 stem). The defaults (about 1.5M weights) were chosen by measurement: twice the width (3.4M weights)
    trained no better on the landmark photos in 30 epochs (README.md). ``dropout`` defaults to the course's 0.7;
    ``python -m src train`` uses 0.2: with label smoothing and augmentation already regularising, the network
    reached a lower validation loss in 30 epochs with less dropout.
    """

    def __init__(self, num_classes: int = 50, dropout: float = 0.7, widths: Sequence[int] = DEFAULT_WIDTHS,
                 depths: Sequence[int] = DEFAULT_DEPTHS):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {list(widths)} and depths {list(depths)} must be non-empty and of equal length")
        stem = widths[0]
        # Stride-2 conv, a second conv at half resolution, then max pool: /4 with a 11-pixel receptive field.
        self.stem = nn.Sequential(conv_bn_relu(3, stem // 2, stride=2), conv_bn_relu(stem // 2, stem),
                                  nn.MaxPool2d(3, 2, 1))
        stages, in_ch = [], stem
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [ResidualBlock(in_ch, width, stride=1 if i == 0 else 2)]
            blocks += [ResidualBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        self.num_classes = num_classes
        # What create_model needs to rebuild this exact network (stored in checkpoints; JSON-able).
        self.model_kwargs = {"dropout": float(dropout), "widths": [int(w) for w in widths],
                             "depths": [int(d) for d in depths]}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResidualBlock):
                nn.init.zeros_(m.bn2.weight)  # each block starts as the identity
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, widths[-1]]`` (before dropout and the classifier)."""
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


class CourseCNN(nn.Module):
    """The course's typical from-scratch network, kept as the baseline that ``benchmarks/`` compares against.

    Five conv-BN-ReLU-maxpool blocks (16 to 256 channels), flatten, a 1024-unit dense layer, dropout, classifier.
    At 224 px the flattened map is 256x7x7, so the dense layer alone holds 12.8M of its ~13.2M weights.
    """

    def __init__(self, num_classes: int = 50, dropout: float = 0.5, img_size: int = DEFAULT_IMG_SIZE):
        super().__init__()
        layers, in_ch = [], 3
        for out_ch in (16, 32, 64, 128, 256):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, 2)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.model_kwargs = {"dropout": float(dropout), "img_size": int(img_size)}
        side = img_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256 * side * side, 1024), nn.BatchNorm1d(1024), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# Architectures built here; every other name is a torchvision backbone handled by src/transfer.py.
SCRATCH_ARCHS = {"scratch": MyModel, "course": CourseCNN}


def create_model(arch: str, num_classes: int, **model_kwargs) -> nn.Module:
    """Build a model by name: ``"scratch"`` (:class:`MyModel`), ``"course"`` (:class:`CourseCNN`), or a transfer
    learning architecture (``src.transfer.get_model_transfer_learning``) for any other name."""
    if arch in SCRATCH_ARCHS:
        return SCRATCH_ARCHS[arch](num_classes=num_classes, **model_kwargs)
    from .transfer import get_model_transfer_learning  # noqa: PLC0415 - torchvision weights only when asked

    return get_model_transfer_learning(arch, n_classes=num_classes, **model_kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
