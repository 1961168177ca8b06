"""Loss, optimizer and learning-rate schedule factories."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import lr_scheduler

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "onecycle", "plateau")


def get_loss(label_smoothing: float = 0.0) -> nn.CrossEntropyLoss:
    """Cross-entropy on logits; ``label_smoothing`` > 0 keeps the model from becoming over-confident."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def _param_groups(model: nn.Module, learning_rate: float, weight_decay: float) -> list[dict]:
    """Trainable parameters only; biases and norm weights get no weight decay (decaying them only hurts)."""
    groups = model.param_groups(learning_rate) if callable(getattr(model, "param_groups", None)) else None
    if groups is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        extra = {k: v for k, v in group.items() if k != "params"}
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        wd = extra.pop("weight_decay", weight_decay)
        if decay:
            out.append({"params": decay, "weight_decay": wd, **extra})
        if no_decay:
            out.append({"params": no_decay, "weight_decay": 0.0, **extra})
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out


def get_optimizer(model: nn.Module, optimizer: str = "SGD", learning_rate: float = 0.01, momentum: float = 0.5,
                  weight_decay: float = 0) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW (case-insensitive) over the model's trainable parameters.

    A model with a ``param_groups(learning_rate)`` method (a transfer model with unfrozen stages that train at a
    smaller rate) supplies its own groups; a group's own ``lr`` wins over ``learning_rate``.
    """
    name = str(optimizer).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of SGD, Adam, AdamW")
    groups = _param_groups(model, learning_rate, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=learning_rate, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)


def get_scheduler(name: str | None, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int,
                  warmup_epochs: float = 1.0, pct_start: float = 0.25, min_lr_ratio: float = 0.001,
                  patience: int = 3, factor: float = 0.3):
    """A learning-rate schedule: ``"cosine"`` (linear warmup then cosine decay, stepped every batch),
    ``"onecycle"`` (stepped every batch), ``"plateau"`` (reduce on validation-loss plateau, stepped every epoch)
    or ``"none"``/None. The peak rate of each group is the rate it was created with.

    Use :func:`steps_per_batch` to know when to call ``step()``; :func:`src.train.optimize` does it for you.
    """
    key = "none" if name is None else str(name).lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    total = max(1, int(epochs) * int(steps_per_epoch))
    if key == "none":
        return None
    if key == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)
    if key == "onecycle":
        if total < 3:  # too few steps for a warmup and a decay (OneCycleLR divides by zero): a constant rate
            return lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        max_lr = [g["lr"] for g in optimizer.param_groups]
        # OneCycleLR needs at least one step in each phase (else it divides by zero on very short runs)
        pct_start = min(max(pct_start, 1.5 / total), 0.5)
        return lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct_start,
                                       div_factor=25.0, final_div_factor=max(1.0, 1.0 / (25.0 * min_lr_ratio)))
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)

    def cosine_with_warmup(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)


def steps_per_batch(scheduler) -> bool:
    """True for schedules stepped after every batch (cosine, one-cycle), False for per-epoch ones."""
    if scheduler is None or isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        return False
    return isinstance(scheduler, (lr_scheduler.OneCycleLR, lr_scheduler.LambdaLR, lr_scheduler.CyclicLR))
