"""The landmark photos: classes, checking every file, the train/valid split, mean/std, transforms and loaders.

A data set is a folder with ``train/NN.Name/*`` and ``test/NN.Name/*`` (the course layout), or a zip of one;
``src.download`` finds or fetches it. Class names come from the folders; nothing assumes 50 classes.

Environment: ``LANDMARK_CACHE`` (where derived data goes when the data folder is read-only, or always when set);
the data's location: see ``src.download``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

from .data_config import DEFAULT_IMG_SIZE, resize_size_for
from .distributed import cpu_share, distributed_sampler, is_distributed
from .download import DataNotFoundError, resolve_data_dir
from .helpers import atomic_write_json
from .images import ImageLoadError, is_candidate_image, limit_aspect_ratio, open_image
from .landmarks import class_display_name

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "LANDMARK_CACHE"
CACHE_DIR_NAME = ".landmark_cache"


# --------------------------------------------------------------------------------------------------------------
# Classes, samples, checking the files, the split
# --------------------------------------------------------------------------------------------------------------

def list_classes(split_dir: str | os.PathLike) -> list[str]:
    """Class folder names of one split, sorted (``00.`` prefixes make that the course's order)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataNotFoundError(f"{split_dir}: no such folder")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataNotFoundError(f"{split_dir}: no class folders inside")
    return classes


def scan_split(split_dir: str | os.PathLike, class_names: Sequence[str] | None = None) -> list[tuple[Path, int]]:
    """``(path, class index)`` for every candidate photo of a split, in a fixed order (class, then file name).

    Photos are found by content later, not by extension; hidden files and junk like ``.DS_Store`` are ignored.
    """
    split_dir = Path(split_dir)
    found = list_classes(split_dir)
    if class_names is None:
        class_names = found
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise DataNotFoundError(f"{split_dir}: class folders {unknown} are not among the training classes")
    samples = []
    for name in found:
        folder = split_dir / name
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fname in sorted(files):
                if is_candidate_image(fname):
                    samples.append((Path(root) / fname, index[name]))
    samples.sort(key=lambda s: (s[1], str(s[0].relative_to(split_dir))))
    return samples


def cache_dir_for(data_root: str | os.PathLike) -> Path:
    """Where derived data (file checks, mean/std, features) for a data set is cached.

    Next to the data when that folder is writable; otherwise (read-only data such as ``../shared``) under
    ``$LANDMARK_CACHE`` or ``~/.cache/landmark_tagger``, in a folder named after the data set's path.
    """
    data_root = Path(data_root).resolve()
    override = os.environ.get(CACHE_ENV_VAR)
    if not override:
        local = data_root / CACHE_DIR_NAME
        try:
            # Mode bits, not os.access: root may write anywhere, but a folder marked read-only stays untouched.
            if not data_root.stat().st_mode & stat.S_IWUSR:
                raise PermissionError(f"{data_root} is marked read-only")
            local.mkdir(exist_ok=True)
            probe = local / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
            return local
        except OSError:
            pass
    base = Path(override) if override else Path.home() / ".cache" / "landmark_tagger"
    tag = hashlib.sha1(str(data_root).encode()).hexdigest()[:12]
    out = base / f"{data_root.name}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def fingerprint(paths: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """A key that changes when a file is added, removed, renamed or rewritten (name, size, mtime)."""
    h = hashlib.sha1()
    for p in sorted(map(str, paths)):
        st = os.stat(p)
        rel = os.path.relpath(p, root) if root else p
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _check_one(path: Path) -> str | None:
    try:
        open_image(path, draft_size=64)
        return None
    except ImageLoadError as exc:
        return exc.reason


@dataclass
class CheckResult:
    good: list[tuple[Path, int]]
    bad: list[tuple[Path, str]] = field(default_factory=list)


def check_images(samples: Sequence[tuple[Path, int]], cache_file: Path | None = None,
                 desc: str = "Checking photos") -> CheckResult:
    """Decode every file once; report (log, one line each) and leave out the ones that are not usable photos.

    Results are cached per file (keyed by size and mtime) so a second run checks only what changed.
    """
    cache: dict[str, list] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    keys, todo = [], []
    for path, _ in samples:
        try:
            st = path.stat()
            key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:  # a broken symlink, say: open_image reports it like any other unreadable file
            key = f"{path.absolute()}|unreadable"
        keys.append(key)
        if key not in cache:
            todo.append((key, path))
    if todo:
        workers = min(8, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(lambda kp: _check_one(kp[1]), todo), total=len(todo), desc=desc,
                                unit="img", disable=len(todo) < 200))
        for (key, _), reason in zip(todo, results):
            cache[key] = [reason]
        if cache_file is not None:
            try:
                atomic_write_json(cache_file, {k: cache[k] for k in keys})
            except OSError as exc:
                log.debug("could not write %s: %s", cache_file, exc)
    result = CheckResult(good=[])
    for (path, label), key in zip(samples, keys):
        reason = cache[key][0]
        if reason is None:
            result.good.append((path, label))
        else:
            result.bad.append((path, reason))
            log.warning("Skipping %s: %s", path, reason)
    return result


def stable_order_key(path: Path, seed: int) -> str:
    # Folder and file name (not the absolute path) and the seed, through sha1 (not Python's salted hash()):
    # the same split on every run and machine, wherever the data set lives.
    name = f"{path.parent.name}/{path.name}"
    return hashlib.sha1(f"{seed}:{name}".encode()).hexdigest() + name


def stratified_split(samples: Sequence[tuple[Path, int]], valid_size: float = 0.2,
                     seed: int = 42) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Split per class into train/valid, the same on every run and machine (hash order, not an RNG)."""
    if not 0 <= valid_size < 1:
        raise ValueError(f"valid_size must be in [0, 1), got {valid_size}")
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, valid = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: stable_order_key(s[0], seed))
        n_valid = int(round(len(items) * valid_size))
        if valid_size > 0 and len(items) > 1:
            n_valid = min(max(n_valid, 1), len(items) - 1)
        valid.extend(items[:n_valid])
        train.extend(items[n_valid:])
    key = lambda s: (s[1], s[0].name, str(s[0]))  # noqa: E731
    return sorted(train, key=key), sorted(valid, key=key)


