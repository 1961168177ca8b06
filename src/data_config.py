"""What a model expects of its input: the size it sees and the normalisation its weights were trained with.

The one home of these facts, as timm's ``resolve_data_config``: the training command, the feature cache, the
checkpoint and the predictor ask :func:`resolve_data_config` (or read what a checkpoint recorded) instead of each
holding a default of its own. The training recipes (``src.train.ARCH_DEFAULTS``) hold no input size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_IMG_SIZE = 224  # every model that does not say otherwise (ours from scratch, torchvision's ImageNet models)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# trained from scratch (src.model.SCRATCH_ARCHS): normalised with the training photos' own mean/std
_FROM_SCRATCH = ("scratch", "course")


@dataclass(frozen=True)
class DataConfig:
    """``img_size``: the square crop the network sees; ``mean``/``std``: per-channel normalisation, or None when
    they are the training photos' own (computed from the data, as for models trained from scratch)."""
    img_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def resolve_data_config(arch: str, img_size: int | None = None) -> DataConfig:
    """The input an ``arch`` expects: EfficientNet-Lite1/2 at the size their weights were trained at (240, 260)
    with TensorFlow's (x - 127) / 128; torchvision backbones at 224 with ImageNet's mean/std; ``scratch`` and
    ``course`` at 224 with the data's own mean/std. ``img_size`` given (``--img-size``) wins over the default."""
    from .efficientnet_lite import LITE_MEAN, LITE_STD, LITE_VARIANTS  # noqa: PLC0415 - torch only when asked

    if arch in LITE_VARIANTS:
        config = DataConfig(LITE_VARIANTS[arch].img_size, tuple(LITE_MEAN), tuple(LITE_STD))
    elif arch in _FROM_SCRATCH:
        config = DataConfig(DEFAULT_IMG_SIZE, None, None)
    else:
        config = DataConfig(DEFAULT_IMG_SIZE, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    if img_size is not None:
        config = DataConfig(int(img_size), config.mean, config.std)
    return config


def resize_size_for(img_size: int) -> int:
    """The shorter-side resize before a center crop of ``img_size`` (256 for 224, as in ImageNet practice)."""
    return int(math.floor(img_size * 256 / 224))
