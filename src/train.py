"""The training engine every model uses (``python -m src train`` is :mod:`src.train_cli`; checkpoints are
:mod:`src.checkpoint`).

``optimize`` trains with a progress bar per epoch, keeps the best-by-validation weights (``best.pt``) and a
``last.pt`` that ``resume=True`` continues from, and writes the history (CSV, JSON) and a loss-curve PNG beside
them. Every file is written atomically: killing the process at any instant leaves both checkpoints loadable.

Distributed training (torchrun) slots in at two places: file writes, plots and progress bars are behind
:func:`is_main_process`, and every metric is summed in :class:`MetricTotals`, the one place that reduces across
processes.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, checkpoint_state, first_mismatch, load_checkpoint, \
    plain, run_metadata, save_checkpoint
from .distributed import ShardSampler, all_gather_object, all_reduce_sum, get_rank, is_distributed, on_main_process, \
    sync_buffers, unshard, wrap_ddp
from .distributed import is_main_process as _is_main_process
from .helpers import get_device, in_notebook, \
    seed_everything
from .history import LivePlot, plot_history, write_history
from .optimization import steps_per_batch

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Processes, devices, metrics
# --------------------------------------------------------------------------------------------------------------

def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed run: only the main process writes files and prints."""
    return _is_main_process()


class MetricTotals:
    """Sums of loss, correct and count over an epoch; :meth:`result` reduces them across processes when
    distributed, so every metric the engine reports is computed here and nowhere else."""

    def __init__(self, topk: int = 1):
        self.topk = topk
        self.loss_sum = 0.0
        self.correct = 0
        self.correct_topk = 0
        self.count = 0

    def update(self, loss_value: float, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.shape[0]
        self.loss_sum += float(loss_value) * n
        k = min(self.topk, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets.view(-1, 1))
        self.correct += int(hits[:, 0].sum())
        self.correct_topk += int(hits.any(dim=1).sum())
        self.count += n

    def result(self) -> dict[str, float]:
        totals = torch.tensor([self.loss_sum, self.correct, self.correct_topk, self.count], dtype=torch.float64)
        totals = all_reduce_sum(totals)  # sums over the processes first: averages as of one process over all data
        loss_sum, correct, correct_topk, count = totals.tolist()
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "accuracy": correct / count, "topk_accuracy": correct_topk / count,
                "count": int(totals[3])}


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast where the GPU has it (no loss scaling needed), float16 on other CUDA GPUs, none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, enabled: bool):
    dtype = _amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prepare_batch(batch, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = batch[0], batch[1]
    non_blocking = device.type == "cuda"
    inputs = inputs.to(device, non_blocking=non_blocking)
    targets = targets.to(device, non_blocking=non_blocking)
    if channels_last and inputs.ndim == 4:  # images only: cached feature vectors pass straight through
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets


def _progress(iterable, desc: str, leave: bool = False, total: int | None = None):
    # Only the main process shows bars; elsewhere tqdm's own defaults apply (TQDM_DISABLE=1 turns them off).
    extra = {} if is_main_process() else {"disable": True}
    return tqdm(iterable, desc=desc, leave=leave, total=total, dynamic_ncols=True, **extra)


# --------------------------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------------------------

def train_one_epoch(train_dataloader, model: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module,
                    scheduler=None, amp: bool = True, channels_last: bool = False, scaler=None,
                    desc: str = "Training") -> dict[str, float]:
    """One pass over ``train_dataloader``; returns ``{"loss", "accuracy", ...}`` averaged over the samples.

    Works for images ``[B, 3, H, W]`` and for any other input (e.g. cached features ``[B, F]``). A scheduler
    given here is stepped after every batch (cosine, one-cycle).
    """
    device = _model_device(model)
    model.train()
    totals = MetricTotals()
    for batch in _progress(train_dataloader, desc):
        inputs, targets = _prepare_batch(batch, device, channels_last)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            logits = model(inputs)
            loss_value = loss(logits.float(), targets)
        if not torch.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value.item()}; lower the learning rate")
        if scaler is not None:
            scaler.scale(loss_value).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss_value.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        totals.update(loss_value.detach(), logits.detach().float(), targets)
    return totals.result()


@torch.inference_mode()
def evaluate(dataloader, model: nn.Module, loss: nn.Module, topk: int = 5, amp: bool = True,
             channels_last: bool = False, desc: str = "Validating", return_predictions: bool = False,
             tta: bool = False) -> dict:
    """Loss, top-1 and top-k accuracy of ``model`` over ``dataloader`` (eval mode, no gradients).

    ``tta=True`` averages the logits of each image and its mirror image (images only).
    """
    device = _model_device(model)
    model.eval()
    totals = MetricTotals(topk)
    preds, labels = [], []
    for batch in _progress(dataloader, desc):
        inputs, targets = _prepare_batch(batch, device, channels_last)
        with _autocast(device, amp):
            logits = model(inputs)
            if tta and inputs.ndim == 4:
                logits = (logits + model(inputs.flip(-1))) / 2
        logits = logits.float()
        totals.update(loss(logits, targets), logits, targets)
        if return_predictions:
            preds.append(logits.argmax(1).cpu())
            labels.append(targets.cpu())
    out: dict[str, Any] = totals.result()
    out["k"] = topk
    if return_predictions:
        out["predictions"] = torch.cat(preds).tolist() if preds else []
        out["labels"] = torch.cat(labels).tolist() if labels else []
        if is_distributed() and isinstance(getattr(dataloader, "sampler", None), ShardSampler):
            # each process saw its shard: every process gets them all, in the data set's order
            out["predictions"] = unshard(all_gather_object(out["predictions"]))
            out["labels"] = unshard(all_gather_object(out["labels"]))
    return out