def limit_samples(samples: Sequence[tuple[Path, int]], limit: int) -> list[tuple[Path, int]]:
    """At most ``limit`` samples, taken round-robin over the classes so every class stays represented.

    ``limit`` <= 0 (or ``None``) keeps everything.
    """
    if limit is None or limit <= 0 or limit >= len(samples):
        return list(samples)
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    out, i = [], 0
    while len(out) < limit:
        for label in sorted(by_class):
            if i < len(by_class[label]) and len(out) < limit:
                out.append(by_class[label][i])
        i += 1
    return sorted(out, key=lambda s: (s[1], str(s[0])))


@dataclass
class LandmarkData:
    """Everything known about one data set: root, classes, checked samples per split, bad files."""
    root: Path
    class_names: list[str]
    train: list[tuple[Path, int]]
    valid: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    bad_files: list[tuple[Path, str]]
    cache_dir: Path

    @property
    def display_names(self) -> list[str]:
        return [class_display_name(c) for c in self.class_names]


def load_landmark_data(data_dir: str | os.PathLike | None = None, valid_size: float = 0.2, seed: int = 42,
                       download: bool = True, url: str | None = None) -> LandmarkData:
    """Find the data, list and check every photo, and split train/valid deterministically.

    Files that cannot be decoded are logged (path and reason, one line each), left out, and listed in
    ``bad_files``; junk such as ``.DS_Store`` is ignored.
    """
    root = resolve_data_dir(data_dir, download=download, url=url)
    class_names = list_classes(root / "train")
    cache_dir = cache_dir_for(root)
    train_all = check_images(scan_split(root / "train", class_names), cache_dir / "checked_train.json",
                             desc="Checking train photos")
    test = check_images(scan_split(root / "test", class_names), cache_dir / "checked_test.json",
                        desc="Checking test photos")
    train, valid = stratified_split(train_all.good, valid_size, seed)
    return LandmarkData(root=root, class_names=class_names, train=train, valid=valid, test=test.good,
                        bad_files=train_all.bad + test.bad, cache_dir=cache_dir)


