"""The feature cache: a frozen backbone computes the same features for a photo every epoch, so compute them once.

:func:`get_feature_loaders` runs the frozen start of a :class:`src.transfer.TransferModel`'s backbone once per
photo (plus a few augmented views of each training photo), caches the result on disk keyed on the data, the
weights and the transforms, and serves the cached features to train the rest. The model itself is unchanged:
export still runs backbone and head on a photo.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import fingerprint, get_transforms, limit_samples
from .data_config import resize_size_for, resolve_data_config
from .distributed import all_gather_object, all_true, barrier, block_range, cpu_share, distributed_sampler, \
    is_distributed, is_local_main_process, is_main_process
from .helpers import atomic_torch_save, get_device
from .images import ImageLoadError, open_image

log = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 2
# Views per training photo in the feature cache (the plain center crop + 2 augmented). Measured on landmarks13
# with efficientnet_lite0 (README.md): 1, 2, 3 and 5 views, sampling one view per epoch or using all, all gave
# 82-85% test accuracy (within the noise of 204 test photos); extraction time grows with the views, so few.
DEFAULT_N_VIEWS = 3


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


def feature_cache_key(model: nn.Module, data, img_size: int, n_views: int, seed: int, transforms_repr: str
                      ) -> tuple[str, dict]:
    """(hex key, what it is made of): data (per split), backbone weights, transforms, sizes, views, seed."""
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


def compute_feature_cache(model: nn.Module, data, img_size: int | None = None, n_views: int = DEFAULT_N_VIEWS,
                          seed: int = 42, batch_size: int = 64, workers: int = 0, augment: str = "standard",
                          device=None) -> dict:
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
    img_size = resolve_data_config(model.model_name, img_size).img_size
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
    if path.exists():
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


def get_feature_loaders(model: nn.Module, data, *, img_size: int | None = None, n_views: int | None = None,
                        batch_size: int = 32, workers: int = 2, seed: int = 42, limit: int = -1,
                        augment: str = "standard", device=None) -> dict[str, DataLoader]:
    """DataLoaders ``{"train", "valid", "test"}`` of ``(features, label)`` for training what follows the frozen
    start of ``model`` (a :class:`src.transfer.TransferModel`): its head, and its trainable stages if any.

    ``img_size``: the input size (default: the model's, :func:`src.data_config.resolve_data_config`);
    ``n_views``: views per training photo, the plain one included (default :data:`DEFAULT_N_VIEWS`); ``workers``:
    decoding processes (-1: one per core); ``limit``: photos per split (-1: all); ``augment``: the augmentation
    of the extra views. Each epoch sees one random view of each training photo.
    """
    n_views = max(1, int(DEFAULT_N_VIEWS if n_views is None else n_views))
    workers = cpu_share(os.cpu_count() or 1) if workers < 0 else int(workers)
    if limit > 0:  # quick runs: at most `limit` photos per split, every class kept
        data = copy.copy(data)
        data.train, data.valid, data.test = (limit_samples(s, limit) for s in (data.train, data.valid, data.test))
    cache = compute_feature_cache(model, data, img_size, n_views, seed, batch_size=max(batch_size, 64),
                                  workers=workers, augment=augment, device=device)
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