def one_epoch_test(test_dataloader, model: nn.Module, loss: nn.Module, topk: int = 5, device=None,
                   return_predictions: bool = False, verbose: bool = True, tta: bool = False) -> dict:
    """Test loss, top-1 and top-``k`` accuracy; prints them unless ``verbose=False``.

    ``return_predictions=True`` adds per-photo ``predictions`` and ``labels`` (for a confusion matrix);
    ``tta=True`` averages each photo's logits with its mirror image's.
    """
    if device is not None:
        model.to(get_device(device))
    dev = _model_device(model)
    result = evaluate(test_dataloader, model, loss, topk=topk, amp=True,
                      channels_last=dev.type == "cuda", desc="Testing", return_predictions=return_predictions,
                      tta=tta)
    if verbose and is_main_process():
        print(f"Test loss: {result['loss']:.4f}   Test accuracy: {result['accuracy']:.1%}   "
              f"Top-{topk} accuracy: {result['topk_accuracy']:.1%}   ({result['count']} photos)")
    return result


# --------------------------------------------------------------------------------------------------------------
# Run files, and the random state a resume restores
# --------------------------------------------------------------------------------------------------------------

def run_files(save_path: str | os.PathLike) -> dict[str, Path]:
    """The files of one run: ``best`` (= ``save_path``), ``last``, ``history_csv``, ``history_json``, ``plot``.

    For ``OUT/best.pt`` they are ``OUT/last.pt``, ``OUT/history.csv``, ...; for ``checkpoints/foo.pt`` they are
    ``checkpoints/foo_last.pt``, ``checkpoints/foo_history.csv``, ... so several runs can share a folder.
    """
    best = Path(save_path)
    prefix = "" if best.stem == "best" else f"{best.stem}_"
    return {"best": best, "last": best.with_name(f"{prefix}last.pt"),
            "history_csv": best.with_name(f"{prefix}history.csv"),
            "history_json": best.with_name(f"{prefix}history.json"),
            "plot": best.with_name(f"{prefix}loss_curve.png")}


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": plain(random.getstate()),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    with contextlib.suppress(Exception):  # a checkpoint from another machine may lack CUDA states
        torch.set_rng_state(state["torch"])
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = state["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------------

def _seed_epoch(seed: int, epoch: int, loaders: Iterable) -> None:
    """Seed every random source from (seed, epoch): an epoch's shuffle, augmentation and dropout depend on its
    number only, so a resumed run repeats exactly what the uninterrupted one would have done. In a distributed
    run each process adds its rank: its augmentations and dropout differ from the others'."""
    epoch_seed = seed * 1000 + epoch + 1_000_003 * get_rank()
    seed_everything(epoch_seed)
    for loader in loaders:
        generator = getattr(loader, "generator", None)
        if generator is not None:
            generator.manual_seed(epoch_seed)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler
            sampler.set_epoch(epoch)


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(max(g["lr"] for g in optimizer.param_groups))


def optimize(data_loaders: Mapping, model: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module,
             n_epochs: int, save_path: str | os.PathLike, interactive_tracking: bool = False, scheduler=None,
             resume: bool = False, metadata: Mapping | None = None, checkpoint_model: nn.Module | None = None,
             device: str | torch.device | None = None, amp: bool = True, channels_last: bool | None = None,
             compile_model: bool = False, seed: int | None = None) -> list[dict]:
    """Train ``model`` for ``n_epochs`` (in total, counting epochs done before a resume); returns the history.

    * ``save_path`` receives the best-by-validation-loss checkpoint; ``last.pt`` (see :func:`run_files`) the
      state to resume from; history CSV/JSON after every epoch and a loss-curve PNG at the end.
    * ``scheduler``: stepped after every batch (cosine, one-cycle) or every epoch on the validation loss
      (reduce-on-plateau).
    * ``resume=True`` continues from ``last.pt`` when it exists.
    * ``checkpoint_model``: the module whose weights are saved (default ``model``); a transfer run trains only
      ``model.head`` on cached features and saves the whole network.
    * ``metadata``: arch, model_kwargs, class_names, mean, std, img_size, args, stored in every checkpoint.
    * Mixed precision and channels-last on CUDA (``amp``, ``channels_last``); ``compile_model`` uses
      ``torch.compile``. On CPU everything runs in float32.
    """
    device = get_device(device)
    checkpoint_model = model if checkpoint_model is None else checkpoint_model
    checkpoint_model.to(device)
    model.to(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    meta = run_metadata(checkpoint_model, data_loaders, metadata)
    if seed is None:
        seed = int((meta.get("args") or {}).get("seed", 42) or 42)
    files = run_files(save_path)
    main = is_main_process()

    history: list[dict] = []
    start_epoch, best_valid_loss = 0, math.inf
    if resume and on_main_process(files["last"].exists):  # what rank 0 wrote, read by rank 0, sent to all
        ckpt = on_main_process(load_checkpoint, files["last"])
        if meta["class_names"] and list(ckpt["class_names"]) != list(meta["class_names"]):
            raise CheckpointError(f"{files['last']}: trained on other classes than this data set; "
                                  f"use another --out or drop --resume")
        try:
            checkpoint_model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{files['last']}: weights do not fit this model: {first_mismatch(exc)}") from None
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if "rng" in ckpt:
            _set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"])
        history = list(ckpt.get("history") or [])
        best_valid_loss = float(ckpt.get("best_valid_loss", math.inf))
        if main:
            log.info("Resuming from %s after epoch %d of %d", files["last"], start_epoch, n_epochs)
    elif resume and main:
        log.info("No %s to resume from: starting afresh", files["last"])

    scaler = None
    if amp and _amp_dtype(device) == torch.float16:
        scaler = torch.amp.GradScaler("cuda")
    forward_model = torch.compile(model) if compile_model else model
    train_model = forward_model
    if is_distributed():  # DDP averages the gradients over the processes; evaluation runs on the model itself
        train_model = wrap_ddp(model, device)
        train_model = torch.compile(train_model) if compile_model else train_model
    per_batch = steps_per_batch(scheduler)
    live = LivePlot() if interactive_tracking and main and in_notebook() else None
    loaders = [data_loaders["train"], data_loaders["valid"]]

    epochs = _progress(range(start_epoch + 1, n_epochs + 1), "Epochs", leave=True, total=n_epochs - start_epoch)
    for epoch in epochs:
        started, cpu_started = time.perf_counter(), time.process_time()
        _seed_epoch(seed, epoch, loaders)
        lr = _current_lr(optimizer)
        train = train_one_epoch(data_loaders["train"], train_model, optimizer, loss,
                                scheduler=scheduler if per_batch else None, amp=amp, channels_last=channels_last,
                                scaler=scaler, desc=f"Epoch {epoch} train")
        sync_buffers(model)  # distributed: every process validates with rank 0's batch-norm statistics (saved)
        valid = evaluate(data_loaders["valid"], forward_model, loss, topk=5, amp=amp, channels_last=channels_last,
                         desc=f"Epoch {epoch} valid")
        # --valid-size 0 (a final refit on every training photo): no validation, the latest epoch is the best
        validated = valid["count"] > 0
        monitored = valid["loss"] if validated else train["loss"]
        if scheduler is not None and not per_batch:
            scheduler.step(monitored) if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) \
                else scheduler.step()
        improved = valid["loss"] < best_valid_loss if validated else True
        if validated:
            best_valid_loss = min(best_valid_loss, valid["loss"])
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["accuracy"],
                        "valid_loss": valid["loss"] if validated else None,
                        "valid_acc": valid["accuracy"] if validated else None,
                        "valid_top5": valid["topk_accuracy"] if validated else None, "lr": lr,
                        "seconds": round(time.perf_counter() - started, 3),
                        # CPU time of this process (not the loader workers): a cost measure that other work on
                        # a shared machine does not inflate the way it inflates wall time
                        "cpu_seconds": round(time.process_time() - cpu_started, 3), "best": improved})
        if not main:
            continue
        state = checkpoint_state(meta, checkpoint_model, epoch, history=history, best_valid_loss=best_valid_loss)
        # best first: a kill between the two writes leaves last one epoch behind, and resume redoes that epoch.
        if improved:
            save_checkpoint(state, files["best"])
        save_checkpoint({**state, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict() if scheduler is not None else None,
                         "rng": _rng_state()}, files["last"])
        write_history(history, files)
        row = history[-1]
        valid_text = (f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.1%}" if validated
                      else "no validation set")
        epochs.set_postfix(train_loss=f"{row['train_loss']:.3f}", **(
            {"valid_loss": f"{row['valid_loss']:.3f}", "valid_acc": f"{row['valid_acc']:.1%}"} if validated else {}))
        tqdm.write(f"Epoch {epoch}/{n_epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.1%} | "
                   f"{valid_text} | lr {lr:.2e} | {row['seconds']:.1f}s" + ("  (best, saved)" if improved else ""))
        if live is not None:
            live.update(history)
    if main and history:
        import matplotlib.pyplot as plt  # noqa: PLC0415

        plt.close(plot_history(history, files["plot"]))
    return history