# --------------------------------------------------------------------------------------------------------------
# Normalisation statistics
# --------------------------------------------------------------------------------------------------------------

MEAN_STD_VERSION = 1  # bump when the computation changes, so old cached values are not reused
MEAN_STD_CACHE_ENTRIES = 8


def downscaled_pixels(path: str | os.PathLike, size: int = 64) -> np.ndarray:
    """The photo squeezed to ``size`` x ``size`` RGB, as float64 in [0, 1], shape ``[size*size, 3]``.

    Mean/std only need colour statistics, so a small image gives the same answer far faster than full size.
    """
    img = open_image(path, draft_size=size)
    img = img.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0


def _channel_sums(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    arr = downscaled_pixels(path, size)
    return arr.sum(0), (arr**2).sum(0), arr.shape[0]


def compute_mean_and_std(data_dir: str | os.PathLike | None = None, size: int = 64,
                         samples: Sequence[tuple[Path, int]] | None = None, cache: bool = True,
                         valid_size: float = 0.2, seed: int = 42) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training photos, on images downscaled to ``size`` x ``size``.

    By default the photos of the training split only: ``train/`` minus the validation photos (split with
    ``valid_size`` and ``seed`` as :func:`get_data_loaders` does), never ``test/``. ``samples`` overrides that.
    Cached in the data set's cache folder, keyed to those files (names, sizes, times), so a changed data set
    recomputes.
    """
    root = resolve_data_dir(data_dir)
    if samples is None:
        samples = load_landmark_data(root, valid_size=valid_size, seed=seed).train
    paths = [Path(p) for p, _ in samples]
    if not paths:
        raise DataNotFoundError(f"{root}: no usable training photos to compute mean/std from")
    key = f"v{MEAN_STD_VERSION}-{size}-{fingerprint(paths, root)}"
    cache_file = cache_dir_for(root) / "mean_std.json"
    entries: dict = {}
    if cache and cache_file.exists():
        try:
            entries = json.loads(cache_file.read_text()).get("entries", {})
            hit = entries.get(key)
            if hit is not None:
                return [float(x) for x in hit["mean"]], [float(x) for x in hit["std"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            entries = {}
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    failed = []
    with ThreadPoolExecutor(_resolve_workers(-1) * 2) as pool:
        futures = pool.map(lambda p: _safe_channel_sums(p, size), paths)
        for result in tqdm(futures, total=len(paths), desc="Computing mean/std", unit="img",
                           disable=len(paths) < 200):
            if isinstance(result, ImageLoadError):
                failed.append(result)
                continue
            s, sq, n = result
            total += s
            total_sq += sq
            count += n
    for exc in failed:  # checked files do not fail here, unless they changed since; never silently
        log.warning("Left out of mean/std: %s", exc)
    if count == 0:
        raise DataNotFoundError(f"{root}: none of the {len(paths)} training photos could be read for mean/std")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    mean_l, std_l = [float(x) for x in mean], [float(x) for x in std]
    if cache and not failed:
        entries = dict(list(entries.items())[-(MEAN_STD_CACHE_ENTRIES - 1):])
        entries[key] = {"mean": mean_l, "std": std_l, "n_images": len(paths), "size": size}
        try:
            atomic_write_json(cache_file, {"entries": entries})
        except OSError as exc:
            log.debug("could not write %s: %s", cache_file, exc)
    return mean_l, std_l


def _safe_channel_sums(path: Path, size: int):
    try:
        return _channel_sums(path, size)
    except ImageLoadError as exc:
        return exc


# --------------------------------------------------------------------------------------------------------------
# Transforms, data set, loaders
# --------------------------------------------------------------------------------------------------------------

MAX_ASPECT = 8  # longer side at most this many times the resize target (real photos are far below)


class LimitAspectRatio:
    """Transform: an extreme strip (a 4000x3 panorama slice, a 50000x1 line) becomes its central part of at most
    :data:`src.images.MAX_ASPECT_RATIO` to 1, all a center crop can see; otherwise ``Resize(max_size=...)`` would
    shrink its shorter side to zero pixels (an error), and without ``max_size`` it would need gigabytes."""

    def __call__(self, img):
        return limit_aspect_ratio(img) if isinstance(img, Image.Image) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def get_transforms(split: str, img_size: int = DEFAULT_IMG_SIZE, mean: Sequence[float] = (0.5, 0.5, 0.5),
                   std: Sequence[float] = (0.5, 0.5, 0.5), augment: str = "standard") -> transforms.Compose:
    """Training: random resized crop, flip and mild colour changes; valid/test: resize + center crop.

    ``augment``: ``"standard"`` (above), ``"strong"`` (adds TrivialAugment and random erasing) or
    ``"course"`` (Resize(256) + RandomCrop(224) + flip, as the course notebooks do).
    """
    resize = resize_size_for(img_size)
    # max_size: a 4000x2 panorama strip would otherwise become 512000x256 pixels before the crop.
    resize_op = transforms.Resize(resize, max_size=MAX_ASPECT * resize, antialias=True)
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    strip = LimitAspectRatio()
    if split != "train":
        return transforms.Compose([strip, resize_op, transforms.CenterCrop(img_size), *normalize])
    if augment == "course":
        return transforms.Compose([strip, resize_op, transforms.RandomCrop(img_size, pad_if_needed=True),
                                   transforms.RandomHorizontalFlip(), *normalize])
    ops = [strip, transforms.RandomResizedCrop(img_size, scale=(0.25, 1.0), antialias=True),
           transforms.RandomHorizontalFlip()]
    if augment == "strong":
        ops.append(transforms.TrivialAugmentWide())
        return transforms.Compose([*ops, *normalize, transforms.RandomErasing(p=0.25)])
    if augment != "standard":
        raise ValueError(f"augment must be one of 'standard', 'strong', 'course'; got {augment!r}")
    ops.append(transforms.ColorJitter(0.2, 0.2, 0.2))
    return transforms.Compose([*ops, *normalize])


class LandmarkDataset(Dataset):
    """Photos and labels; decodes with :func:`src.images.open_image` (any format, EXIF orientation applied).

    ``cache_images=True`` decodes each photo once, resized so its shorter side is ``cache_size``, and keeps it in
    memory as uint8: later epochs skip decoding entirely (what a GPU run needs to stay fed).
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform=None, class_names: Sequence[str] = (),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 cache_images: bool = False, cache_size: int = 256):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform
        self.class_names = list(class_names)
        self.mean = list(mean) if mean is not None else None
        self.std = list(std) if std is not None else None
        self.cache_size = cache_size
        self.bad_files: dict[str, str] = {}  # path -> reason, for files that failed after the up-front check
        self._cache: list[np.ndarray | None] | None = [None] * len(self.samples) if cache_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        if self._cache is None:
            return open_image(path, draft_size=self.cache_size)
        arr = self._cache[index]
        if arr is None:
            img = open_image(path, draft_size=self.cache_size)
            scale = self.cache_size / min(img.size)
            if scale < 1:
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.BILINEAR, reducing_gap=2.0)
            arr = np.asarray(img, dtype=np.uint8)
            self._cache[index] = arr
        return Image.fromarray(arr)

    def __getitem__(self, index: int):
        # A photo that fails now (changed or removed since it was checked) is reported and replaced by the next
        # readable one, so an epoch never dies half-way.
        for step in range(len(self.samples)):
            i = (index + step) % len(self.samples)
            try:
                img = self.load_image(i)
            except ImageLoadError as exc:
                if exc.path not in self.bad_files:
                    log.warning("Skipping %s (replaced by another photo)", exc)
                self.bad_files[exc.path] = exc.reason
                continue
            label = self.samples[i][1]
            return (self.transform(img) if self.transform is not None else img), label
        raise ImageLoadError(self.samples[index][0], "no photo of this data set can be read")


