"""The checkpoint format of ``python -m src train``: what a checkpoint holds, saving and loading it, and building
its model.

A checkpoint is a ``torch.save``d dict: ``format`` (:data:`CHECKPOINT_FORMAT`), the metadata that rebuilds and
feeds the model (``arch``, ``model_kwargs``, ``class_names``, ``mean``, ``std``, ``img_size``, ``args``), the
weights (``model``), ``epoch`` and, from the training engine, ``history`` and the state a resume needs. Loading
never runs code (``weights_only``) and never downloads pretrained weights. Export and prediction import this
module, not the training engine.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .data_config import resolve_data_config
from .helpers import atomic_torch_save
from .model import SCRATCH_ARCHS, create_model

CHECKPOINT_FORMAT = "landmark-tagger/1"
REQUIRED_KEYS = ("arch", "model_kwargs", "model", "class_names", "mean", "std", "img_size", "epoch")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, not ours, or does not fit the model; the message is one line."""


def plain(obj):
    """``obj`` as plain JSON-like types (what ``torch.load(weights_only=True)`` and JSON accept)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, argparse.Namespace):
        return plain(vars(obj))
    return str(obj)


def checkpoint_metadata(arch: str, model_kwargs: Mapping, class_names, mean, std, img_size: int,
                        args: Mapping | argparse.Namespace | None = None) -> dict:
    """What every checkpoint of a run stores besides the weights; the one place it is put together.

    A pretrained backbone is rebuilt from the checkpoint's own weights: ``model_kwargs`` keep no ``weights``
    to download and no ``weights_path`` to read again."""
    kwargs = dict(model_kwargs)
    if arch not in SCRATCH_ARCHS:
        kwargs["weights"] = None
        kwargs.pop("weights_path", None)
    args = plain(args or {})
    return {"arch": arch, "model_kwargs": plain(kwargs), "class_names": list(class_names),
            "mean": [float(x) for x in mean], "std": [float(x) for x in std], "img_size": int(img_size),
            "args": {k: v for k, v in args.items() if k not in ("mean", "std")}}


def checkpoint_state(metadata: Mapping, model: nn.Module, epoch: int, **extra: Any) -> dict:
    """A checkpoint: the format tag, ``metadata`` (:func:`checkpoint_metadata`), ``model``'s weights, ``epoch``
    and ``extra`` (history, optimizer state, ...)."""
    return {"format": CHECKPOINT_FORMAT, **metadata, "model": model.state_dict(), "epoch": int(epoch), **extra}


def save_checkpoint(state: Mapping, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically: killed at any instant, ``path`` holds the old checkpoint or the new one."""
    atomic_torch_save(dict(state), path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a training checkpoint (``weights_only``: a checkpoint cannot run code).

    Raises :class:`CheckpointError` with a one-line message for a missing, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of arbitrary objects, not a torch file at all, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        what = ("a bare state_dict" if isinstance(ckpt, dict) and ckpt and
                all(isinstance(v, torch.Tensor) for v in ckpt.values()) else f"format {ckpt.get('format')!r}"
                if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise CheckpointError(f"{path}: not a Landmark Tagger checkpoint (found {what}, expected format "
                              f"{CHECKPOINT_FORMAT!r} written by `python -m src train`)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if not ckpt["img_size"]:  # written without one (a notebook's loaders without a center crop): the arch's own
        ckpt["img_size"] = resolve_data_config(str(ckpt["arch"])).img_size
    return ckpt


def saved_split(ckpt: Mapping) -> tuple[float, int]:
    """``(valid_size, split seed)`` of the training/validation split a checkpoint was trained on (its saved
    arguments: ``--valid-size``, ``--split-seed``, else ``--seed``; 0.2 and 42 when it saved none)."""
    saved = ckpt.get("args") or {}
    valid_size = float(saved.get("valid_size", 0.2) or 0.0)
    seed = saved.get("split_seed")
    if seed is None:
        seed = saved.get("seed")
    return valid_size, int(42 if seed is None else seed)


def build_model_from_checkpoint(ckpt: Mapping, device: str | torch.device = "cpu") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode (pretrained weights are never downloaded)."""
    kwargs = dict(ckpt.get("model_kwargs") or {})
    if ckpt["arch"] not in SCRATCH_ARCHS:
        kwargs["weights"] = None  # the checkpoint holds the weights
    try:
        model = create_model(ckpt["arch"], len(ckpt["class_names"]), **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"cannot build arch {ckpt['arch']!r} from the checkpoint: {exc}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit arch {ckpt['arch']!r} with "
                              f"{len(ckpt['class_names'])} classes: {first_mismatch(exc)}") from None
    return model.to(device).eval()


def first_mismatch(exc: RuntimeError) -> str:
    """The first problem ``load_state_dict`` lists (its message runs over many lines)."""
    return next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))[:200]


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights from one of our checkpoints (or a bare ``state_dict`` file) into ``model``."""
    try:
        state = load_checkpoint(path)["model"]
    except CheckpointError as not_ours:
        try:  # a bare state_dict file
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            state = None
        if not isinstance(state, dict):
            raise not_ours from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit this model: {first_mismatch(exc)}") from None
    return model


def run_metadata(model: nn.Module, data_loaders: Mapping, given: Mapping | None = None) -> dict:
    """The metadata a training run stores: ``given`` (:func:`checkpoint_metadata`, or only some of its keys, as a
    notebook passes them), the rest taken from the model and the data loaders."""
    ds = getattr(data_loaders.get("train"), "dataset", None)
    arch = getattr(model, "arch", None) or next((k for k, c in SCRATCH_ARCHS.items() if type(model) is c), "scratch")
    mean = getattr(model, "mean", None) or getattr(ds, "mean", None) or [0.5, 0.5, 0.5]
    std = getattr(model, "std", None) or getattr(ds, "std", None) or [0.5, 0.5, 0.5]
    meta = {"arch": arch, "model_kwargs": dict(getattr(model, "model_kwargs", {}) or {}),
            "class_names": list(getattr(ds, "class_names", []) or []), "mean": mean, "std": std,
            "img_size": None, "args": {}}
    meta.update(plain(dict(given or {})))
    if not meta.get("img_size"):
        meta["img_size"] = _center_crop_size(data_loaders) or resolve_data_config(str(meta["arch"])).img_size
    return meta


def _center_crop_size(data_loaders: Mapping) -> int | None:
    """The size the validation photos are center-cropped to, when their transform says."""
    ds = getattr(data_loaders.get("valid"), "dataset", None)
    transform = getattr(ds, "transform", None)
    for t in getattr(transform, "transforms", []):
        size = getattr(t, "size", None)
        if type(t).__name__ == "CenterCrop" and size:
            return int(size[0] if isinstance(size, (tuple, list)) else size)
    return None