def _resolve_workers(num_workers: int | None) -> int:
    """``-1``/``None``: one worker per CPU this process may use (a container's limit, not the host's count),
    shared among the training processes of one machine in a torchrun job."""
    if num_workers is None or num_workers < 0:
        try:
            return cpu_share(len(os.sched_getaffinity(0)))
        except AttributeError:  # macOS, Windows
            return cpu_share(os.cpu_count() or 1)
    return num_workers


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 42,
                sampler=None, drop_last: bool = False, distributed: bool | None = None) -> DataLoader:
    """A DataLoader with pinned memory on CUDA, persistent workers, and a seeded shuffle.

    ``distributed`` (default: whether this is a torchrun job): each process gets its share of the data, through
    :func:`src.distributed.distributed_sampler` (training: ``DistributedSampler``, call ``set_epoch`` every
    epoch; evaluation: an exact, unpadded shard). ``batch_size`` is then per process.
    """
    if sampler is None and (is_distributed() if distributed is None else distributed):
        sampler = distributed_sampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        generator=generator, drop_last=drop_last,
    )


def get_data_loaders(batch_size: int = 32, valid_size: float = 0.2, num_workers: int = -1, limit: int = -1,
                     data_dir: str | os.PathLike | None = None, img_size: int = DEFAULT_IMG_SIZE,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None, seed: int = 42,
                     augment: str = "standard", cache_images: bool = False,
                     data: LandmarkData | None = None, distributed: bool | None = None) -> dict[str, DataLoader]:
    """Data loaders ``{"train", "valid", "test"}`` over the landmark photos.

    Images come out as float tensors ``[B, 3, img_size, img_size]`` normalised with the data set's own mean/std
    (computed on the training split unless given). Each loader's ``.dataset`` carries ``class_names``, ``mean``
    and ``std``. ``limit`` > 0 keeps at most that many photos per split (all classes kept), for quick runs.
    The train/valid split is stratified per class and the same on every run and machine.
    In a torchrun job (``distributed``, default: detected) each process loads its share and ``batch_size`` is per
    process (see :func:`make_loader`).
    """
    if data is None:
        data = load_landmark_data(data_dir, valid_size=valid_size, seed=seed)
    if mean is None or std is None:
        mean, std = compute_mean_and_std(data.root, samples=data.train)
    num_workers = _resolve_workers(num_workers)
    loaders = {}
    for split, samples in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        dataset = LandmarkDataset(limit_samples(samples, limit), get_transforms(split, img_size, mean, std, augment),
                                  class_names=data.class_names, mean=mean, std=std, cache_images=cache_images,
                                  cache_size=resize_size_for(img_size))
        loaders[split] = make_loader(dataset, batch_size, shuffle=(split == "train"), num_workers=num_workers,
                                     seed=seed, distributed=distributed)
    return loaders


# --------------------------------------------------------------------------------------------------------------
# Looking at the data
# --------------------------------------------------------------------------------------------------------------

def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize``: back to [0, 1] for display."""
    m = torch.as_tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * s + m).clamp(0, 1)


def visualize_one_batch(data_loaders: dict[str, DataLoader], max_n: int = 5, split: str = "train"):
    """Show up to ``max_n`` un-normalised images of one batch with their landmark names; returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting is optional for library users

    loader = data_loaders[split]
    ds = loader.dataset
    images, labels = next(iter(loader))
    images = denormalize(images[:max_n], ds.mean, ds.std)
    n = images.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.4), squeeze=False)
    for ax, img, label in zip(axes[0], images, labels[:max_n]):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(class_display_name(ds.class_names[int(label)]), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_channel_histograms(data_loaders: dict[str, DataLoader], split: str = "train", bins: int = 64):
    """RGB channel histograms of one batch before and after normalisation; returns the figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    loader = data_loaders[split]
    ds = loader.dataset
    images, _ = next(iter(loader))
    raw = denormalize(images, ds.mean, ds.std)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, data, title in ((axes[0], raw, "before normalisation (pixel value in [0, 1])"),
                            (axes[1], images, "after normalisation (data set mean/std)")):
        for c, colour in enumerate(("red", "green", "blue")):
            ax.hist(data[:, c].flatten().numpy(), bins=bins, color=colour, alpha=0.45, label=colour)
        ax.set_title(title, fontsize=10)
        ax.legend()
    fig.tight_layout()
    return fig
